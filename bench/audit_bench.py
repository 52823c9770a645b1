"""Audit log: the cost of one append (p50/p99), and the size of 7 days of log.

    .venv/bin/python bench/audit_bench.py [--n 20000] [--json bench/results-audit.json]

1. `--n` appends of a realistic instruction record to a fresh log (default settings:
   fsync in the background every second, 16 MiB files), one thread, timed one by one with
   perf_counter_ns around `AuditLog.append` (canonical encoding, Ed25519 signature,
   SHA-256, one os.write).
2. 7 days at one instruction per minute: 10080 records written with a simulated clock
   (60 s apart, from midnight UTC, so the log rotates by day as on a site); the size on
   disk of every file, and the time `verify` takes to check them all.
Runs in well under 30 s on the development machine.
"""
from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relevent.audit.log import AuditLog  # noqa: E402
from relevent.audit.verify import load_public_key, verify  # noqa: E402

PARTIES = [("dso", "mms", "10.20.0.5:50123", "mms"), ("tso", "mms", "10.30.0.9:41002", "mms"),
           ("aggregator", "http", "203.0.113.7:443", "http"), ("ems", "mqtt_ems", "ems-user", "ems")]
DERS = [("pv1", "MaxPow"), ("bat1", "ActPow"), ("ev1", "ActPow"), ("pv1", "OnOff")]


def realistic(i: int) -> dict:
    """One instruction as the control session would record it: every 4th a schedule write of
    24 quarter-hour values, the others enable/disable; one in 10 refused by policy."""
    party, protocol, peer, endpoint = PARTIES[i % len(PARTIES)]
    der, function = DERS[(i // 3) % len(DERS)]
    number = 1 + i % 10
    if i % 4 == 0:
        action = "write"
        detail = {"SchdPrio": 100 + i % 50, "SchdIntv": 900, "NumEntr": 24,
                  "StrTm": 1_796_000_000_000 + i * 60_000,
                  "values": [round(-3000.0 + 250.0 * ((i + k) % 24), 1) for k in range(24)]}
    else:
        action = "enable" if i % 4 != 3 else "disable"
        detail = {"operate": "EnaReq" if action == "enable" else "DsaReq", "ctlNum": i % 256}
    answer = ({"refused": "priority-band", "reason": f"SchdPrio outside {party}'s band 100-200"}
              if i % 10 == 7 else "ok")
    return {"kind": "instruction", "party": party, "protocol": protocol, "peer": peer, "endpoint": endpoint,
            "der": der, "function": function, "schedule": number, "action": action, "detail": detail,
            "answer": answer}


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def bench_append(n: int) -> dict:
    records = [realistic(i) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        log = AuditLog(tmp, "bench-site")
        times = []
        wall = time.perf_counter()
        for record in records:
            t0 = time.perf_counter_ns()
            log.append(record)
            times.append(time.perf_counter_ns() - t0)
        wall = time.perf_counter() - wall
        log.close()
    us = sorted(t / 1000 for t in times)
    return {"n": n, "p50_us": round(percentile(us, 0.50), 1), "p99_us": round(percentile(us, 0.99), 1),
            "p999_us": round(percentile(us, 0.999), 1), "max_us": round(us[-1], 1),
            "mean_us": round(statistics.fmean(us), 1), "appends_per_s": round(n / wall)}


def bench_week() -> dict:
    midnight = 1_796_083_200_000            # 2026-12-01T00:00:00Z
    clock = {"t": midnight}
    with tempfile.TemporaryDirectory() as tmp:
        log = AuditLog(tmp, "bench-site", retention_days=7, clock=lambda: clock["t"])
        for i in range(7 * 24 * 60):
            clock["t"] = midnight + i * 60_000
            log.append(realistic(i))
        log.close()
        audit = Path(tmp) / "audit"
        files = sorted(audit.glob("audit-*.jsonl"))
        sizes = {f.name: f.stat().st_size for f in files}
        total = sum(sizes.values())
        gz = sum(len(gzip.compress(f.read_bytes())) for f in files)
        t0 = time.perf_counter()
        result = verify(audit, load_public_key(audit / "audit-key.pub"))
        verify_s = time.perf_counter() - t0
        assert result.ok, result.problem
    return {"instructions": 7 * 24 * 60, "records": result.records, "files": len(files),
            "bytes": total, "MiB": round(total / 2**20, 2), "bytes_per_record": round(total / result.records),
            "gzip_bytes": gz, "per_file": sizes, "verify_s": round(verify_s, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    t0 = time.perf_counter()
    append = bench_append(args.n)
    print(f"append, {append['n']} records, 1 thread: p50 {append['p50_us']} us, p99 {append['p99_us']} us, "
          f"p99.9 {append['p999_us']} us, max {append['max_us']} us ({append['appends_per_s']} appends/s)")
    week = bench_week()
    print(f"7 days at 1 instruction/min: {week['records']} records in {week['files']} files, "
          f"{week['bytes']} bytes ({week['MiB']} MiB, {week['bytes_per_record']} B/record; "
          f"gzip {round(week['gzip_bytes'] / 2**20, 2)} MiB); verify {week['verify_s']} s")
    total = round(time.perf_counter() - t0, 1)
    print(f"total {total} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"append": append, "week": week, "total_s": total,
                                               "python": platform.python_version()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
