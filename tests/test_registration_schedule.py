"""The registration state machine and its back-off (relevent/registration/schedule.py), pure.

The steps are written out here as the specification writes them (immediately, 30 s, 5 min,
15 min, 1 h, 1 day, 1 week, then monthly), not read from the module, so a changed table in
the code fails these tests.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relevent.registration import schedule
from relevent.registration.schedule import Result, State, TransitionError, due, next_attempt, on_result, recover

S, MIN, H, DAY = 1000, 60_000, 3_600_000, 86_400_000
MONTH = 30 * DAY
# delay before the next attempt after the 1st, 2nd, ... consecutive failure
WRITTEN = [0, 30 * S, 5 * MIN, 15 * MIN, 1 * H, 1 * DAY, 7 * DAY, MONTH, MONTH, MONTH]
T0 = 1_790_000_000_000

times = st.integers(min_value=0, max_value=4_000_000_000_000)


@pytest.mark.parametrize("failures, delay", list(enumerate(WRITTEN, start=1)))
def test_written_steps(failures, delay):
    assert next_attempt(failures, T0) == T0 + delay


def test_no_failure_is_now_and_negative_is_refused():
    assert next_attempt(0, T0) == T0
    with pytest.raises(ValueError):
        next_attempt(-1, T0)


@given(failures=st.integers(min_value=8, max_value=10_000), last=times)
def test_monthly_after_a_week(failures, last):
    assert next_attempt(failures, last) - last == MONTH


@given(failures=st.integers(min_value=0, max_value=200), last=times)
def test_back_off_never_shrinks(failures, last):
    assert next_attempt(failures + 1, last) >= next_attempt(failures, last) >= last


def run_failures(n: int, start: int, lateness: list[int]) -> list[int]:
    """Attempt times of n failed attempts, each made `lateness[i]` ms after it became due."""
    state, now, out = schedule.initial(start), start, []
    for i in range(n):
        assert due(state, now)
        state = on_result(state, Result(schedule.ATTEMPT), now)
        out.append(now)
        kind = (schedule.REFUSED, schedule.UNREACHABLE, schedule.INVALID)[i % 3]
        state = on_result(state, Result(kind, "no"), now + 5 * S)       # the attempt took 5 s
        assert state.kind == "failed" and state.failures == i + 1
        if state.next_attempt_ms > now:
            assert not due(state, state.next_attempt_ms - 1)
        now = max(state.next_attempt_ms, now + 5 * S) + lateness[i % len(lateness)]
    return out


@given(n=st.integers(min_value=2, max_value=14), start=times)
def test_attempts_follow_the_written_steps(n, start):
    """Attempts made as soon as due are spaced exactly by the written steps (counted from
    the start of the failed attempt; the first retry, due at once, waits for the 5 s
    attempt to end)."""
    at = run_failures(n, start, [0])
    gaps = [b - a for a, b in zip(at, at[1:])]
    expected = [max(WRITTEN[min(i, len(WRITTEN) - 1)], 5 * S) for i in range(n - 1)]
    assert gaps == expected


@given(n=st.integers(min_value=2, max_value=12), start=times,
       lateness=st.lists(st.integers(min_value=0, max_value=10 * DAY), min_size=1, max_size=5))
def test_a_late_attempt_shifts_the_rest_but_never_shortens_a_step(n, start, lateness):
    at = run_failures(n, start, lateness)
    for i, (a, b) in enumerate(zip(at, at[1:])):
        assert b - a >= WRITTEN[min(i, len(WRITTEN) - 1)]


def test_issued_resets_failures_and_revocation_starts_over():
    state = schedule.initial(T0)
    for i in range(4):
        state = on_result(state, Result(schedule.ATTEMPT), state.next_attempt_ms)
        state = on_result(state, Result(schedule.UNREACHABLE, "down"), state.last_attempt_ms + 1)
    assert state.failures == 4 and state.next_attempt_ms == state.last_attempt_ms + 15 * MIN
    state = on_result(state, Result(schedule.ATTEMPT), state.next_attempt_ms)
    state = on_result(state, Result(schedule.ISSUED, expiry_ms=T0 + 365 * DAY, serial="ab"), T0 + H)
    assert (state.kind, state.failures, state.serial, state.cert_expiry_ms) == ("registered", 0, "ab", T0 + 365 * DAY)
    assert not due(state, T0 + 10 * MONTH)
    state = on_result(state, Result(schedule.REVOKED, "on the CRL"), T0 + DAY)
    assert state.kind == "revoked" and state.reason == "revoked: on the CRL" and due(state, T0 + DAY)
    state = on_result(state, Result(schedule.ATTEMPT), T0 + DAY)
    state = on_result(state, Result(schedule.REFUSED, "token"), T0 + DAY)
    assert state.failures == 1 and state.next_attempt_ms == T0 + DAY        # first retry: immediately


def test_impossible_transitions_raise():
    fresh = schedule.initial(T0)
    with pytest.raises(TransitionError):
        on_result(fresh, Result(schedule.ISSUED, expiry_ms=1), T0)           # no attempt in flight
    with pytest.raises(TransitionError):
        on_result(fresh, Result(schedule.REVOKED, "x"), T0)                  # nothing to revoke
    requesting = on_result(fresh, Result(schedule.ATTEMPT), T0)
    with pytest.raises(TransitionError):
        on_result(requesting, Result(schedule.ATTEMPT), T0)
    failed = on_result(requesting, Result(schedule.REFUSED, "x"), T0)
    failed = on_result(on_result(failed, Result(schedule.ATTEMPT), T0), Result(schedule.REFUSED, "x"), T0)
    assert failed.next_attempt_ms == T0 + 30 * S
    with pytest.raises(TransitionError):
        on_result(failed, Result(schedule.ATTEMPT), T0 + 30 * S - 1)          # before it is due
    forced = on_result(failed, Result(schedule.ATTEMPT), T0 + 1, force=True)  # an operator's `register`
    assert forced.kind == "requesting" and forced.failures == 2
    with pytest.raises(ValueError):
        Result("maybe")
    with pytest.raises(ValueError):
        Result(schedule.ISSUED)                                               # no expiry


def test_a_crash_mid_attempt_counts_as_a_failure():
    state = on_result(schedule.initial(T0), Result(schedule.ATTEMPT), T0)
    state = on_result(on_result(state, Result(schedule.UNREACHABLE, "x"), T0), Result(schedule.ATTEMPT), T0)
    back = recover(State.from_json(state.to_json()))
    assert back.kind == "failed" and back.failures == 2 and "interrupted" in back.reason
    assert back.next_attempt_ms == T0 + 30 * S
    assert recover(back) == back


results = st.sampled_from(schedule.RESULTS)


@settings(max_examples=300)
@given(steps=st.lists(st.tuples(results, st.integers(min_value=0, max_value=40 * DAY)), max_size=40))
def test_random_histories_keep_the_invariants(steps):
    """Whatever happens, in any order: impossible results raise and change nothing; the
    state is registered only right after an issued result; failures count the failures
    since the last issue; an attempt never starts before it is due; JSON round-trips."""
    state, now, failures_seen = schedule.initial(T0), T0, 0
    for kind, dt in steps:
        now += dt
        result = Result(kind, "why", expiry_ms=now + DAY if kind == schedule.ISSUED else None,
                        serial="1" if kind == schedule.ISSUED else None)
        try:
            new = on_result(state, result, now)
        except TransitionError:
            continue
        if kind == schedule.ATTEMPT:
            assert due(state, now) and new.kind == "requesting" and new.attempts == state.attempts + 1
        if new.kind == "registered":
            assert kind == schedule.ISSUED and state.kind == "requesting" and new.failures == 0
            failures_seen = 0
        if kind in schedule.FAILURES:
            failures_seen += 1
            assert new.failures == failures_seen
            assert new.next_attempt_ms == next_attempt(failures_seen, new.last_attempt_ms)
        if kind in (schedule.REVOKED, schedule.CERT_ERROR):
            assert state.kind == "registered" and new.kind == "revoked" and due(new, now)
            failures_seen = 0
        assert State.from_json(new.to_json()) == new
        state = new


@pytest.mark.parametrize("broken", [
    [], {"kind": "registered"}, {**State().to_json(), "extra": 1}, {**State().to_json(), "kind": "lost"},
    {**State().to_json(), "failures": -1}, {**State().to_json(), "failures": True},
    {**State().to_json(), "next_attempt_ms": "soon"}, {**State().to_json(), "serial": 5},
])
def test_a_corrupt_state_is_refused(broken):
    with pytest.raises(ValueError):
        State.from_json(broken)
