"""OpenADR VEN: how long from an event at the VTN to the schedule armed, and the memory the
endpoint adds.  openleadr's OpenADRServer (the VTN) runs in this process; the site runs
`relevent run` with an openadr endpoint (polling every second) and, for comparison, an idle
http endpoint, an embedded broker and a simulated device.

    .venv/bin/python bench/openadr_bench.py               # 20 events, about 40 s
    .venv/bin/python bench/openadr_bench.py --events 10 --out bench/results-openadr.json

Per event: `to_opt_in` = add_event at the VTN -> the VEN's optIn received by the VTN (the
VEN opts in only once the schedule is written and its enable durable: armed); it includes
the wait for the VEN's next poll (0..1 s).  `ven` = the VTN handing the event out in a poll
answer -> the optIn: the VEN's own part (parse, write, enable through the controller, the
oadrCreatedEvent request).  Memory: PSS and USS (private pages) of the endpoint's actor
process, beside the http endpoint's, after the events (reports flowing).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from openleadr import OpenADRServer  # noqa: E402
from sitectl import Site, free_port, walk  # noqa: E402

logging.getLogger("openleadr").setLevel(logging.WARNING)
VEN = "ven-bench"


class Vtn:
    def __init__(self, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = port
        self.delivered: dict[str, float] = {}
        self.opted: dict[str, tuple[float, str]] = {}
        self.reports = 0
        self.server: OpenADRServer | None = None
        self.call(self._serve())

    def call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _serve(self) -> None:
        self.server = OpenADRServer(vtn_id="BENCH_VTN", http_host="127.0.0.1", http_port=self.port,
                                    requested_poll_freq=timedelta(seconds=1), show_fingerprint=False,
                                    ven_lookup=lambda ven_id: {"ven_id": ven_id, "registration_id": "reg-1"})
        self.server.add_handler("on_create_party_registration", lambda info: (f"ven-{info['ven_name']}", "reg-1"))
        self.server.add_handler("on_register_report", self._offer)
        with contextlib.redirect_stdout(io.StringIO()):   # openleadr prints a banner
            await self.server.run()

    def _offer(self, ven_id, resource_id, measurement, unit, scale, min_sampling_interval, max_sampling_interval):
        return self._report, timedelta(seconds=1)

    def _report(self, values) -> None:
        self.reports += len(values)

    def event(self, start: datetime) -> tuple[str, float]:
        async def add() -> tuple[str, float]:
            event_id = f"ev-{len(self.opted) + len(self.delivered)}-{random.randrange(1 << 30)}"
            t0 = time.monotonic()
            self.server.add_event(
                ven_id=VEN, signal_name="LOAD_CONTROL", signal_type="x-loadControlCapacity", event_id=event_id,
                intervals=[{"dtstart": start, "duration": timedelta(seconds=1), "signal_payload": 4000.0}],
                callback=lambda ven_id, event_id, opt_type: self.opted.setdefault(event_id, (time.monotonic(),
                                                                                              opt_type)),
                delivery_callback=lambda: self.delivered.setdefault(event_id, time.monotonic()))
            return event_id, t0
        return self.call(add())

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)


def topology(state: Path, admin: int, vtn: int, broker: int, http: int) -> str:
    return f"""
[site]
name = "oadrbench{admin}"
state_dir = "{state}"
[runtime]
admin_port = {admin}
[[wan]]
name = "openadr"
protocol = "openadr"
vtn_url = "http://127.0.0.1:{vtn}/OpenADR2/Simple/2.0b"
ven_name = "bench"
schedules = [1, 2, 3, 4, 5, 6, 7, 8]   # events overlap: each holds one until it ends
[[wan]]
name = "http"
protocol = "http"
port = {http}
[[der]]
name = "der1"
functions = ["MaxPow"]
schedules = 8
lan = "mqtt"
rated_power_w = 10000
reserve = {{ MaxPow = 10000.0 }}
[[lan]]
name = "mqtt"
protocol = "mqtt"
port = {broker}
embedded_broker = true
reconnect_delay = 0.2
[[simulator]]
name = "device"
protocol = "mqtt-device"
port = {broker}
der = "der1"
rated_power_w = 10000.0
"""


def memory_kb(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
            out[key] = int(rest.split()[0])
    return {"rss": out["Rss"], "pss": out["Pss"], "uss": out["Private_Clean"] + out["Private_Dirty"]}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    vtn = Vtn(free_port())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "bench.toml"
        path.write_text(topology(tmp / "state", free_port(), vtn.port, free_port(), free_port()))
        site = Site(path, tmp / "state")
        try:
            site.start(timeout=60)
            site.wait_for("openadr", lambda n: n["detail"]["registered"], timeout=20)
            rows = []
            for _ in range(args.events):
                start = datetime.fromtimestamp(int(time.time()) + 4, tz=timezone.utc)
                event_id, t0 = vtn.event(start)
                deadline = time.monotonic() + 10
                while event_id not in vtn.opted and time.monotonic() < deadline:
                    time.sleep(0.002)
                t_opt, opt = vtn.opted.get(event_id, (None, "none"))
                if t_opt is None or event_id not in vtn.delivered:
                    rows.append({"event": event_id, "opt": opt})
                    continue
                rows.append({"event": event_id, "opt": opt, "to_opt_in_ms": (t_opt - t0) * 1000,
                             "ven_ms": (t_opt - vtn.delivered[event_id]) * 1000})
                time.sleep(random.uniform(0.2, 1.2))   # the next event lands at another phase of the poll
            pids = {n["path"]: n["pid"] for n in walk(site.tree())}
            mem = {name: memory_kb(pids[name]) for name in ("openadr", "http")}
            detail = site.node("openadr")["detail"]
        finally:
            site.stop()
            site.kill_everything()
            vtn.close()
    ok = [r for r in rows if r["opt"] == "optIn" and "ven_ms" in r]
    to_opt, ven = [r["to_opt_in_ms"] for r in ok], [r["ven_ms"] for r in ok]
    result = {
        "events": len(rows), "opted_in": len(ok),
        "to_opt_in_ms": {"p50": statistics.median(to_opt), "p90": pct(to_opt, 90), "max": max(to_opt)} if ok else None,
        "ven_ms": {"p50": statistics.median(ven), "p90": pct(ven, 90), "max": max(ven)} if ok else None,
        "memory_kb": mem, "adds_uss_kb_vs_http": mem["openadr"]["uss"] - mem["http"]["uss"],
        "reports_received": vtn.reports, "ven_polls": detail["polls"],
    }
    print(f"events {result['events']}, opted in {result['opted_in']}, reports at the VTN {vtn.reports}")
    if detail.get("last_opt_out"):
        print(f"last opt-out: {detail['last_opt_out']['reason']}")
    if ok:
        print("event -> armed (optIn at the VTN), incl. poll wait: p50 {p50:.0f} ms  p90 {p90:.0f} ms  max {max:.0f} ms"
              .format(**result["to_opt_in_ms"]))
        print("the VEN's part (handed out in a poll -> optIn):      p50 {p50:.1f} ms  p90 {p90:.1f} ms  max {max:.1f} ms"
              .format(**result["ven_ms"]))
    for name, m in mem.items():
        print(f"{name:8} endpoint process: RSS {m['rss'] / 1024:.1f} MiB  PSS {m['pss'] / 1024:.1f} MiB  "
              f"USS {m['uss'] / 1024:.1f} MiB")
    print(f"the openadr endpoint's private memory minus the http endpoint's: {result['adds_uss_kb_vs_http'] / 1024:+.1f} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, **result}, indent=1) + "\n")


if __name__ == "__main__":
    main()
