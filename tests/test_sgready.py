"""The SG-Ready state machine (relevent/devices/sgready.py): the compressor's minimum run and
off times, the tariff's block length and blocks per day.  Checked against a brute-force
reference that steps every second and decides from the whole history, and by the rules'
invariants on what both produce."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relevent.devices.sgready import (
    BLOCKED, CONTACTS, FORCED, NORMAL, RECOMMENDED, Rules, SgState, step, wanted_state,
)

HOUR = 3600.0


def drive(wants: list[tuple[int, int]], t_end: int, rules: Rules, extra: tuple = ()) -> list[tuple[int, int]]:
    """The state machine driven as the Modbus device drives it: at every change of the
    wanted state and at each `due`, plus at `extra` times (polls that must change nothing).
    Returns the transitions (time, state in force)."""
    changes = dict(wants)
    calls = sorted(set(changes) | {t for t in extra if wants[0][0] <= t <= t_end})
    sg, prev, out, wanted, due = SgState(), NORMAL, [], None, None
    for _guard in range(100000):
        t = min([c for c in calls[:1]] + ([due] if due is not None and due <= t_end else []), default=None)
        if t is None:
            return out
        while calls and calls[0] <= t:
            wanted = changes.get(calls.pop(0), wanted)
        d = step(sg, wanted, t, rules)
        sg, due = d.sg, d.due
        assert due is None or due >= t
        if due == t:
            due = None if d.state == prev and d.pending_until is None else due
        if d.state != prev:
            out.append((t, d.state))
            prev = d.state
    raise AssertionError("no progress")


def reference(wants: list[tuple[int, int]], t_end: int, rules: Rules) -> list[tuple[int, int]]:
    """Every second from the first command: what the rules allow, from the history alone."""
    changes, t0 = dict(wants), wants[0][0]
    history: list[tuple[int, int]] = []          # transitions (time, state)
    refusals: list[int] = []                     # times a block request was lifted or refused
    wanted, run_start, current = None, None, NORMAL
    for t in range(t0, t_end + 1):
        if t in changes:
            if changes[t] == BLOCKED and wanted != BLOCKED:
                run_start = t
            wanted = changes[t]
        releases = [tt for (tt, s), (_, before) in zip(history, [(t0, NORMAL)] + history) if before == BLOCKED
                    and s != BLOCKED]
        last_release = releases[-1] if releases else t0
        block_start = next((tt for tt, s in reversed(history) if s == BLOCKED), None)
        spent = wanted == BLOCKED and any(r >= run_start for r in refusals)
        new = current
        if current == BLOCKED:
            if t - block_start >= rules.block_max_s:
                new = wanted if wanted != BLOCKED else NORMAL
                if wanted == BLOCKED:
                    refusals.append(t)
            elif wanted != BLOCKED and t - block_start >= rules.min_off_s:
                new = wanted
        elif wanted != BLOCKED:
            new = wanted
        elif not spent:
            started = sum(1 for tt, s in history if s == BLOCKED and tt > t - rules.window_s)
            if started >= rules.blocks_per_day:
                refusals.append(t)
            elif t - last_release >= rules.min_run_s:
                new = BLOCKED
        if new != current:
            history.append((t, new))
            current = new
    return history


RULES = st.builds(lambda run, off, extra, per_day, window: Rules(run, off, max(off, 1) + extra, per_day, window),
                  st.integers(0, 20), st.integers(0, 20), st.integers(0, 30), st.integers(0, 4), st.integers(5, 150))
WANTS = st.lists(st.tuples(st.integers(1, 40), st.sampled_from([BLOCKED, NORMAL, RECOMMENDED, FORCED])),
                 min_size=1, max_size=14)


def timeline(gaps_states: list[tuple[int, int]], t0: int = 1000) -> list[tuple[int, int]]:
    out, t = [], t0
    for gap, state in gaps_states:
        out.append((t, state))
        t += gap
    return out


@settings(max_examples=600, deadline=None)
@given(RULES, WANTS, st.lists(st.integers(1000, 1700), max_size=20))
def test_the_state_machine_agrees_with_the_brute_force_reference(rules, gaps, polls):
    wants = timeline(gaps)
    t_end = wants[-1][0] + int(rules.block_max_s + rules.min_run_s + rules.min_off_s) + 5
    got = drive(wants, t_end, rules, tuple(polls))
    assert got == reference(wants, t_end, rules)
    assert got == drive(wants, t_end, rules)   # polling in between changes nothing


@settings(max_examples=400, deadline=None)
@given(RULES, WANTS)
def test_the_rules_hold_on_every_timeline(rules, gaps):
    wants = timeline(gaps)
    t_end = wants[-1][0] + int(rules.block_max_s) + 60
    got = drive(wants, t_end, rules)
    blocks, release = [], wants[0][0]
    for (t, s), nxt in zip(got, got[1:] + [(None, None)]):
        if s == BLOCKED:
            end = nxt[0] if nxt[0] is not None else t_end
            assert end - t <= rules.block_max_s                    # never longer than block_max_s
            assert end - t >= rules.min_off_s or nxt[0] is None    # the compressor's off time
            assert t - release >= rules.min_run_s                  # the compressor's run time
            blocks.append(t)
            release = end
    for t in blocks:                                               # blocks_per_day in any window
        assert sum(1 for b in blocks if t - rules.window_s < b <= t) <= rules.blocks_per_day
    # A block is only ever the answer to a block request.
    wanted_at = lambda t: [s for tt, s in wants if tt <= t][-1]  # noqa: E731
    assert all(wanted_at(t) == BLOCKED for t, s in got if s == BLOCKED)


def test_wanted_state_from_a_load_command():
    assert wanted_state(True, 5000.0, 9000.0) == BLOCKED
    assert wanted_state(False, None, 9000.0) == NORMAL
    assert wanted_state(False, 0.0, 9000.0) == NORMAL
    assert wanted_state(False, 3000.0, 9000.0) == RECOMMENDED
    assert wanted_state(False, 9000.0, 9000.0) == FORCED
    assert CONTACTS == {1: (1, 0), 2: (0, 0), 3: (0, 1), 4: (1, 1)}


def test_a_block_too_soon_after_the_start_waits_for_the_minimum_run_time_and_says_so():
    rules = Rules(min_run_s=600, min_off_s=300, block_max_s=2 * HOUR, blocks_per_day=3)
    d = step(SgState(), NORMAL, 0.0, rules)
    d = step(d.sg, BLOCKED, 100.0, rules)
    assert d.state == NORMAL and d.pending_until == 600.0 and d.note == "min_run" and d.due == 600.0
    assert "pending until 600" in d.text() and "minimum run time" in d.text()
    d = step(d.sg, BLOCKED, 600.0, rules)
    assert d.state == BLOCKED and d.due == 600.0 + 2 * HOUR and d.text() == "SG-Ready 1 (blocked)"
    # A release 100 s later waits for the minimum off time.
    d = step(d.sg, NORMAL, 700.0, rules)
    assert d.state == BLOCKED and d.pending_until == 900.0 and d.note == "min_off"
    d = step(d.sg, NORMAL, 900.0, rules)
    assert d.state == NORMAL and d.note == ""


def test_tariff_rules_two_hours_three_times_a_day():
    rules = Rules(min_run_s=0, min_off_s=0, block_max_s=2 * HOUR, blocks_per_day=3)
    d = step(SgState(), BLOCKED, 0.0, rules)
    assert d.state == BLOCKED
    d = step(d.sg, BLOCKED, 2 * HOUR, rules)             # the longest block ends
    assert d.state == NORMAL and d.note == "block_max" and "was lifted" in d.text()
    d = step(d.sg, BLOCKED, 2 * HOUR + 60, rules)        # the same request is not honoured again
    assert d.state == NORMAL and d.note == "block_max"
    for start in (3 * HOUR, 6 * HOUR):                   # two more blocks
        d = step(d.sg, NORMAL, start - 1, rules)
        d = step(d.sg, BLOCKED, start, rules)
        assert d.state == BLOCKED
        d = step(d.sg, NORMAL, start + HOUR, rules)
    d = step(d.sg, BLOCKED, 9 * HOUR, rules)             # a fourth within 24 h is refused
    assert d.state == NORMAL and d.note == "blocks_per_day" and "refused" in d.text()
    d = step(d.sg, NORMAL, 24 * HOUR + 1, rules)         # 24 h after the first, a block is allowed again
    d = step(d.sg, BLOCKED, 24 * HOUR + 2, rules)
    assert d.state == BLOCKED


def test_state_survives_json():
    rules = Rules(min_run_s=10, block_max_s=100)
    d = step(step(SgState(), NORMAL, 0.0, rules).sg, BLOCKED, 20.0, rules)
    assert SgState.from_json(d.sg.to_json()) == d.sg


def test_rules_are_checked():
    with pytest.raises(ValueError):
        Rules(min_off_s=600, block_max_s=300)
    with pytest.raises(ValueError):
        Rules(min_run_s=-1)
    with pytest.raises(ValueError):
        step(SgState(), 5, 0.0, Rules())
