"""A site's state as one file, to back it up or move it to a replacement box.

The archive is a tar.gz holding ``manifest.json`` and the store's record files
(``store/<file>``, byte for byte).  The manifest names the archive format and its version,
the store's record format version, the site, the build that wrote it, when, the sha256 of
every file and an overall checksum over all of that.

Invariants, and why:

* What is archived is the store and only the store: it is the site's state (every
  schedule, every lifetime record).  Logs, the lock, the pid file and the MMS model
  (regenerated at every start) stay behind.
* An archive is read completely and verified before anything is written: every file
  named in the manifest is present with its sha256, no file is there that the manifest
  does not name, the overall checksum matches, no version is newer than this build
  reads, and every record decodes (through the migration chain).  A tampered or
  truncated archive is refused naming the file, and the state directory is untouched.
* An import never runs beside the site: it holds the state directory's lock (the one
  `relevent run` takes) from before it writes until the new store is in place, so a site
  cannot start half-way and a running site makes the import refuse.
* An import is atomic: the records are written and fsynced into a temporary directory
  beside the store, which then replaces it by rename.  A failure at any point before
  leaves the old store as it was; the old store is kept (``store.replaced-<time>``), so
  even a mistaken import loses nothing.
* An archive is for one site: importing it under another site name is refused unless
  forced, because schedules belong to the DERs and controllers of that site.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any, Iterator

from relevent.state import migrations
from relevent.store import (
    STORE_DIR, SUFFIX, StateError, check_directory, decode, lifetime_record, readable, record_files, store_directory,
)

FORMAT = "relevent-state-archive"
VERSION = 1                   # of the archive's layout and manifest
MANIFEST = "manifest.json"
MAX_MEMBER = 64 << 20         # bytes; records are kilobytes, this only bounds a hostile archive
_MEMBER = re.compile(rf"^{STORE_DIR}/[A-Za-z0-9_.-]+{re.escape(SUFFIX)}$")


class ArchiveError(Exception):
    """Refused: the message says which file and why; nothing was written."""


class SiteRunning(ArchiveError):
    pass


# -- pure parts ------------------------------------------------------------------------------------
def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def manifest_checksum(manifest: dict) -> str:
    """The sha256 of the manifest without its checksum, in one canonical JSON form: covers
    every file's hash and the site, versions and time."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def make_manifest(files: dict[str, bytes], site: str, build: str, created: str) -> dict:
    manifest = {
        "format": FORMAT, "archive_version": VERSION, "state_version": migrations.current(),
        "site": site, "build": build, "created": created,
        "files": {name: sha256(blob) for name, blob in sorted(files.items())},
    }
    manifest["checksum"] = manifest_checksum(manifest)
    return manifest


def verify(manifest: Any, files: dict[str, bytes]) -> None:
    """Raise ArchiveError naming the first file that is wrong, and why."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{MANIFEST}: not a relevent state archive manifest")
    archive_version = manifest.get("archive_version")
    if not isinstance(archive_version, int) or archive_version < 1:
        raise ArchiveError(f"{MANIFEST}: archive version {archive_version!r} is not one relevent wrote")
    if archive_version > VERSION:
        raise ArchiveError(f"{MANIFEST}: archive format version {archive_version} was written by a newer relevent; "
                           f"this build reads up to {VERSION}")
    state_version = manifest.get("state_version")
    if not isinstance(state_version, int) or state_version < migrations.FIRST:
        raise ArchiveError(f"{MANIFEST}: state format version {state_version!r} is not one relevent wrote")
    if state_version > migrations.current():
        raise ArchiveError(f"{MANIFEST}: state format version {state_version} was written by a newer relevent; "
                           f"this build reads versions {migrations.FIRST}..{migrations.current()}")
    if manifest.get("checksum") != manifest_checksum(manifest):
        raise ArchiveError(f"{MANIFEST}: checksum mismatch (the manifest was altered or damaged)")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise ArchiveError(f"{MANIFEST}: no file list")
    for name, digest in sorted(listed.items()):
        if name not in files:
            raise ArchiveError(f"{name}: listed in the manifest but missing from the archive")
        if sha256(files[name]) != digest:
            raise ArchiveError(f"{name}: sha256 mismatch (altered or damaged)")
    for name in sorted(files):
        if name not in listed:
            raise ArchiveError(f"{name}: in the archive but not in the manifest")
    for name in sorted(files):
        try:
            decode(Path(name), files[name])
        except StateError as exc:
            raise ArchiveError(f"{name}: {getattr(exc, 'reason', exc)}") from None


# -- files -------------------------------------------------------------------------------------------
def build_version() -> str:
    from relevent import __version__
    return __version__


def read_store(state_dir: str | os.PathLike) -> dict[str, bytes]:
    """The store's record files as archive members, each checked to decode: an archive
    that cannot be imported is refused now, naming the record, not on the new box.  A
    damaged lifetime record (information only, relevent/store.py) is left out."""
    bad = check_directory(store_directory(state_dir))
    if bad is not None:
        raise ArchiveError(f"{bad.path}: {getattr(bad, 'reason', bad)}")
    return {f"{STORE_DIR}/{path.name}": path.read_bytes() for path in record_files(store_directory(state_dir))
            if not lifetime_record(path) or readable(path)}


def export_state(state_dir: str | os.PathLike, site: str, out: str | os.PathLike,
                 created: _dt.datetime | None = None) -> dict:
    """Write the archive of the store at ``state_dir`` to ``out`` (atomically) and return
    its manifest.  Reads only: a running site may be exported (each record file is
    replaced atomically by its actor, so each is read whole)."""
    created = created or _dt.datetime.now(_dt.timezone.utc)
    files = read_store(state_dir)
    manifest = make_manifest(files, site, build_version(), created.isoformat(timespec="seconds"))
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    mtime = int(created.timestamp())
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            _add(tar, MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(), mtime)
            for name, blob in sorted(files.items()):
                _add(tar, name, blob, mtime)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return manifest


def _add(tar: tarfile.TarFile, name: str, blob: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(blob), mtime, 0o600
    tar.addfile(info, io.BytesIO(blob))


def read_archive(path: str | os.PathLike) -> tuple[dict, dict[str, bytes]]:
    """The manifest and the record files of the archive at ``path``, verified (`verify`)."""
    files: dict[str, bytes] = {}
    manifest_blob = None
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name == MANIFEST and member.isfile() and manifest_blob is None:
                    manifest_blob = _member(tar, member)
                elif _MEMBER.match(member.name) and member.isfile() and member.name not in files:
                    files[member.name] = _member(tar, member)
                else:
                    raise ArchiveError(f"{member.name}: not a file a relevent state archive holds")
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ArchiveError(f"{path}: not a readable tar.gz ({exc.__class__.__name__}: {exc})") from None
    if manifest_blob is None:
        raise ArchiveError(f"{MANIFEST}: missing (not a relevent state archive)")
    try:
        manifest = json.loads(manifest_blob)
    except ValueError as exc:
        raise ArchiveError(f"{MANIFEST}: not JSON ({exc})") from None
    verify(manifest, files)
    return manifest, files


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_MEMBER:
        raise ArchiveError(f"{member.name}: {member.size} bytes, more than any record")
    f = tar.extractfile(member)
    assert f is not None
    return f.read()


@contextlib.contextmanager
def site_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's lock (the one `relevent run` holds, relevent/runtime/
    statelock.py) for the duration; refuse, naming the runner, if a site holds it.  The
    lock file's content (the runner's pid) is neither truncated nor written."""
    from relevent.runtime.statelock import LOCK_NAME, running_pid

    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = running_pid(state_dir)
            who = f" (runner pid {pid})" if pid else " (its processes hold the lock)"
            raise SiteRunning(f"the site is running with state directory {state_dir}{who}: stop it first") from None
        yield
    finally:
        os.close(fd)


def import_state(archive: str | os.PathLike, state_dir: str | os.PathLike, site: str,
                 force: bool = False) -> dict:
    """Replace the store at ``state_dir`` with the archive's records.  Returns a summary:
    the manifest, the number of records and where the old store was kept (or None)."""
    state_dir = Path(state_dir)
    manifest, files = read_archive(archive)
    if manifest.get("site") != site and not force:
        raise ArchiveError(f"the archive is of site {manifest.get('site')!r}, this topology's site is {site!r}: "
                           "use --force to import it anyway")
    with site_lock(state_dir):
        replaced = _install(state_dir, files)
    return {"manifest": manifest, "records": len(files), "replaced": replaced}


def _install(state_dir: Path, files: dict[str, bytes]) -> Path | None:
    target = store_directory(state_dir)
    work = state_dir / f".{STORE_DIR}.import-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir(mode=0o700)
        for name, blob in sorted(files.items()):
            _write_file(work / name.split("/", 1)[1], blob)
        _fsync_dir(work)
        problem = check_directory(work)  # what is on disk now, read back
        if problem is not None:
            raise ArchiveError(f"{problem.path.name}: {getattr(problem, 'reason', problem)} after writing")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    replaced = None
    if target.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        replaced = state_dir / f"{STORE_DIR}.replaced-{stamp}"
        n = 1
        while replaced.exists():
            n += 1
            replaced = state_dir / f"{STORE_DIR}.replaced-{stamp}-{n}"
        os.rename(target, replaced)
    try:
        os.rename(work, target)
    except BaseException:
        if replaced is not None:
            os.rename(replaced, target)
        shutil.rmtree(work, ignore_errors=True)
        raise
    _fsync_dir(state_dir)
    return replaced


def _write_file(path: Path, blob: bytes) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_state(state_dir: str | os.PathLike) -> tuple[int, StateError | None]:
    """(records checked, the first bad one or None): every record decodes, its key is its
    file's, its version is one this build reads (`relevent state check`)."""
    directory = store_directory(state_dir)
    bad = check_directory(directory)
    return len(record_files(directory)), bad

