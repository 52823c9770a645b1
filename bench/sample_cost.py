"""What the runner's status sample costs a big idle site: CPU by process role over a window.

    .venv/bin/python bench/sample_cost.py --ders 1000 --sample-s 5
    .venv/bin/python bench/sample_cost.py --ders 1000 --sample-s 3600

A site as bench/scale_bench.py builds it (N DERs, 24 value slots, 50 to a process, an MMS
endpoint a hundred DERs) is started with `[runtime] sample_s` as given; once the last
endpoint serves and --settle s have passed, the CPU (utime + stime, /proc) of each of its
processes is read twice, --window s apart, and summed by role (runner, site supervisor,
DER groups, MMS endpoints).  Run with the default sample_s and with one that never comes
within the window: the difference is what the samples cost.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_bench as sb  # noqa: E402  (also puts tests/ on the path)

from sitectl import Site, walk  # noqa: E402

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ders", type=int, default=1000)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=20.0, help="s of CPU measured")
    ap.add_argument("--settle", type=float, default=15.0, help="s waited after the last endpoint served")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sample-cost-") as tmp:
        tmp = Path(tmp)
        layout = sb.Layout(args.ders, max(1, args.ders // 100))
        topo = tmp / "site.toml"
        topo.write_text(sb.topology(tmp / "state", args.ders, layout, sb.Supervision.for_ders(args.ders),
                                    values=24, ders_per_process=50, sample_s=args.sample_s))
        site = Site(topo, tmp / "state")
        try:
            sb.spawn(site)
            t0 = time.monotonic()
            client, _value = sb.first_read(site, layout.ports[-1], sb.actpow_name(layout.lds[-1]))
            served = time.monotonic() - t0
            time.sleep(args.settle)
            roles = {n["pid"]: n["role"] for n in walk(site.tree()) if n.get("pid") and not n.get("hosted")}
            roles[site.proc.pid] = "runner"
            before, began = {pid: sb.cpu_s(pid) for pid in roles}, time.monotonic()
            time.sleep(args.window)
            after, took = {pid: sb.cpu_s(pid) for pid in roles if Path(f"/proc/{pid}").exists()}, time.monotonic() - began
            client.close()
        finally:
            site.kill_everything()
    by_role: collections.Counter = collections.Counter()
    for pid, seconds in after.items():
        by_role[roles[pid]] += seconds - before[pid]
    result = {"ders": args.ders, "sample_s": args.sample_s, "served_s": round(served, 2), "window_s": round(took, 1),
              "cores": round(sum(by_role.values()) / took, 3),
              "by_role_cores": {role: round(s / took, 3) for role, s in by_role.most_common()}}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
