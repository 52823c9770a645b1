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
  is installed in every actor process too (`install_actor_logging`), because thespian
  formats a record before sending it to its logger process, where the template is lost.
* Records of other threads (`guard_handlers`): in an actor process thespian's handler
  sends each record to its logger process through the actor's transport, which is not
  thread-safe.  A record logged by another thread of the process (libiec61850's server
  thread refusing a write, an HTTP server's, an asyncio loop's) crashed the MMS endpoint:
  the actor thread, iterating the transport's pending transmits, found them changed
  ("dictionary changed size during iteration").  So only the actor's own thread goes
  through thespian; every other thread writes to the site's log itself (relevent.log and
  stderr, as the logger process would: `direct_logger`, from the definitions the runner
  exports in RELEVENT_LOG_DEFS).
"""
from __future__ import annotations

import copy
import json
import logging
import logging.config
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
LOG_DEFS_ENV = "RELEVENT_LOG_DEFS"   # the site's log definitions (log_config), JSON, for actor processes


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


def install_actor_logging() -> None:
    """In an actor process, on its actor thread: `guard_handlers` on the root logger, other
    threads writing through `direct_logger`.  Idempotent per process."""
    global _installed_pid
    if _installed_pid == os.getpid():
        return
    _installed_pid = os.getpid()
    defs = os.environ.get(LOG_DEFS_ENV)
    guard_handlers(logging.getLogger(), threading.current_thread(), direct_logger(json.loads(defs) if defs else None))


def guard_handlers(logger: logging.Logger, actor_thread: threading.Thread, direct: logging.Logger) -> None:
    """Put one RepeatFilter on every handler of `logger`, and send what another thread than
    `actor_thread` logs to `direct` instead of through thespian's transport (module
    docstring)."""
    from thespian.system.logdirector import ThespianLogForwardHandler

    shared = RepeatFilter()
    for handler in logger.handlers:
        if any(isinstance(f, RepeatFilter) for f in handler.filters):
            continue
        handler.addFilter(shared)
        # thespian's ThespianLogForwardHandler overrides handle() and never calls its
        # filters: ask the filter first.  (A handler that does filter asks it again and gets
        # the same answer: one decision per record.)
        forward = handler.handle
        transport = isinstance(handler, ThespianLogForwardHandler)

        def handle(record: logging.LogRecord, forward=forward, transport=transport) -> bool:
            if not shared.filter(record):
                return False
            if transport and threading.current_thread() is not actor_thread:
                direct.handle(record)
                return True
            return forward(record) is not False

        handler.handle = handle


def direct_logger(defs: dict | None) -> logging.Logger:
    """A logger outside logging's tree with the handlers of the site's log definitions
    (log_config: relevent.log, opened at its first record, and stderr), without their
    filters (the record was decided already); stderr alone without definitions."""
    logger = logging.Logger("relevent.direct")
    if defs is None:
        logger.addHandler(logging.StreamHandler())
        return logger
    config = logging.config.DictConfigurator(copy.deepcopy(defs))
    formatters = {name: config.configure_formatter(f) for name, f in config.config["formatters"].items()}
    for definition in config.config["handlers"].values():
        definition = dict(definition)
        definition.pop("filters", None)
        formatter, level = definition.pop("formatter", None), definition.pop("level", None)
        if "filename" in definition:
            definition["delay"] = True   # a process whose other threads never log opens no file
        handler = config.configure_handler(definition)
        if formatter is not None:
            handler.setFormatter(formatters[formatter])
        if level is not None:
            handler.setLevel(level)
        logger.addHandler(handler)
    return logger


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
