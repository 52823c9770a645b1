"""Edit topology text in place for run-time changes (endpoint add/remove).

Edits work on the text, not on a re-serialised dict, so the installer's comments and
layout survive.  The caller validates the result with `parse_topology` before using it.

What is written reads back as what was given: every key that is not a TOML bare key
(letters, digits, `_`, `-`) is written quoted (`toml_key`), so a snippet key with a dot, a
space or a quote in it can neither break the file nor turn into a nested table.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import tomllib
from pathlib import Path

from relevent.topology.locate import LineIndex

_HEADER_LINE = re.compile(r"^\s*\[")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class EditError(Exception):
    pass


def parse_snippet(snippet: str) -> dict:
    """An endpoint given on the command line: TOML body lines (``name = "x"``, newline or
    ``;``-separated is not TOML, so newlines), an inline table ``{name = "x", ...}``, or a
    path to a file holding either."""
    if os.path.isfile(snippet):
        snippet = Path(snippet).read_text(encoding="utf-8")
    text = snippet.strip()
    try:
        data = tomllib.loads(f"endpoint = {text}")["endpoint"] if text.startswith("{") else tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EditError(f"endpoint snippet is not valid TOML: {exc}") from None
    if not isinstance(data, dict) or not data.get("name"):
        raise EditError("endpoint snippet needs at least name = \"...\" and protocol = \"...\"")
    return data


def toml_key(key) -> str:
    """A key as TOML reads it back: bare when it may be, else a quoted string."""
    if not isinstance(key, str):
        raise EditError(f"a TOML key must be a string, got {type(key).__name__}")
    return key if _BARE_KEY.fullmatch(key) else toml_value(key)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise EditError(f"cannot write {type(value).__name__} to TOML")


def _toml_char(c: str) -> str:
    """One character of a TOML basic string: backslash, quote and control characters escaped."""
    if c in ('"', "\\"):
        return "\\" + c
    if c == "\n":
        return "\\n"
    if c == "\t":
        return c
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\u{ord(c):04X}"
    return c


def add_endpoint(text: str, role: str, endpoint: dict) -> str:
    lines = [f"[[{role}]]"] + [f"{toml_key(k)} = {toml_value(v)}" for k, v in endpoint.items()]
    sep = "" if text.endswith("\n") or not text else "\n"
    return f"{text}{sep}\n" + "\n".join(lines) + "\n"


def remove_endpoint(text: str, name: str) -> tuple[str, str]:
    """Remove the ``[[wan]]``/``[[lan]]`` table named ``name``; return (new text, role)."""
    data = tomllib.loads(text)
    index = LineIndex(text)
    lines = text.splitlines(keepends=True)
    for role in ("wan", "lan"):
        for i, ep in enumerate(data.get(role, [])):
            if ep.get("name") != name:
                continue
            start = index.table_span((role, i))
            if start is None or not lines[start - 1].lstrip().startswith("[["):
                raise EditError(f"endpoint {name!r} is not written as a [[{role}]] table; edit the file by hand")
            end = start
            while end < len(lines) and not _HEADER_LINE.match(lines[end]):
                end += 1
            # Keep comments that introduce the next table with that table.
            while end > start and lines[end - 1].lstrip().startswith("#"):
                end -= 1
            del lines[start - 1:end]
            # Drop the blank line that separated the removed table, if two now meet.
            at = start - 1
            if at > 0 and not lines[at - 1].strip() and (at == len(lines) or not lines[at].strip()):
                del lines[at - 1]
            return "".join(lines), role
    raise EditError(f"no WAN or LAN endpoint named {name!r}")


def write_atomic(path: Path, text: str) -> None:
    """Write, fsync, rename, fsync the directory: a reader sees the old or the new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
