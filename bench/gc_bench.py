"""Cost of a full garbage collection in an MMS endpoint's process, before and after the
endpoint freezes its start-up objects (gc.freeze in MmsEndpoint.start).

    .venv/bin/python bench/gc_bench.py --ders 100 --functions ActPow --schedules 1

Builds the libiec61850 model and installs the endpoint's handlers in-process, as
mms_bench.py does; a full collection stops every thread of the process, a switch included.
"""
from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

from relevent.iec61850.server import MmsServer
from relevent.protocols.mms.endpoint import MmsEndpoint
from relevent.protocols.mms.model_map import ScheduleRefs
from relevent.scheduling.schedule import schedule_names
from relevent.scl.cfg import to_cfg
from relevent.scl.generate import default_ld_inst, generate_scl
from relevent.scl.parser import parse_scl


def full_collection_ms() -> float:
    start = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ders", type=int, default=100)
    ap.add_argument("--functions", default="ActPow")
    ap.add_argument("--schedules", type=int, default=1)
    args = ap.parse_args()
    functions = args.functions.split(",")
    ders = [{"name": f"d{i:03d}", "functions": functions, "schedules": args.schedules, "values": 100}
            for i in range(args.ders)]
    tmp = Path(tempfile.mkdtemp())
    (tmp / "site.cid").write_bytes(generate_scl(ders))
    server = MmsServer(to_cfg(parse_scl(tmp / "site.cid")), "DER_Scheduler_", str(tmp))
    endpoint = MmsEndpoint.__new__(MmsEndpoint)  # only its handlers and mirrors are built
    MmsEndpoint.__init__(endpoint, None, {"name": "bench", "ders": ders})
    endpoint.server = server
    for der in ders:
        ld = default_ld_inst(der, len(ders))
        for kind in functions:
            for name in schedule_names(args.schedules):
                endpoint._install(ScheduleRefs("DER_Scheduler_", ld, der["name"], kind, name))
    full_collection_ms()  # the garbage of start-up
    before = full_collection_ms()
    gc.freeze()
    after = full_collection_ms()
    print(f"ders={args.ders} functions={args.functions} schedules={args.schedules}: full collection "
          f"{before:.1f} ms before gc.freeze, {after:.2f} ms after")
    server.close()


if __name__ == "__main__":
    main()
