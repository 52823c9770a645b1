"""Supervision in real multiprocTCPBase sites: every fault of a leaf leads to a restart of
that leaf alone, within a second; repeated failures escalate; group strategies stop
siblings in reverse start order and start them again in start order; a child that does
not stop when asked is killed after the stop timeout."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from relevent.actors.restart_policy import STOP_TIMEOUT_S
from relevent.store import StateStore
from sitectl import alive, walk

LEAF = "der1/ActPow"  # a controller: it owns its schedules, it supervises nothing


def siblings_of(pids: dict, path: str) -> dict:
    return {p: pid for p, pid in pids.items() if p != path and p != ""}


def restarted(site, path: str, old_pid: int, timeout: float = 5.0) -> dict:
    return site.wait_for(path, lambda n: n["pid"] not in (None, old_pid) and n["state"] == "running", timeout)


@pytest.mark.parametrize("fault", ["kill9", "segfault", "raise", "hang", "exit", "sigterm"])
def test_leaf_fault_restarts_leaf_within_a_second(make_site, fault):
    site = make_site()
    before = site.pids()
    old = before[LEAF]
    t0 = time.time()
    if fault == "kill9":
        os.kill(old, signal.SIGKILL)
    else:
        site.fault(LEAF, fault)
    node = restarted(site, LEAF, old)
    # Measured from the fault to the new incarnation's Ready at its supervisor.  The promise
    # (module doc): a second.  A hang takes the 0.4 s heartbeat timeout (+ a 0.1 s beat) to
    # be seen, measured 0.50-0.52 s in all; the rest (kill -9: 0.03-0.06 s here, restart
    # p99 97 ms in bench/README.md) has 0.5 s, 5 times that p99.
    assert node["ready_at"] - t0 < 1.0, f"{fault}: restart took {node['ready_at'] - t0:.3f} s"
    assert node["restarts"] == 1
    assert not alive(old)
    after = site.pids()
    assert siblings_of(after, LEAF) == siblings_of(before, LEAF), "a sibling or ancestor changed pid"
    expected_error = {"segfault": "exited", "raise": "RuntimeError: injected fault", "hang": "hung: no heartbeat",
                      "kill9": "exited", "exit": "exited", "sigterm": "exited"}[fault]
    assert expected_error in node["last_error"]


def test_segfault_is_reported_in_crash_log(make_site):
    site = make_site()
    old = site.node(LEAF)["pid"]
    site.fault(LEAF, "segfault")
    restarted(site, LEAF, old)
    crash_log = (site.state_dir / "crash.log").read_text()
    assert "Segmentation fault" in crash_log and "_inject" in crash_log


def test_endpoint_crash_touches_no_other_actor(make_site):
    site = make_site()
    before = site.pids()
    site.fault("mms", "segfault")
    restarted(site, "mms", before["mms"])
    assert siblings_of(site.pids(), "mms") == siblings_of(before, "mms")


def test_killing_a_der_restarts_its_subtree_only_and_leaves_no_orphans(make_site):
    site = make_site(ders=2)
    before = site.pids()
    subtree = {p: pid for p, pid in before.items() if p.startswith("der1")}
    os.kill(before["der1"], signal.SIGKILL)
    restarted(site, "der1", before["der1"])
    after = site.wait_running()
    after = {n["path"]: n["pid"] for n in walk(after)}
    for path, pid in subtree.items():
        assert after[path] != pid, f"{path} kept its pid though its DER died"
        assert not alive(pid), f"{path} (pid {pid}) survived its parent"
    untouched = {p: pid for p, pid in before.items() if p and not p.startswith("der1")}
    assert {p: after[p] for p in untouched} == untouched


def test_killing_the_site_supervisor_rebuilds_the_tree(make_site):
    site = make_site()
    before = site.pids()
    os.kill(before[""], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tree = site.tree()
        if tree["pid"] != before[""] and tree["restarts"] == 1 and tree["children"]:
            break
        time.sleep(0.05)
    tree = site.wait_running()
    assert tree["restarts"] == 1
    assert all(not alive(pid) for pid in before.values() if pid)
    assert {n["path"] for n in walk(tree)} == set(before)


def test_exception_loop_escalates_to_the_parent(make_site):
    # A DER allows 2 restarts in 10 s: a controller that crashes on every start makes it
    # give up; the site then restarts the whole DER (which forgets the injected loop).
    site = make_site(supervision="[supervision.der]\nmax_restarts = 2\nperiod = 10.0\n")
    before = site.pids()
    site.fault(LEAF, "raise-loop")
    der = site.wait_for("der1", lambda n: n["restarts"] == 1 and n["state"] == "running", 10)
    assert "escalated: 3 restarts within 10 s" in der["last_error"]
    assert der["pid"] != before["der1"]
    tree = site.wait_running()
    pids = {n["path"]: n["pid"] for n in walk(tree)}
    assert pids[""] == before[""], "the site supervisor itself must not restart"
    assert pids["mms"] == before["mms"] and pids["mqtt"] == before["mqtt"], "endpoints must not restart"
    assert pids[LEAF] != before[LEAF]


def test_backoff_spaces_repeated_restarts(make_site):
    # backoff_initial 0.05 s: restarts 2, 3, 4 of a child wait 0.05, 0.1, 0.2 s.
    site = make_site()
    ready = []
    for _ in range(4):
        old = site.node(LEAF)["pid"]
        os.kill(old, signal.SIGKILL)
        t0 = time.time()
        ready.append(restarted(site, LEAF, old)["ready_at"] - t0)
    assert ready[3] >= 0.2, ready
    assert ready[0] < ready[3]


def test_rest_for_one_restarts_later_siblings(make_site):
    site = make_site(functions=("ActPow", "MaxPow", "OnOff"),
                     supervision="[supervision.der]\nstrategy = \"rest_for_one\"\n")
    before = site.pids()
    os.kill(before["der1/MaxPow"], signal.SIGKILL)
    restarted(site, "der1/MaxPow", before["der1/MaxPow"])
    after = {n["path"]: n["pid"] for n in walk(site.wait_running())}
    assert after["der1/ActPow"] == before["der1/ActPow"]
    assert after["der1/OnOff"] != before["der1/OnOff"], "OnOff should restart after MaxPow under rest_for_one"
    assert after["der1"] == before["der1"] and after["mms"] == before["mms"]


def test_actor_restarts_from_persisted_state(make_site):
    site = make_site()
    node = site.node(LEAF)
    assert node["detail"]["starts"] == 1
    os.kill(node["pid"], signal.SIGKILL)
    node = restarted(site, LEAF, node["pid"])
    node = site.wait_for(LEAF, lambda n: n["detail"].get("starts") == 2)
    # The whole site stops and starts again: the record continues, it is not reset.
    assert site.stop() == 0
    site.start()
    assert site.wait_for(LEAF, lambda n: n["detail"].get("starts") == 3)


def test_corrupt_state_fails_loudly_with_the_file_name(make_site):
    site = make_site()
    record = site.state_dir / "store" / "controller__der1__ActPow.msgpack"
    assert record.exists()
    record.write_bytes(record.read_bytes()[:7])  # torn write
    old = site.node(LEAF)["pid"]
    os.kill(old, signal.SIGKILL)
    node = site.wait_for(LEAF, lambda n: "unreadable" in n["last_error"])
    assert str(record) in node["last_error"]
    assert record.read_bytes() != b"" and len(record.read_bytes()) == 7, "the corrupt file must not be replaced"


def test_a_lost_lifetime_record_counts_starts_again_with_a_warning(make_site):
    """The lifetime record is information only, written without fsync: one a power cut
    left empty must not keep the actor from starting."""
    site = make_site()
    record = site.state_dir / "store" / "actor__der1__ActPow.msgpack"
    assert site.node(LEAF)["detail"]["starts"] == 1
    record.write_bytes(b"")  # a new file whose data never reached the disk
    old = site.node(LEAF)["pid"]
    os.kill(old, signal.SIGKILL)
    new = restarted(site, LEAF, old)["pid"]
    node = site.wait_for(LEAF, lambda n: n["pid"] == new and n["detail"].get("starts") == 1)
    assert node["state"] == "running" and node["restarts"] == 1  # the kill, nothing after it
    assert StateStore(site.state_dir / "store").load("actor/der1/ActPow")["starts"] == 1
    log = (site.state_dir / "relevent.log").read_text()
    assert "lifetime record lost" in log and str(record) in log


def test_a_restart_that_changed_nothing_does_not_write_the_schedules_again(make_site):
    site = make_site()
    record = site.state_dir / "store" / "controller__der1__ActPow.msgpack"
    for starts in (2, 3):  # the reserve (hourly) moves on at each hour: then once more
        hour, before = time.time() // 3600, record.stat()
        old = site.node(LEAF)["pid"]
        os.kill(old, signal.SIGKILL)
        new = restarted(site, LEAF, old)["pid"]
        site.wait_for(LEAF, lambda n: n["pid"] == new and n["detail"].get("starts") == starts)
        after = record.stat()
        if time.time() // 3600 == hour:
            break
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def der_log(site, der_pid: int, pattern: str) -> list[str]:
    """The first group of `pattern` in each line the DER process (pid) logged, in order."""
    lines = (site.state_dir / "relevent.log").read_text().splitlines()
    return [m.group(1) for line in lines if f" pid={der_pid} " in line and (m := re.search(pattern, line))]


def test_one_for_all_restarts_every_sibling_when_one_is_killed(make_site):
    functions = ("ActPow", "MaxPow", "OnOff")  # the DER's children, in start order
    site = make_site(functions=functions, supervision="[supervision.der]\nstrategy = \"one_for_all\"\n")
    before = site.pids()
    os.kill(before["der1/MaxPow"], signal.SIGKILL)
    restarted(site, "der1/MaxPow", before["der1/MaxPow"])
    tree = site.wait_running()
    nodes = {n["path"]: n for n in walk(tree)}
    for kind in functions:
        path = f"der1/{kind}"
        assert nodes[path]["pid"] != before[path], f"{path} kept its pid under one_for_all"
        assert not alive(before[path])
        assert nodes[path]["restarts"] == 1
    assert nodes["der1"]["pid"] == before["der1"] and nodes["mms"]["pid"] == before["mms"]
    # The siblings went in reverse start order, then all came back in start order.
    assert der_log(site, before["der1"], r"stopped child=(\w+) ") == ["OnOff", "ActPow"]
    assert der_log(site, before["der1"], r"start child=der1/(\w+) .*incarnation=1\b") == list(functions)


def test_a_hung_child_is_killed_after_the_stop_timeout_when_its_supervisor_stops_it(make_site):
    # A heartbeat timeout of 30 s: here only the stop timeout can find the hang.
    site = make_site(supervision="[supervision.der]\nstrategy = \"one_for_all\"\nheartbeat_timeout = 30.0\n")
    before = site.pids()
    hung, killed = "der1/ActPow", "der1/OnOff"
    site.fault(hung, "hang")
    # A marker, not a sleep: the controller logs the fault as it takes it, then hangs.
    deadline = time.monotonic() + 20
    while f"{hung}: injected fault hang" not in (site.state_dir / "relevent.log").read_text():
        assert time.monotonic() < deadline, "the hang never reached the controller"
        time.sleep(0.05)
    t0 = time.time()
    os.kill(before[killed], signal.SIGKILL)  # one_for_all: the DER stops the hung ActPow
    node = restarted(site, hung, before[hung], timeout=STOP_TIMEOUT_S + 5)
    assert f"did not stop within {STOP_TIMEOUT_S:g} s" in node["last_error"]
    assert not alive(before[hung])
    assert node["ready_at"] - t0 >= STOP_TIMEOUT_S
    # The group started again only once the hung child was gone.
    other = restarted(site, killed, before[killed])
    assert other["ready_at"] - t0 >= STOP_TIMEOUT_S
    assert node["ready_at"] - t0 < STOP_TIMEOUT_S + 2.0, "killed long after the stop timeout"


def test_a_hung_site_supervisor_is_taken_for_hung_by_the_runner_and_the_site_comes_back(make_site):
    """The runner's watch on the root (restart_policy.root_hung): a hang stops both its
    heartbeats and the touches of its alive file, so the runner kills and recreates it."""
    from sitectl import until
    site = make_site()
    before = site.pids()
    site.fault("", "hang")
    until(lambda: "restarting site supervisor: hung: no heartbeat for" in (site.state_dir / "relevent.log").read_text(),
          "the runner taking the hung site supervisor for hung", timeout=20)

    def running_again() -> bool:
        pids = site.pids()
        return pids.get("") not in (None, before[""]) and pids.get("der1") not in (None, before["der1"])
    until(running_again, "the site running again with a new site supervisor and DERs", timeout=30)
    assert not alive(before[""])
