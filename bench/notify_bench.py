"""Start to READY=1 and stop time, as systemd sees them (Type=notify).

    .venv/bin/python bench/notify_bench.py --ders 1 --ders 10 --runs 3 --json bench/results-notify.json

Each run spawns `relevent run` with NOTIFY_SOCKET set to a datagram socket this script binds
(and WATCHDOG_USEC, as under WatchdogSec=30), and measures on this script's monotonic clock:

* start to READY: spawn -> the datagram with READY=1 (every WAN endpoint serves).
* READY to MMS connect: a TCP connect to the MMS port right after READY (it must succeed).
* stop: SIGTERM -> STOPPING=1 datagram, and SIGTERM -> the runner exited (its actors are gone
  by then: the runner waits for them).

The site: one MMS endpoint, N DERs with ActPow and OnOff (2 schedules each), one MQTT LAN
endpoint (tests/sitectl.py small_topology), one process per actor unless --isolation der.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sitectl import REPO, free_port, small_topology  # noqa: E402

from relevent.progress import Progress  # noqa: E402
from relevent.runtime.runner import group_processes  # noqa: E402


def one_run(ders: int, isolation: str, timeout: float, heartbeat: str = "") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        state = tmp / "state"
        topology = tmp / "site.toml"
        runtime = f'controller_isolation = "{isolation}"\n'
        supervision = "startup_timeout = 60.0\n"
        if heartbeat:  # small_topology's 0.1/0.4 s is for tests; per level, as a site would set it
            interval, hb_timeout = heartbeat.split(",")
            supervision += "".join(f"[supervision.{level}]\nheartbeat_interval = {interval}\n"
                                   f"heartbeat_timeout = {hb_timeout}\n" for level in ("site", "der", "controller"))
        topology.write_text(small_topology(state, free_port(), ders=ders, runtime=runtime, supervision=supervision))
        from relevent.topology import load_topology
        mms_port = load_topology(topology).data["wan"][0]["port"]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(tmp / "notify"))
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp / "notify"), "WATCHDOG_USEC": "30000000"}
        out = open(tmp / "run.out", "wb")
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "relevent", "run", str(topology)], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)

        def wait_for(field: str) -> float:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = sock.recv(4096).decode()
                except socket.timeout:
                    break
                if field in data.split("\n"):
                    return time.monotonic()
            raise RuntimeError(f"no {field} within {timeout} s:\n{(tmp / 'run.out').read_text()[-2000:]}")

        pgid = None
        try:
            ready = wait_for("READY=1")
            with socket.create_connection(("127.0.0.1", mms_port), timeout=5):
                connected = time.monotonic()
            pgid = json.loads((state / "relevent.pid").read_text())["admin_pgid"]
            time.sleep(1.0)
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            stopping = wait_for("STOPPING=1")
            code = proc.wait(timeout)
            exited = time.monotonic()
            left = group_processes(pgid) if pgid else []
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if pgid and group_processes(pgid):
                os.killpg(pgid, signal.SIGKILL)
            sock.close()
            out.close()
        return {"start_to_ready_s": round(ready - t0, 3), "ready_to_mms_connect_ms": round((connected - ready) * 1000, 1),
                "sigterm_to_stopping_ms": round((stopping - t_term) * 1000, 1),
                "stop_s": round(exited - t_term, 3), "exit_code": code, "left_behind": left}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ders", type=int, action="append", help="DER counts (repeatable; default 1 and 10)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--isolation", choices=("process", "der"), default="process")
    ap.add_argument("--timeout", type=float, default=50.0, help="seconds per phase")
    ap.add_argument("--heartbeat", default="", help="INTERVAL,TIMEOUT seconds for every level (default: the "
                                                    "test topology's 0.1,0.4)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = {}
    sizes = args.ders or [1, 10]
    progress = Progress(len(sizes) * args.runs, "notify_bench")
    for ders in sizes:
        runs = []
        for run in range(args.runs):
            progress.begin(f"{ders} DERs, run {run + 1}")
            runs.append(one_run(ders, args.isolation, args.timeout, args.heartbeat))
            progress.step(f"{ders} DERs, run {run + 1}: READY after {runs[-1]['start_to_ready_s']:.2f} s")
        ready = [r["start_to_ready_s"] for r in runs]
        stop = [r["stop_s"] for r in runs]
        results[f"{ders}"] = {"isolation": args.isolation, "runs": runs,
                              "start_to_ready_s": {"median": statistics.median(ready), "max": max(ready)},
                              "stop_s": {"median": statistics.median(stop), "max": max(stop)}}
        print(f"{ders:>4} DERs ({args.isolation}): start->READY median {statistics.median(ready):.2f} s "
              f"(max {max(ready):.2f}); stop median {statistics.median(stop):.3f} s (max {max(stop):.3f}); "
              f"READY->MMS connect {max(r['ready_to_mms_connect_ms'] for r in runs):.1f} ms max; "
              f"left behind {sum(len(r['left_behind']) for r in runs)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
