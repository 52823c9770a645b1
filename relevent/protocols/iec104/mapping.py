"""What an IEC 60870-5-104 command means for the site, and what a monitoring point shows.

Invariant: every decision the controlled station makes about a command — which DER
function an information object address (IOA) steers, whether a value is refused, whether
it releases the schedule, whether a time tag is too old, the schedule that follows it —
is made here, by pure functions of the configuration, the received value and `now` (ms,
UTC).  The endpoint (endpoint.py) only moves values between c104 and these functions and
the control session.  So the meaning of a frame is unit-tested without a socket, and
`relevent check` refuses an address table the endpoint could not serve (same code:
`parse_table`).

104 has no schedule object: a set-point means "this value from now until replaced".  Each
command therefore becomes a one-entry schedule of its own (`schedule_writes`): one entry
lasting HOLD_S ("until replaced", in practice), starting START_LEAD_MS from now because the
scheduling core only accepts a start in the future (the controller checks it again when the
write reaches it: under load that can take longer, and the endpoint then writes it once more
RETRY_LEAD_MS ahead), at the endpoint's priority.  A new command while the last one is in
force only replaces the value of that running entry (`command_writes`: no start lead, the
device follows as soon as the controller has the write), and is enabled again for its
durable confirmation; otherwise it rewrites the schedule whole.  A release disables it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from relevent.scheduling.schedule import START_SLOTS, State

SETPOINT_TYPES = ("C_SE_NC_1", "C_SE_NB_1", "C_SE_TC_1")   # short float, scaled, short float + CP56 time
SWITCH_TYPE = "C_SC_NA_1"                                  # single command
COMMAND_TYPES = SETPOINT_TYPES + (SWITCH_TYPE,)
ANALOG_KINDS = ("ActPow", "MaxPow")
MONITOR_KEYS = ("output", "running", "in_force")           # per function; "measured" per DER
FUNCTION_KEYS = ("der", "function") + COMMAND_TYPES + ("release",) + MONITOR_KEYS
MEASUREMENT_KEYS = ("der", "ioa")
UNITS = ("W", "percent")
IOA_MIN, IOA_MAX = 1, 16777215                             # 3 octets; 0 means "irrelevant"
COMMON_ADDRESS_MAX = 65534                                 # 65535 is the global address
HOLD_S = 315_360_000          # SchdIntv of a command's one entry: ten years, i.e. until replaced
START_LEAD_MS = 20            # StrTm01 = now + this: the core refuses a start that is not in the future
RETRY_LEAD_MS = 250           # the same, once more, when the write reached its controller too late
MEASUREMENT_STALE_MS = 10_000  # a measurement older than this is reported not topical
RELEASE_TOLERANCE = 1e-6      # relative: a release value travels as float32


# -- the address table ------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandPoint:
    """A command IOA: `role` "setpoint" (C_SE_*), "switch" (C_SC_NA_1 on OnOff: the value
    itself) or "release" (C_SC_NA_1 that disables the function's command schedule)."""
    ioa: int
    type: str
    der: str
    kind: str
    role: str


@dataclass(frozen=True)
class MonitorPoint:
    """A monitoring IOA: `what` "output" (the controller's value in force: M_ME_NC_1, or
    M_SP_NA_1 for OnOff), "running" (this endpoint's command schedule is running),
    "in_force" (the output comes from it) or "measured" (the DER's power, M_ME_NC_1)."""
    ioa: int
    type: str
    der: str
    kind: str | None
    what: str


@dataclass(frozen=True)
class Table:
    commands: dict            # ioa -> CommandPoint
    monitors: dict            # ioa -> MonitorPoint
    targets: tuple            # (der, kind) that commands steer, in configuration order


def parse_table(functions: Any, measurements: Any, ders: dict, unit: str = "W") -> tuple[Table, list]:
    """The address table from the endpoint's `functions` and `measurements` lists, and the
    problems found: [(topology key, message)].  `ders` maps a DER's name to its topology
    table (functions, rated_power_w).  A table with problems must not be served."""
    problems: list[tuple[str, str]] = []
    commands: dict[int, CommandPoint] = {}
    monitors: dict[int, MonitorPoint] = {}
    targets: list[tuple[str, str]] = []
    used: dict[int, str] = {}

    def take(ioa: Any, where: str, key: str) -> int | None:
        if isinstance(ioa, bool) or not isinstance(ioa, int) or not IOA_MIN <= ioa <= IOA_MAX:
            problems.append((key, f"{where}: IOA must be an integer {IOA_MIN}..{IOA_MAX}, got {ioa!r}"))
            return None
        if ioa in used:
            problems.append((key, f"{where}: IOA {ioa} is already {used[ioa]}"))
            return None
        used[ioa] = where
        return ioa

    for i, item in enumerate(functions if isinstance(functions, list) else []):
        where = f"functions[{i}]"
        if not isinstance(item, dict):
            problems.append(("functions", f"{where}: expected a table"))
            continue
        unknown = [k for k in item if k not in FUNCTION_KEYS]
        if unknown:
            problems.append(("functions", f"{where}.{unknown[0]}: unknown key (known: {', '.join(FUNCTION_KEYS)})"))
            continue
        der_name, kind = item.get("der"), item.get("function")
        der = ders.get(der_name) if isinstance(der_name, str) else None
        if der is None:
            problems.append(("functions", f"{where}.der: DER {der_name!r} does not exist "
                                          f"(known: {', '.join(ders) or 'none defined'})"))
            continue
        if kind not in der.get("functions", ()):
            problems.append(("functions", f"{where}.function: {kind!r} is not one of {der_name}'s functions "
                                          f"({', '.join(der.get('functions', ()))})"))
            continue
        if (der_name, kind) in targets:
            problems.append(("functions", f"{where}: {der_name}/{kind} is already listed"))
            continue
        targets.append((der_name, kind))
        if kind in ANALOG_KINDS and unit == "percent" and not der.get("rated_power_w"):
            problems.append(("unit", f"{where}: per cent of rated power, but {der_name} has no rated_power_w"))
        for key in COMMAND_TYPES:
            if key not in item:
                continue
            if (key == SWITCH_TYPE) != (kind == "OnOff"):
                problems.append(("functions", f"{where}.{key}: " + (
                    "a single command switches OnOff only (use C_SE_NC_1, C_SE_NB_1 or C_SE_TC_1 for a set-point)"
                    if key == SWITCH_TYPE else "OnOff takes a single command (C_SC_NA_1), not a set-point")))
                continue
            ioa = take(item[key], f"{where}.{key}", "functions")
            if ioa is not None:
                commands[ioa] = CommandPoint(ioa, key, der_name, kind, "switch" if key == SWITCH_TYPE else "setpoint")
        if "release" in item:
            ioa = take(item["release"], f"{where}.release", "functions")
            if ioa is not None:
                commands[ioa] = CommandPoint(ioa, SWITCH_TYPE, der_name, kind, "release")
        for what in MONITOR_KEYS:
            if what in item:
                ioa = take(item[what], f"{where}.{what}", "functions")
                if ioa is not None:
                    analog = what == "output" and kind in ANALOG_KINDS
                    monitors[ioa] = MonitorPoint(ioa, "M_ME_NC_1" if analog else "M_SP_NA_1", der_name, kind, what)
    for i, item in enumerate(measurements if isinstance(measurements, list) else []):
        where = f"measurements[{i}]"
        if not isinstance(item, dict) or set(item) != set(MEASUREMENT_KEYS):
            problems.append(("measurements", f"{where}: expected {{der = \"<DER>\", ioa = <IOA>}}"))
            continue
        if item["der"] not in ders:
            problems.append(("measurements", f"{where}.der: DER {item['der']!r} does not exist "
                                             f"(known: {', '.join(ders) or 'none defined'})"))
            continue
        if unit == "percent" and not ders[item["der"]].get("rated_power_w"):
            problems.append(("unit", f"{where}: per cent of rated power, but {item['der']} has no rated_power_w"))
        ioa = take(item["ioa"], f"{where}.ioa", "measurements")
        if ioa is not None:
            monitors[ioa] = MonitorPoint(ioa, "M_ME_NC_1", item["der"], None, "measured")
    return Table(commands, monitors, tuple(targets)), problems


def site_problems(ep: dict, data: dict) -> list:
    """`relevent check` for an iec104 endpoint: its address table, its schedule number, and
    over TLS its `peer_certs` (peers.py)."""
    ders = {d["name"]: d for d in data.get("der", []) if isinstance(d.get("name"), str)}
    table, problems = parse_table(ep.get("functions"), ep.get("measurements"), ders, ep.get("unit", "W"))
    if not table.commands and not problems:
        problems.append(("functions", "no command address: list at least one DER function with a C_SE_NC_1, "
                                      "C_SE_NB_1, C_SE_TC_1 or (OnOff) C_SC_NA_1 IOA"))
    number = ep.get("schedule")
    for der_name, kind in table.targets:
        if isinstance(number, int) and number > ders[der_name]["schedules"]:
            problems.append(("schedule", f"schedule {number} but {der_name} has {ders[der_name]['schedules']} per "
                                         "function"))
            break
    if ep.get("tls") or ep.get("peer_certs"):
        from relevent.protocols.iec104.peers import check_problems   # cryptography: only for TLS

        problems += check_problems(ep, data)
    return problems


# -- commands ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """The endpoint's settings that decide a command (from its topology table)."""
    unit: str = "W"
    scaled_step: float = 1.0             # a C_SE_NB_1 count, in `unit`
    release_value: float | None = None   # a set-point of this value (in `unit`) releases
    max_age_ms: int = 10_000             # C_SE_TC_1: an older time tag is refused
    priority: int = 250
    schedule: str = "FSCH01"

    @staticmethod
    def of(config: dict) -> "Options":
        release = config.get("release_value")
        return Options(unit=config.get("unit", "W"), scaled_step=float(config.get("scaled_step", 1.0)),
                       release_value=None if release is None else float(release),
                       max_age_ms=int(float(config.get("max_age_s", 10.0)) * 1000),
                       priority=int(config.get("priority", 250)),
                       schedule=f"FSCH{int(config.get('schedule', 1)):02d}")


@dataclass(frozen=True)
class Instruction:
    """What a command asks: "set" `value` (W, or a bool for OnOff) into the function's
    command schedule, "release" it, or "refuse" (a negative confirmation) with `reason`."""
    action: str
    der: str
    kind: str
    value: float | bool | None = None
    reason: str = ""


def to_watts(value: float, unit: str, rated_w: float) -> float:
    return value * rated_w / 100.0 if unit == "percent" else value


def from_watts(w: float, unit: str, rated_w: float) -> float | None:
    """`w` in `unit`; None when per cent has no rated power to refer to."""
    if unit != "percent":
        return w
    return w * 100.0 / rated_w if rated_w else None


def time_tag_refusal(tag_ms: int | None, now: int, max_age_ms: int) -> str:
    """Why a time-tagged command must not be executed ("" if it may): too old, or from a
    clock that runs ahead by more than the same margin."""
    if tag_ms is None:
        return "no time tag"
    age = now - tag_ms
    if age > max_age_ms:
        return f"time tag is {age / 1000:.3f} s old (at most {max_age_ms / 1000:g} s)"
    if -age > max_age_ms:
        return f"time tag lies {-age / 1000:.3f} s in the future (the controlling station's clock is off)"
    return ""


ACTIVATION, DEACTIVATION = 6, 8   # causes of transmission of a command in the control direction


def cause_refusal(cot: int, test: bool, negative: bool = False) -> str:
    """Why a command ASDU with this cause of transmission (and test and P/N bits) must not
    be executed ("" if it may).  Only an activation (COT 6) asks for a command; a
    deactivation (8) has nothing to stop under direct execute (and must never run as an
    activation); any other cause is not a command in the control direction.  A command
    flagged test (T = 1) is not executed on the process, nor one flagged negative (P/N = 1,
    meaningless in the control direction: a garbled frame)."""
    if cot == DEACTIVATION:
        return "a deactivation (COT 8): direct-execute commands cannot be stopped, nothing done"
    if cot != ACTIVATION:
        return f"cause of transmission {cot} is not an activation (6)"
    if test:
        return "a test command (T = 1): not executed on the process"
    if negative:
        return "an activation flagged negative (P/N = 1)"
    return ""


def is_release(value: float, release_value: float | None) -> bool:
    return release_value is not None and abs(value - release_value) <= RELEASE_TOLERANCE * max(1.0, abs(release_value))


def value_range(kind: str, unit: str, rated_w: float) -> tuple[float, float] | None:
    """The set-points accepted, in `unit`: ActPow within ±rated, MaxPow within 0..rated
    (±100 / 0..100 in per cent); without a rated power (watts only), any finite ActPow and
    any finite MaxPow >= 0 (None: no upper bound)."""
    if unit == "percent":
        return (-100.0, 100.0) if kind == "ActPow" else (0.0, 100.0)
    if rated_w > 0:
        return (-rated_w, rated_w) if kind == "ActPow" else (0.0, rated_w)
    return None


def decide(point: CommandPoint, value: Any, options: Options, rated_w: float, now: int,
           time_tag_ms: int | None = None) -> Instruction:
    """What a command received on `point` with `value` (a float, a scaled count or a bool,
    as decoded) asks, at `now`."""
    def refuse(reason: str) -> Instruction:
        return Instruction("refuse", point.der, point.kind, None, reason)

    if point.type == "C_SE_TC_1":
        why = time_tag_refusal(time_tag_ms, now, options.max_age_ms)
        if why:
            return refuse(why)
    if point.role == "release":
        return Instruction("release", point.der, point.kind)
    if point.role == "switch":
        if not isinstance(value, bool):
            return refuse(f"a single command carries on or off, got {value!r}")
        return Instruction("set", point.der, point.kind, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return refuse(f"a set-point carries a number, got {value!r}")
    given = float(value) * options.scaled_step if point.type == "C_SE_NB_1" else float(value)
    if not math.isfinite(given):
        return refuse(f"set-point {given!r} is not a finite number")
    if is_release(given, options.release_value):
        return Instruction("release", point.der, point.kind)
    bounds = value_range(point.kind, options.unit, rated_w)
    unit = "%" if options.unit == "percent" else " W"
    if bounds is not None and not bounds[0] <= given <= bounds[1]:
        return refuse(f"{point.kind} set-point {given:g}{unit} is outside {bounds[0]:g}..{bounds[1]:g}{unit}")
    if bounds is None and point.kind == "MaxPow" and given < 0:
        return refuse(f"MaxPow set-point {given:g} W is negative")
    return Instruction("set", point.der, point.kind, to_watts(given, options.unit, rated_w))


def schedule_writes(value: float | bool, priority: int, start_ms: int) -> list[tuple[str, int, Any]]:
    """(field, index, value) for one command's schedule, whole: one entry of HOLD_S from
    `start_ms` at `priority`; every start but StrTm01 cleared, so nothing of an earlier
    schedule in that slot survives."""
    writes: list[tuple[str, int, Any]] = [("NumEntr", 0, 1), ("SchdIntv", 0, HOLD_S), ("SchdPrio", 0, priority),
                                          ("Val", 1, value)]
    writes += [("StrTm", i, start_ms if i == 1 else None) for i in range(1, START_SLOTS + 1)]
    return writes


def start_of(now: int) -> int:
    return now + START_LEAD_MS


def command_writes(value: float | bool, priority: int, now: int, current: dict | None) -> list[tuple[str, int, Any]]:
    """(field, index, value) for a set-point: only the value when `current` (the command
    schedule as the session sees it: {"status", "settings"}) is an earlier command of this
    endpoint in force (running one entry of HOLD_S at `priority`), so the new value takes
    effect the moment its controller applies the write, with no start lead; else the whole
    schedule, starting START_LEAD_MS from `now` (`schedule_writes`)."""
    if current is not None and in_force_command(current, priority):
        return [("Val", 1, value)]
    return schedule_writes(value, priority, start_of(now))


def in_force_command(current: dict, priority: int) -> bool:
    status, settings = current.get("status") or {}, current.get("settings") or {}
    return (status.get("state") == State.RUNNING and settings.get("num_entr") == 1
            and settings.get("schd_intv") == HOLD_S and settings.get("prio") == priority)


# -- monitoring --------------------------------------------------------------------------------------
INVALID, NOT_TOPICAL = "invalid", "not_topical"


@dataclass(frozen=True)
class Reading:
    """A monitoring point's value and quality flags (INVALID, NOT_TOPICAL)."""
    value: float | bool
    flags: frozenset = frozenset()


def _unreachable(measurement: Any) -> bool:
    return measurement is not None and measurement.connected is False


def reading(point: MonitorPoint, view: dict | None, measurement: Any, options: Options, rated_w: float,
            now: int) -> Reading:
    """What `point` shows, from the controller's view (`WanContext.view`) and the DER's last
    measurement: invalid while unknown or while the device is unreachable; a measurement
    that is questionable or older than MEASUREMENT_STALE_MS is not topical."""
    analog = point.type == "M_ME_NC_1"
    blank: float | bool = 0.0 if analog else False
    if point.what == "measured":
        if measurement is None or measurement.w is None:
            return Reading(blank, frozenset({INVALID}))
        value = from_watts(float(measurement.w), options.unit, rated_w)
        if value is None:
            return Reading(blank, frozenset({INVALID}))
        flags = set()
        if measurement.connected is False or measurement.quality == "invalid":
            flags.add(INVALID)
        if measurement.quality == "questionable" or now - measurement.at > MEASUREMENT_STALE_MS:
            flags.add(NOT_TOPICAL)
        return Reading(value, frozenset(flags))
    if view is None:
        return Reading(blank, frozenset({INVALID}))
    if point.what == "output":
        output = view.get("output")
        if output is None:
            return Reading(blank, frozenset({INVALID}))
        flags = frozenset({INVALID}) if _unreachable(measurement) else frozenset()
        if not analog:
            return Reading(bool(output), flags)
        value = from_watts(float(output), options.unit, rated_w)
        return Reading(blank, frozenset({INVALID})) if value is None else Reading(value, flags)
    if point.what == "running":
        status = (view.get("schedules", {}).get(options.schedule) or {}).get("status")
        if status is None:
            return Reading(False, frozenset({INVALID}))
        return Reading(status.get("state") == int(State.RUNNING))
    if point.what == "in_force":
        if view.get("output") is None:
            return Reading(False, frozenset({INVALID}))
        return Reading(view.get("source") == options.schedule)
    raise ValueError(f"unknown monitoring point {point.what!r}")


def armed(view: dict | None, schedule: str) -> bool:
    """Is the command schedule enabled (ready or running)?  After a restart of the endpoint,
    what it must still end when contact is lost."""
    status = ((view or {}).get("schedules", {}).get(schedule) or {}).get("status") or {}
    return status.get("state") in (int(State.READY), int(State.RUNNING))


def policy_refusal(rule: str, refusal: Any) -> bool:
    """Did the site's policy (rights, priority band, locks) refuse, rather than a value?"""
    return rule.startswith(("party", "band", "lock")) or (refusal is not None and int(refusal) == 3)
