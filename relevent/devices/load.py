"""A controllable load's command (heat pump): the DER's controller outputs as a limit on the
power drawn, a block and a requested consumption.  Pure: no I/O, no clock.

Units: watts.  The model's sign convention stays (generation positive, consumption
negative: a load's measured power is negative), but a load's command is given in W *drawn*,
positive numbers, as a §14a control box or a DSO writes a limit ("4.2 kW at most"):

* OnOff off -> blocked: the device draws nothing (SG-Ready state 1); limit 0 W.
* MaxPow -> the most the device may draw, within [floor, rated], where the floor is
  min(guaranteed_min_w, rated): §14a EnWG guarantees a dimmed heat pump 4.2 kW, so a DSO
  limit below it is raised to it, unless the device's rating is smaller (then the limit
  cannot bind at all).  No MaxPow: the rated power.  A negative MaxPow (a limit written
  with the consumption sign) counts as its size's floor: it is raised to the floor like any
  limit below it.
* ActPow -> the consumption requested where the device can follow one: its magnitude (as for
  EV chargers: -3000 W and 3000 W both ask for 3 kW drawn), within [0, limit].  No ActPow (or
  no schedule in force): None, the device runs on its own.

Invariant, whatever the outputs hold: the command is finite; 0 <= limit <= rated;
limit >= min(guaranteed, rated) unless blocked, and limit = 0 when blocked;
requested is None or 0 <= requested <= limit.  A value that is not a number (NaN) is taken
as the safest one that respects the guarantee: a NaN MaxPow limits to the floor, a NaN
ActPow requests 0 W.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from relevent.devices.command import _rated

GUARANTEED_MIN_W = 4200.0   # §14a EnWG: the minimum a DSO must leave a dimmed heat pump or charger


@dataclass(frozen=True)
class LoadCommand:
    limit_w: float              # W drawn at most (positive)
    blocked: bool
    requested_w: float | None   # W drawn requested (positive), None: the device runs on its own


def floor_w(rated_w: Any, guaranteed_min_w: Any = GUARANTEED_MIN_W) -> float:
    """The lowest limit a DSO may impose: min(guaranteed, rated), at least 0.  A guaranteed
    minimum that is not a number is a configuration error (the topology check refuses it)."""
    rated = _rated(rated_w)
    guaranteed = float(guaranteed_min_w)
    if math.isnan(guaranteed):
        raise ValueError(f"guaranteed_min_w must be a number, got {guaranteed_min_w!r}")
    return max(0.0, min(guaranteed, rated))


def load_command(outputs: dict[str, Any], rated_w: Any, guaranteed_min_w: Any = GUARANTEED_MIN_W) -> LoadCommand:
    """`outputs`: control function -> current output (missing or None: no such function or
    nothing in force)."""
    rated = _rated(rated_w)
    floor = floor_w(rated, guaranteed_min_w)
    blocked = outputs.get("OnOff") is not None and not bool(outputs["OnOff"])
    max_pow = outputs.get("MaxPow")
    if max_pow is None:
        limit = rated
    else:
        value = float(max_pow)
        limit = floor if math.isnan(value) else max(floor, min(value, rated))
    if blocked:
        limit = 0.0
    act_pow = outputs.get("ActPow")
    requested = None
    if act_pow is not None:
        value = float(act_pow)
        requested = 0.0 if math.isnan(value) else min(abs(value), limit)
    return LoadCommand(limit, blocked, requested)
