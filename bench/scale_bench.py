"""Scale curves: one site per size (1, 10, 100, 1,000 DERs), measured end to end.

    .venv/bin/python bench/scale_bench.py --ders 1 --ders 10 --ders 100 --ders 1000 --json bench/results-scale.json
    .venv/bin/python bench/scale_bench.py --ders 1 --ders 10 --writes 50 --entries 3
    .venv/bin/python bench/scale_bench.py --ders 1000 --mms-endpoints 10 --values 24 --size-timeout 1800
    .venv/bin/python bench/scale_bench.py --ders 1000 --mms-endpoints 10 --ders-per-process 50 --lateness-ders 100

Each size runs one site (`relevent run` in its own processes, tests/sitectl.py): N DERs, each
with ActPow, MaxPow and OnOff and `schedules = 10` (FSCH01..FSCH10 plus the reserve
Res_FSCH01: 11 schedules a function, 33 a DER), `[runtime] controller_isolation = "der"` (a
DER's 3 controllers in the DER's process: N + 5 processes; with --ders-per-process K,
`ders_per_process = K`, the DERs K to a process: N / K + 5), one MMS WAN endpoint (or, with
--mms-endpoints K, K of them, each serving a contiguous slice of the DERs: `[[wan]] ders`),
no LAN.  The client is open61850 in this process, over loopback, one connection per
endpoint.  Per size, in this order:

a. serve_s: `relevent run` spawned -> the first successful MMS read of the LAST DER's
   ActPow_GGIO1.AnOut1.mxVal.f (connect and read, polled every POLL_S), of each endpoint in
   turn: the time the last of them served.  Also, from the
   supervisors' wall-clock `ready_at` stamps in `relevent status` (so the status polling,
   every STATUS_POLL_MIN_S or STATUS_POLL_PER_DER_S x N, does not add to them): mms_ready_s
   (the site supervisor heard the MMS endpoint's Ready, sent once it listens with every
   controller's state in, or after the session's 10 s without: a few ms after it can serve),
   running_s (the last actor of the tree, controllers included, became ready; a tree whose
   DERs all run but lacks some DER's controllers PARTIAL_TREES times in a row, their status
   parts late, is taken as it is: `controllers` says so), and from relevent.log the runner's
   "up in" (the site supervisor ready) and the endpoint's "serving".  cpu_at_serve: the CPU
   seconds every process of the site had used when the last endpoint served, by role (the
   MMS endpoints, the DER processes, the rest): what the 2 cores spent on the way there.
b. PSS (memory_bench.pss_kb) of every process of the site (runner included), once it runs:
   total; by role: the MMS endpoint, the DER processes (sum and each: a group's, with
   --ders-per-process), the rest (runner,
   thespian admin and logger, site supervisor); per_der_mib = total / N.  The marginal cost of
   a DER is (total(N2) - total(N1)) / (N2 - N1) between consecutive sizes of one run
   (`pss_marginal_per_der_mib`; needs two sizes).
   Open descriptors (the site supervisor's, the most of any process, the total), and the
   CPU the running site uses by itself (heartbeats, the observer's samples) over
   IDLE_WINDOW_S with no client, in cores, with its three biggest users.
c. Round trips seen by the client over --writes schedule set-ups spread evenly over the DERs
   and cycling over the 3 functions and FSCH02..FSCH09: write = one write request (NumEntr,
   SchdIntv, SchdPrio and SETUP_ENTRIES values); enable = operate EnaReq (ctlModel given, so
   one request; answered once the controller has saved the change).  Their start is a day
   ahead: they never run during the benchmark.
d. Switch lateness (switch_bench's method): every DER (or --lateness-ders of them, evenly
   spread) gets ActPow FSCH01 with --entries 1 s entries of distinct values (1000 * (i + 1) + k),
   all starting on the same whole second; the lead before it is LEAD_MIN_S plus LEAD_FACTOR x
   the set-up time c measured per DER.  This process reads every sampled DER's value in
   read_many requests of at most --read-batch names, a --pause between sweeps, and notes when
   each value first appears (stamped per request).  Lateness = first sight - entry boundary:
   p50/p99/max, seen vs expected, none early.
e. Restart: the last DER gets a keeper schedule (ActPow FSCH10, one entry of KEEP_INTERVAL_S at
   a higher priority, KEEP_VALUE), read back; SIGTERM -> the runner exited (stop_s, processes
   left), then `relevent run` again on the same state dir: serve_s and running_s again, and
   one read of the last DER's ActPow value must be KEEP_VALUE (the schedule survived).

Supervision, scaled with N (Supervision.for_ders): heartbeat_interval = max(0.5, N / 200) s
(200 Pings a second: the site supervisor spreads a round over ticks of at most 200 Pings,
restart_policy.heartbeat_slices: at 1,000 DERs and their site's other children, 6 ticks
of at most 167 in 5 s), heartbeat_timeout = max(5, 4 x
interval) s (a DER answers late while 1,000 processes fork and start on 2 cores), and
startup_timeout = 60 + 0.5 x N s (the MMS endpoint's start-up is linear, 4.7 s at 100 DERs
(bench/README.md, "MMS start-up"); the runner also waits that long for the site supervisor).
`stop_timeout` stays at its default (20 s), as on a real site.  The same settings apply at every
level (the DERs' hosted controllers too).

thespian at 1,000 DERs: the site supervisor's Configures at start are a burst of N transmits
from one process (a status request is one per DER up to 200 DERs; above, the DERs push their
status with their heartbeat replies: supervisor.STATUS_FANOUT_MAX).  thespian keeps 20 in flight and
queues the rest; above 950 queued (THESPIAN_MAX_QUEUED_TRANSMITS) the sender only transmits
until it is down to 780: a pause in what it receives, not a loss (a burst of 2,000 from one
handler arrived whole with thespian's defaults).  `log` counts those events in thespian.log,
and the DERs killed or restarted in relevent.log.

Per size: load average and MemAvailable before it (a busy machine shows there), the lowest
MemAvailable during it, a JSON record, a table row.  A size that fails, does not finish within
--size-timeout s, or brings MemAvailable below --mem-floor MiB (no swap here: the OOM killer
would choose among every process of the machine) is killed and recorded (`ok`: false,
`error`, the tails of relevent.log, thespian.log and the runner's output); the next size runs.
Every site started is stopped (killed on Ctrl-C or SIGTERM).  The JSON file is rewritten after
each size.  thespian's THESPIAN_* environment variables, if set, reach the site and are recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import open61850.mms as o61850  # noqa: E402
from open61850.data import BoolData, FloatData, IntData, TimestampData  # noqa: E402

from memory_bench import pss_kb  # noqa: E402
from mmsclients import Open61850Client, mms_name  # noqa: E402
from sitectl import REPO, Site, free_port, until, walk  # noqa: E402
from switch_bench import summary  # noqa: E402

from relevent.progress import Progress  # noqa: E402
from relevent.runtime.control import SiteNotRunning  # noqa: E402
from relevent.runtime.runner import group_processes  # noqa: E402
from relevent.scl.generate import default_ld_inst  # noqa: E402

FUNCTIONS = ("ActPow", "MaxPow", "OnOff")
SCHEDULES = 10                 # FSCH01..FSCH10 per function, plus the reserve Res_FSCH01
VALUES = 100                   # value slots per schedule ([[der]] values; the 90-10 model's maximum)
LATENESS_SCHEDULE = "FSCH01"   # ActPow, every DER: the lateness run (d)
SETUP_SCHEDULES = tuple(f"FSCH{n:02d}" for n in range(2, 10))   # the round trips (c)
KEEPER_SCHEDULE = "FSCH10"     # ActPow, the last DER: the restart check (e)
SETUP_ENTRIES = 10             # values written by one set-up's write request
SETUP_AHEAD_S = 86400          # s: set-ups (c) start a day ahead, never during the run
PRIORITY = 20                  # SchdPrio of the set-ups and the lateness schedules
KEEP_PRIORITY = 30             # SchdPrio of the keeper: above the lateness schedule
KEEP_VALUE = 4242.0            # W: the keeper's value
KEEP_INTERVAL_S = 3600         # s: the keeper's one entry, running across the restart
KEEP_LEAD_S = 2.0              # s: the keeper starts this long after it is written
KEEP_SEEN_TIMEOUT_S = 15.0     # s: the keeper's value must be read within this
LEAD_MIN_S = 3.0               # s: lateness lead (d), at least
LEAD_FACTOR = 1.5              # x the round trips measured in c: margin on the lateness set-up
LEAD_FALLBACK_S = 0.2          # s per DER when c measured nothing (--writes 0)
LATE_SETUP_MARGIN_MS = 300     # ms: set-up must end this long before the first boundary
OBSERVE_TAIL_MS = 300          # ms: the observer goes on this long after the last entry
POLL_S = 0.1                   # s: MMS connect-and-read poll while waiting to be served
IDLE_WINDOW_S = 10.0           # s: the running site's own CPU use is measured over this
STATUS_POLL_MIN_S = 0.25       # s: status poll (a status fans out to every DER up to 200), at least ...
STATUS_POLL_PER_DER_S = 0.01   # s: ... and this per DER (10 s at 1,000 DERs)
PARTIAL_TREES = 5              # status trees in a row with every DER running but some controllers
                               # missing (status parts late, or above 200 DERs not pushed yet):
                               # taken as running, with what they show
STOP_WAIT_S = 60.0             # s: SIGTERM -> exited, before the runner is killed (stop_timeout 20 s)
SIZE_TIMEOUT_S = 900.0         # s: one size, start to stop
MEM_FLOOR_MIB = 2048           # MiB: a size is killed when MemAvailable falls below this
MEM_CHECK_S = 1.0              # s: between two looks at MemAvailable
READ_BATCH = 100               # names per read_many request (an MMS PDU is at most 65,000 bytes)
TAIL_CHARS = 4000              # characters of each log kept on failure
MiB = 1024                     # kB per MiB (smaps reports kB)

# relevent.log lines worth counting (name -> pattern).
LOG_MARKERS = {
    "killed": r" kill child=",
    "serving_without_states": r"serving without the state of",
    "stop_overran": r"site supervisor did not stop in",
    "processes_left": r"processes left after shutdown",
    "child_exited": r"child exited child=",
    "errors": r" ERROR ",
}
# thespian.log: an actor with more than 950 transmits queued (THESPIAN_MAX_QUEUED_TRANSMITS) stops
# receiving until it has drained them; past 1,050 (THESPIAN_DROP_TRANSMITS_LEVEL) it drops them.
THESPIAN_MARKERS = {"tx_only": r"Entering tx-only mode", "tx_dropped": r"Dropping TX: overloaded",
                    "tx_timed_out": r"TX intent .* timed out"}
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass
class Supervision:
    """[supervision] of a site of `ders` DERs (the module docstring says why these)."""
    heartbeat_interval: float   # s
    heartbeat_timeout: float    # s
    startup_timeout: float      # s

    @classmethod
    def for_ders(cls, ders: int) -> Supervision:
        interval = max(0.5, ders / 200)
        return cls(interval, max(5.0, 4 * interval), 60.0 + 0.5 * ders)


@dataclass
class Start:
    """One `relevent run` until it serves and runs; seconds from the spawn."""
    serve_s: float              # first successful MMS read of the last DER
    mms_ready_s: float | None   # the MMS endpoint's ready_at
    running_s: float | None     # the last actor's ready_at
    running_seen_s: float       # when the status poll first saw every actor running
    first_value: float | None   # what that first read returned
    actors: int
    controllers: int            # seen in that tree: 3 x N unless PARTIAL_TREES ended the wait
    restarts: int               # restarts counted anywhere in the tree (a DER killed as hung...)
    # CPU seconds the site's processes had used when it served, by role (MMS endpoints, DER
    # processes, the rest: runner, thespian's admin and logger, site supervisor): where the
    # time to serve went (a process that exited before is not counted).
    cpu_at_serve: dict | None = None


class SizeAborted(Exception):
    """The size ran out of time or the machine out of memory (Limits)."""


def mem_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // MiB
    return 0


class Limits:
    """A size's limits, enforced in the main thread by SIGALRM (it interrupts sleeps and MMS
    waits): --size-timeout (a timer), and --mem-floor (a thread reads MemAvailable every
    MEM_CHECK_S and signals when it falls below: this machine has no swap, and the OOM killer
    would pick among every process on it).  Each arm raises SizeAborted at most once."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.lowest_mib: int | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        signal.signal(signal.SIGALRM, self._fire)

    def _fire(self, _signum, _frame) -> None:
        reason, self.reason = self.reason, None
        if reason:
            raise SizeAborted(reason)

    def arm(self, seconds: float, floor_mib: int) -> None:
        self.reason, self.lowest_mib = f"not done within {seconds:g} s", mem_available_mib()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, args=(floor_mib, self._stop, threading.get_ident()),
                                         name="mem-floor", daemon=True)
        self._watcher.start()
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def _watch(self, floor_mib: int, stop: threading.Event, main: int) -> None:
        while not stop.wait(MEM_CHECK_S):
            available = mem_available_mib()
            self.lowest_mib = min(self.lowest_mib, available)
            if available < floor_mib and self.reason:
                self.reason = f"MemAvailable {available} MiB, below --mem-floor {floor_mib} MiB"
                signal.pthread_kill(main, signal.SIGALRM)
                return

    def disarm(self) -> None:
        self.reason = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None


class Layout:
    """Which MMS endpoint serves which DER: one endpoint ("mms", every DER) or, with
    --mms-endpoints K, K endpoints "mms0".. each serving a contiguous slice of the DERs
    (`[[wan]] ders`), as a big site splits its model over several IEDs (docs/scaling.md)."""

    def __init__(self, ders: int, endpoints: int) -> None:
        self.ders, self.ports = ders, [free_port() for _ in range(endpoints)]
        self.names = ["mms"] if endpoints == 1 else [f"mms{k}" for k in range(endpoints)]
        self.slices = [range(k * ders // endpoints, (k + 1) * ders // endpoints) for k in range(endpoints)]
        self.endpoint_of = [k for k, part in enumerate(self.slices) for _ in part]
        # Each endpoint's model names its DERs' logical devices by how many it serves.
        self.lds = [default_ld_inst({"name": der_name(i)}, len(self.slices[self.endpoint_of[i]]))
                    for i in range(ders)]

    def wan_tables(self) -> str:
        out = ""
        for k, (name, port) in enumerate(zip(self.names, self.ports)):
            out += f'[[wan]]\nname = "{name}"\nprotocol = "mms"\nport = {port}\n'
            if len(self.names) > 1:
                out += "ders = [" + ", ".join(f'"{der_name(i)}"' for i in self.slices[k]) + "]\n"
        return out


def topology(state: Path, ders: int, layout: Layout, sup: Supervision, values: int = VALUES,
             ders_per_process: int = 1, sample_s: float = 5.0) -> str:
    funcs = ", ".join(f'"{f}"' for f in FUNCTIONS)
    der_tables = "".join(f'\n[[der]]\nname = "{der_name(i)}"\nfunctions = [{funcs}]\nschedules = {SCHEDULES}\n'
                         f'values = {values}\n' for i in range(ders))
    return f"""[site]
name = "scalebench"
state_dir = "{state}"
[runtime]
admin_port = {free_port()}
controller_isolation = "der"
ders_per_process = {ders_per_process}
sample_s = {sample_s}
[supervision]
heartbeat_interval = {sup.heartbeat_interval}
heartbeat_timeout = {sup.heartbeat_timeout}
startup_timeout = {sup.startup_timeout}
{layout.wan_tables()}{der_tables}"""


def der_name(i: int) -> str:
    return f"d{i:04d}"


def fsch(ld: str, kind: str, schedule: str) -> str:
    return f"DER_Scheduler_{ld}/{kind}_{schedule}"


def actpow_name(ld: str) -> str:
    return mms_name(f"DER_Scheduler_{ld}/ActPow_GGIO1.AnOut1.mxVal.f", "MX")


def timestamp(ms: int) -> TimestampData:
    return TimestampData(datetime.fromtimestamp(ms / 1000, tz=timezone.utc))


# -- a. start and serve ---------------------------------------------------------------------------
def spawn(site: Site) -> None:
    """`relevent run` without waiting (Site.start waits for the whole tree: a is measured here)."""
    site.state_dir.mkdir(parents=True, exist_ok=True)
    site.admin_pgid = None
    with open(site.log, "ab") as out:
        site.proc = subprocess.Popen([sys.executable, "-m", "relevent", "run", str(site.topology)],
                                     stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def runner_alive(site: Site) -> None:
    if site.proc is None or site.proc.poll() is not None:
        code = None if site.proc is None else site.proc.returncode
        raise RuntimeError(f"relevent run exited with {code}")


def first_read(site: Site, port: int, name: str) -> tuple[Open61850Client, float]:
    """Connect and read `name` until it works; the connected client and the value."""
    while True:
        runner_alive(site)
        try:
            client = Open61850Client("127.0.0.1", port)
        except (OSError, o61850.MmsError, o61850.AssociationError):
            time.sleep(POLL_S)
            continue
        try:
            return client, client.client.read(name).value
        except (OSError, o61850.MmsError):
            client.close()
            time.sleep(POLL_S)


def tree_running(site: Site, ders: int) -> tuple[dict | None, bool]:
    """(the status tree, whether it shows every controller) once every actor in it runs, every
    DER included; (None, False) before.  A DER whose status part came later than the site
    supervisor's STATUS_TIMEOUT (1 s), or above 200 DERs one that has not yet sent its
    controllers with a heartbeat reply, shows no controllers."""
    try:
        tree = site.tree()
    except (SiteNotRunning, OSError, KeyError):
        return None, False
    nodes = list(walk(tree))
    if sum(1 for n in nodes if n["role"] == "der") < ders or any(n["state"] != "running" for n in nodes):
        return None, False
    return tree, sum(1 for n in nodes if n["role"] == "controller") == ders * len(FUNCTIONS)


class Clients:
    """One open61850 client per MMS endpoint; `of(i)`: the raw client that reaches DER i."""

    def __init__(self, layout: Layout, clients: list[Open61850Client]) -> None:
        self.layout, self.clients = layout, clients

    def of(self, i: int):
        return self.clients[self.layout.endpoint_of[i]].client

    def close(self) -> None:
        for c in self.clients:
            c.close()


def start(site: Site, layout: Layout, progress: Progress) -> tuple[Start, Clients]:
    """serve_s: until the last DER of every endpoint was read (each endpoint's model holds
    its DERs; it listens once it is built and its controllers' states are in)."""
    ders = layout.ders
    spawned_wall, spawned = time.time(), time.monotonic()
    spawn(site)
    clients: list[Open61850Client] = []
    for port, part in zip(layout.ports, layout.slices):
        client, value = first_read(site, port, actpow_name(layout.lds[part[-1]]))
        clients.append(client)
    serve_s = time.monotonic() - spawned
    cpu = site_cpu(site)
    progress.phase(f"{ders} DERs: MMS served after {serve_s:.2f} s; waiting for every actor")
    every = max(STATUS_POLL_MIN_S, STATUS_POLL_PER_DER_S * ders)
    partial = 0   # polls in a row where all ran but some DER's controllers were missing
    while True:
        tree, complete = tree_running(site, ders)
        partial = partial + 1 if tree is not None and not complete else 0
        if complete or partial >= PARTIAL_TREES:
            break
        runner_alive(site)
        time.sleep(every)
    seen_s = time.monotonic() - spawned
    site.admin_pgid = json.loads((site.state_dir / "relevent.pid").read_text())["admin_pgid"]
    nodes = list(walk(tree))
    stamps = [n["ready_at"] for n in nodes if n.get("ready_at")]
    mms_ready = [n.get("ready_at") for n in nodes if n["role"] == "wan"]
    return Start(serve_s=round(serve_s, 3),
                 mms_ready_s=round(max(mms_ready) - spawned_wall, 3) if mms_ready and all(mms_ready) else None,
                 running_s=round(max(stamps) - spawned_wall, 3) if stamps else None,
                 running_seen_s=round(seen_s, 3), first_value=value, actors=len(nodes),
                 controllers=sum(1 for n in nodes if n["role"] == "controller"),
                 restarts=sum(n.get("restarts") or 0 for n in nodes),
                 cpu_at_serve=cpu_by_role(cpu, tree)), Clients(layout, clients)


def site_cpu(site: Site) -> dict[int, float]:
    """CPU seconds (user + system) of every process of the running site, by pid."""
    try:
        pgid = json.loads((site.state_dir / "relevent.pid").read_text())["admin_pgid"]
    except (OSError, ValueError, KeyError):
        return {}
    out = {}
    for pid in group_processes(pgid) + [site.proc.pid]:
        try:
            out[pid] = cpu_s(pid)
        except (OSError, IndexError):   # gone since the listing
            continue
    return out


def process_roles(tree: dict) -> dict[int, str]:
    """pid -> "wan" (an MMS endpoint), "der" (a DER's process, or a group of DERs':
    --ders-per-process) or "rest", for every process the tree shows."""
    kinds = {"wan": "wan", "der": "der", "group": "der"}
    return {n["pid"]: kinds.get(n["role"], "rest") for n in walk(tree) if n.get("pid") and not n.get("hosted")}


def cpu_by_role(cpu: dict[int, float], tree: dict | None) -> dict | None:
    if not cpu or tree is None:
        return None
    roles = process_roles(tree)
    out = {"wan": 0.0, "der": 0.0, "rest": 0.0}
    for pid, seconds in cpu.items():
        out[roles.get(pid, "rest")] += seconds
    return {k: round(v, 1) for k, v in out.items()} | {"total": round(sum(out.values()), 1)}


# -- b. memory -----------------------------------------------------------------------------------
def memory(site: Site, ders: int) -> dict:
    roles = process_roles(site.tree())
    by_role: dict[str, list[float]] = {"wan": [], "der": [], "rest": []}
    for pid in site.leftovers() + [site.proc.pid]:
        try:
            mib = pss_kb(pid) / MiB
        except OSError:   # gone since the listing
            continue
        by_role[roles.get(pid, "rest")].append(mib)
    total = sum(sum(v) for v in by_role.values())
    der = by_role["der"]
    # Open descriptors: the site supervisor's (it holds a few per DER) and the most any
    # process has (a forked actor inherits what its parent held then): the service's
    # LimitNOFILE must cover them (deploy/relevent@.service).
    fds = {}
    for pid in site.leftovers() + [site.proc.pid]:
        try:
            fds[pid] = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    supervisor = next((n["pid"] for n in walk(site.tree()) if n.get("path") == ""), None)
    return {"processes": sum(len(v) for v in by_role.values()), "total_mib": round(total, 1),
            "per_der_mib": round(total / ders, 2), "mms_endpoint_mib": round(sum(by_role["wan"]), 1),
            "der_processes": len(der), "ders_mib": round(sum(der), 1),
            "der_each_mib": {"mean": round(sum(der) / len(der), 2), "min": round(min(der), 2),
                             "max": round(max(der), 2)} if der else None,
            "rest_mib": round(sum(by_role["rest"]), 1),
            "open_files": {"max": max(fds.values(), default=0), "total": sum(fds.values()),
                           "site_supervisor": fds.get(supervisor)}}


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def idle_cpu(site: Site) -> dict:
    """CPU the running site uses with no client (heartbeats, the observer's samples, the
    switcher): all its processes over IDLE_WINDOW_S, as a share of one core; the three
    biggest users by role."""
    roles = {n["pid"]: n["path"] or "site" for n in walk(site.tree()) if n.get("pid") and not n.get("hosted")}
    pids = site.leftovers() + [site.proc.pid]
    def sample() -> dict[int, float]:
        out = {}
        for pid in pids:
            try:
                out[pid] = cpu_s(pid)
            except (OSError, IndexError):
                continue
        return out
    before = sample()
    time.sleep(IDLE_WINDOW_S)
    after = sample()
    used = {pid: after[pid] - before[pid] for pid in after if pid in before}
    top = sorted(used.items(), key=lambda kv: -kv[1])[:3]
    return {"window_s": IDLE_WINDOW_S, "cores": round(sum(used.values()) / IDLE_WINDOW_S, 3),
            "top": [[roles.get(pid, "runner/thespian" if pid != site.proc.pid else "runner"),
                     round(cpu / IDLE_WINDOW_S, 3)] for pid, cpu in top]}


# -- c. write and enable round trips -------------------------------------------------------------
def set_up_write(c, ref: str, boolean: bool, entries: int, priority: int, values: list, interval_s: int = 1) -> list:
    """One write request: NumEntr, SchdIntv, SchdPrio and the values; its errors."""
    names = [mms_name(f"{ref}.{n}", "SP") for n in ("NumEntr.setVal", "SchdIntv.setVal", "SchdPrio.setVal")]
    data = [IntData(entries), IntData(interval_s), IntData(priority)]
    slot = "ValSPG{:03d}.setVal" if boolean else "ValASG{:03d}.setMag.f"
    names += [mms_name(f"{ref}.{slot.format(k + 1)}", "SP") for k in range(len(values))]
    data += [BoolData(v) if boolean else FloatData(v) for v in values]
    return [e for e in c.write_many(names, data) if e is not None]


def enable(c, ref: str, start_ms: int) -> float:
    """StrTm01 then operate EnaReq; the operate's round trip, ms."""
    c.write(mms_name(f"{ref}.StrTm01.setTm", "SP"), timestamp(start_ms))
    t = time.perf_counter()
    o61850.operate(c, f"{ref}.EnaReq", True, ctl_model=1)
    return (time.perf_counter() - t) * 1000


def set_up_slot(j: int, ders: int, writes: int) -> tuple[int, str, str]:
    """Set-up j of `writes`: its DER (evenly spread; in turn when there are more set-ups than
    DERs), function (the next one each time, shifted each round of DERs) and schedule."""
    der = j * ders // writes if writes < ders else j % ders
    kind = FUNCTIONS[(j + j // ders) % len(FUNCTIONS)]
    return der, kind, SETUP_SCHEDULES[(j // (len(FUNCTIONS) * ders)) % len(SETUP_SCHEDULES)]


def round_trips(clients: Clients, lds: list[str], writes: int) -> dict:
    start_ms = (int(time.time()) + SETUP_AHEAD_S) * 1000
    write_ms, enable_ms, errors = [], [], []
    slots = [set_up_slot(j, len(lds), writes) for j in range(writes)]
    for j, (der, kind, schedule) in enumerate(slots):
        ref = fsch(lds[der], kind, schedule)
        c = clients.of(der)
        boolean = kind == "OnOff"
        values = [k % 2 == 0 for k in range(SETUP_ENTRIES)] if boolean else \
            [100.0 * (j % 50) + k for k in range(SETUP_ENTRIES)]
        t = time.perf_counter()
        refused = set_up_write(c, ref, boolean, SETUP_ENTRIES, PRIORITY, values)
        write_ms.append((time.perf_counter() - t) * 1000)
        try:
            enable_ms.append(enable(c, ref, start_ms))
        except (o61850.ControlError, o61850.DataAccessError) as exc:
            errors.append(f"{ref}: enable: {exc}")
        errors += [f"{ref}: write: {e}" for e in refused]
    return {"set_ups": writes, "ders_touched": len({der for der, _, _ in slots}),
            "schedules_touched": len(set(slots)),
            "write_rtt": summary(write_ms) if write_ms else None,
            "enable_rtt": summary(enable_ms) if enable_ms else None,
            "errors": len(errors), "first_errors": errors[:5]}


# -- d. switch lateness --------------------------------------------------------------------------
def lateness(clients: Clients, lds: list[str], args, per_der_s: float) -> dict:
    n = len(lds)
    k_ders = min(n, args.lateness_ders or n)
    sample = sorted({i * n // k_ders for i in range(k_ders)})
    entries = args.entries
    for i in sample:
        refused = set_up_write(clients.of(i), fsch(lds[i], "ActPow", LATENESS_SCHEDULE), False, entries, PRIORITY,
                               [1000.0 * (i + 1) + k for k in range(entries)])
        if refused:
            raise RuntimeError(f"lateness set-up of {lds[i]} refused: {refused}")
    lead_s = LEAD_MIN_S + LEAD_FACTOR * len(sample) * per_der_s
    t0 = (int(time.time() + lead_s) + 1) * 1000
    for i in sample:
        enable(clients.of(i), fsch(lds[i], "ActPow", LATENESS_SCHEDULE), t0)
    spare_ms = t0 - time.time() * 1000
    result = {"ders_sampled": len(sample), "entries_per_der": entries, "expected": len(sample) * entries,
              "lead_s": round(lead_s, 1), "setup_spare_ms": round(spare_ms), "read_batch": args.read_batch,
              "observer_pause_ms": args.pause * 1000}
    if spare_ms < LATE_SETUP_MARGIN_MS:
        return {**result, "error": "set-up took longer than the lead: not observed"}
    names = [actpow_name(lds[i]) for i in sample]
    # Read requests of at most --read-batch names, each to the endpoint serving its DERs.
    batches = []
    for k in range(len(clients.clients)):
        mine = [j for j in range(len(sample)) if clients.layout.endpoint_of[sample[j]] == k]
        batches += [mine[a:a + args.read_batch] for a in range(0, len(mine), args.read_batch)]
    seen: dict[tuple[int, int], float] = {}
    sweeps, requests = [], []
    end = t0 + entries * 1000 + OBSERVE_TAIL_MS
    while time.time() * 1000 < end:
        s0 = time.time() * 1000
        for batch in batches:
            r0 = time.time() * 1000
            values = clients.of(sample[batch[0]]).read_many([names[j] for j in batch])
            r1 = time.time() * 1000
            requests.append(r1 - r0)
            for j, v in zip(batch, values):
                value = getattr(v, "value", None)
                if value is None:
                    continue
                k = round(value - 1000.0 * (sample[j] + 1))
                if 0 <= k < entries and (j, k) not in seen:
                    seen[(j, k)] = r1
        sweeps.append(time.time() * 1000 - s0)
        time.sleep(args.pause)   # leave the cores to the site
    late = [seen[(j, k)] - (t0 + k * 1000) for (j, k) in seen]
    return {**result, "seen": len(seen), "missed": result["expected"] - len(seen),
            "early": sum(1 for x in late if x < 0), "lateness": summary(late) if late else None,
            "latest_per_entry_ms": [max((round(seen[(j, k)] - (t0 + k * 1000), 1) for j in range(len(sample))
                                         if (j, k) in seen), default=None) for k in range(entries)],
            "observer_sweep": summary(sweeps), "observer_request": summary(requests)}


# -- e. restart ----------------------------------------------------------------------------------
def arm_keeper(c, ld: str) -> float:
    """The last DER's keeper schedule, running; seconds until its value was read."""
    ref = fsch(ld, "ActPow", KEEPER_SCHEDULE)
    refused = set_up_write(c, ref, False, 1, KEEP_PRIORITY, [KEEP_VALUE], KEEP_INTERVAL_S)
    if refused:
        raise RuntimeError(f"keeper write refused: {refused}")
    t = time.monotonic()
    enable(c, ref, int((time.time() + KEEP_LEAD_S) * 1000))
    until(lambda: c.read(actpow_name(ld)).value == KEEP_VALUE, "the keeper's value", KEEP_SEEN_TIMEOUT_S)
    return round(time.monotonic() - t, 2)


def restart(site: Site, layout: Layout, progress: Progress) -> dict:
    ders = layout.ders
    t = time.monotonic()
    code = site.stop(timeout=STOP_WAIT_S)
    stop_s = time.monotonic() - t
    left = site.leftovers()
    site.kill_everything()
    progress.phase(f"{ders} DERs: stopped in {stop_s:.2f} s (exit {code}, {len(left)} processes left); "
                   "running it again")
    again, clients = start(site, layout, progress)
    try:
        value = clients.of(ders - 1).read(actpow_name(layout.lds[-1])).value
    finally:
        clients.close()
    return {"stop_s": round(stop_s, 3), "exit_code": code, "processes_left": len(left), **asdict(again),
            "keeper_value": value, "survived": value == KEEP_VALUE}


# -- one size ------------------------------------------------------------------------------------
def text_of(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def log_facts(state: Path) -> dict:
    """Counts of LOG_MARKERS in relevent.log (both runs of the size), the runner's "up in"
    and the endpoint's "serving" times (s) of each run, and THESPIAN_MARKERS in thespian.log."""
    text = text_of(state / "relevent.log")
    facts: dict = {name: len(re.findall(pattern, text)) for name, pattern in LOG_MARKERS.items()}
    facts["site_up_s"] = [float(m) for m in re.findall(r"site=\S+ up in ([\d.]+) s", text)]
    facts["mms_serving_at"] = [LOG_TIME.match(line).group(1) for line in text.splitlines()
                               if re.search(r"mms endpoint=\S+ serving", line) and LOG_TIME.match(line)]
    thespian = text_of(state / "thespian.log")
    facts.update({f"thespian_{name}": len(re.findall(p, thespian)) for name, p in THESPIAN_MARKERS.items()})
    return facts


def run_size(ders: int, args, tmp: Path, progress: Progress, limits: Limits) -> dict:
    sup = Supervision.for_ders(ders)
    state, layout = tmp / f"state-{ders}", Layout(ders, args.mms_endpoints)
    topo = tmp / f"scale-{ders}.toml"
    topo.write_text(topology(state, ders, layout, sup, args.values, args.ders_per_process, args.sample_s))
    record: dict = {"ders": ders, "loadavg_before": [round(x, 2) for x in os.getloadavg()],
                    "mem_available_before_mib": mem_available_mib(), "supervision": asdict(sup), "ok": False}
    site = Site(topo, state)
    lds = layout.lds
    clean = False
    try:
        limits.arm(args.size_timeout, args.mem_floor)
        progress.phase(f"{ders} DERs: starting (load average {record['loadavg_before'][0]})")
        first, clients = start(site, layout, progress)
        record["start"] = asdict(first)
        try:
            record["memory"] = memory(site, ders)
            record["idle_cpu"] = idle_cpu(site)
            progress.phase(f"{ders} DERs: running after {first.running_s} s, "
                           f"PSS {record['memory']['total_mib']} MiB; {args.writes} set-ups")
            record["round_trips"] = rt = round_trips(clients, lds, args.writes)
            # After the lead is chosen, each sampled DER costs a StrTm write and an enable.
            per_der_s = ((rt["write_rtt"]["mean_ms"] + rt["enable_rtt"]["mean_ms"]) / 1000
                         if rt["write_rtt"] and rt["enable_rtt"] else LEAD_FALLBACK_S)
            progress.phase(f"{ders} DERs: switch lateness, {args.entries} entries")
            record["lateness"] = lateness(clients, lds, args, per_der_s)
            record["endpoint_switches"] = site.node(layout.names[0])["detail"].get("switches", [])
            record["keeper_seen_s"] = arm_keeper(clients.of(ders - 1), lds[-1])
        finally:
            clients.close()
        progress.phase(f"{ders} DERs: SIGTERM")
        record["restart"] = restart(site, layout, progress)
        t = time.monotonic()
        record["restart"]["second_exit_code"] = site.stop(timeout=STOP_WAIT_S)
        record["restart"]["second_stop_s"] = round(time.monotonic() - t, 3)
        limits.disarm()
        record["ok"] = clean = True
    except Exception as exc:   # SizeAborted included: recorded, and the next size runs
        record["error"] = f"{type(exc).__name__}: {exc}"
        progress.phase(f"{ders} DERs: FAILED: {record['error']}")
    finally:
        limits.disarm()
        record["mem_available_lowest_mib"] = limits.lowest_mib
        site.kill_everything()   # after a failure, a timeout or Ctrl-C: no stop to wait for
        record["log"] = log_facts(state)
        if not clean:
            record["log_tail"] = {name: text_of(path)[-TAIL_CHARS:] for name, path in
                                  (("relevent.log", state / "relevent.log"), ("thespian.log", state / "thespian.log"),
                                   ("runner output", site.log))}
    return record


def row(r: dict) -> str:
    def g(*path, fmt="{}"):
        x = r
        for p in path:
            x = x.get(p) if isinstance(x, dict) else None
        return "-" if x is None else fmt.format(x)
    lat = r.get("lateness") or {}
    seen = f"{lat['seen']}/{lat['expected']}" if "seen" in lat else "-"
    return " | ".join([
        f"{r['ders']:>5}", g("start", "serve_s", fmt="{:.2f}"), g("start", "running_s", fmt="{:.2f}"),
        g("memory", "total_mib", fmt="{:.0f}"), g("memory", "per_der_mib", fmt="{:.1f}"),
        f"{g('round_trips', 'write_rtt', 'p50_ms')}/{g('round_trips', 'write_rtt', 'p99_ms')}",
        f"{g('round_trips', 'enable_rtt', 'p50_ms')}/{g('round_trips', 'enable_rtt', 'p99_ms')}",
        "/".join(g("lateness", "lateness", q) for q in ("p50_ms", "p99_ms", "max_ms")), seen,
        g("restart", "stop_s", fmt="{:.2f}"), g("restart", "serve_s", fmt="{:.2f}"), g("restart", "survived"),
        f"{r['loadavg_before'][0]:.2f}", "ok" if r["ok"] else f"FAILED ({r.get('error', '')[:60]})"])


HEADER = ("ders | serve s | running s | PSS MiB | MiB/DER | write p50/p99 ms | enable p50/p99 ms | "
          "late p50/p99/max ms | seen | stop s | re-serve s | kept | load | result")


def marginal(records: list[dict]) -> list[dict]:
    done = sorted((r["ders"], r["memory"]["total_mib"]) for r in records if r.get("memory"))
    return [{"from": a, "to": b, "mib": round((mb - ma) / (b - a), 2)}
            for (a, ma), (b, mb) in pairwise(done) if b > a]


def machine() -> dict:
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
    return {"cpus": os.cpu_count(), "mem_total_mib": int(meminfo[1]) // MiB,
            "open_files_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
            "thespian_env": {k: v for k, v in os.environ.items() if k.startswith("THESPIAN_")},
            "python": sys.version.split()[0], "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def interrupted(_signum, _frame):
    """SIGTERM as Ctrl-C: the running size's site is killed on the way out."""
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ders", type=int, action="append", help="site size (repeatable); default 1 and 10")
    ap.add_argument("--writes", type=int, default=200, help="schedule set-ups for the round trips (c)")
    ap.add_argument("--entries", type=int, default=5, help="1 s entries per DER in the lateness run (d)")
    ap.add_argument("--lateness-ders", type=int, default=0, help="DERs in the lateness run, evenly spread; 0: all")
    ap.add_argument("--read-batch", type=int, default=READ_BATCH, help="names per read_many of the observer")
    ap.add_argument("--pause", type=float, default=0.001, help="observer pause between sweeps, s")
    ap.add_argument("--size-timeout", type=float, default=SIZE_TIMEOUT_S, help="s per size before it is killed")
    ap.add_argument("--mem-floor", type=int, default=MEM_FLOOR_MIB,
                    help="MiB: a size is killed when the machine's MemAvailable falls below this")
    ap.add_argument("--values", type=int, default=VALUES,
                    help="[[der]] values: value slots per schedule (the MMS model's size grows with it)")
    ap.add_argument("--mms-endpoints", type=int, default=1,
                    help="MMS endpoints, each serving a contiguous slice of the DERs ([[wan]] ders)")
    ap.add_argument("--ders-per-process", type=int, default=1,
                    help="[runtime] ders_per_process: DERs sharing a process (1: one process each)")
    ap.add_argument("--sample-s", type=float, default=5.0,
                    help="[runtime] sample_s: the runner's status sample for metrics and history (default 5 s)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not SETUP_ENTRIES <= args.values <= 100:
        ap.error(f"--values must be {SETUP_ENTRIES}..100 (a set-up writes {SETUP_ENTRIES} values)")
    if args.mms_endpoints < 1 or any(n < args.mms_endpoints for n in args.ders or [1, 10]):
        ap.error("--mms-endpoints must be 1..the smallest --ders (each endpoint serves at least one DER)")
    if not 1 <= args.entries < 1000:
        ap.error("--entries must be 1..999 (values encode the entry in the last 3 digits)")
    sizes = args.ders or [1, 10]
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # also when started in the background
    results: dict = {"machine": machine(), "functions": list(FUNCTIONS), "schedules_per_function": SCHEDULES + 1,
                     "values": args.values, "mms_endpoints": args.mms_endpoints,
                     "ders_per_process": args.ders_per_process, "sample_s": args.sample_s,
                     "writes": args.writes, "entries": args.entries, "sizes": []}
    progress = Progress(len(sizes), "scale_bench")
    limits = Limits()
    print(HEADER, flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
            for ders in sizes:
                record = run_size(ders, args, Path(tmp), progress, limits)
                results["sizes"].append(record)
                results["pss_marginal_per_der_mib"] = marginal(results["sizes"])
                progress.step(f"{ders} DERs done", ok=record["ok"])
                print(row(record), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if args.json and results["sizes"]:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"pss_marginal_per_der_mib": results.get("pss_marginal_per_der_mib", [])}))


if __name__ == "__main__":
    main()
