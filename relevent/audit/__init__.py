"""The tamper-evident audit log: hash-chained records signed with the site's Ed25519 key.

chain.py   the record, its canonical encoding, hashing, signing and checking (pure)
log.py     AuditLog: append (thread-safe), rotation, retention, the site key on disk
verify.py  verify.verify(paths, public_key): OK, or the first bad record (file, line, reason)
cli.py     `relevent audit show|verify`

Names are loaded lazily, so `import relevent.audit.cli` does not load `cryptography`.
docs/audit.md describes the format and what the log proves.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "AuditLog": "relevent.audit.log", "AuditLogBusy": "relevent.audit.log",
    "AuditLogClosed": "relevent.audit.log", "load_or_create_key": "relevent.audit.log",
    "Result": "relevent.audit.verify", "Problem": "relevent.audit.verify",
    "load_public_key": "relevent.audit.verify", "Entry": "relevent.audit.chain",
    "FIELDS": "relevent.audit.chain", "INPUT_FIELDS": "relevent.audit.chain",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
