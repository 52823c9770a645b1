"""SG-Ready: a heat pump's four operating states, chosen from a load command and switched
within the compressor's and the tariff's rules.  Pure: no I/O, the time is an argument.

States (Bundesverband Wärmepumpe, "SG Ready" label): 1 blocked, 2 normal, 3 recommended
on, 4 forced on.  On two contacts (input 1, input 2): 1 = (1, 0), 2 = (0, 0), 3 = (0, 1),
4 = (1, 1).

Which state is wanted (`wanted_state`): blocked -> 1; a requested consumption of at least
`forced_w` -> 4; a smaller one above 0 -> 3; otherwise (none, or 0 W) -> 2.

Switching (`step`), with the times in seconds (any clock; the Modbus device uses wall time):
* the compressor: a block (into 1) waits until `min_run_s` after the last release (or the
  first command: the compressor may just have started); a release (out of 1) waits until
  `min_off_s` after the block began.  A command that would switch sooner takes effect at
  the next allowed moment: `Decision.pending_until` and `note` say so, and `due` says when
  to call `step` again;
* the tariff: a block lasts at most `block_max_s`, then it is lifted (note "block_max");
  at most `blocks_per_day` blocks start in any `window_s` (24 h: stricter than per calendar
  day, and needs no time zone); one more is refused (note "blocks_per_day").  A block
  request that was lifted or refused is not honoured again until the request ends (the
  wanted state leaves 1): a DSO that must block again sends a new block.
Switches among 2, 3 and 4 are immediate.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from relevent.devices.load import GUARANTEED_MIN_W, load_command

BLOCKED, NORMAL, RECOMMENDED, FORCED = 1, 2, 3, 4
NAMES = {BLOCKED: "blocked", NORMAL: "normal", RECOMMENDED: "recommended on", FORCED: "forced on"}
CONTACTS = {BLOCKED: (1, 0), NORMAL: (0, 0), RECOMMENDED: (0, 1), FORCED: (1, 1)}
NOTES = {"min_run": "the compressor's minimum run time", "min_off": "the compressor's minimum off time",
         "block_max": "the block reached block_max_s and was lifted",
         "blocks_per_day": "blocks_per_day reached: block refused"}
DAY_S = 86400.0


@dataclass(frozen=True)
class Rules:
    min_run_s: float = 0.0        # a block waits this long after the last release
    min_off_s: float = 0.0        # a release waits this long after the block began
    block_max_s: float = 7200.0   # tariff: longest block
    blocks_per_day: int = 3       # tariff: blocks started in any window_s
    window_s: float = DAY_S

    def __post_init__(self) -> None:
        for name in ("min_run_s", "min_off_s", "block_max_s", "window_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.blocks_per_day < 0:
            raise ValueError(f"blocks_per_day must be >= 0, got {self.blocks_per_day}")
        if self.block_max_s < self.min_off_s:
            raise ValueError(f"block_max_s ({self.block_max_s}) is shorter than min_off_s ({self.min_off_s}): "
                             "a block could not be lifted without cutting the compressor's off time")


@dataclass(frozen=True)
class SgState:
    """What is in force at the device, and the history the rules need."""
    state: int = NORMAL
    blocked_since: float | None = None    # start of the block in force
    released_at: float | None = None      # end of the last block, or the first command
    block_starts: tuple[float, ...] = ()  # starts of the blocks within the last window_s
    spent: bool = False                   # the block request in force was lifted or refused
    reason: str = ""                      # why (a NOTES key)

    def to_json(self) -> dict:
        return {"state": self.state, "blocked_since": self.blocked_since, "released_at": self.released_at,
                "block_starts": list(self.block_starts), "spent": self.spent, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: dict) -> "SgState":
        return cls(int(doc["state"]), doc.get("blocked_since"), doc.get("released_at"),
                   tuple(doc.get("block_starts", ())), bool(doc.get("spent")), str(doc.get("reason", "")))


@dataclass(frozen=True)
class Decision:
    sg: SgState                         # the new state: write sg.state to the device
    wanted: int
    pending_until: float | None = None  # the wanted state takes effect then (min_run / min_off)
    note: str = ""                      # why the wanted state is not in force ("" when it is)
    due: float | None = None            # call step() again then at the latest

    @property
    def state(self) -> int:
        return self.sg.state

    def summary(self) -> dict:
        """What status shows of it (relevent status --json, the endpoint's `sgready`)."""
        return {"state": self.state, "name": NAMES[self.state], "wanted": self.wanted,
                "pending_until": self.pending_until, "note": self.note, "blocks_in_window": len(self.sg.block_starts)}

    def text(self) -> str:
        out = f"SG-Ready {self.state} ({NAMES[self.state]})"
        if self.pending_until is not None:
            out += f", {self.wanted} ({NAMES[self.wanted]}) pending until {_when(self.pending_until)} ({NOTES[self.note]})"
        elif self.note:
            out += f", {self.wanted} ({NAMES[self.wanted]}) not applied: {NOTES[self.note]}"
        return out


def _when(t: float) -> str:
    """A time for people: the UTC clock time of a wall-clock time, else seconds."""
    if t >= 1e9:
        return time.strftime("%H:%M:%S UTC", time.gmtime(t))
    return f"{t:g} s"


def wanted_state(blocked: bool, requested_w: float | None, forced_w: float) -> int:
    """The SG-Ready state a load command asks for (module doc)."""
    if blocked:
        return BLOCKED
    if requested_w is None or not requested_w > 0:
        return NORMAL
    return FORCED if requested_w >= forced_w else RECOMMENDED


@dataclass(frozen=True)
class HeatPump:
    """A heat pump DER's SG-Ready settings, whatever carries its contacts (a Modbus map, MQTT
    relays): its rules, rating, §14a floor and the consumption that means "forced on"."""
    rules: Rules
    rated_w: float
    guaranteed_w: float
    forced_w: float

    @classmethod
    def from_der(cls, der: dict) -> "HeatPump":
        """From a DER's topology entry (`rated_power_w`, `guaranteed_min_w`, `sgready`)."""
        opts = der.get("sgready") or {}
        rated = float(der["rated_power_w"])
        return cls(Rules(float(opts.get("min_run_s", 0)), float(opts.get("min_off_s", 0)),
                         float(opts.get("block_max_s", 7200)), int(opts.get("blocks_per_day", 3))),
                   rated, float(der.get("guaranteed_min_w", GUARANTEED_MIN_W)), float(opts.get("forced_w") or rated))

    def decide(self, sg: SgState, outputs: dict[str, Any], now: float) -> tuple[Decision, float]:
        """The switch for the DER's controller outputs (function -> value, or (value, ...)
        as a DeviceCommand carries them) at `now` (s), and the dimming limit in W: the
        §14a limit holds whatever the state (a block lifted by the rules, or left by the
        device for comfort, runs within it)."""
        values = {k: v[0] if isinstance(v, tuple) else v for k, v in outputs.items()}
        load = load_command(values, self.rated_w, self.guaranteed_w)
        d = step(sg, wanted_state(load.blocked, load.requested_w, self.forced_w), now, self.rules)
        return d, load_command({**values, "OnOff": None}, self.rated_w, self.guaranteed_w).limit_w


def step(sg: SgState, wanted: int, now: float, rules: Rules) -> Decision:
    """The state in force at `now` given the wanted one.  Call it at every change of
    `wanted` and at `due`; calling it more often changes nothing."""
    if wanted not in NAMES:
        raise ValueError(f"SG-Ready state {wanted!r} is not 1..4")
    starts = tuple(t for t in sg.block_starts if t > now - rules.window_s)
    released = sg.released_at if sg.released_at is not None else now
    sg = replace(sg, block_starts=starts, released_at=released)
    if wanted != BLOCKED:
        sg = replace(sg, spent=False, reason="")
    if sg.state == BLOCKED:
        assert sg.blocked_since is not None
        end = sg.blocked_since + rules.block_max_s
        if now >= end:
            lifted = wanted == BLOCKED
            after = NORMAL if lifted else wanted
            return Decision(replace(sg, state=after, blocked_since=None, released_at=now, spent=lifted,
                                    reason="block_max" if lifted else ""), wanted, note="block_max" if lifted else "")
        if wanted == BLOCKED:
            return Decision(sg, wanted, due=end)
        free = sg.blocked_since + rules.min_off_s
        if now < free:
            return Decision(sg, wanted, pending_until=free, note="min_off", due=free)
        return Decision(replace(sg, state=wanted, blocked_since=None, released_at=now), wanted)
    if wanted != BLOCKED:
        return Decision(replace(sg, state=wanted), wanted)
    if sg.spent:
        return Decision(sg, wanted, note=sg.reason)
    if len(starts) >= rules.blocks_per_day:
        return Decision(replace(sg, spent=True, reason="blocks_per_day"), wanted, note="blocks_per_day")
    free = released + rules.min_run_s
    if now < free:
        return Decision(sg, wanted, pending_until=free, note="min_run", due=free)
    return Decision(replace(sg, state=BLOCKED, blocked_since=now, block_starts=starts + (now,)), wanted,
                    due=now + rules.block_max_s)


# -- register maps (relevent/devices/sgready_maps.toml) ------------------------------------------
TABLES = ("coil", "discrete", "holding", "input")
# point -> tables it may live in (written points: coils or holding registers)
POINT_TABLES = {"state": ("holding",), "input1": ("coil", "holding"), "input2": ("coil", "holding"),
                "enable": ("coil", "holding"), "power_limit": ("holding",), "readback": TABLES, "power": TABLES,
                "tank_c": TABLES, "indoor_c": TABLES, "outdoor_c": TABLES, "flags": TABLES, "contact": TABLES}
MAP_KEYS = ("status", "title", "source", "note", "address_base")
STATUSES = ("documented", "example")


@dataclass(frozen=True)
class Point:
    name: str
    table: str
    address: int          # on the wire (the manual's number - address_base)
    scale: float = 1.0    # units (W or degrees C) per count
    signed: bool = False
    value: int = 1        # `enable` only: what is written

    def decode(self, raw: int) -> float:
        counts = raw - 0x10000 if self.signed and raw >= 0x8000 else raw
        return counts * self.scale


@dataclass(frozen=True)
class SgMap:
    name: str
    status: str
    title: str
    source: str
    points: dict

    def writes(self, state: int) -> list[tuple[Point, int]]:
        """The writes that put the device in `state`, in order (enable first)."""
        out = [(self.points["enable"], self.points["enable"].value)] if "enable" in self.points else []
        if "state" in self.points:
            return out + [(self.points["state"], state)]
        one, two = CONTACTS[state]
        return out + [(self.points["input1"], one), (self.points["input2"], two)]

    def state_of(self, values: dict[str, int]) -> int | None:
        """The SG-Ready state from the raw values of `state` or `input1`/`input2`."""
        if "state" in values:
            return values["state"] if values["state"] in NAMES else None
        pair = (1 if values.get("input1") else 0, 1 if values.get("input2") else 0)
        return next((s for s, c in CONTACTS.items() if c == pair), None)

    def limit_counts(self, limit_w: float) -> int:
        p = self.points["power_limit"]
        return max(0, min(0xFFFF, round(limit_w / p.scale)))


def parse_maps(doc: dict) -> dict[str, SgMap]:
    """The maps of a parsed sgready_maps.toml; ValueError naming the map and key at fault."""
    out = {}
    for name, m in doc.items():
        if not isinstance(m, dict):
            raise ValueError(f"{name}: expected a table")
        base = m.get("address_base", 0)
        if m.get("status") not in STATUSES:
            raise ValueError(f"{name}.status: {m.get('status')!r} is not one of {', '.join(STATUSES)}")
        if base not in (0, 1):
            raise ValueError(f"{name}.address_base: {base!r} is not 0 or 1")
        points = {}
        for key, p in m.items():
            if key in MAP_KEYS:
                continue
            if key not in POINT_TABLES:
                raise ValueError(f"{name}.{key}: unknown (use {', '.join([*MAP_KEYS, *POINT_TABLES])})")
            if not isinstance(p, dict) or p.get("table") not in POINT_TABLES[key]:
                raise ValueError(f"{name}.{key}: needs table = one of {', '.join(POINT_TABLES[key])}")
            address = p.get("address")
            if isinstance(address, bool) or not isinstance(address, int) or not base <= address <= 0xFFFF + base:
                raise ValueError(f"{name}.{key}.address: {address!r} is not a register number")
            scale = p.get("scale_w", p.get("scale", 1.0))
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
                raise ValueError(f"{name}.{key}: scale must be a number > 0")
            points[key] = Point(key, p["table"], address - base, float(scale), bool(p.get("signed", False)),
                                int(p.get("value", 1)))
        if ("state" in points) == ("input1" in points or "input2" in points):
            raise ValueError(f"{name}: give either state (one register) or input1 and input2 (two contacts)")
        if "state" not in points and not ("input1" in points and "input2" in points):
            raise ValueError(f"{name}: input1 and input2 go together")
        where = [(p.table, p.address) for p in points.values()]
        if len(set(where)) != len(where):
            raise ValueError(f"{name}: two points at the same address")
        out[name] = SgMap(name, m["status"], str(m.get("title", "")), str(m.get("source", "")), points)
    return out


_MAPS: dict[str, SgMap] | None = None


def maps() -> dict[str, SgMap]:
    """The maps shipped with the package (read once)."""
    global _MAPS
    if _MAPS is None:
        import tomllib
        from importlib.resources import files
        _MAPS = parse_maps(tomllib.loads(files("relevent.devices").joinpath("sgready_maps.toml").read_text("utf-8")))
    return _MAPS


def get_map(name: str) -> SgMap:
    found = maps().get(name)
    if found is None:
        raise ValueError(f"SG-Ready map {name!r} unknown (known: {', '.join(maps())})")
    return found
