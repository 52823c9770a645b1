"""Turn a DER's controller outputs into one device command.  Pure: no I/O, no clock.

Units: watts, generation (export) positive, consumption (charging) negative.  The
scheduling model's values are taken as watts (the reference SCL says kW, the HEDERA
gateway writes W: we use W everywhere, docs/devices.md).

* OnOff off -> disconnect, set-point 0 (no OnOff function: always connected).
* MaxPow bounds the export: limit = min(MaxPow, rated power); no MaxPow -> rated power.
* ActPow is the absolute set-point; no ActPow -> the limit (produce what you can, up to it).
* The set-point is bounded to [-rated, limit].

Invariant, whatever the outputs hold (the scheduling core refuses non-finite values at
enable, but values are read live and every protocol feeds this): the command is finite,
0 <= limit <= rated and -rated <= set-point <= limit.  Why: a device, or the JSON a LAN
protocol carries (the MQTT pivot command), must never see NaN, +-inf or a value beyond the
DER's rating.  A value that is not a number at all (NaN) is taken as the safest one: a NaN
MaxPow limits to 0 W, a NaN ActPow sets 0 W; +inf and -inf are clamped like any number.
`function_values` gives each control function's value bounded the same way, for protocols
that carry the functions one by one (MQTT pivot) instead of one command.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    setpoint_w: float
    limit_w: float
    connected: bool


def device_command(outputs: dict[str, Any], rated_w: float) -> Command:
    """`outputs`: control function -> current output (missing or None: no such function)."""
    rated = _rated(rated_w)
    connected = bool(outputs["OnOff"]) if outputs.get("OnOff") is not None else True
    limit = _limit(outputs.get("MaxPow"), rated)
    setpoint = _setpoint(outputs.get("ActPow"), limit, rated)
    return Command(setpoint if connected else 0.0, limit, connected)


def function_values(outputs: dict[str, Any], rated_w: float) -> dict[str, Any]:
    """Each control function's output as a device may be sent it (functions with a None
    output left out): MaxPow the limit, ActPow its set-point within [-rated, limit] (not
    zeroed by OnOff: the device applies OnOff itself), OnOff a bool.  Finite, like
    `device_command`."""
    rated = _rated(rated_w)
    limit = _limit(outputs.get("MaxPow"), rated)
    out: dict[str, Any] = {}
    if outputs.get("OnOff") is not None:
        out["OnOff"] = bool(outputs["OnOff"])
    if outputs.get("MaxPow") is not None:
        out["MaxPow"] = limit
    if outputs.get("ActPow") is not None:
        out["ActPow"] = _setpoint(outputs["ActPow"], limit, rated)
    return out


def bound_value(kind: str, value: Any, rated_w: float) -> Any:
    """One function's value on its own (a forecast event): ActPow within [-rated, rated],
    MaxPow within [0, rated], OnOff a bool; None stays None (nothing in force)."""
    if value is None:
        return None
    if kind == "OnOff":
        return bool(value)
    rated = _rated(rated_w)
    return _limit(value, rated) if kind == "MaxPow" else _setpoint(value, rated, rated)


def _rated(rated_w: Any) -> float:
    rated = float(rated_w) if isinstance(rated_w, (int, float)) else math.nan
    if not (rated > 0 and math.isfinite(rated)):
        raise ValueError(f"a DER driven over a LAN needs a finite rated_power_w > 0, got {rated_w!r}")
    return rated


def _limit(max_pow: Any, rated: float) -> float:
    """min(MaxPow, rated) within [0, rated]; no MaxPow: rated; NaN: 0 (the safe side)."""
    if max_pow is None:
        return rated
    value = float(max_pow)
    if math.isnan(value):
        return 0.0
    return max(0.0, min(value, rated))


def _setpoint(act_pow: Any, limit: float, rated: float) -> float:
    """ActPow within [-rated, limit]; no ActPow: the limit; NaN: 0 W (within the bounds)."""
    if act_pow is None:
        return limit
    value = float(act_pow)
    if math.isnan(value):
        return 0.0
    return max(-rated, min(value, limit))
