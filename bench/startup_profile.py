"""Where an MMS endpoint's (or a DER group's) start-up goes inside a site: py-spy samples
of its threads.

    .venv/bin/pip install py-spy          # a profiler, not a dependency of relevent
    .venv/bin/python bench/startup_profile.py --ders 100 --values 24 --ders-per-process 50
    .venv/bin/python bench/startup_profile.py --ders 100 --values 24 --role group --depth 6

A site as bench/scale_bench.py builds it (N DERs of 3 functions x 11 schedules of --values
slots, `controller_isolation = "der"`, `ders_per_process`, one MMS endpoint) is started;
as soon as `relevent status` shows the endpoint's (--role group: the first DER group's)
pid, `py-spy record --threads` samples
it (--rate a second) until a client has read the last DER's value and --tail s more.  The
samples are grouped by thread and by the first frames below the thread's entry (the
actor's handler, a thread's run): what each thread of the endpoint spent its start-up on.
Printed as a table of seconds (samples / rate) and written with --json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_bench as sb  # noqa: E402  (also puts tests/ on the path)

from sitectl import Site, walk  # noqa: E402

ANCHORS = ("ReleventActor._dispatch", "Thread.run")   # below these: what a thread does
DEPTH = 4                                              # frames kept below the anchor (--depth)


def role_pid(site: Site, role: str) -> int:
    """The pid of the site's first actor in `role` (wan: the MMS endpoint; group: a DER group)."""
    while True:
        sb.runner_alive(site)
        try:
            pid = next((n["pid"] for n in walk(site.tree()) if n["role"] == role and n.get("pid")), None)
        except Exception:  # noqa: BLE001 - the runner's control socket is not up yet
            pid = None
        if pid:
            return pid
        time.sleep(0.02)


def summarise(raw: Path, rate: int, depth: int = DEPTH) -> dict:
    threads: Counter = Counter()
    paths: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        names = [f.split(" (")[0] for f in frames[1:]]
        marks = [i for i, name in enumerate(names) if name in ANCHORS]
        below = names[marks[-1] + 1:] if marks else names
        threads[thread] += int(count)
        paths[(thread, " > ".join(below[:depth]))] += int(count)
    return {"threads_s": {t: round(n / rate, 2) for t, n in threads.most_common()},
            "paths_s": [[t, p, round(n / rate, 2)] for (t, p), n in paths.most_common(25)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ders", type=int, default=100)
    ap.add_argument("--values", type=int, default=sb.VALUES)
    ap.add_argument("--ders-per-process", type=int, default=50)
    ap.add_argument("--rate", type=int, default=200, help="samples a second")
    ap.add_argument("--tail", type=float, default=1.0, help="s sampled after the endpoint served")
    ap.add_argument("--role", choices=("wan", "group"), default="wan",
                    help="the process sampled: the MMS endpoint, or the first DER group")
    ap.add_argument("--depth", type=int, default=DEPTH, help="frames kept below a thread's entry")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="startup-profile-") as tmp:
        tmp = Path(tmp)
        layout = sb.Layout(args.ders, 1)
        topo = tmp / "site.toml"
        topo.write_text(sb.topology(tmp / "state", args.ders, layout, sb.Supervision.for_ders(args.ders),
                                    values=args.values, ders_per_process=args.ders_per_process))
        site = Site(topo, tmp / "state")
        raw = tmp / "spy.txt"
        try:
            sb.spawn(site)
            t0 = time.monotonic()
            pid = role_pid(site, args.role)
            found = time.monotonic() - t0
            sampler = subprocess.Popen([spy, "record", "-p", str(pid), "-o", str(raw), "-f", "raw", "-r",
                                        str(args.rate), "--threads", "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            client, _value = sb.first_read(site, layout.ports[0], sb.actpow_name(layout.lds[-1]))
            served = time.monotonic() - t0
            time.sleep(args.tail)
            sampler.send_signal(2)   # SIGINT: py-spy writes what it has
            sampler.wait(timeout=60)
            client.close()
        finally:
            site.kill_everything()
        result = {"ders": args.ders, "values": args.values, "ders_per_process": args.ders_per_process,
                  "rate": args.rate, "endpoint_seen_s": round(found, 2), "served_s": round(served, 2),
                  "role": args.role, **summarise(raw, args.rate, args.depth)}
    for thread, seconds in result["threads_s"].items():
        print(f"{seconds:7.2f} s  {thread}")
    print()
    for thread, path, seconds in result["paths_s"]:
        print(f"{seconds:7.2f} s  {thread}: {path}")
    print(f"\n{args.role} pid seen after {result['endpoint_seen_s']} s, served after {result['served_s']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
