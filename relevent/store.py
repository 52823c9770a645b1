"""The site's state store: one directory, one msgpack record per actor key.

One file per key keeps every actor the only writer of its own records, so actor
processes never contend for a shared file.  Every write is atomic (write, fsync, rename,
fsync the directory) and carries a format name and version.  A record that cannot be read
raises `StateCorrupt` naming the file: an actor then fails loudly instead of starting
from defaults.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import msgpack

FORMAT = "relevent-state"
VERSION = 1
_SAFE_KEY = re.compile(r"[^A-Za-z0-9_.-]")


class StateCorrupt(Exception):
    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"state file {path} is unreadable: {reason}; "
                         "move it aside to start that actor from its topology defaults")


class StateStore:
    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        return self.directory / (_SAFE_KEY.sub("_", key.replace("/", "__")) + ".msgpack")

    def load(self, key: str) -> dict[str, Any] | None:
        """The record saved under ``key``, or None if none was ever saved."""
        path = self.path_of(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            record = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            raise StateCorrupt(path, f"not msgpack ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise StateCorrupt(path, "not a relevent state record")
        if record.get("version") != VERSION:
            raise StateCorrupt(path, f"format version {record.get('version')!r}, this build reads {VERSION}")
        if record.get("key") != key or not isinstance(record.get("data"), dict):
            raise StateCorrupt(path, f"record is for {record.get('key')!r}, not {key!r}")
        return record["data"]

    def save(self, key: str, data: dict[str, Any]) -> None:
        path = self.path_of(key)
        blob = msgpack.packb({"format": FORMAT, "version": VERSION, "key": key, "data": data},
                             use_bin_type=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
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
