"""What an IEC 104 command means for the site, without a socket (relevent/protocols/iec104/mapping.py):
the address table and its checks (also `relevent check`), scaling, release, time tags, the
one-entry schedule a command becomes (run through the scheduling core itself), and what each
monitoring point shows."""
from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relevent.messages import Measurement
from relevent.protocols.iec104 import mapping
from relevent.protocols.iec104.mapping import CommandPoint, MonitorPoint, Options, Reading
from relevent.scheduling.schedule import START_SLOTS, Schedule, State
from relevent.topology import TopologyError, parse_topology

DERS = {"pv1": {"name": "pv1", "functions": ["ActPow", "MaxPow", "OnOff"], "rated_power_w": 10000.0,
                "schedules": 3},
        "bat1": {"name": "bat1", "functions": ["ActPow"], "rated_power_w": 0.0, "schedules": 1}}
NOW = 1_800_000_000_000
PCT = Options(unit="percent", scaled_step=0.1, release_value=-1.0, max_age_ms=10_000, priority=250,
              schedule="FSCH02")
WATTS = Options(unit="W", priority=250, schedule="FSCH02")
MAXPOW_FLOAT = CommandPoint(1001, "C_SE_NC_1", "pv1", "MaxPow", "setpoint")
MAXPOW_SCALED = CommandPoint(1002, "C_SE_NB_1", "pv1", "MaxPow", "setpoint")
MAXPOW_TIMED = CommandPoint(1003, "C_SE_TC_1", "pv1", "MaxPow", "setpoint")
ACTPOW_FLOAT = CommandPoint(1010, "C_SE_NC_1", "pv1", "ActPow", "setpoint")
SWITCH = CommandPoint(1101, "C_SC_NA_1", "pv1", "OnOff", "switch")
RELEASE = CommandPoint(1102, "C_SC_NA_1", "pv1", "MaxPow", "release")


def f32(x: float) -> float:
    """`x` as it arrives in a C_SE_NC_1 (IEEE 754 single precision)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


# -- the address table --------------------------------------------------------------------------------
def test_a_function_entry_gives_its_commands_and_monitoring_points_their_types():
    table, problems = mapping.parse_table(
        [{"der": "pv1", "function": "MaxPow", "C_SE_NC_1": 1001, "C_SE_NB_1": 1002, "C_SE_TC_1": 1003,
          "release": 1004, "output": 2001, "running": 2002, "in_force": 2003},
         {"der": "pv1", "function": "OnOff", "C_SC_NA_1": 1101, "output": 2101}],
        [{"der": "pv1", "ioa": 3001}], DERS, "percent")
    assert problems == []
    assert table.commands[1001] == CommandPoint(1001, "C_SE_NC_1", "pv1", "MaxPow", "setpoint")
    assert table.commands[1004] == CommandPoint(1004, "C_SC_NA_1", "pv1", "MaxPow", "release")
    assert table.commands[1101] == CommandPoint(1101, "C_SC_NA_1", "pv1", "OnOff", "switch")
    assert {ioa: (m.type, m.what) for ioa, m in table.monitors.items()} == {
        2001: ("M_ME_NC_1", "output"), 2002: ("M_SP_NA_1", "running"), 2003: ("M_SP_NA_1", "in_force"),
        2101: ("M_SP_NA_1", "output"), 3001: ("M_ME_NC_1", "measured")}
    assert table.targets == (("pv1", "MaxPow"), ("pv1", "OnOff"))


@pytest.mark.parametrize("functions, measurements, unit, expected", [
    ([{"der": "pv9", "function": "MaxPow", "C_SE_NC_1": 1}], [], "W", "DER 'pv9' does not exist"),
    ([{"der": "bat1", "function": "MaxPow", "C_SE_NC_1": 1}], [], "W", "'MaxPow' is not one of bat1's functions"),
    ([{"der": "pv1", "function": "MaxPow", "C_SC_NA_1": 1}], [], "W", "a single command switches OnOff only"),
    ([{"der": "pv1", "function": "OnOff", "C_SE_NC_1": 1}], [], "W", "OnOff takes a single command"),
    ([{"der": "pv1", "function": "MaxPow", "C_SE_NC_1": 0}], [], "W", "IOA must be an integer 1..16777215"),
    ([{"der": "pv1", "function": "MaxPow", "C_SE_NC_1": 2 ** 24}], [], "W", "IOA must be an integer"),
    ([{"der": "pv1", "function": "MaxPow", "C_SE_NC_1": "7"}], [], "W", "IOA must be an integer"),
    ([{"der": "pv1", "function": "MaxPow", "C_SE_NC_1": 5, "output": 5}], [], "W",
     "functions[0].output: IOA 5 is already functions[0].C_SE_NC_1"),
    ([{"der": "pv1", "function": "MaxPow", "C_SE_NC_1": 5}], [{"der": "pv1", "ioa": 5}], "W", "IOA 5 is already"),
    ([{"der": "pv1", "function": "MaxPow", "C_SE_NC_1": 5}, {"der": "pv1", "function": "MaxPow", "C_SE_NC_1": 6}],
     [], "W", "pv1/MaxPow is already listed"),
    ([{"der": "pv1", "function": "MaxPow", "setpoint": 5}], [], "W", "functions[0].setpoint: unknown key"),
    ([{"der": "bat1", "function": "ActPow", "C_SE_NC_1": 5}], [], "percent", "bat1 has no rated_power_w"),
    ([], [{"der": "pv1"}], "W", "measurements[0]: expected {der"),
    (["pv1"], [], "W", "functions[0]: expected a table"),
])
def test_an_address_table_that_cannot_be_served_is_refused_naming_the_entry(functions, measurements, unit, expected):
    _, problems = mapping.parse_table(functions, measurements, DERS, unit)
    assert any(expected in message for _, message in problems), problems


TOPOLOGY = """
[site]
name = "t"
state_dir = "/tmp/t"

[[wan]]
name = "scada"
protocol = "iec104"
port = 2404
schedule = {schedule}
{functions}

[[der]]
name = "pv1"
functions = ["MaxPow", "OnOff"]
schedules = 3
rated_power_w = 10000
"""


def test_relevent_check_refuses_an_unservable_table_with_the_line_of_the_endpoint():
    with pytest.raises(TopologyError) as caught:
        parse_topology(TOPOLOGY.format(schedule=4, functions='functions = [{ der = "pv1", function = "OnOff", '
                                                             'C_SE_NC_1 = 1 }]'), "site.toml", env={})
    text = [str(p) for p in caught.value.problems]
    assert any("wan[0].functions" in t and "OnOff takes a single command" in t for t in text), text
    assert any("wan[0].schedule" in t and "schedule 4 but pv1 has 3" in t for t in text), text
    with pytest.raises(TopologyError) as caught:
        parse_topology(TOPOLOGY.format(schedule=1, functions=""), "site.toml", env={})
    assert any("no command address" in str(p) for p in caught.value.problems)


def test_a_valid_table_loads_with_the_documented_defaults():
    data = parse_topology(TOPOLOGY.format(schedule=2, functions='functions = [{ der = "pv1", function = "MaxPow", '
                                                                'C_SE_NC_1 = 1, output = 2 }]'), env={}).data
    ep = data["wan"][0]
    assert (ep["common_address"], ep["priority"], ep["unit"], ep["max_age_s"], ep["no_contact_s"],
            ep["release_value"], ep["max_connections"]) == (1, 250, "W", 10.0, 60.0, None, 1)
    assert Options.of(ep) == Options(unit="W", scaled_step=1.0, release_value=None, max_age_ms=10_000,
                                     priority=250, schedule="FSCH02")


# -- commands --------------------------------------------------------------------------------------------
def test_a_float_set_point_in_per_cent_becomes_watts_of_rated_power():
    assert mapping.decide(MAXPOW_FLOAT, 40.0, PCT, 10000.0, NOW) == mapping.Instruction("set", "pv1", "MaxPow", 4000.0)
    assert mapping.decide(MAXPOW_FLOAT, 4000.0, WATTS, 10000.0, NOW).value == 4000.0


def test_a_scaled_set_point_counts_in_steps():
    assert mapping.decide(MAXPOW_SCALED, 255, PCT, 10000.0, NOW).value == pytest.approx(2550.0)
    assert mapping.decide(MAXPOW_SCALED, 255, WATTS, 10000.0, NOW).value == 255.0


@pytest.mark.parametrize("point, value, options, rated, reason", [
    (MAXPOW_FLOAT, 100.5, PCT, 10000.0, "outside 0..100%"),
    (MAXPOW_FLOAT, -0.5, PCT, 10000.0, "outside 0..100%"),
    (ACTPOW_FLOAT, -100.5, PCT, 10000.0, "outside -100..100%"),
    (ACTPOW_FLOAT, 10001.0, WATTS, 10000.0, "outside -10000..10000 W"),
    (MAXPOW_FLOAT, -1.0, WATTS, 0.0, "is negative"),
    (MAXPOW_FLOAT, math.nan, PCT, 10000.0, "not a finite number"),
    (MAXPOW_FLOAT, math.inf, WATTS, 0.0, "not a finite number"),
    (MAXPOW_FLOAT, True, WATTS, 0.0, "carries a number"),
    (SWITCH, 1.0, WATTS, 0.0, "carries on or off"),
])
def test_a_value_the_function_cannot_take_is_refused(point, value, options, rated, reason):
    decision = mapping.decide(point, value, options, rated, NOW)
    assert decision.action == "refuse" and reason in decision.reason, decision


def test_active_power_may_be_negative_and_a_limit_without_rated_power_is_unbounded_above():
    assert mapping.decide(ACTPOW_FLOAT, -60.0, PCT, 10000.0, NOW).value == -6000.0
    assert mapping.decide(MAXPOW_FLOAT, 1e7, WATTS, 0.0, NOW).value == 1e7


def test_the_release_value_and_the_release_command_release():
    assert mapping.decide(MAXPOW_FLOAT, -1.0, PCT, 10000.0, NOW).action == "release"
    assert mapping.decide(MAXPOW_SCALED, -10, PCT, 10000.0, NOW).action == "release"     # -10 x 0.1 %
    assert mapping.decide(RELEASE, True, PCT, 10000.0, NOW) == mapping.Instruction("release", "pv1", "MaxPow")
    assert mapping.decide(RELEASE, False, PCT, 10000.0, NOW).action == "release"
    assert mapping.decide(MAXPOW_FLOAT, -1.0, WATTS, 0.0, NOW).action == "refuse"        # no release value


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32))
def test_a_release_value_is_recognised_after_travelling_as_a_float32(release):
    options = Options(unit="W", release_value=release)
    assert mapping.is_release(f32(release), options.release_value)
    assert mapping.decide(ACTPOW_FLOAT, f32(release), options, 0.0, NOW).action == "release"


def test_a_single_command_switches_on_and_off():
    assert mapping.decide(SWITCH, False, WATTS, 0.0, NOW) == mapping.Instruction("set", "pv1", "OnOff", False)
    assert mapping.decide(SWITCH, True, WATTS, 0.0, NOW).value is True


@pytest.mark.parametrize("tag, ok", [
    (NOW, True), (NOW - 9_999, True), (NOW - 10_000, True), (NOW - 10_001, False), (NOW + 9_000, True),
    (NOW + 10_001, False), (None, False),
])
def test_a_time_tag_older_than_the_configured_age_is_refused(tag, ok):
    decision = mapping.decide(MAXPOW_TIMED, 50.0, PCT, 10000.0, NOW, tag)
    assert (decision.action == "set") is ok, decision
    if not ok:
        assert "time tag" in decision.reason


def test_a_time_tag_is_checked_before_a_release():
    assert mapping.decide(MAXPOW_TIMED, -1.0, PCT, 10000.0, NOW, NOW - 60_000).action == "refuse"
    assert mapping.decide(MAXPOW_TIMED, -1.0, PCT, 10000.0, NOW, NOW - 1_000).action == "release"


@settings(max_examples=200)
@given(st.floats(min_value=0.0, max_value=100.0, width=32), st.floats(min_value=1.0, max_value=1e7))
def test_any_per_cent_in_range_is_set_and_reported_back_as_the_same_per_cent(pct, rated):
    decision = mapping.decide(MAXPOW_FLOAT, pct, PCT, rated, NOW)
    assert decision.action == "set" and 0.0 <= decision.value <= rated * (1 + 1e-12)
    assert mapping.from_watts(decision.value, "percent", rated) == pytest.approx(pct, abs=1e-9)


def test_per_cent_without_rated_power_cannot_be_reported():
    assert mapping.from_watts(500.0, "percent", 0.0) is None
    assert mapping.from_watts(500.0, "W", 0.0) == 500.0


# -- the schedule a command becomes ------------------------------------------------------------------
def test_a_command_writes_a_whole_one_entry_schedule():
    writes = mapping.schedule_writes(4000.0, 250, NOW + 10)
    assert writes[:4] == [("NumEntr", 0, 1), ("SchdIntv", 0, mapping.HOLD_S), ("SchdPrio", 0, 250), ("Val", 1, 4000.0)]
    assert writes[4:] == [("StrTm", 1, NOW + 10)] + [("StrTm", i, None) for i in range(2, START_SLOTS + 1)]
    assert mapping.HOLD_S < 2 ** 31 and mapping.start_of(NOW) == NOW + mapping.START_LEAD_MS


def test_the_scheduling_core_runs_a_command_at_once_and_a_new_one_replaces_it():
    """The same core the controller runs: a command's start lies just ahead when written, and
    has passed when the enable arrives; a second command rewrites the running schedule."""
    sched = Schedule("FSCH02")

    def command(value: float, at: int) -> None:
        for f, i, v in mapping.schedule_writes(value, 250, mapping.start_of(at)):
            assert sched.write(f, i, v, at).ok
        assert sched.enable(at + 30).ok      # the enable reaches the controller 30 ms later

    command(4000.0, NOW)
    assert sched.status.state == State.RUNNING and sched.value() == 4000.0
    command(2500.0, NOW + 5_000)
    assert sched.status.state == State.RUNNING and sched.value() == 2500.0
    assert sched.next_wakeup() == NOW + 5_000 + mapping.START_LEAD_MS + mapping.HOLD_S * 1000
    assert sched.disable().ok and sched.status.state == State.NOT_READY


def test_an_on_off_command_is_a_boolean_schedule():
    sched = Schedule("FSCH01", boolean=True)
    for f, i, v in mapping.schedule_writes(False, 250, mapping.start_of(NOW)):
        assert sched.write(f, i, v, NOW).ok
    assert sched.enable(NOW + 20).ok and sched.value() is False


# -- monitoring ------------------------------------------------------------------------------------------
OUTPUT = MonitorPoint(2001, "M_ME_NC_1", "pv1", "MaxPow", "output")
ONOFF = MonitorPoint(2101, "M_SP_NA_1", "pv1", "OnOff", "output")
RUNNING = MonitorPoint(2002, "M_SP_NA_1", "pv1", "MaxPow", "running")
IN_FORCE = MonitorPoint(2003, "M_SP_NA_1", "pv1", "MaxPow", "in_force")
MEASURED = MonitorPoint(3001, "M_ME_NC_1", "pv1", None, "measured")


def view(output, source=None, state: int | None = int(State.RUNNING)) -> dict:
    status = None if state is None else {"state": state}
    return {"output": output, "source": source, "schedules": {"FSCH02": {"status": status, "settings": {}}}}


def measurement(w=4200.0, connected=True, at=NOW, quality="good") -> Measurement:
    return Measurement("pv1", w, connected, at, quality)


def test_the_output_is_shown_in_the_configured_unit_and_invalid_while_unknown_or_unreachable():
    assert mapping.reading(OUTPUT, view(4000.0), measurement(), PCT, 10000.0, NOW) == Reading(40.0)
    assert mapping.reading(OUTPUT, view(4000.0), None, WATTS, 10000.0, NOW) == Reading(4000.0)
    assert mapping.reading(OUTPUT, view(None), None, PCT, 10000.0, NOW).flags == {mapping.INVALID}
    assert mapping.reading(OUTPUT, None, None, PCT, 10000.0, NOW).flags == {mapping.INVALID}
    assert mapping.reading(OUTPUT, view(4000.0), measurement(connected=False), PCT, 10000.0, NOW) == \
        Reading(40.0, frozenset({mapping.INVALID}))
    assert mapping.reading(ONOFF, view(False), None, PCT, 10000.0, NOW) == Reading(False)


def test_the_schedule_state_and_whether_it_is_in_force():
    assert mapping.reading(RUNNING, view(1.0, "FSCH02"), None, PCT, 1.0, NOW) == Reading(True)
    assert mapping.reading(RUNNING, view(1.0, state=int(State.READY)), None, PCT, 1.0, NOW) == Reading(False)
    assert mapping.reading(RUNNING, view(1.0, state=None), None, PCT, 1.0, NOW).flags == {mapping.INVALID}
    assert mapping.reading(IN_FORCE, view(1.0, "FSCH02"), None, PCT, 1.0, NOW) == Reading(True)
    assert mapping.reading(IN_FORCE, view(1.0, "Res_FSCH01"), None, PCT, 1.0, NOW) == Reading(False)


def test_a_measurement_is_invalid_when_missing_or_unreachable_and_not_topical_when_old():
    assert mapping.reading(MEASURED, None, measurement(), PCT, 10000.0, NOW) == Reading(42.0)
    assert mapping.reading(MEASURED, None, None, PCT, 10000.0, NOW).flags == {mapping.INVALID}
    assert mapping.reading(MEASURED, None, measurement(w=None), PCT, 10000.0, NOW).flags == {mapping.INVALID}
    assert mapping.reading(MEASURED, None, measurement(connected=False), PCT, 10000.0, NOW).flags == {mapping.INVALID}
    old = NOW - mapping.MEASUREMENT_STALE_MS - 1
    assert mapping.reading(MEASURED, None, measurement(at=old), PCT, 10000.0, NOW).flags == {mapping.NOT_TOPICAL}
    assert mapping.reading(MEASURED, None, measurement(quality="questionable"), WATTS, 0.0, NOW) == \
        Reading(4200.0, frozenset({mapping.NOT_TOPICAL}))


def test_an_enabled_command_schedule_is_armed_after_a_restart():
    assert mapping.armed(view(1.0, state=int(State.RUNNING)), "FSCH02")
    assert mapping.armed(view(1.0, state=int(State.READY)), "FSCH02")
    assert not mapping.armed(view(1.0, state=int(State.NOT_READY)), "FSCH02")
    assert not mapping.armed(None, "FSCH02") and not mapping.armed(view(1.0), "FSCH09")


@pytest.mark.parametrize("rule, refusal, policy", [
    ("party:der", 3, True), ("band", 3, True), ("lock:EnaReq", 3, True), ("timeout", 3, True),
    ("value", 11, False), ("SchdEnaErr", 11, False), ("value", None, False),
])
def test_a_refusal_by_the_sites_policy_is_told_apart_from_a_refused_value(rule, refusal, policy):
    assert mapping.policy_refusal(rule, refusal) is policy


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 63), st.booleans(), st.booleans())
def test_only_a_plain_activation_is_executed_whatever_else_the_cause_of_transmission_says(cot, test, negative):
    why = mapping.cause_refusal(cot, test, negative)
    assert (why == "") == (cot == 6 and not test and not negative), (cot, test, negative, why)
    assert "deactivation" in mapping.cause_refusal(8, False) and "test" in mapping.cause_refusal(6, True)


def test_a_set_point_while_the_last_one_is_in_force_replaces_only_the_value_with_no_start_lead():
    running = {"status": {"state": 4}, "settings": {"num_entr": 1, "schd_intv": mapping.HOLD_S, "prio": 250}}
    assert mapping.command_writes(3000.0, 250, 1_000, running) == [("Val", 1, 3000.0)]


def test_a_set_point_otherwise_writes_the_whole_schedule_starting_after_the_lead():
    base = {"status": {"state": 4}, "settings": {"num_entr": 1, "schd_intv": mapping.HOLD_S, "prio": 250}}
    others = [None, {**base, "status": {"state": 1}}, {**base, "status": {"state": 3}},
              {**base, "settings": {**base["settings"], "prio": 100}},          # not this endpoint's
              {**base, "settings": {**base["settings"], "num_entr": 2}},        # a client rewrote it
              {**base, "settings": {**base["settings"], "schd_intv": 60}}]
    for current in others:
        writes = mapping.command_writes(3000.0, 250, 1_000, current)
        assert writes == mapping.schedule_writes(3000.0, 250, 1_000 + mapping.START_LEAD_MS), current
