"""systemd's notify protocol and journal priorities: the pure plan (relevent/runtime/notify.py,
journal.py) alone, then `relevent run` against a datagram socket made by the test, as systemd
would give it: READY only once the MMS endpoint accepts connections, the watchdog's cadence
across a kill -9 of the site supervisor, RELOADING then READY around SIGHUP, STOPPING on
SIGTERM, and `<N>` prefixes when stderr is the journal."""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relevent.runtime.journal import JournalFormatter, is_journal_stream, prefixed, priority
from relevent.runtime.notify import Notifier, NotifyPlan, SiteSummary, socket_address, status_text, summary_of
from sitectl import REPO, free_port, small_topology

SERVING = SiteSummary(True, ders=2, ders_running=2, wan=2, wan_serving=2)
STARTING = SiteSummary(True, ders=2, ders_running=2, wan=2, wan_serving=1)


# -- the plan ---------------------------------------------------------------------------------
def test_ready_waits_until_every_wan_endpoint_serves():
    plan = NotifyPlan(None)
    assert not any("READY=1" in m for m in plan.tick(0.0, STARTING))
    assert not any("READY=1" in m for m in plan.tick(0.1, SiteSummary(False, wan=2, wan_serving=2)))
    sent = plan.tick(0.2, SERVING)
    assert sent == ["READY=1\nSTATUS=2/2 DERs running, 2/2 WAN endpoints serving, 0 faults"]


def test_ready_is_sent_once_per_start_even_when_an_endpoint_restarts_later():
    plan = NotifyPlan(None)
    plan.tick(0.0, SERVING)
    plan.tick(1.0, STARTING)
    assert not any("READY=1" in m for m in plan.tick(2.0, SERVING))


def test_a_site_without_wan_endpoints_is_ready_once_its_supervisor_runs():
    plan = NotifyPlan(None)
    assert not any("READY=1" in m for m in plan.tick(0.0, SiteSummary(False)))
    assert any("READY=1" in m for m in plan.tick(0.1, SiteSummary(True, ders=1, ders_running=1)))


def test_the_watchdog_beats_every_half_of_watchdog_usec_and_not_in_between():
    plan = NotifyPlan(2_000_000)
    beats = [t / 10 for t in range(0, 50) if plan.beat(t / 10) == ["WATCHDOG=1"]]
    assert beats == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_without_watchdog_usec_there_is_no_watchdog():
    plan = NotifyPlan(None)
    assert plan.beat(0.0) == [] and plan.beat(100.0) == []
    assert plan.tick(200.0, SERVING) == ["READY=1\nSTATUS=2/2 DERs running, 2/2 WAN endpoints serving, 0 faults"]


def test_status_is_sent_only_when_its_text_changes():
    plan = NotifyPlan(None)
    plan.tick(0.0, SERVING)
    assert plan.tick(0.1, SERVING) == []
    failing = SiteSummary(True, ders=2, ders_running=1, wan=2, wan_serving=2, faults=1)
    assert plan.tick(0.2, failing) == ["STATUS=1/2 DERs running, 2/2 WAN endpoints serving, 1 faults"]


def test_status_says_why_the_site_supervisor_is_restarting():
    assert status_text(SiteSummary(False, root_error="site supervisor process exited")).startswith(
        "site supervisor restarting (site supervisor process exited); ")
    assert status_text(SiteSummary(False)).startswith("site supervisor starting; ")


def test_a_reload_sends_reloading_with_the_monotonic_time_then_ready_with_its_outcome():
    plan = NotifyPlan(None)
    plan.tick(0.0, SERVING)
    assert plan.reloading(123_456) == ["RELOADING=1\nMONOTONIC_USEC=123456\nSTATUS=reloading the topology"]
    assert plan.reloaded("1 added") == ["READY=1\nSTATUS=reload: 1 added"]
    # The next tick puts the site's counts back.
    assert plan.tick(0.1, SERVING) == ["STATUS=2/2 DERs running, 2/2 WAN endpoints serving, 0 faults"]


def test_a_reload_before_the_first_ready_is_not_announced_and_ready_still_waits_for_the_site():
    plan = NotifyPlan(None)
    plan.tick(0.0, STARTING)
    assert plan.reloading(1) == [] and plan.reloaded("no change") == []
    assert any("READY=1" in m for m in plan.tick(0.1, SERVING))


def test_stopping_is_sent_once_and_nothing_but_it_after():
    plan = NotifyPlan(1_000_000)
    plan.tick(0.0, SERVING)
    assert plan.stop() == ["STOPPING=1\nSTATUS=stopping"]
    assert plan.stop() == []
    assert plan.tick(10.0, SERVING) == [] and plan.reloading(5) == [] and plan.reloaded("x") == []


def test_the_site_supervisors_detail_becomes_a_summary_and_without_one_nothing_serves():
    detail = {"site": "s", "summary": {"ders": 3, "ders_running": 3, "wan": 1, "wan_serving": 1, "faults": 0}}
    assert summary_of(detail, True).serving
    assert not summary_of({"site": "s"}, True).serving
    assert not summary_of(detail, False).serving


def test_notify_socket_addresses_are_paths_or_abstract_names():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@sd-notify-test") == b"\0sd-notify-test"
    assert socket_address("") is None and socket_address("vsock:2:1234") is None


def test_the_notify_environment_is_taken_out_so_actor_processes_never_see_it(tmp_path):
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "1"}
    notifier = Notifier.from_environment(env)
    assert env == {"OTHER": "1"}
    assert notifier.enabled and notifier.plan.interval == 2.0
    notifier.sock.close()


def test_a_watchdog_meant_for_another_pid_is_not_ours():
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert notifier.enabled and notifier.plan.interval is None
    notifier.sock.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    notifier.tick(0.0, SERVING)
    notifier.stop()


def test_an_abstract_notify_socket_receives_the_datagrams():
    name = f"relevent-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(b"\0" + name.encode())
    server.settimeout(2)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"})
    notifier.tick(0.0, SERVING)
    assert server.recv(4096) == b"WATCHDOG=1"
    assert server.recv(4096).startswith(b"READY=1\n")
    server.close()
    notifier.tick(1.0, SERVING)  # the manager's socket is gone: logged, not raised
    notifier.sock.close()


# -- journal priorities -----------------------------------------------------------------------
def test_log_levels_map_to_syslog_priorities():
    assert [priority(level) for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO,
                                          logging.DEBUG)] == [2, 3, 4, 6, 7]


def test_every_line_of_a_multi_line_record_carries_the_priority():
    assert prefixed("crashed\nTraceback\n  line", logging.ERROR) == "<3>crashed\n<3>Traceback\n<3>  line"
    record = logging.LogRecord("relevent.x", logging.WARNING, __file__, 1, "late by %d ms", (5,), None)
    assert JournalFormatter("%(name)s %(message)s").format(record) == "<4>relevent.x late by 5 ms"


def test_journal_stream_must_name_stderrs_device_and_inode():
    assert is_journal_stream("2049:1234", 2049, 1234)
    assert not is_journal_stream("2049:1234", 2049, 1235)
    assert not is_journal_stream("garbage", 2049, 1234) and not is_journal_stream("", 0, 0)


# -- a real site ----------------------------------------------------------------------------------
class NotifySite:
    """`relevent run` with NOTIFY_SOCKET (a datagram socket bound by the test), WATCHDOG_USEC,
    and stderr in a file that JOURNAL_STREAM names, as under systemd."""

    def __init__(self, tmp_path: Path, watchdog_usec: int = 1_000_000) -> None:
        self.state = tmp_path / "state"
        self.topology = tmp_path / "site.toml"
        self.topology.write_text(small_topology(self.state, free_port()))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(tmp_path / "notify"))
        self.err_path = tmp_path / "stderr"
        self.err = open(self.err_path, "wb")
        st = os.fstat(self.err.fileno())
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": str(watchdog_usec),
               "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "relevent", "run", str(self.topology)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=self.err, cwd=REPO)
        self.messages: list[tuple[float, str]] = []

    def receive(self, timeout: float) -> tuple[float, str] | None:
        self.sock.settimeout(max(0.001, timeout))
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            return None
        got = (time.monotonic(), data)
        self.messages.append(got)
        return got

    def wait_for(self, field: str, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.receive(deadline - time.monotonic())
            if got is not None and field in got[1].split("\n"):
                return got[0]
            assert self.proc.poll() is None, self.err_path.read_text()[-3000:]
        raise AssertionError(f"no {field} in {timeout} s: {self.messages}\n{self.err_path.read_text()[-2000:]}")

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.receive(deadline - time.monotonic())

    def pid_of(self, path: str) -> int:
        from relevent.runtime.control import request
        from relevent.runtime.status import walk
        tree = request(self.state / "relevent.sock", {"op": "status"})["tree"]
        return next(node["pid"] for node in walk(tree) if node["path"] == path)

    def root_pid(self) -> int:
        return self.pid_of("")

    def mms_port(self) -> int:
        from relevent.topology import load_topology
        return load_topology(self.topology).data["wan"][0]["port"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        pid_file = self.state / "relevent.pid"
        if pid_file.exists():
            import json
            from relevent.runtime.runner import group_processes
            pgid = json.loads(pid_file.read_text())["admin_pgid"]
            if pgid and group_processes(pgid):
                os.killpg(pgid, signal.SIGKILL)
        self.sock.close()
        self.err.close()


@pytest.fixture
def notify_site(tmp_path):
    sites = []

    def start(**kwargs) -> NotifySite:
        sites.append(NotifySite(tmp_path, **kwargs))
        return sites[-1]

    yield start
    for site in sites:
        site.close()


def test_ready_arrives_only_once_the_mms_endpoint_accepts_connections(notify_site):
    site = notify_site()
    port = site.mms_port()
    site.wait_for("READY=1")
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # MMS serves when READY arrives
    ready = next(m for _, m in site.messages if "READY=1" in m)
    assert "STATUS=1/1 DERs running, 1/1 WAN endpoints serving, 0 faults" in ready.split("\n")
    assert (site.state / "relevent.sock").exists()  # `relevent status` works from READY on


def test_the_watchdog_keeps_its_cadence_while_the_runner_restarts_a_killed_site_supervisor(notify_site):
    usec = 1_000_000
    site = notify_site(watchdog_usec=usec)
    site.wait_for("READY=1")
    site.collect(1.5)
    old = site.root_pid()
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    site.collect(4.0)
    beats = [t for t, m in site.messages if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert max(gaps) < usec / 1e6 * 0.8, gaps  # due every 0.5 s; systemd fires at 1 s
    assert sum(1 for b in beats if b > killed_at) >= 7  # 4 s after the kill: a beat every 0.5 s
    statuses = [m for t, m in site.messages if t > killed_at and m.startswith("STATUS=")]
    assert statuses[-1] == "STATUS=1/1 DERs running, 1/1 WAN endpoints serving, 0 faults", statuses
    assert site.root_pid() != old


def test_sighup_reloads_the_topology_between_reloading_and_ready(notify_site):
    site = notify_site()
    site.wait_for("READY=1")
    text = site.topology.read_text().replace('[[lan]]\nname = "mqtt"',
                                             '[[der]]\nname = "der2"\nfunctions = ["OnOff"]\nschedules = 1\n\n'
                                             '[[lan]]\nname = "mqtt"')
    site.topology.write_text(text)
    site.proc.send_signal(signal.SIGHUP)
    reloading = site.wait_for("RELOADING=1", 10)
    ready = site.wait_for("READY=1", 10)
    assert reloading <= ready
    message = next(m for t, m in site.messages if t == reloading)
    assert re.search(r"^MONOTONIC_USEC=\d+$", message, re.M)
    assert "1 added" in next(m for t, m in site.messages if t == ready)
    assert site.proc.poll() is None


def test_sigterm_sends_stopping_before_the_runner_exits(notify_site):
    site = notify_site()
    site.wait_for("READY=1")
    site.proc.send_signal(signal.SIGTERM)
    stopping = site.wait_for("STOPPING=1", 10)
    assert site.proc.wait(20) == 0
    assert stopping <= time.monotonic()
    assert not any(m == "WATCHDOG=1" for t, m in site.messages if t > stopping)


def test_log_lines_carry_journal_priorities_when_stderr_is_the_journal(notify_site):
    site = notify_site()
    site.wait_for("READY=1")
    os.kill(site.pid_of("der1"), signal.SIGKILL)  # its supervisor logs a warning (through thespian's logger)
    site.collect(1.0)
    site.proc.send_signal(signal.SIGTERM)
    site.proc.wait(20)
    lines = [line for line in site.err_path.read_text().splitlines() if line.strip()]
    assert any(line.startswith("<6>INFO relevent.runner ") for line in lines), lines[:20]
    assert any(line.startswith("<4>WARNING relevent.supervisor ") and "der1" in line for line in lines), lines
    # Every line that logging wrote carries a priority; journald stamps time, so none here.
    logged = [line for line in lines if re.match(r"<\d>", line)]
    assert logged and not any(re.match(r"<\d>\d{4}-\d\d-\d\d", line) for line in logged)
    # The log file keeps its timestamps and has no prefixes.
    assert (site.state / "relevent.log").read_text().startswith("20")
