"""A heat pump in a house, on Modbus TCP (pymodbus server): SG-Ready and a power limit in,
electrical power and temperatures out, per a map of relevent/devices/sgready_maps.toml.

The thermal model (`thermal_step`, pure): a house (heat loss `ua` W/K to the outdoor air,
thermal mass `house` J/K) heated from a buffer tank through its emitters (W per K of tank
over indoor); the heat pump heats the tank with COP = carnot_fraction x T_sink / (T_sink -
T_source), the sink 5 K above the tank and the source 5 K below the outdoor air (COP within
[1, 8]); the heating circuit runs while the room thermostat asks for heat (indoor below
room_set_c).  Outdoor air: a daily sine (`outdoor_c`).  Explicit Euler: every step's heat
flows are counted, so the energy balance closes exactly (tests/test_heat_pump_sim.py).

The heat pump's own controller (`HeatPump.advance`): the tank between set-point -
hysteresis and set-point (state 3 raises the set-point 5 K, state 4 10 K and starts at
once), never above tank_max_c; state 1 blocks the compressor; a power limit below the
least modulation stops it, above that it runs at min(rated, limit); the compressor's
minimum run and off times hold whatever is asked.  When the house falls below
comfort_min_c during a block, the heat pump leaves the block on its own, as real ones do,
and says so: flag bit 1 in its status register, a warning in the log, an entry in the
write log, a count in the detail.  It goes back to the block once the house is 0.5 K
above comfort_min_c.

`time_scale` runs the simulated clock faster than the wall clock (1440: a day in a minute)
for tests and benchmarks; the Modbus side runs in real time.  Every register write is
appended to `write_log` (JSON lines with the time in ns), like the SunSpec simulator's.

With `s2_url` set it is also an S2 resource manager (relevent/simulators/heat_pump_s2.py,
on the same loop): each PEBC.Instruction's upper limit sets the same `limit_w` the
power-limit register does, and every instruction goes to `write_log` too.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from relevent.simulators.shell import AsyncioSimulator
from relevent.devices import sgready
from relevent.protocols.aio import AsyncioThread

log = logging.getLogger("relevent.sim.heatpump")

TICK = 0.05        # s (real): model and register update period
MAX_DT = 10.0      # s (simulated): longest Euler step
WATER_J_PER_L_K = 4186.0
COP_MIN, COP_MAX = 1.0, 8.0
FLAG_COMPRESSOR, FLAG_OVERRIDE, FLAG_LIMITED = 1, 2, 4


# -- the thermal model (pure) ------------------------------------------------------------------
@dataclass(frozen=True)
class House:
    ua_w_per_k: float = 350.0          # heat loss to the outdoor air
    house_j_per_k: float = 3.0e7       # thermal mass of the house
    emitter_w_per_k: float = 800.0     # tank -> house
    tank_j_per_k: float = 300.0 * WATER_J_PER_L_K
    carnot_fraction: float = 0.45


@dataclass(frozen=True)
class Thermal:
    indoor_c: float
    tank_c: float
    # Energy counted since the start, J: electricity in, heat pumped into the tank, heat
    # from the tank to the house, heat lost by the house to the outdoor air.
    electric_j: float = 0.0
    pumped_j: float = 0.0
    emitted_j: float = 0.0
    lost_j: float = 0.0


def outdoor_c(t_s: float, mean_c: float, amplitude_k: float, coldest_hour: float) -> float:
    """Outdoor temperature at simulated time `t_s` (s from midnight): a daily sine, coldest at
    `coldest_hour`."""
    return mean_c - amplitude_k * math.cos(2 * math.pi * (t_s / 3600.0 - coldest_hour) / 24.0)


def cop(tank_c: float, outdoor: float, carnot_fraction: float) -> float:
    """COP of heating the tank from the outdoor air: a fraction of Carnot's, within [1, 8]."""
    sink, source = tank_c + 5.0 + 273.15, outdoor - 5.0 + 273.15
    if sink - source <= 0:
        return COP_MAX
    return max(COP_MIN, min(COP_MAX, carnot_fraction * sink / (sink - source)))


def thermal_step(th: Thermal, house: House, electric_w: float, outdoor: float, dt: float,
                 circulating: bool = True) -> Thermal:
    """Advance `dt` s with the compressor drawing `electric_w` W and the heating circuit's
    pump on (`circulating`) or off."""
    pumped = cop(th.tank_c, outdoor, house.carnot_fraction) * electric_w if electric_w > 0 else 0.0
    emitted = max(0.0, house.emitter_w_per_k * (th.tank_c - th.indoor_c)) if circulating else 0.0
    lost = house.ua_w_per_k * (th.indoor_c - outdoor)
    return Thermal(th.indoor_c + (emitted - lost) * dt / house.house_j_per_k,
                   th.tank_c + (pumped - emitted) * dt / house.tank_j_per_k,
                   th.electric_j + max(0.0, electric_w) * dt, th.pumped_j + pumped * dt,
                   th.emitted_j + emitted * dt, th.lost_j + lost * dt)


# -- the heat pump's own controller ------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    rated_w: float = 6000.0
    min_modulation: float = 0.3
    min_run_s: float = 600.0
    min_off_s: float = 300.0
    tank_set_c: float = 45.0
    tank_hysteresis_k: float = 5.0
    tank_max_c: float = 60.0
    comfort_min_c: float = 19.0
    room_set_c: float = 21.0
    outdoor_mean_c: float = 2.0
    outdoor_amplitude_k: float = 5.0
    coldest_hour: float = 5.0


class HeatPump:
    """The device: thermal model + controller, advanced in simulated seconds."""

    def __init__(self, house: House, settings: Settings, indoor_c: float, tank_c: float, t_s: float = 0.0) -> None:
        self.house, self.s = house, settings
        self.th = Thermal(indoor_c, tank_c)
        self.t = t_s
        self.sg = sgready.NORMAL
        self.limit_w = settings.rated_w
        self.on = False
        self.switched = -math.inf       # when the compressor last started or stopped (simulated s)
        self.override = False           # left a block for comfort
        self.overrides = 0
        self.electric_w = 0.0
        self.outdoor = outdoor_c(t_s, settings.outdoor_mean_c, settings.outdoor_amplitude_k, settings.coldest_hour)
        self.comfort_low_s = 0.0        # simulated seconds the house spent below comfort_min_c
        self.min_indoor_c = indoor_c
        self.events: list[tuple[float, str]] = []   # (simulated s, what): overrides, for the log

    def _wants_on(self) -> bool:
        s, tank = self.s, self.th.tank_c
        if tank >= s.tank_max_c:
            return False
        if self.sg == sgready.BLOCKED and not self.override:
            return False
        if self.limit_w < s.min_modulation * s.rated_w:
            return False
        target = s.tank_set_c + {sgready.RECOMMENDED: 5.0, sgready.FORCED: 10.0}.get(self.sg, 0.0)
        start = target - (0.5 if self.sg == sgready.FORCED else s.tank_hysteresis_k)
        return tank < target if self.on else tank < start

    def advance(self, dt: float) -> None:
        """Advance `dt` simulated seconds (in steps of at most MAX_DT)."""
        while dt > 1e-9:
            h = min(dt, MAX_DT)
            self._step(h)
            dt -= h

    def _step(self, h: float) -> None:
        s = self.s
        self.outdoor = outdoor_c(self.t, s.outdoor_mean_c, s.outdoor_amplitude_k, s.coldest_hour)
        indoor = self.th.indoor_c
        if self.sg == sgready.BLOCKED and not self.override and indoor < s.comfort_min_c:
            self.override, self.overrides = True, self.overrides + 1
            self.events.append((self.t, f"left the block: indoor {indoor:.2f} C below comfort_min_c {s.comfort_min_c}"))
        elif self.override and (self.sg != sgready.BLOCKED or indoor >= s.comfort_min_c + 0.5):
            self.override = False
            self.events.append((self.t, f"back to SG-Ready state {self.sg}: indoor {indoor:.2f} C"))
        want = self._wants_on()
        if want != self.on:
            wait = s.min_run_s if self.on else s.min_off_s
            if self.t - self.switched >= wait:
                self.on, self.switched = want, self.t
        self.electric_w = min(s.rated_w, self.limit_w) if self.on else 0.0
        self.th = thermal_step(self.th, self.house, self.electric_w, self.outdoor, h,
                               circulating=indoor < s.room_set_c)   # the room thermostat
        if self.th.indoor_c < s.comfort_min_c:
            self.comfort_low_s += h
        self.min_indoor_c = min(self.min_indoor_c, self.th.indoor_c)
        self.t += h

    @property
    def flags(self) -> int:
        return ((FLAG_COMPRESSOR if self.on else 0) | (FLAG_OVERRIDE if self.override else 0)
                | (FLAG_LIMITED if self.on and self.limit_w < self.s.rated_w else 0))


# -- the Modbus side ---------------------------------------------------------------------------
FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding", 16: "holding", 4: "input"}
TABLE_INDEX = {"coil": 0, "discrete": 1, "holding": 2, "input": 3}


def _counts(value: float, point: sgready.Point) -> int:
    counts = round(value / point.scale)
    if point.signed:
        return max(-32768, min(32767, counts)) & 0xFFFF
    return max(0, min(0xFFFF, counts))


class HeatPumpSimulator(AsyncioSimulator):
    """Simulator adapter (same interface as an endpoint adapter)."""

    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        self.aio: AsyncioThread | None = None
        self.map = sgready.get_map(config["map"])
        house = House(config["ua_w_per_k"], config["house_j_per_k"], config["emitter_w_per_k"],
                      config["tank_l"] * WATER_J_PER_L_K, config["carnot_fraction"])
        settings = Settings(**{k: float(config[k]) for k in Settings.__dataclass_fields__})
        self.pump = HeatPump(house, settings, config["indoor_start_c"], config["tank_start_c"],
                             config["start_hour"] * 3600.0)
        self.values: dict[str, int] = {}      # the written points' raw values
        for point, value in self.map.writes(sgready.NORMAL):
            self.values[point.name] = 0 if point.name == "enable" else value
        if "power_limit" in self.map.points:
            self.values["power_limit"] = self.map.limit_counts(settings.rated_w)
        self.writes = 0
        self._log = open(config["write_log"], "a", buffering=1) if config.get("write_log") else None
        self._server: ModbusTcpServer | None = None
        self._logged_events = 0
        self.rm: Any = None                   # the S2 resource manager (heat_pump_s2.py) when s2_url is set

    # -- registers -------------------------------------------------------------------------------
    def _simdata(self) -> tuple:
        tables: tuple[list, list, list, list] = ([], [], [], [])
        for p in self.map.points.values():
            i = TABLE_INDEX[p.table]
            if p.table in ("coil", "discrete"):
                tables[i].append(SimData(p.address, values=bool(self.values.get(p.name, 0)), datatype=DataType.BITS,
                                         readonly=p.table == "discrete"))
            else:
                tables[i].append(SimData(p.address, values=[self.values.get(p.name, 0)],
                                         datatype=DataType.REGISTERS, readonly=p.table == "input"))
        for i, table in enumerate(tables):  # pymodbus wants every table: a lone read-only point where unused
            if not table:
                dummy = 0xFFF0 if i < 2 else 0xFFFE
                table.append(SimData(dummy, values=False if i < 2 else [0],
                                     datatype=DataType.BITS if i < 2 else DataType.REGISTERS, readonly=True))
        return tables

    def _at(self, table: str, address: int) -> sgready.Point | None:
        return next((p for p in self.map.points.values() if p.table == table and p.address == address), None)

    def _measured(self, name: str) -> int:
        pump = self.pump
        p = self.map.points[name]
        value = {"readback": float(pump.sg), "power": pump.electric_w, "tank_c": pump.th.tank_c,
                 "indoor_c": pump.th.indoor_c, "outdoor_c": pump.outdoor, "flags": float(pump.flags),
                 "contact": float(self.values.get("contact", 0))}[name]   # no control box: open
        return _counts(value, p) if name not in ("readback", "flags", "contact") else int(value)

    def _apply_written(self) -> None:
        """The device reads its SG-Ready points and its power limit."""
        enabled = "enable" not in self.map.points or self.values.get("enable") == self.map.points["enable"].value
        state = self.map.state_of({k: v for k, v in self.values.items() if k in ("state", "input1", "input2")})
        self.pump.sg = state if (enabled and state is not None) else sgready.NORMAL
        if "power_limit" in self.map.points:
            self.pump.limit_w = self.values["power_limit"] * self.map.points["power_limit"].scale

    async def _action(self, fc: int, start: int, address: int, count: int, registers: list, values: Any):
        table = FC_TABLE.get(fc)
        if values is None:
            if table == "input":   # the model is the truth: fill the registers read
                for i in range(count):
                    p = self._at("input", address + i)
                    if p is not None:
                        registers[address - start + i] = self._measured(p.name)
            return None
        points = []
        for i, v in enumerate(values):
            p = self._at(table, address + i)
            if p is None or p.name in ("readback", "power", "tank_c", "indoor_c", "outdoor_c", "flags", "contact"):
                return ExcCodes.ILLEGAL_ADDRESS
            raw = int(bool(v)) if table == "coil" else int(v)
            if p.name == "state" and raw not in sgready.NAMES:
                return ExcCodes.ILLEGAL_VALUE
            points.append((p.name, raw))
        before = self.pump.sg
        for name, raw in points:
            self.values[name] = raw
        self._apply_written()
        self.writes += 1
        if self._log:
            self._log.write(json.dumps({"t_ns": time.time_ns(), "table": table, "address": address,
                                        "values": [int(v) for v in values], "points": [n for n, _ in points],
                                        "sg_state": self.pump.sg, "limit_w": self.pump.limit_w,
                                        "sim_s": round(self.pump.t, 1)}) + "\n")
        if self.pump.sg != before:
            log.info("heat-pump simulator=%s SG-Ready %d -> %d", self.config["name"], before, self.pump.sg)
        return None

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.ready_once_listening()
        self.aio = AsyncioThread(f"sim-{self.config['name']}")
        self.aio.spawn(self._serve(), "serve")
        if self.config.get("s2_url"):     # s2-python loaded only for a simulator that speaks S2
            from relevent.simulators.heat_pump_s2 import HeatPumpRm
            self.rm = HeatPumpRm(self.config, self.pump, self._log_line)
            self.aio.spawn(self.rm.run(), "s2")

    def _log_line(self, entry: dict) -> None:
        if self._log:
            self._log.write(json.dumps(entry) + "\n")

    async def _serve(self) -> None:
        self._apply_written()
        device = SimDevice(id=self.config["unit"], simdata=self._simdata(), action=self._action)
        self._server = ModbusTcpServer(device, address=(self.config["address"], self.config["port"]))
        await self._server.serve_forever(background=True)
        log.info("heat-pump simulator=%s listening %s:%d unit=%d map=%s (%s) time_scale=%g", self.config["name"],
                 self.config["address"], self.config["port"], self.config["unit"], self.map.name, self.map.status,
                 self.config["time_scale"])
        self.aio.post("listening")
        scale = float(self.config["time_scale"])
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            self.pump.advance((now - last) * scale)
            last = now
            self._report_events()

    def _report_events(self) -> None:
        for t, what in self.pump.events[self._logged_events:]:
            log.warning("heat-pump simulator=%s at %.2f h (simulated): %s", self.config["name"], t / 3600.0, what)
            if self._log:
                self._log.write(json.dumps({"t_ns": time.time_ns(), "event": "comfort", "sim_s": round(t, 1),
                                            "what": what}) + "\n")
        self._logged_events = len(self.pump.events)

    async def aclose(self) -> None:
        if self.rm is not None:
            await self.rm.close()
        if self._server is not None:
            await self._server.shutdown()

    def detail(self) -> dict:
        p = self.pump
        return {"listen": f"{self.config['address']}:{self.config['port']}", "unit": self.config["unit"],
                "map": self.map.name, "sg_state": p.sg, "compressor": p.on, "electric_w": round(p.electric_w, 1),
                "limit_w": p.limit_w, "tank_c": round(p.th.tank_c, 2), "indoor_c": round(p.th.indoor_c, 2),
                "outdoor_c": round(p.outdoor, 2), "cop": round(cop(p.th.tank_c, p.outdoor, p.house.carnot_fraction), 2),
                "comfort_override": p.override, "overrides": p.overrides, "writes": self.writes,
                "electric_kwh": round(p.th.electric_j / 3.6e6, 3), "sim_hours": round(p.t / 3600.0, 3),
                "s2": self.rm.detail() if self.rm is not None else None}
