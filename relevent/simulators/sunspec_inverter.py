"""A SunSpec inverter on Modbus TCP (pymodbus server): models 1, 103, 121, 123 and 704.

Behaviour, as a real inverter would:
* output = min(available power, limit), the limit being WMaxLimPct of WMax when WMaxLim_Ena
  (model 123) or WMaxLimPctEna (704); with 704 WSetEna the output follows WSet instead;
  Conn = 0 disconnects (output 0, St = 8 standby);
* the output ramps at `ramp_w_per_s` (0: at once);
* reversion: a control not refreshed within its RvrtTms falls back by itself (limits off,
  Conn back to 1), so a dead edge never leaves the device curtailed forever;
* the grid at its terminals: phase voltage `grid_voltage_v` (default 230 V) in model 103's
  PhVphA..C (V_SF -1: 0.1 V) and 50 Hz in Hz (Hz_SF -2), changed over time by the scenario
  `voltage_steps = [[after_s, volts], ...]` (seconds from the simulator's start, again
  after a restart of it).
Every write is appended to `write_log` (JSON lines with the time in ns) when configured:
benchmarks read it from outside the site.

Simulator test hook (not SunSpec: a real inverter refuses writes to its measurements): a
Modbus write to PhVphA (PhVphA..C) or Hz of model 103 sets the simulated grid voltage or
frequency, as if the grid moved; the other phases follow PhVphA.  Tests and benchmarks set
the grid from outside the site with any Modbus client this way.  Such a write is in the
write log with "hook": true.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from relevent.simulators.shell import AsyncioSimulator
from relevent.devices import sunspec
from relevent.protocols.aio import AsyncioThread

log = logging.getLogger("relevent.sim.sunspec")

BASE = 40000
TICK = 0.05   # s, output and reversion update period
SF = {"W_SF": 0, "WMax_SF": 0, "WMaxLimPct_SF": -2, "WSet_SF": 0, "WSetPct_SF": -2, "A_SF": -2, "V_SF": -1,
      "Hz_SF": -2, "VA_SF": 0, "VAr_SF": 0, "PF_SF": -2, "WH_SF": 0}
ST_OFF, ST_MPPT, ST_THROTTLED, ST_STANDBY = 1, 4, 5, 8
PHASES = {103: ("PhVphA", "PhVphB", "PhVphC"), 102: ("PhVphA", "PhVphB"), 101: ("PhVphA",)}
HOOK_POINTS = ("PhVphA", "PhVphB", "PhVphC", "Hz")   # the test hook: writes set the simulated grid
# A write to any of these points refreshes that control's reversion timer.
REFRESHES = {
    "123.WMaxLimPct": {"123.WMaxLimPct", "123.WMaxLimPct_RvrtTms", "123.WMaxLim_Ena"},
    "123.Conn": {"123.Conn", "123.Conn_RvrtTms"},
    "704.WMaxLimPct": {"704.WMaxLimPct", "704.WMaxLimPctEna", "704.WMaxLimPctRvrtTms"},
    "704.WSet": {"704.WSet", "704.WSetEna", "704.WSetRvrtTms"},
}


class SunSpecImage:
    """The register image and the inverter's behaviour on it (runs on the loop thread)."""

    def __init__(self, models: list[int], wmax: float, available: float, ramp: float, serial: str,
                 grid_v: float = 230.0, grid_hz: float = 50.0) -> None:
        self.addr: dict[int, int] = {}
        regs = [*sunspec.SUNS]
        for mid in models:
            self.addr[mid] = BASE + len(regs)
            block = [0] * (2 + sunspec.model_length(mid))
            block[0], block[1] = mid, sunspec.model_length(mid)
            regs += block
        regs += [sunspec.END_ID, 0]
        self.regs = regs
        self.wmax, self.available, self.ramp = wmax, available, ramp
        self.output = 0.0
        self.refreshed: dict[str, float] = {}   # control -> monotonic time of its last write
        self.reverted = 0
        for mid in models:
            for name, p in sunspec.layout(mid).items():
                if p.type == "sunssf":
                    self.set(mid, name, SF.get(name, 0))
        if 1 in self.addr:
            self.set_text(1, "Mn", "relevent"), self.set_text(1, "Md", "sim-inverter")
            self.set_text(1, "Vr", "1.0"), self.set_text(1, "SN", serial), self.set(1, "DA", 1)
        if 121 in self.addr:
            self.set(121, "WMax", int(wmax))
        if 123 in self.addr:
            self.set(123, "Conn", 1)
        # The inverter model that measures the grid (a single or split phase one leaves the
        # phases it does not have "not implemented").
        self.inverter = next((mid for mid in sunspec.INVERTER_MODELS if mid in self.addr), None)
        if self.inverter is not None:
            for name in ("PhVphA", "PhVphB", "PhVphC"):
                if name not in PHASES[self.inverter]:
                    self.set(self.inverter, name, sunspec.NOT_IMPLEMENTED["uint16"])
        self.grid_v, self.grid_hz = grid_v, grid_hz
        self.set_grid()

    # -- registers -----------------------------------------------------------------------------
    def _index(self, mid: int, name: str) -> tuple[int, sunspec.Point]:
        p = sunspec.layout(mid)[name]
        return self.addr[mid] - BASE + p.offset, p

    def get(self, mid: int, name: str) -> int:
        i, p = self._index(mid, name)
        return sunspec.decode(p, self.regs[i:i + p.size])

    def set(self, mid: int, name: str, value: int) -> None:
        i, p = self._index(mid, name)
        self.regs[i:i + p.size] = sunspec.encode(p, int(value))

    def set_text(self, mid: int, name: str, text: str) -> None:
        i, p = self._index(mid, name)
        data = text.encode()[:2 * p.size].ljust(2 * p.size, b"\0")
        self.regs[i:i + p.size] = [int.from_bytes(data[j:j + 2], "big") for j in range(0, len(data), 2)]

    def scaled(self, mid: int, name: str) -> float:
        p = sunspec.layout(mid)[name]
        return self.get(mid, name) * 10.0 ** (self.get(mid, p.sf) if p.sf else 0)

    def writable(self, address: int, count: int) -> bool:
        """Only the points of the control and settings models (121, 123, 704) take writes."""
        for mid in (121, 123, 704):
            if mid in self.addr:
                first, end = self.addr[mid] + 2, self.addr[mid] + 2 + sunspec.model_length(mid)
                if first <= address and address + count <= end:
                    return True
        return False

    def touched(self, address: int, count: int) -> list[str]:
        """Control points a write covers (for reversion refresh and the write log)."""
        names = []
        for mid in (123, 704):
            if mid not in self.addr:
                continue
            for name, p in sunspec.layout(mid).items():
                start = self.addr[mid] + p.offset
                if start < address + count and address < start + p.size:
                    names.append(f"{mid}.{name}")
        return names

    # -- the grid ------------------------------------------------------------------------------
    def set_grid(self, volts: float | None = None, hz: float | None = None) -> None:
        """The grid's phase voltage (V) and frequency (Hz) into the inverter model's registers."""
        if volts is not None:
            self.grid_v = float(volts)
        if hz is not None:
            self.grid_hz = float(hz)
        mid = self.inverter
        if mid is None:
            return
        counts = round(self.grid_v / 10.0 ** self.get(mid, "V_SF"))
        for name in PHASES[mid]:
            self.set(mid, name, max(0, min(0xFFFE, counts)))
        self.set(mid, "Hz", max(0, min(0xFFFE, round(self.grid_hz / 10.0 ** self.get(mid, "Hz_SF")))))

    def hook_points(self, address: int, count: int) -> list[str]:
        """The test hook's points a write covers if it covers nothing else, else []."""
        if self.inverter is None:
            return []
        names = []
        for reg in range(address, address + count):
            name = next((n for n in HOOK_POINTS if self.addr[self.inverter]
                         + sunspec.layout(self.inverter)[n].offset == reg), None)
            if name is None:
                return []
            names.append(f"{self.inverter}.{name}")
        return names

    def grid_written(self, names: list[str]) -> None:
        """After a test hook write: take the grid from the registers written."""
        mid = self.inverter
        if f"{mid}.Hz" in names:
            self.grid_hz = round(self.scaled(mid, "Hz"), max(0, -self.get(mid, "Hz_SF")))
        phase = next((n for n in names if n != f"{mid}.Hz"), None)
        if phase is not None:
            self.grid_v = round(self.scaled(mid, phase.split(".")[1]), max(0, -self.get(mid, "V_SF")))
        self.set_grid()

    # -- behaviour ------------------------------------------------------------------------------
    def target(self) -> float:
        if 123 in self.addr and self.get(123, "Conn") == 0:
            return 0.0
        limit = self.wmax
        if 123 in self.addr and self.get(123, "WMaxLim_Ena") == 1:
            limit = min(limit, self.scaled(123, "WMaxLimPct") * self.wmax / 100.0)
        if 704 in self.addr and self.get(704, "WMaxLimPctEna") == 1:
            limit = min(limit, self.scaled(704, "WMaxLimPct") * self.wmax / 100.0)
        if 704 in self.addr and self.get(704, "WSetEna") == 1:
            return max(-self.wmax, min(self.scaled(704, "WSet"), limit))
        return max(0.0, min(self.available, limit))

    def revert(self, now: float) -> None:
        rules = [(123, "WMaxLimPct_RvrtTms", "123.WMaxLimPct", [(123, "WMaxLim_Ena", 0)]),
                 (123, "Conn_RvrtTms", "123.Conn", [(123, "Conn", 1)]),
                 (704, "WMaxLimPctRvrtTms", "704.WMaxLimPct", [(704, "WMaxLimPctEna", 0)]),
                 (704, "WSetRvrtTms", "704.WSet", [(704, "WSetEna", 0)])]
        for mid, timeout_point, control, fallback in rules:
            if mid not in self.addr:
                continue
            timeout = self.get(mid, timeout_point)
            last = self.refreshed.get(control)
            if timeout and last is not None and now - last > timeout:
                for m, name, value in fallback:
                    self.set(m, name, value)
                del self.refreshed[control]
                self.reverted += 1
                log.warning("reversion control=%s after %d s without refresh", control, timeout)

    def tick(self, dt: float, now: float) -> None:
        """Advance `dt` seconds to monotonic time `now`: reversions, then the output ramp."""
        self.revert(now)
        target = self.target()
        step = self.ramp * dt if self.ramp > 0 else abs(target - self.output)
        self.output += max(-step, min(step, target - self.output))
        if self.inverter is not None:
            self.set(self.inverter, "W", round(self.output))
            connected = 123 not in self.addr or self.get(123, "Conn") == 1
            limited = target < min(self.available, self.wmax)
            self.set(self.inverter, "St", ST_STANDBY if not connected else ST_THROTTLED if limited else ST_MPPT)


class SunSpecInverter(AsyncioSimulator):
    """Simulator adapter (same interface as an endpoint adapter)."""

    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        self.aio: AsyncioThread | None = None
        available = config["available_w"] if config["available_w"] >= 0 else config["wmax"]
        self.image = SunSpecImage(config["models"], config["wmax"], available, config["ramp_w_per_s"],
                                  serial=config["name"], grid_v=float(config.get("grid_voltage_v", 230.0)))
        self.steps = sorted((float(after), float(volts)) for after, volts in config.get("voltage_steps", []))
        self.writes = 0
        self.grid_writes = 0
        self._log = open(config["write_log"], "a", buffering=1) if config.get("write_log") else None
        self._server: ModbusTcpServer | None = None

    def start(self) -> None:
        self.ready_once_listening()
        self.aio = AsyncioThread(f"sim-{self.config['name']}")
        self.aio.spawn(self._serve(), "serve")

    async def _action(self, fc: int, start: int, address: int, count: int, registers: list, values: Any):
        # The image is the truth: reads get it, writes go into it (pymodbus then stores
        # the same values in its own copy, which reads overwrite again).
        lo, hi = address - BASE, address - BASE + count
        if values is None:
            registers[address - start:address - start + count] = self.image.regs[lo:hi]
            return None
        hook = self.image.hook_points(address, count)
        if hook:  # the simulator test hook (module doc): the grid moves
            self.image.regs[lo:hi] = [int(v) for v in values]
            self.image.grid_written(hook)
            self.grid_writes += 1
            if self._log:
                self._log.write(json.dumps({"t_ns": time.time_ns(), "address": address, "values": list(values),
                                            "points": hook, "hook": True}) + "\n")
            log.info("sunspec simulator=%s grid %.1f V %.2f Hz (test hook)", self.config["name"],
                     self.image.grid_v, self.image.grid_hz)
            return None
        if not self.image.writable(address, count):
            return ExcCodes.ILLEGAL_ADDRESS
        names = self.image.touched(address, count)
        self.image.regs[lo:hi] = [int(v) for v in values]
        now = time.monotonic()
        for control, points in REFRESHES.items():
            if points & set(names):
                self.image.refreshed[control] = now
        self.writes += 1
        if self._log:
            self._log.write(json.dumps({"t_ns": time.time_ns(), "address": address, "values": list(values),
                                        "points": names}) + "\n")
        return None

    async def _serve(self) -> None:
        image = self.image
        device = SimDevice(id=self.config["unit"], simdata=[SimData(BASE, values=image.regs,
                                                                    datatype=DataType.REGISTERS)],
                           action=self._action)
        self._server = ModbusTcpServer(device, address=(self.config["address"], self.config["port"]))
        await self._server.serve_forever(background=True)
        log.info("sunspec simulator=%s listening %s:%d unit=%d models=%s", self.config["name"],
                 self.config["address"], self.config["port"], self.config["unit"], self.config["models"])
        self.aio.post("listening")
        last = started = time.monotonic()
        steps = list(self.steps)
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            while steps and steps[0][0] <= now - started:  # the scenario (voltage_steps)
                image.set_grid(steps.pop(0)[1])
                log.info("sunspec simulator=%s grid %.1f V (voltage_steps)", self.config["name"], image.grid_v)
            image.tick(now - last, now)
            last = now

    async def aclose(self) -> None:
        if self._server is not None:
            await self._server.shutdown()

    def detail(self) -> dict:
        img = self.image
        info = {"listen": f"{self.config['address']}:{self.config['port']}", "unit": self.config["unit"],
                "output_w": round(img.output, 1), "writes": self.writes, "reversions": img.reverted}
        if img.inverter is not None:
            info.update(grid_voltage_v=img.grid_v, grid_frequency_hz=img.grid_hz)
        if 123 in img.addr:
            info.update(conn=img.get(123, "Conn"), wmaxlim_ena=img.get(123, "WMaxLim_Ena"),
                        wmaxlimpct=img.scaled(123, "WMaxLimPct"))
        return info
