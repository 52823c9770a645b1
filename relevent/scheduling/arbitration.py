"""The controller (FSCC): arbitration among its schedules and the forecast of its output.

Pure, like the schedules it reads: the controller actor calls `output_of` after any
change, `next_change` to tell endpoints its next switch ahead of time, and `forecast` when
a protocol endpoint asks.

A forecast runs on the controller's own thread, so its work is bounded whatever the
schedules hold: at most FORECAST_MAX_WINDOW_MS ahead, FORECAST_MAX_EVENTS events and
FORECAST_MAX_STEPS steps (one step: one schedule advanced to one instant; only the
schedules due at an instant are advanced).  Why: 10 full schedules (16 starts, 100 entries
each) took ~0.9-1.4 s uncapped, longer than the heartbeat timeout, and the MQTT endpoint
asks every 5 s (../shared/spec/security.md section 5); capped, the worst case is tens of
ms.  A capped forecast is a prefix of the full one: its events are right, it ends earlier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from relevent.scheduling.schedule import Schedule, State

DAY_MS = 24 * 3600 * 1000
FORECAST_MAX_WINDOW_MS = 7 * DAY_MS   # a longer window asked for is cut to this
FORECAST_MAX_EVENTS = 500             # changes of the output returned, the value now included
FORECAST_MAX_STEPS = 3000             # schedule advances (~10-20 us each on the 2-core test box)


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


def forecast(schedules: list[Schedule], now: int, window_ms: int = DAY_MS, *,
             max_events: int | None = FORECAST_MAX_EVENTS,
             max_steps: int | None = FORECAST_MAX_STEPS) -> list[tuple[int, Any, str | None]]:
    """(time, value, source) at `now` and at every change until now + window, merging the
    enabled schedules by the arbitration rule.  Works on copies: the schedules are untouched.
    Bounded (module docstring): the window is cut to FORECAST_MAX_WINDOW_MS, and the
    forecast stops after `max_events` events or `max_steps` schedule advances, never in
    the middle of an instant (None: no bound, for tests comparing against the full one)."""
    sims = [s.fork() for s in schedules]
    end = now + min(window_ms, FORECAST_MAX_WINDOW_MS)
    events: list[tuple[int, Any, str | None]] = []
    t = now
    steps = advances = 0
    due: list[int | None] = [None] * len(sims)   # each schedule's next_wakeup, kept current
    while t is not None and t <= end:
        if max_steps is not None and advances >= max_steps:
            break
        for i, sim in enumerate(sims):
            # A schedule not due yet cannot change at t (next_wakeup's contract): skip it.
            if steps == 0 or (due[i] is not None and due[i] <= t):
                sim.advance(t)
                due[i] = sim.next_wakeup()
                advances += 1
        steps += 1
        out = output_of(sims)
        if not events or (out.value, out.source) != events[-1][1:]:
            if max_events is not None and len(events) >= max_events:
                break
            events.append((t, out.value, out.source))
        wakeups = [w for w in due if w is not None and w > t]
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
