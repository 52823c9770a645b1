"""OpenADR 2.0b events -> 90-10 schedules: the VEN's decisions, pure (docs/openadr.md).

Invariant: an event, as openleadr hands it to the VEN (``event_descriptor``,
``active_period``, ``event_signals`` with ``intervals``), becomes exactly one of

* a whole schedule to arm (`Plan` ARM, opt in): start, step and every value, written at
  once, so a modification replaces what the schedule held and never leaves a mix;
* the end of the schedule that holds it (END: a cancellation);
* nothing (NOTHING: a test event, or an event already over);
* an opt-out naming why (the signal cannot be read, a limit lies under the site's minimum,
  the event needs more entries than a schedule holds, no schedule is free).

Why pure: opting in is a promise the VTN settles on, so the decision must be the same
wherever it is made and testable without a network, a clock or a site.  Time comes in as
``now`` (ms since the epoch, UTC); the endpoint (`endpoint.py`) does the I/O.

Signals (docs/openadr.md): ``LOAD_CONTROL`` / ``x-loadControlCapacity`` is a limit in
watts (or, with ``capacity_unit = "fraction"``, a fraction of the DER's rated power);
``SIMPLE`` levels 0-3 map to configured powers.  Several signals in one event are all
limits on the same function: the tightest one holds at every instant.  Another signal
(a price, ...) is ignored; an event with none the site can follow gets an opt-out.

Time grid: a 90-10 schedule has one step (SchdIntv, whole seconds) for all its entries, and
its start must lie in the future.  The step is the greatest common divisor of the event's
interval lengths (one entry per interval when they are equal).  An event that has already
started (received late, re-sent after a reconnect) is armed from the first step boundary
after ``now + lead``, on the same grid as the event, with the smallest step that still fits
in the schedule's slots: what passes before that boundary is not covered (`Plan.skipped_ms`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from relevent.scheduling.schedule import INT32, SLOTS, START_SLOTS, State

OPT_IN, OPT_OUT = "optIn", "optOut"
ARM, END, NOTHING = "arm", "end", "nothing"

SIMPLE_NAMES = ("SIMPLE", "simple")
LOAD_CONTROL = "LOAD_CONTROL"
CAPACITY = "x-loadControlCapacity"
SIMPLE_LEVELS = 4                      # SIMPLE levels 0 (normal) .. 3 (special)
DEFAULT_SIMPLE_FRACTIONS = (1.0, 0.7, 0.4, 0.0)   # of rated power, when no powers are configured
SCALES = {"p": 1e-12, "n": 1e-9, "micro": 1e-6, "m": 1e-3, "c": 1e-2, "d": 1e-1, "none": 1.0, None: 1.0,
          "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
POWER_UNITS = ("W",)
# What a 90-10 schedule can hold: SchdIntv is an INT32 of seconds, a start a time stamp of
# 32-bit seconds since 1970 (to 2106-02-07).  A longer step or a later end would reach MMS
# clients wrapped round (a negative SchdIntv, a start in 1970).
STEP_MAX_S = INT32[1]
END_MAX_MS = (2 ** 32 - 1) * 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Policy:
    """What the site will follow (topology keys of the openadr endpoint)."""
    rated_w: float                       # the DER's rated power: "no limit", and fractions of it
    simple_w: tuple[float, ...]          # W for SIMPLE levels 0..3
    capacity_unit: str = "W"             # x-loadControlCapacity payloads: "W" or "fraction"
    min_limit_w: float = 0.0             # a limit under this is refused (optOut)
    lead_ms: int = 500                   # a start is written at least this far ahead of now
    max_entries: int = SLOTS

    @staticmethod
    def of(config: dict, rated_w: float) -> "Policy":
        levels = tuple(float(v) for v in config.get("simple_levels") or ())
        if not levels:
            levels = tuple(f * rated_w for f in DEFAULT_SIMPLE_FRACTIONS)
        return Policy(rated_w=float(rated_w), simple_w=levels,
                      capacity_unit=config.get("capacity_unit", "W"),
                      min_limit_w=float(config.get("min_limit_w", 0.0)),
                      lead_ms=int(round(float(config.get("lead_s", 0.5)) * 1000)))


@dataclass(frozen=True)
class Plan:
    """What to do with one event (version): see the module docstring."""
    action: str                 # ARM, END or NOTHING
    opt: str                    # OPT_IN or OPT_OUT: the answer to the VTN
    reason: str
    event_id: str
    modification: int = 0
    start_ms: int = 0           # StrTm01 (ARM)
    step_s: int = 0             # SchdIntv (ARM)
    values: tuple = ()          # W, one per entry (ARM): NumEntr = len(values)
    end_ms: int = 0             # when the last entry ends
    skipped_ms: int = 0         # of the event that had passed before the schedule could start
    over: bool = False          # NOTHING because the event is over (sent again, or late): not news


@dataclass(frozen=True)
class Held:
    """An event a schedule of the endpoint was armed with."""
    event_id: str
    modification: int
    end_ms: int


class _OptOut(Exception):
    pass


# -- the event ----------------------------------------------------------------------------------------
def plan(event: dict, policy: Policy, now: int) -> Plan:
    """The decision for one event (a new one, or a new version of one)."""
    descriptor = event.get("event_descriptor") or {}
    event_id = str(descriptor.get("event_id", ""))
    modification = int(descriptor.get("modification_number") or 0)

    def out(reason: str) -> Plan:
        return Plan(NOTHING, OPT_OUT, reason, event_id, modification)

    if descriptor.get("event_status") == "cancelled":
        # What it would have armed: how to find its schedule when the endpoint does not
        # know which one holds it (it restarted since, and the cancellation came first).
        was = _arm(event, policy, now, event_id, modification, out)
        return Plan(END, OPT_IN, "cancelled by the VTN", event_id, modification, was.start_ms, was.step_s,
                    was.values, was.end_ms, was.skipped_ms)
    if _is_test(descriptor.get("test_event")):
        return Plan(NOTHING, OPT_IN, "a test event: acknowledged, nothing armed", event_id, modification)
    return _arm(event, policy, now, event_id, modification, out)


def _arm(event: dict, policy: Policy, now: int, event_id: str, modification: int, out: Any) -> Plan:
    active = event.get("active_period") or {}
    if active.get("dtstart") is not None and active.get("duration"):
        end = _ms(active["dtstart"]) + _ms_of(active["duration"])
        if 0 < _ms_of(active["duration"]) and end <= now + policy.lead_ms:   # not news, whatever it says
            return replace(out(f"over at {_iso(end)}, before it could be armed"), over=True)
    signals = event.get("event_signals") or []
    if isinstance(signals, dict):   # openleadr's nested form
        signals = signals.get("event_signals") or []
    followed, ignored = [], []
    try:
        for signal in signals:
            kind = _kind(signal)
            if kind is None:
                ignored.append(f"{signal.get('signal_name')}/{signal.get('signal_type')}")
                continue
            followed.append(_pieces(signal, kind, event.get("active_period") or {}, policy))
    except _OptOut as exc:
        return out(str(exc))
    if not followed:
        return out(f"no signal this site can follow (got {', '.join(ignored) or 'none'}; it follows "
                   f"{LOAD_CONTROL}/{CAPACITY} and SIMPLE)")
    segments = _combine(followed, policy.rated_w)
    low = min(segments, key=lambda s: s[2])
    if low[2] < policy.min_limit_w:
        return out(f"a limit of {low[2]:g} W from {_iso(low[0])} lies under the site's minimum "
                   f"{policy.min_limit_w:g} W")
    start, end = segments[0][0], segments[-1][1]
    earliest = now + policy.lead_ms
    if end <= earliest:
        return replace(out(f"over at {_iso(end)}, before it could be armed"), over=True)
    if end > END_MAX_MS:
        return out(f"ends {_iso(end)}, after the last instant a 90-10 schedule's time stamps hold "
                   f"({_iso(END_MAX_MS)})")
    lengths = [b - a for a, b, _ in segments]
    grid = math.gcd(*lengths)
    if grid % 1000:
        return out(f"interval lengths ({', '.join(f'{x / 1000:g} s' for x in sorted(set(lengths)))}) are not "
                   "whole seconds: a schedule's step is")
    chosen = _grid(start, end, grid // 1000, earliest, policy.max_entries)
    if chosen is None:
        return out(f"needs {(end - start) // grid} entries of {grid // 1000} s; a schedule holds "
                   f"{policy.max_entries}")
    first, step_s = chosen
    if step_s > STEP_MAX_S:
        return out(f"a step of {step_s} s is longer than a schedule's SchdIntv holds ({STEP_MAX_S} s)")
    values = tuple(_value_at(segments, first + j * step_s * 1000) for j in range((end - first) // (step_s * 1000)))
    skipped = first - start
    reason = "" if not skipped else f"started {_iso(start)}: armed from {_iso(first)}"
    return Plan(ARM, OPT_IN, reason, event_id, modification, first, step_s, values, end, skipped)


def addressed_elsewhere(event: dict, ven_id: str) -> str:
    """Why an event is not for this VEN ("" if it may be): its targets name VENs only, and
    not this one.  A target by group, resource or party cannot be judged here: followed."""
    targets = event.get("targets") or []
    if isinstance(targets, dict):
        targets = [targets]
    kinds = {k for t in targets if isinstance(t, dict) for k, v in t.items() if v}
    vens = {str(t.get("ven_id")) for t in targets if isinstance(t, dict) and t.get("ven_id")}
    if not ven_id or not vens or kinds != {"ven_id"} or ven_id in vens:
        return ""
    return f"addressed to {', '.join(sorted(vens))}, not to this VEN ({ven_id})"


def _is_test(flag: Any) -> bool:
    if isinstance(flag, str):
        return flag.strip().lower() not in ("", "false", "0")
    return bool(flag)


def _kind(signal: dict) -> str | None:
    name, kind = signal.get("signal_name"), signal.get("signal_type")
    if name in SIMPLE_NAMES:
        return "simple"
    if name == LOAD_CONTROL and kind == CAPACITY:
        return "capacity"
    return None


def _pieces(signal: dict, kind: str, active: dict, policy: Policy) -> list[tuple[int, int, float]]:
    """(start ms, end ms, W) of each interval of a followed signal."""
    intervals = signal.get("intervals") or []
    if not intervals:
        raise _OptOut(f"signal {signal.get('signal_name')} has no intervals")
    scale = 1.0
    measurement = signal.get("measurement") or signal.get("item_base")
    if kind == "capacity" and isinstance(measurement, dict) and measurement.get("unit"):
        if measurement["unit"] not in POWER_UNITS:
            raise _OptOut(f"signal {signal.get('signal_name')} is in {measurement['unit']!r}; this site follows "
                          f"power limits in {', '.join(POWER_UNITS)}")
        if measurement.get("scale") not in SCALES:
            raise _OptOut(f"signal {signal.get('signal_name')}: unknown scale {measurement.get('scale')!r}")
        scale = SCALES[measurement.get("scale")]
    cursor = _ms(active.get("dtstart")) if active.get("dtstart") is not None else None
    out = []
    for i, interval in enumerate(intervals):
        start = _ms(interval["dtstart"]) if interval.get("dtstart") is not None else cursor
        duration = interval.get("duration")
        length = _ms_of(duration) if duration is not None else None
        if start is None:
            raise _OptOut(f"interval {i} of {signal.get('signal_name')} has no start")
        if length is None or length <= 0:
            raise _OptOut(f"interval {i} of {signal.get('signal_name')} is open-ended (duration "
                          f"{duration}): a schedule has a fixed length")
        payload = interval.get("signal_payload")
        if payload is None and interval.get("signal_payloads"):
            payload = interval["signal_payloads"][0]
        out.append((start, start + length, _watts(signal, kind, payload, i, scale, policy)))
        cursor = start + length
    return out


def _watts(signal: dict, kind: str, payload: Any, i: int, scale: float, policy: Policy) -> float:
    name = signal.get("signal_name")
    if isinstance(payload, bool) or not isinstance(payload, (int, float)) or not math.isfinite(payload):
        raise _OptOut(f"interval {i} of {name}: payload {payload!r} is not a number")
    if kind == "simple":
        if payload != int(payload) or not 0 <= payload < len(policy.simple_w):
            raise _OptOut(f"interval {i} of {name}: level {payload:g} is not one of 0..{len(policy.simple_w) - 1}")
        return policy.simple_w[int(payload)]
    if policy.capacity_unit == "fraction":
        if not 0.0 <= payload <= 1.0:
            raise _OptOut(f"interval {i} of {name}: capacity {payload:g} is not a fraction 0..1")
        return payload * policy.rated_w
    return float(payload) * scale


def _combine(signals: list[list[tuple[int, int, float]]], no_limit: float) -> list[tuple[int, int, float]]:
    """Contiguous (start, end, W) from the first start to the last end, cut at every
    interval boundary of every signal (so equal neighbours stay one entry each): the
    tightest limit of the signals in force; a stretch no signal covers has no limit (rated
    power)."""
    bounds = sorted({t for pieces in signals for a, b, _ in pieces for t in (a, b)})
    out = []
    for a, b in zip(bounds, bounds[1:]):
        values = [v for pieces in signals for s, e, v in pieces if s <= a < e]
        out.append((a, b, min(values) if values else no_limit))
    return out


def _grid(start: int, end: int, step_s: int, earliest: int, slots: int) -> tuple[int, int] | None:
    """(first start, step s): the event's own grid when it starts in time; else the smallest
    divisor of that step whose first boundary after `earliest` leaves at most `slots` entries."""
    if start >= earliest:
        return (start, step_s) if (end - start) // (step_s * 1000) <= slots else None
    for step in _divisors(step_s):
        ms = step * 1000
        first = start + -(-(earliest - start) // ms) * ms
        if first < end and (end - first) // ms <= slots:
            return first, step
    return None


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _value_at(segments: list[tuple[int, int, float]], t: int) -> float:
    for a, b, v in segments:
        if a <= t < b:
            return v
    raise ValueError(f"no segment at {t}")  # cannot happen: the grid lies inside the segments


def _ms(t: Any) -> int:
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return (t - _EPOCH) // timedelta(milliseconds=1)
    return int(t)


def _ms_of(d: Any) -> int:
    if isinstance(d, timedelta):
        return d // timedelta(milliseconds=1)
    return int(d)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the schedule ---------------------------------------------------------------------------------------
def schedule_writes(p: Plan, priority: int) -> list[tuple[str, int, Any]]:
    """(field, index, value) for Schedule.write, in order: the whole schedule, so an event
    (or its new version) replaces whatever the schedule held.  The start goes into StrTm01,
    every other StrTm is cleared."""
    writes: list[tuple[str, int, Any]] = [("NumEntr", 0, len(p.values)), ("SchdIntv", 0, p.step_s),
                                          ("SchdPrio", 0, priority)]
    writes += [("Val", i, float(v)) for i, v in enumerate(p.values, start=1)]
    writes += [("StrTm", i, p.start_ms if i == 1 else None) for i in range(1, START_SLOTS + 1)]
    return writes


def armed_with(p: Plan, schedule: dict | None, priority: int) -> bool:
    """Does this schedule (its `view` entry: status and settings) already run or wait to run
    exactly what `p` holds from p.start_ms on?  Then an event sent again needs no new write
    (it was armed before a reconnect or a restart of the endpoint, and writing it again
    would end the run in force until the next step boundary), and a cancellation of an event
    the endpoint lost track of finds the schedule to disable."""
    if not p.values or not schedule or not schedule.get("status") or not schedule.get("settings"):
        return False
    status, settings = schedule["status"], schedule["settings"]
    if status.get("state") not in (int(State.READY), int(State.RUNNING)):
        return False
    if settings.get("prio") != priority:
        return False
    starts = [tm for tm, _cal in settings.get("starts", []) if tm is not None]
    if status["state"] == int(State.RUNNING):
        origin = status.get("act_start")
        if any(tm != origin for tm in starts):
            return False   # another start is pending: the schedule does more than this event
    elif len(starts) == 1:
        origin = starts[0]
    else:
        return False
    num, step = settings.get("num_entr"), settings.get("schd_intv")
    values = settings.get("values", [])
    if origin is None or not isinstance(num, int) or not isinstance(step, int) or step <= 0:
        return False
    step *= 1000
    if p.start_ms < origin or origin + num * step != p.end_ms:
        return False
    # Both are step functions: equal at every boundary of either, they are equal throughout.
    mine = p.step_s * 1000
    times = {p.start_ms + j * mine for j in range(len(p.values))}
    times |= {origin + k * step for k in range(num) if origin + k * step >= p.start_ms}
    for t in times:
        old, new = values[(t - origin) // step], p.values[(t - p.start_ms) // mine]
        if not math.isclose(float(old), float(new), rel_tol=1e-6, abs_tol=1e-3):
            return False
    return True


def choose_schedule(event_id: str, pool: Iterable[str], held: dict[str, Held], busy: set[str],
                    now: int) -> tuple[str | None, str]:
    """The schedule for an event: the one already holding it (a modification replaces it),
    else the first of `pool` that holds no event still to come and is not `busy` (enabled by
    something this endpoint does not know of, e.g. before a restart); else none, and why."""
    pool = list(pool)
    for name in pool:
        h = held.get(name)
        if h is not None and h.event_id == event_id:
            return name, ""
    for name in pool:
        h = held.get(name)
        if (h is None or h.end_ms <= now) and name not in busy:
            return name, ""
    holding = ", ".join(f"{n}: {held[n].event_id}" if n in held else f"{n}: armed before" for n in pool)
    return None, f"every schedule of this endpoint holds an event to come ({holding}): add one to `schedules`"
