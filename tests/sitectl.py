"""Run a real site (`relevent run` in its own process) for tests and benchmarks."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from relevent.runtime.control import SiteNotRunning, request
from relevent.runtime.runner import group_processes, process_alive
from relevent.runtime.status import walk  # tests and benches import it from here too
from relevent.clock import now_ms

REPO = Path(__file__).resolve().parent.parent


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999



def wait_until(t_ms: int) -> None:
    """Sleep until the wall clock reads `t_ms` (ms since the epoch)."""
    delay = (t_ms - now_ms()) / 1000
    if delay > 0:
        time.sleep(delay)


def until(fn, what: str, timeout: float = 15.0, every: float = 0.05):
    """fn()'s first truthy value within `timeout` s (polled every `every` s), or
    AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s: {what}"
        time.sleep(every)


def mms_port(site: "Site", endpoint: str = "mms") -> int:
    from relevent.topology import load_topology
    return next(ep["port"] for ep in load_topology(site.topology).data["wan"] if ep["name"] == endpoint)


def free_port() -> int:
    """A free port *below* the kernel's ephemeral range: a port from that range can be
    taken, between this call and the server's bind, as the source port of one of the
    site's own outgoing connections (thespian, MQTT, Modbus), which failed a CI run."""
    low = _ephemeral_range()[0]
    while True:
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def small_topology(state_dir: Path, admin_port: int, ders: int = 1, schedules: int = 2,
                   functions: tuple = ("ActPow", "OnOff"), extra: str = "", supervision: str = "",
                   runtime: str = "", wan: str = "") -> str:
    """A site with one MMS endpoint, `ders` DERs and one MQTT LAN endpoint; heartbeat
    0.1/0.4 s so a hang is detected well within a second."""
    funcs = ", ".join(f'"{f}"' for f in functions)
    der_tables = "".join(
        f'\n[[der]]\nname = "der{i}"\nfunctions = [{funcs}]\nschedules = {schedules}\nlan = "mqtt"\nrated_power_w = 10000\n'
        for i in range(1, ders + 1))
    return f"""# test site
[site]
name = "t{admin_port}"
state_dir = "{state_dir}"

[runtime]
admin_port = {admin_port}
allow_fault_injection = true
{runtime}
[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05
{supervision}
[[wan]]
name = "mms"
protocol = "mms"
port = {free_port()}
{wan}
{der_tables}
[[lan]]
name = "mqtt"
protocol = "mqtt"
port = 1883
{extra}"""


class Site:
    def __init__(self, topology_path: Path, state_dir: Path) -> None:
        self.topology = topology_path
        self.state_dir = state_dir
        self.proc: subprocess.Popen | None = None
        self.admin_pgid: int | None = None
        self.log = state_dir.parent / f"{topology_path.stem}.out"

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 30.0, keep_on_failure: bool = False) -> "Site":
        """Run the site and wait until every actor runs; a site that does not get there is
        killed (unless `keep_on_failure`: a test that expects it not to, and looks at it)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "relevent", "run", str(self.topology)],
                                     stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        out.close()
        try:
            self.wait_running(timeout)
        except BaseException:
            # A site that did not come up must not outlive the test (a leaked site kept two
            # cores busy under the rest of a suite): kill it and all it started.
            if not keep_on_failure:
                self.kill_everything()
            raise
        self.admin_pgid = json.loads((self.state_dir / "relevent.pid").read_text())["admin_pgid"]
        return self

    def wait_running(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        tree = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"relevent run exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                tree = self.tree()
                if all(n["state"] == "running" for n in walk(tree)):
                    return tree
            except (SiteNotRunning, OSError, KeyError):
                pass
            time.sleep(0.05)
        waiting = [f"{n['path'] or 'site'} {n['state']} ({n.get('last_error') or 'no error'}, "
                   f"up {n.get('uptime_s')} s)" for n in walk(tree) if n["state"] != "running"] if tree else ["no status"]
        log_tail = "\n".join(line for line in self.log.read_text().splitlines()
                             if "relevent." in line or "Traceback" in line)[-3000:]
        raise TimeoutError(f"site not fully running after {timeout} s: {'; '.join(waiting)}\n"
                           f"the runner's log lines of relevent:\n{log_tail}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def leftovers(self) -> list[int]:
        return group_processes(self.admin_pgid) if self.admin_pgid else []

    def kill_everything(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self.admin_pgid is None:
            # A start that failed never learnt the admin's group: the pid file may know it.
            try:
                self.admin_pgid = json.loads((self.state_dir / "relevent.pid").read_text())["admin_pgid"]
            except (OSError, ValueError, KeyError):
                pass
        if self.admin_pgid and self.leftovers():
            try:
                os.killpg(self.admin_pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- control ---------------------------------------------------------------------------
    def call(self, payload: dict) -> dict:
        return request(self.state_dir / "relevent.sock", payload)

    def tree(self) -> dict:
        return self.call({"op": "status"})["tree"]

    def node(self, path: str) -> dict:
        for node in walk(self.tree()):
            if node["path"] == path:
                return node
        raise KeyError(path)

    def pids(self) -> dict[str, int]:
        return {n["path"]: n["pid"] for n in walk(self.tree())}

    def fault(self, path: str, kind: str) -> dict:
        reply = self.call({"op": "fault", "target": path, "kind": kind})
        assert reply["ok"], reply
        return reply

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "relevent", *args], capture_output=True, text=True,
                              cwd=REPO, timeout=60)

    def wait_for(self, path: str, predicate, timeout: float = 5.0) -> dict:
        """Poll the node at `path` until predicate(node) holds; return it."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.node(path)
                if predicate(last):
                    return last
            except KeyError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"{path} did not reach the expected state in {timeout} s; last: {last}")


alive = process_alive  # tests read better with the short name


@contextmanager
def running(site: Site, timeout: float = 60.0, leftovers: bool = False):
    """The site started, then stopped (and, with `leftovers`, checked to leave no process
    behind); killed whatever happens, a start that failed included."""
    try:
        site.start(timeout=timeout)
        yield site
        site.stop()
        if leftovers:
            assert site.leftovers() == [], f"processes left behind: {site.leftovers()}"
    finally:
        site.kill_everything()


def relevent_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`relevent ARGS...` in a subprocess, from the repository."""
    return subprocess.run([sys.executable, "-m", "relevent", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


# The variables topologies/demo.toml takes its ports from (docs: the README's "Several demos side by side").
DEMO_PORT_VARIABLES = ("RELEVENT_ADMIN_PORT", "RELEVENT_MMS_PORT", "RELEVENT_MQTT_PORT", "RELEVENT_MODBUS_PORT",
                       "RELEVENT_HTTP_PORT", "RELEVENT_OPENADR_PORT", "RELEVENT_IEC104_PORT", "RELEVENT_OCPP_PORT",
                       "RELEVENT_HEATPUMP_PORT", "RELEVENT_METRICS_PORT")


def demo_site(tmp_path: Path, monkeypatch, **env: str) -> tuple[Site, dict[str, int]]:
    """topologies/demo.toml (copied into `tmp_path`, not started) with a free port in each of
    its port variables and its state in `tmp_path`, set in this test's environment (which
    `relevent run` and `relevent status` inherit); `env`: more variables (by default the
    embedded broker runs: RELEVENT_MQTT_EMBEDDED is unset).  Returns the site and the ports."""
    ports = {key: free_port() for key in DEMO_PORT_VARIABLES}
    for key, port in ports.items():
        monkeypatch.setenv(key, str(port))
    state = tmp_path / "state"
    monkeypatch.setenv("RELEVENT_STATE_DIR", str(state))
    monkeypatch.delenv("RELEVENT_MQTT_EMBEDDED", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    topo = tmp_path / "demo.toml"
    shutil.copy(REPO / "topologies" / "demo.toml", topo)
    return Site(topo, state), ports


def make_pki(folder: Path, *issues: tuple[str, str]) -> Path:
    """A site PKI made with `relevent pki init FOLDER` then `issue FOLDER NAME --KIND` for
    each (name, kind); a "site" certificate names 127.0.0.1.  Returns the folder."""
    res = relevent_cli("pki", "init", str(folder))
    assert res.returncode == 0, res.stderr
    for name, kind in issues:
        extra = ("--ip", "127.0.0.1") if kind == "site" else ()
        res = relevent_cli("pki", "issue", str(folder), name, f"--{kind}", *extra)
        assert res.returncode == 0, res.stderr
    return folder
