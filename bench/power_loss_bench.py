"""Power loss during persistence, two ways (bench/chaos/RESULTS.md):

    .venv/bin/python bench/power_loss_bench.py --store-cycles 1000 --site-cycles 100 --instant-cycles 100

* store: a process saving records as fast as it can is killed (SIGKILL) at 1,000 random
  points; each time the record must load and hold at least the last confirmed save;
* site: the whole site (runner and every actor) is killed at random points while a client
  enables and disables schedules over MMS, and started again; every answered enable or
  disable must be what the site shows after the restart;
* instant: the same, but the whole site is killed in the instant after an enable or
  disable is answered (tests/chaos/site_power_loss.py, `instant`).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chaos.site_power_loss import power_loss_cycles  # noqa: E402
from chaos.test_power_loss import kill_points  # noqa: E402

from relevent.progress import Progress  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store-cycles", type=int, default=1000)
    ap.add_argument("--site-cycles", type=int, default=100)
    ap.add_argument("--instant-cycles", type=int, default=100)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    result = {}
    progress = Progress(args.store_cycles + args.site_cycles + args.instant_cycles, "power_loss_bench")
    with tempfile.TemporaryDirectory(prefix="power-loss-") as tmp:
        t0 = time.monotonic()
        result["store"] = kill_points(Path(tmp) / "store", args.store_cycles, progress=progress)
        result["store"]["seconds"] = round(time.monotonic() - t0, 1)
        print(json.dumps(result["store"]), flush=True)
        t0 = time.monotonic()
        result["site"] = power_loss_cycles(Path(tmp) / "site", args.site_cycles, say=print, progress=progress)
        result["site"]["seconds"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        result["instant"] = power_loss_cycles(Path(tmp) / "instant", args.instant_cycles, say=print,
                                              progress=progress, instant=True)
        result["instant"]["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    bad = result["store"]["corrupt"] + result["store"]["lost"] + result["store"]["behind_ack"] \
        + sum(result[k]["lost"] + result[k]["failed_starts"] for k in ("site", "instant"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
