"""The site's state store: one directory, one msgpack record per actor key.

One file per key keeps every actor the only writer of its own records, so actor
processes never contend for a shared file.  Every write is atomic (write, fsync, rename,
fsync the directory; an actor's lifetime record skips the fsyncs, see `save`) and carries
a format name and version.  A record that cannot be read
raises `StateCorrupt` naming the file: an actor then fails loudly instead of starting
from defaults.

Versions (relevent/state/migrations.py): a record of any older version is read through the
migration chain and the next save writes the current version.  A record from a newer build
raises `StateTooNew` naming both versions and is never written over; `check_directory`
finds such a record (or a damaged one) before a site starts, so a state directory from a
newer build is refused as a whole with nothing written.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import msgpack

from relevent.state import migrations

FORMAT = "relevent-state"
STORE_DIR = "store"   # the store's directory inside the site's state directory
SUFFIX = ".msgpack"
_SAFE_KEY = re.compile(r"[^A-Za-z0-9_.-]")
LIFETIME_PREFIX = "actor__"   # the file name of every key "actor/...": an actor's lifetime record


def store_directory(state_dir: str | os.PathLike) -> Path:
    """Where a site's records live: the one place that says it (actors, `relevent state`)."""
    return Path(state_dir) / STORE_DIR


def record_files(directory: str | os.PathLike) -> list[Path]:
    """The record files of a store, sorted; a save's temporary (``.name.pid.tmp``) is not one."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == SUFFIX and not p.name.startswith(".")
                  and p.is_file())


class StateError(Exception):
    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(message)


class StateCorrupt(StateError):
    def __init__(self, path: Path, reason: str) -> None:
        self.reason = reason
        super().__init__(path, f"state file {path} is unreadable: {reason}; "
                               "move it aside to start that actor from its topology defaults")


class StateTooNew(StateError):
    def __init__(self, path: Path, version: int, current: int) -> None:
        self.version, self.current = version, current
        self.reason = (f"format version {version} was written by a newer relevent; this build reads versions "
                       f"{migrations.FIRST}..{current}")
        super().__init__(path, f"state file {path}: {self.reason}; run that newer build (or restore a backup "
                               "made for this one): nothing was written")


def decode(path: Path, blob: bytes, key: str | None = None) -> dict[str, Any]:
    """The record in ``blob`` (read from ``path``), upgraded to the current version.
    ``key`` None: the key is checked against the file's name instead."""
    return _decode(path, blob, key)[0]


def _decode(path: Path, blob: bytes, key: str | None) -> tuple[dict[str, Any], Any]:
    """decode's record, and the version it was written at."""
    try:
        record = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise StateCorrupt(path, f"not msgpack ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise StateCorrupt(path, "not a relevent state record")
    written_at = record.get("version")
    try:
        record = migrations.upgrade(record)
    except migrations.TooNew as exc:
        raise StateTooNew(path, exc.version, exc.current) from None
    except migrations.UnknownVersion as exc:
        raise StateCorrupt(path, str(exc)) from None
    if key is None:
        key = record.get("key")
        if not isinstance(key, str) or _file_name(key) != path.name:
            raise StateCorrupt(path, f"record is for {key!r}, which is not this file's key")
    if record.get("key") != key or not isinstance(record.get("data"), dict):
        raise StateCorrupt(path, f"record is for {record.get('key')!r}, not {key!r}")
    return record, written_at


def lifetime_record(path: Path) -> bool:
    """Whether ``path`` is an actor's lifetime record (key ``actor/<path>``): information
    only, written without fsync (relevent/actors/base.py), so one a power cut left damaged
    is no problem of the store: its actor counts its starts again."""
    return path.name.startswith(LIFETIME_PREFIX)


def problems(directory: str | os.PathLike) -> Iterator[StateError]:
    """Each record of the store at ``directory`` that this build cannot take (damaged, of
    an unknown version, or from a newer build), in file order; a damaged lifetime record is
    none (`lifetime_record`), one from a newer build is.  Reads only."""
    for path in record_files(directory):
        try:
            decode(path, path.read_bytes())
        except StateCorrupt as exc:
            if not lifetime_record(path):
                yield exc
        except StateError as exc:
            yield exc
        except OSError as exc:
            if not lifetime_record(path):
                yield StateCorrupt(path, f"cannot read ({exc.strerror})")


def readable(path: Path) -> bool:
    """Whether the record file at ``path`` decodes (of any version this build reads)."""
    try:
        decode(path, path.read_bytes())
        return True
    except (StateError, OSError):
        return False


def check_directory(directory: str | os.PathLike) -> StateError | None:
    """The first record this build cannot take, or None (`relevent state check`)."""
    return next(problems(directory), None)


def newer_record(directory: str | os.PathLike) -> StateTooNew | None:
    """The first record written by a newer build, or None: a site refuses to start on it
    before anything is written (a damaged record only fails its own actor)."""
    return next((p for p in problems(directory) if isinstance(p, StateTooNew)), None)


def _file_name(key: str) -> str:
    return _SAFE_KEY.sub("_", key.replace("/", "__")) + SUFFIX


class StateStore:
    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._outdated: set[str] = set()   # keys last loaded from a record of an older version

    def path_of(self, key: str) -> Path:
        return self.directory / _file_name(key)

    def load(self, key: str) -> dict[str, Any] | None:
        """The data saved under ``key`` (upgraded from an older version if need be), or None
        if none was ever saved.  Raises StateCorrupt or StateTooNew naming the file."""
        path = self.path_of(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        record, written_at = _decode(path, blob, key)
        if written_at == migrations.current():
            self._outdated.discard(key)
        else:
            self._outdated.add(key)
        return record["data"]

    def outdated(self, key: str) -> bool:
        """Whether ``key``'s record, when last loaded, was of an older version (upgraded
        in memory only: the next save writes it at the current one)."""
        return key in self._outdated

    def save(self, key: str, data: dict[str, Any], durable: bool = True) -> None:
        """Write the record atomically (a reader sees the old one or the new one, whole).
        `durable`: on disk before this returns (fsync of the file and of the directory: the
        main cost of a save); without, the kernel writes it back
        later, so a power cut may lose it or, for a new file, leave it empty: only for
        records a reader tolerates losing (an actor's lifetime record)."""
        path = self.path_of(key)
        blob = msgpack.packb({"format": FORMAT, "version": migrations.current(), "key": key, "data": data},
                             use_bin_type=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, blob)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._outdated.discard(key)
        if not durable:
            return
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def delete(self, key: str) -> None:
        try:
            self.path_of(key).unlink()
        except FileNotFoundError:
            pass
