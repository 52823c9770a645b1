"""The WAN control session (relevent/wan/session.py) on its own: a recording stand-in for
the endpoint actor and the adapter, real schedules from the scheduling core for the
controllers' states.  Whole-site behaviour over each protocol is tested in the protocol
tests; these pin the session's rules: validation and policy before the answer, all or
nothing, one request in flight per controller, re-sending to a restarted controller,
abandoned operates, announced switches in views, contact."""
from __future__ import annotations

import concurrent.futures

import pytest

from relevent.messages import (
    ControllerState, ForecastReply, ForecastRequest, OperateResult, ScheduleOperate, ScheduleWrites, SnapshotRequest,
    WanContact, Wakeup,
)
from relevent.clock import now_ms
from relevent.scheduling.schedule import Refusal, Schedule, schedule_names, settings_snapshot, status_snapshot
from relevent.wan.session import ControlSession, Write

DER = {"name": "pv1", "functions": ["ActPow"], "schedules": 2}
CONTROLLER = "controller-address-1"


class FakeActor:
    parent = "site"
    myAddress = "endpoint"
    def __init__(self, state_dir: str = "") -> None:
        self.site = {"state_dir": state_dir, "name": "test"}   # no state_dir: no audit chain
        self.sent: list[tuple] = []
        self.wakeups: list = []

    def send(self, to, message) -> None:
        self.sent.append((to, message))

    def wakeupAfter(self, delay, payload) -> None:  # noqa: N802 - thespian's name
        self.wakeups.append((delay, payload))

    def to(self, address) -> list:
        return [m for a, m in self.sent if a == address]


class FakeAdapter:
    def __init__(self) -> None:
        self.states: list = []
        self.synced = 0

    def on_synced(self) -> None:
        self.synced += 1

    def on_state(self, state, unacked) -> None:
        self.states.append((state, unacked))


def schedules(locked: dict | None = None) -> list[Schedule]:
    out = []
    for name in schedule_names(DER["schedules"]):
        reserve = name.startswith("Res_")
        out.append(Schedule(name, periodic=reserve, reserve=reserve, locked=frozenset((locked or {}).get(name, ()))))
    return out


def state(seq: int, scheds: list[Schedule], *, stamp: int = 1, address=CONTROLLER, acked: int = 0,
          saved: int | None = None, then: ControllerState | None = None) -> ControllerState:
    """A controller's state that includes the endpoint's writes up to `acked`, of which those
    up to `saved` (default: all) are durable."""
    saved = acked if saved is None else saved
    return ControllerState("pv1", "ActPow", {s.name: {"status": status_snapshot(s), "settings": settings_snapshot(s)}
                                             for s in scheds},
                           (0.0, None, None), now_ms(), (stamp, seq), address, True,
                           {"ep": acked} if acked else {}, then, writes_saved={"ep": saved} if saved else {})


@pytest.fixture
def session(tmp_path):
    actor, adapter = FakeActor(str(tmp_path)), FakeAdapter()
    s = ControlSession(actor, {"name": "ep", "ders": [DER]})
    s.start(adapter)
    s.actor, s.adapter_ = actor, adapter
    yield s
    s.stop()


def deliver(session: ControlSession) -> None:
    """What the endpoint actor does when the session's bridge is readable."""
    session.on_ready(session.fds())


def test_the_session_subscribes_to_every_controller_and_serves_once_each_state_is_in(session):
    assert isinstance(session.actor.sent[0][1], SnapshotRequest)
    assert session.adapter_.synced == 0
    session.on_message(state(1, schedules()))
    assert session.adapter_.synced == 1


def test_the_adapter_serves_anyway_when_a_controller_never_answers(session):
    session.on_wakeup(Wakeup("first-states"))
    assert session.adapter_.synced == 1
    session.on_message(state(1, schedules()))
    assert session.adapter_.synced == 1


def test_a_start_in_the_past_is_refused_before_anything_reaches_the_controller(session):
    session.on_message(state(1, schedules()))
    answer = session.write("pv1", "ActPow", "FSCH01", [Write("StrTm", 1, now_ms() - 1000)])
    assert not answer.ok and answer.rule == "value" and answer.refusal == Refusal.VALUE_INVALID
    deliver(session)
    assert session.actor.to(CONTROLLER) == []


def test_a_locked_field_is_refused_by_the_policy_with_its_rule(session):
    session.on_message(state(1, schedules({"FSCH01": ["SchdPrio"]})))
    answer = session.write("pv1", "ActPow", "FSCH01", [Write("SchdPrio", 0, 50)])
    assert not answer.ok and answer.rule == "lock:SchdPrio" and answer.refusal == Refusal.ACCESS_DENIED
    assert session.write("pv1", "ActPow", "FSCH02", [Write("SchdPrio", 0, 50)]).ok


def test_the_reserve_cannot_be_disabled_whatever_the_protocol(session):
    session.on_message(state(1, schedules()))
    answer = session.operate("pv1", "ActPow", "Res_FSCH01", "disable").result(0)
    assert not answer.ok and answer.rule == "lock:DsaReq"


def test_an_unknown_field_or_schedule_is_refused_not_guessed(session):
    session.on_message(state(1, schedules()))
    assert session.write("pv1", "ActPow", "FSCH01", [Write("Bogus", 0, 1)]).rule == "field"
    assert session.write("pv1", "ActPow", "FSCH09", [Write("NumEntr", 0, 1)]).rule == "unknown"
    assert session.write("nope", "ActPow", "FSCH01", [Write("NumEntr", 0, 1)]).rule == "unknown"


def test_writes_are_all_or_nothing(session):
    session.on_message(state(1, schedules()))
    answer = session.write("pv1", "ActPow", "FSCH01", [Write("NumEntr", 0, 3), Write("StrTm", 1, 5)])
    assert not answer.ok
    assert session.view("pv1", "ActPow")["schedules"]["FSCH01"]["settings"]["num_entr"] == 100
    deliver(session)
    assert session.actor.to(CONTROLLER) == []


def test_accepted_writes_show_at_once_and_go_out_in_one_batch(session):
    session.on_message(state(1, schedules()))
    assert session.write("pv1", "ActPow", "FSCH01", [Write("NumEntr", 0, 2), Write("Val", 1, 7.0)]).ok
    assert session.view("pv1", "ActPow")["schedules"]["FSCH01"]["settings"]["values"][0] == 7.0
    deliver(session)
    (batch,) = session.actor.to(CONTROLLER)
    assert isinstance(batch, ScheduleWrites) and [w.field for w in batch.writes] == ["NumEntr", "Val"]


def test_only_one_request_is_in_flight_per_controller_and_an_enable_waits_for_the_writes_before_it(session):
    session.on_message(state(1, schedules()))
    session.write("pv1", "ActPow", "FSCH01", [Write("NumEntr", 0, 1)])
    fut = session.operate("pv1", "ActPow", "FSCH01", "enable")
    deliver(session)
    assert [type(m) for m in session.actor.to(CONTROLLER)] == [ScheduleWrites]
    last_seq = session.actor.to(CONTROLLER)[0].writes[-1].seq
    session.on_message(state(2, schedules(), acked=last_seq))  # the controller acknowledges the writes
    sent = session.actor.to(CONTROLLER)
    assert [type(m) for m in sent] == [ScheduleWrites, ScheduleOperate]
    assert not fut.done()
    session.on_message(OperateResult(sent[1].request_id, True, None, "", state(3, schedules(), acked=last_seq)))
    assert fut.result(0).ok


def test_a_restarted_controller_gets_the_writes_it_lost_then_the_operate_in_flight(session):
    session.on_message(state(1, schedules()))
    session.write("pv1", "ActPow", "FSCH01", [Write("NumEntr", 0, 1)])
    deliver(session)
    first = session.actor.to(CONTROLLER)[0]
    session.on_message(state(2, schedules(), acked=first.writes[-1].seq))
    session.write("pv1", "ActPow", "FSCH01", [Write("Val", 1, 5.0)])
    session.operate("pv1", "ActPow", "FSCH01", "enable")
    deliver(session)
    # The controller dies before acknowledging the second batch; its new incarnation says so.
    session.on_message(state(1, schedules(), stamp=2, address="controller-address-2", acked=first.writes[-1].seq))
    again = session.actor.to("controller-address-2")
    assert isinstance(again[0], ScheduleWrites) and [w.field for w in again[0].writes] == ["Val"]
    assert session.stats["resent"] == 1


def test_an_operate_whose_client_gave_up_is_never_applied_later(session):
    session.on_message(state(1, schedules()))
    session.write("pv1", "ActPow", "FSCH01", [Write("NumEntr", 0, 1)])
    answer = session.operate_wait("pv1", "ActPow", "FSCH01", "enable", timeout=0.01)
    assert not answer.ok and answer.rule == "timeout"
    deliver(session)
    seq = session.actor.to(CONTROLLER)[0].writes[-1].seq
    session.on_message(state(2, schedules(), acked=seq))
    assert [type(m) for m in session.actor.to(CONTROLLER)] == [ScheduleWrites]


def test_a_failed_enable_names_the_SchdEnaErr_rule_and_code(session):
    session.on_message(state(1, schedules()))
    fut = session.operate("pv1", "ActPow", "FSCH01", "enable")
    deliver(session)
    (op,) = session.actor.to(CONTROLLER)
    failed = schedules()
    failed[0].enable(now_ms())  # NumEntr 100 with SchdIntv 0: SchdEnaErr 3
    result = OperateResult(op.request_id, False, int(Refusal.VALUE_INVALID), "SchdEnaErr 3 (SCHD_INTV)",
                           state(2, failed))
    session.on_message(result)
    answer = fut.result(0)
    assert (answer.ok, answer.rule, answer.ena_err) == (False, "SchdEnaErr", 3)


def test_a_view_shows_an_announced_switch_once_its_instant_has_passed(session):
    now = now_ms()
    scheds = schedules()
    then = ControllerState("pv1", "ActPow", {"FSCH01": {"status": {**status_snapshot(scheds[0]), "state": 4},
                                                        "settings": None}},
                           (42.0, "FSCH01", now + 100), now + 100, (1, 1, 1), CONTROLLER, False)
    session.on_message(state(1, scheds, then=then))
    assert session.view("pv1", "ActPow", now=now)["output"] == 0.0
    seen = session.view("pv1", "ActPow", now=now + 100)
    assert seen["output"] == 42.0 and seen["schedules"]["FSCH01"]["status"]["state"] == 4


def test_an_older_state_never_replaces_a_newer_one(session):
    session.on_message(state(5, schedules()))
    old = schedules()
    old[0].settings.prio = 99
    session.on_message(state(4, old))
    assert session.view("pv1", "ActPow")["schedules"]["FSCH01"]["settings"]["prio"] == 0


def test_forecasts_are_asked_of_the_controller_and_answered_through_a_future(session):
    session.on_message(state(1, schedules()))
    fut = session.forecast("pv1", "ActPow", 3600_000)
    deliver(session)
    (req,) = session.actor.to(CONTROLLER)
    assert isinstance(req, ForecastRequest) and req.window_ms == 3600_000
    session.on_message(ForecastReply(req.request_id, "pv1", "ActPow", [(1, 2.0, None)]))
    assert fut.result(0) == [(1, 2.0, None)]


def test_a_forecast_of_an_unknown_controller_is_empty(session):
    fut = session.forecast("nope", "ActPow", 1000)
    deliver(session)
    assert fut.result(0) == []


def test_requests_and_connected_clients_count_as_contact_for_no_telecom(session):
    session.on_message(state(1, schedules()))
    session.connected(True)
    session.on_wakeup(Wakeup("contact"))
    contacts = session.actor.to("site")
    assert isinstance(contacts[-1], WanContact) and contacts[-1].at >= now_ms() - 1000


def test_operate_futures_are_cancelled_when_the_session_stops(session):
    session.on_message(state(1, schedules()))
    fut = session.operate("pv1", "ActPow", "FSCH01", "enable")
    session.stop()
    with pytest.raises(concurrent.futures.CancelledError):
        fut.result(0)


def test_a_forecast_given_up_by_its_client_is_forgotten(session):
    session.on_message(state(1, schedules()))
    fut = session.forecast("pv1", "ActPow", 1000)
    fut.cancel()
    assert session.forecasts == {}


def test_writes_applied_but_not_yet_saved_are_sent_again_to_a_restarted_controller(session):
    session.on_message(state(1, schedules()))
    session.write("pv1", "ActPow", "FSCH01", [Write("NumEntr", 0, 1)])
    deliver(session)
    seq = session.actor.to(CONTROLLER)[0].writes[-1].seq
    session.on_message(state(2, schedules(), acked=seq, saved=0))   # applied, not flushed yet
    # It dies before its flush: the new incarnation loaded the store without the write.
    session.on_message(state(1, schedules(), stamp=2, address="controller-address-2"))
    (again,) = session.actor.to("controller-address-2")
    assert [w.field for w in again.writes] == ["NumEntr"]


def test_a_late_message_of_a_replaced_controller_does_not_point_the_session_back_at_it(session):
    session.on_message(state(1, schedules(), stamp=2, address="controller-address-2"))
    session.on_message(state(9, schedules(), stamp=1, address="dead-address"))  # delayed, from before
    session.write("pv1", "ActPow", "FSCH01", [Write("NumEntr", 0, 1)])
    deliver(session)
    assert session.actor.to("dead-address") == []
    assert len(session.actor.to("controller-address-2")) == 1


def test_after_a_restart_writes_queued_behind_an_enable_stay_behind_it(session):
    session.on_message(state(1, schedules()))
    session.write("pv1", "ActPow", "FSCH01", [Write("NumEntr", 0, 2)])
    deliver(session)                                                  # in flight
    session.operate("pv1", "ActPow", "FSCH01", "enable")
    session.write("pv1", "ActPow", "FSCH01", [Write("SchdPrio", 0, 5)])
    deliver(session)                                                  # both queued
    session.on_message(state(1, schedules(), stamp=2, address="controller-address-2"))
    sent = session.actor.to("controller-address-2")
    assert [w.field for w in sent[0].writes] == ["NumEntr"]           # only what had been sent
    assert len(sent) == 1                                             # the enable waits for its ack
    session.on_message(state(2, schedules(), stamp=2, address="controller-address-2", acked=sent[0].writes[-1].seq))
    sent = session.actor.to("controller-address-2")
    assert isinstance(sent[1], ScheduleOperate)                       # then the enable, then the write


def test_the_topologys_locks_hold_before_a_controllers_first_state():
    actor, adapter = FakeActor(), FakeAdapter()
    der = {**DER, "locks": {"ActPow": {"FSCH01": ["SchdPrio"]}}, "values": 4}
    s = ControlSession(actor, {"name": "ep", "ders": [der]})
    s.start(adapter)
    assert s.write("pv1", "ActPow", "FSCH01", [Write("SchdPrio", 0, 9)]).rule == "lock:SchdPrio"
    assert s.write("pv1", "ActPow", "FSCH01", [Write("Val", 5, 1.0)]).rule == "value"   # 4 slots


def test_an_operate_given_up_by_its_client_is_forgotten(session):
    fut = session.operate("pv1", "ActPow", "FSCH01", "enable")   # no controller state yet: queued
    fut.cancel()
    assert session.waiting == {}


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs the test fills up: a real full disk under the audit log (root only)."""
    import os
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder) -> None:
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def audited_values(folder) -> list:
    """NumEntr values of the write instructions recorded in the endpoint's chain."""
    import json
    return [r["detail"]["writes"][0][2] for f in sorted((folder / "audit" / "ep").glob("audit-*.jsonl"))
            for line in f.read_text().splitlines() if line.endswith("}")
            for r in [json.loads(line)] if r["kind"] == "instruction" and r["action"] == "write"]


@pytest.mark.parametrize("mode", ["continue", "refuse"])
def test_a_full_disk_under_the_audit_log_refuses_instructions_only_when_the_site_says_so(small_disk, mode):
    actor = FakeActor(str(small_disk))
    actor.site["audit_failure"] = mode
    s = ControlSession(actor, {"name": "ep", "ders": [DER]})
    s.start(FakeAdapter())
    try:
        s.on_message(state(1, schedules()))
        assert s.write("pv1", "ActPow", "FSCH01", [Write("NumEntr", 0, 2)]).ok
        fill(small_disk)
        # The log's last page may still hold a few records: write until one cannot be.
        answers = {n: s.write("pv1", "ActPow", "FSCH01", [Write("NumEntr", 0, n)]) for n in range(3, 60)}
        refused = [n for n, a in answers.items() if not a.ok]
        recorded = audited_values(small_disk)
        assert recorded[:1] == [2] and len(recorded) < 58, recorded        # the disk did fill up
        if mode == "refuse":     # every instruction that took effect is recorded, and only those
            assert refused and all(answers[n].rule == "audit" and "cannot be written" in answers[n].reason
                                   for n in refused)
            assert recorded == [2] + [n for n in range(3, 60) if answers[n].ok]
            last = max(recorded)
            assert s.view("pv1", "ActPow")["schedules"]["FSCH01"]["settings"]["num_entr"] == last
            assert s.operate("pv1", "ActPow", "FSCH01", "enable").result(0).rule == "audit"
            deliver(s)
            sent = s.actor.to(CONTROLLER)
            assert [w.value for m in sent if isinstance(m, ScheduleWrites) for w in m.writes] == recorded
            assert not [m for m in sent if isinstance(m, ScheduleOperate)]
        else:                    # the site keeps following its grid operator; the failure is logged
            assert not refused and s.view("pv1", "ActPow")["schedules"]["FSCH01"]["settings"]["num_entr"] == 59
        (small_disk / "filler").unlink()                                             # space again: recorded again
        assert s.write("pv1", "ActPow", "FSCH01", [Write("NumEntr", 0, 61)]).ok
        assert audited_values(small_disk)[-1] == 61
    finally:
        s.stop()
    # The partial lines the full disk left were cut off again: the chain verifies whole.
    from relevent.audit.verify import load_public_key, verify
    result = verify(small_disk / "audit" / "ep", load_public_key(small_disk / "audit" / "audit-key.pub"))
    assert result.ok and result.problem is None and result.from_genesis, result
