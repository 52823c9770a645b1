"""`relevent history`'s arguments and output, pure: a `--since` as a duration or a time,
and samples as table or CSV rows."""
from __future__ import annotations

import re
from datetime import datetime, timezone

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_MS = {"s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
COLUMNS = ("time", "resolution_s", "measured_w", "min_w", "max_w", "setpoint_w", "limit_w", "connected", "sources")


def parse_since(text: str, now_ms: int) -> int:
    """Milliseconds since the epoch from a duration back from now ("90s", "15m", "12h",
    "7d", "1w"; a bare number is hours) or an ISO 8601 time (without an offset: UTC)."""
    m = _DURATION.match(text)
    if m:
        return now_ms - int(float(m.group(1)) * _UNIT_MS[(m.group(2) or "h").lower()])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: expected a duration (90s, 15m, 12h, 7d) or an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sources_text(sources: dict) -> str:
    return " ".join(f"{kind}={name}" for kind, name in sorted(sources.items()) if name)


def row(sample: dict) -> list:
    """One sample as COLUMNS values (None: empty)."""
    connected = sample["connected"]
    return [iso(sample["at"]), sample["resolution_s"] or "", sample["measured_w"], sample["min_w"], sample["max_w"],
            sample["setpoint_w"], sample["limit_w"], "" if connected is None else int(connected),
            sources_text(sample["sources"])]


def table(samples: list[dict]) -> list[str]:
    """Samples as aligned text lines, a header first."""
    def cell(v) -> str:
        if v is None or v == "":
            return "-"
        return f"{v:g}" if isinstance(v, float) else str(v)
    rows = [["TIME", "RES", "MEASURED_W", "MIN_W", "MAX_W", "SETPOINT_W", "LIMIT_W", "CONN", "SOURCES"]]
    for sample in samples:
        values = row(sample)
        values[1] = "15m" if values[1] else "raw"
        rows.append([cell(v) for v in values])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(r[i].ljust(widths[i]) if i < len(widths) else r[i] for i in range(len(r))).rstrip()
            for r in rows]
