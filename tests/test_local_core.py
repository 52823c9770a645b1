"""The pure rules of local fallback schedules, and their topology checks."""
from __future__ import annotations

import pytest

from relevent.scheduling.arbitration import output_of
from relevent.scheduling.local import LocalSchedule, arm, no_telecom_due, power_up_due
from relevent.scheduling.schedule import Schedule, State
from relevent.topology import TopologyError, parse_topology

NO_TELECOM = LocalSchedule("no_telecom", "FSCH02", 4000.0, 60, 210, after_s=120)


def schedule(name: str = "FSCH02") -> Schedule:
    s = Schedule(name, locked=frozenset({"EnaReq", "StrTm", "SchdPrio"}))
    s.settings.values = [0.0] * 10
    return s


def test_no_telecom_is_due_after_the_configured_silence_and_not_while_it_runs():
    s = schedule()
    assert not no_telecom_due(NO_TELECOM, s, last_contact=0, now=119_999)
    assert no_telecom_due(NO_TELECOM, s, last_contact=0, now=120_000)
    assert arm(s, NO_TELECOM, 120_000).ok   # the site's policy: client locks do not apply
    assert s.status.state == State.RUNNING and s.value() == 4000.0 and s.settings.prio == 210
    assert not no_telecom_due(NO_TELECOM, s, last_contact=0, now=150_000)
    s.advance(180_000)                      # 60 s later it ends; still no contact: due again
    assert s.status.state != State.RUNNING and no_telecom_due(NO_TELECOM, s, last_contact=0, now=180_000)
    assert not no_telecom_due(NO_TELECOM, s, last_contact=170_000, now=180_000)


def test_power_up_is_due_once_per_boot():
    assert power_up_due(boot=1000, armed_for_boot=None)
    assert not power_up_due(boot=1000, armed_for_boot=1000)
    assert power_up_due(boot=2000, armed_for_boot=1000)
    assert not power_up_due(boot=None, armed_for_boot=None)


def test_an_armed_local_schedule_wins_by_priority_and_leaves_the_others_alone():
    reserve = Schedule("Res_FSCH01", periodic=True, reserve=True)
    reserve.settings.values = [10000.0]
    other = schedule("FSCH01")
    local = schedule("FSCH02")
    arm(local, LocalSchedule("power_up", "FSCH02", 2500.0, 30, 210), 5_000)
    reserve.settings.num_entr, reserve.settings.schd_intv = 1, 3600
    out = output_of([other, local, reserve])
    assert (out.value, out.source) == (2500.0, "FSCH02")
    assert other.status.state == State.NOT_READY


BASE = """[site]
name = "s"
[[der]]
name = "d"
functions = ["MaxPow"]
schedules = 2
local = [{entry}]
"""


@pytest.mark.parametrize("entry, message", [
    ('{ trigger = "reboot", function = "MaxPow", schedule = "FSCH01", value = 1.0, duration_s = 1, priority = 1 }',
     "local[0].trigger: 'reboot' is not power_up or no_telecom"),
    ('{ trigger = "no_telecom", function = "MaxPow", schedule = "FSCH01", value = 1.0, duration_s = 1, priority = 1 }',
     "local[0]: missing after_s"),
    ('{ trigger = "power_up", function = "ActPow", schedule = "FSCH01", value = 1.0, duration_s = 1, priority = 1 }',
     "local[0].function: 'ActPow' is not one of this DER's functions"),
    ('{ trigger = "power_up", function = "MaxPow", schedule = "FSCH05", value = 1.0, duration_s = 1, priority = 1 }',
     "local[0].schedule: FSCH05 but the DER has 2 schedules per function"),
    ('{ trigger = "power_up", function = "MaxPow", schedule = "Res_FSCH01", value = 1.0, duration_s = 1, '
     'priority = 1 }', "is not FSCHnn (the reserve cannot be used)"),
])
def test_bad_local_schedules_are_reported_with_their_line(entry, message):
    with pytest.raises(TopologyError) as err:
        parse_topology(BASE.format(entry=entry), "t.toml", env={})
    assert "t.toml:7: der[0].local" in str(err.value) and message in str(err.value), str(err.value)
