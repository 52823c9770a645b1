"""The one wall clock of the runtime: integer milliseconds since the Unix epoch, UTC.

The scheduling core never reads it (time is an argument there); actors, endpoints and tools
read it here, so every timestamp in states, commands and logs has the same unit and source.
"""
from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock time in ms since the epoch (UTC)."""
    return time.time_ns() // 1_000_000
