"""A supervisor matches its children's reports (Hello, Ready, Pong, Failed) by name and then
by incarnation (relevent/actors/supervisor.py `_named`): unit tests on a Supervisor outside
any ActorSystem, with thespian's own TCP addresses, and the lookup's cost at 1,000 children
(it was a scan of ActorAddress comparisons per report, quadratic per heartbeat round); and
how a supervisor with many children spreads its heartbeat round over ticks and takes its
child supervisors' status from their heartbeat replies instead of asking each."""
from __future__ import annotations

import time

from thespian.actors import ActorAddress
from thespian.system.transport.IPBase import TCPv4ActorAddress

from relevent.actors.supervisor import Child, ChildSpec, Supervisor
from relevent.messages import Failed, Hello, Pong, Ready


def address(port: int) -> ActorAddress:
    return ActorAddress(TCPv4ActorAddress("127.0.0.1", port, external=True))


def supervisor_with(n: int) -> Supervisor:
    sup = Supervisor()
    for i in range(n):
        spec = ChildSpec(f"d{i:04d}", "der", "relevent.actors.der.DerActor", {})
        sup.children.append(Child(spec, address=address(20000 + i), state="starting"))
    return sup


def test_each_report_reaches_the_child_that_sent_it():
    sup = supervisor_with(50)
    sup._child_report(Hello("d0007", 4242), address(20007))
    sup._child_report(Ready("d0031", 4343, {"x": 1}), address(20031))
    sup._child_report(Failed("d0012", "RuntimeError: boom"), address(20012))
    by_name = {c.spec.name: c for c in sup.children}
    assert by_name["d0007"].pid == 4242 and by_name["d0007"].state == "starting"
    assert by_name["d0031"].pid == 4343 and by_name["d0031"].state == "running"
    assert by_name["d0031"].detail == {"x": 1}
    assert by_name["d0012"].last_error == "RuntimeError: boom" and by_name["d0012"].cause == "crashed"
    assert [c.spec.name for c in sup.children if c.pid is not None] == ["d0007", "d0031"]


def test_a_report_from_an_old_incarnation_or_under_another_name_is_ignored():
    sup = supervisor_with(3)
    child = sup.children[1]
    child.ping_sent = 1.0
    sup._child_report(Pong("d0001", 1, 99, {"stale": True}), address(29999))   # its previous address
    sup._child_report(Pong("d0002", 1, 99, {"stale": True}), address(20001))   # its address, not its name
    assert child.ping_sent == 1.0 and child.detail == {}
    sup._child_report(Pong("d0001", 1, 99, {"fresh": True}), address(20001))
    assert child.ping_sent is None and child.detail == {"fresh": True}


def test_the_index_follows_changes_to_the_list_of_children():
    sup = supervisor_with(3)
    assert sup._by_name("d0001") is sup.children[1]
    gone = sup.children.pop(1)
    assert sup._by_name("d0001") is None
    successor = Child(gone.spec, address=address(21001), state="starting")
    sup.children.append(successor)
    sup._child_report(Hello("d0001", 7), address(21001))
    assert sup._by_name("d0001") is successor and successor.pid == 7
    sup.children = list(reversed(sup.children))   # reordered (as a reload does)
    assert sup._by_name("d0000") is sup.children[-1]


def test_a_heartbeat_round_of_a_thousand_pongs_stays_linear():
    # The old scan took about a second per round here; 5x what the index needs is ample.
    sup = supervisor_with(1000)
    pongs = [(Pong(c.spec.name, 1, 1, {"i": i}), address(20000 + i)) for i, c in enumerate(sup.children)]
    t0 = time.perf_counter()
    for message, sender in pongs:
        sup._child_report(message, sender)
    took = time.perf_counter() - t0
    assert [c.detail for c in sup.children] == [{"i": i} for i in range(1000)]
    assert took < 0.25, f"{took:.3f} s for 1,000 pongs"


def test_a_supervisor_whose_children_are_starting_gets_the_startup_timeout_before_it_is_taken_as_hung():
    from relevent.actors.restart_policy import silence_limit
    assert silence_limit(20.0, 560.0, starting=True) == 560.0
    assert silence_limit(20.0, 560.0, starting=False) == 20.0
    assert silence_limit(0.6, 0.5, starting=True) == 0.6     # never below the heartbeat timeout


def test_the_site_supervisors_heartbeat_to_the_runner_goes_before_its_pings_to_every_child(tmp_path):
    """thespian transmits an actor's messages in order: behind a Ping to each of 1,000 DERs the
    runner's heartbeat arrived late enough for the runner to take the site for hung.  The
    tick also touches the site's alive file (restart_policy.root_hung)."""
    from relevent.runtime.control import alive_path
    from relevent.actors.site import SiteSupervisor
    from relevent.messages import Ping, Wakeup
    from relevent.topology import parse_topology

    class Recorded(SiteSupervisor):
        def send(self, target, message):
            sent.append((target, message))

        def wakeupAfter(self, period, payload=None):  # noqa: N802 - thespian's name
            pass

    sent: list = []
    sup = Recorded()
    sup.site = {"name": "s", "state_dir": str(tmp_path),
                "supervision": parse_topology('[site]\nname = "s"\n', "site.toml", env={}).data["supervision"]}
    sup.parent = runner = address(19999)
    for i in range(5):
        spec = ChildSpec(f"d{i}", "der", "relevent.actors.der.DerActor", {})
        sup.children.append(Child(spec, address=address(20000 + i), state="running"))
    sup.on_wakeup(Wakeup("tick"))
    assert sent[0][0] == runner and isinstance(sent[0][1], Pong)
    assert [type(m) for _, m in sent[1:]] == [Ping] * 5
    assert alive_path(tmp_path).exists()


def recorded_supervisor(n: int, supervisors: bool, state: str = "running"):
    """A Supervisor with n children (child supervisors, as a site's DERs, or leaves) that
    records what it sends instead of sending it."""
    from relevent.topology import parse_topology

    class Recorded(Supervisor):
        def send(self, target, message):
            self.sent.append((target, message))

        def wakeupAfter(self, period, payload=None):  # noqa: N802 - thespian's name
            pass

        def _sigkill(self, child):   # the pids are made up: record, never kill
            self.killed.append(child.spec.name)
            child.address = None

    sup = Recorded()
    sup.sent, sup.killed = [], []
    sup.name, sup.path = "site", ""
    sup.site = {"name": "s", "supervision": parse_topology('[site]\nname = "s"\n', "site.toml", env={}).data["supervision"]}
    for i in range(n):
        spec = ChildSpec(f"d{i}", "der", "relevent.actors.der.DerActor", {}, supervisor=supervisors)
        sup.children.append(Child(spec, address=address(20000 + i), state=state, pid=100 + i))
    return sup


def controller_nodes(der: str) -> list:
    return [{"name": "ActPow", "path": f"{der}/ActPow", "state": "running", "children": None}]


def test_up_to_the_fan_out_limit_a_status_request_asks_each_child_supervisor_now(monkeypatch):
    from relevent.actors import supervisor as sv
    from relevent.messages import Ping, StatusRequest, Wakeup
    monkeypatch.setattr(sv, "STATUS_FANOUT_MAX", 3)
    sup = recorded_supervisor(3, supervisors=True)
    sup.on_wakeup(Wakeup("tick"))
    assert [m.status for _, m in sup.sent if isinstance(m, Ping)] == [False] * 3
    sup.sent.clear()
    sup._status_start(7, address(19999))
    assert [(t, type(m)) for t, m in sup.sent] == [(address(20000 + i), StatusRequest) for i in range(3)]


def test_above_the_fan_out_limit_child_supervisors_push_their_status_with_their_heartbeat_reply(monkeypatch):
    from relevent.actors import supervisor as sv
    from relevent.messages import Ping, StatusReply, Wakeup
    monkeypatch.setattr(sv, "STATUS_FANOUT_MAX", 2)
    sup = recorded_supervisor(3, supervisors=True)
    sup.on_wakeup(Wakeup("tick"))
    assert [m.status for _, m in sup.sent if isinstance(m, Ping)] == [True] * 3
    for i in range(3):
        sup._child_report(Pong(f"d{i}", 1, 100 + i, {}, controller_nodes(f"d{i}")), address(20000 + i))
    sup.sent.clear()
    asker = address(19999)
    sup._status_start(7, asker)
    assert len(sup.sent) == 1, "no request to any child: answered from the Pongs at once"
    target, reply = sup.sent[0]
    assert target == asker and isinstance(reply, StatusReply) and reply.request_id == 7
    assert [n["children"] for n in reply.children] == [controller_nodes(f"d{i}") for i in range(3)]
    assert all(not n["last_error"] for n in reply.children)


def test_a_pushed_status_is_dropped_with_the_incarnation_that_pushed_it(monkeypatch):
    from relevent.actors import supervisor as sv
    monkeypatch.setattr(sv, "STATUS_FANOUT_MAX", 0)
    sup = recorded_supervisor(1, supervisors=True)
    child = sup.children[0]
    sup._child_report(Pong("d0", 1, 100, {}, controller_nodes("d0")), address(20000))
    assert sup.node(child)["children"] == controller_nodes("d0")
    child.address = None   # exited
    assert sup.node(child)["children"] == []
    sup.createActor = lambda *a, **k: address(21000)
    sup._start(child)
    assert sup.node(child)["children"] == []


def test_a_supervisor_asked_for_its_status_with_a_ping_sends_its_childrens_nodes_with_the_pong():
    from relevent.messages import Ping
    der = recorded_supervisor(2, supervisors=False)
    parent = address(19999)
    der._dispatch(Ping(4, status=True), parent)
    der._dispatch(Ping(5), parent)
    (to1, with_status), (to2, without) = der.sent
    assert to1 == parent == to2 and isinstance(with_status, Pong) and with_status.seq == 4
    assert [n["name"] for n in with_status.children] == ["d0", "d1"]
    assert [n["pid"] for n in with_status.children] == [100, 101]
    assert without.children is None


def test_a_large_supervisor_pings_each_child_once_per_heartbeat_interval_in_slices(monkeypatch):
    from relevent.actors import supervisor as sv
    from relevent.actors.restart_policy import heartbeat_slices
    from relevent.messages import Ping, Wakeup
    monkeypatch.setattr(sv, "heartbeat_slices", lambda n: heartbeat_slices(n, per_tick=4))
    sup = recorded_supervisor(10, supervisors=False)
    assert sup.tick_interval == sup.policy["heartbeat_interval"] / 3

    def round_of_ticks() -> list[list[int]]:
        pinged = []
        for _ in range(3):            # one heartbeat_interval
            sup.sent.clear()
            sup.on_wakeup(Wakeup("tick"))
            pinged.append([next(i for i, c in enumerate(sup.children) if c.address == target)
                           for target, m in sup.sent if isinstance(m, Ping)])
        return pinged
    first = round_of_ticks()
    assert all(len(p) <= 4 for p in first)
    assert sorted(i for p in first for i in p) == list(range(10))   # each once
    assert round_of_ticks() == [[], [], []]    # none answered: none pinged again
    for i, c in enumerate(sup.children):
        sup._child_report(Pong(c.spec.name, 1, 100 + i), c.address)
    assert round_of_ticks() == first           # answered: each again, at its own tick


def test_a_child_that_does_not_answer_is_killed_at_its_timeout_whichever_tick_pings_it(monkeypatch):
    from relevent.actors import supervisor as sv
    from relevent.actors.restart_policy import heartbeat_slices
    from relevent.messages import Wakeup
    monkeypatch.setattr(sv, "heartbeat_slices", lambda n: heartbeat_slices(n, per_tick=4))
    sup = recorded_supervisor(10, supervisors=False)
    for _ in range(3):
        sup.on_wakeup(Wakeup("tick"))      # one round: each pinged
    for c in sup.children[1:]:
        sup._child_report(Pong(c.spec.name, 1, 0), c.address)   # all but d0 answer
    sup.children[0].ping_sent -= sup.policy["heartbeat_timeout"] + 1
    sup.on_wakeup(Wakeup("tick"))
    assert sup._ping_seq % 3 != 0, "a tick whose slice is not d0's"
    assert sup.killed == ["d0"] and sup.children[0].state == "killing"


def test_only_child_supervisors_count_towards_the_status_fan_out_limit(monkeypatch):
    from relevent.actors import supervisor as sv
    from relevent.messages import Ping, Wakeup
    monkeypatch.setattr(sv, "STATUS_FANOUT_MAX", 2)
    sup = recorded_supervisor(5, supervisors=False)       # five leaves (endpoints)
    sup.on_wakeup(Wakeup("tick"))
    assert [m.status for _, m in sup.sent if isinstance(m, Ping)] == [False] * 5
