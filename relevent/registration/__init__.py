"""The site's registration per the Dutch DSO interface specification (docs/registration.md).

schedule.py  the state machine and the retry back-off (pure)
files.py     atomic writes; the private key (0600, refused if others may read it)
client.py    RegistrationClient: CSR, HTTPS request, verification, storage, CRL check
cli.py       `relevent register FILE [--status]`

The simulator of a registration service is relevent/simulators/registration_service.py.
Names are loaded lazily, so `import relevent.registration.cli` does not load `cryptography`.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "State": "relevent.registration.schedule", "Result": "relevent.registration.schedule",
    "next_attempt": "relevent.registration.schedule", "on_result": "relevent.registration.schedule",
    "BACKOFF_MS": "relevent.registration.schedule",
    "RegistrationClient": "relevent.registration.client", "Config": "relevent.registration.client",
    "load_config": "relevent.registration.client", "check_revoked": "relevent.registration.client",
    "ConfigError": "relevent.registration.client", "IdentityError": "relevent.registration.files",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
