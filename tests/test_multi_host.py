"""DERs placed on member hosts (docs/deploy.md, "Placing DERs on member hosts"): `[[der]] host`
names the member started with `relevent member TOPOLOGY --host NAME`; the leader's site
supervisor creates the DER there through thespian's convention (targetActorRequirements
{"relevent host": NAME}, ReleventActor.actorSystemCapabilityCheck).

The end-to-end test runs the leader and the member in two network namespaces linked by a
veth pair (the fixture of test_private_convention.py): root only."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sitectl import REPO, Site, free_port
from test_private_convention import LEADER_IP, MEMBER_IP, NETWORK, ip, netns, sockets  # noqa: F401 - netns: a fixture
from relevent.actors.base import ReleventActor
from relevent.actors.site import site_children
from relevent.runtime.status import walk
from relevent.topology import parse_topology
from relevent.topology.loader import TopologyError

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
check = ReleventActor.actorSystemCapabilityCheck


# -- placement: thespian's capability check -----------------------------------------------------
def test_an_unplaced_actor_runs_only_where_no_host_is_named():
    leader = {"Admin Port": 19500, "Convention Address.IPv4": "10.8.0.1:19500"}
    member = {**leader, "relevent host": "m1"}
    assert check(leader, {}) and check(leader, None) and check({}, {})
    assert not check(member, {}) and not check(member, None)


def test_a_placed_actor_runs_only_on_its_member():
    member, other = {"relevent host": "m1"}, {"relevent host": "m2"}
    assert check(member, {"relevent host": "m1"})
    assert not check(other, {"relevent host": "m1"}) and not check({}, {"relevent host": "m1"})


# -- the topology ------------------------------------------------------------------------------------
def site_text(state_dir: Path, admin: int, http: int, *, runtime: str | None = None, der: str = "") -> str:
    runtime = runtime if runtime is not None else \
        f'convention_leader = "{LEADER_IP}:{admin}"\nprivate_network = "{NETWORK}"\n'
    return f"""[site]
name = "mh{admin}"
state_dir = "{state_dir}"

[runtime]
admin_port = {admin}
{runtime}
[supervision]
heartbeat_timeout = 2.0    # generous: the 2-core box may be busy
startup_timeout = 30.0     # the WAN endpoint waits for every DER's state, der1's too

[[wan]]
name = "http"
protocol = "http"
address = "127.0.0.1"
port = {http}
party = "aggregator"

[[der]]
name = "der1"
functions = ["ActPow"]
schedules = 2
rated_power_w = 10000
host = "m1"
{der}
[[der]]
name = "der2"
functions = ["ActPow"]
schedules = 2
"""


def test_placement_reaches_the_der_and_its_controllers_only():
    data = parse_topology(site_text(Path("/tmp/mh-unused"), 19500, 8080), "site.toml", env={}).data
    specs = {s.name: s for s in site_children(data)}
    assert specs["der1"].host == "m1" and specs["der2"].host == "" and specs["http"].host == ""
    assert data["der"][1]["host"] == ""


def test_a_der_on_a_member_needs_a_multi_host_site():
    with pytest.raises(TopologyError) as err:
        parse_topology(site_text(Path("/tmp/mh-unused"), 19500, 8080, runtime=""), "site.toml", env={})
    assert [str(p) for p in err.value.problems] == [
        "site.toml:24: der[0].host: a DER on member host 'm1' needs a multi-host site: [runtime] convention_leader "
        "and private_network (or host = \"\", the leader)"]


def test_a_bad_host_name_and_a_lan_endpoint_on_the_leader():
    with pytest.raises(TopologyError) as err:
        parse_topology(site_text(Path("/tmp/mh-unused"), 19500, 8080).replace('"m1"', '"m 1"'), "site.toml", env={})
    assert any("der[0].host: host 'm 1' must start with a letter" in str(p) for p in err.value.problems)
    text = site_text(Path("/tmp/mh-unused"), 19500, 8080, der='lan = "mb"\naddress = 1\nprofile = "sunspec"\n')
    text += '\n[[lan]]\nname = "mb"\nprotocol = "modbus"\nhost = "127.0.0.1"\nport = 1502\n'
    topo = parse_topology(text, "site.toml", env={})
    assert [str(w) for w in topo.warnings] == [
        "site.toml:26: der[0].host: the DER runs on 'm1' but its LAN endpoint 'mb' on the leader: its device "
        "commands cross the private network"]


def test_a_member_without_a_multi_host_site_does_not_start(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(site_text(tmp_path / "state", free_port(), free_port(), runtime="").replace('host = "m1"\n', ""))
    res = subprocess.run([sys.executable, "-m", "relevent", "member", str(path), "--host", "m1"],
                         capture_output=True, text=True, cwd=REPO, env=ENV, timeout=60)
    assert res.returncode == 2 and "a member needs a multi-host site" in res.stderr, res.stderr


# -- end to end: a leader and a member in two network namespaces ----------------------------------------
def ns_pids(name: str) -> set[int]:
    return {int(p) for p in ip("netns", "pids", name).stdout.split()}


def kill_ns(name: str) -> None:
    for pid in ns_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_member(netns_name: str, path: Path, state: Path, out: Path) -> subprocess.Popen:
    with open(out, "ab") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", netns_name, sys.executable, "-m", "relevent", "member",
                                 str(path), "--host", "m1"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=ENV)
    deadline = time.monotonic() + 30
    while not (state / "member-m1.pid").exists():
        assert proc.poll() is None, out.read_text()[-3000:]
        assert time.monotonic() < deadline, out.read_text()[-3000:]
        time.sleep(0.05)
    return proc


HTTP_CLIENT = """
import json, sys, urllib.request
port, method, url, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
req = urllib.request.Request(f"http://127.0.0.1:{port}{url}", method=method, data=body.encode() or None,
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=15) as r:
    print(r.status, r.read().decode())
"""


def http_in(netns_name: str, port: int, method: str, url: str, body: dict | None = None) -> str:
    """An HTTP request from inside the leader's namespace (its endpoint is on its loopback)."""
    res = subprocess.run(["ip", "netns", "exec", netns_name, sys.executable, "-c", HTTP_CLIENT, str(port), method,
                          url, json.dumps(body) if body else ""], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("200 "), res.stdout + res.stderr
    return res.stdout


def test_a_der_runs_on_its_member_and_comes_back_after_the_member_dies(netns, tmp_path):  # noqa: F811 - the fixture
    admin, http = free_port(), free_port()
    state = tmp_path / "state"
    state.mkdir()
    path = tmp_path / "site.toml"
    path.write_text(site_text(state, admin, http))
    site = Site(path, state)
    member = None
    try:
        # The leader first: a member registers with its leader when it starts, and thespian
        # tries a failed registration again only minutes later.  Until the member is in, der1
        # waits in backoff ("no member host 'm1'"), tried again every backoff_max.
        t0 = time.monotonic()
        with open(site.log, "ab") as out:
            site.proc = subprocess.Popen(["ip", "netns", "exec", netns["leader"], sys.executable, "-m", "relevent",
                                          "run", str(path)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=ENV)
        while not (state / "relevent.pid").exists():
            assert site.proc.poll() is None and time.monotonic() - t0 < 60, site.log.read_text()[-3000:]
            time.sleep(0.05)
        t1 = time.monotonic()
        member = start_member(netns["member"], path, state, tmp_path / "member.out")
        assert f"{MEMBER_IP}:{admin}" in [local for local, _ in sockets(netns["member"])]
        site.wait_running(90)
        site.admin_pgid = json.loads((state / "relevent.pid").read_text())["admin_pgid"]
        print(f"leader up in {t1 - t0:.2f} s, then the whole site running {time.monotonic() - t1:.2f} s after "
              "the member was started")

        # der1 and its controller run in the member's namespace, der2 and the endpoint in the leader's.
        pids = site.pids()
        on_member, on_leader = ns_pids(netns["member"]), ns_pids(netns["leader"])
        assert pids["der1"] in on_member and pids["der1/ActPow"] in on_member, (pids, on_member)
        assert pids["der2"] in on_leader and pids["http"] in on_leader and pids["der2/ActPow"] in on_leader
        assert site.node("der1")["host"] == "m1" and "host" not in site.node("der2")
        status = site.cli("status", str(path))
        line = next(ln for ln in status.stdout.splitlines() if ln.split()[:1] == ["der1"])
        assert str(pids["der1"]) in line.split() and "running" in line.split(), status.stdout

        # A schedule written over the leader's HTTP API reaches der1's controller on the member.
        start = int(time.time() * 1000) + 1000
        start_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start / 1000)) + f".{start % 1000:03d}Z"
        http_in(netns["leader"], http, "PUT", "/api/v1/ders/der1/ActPow/schedules/1",
                {"values": [1234.0], "interval_s": 3600, "priority": 20, "start": start_iso})
        http_in(netns["leader"], http, "POST", "/api/v1/ders/der1/ActPow/schedules/1/enable")
        node = site.wait_for("der1/ActPow", lambda n: n["detail"].get("output") == 1234.0, timeout=15)
        assert node["detail"]["source"] == "FSCH01" and node["pid"] in ns_pids(netns["member"])
        assert '"output": 1234.0' in http_in(netns["leader"], http, "GET", "/api/v1/ders/der1/ActPow").replace(
            '"output":1234.0', '"output": 1234.0')

        # The member dies (kill -9 of every process in its namespace): the leader sees der1 down
        # and keeps the rest of the site running.
        old = site.node("der1")
        t_kill = time.monotonic()
        kill_ns(netns["member"])
        member.wait(10)
        down = site.wait_for("der1", lambda n: n["state"] != "running" or n["pid"] != old["pid"], timeout=30)
        t_down = time.monotonic()
        print(f"der1 reported {down['state']} {t_down - t_kill:.2f} s after the member was killed: "
              f"{down['last_error']}")
        time.sleep(3)
        tree = {n["path"]: n for n in walk(site.tree())}
        assert all(tree[p]["state"] == "running" for p in ("http", "der2")), tree
        assert site.proc.poll() is None

        # The member comes back: der1 is created there again and resumes from the store.
        t_back = time.monotonic()
        member = start_member(netns["member"], path, state, tmp_path / "member.out")
        again = site.wait_for("der1", lambda n: n["state"] == "running" and n["pid"] in ns_pids(netns["member"]),
                              timeout=60)
        t_again = time.monotonic()
        node = site.wait_for("der1/ActPow", lambda n: n["state"] == "running"
                             and n["detail"].get("output") == 1234.0, timeout=15)
        print(f"der1 running again {t_again - t_back:.2f} s after the member restarted "
              f"(restarts {again['restarts']}, causes {again['restart_causes']})")
        assert node["pid"] in ns_pids(netns["member"])
        assert site.node("http")["restarts"] == 0 and site.node("der2")["restarts"] == 0

        # A clean stop: the leader first (it stops der1 on the member), then the member.
        assert site.stop(60) == 0
        member.send_signal(signal.SIGTERM)
        assert member.wait(30) == 0
        deadline = time.monotonic() + 10
        while ns_pids(netns["member"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ns_pids(netns["member"]) == set()
    finally:
        site.kill_everything()
        kill_ns(netns["leader"])
        kill_ns(netns["member"])
        if member is not None and member.poll() is None:
            member.kill()
