"""The history database's schema and its versions, as relevent/state/migrations.py does
for the store: a chain of steps, version N -> N+1, applied in order; the version is kept
in the database (table `schema_version`); a database newer than this build is refused
(`TooNew`), never written over.

Each step is SQL run in one transaction with the version bump, so a step is applied whole
or not at all (kill -9 and power loss included).  To add version 2: append its statements
to CHAIN (ending with nothing else: `migrate` bumps the version), and test it from a v1
database in tests/test_history.py.

Version 1:

* `source`: the distinct source-schedule maps ({function: schedule} as compact JSON),
  referenced by id from the sample tables (a sample repeats the same few maps, so each
  is stored once);
* `sample`: raw samples, one per DER per observer sample (`t` ms since the epoch; W;
  `connected` 1/0 of the command);
* `sample_15m`: 15-minute rows of older samples (`t` the bucket's start; `n` samples with a
  measurement; mean, min, max W; the command of the newest sample folded in, at `last_t`);
* `event`: actor, restart, link, schedule and refusal events (`detail` JSON).
"""
from __future__ import annotations

import sqlite3

V1 = """
CREATE TABLE source (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE);
CREATE TABLE sample (
    der TEXT NOT NULL, t INTEGER NOT NULL,
    measured_w REAL, setpoint_w REAL, limit_w REAL, connected INTEGER, source INTEGER,
    PRIMARY KEY (der, t)) WITHOUT ROWID;
CREATE TABLE sample_15m (
    der TEXT NOT NULL, t INTEGER NOT NULL, n INTEGER NOT NULL,
    mean_w REAL, min_w REAL, max_w REAL,
    last_t INTEGER NOT NULL, setpoint_w REAL, limit_w REAL, connected INTEGER, source INTEGER,
    PRIMARY KEY (der, t)) WITHOUT ROWID;
CREATE TABLE event (t INTEGER NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, der TEXT, detail TEXT NOT NULL);
CREATE INDEX event_t ON event (t);
CREATE INDEX event_der ON event (der, t);
"""

# CHAIN[i] turns a database of version i into one of version i + 1 (0: empty).
CHAIN: tuple[str, ...] = (V1,)


class HistoryError(Exception):
    pass


class TooNew(HistoryError):
    def __init__(self, path: str, version: int, current: int) -> None:
        super().__init__(f"{path}: history schema version {version} was written by a newer relevent; this build "
                         f"reads versions up to {current}")


def current() -> int:
    return len(CHAIN)


def version(db: sqlite3.Connection) -> int:
    """The database's schema version, 0 for an empty one."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone() is None:
        return 0
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return 0 if row is None else int(row[0])


def check(db: sqlite3.Connection, path: str) -> int:
    """The version, or TooNew."""
    found = version(db)
    if found > current():
        raise TooNew(path, found, current())
    return found


def migrate(db: sqlite3.Connection, path: str) -> int:
    """Bring the database (autocommit connection) to the current version; returns it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        found = check(db, path)
        if found == 0:
            db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            db.execute("INSERT INTO schema_version VALUES (0)")
        for step in CHAIN[found:]:
            for statement in step.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute("UPDATE schema_version SET version = ?", (current(),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return current()
