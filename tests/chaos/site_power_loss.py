"""Kill a whole site (runner and every actor, SIGKILL) at random points while a client
enables and disables schedules over MMS, start it again, and check that every answered
enable or disable is what the site shows.  Used by tests/chaos/test_power_loss.py (a few
cycles) and bench/power_loss_bench.py (the long run).

Two ways to pick the moment: at a random time (`instant=False`), or in the instant after
a positive answer (`instant=True`: the client thread kills the whole site as soon as its
k-th operation of the cycle is answered, k random in 1..5), the moment that shows whether
an answer really waits until the change is durable."""
from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from relevent.protocols.mms.client import ScheduleClient, Target
from relevent.topology import load_topology
from relevent.runtime.runner import group_processes
from sitectl import Site, free_port, small_topology, until

LD = "DER_Scheduler_Control"
SCHEDULES = 3
READY_OR_RUNNING = (3, 4)
NOT_READY = 1


def _kill_site(site: Site) -> None:
    info = json.loads((site.state_dir / "relevent.pid").read_text())
    for pid in (info["runner"],):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(info["admin_pgid"], signal.SIGKILL)
    except (ProcessLookupError, TypeError):
        pass
    if site.proc is not None:
        site.proc.wait()
        site.proc = None
    # SIGKILL is delivered at once but a process exits (and frees the admin port) when it
    # next runs: on a loaded machine the next start found the port still held.  Power comes
    # back only once every process of the site is gone.
    if info.get("admin_pgid"):
        until(lambda: not group_processes(info["admin_pgid"]), "the killed site's processes gone", timeout=20,
              every=0.01)


def power_loss_cycles(workdir: Path, cycles: int, seed: int = 5, say=lambda text: None, progress=None,
                      instant: bool = False) -> dict:
    """`progress`: a relevent.progress.Progress told of each cycle (the benchmark's);
    `instant`: kill in the instant after an answer (module doc)."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    state = workdir / "state"
    topo = workdir / "power.toml"
    topo.write_text(small_topology(state, free_port(), schedules=SCHEDULES, functions=("ActPow",)))
    mms_port = load_topology(topo).data["wan"][0]["port"]
    site = Site(topo, state)
    stats = {"cycles": 0, "answered": 0, "lost": 0, "failed_starts": 0, "in_flight_either_way": 0}
    expected: dict[int, str] = {}  # schedule -> last answered op
    for cycle in range(cycles + 1):  # the extra round only checks the last kill
        last = cycle == cycles
        try:
            site.start(timeout=60)
        except Exception as exc:  # noqa: BLE001 - a state the site cannot start from is the failure
            stats["failed_starts"] += 1
            say(f"cycle {cycle}: site did not start: {exc}")
            site.kill_everything()
            break
        client = ScheduleClient(Target("127.0.0.1", mms_port, LD))
        # What the site shows after the restart must match every answered operation.
        for n, op in expected.items():
            st = client.show("ActPow", str(n))["SchdSt"]
            if (op == "enable" and st not in READY_OR_RUNNING) or (op == "disable" and st != NOT_READY):
                stats["lost"] += 1
                say(f"cycle {cycle}: FSCH{n:02d} last answered {op}, shows SchdSt {st}")
        if last:
            client.close()
            site.stop()
            break
        stats["cycles"] += 1
        killer = threading.Timer(rng.uniform(0.05, 1.0) if not instant else 3600.0, _kill_site, args=(site,))
        killer.start()
        answers_left = rng.randint(1, 5)
        in_flight: tuple | None = None
        try:
            while killer.is_alive():
                n = rng.randrange(1, SCHEDULES + 1)
                op = rng.choice(["enable", "disable"])
                in_flight = (n, op)
                if op == "enable":
                    start = datetime.fromtimestamp(time.time() + 3600, tz=timezone.utc)
                    if client.write("ActPow", str(n), [rng.uniform(0, 9000)], 600, start, 20 + n):
                        break
                if client.operate("ActPow", str(n), op == "enable") is None:
                    expected[n] = op       # answered positively: must survive the kill
                    stats["answered"] += 1
                    answers_left -= 1
                in_flight = None
                if instant and answers_left == 0:
                    killer.cancel()
                    _kill_site(site)       # the instant after the answer
                    stats["killed_after_answer"] = stats.get("killed_after_answer", 0) + 1
                    break
        except Exception:  # noqa: BLE001 - the site died under the client
            pass
        killer.join()
        if in_flight is not None:
            expected.pop(in_flight[0], None)  # unanswered: either outcome is right
            stats["in_flight_either_way"] += 1
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass
        if progress is not None:
            progress.step(f"site kill {cycle + 1}: {stats['answered']} answered, {stats['lost']} lost")
        elif cycle % 10 == 9:
            say(f"{cycle + 1} cycles: {stats}")
    site.kill_everything()
    return stats
