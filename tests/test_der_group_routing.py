"""How DERs sharing a process are grouped and reached (relevent/actors/der_group.py): unit
tests of the grouping, of a group's routing, and of the site's, outside any ActorSystem,
recording what each would send.  tests/test_der_groups.py runs a grouped site for real."""
from __future__ import annotations

from relevent.actors.der_group import DerGroupActor, groups_of
from relevent.actors.site import SiteSupervisor
from relevent.actors.supervisor import Child
from relevent.messages import (
    CommandApplied, CommandSubscribe, DevicesLeft, ForecastReply, ForecastRequest, InjectFault, LeaveDevices,
    Measurement, ScheduleWrites, SnapshotRequest, WanContact,
)
from relevent.topology import parse_topology
from test_supervisor_reports import address

TOPOLOGY = """[site]
name = "g"
state_dir = "/nonexistent"
[runtime]
controller_isolation = "der"
ders_per_process = 2
convention_leader = "10.8.0.1:19500"
private_network = "10.8.0.0/24"
[[wan]]
name = "all"
protocol = "mms"
port = 10102
[[wan]]
name = "some"
protocol = "mms"
port = 10103
ders = ["b"]
[[der]]
name = "a"
lan = "modbus"
address = 1
profile = "sunspec"
rated_power_w = 1000
reserve = { ActPow = 0.0, MaxPow = 1000.0, OnOff = true }
at_stop = "reserve"
[[der]]
name = "b"
local = [{ trigger = "no_telecom", function = "MaxPow", schedule = "FSCH01", value = 0.0, after_s = 60, duration_s = 3600, priority = 200 }]
[[der]]
name = "c"
host = "far"
[[der]]
name = "d"
[[lan]]
name = "modbus"
protocol = "modbus"
port = 10502
"""


def data() -> dict:
    return parse_topology(TOPOLOGY, "site.toml", env={}).data


class Recording:
    """Mixin: record sends, no timers."""

    def send(self, target, message):
        self.sent.append((target, message))

    def wakeupAfter(self, period, payload=None):  # noqa: N802 - thespian's name
        pass


def sent_to(actor, kind) -> list:
    return [target for target, message in actor.sent if isinstance(message, kind)]


def group_of(ders: list[dict], wan: list[dict]) -> DerGroupActor:
    class Recorded(Recording, DerGroupActor):
        pass
    group = Recorded()
    group.sent, group.parent = [], address(19000)
    group.name, group.path, group.config = "ders.1", "ders.1", {"ders": ders, "wan": wan}
    group.site = {"runtime": {"controller_isolation": "der"}}
    for i, spec in enumerate(group.child_specs()):
        group.children.append(Child(spec, address=address(20000 + i), state="running"))
    return group


def test_ders_are_grouped_in_topology_order_per_host_and_never_share_a_name_with_a_der():
    ders = [{"name": n, "host": h} for n, h in (("a", ""), ("b", ""), ("c", "far"), ("d", ""), ("e", ""))]
    got = [(name, host, [d["name"] for d in members]) for name, host, members in groups_of(ders, 2)]
    assert got == [("ders.1", "", ["a", "b"]), ("ders.2", "far", ["c"]), ("ders.3", "", ["d", "e"])]
    assert [len(m) for _, _, m in groups_of(ders, 1)] == [1] * 5
    assert all("." in name for name, _, _ in groups_of(ders, 3))   # a topology name has none


def test_on_a_reload_every_der_keeps_its_group_and_a_new_one_joins_a_group_with_room():
    names = lambda groups: [(g, h, [d["name"] for d in m]) for g, h, m in groups]  # noqa: E731
    ders = [{"name": n} for n in "abcdefgh"]
    before = {d["name"]: g for g, _h, m in groups_of(ders, 4) for d in m}
    assert before == {**dict.fromkeys("abcd", "ders.1"), **dict.fromkeys("efgh", "ders.2")}
    # x inserted after a, c removed: nobody moves; x takes c's place in ders.1.
    edited = [{"name": n} for n in "axbdefgh"]
    assert names(groups_of(edited, 4, before)) == [("ders.1", "", ["a", "x", "b", "d"]),
                                                    ("ders.2", "", ["e", "f", "g", "h"])]
    # Full groups: a new DER opens a new group; a group whose DERs all went is gone.
    assert names(groups_of([{"name": n} for n in "abcdyefgh"], 4, before))[2] == ("ders.3", "", ["y"])
    assert names(groups_of([{"name": n} for n in "abcd"], 4, before)) == [("ders.1", "", ["a", "b", "c", "d"])]
    # A DER on another host never joins a group of the leader's, nor takes the number of a
    # group that went (ders.2: its DERs were all removed).
    assert names(groups_of([*ders[:3], {"name": "z", "host": "far"}], 4, before))[1] == ("ders.3", "far", ["z"])
    # A DER whose host changed leaves its group alone: the group stays where it is.
    hosts = {"ders.1": "", "ders.2": ""}
    moved = [{"name": "a", "host": "far"}, *ders[1:]]
    assert names(groups_of(moved, 4, before, hosts)) == [("ders.1", "", ["b", "c", "d"]),
                                                         ("ders.2", "", ["e", "f", "g", "h"]),
                                                         ("ders.3", "far", ["a"])]


def test_a_group_hands_a_message_to_the_der_it_names_and_answers_for_one_it_does_not_have():
    topo = data()
    group = group_of(topo["der"][:2], topo["wan"])
    a, b = (c.address for c in group.children)
    for message in (ScheduleWrites("b", "ActPow", [], "all"), Measurement("a", 1.0, True, 0),
                    CommandApplied("a", 3, True)):
        group.on_message(message, address(19500))
    group.on_message(ForecastRequest("zz", "ActPow", 7, reply_to=address(19600)), address(19500))
    assert [t for t, _ in group.sent[:3]] == [b, a, a]
    target, reply = group.sent[3]
    assert target == address(19600) and isinstance(reply, ForecastReply) and reply.events == []


def test_a_group_sends_what_the_site_sends_every_der_only_to_the_ders_it_concerns():
    topo = data()
    group = group_of(topo["der"][:2], topo["wan"])
    a, b = (c.address for c in group.children)
    group.on_message(SnapshotRequest("some", address(19700)), address(19000))
    group.on_message(SnapshotRequest("all", address(19701)), address(19000))
    assert sent_to(group, SnapshotRequest) == [b, a, b]          # "some" serves b only
    group.on_message(CommandSubscribe("modbus", address(19800)), address(19000))
    assert sent_to(group, CommandSubscribe) == [a, b]
    group.on_message(WanContact(5, "all"), address(19000))
    assert sent_to(group, WanContact) == [b]                      # b has a "no telecom" schedule
    group.on_message(LeaveDevices(0), address(19000))
    assert sent_to(group, LeaveDevices) == [a]                    # a leaves its device at its reserve
    group.children[0].state = "backoff"                           # a restarting DER answers at once, not ok
    group.on_message(LeaveDevices(0), address(19000))
    left = [m for t, m in group.sent if isinstance(m, DevicesLeft)]
    assert sent_to(group, LeaveDevices) == [a] and [(m.der, m.ok) for m in left] == [("a", False)]
    group.children[0].state = "running"
    group.sent.clear()
    group.on_message(DevicesLeft("a", 0, "reserve"), group.children[0].address)
    assert sent_to(group, DevicesLeft) == [address(19000)]        # up to the site


def test_a_restarted_der_of_a_group_gets_the_subscribers_the_group_heard():
    topo = data()
    group = group_of(topo["der"][:2], topo["wan"])
    group.on_message(SnapshotRequest("some", address(19700)), address(19000))
    group.on_message(SnapshotRequest("all", address(19701)), address(19000))
    group.on_message(CommandSubscribe("modbus", address(19800)), address(19000))
    a_spec, b_spec = (c.spec for c in group.children)
    assert group.runtime_config(a_spec) == {"subscribers": {"all": address(19701)},
                                            "lan_subscribers": {"modbus": address(19800)}}
    assert set(group.runtime_config(b_spec)["subscribers"]) == {"some", "all"}
    assert group.detail()["ders"] == 2 and group.detail()["ders_running"] == 2


def site_with_groups() -> SiteSupervisor:
    class Recorded(Recording, SiteSupervisor):
        pass
    site = Recorded()
    site.sent, site.parent = [], None
    site.name, site.path, site.config = "site", "", data()
    site.site = {"runtime": site.config["runtime"], "state_dir": "/nonexistent"}
    for i, spec in enumerate(site.child_specs()):
        site.children.append(Child(spec, address=address(21000 + i), state="running"))
    return site


def test_the_site_reaches_a_grouped_der_through_its_group():
    site = site_with_groups()
    groups = {c.spec.name: c for c in site.children if c.spec.role == "group"}
    assert {n: [d["name"] for d in c.spec.config["ders"]] for n, c in groups.items()} == \
        {"ders.1": ["a", "b"], "ders.2": ["c"], "ders.3": ["d"]}
    assert groups["ders.2"].spec.host == "far"
    site.on_message(ScheduleWrites("d", "ActPow", [], "all"), address(19500))
    site.on_message(Measurement("c", 1.0, True, 0), address(19500))
    assert [t for t, _ in site.sent] == [groups["ders.3"].address, groups["ders.2"].address]
    site.sent.clear()
    site.on_message(SnapshotRequest("some", address(19700)), address(19500))
    assert sent_to(site, SnapshotRequest) == [groups["ders.1"].address]   # only b's group holds a DER "some" serves
    site.sent.clear()
    site.on_message(InjectFault("d/ActPow", "raise", 9, address(19900)), address(19500))
    target, fault = site.sent[0]
    assert target == groups["ders.3"].address and fault.target == "d/ActPow"   # the group's part of ders.3/d/ActPow


def test_the_site_waits_at_stop_for_each_grouped_der_that_leaves_its_device_at_its_reserve():
    site = site_with_groups()
    site._leave_devices()
    groups = {c.spec.name: c for c in site.children if c.spec.role == "group"}
    assert sent_to(site, LeaveDevices) == [groups["ders.1"].address]
    assert site._leaving == {"a"}
    summary = site.summary()
    assert summary["ders"] == 4 and summary["ders_running"] == 0   # no group has said yet
    for child in groups.values():
        child.detail = {"ders_running": len(child.spec.config["ders"])}
    assert site.summary()["ders_running"] == 4


def test_history_events_name_the_der_of_an_actor_in_a_group():
    from relevent.observe.events import _der
    ders = {"pv1", "pv2"}
    assert _der("ders.1/pv1/ActPow", ders) == "pv1" and _der("ders.1/pv2", ders) == "pv2"
    assert _der("pv1/ActPow", ders) == "pv1" and _der("ders.1", ders) is None and _der("mms", ders) is None


def test_a_group_shows_its_ders_controllers_as_they_are_now_whoever_asks():
    """Its DERs are in its process: their status is read, never asked for or pushed (a site
    of more than 200 groups asks each for its status with its heartbeat)."""
    from relevent.actors.hosted import HostedAddress
    from relevent.actors.supervisor import Supervisor

    class Der(Supervisor):
        def status_nodes(self):
            return [{"name": "ActPow", "path": f"{self.name}/ActPow", "children": None}]

    topo = data()
    group = group_of(topo["der"][:2], topo["wan"])
    for child in group.children:
        child.address = HostedAddress(child.spec.name, 1)
        der = Der()
        der.name = child.spec.name
        group.hosted[child.address.actorAddressString] = (child.address, der)
    nodes = group.status_nodes()
    assert [n["children"][0]["path"] for n in nodes] == ["a/ActPow", "b/ActPow"]
    group._status_start(1, address(19000))
    assert [type(m).__name__ for _, m in group.sent] == ["StatusReply"]   # asked nobody: answered at once
    assert [n["children"][0]["path"] for n in group.sent[0][1].children] == ["a/ActPow", "b/ActPow"]
