"""The site's log: `<state_dir>/relevent.log` rotates, and repeated messages are rate-limited.

Invariant: the log takes at most LOG_MAX_BYTES * (LOG_BACKUPS + 1) of disk (plus one
record per file), whatever arrives; and one message template logged over and over (a
flood of rejected MQTT payloads, a device that keeps failing) costs at most
REPEAT_BURST lines per REPEAT_INTERVAL_S and then one summary line, "suppressed K similar
messages", when it is a warning or worse (REPEAT_LEVEL).  Informational lines are never
dropped (the command and operate records; tests and operators read them in order):
rotation bounds them.  Why: the log never rotated and every rejected payload logged a warning, so a
flood filled the disk (../shared/spec/security.md section 5).

* `SiteLogHandler`: a RotatingFileHandler that more than one process may write (the runner
  and thespian's logger actor share relevent.log): before each record it reopens the file
  when another process rotated it away, so every writer follows the current file and each
  rotation happens once.
* `RepeatFilter`: keyed by (logger name, message template), so "rejected payload: %s" is
  one key whatever the payload.  One instance may sit on several handlers (dictConfig
  shares it): a record is decided once and that decision holds for every handler.  It
  is installed in every actor process too (`install_repeat_filter`), because thespian
  formats a record before sending it to its logger process, where the template is lost.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import threading
import time
from typing import Callable

MiB = 1 << 20
LOG_MAX_BYTES = 10 * MiB        # one relevent.log file, bytes
LOG_BACKUPS = 5                 # relevent.log.1 .. .5 kept
REPEAT_BURST = 5                # identical (logger, template) records let through per interval
REPEAT_INTERVAL_S = 60.0        # seconds
REPEAT_LEVEL = logging.WARNING  # records below it are never rate-limited
SUMMARY = "suppressed %d similar messages in %.0f s (logger %s): %s"


class SiteLogHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that follows a rotation done by another process."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is not None:
            try:
                current = os.stat(self.baseFilename)
                mine = os.fstat(self.stream.fileno())
                moved = (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino)
            except OSError:
                moved = True   # removed: open a new one
            if moved:
                self.stream.close()
                self.stream = self._open()
        return bool(super().shouldRollover(record))


class RepeatFilter(logging.Filter):
    """Let the first `burst` warnings (or worse) of each (logger, template) through per
    `interval_s`, drop the rest, and log one summary line for the dropped ones when the key
    is next logged after its interval (the summary goes to the record's logger, before it)."""

    def __init__(self, burst: int = REPEAT_BURST, interval_s: float = REPEAT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.interval_s, self.clock = burst, interval_s, clock
        self._windows: dict[tuple, list] = {}   # key -> [window start, passed, suppressed]
        self._lock = threading.RLock()
        self._last: tuple = (None, True)        # (record, decision): one decision per record
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < REPEAT_LEVEL or getattr(record, "relevent_summary", False):
            return True
        with self._lock:
            if record is self._last[0]:
                return self._last[1]
            key = (record.name, str(record.msg))
            now = self.clock()
            window = self._windows.get(key)
            summary = None
            if window is None or now - window[0] >= self.interval_s:
                if window is not None and window[2]:
                    summary = (window[2], now - window[0])
                window = self._windows[key] = [now, 0, 0]
                if len(self._windows) > 4096:   # many one-off keys: forget the stale ones
                    self._forget(now)
            if window[1] < self.burst:
                window[1] += 1
                decision = True
            else:
                window[2] += 1
                self.suppressed_total += 1
                decision = False
            self._last = (record, decision)
        if summary is not None:
            self._summarise(record, *summary)
        return decision

    def _forget(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if now - w[0] >= self.interval_s and not w[2]]:
            del self._windows[key]

    @staticmethod
    def _summarise(record: logging.LogRecord, count: int, span_s: float) -> None:
        logger = logging.getLogger(record.name)
        summary = logger.makeRecord(record.name, record.levelno, record.pathname, record.lineno, SUMMARY,
                                    (count, span_s, record.name, record.msg), None)
        summary.relevent_summary = True
        logger.handle(summary)


_installed_pid: int | None = None


def install_repeat_filter() -> None:
    """Put a RepeatFilter on every handler of the root logger of this process (an actor
    process: thespian's forwarding handler).  Idempotent per process."""
    global _installed_pid
    if _installed_pid == os.getpid():
        return
    _installed_pid = os.getpid()
    shared = RepeatFilter()
    for handler in logging.getLogger().handlers:
        if any(isinstance(f, RepeatFilter) for f in handler.filters):
            continue
        handler.addFilter(shared)
        # thespian's ThespianLogForwardHandler overrides handle() and never calls its
        # filters: ask the filter first.  (A handler that does filter asks it again and gets
        # the same answer: one decision per record.)
        forward = handler.handle

        def handle(record: logging.LogRecord, forward=forward) -> bool:
            return bool(shared.filter(record)) and forward(record) is not False

        handler.handle = handle


def log_config(state_dir: str, level: str, journal: bool) -> dict:
    """The logging definitions of a site: the runner and thespian's logger process use them."""
    fmt = "%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": fmt},
                       "journal": {"()": "relevent.runtime.journal.JournalFormatter",
                                   "fmt": "%(levelname)s %(name)s pid=%(process)d %(message)s"}},
        "filters": {"repeat": {"()": "relevent.runtime.logs.RepeatFilter"}},
        "handlers": {
            "file": {"class": "relevent.runtime.logs.SiteLogHandler",
                     "filename": os.path.join(state_dir, "relevent.log"),
                     "maxBytes": LOG_MAX_BYTES, "backupCount": LOG_BACKUPS,
                     "formatter": "plain", "level": level, "filters": ["repeat"]},
            "stderr": {"class": "logging.StreamHandler", "formatter": "journal" if journal else "plain",
                       "level": level, "filters": ["repeat"]},
        },
        "root": {"handlers": ["file", "stderr"], "level": level},
    }
