"""The history database, `<state_dir>/history.sqlite`: written by the observer thread of
the runner only (`HistoryWriter`), read by anyone read-only (`read_history`: the CLI, the
HTTP endpoint's process).

Durability: WAL, so readers never block the writer nor see half a transaction, and
synchronous = FULL: every commit (one per observer sample, every `[runtime] sample_s`) is
on disk when it returns, so a power cut loses nothing committed.  With NORMAL a power cut
could lose every commit since the last checkpoint (up to ~1000 pages, over an hour of
samples); FULL costs one fsync per sample period, on the observer thread, never on a
controller's.  kill -9 and power loss never corrupt the database (SQLite's WAL protocol);
tests/test_history.py kills a writer at random points and checks.

The decisions (what to fold, what retention removes) are relevent/history/fold.py's.
"""
from __future__ import annotations

import json
import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

from relevent.history import fold as F
from relevent.history.schema import HistoryError, check, migrate

HISTORY_FILE = "history.sqlite"
BUSY_TIMEOUT_S = 5.0
JOURNAL_LIMIT = 1 << 20      # bytes the WAL file is cut back to after a checkpoint


def history_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / HISTORY_FILE


def _flag(value: Any) -> int | None:
    return None if value is None else int(bool(value))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class HistoryWriter:
    """The one writer.  Not thread-safe: one thread (the observer's) opens, writes and closes it."""

    def __init__(self, path: str | os.PathLike, raw_keep_ms: int = F.RAW_KEEP_MS) -> None:
        self.path = Path(path)
        self.raw_keep_ms = raw_keep_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=BUSY_TIMEOUT_S)
        try:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute(f"PRAGMA journal_size_limit = {JOURNAL_LIMIT}")
            migrate(self.db, str(self.path))
            self._sources: dict[str, int] = {}
            self.ders = {row[0] for row in self.db.execute("SELECT DISTINCT der FROM sample")}
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    # -- writing --------------------------------------------------------------------------
    def _transaction(self, work) -> Any:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            result = work()
            self.db.execute("COMMIT")
            return result
        except BaseException:
            self._sources.clear()  # ids given in the rolled-back transaction are gone
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def _source_id(self, sources: dict | None) -> int | None:
        if not sources:
            return None
        text = json.dumps(sources, sort_keys=True, separators=(",", ":"))
        found = self._sources.get(text)
        if found is None:
            self.db.execute("INSERT OR IGNORE INTO source (text) VALUES (?)", (text,))
            found = self.db.execute("SELECT id FROM source WHERE text = ?", (text,)).fetchone()[0]
            self._sources[text] = found
        return found

    def write(self, at_ms: int, ders: dict[str, dict], events: list[dict]) -> None:
        """One observer sample, in one transaction: per DER (relevent/observe/extract.py
        `ders`) its measured power, command and source schedules, and the events."""
        def work() -> None:
            for der, s in ders.items():
                self.db.execute("INSERT OR REPLACE INTO sample VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (der, at_ms, _number(s.get("measured_w")), _number(s.get("setpoint_w")),
                                 _number(s.get("limit_w")), _flag(s.get("connected")),
                                 self._source_id(s.get("sources"))))
            for e in events:
                self.db.execute("INSERT INTO event VALUES (?, ?, ?, ?, ?)",
                                (e["t"], e["kind"], e["subject"], e.get("der"),
                                 json.dumps(e.get("detail") or {}, sort_keys=True, separators=(",", ":"))))
        self._transaction(work)
        self.ders.update(ders)

    def maintain(self, now_ms: int, days: float) -> dict:
        """Fold raw samples older than the raw window into 15-minute rows, then remove what
        is older than `days` (fold.py decides both); one transaction.  Returns counts."""
        cutoff = F.fold_cutoff(now_ms, self.raw_keep_ms)
        keep = F.retention_cutoff(now_ms, days)

        def work() -> dict:
            done = {"folded": 0, "buckets": 0, "removed_samples": 0, "removed_buckets": 0, "removed_events": 0}
            for der in sorted(self.ders):
                rows = [F.Sample(*row) for row in self.db.execute(
                    "SELECT der, t, measured_w, setpoint_w, limit_w, connected, source FROM sample "
                    "WHERE der = ? AND t < ?", (der, cutoff))]
                if not rows:
                    continue
                for bucket in F.fold(rows):
                    old = self.db.execute("SELECT * FROM sample_15m WHERE der = ? AND t = ?",
                                          (bucket.der, bucket.t)).fetchone()
                    if old is not None:
                        bucket = F.merge(F.Bucket(*old), bucket)
                    self.db.execute("INSERT OR REPLACE INTO sample_15m VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    (bucket.der, bucket.t, bucket.n, bucket.mean_w, bucket.min_w, bucket.max_w,
                                     bucket.last_t, bucket.setpoint_w, bucket.limit_w, _flag(bucket.connected),
                                     bucket.source))
                    done["buckets"] += 1
                done["folded"] += self.db.execute("DELETE FROM sample WHERE der = ? AND t < ?",
                                                  (der, cutoff)).rowcount
            done["removed_samples"] = self.db.execute("DELETE FROM sample WHERE t < ?", (keep,)).rowcount
            done["removed_buckets"] = self.db.execute("DELETE FROM sample_15m WHERE t + ? <= ?",
                                                      (F.BUCKET_MS, keep)).rowcount
            done["removed_events"] = self.db.execute("DELETE FROM event WHERE t < ?", (keep,)).rowcount
            if done["removed_samples"] or done["removed_buckets"]:
                self.db.execute("DELETE FROM source WHERE id NOT IN (SELECT source FROM sample WHERE source IS NOT "
                                "NULL UNION SELECT source FROM sample_15m WHERE source IS NOT NULL)")
                self._sources.clear()
            return done
        return self._transaction(work)


# -- reading --------------------------------------------------------------------------------------
def open_readonly(path: str | os.PathLike) -> sqlite3.Connection:
    """A read-only connection (the writer may be writing: WAL readers see whole transactions)."""
    uri = "file:" + urllib.parse.quote(str(Path(path).resolve())) + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        check(db, str(path))
    except BaseException:
        db.close()
        raise
    return db


def _sample_json(row: tuple, sources: dict[int, str], resolution_s: int | None) -> dict:
    return {"at": row[0], "resolution_s": resolution_s, "measured_w": row[1], "min_w": row[2], "max_w": row[3],
            "setpoint_w": row[4], "limit_w": row[5], "connected": None if row[6] is None else bool(row[6]),
            "sources": json.loads(sources[row[7]]) if row[7] in sources else {}}


def read_history(path: str | os.PathLike, der: str, since_ms: int, limit: int = 10_000,
                 until_ms: int | None = None) -> dict:
    """A DER's samples (raw and 15-minute, oldest first, the newest `limit`) and events
    from `since_ms` on.  A site that never wrote history has none (not an error); a
    database of a newer build raises TooNew (a HistoryError)."""
    path = Path(path)
    if not path.exists():
        return {"samples": [], "events": []}
    until = until_ms if until_ms is not None else 2 ** 62
    try:
        db = open_readonly(path)
    except sqlite3.Error as exc:
        raise HistoryError(f"{path}: cannot read the history: {exc}") from None
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sample'").fetchone() is None:
            return {"samples": [], "events": []}
        sources = dict(db.execute("SELECT id, text FROM source"))
        raw = db.execute("SELECT t, measured_w, NULL, NULL, setpoint_w, limit_w, connected, source FROM sample "
                         "WHERE der = ? AND t >= ? AND t < ? ORDER BY t DESC LIMIT ?",
                         (der, since_ms, until, limit)).fetchall()
        folded = db.execute("SELECT t, mean_w, min_w, max_w, setpoint_w, limit_w, connected, source FROM sample_15m "
                            "WHERE der = ? AND t + ? > ? AND t < ? ORDER BY t DESC LIMIT ?",
                            (der, F.BUCKET_MS, since_ms, until, limit)).fetchall()
        events = db.execute("SELECT t, kind, subject, detail FROM event WHERE der = ? AND t >= ? AND t < ? "
                            "ORDER BY t DESC LIMIT ?", (der, since_ms, until, limit)).fetchall()
    except sqlite3.Error as exc:
        raise HistoryError(f"{path}: cannot read the history: {exc}") from None
    finally:
        db.close()
    samples = [_sample_json(row, sources, None) for row in raw] + \
              [_sample_json(row, sources, F.BUCKET_MS // 1000) for row in folded]
    samples.sort(key=lambda s: s["at"])
    return {"samples": samples[-limit:],
            "events": [{"at": t, "kind": kind, "subject": subject, "detail": json.loads(detail)}
                       for t, kind, subject, detail in reversed(events)]}
