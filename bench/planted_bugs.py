"""Which property test catches which bug planted in the scheduling core (issue 20, item 1).

Each planted bug is one textual change to a copy of `relevent/` in a temporary directory;
tests/test_scheduling_properties.py then runs against that copy (PYTHONPATH first, checked
by the child) with a fixed hypothesis seed and no shrinking (a caught bug is all we need),
and the tests that fail are recorded.  A property that catches none of the bugs aimed at it
is a property that does not test what its name says; a bug that no property catches is a
hole in the suite (or a change that cannot be seen from outside: say so in the table).

    .venv/bin/python bench/planted_bugs.py [--only NAME] [--json FILE]

The record it printed last is in bench/README.md ("Planted bugs").
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relevent.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "test_scheduling_properties.py"

# (name, file under relevent/scheduling, text, replacement, what it breaks)
BUGS = [
    ("tie-later-start-loses", "arbitration.py", "key = (sched.settings.prio, st.act_start, -order)",
     "key = (sched.settings.prio, -st.act_start, -order)", "rule 5: among equal priorities the EARLIER start wins"),
    ("tie-last-listed-wins", "arbitration.py", "key = (sched.settings.prio, st.act_start, -order)",
     "key = (sched.settings.prio, st.act_start, order)", "last tie-break: the highest SchdNN wins"),
    ("lowest-priority-wins", "arbitration.py", "key = (sched.settings.prio, st.act_start, -order)",
     "key = (-sched.settings.prio, st.act_start, -order)", "arbitration picks the lowest SchdPrio"),
    ("run-one-ms-too-long", "schedule.py", "t >= latest[0] + duration", "t > latest[0] + duration",
     "a run still in force at its end instant"),
    ("entry-off-by-one-ms", "schedule.py", "st.entry = (now - start) // (self.settings.schd_intv * 1000) + 1",
     "st.entry = (now - start + 1) // (self.settings.schd_intv * 1000) + 1",
     "the next entry one millisecond early"),
    ("used-start-kept", "schedule.py", "self.settings.starts[slot] = replace(self.settings.starts[slot], tm=None)",
     "pass", "a non-periodic start is not used up when its run ends"),
    ("no-wakeup-for-next-start", "schedule.py", "            if st.next_start is not None:\n"
     "                times.append(st.next_start)\n", "",
     "a running schedule does not wake for a later start that supersedes its run"),
    ("nan-accepted", "schedule.py", "not math.isfinite(v)", "math.isinf(v)", "NaN values pass the enable check"),
    ("start-now-accepted", "schedule.py", "tm is not None and now is not None and tm <= now",
     "tm is not None and now is not None and tm < now", "StrTm equal to now is accepted as future"),
    ("enable-without-start", "schedule.py", "if self._run_at(now) is None and self._next_start(now) is None:",
     "if self._run_at(now) is None and self._next_start(now) is None and False:",
     "an enable with no start in force or to come succeeds"),
    ("disable-keeps-running", "schedule.py", "        self._stop()\n        return Outcome.accept()",
     "        self.status.state = State.READY if self.status.state == State.RUNNING else self.status.state\n"
     "        return Outcome.accept()", "a disable leaves a running schedule Ready instead of Not ready"),
    ("week-day-shifted", "calendar.py", "timedelta(days=week_day - 1,", "timedelta(days=week_day,",
     "weekly occurrences one day late"),
    ("month-day-not-clamped", "calendar.py", "day = min(cal.day or anchor.day, _cal.monthrange(year, month)[1])",
     "day = min(cal.day or anchor.day, 28 if month == 2 else 30 if month in (4, 6, 9, 11) else 31)",
     "29 February skipped in leap years"),
    ("occurrence-before-anchor", "calendar.py", "return _ms(occ) if occ >= anchor else None", "return _ms(occ)",
     "a periodic schedule runs an occurrence before its setTm"),
    ("forecast-skips-due", "arbitration.py", "due[i] is not None and due[i] <= t", "due[i] is not None and due[i] < t",
     "the forecast does not advance a schedule due exactly now"),
    # (Returning at the first wake-up whether or not it changes anything is no bug to plant:
    # every wake-up changes the status, at least its entry.)
    ("next-change-state-not-advanced", "arbitration.py", "changed |= sim.advance(t)",
     "changed |= sim.fork().advance(t)", "next_change announces the instant but not the state then"),
]

CONFTEST = """\
from hypothesis import Phase, settings
settings.register_profile("planted", phases=[Phase.explicit, Phase.generate], print_blob=False, database=None)
settings.load_profile("planted")
"""


def plant(work: Path, file: str, old: str, new: str) -> None:
    path = work / "relevent" / "scheduling" / file
    text = path.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{file}: the text to replace occurs {text.count(old)} times, not once: {old!r}")
    path.write_text(text.replace(old, new))


def run_tests(work: Path) -> tuple[list[str], list[str], float]:
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
    check = subprocess.run([sys.executable, "-c", "import relevent.scheduling as m; print(m.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    if not check.stdout.startswith(str(work)):
        raise SystemExit(f"the child imports relevent from {check.stdout.strip()}, not the planted copy")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                          "--hypothesis-seed=0", "--timeout=900", str(work / "tests" / TESTS.name)],
                         cwd=work, env=env, capture_output=True, text=True)
    took = time.monotonic() - t0
    failed = sorted(set(re.findall(r"^FAILED \S+::(\w+)", out.stdout, re.M)))
    passed = []
    for line in out.stdout.splitlines():
        if "::" in line and " PASSED" in line:
            passed.append(line.split("::")[1].split()[0])
    if out.returncode not in (0, 1):
        raise SystemExit(f"pytest exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
    return failed, passed, took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", help="run only these bugs (by name)")
    ap.add_argument("--json", help="write the record here")
    args = ap.parse_args()
    bugs = [b for b in BUGS if not args.only or b[0] in args.only]
    record = []
    progress = Progress(len(bugs) + 1, "planted_bugs", say=print, every_s=0.0)   # each line is the record
    with tempfile.TemporaryDirectory(prefix="planted-") as tmp:
        for name, file, old, new, what in [("none", "", "", "", "the core as it is")] + bugs:
            work = Path(tmp) / name
            shutil.copytree(ROOT / "relevent", work / "relevent",
                            ignore=shutil.ignore_patterns("__pycache__", "*.so"))
            (work / "tests").mkdir()
            shutil.copy(TESTS, work / "tests" / TESTS.name)
            (work / "tests" / "conftest.py").write_text(CONFTEST)
            if file:
                plant(work, file, old, new)
            failed, _passed, took = run_tests(work)
            record.append({"bug": name, "breaks": what, "caught_by": failed, "seconds": round(took, 1)})
            progress.step(f"{name:28} {took:6.1f} s  caught by: {', '.join(failed) or 'NOTHING'}")
            shutil.rmtree(work)
    if record[0]["caught_by"]:
        print("the unplanted core fails some properties: the record above is meaningless", file=sys.stderr)
        return 1
    missed = [r["bug"] for r in record[1:] if not r["caught_by"]]
    print(f"\n{len(record) - 1 - len(missed)} of {len(record) - 1} planted bugs caught"
          + (f"; not caught: {', '.join(missed)}" if missed else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
