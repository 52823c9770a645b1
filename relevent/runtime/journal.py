"""Log lines for journald: a `<N>` priority prefix on every line when stderr is the journal.

Invariant: the prefix is added only when stderr *is* the stream systemd connected to the
journal (`$JOURNAL_STREAM` names its device and inode, as systemd.exec(5) says to check), so
a process started from a service with stderr redirected elsewhere, or a terminal, gets plain
lines.  Every line of a multi-line record (a traceback) carries the prefix: journald splits
records at newlines, and an unprefixed traceback line would be logged at the default level.
journald stamps time, so the prefixed format leaves it out; the log file keeps it.

The priorities are syslog's: <3> error, <4> warning, <6> info, <7> debug (<2> critical).
"""
from __future__ import annotations

import logging
import os


def priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def prefixed(text: str, levelno: int) -> str:
    tag = f"<{priority(levelno)}>"
    return "\n".join(tag + line for line in text.split("\n"))


def is_journal_stream(value: str, st_dev: int, st_ino: int) -> bool:
    """Whether `$JOURNAL_STREAM` ("DEVICE:INODE") names the file with this device and inode."""
    dev, sep, ino = value.partition(":")
    return bool(sep) and dev.isdigit() and ino.isdigit() and (int(dev), int(ino)) == (st_dev, st_ino)


def stderr_is_journal(environ: "os._Environ[str] | dict[str, str]" = os.environ, fd: int = 2) -> bool:
    value = environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return is_journal_stream(value, st.st_dev, st.st_ino)


class JournalFormatter(logging.Formatter):
    """Logging's formatter with the journal's priority on each line (used through
    `logging.config.dictConfig` with "()", in the runner and in thespian's logger process)."""

    def format(self, record: logging.LogRecord) -> str:
        return prefixed(super().format(record), record.levelno)
