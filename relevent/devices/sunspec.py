"""SunSpec register layout from pysunspec2's model definitions (not hand-typed tables),
plus the value encodings the Modbus endpoint and the inverter simulator share.

A SunSpec device holds 'SunS' at a base address (40000, 0 or 50000), then a chain of
models, each ID, L (length after those two) and L registers, ended by ID 0xFFFF."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Awaitable, Callable

import sunspec2.device as ssdev

SUNS = (0x5375, 0x6E53)           # "SunS"
BASES = (40000, 0, 50000)
END_ID = 0xFFFF
MAX_MODELS = 64                   # a chain longer than this is a broken device, not a big one


class SunSpecError(Exception):
    pass


@dataclass(frozen=True)
class Point:
    name: str
    offset: int       # registers from the model's ID register
    size: int         # registers
    type: str         # pysunspec2 type name: int16, uint16, int32, uint32, sunssf, enum16, string, ...
    sf: str | None    # name of its scale-factor point


@lru_cache(maxsize=None)
def layout(model_id: int) -> dict[str, Point]:
    """Top-level points of a model with their offsets (repeating groups follow them)."""
    model = ssdev.Model(model_id)
    points = {}
    for name, p in model.points.items():
        pdef = p.pdef
        points[name] = Point(name, p.offset, p.len, pdef["type"], pdef.get("sf"))
    return points


@lru_cache(maxsize=None)
def model_length(model_id: int) -> int:
    """L: registers after ID and L, fixed groups included."""
    return ssdev.Model(model_id).len - 2


def to_signed(value: int, bits: int = 16) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def encode(point: Point, value: int) -> list[int]:
    """An integer point's registers (big-endian words, as SunSpec says)."""
    bits = 16 * point.size
    if value < 0:
        value += 1 << bits
    if not 0 <= value < (1 << bits):
        raise SunSpecError(f"{point.name}: {value} does not fit {point.type}")
    return [(value >> (16 * (point.size - 1 - i))) & 0xFFFF for i in range(point.size)]


def decode(point: Point, regs: list[int]) -> int:
    value = 0
    for r in regs[:point.size]:
        value = (value << 16) | r
    return to_signed(value, 16 * point.size) if point.type in ("int16", "int32", "sunssf", "int64") else value


# SunSpec's "not implemented" value per type: a device without the quantity reports this.
NOT_IMPLEMENTED = {"int16": 0x8000, "sunssf": 0x8000, "uint16": 0xFFFF, "enum16": 0xFFFF,
                   "int32": 0x80000000, "uint32": 0xFFFFFFFF}
# The inverter models that measure at the AC side (single, split and three phase; integer
# points with scale factors, same point names): PhVphA, Hz, W, St.
INVERTER_MODELS = (103, 102, 101)


def scaled(point: Point, regs: list[int], sf_regs: list[int] | None) -> float | None:
    """The value of `point` from its registers and its scale factor's (None when the point
    has none), or None when the device says it does not implement it."""
    raw = 0
    for r in regs[:point.size]:
        raw = (raw << 16) | r
    if NOT_IMPLEMENTED.get(point.type) == raw:
        return None
    exponent = 0
    if sf_regs is not None:
        if sf_regs[0] == NOT_IMPLEMENTED["sunssf"]:
            return None
        exponent = to_signed(sf_regs[0])
    # (rounded to the scale's digits: 5012 * 10**-2 is 50.12, not 50.120000000000005)
    return round(decode(point, regs) * 10.0 ** exponent, max(0, -exponent))


ReadFn = Callable[[int, int], Awaitable[list[int]]]


async def discover(read: ReadFn) -> dict[int, int]:
    """{model id: address of its ID register}, walking the chain from the 'SunS' marker."""
    for base in BASES:
        try:
            marker = await read(base, 2)
        except SunSpecError:
            continue
        if tuple(marker) == SUNS:
            break
    else:
        raise SunSpecError(f"no SunS marker at {', '.join(map(str, BASES))}")
    models: dict[int, int] = {}
    addr = base + 2
    for _ in range(MAX_MODELS):
        mid, length = await read(addr, 2)
        if mid == END_ID:
            return models
        models.setdefault(mid, addr)
        addr += 2 + length
    raise SunSpecError(f"model chain from {base} has more than {MAX_MODELS} models and no end marker")
