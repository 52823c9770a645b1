"""Run-time changes to a running site: endpoint add/remove and reload touch only what
changed, are written back to the topology file, and survive a restart of the site."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from sitectl import REPO, Site, free_port, walk


def others(pids: dict, *skip: str) -> dict:
    return {p: pid for p, pid in pids.items() if not any(p == s or p.startswith(s + "/") for s in skip)}


def test_endpoint_add_and_remove_keep_every_other_pid_and_survive_restart(make_site):
    site = make_site()
    before = site.pids()
    port = free_port()
    res = site.cli("endpoint", "add", str(site.topology), "--wan", f'{{name = "mms2", protocol = "mms", port = {port}}}')
    assert res.returncode == 0, res.stderr
    assert "added        mms2" in res.stdout
    node = site.wait_for("mms2", lambda n: n["state"] == "running")
    assert node["role"] == "wan"
    assert others(site.pids(), "mms2") == before
    text = site.topology.read_text()
    assert "# test site" in text, "comments of the file must survive"
    assert 'name = "mms2"' in text and f"port = {port}" in text

    # The addition is in the file: a restarted site has it.
    assert site.stop() == 0
    site.start()
    assert site.node("mms2")["state"] == "running"

    before = site.pids()
    res = site.cli("endpoint", "remove", str(site.topology), "mms2")
    assert res.returncode == 0, res.stderr
    assert "removed      mms2" in res.stdout
    deadline = time.monotonic() + 5
    while "mms2" in site.pids() and time.monotonic() < deadline:
        time.sleep(0.02)
    after = site.pids()
    assert "mms2" not in after
    assert after == others(before, "mms2")
    assert "mms2" not in site.topology.read_text()
    assert site.stop() == 0
    site.start()
    assert "mms2" not in site.pids()


def test_rejected_endpoint_changes_nothing(make_site):
    site = make_site()
    text = site.topology.read_text()
    before = site.pids()
    mms_port = next(line for line in text.splitlines() if line.startswith("port = ") and "1883" not in line)
    res = site.cli("endpoint", "add", str(site.topology), "--wan", f'{{name = "dup", protocol = "mms", {mms_port}}}')
    assert res.returncode == 1
    assert "two endpoints on port" in res.stderr and ".toml:" in res.stderr
    res = site.cli("endpoint", "add", str(site.topology), "--lan", '{name = "der1", protocol = "mqtt"}')
    assert res.returncode == 1 and "duplicate name 'der1'" in res.stderr
    res = site.cli("endpoint", "remove", str(site.topology), "nope")
    assert res.returncode == 1 and "no WAN or LAN endpoint named 'nope'" in res.stderr
    assert site.topology.read_text() == text
    assert site.pids() == before


def test_reload_applies_only_the_diff(make_site):
    site = make_site(ders=2, schedules=3)
    before = site.pids()
    text = site.topology.read_text()
    # der2 loses a schedule per controller: its controllers restart with the new count, and
    # the MMS endpoint serves a new model; der1, der2 itself and the LAN endpoint are untouched.
    der2 = text.index('name = "der2"')
    edited = text[:der2] + text[der2:].replace("schedules = 3", "schedules = 2", 1)
    site.topology.write_text(edited)
    res = site.cli("reload", str(site.topology))
    assert res.returncode == 0, res.stderr
    assert "reconfigured der2" in res.stdout and "restarted    mms" in res.stdout, res.stdout
    changed = ("der2/ActPow", "der2/OnOff", "mms")
    for path in changed:
        site.wait_for(path, lambda n, old=before[path]: n["pid"] not in (None, old) and n["state"] == "running")
    after = site.pids()
    assert {p: pid for p, pid in after.items() if p not in changed} == \
        {p: pid for p, pid in before.items() if p not in changed}
    assert site.node("der2/ActPow")["detail"]["schedules"] == {"FSCH01": "NOT_READY", "FSCH02": "NOT_READY",
                                                              "Res_FSCH01": "RUNNING"}
    assert all(site.node(p)["restarts"] == 0 for p in changed), "a configuration change is not a failure"

    # A changed endpoint restarts that endpoint only.
    site.topology.write_text(edited.replace("port = 1883", f"port = {free_port()}"))
    res = site.cli("reload", str(site.topology))
    assert res.returncode == 0 and "restarted    mqtt" in res.stdout, res.stdout + res.stderr
    node = site.wait_for("mqtt", lambda n: n["pid"] != after["mqtt"] and n["state"] == "running")
    assert node["restarts"] == 0, "a configuration change is not a failure"
    assert others(site.pids(), "mqtt") == others(after, "mqtt")


def test_reload_of_a_broken_file_reports_lines_and_changes_nothing(make_site):
    site = make_site()
    before = site.pids()
    site.topology.write_text(site.topology.read_text() + "\n[[der]]\nname = \"der9\"\nlan = \"nowhere\"\n")
    res = site.cli("reload", str(site.topology))
    assert res.returncode == 1
    lines = site.topology.read_text().splitlines()
    assert f".toml:{len(lines)}: der[1].lan: LAN endpoint 'nowhere' does not exist" in res.stderr
    assert site.pids() == before


def test_reload_refuses_settings_that_need_a_restart(make_site):
    site = make_site()
    before = site.pids()
    text = site.topology.read_text()
    site.topology.write_text(re.sub(r"admin_port = \d+", f"admin_port = {free_port()}", text))
    reply = site.call({"op": "reload"})
    assert not reply["ok"] and "[runtime] admin_port" in reply["error"], reply
    assert site.pids() == before


def test_thespian_listens_on_loopback_only(make_site):
    site = make_site()
    pids = set(site.leftovers())  # every process of the site's actor system
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                listening.append(fields[1])
    assert len(listening) >= len(pids) - 1, "every actor process should listen on its thespian port"
    loopback = "0100007F"
    assert all(addr.split(":")[0] == loopback for addr in listening), listening


def test_a_second_runner_on_the_same_state_dir_is_refused(make_site):
    site = make_site()
    before = site.pids()
    res = subprocess.run([sys.executable, "-m", "relevent", "run", str(site.topology)], capture_output=True,
                         text=True, cwd=REPO, timeout=30)
    assert res.returncode != 0 and "already running" in res.stderr
    assert site.pids() == before
    assert (site.state_dir / "relevent.sock").exists()


def test_simple_system_base_runs_a_site_in_one_process(tmp_path):
    state = tmp_path / "state"
    path = tmp_path / "simple.toml"
    path.write_text(f"""[site]\nname = "simple"\nstate_dir = "{state}"\n[runtime]\nbase = "simpleSystemBase"\n
[[der]]\nname = "der1"\nfunctions = ["OnOff"]\nschedules = 1\n""")
    site = Site(path, state).start()
    try:
        tree = site.tree()
        pids = {n["pid"] for n in walk(tree)}
        assert pids == {site.proc.pid}
        assert [n["path"] for n in walk(tree)] == ["", "der1", "der1/OnOff"]
        assert tree["children"][0]["children"][0]["detail"]["schedules"] == {"FSCH01": "NOT_READY",
                                                                             "Res_FSCH01": "RUNNING"}
    finally:
        assert site.stop() == 0
