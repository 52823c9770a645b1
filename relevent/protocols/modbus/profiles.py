"""How a device command becomes Modbus writes, and registers become a measurement.

SunSpec (profile "sunspec"): discovered from the device's model chain.
* model 123: Conn, WMaxLimPct (of WMax) with WMaxLim_Ena, both with RvrtTms, in one write;
* model 704, where present: WSetEna/WSetMod/WSet (absolute W, so a battery can charge) and
  WSetRvrtTms, for DERs with an ActPow function;
* measurements: from the inverter model (103 three phase, else 102 or 101) W, PhVphA and Hz,
  each with its scale factor from the same read, and 123 Conn.  A point the device does not
  implement (SunSpec's "not implemented" value) is measured as None.
WMax comes from model 121 (else the DER's rated power).
Plain registers (profile "registers"): holding registers from the topology, int16 counts
of `scale` W.
SG-Ready (profile "sgready"): a heat pump's operating state (coils or a register per a map
of relevent/devices/sgready_maps.toml) and power limit; `SgReadyProfile`."""
from __future__ import annotations

import logging
import time
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from relevent.devices import sgready, sunspec

log = logging.getLogger("relevent.modbus")

WSET_MOD_WATTS = 1   # model 704 WSetMod: 1 = WSet is in watts (0 = a percentage of WMax)


class DeviceError(Exception):
    """The device answered, but not as its profile says (exception code, broken chain)."""


class Io:
    def __init__(self, client: AsyncModbusTcpClient, unit: int) -> None:
        self.client, self.unit = client, unit

    async def read(self, address: int, count: int) -> list[int]:
        rr = await self.client.read_holding_registers(address, count=count, device_id=self.unit)
        if rr.isError():
            raise DeviceError(f"read {address}+{count}: Modbus exception {getattr(rr, 'exception_code', rr)}")
        if len(rr.registers) < count:
            raise DeviceError(f"read {address}+{count}: {len(rr.registers)} registers in the reply")
        return list(rr.registers[:count])

    async def write(self, address: int, values: list[int]) -> None:
        rr = await self.client.write_registers(address, values, device_id=self.unit)
        if rr.isError():
            raise DeviceError(f"write {address}+{len(values)}: Modbus exception {getattr(rr, 'exception_code', rr)}")

    async def read_table(self, table: str, address: int, count: int) -> list[int]:
        """Read coils, discrete inputs, holding or input registers (as ints: bits 0/1)."""
        fn = {"holding": self.client.read_holding_registers, "input": self.client.read_input_registers,
              "coil": self.client.read_coils, "discrete": self.client.read_discrete_inputs}[table]
        rr = await fn(address, count=count, device_id=self.unit)
        if rr.isError():
            raise DeviceError(f"read {table} {address}+{count}: Modbus exception {getattr(rr, 'exception_code', rr)}")
        values = [int(b) for b in rr.bits[:count]] if table in ("coil", "discrete") else list(rr.registers[:count])
        if len(values) < count:
            raise DeviceError(f"read {table} {address}+{count}: {len(values)} values in the reply")
        return values

    async def write_table(self, table: str, address: int, values: list[int]) -> None:
        """Write coils or holding registers."""
        if table == "coil":
            rr = await self.client.write_coils(address, [bool(v) for v in values], device_id=self.unit)
        else:
            rr = await self.client.write_registers(address, values, device_id=self.unit)
        if rr.isError():
            raise DeviceError(f"write {table} {address}+{len(values)}: Modbus exception "
                              f"{getattr(rr, 'exception_code', rr)}")


def _block(mid: int, base: int, values: dict[str, int]) -> tuple[int, list[int]]:
    """One contiguous write of the named points of model `mid` at `base`."""
    points = sorted((sunspec.layout(mid)[n] for n in values), key=lambda p: p.offset)
    regs: list[int] = []
    for prev, p in zip([None] + points[:-1], points):
        if prev is not None and prev.offset + prev.size != p.offset:
            raise AssertionError(f"model {mid}: {prev.name} and {p.name} are not adjacent")
        regs += sunspec.encode(p, values[p.name])
    return base + points[0].offset, regs


# SunSpec model 103 St (operating state).
OPERATING_STATES = {1: "off", 2: "sleeping", 3: "starting", 4: "MPPT", 5: "throttled", 6: "shutting down",
                    7: "fault", 8: "standby"}


class SunSpecProfile:
    name = "sunspec"
    state = ""
    voltage_v: float | None = None      # of the last measure(), with `state`
    frequency_hz: float | None = None

    def __init__(self, io: Io, der: dict, reversion_s: int) -> None:
        self.io, self.der, self.reversion_s = io, der, reversion_s
        self.models: dict[int, int] = {}
        self.sf: dict[str, int] = {}
        self.wmax = float(der["rated_power_w"])
        self.inverter_model: int | None = None

    async def discover(self) -> str:
        async def read(address: int, count: int) -> list[int]:
            try:
                return await self.io.read(address, count)
            except DeviceError as exc:
                raise sunspec.SunSpecError(str(exc)) from None
        try:
            self.models = await sunspec.discover(read)
        except sunspec.SunSpecError as exc:
            raise DeviceError(str(exc)) from None
        if 123 not in self.models:
            raise DeviceError(f"no SunSpec model 123 (immediate controls); models: {sorted(self.models)}")
        self.inverter_model = next((mid for mid in sunspec.INVERTER_MODELS if mid in self.models), None)
        for mid, point in ((123, "WMaxLimPct_SF"), (121, "WMax_SF"), (704, "WSet_SF")):
            if mid in self.models:
                self.sf[point] = await self._get(mid, point)
        if 121 in self.models:
            self.wmax = await self._get(121, "WMax") * 10.0 ** self.sf["WMax_SF"]
        if not self.wmax > 0:
            raise DeviceError("WMax is 0 and the DER has no rated_power_w")
        return f"sunspec models {sorted(self.models)} wmax {self.wmax:g} W"

    async def _get(self, mid: int, name: str) -> int:
        p = sunspec.layout(mid)[name]
        return sunspec.decode(p, await self.io.read(self.models[mid] + p.offset, p.size))

    async def apply(self, cmd: Any) -> None:
        sf = self.sf.get("WMaxLimPct_SF", 0)
        pct = max(0.0, min(100.0, cmd.setpoint_w / self.wmax * 100.0))
        address, regs = _block(123, self.models[123], {
            "Conn_RvrtTms": self.reversion_s, "Conn": 1 if cmd.connected else 0,
            "WMaxLimPct": round(pct / 10.0 ** sf), "WMaxLimPct_WinTms": 0,
            "WMaxLimPct_RvrtTms": self.reversion_s, "WMaxLimPct_RmpTms": 0, "WMaxLim_Ena": 1})
        await self.io.write(address, regs)
        if 704 in self.models and "ActPow" in cmd.outputs:
            wsf = self.sf.get("WSet_SF", 0)
            address, regs = _block(704, self.models[704], {"WSetEna": 1, "WSetMod": WSET_MOD_WATTS,
                                                           "WSet": round(cmd.setpoint_w / 10.0 ** wsf)})
            await self.io.write(address, regs)
            address, regs = _block(704, self.models[704], {"WSetRvrtTms": self.reversion_s})
            await self.io.write(address, regs)

    async def measure(self) -> tuple[float | None, bool | None]:
        """W and Conn.  One read from PhVphA to St of the inverter model brings the phase
        voltage, W, Hz, their scale factors (SunSpec lets a device change a scale factor:
        each value is scaled by the one read with it) and the operating state along:
        `voltage_v`, `frequency_hz` and `state` after the call."""
        w = self.voltage_v = self.frequency_hz = None
        mid = self.inverter_model
        if mid is not None:
            points = sunspec.layout(mid)
            first, last = points["PhVphA"], points["St"]
            regs = await self.io.read(self.models[mid] + first.offset, last.offset + last.size - first.offset)

            def at(name: str) -> list[int]:
                p = points[name]
                return regs[p.offset - first.offset:p.offset - first.offset + p.size]

            def value(name: str) -> float | None:
                p = points[name]
                return sunspec.scaled(p, at(name), at(p.sf) if p.sf else None)

            w, self.voltage_v, self.frequency_hz = value("W"), value("PhVphA"), value("Hz")
            st = sunspec.decode(last, at("St"))
            self.state = f"St {st} ({OPERATING_STATES.get(st, 'vendor')})"
        return w, await self._get(123, "Conn") == 1


class RegistersProfile:
    name = "registers"
    state = ""

    def __init__(self, io: Io, der: dict, reversion_s: int) -> None:
        self.io, self.map = io, der["registers"]
        self.scale = float(self.map.get("scale", 1))

    async def discover(self) -> str:
        await self.io.read(self.map["setpoint"], 1)  # the device answers at the mapped address
        return f"registers {self.map}"

    async def apply(self, cmd: Any) -> None:
        counts = max(-32768, min(32767, round(cmd.setpoint_w / self.scale)))
        await self.io.write(self.map["setpoint"], [counts & 0xFFFF])
        if "connect" in self.map:
            await self.io.write(self.map["connect"], [1 if cmd.connected else 0])

    async def measure(self) -> tuple[float | None, bool | None]:
        w = conn = None
        if "power" in self.map:
            w = sunspec.to_signed((await self.io.read(self.map["power"], 1))[0]) * self.scale
        if "connect" in self.map:
            conn = (await self.io.read(self.map["connect"], 1))[0] == 1
        return w, conn


class SgReadyProfile:
    """A heat pump over SG-Ready (docs/devices.md "Loads: heat pumps"): the DER's outputs as a
    load command (relevent/devices/load.py: the §14a floor), the wanted SG-Ready state switched
    within the compressor's and the tariff's rules (relevent/devices/sgready.py), written per
    the DER's register map (relevent/devices/sgready_maps.toml) with the power limit where the
    map has one.  The rules' state outlives a connection (`resume`); a switch the rules defer
    is written when it is `due` (wall-clock s), without a new command."""
    name = "sgready"
    state = ""
    contact: bool | None = None   # of the last measure(): the map's `contact` point, nonzero = closed

    def __init__(self, io: Io, der: dict, reversion_s: int) -> None:
        self.io, self.der = io, der
        self.map = sgready.get_map((der.get("sgready") or {}).get("map", "example-register"))
        self.pump = sgready.HeatPump.from_der(der)
        self.keep: dict = {}
        self.decision: sgready.Decision | None = None
        self.limit_w: float | None = None
        self.due: float | None = None
        self.info: dict = {}
        self.written: dict[str, int] = {}     # point -> value written on this connection

    def resume(self, keep: dict) -> None:
        """State kept by the device task across connections: the rules' history."""
        self.keep = keep

    async def discover(self) -> str:
        first = self.map.points.get("readback") or self.map.writes(sgready.NORMAL)[0][0]
        await self.io.read_table(first.table, first.address, 1)  # the device answers at the mapped address
        return f"sgready map {self.map.name} ({self.map.status})"

    async def apply(self, cmd: Any) -> None:
        d, limit_w = self.pump.decide(self.keep.get("sg") or sgready.SgState(), cmd.outputs, time.time())
        if self.decision is None or d.text() != self.decision.text() or limit_w != self.limit_w:
            log.info("sgready der=%s %s limit_w=%s", self.der["name"], d.text(), limit_w)
        self.keep["sg"], self.decision, self.limit_w = d.sg, d, limit_w
        self.due = d.due
        writes = self.map.writes(d.state)
        if "power_limit" in self.map.points:
            writes.append((self.map.points["power_limit"], self.map.limit_counts(limit_w)))
        # Only what changed on this connection (a heat pump's controller may keep these in an
        # EEPROM with limited write cycles): a reconnect writes all, and a read-back that
        # disagrees (`measure`) makes the next refresh write the state again.
        for point, value in writes:
            if self.written.get(point.name) != value:
                await self.io.write_table(point.table, point.address, [value])
                self.written[point.name] = value
        self._describe({})

    async def measure(self) -> tuple[float | None, bool | None]:
        names = [n for n in ("readback", "power", "tank_c", "indoor_c", "outdoor_c", "flags", "contact")
                 if n in self.map.points]
        raw: dict[str, int] = {}
        by_table: dict[str, list] = {}
        for n in names:
            by_table.setdefault(self.map.points[n].table, []).append(self.map.points[n])
        for table, points in by_table.items():
            lo, hi = min(p.address for p in points), max(p.address for p in points)
            if hi - lo < 32:   # one read of the span
                values = await self.io.read_table(table, lo, hi - lo + 1)
                raw.update({p.name: values[p.address - lo] for p in points})
            else:
                for p in points:
                    raw[p.name] = (await self.io.read_table(table, p.address, 1))[0]
        self.contact = bool(raw["contact"]) if "contact" in raw else None
        self._describe(raw)
        if "readback" in raw and self.decision is not None and raw["readback"] != self.decision.state:
            for point, _ in self.map.writes(self.decision.state):   # the device lost it: write again
                self.written.pop(point.name, None)
        w = -self.map.points["power"].decode(raw["power"]) if "power" in raw else None
        in_force = raw.get("readback") if raw.get("readback") in sgready.NAMES else \
            (self.decision.state if self.decision else None)
        return (w + 0.0 if w is not None else None), (None if in_force is None else in_force != sgready.BLOCKED)

    def _describe(self, raw: dict) -> None:
        """`state` (one line: the DER's measured state) and `info` (the endpoint's detail)."""
        d = self.decision
        info: dict = dict(self.info) if not raw else {}
        if d is not None:
            info["sgready"] = {**d.summary(), "map": self.map.name}
            info["limit_w"] = self.limit_w
        for name in ("tank_c", "indoor_c", "outdoor_c"):
            if name in raw:
                info[name] = round(self.map.points[name].decode(raw[name]), 2)
        if "readback" in raw:
            info["device_state"] = raw["readback"]
        if "contact" in raw:
            info["contact"] = "closed" if raw["contact"] else "open"
        if "flags" in raw:
            info["compressor"] = bool(raw["flags"] & 1)
            info["comfort_override"] = bool(raw["flags"] & 2)
            info["limited"] = bool(raw["flags"] & 4)
        self.info = info
        parts = [d.text() if d is not None else "SG-Ready: no command yet"]
        if self.limit_w is not None and "power_limit" in self.map.points:
            parts.append(f"limit {self.limit_w:g} W")
        if info.get("device_state") is not None and d is not None and info["device_state"] != d.state:
            parts.append(f"device in state {info['device_state']}")
        if info.get("comfort_override"):
            parts.append("device left the block for comfort")
        if info.get("contact") == "closed":
            parts.append("control box contact closed")
        if "tank_c" in info:
            parts.append(f"tank {info['tank_c']:.1f} °C")
        if "indoor_c" in info:
            parts.append(f"indoor {info['indoor_c']:.1f} °C")
        self.state = ", ".join(parts)


PROFILES = {"sunspec": SunSpecProfile, "registers": RegistersProfile, "sgready": SgReadyProfile}
