"""Verify an audit log: every record canonical and signed, one unbroken chain across files.

`verify(paths, public_key)` returns a `Result`: OK, or the first bad record as (file, line,
reason).  It needs only the public key, and should be given the operator's copy of it: the
`audit-key.pub` beside the log proves only that the log agrees with itself.

What is bad, and why:

* a line that is not the canonical, signed encoding of a record (one byte changed; a
  record re-signed with another key);
* a `prev` that is not the hash of the record before, or a `seq` that does not follow (a
  record removed, inserted or reordered; a file removed from the middle of the rotation
  chain: the next file's first record then names a hash no file ends with);
* a file that does not begin with a header record (`start` or `rotation`): its first
  records were removed;
* a cut line (no newline at the end) anywhere but at the end of the last file, unless the
  next file's rotation record declares exactly that cut (the log writes such a declaration
  when it reopens after a power loss);
* with `anchor` (a record hash kept off-site): no record with that hash.

**A cut last line is not bad.**  A power loss can cut the line being written; the complete
records before it are still proven, and the cut one was never durable (fsync runs every
second or so).  It is reported distinctly (`Result.truncated`) and the result stays OK:
anyone able to cut the last line can as well delete the last records whole, which no chain
can detect without an off-site anchor.  The first record given is the anchor of the check:
a log whose oldest files were removed by retention starts with a `rotation` record whose
`prev` names a file no longer there; `Result.from_genesis` says whether the chain was
checked from its very start.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relevent.audit import chain

PUBLIC_KEY_FILE = "audit-key.pub"


@dataclass(frozen=True)
class Problem:
    file: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class Result:
    ok: bool
    problem: Problem | None = None
    files: list[Path] = field(default_factory=list)
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    from_genesis: bool = False
    truncated: Problem | None = None          # a cut last line (power loss): not bad
    declared_cuts: list[Problem] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


def audit_files(path: str | os.PathLike) -> list[Path]:
    """The log files of a directory in chain order (by first seq), or [path] for a file."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    named = []
    for p in path.iterdir():
        parsed = chain.parse_file_name(p.name)
        if parsed is not None and p.is_file():
            named.append((parsed[1], p))
    return [p for _, p in sorted(named)]


def _expand(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        files.extend(audit_files(p))
    if all(chain.parse_file_name(f.name) for f in files):
        files.sort(key=lambda f: chain.parse_file_name(f.name)[1])
    return files


def default_public_key(path: str | os.PathLike) -> Path | None:
    """`audit-key.pub` beside the log (in the directory, or the file's directory), or one
    level up (a site's chains are folders of STATE_DIR/audit, which holds the key)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / PUBLIC_KEY_FILE, folder.parent / PUBLIC_KEY_FILE):
        if candidate.exists():
            return candidate
    return None


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    return chain.public_key_from_bytes(Path(path).read_bytes())


def verify(paths: str | os.PathLike | Iterable[str | os.PathLike], public_key: Ed25519PublicKey,
           anchor: str | None = None) -> Result:
    """Check the log files (a file, a directory, or several, in chain order)."""
    files = _expand(paths)
    result = Result(ok=True, files=files)
    checker = chain.ChainChecker(public_key)
    anchor_seen = anchor is None
    cut: tuple[Path, int, int, int] | None = None      # (file, line, offset, bytes) to be declared
    last_place: tuple[Path, int] | None = None

    def bad(file: Path, line: int, reason: str) -> Result:
        result.ok = False
        result.problem = Problem(file, line, reason)
        return result

    if not files:
        return bad(Path(paths if isinstance(paths, (str, os.PathLike)) else "."), 0, "no audit log files")
    for index, path in enumerate(files):
        try:
            data = path.read_bytes()
        except OSError as exc:
            return bad(path, 0, f"unreadable: {exc.strerror or exc}")
        lines = data.split(b"\n")
        partial = lines.pop()                           # b"" when the file ends with a newline
        for number, raw in enumerate(lines, 1):
            try:
                record = checker.feed(raw)
            except chain.RecordError as exc:
                return bad(path, number, exc.reason)
            detail = record["detail"] if isinstance(record["detail"], dict) else {}
            if number == 1:
                if record["kind"] not in chain.HEADER_KINDS:
                    return bad(path, 1, f"the file begins with a {record['kind']!r} record, not a header "
                                        "(start or rotation): records at its start were removed")
                declared = detail.get("truncated")
                if cut is not None:
                    want = {"offset": cut[2], "bytes": cut[3]}
                    if not isinstance(declared, dict) or {k: declared.get(k) for k in want} != want:
                        return bad(cut[0], cut[1], f"cut line ({cut[3]} bytes without a newline) in the middle "
                                                   "of the chain, not declared by the next file")
                    result.declared_cuts.append(Problem(cut[0], cut[1], f"cut line of {cut[3]} bytes, "
                                                        f"declared by {path.name}"))
                    cut = None
                elif declared is not None and checker.count > 1:
                    return bad(path, 1, "declares a cut line the previous file does not have")
                if record["kind"] == "rotation" and detail.get("previous_hash") != record["prev"]:
                    return bad(path, 1, "rotation record's previous_hash differs from its prev")
            if checker.prev == anchor:
                anchor_seen = True
            if result.first_seq is None:
                result.first_seq = record["seq"]
                result.from_genesis = record["kind"] == "start"
            last_place = (path, number)
        if cut is not None:      # the file after a cut had no records at all
            return bad(cut[0], cut[1], "cut line in the middle of the chain, not declared by the next file")
        if partial:
            line = len(lines) + 1
            if index == len(files) - 1:
                result.truncated = Problem(path, line, f"cut last line: {len(partial)} bytes without a newline "
                                                       "(a record being written at a power loss; it proves nothing)")
            else:
                cut = (path, line, len(data) - len(partial), len(partial))
    result.records = checker.count
    result.last_seq = checker.seq
    result.last_hash = checker.prev
    if not anchor_seen:
        place = last_place or (files[-1], 0)
        return bad(place[0], place[1], f"no record has the anchored hash {anchor}: the records from "
                                       "it on were removed or rewritten")
    return result
