"""The observer thread of the runner: takes the status trees the runner gathers every
`[runtime] sample_s` and feeds the metrics (the latest tree and the counters' totals, which
the collector turns into metric families at each scrape) and the history (DER samples and
events, relevent/history).  Thin: every decision is in extract, counters, metrics, events
(relevent/observe) and fold (relevent/history), pure.

Threads: the runner's main loop calls `due` and `offer` (never blocks: a tree not taken
yet is replaced by the newer one); the observer thread does the work and is the only
writer of the history database; prometheus-client's server threads call `collect`, which
reads one reference the observer thread replaces whole (`SiteCollector.latest`).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from relevent.clock import now_ms
from relevent.history import HistoryError, HistoryWriter, history_path
from relevent.observe import counters, events, extract
from relevent.observe.metrics import families
from relevent.observe.serve import MetricsServer, metrics_address, url_of
from relevent.runtime.hardening import set_thread_name

log = logging.getLogger("relevent.observe")

MAINTAIN_EVERY_MS = 60_000    # folding and retention of the history, at most this often
STOP_WAIT_S = 5.0
# The observer thread runs this much nicer than the runner: its work on each sample (events
# and history of the whole tree: most of what a sample costs, bench/README.md "What the
# status sample costs") is background, and on a busy host must wait for the MMS endpoints'
# threads, not they for it.  The price: the runner's main thread, wanting the GIL while this
# thread holds it, may wait until this thread gets a core again (its deadlines are seconds).
NICE_INCREMENT = 10


class SiteCollector:
    """prometheus-client's custom collector: the metric families of the latest tree."""

    def __init__(self, site: str, version: str, clock: Callable[[], int] = now_ms) -> None:
        self.site, self.version, self.clock = site, version, clock
        self.latest: tuple | None = None   # (tree, sampled_ms, totals), replaced whole

    def describe(self) -> list:
        return []   # no collect() at registration: the families depend on the site

    def collect(self) -> list:
        tree, sampled, totals = self.latest or (None, None, {})
        return families(tree, self.clock(), totals, self.site, self.version, sampled)


class Observer:
    def __init__(self, site: str, version: str, runtime: dict, state_dir: str | Path) -> None:
        self.sample_s = float(runtime.get("sample_s", 5.0))
        self.address = metrics_address(runtime)      # MetricsAddressError: the runner refuses to start
        self.history_days = float(runtime.get("history_days", 7.0))
        self.history_file = history_path(state_dir) if self.history_days > 0 else None
        self.collector = SiteCollector(site, version)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.server: MetricsServer | None = None
        self.metrics_error = ""
        self._slot: tuple | None = None            # (tree, at_ms) offered, not taken yet
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._next_due = 0.0
        self.samples = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None or self.history_file is not None

    # -- the runner's side ------------------------------------------------------------------
    def start(self) -> None:
        if self.address is not None:
            self.server = MetricsServer(self.registry, self.address)
            try:
                self.server.start()
            except OSError as exc:
                self.server = None
                self.metrics_error = f"cannot listen on {self.address[0]}:{self.address[1]}: {exc.strerror or exc}"
                log.error("metrics not served: %s", self.metrics_error)
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._thread.start()

    def where(self) -> list[str]:
        """Where metrics and history are, one line each (printed by `relevent run`)."""
        lines = [f"metrics {url_of(self.address)}" if self.server is not None else
                 f"metrics not served: {self.metrics_error}" if self.metrics_error else
                 "metrics off ([runtime] metrics = \"\")"]
        lines.append(f"history {self.history_file} ({self.history_days:g} days)" if self.history_file else
                     "history off ([runtime] history_days = 0)")
        return lines

    def due(self, monotonic: float) -> bool:
        if monotonic < self._next_due:
            return False
        self._next_due = monotonic + self.sample_s
        return True

    def offer(self, tree: dict, at_ms: int) -> None:
        with self._wake:
            self._slot = (tree, at_ms)
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)
        if self.server is not None:
            self.server.stop()

    # -- the observer thread -------------------------------------------------------------------
    def _take(self) -> tuple | None:
        with self._wake:
            while self._slot is None and not self._stopping:
                self._wake.wait()
            taken, self._slot = self._slot, None
            return taken

    def _run(self) -> None:
        set_thread_name("observer")
        _lower_priority(NICE_INCREMENT)
        memory, before = counters.EMPTY, None
        writer, maintained = self._open_history(), 0
        try:
            while (taken := self._take()) is not None:
                tree, at = taken
                memory = counters.accumulate(memory, extract.readings(tree))
                self.collector.latest = (tree, at, memory["totals"])
                if writer is not None:
                    writer = self._record(writer, before, tree, at)
                    if writer is not None and at - maintained >= MAINTAIN_EVERY_MS:
                        maintained = at
                        writer = self._maintain(writer, at)
                before = tree
                self.samples += 1
        except Exception:  # noqa: BLE001 - the site runs on without its observer
            log.exception("observer stopped")
        finally:
            if writer is not None:
                writer.close()

    def _open_history(self) -> HistoryWriter | None:
        if self.history_file is None:
            return None
        try:
            return HistoryWriter(self.history_file)
        except (HistoryError, sqlite3.Error, OSError) as exc:
            log.error("history off: %s", exc)
            return None

    def _record(self, writer: HistoryWriter, before: dict | None, tree: dict, at: int) -> HistoryWriter | None:
        started = time.monotonic()
        try:
            writer.write(at, extract.ders(tree, at), events.diff(before, tree, at))
        except (sqlite3.Error, OSError) as exc:
            log.error("history: sample not written: %s", exc)   # rate-limited (relevent/runtime/logs.py)
        spent = time.monotonic() - started
        if spent > self.sample_s:
            log.warning("history: writing one sample took %.3f s (sample_s %g)", spent, self.sample_s)
        return writer

    def _maintain(self, writer: HistoryWriter, at: int) -> HistoryWriter:
        try:
            done = writer.maintain(at, self.history_days)
            if any(done.values()):
                log.info("history: %s", " ".join(f"{k}={v}" for k, v in done.items()))
        except (sqlite3.Error, OSError) as exc:
            log.error("history: folding and retention not done: %s", exc)
        return writer


def _lower_priority(increment: int) -> None:
    """This thread (on Linux a thread has its own nice value) `increment` nicer, at most 19."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as exc:  # (raising one's nice value needs no privilege; a sandbox may refuse it)
        log.warning("observer: cannot lower its priority: %s", exc)


def observer_of(site: str, version: str, runtime: dict, state_dir: Any) -> Observer | None:
    """The site's observer, or None when both metrics and history are off."""
    observer = Observer(site, version, runtime, state_dir)
    return observer if observer.enabled else None
