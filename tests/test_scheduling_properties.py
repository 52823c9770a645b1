"""Property tests: the state machine, arbitration and forecast against a brute-force
reference computed straight from the definitions in scheduling.md."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relevent.scheduling.calendar import Calendar, OccPer
from relevent.scheduling.arbitration import forecast, next_change, output_of
from relevent.scheduling.schedule import Schedule, StartTime, status_snapshot

NOW = 1_800_000_000_000
S = 1000
HORIZON = 40 * S

schedule_spec = st.fixed_dictionaries({
    "prio": st.integers(0, 3),                                    # few values: many ties
    "intv": st.integers(1, 3),
    "values": st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=5),
    "starts": st.lists(st.integers(1, 30).map(lambda s: NOW + s * S), min_size=1, max_size=3),
})


def build(specs: list[dict], with_reserve: bool) -> list[Schedule]:
    out = []
    for n, spec in enumerate(specs, start=1):
        s = Schedule(f"FSCH{n:02d}")
        s.write_num_entr(len(spec["values"]))
        s.write_intv(spec["intv"])
        s.write_prio(spec["prio"])
        for i, v in enumerate(spec["values"], start=1):
            s.write_value(i, v)
        for i, t in enumerate(spec["starts"], start=1):
            s.write_start(i, t, NOW)
        assert s.enable(NOW).ok
        out.append(s)
    if with_reserve:
        r = Schedule("Res_FSCH01", periodic=True, reserve=True)
        r.settings.num_entr, r.settings.schd_intv, r.settings.prio = 1, 3600, 10
        r.settings.values[0] = 100.0
        r.settings.starts[0] = StartTime(1000, Calendar(OccPer.HOUR))
        assert r.enable(NOW, by_site=True).ok
        out.append(r)
    return out


def reference(specs: list[dict], with_reserve: bool, t: int):
    """(value, source) at t from first principles: each schedule's run in force is that of
    its latest start <= t still covering t; then highest prio, later start, lowest number."""
    candidates = []
    for order, spec in enumerate(specs):
        past = [s for s in spec["starts"] if s <= t]
        if not past:
            continue
        start = max(past)
        k = (t - start) // (spec["intv"] * S)
        if k < len(spec["values"]):
            candidates.append(((spec["prio"], start, -order), spec["values"][k], f"FSCH{order + 1:02d}"))
    if with_reserve:
        hour = (t - 0) // 3_600_000 * 3_600_000  # hourly at :00:00, anchored in 1970
        candidates.append(((10, hour, -len(specs)), 100.0, "Res_FSCH01"))
    if not candidates:
        return None, None
    _, value, source = max(candidates, key=lambda c: c[0])
    return value, source


def sample_times():
    return [NOW + i * 250 for i in range(0, HORIZON // 250)]


@settings(max_examples=200, deadline=None)
@given(st.lists(schedule_spec, min_size=1, max_size=5), st.booleans())
def test_forecast_matches_the_reference(specs, with_reserve):
    events = forecast(build(specs, with_reserve), NOW, HORIZON)
    assert events[0][0] == NOW
    assert all(a[0] < b[0] for a, b in zip(events, events[1:])), "events in time order"
    assert all(a[1:] != b[1:] for a, b in zip(events, events[1:])), "only changes are listed"
    for t in sample_times():
        _, value, source = [e for e in events if e[0] <= t][-1]
        assert (value, source) == reference(specs, with_reserve, t), f"at +{t - NOW} ms"


@settings(max_examples=200, deadline=None)
@given(st.lists(schedule_spec, min_size=1, max_size=5), st.booleans(),
       st.lists(st.integers(0, HORIZON), min_size=1, max_size=8))
def test_advancing_at_arbitrary_times_matches_the_reference(specs, with_reserve, offsets):
    # The actor may wake late or be restarted between boundaries: state depends on `now` only.
    schedules = build(specs, with_reserve)
    for t in sorted(NOW + o for o in offsets):
        for s in schedules:
            s.advance(t)
        out = output_of(schedules)
        assert (out.value, out.source) == reference(specs, with_reserve, t), f"at +{t - NOW} ms"


def statuses(schedules: list[Schedule]) -> list:
    return [(status_snapshot(s), list(s.settings.starts)) for s in schedules]


@settings(max_examples=200, deadline=None)
@given(st.lists(schedule_spec, min_size=1, max_size=5), st.booleans(), st.integers(0, HORIZON))
def test_next_change_is_the_first_instant_anything_changes(specs, with_reserve, offset):
    # What the controller announces to its endpoints ahead of a boundary (ControllerState.then):
    # checked against advancing real schedules every millisecond up to that instant.
    schedules = build(specs, with_reserve)
    now = NOW + offset
    for s in schedules:
        s.advance(now)
    before = statuses(schedules)
    nxt = next_change(schedules, now)
    assert statuses(schedules) == before, "next_change must not touch the schedules"
    if nxt is None:
        # Nothing due: the only possible wake-up is the reserve's hourly boundary, beyond reach.
        assert all(s.next_wakeup() is None or s.reserve for s in schedules)
        return
    at, sims = nxt
    assert at > now and at % S == 0
    brute = build(specs, with_reserve)
    for s in brute:
        s.advance(now)
    # Nothing changes before `at` ... (every boundary these schedules can have is on a whole
    # second: checking each whole second, and the last ms before `at`, is exhaustive)
    for t in [t for t in range(now // S * S + S, at, S)] + [at - 1]:
        assert not any([s.advance(t) for s in brute]), f"a change at +{t - now} ms, announced at +{at - now}"
    changed = [s.advance(at) for s in brute]
    assert any(changed), "... and something does at `at`"
    assert statuses(sims) == statuses(brute)
    assert output_of(sims) == output_of(brute)


def test_fork_shares_nothing_that_advance_changes():
    s = build([{"prio": 1, "intv": 1, "values": [1.0, 2.0], "starts": [NOW + S]}], False)[0]
    twin = s.fork()
    twin.advance(NOW + S)
    twin.advance(NOW + 3 * S)  # ran and ended: its start time is used up
    assert twin.settings.starts[0].tm is None and s.settings.starts[0].tm == NOW + S
    assert s.status.state != twin.status.state
