"""Progress of long work (a chaos run, a benchmark): how far, how long, what is running.

A line looks like

    chaos [37/120 31%] 1:12 elapsed, ~2:40 left: kill controller pv1/ActPow ok 97 ms

Invariant: at most one line every `every_s` (5 s by default), except that a failed step,
a phase (`phase()`), and the last step always print.  So a run of 1,000 faults prints a
line about every 5 s instead of 1,000 lines, nothing that went wrong is hidden by the
throttle, and a step that hangs still shows what it is waiting for (`tick()` from the
waiting loop).  Lines only, no carriage returns: these runs go to CI logs and files.

The estimate of what is left is the mean pace so far times the steps left: honest for the
shuffled, homogeneous steps of a chaos run or a benchmark's repetitions, and never shown
before the first step is done.

Time is an argument (`clock`), so the throttle and the estimate are unit-tested with a fake
clock (tests/test_progress.py).  Lines go to `say` (standard error by default, so a
benchmark's standard output stays its JSON).
"""
from __future__ import annotations

import sys
import time
from typing import Callable

EVERY_S = 5.0   # s: the shortest time between two ordinary lines


def to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def clock_text(seconds: float) -> str:
    """0:07, 1:12, 1:02:03: minutes and seconds, hours when there are any."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def left_s(done: int, total: int, elapsed_s: float) -> float | None:
    """Seconds left at the mean pace of the steps done; None before the first one."""
    if done <= 0 or total <= 0:
        return None
    return elapsed_s / done * max(0, total - done)


def line(label: str, done: int, total: int, elapsed_s: float, what: str) -> str:
    pct = f" {100 * done // total}%" if total > 0 else ""
    left = left_s(done, total, elapsed_s)
    eta = f", ~{clock_text(left)} left" if left is not None and done < total else ""
    head = f"{label} " if label else ""
    tail = f": {what}" if what else ""
    return f"{head}[{done}/{total}{pct}] {clock_text(elapsed_s)} elapsed{eta}{tail}"


class Progress:
    """Counts `total` steps and says how far they are (see the module's docstring)."""

    def __init__(self, total: int, label: str = "", say: Callable[[str], None] = to_stderr,
                 every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.label, self.say, self.every_s, self.clock = total, label, say, every_s, clock
        self.done = 0
        self.failed = 0
        self.started = clock()
        self.running = ""          # the step under way, named by begin()
        self.running_since = self.started
        self._last_line: float | None = None

    def _emit(self, what: str) -> None:
        now = self.clock()
        self.say(line(self.label, self.done, self.total, now - self.started, what))
        self._last_line = now

    def _due(self) -> bool:
        return self._last_line is None or self.clock() - self._last_line >= self.every_s

    def phase(self, what: str) -> None:
        """Something other than a step (starting a site, a final check): always said."""
        self._emit(what)

    def begin(self, what: str) -> None:
        """Step done+1 starts; said only if a line is due."""
        self.running, self.running_since = what, self.clock()
        if self._due():
            self._emit(f"running {what}")

    def tick(self) -> None:
        """From inside a long step: say what it still waits for, if a line is due."""
        if self.running and self._due():
            self._emit(f"still running {self.running} ({clock_text(self.clock() - self.running_since)})")

    def step(self, what: str = "", ok: bool = True) -> None:
        """One step ended: said if it failed, if it is the last, or if a line is due."""
        what = what or self.running
        self.done += 1
        self.running = ""
        if not ok:
            self.failed += 1
        if not ok or self.done >= self.total or self._due():
            self._emit(what)

    def summary(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.label + ' ' if self.label else ''}{self.done} of {self.total} done in " \
               f"{clock_text(self.clock() - self.started)}{failed}"
