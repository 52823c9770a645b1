"""Runtime benchmark: restart time after faults of a leaf actor, and site start/stop time.

    .venv/bin/python bench/runtime_bench.py --kills 100 --cycles 20

Restart time is measured from the moment the fault is injected (kill -9 sent, or the
fault command acknowledged) to the moment the new incarnation reported Ready to its
supervisor (its `ready_at`, a wall-clock stamp taken in the supervisor process), so the
status polling does not add to it.  Start time is `relevent run` spawned -> every actor
of the site running; stop time is SIGTERM -> runner exited with no process left.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sitectl import Site, free_port, small_topology, walk  # noqa: E402

from relevent.progress import Progress  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def summary(values: list[float]) -> dict:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 1), "p99_ms": round(pct(ms, 99), 1),
            "max_ms": round(max(ms), 1), "mean_ms": round(statistics.mean(ms), 1)}


def restart_times(site: Site, kind: str, count: int, progress: Progress) -> list[float]:
    leaves = [n["path"] for n in walk(site.tree()) if n["role"] == "controller"]
    times = []
    for i in range(count):
        path = leaves[i % len(leaves)]
        progress.begin(f"{kind} {path}")
        old = site.node(path)["pid"]
        t0 = time.time()
        if kind == "kill9":
            os.kill(old, signal.SIGKILL)
        else:
            site.fault(path, kind)
        node = site.wait_for(path, lambda n: n["pid"] not in (None, old) and n["state"] == "running", 10)
        times.append(node["ready_at"] - t0)
        progress.step(f"{kind} {path}: running again after {times[-1] * 1000:.0f} ms")
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict = {"machine": f"{os.cpu_count()} cpus", "restart": {}, "lifecycle": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 4 DERs x 3 controllers = 12 leaves, killed in turn: each is hit once per 12 kills,
        # more than `period` apart, so no backoff applies.
        topo = tmp / "bench.toml"
        topo.write_text(small_topology(tmp / "state", free_port(), ders=4, schedules=10,
                                       functions=("ActPow", "MaxPow", "OnOff"),
                                       supervision="max_restarts = 100000\nperiod = 0.3\n"))
        counts = {kind: args.kills if kind != "hang" else max(10, args.kills // 5)
                  for kind in ("kill9", "segfault", "raise", "hang")}
        progress = Progress(sum(counts.values()) + args.cycles, "runtime_bench")
        progress.phase("starting the site")
        site = Site(topo, tmp / "state").start()
        try:
            for kind, n in counts.items():
                results["restart"][kind] = summary(restart_times(site, kind, n, progress))
                print(kind, results["restart"][kind], flush=True)
            results["restart"]["heartbeat"] = "interval 0.1 s, timeout 0.4 s"
        finally:
            site.stop()
            site.kill_everything()

        starts, stops, actors = [], [], 0
        for cycle in range(args.cycles):
            progress.begin(f"start and stop, cycle {cycle + 1}")
            t0 = time.monotonic()
            site.start()
            starts.append(time.monotonic() - t0)
            actors = sum(1 for _ in walk(site.tree()))
            t0 = time.monotonic()
            site.stop()
            stops.append(time.monotonic() - t0)
            assert not site.leftovers()
            progress.step(f"cycle {cycle + 1}: start {starts[-1]:.2f} s, stop {stops[-1] * 1000:.0f} ms")
        results["lifecycle"] = {"actors": actors, "start": summary(starts), "stop": summary(stops)}
        print("lifecycle", results["lifecycle"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
