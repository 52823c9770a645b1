"""Local fallback schedules (ReLevENT use case 4), pure: no clock, no I/O.

Three triggers, each driving an ordinary 90-10 schedule of the DER (visible and readable over
MMS like any other), configured per DER in the topology:

* "power_up": once per start of the site, run `value` for `duration_s` from the start
  (e.g. a start-up limit at priority 210 after an outage);
* "no_telecom": when no WAN contact happened for `after_s`, run `value` for `duration_s`,
  and again each time it ends while there is still no contact (EEBus LPC's failsafe).
  Contact coming back does not cut it short: a remote actor may disable it (unless locked).
* "measurement": when a measured quantity of the DER (voltage_v, frequency_hz, power_w, or
  contact: a §14a control box's switch contact, 1 closed) is above or below a threshold for min_duration_s, run `value` for `duration_s`, again each
  time that run ends while the condition holds, and end it (disable) once the condition has
  been clear for clear_s.  The state machine is relevent/scheduling/trigger.py.

Arming is the site's own policy: it writes the settings directly (start = now, one entry)
and enables with by_site=True, so client locks on the schedule do not apply to the site;
ending a measurement trigger's run is the site's disable, likewise without client locks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relevent.scheduling.schedule import Outcome, Refusal, Schedule, StartTime, State
from relevent.scheduling.trigger import Condition, TriggerState

TRIGGERS = ("power_up", "no_telecom", "measurement")
# What a measurement trigger may watch -> the Measurement attribute that carries it.
# "contact": a control box's switch contact read at the device (§14a EnWG), 1.0 closed and
# 0.0 open; `above = 0.5` arms while it is closed (`below = 0.5`: while open).
MEASURES = {"voltage_v": "voltage_v", "frequency_hz": "frequency_hz", "power_w": "w", "contact": "contact"}


@dataclass(frozen=True)
class LocalSchedule:
    trigger: str
    schedule: str        # FSCHnn of the controller
    value: Any
    duration_s: int
    priority: int
    after_s: float = 0.0  # no_telecom only
    # measurement only: what, which threshold, and the Schmitt trigger's timing (trigger.py)
    measure: str = ""
    above: float | None = None
    below: float | None = None
    hysteresis: float = 0.0
    min_duration_s: float = 0.0
    clear_s: float = 0.0

    @classmethod
    def from_config(cls, cfg: dict) -> "LocalSchedule":
        def number(key: str) -> float | None:
            return None if cfg.get(key) is None else float(cfg[key])
        return cls(cfg["trigger"], cfg["schedule"], cfg["value"], int(cfg["duration_s"]), int(cfg["priority"]),
                   float(cfg.get("after_s", 0.0)), cfg.get("measure", ""), number("above"), number("below"),
                   float(cfg.get("hysteresis", 0.0)), float(cfg.get("min_duration_s", 0.0)),
                   float(cfg.get("clear_s", 0.0)))

    @property
    def condition(self) -> Condition:
        return Condition(self.above, self.below, self.hysteresis, round(self.min_duration_s * 1000),
                         round(self.clear_s * 1000))

    def measured(self, measurement: object) -> float | None:
        """The value this trigger watches in a Measurement (None: the device has none)."""
        value = getattr(measurement, MEASURES[self.measure], None)
        return None if value is None else float(value)


def arm(sched: Schedule, local: LocalSchedule, now: int) -> Outcome:
    """Set `sched` up to run `local.value` for `duration_s` from `now`, and enable it."""
    s = sched.settings
    s.num_entr, s.schd_intv, s.prio = 1, local.duration_s, local.priority
    s.values[0] = bool(local.value) if sched.boolean else float(local.value)
    s.starts = [StartTime(now, s.starts[0].cal)] + [StartTime(None, st.cal) for st in s.starts[1:]]
    sched.status.state = State.NOT_READY  # a new run, whatever ran before
    return sched.enable(now, by_site=True)


def power_up_due(boot: int | None, armed_for_boot: int | None) -> bool:
    """Due once per site start (`boot`: the start's time, ms), not per actor restart."""
    return boot is not None and armed_for_boot != boot


def no_telecom_due(local: LocalSchedule, sched: Schedule, last_contact: int, now: int) -> bool:
    """Due when the contact is older than after_s and the schedule is not running already."""
    return now - last_contact >= local.after_s * 1000 and sched.status.state not in (State.RUNNING, State.READY)


def end(sched: Schedule) -> Outcome:
    """The site ends the run it armed: DsaReq as the site's policy (client locks, e.g. a
    DsaReq locked so that clients cannot lift a protective limit, do not apply to the site).
    The schedule is Not ready afterwards, as after any disable (rule 3)."""
    if sched.reserve:
        return Outcome.refuse(Refusal.ACCESS_DENIED, "the reserve cannot be disabled")
    return sched.disable(by_site=True)


def measurement_rearm_due(state: TriggerState, sched: Schedule) -> bool:
    """An active trigger whose run is over (duration_s elapsed, or disabled by a client)
    runs again: the condition still holds, like a no-telecom schedule while still silent.
    A client that must override it outranks it with a higher priority instead."""
    return state.active and sched.status.state not in (State.RUNNING, State.READY)
