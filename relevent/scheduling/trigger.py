"""Measurement triggers of local schedules (ReLevENT use case 4), pure: no clock, no I/O.

A trigger watches one measured quantity of its DER (voltage, frequency or power) and says
when the site arms its local schedule and when it ends it.  The caller feeds it every
sample, `step(condition, state, value, quality, now)` -> (new state, decision), with `now`
the sample's time in ms (non-decreasing); the decision is ARM, END or NONE.

The condition is a Schmitt trigger on the value:
* it *sets* when the value passes the threshold: `value > above` (or `value < below`);
* it *clears* only when the value passes back beyond the hysteresis band: `value < above -
  hysteresis` (or `value > below + hysteresis`);
* in the band between, it keeps what it was.

Phases (idle -> pending -> active -> clearing -> idle):
* IDLE: the condition sets -> PENDING since this sample (ARM at once if min_duration is 0);
* PENDING: it clears -> IDLE; it has held for min_duration -> ACTIVE, ARM;
* ACTIVE: it clears -> CLEARING since this sample (END at once if clear is 0);
* CLEARING: it sets again (a dip shorter than clear) -> ACTIVE; it has stayed clear for
  clear -> IDLE, END.

The invariant (tests/test_local_triggers.py checks it against a brute-force reference
written from it): a trigger is ARMed at a sample exactly when good samples show the
condition set at some sample j and not cleared at any sample from j to this one, at least
min_duration after j; and an active one ENDs exactly when good samples show it cleared at
some sample j and not set again at any sample from j to this one, at least clear after j.
Why a Schmitt trigger and durations both: a voltage that hovers at the threshold would
otherwise switch a DER's limit on and off at every poll.

An invalid or missing sample (quality other than "good", no value, NaN or infinite)
neither arms nor ends, and breaks the evidence: PENDING falls back to IDLE, CLEARING back
to ACTIVE, and both timers start again at the next good sample that shows the condition.
Why: a missing measurement says nothing about the grid.  Arming on it would curtail a DER
for a condition nobody saw; ending on it would drop a protective limit while the voltage
may still be high.  So each duration must be seen, sample by sample, and losing sight
falls back to the phase that changes nothing at the device (not armed stays not armed,
armed stays armed).  Time without any sample is not evidence either way: the decision is
taken at the next sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class Phase(str, Enum):
    IDLE = "idle"
    PENDING = "pending"
    ACTIVE = "active"
    CLEARING = "clearing"


class Decision(str, Enum):
    NONE = "none"
    ARM = "arm"
    END = "end"


class Level(Enum):
    """What one good sample says: the condition sets, clears, or (in the band) neither."""
    SET = "set"
    CLEAR = "clear"
    BAND = "band"


@dataclass(frozen=True)
class Condition:
    above: float | None = None       # exactly one of above / below
    below: float | None = None
    hysteresis: float = 0.0          # >= 0
    min_duration_ms: int = 0         # the condition must hold this long before ARM
    clear_ms: int = 0                # ... and be clear this long before END


@dataclass(frozen=True)
class TriggerState:
    phase: Phase = Phase.IDLE
    since: int | None = None         # PENDING: the sample that set it; CLEARING: the one that cleared it

    @property
    def active(self) -> bool:
        """The trigger's schedule should run (it was armed and has not ended)."""
        return self.phase in (Phase.ACTIVE, Phase.CLEARING)


def level(cond: Condition, value: float | None, quality: str) -> Level | None:
    """What a sample says, or None if it says nothing (invalid, missing, not finite)."""
    if quality != "good" or value is None or isinstance(value, bool) or not math.isfinite(value):
        return None
    if cond.above is not None:
        if value > cond.above:
            return Level.SET
        return Level.CLEAR if value < cond.above - cond.hysteresis else Level.BAND
    if value < cond.below:
        return Level.SET
    return Level.CLEAR if value > cond.below + cond.hysteresis else Level.BAND


def step(cond: Condition, state: TriggerState, value: float | None, quality: str,
         now: int) -> tuple[TriggerState, Decision]:
    """One sample (`value`, `quality` at `now` ms) through the trigger; see the module doc."""
    lv = level(cond, value, quality)
    phase = state.phase
    if lv is None:  # no evidence: forget a timer that was running, change nothing at the device
        if phase == Phase.PENDING:
            return TriggerState(), Decision.NONE
        if phase == Phase.CLEARING:
            return TriggerState(Phase.ACTIVE), Decision.NONE
        return state, Decision.NONE
    if phase == Phase.IDLE:
        if lv != Level.SET:
            return state, Decision.NONE
        state, phase = TriggerState(Phase.PENDING, now), Phase.PENDING
    elif phase == Phase.PENDING and lv == Level.CLEAR:
        return TriggerState(), Decision.NONE
    elif phase == Phase.ACTIVE:
        if lv != Level.CLEAR:
            return state, Decision.NONE
        state, phase = TriggerState(Phase.CLEARING, now), Phase.CLEARING
    elif phase == Phase.CLEARING and lv == Level.SET:
        return TriggerState(Phase.ACTIVE), Decision.NONE
    # PENDING or CLEARING, and this sample keeps it so: has it lasted long enough?
    if phase == Phase.PENDING:
        if now - state.since >= cond.min_duration_ms:
            return TriggerState(Phase.ACTIVE), Decision.ARM
        return state, Decision.NONE
    if now - state.since >= cond.clear_ms:
        return TriggerState(), Decision.END
    return state, Decision.NONE
