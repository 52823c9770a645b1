"""The supervisor's decisions (relevent/actors/restart_policy.py), with time as an argument:
intensity window, backoff, escalation, restart sets per strategy, stop order, stop timeout."""
from __future__ import annotations

import pytest

from relevent.actors.restart_policy import (
    STOP_TIMEOUT_S, Escalate, History, Restart, RestartPolicy, merge, on_failure, restart_set, stop_order,
    stop_overdue, within,
)

CHILDREN = ("sim", "mms", "der1", "der2", "mqtt")  # start order


def policy(**kw) -> RestartPolicy:
    settings = {"strategy": "one_for_one", "max_restarts": 3, "period_s": 10.0,
                "backoff_initial_s": 0.1, "backoff_max_s": 1.0}
    return RestartPolicy(**{**settings, **kw})


def fail_at(p: RestartPolicy, times: list[float], failed: str = "der1", alive=CHILDREN, history=None):
    """The decisions for failures of `failed` at `times`, one after the other."""
    history = history or History()
    decisions = []
    for now in times:
        decision, history = on_failure(p, history, CHILDREN, failed, now, set(alive) - {failed}, "boom")
        decisions.append(decision)
    return decisions, history


# -- intensity and escalation -----------------------------------------------------------------
def test_failures_up_to_max_restarts_within_the_period_are_restarted():
    decisions, _ = fail_at(policy(), [0.0, 1.0, 2.0])
    assert all(isinstance(d, Restart) for d in decisions)


def test_one_failure_more_than_max_restarts_within_the_period_escalates():
    p = policy()
    decisions, _ = fail_at(p, [0.0, 1.0, 2.0, 3.0])
    assert isinstance(decisions[-1], Escalate)
    assert decisions[-1].reason.startswith(f"{p.max_restarts + 1} restarts within {p.period_s:g} s "
                                           f"(max {p.max_restarts}); last: der1: boom")


def test_failures_older_than_the_period_leave_the_window():
    p = policy()
    late = p.period_s + 0.5  # the failure at 0.0 is out of its window, the others are in
    decisions, history = fail_at(p, [0.0, 1.0, 2.0, late])
    assert isinstance(decisions[-1], Restart)
    assert history.failures == (1.0, 2.0, late)


def test_a_failure_exactly_one_period_ago_still_counts():
    assert within((0.0, 5.0), now=10.0, period_s=10.0) == (0.0, 5.0)
    assert within((0.0, 5.0), now=10.001, period_s=10.0) == (5.0,)


def test_failures_of_different_children_share_the_intensity():
    p = policy()
    history = History()
    for now, name in enumerate(["sim", "mms", "der1"]):
        decision, history = on_failure(p, history, CHILDREN, name, float(now))
        assert isinstance(decision, Restart)
    decision, _ = on_failure(p, history, CHILDREN, "der2", 3.0)
    assert isinstance(decision, Escalate)


def test_max_restarts_zero_escalates_the_first_failure():
    decisions, _ = fail_at(policy(max_restarts=0), [0.0])
    assert isinstance(decisions[0], Escalate)


def test_decisions_do_not_change_the_history_they_are_given():
    history = History((1.0,), {"der1": (1.0,)})
    on_failure(policy(), history, CHILDREN, "der1", 2.0)
    assert history == History((1.0,), {"der1": (1.0,)})


# -- backoff -----------------------------------------------------------------------------------
def test_the_first_restart_is_immediate_and_later_ones_double_up_to_the_maximum():
    p = policy(max_restarts=100, backoff_initial_s=0.1, backoff_max_s=1.0)
    decisions, _ = fail_at(p, [float(t) / 100 for t in range(7)])
    delays = [d.delay_s for d in decisions]
    expected = [0.0] + [min(p.backoff_initial_s * 2 ** k, p.backoff_max_s) for k in range(6)]
    assert delays == pytest.approx(expected)
    assert delays[1] == p.backoff_initial_s and delays[-1] == p.backoff_max_s


def test_backoff_counts_only_the_failed_childs_own_restarts():
    p = policy(max_restarts=100)
    history = History()
    for now, name in enumerate(["sim", "mms", "der2"]):
        _, history = on_failure(p, history, CHILDREN, name, float(now))
    decision, _ = on_failure(p, history, CHILDREN, "der1", 3.0)
    assert decision.delay_s == 0.0


def test_backoff_starts_over_once_earlier_restarts_leave_the_window():
    p = policy(max_restarts=100)
    decisions, _ = fail_at(p, [0.0, 1.0, p.period_s + 0.5, 3 * p.period_s])
    assert decisions[1].delay_s == p.backoff_s(1)
    assert decisions[2].delay_s == p.backoff_s(1)  # only the restart at 1.0 is still in the window
    assert decisions[3].delay_s == 0.0              # none is


def test_a_removed_child_is_forgotten_for_its_backoff_but_not_for_the_intensity():
    _, history = fail_at(policy(), [0.0, 1.0])
    forgotten = history.forget("der1")
    assert "der1" not in forgotten.restarts and forgotten.failures == history.failures


# -- restart sets ------------------------------------------------------------------------------
def test_one_for_one_restarts_the_failed_child_alone_and_stops_nobody():
    decision, _ = on_failure(policy(strategy="one_for_one"), History(), CHILDREN, "der1", 0.0, set(CHILDREN))
    assert decision.start == ("der1",) and decision.stop == ()


def test_rest_for_one_stops_the_later_children_last_first_and_starts_the_rest_in_start_order():
    decision, _ = on_failure(policy(strategy="rest_for_one"), History(), CHILDREN, "der1", 0.0,
                             set(CHILDREN) - {"der1"})
    assert decision.stop == ("mqtt", "der2")
    assert decision.start == ("der1", "der2", "mqtt")


def test_one_for_all_stops_every_sibling_last_first_and_starts_all_in_start_order():
    decision, _ = on_failure(policy(strategy="one_for_all"), History(), CHILDREN, "der1", 0.0,
                             set(CHILDREN) - {"der1"})
    assert decision.stop == ("mqtt", "der2", "mms", "sim")
    assert decision.start == CHILDREN


def test_a_group_restart_stops_only_the_children_still_alive():
    decision, _ = on_failure(policy(strategy="one_for_all"), History(), CHILDREN, "der1", 0.0, {"mms", "mqtt"})
    assert decision.stop == ("mqtt", "mms")
    assert decision.start == CHILDREN


def test_rest_for_one_of_the_last_child_is_one_for_one():
    assert restart_set("rest_for_one", CHILDREN, "mqtt") == ("mqtt",)


def test_an_unknown_strategy_is_refused():
    with pytest.raises(ValueError):
        policy(strategy="all_for_one")
    with pytest.raises(ValueError):
        restart_set("all_for_one", CHILDREN, "der1")


def test_a_group_restart_waits_for_the_failed_childs_backoff():
    p = policy(strategy="one_for_all", max_restarts=100)
    decisions, _ = fail_at(p, [0.0, 1.0])
    assert decisions[1].delay_s == p.backoff_s(1)


def test_a_failure_during_a_group_restart_joins_it_with_the_longer_delay():
    pending = Restart("der1", ("mqtt", "der2"), ("der1", "der2", "mqtt"), 0.4, "der1: boom")
    new = Restart("mms", ("mqtt", "der2"), ("mms", "der1", "der2", "mqtt"), 0.0, "mms: boom")
    merged = merge(pending, new, CHILDREN)
    assert merged.start == ("mms", "der1", "der2", "mqtt")
    assert merged.stop == ("mqtt", "der2")
    assert merged.delay_s == 0.4


def test_a_merged_group_no_longer_stops_a_child_that_failed_meanwhile():
    pending = Restart("mms", ("mqtt", "der2", "der1"), ("mms", "der1", "der2", "mqtt"), 0.0, "")
    new = Restart("der2", ("mqtt",), ("der2", "mqtt"), 0.0, "")
    assert merge(pending, new, CHILDREN).stop == ("mqtt", "der1")


# -- stop order and stop timeout -----------------------------------------------------------------
def test_children_stop_in_reverse_start_order():
    assert stop_order(CHILDREN, set(CHILDREN)) == tuple(reversed(CHILDREN))
    assert stop_order(CHILDREN, {"sim", "der2"}) == ("der2", "sim")


def test_a_child_asked_to_stop_is_not_killed_before_the_stop_timeout():
    assert not stop_overdue(STOP_TIMEOUT_S, silent_s=100.0, supervisor=False, heartbeat_timeout_s=0.6)


def test_a_child_still_there_after_the_stop_timeout_is_killed():
    assert stop_overdue(STOP_TIMEOUT_S + 0.01, silent_s=0.0, supervisor=False, heartbeat_timeout_s=0.6)


def test_a_supervisor_child_that_answers_heartbeats_may_take_longer_to_stop():
    assert not stop_overdue(10 * STOP_TIMEOUT_S, silent_s=0.5, supervisor=True, heartbeat_timeout_s=0.6)


def test_a_supervisor_that_answers_heartbeats_is_still_killed_past_the_whole_stop_budget():
    assert not stop_overdue(19.9, silent_s=0.1, supervisor=True, heartbeat_timeout_s=0.6, limit_s=20.0)
    assert stop_overdue(20.01, silent_s=0.1, supervisor=True, heartbeat_timeout_s=0.6, limit_s=20.0)
    assert not stop_overdue(STOP_TIMEOUT_S, silent_s=0.1, supervisor=True, heartbeat_timeout_s=0.6, limit_s=1.0)


def test_a_silent_supervisor_child_is_killed_after_the_stop_timeout():
    assert not stop_overdue(STOP_TIMEOUT_S, silent_s=5.0, supervisor=True, heartbeat_timeout_s=0.6)
    assert stop_overdue(STOP_TIMEOUT_S + 0.01, silent_s=5.0, supervisor=True, heartbeat_timeout_s=0.6)


def test_the_policy_reads_a_supervision_table_of_the_topology():
    table = {"strategy": "rest_for_one", "max_restarts": 2, "period": 10, "backoff_initial": 0.05,
             "backoff_max": 5, "heartbeat_interval": 0.2}
    assert RestartPolicy.from_settings(table) == RestartPolicy("rest_for_one", 2, 10.0, 0.05, 5.0)


# -- the runner's watch on the site supervisor: heartbeats and the alive file ---------------------
def test_the_site_supervisor_is_hung_only_when_neither_its_heartbeat_nor_its_tick_came_within_the_limit():
    from relevent.actors.restart_policy import root_hung
    assert root_hung(19.0, 19.0, 20.0) == ""
    assert root_hung(21.0, 21.0, 20.0) == "hung: no heartbeat for 21.00 s"
    assert root_hung(21.0, None, 20.0) == "hung: no heartbeat for 21.00 s"    # no tick mark since it started
    assert root_hung(5.0, 60.0, 20.0) == ""                                   # heartbeats came: the file does not matter
    assert root_hung(60.0, 0.5, 20.0) == ""                                   # heartbeats queued, its tick runs


def test_heartbeats_that_never_leave_a_ticking_site_supervisor_are_a_hang_too():
    from relevent.actors.restart_policy import QUEUED_HEARTBEAT_FACTOR, root_hung
    limit = 20.0
    assert root_hung(QUEUED_HEARTBEAT_FACTOR * limit, 0.5, limit) == ""
    reason = root_hung(QUEUED_HEARTBEAT_FACTOR * limit + 1, 0.5, limit)
    assert reason.startswith("hung: no heartbeat for 101.00 s, although its heartbeat tick ran 0.50 s ago"), reason


def runner_watching(tmp_path, heartbeat_silent_s: float, touched_s_ago: float | None):
    """A SiteRunner (not started) whose site supervisor has been ready for a minute, last
    heard `heartbeat_silent_s` ago, its alive file touched `touched_s_ago` ago (None: no
    file); its restarts recorded instead of made."""
    import os
    import time

    from relevent.runtime.control import alive_path
    from relevent.runtime.runner import SiteRunner
    from relevent.topology import parse_topology
    topo = parse_topology(f'[site]\nname = "w"\nstate_dir = "{tmp_path}"\n', "site.toml", env={})
    runner = SiteRunner(topo)
    now = time.monotonic()
    runner.root_ready, runner.root_pid, runner.root_started = True, None, time.time() - 60
    runner.root_alive_at = now - heartbeat_silent_s
    if touched_s_ago is not None:
        alive_path(tmp_path).touch()
        stamp = time.time() - touched_s_ago
        os.utime(alive_path(tmp_path), (stamp, stamp))
    restarts = []
    runner._restart_root = lambda policy: restarts.append(runner.root_error)
    runner._watch_root(now, topo.data["supervision"]["site"])   # heartbeat_timeout 0.6 s by default
    return restarts


def test_the_runner_keeps_a_site_supervisor_whose_heartbeats_are_late_but_whose_tick_runs(tmp_path):
    assert runner_watching(tmp_path, heartbeat_silent_s=2.0, touched_s_ago=0.1) == []


def test_the_runner_restarts_a_site_supervisor_whose_tick_stopped_too(tmp_path):
    assert runner_watching(tmp_path, heartbeat_silent_s=2.0, touched_s_ago=2.0) == ["hung: no heartbeat for 2.00 s"]


def test_an_alive_file_older_than_the_site_supervisor_does_not_count(tmp_path):
    assert runner_watching(tmp_path, heartbeat_silent_s=2.0, touched_s_ago=120.0) == ["hung: no heartbeat for 2.00 s"]
    assert runner_watching(tmp_path, heartbeat_silent_s=2.0, touched_s_ago=None) == ["hung: no heartbeat for 2.00 s"]


def test_a_heartbeat_round_goes_out_in_slices_of_at_most_the_pings_per_tick():
    from relevent.actors.restart_policy import PINGS_PER_TICK, heartbeat_slices
    assert heartbeat_slices(0) == heartbeat_slices(1) == heartbeat_slices(PINGS_PER_TICK) == 1
    assert heartbeat_slices(PINGS_PER_TICK + 1) == 2
    assert heartbeat_slices(1000, per_tick=200) == 5
    for n in (1, 7, 199, 200, 201, 999, 1000, 1001, 5000):
        slices = heartbeat_slices(n)
        assert -(-n // slices) <= PINGS_PER_TICK          # never more than the limit per tick
        assert slices == 1 or -(-n // (slices - 1)) > PINGS_PER_TICK   # and no more slices than needed
