"""What an `s2` LAN endpoint needs of a DER it drives, for `relevent check` (the registry's
`check_der`).  No s2-python here: the topology loader imports it, and must stay light.

* The DER is a load whose command relevent/devices/load.py reads (`type = "heat_pump"`):
  the PEBC envelope is a limit on power drawn, lower limit 0 (docs/s2.md).
* Its `address` is its resource manager's resource id, a UUID: s2-python (the site's S2
  message models) holds every S2 identifier as one, so an RM it validates has one.
* `profile` stays empty: the CEM selects the control type itself (PEBC).
* Plain ws:// beyond loopback only with `insecure = true` on the endpoint: S2 over TLS is
  not in this build, and an RM's link carries the site's limits.
"""
from __future__ import annotations

import ipaddress
import uuid

S2_DER_TYPES = ("heat_pump",)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def der_problems(der: dict, lan: dict) -> list:
    """[(DER key, message)] for a DER on an `s2` endpoint."""
    out = []
    address = der.get("address")
    try:
        uuid.UUID(str(address))
        ok = isinstance(address, str)
    except ValueError:
        ok = False
    if not ok:
        out.append(("address", f"{address!r}: an S2 device's address is its resource manager's resource id, a UUID "
                               "(e.g. \"0b3c9a36-6b1e-4a57-9d0e-3f6f1c2d4e5a\")"))
    if der.get("type") not in S2_DER_TYPES:
        out.append(("type", f"type {der.get('type')!r} on an S2 endpoint: use type = \"heat_pump\" (a load: the "
                            "power envelope limits what it draws)"))
    if der.get("profile"):
        out.append(("profile", f"profile {der['profile']!r}: an S2 device needs none (the CEM selects PEBC itself)"))
    host = lan.get("address", "127.0.0.1")
    if isinstance(host, str) and not _loopback(host) and not lan.get("insecure"):
        out.append(("lan", f"endpoint {lan.get('name')!r} serves S2 in plain ws:// on {host}:{lan.get('port')}: "
                           "listen on loopback or write insecure = true on it (S2 over TLS is not in this build)"))
    return out
