"""Export and import time of a 100-DER site's state (`relevent state export/import`):

    .venv/bin/python bench/state_bench.py --ders 100 --repeat 5

The state is made with the store API directly, as the site lays it out (no site runs):
per DER one lifetime record for the DER and for each controller, and one controller record
per function holding its 10 schedules and the reserve (Schedule.to_record: 100 values and
16 start times each), every schedule written with random values.  Then, `repeat` times:
export to an archive, import into an empty state directory, and import over that state
(the old store kept beside it).  Reports the median and the worst of each, in ms, the
archive's size and the records' count.  Import includes reading and verifying the whole
archive (sha256 of each file, the manifest checksum, every record decoded) and fsync of
every file.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from relevent.scheduling.schedule import Schedule, StartTime, schedule_names  # noqa: E402
from relevent.state.archive import export_state, import_state  # noqa: E402
from relevent.store import StateStore, store_directory  # noqa: E402

KINDS = ("ActPow", "MaxPow", "OnOff")


def make_site_state(state_dir: Path, ders: int, schedules: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    store = StateStore(store_directory(state_dir))
    store.save("actor/site", {"starts": 1, "first_start": time.time(), "last_start": time.time()})
    store.save("actor/mms", {"starts": 1, "first_start": time.time(), "last_start": time.time()})
    for d in range(1, ders + 1):
        der = f"der{d}"
        store.save(f"actor/{der}", {"starts": 1, "first_start": time.time(), "last_start": time.time()})
        for kind in KINDS:
            store.save(f"actor/{der}/{kind}", {"starts": 1, "first_start": time.time(), "last_start": time.time()})
            recs = {}
            for name in schedule_names(schedules):
                s = Schedule(name, boolean=kind == "OnOff", periodic=name.startswith("Res_"))
                s.settings.num_entr, s.settings.schd_intv, s.settings.prio = rng.randrange(1, 101), 900, 20
                s.settings.values = ([rng.random() < 0.5 for _ in range(100)] if kind == "OnOff"
                                     else [rng.uniform(-10000, 10000) for _ in range(100)])
                s.settings.starts[0] = StartTime(1_900_000_000_000 + rng.randrange(10 ** 9))
                recs[name] = s.to_record()
            store.save(f"controller/{der}/{kind}", {"schedules": recs, "local": {"last_contact": 0}})
    return 2 + ders * (1 + 2 * len(KINDS))


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ders", type=int, default=100)
    ap.add_argument("--schedules", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    times: dict[str, list[float]] = {"export": [], "import_empty": [], "import_over": []}
    with tempfile.TemporaryDirectory(prefix="state-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        records = make_site_state(tmp / "a", args.ders, args.schedules)
        made_ms = ms(t0)
        store_bytes = sum(p.stat().st_size for p in store_directory(tmp / "a").iterdir())
        for i in range(args.repeat):
            archive = tmp / f"site-{i}.tar.gz"
            t0 = time.perf_counter()
            export_state(tmp / "a", "bench", archive)
            times["export"].append(ms(t0))
            shutil.rmtree(tmp / "b", ignore_errors=True)
            t0 = time.perf_counter()
            import_state(archive, tmp / "b", "bench")
            times["import_empty"].append(ms(t0))
            t0 = time.perf_counter()
            done = import_state(archive, tmp / "b", "bench")
            times["import_over"].append(ms(t0))
            shutil.rmtree(done["replaced"])
        result = {
            "ders": args.ders, "schedules_per_controller": args.schedules + 1, "records": records,
            "store_bytes": store_bytes, "archive_bytes": archive.stat().st_size, "made_ms": round(made_ms),
            **{f"{k}_ms": {"median": round(statistics.median(v), 1), "max": round(max(v), 1)} for k, v in times.items()},
        }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
