"""What a supervisor does with children placed on a member host (relevent/actors/supervisor.py,
docs/deploy.md "Placing DERs on member hosts"): a creation that gets no Hello within
`placement_timeout` is given up without counting as a failure, and a member joining the
convention gets what waits for it at once.  Unit tests on a Supervisor outside any
ActorSystem (thespian's entry points replaced by recorders); tests/test_multi_host.py runs
the same against real members in network namespaces."""
from __future__ import annotations

import itertools
import time

from thespian.actors import ActorAddress, ActorExitRequest, ActorSystemConventionUpdate
from thespian.system.transport.IPBase import TCPv4ActorAddress

from relevent.actors.supervisor import ChildSpec, Supervisor
from relevent.messages import Configure, Hello
from relevent.topology import parse_topology

PORTS = itertools.count(21000)


def address() -> ActorAddress:
    return ActorAddress(TCPv4ActorAddress("10.231.7.2", next(PORTS), external=True))


class Recorded(Supervisor):
    """A Supervisor whose thespian calls are recorded instead of made."""

    def __init__(self, specs: list[ChildSpec]) -> None:
        super().__init__()
        self.specs = specs
        self.site = {"supervision": parse_topology('[site]\nname = "s"\n', "site.toml", env={}).data["supervision"]}
        self.sent: list = []
        self.created: list = []
        self.wakeups: list = []

    def child_specs(self) -> list[ChildSpec]:
        return self.specs

    def createActor(self, cls, targetActorRequirements=None, **_kw):  # noqa: N802, N803 - thespian's names
        self.created.append((cls, targetActorRequirements))
        return address()

    def send(self, target, message) -> None:
        self.sent.append((target, message))

    def wakeupAfter(self, period, payload=None) -> None:  # noqa: N802 - thespian's name
        self.wakeups.append((period, payload))

    def notifyOnSystemRegistrationChanges(self, start=True) -> None:  # noqa: N802 - thespian's name
        self.notified = start


def member_site() -> Recorded:
    sup = Recorded([ChildSpec("http", "wan", "relevent.actors.endpoint.EndpointActor", {}),
                    ChildSpec("der1", "der", "relevent.actors.der.DerActor", {}, supervisor=True, host="m1"),
                    ChildSpec("der2", "der", "relevent.actors.der.DerActor", {}, supervisor=True, host="m2")])
    sup.on_configure()
    return sup


def test_a_supervisor_with_placed_children_listens_to_the_convention_and_creates_them_there():
    sup = member_site()
    assert sup.notified is True
    assert [req for _, req in sup.created] == [None, {"relevent host": "m1"}, {"relevent host": "m2"}]
    assert all(isinstance(m, Configure) for _, m in sup.sent)


def test_a_placed_child_without_hello_is_given_up_after_the_placement_timeout_not_counted_as_failure():
    sup = member_site()
    der1 = sup._by_name("der1")
    sup._child_report(Hello("der2", 77), sup._by_name("der2").address)   # der2's member answered
    timeout = sup.policy["placement_timeout"]
    for child in sup.children:
        child.started_mono = time.monotonic() - timeout - 0.1
    sup._heartbeat()
    assert der1.state == "backoff" and der1.address is None and der1.restarts == 0
    assert "no member host 'm1'" in der1.last_error
    assert sup._by_name("der2").state == "starting"        # it said Hello: only startup_timeout applies
    assert sup._by_name("http").state == "starting"        # local: only startup_timeout applies
    assert any(isinstance(m, ActorExitRequest) for _, m in sup.sent)   # the lost creation is told to go
    assert sup._history.failures == () and "der1" not in sup._history.restarts   # no intensity spent
    assert sup.wakeups[-1][0] == sup.policy["backoff_max"]                        # tried again then


def test_a_member_joining_gets_what_waits_for_it_at_once():
    sup = member_site()
    der1, der2 = sup._by_name("der1"), sup._by_name("der2")
    der1.state, der1.address = "backoff", None                  # waiting for m1 to come back
    generation = der2.generation                                # created while m2 was away: no Hello
    sup.created.clear()
    sup.on_message(ActorSystemConventionUpdate(address(), {"relevent host": "m1"}, True), None)
    assert sup.created == [("relevent.actors.der.DerActor", {"relevent host": "m1"})]
    assert der1.state == "starting" and der2.generation == generation
    sup.on_message(ActorSystemConventionUpdate(address(), {"relevent host": "m2"}, False), None)
    assert len(sup.created) == 1                                # leaving: the heartbeats tell
    sup.on_message(ActorSystemConventionUpdate(address(), {"relevent host": "m2"}, True), None)
    assert sup.created[-1] == ("relevent.actors.der.DerActor", {"relevent host": "m2"})
    assert der2.generation == generation + 1 and der2.state == "starting" and der2.restarts == 0


def test_a_member_joining_leaves_running_and_unplaced_children_alone():
    sup = member_site()
    for child in sup.children:
        child.state = "running"
    sup.created.clear()
    sup.on_message(ActorSystemConventionUpdate(address(), {"relevent host": "m1"}, True), None)
    sup.on_message(ActorSystemConventionUpdate(address(), {}, True), None)   # the leader's own kind
    assert sup.created == []


def test_placement_timeout_is_a_supervision_setting():
    data = parse_topology('[site]\nname = "s"\n[supervision]\nplacement_timeout = 12.5\n', "site.toml", env={}).data
    assert data["supervision"]["site"]["placement_timeout"] == 12.5
    assert parse_topology('[site]\nname = "s"\n', "site.toml", env={}).data["supervision"]["der"][
        "placement_timeout"] == 5.0

