"""Switch lateness at the actuator, seen by an MMS client in a separate process.

    .venv/bin/python bench/switch_bench.py --ders 1 --entries 60
    .venv/bin/python bench/switch_bench.py --ders 100 --entries 20

Every DER gets one ActPow schedule with 1 s entries of distinct values, all starting on
the same whole second.  The observer (this process; the site runs in its own processes)
reads every DER's ActPow_GGIO1.AnOut1.mxVal.f in one MMS request (open61850 read_many),
as fast as it can, and notes when each new value first appears.  Lateness = first sight
minus the entry boundary; it includes up to one observer sweep plus its pause between
sweeps (--pause, 1 ms by default), which keeps the observer from taking a core from the site.  Also measured:
write (one request setting up a schedule) and operate (EnaReq) round trips seen by the client.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import open61850.mms as o61850  # noqa: E402
from open61850.data import FloatData, IntData, TimestampData  # noqa: E402

from mmsclients import mms_name  # noqa: E402
from sitectl import Site, free_port, walk  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2), "mean_ms": round(statistics.mean(ms), 2)}


def topology(state: Path, ders: int, mms_port: int, heartbeat: float = 1.0, isolation: str = "process",
             nice: int | None = None, serve_nice: int | None = None) -> str:
    der_tables = "".join(f'\n[[der]]\nname = "d{i:03d}"\nfunctions = ["ActPow"]\nschedules = 1\n'
                         for i in range(ders))
    return f"""[site]
name = "switchbench"
state_dir = "{state}"
[runtime]
admin_port = {free_port()}
{"" if isolation == "process" else f'controller_isolation = "{isolation}"'}
[supervision]
heartbeat_interval = {heartbeat}
heartbeat_timeout = {max(5.0, heartbeat * 3)}
startup_timeout = 60.0
[[wan]]
name = "mms"
protocol = "mms"
port = {mms_port}
{"" if nice is None else f"switch_nice = {nice}"}
{"" if serve_nice is None else f"serve_nice = {serve_nice}"}
{der_tables}"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ders", type=int, default=1)
    ap.add_argument("--entries", type=int, default=60)
    ap.add_argument("--heartbeat", type=float, default=1.0, help="supervision heartbeat interval, s")
    ap.add_argument("--pause", type=float, default=0.001, help="observer pause between sweeps, s")
    ap.add_argument("--observer-nice", type=int, default=0,
                    help="the observer's priority while it observes (a client on another host is not "
                         "starved by the site's load; at -20, on these 2 cores, it starved the site's "
                         "heartbeats: DERs were killed as hung)")
    ap.add_argument("--switch-nice", type=int, help="the MMS endpoint's switch_nice (default: its default, -20)")
    ap.add_argument("--serve-nice", type=int, help="the MMS endpoint's serve_nice (default: its default, 0)")
    ap.add_argument("--isolation", choices=("process", "der"), default="process",
                    help="[runtime] controller_isolation")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep-log", type=Path, help="copy the site's relevent.log here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        port = free_port()
        (tmp / "site.toml").write_text(topology(tmp / "state", args.ders, port, args.heartbeat, args.isolation,
                                                args.switch_nice, args.serve_nice))
        site = Site(tmp / "site.toml", tmp / "state").start(timeout=600)
        try:
            result = run(site, port, args)
        finally:
            site.stop(timeout=120)
            site.kill_everything()
            if args.keep_log:
                shutil.copy(tmp / "state" / "relevent.log", args.keep_log)
                if (tmp / "state" / "thespian.log").exists():
                    shutil.copy(tmp / "state" / "thespian.log", args.keep_log.with_suffix(".thespian.log"))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def run(site: Site, port: int, args) -> dict:
    lds = [("Control" if args.ders == 1 else f"d{i:03d}Control") for i in range(args.ders)]
    c = o61850.MmsClient.connect("127.0.0.1", port, timeout=30)
    writes, operates = [], []
    try:
        for i, ld in enumerate(lds):  # one write request per DER: entries, interval, priority, values
            ref = f"DER_Scheduler_{ld}/ActPow_FSCH01"
            names = [mms_name(f"{ref}.{n}", "SP") for n in ("NumEntr.setVal", "SchdIntv.setVal", "SchdPrio.setVal")]
            data = [IntData(args.entries), IntData(1), IntData(20)]
            names += [mms_name(f"{ref}.ValASG{k + 1:03d}.setMag.f", "SP") for k in range(args.entries)]
            data += [FloatData(1000.0 * (i + 1) + k) for k in range(args.entries)]
            start = time.perf_counter()
            assert not any(c.write_many(names, data))
            writes.append((time.perf_counter() - start) * 1000)
        t0 = (int(time.time()) + 3 + args.ders // 5) * 1000  # lead: ~0.2 s per DER to set up
        start_time = TimestampData(datetime.fromtimestamp(t0 / 1000, tz=timezone.utc))
        for ld in lds:
            ref = f"DER_Scheduler_{ld}/ActPow_FSCH01"
            c.write(mms_name(f"{ref}.StrTm01.setTm", "SP"), start_time)
            start = time.perf_counter()
            o61850.operate(c, f"{ref}.EnaReq", True, ctl_model=1)
            operates.append((time.perf_counter() - start) * 1000)
        if time.time() * 1000 > t0 - 300:
            raise RuntimeError("set-up took longer than the lead time; raise it")
        # Only the observation runs at the observer's priority (the site, started before,
        # does not inherit it; the set-up above measures round trips at the default one).
        os.setpriority(os.PRIO_PROCESS, 0, args.observer_nice)
        names = [mms_name(f"DER_Scheduler_{ld}/ActPow_GGIO1.AnOut1.mxVal.f", "MX") for ld in lds]
        seen: dict[tuple, float] = {}
        sweeps = []
        end = t0 + args.entries * 1000 + 300
        while time.time() * 1000 < end:
            s0 = time.time() * 1000
            values = c.read_many(names)
            s1 = time.time() * 1000
            sweeps.append(s1 - s0)
            time.sleep(args.pause)  # leave the CPU to the site: 2 cores
            for i, v in enumerate(values):
                value = getattr(v, "value", None)
                if value is None:
                    continue
                k = round(value - 1000.0 * (i + 1))
                if 0 <= k < args.entries and (i, k) not in seen:
                    seen[(i, k)] = s1
        lateness = [seen[(i, k)] - (t0 + k * 1000) for (i, k) in seen]
        per_entry = [round(max([seen[(i, k)] - (t0 + k * 1000) for i in range(args.ders) if (i, k) in seen],
                               default=float("nan")), 1) for k in range(args.entries)]
        missing = args.ders * args.entries - len(seen)
        early = [x for x in lateness if x < 0]
    finally:
        c.close()
    return {"ders": args.ders, "observer_pause_ms": args.pause * 1000, "observer_nice": args.observer_nice,
            "controller_isolation": args.isolation, "switch_nice": args.switch_nice, "serve_nice": args.serve_nice, "heartbeat_s": args.heartbeat, "entries_per_der": args.entries, "switches_seen": len(seen), "missed": missing,
            "early": len(early), "lateness": summary(lateness), "observer_sweep": summary(sweeps),
            "write_rtt": summary(writes), "operate_rtt": summary(operates),
            "latest_switch_per_entry_ms": per_entry,
            "actors": sum(1 for _ in walk(site.tree())),
            "endpoint_switches": site.node("mms")["detail"].get("switches", [])}


if __name__ == "__main__":
    main()
