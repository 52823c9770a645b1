"""Property tests: the state machine, arbitration, forecast and `next_change` against a
brute-force reference written straight from the definitions in docs/scheduling.md.

The reference (`Ref` and the functions after it) shares no code with relevent.scheduling
but the Calendar record: periodic occurrences come from walking the calendar hour by hour
(Hour) or day by day (other periods) and asking "is this an occurrence?"; the run in force,
the entry, NxtStrTm and the winner are taken from rules 3-5 at each instant; the reference
steps through its own boundaries (every occurrence + k * SchdIntv), never the core's
wake-ups.

What the generated cases reach:

* priorities 7-13 on both sides of the reserve's 10 (ties with it included), and the
  window opens 20 s before the reserve's hourly restart, so an equal-priority schedule
  loses to the reserve's later start and wins again at its own next start;
* starts, operate and write times on any millisecond (not whole seconds);
* values with NaN and +-inf, NumEntr above and below the number of values written (the
  unwritten slots output their initial 0.0) and invalid (0, 101), SchdIntv 0;
* writes (Val, SchdPrio, NumEntr, SchdIntv, StrTm, also refused ones: in the past, on the
  reserve's locks), disables, and enables again after enabling, at any time;
* periodic starts of every period (Hour, Day, Week, Month, Year: the five the core
  supports, occType Time; an unsupported occType rarely), zero fields taken from setTm,
  day 29-31 clamped to short months, windows of four periods (a year scale crosses 29
  February 2028).

Each property is shown to fail on a bug planted in a copy of relevent/scheduling:
`bench/planted_bugs.py` plants 16 (arbitration tie-breaks and priority, run end and entry
off by one millisecond, used starts kept, a missed wake-up, NaN accepted, StrTm = now
accepted, enable without a start, disable leaving Ready, weekly and leap-day calendars,
occurrences before setTm, the forecast skipping a due schedule, next_change's state) and
records which test caught each: all 16 are caught, and each property catches at least one
bug that at most one other property catches (the table: bench/README.md, "Planted bugs").
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relevent.scheduling.arbitration import forecast, next_change, output_of
from relevent.scheduling.calendar import Calendar, OccPer
from relevent.scheduling.schedule import Schedule, StartTime

S = 1000
MIN = 60 * S
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_800_003_580_000          # 2027-01-15T08:59:40Z: the reserve restarts 20 s in
TIME_WINDOW = 60 * S            # time-triggered scenarios
RESERVE_PRIO = 10
NOT_READY, READY, RUNNING = 1, 3, 4   # SchdSt
UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Per period: its (longest) length, the longest SchdIntv generated (s), the sampler's grid.
PERIODS = {
    OccPer.HOUR: (HOUR, 1800, MIN),
    OccPer.DAY: (DAY, 12 * 3600, 30 * MIN),
    OccPer.WEEK: (7 * DAY, 84 * 3600, 3 * HOUR),
    OccPer.MONTH: (31 * DAY, 15 * 24 * 3600, 12 * HOUR),
    OccPer.YEAR: (366 * DAY, 180 * 24 * 3600, 7 * DAY),
}

PROFILE = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# -- the generated cases -------------------------------------------------------------------------
VALUES = [float(v) for v in range(-5, 6)] * 4 + [math.nan, math.inf, -math.inf]   # 1 in 15 not finite
value_st = st.sampled_from(VALUES)
num_entr_st = st.sampled_from(list(range(1, 9)) * 4 + [0, 101])     # NumEntr vs values written: both ways
intv_st = st.sampled_from([1, 2, 3] * 5 + [0])
# Both sides of the reserve's priority, and often equal to it (then the later start wins).
prio_st = st.sampled_from([RESERVE_PRIO + d for d in (-2, -1, 0, 0, 0, 1, 2)])


@st.composite
def calendars(draw, per: OccPer) -> Calendar:
    return Calendar(per, occ_type=draw(st.sampled_from([0] * 15 + [1])),
                    # 0 takes setTm's weekday, month or day: often drawn
                    week_day=draw(st.sampled_from([0] * 3 + list(range(1, 8)))),
                    month=draw(st.sampled_from([0] * 4 + [2] * 3 + list(range(1, 13)))),
                    day=draw(st.sampled_from([0, 0, 1, 15, 28, 29, 30, 31])),
                    hr=draw(st.integers(0, 23)), mn=draw(st.integers(0, 59)))


@st.composite
def scenarios(draw, periodic: bool | None = None, scales=tuple(OccPer), ops: bool = True, max_schedules: int = 4):
    """Schedules FSCH01.. built (and most enabled) at T0, maybe the reserve, and writes and
    operates at later times.  `periodic` None: either kind."""
    if periodic is None:
        periodic = draw(st.booleans())
    # Long periods are drawn more often: they have more to get wrong (month lengths, 29 Feb).
    scale = draw(st.sampled_from([p for p in scales for _ in range(1 + (p >= OccPer.MONTH))])) if periodic else None
    period, max_intv, _ = PERIODS[scale] if periodic else (0, 3, 0)
    # Four periods; fourteen months for Month, to reach February 2028.
    window = (14 if scale == OccPer.MONTH else 4) * period if periodic else TIME_WINDOW
    specs = []
    for _ in range(draw(st.integers(1, max_schedules))):
        if periodic:
            # setTm anywhere in the first period (hundredths, then a remainder: an integer drawn
            # from a wide range leans to small values, which would keep every setTm in January).
            anchors = st.builds(lambda h, r: h * (period // 100) + r, st.integers(0, 99), st.integers(1, period // 100))
            starts = draw(st.lists(st.tuples(anchors, calendars(scale)), min_size=1, max_size=3))
            intv = draw(st.integers(1, max_intv)) if draw(st.integers(0, 15)) else 0
        else:
            # Any millisecond; or one shared by several schedules (ties), 20 s: the reserve's.
            offsets = st.integers(1, 40 * S) | st.sampled_from([5 * S + 250, 20 * S])
            starts = [(o, None) for o in draw(st.lists(offsets, min_size=1, max_size=3))]
            intv = draw(intv_st)
        values = draw(st.lists(value_st, min_size=1, max_size=5))
        specs.append(dict(periodic=periodic, prio=draw(prio_st), intv=intv, values=values,
                          num_entr=draw(num_entr_st), starts=starts, enable=draw(st.sampled_from([True] * 7 + [False]))))
    # The reserve runs hourly: left out of long windows (too many restarts to walk through).
    with_reserve = draw(st.sampled_from([True, True, False])) and (not periodic or scale <= OccPer.DAY)
    reserve = draw(value_st) if with_reserve else None
    count = len(specs) + (reserve is not None)
    op_list = []
    if ops:
        step = max(period // 10, S) if periodic else S
        op = st.one_of(
            st.tuples(st.just("Val"), st.integers(1, 6), value_st),
            st.tuples(st.just("SchdPrio"), prio_st),
            st.tuples(st.just("NumEntr"), num_entr_st),
            st.tuples(st.just("SchdIntv"), st.integers(1, max_intv) | st.just(0) if periodic else intv_st),
            st.tuples(st.just("StrTm"), st.sampled_from([1, 1, 2, 3]), st.integers(-2 * step, 20 * step)),
            st.tuples(st.just("disable")),
            st.tuples(st.just("enable")),
        )
        op_list = sorted(draw(st.lists(st.tuples(st.integers(0, window), st.integers(0, count - 1), op),
                                       min_size=1, max_size=8)), key=lambda o: o[0])
    return dict(scale=scale, window=window, specs=specs, reserve=reserve, ops=op_list)


# -- the core, driven as the controller actor drives it ------------------------------------------------
def build_core(sc: dict) -> tuple[list[Schedule], list[bool]]:
    out, oks = [], []
    for n, spec in enumerate(sc["specs"], start=1):
        s = Schedule(f"FSCH{n:02d}", periodic=spec["periodic"])
        s.write_num_entr(spec["num_entr"])
        s.write_intv(spec["intv"])
        s.write_prio(spec["prio"])
        for i, v in enumerate(spec["values"], start=1):
            s.write_value(i, v)
        for i, (offset, cal) in enumerate(spec["starts"], start=1):
            assert s.write_start(i, T0 + offset, T0, cal).ok
        out.append(s)
    if sc["reserve"] is not None:
        r = Schedule("Res_FSCH01", periodic=True, reserve=True)
        r.settings.num_entr, r.settings.schd_intv, r.settings.prio = 1, 3600, RESERVE_PRIO
        r.settings.values[0] = sc["reserve"]
        r.settings.starts[0] = StartTime(1000, Calendar(OccPer.HOUR))
        out.append(r)
    for s, spec in zip(out, sc["specs"] + [None]):
        if spec is None:
            oks.append(s.enable(T0, by_site=True).ok)
        elif spec["enable"]:
            oks.append(s.enable(T0).ok)
    return out, oks


def apply_core(s: Schedule, op: tuple, t: int) -> bool:
    kind = op[0]
    if kind == "Val":
        return s.write("Val", op[1], op[2], t).ok
    if kind in ("SchdPrio", "NumEntr", "SchdIntv"):
        return s.write(kind, 0, op[1], t).ok
    if kind == "StrTm":
        return s.write("StrTm", op[1], t + op[2], t).ok
    return (s.disable() if kind == "disable" else s.enable(t)).ok


def vkey(v: Any) -> Any:
    return "NaN" if isinstance(v, float) and math.isnan(v) else v


def core_snapshot(scheds: list[Schedule]) -> tuple:
    out = output_of(scheds)
    return (vkey(out.value), out.source, tuple(
        (int(s.status.state), s.status.entry, s.status.act_start, s.status.next_start, s.status.run_slot,
         int(s.status.ena_err), tuple(x.tm for x in s.settings.starts)) for s in scheds))


def record(events: list, t: int, snap: tuple) -> None:
    """Keep the last state of each instant, and only changes."""
    if events and events[-1][0] == t:
        events.pop()
    if not events or events[-1][1] != snap:
        events.append((t, snap))


def core_timeline(sc: dict, until: int | None = None):
    """(schedules, events, outcomes): wake at every `next_wakeup`, like the actor, and apply
    each write or operate at its time, then advance everything (the actor's _after_change)."""
    scheds, oks = build_core(sc)
    end = T0 + sc["window"] if until is None else until
    events: list = []
    t = T0
    for s in scheds:
        s.advance(t)
    record(events, t, core_snapshot(scheds))
    for at, target, op in [(T0 + o, i, op) for o, i, op in sc["ops"] if T0 + o < end] + [(end, None, None)]:
        for _ in range(100_000):
            wakeups = [w for w in (s.next_wakeup() for s in scheds) if w is not None]
            if not wakeups or max(min(wakeups), t) >= at:
                break
            due, t = min(wakeups), max(min(wakeups), t)
            changed = [s.advance(t) for s in scheds]
            assert any(changed) or due > events[-1][0], f"a wake-up due at +{t - T0} ms again changes nothing"
            record(events, t, core_snapshot(scheds))
        t = at
        if op is None:
            break
        for s in scheds:
            s.advance(t)
        oks.append(apply_core(scheds[target], op, t))
        for s in scheds:
            s.advance(t)
        record(events, t, core_snapshot(scheds))
    return scheds, events, oks


# -- the reference ---------------------------------------------------------------------------------------
def to_dt(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def to_ms(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


def month_length(y: int, m: int) -> int:
    return (date(y + m // 12, m % 12 + 1, 1) - date(y, m, 1)).days


def is_occurrence_day(d: date, cal: Calendar, anchor: datetime) -> bool:
    if cal.occ_per == OccPer.DAY:
        return True
    if cal.occ_per == OccPer.WEEK:
        return d.isoweekday() == (cal.week_day or anchor.isoweekday())
    day = min(cal.day or anchor.day, month_length(d.year, d.month))
    if cal.occ_per == OccPer.MONTH:
        return d.day == day
    return d.month == (cal.month or anchor.month) and d.day == day


@lru_cache(maxsize=4096)
def calendar_occurrences(anchor: int, cal: Calendar, lo: int, hi: int) -> tuple[int, ...]:
    """Every occurrence in [lo, hi] not before the anchor, walking hour by hour or day by day."""
    first, a, out = max(lo, anchor), to_dt(anchor), []
    if cal.occ_per == OccPer.HOUR:
        h = to_dt(first).replace(minute=0, second=0, microsecond=0)
        while h <= to_dt(hi):
            o = to_ms(h + timedelta(minutes=cal.mn))
            if first <= o <= hi:
                out.append(o)
            h += timedelta(hours=1)
    else:
        d, last = to_dt(first).date(), to_dt(hi).date()
        while d <= last:
            if is_occurrence_day(d, cal, a):
                o = to_ms(datetime(d.year, d.month, d.day, cal.hr, cal.mn, tzinfo=UTC))
                if first <= o <= hi:
                    out.append(o)
            d += timedelta(days=1)
    return tuple(out)


@dataclass
class Ref:
    """One schedule as the rules see it: what was written, and whether it is enabled."""
    name: str
    periodic: bool
    reserve: bool
    prio: int
    num_entr: Any
    intv: Any
    values: list
    starts: list                 # 16 x [setTm | None, setCal | None]
    lo: int                      # occurrences are walked over [lo, hi]
    hi: int
    enabled: bool = False
    ena_err: int = 1
    run: tuple | None = None     # (start, slot) in force at the last step

    def duration(self) -> int | None:
        ok_n = type(self.num_entr) is int and 1 <= self.num_entr <= 100
        ok_i = type(self.intv) is int and self.intv > 0
        return self.num_entr * self.intv * S if ok_n and ok_i else None

    def occurrences(self, slot: int) -> tuple[int, ...]:
        tm, cal = self.starts[slot]
        if tm is None:
            return ()
        if self.periodic and cal is not None and cal.occ_type == 0:
            return calendar_occurrences(tm, cal, self.lo, self.hi)
        return (tm,)

    def latest(self, t: int) -> tuple[int, int] | None:
        best = None
        for slot in range(16):
            occ = self.occurrences(slot)
            i = bisect.bisect_right(occ, t)
            if i and (best is None or occ[i - 1] > best[0]):
                best = (occ[i - 1], slot)
        return best

    def run_at(self, t: int) -> tuple[int, int] | None:
        d, latest = self.duration(), self.latest(t)
        return latest if d is not None and latest is not None and t < latest[0] + d else None

    def next_start(self, t: int) -> int | None:
        nexts = []
        for slot in range(16):
            occ = self.occurrences(slot)
            i = bisect.bisect_right(occ, t)
            if i < len(occ):
                nexts.append(occ[i])
        return min(nexts, default=None)

    def status(self, t: int) -> tuple:
        """(SchdSt, SchdEntr, ActStrTm, NxtStrTm, run slot, SchdEnaErr) at t."""
        if not self.enabled:
            return (NOT_READY, 0, None, None, None, self.ena_err)
        run, nxt = self.run_at(t), self.next_start(t)
        if run is not None:
            return (RUNNING, (t - run[0]) // (self.intv * S) + 1, run[0], nxt, run[1], self.ena_err)
        if nxt is not None:
            return (READY, 0, None, nxt, None, self.ena_err)
        return (NOT_READY, 0, None, None, None, self.ena_err)

    def value(self, t: int) -> Any:
        st_ = self.status(t)
        return self.values[st_[1] - 1] if st_[0] == RUNNING else None

    def step(self, t: int) -> None:
        """Time reaches t: a run that ended or was superseded uses up its (one-shot) start."""
        if not self.enabled:
            return
        run = self.run_at(t)
        if self.run is not None and (run is None or run[0] != self.run[0]):
            start, slot = self.run
            tm, cal = self.starts[slot]
            if not (self.periodic and cal is not None) and tm == start:
                self.starts[slot] = [None, cal]
        self.run = run
        if run is None and self.next_start(t) is None:
            self.enabled = False

    def boundaries(self, lo: int, hi: int) -> set:
        """Every instant in (lo, hi) at which a run of this schedule can start, change entry or end."""
        if not self.enabled:
            return set()
        d, out = self.duration(), set()
        for slot in range(16):
            for o in self.occurrences(slot):
                for b in [o] + ([o + k * self.intv * S for k in range(1, self.num_entr + 1)] if d else []):
                    if lo < b < hi:
                        out.add(b)
        return out

    def enable(self, t: int, by_site: bool = False) -> bool:
        """Rule 3, in its order.  Values: NaN refused, and (the working tree's rule, beyond
        docs/scheduling.md's, which still admits them) +-inf too."""
        if self.reserve and not by_site:
            return False
        n = self.num_entr
        if not (type(n) is int and 1 <= n <= 100):
            err = 2
        elif any(not math.isfinite(v) for v in self.values[:n]):
            err = 4
        elif not (type(self.intv) is int and self.intv > 0):
            err = 3
        elif self.run_at(t) is None and self.next_start(t) is None:
            err = 6
        else:
            err = 1
        self.ena_err = err
        if err != 1:
            self.enabled, self.run = False, None
            return False
        self.enabled = True
        self.step(t)
        return True

    def apply(self, op: tuple, t: int) -> bool:
        kind = op[0]
        if kind == "Val":
            self.values[op[1] - 1] = float(op[2])
        elif kind == "SchdPrio":
            if self.reserve:
                return False
            self.prio = op[1]
        elif kind == "NumEntr":
            self.num_entr = op[1]
        elif kind == "SchdIntv":
            self.intv = op[1]
        elif kind == "StrTm":
            if self.reserve or op[2] <= 0:   # locked; or not in the future
                return False
            self.starts[op[1] - 1] = [t + op[2], self.starts[op[1] - 1][1]]
        elif kind == "disable":
            if self.reserve:
                return False
            self.enabled, self.run = False, None
        else:
            return self.enable(t)
        return True


def build_ref(sc: dict) -> tuple[list[Ref], list[bool]]:
    period, max_intv, _ = PERIODS[sc["scale"]] if sc["scale"] is not None else (HOUR, 3, 0)
    # Far enough on both sides for every run and next start the properties look at.
    lo, hi = T0 - 2 * HOUR - period, T0 + sc["window"] + 3 * period + 8 * max_intv * S
    refs = []
    for n, spec in enumerate(sc["specs"], start=1):
        values = [0.0] * 100
        values[:len(spec["values"])] = spec["values"]
        starts = [[T0 + o, cal] for o, cal in spec["starts"]] + [[None, None]] * (16 - len(spec["starts"]))
        refs.append(Ref(f"FSCH{n:02d}", spec["periodic"], False, spec["prio"], spec["num_entr"], spec["intv"],
                        values, starts, lo, hi))
    if sc["reserve"] is not None:
        values = [0.0] * 100
        values[0] = sc["reserve"]
        refs.append(Ref("Res_FSCH01", True, True, RESERVE_PRIO, 1, 3600, values,
                        [[1000, Calendar(OccPer.HOUR)]] + [[None, None]] * 15, lo, hi))
    oks = []
    for r, spec in zip(refs, sc["specs"] + [None]):
        if spec is None:
            oks.append(r.enable(T0, by_site=True))
        elif spec["enable"]:
            oks.append(r.enable(T0))
    return refs, oks


def ref_output(refs: list[Ref], t: int) -> tuple:
    """Rule 5: the highest SchdPrio; then the later start of the current run; then the lowest SchdNN."""
    best = None
    for order, r in enumerate(refs):
        st_ = r.status(t)
        if st_[0] == RUNNING and (best is None or (r.prio, st_[2], -order) > best[0]):
            best = ((r.prio, st_[2], -order), r.value(t), r.name)
    return (None, None) if best is None else (vkey(best[1]), best[2])


def ref_snapshot(refs: list[Ref], t: int) -> tuple:
    return ref_output(refs, t) + (tuple(r.status(t) + (tuple(tm for tm, _ in r.starts),) for r in refs),)


def ref_timeline(sc: dict, until: int | None = None):
    refs, oks = build_ref(sc)
    end = T0 + sc["window"] if until is None else until
    events: list = []
    t = T0
    for r in refs:
        r.step(t)
    record(events, t, ref_snapshot(refs, t))
    for at, target, op in [(T0 + o, i, op) for o, i, op in sc["ops"] if T0 + o < end] + [(end, None, None)]:
        for b in sorted(set().union(*(r.boundaries(t, at) for r in refs))):
            for r in refs:
                r.step(b)
            record(events, b, ref_snapshot(refs, b))
        t = at
        if op is None:
            break
        for r in refs:
            r.step(t)
        oks.append(refs[target].apply(op, t))
        for r in refs:
            r.step(t)
        record(events, t, ref_snapshot(refs, t))
    return refs, events, oks


def show(events: list) -> list:
    return [(t - T0, snap[:2]) for t, snap in events]


# -- the properties ------------------------------------------------------------------------------------------
def check_timelines(sc: dict) -> None:
    _, core_events, core_oks = core_timeline(sc)
    _, ref_events, ref_oks = ref_timeline(sc)
    assert core_oks == ref_oks, "which writes and operates are accepted"
    for (tc, c), (tr, r) in zip(core_events, ref_events):
        assert (tc, c) == (tr, r), f"first difference at +{min(tc, tr) - T0} ms: core {c}, reference {r}"
    assert len(core_events) == len(ref_events), (show(core_events), show(ref_events))
    reached(sc, ref_events, ref_oks)


def reached(sc: dict, events: list, oks: list) -> None:
    """What an example exercised (pytest --hypothesis-show-statistics)."""
    event(f"period {sc['scale'].name if sc['scale'] is not None else 'none'}")
    event(f"{len(events) // 10 * 10}+ changes")
    if sc["reserve"] is not None and not any(op[0] == "SchdPrio" for _, _, op in sc["ops"]):
        for _, snap in events:
            statuses = snap[2]
            if statuses[-1][0] != RUNNING:
                continue
            for spec, status, n in zip(sc["specs"], statuses, range(1, 99)):
                if status[0] == RUNNING:
                    rel = "<" if spec["prio"] < RESERVE_PRIO else "=" if spec["prio"] == RESERVE_PRIO else ">"
                    won = "wins over" if snap[1] == f"FSCH{n:02d}" else "loses to"
                    event(f"a running schedule of priority {rel} 10 {won} the running reserve")
    if not all(oks):
        event("a write or operate refused")
    kinds = {op[0] for _, _, op in sc["ops"]}
    event(f"enable again after enabling: {'enable' in kinds}")
    if any(isinstance(snap[0], float) and not math.isfinite(snap[0]) or snap[0] == "NaN" for _, snap in events):
        event("a NaN or inf output")


@settings(max_examples=500, **PROFILE)
@given(scenarios(periodic=False))
def test_writes_and_operates_at_any_millisecond_follow_the_reference(sc):
    # Every status, the output, and the start times clients read back, at every change.
    check_timelines(sc)


@settings(max_examples=300, **PROFILE)
@given(scenarios(periodic=True))
def test_periodic_starts_of_every_period_follow_the_reference(sc):
    check_timelines(sc)


@settings(max_examples=150, **PROFILE)
@given(scenarios(scales=(OccPer.HOUR, OccPer.DAY), ops=False))
def test_the_forecast_is_the_output_the_reference_steps_through(sc):
    scheds, _ = build_core(sc)
    events = forecast(scheds, T0, sc["window"])
    _, ref_events, _ = ref_timeline(sc, until=T0 + sc["window"] + 1)   # the forecast's end is inclusive
    expected = []
    for t, snap in ref_events:
        if not expected or expected[-1][1:] != snap[:2]:
            expected.append((t, *snap[:2]))
    assert [(t, vkey(v), src) for t, v, src in events] == expected


@settings(max_examples=200, **PROFILE)
@given(scenarios(scales=(OccPer.HOUR, OccPer.DAY), ops=False), st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_advancing_at_arbitrary_times_lands_where_the_reference_says(sc, fractions):
    # The actor may wake late or be restarted between boundaries: the state depends on `now` only.
    scheds, _ = build_core(sc)
    refs, _ = build_ref(sc)
    for t in sorted(T0 + int(f * sc["window"]) for f in fractions):
        for s in scheds:
            s.advance(t)
        core = core_snapshot(scheds)
        ref = ref_snapshot(refs, t)
        assert core[:2] == ref[:2], f"output at +{t - T0} ms"
        assert [c[:6] for c in core[2]] == [r[:6] for r in ref[2]], f"statuses at +{t - T0} ms"


@settings(max_examples=300, **PROFILE)
@given(scenarios(max_schedules=3), st.floats(0, 1))
def test_next_change_is_the_first_change_a_brute_force_sampler_finds(sc, fraction):
    # What the controller announces ahead of a boundary (ControllerState.then).  The oracle
    # samples the reference's state on a fine grid and at each of its candidate boundaries
    # and takes the first instant that differs from now.
    now = T0 + int(fraction * sc["window"])
    scheds, _, _ = core_timeline(sc, until=now)
    refs, _, _ = ref_timeline(sc, until=now)
    for s in scheds:
        s.advance(now)
    for r in refs:
        r.step(now)
    assert core_snapshot(scheds) == ref_snapshot(refs, now), "the same state to start from"
    before = core_snapshot(scheds)
    nxt = next_change(scheds, now)
    assert core_snapshot(scheds) == before, "next_change must not touch the schedules"

    period, _, grid = PERIODS[sc["scale"]] if sc["scale"] is not None else (TIME_WINDOW, 0, 47)
    horizon = now + 2 * period + max((r.duration() or 0) for r in refs)
    grid = max(grid, (horizon - now) // 3000)   # a reserve given NumEntr 8 runs for 8 h
    samples = sorted(set(range(now + grid, horizon, grid)) | set().union(*(r.boundaries(now, horizon) for r in refs)))
    first = ref_snapshot(refs, now)[:3]
    at = next((t for t in samples if ref_snapshot(refs, t)[:3] != first), None)
    if at is None:
        assert nxt is None or nxt[0] >= horizon
        return
    assert nxt is not None, f"a change at +{at - now} ms is not announced"
    assert nxt[0] == at, f"announced at +{nxt[0] - now} ms, the first change is at +{at - now} ms"
    for r in refs:
        r.step(at)
    assert core_snapshot(nxt[1]) == ref_snapshot(refs, at), "the schedules as they will be then"


def test_fork_shares_nothing_that_advance_changes():
    s = Schedule("FSCH01")
    s.write_num_entr(2)
    s.write_intv(1)
    s.write_start(1, T0 + S, T0)
    assert s.enable(T0).ok
    twin = s.fork()
    twin.advance(T0 + S)
    twin.advance(T0 + 3 * S)  # ran and ended: its start time is used up
    assert twin.settings.starts[0].tm is None and s.settings.starts[0].tm == T0 + S
    assert s.status.state != twin.status.state


def full_state(s: Schedule) -> tuple:
    """Everything a schedule holds (NaN made comparable)."""
    settings = {k: (tuple(map(vkey, v)) if isinstance(v, list) else vkey(v)) for k, v in vars(s.settings).items()}
    return (s.name, s.limit, s.boolean, s.periodic, s.reserve, s.locked, tuple(sorted(settings.items())),
            tuple(sorted(vars(s.status).items())))


@given(scenarios(max_schedules=2))
def test_a_copy_takes_every_write_and_operate_as_a_deep_copy_does_and_leaves_the_original_alone(sc):
    """The control session tries each write on `Schedule.copy()` of its mirror (instead of
    copy.deepcopy, ten times slower): same outcome, same state, the mirror untouched."""
    import copy
    scheds, _oks = build_core(sc)
    for t, index, op in sc["ops"]:
        s = scheds[index]
        before = full_state(s)
        mine, deep = s.copy(), copy.deepcopy(s)
        assert apply_core(mine, op, T0 + t) == apply_core(deep, op, T0 + t)
        mine.advance(T0 + t)
        deep.advance(T0 + t)
        assert full_state(mine) == full_state(deep) and vars(mine).keys() == vars(deep).keys()
        assert full_state(s) == before
        apply_core(s, op, T0 + t)   # and on, as the controller goes
