"""The cost of the policy check and of the audit append per instruction.

Three timings, each over N instructions: `relevent.policy.check` alone (a SchdPrio write by
a party with a band and an owned schedule: every rule runs); a whole `ControlSession.write`
of one value without an audit chain; and the same with the endpoint's audit chain (what a
site does).  The difference of the last two is the audit append as the request path pays
it.  No site, no network: the session runs with a recording stand-in for its actor.

    .venv/bin/python bench/policy_bench.py --n 20000 --json bench/results-policy.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from relevent.policy import Request, Rights, check  # noqa: E402
from relevent.scheduling.schedule import Schedule  # noqa: E402
from relevent.wan.session import ControlSession, Write  # noqa: E402
from test_control_session import DER, FakeActor, FakeAdapter, schedules, state  # noqa: E402

PARTY = {"name": "dso", "mms_password": "x", "http_token": "", "peers": [], "ders": ["pv1"], "functions": [],
         "operations": ["read", "write", "enable", "disable"], "priority": [100, 200], "others": False}


def percentiles(samples_ns: list[int]) -> dict:
    s = sorted(samples_ns)
    return {"n": len(s), "p50_us": round(s[len(s) // 2] / 1000, 2), "p99_us": round(s[int(len(s) * 0.99)] / 1000, 2),
            "max_us": round(s[-1] / 1000, 2), "mean_us": round(statistics.fmean(s) / 1000, 2)}


def bench_check(n: int) -> dict:
    sched = Schedule("FSCH01")
    sched.settings.writer = "dso"
    rights = Rights.of(PARTY)
    request = Request("dso", "write", "pv1", "ActPow", "FSCH01", "SchdPrio", 150)
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        check(request, sched, rights)
        out.append(time.perf_counter_ns() - t)
    return percentiles(out)


def bench_write(n: int, audited: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        actor = FakeActor(tmp if audited else "")
        session = ControlSession(actor, {"name": "ep", "protocol": "mms", "ders": [DER], "party_tables": [PARTY],
                                         "address": "127.0.0.1", "port": 102})
        session.start(FakeAdapter())
        session.on_message(state(1, schedules()))
        who = session.who("192.0.2.1:1", ("mms-password", "x"))
        out = []
        for i in range(n):
            t = time.perf_counter_ns()
            answer = session.write("pv1", "ActPow", "FSCH01", [Write("Val", 1, float(i % 100))], who)
            out.append(time.perf_counter_ns() - t)
            assert answer.ok
            if i % 500 == 0:
                session.bridge.drain()       # what the actor thread does
                actor.sent.clear()
        session.stop()
        return percentiles(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = {"policy_check": bench_check(args.n), "write_without_audit": bench_write(args.n, False),
               "write_with_audit": bench_write(args.n, True)}
    results["audit_append_p50_us"] = round(results["write_with_audit"]["p50_us"]
                                           - results["write_without_audit"]["p50_us"], 2)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
