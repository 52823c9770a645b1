"""A load's command as S2 FRBC (fill rate based control) instructions, for an RM that offers
FRBC but not PEBC (a heat pump with a buffer tank).  Pure: no I/O, no clock (the caller
passes the time in ms since the epoch, and may pass the identifier factory).

The command is read as for PEBC (relevent/protocols/s2/mapping.py `load_of`): a limit L in
W drawn (0 when blocked or disconnected) and, where ActPow is in force, a requested
consumption R <= L.  From the RM's latest FRBC.SystemDescription, FRBC.StorageStatus and
FRBC.ActuatorStatus per actuator, one operation mode and one operation_mode_factor are
chosen per actuator:

* the power of a mode: the electric power range of its element whose fill_level_range holds
  the storage's present fill level (the nearest element when none does: the first below
  its range, the last above), taken at the factor linearly from start_of_range (factor 0)
  to end_of_range (factor 1), as S2 defines FRBC.OperationModeElement.power_ranges; the
  electric quantity read by mapping.electric_w (3_PHASE_SYMMETRIC per the endpoint's
  `symmetric_power`; the S2 documentation of CommodityQuantity calls it the total of the
  three phases, s2-python's schema text does not say); a mode with no electric range draws
  0 W;
* usable modes: not `abnormal_condition_only`, and reachable: the active mode and the
  `to` of every transition from it that is not `abnormal_condition_only` (before the RM's
  ActuatorStatus: every mode).  Timers, transition costs and durations, running costs,
  fill rates, leakage, usage forecasts and fill-level targets are ignored: the site plans
  no storage, it keeps a limit (an instruction a blocking timer refuses is the RM's
  ReceptionStatus, reported as for PEBC);
* the total over the actuators is the one closest to the target T (R, or L without one)
  that stays within L; among equally close ones: the fewest actuators switching mode, then
  the least power; the factors are then spread over the actuators in their order.  No
  combination within L: refused with the reason (S2MappingError), no instruction.

Invariant, whatever the RM describes: a plan's total power is within L (to EPS_W), every
factor is within [0, 1], and every mode chosen is one the RM described as usable outside
an abnormal condition and reachable from the active one.  Every instruction is an
s2-python model (FRBCInstruction), so validated before it is sent.
"""
from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Callable

from s2python.frbc import FRBCInstruction

from relevent.protocols.s2.mapping import S2MappingError, _cq, electric_w, from_ms

EPS_W = 1e-6               # W: totals closer than this are equally good (the tie rules decide)
MAX_COMBINATIONS = 4096    # mode combinations over all actuators tried exhaustively; more: refused


@dataclass(frozen=True)
class Option:
    """A usable mode of one actuator at the present fill level: W drawn (S2 sign) at factor
    0 and at factor 1, linear in between."""
    actuator_id: str
    mode_id: str
    label: str
    w0: float
    w1: float
    active: bool          # the actuator's active mode (no switch)
    active_factor: float | None

    def power(self, factor: float) -> float:
        return self.w0 + factor * (self.w1 - self.w0)


@dataclass(frozen=True)
class Setting:
    """What one actuator is told: a mode and a factor, and the W it draws at the fill level."""
    actuator_id: str
    mode_id: str
    mode: str             # the mode's diagnostic label, or its id
    factor: float
    power_w: float
    switch: bool          # another mode than the active one


@dataclass(frozen=True)
class Plan:
    settings: tuple
    power_w: float        # W drawn in total, S2 sign
    target_w: float       # what was aimed at: the request, or the limit
    limit_w: float
    fill_level: float

    def key(self) -> tuple:
        """What the RM is told: equal keys, equal instructions."""
        return tuple((s.actuator_id, s.mode_id, round(s.factor, 9)) for s in self.settings)

    def summary(self) -> dict:
        return {"power_w": self.power_w, "target_w": self.target_w, "fill_level": self.fill_level,
                "frbc": [asdict(s) for s in self.settings]}


# -- the RM's description at the present fill level --------------------------------------------------------------
def element_at(mode: Any, fill_level: float) -> Any:
    """The mode's element whose fill_level_range holds `fill_level`; else the nearest (the
    elements are contiguous: the first below them, the last above)."""
    elements = list(mode.elements)
    for e in elements:
        if e.fill_level_range.start_of_range <= fill_level <= e.fill_level_range.end_of_range:
            return e
    return min(elements, key=lambda e: min(abs(fill_level - e.fill_level_range.start_of_range),
                                           abs(fill_level - e.fill_level_range.end_of_range)))


def element_w(element: Any, symmetric: str) -> tuple[float, float]:
    """W drawn (S2 sign) at factor 0 and at factor 1; (0, 0) when no range is electric."""
    at = []
    for end in ("start_of_range", "end_of_range"):
        w = electric_w({_cq(r.commodity_quantity): getattr(r, end) for r in element.power_ranges}, symmetric)
        at.append(0.0 if w is None else w)
    return at[0], at[1]


def reachable(actuator: Any, active_mode: str | None) -> list:
    """The actuator's modes usable outside an abnormal condition and reachable from the
    active one (every usable mode when the active one is not known)."""
    usable = [m for m in actuator.operation_modes if not m.abnormal_condition_only]
    if active_mode is None or active_mode not in {str(m.id) for m in actuator.operation_modes}:
        return usable
    ids = {active_mode} | {str(t.to) for t in actuator.transitions
                           if str(t.from_) == active_mode and not t.abnormal_condition_only}
    return [m for m in usable if str(m.id) in ids]


def options(system: Any, fill_level: float, active: dict, symmetric: str = "total") -> list[list[Option]]:
    """Per actuator of the FRBC.SystemDescription, its usable modes as Options.  `active`:
    actuator id -> (active mode id, factor), from the RM's FRBC.ActuatorStatus."""
    out = []
    for actuator in system.actuators:
        aid = str(actuator.id)
        mode_now, factor_now = active.get(aid, (None, None))
        found = []
        for mode in reachable(actuator, mode_now):
            try:
                w0, w1 = element_w(element_at(mode, fill_level), symmetric)
            except S2MappingError as exc:
                raise S2MappingError(f"actuator {aid} mode {mode.id}: {exc}") from None
            found.append(Option(aid, str(mode.id), mode.diagnostic_label or str(mode.id), w0, w1,
                                str(mode.id) == mode_now, factor_now if str(mode.id) == mode_now else None))
        if not found:
            raise S2MappingError(f"actuator {aid}: no operation mode usable outside an abnormal condition is "
                                 f"reachable from the active mode {mode_now}")
        out.append(found)
    return out


# -- the choice ------------------------------------------------------------------------------------------------
def _number(name: str, value: Any) -> float:
    w = float(value)
    if not math.isfinite(w) or w < 0:
        raise S2MappingError(f"{name} {value!r} W: expected a finite number >= 0")
    return w


def _spread(combo: tuple, lo: float, total: float) -> list[tuple[Option, float]]:
    """Factors giving `total` W: every actuator from its least power, raised in order."""
    extra = total - lo
    out = []
    for o in combo:
        span = abs(o.w1 - o.w0)
        if span <= EPS_W:   # the factor changes no power: keep the active one, else full
            factor = o.active_factor if o.active_factor is not None else 1.0
        else:
            d = min(max(extra, 0.0), span)
            extra -= d
            factor = d / span if o.w1 >= o.w0 else 1.0 - d / span
        out.append((o, min(max(factor, 0.0), 1.0)))
    return out


def choose(system: Any, fill_level: Any, active: dict, limit_w: Any, requested_w: Any = None,
           symmetric: str = "total") -> Plan:
    """The plan for the command (module docstring); S2MappingError when none stays within
    the limit."""
    limit = _number("limit", limit_w)
    target = limit if requested_w is None else min(_number("requested", requested_w), limit)
    fill = float(fill_level)
    if not math.isfinite(fill):
        raise S2MappingError(f"present_fill_level {fill_level!r}: not a finite number")
    per_actuator = options(system, fill, active, symmetric)
    count = math.prod(len(o) for o in per_actuator)
    if count > MAX_COMBINATIONS:
        raise S2MappingError(f"{count} combinations of operation modes: more than the {MAX_COMBINATIONS} tried")
    best: tuple | None = None      # (distance, switches, total, combo, lo)
    least: tuple | None = None     # (lo, combo): the least any combination draws
    for combo in itertools.product(*per_actuator):
        lo = sum(min(o.w0, o.w1) for o in combo)
        hi = sum(max(o.w0, o.w1) for o in combo)
        if least is None or lo < least[0]:
            least = (lo, combo)
        if lo > limit + EPS_W:
            continue
        total = min(max(target, lo), hi)
        distance = abs(target - total)
        switches = sum(not o.active for o in combo)
        if (best is None or distance < best[0] - EPS_W
                or (distance <= best[0] + EPS_W and (switches, total) < (best[1], best[2]))):
            best = (distance, switches, total, combo, lo)
    if best is None:
        lo, combo = least
        modes = ", ".join(f"actuator {o.actuator_id} mode {o.label!r}" for o in combo)
        raise S2MappingError(f"no operation mode stays within {limit:g} W at fill level {fill:g}: the least "
                             f"the actuators draw is {lo:g} W ({modes})")
    _, _, total, combo, lo = best
    settings = tuple(Setting(o.actuator_id, o.mode_id, o.label, f, o.power(f), not o.active)
                     for o, f in _spread(combo, lo, total))
    return Plan(settings, sum(s.power_w for s in settings), target, limit, fill)


# -- the CEM's messages -------------------------------------------------------------------------------------------
def instructions(plan: Plan, now_ms: int, new_id: Callable[[], uuid.UUID] = uuid.uuid4) -> list[FRBCInstruction]:
    """One FRBC.Instruction per actuator, executed from `now_ms`, outside an abnormal condition."""
    return [FRBCInstruction(message_id=new_id(), id=new_id(), actuator_id=uuid.UUID(s.actuator_id),
                            operation_mode=uuid.UUID(s.mode_id), operation_mode_factor=s.factor,
                            execution_time=from_ms(now_ms), abnormal_condition=False)
            for s in plan.settings]


def description(system: Any) -> dict:
    """An FRBC.SystemDescription as `relevent status` shows it."""
    return {"message_id": str(system.message_id), "valid_from": system.valid_from.isoformat(),
            "fill_level_range": [system.storage.fill_level_range.start_of_range,
                                 system.storage.fill_level_range.end_of_range],
            "fill_level_label": system.storage.fill_level_label,
            "actuators": [{"id": str(a.id), "label": a.diagnostic_label,
                           "modes": {str(m.id): m.diagnostic_label or str(m.id) for m in a.operation_modes}}
                          for a in system.actuators]}
