"""The pure 90-10 core, rule by rule (docs/scheduling.md rules 2-5, 7, 8)."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import msgpack
import pytest

from relevent.scheduling.calendar import Calendar, OccPer, latest_occurrence, next_occurrence
from relevent.scheduling.arbitration import forecast, output_of
from relevent.scheduling.schedule import EnaErr, Refusal, Schedule, StartTime, State

NOW = 1_800_000_000_000  # 2027-01-15T08:00:00Z
S = 1000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


def sched(name="FSCH01", values=(1.0, 2.0, 3.0), intv=1, prio=20, starts=(NOW + 2 * S,), **kw) -> Schedule:
    s = Schedule(name, **kw)
    s.write_num_entr(len(values))
    s.write_intv(intv)
    s.write_prio(prio)
    for i, v in enumerate(values, start=1):
        s.write_value(i, v)
    for i, t in enumerate(starts, start=1):
        assert s.write_start(i, t, NOW).ok
    return s


def reserve(value=11.0) -> Schedule:
    r = Schedule("Res_FSCH01", periodic=True, reserve=True)
    r.settings.num_entr, r.settings.schd_intv, r.settings.prio = 1, 3600, 10
    r.settings.values[0] = value
    r.settings.starts[0] = StartTime(ms("1970-01-01T00:00:01"), Calendar(OccPer.HOUR))
    assert r.enable(NOW, by_site=True).ok
    return r


# -- 2. writes ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -1, 200, 2 ** 31 - 1])
def test_num_entr_and_intv_accept_anything_until_enable(value):
    s = sched()
    assert s.write_num_entr(value).ok and s.settings.num_entr == value
    assert s.write_intv(value).ok and s.settings.schd_intv == value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 3.4028234663852886e38, -5.0])
def test_values_accept_anything(value):
    s = sched()
    assert s.write_value(2, value).ok
    assert s.settings.values[1] == value or (math.isnan(value) and math.isnan(s.settings.values[1]))


def test_writes_are_allowed_in_every_state():
    s = sched(starts=(NOW + S,))
    for now, state in ((NOW, State.NOT_READY), (NOW, State.READY), (NOW + S, State.RUNNING)):
        if state == State.READY:
            s.enable(now)
        s.advance(now)
        assert s.status.state == state
        assert s.write_value(3, 7.0).ok and s.write_intv(1).ok and s.write_num_entr(3).ok and s.write_prio(5).ok


def test_start_time_must_lie_in_the_future():
    s = sched(starts=())
    assert s.write_start(1, NOW, NOW) == s.write_start(1, NOW - 1, NOW)
    refused = s.write_start(1, NOW, NOW)
    assert not refused.ok and refused.refusal == Refusal.VALUE_INVALID
    assert s.settings.starts[0].tm is None
    assert s.write_start(1, NOW + 1, NOW).ok and s.settings.starts[0].tm == NOW + 1


def test_locked_attributes_are_denied_and_keep_their_value():
    s = Schedule("FSCH01", locked=frozenset({"SchdPrio", "StrTm", "SchdReuse", "EnaReq", "DsaReq"}))
    for outcome in (s.write_prio(99), s.write_start(1, NOW + 9 * S, NOW), s.write_reuse(True),
                    s.write_start_cal(1, Calendar(OccPer.DAY)), s.enable(NOW), s.disable()):
        assert not outcome.ok and outcome.refusal == Refusal.ACCESS_DENIED
    assert s.settings.prio == 0 and s.settings.starts[0].tm is None and s.settings.reuse is False
    assert s.status.state == State.NOT_READY


# -- 3. enable and disable ------------------------------------------------------------------------
@pytest.mark.parametrize("setup, err", [
    (lambda s: s.write_num_entr(0), EnaErr.NUM_ENTR),
    (lambda s: s.write_num_entr(-1), EnaErr.NUM_ENTR),
    (lambda s: s.write_num_entr(101), EnaErr.NUM_ENTR),
    (lambda s: s.write_value(2, math.nan), EnaErr.VALUES),
    (lambda s: s.write_intv(0), EnaErr.SCHD_INTV),
    (lambda s: s.write_intv(-5), EnaErr.SCHD_INTV),
    (lambda s: (s.write_num_entr(0), s.write_value(1, math.nan), s.write_intv(0)), EnaErr.NUM_ENTR),
    (lambda s: (s.write_value(1, math.nan), s.write_intv(0)), EnaErr.VALUES),
    (lambda s: s.settings.starts.__setitem__(0, StartTime()), EnaErr.STR_TM),
    (lambda s: s.settings.starts.__setitem__(0, StartTime(NOW - 3 * S)), EnaErr.STR_TM),  # ended at NOW
])
def test_enable_validation_order_and_negative_response(setup, err):
    s = sched()
    setup(s)
    outcome = s.enable(NOW)
    assert not outcome.ok and outcome.refusal == Refusal.VALUE_INVALID
    assert s.status.ena_err == err and s.status.state == State.NOT_READY


def test_enable_accepts_float32_max_without_a_rating_and_ignores_nan_and_inf_beyond_num_entr():
    s = sched(values=(1.0, -3.4028234663852886e38, 3.4028234663852886e38))
    s.write_value(4, math.nan)
    s.write_value(5, math.inf)
    assert s.enable(NOW).ok


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_enable_refuses_an_infinite_value_as_it_refuses_nan(bad):
    # security.md section 5: +-inf once enabled and reached the MQTT pivot as -Infinity.
    s = sched(values=(1.0, bad))
    assert not s.enable(NOW).ok and s.status.ena_err == EnaErr.VALUES


def test_successful_enable_is_ready_with_next_start_before_returning():
    s = sched(starts=(NOW + 5 * S, NOW + 3 * S))
    assert s.enable(NOW).ok
    assert (s.status.state, s.status.ena_err, s.status.next_start) == (State.READY, EnaErr.NONE, NOW + 3 * S)


def test_enable_inside_a_started_run_runs_at_the_right_entry():
    s = sched(values=(1.0, 2.0, 3.0), starts=(NOW + S,))
    assert s.enable(NOW + S + 1500).ok
    assert s.status.state == State.RUNNING and s.status.entry == 2 and s.value() == 2.0


def test_failed_enable_stops_a_running_schedule():
    s = sched(starts=(NOW + S,))
    s.enable(NOW)
    s.advance(NOW + S)
    s.write_intv(0)
    assert not s.enable(NOW + S).ok and s.status.state == State.NOT_READY and s.value() is None


def test_next_start_is_recomputed_on_every_enable():
    s = sched(starts=(NOW + 5 * S,))
    s.enable(NOW)
    s.disable()
    s.write_start(1, NOW + 9 * S, NOW)
    s.enable(NOW)
    assert s.status.next_start == NOW + 9 * S


@pytest.mark.parametrize("at", [NOW, NOW + 2 * S + 500])
def test_disable_resets_status_in_every_state(at):
    s = sched()
    s.enable(NOW)
    s.advance(at)
    assert s.disable().ok
    st = s.status
    assert (st.state, st.entry, st.act_start, st.next_start, s.value()) == (State.NOT_READY, 0, None, None, None)


def test_a_disabled_schedule_never_starts():
    s = sched()
    s.enable(NOW)
    s.disable()
    assert not s.advance(NOW + 2 * S)
    assert s.status.state == State.NOT_READY and s.next_wakeup() is None


def test_reserve_cannot_be_disabled_or_enabled_by_clients_and_keeps_running():
    r = reserve()
    assert r.disable().refusal == Refusal.ACCESS_DENIED
    assert r.enable(NOW).refusal == Refusal.ACCESS_DENIED
    assert r.write_prio(200).refusal == Refusal.ACCESS_DENIED
    assert r.write_start(1, NOW + S, NOW).refusal == Refusal.ACCESS_DENIED
    assert r.write_value(1, 5.0).ok and r.write_num_entr(1).ok
    for hours in range(0, 30):
        t = NOW + hours * 3600 * S + 123
        r.advance(t)
        assert r.status.state == State.RUNNING and r.value() == 5.0 and r.settings.prio == 10


# -- 4. running -------------------------------------------------------------------------------------
def test_ready_to_running_at_the_start_never_earlier():
    s = sched(starts=(NOW + 2 * S,))
    s.enable(NOW)
    assert s.next_wakeup() == NOW + 2 * S
    s.advance(NOW + 2 * S - 1)
    assert s.status.state == State.READY and s.value() is None
    s.advance(NOW + 2 * S)
    assert s.status.state == State.RUNNING and s.status.entry == 1 and s.status.act_start == NOW + 2 * S


def test_entries_cover_their_intervals_and_wakeups_are_exact_boundaries():
    s = sched(values=(1.0, 2.0, 3.0), intv=2, starts=(NOW + S,))
    s.enable(NOW)
    seen = []
    t = s.next_wakeup()
    while t is not None:
        s.advance(t)
        seen.append((t - NOW, s.status.entry, s.value()))
        t = s.next_wakeup()
    assert seen == [(1000, 1, 1.0), (3000, 2, 2.0), (5000, 3, 3.0), (7000, 0, None)]


def test_values_are_read_live():
    s = sched(values=(1.0, 2.0, 3.0), starts=(NOW + S,))
    s.enable(NOW)
    s.advance(NOW + S + 500)
    s.write_value(3, 30.0)
    s.advance(NOW + 3 * S + 500)
    assert s.value() == 30.0


def test_end_of_run_erases_the_used_start_and_goes_ready_or_not_ready():
    s = sched(values=(1.0,), starts=(NOW + S, NOW + 10 * S))
    s.enable(NOW)
    s.advance(NOW + S)
    s.advance(NOW + 2 * S)
    st = s.status
    assert (st.state, st.entry, st.act_start, s.value(), st.next_start) == (State.READY, 0, None, None, NOW + 10 * S)
    assert s.settings.starts[0].tm is None and s.settings.starts[1].tm == NOW + 10 * S
    s.advance(NOW + 10 * S)
    s.advance(NOW + 11 * S)
    assert s.status.state == State.NOT_READY and s.settings.starts[1].tm is None


def test_a_later_start_supersedes_the_running_run():
    s = sched(values=(1.0, 2.0, 3.0, 4.0), starts=(NOW + S, NOW + 3 * S))
    s.enable(NOW)
    s.advance(NOW + 2 * S)
    assert s.status.entry == 2
    s.advance(NOW + 3 * S)
    assert s.status.act_start == NOW + 3 * S and s.status.entry == 1 and s.settings.starts[0].tm is None


# -- periodic starts (UTC) ---------------------------------------------------------------------------
@pytest.mark.parametrize("cal, t, latest, following", [
    (Calendar(OccPer.HOUR, mn=15), "2027-01-15T08:20:00", "2027-01-15T08:15:00", "2027-01-15T09:15:00"),
    (Calendar(OccPer.HOUR, mn=15), "2027-01-15T08:15:00", "2027-01-15T08:15:00", "2027-01-15T09:15:00"),
    (Calendar(OccPer.DAY, hr=6, mn=30), "2027-01-15T05:00:00", "2027-01-14T06:30:00", "2027-01-15T06:30:00"),
    (Calendar(OccPer.DAY, hr=23, mn=59), "2027-01-01T00:00:00", "2026-12-31T23:59:00", "2027-01-01T23:59:00"),
    (Calendar(OccPer.WEEK, week_day=1, hr=1), "2027-01-15T08:00:00", "2027-01-11T01:00:00", "2027-01-18T01:00:00"),
    (Calendar(OccPer.WEEK, week_day=7), "2027-01-17T00:00:00", "2027-01-17T00:00:00", "2027-01-24T00:00:00"),
    (Calendar(OccPer.MONTH, day=31, hr=12), "2027-02-15T00:00:00", "2027-01-31T12:00:00", "2027-02-28T12:00:00"),
    (Calendar(OccPer.MONTH, day=29), "2028-03-01T00:00:00", "2028-02-29T00:00:00", "2028-03-29T00:00:00"),
    (Calendar(OccPer.YEAR, month=3, day=1), "2027-01-15T00:00:00", "2026-03-01T00:00:00", "2027-03-01T00:00:00"),
    (Calendar(OccPer.YEAR, month=12, day=31, hr=23, mn=59), "2027-12-31T23:59:00", "2027-12-31T23:59:00",
     "2028-12-31T23:59:00"),
])
def test_periodic_occurrences_in_utc(cal, t, latest, following):
    anchor = ms("2020-01-01T00:00:00")
    assert latest_occurrence(cal, anchor, ms(t)) == ms(latest)
    assert next_occurrence(cal, anchor, ms(t)) == ms(following)


def test_no_occurrence_before_the_anchor():
    cal = Calendar(OccPer.DAY, hr=6)
    anchor = ms("2027-01-15T07:00:00")
    assert latest_occurrence(cal, anchor, ms("2027-01-15T08:00:00")) is None
    assert next_occurrence(cal, anchor, ms("2027-01-10T00:00:00")) == ms("2027-01-16T06:00:00")


def test_zero_fields_take_the_anchor():
    anchor = ms("2027-01-13T00:00:00")  # a Wednesday
    assert next_occurrence(Calendar(OccPer.WEEK), anchor, anchor) == ms("2027-01-20T00:00:00")
    assert next_occurrence(Calendar(OccPer.MONTH), ms("2027-01-20T00:00:00"), NOW) == ms("2027-01-20T00:00:00")


def test_daily_periodic_schedule_runs_every_day():
    s = sched(values=(5.0, 6.0), intv=1800, starts=(), periodic=True)
    s.write_start(1, ms("2027-01-15T09:00:00"), NOW, Calendar(OccPer.DAY, hr=10))
    assert s.enable(NOW).ok and s.status.next_start == ms("2027-01-15T10:00:00")
    s.advance(ms("2027-01-16T10:45:00"))
    assert s.status.state == State.RUNNING and s.value() == 6.0
    s.advance(ms("2027-01-16T11:00:00"))
    assert s.status.state == State.READY and s.status.next_start == ms("2027-01-17T10:00:00")
    assert s.settings.starts[0].tm is not None, "a periodic start is not used up"


# -- 5. arbitration ------------------------------------------------------------------------------------
def running(name, prio, start, value):
    s = sched(name, values=(value,), intv=100, prio=prio, starts=(start,))
    s.enable(NOW)
    s.advance(NOW + 50 * S)
    return s


def test_highest_priority_wins():
    out = output_of([running("A", 20, NOW + S, 1.0), running("B", 30, NOW + S, 2.0), reserve()])
    assert (out.value, out.source) == (2.0, "B")


def test_equal_priority_later_start_wins():
    out = output_of([running("A", 20, NOW + 2 * S, 1.0), running("B", 20, NOW + S, 2.0)])
    assert out.source == "A"


def test_equal_priority_and_start_lowest_number_wins():
    out = output_of([running("A", 20, NOW + S, 1.0), running("B", 20, NOW + S, 2.0)])
    assert out.source == "A"


def test_priority_write_changes_the_output_at_once():
    a, b = running("A", 20, NOW + S, 1.0), running("B", 30, NOW + S, 2.0)
    a.write_prio(40)
    assert output_of([a, b]).value == 1.0


def test_nothing_running_gives_no_output():
    assert output_of([sched()]) == output_of([]) and output_of([]).value is None


# -- 7. persistence --------------------------------------------------------------------------------------
def test_record_round_trip_through_msgpack_continues_a_running_schedule():
    s = sched(values=(1.0, 2.0, 3.0), starts=(NOW + S, NOW + 20 * S), periodic=False)
    s.write_start_cal(2, Calendar(OccPer.DAY, hr=3))
    s.enable(NOW)
    s.advance(NOW + S + 100)
    blob = msgpack.packb(s.to_record())
    restored = Schedule("FSCH01")
    restored.load_record(msgpack.unpackb(blob))
    assert restored.settings == s.settings
    restored.advance(NOW + 3 * S + 500)  # "restart" two entries later
    assert restored.status.state == State.RUNNING and restored.status.entry == 3 and restored.value() == 3.0


def test_restored_ready_schedule_starts_on_time_and_a_finished_run_ends():
    s = sched(values=(1.0,), starts=(NOW + 5 * S,))
    s.enable(NOW)
    restored = Schedule("FSCH01")
    restored.load_record(s.to_record())
    restored.advance(NOW + S)
    assert restored.status.state == State.READY and restored.next_wakeup() == NOW + 5 * S
    restored.advance(NOW + 60 * S)  # the site was down for the whole run
    assert restored.status.state == State.NOT_READY


# -- 8. forecast -----------------------------------------------------------------------------------------------
def test_forecast_merges_schedules_and_returns_to_the_reserve():
    a = sched("A", values=(1.0, 2.0), intv=2, prio=20, starts=(NOW + 2 * S,))
    b = sched("B", values=(9.0,), intv=1, prio=30, starts=(NOW + 3 * S,))
    a.enable(NOW)
    b.enable(NOW)
    events = forecast([a, b, reserve()], NOW, 60 * S)
    assert [(t - NOW, v, src) for t, v, src in events] == [
        (0, 11.0, "Res_FSCH01"), (2000, 1.0, "A"), (3000, 9.0, "B"), (4000, 2.0, "A"), (6000, 11.0, "Res_FSCH01")]
    assert a.status.state == State.READY, "forecast must not advance the real schedules"


def test_a_new_start_written_into_the_running_slot_replaces_the_run_and_is_kept():
    s = sched(values=(1.0,), intv=3600, starts=(NOW + 2 * S,))
    assert s.enable(NOW).ok
    s.advance(NOW + 3 * S)
    assert s.status.state == State.RUNNING
    assert s.write_start(1, NOW + 60 * S, NOW + 4 * S).ok   # the same slot, a later start
    s.advance(NOW + 4 * S)                                   # the old run is over ...
    assert s.settings.starts[0].tm == NOW + 60 * S           # ... and the new start survives it
    assert s.status.state == State.READY and s.status.next_start == NOW + 60 * S
    s.advance(NOW + 60 * S)
    assert s.status.state == State.RUNNING and s.status.act_start == NOW + 60 * S
