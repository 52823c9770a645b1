"""Turn a DER's controller outputs into one device command.  Pure: no I/O, no clock.

Units: watts, generation (export) positive, consumption (charging) negative.  The
scheduling model's values are taken as watts (the reference SCL says kW, the HEDERA
gateway writes W: we use W everywhere, docs/devices.md).

* OnOff off -> disconnect, set-point 0 (no OnOff function: always connected).
* MaxPow bounds the export: limit = min(MaxPow, rated power); no MaxPow -> rated power.
* ActPow is the absolute set-point; no ActPow -> the limit (produce what you can, up to it).
* The set-point is bounded to [-rated, limit].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    setpoint_w: float
    limit_w: float
    connected: bool


def device_command(outputs: dict[str, Any], rated_w: float) -> Command:
    """`outputs`: control function -> current output (missing or None: no such function)."""
    if not rated_w > 0:
        raise ValueError("a DER driven over a LAN needs rated_power_w > 0")
    rated = float(rated_w)
    connected = bool(outputs["OnOff"]) if outputs.get("OnOff") is not None else True
    limit = min(float(outputs["MaxPow"]), rated) if outputs.get("MaxPow") is not None else rated
    act = outputs.get("ActPow")
    setpoint = max(-rated, min(float(act) if act is not None else limit, limit))
    return Command(setpoint if connected else 0.0, limit, connected)
