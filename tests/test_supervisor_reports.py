"""A supervisor matches its children's reports (Hello, Ready, Pong, Failed) by name and then
by incarnation (relevent/actors/supervisor.py `_named`): unit tests on a Supervisor outside
any ActorSystem, with thespian's own TCP addresses, and the lookup's cost at 1,000 children
(it was a scan of ActorAddress comparisons per report, quadratic per heartbeat round)."""
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
