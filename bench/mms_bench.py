"""MMS endpoint start-up, step by step, for a site of N DERs (3 functions, 10 + 1 schedules).

    .venv/bin/python bench/mms_bench.py --ders 1 --ders 10

Steps: generate the SCL for the DERs, parse it, write libiec61850's model text, build the
model in libiec61850, install the write and control handlers the endpoint installs, start
listening.  Run in-process (no site): the handler set is the endpoint's own (_install).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sitectl import free_port  # noqa: E402

from relevent.iec61850.server import MmsServer  # noqa: E402
from relevent.protocols.mms.endpoint import MmsEndpoint  # noqa: E402
from relevent.protocols.mms.model_map import ScheduleRefs  # noqa: E402
from relevent.scheduling.schedule import schedule_names  # noqa: E402
from relevent.scl.cfg import to_cfg  # noqa: E402
from relevent.scl.generate import default_ld_inst, generate_scl  # noqa: E402
from relevent.scl.parser import parse_scl  # noqa: E402
from relevent.wan.session import Who  # noqa: E402


def measure(ders: int, tmp: Path) -> dict:
    der_tables = [{"name": f"d{i:02d}", "functions": ["ActPow", "MaxPow", "OnOff"], "schedules": 10, "values": 100}
                  for i in range(ders)]
    steps = {}
    t = time.perf_counter()
    blob = generate_scl(der_tables)
    steps["generate_scl"] = time.perf_counter() - t
    path = tmp / f"site{ders}.cid"
    path.write_bytes(blob)
    t = time.perf_counter()
    model = parse_scl(path)
    steps["parse_scl"] = time.perf_counter() - t
    t = time.perf_counter()
    cfg = to_cfg(model)
    steps["to_cfg"] = time.perf_counter() - t
    t = time.perf_counter()
    server = MmsServer(cfg, "DER_Scheduler_", str(tmp))
    steps["libiec61850_model"] = time.perf_counter() - t
    endpoint = MmsEndpoint.__new__(MmsEndpoint)  # only its handler installation is measured
    session = SimpleNamespace(who=lambda *_args, **_kw: Who("bench", "", True))  # a stand-in: no writes here
    MmsEndpoint.__init__(endpoint, session, {"name": "bench", "ders": der_tables})
    endpoint.server = server
    t = time.perf_counter()
    for der in der_tables:
        ld = default_ld_inst(der, len(der_tables))
        for kind in der["functions"]:
            for name in schedule_names(10):
                endpoint._install(ScheduleRefs("DER_Scheduler_", ld, der["name"], kind, name))
    steps["install_handlers"] = time.perf_counter() - t
    t = time.perf_counter()
    server.start("127.0.0.1", free_port())
    steps["start"] = time.perf_counter() - t
    server.close()
    return {"ders": ders, "schedules": ders * 33, "scl_bytes": len(blob), "cfg_lines": cfg.count("\n"),
            "handlers": server.handler_count,
            **{k: round(v * 1000, 1) for k, v in steps.items()}, "total_ms": round(sum(steps.values()) * 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ders", type=int, action="append")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ders or [1, 10]:
            results.append(measure(n, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
