"""Memory of a running site: PSS of every process of its actor system (runner included).

    .venv/bin/python bench/memory_bench.py --ders 10
    .venv/bin/python bench/memory_bench.py --ders 10 --isolation der

PSS (proportional set size) splits shared pages between the processes that share them,
so the sum is what the site really costs the machine.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sitectl import Site, free_port, small_topology, walk  # noqa: E402


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ders", type=int, default=10)
    ap.add_argument("--schedules", type=int, default=10)
    ap.add_argument("--isolation", choices=("process", "der"), default="process",
                    help="[runtime] controller_isolation: controllers in their own processes or their DER's")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        topo = tmp / "mem.toml"
        topo.write_text(small_topology(tmp / "state", free_port(), ders=args.ders, schedules=args.schedules,
                                       functions=("ActPow", "MaxPow", "OnOff"),
                                       supervision="startup_timeout = 300.0\n",
                                       runtime=f'controller_isolation = "{args.isolation}"\n'))
        site = Site(topo, tmp / "state").start(timeout=300)
        try:
            actors = sum(1 for _ in walk(site.tree()))
            pids = site.leftovers() + [site.proc.pid]
            total = sum(pss_kb(p) for p in pids)
            print(f"ders={args.ders} schedules/function={args.schedules} isolation={args.isolation} "
                  f"actors={actors} processes={len(pids)} "
                  f"pss_total={total / 1024:.1f} MiB pss_per_process={total / len(pids) / 1024:.2f} MiB")
            roles = {n["pid"]: n["role"] for n in walk(site.tree()) if n["pid"] and not n.get("hosted")}
            by_role: dict[str, list] = {}
            for pid in pids:
                by_role.setdefault(roles.get(pid, "runner/admin/logger"), []).append(pss_kb(pid) / 1024)
            for role, sizes in sorted(by_role.items()):
                print(f"  {role:<20} n={len(sizes):<3} pss {sum(sizes):7.1f} MiB  (each {min(sizes):.1f}..{max(sizes):.1f})")
        finally:
            site.stop()
            site.kill_everything()


if __name__ == "__main__":
    main()
