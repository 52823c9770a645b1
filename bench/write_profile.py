"""Where a schedule write's round trip goes at 100 DERs: a profile of the client's wait.

    .venv/bin/python bench/write_profile.py --ders 100 --json bench/results-write-profile.json
    .venv/bin/python bench/write_profile.py --ders 10 --writes 100 --heartbeat 0.5
    .venv/bin/python bench/write_profile.py --ders 100 --ders-per-process 50

One site per --heartbeat value (s; default 0.5, what scale_bench.py uses up to 100 DERs, and
5), built as scale_bench.py builds it (N DERs of 3 functions x 11 schedules of 100 values,
`controller_isolation = "der"`, `ders_per_process` from --ders-per-process, one MMS
endpoint, no LAN).  Once every actor runs, for each
of --writes set-ups spread over the DERs (scale_bench's slots), the client (open61850, this
process, loopback) times, in turn:

* read13: a read of the 13 names a set-up writes (NumEntr, SchdIntv, SchdPrio and 10
  values): libiec61850 answers it from the model, no Python runs in the endpoint;
* write13: scale_bench's set-up write, the same 13 names: libiec61850 calls the endpoint's
  write handler once per name, and each call is the control session's `write` (the mirror's
  copy, policy, the core's checks, the audit append) and the handler's own work;
* write1: SchdPrio alone (one handler call);

then waits --pause s (0: the next set-up at once, as scale_bench.py times them).

A write is answered by the endpoint once its session accepted it (relevent/wan/session.py
`write`): no DER is on the round trip; the DERs and controllers share the cores with it.

During the timed set-ups, when `perf` is there and this runs as root, `perf sched record -a`
records every context switch of the machine; `perf sched timehist` gives, for each time a
thread ran, how long it had waited for a core after its wake-up (the scheduling delay).
Those are grouped by what the thread belongs to: the MMS endpoint's process, the DER
processes, this client, the rest of the site (runner, thespian's admin and logger, the site
supervisor), anything else.  /proc gives each group's CPU over the same window.  The site's
CPU use with no client (scale_bench.idle_cpu) comes first.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_bench as sb  # noqa: E402  (also puts tests/ on the path)
from open61850.data import IntData  # noqa: E402

from mmsclients import mms_name  # noqa: E402
from sitectl import Site  # noqa: E402
from switch_bench import summary  # noqa: E402

from relevent.progress import Progress  # noqa: E402

HEARTBEATS = (0.5, 5.0)     # s: heartbeat_interval of each site, by default
WRITES = 300                # set-ups timed per site
PERF_START_S = 1.0          # s: perf's start-up before the first timed set-up
# One line of `perf sched timehist`: ... task[tid] or task[tid/pid], wait, scheduling delay, run (ms).
TIMEHIST = re.compile(r"\[(\d+)(?:/\d+)?\]\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s*$")


def names_of(ref: str) -> list[str]:
    """The 13 names a set-up writes (scale_bench.set_up_write), ActPow or MaxPow."""
    names = [mms_name(f"{ref}.{n}", "SP") for n in ("NumEntr.setVal", "SchdIntv.setVal", "SchdPrio.setVal")]
    return names + [mms_name(f"{ref}.ValASG{k + 1:03d}.setMag.f", "SP") for k in range(sb.SETUP_ENTRIES)]


def groups(site: Site) -> dict[int, str]:
    """Thread id -> group, for every thread of the site's processes and of this one."""
    roles = sb.process_roles(site.tree())
    out = {}
    for pid in site.leftovers() + [site.proc.pid, os.getpid()]:
        group = "client" if pid == os.getpid() else {"wan": "mms endpoint", "der": "der processes"}.get(
            roles.get(pid, "rest"), "rest of the site")
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                out[int(tid)] = group
        except OSError:
            continue
    return out


def cpu_by_group(pids_groups: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, group in pids_groups.items():
        try:
            out[group] = out.get(group, 0.0) + sb.cpu_s(pid)
        except (OSError, IndexError):
            continue
    return out


def perf_available() -> bool:
    return shutil.which("perf") is not None and os.geteuid() == 0


def scheduling_delays(data: Path, tids: dict[int, str]) -> dict:
    """Per group: the scheduling delays (ms) of its threads' runs, and their run time."""
    out = subprocess.run(["perf", "sched", "timehist", "-i", str(data)], capture_output=True, text=True,
                         check=True).stdout
    delays: dict[str, list[float]] = {}
    run_ms: dict[str, float] = {}
    for line in out.splitlines():
        m = TIMEHIST.search(line)
        if not m:
            continue
        tid, _wait, delay, run = int(m.group(1)), *map(float, m.group(2, 3, 4))
        if tid == 0:
            continue   # idle
        group = tids.get(tid, "other")
        delays.setdefault(group, []).append(delay)
        run_ms[group] = run_ms.get(group, 0.0) + run
    return {g: {"runs": len(d), "delay": summary(d), "run_ms": round(run_ms[g], 1)} for g, d in delays.items()}


def timed_set_ups(clients: sb.Clients, lds: list[str], writes: int, pause: float) -> dict:
    times: dict[str, list[float]] = {"read13": [], "write13": [], "write1": []}
    errors = []
    ders = len(lds)
    for j in range(writes):
        der, kind, schedule = sb.set_up_slot(j, ders, writes)
        if kind == "OnOff":
            kind = "ActPow"   # float values: the same 13 names for every set-up
        ref, c = sb.fsch(lds[der], kind, schedule), clients.of(der)
        names = names_of(ref)
        t = time.perf_counter()
        c.read_many(names)
        times["read13"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        errors += sb.set_up_write(c, ref, False, sb.SETUP_ENTRIES, sb.PRIORITY,
                                  [100.0 * (j % 50) + k for k in range(sb.SETUP_ENTRIES)])
        times["write13"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        errors += [e for e in c.write_many([names[2]], [IntData(sb.PRIORITY + 1 + j % 5)]) if e is not None]
        times["write1"].append((time.perf_counter() - t) * 1000)
        if pause:
            time.sleep(pause)
    return {k: summary(v) for k, v in times.items()} | {"errors": len(errors), "first_errors": [str(e) for e in errors[:5]]}


def run_site(ders: int, heartbeat: float, writes: int, per_process: int, pause: float, tmp: Path,
             progress: Progress) -> dict:
    base = sb.Supervision.for_ders(ders)
    sup = sb.Supervision(heartbeat, max(base.heartbeat_timeout, 4 * heartbeat), base.startup_timeout)
    state, layout = tmp / f"state-{ders}-{heartbeat:g}", sb.Layout(ders, 1)
    topo = tmp / f"profile-{ders}-{heartbeat:g}.toml"
    topo.write_text(sb.topology(state, ders, layout, sup, ders_per_process=per_process))
    site = Site(topo, state)
    record: dict = {"ders": ders, "heartbeat_interval_s": heartbeat, "ders_per_process": per_process, "pause_s": pause,
                    "loadavg_before": list(os.getloadavg())}
    try:
        progress.phase(f"{ders} DERs, heartbeat {heartbeat:g} s: starting")
        first, clients = sb.start(site, layout, progress)
        record["serve_s"], record["restarts"] = first.serve_s, first.restarts
        try:
            record["idle_cpu"] = sb.idle_cpu(site)
            tids = groups(site)
            pids = {pid: g for pid, g in ((p, tids.get(p)) for p in site.leftovers() + [site.proc.pid, os.getpid()])
                    if g}
            perf = None
            data = tmp / f"perf-{ders}-{heartbeat:g}.data"
            if perf_available():
                perf = subprocess.Popen(["perf", "sched", "record", "-a", "-o", str(data)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(PERF_START_S)
            progress.phase(f"{ders} DERs, heartbeat {heartbeat:g} s: {writes} set-ups")
            cpu0, t0 = cpu_by_group(pids), time.monotonic()
            record["round_trips"] = timed_set_ups(clients, layout.lds, writes, pause)
            cpu1, window = cpu_by_group(pids), time.monotonic() - t0
            record["window_s"] = round(window, 2)
            record["cores_by_group"] = {g: round((cpu1[g] - cpu0.get(g, 0.0)) / window, 3) for g in cpu1}
            if perf is not None:
                perf.send_signal(signal.SIGINT)
                perf.wait(timeout=60)
                record["scheduling_delay_ms"] = scheduling_delays(data, tids)
                data.unlink(missing_ok=True)
        finally:
            clients.close()
        record["exit_code"] = site.stop(timeout=sb.STOP_WAIT_S)
        record["ok"] = True
    except Exception as exc:  # recorded; the next site runs
        record["ok"], record["error"] = False, f"{type(exc).__name__}: {exc}"
    finally:
        site.kill_everything()
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ders", type=int, default=100)
    ap.add_argument("--writes", type=int, default=WRITES)
    ap.add_argument("--heartbeat", type=float, action="append", help="s, repeatable; default 0.5 and 5")
    ap.add_argument("--ders-per-process", type=int, default=1, help="[runtime] ders_per_process")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="s between two set-ups (0: back to back, as scale_bench.py times them)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    heartbeats = args.heartbeat or list(HEARTBEATS)
    results = {"machine": sb.machine(), "perf": perf_available(), "sites": []}
    progress = Progress(len(heartbeats), "write_profile")
    with tempfile.TemporaryDirectory(prefix="write-profile-") as tmp:
        for heartbeat in heartbeats:
            record = run_site(args.ders, heartbeat, args.writes, args.ders_per_process, args.pause, Path(tmp),
                              progress)
            results["sites"].append(record)
            progress.step(f"heartbeat {heartbeat:g} s done", ok=record["ok"])
            print(json.dumps(record, indent=1), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
