"""Map TOML key paths to source line numbers.

tomllib gives values but no positions, so this scans the text once and records the
line of every table header and ``key =`` line.  Paths use list indices for arrays of
tables, e.g. ``("wan", 1, "port")``.  Keys inside inline tables or multi-line values
fall back to the line of their nearest recorded ancestor.
"""
from __future__ import annotations

import re

Path = tuple

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _split_dotted(key: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", key)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


class LineIndex:
    """Line numbers (1-based) of keys and tables in one TOML text."""

    def __init__(self, text: str) -> None:
        self._lines: dict[Path, int] = {}
        self._array_len: dict[Path, int] = {}
        self._scan(text)

    def _scan(self, text: str) -> None:
        table: Path = ()
        open_brackets = 0
        in_multiline: str | None = None
        for lineno, line in enumerate(text.splitlines(), start=1):
            if in_multiline:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            if open_brackets > 0:
                open_brackets += line.count("[") - line.count("]")
                continue
            header = _HEADER.match(line)
            if header and not _KEY.match(line):
                names = _split_dotted(header.group(2))
                table = self._resolve(names)
                if header.group(1) == "[[":
                    base = self._resolve(names[:-1]) + (names[-1],)
                    index = self._array_len.get(base, 0)
                    self._array_len[base] = index + 1
                    self._lines.setdefault(base, lineno)
                    table = base + (index,)
                self._lines.setdefault(table, lineno)
                continue
            key = _KEY.match(line)
            if not key:
                continue
            path = table + tuple(_split_dotted(key.group(1)))
            self._lines.setdefault(path, lineno)
            rest = line[key.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
            if not in_multiline:
                open_brackets = max(0, _count_outside_strings(rest, "[") - _count_outside_strings(rest, "]"))

    def _resolve(self, names: list[str]) -> Path:
        """Turn dotted header names into a path, pointing into the last element of
        any array of tables on the way (TOML's rule for ``[a.b]`` after ``[[a]]``)."""
        path: Path = ()
        for name in names:
            path = path + (name,)
            if path in self._array_len:
                path = path + (self._array_len[path] - 1,)
        return path

    def line_of(self, path: Path) -> int | None:
        """The line of ``path`` or of its closest recorded ancestor."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None

    def table_span(self, path: Path) -> int | None:
        """First line of the table at ``path`` (exact match only)."""
        return self._lines.get(tuple(path))


def _count_outside_strings(text: str, char: str) -> int:
    count, quote = 0, None
    for c in text.split("#", 1)[0] if '"' not in text and "'" not in text else text:
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            break
        elif c == char:
            count += 1
    return count
