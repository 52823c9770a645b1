"""The audit log on disk: one hash chain of signed records, in rotated JSON-lines files.

`AuditLog(state_dir, site)` owns `state_dir/audit/`: the site key (`site-key.pem`, mode
0600, made at first use), its public half (`audit-key.pub`, all a verifier needs) and the
files `audit-YYYYMMDD-SEQ.jsonl` (SEQ: the first record's seq; files sort by it).

Invariants, and why:

* **One writer per chain.**  An exclusive `flock` on `audit/.lock` is held while the log is
  open: a second writer (another process, or a second instance) would fork the chain, so it
  is refused (`AuditLogBusy`).  Within the process, `append` is safe from any thread: one
  lock orders seq, prev, signature and write, so the file order is the chain order.
* **Append only.**  Files are opened O_APPEND and never rewritten.  Each record is written
  with one os.write of its whole line before `append` returns, so a crash of the process
  (kill -9 of any actor) loses nothing that was appended.
* **Durability policy: fsync in the background, at most every `sync_interval_ms` (default
  1 s), and on rotation and close.**  A power loss can lose at most the records of the last
  interval, and can cut the last line; an fsync per record would put a flash write (1-30 ms
  on SD cards and eMMC) on the path of every instruction, and a flood of refused requests
  would hammer the flash.  `sync()` forces one now.
* **Rotation keeps the chain.**  A new file starts (by UTC day of the record's time, or
  when the file reached `max_file_bytes`) with a `rotation` record whose prev is the last
  hash of the file before and whose detail names that file, its last seq and hash.
* **A cut last line is never appended to.**  If the current file ends with a partial line
  (power loss), the log leaves that file as it is and continues in a new one whose
  rotation record declares the cut (file, byte offset, length), so `verify` can tell a
  declared power-loss cut from tampering.
* **Retention removes whole files, oldest first, never the current one**: a file goes when
  its last record is older than `retention_days`, and only a prefix of the chain goes, so
  what remains still verifies as one chain.  Each removal is itself recorded.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relevent.audit import chain
from relevent.clock import now_ms

log = logging.getLogger(__name__)

KEY_FILE = "site-key.pem"
PUBLIC_KEY_FILE = "audit-key.pub"
DAY_MS = 86_400_000


class AuditLogBusy(RuntimeError):
    """Another AuditLog holds this directory."""


class AuditLogClosed(RuntimeError):
    """append after close."""


# -- the site key -----------------------------------------------------------------------

def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a temp file (fsync'd) and link it to `path`; FileExistsError if
    `path` exists (so two processes racing to make a key agree on one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)


def load_or_create_key(directory: str | os.PathLike) -> Ed25519PrivateKey:
    """The site's Ed25519 key in `directory/site-key.pem`, made (mode 0600) if missing; also
    (re)writes `directory/audit-key.pub` (PEM) when missing or not matching."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            _write_new(path, pem, 0o600)
        except FileExistsError:          # another process made it first: use theirs
            data = path.read_bytes()
        else:
            data = pem
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by group or others (mode %o): it signs the audit log",
                    path, path.stat().st_mode & 0o777)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    pub_path = directory / PUBLIC_KEY_FILE
    try:
        current = pub_path.read_bytes()
    except FileNotFoundError:
        current = None
    if current != public:
        tmp = pub_path.with_name(f".{pub_path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(public)
        os.chmod(tmp, 0o644)
        os.replace(tmp, pub_path)
        _fsync_dir(directory)
    return key


# -- reading the end of a file ----------------------------------------------------------

def _tail(path: Path) -> tuple[int, int, bytes | None]:
    """(size, end of the last complete line, that line without its newline or None)."""
    with open(path, "rb") as f:
        size = pos = f.seek(0, os.SEEK_END)
        buf = b""                                   # the file's bytes [pos, size)
        while True:
            last_nl = buf.rfind(b"\n")
            if last_nl >= 0:
                before = buf.rfind(b"\n", 0, last_nl)
                if before >= 0 or pos == 0:
                    return size, pos + last_nl + 1, buf[before + 1:last_nl]
            elif pos == 0:
                return size, 0, None
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf


def _last_record_time(path: Path) -> int | None:
    try:
        _, _, line = _tail(path)
        return chain.parse_line(line)["time"] if line is not None else None
    except (OSError, chain.RecordError):
        return None


# -- the log ----------------------------------------------------------------------------

class AuditLog:
    """The site's audit log.  `append(entry)` from any thread; `close()` at the end."""

    def __init__(self, state_dir: str | os.PathLike, site: str, key: Ed25519PrivateKey | None = None,
                 retention_days: float = 7, max_file_bytes: int = 16 * 1024 * 1024,
                 sync_interval_ms: int = 1000, clock: Callable[[], int] = now_ms,
                 chain_dir: str | os.PathLike | None = None) -> None:
        # `chain_dir`: the chain's own folder (a site has one chain per writing process,
        # relevent/audit/site.py); default `state_dir/audit`.
        self.directory = Path(chain_dir) if chain_dir is not None else Path(state_dir) / "audit"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.site = site
        self.retention_ms = int(retention_days * DAY_MS)
        self.max_file_bytes = max_file_bytes
        self.sync_interval = sync_interval_ms / 1000
        self._clock = clock
        self._lock = threading.Lock()
        self._lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise AuditLogBusy(f"{self.directory} is open by another audit log writer") from None
        try:
            self._key = key if key is not None else load_or_create_key(self.directory)
            self._chain = chain.Chain(self._key)
            self._fd = -1
            self._path: Path | None = None
            self._size = 0
            self._day = ""
            self._dirty = False
            self._closed = False
            with self._lock:
                self._open(self._clock())
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="audit-sync", daemon=True)
        self._syncer.start()

    # public ------------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        """The file being written."""
        return self._path

    @property
    def last_hash(self) -> str:
        """The hash of the last record written: ship it off-site to anchor the chain."""
        return self._chain.prev

    @property
    def next_seq(self) -> int:
        return self._chain.seq

    def append(self, record: Mapping[str, Any]) -> None:
        """Sign and write one record (fields: chain.INPUT_FIELDS; see chain.Entry).

        Returns once the line is in the kernel (safe from a process crash); fsync follows
        within `sync_interval_ms`.  ValueError for a field the record does not have.
        """
        fields = chain.entry_fields(record)
        with self._lock:
            if self._closed:
                raise AuditLogClosed("the audit log is closed")
            time_ms = self._clock()
            if self._size >= self.max_file_bytes:
                self._rotate(time_ms, "size")
            elif chain.day_of(time_ms) != self._day:
                self._rotate(time_ms, "day")
            self._write(time_ms, fields)

    def sync(self) -> None:
        """fsync what was appended so far, now."""
        with self._lock:
            if self._closed or not self._dirty:
                return
            fd = os.dup(self._fd)
            self._dirty = False
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """fsync, close the file and release the directory.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                os.close(self._lock_fd)
        if self._syncer is not threading.current_thread():
            self._syncer.join(timeout=5)

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals (called with self._lock held) -------------------------------------------

    def _header(self, **extra: Any) -> dict[str, Any]:
        return {"format": chain.FORMAT, "version": chain.VERSION, "site": self.site,
                "key": chain.fingerprint(self._key), "pid": os.getpid(), **extra}

    def _write(self, time_ms: int, fields: Mapping[str, Any]) -> None:
        before = self._chain.seq, self._chain.prev
        line = self._chain.next(time_ms, fields) + b"\n"
        try:
            view = memoryview(line)
            while view:                      # a regular file takes it whole, but be sure
                view = view[os.write(self._fd, view):]
        except OSError:
            # Not (fully) written: a partial line (a full disk) is cut off again, so the file
            # ends with the last whole record and the chain goes on from it.  Should even the
            # cut fail, the partial line shows in verify as a bad record at that place.
            self._chain.seq, self._chain.prev = before
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise
        self._size += len(line)
        self._dirty = True

    def _log_record(self, time_ms: int, kind: str, detail: dict[str, Any]) -> None:
        self._write(time_ms, chain.entry_fields({"kind": kind, "party": "relevent", "detail": detail}))

    def _files(self) -> list[Path]:
        named = []
        for p in self.directory.iterdir():
            parsed = chain.parse_file_name(p.name)
            if parsed is not None:
                named.append((parsed[1], p))
        return [p for _, p in sorted(named)]

    def _new_file(self, time_ms: int) -> None:
        self._day = chain.day_of(time_ms)
        path = self.directory / chain.file_name(self._day, self._chain.seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o640)
        _fsync_dir(self.directory)
        self._path = path
        self._size = 0

    def _open(self, time_ms: int) -> None:
        files = self._files()
        while files and files[-1].stat().st_size == 0:   # made, then a crash before its first line
            files.pop().unlink()
        if not files:
            self._new_file(time_ms)
            self._log_record(time_ms, "start", self._header(reason="new log"))
            self._retain(time_ms)
            return
        last = files[-1]
        size, complete_end, line = _tail(last)
        try:
            if line is None:
                raise chain.RecordError("no complete record")
            record = chain.parse_line(line)
        except chain.RecordError as exc:
            # Cannot continue a chain whose end is unreadable: begin a new one, saying why
            # (verify reports the break: the evidence before it is no longer linked).
            log.error("audit log %s: last record unreadable (%s); starting a new chain", last, exc.reason)
            parsed = chain.parse_file_name(last.name)
            with open(last, "rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            # seq keeps growing (file names keep sorting); prev restarts at GENESIS
            self._chain = chain.Chain(self._key, seq=(parsed[1] if parsed else 0) + lines + 1)
            self._new_file(time_ms)
            self._log_record(time_ms, "start", self._header(
                reason=f"the last record of {last.name} is unreadable: {exc.reason}", previous_file=last.name))
            self._retain(time_ms)
            return
        self._chain = chain.Chain(self._key, seq=record["seq"] + 1, prev=chain.record_hash(line))
        parsed = chain.parse_file_name(last.name)
        if size > complete_end:
            cut = {"file": last.name, "offset": complete_end, "bytes": size - complete_end}
            log.warning("audit log %s ends with a cut line (%d bytes at offset %d, power loss?); "
                        "continuing in a new file", last, cut["bytes"], cut["offset"])
            self._rotate_from(last, record, time_ms, "truncated last line", truncated=cut)
        elif size >= self.max_file_bytes:
            self._rotate_from(last, record, time_ms, "size")
        elif parsed is None or parsed[0] != chain.day_of(time_ms):
            self._rotate_from(last, record, time_ms, "day")
        else:
            self._fd = os.open(last, os.O_WRONLY | os.O_APPEND)
            self._path, self._size, self._day = last, size, parsed[0]
            self._log_record(time_ms, "open", self._header(reason="log reopened"))
        self._retain(time_ms)

    def _rotate_from(self, previous: Path, last_record: Mapping[str, Any], time_ms: int, reason: str,
                     **extra: Any) -> None:
        self._new_file(time_ms)
        self._log_record(time_ms, "rotation", self._header(
            reason=reason, previous_file=previous.name, previous_seq=last_record["seq"],
            previous_hash=self._chain.prev, **extra))

    def _rotate(self, time_ms: int, reason: str) -> None:
        previous, last_seq = self._path, self._chain.seq - 1
        os.fsync(self._fd)
        os.close(self._fd)
        self._dirty = False
        self._rotate_from(previous, {"seq": last_seq}, time_ms, reason)
        self._retain(time_ms)

    def _retain(self, time_ms: int) -> None:
        """Remove the oldest files whose last record is older than the retention, stopping
        at the first one still kept (only a prefix of the chain goes); never the current."""
        removed = []
        for path in self._files():
            if path == self._path:
                break
            last_time = _last_record_time(path)
            if last_time is None:
                try:
                    last_time = int(path.stat().st_mtime * 1000)
                except FileNotFoundError:
                    continue
            if last_time >= time_ms - self.retention_ms:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append({"file": path.name, "last_time": last_time})
        if removed:
            _fsync_dir(self.directory)
            self._log_record(time_ms, "retention", {"removed": removed,
                                                    "retention_days": self.retention_ms / DAY_MS})

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.sync_interval):
            try:
                self.sync()
            except OSError as exc:
                log.error("audit log fsync failed: %s", exc)
