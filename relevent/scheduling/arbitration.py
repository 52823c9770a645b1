"""The controller (FSCC): arbitration among its schedules and the forecast of its output.

Pure, like the schedules it reads: the controller actor calls `output_of` after any
change, `next_change` to tell endpoints its next switch ahead of time, and `forecast` when
a protocol endpoint asks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from relevent.scheduling.schedule import Schedule, State

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Output:
    value: Any            # None: no schedule running (q INVALID)
    source: str | None    # name of the winning schedule (ActSchdRef), None if none
    start: int | None     # start of the winning run


def arbitrate(schedules: Iterable[Schedule]) -> Schedule | None:
    """Among Running schedules: highest SchdPrio; then the later start of the current run;
    then the one listed first (lowest SchdNN)."""
    best, best_key = None, None
    for order, sched in enumerate(schedules):
        st = sched.status
        if st.state != State.RUNNING:
            continue
        key = (sched.settings.prio, st.act_start, -order)
        if best_key is None or key > best_key:
            best, best_key = sched, key
    return best


def output_of(schedules: list[Schedule]) -> Output:
    winner = arbitrate(schedules)
    if winner is None:
        return Output(None, None, None)
    return Output(winner.value(), winner.name, winner.status.act_start)


def forecast(schedules: list[Schedule], now: int, window_ms: int = DAY_MS) -> list[tuple[int, Any, str | None]]:
    """(time, value, source) at `now` and at every change until now + window, merging the
    enabled schedules by the arbitration rule.  Works on copies: the schedules are untouched."""
    sims = [s.fork() for s in schedules]
    end = now + window_ms
    events: list[tuple[int, Any, str | None]] = []
    t = now
    while t is not None and t <= end:
        for sim in sims:
            sim.advance(t)
        out = output_of(sims)
        if not events or (out.value, out.source) != events[-1][1:]:
            events.append((t, out.value, out.source))
        wakeups = [w for w in (sim.next_wakeup() for sim in sims) if w is not None and w > t]
        t = min(wakeups) if wakeups else None
    return events


def next_change(schedules: list[Schedule], now: int, max_steps: int = 16) -> tuple[int, list[Schedule]] | None:
    """The first instant after `now` (the schedules advanced to it) at which some status
    changes if nothing is written or operated before, with the schedules as they will be
    then (copies).  None when nothing is due within `max_steps` wake-ups."""
    sims = [s.fork() for s in schedules]
    t = now
    for _ in range(max_steps):
        wakeups = [w for w in (sim.next_wakeup() for sim in sims) if w is not None and w > t]
        if not wakeups:
            return None
        t = min(wakeups)
        changed = False
        for sim in sims:
            changed |= sim.advance(t)
        if changed:
            return t, sims
    return None
