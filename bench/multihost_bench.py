"""Multi-host site (docs/deploy.md, "Placing DERs on member hosts"): what the death of a member
costs, and what a DER on a member costs per request, against one on the leader.

    sudo .venv/bin/python bench/multihost_bench.py member-death --runs 10 \\
        --json bench/results-multihost-member-death.json
    sudo .venv/bin/python bench/multihost_bench.py remote-vs-local --requests 50 --entries 30 \\
        --json bench/results-multihost-remote-vs-local.json

Root only: the leader and the member run in two network namespaces linked by a veth pair
(tests/netnsctl.py, as in tests/test_multi_host.py), both with the same site file; this
process enters the leader's namespace (setns) to reach its loopback endpoints as a client
on the leader's host would.  Times are wall-clock (one machine, one clock for every process).

member-death: the leader (HTTP WAN endpoint on 127.0.0.1, der2) and member m1 (der1, placed
with `host = "m1"`); der1's ActPow schedule 1 is enabled with one long entry of VALUE_W.
Each run, after the previous one has settled (--spacing: the next kill no earlier than
`period` + margin after the last, so every run starts with an empty restart window and no
backoff left over): kill -9 of every process in the member's namespace (a host losing
power), then the member started again at once (as systemd's Restart= would; --down D waits
D s first: a member down for D s).  From the kill (t0, taken just before the first SIGKILL):

* detected: the leader's site supervisor logs `kill child=der1 ...` (heartbeat timeout) or
  `child exited child=der1` (relevent.log's record time, ms); `detected (status)`: the
  first status poll showing der1 not running or with another pid (polls every POLL_S, but a
  status request waits up to STATUS_TIMEOUT_S = 1 s for a supervisor child that does not
  answer, so this one is coarse);
* member up: the new member's ActorSystem up (its pid file written; polled);
* der1 running: der1's `ready_at` (the wall time its supervisor got Ready, as in
  bench/runtime_bench.py) for an incarnation with a new pid in the member's namespace;
* controller serving: der1/ActPow's `ready_at` for a new incarnation whose status shows
  output == VALUE_W (its Ready carries the output of the schedules it restored from the store);
* HTTP serving: the first GET /api/v1/ders/der1/ActPow from the leader's namespace (polled
  every HTTP_POLL_S) showing output == VALUE_W computed (`at`) after t0; the endpoint keeps
  showing the last value it had while der1 is away (`http_during_outage`).

These times are set by [supervision] (heartbeat_interval/heartbeat_timeout: detection;
backoff_*: the restart's delay; placement_timeout: a creation sent to the dead member's stale
registration, never answered, is given up then) and by thespian's convention: the member
registers with the leader as it starts, and the leader's site supervisor, told of it
(ActorSystemConventionUpdate), creates der1 there at once.  The results file records the
settings.

remote-vs-local: DERs d000 (on the leader) and d001 (on member m1), identical (ActPow, one
schedule, controller_isolation = "der"), an MMS endpoint on the leader; each drives a SunSpec
inverter simulator over Modbus through the leader's LAN endpoint (--no-modbus: no device).
An open61850 client in the leader's namespace (bench/switch_bench.py's requests) measures,
per DER, --requests rounds of: write round trip (one request setting up the schedule:
NumEntr, SchdIntv, SchdPrio, --entries values), enable round trip (EnaReq operate) and
disable round trip (DsaReq).  Then both schedules start on the same whole second with 1 s
entries of distinct values: switch lateness = the client's first sight of each value in the
DER's ActPow_GGIO1.AnOut1.mxVal.f (read_many sweeps, --pause between) minus the entry
boundary, per DER, as in switch_bench.py; the endpoint's own switch record (`switches`) is
kept too.  Boundary -> device: the simulator's time_ns of the WMaxLimPct register write
carrying the entry's value minus the boundary, per DER, as in bench/lan_bench.py; the remote
DER's commands go member -> leader's LAN endpoint over the private network.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import open61850.mms as o61850  # noqa: E402
from open61850.data import FloatData, IntData, TimestampData  # noqa: E402

from mmsclients import mms_name  # noqa: E402
from relevent.topology.schema import SUPERVISION  # noqa: E402
from netnsctl import LEADER_IP, NETWORK, NetnsUnavailable, inside, kill_ns, linked_namespaces, ns_pids  # noqa: E402
from sitectl import REPO, Site, free_port, walk  # noqa: E402
from switch_bench import pct, summary  # noqa: E402

from relevent.runtime.control import SiteNotRunning  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
HOST = "m1"                      # the member's --host
VALUE_W = 1234.0                 # W: der1's scheduled ActPow in member-death
SCHEDULE_S = 3600                # s: that schedule's single entry (longer than any run)
POLL_S = 0.05                    # s: pause between status polls while a run is measured
HTTP_POLL_S = 0.1                # s: between HTTP GETs while a run is measured
HTTP_TIMEOUT_S = 5.0             # s: one HTTP request
STATUS_TIMEOUT_S = 1.0           # s: relevent.actors.supervisor.STATUS_TIMEOUT (what a status poll may wait)
LEADER_UP_TIMEOUT_S = 60.0       # s: relevent run -> its pid file
MEMBER_UP_TIMEOUT_S = 30.0       # s: relevent member -> its pid file
SITE_UP_TIMEOUT_S = 180.0        # s: the leader and member started -> every actor running
SPACING_MARGIN_S = 2.0           # s: added to [supervision] period between two kills
KILL_ROUNDS_S = 5.0              # s: kill -9 the member's namespace until empty, at most this long
REREGISTRATION = "0:10"          # CONVENTION_REREGISTRATION_PERIOD set by relevent/runtime/member.py
DEFAULT_PERIOD_S = 30.0          # s: [supervision] period (schema default; the bench leaves it)
LEAD_S = 3                       # s: remote-vs-local set-up -> the first entry boundary
WMAX_W = 10000.0                 # W: the inverter simulators' WMax and the DERs' rated_power_w


# -- a leader and a member, each in its namespace ---------------------------------------------------
def start_member(ns: dict, path: Path, out: Path) -> subprocess.Popen:
    with open(out, "ab") as log:
        return subprocess.Popen(["ip", "netns", "exec", ns["member"], sys.executable, "-m", "relevent", "member",
                                 str(path), "--host", HOST], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=ENV)


def member_up(state: Path, proc: subprocess.Popen) -> bool:
    """Its ActorSystem is up: it wrote its pid file (`ip netns exec` execs: proc.pid is its pid)."""
    try:
        return json.loads((state / f"member-{HOST}.pid").read_text())["member"] == proc.pid
    except (OSError, ValueError, KeyError):
        return False


def wait(fn, what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: exited with {proc.returncode}\n{log.read_text()[-3000:] if log else ''}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:g} s\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.05)


def start_site(ns: dict, folder: Path, text: str, started: list) -> tuple[Site, subprocess.Popen]:
    """The leader first, then the member (docs/deploy.md), then every actor running.  What is
    started is appended to `started` at once, for stop_site() whatever happens."""
    state = folder / "state"
    state.mkdir(parents=True)
    path = folder / "site.toml"
    path.write_text(text)
    site = Site(path, state)
    with open(site.log, "ab") as out:
        site.proc = subprocess.Popen(["ip", "netns", "exec", ns["leader"], sys.executable, "-m", "relevent", "run",
                                      str(path)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=ENV)
    started.append(site)
    wait(lambda: (state / "relevent.pid").exists(), "relevent run", LEADER_UP_TIMEOUT_S, site.proc, site.log)
    member = start_member(ns, path, folder / "member.out")
    started.append(member)
    wait(lambda: member_up(state, member), "relevent member", MEMBER_UP_TIMEOUT_S, member, folder / "member.out")
    site.wait_running(SITE_UP_TIMEOUT_S)
    site.admin_pgid = json.loads((state / "relevent.pid").read_text())["admin_pgid"]
    return site, member


def stop_site(ns: dict, started: list) -> None:
    """SIGTERM to the leader (it stops the member's actors), then to the members; then kill -9
    whatever is left in both namespaces (only this bench's processes run there)."""
    sites = [s for s in started if isinstance(s, Site)]
    members = [p for p in started if isinstance(p, subprocess.Popen)]
    try:
        for site in sites:
            if site.proc is not None and site.proc.poll() is None:
                site.stop(60)
        for proc in members:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    pass
    finally:
        for site in sites:
            site.kill_everything()
        for name in (ns["member"], ns["leader"]):
            kill_ns(name)
        for proc in members:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def power_loss(name: str) -> int:
    """kill -9 of every process in namespace `name`, again until none is left (one forked
    meanwhile too); the number of processes signalled."""
    killed: set[int] = set()
    deadline = time.monotonic() + KILL_ROUNDS_S
    while time.monotonic() < deadline:
        got = kill_ns(name)
        if not got:
            break
        killed |= got
    return len(killed)


def seconds(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_s": round(pct(values, 50), 3), "p90_s": round(pct(values, 90), 3),
            "max_s": round(max(values), 3), "min_s": round(min(values), 3)}


# -- HTTP, from inside the leader's namespace ---------------------------------------------------------
def http(port: int, method: str, url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{url}", method=method,
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
        return json.loads(r.read() or b"{}")


def iso_ms(text: str | None) -> float | None:
    return None if not text else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


# -- member-death -------------------------------------------------------------------------------------
def death_topology(state: Path, admin: int, http_port: int, args) -> str:
    return f"""[site]
name = "mhbench"
state_dir = "{state}"

[runtime]
admin_port = {admin}
convention_leader = "{LEADER_IP}:{admin}"
private_network = "{NETWORK}"

[supervision]
heartbeat_interval = {args.heartbeat_interval}
heartbeat_timeout = {args.heartbeat_timeout}
startup_timeout = {args.startup_timeout}
backoff_initial = {args.backoff_initial}
backoff_max = {args.backoff_max}

[[wan]]
name = "http"
protocol = "http"
address = "127.0.0.1"
port = {http_port}
party = "aggregator"

[[der]]
name = "der1"
functions = ["ActPow"]
schedules = 2
rated_power_w = 10000
host = "{HOST}"

[[der]]
name = "der2"
functions = ["ActPow"]
schedules = 2
"""


def log_events(log: Path, since: float, der: str = "der1") -> list[tuple[float, str]]:
    """(wall time, message) of the leader's relevent.log lines about `der` at or after `since`."""
    out = []
    keys = (f"child={der} ", f"child={der}\n")
    for line in log.read_text(errors="replace").splitlines():
        if not any(k in line + "\n" for k in keys):
            continue
        try:
            t = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if t >= since - 0.001:
            out.append((t, line[24:]))
    return out


def one_loss(site: Site, member: subprocess.Popen, ns: dict, folder: Path, http_port: int, args,
             started: list) -> tuple[dict, subprocess.Popen]:
    old, old_ctl = site.node("der1"), site.node("der1/ActPow")
    others = {p: site.node(p)["restarts"] for p in ("http", "der2")}
    t0 = time.time()
    killed = power_loss(ns["member"])
    member.wait(10)
    member, t_restart = None, None
    seen: dict = {}
    deadline = time.monotonic() + args.timeout
    next_http = 0.0
    while not all(k in seen for k in ("member_up", "der_running", "serving", "http", "detected_status")):
        if time.monotonic() > deadline:
            break
        if member is None and time.time() >= t0 + args.down:   # --down 0: at once, as systemd's Restart=
            t_restart = time.time()
            member = start_member(ns, site.topology, folder / "member.out")
            started.append(member)
        if member is not None and "member_up" not in seen and member_up(site.state_dir, member):
            seen["member_up"] = time.time()
        try:
            nodes = {n["path"]: n for n in walk(site.tree())}
        except (SiteNotRunning, OSError, KeyError):
            nodes = {}
        der1, ctl = nodes.get("der1"), nodes.get("der1/ActPow")
        if der1 is not None:
            if "detected_status" not in seen and (der1["state"] != "running" or der1["pid"] != old["pid"]):
                seen["detected_status"] = time.time()
                seen["first_state"] = f"{der1['state']}: {der1['last_error']}"
            if "der_running" not in seen and der1["state"] == "running" and der1["pid"] not in (None, old["pid"]) \
                    and der1["pid"] in ns_pids(ns["member"]):
                seen["der_running"], seen["der_pid"] = der1["ready_at"], der1["pid"]
        if "der_running" in seen and "serving" not in seen and ctl is not None and ctl["state"] == "running" \
                and ctl["pid"] not in (None, old_ctl["pid"]) and ctl["detail"].get("output") == VALUE_W:
            seen["serving"] = ctl["ready_at"]
        if "http" not in seen and time.monotonic() >= next_http:
            next_http = time.monotonic() + HTTP_POLL_S
            try:
                got = http(http_port, "GET", "/api/v1/ders/der1/ActPow")
            except (OSError, urllib.error.URLError, ValueError) as exc:
                got = {"error": str(exc)}
            at = iso_ms(got.get("at"))
            if "http_during_outage" not in seen:   # the first GET after the kill: what a client sees meanwhile
                seen["http_during_outage"] = {k: got.get(k) for k in ("output", "source", "at", "error") if k in got}
            if got.get("output") == VALUE_W and at is not None and at > t0 * 1000:
                seen["http"], seen["http_at"] = time.time(), at / 1000
        time.sleep(POLL_S)
    if member is None:   # given up before its restart (--down longer than --timeout)
        t_restart = time.time()
        member = start_member(ns, site.topology, folder / "member.out")
        started.append(member)
    events = log_events(site.state_dir / "relevent.log", t0)
    detected = next((t for t, m in events if "kill child=der1 " in m or "child exited child=der1 " in m), None)
    after = {p: site.node(p)["restarts"] - n for p, n in others.items()}

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 3)

    run = {"killed_processes": killed, "member_restarted_s": rel(t_restart),
           "detected_s": rel(detected), "detected_status_s": rel(seen.get("detected_status")),
           "member_up_s": rel(seen.get("member_up")), "der_running_s": rel(seen.get("der_running")),
           "serving_s": rel(seen.get("serving")), "http_serving_s": rel(seen.get("http")),
           "http_at_s": rel(seen.get("http_at")), "first_state": seen.get("first_state"),
           "http_during_outage": seen.get("http_during_outage"),
           "der1_restarts": site.node("der1")["restarts"] - old["restarts"],
           "other_restarts": after, "events": [[rel(t), m] for t, m in events]}
    missing = [k for k in ("der_running", "serving", "http") if k not in seen]
    if missing:
        run["timed_out"] = missing
    return run, member


def member_death(ns: dict, tmp: Path, args) -> dict:
    admin, http_port = free_port(), free_port()
    started: list = []
    runs = []
    try:
        site, member = start_site(ns, tmp, death_topology(tmp / "state", admin, http_port, args), started)
        start = int(time.time() * 1000) + 1000
        http(http_port, "PUT", "/api/v1/ders/der1/ActPow/schedules/1",
             {"values": [VALUE_W], "interval_s": SCHEDULE_S, "priority": 20, "start": iso(start)})
        http(http_port, "POST", "/api/v1/ders/der1/ActPow/schedules/1/enable")
        site.wait_for("der1/ActPow", lambda n: n["detail"].get("output") == VALUE_W, timeout=30)
        next_kill = 0.0
        for i in range(args.runs):
            time.sleep(max(0.0, next_kill - time.time()))
            site.wait_running(SITE_UP_TIMEOUT_S)
            site.wait_for("der1/ActPow", lambda n: n["detail"].get("output") == VALUE_W, timeout=30)
            next_kill = time.time() + args.spacing
            run, member = one_loss(site, member, ns, tmp, http_port, args, started)
            runs.append(run)
            late = f", timed out: {', '.join(run['timed_out'])}" if "timed_out" in run else ""
            print(f"run {i + 1}/{args.runs}: detected {run['detected_s']} s, der1 running {run['der_running_s']} s, "
                  f"serving {run['serving_s']} s, HTTP {run['http_serving_s']} s (der1 restarts "
                  f"{run['der1_restarts']}{late})", flush=True)
    finally:
        stop_site(ns, started)
    figures = {key: seconds([r[key] for r in runs if r.get(key) is not None])
               for key in ("detected_s", "detected_status_s", "member_up_s", "der_running_s", "serving_s",
                           "http_serving_s")}
    return {"mode": "member-death", "runs": len(runs), "member_down_s": args.down,
            "supervision": {"heartbeat_interval_s": args.heartbeat_interval,
                            "heartbeat_timeout_s": args.heartbeat_timeout, "startup_timeout_s": args.startup_timeout,
                            "backoff_initial_s": args.backoff_initial, "backoff_max_s": args.backoff_max,
                            "max_restarts": 10, "period_s": DEFAULT_PERIOD_S,
                            "placement_timeout_s": SUPERVISION["placement_timeout"].default},
            "convention_reregistration_period": os.environ.get("CONVENTION_REREGISTRATION_PERIOD", REREGISTRATION),
            "spacing_s": args.spacing, "poll_s": POLL_S, "http_poll_s": HTTP_POLL_S, "value_w": VALUE_W,
            "figures": figures, "per_run": runs}


def print_death(result: dict) -> None:
    names = {"detected_s": "detected (leader's log)", "detected_status_s": "detected (status poll)",
             "member_up_s": "member's ActorSystem up", "der_running_s": "der1 running again (ready_at)",
             "serving_s": "controller serving VALUE (ready_at)", "http_serving_s": "HTTP GET shows it again"}
    print(f"\nmember death (kill -9) -> ..., {result['runs']} runs, member restarted after "
          f"{result['member_down_s']:g} s; {json.dumps(result['supervision'])}")
    print(f"{'from the kill to':40} {'p50 s':>8} {'p90 s':>8} {'max s':>8} {'n':>3}")
    for key, label in names.items():
        f = result["figures"][key]
        if f["n"]:
            print(f"{label:40} {f['p50_s']:8.3f} {f['p90_s']:8.3f} {f['max_s']:8.3f} {f['n']:3d}")
        else:
            print(f"{label:40} {'-':>8} {'-':>8} {'-':>8} {0:3d}")


# -- remote-vs-local -----------------------------------------------------------------------------------
DERS = {"local": "d000", "remote": "d001"}   # d000 on the leader, d001 on the member


def rl_topology(state: Path, admin: int, mms_port: int, modbus: dict | None, args) -> str:
    ders = ""
    for i, (where, name) in enumerate(DERS.items()):
        ders += f'\n[[der]]\nname = "{name}"\nfunctions = ["ActPow"]\nschedules = 1\nrated_power_w = {WMAX_W:g}\n'
        if where == "remote":
            ders += f'host = "{HOST}"\n'
        if modbus:
            address = 1 if i == 0 else f'"127.0.0.1:{modbus["ports"][i]}/1"'
            ders += f'lan = "modbus"\naddress = {address}\nprofile = "sunspec"\nreserve = {{ ActPow = {WMAX_W} }}\n'
    lan = ""
    if modbus:
        lan = f"""
[[lan]]
name = "modbus"
protocol = "modbus"
port = {modbus["ports"][0]}
timeout = 0.5
poll_period = 0.5
""" + "".join(f"""
[[simulator]]
name = "inverter{i}"
protocol = "sunspec-inverter"
port = {port}
wmax = {WMAX_W}
write_log = "{modbus["logs"][i]}"
""" for i, port in enumerate(modbus["ports"]))
    return f"""[site]
name = "mhrl"
state_dir = "{state}"

[runtime]
admin_port = {admin}
convention_leader = "{LEADER_IP}:{admin}"
private_network = "{NETWORK}"
controller_isolation = "der"

[supervision]
heartbeat_interval = {args.heartbeat_interval}
heartbeat_timeout = {args.heartbeat_timeout}
startup_timeout = {args.startup_timeout}

[[wan]]
name = "mms"
protocol = "mms"
port = {mms_port}
{ders}{lan}"""


def fsch(name: str) -> str:
    return f"DER_Scheduler_{name}Control/ActPow_FSCH01"


def setup_request(name: str, values: list[float]) -> tuple[list[str], list]:
    """switch_bench.py's write: entries, interval (1 s), priority, values, in one request."""
    ref = fsch(name)
    names = [mms_name(f"{ref}.{n}", "SP") for n in ("NumEntr.setVal", "SchdIntv.setVal", "SchdPrio.setVal")]
    names += [mms_name(f"{ref}.ValASG{k + 1:03d}.setMag.f", "SP") for k in range(len(values))]
    return names, [IntData(len(values)), IntData(1), IntData(20)] + [FloatData(v) for v in values]


def timed(fn, *args, **kwargs) -> float:
    """fn(*args, **kwargs)'s round trip, ms."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - start) * 1000


def write(c, names: list[str], data: list) -> None:
    errors = c.write_many(names, data)
    if any(errors):
        raise RuntimeError(f"write refused: {errors}")


def round_trips(c, values: dict[str, list[float]], requests: int) -> dict:
    """--requests rounds, alternating which DER goes first: write (schedule disabled), enable,
    disable; the start time far ahead so that no entry runs meanwhile."""
    far = TimestampData(datetime.fromtimestamp(time.time() + SCHEDULE_S, tz=timezone.utc))
    for name in DERS.values():
        c.write(mms_name(f"{fsch(name)}.StrTm01.setTm", "SP"), far)
    rtt = {where: {"write": [], "enable": [], "disable": []} for where in DERS}
    order = list(DERS.items())
    for n in range(requests):
        for where, name in (order if n % 2 == 0 else order[::-1]):
            names, data = setup_request(name, values[where])
            rtt[where]["write"].append(timed(write, c, names, data))
            rtt[where]["enable"].append(timed(o61850.operate, c, f"{fsch(name)}.EnaReq", True, ctl_model=1))
            rtt[where]["disable"].append(timed(o61850.operate, c, f"{fsch(name)}.DsaReq", True, ctl_model=1))
    return {where: {k: summary(v) for k, v in r.items()} for where, r in rtt.items()}


def observe(c, values: dict[str, list[float]], t0: int, pause: float) -> dict[str, dict[int, float]]:
    """switch_bench.py's observer, per DER: when each entry's value is first seen (wall ms)."""
    wheres = list(DERS)
    names = [mms_name(f"DER_Scheduler_{DERS[w]}Control/ActPow_GGIO1.AnOut1.mxVal.f", "MX") for w in wheres]
    entries = len(values["local"])
    seen: dict[str, dict[int, float]] = {w: {} for w in wheres}
    end = t0 + entries * 1000 + 300
    while time.time() * 1000 < end:
        got = c.read_many(names)
        s1 = time.time() * 1000
        time.sleep(pause)
        for where, v in zip(wheres, got, strict=True):
            value = getattr(v, "value", None)
            if value in values[where]:
                seen[where].setdefault(values[where].index(value), s1)
    return seen


def register_writes(log: Path, values: list[float], wmaxlimpct: int) -> dict[int, float]:
    """bench/lan_bench.py's reading of the simulator's write log: entry -> wall ms of the first
    WMaxLimPct write (% of WMAX_W, scale factor -2: 1 W a step) carrying its value."""
    from lanctl import read_write_log
    entry = {round(v, 1): k for k, v in enumerate(values)}
    out: dict[int, float] = {}
    for w in read_write_log(log):
        if w["address"] <= wmaxlimpct < w["address"] + len(w["values"]):
            value = round(w["values"][wmaxlimpct - w["address"]] / 100 / 100 * WMAX_W, 1)
            if value in entry:
                out.setdefault(entry[value], w["t_ns"] / 1e6)
    return out


def wmaxlimpct_address(port: int) -> int:
    import sunspec2.modbus.client as ssclient
    dev = ssclient.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port)
    try:
        dev.scan()
        return dev.models[123][0].model_addr + 5
    finally:
        dev.close()


def lateness(seen: dict[int, float], t0: int, entries: int) -> dict:
    late = [t - (t0 + k * 1000) for k, t in seen.items()]
    return {**(summary(late) if late else {"n": 0}), "missed": entries - len(seen),
            "missed_entries": [k for k in range(entries) if k not in seen], "early": sum(1 for x in late if x < 0)}


def remote_vs_local(ns: dict, tmp: Path, args) -> dict:
    admin, mms_port = free_port(), free_port()
    modbus = None
    if not args.no_modbus:
        modbus = {"ports": [free_port(), free_port()],
                  "logs": [tmp / "writes-local.jsonl", tmp / "writes-remote.jsonl"]}
    entries = args.entries
    values = {where: [1000.0 * (i + 1) + k for k in range(entries)] for i, where in enumerate(DERS)}
    started: list = []
    try:
        site, _member = start_site(ns, tmp, rl_topology(tmp / "state", admin, mms_port, modbus, args), started)
        placed = {w: site.node(n)["pid"] in ns_pids(ns["member" if w == "remote" else "leader"])
                  for w, n in DERS.items()}
        if not all(placed.values()):
            raise RuntimeError(f"DERs not where they should be: {placed}")
        wmax_at = wmaxlimpct_address(modbus["ports"][0]) if modbus else None
        c = o61850.MmsClient.connect("127.0.0.1", mms_port, timeout=30)
        try:
            rtt = round_trips(c, values, args.requests)
            t0 = (int(time.time()) + LEAD_S) * 1000
            start_time = TimestampData(datetime.fromtimestamp(t0 / 1000, tz=timezone.utc))
            for where, name in DERS.items():
                names, data = setup_request(name, values[where])
                write(c, names, data)
                c.write(mms_name(f"{fsch(name)}.StrTm01.setTm", "SP"), start_time)
                o61850.operate(c, f"{fsch(name)}.EnaReq", True, ctl_model=1)
            if time.time() * 1000 > t0 - 300:
                raise RuntimeError("set-up took longer than the lead time; raise LEAD_S")
            seen = observe(c, values, t0, args.pause)
        finally:
            c.close()
        time.sleep(1.0)   # the last register writes, the endpoint's switch record
        switches = [s for s in site.node("mms")["detail"].get("switches", []) if t0 <= s["at"] < t0 + entries * 1000]
    finally:
        stop_site(ns, started)
    result = {"mode": "remote-vs-local", "requests": args.requests, "entries": entries,
              "observer_pause_ms": args.pause * 1000, "controller_isolation": "der",
              "supervision": {"heartbeat_interval_s": args.heartbeat_interval,
                              "heartbeat_timeout_s": args.heartbeat_timeout},
              "modbus": modbus is not None}
    for where in DERS:
        result[where] = {"der": DERS[where], "host": HOST if where == "remote" else "leader", **rtt[where],
                         "switch_lateness": lateness(seen[where], t0, entries)}
        if modbus:
            writes = register_writes(modbus["logs"][list(DERS).index(where)], values[where], wmax_at)
            result[where]["boundary_to_register_write"] = lateness(writes, t0, entries)
    outputs = [s["outputs_ms"] for s in switches]
    result["endpoint_switches"] = {"boundaries": len({s["at"] for s in switches}), "batches": len(switches),
                                   "controllers_per_batch": sorted({s["controllers"] for s in switches}),
                                   "outputs_ms": summary(outputs) if outputs else {"n": 0}}
    return result


def print_rl(result: dict) -> None:
    rows = [("write round trip", "write"), ("enable (EnaReq) round trip", "enable"),
            ("disable (DsaReq) round trip", "disable"), ("switch lateness (client)", "switch_lateness")]
    if result["modbus"]:
        rows.append(("boundary -> register write", "boundary_to_register_write"))
    print(f"\nremote vs local DER: {result['requests']} request rounds, {result['entries']} entries")
    print(f"{'':30} {'local p50':>10} {'p99':>8} {'remote p50':>11} {'p99':>8} {'n':>4} {'missed':>7}")
    for label, key in rows:
        lo, re_ = result["local"][key], result["remote"][key]
        if not lo.get("n") or not re_.get("n"):
            print(f"{label:30} (no samples: local {lo}, remote {re_})")
            continue
        missed = f"{lo.get('missed', 0)}/{re_.get('missed', 0)}" if "missed" in lo else ""
        print(f"{label:30} {lo['p50_ms']:10.2f} {lo['p99_ms']:8.2f} {re_['p50_ms']:11.2f} {re_['p99_ms']:8.2f} "
              f"{lo['n']:4d} {missed:>7}")
    sw = result["endpoint_switches"]
    if sw["batches"]:
        print(f"endpoint's switches: {sw['boundaries']} boundaries in {sw['batches']} batches (controllers per batch "
              f"{sw['controllers_per_batch']}), outputs in the model p50 {sw['outputs_ms']['p50_ms']} ms, "
              f"p99 {sw['outputs_ms']['p99_ms']} ms after the boundary")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    death = sub.add_parser("member-death", help="member killed -> its DER serving again")
    death.add_argument("--runs", type=int, default=10)
    death.add_argument("--down", type=float, default=0.0, help="s the member stays down before its restart")
    death.add_argument("--heartbeat-interval", type=float, default=0.2, help="[supervision], s (default: schema's)")
    death.add_argument("--heartbeat-timeout", type=float, default=2.0,
                       help="[supervision], s (schema: 0.6; 2.0 as tests/test_multi_host.py: the 2-core box is busy)")
    death.add_argument("--startup-timeout", type=float, default=60.0, help="[supervision], s (default: schema's)")
    death.add_argument("--backoff-initial", type=float, default=0.1, help="[supervision], s (default: schema's)")
    death.add_argument("--backoff-max", type=float, default=5.0, help="[supervision], s (default: schema's)")
    death.add_argument("--spacing", type=float, default=DEFAULT_PERIOD_S + SPACING_MARGIN_S,
                       help="s at least between two kills (default: [supervision] period + 2 s)")
    death.add_argument("--timeout", type=float, default=300.0, help="s a run may take before it is given up")
    rl = sub.add_parser("remote-vs-local", help="a DER on a member versus one on the leader")
    rl.add_argument("--requests", type=int, default=50, help="request rounds per DER")
    rl.add_argument("--entries", type=int, default=30, help="1 s schedule entries observed (max 100)")
    rl.add_argument("--pause", type=float, default=0.001, help="observer pause between sweeps, s")
    rl.add_argument("--no-modbus", action="store_true", help="no Modbus device (no boundary -> device figure)")
    rl.add_argument("--heartbeat-interval", type=float, default=1.0, help="[supervision], s (switch_bench's)")
    rl.add_argument("--heartbeat-timeout", type=float, default=5.0, help="[supervision], s (switch_bench's)")
    rl.add_argument("--startup-timeout", type=float, default=60.0, help="[supervision], s")
    for p in (death, rl):
        p.add_argument("--json", type=Path, help="write the results here (bench/results-multihost-<mode>.json)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("multihost_bench.py needs root: it runs the leader and the member in two network namespaces "
                 "(ip netns add, a veth pair); run it with sudo")
    if args.mode == "remote-vs-local" and not 1 <= args.entries <= 100:
        sys.exit("--entries: 1..100")
    try:
        with tempfile.TemporaryDirectory(prefix="multihost-bench-") as tmp, \
                linked_namespaces("relevent-mhb") as ns, inside(ns["leader"]):
            if args.mode == "member-death":
                result = member_death(ns, Path(tmp), args)
            else:
                result = remote_vs_local(ns, Path(tmp), args)
    except NetnsUnavailable as exc:
        sys.exit(f"multihost_bench.py: {exc}")
    result["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
    result["load_1min"] = round(os.getloadavg()[0], 2)
    (print_death if args.mode == "member-death" else print_rl)(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
