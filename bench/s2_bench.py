"""S2: schedule boundary -> PEBC.Instruction at the device, through a running site.

    .venv/bin/python bench/s2_bench.py --entries 30          # ~40 s

A site (HTTP WAN in, the S2 endpoint as CEM, a heat_pump DER whose address is the RM's
resource id, the heat-pump simulator with `s2_url` as its resource manager: s2-python's own
RM side, relevent/simulators/heat_pump_s2.py) runs in its own processes.  One MaxPow
schedule, written over HTTP, alternates 5000 / 5500 W in 1 s entries on the half seconds
(as bench/heatpump_bench.py does for the power-limit register), so every boundary changes
the DER's command and the endpoint sends a new PEBC.Instruction.  The simulator logs
time_ns when s2-python hands it each instruction (its write log); lateness = that time
minus the entry's boundary: the schedule engine, the DER's controller, the endpoint, the
websocket, and s2-python's parsing on the RM's side.  Goal: p99 <= 20 ms.

Same clock on both ends (one machine), so no clock offset enters the figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lanctl import read_write_log  # noqa: E402
from sitectl import Site, free_port  # noqa: E402
from switch_bench import pct, summary  # noqa: E402
from relevent.clock import now_ms  # noqa: E402
from relevent.protocols.s2.mapping import iso_ms  # noqa: E402

GOAL_P99_MS = 20.0
RATED_W = 6000.0
LIMITS_W = (5000.0, 5500.0)     # alternating entries, both above the §14a floor (4200 W) and below the rating
WINDOW_MS = (-500, 1000)        # an instruction counts for a boundary when it arrives this close to it


def topology(state: Path, ports: dict, log: Path, rid: str) -> str:
    return f"""[site]
name = "s2bench"
state_dir = "{state}"
[runtime]
admin_port = {ports['admin']}
[[wan]]
name = "http"
protocol = "http"
port = {ports['http']}
party = "aggregator"
[[der]]
name = "hp1"
type = "heat_pump"
functions = ["MaxPow", "OnOff"]
schedules = 1
lan = "s2"
address = "{rid}"
rated_power_w = {RATED_W}
reserve = {{ MaxPow = {RATED_W}, OnOff = true }}
[[lan]]
name = "s2"
protocol = "s2"
port = {ports['s2']}
[[simulator]]
name = "heatpump"
protocol = "heat-pump"
port = {ports['modbus']}
rated_w = {RATED_W}
min_run_s = 0
min_off_s = 0
s2_url = "ws://127.0.0.1:{ports['s2']}/s2/{rid}"
write_log = "{log}"
"""


def instructions(log: Path) -> list[tuple[float, float]]:
    """(arrival ms, upper limit W) of every PEBC.Instruction the simulator logged."""
    return [(w["t_ns"] / 1e6, w["upper_w"]) for w in read_write_log(log) if w.get("s2") == "PEBC.Instruction"]


def arrivals(got: list[tuple[float, float]], expected: list[float], boundaries: list[int]) -> tuple[list[float], int]:
    """Lateness (ms) of the first instruction of each boundary's value within WINDOW_MS of
    it, and how many of those came before their boundary."""
    late, early = [], 0
    for value, boundary in zip(expected, boundaries):
        hits = [t - boundary for t, upper in got if upper == value and WINDOW_MS[0] < t - boundary < WINDOW_MS[1]]
        if hits:
            late.append(hits[0])
            early += hits[0] < 0
    return late, early


def run(entries: int, keep: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="s2-bench-") as tmp:
        tmp = Path(keep or tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        ports = {k: free_port() for k in ("admin", "http", "s2", "modbus")}
        log, topo = tmp / "writes.jsonl", tmp / "s2.toml"
        topo.write_text(topology(tmp / "state", ports, log, str(uuid.uuid4())))
        site = Site(topo, tmp / "state").start()
        try:
            deadline = time.monotonic() + 15
            while not instructions(log):       # the RM connected and got the reserve's envelope
                assert time.monotonic() < deadline, f"no PEBC.Instruction at the simulator; see {site.log}"
                time.sleep(0.05)
            limits = [LIMITS_W[i % 2] for i in range(entries)]
            start = (now_ms() // 1000 + 3) * 1000 + 500
            with httpx.Client(base_url=f"http://127.0.0.1:{ports['http']}", timeout=15) as http:
                r = http.put("/api/v1/ders/hp1/MaxPow/schedules/1",
                             json={"values": limits, "interval_s": 1, "priority": 20, "start": iso_ms(start)})
                assert r.status_code == 200, r.text
                r = http.post("/api/v1/ders/hp1/MaxPow/schedules/1/enable")
                assert r.status_code == 200, r.text
            time.sleep((start + entries * 1000 + 1500 - now_ms()) / 1000)
            endpoint = site.node("s2")["detail"]["devices"]["hp1"]
        finally:
            site.stop()
            site.kill_everything()
        late, early = arrivals(instructions(log), limits, [start + i * 1000 for i in range(entries)])
    result = {"entries": entries, "boundary_to_pebc_instruction_at_the_device": {**summary(late),
                                                                                   "p90_ms": round(pct(late, 90), 2)}
              if late else {"n": 0}, "missing": entries - len(late), "early": early,
              "endpoint_instruction_rtt_ms": endpoint.get("instruction_rtt_ms"),
              "goal_p99_ms": GOAL_P99_MS}
    result["goal_met"] = bool(late) and result["missing"] == 0 and pct(late, 99) <= GOAL_P99_MS
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=30, help="1 s entries in the schedule (max 100)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--keep", help="a directory for the site's files (its log, the write log), kept afterwards")
    args = ap.parse_args()
    t0 = time.monotonic()
    result = run(min(args.entries, 100), args.keep)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
