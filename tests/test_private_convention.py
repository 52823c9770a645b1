"""Thespian stays private (../shared/spec/security.md, thespian: "multi-host only over a
private network"): a multi-host site (`[runtime] convention_leader`) needs `[runtime]
private_network`, `relevent check` refuses a leader outside it or named by a host name, and
`relevent run` binds thespian to this host's address on that network only, or refuses to
start when the host has none (docs/deploy.md, "Multi-host sites: thespian stays private")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# LEADER_IP, MEMBER_IP, NETWORK, ip and sockets stay importable from here: tests/test_multi_host.py does.
from netnsctl import LEADER_IP, MEMBER_IP, NETWORK, NetnsUnavailable, ip, linked_namespaces
from sitectl import REPO, Site, free_port
from relevent.runtime.hardening import choose_private_address, interface_addresses, private_address
from relevent.topology import parse_topology
from relevent.topology.loader import TopologyError

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


# -- choosing this host's address on the private network ---------------------------------------
def test_the_address_inside_the_network_is_chosen():
    seen = [("lo", "127.0.0.1"), ("eth0", "192.168.1.20"), ("wg0", "10.8.0.3"), ("eth1", "10.9.0.3")]
    assert choose_private_address("10.8.0.0/24", seen) == ("wg0", "10.8.0.3")
    assert choose_private_address("192.168.1.0/24", seen) == ("eth0", "192.168.1.20")
    assert choose_private_address("10.0.0.0/8", seen) == ("wg0", "10.8.0.3")   # the first in the kernel's order


def test_no_address_inside_the_network_is_none():
    assert choose_private_address("10.8.0.0/24", [("lo", "127.0.0.1"), ("eth0", "10.8.1.3")]) is None
    assert choose_private_address("10.8.0.0/24", []) is None


def test_the_network_and_broadcast_addresses_and_non_ipv4_entries_are_no_host():
    seen = [("a", "10.8.0.0"), ("b", "10.8.0.255"), ("c", "fe80::1"), ("d", "garbage"), ("wg0", "10.8.0.7")]
    assert choose_private_address("10.8.0.0/24", seen) == ("wg0", "10.8.0.7")
    assert choose_private_address("10.8.0.0/24", seen[:4]) is None
    assert choose_private_address("10.8.0.7/32", [("wg0", "10.8.0.7")]) == ("wg0", "10.8.0.7")
    assert choose_private_address("10.8.0.6/31", [("p2p", "10.8.0.6")]) == ("p2p", "10.8.0.6")


def test_no_address_refuses_naming_the_network_and_what_was_seen():
    with pytest.raises(SystemExit) as exc:
        private_address("10.8.0.0/24", [("lo", "127.0.0.1"), ("eth0", "192.168.1.20")])
    message = str(exc.value)
    assert 'private_network = "10.8.0.0/24"' in message and "no address on it" in message
    assert "127.0.0.1 (lo), 192.168.1.20 (eth0)" in message and "nothing was started" in message
    assert private_address("10.8.0.0/24", [("lo", "127.0.0.1"), ("wg0", "10.8.0.2")]) == ("wg0", "10.8.0.2")


def test_the_kernel_lists_the_loopback_address():
    assert ("lo", "127.0.0.1") in interface_addresses()


BIND = textwrap.dedent("""
    import os, sys
    os.environ["THESPIAN_BASE_IPADDR"] = sys.argv[1]
    from relevent.runtime.hardening import bind_thespian_to
    bind_thespian_to(sys.argv[1])
    from thespian.system.transport.IPBase import TCPv4ActorAddress
    own = TCPv4ActorAddress(None, 0, external=True)            # the admin's and every actor's
    remote = TCPv4ActorAddress("10.231.99.2", 19500, external=True)   # another member: never bound
    print(own.sockname[0], own.bindname[0] or "*", remote.bindname[0] or "*")
""")


@pytest.mark.parametrize("address", ["10.231.7.1", "127.0.0.1"])
def test_thespian_binds_the_address_it_advertises(address):
    res = subprocess.run([sys.executable, "-c", BIND, address], capture_output=True, text=True, env=ENV,
                         timeout=60, check=True)
    assert res.stdout.split() == [address, address, "*"]


# -- relevent check --------------------------------------------------------------------------------
def site_text(runtime: str) -> str:
    return f"""[site]
name = "pn"
state_dir = "/tmp/pn-unused"

[runtime]
admin_port = 19500
{runtime}
[[der]]
name = "der1"
"""


def problems(runtime: str) -> list[str]:
    with pytest.raises(TopologyError) as err:
        parse_topology(site_text(runtime), "site.toml", env={})
    return [str(p) for p in err.value.problems]


def test_a_multi_host_site_needs_a_private_network():
    found = problems('convention_leader = "10.8.0.1:19500"\n')
    assert found == ["site.toml:5: runtime.private_network: a multi-host site (convention_leader) needs the private "
                     "network its thespian traffic stays on (a WireGuard tunnel or an isolated VLAN): e.g. "
                     "private_network = \"10.8.0.0/24\""]


def test_the_leader_must_be_inside_the_private_network():
    found = problems('convention_leader = "10.9.0.1:19500"\nprivate_network = "10.8.0.0/24"\n')
    assert found == ["site.toml:7: runtime.convention_leader: 10.9.0.1 is outside private_network 10.8.0.0/24: "
                     "thespian's traffic would leave the private network; write the leader's address on it"]
    found = problems('convention_leader = "10.8.0.255:19500"\nprivate_network = "10.8.0.0/24"\n')
    assert found == ["site.toml:7: runtime.convention_leader: 10.8.0.255 is the broadcast address of 10.8.0.0/24, "
                     "not a host's"]


def test_a_leader_named_by_a_host_name_is_refused():
    found = problems('convention_leader = "leader.farm.lan:19500"\nprivate_network = "10.8.0.0/24"\n')
    assert len(found) == 1
    assert found[0].startswith("site.toml:7: runtime.convention_leader: 'leader.farm.lan' is not an IPv4 address: "
                               "write the leader's address on the private network")


@pytest.mark.parametrize("network, message", [
    ("10.8.0.1/24", "'10.8.0.1/24' has host bits set: write the network, \"10.8.0.0/24\""),
    ("10.8.0.0", "'10.8.0.0' has no prefix length"),
    ("0.0.0.0/0", "0.0.0.0/0 is not a private network"),
    ("8.8.8.0/24", "8.8.8.0/24 is not a private network"),
    ("127.0.0.0/8", "127.0.0.0/8 is loopback"),
    ("fd00::/64", "'fd00::/64' is not an IPv4 network"),
])
def test_a_private_network_that_is_not_one_is_refused(network, message):
    found = problems(f'convention_leader = "10.8.0.1:19500"\nprivate_network = "{network}"\n')
    assert any(p.startswith(f"site.toml:8: runtime.private_network: {message}") for p in found), found


def test_a_valid_multi_host_site_passes():
    topo = parse_topology(site_text('convention_leader = "10.8.0.1:19500"\nprivate_network = "10.8.0.0/24"\n'),
                          "site.toml", env={})
    assert topo.data["runtime"]["private_network"] == "10.8.0.0/24" and topo.warnings == []
    topo = parse_topology(site_text('convention_leader = "100.64.3.1:19500"\nprivate_network = "100.64.0.0/10"\n'),
                          "site.toml", env={})
    assert topo.warnings == []


def test_a_private_network_without_a_convention_is_unused():
    topo = parse_topology(site_text('private_network = "10.8.0.0/24"\n'), "site.toml", env={})
    assert [str(w) for w in topo.warnings] == [
        "site.toml:7: runtime.private_network: unused: private_network only matters for a multi-host site "
        "(convention_leader)"]
    assert parse_topology(site_text(""), "site.toml", env={}).data["runtime"]["private_network"] == ""


# -- relevent run, in network namespaces linked by a private network ---------------------------------
@pytest.fixture(scope="module")
def netns():
    """Two network namespaces, "leader" and "member", each with `lo` up, linked by a veth
    pair: d0 (10.231.7.1/24) in the leader's, d1 (10.231.7.2/24) in the member's: two hosts
    on one private network (tests/netnsctl.py; skipped when it cannot be made)."""
    try:
        with linked_namespaces() as names:
            yield names
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))


def run_topology(state_dir: Path, admin_port: int, network: str, leader: str, http_port: int | None = None) -> str:
    wan = f"""
[[wan]]
name = "api"
protocol = "http"
address = "127.0.0.1"
port = {http_port}
""" if http_port else ""
    return f"""[site]
name = "pn{admin_port}"
state_dir = "{state_dir}"

[runtime]
admin_port = {admin_port}
convention_leader = "{leader}"
private_network = "{network}"

[supervision]
heartbeat_timeout = 2.0    # generous: the 2-core box may be busy
{wan}
[[der]]
name = "der1"
functions = ["ActPow", "OnOff"]
schedules = 2
"""


def start_in(netns: str, folder: Path, text: str) -> Site:
    """`relevent run` inside `netns` (`ip netns exec` execs it: site.proc is the runner, so
    SIGTERM reaches it), waited for through the control socket (a Unix socket works across
    network namespaces)."""
    folder.mkdir()
    path, state = folder / "site.toml", folder / "state"
    path.write_text(text.replace("STATE", str(state)))
    site = Site(path, state)
    state.mkdir()
    with open(site.log, "ab") as out:
        site.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "relevent", "run", str(path)],
                                     stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=ENV)
    try:
        site.wait_running(90)
    except BaseException:
        site.kill_everything()
        raise
    site.admin_pgid = json.loads((state / "relevent.pid").read_text())["admin_pgid"]
    return site


def sockets(netns: str, listening: bool = True) -> list[tuple[str, str]]:
    """(local, peer) address:port of every listening (or established) TCP socket in the namespace."""
    query = ("-ltnH",) if listening else ("-tnH", "state", "established")
    out = ip("netns", "exec", netns, "ss", *query).stdout
    return [(line.split()[-2], line.split()[-1]) for line in out.splitlines() if line.strip()]


def assert_private(bound: list[str], address: str) -> None:
    assert all(a.rpartition(":")[0] in (address, "127.0.0.1") for a in bound), bound
    assert not any(a.startswith(("0.0.0.0:", "*:", "[::]:")) for a in bound), bound


def stop(site: Site) -> None:
    assert site.stop() == 0
    deadline = time.monotonic() + 10
    while site.leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert site.leftovers() == []


def test_a_multi_host_site_binds_thespian_to_its_private_address_only(netns, tmp_path):
    """The leader of its own convention (convention_leader = its own address)."""
    admin, http = free_port(), free_port()
    site = None
    try:
        site = start_in(netns["leader"], tmp_path / "leader",
                        run_topology(Path("STATE"), admin, NETWORK, f"{LEADER_IP}:{admin}", http))
        bound = [local for local, _ in sockets(netns["leader"])]
        assert f"{LEADER_IP}:{admin}" in bound, bound                     # the admin, on the private address
        assert f"127.0.0.1:{http}" in bound, bound                        # the WAN endpoint, as configured
        thespian = [a for a in bound if a.startswith(f"{LEADER_IP}:")]
        assert len(thespian) >= len(site.pids()), bound                   # every actor's thespian port
        assert_private(bound, LEADER_IP)
        assert f"thespian bound to {LEADER_IP} on d0 (private_network {NETWORK})" in \
            (site.state_dir / "relevent.log").read_text()
        # the network is read at start: a reload that changes it is refused
        site.topology.write_text(site.topology.read_text().replace(f'"{NETWORK}"', '"10.231.0.0/16"'))
        reply = site.call({"op": "reload"})
        assert not reply["ok"] and "[runtime] private_network" in reply["error"], reply
        stop(site)
        assert sockets(netns["leader"]) == []
    finally:
        if site is not None:
            site.kill_everything()


def test_a_member_joins_the_leaders_convention_over_the_private_network(netns, tmp_path):
    admin_l, admin_m = free_port(), free_port()
    leader_at = f"{LEADER_IP}:{admin_l}"
    sites: list[Site] = []
    try:
        sites.append(start_in(netns["leader"], tmp_path / "leader",
                              run_topology(Path("STATE"), admin_l, NETWORK, leader_at)))
        sites.append(start_in(netns["member"], tmp_path / "member",
                              run_topology(Path("STATE"), admin_m, NETWORK, leader_at)))
        assert_private([local for local, _ in sockets(netns["member"])], MEMBER_IP)
        assert f"{MEMBER_IP}:{admin_m}" in [local for local, _ in sockets(netns["member"])]
        # the member's admin registers with the leader's: a connection from its private address
        deadline = time.monotonic() + 15
        while not any(local == leader_at and peer.startswith(f"{MEMBER_IP}:")
                      for local, peer in sockets(netns["leader"], listening=False)):
            assert time.monotonic() < deadline, sockets(netns["leader"], listening=False)
            time.sleep(0.2)
        assert_private([local for local, _ in sockets(netns["leader"])], LEADER_IP)
        for site in reversed(sites):
            stop(site)
    finally:
        for site in sites:
            site.kill_everything()


def test_a_host_without_an_address_on_the_private_network_does_not_start(netns, tmp_path):
    admin = free_port()
    state = tmp_path / "state"
    path = tmp_path / "site.toml"
    path.write_text(run_topology(state, admin, "10.231.8.0/24", f"10.231.8.1:{admin}", free_port()))
    res = subprocess.run(["ip", "netns", "exec", netns["leader"], sys.executable, "-m", "relevent", "run", str(path)],
                         capture_output=True, text=True, cwd=REPO, env=ENV, timeout=60)
    assert res.returncode != 0
    assert 'private_network = "10.231.8.0/24": this host has no address on it' in res.stderr, res.stderr
    assert f"{LEADER_IP} (d0)" in res.stderr and "nothing was started" in res.stderr
    assert sockets(netns["leader"]) == []
    assert not (state / "relevent.sock").exists()
