"""A SunSpec inverter on Modbus TCP (pymodbus server): models 1, 103, 121, 123 and 704.

Behaviour, as a real inverter would:
* output = min(available power, limit), the limit being WMaxLimPct of WMax when WMaxLim_Ena
  (model 123) or WMaxLimPctEna (704); with 704 WSetEna the output follows WSet instead;
  Conn = 0 disconnects (output 0, St = 8 standby);
* the output ramps at `ramp_w_per_s` (0: at once);
* reversion: a control not refreshed within its RvrtTms falls back by itself (limits off,
  Conn back to 1), so a dead edge never leaves the device curtailed forever.
Every write is appended to `write_log` (JSON lines with the time in ns) when configured:
benchmarks read it from outside the site.
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

from relevent.devices import sunspec
from relevent.protocols.aio import AsyncioThread

log = logging.getLogger("relevent.sim.sunspec")

BASE = 40000
TICK = 0.05   # s, output and reversion update period
SF = {"W_SF": 0, "WMax_SF": 0, "WMaxLimPct_SF": -2, "WSet_SF": 0, "WSetPct_SF": -2, "A_SF": -2, "V_SF": -1,
      "Hz_SF": -2, "VA_SF": 0, "VAr_SF": 0, "PF_SF": -2, "WH_SF": 0}
ST_OFF, ST_MPPT, ST_THROTTLED, ST_STANDBY = 1, 4, 5, 8
# A write to any of these points refreshes that control's reversion timer.
REFRESHES = {
    "123.WMaxLimPct": {"123.WMaxLimPct", "123.WMaxLimPct_RvrtTms", "123.WMaxLim_Ena"},
    "123.Conn": {"123.Conn", "123.Conn_RvrtTms"},
    "704.WMaxLimPct": {"704.WMaxLimPct", "704.WMaxLimPctEna", "704.WMaxLimPctRvrtTms"},
    "704.WSet": {"704.WSet", "704.WSetEna", "704.WSetRvrtTms"},
}


class SunSpecImage:
    """The register image and the inverter's behaviour on it (runs on the loop thread)."""

    def __init__(self, models: list[int], wmax: float, available: float, ramp: float, serial: str) -> None:
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
        if 103 in self.addr:
            self.set(103, "W", round(self.output))
            connected = 123 not in self.addr or self.get(123, "Conn") == 1
            limited = target < min(self.available, self.wmax)
            self.set(103, "St", ST_STANDBY if not connected else ST_THROTTLED if limited else ST_MPPT)


class SunSpecInverter:
    """Simulator adapter (same interface as an endpoint adapter)."""

    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        self.aio: AsyncioThread | None = None
        available = config["available_w"] if config["available_w"] >= 0 else config["wmax"]
        self.image = SunSpecImage(config["models"], config["wmax"], available, config["ramp_w_per_s"],
                                  serial=config["name"])
        self.writes = 0
        self._log = open(config["write_log"], "a", buffering=1) if config.get("write_log") else None
        self._server: ModbusTcpServer | None = None

    def start(self) -> None:
        self.aio = AsyncioThread(f"sim-{self.config['name']}")
        self.aio.spawn(self._serve(), "serve")

    async def _action(self, fc: int, start: int, address: int, count: int, registers: list, values: Any):
        # The image is the truth: reads get it, writes go into it (pymodbus then stores
        # the same values in its own copy, which reads overwrite again).
        lo, hi = address - BASE, address - BASE + count
        if values is None:
            registers[address - start:address - start + count] = self.image.regs[lo:hi]
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
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            image.tick(now - last, now)
            last = now

    def stop(self) -> None:
        if self.aio:
            if self._server is not None:
                self.aio.run_quietly(self._server.shutdown(), 2.0)
            self.aio.stop()
        if self._log:
            self._log.close()

    def fds(self) -> list[int]:
        return [self.aio.fileno()] if self.aio else []

    def on_ready(self, fds: list[int]) -> None:
        self.aio.events(f"simulator {self.config['name']}")

    def on_message(self, message: Any, sender: Any) -> bool:
        return False

    def detail(self) -> dict:
        img = self.image
        info = {"listen": f"{self.config['address']}:{self.config['port']}", "unit": self.config["unit"],
                "output_w": round(img.output, 1), "writes": self.writes, "reversions": img.reverted}
        if 123 in img.addr:
            info.update(conn=img.get(123, "Conn"), wmaxlim_ena=img.get(123, "WMaxLim_Ena"),
                        wmaxlimpct=img.scaled(123, "WMaxLimPct"))
        return info
