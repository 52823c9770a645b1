"""The OpenADR VEN's decisions (relevent/protocols/openadr/mapping.py), without a network:
events are built with openleadr's own objects and sent through its own XML writer and
parser, so the mapping meets exactly what the library's client hands to `on_event`."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from openleadr import objects
from openleadr.messaging import create_message, parse_message

from relevent.protocols.openadr import mapping
from relevent.protocols.openadr.mapping import ARM, END, NOTHING, OPT_IN, OPT_OUT, Held, Policy
from relevent.scheduling.schedule import START_SLOTS, Schedule, State, settings_snapshot, status_snapshot

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
T0_MS = int(T0.timestamp() * 1000)
POLICY = Policy(rated_w=10000.0, simple_w=(10000.0, 7000.0, 4000.0, 0.0))


def signal(name: str, kind: str, payloads, length_s: float = 2.0, start: datetime = T0, **extra) -> objects.EventSignal:
    step = timedelta(seconds=length_s) if not isinstance(length_s, (list, tuple)) else None
    intervals, at = [], start
    for i, value in enumerate(payloads):
        d = step or timedelta(seconds=length_s[i])
        intervals.append(objects.Interval(dtstart=at, duration=d, signal_payload=value, uid=i))
        at += d
    return objects.EventSignal(intervals=intervals, signal_name=name, signal_type=kind, signal_id=f"s-{name}",
                               **extra)


def capacity(payloads, **kw) -> objects.EventSignal:
    return signal("LOAD_CONTROL", "x-loadControlCapacity", payloads, **kw)


def simple(levels, **kw) -> objects.EventSignal:
    return signal("SIMPLE", "level", levels, **kw)


def event(*signals, event_id: str = "ev-1", modification: int = 0, status: str = "far", test: bool = False) -> dict:
    """An event as openleadr's client hands it to on_event: written to XML and parsed back."""
    ev = objects.Event(
        event_descriptor=objects.EventDescriptor(event_id=event_id, modification_number=modification,
                                                 market_context="oadr://test", event_status=status,
                                                 created_date_time=T0 - timedelta(hours=1), test_event=test),
        event_signals=list(signals), targets=[{"ven_id": "ven-1"}])
    ev.event_descriptor.event_status = status   # openleadr sets it from the wall clock
    xml = create_message("oadrDistributeEvent", request_id="r-1", vtn_id="VTN", events=[ev])
    kind, payload = parse_message(xml)
    assert kind == "oadrDistributeEvent"
    return payload["events"][0]


def plan(ev: dict, now_ms: int = T0_MS - 10_000, policy: Policy = POLICY) -> mapping.Plan:
    return mapping.plan(ev, policy, now_ms)


# -- signals ---------------------------------------------------------------------------------------------
def test_a_capacity_event_in_the_future_is_one_entry_per_interval_from_its_start():
    p = plan(event(capacity([3000.0, 1500.0, 2000.0])))
    assert (p.action, p.opt, p.reason) == (ARM, OPT_IN, "")
    assert (p.start_ms, p.step_s, p.values) == (T0_MS, 2, (3000.0, 1500.0, 2000.0))
    assert p.end_ms == T0_MS + 6000 and p.skipped_ms == 0
    assert (p.event_id, p.modification) == ("ev-1", 0)


def test_simple_levels_become_the_configured_powers():
    p = plan(event(simple([0, 1, 2, 3])))
    assert p.opt == OPT_IN and p.values == (10000.0, 7000.0, 4000.0, 0.0)
    default = Policy.of({}, rated_w=8000.0)
    assert default.simple_w == (8000.0, 5600.0, pytest.approx(3200.0), 0.0)
    configured = Policy.of({"simple_levels": [9000, 6000, 3000, 1000]}, rated_w=8000.0)
    assert plan(event(simple([3, 1])), policy=configured).values == (1000.0, 6000.0)


def test_a_simple_level_outside_0_to_3_is_opted_out_naming_the_level():
    ev = event(simple([1, 2]))       # openleadr's VTN refuses to send level 5; another VTN might
    ev["event_signals"][0]["intervals"][1]["signal_payload"] = 5.0
    p = plan(ev)
    assert (p.action, p.opt) == (NOTHING, OPT_OUT)
    assert "level 5" in p.reason and "0..3" in p.reason and "interval 1" in p.reason


def test_a_capacity_read_as_a_fraction_is_a_share_of_rated_power():
    fraction = replace(POLICY, capacity_unit="fraction")
    assert plan(event(capacity([0.5, 1.0, 0.0])), policy=fraction).values == (5000.0, 10000.0, 0.0)
    p = plan(event(capacity([0.5, 3000.0])), policy=fraction)
    assert p.opt == OPT_OUT and "not a fraction" in p.reason


def test_a_capacity_in_kilowatts_is_scaled_to_watts_and_another_unit_is_refused():
    kw = objects.Measurement(name="powerReal", description="RealPower", unit="W", scale="k",
                             power_attributes=objects.PowerAttributes(hertz=50, voltage=230, ac=True))
    assert plan(event(capacity([3.5, 1.25], measurement=kw))).values == (3500.0, 1250.0)
    amps = objects.Measurement(name="current", description="Current", unit="A", scale="none")
    p = plan(event(capacity([16.0], measurement=amps)))
    assert p.opt == OPT_OUT and "'A'" in p.reason


def test_an_event_without_a_signal_the_site_follows_is_opted_out_naming_what_it_got():
    p = plan(event(signal("ELECTRICITY_PRICE", "price", [0.31, 0.12])))
    assert (p.action, p.opt) == (NOTHING, OPT_OUT)
    assert "ELECTRICITY_PRICE/price" in p.reason and "LOAD_CONTROL" in p.reason


def test_a_price_beside_a_limit_is_ignored_and_the_limit_followed():
    p = plan(event(signal("ELECTRICITY_PRICE", "price", [0.31, 0.12]), capacity([2500.0, 2600.0])))
    assert p.opt == OPT_IN and p.values == (2500.0, 2600.0)


def test_with_two_signals_the_tightest_limit_holds_at_every_instant():
    p = plan(event(simple([1, 1, 0]), capacity([8000.0, 3000.0, 9000.0])))
    assert p.values == (7000.0, 3000.0, 9000.0)


def test_a_limit_under_the_sites_minimum_is_opted_out_naming_both():
    p = plan(event(capacity([3000.0, 800.0])), policy=replace(POLICY, min_limit_w=1000.0))
    assert p.opt == OPT_OUT and "800 W" in p.reason and "1000 W" in p.reason
    assert plan(event(capacity([-100.0]))).opt == OPT_OUT   # the default minimum is 0 W


def test_a_test_event_is_acknowledged_and_nothing_is_armed():
    p = plan(event(capacity([3000.0]), test=True))
    assert (p.action, p.opt) == (NOTHING, OPT_IN) and "test event" in p.reason


# -- time ----------------------------------------------------------------------------------------------------
def test_intervals_of_different_lengths_share_their_greatest_common_step():
    p = plan(event(capacity([3000.0, 1000.0], length_s=[2, 4])))
    assert (p.step_s, p.values) == (2, (3000.0, 1000.0, 1000.0))


def test_equal_neighbouring_values_stay_one_entry_per_interval():
    assert plan(event(capacity([3000.0, 3000.0, 3000.0]))).values == (3000.0, 3000.0, 3000.0)


def test_an_event_already_started_is_armed_from_the_next_boundary_of_the_smallest_step_that_fits():
    now = T0_MS + 300          # 0.3 s into the first 2 s interval; the lead is 0.5 s
    p = plan(event(capacity([3000.0, 1500.0, 2000.0])), now_ms=now)
    assert p.opt == OPT_IN and p.step_s == 1
    assert p.start_ms == T0_MS + 1000 and p.skipped_ms == 1000
    assert p.values == (3000.0, 1500.0, 1500.0, 2000.0, 2000.0)
    assert p.start_ms >= now + POLICY.lead_ms and "armed from" in p.reason


def test_a_long_event_already_started_keeps_its_grid_within_a_schedules_slots():
    now = T0_MS + 60_000       # an hour of 15-minute intervals, received a minute late
    p = plan(event(capacity([4000.0, 3000.0, 2000.0, 1000.0], length_s=900)), now_ms=now)
    assert p.step_s == 36 and len(p.values) == 98 and p.start_ms == T0_MS + 72_000
    assert p.values[0] == 4000.0 and p.values[23] == 3000.0 and p.values[-1] == 1000.0
    assert all(v == {0: 4000.0, 1: 3000.0, 2: 2000.0, 3: 1000.0}[(72 + 36 * j) // 900] for j, v in enumerate(p.values))


def test_an_event_that_is_over_arms_nothing():
    p = plan(event(capacity([3000.0, 1500.0])), now_ms=T0_MS + 3800)
    assert (p.action, p.opt, p.over) == (NOTHING, OPT_OUT, True) and "over" in p.reason


def test_an_event_needing_more_entries_than_a_schedule_holds_is_opted_out():
    p = plan(event(capacity([1000.0] * 101, length_s=1)))
    assert p.opt == OPT_OUT and "101 entries" in p.reason and "100" in p.reason


def test_intervals_that_are_not_whole_seconds_are_opted_out():
    p = plan(event(capacity([1000.0, 2000.0], length_s=1.5)))
    assert p.opt == OPT_OUT and "whole seconds" in p.reason


# -- cancellation and modification -------------------------------------------------------------------------
def test_a_cancellation_ends_the_event_and_says_what_it_had_armed():
    p = plan(event(capacity([3000.0, 1500.0]), modification=1, status="cancelled"))
    assert (p.action, p.opt, p.modification) == (END, OPT_IN, 1)
    assert (p.start_ms, p.step_s, p.values) == (T0_MS, 2, (3000.0, 1500.0))


def test_a_modification_writes_the_whole_schedule_again_into_the_schedule_that_holds_it():
    p = plan(event(capacity([2000.0]), modification=2))
    writes = mapping.schedule_writes(p, 50)
    assert writes[:4] == [("NumEntr", 0, 1), ("SchdIntv", 0, 2), ("SchdPrio", 0, 50), ("Val", 1, 2000.0)]
    assert writes[4:] == [("StrTm", 1, T0_MS)] + [("StrTm", i, None) for i in range(2, START_SLOTS + 1)]
    held = {"FSCH01": Held("other", 0, T0_MS + 60_000), "FSCH02": Held("ev-1", 1, T0_MS + 6000)}
    assert mapping.choose_schedule("ev-1", ["FSCH01", "FSCH02"], held, set(), T0_MS) == ("FSCH02", "")


def test_a_new_event_takes_a_free_schedule_and_never_one_holding_an_event_to_come():
    pool = ["FSCH01", "FSCH02", "FSCH03"]
    held = {"FSCH01": Held("a", 0, T0_MS + 60_000), "FSCH02": Held("b", 0, T0_MS - 1)}
    assert mapping.choose_schedule("c", pool, held, set(), T0_MS) == ("FSCH02", "")   # b is over
    assert mapping.choose_schedule("c", pool, held, {"FSCH02"}, T0_MS) == ("FSCH03", "")
    name, why = mapping.choose_schedule("c", pool, held, {"FSCH02", "FSCH03"}, T0_MS - 10)
    assert name is None and "FSCH01: a" in why and "FSCH03: armed before" in why and "schedules" in why


# -- against the scheduling core ------------------------------------------------------------------------------
def arm(sched: Schedule, p: mapping.Plan, now: int) -> None:
    for f, i, v in mapping.schedule_writes(p, 50):
        assert sched.write(f, i, v, now).ok, (f, i, v)
    assert sched.enable(now).ok


def view_of(sched: Schedule) -> dict:
    return {"status": status_snapshot(sched), "settings": settings_snapshot(sched)}


def test_the_core_runs_each_interval_at_its_time():
    p = plan(event(capacity([3000.0, 1500.0, 2000.0])))
    sched = Schedule("FSCH01")
    arm(sched, p, T0_MS - 10_000)
    seen = []
    for t in (T0_MS - 1, T0_MS, T0_MS + 1999, T0_MS + 2000, T0_MS + 4500, T0_MS + 6000):
        sched.advance(t)
        seen.append(sched.value())
    assert seen == [None, 3000.0, 3000.0, 1500.0, 2000.0, None]


def test_an_event_sent_again_is_recognised_as_armed_while_it_waits_and_while_it_runs():
    ev = event(capacity([3000.0, 1500.0, 2000.0]))
    sched = Schedule("FSCH01")
    arm(sched, plan(ev), T0_MS - 10_000)
    assert sched.status.state == State.READY
    assert mapping.armed_with(plan(ev, now_ms=T0_MS - 5000), view_of(sched), 50)
    sched.advance(T0_MS + 300)
    assert sched.status.state == State.RUNNING
    again = plan(ev, now_ms=T0_MS + 300)          # re-planned from a later boundary
    assert again.start_ms == T0_MS + 1000 and mapping.armed_with(again, view_of(sched), 50)
    changed = plan(event(capacity([3000.0, 1400.0, 2000.0]), modification=1), now_ms=T0_MS + 300)
    assert not mapping.armed_with(changed, view_of(sched), 50)
    assert not mapping.armed_with(again, view_of(sched), 20)      # another priority
    sched.disable()
    assert not mapping.armed_with(again, view_of(sched), 50)


def test_a_cancellation_finds_the_schedule_armed_with_the_event():
    ev = event(capacity([3000.0, 1500.0]))
    sched = Schedule("FSCH01")
    arm(sched, plan(ev), T0_MS - 10_000)
    cancelled = plan(event(capacity([3000.0, 1500.0]), modification=1, status="cancelled"), now_ms=T0_MS - 5000)
    assert cancelled.action == END and mapping.armed_with(cancelled, view_of(sched), 50)


def test_an_event_whose_targets_name_only_other_vens_is_not_for_this_one():
    mine, other = {"ven_id": "ven-a"}, {"ven_id": "ven-b"}
    assert mapping.addressed_elsewhere({"targets": [other]}, "ven-a") == "addressed to ven-b, not to this VEN (ven-a)"
    assert mapping.addressed_elsewhere({"targets": [other, mine]}, "ven-a") == ""
    assert mapping.addressed_elsewhere({"targets": [{"group_id": "g1"}]}, "ven-a") == ""      # cannot be judged
    assert mapping.addressed_elsewhere({"targets": [other, {"resource_id": "pv1"}]}, "ven-a") == ""
    assert mapping.addressed_elsewhere({}, "ven-a") == "" and mapping.addressed_elsewhere({"targets": [other]}, "") == ""
