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
of `scale` W."""
from __future__ import annotations

from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from relevent.devices import sunspec


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
            address, regs = _block(704, self.models[704], {"WSetEna": 1, "WSetMod": 0,
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


PROFILES = {"sunspec": SunSpecProfile, "registers": RegistersProfile}
