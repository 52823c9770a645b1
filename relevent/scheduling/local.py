"""Local fallback schedules (ReLevENT use case 4), pure: no clock, no I/O.

Two triggers, each driving an ordinary 90-10 schedule of the DER (visible and readable over
MMS like any other), configured per DER in the topology:

* "power_up": once per start of the site, run `value` for `duration_s` from the start
  (e.g. a start-up limit at priority 210 after an outage);
* "no_telecom": when no WAN contact happened for `after_s`, run `value` for `duration_s`,
  and again each time it ends while there is still no contact (EEBus LPC's failsafe).
  Contact coming back does not cut it short: a remote actor may disable it (unless locked).

Arming is the site's own policy: it writes the settings directly (start = now, one entry)
and enables with by_site=True, so client locks on the schedule do not apply to the site.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relevent.scheduling.schedule import Outcome, Schedule, StartTime, State

TRIGGERS = ("power_up", "no_telecom")


@dataclass(frozen=True)
class LocalSchedule:
    trigger: str
    schedule: str        # FSCHnn of the controller
    value: Any
    duration_s: int
    priority: int
    after_s: float = 0.0  # no_telecom only

    @classmethod
    def from_config(cls, cfg: dict) -> "LocalSchedule":
        return cls(cfg["trigger"], cfg["schedule"], cfg["value"], int(cfg["duration_s"]), int(cfg["priority"]),
                   float(cfg.get("after_s", 0.0)))


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
