"""A DER's device command as an S2 PEBC instruction, and a resource manager's S2 messages
as what the site needs of them (FRBC instructions: relevent/protocols/s2/frbc.py).  Pure: no I/O, no clock (the caller passes the time in ms
since the epoch, and may pass the identifier factory).

S2 (EN 50491-12-2) counts power from the device's side: positive is consumed, negative
produced.  The site counts generation positive (docs/devices.md), so a load's measured
power goes to its DER negated.  The command of a load is read as relevent/devices/load.py
reads it (`load_command`: a limit in W *drawn*, the §14a floor, OnOff off = blocked), and
a command that disconnects the device (`connected` false) is a block too:

* the site's limit L (W drawn) = 0 when disconnected or blocked, else the load's MaxPow
  limit, within [min(guaranteed_min_w, rated), rated];
* it goes out as one PEBC.Instruction with one power envelope per electric commodity
  quantity the RM's latest PEBC.PowerConstraints name: upper limit = L, lower limit = 0,
  one element lasting `duration_ms` from the instruction's execution time (the envelope
  ends on its own if the site stops refreshing it: the device then runs by itself, as a
  SunSpec control reverts after its RvrtTms);
* on `ELECTRIC.POWER.3_PHASE_SYMMETRIC` the value is L (`symmetric = "total"`) or L / 3
  (`"per_phase"`: the standard does not say which; the endpoint's key chooses); on
  per-phase quantities (`ELECTRIC.POWER.L1..L3`) each phase named gets L / phases named,
  so the total drawn stays within L;
* each limit is then fitted into the RM's allowed ranges for that quantity and limit type
  (PEBC.AllowedLimitRange, the ones usable outside an abnormal condition): a value outside
  every range becomes the greatest allowed value below it, or the least allowed one when
  none is below, and the instruction says so (`clamped`).

Invariant, whatever the command holds: every envelope element is finite, lower <= upper,
each within the RM's allowed ranges, and its upper limit never above what the site allows
unless the RM allows nothing that low (then the RM's least upper limit, reported as
clamped).  Every message built here is an s2-python model, so it has passed s2-python's
validation before it is sent; a message from the RM is parsed by s2-python's parser before
anything here reads it.  What cannot be mapped raises S2MappingError naming the cause.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import unquote

from s2python.common import (
    CommodityQuantity, ControlType, Duration, EnergyManagementRole, Handshake, HandshakeResponse, PowerMeasurement,
    ReceptionStatus, ReceptionStatusValues, SelectControlType,
)
from s2python.pebc import (
    PEBCInstruction, PEBCPowerConstraints, PEBCPowerEnvelope, PEBCPowerEnvelopeElement, PEBCPowerEnvelopeLimitType,
)
from s2python.version import S2_VERSION

from relevent.devices.load import GUARANTEED_MIN_W, LoadCommand, load_command

VERSIONS = (S2_VERSION,)    # the S2 JSON message set s2-python 0.11 implements ("0.0.2-beta")
PHASES = (CommodityQuantity.ELECTRIC_POWER_L1, CommodityQuantity.ELECTRIC_POWER_L2,
          CommodityQuantity.ELECTRIC_POWER_L3)
SYMMETRIC = CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC
SYMMETRIC_MODES = {"total": 1.0, "per_phase": 3.0}    # W of the device per W of a 3_PHASE_SYMMETRIC value
NIL_ID = uuid.UUID(int=0)   # the subject of a ReceptionStatus for a message whose id cannot be read
PEBC = ControlType.POWER_ENVELOPE_BASED_CONTROL
FRBC = ControlType.FILL_RATE_BASED_CONTROL
CONTROL_TYPES = (PEBC, FRBC)   # the ones the CEM selects, in its order of preference


class S2MappingError(ValueError):
    """What the site cannot map to or from S2; the message says why."""


# -- the command -> the limit ----------------------------------------------------------------------------------
def load_of(connected: Any, outputs: dict, rated_w: Any, guaranteed_min_w: Any = GUARANTEED_MIN_W) -> LoadCommand:
    """`load_command` of the outputs, and a command that disconnects the device as a block
    (limit 0 W, nothing requested).  `outputs`: function -> value, or (value, source) as a
    DeviceCommand holds them."""
    if not connected:
        return LoadCommand(0.0, True, None)
    plain = {k: v[0] if isinstance(v, (tuple, list)) else v for k, v in (outputs or {}).items()}
    return load_command(plain, rated_w, guaranteed_min_w)


def limit_w(connected: Any, outputs: dict, rated_w: Any, guaranteed_min_w: Any = GUARANTEED_MIN_W) -> float:
    """W the load may draw: 0 when the command disconnects it, else `load_command`'s limit
    (0 when blocked)."""
    return load_of(connected, outputs, rated_w, guaranteed_min_w).limit_w


def command_load(command: Any, rated_w: Any, guaranteed_min_w: Any = GUARANTEED_MIN_W) -> LoadCommand:
    """`load_of` a DeviceCommand (relevent.messages)."""
    return load_of(command.connected, command.outputs, rated_w, guaranteed_min_w)


def command_limit_w(command: Any, rated_w: Any, guaranteed_min_w: Any = GUARANTEED_MIN_W) -> float:
    """`limit_w` of a DeviceCommand (relevent.messages)."""
    return command_load(command, rated_w, guaranteed_min_w).limit_w


# -- the RM's power constraints ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Constraints:
    """A PEBC.PowerConstraints as the site uses it: the ranges usable in a normal condition
    per commodity quantity (value) and limit type, as (start, end) pairs."""
    id: uuid.UUID
    valid_from_ms: int
    valid_until_ms: int | None
    consequence: str
    upper: dict = field(default_factory=dict)     # commodity quantity value -> [(start, end)]
    lower: dict = field(default_factory=dict)
    abnormal_only: int = 0                        # ranges left out: usable in an abnormal condition only

    def summary(self) -> dict:
        return {"id": str(self.id), "valid_from": iso_ms(self.valid_from_ms),
                "valid_until": iso_ms(self.valid_until_ms) if self.valid_until_ms is not None else None,
                "consequence": self.consequence, "upper": {k: [list(r) for r in v] for k, v in self.upper.items()},
                "lower": {k: [list(r) for r in v] for k, v in self.lower.items()},
                "abnormal_only_ranges": self.abnormal_only}


def constraints_from(message: PEBCPowerConstraints) -> Constraints:
    upper: dict = {}
    lower: dict = {}
    abnormal = 0
    for r in message.allowed_limit_ranges:
        if r.abnormal_condition_only:
            abnormal += 1
            continue
        target = upper if r.limit_type == PEBCPowerEnvelopeLimitType.UPPER_LIMIT else lower
        target.setdefault(_cq(r.commodity_quantity), []).append(
            (float(r.range_boundary.start_of_range), float(r.range_boundary.end_of_range)))
    return Constraints(message.id, to_ms(message.valid_from),
                       to_ms(message.valid_until) if message.valid_until is not None else None,
                       _cq(message.consequence_type), upper, lower, abnormal)


def fit(value: float, ranges: list) -> tuple[float, bool]:
    """`value` if some range holds it, else the greatest allowed value below it, else (none
    below) the least allowed value; (value, clamped).  Rounding down is the safe side of a
    limit: an upper limit never rises above the site's where the RM allows something lower,
    and a lower limit never forces consumption the RM lets the site avoid."""
    finite = [(a, b) for a, b in ranges if math.isfinite(a) and math.isfinite(b) and a <= b]
    if not finite:
        raise S2MappingError("no usable range (finite, start <= end)")
    below = [min(b, value) for a, b in finite if a <= value]
    if below:
        best = max(below)
        return best, best != value
    return min(a for a, _ in finite), True


@dataclass(frozen=True)
class Envelope:
    quantity: str      # commodity quantity (its S2 value)
    lower: float       # W, S2 sign (positive consumed)
    upper: float
    clamped: bool


def envelopes(limit: float, constraints: Constraints, symmetric: str = "total") -> list[Envelope]:
    """The power envelopes that hold the site's limit (W drawn) within the RM's ranges."""
    if symmetric not in SYMMETRIC_MODES:
        raise S2MappingError(f"symmetric {symmetric!r}: use {' or '.join(SYMMETRIC_MODES)}")
    limit = float(limit)
    if not math.isfinite(limit) or limit < 0:
        raise S2MappingError(f"limit {limit!r} W: expected a finite number >= 0")
    named = set(constraints.upper) & set(constraints.lower)
    if SYMMETRIC.value in named:
        targets = [(SYMMETRIC.value, limit / SYMMETRIC_MODES[symmetric])]
    else:
        phases = [p.value for p in PHASES if p.value in named]
        targets = [(p, limit / len(phases)) for p in phases]
    if not targets:
        known = sorted(set(constraints.upper) | set(constraints.lower))
        raise S2MappingError("the power constraints give no upper and lower range for electric power usable "
                             f"outside an abnormal condition (they name: {', '.join(known) or 'nothing'})")
    out = []
    for quantity, upper in targets:
        try:
            up, up_clamped = fit(upper, constraints.upper[quantity])
            low, low_clamped = fit(0.0, constraints.lower[quantity])
        except S2MappingError as exc:
            raise S2MappingError(f"{quantity}: {exc}") from None
        if low > up:
            raise S2MappingError(f"{quantity}: the allowed ranges give a lower limit {low} W above the upper "
                                 f"limit {up} W")
        out.append(Envelope(quantity, low, up, up_clamped or low_clamped))
    return out


def pebc_instruction(found: list[Envelope], constraints: Constraints, now_ms: int, duration_ms: int,
                     new_id: Callable[[], uuid.UUID] = uuid.uuid4) -> PEBCInstruction:
    """The PEBC.Instruction of the envelopes: executed from `now_ms`, one element lasting
    `duration_ms`, or less where the constraints end sooner."""
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int) or duration_ms <= 0:
        raise S2MappingError(f"duration_ms must be an integer > 0, got {duration_ms!r}")
    if constraints.valid_until_ms is not None:
        if constraints.valid_until_ms <= now_ms:
            raise S2MappingError(f"the power constraints {constraints.id} ended at "
                                 f"{iso_ms(constraints.valid_until_ms)}")
        duration_ms = min(duration_ms, constraints.valid_until_ms - now_ms)
    if not found:
        raise S2MappingError("no envelope")
    return PEBCInstruction(
        message_id=new_id(), id=new_id(), execution_time=from_ms(now_ms), abnormal_condition=False,
        power_constraints_id=constraints.id,
        power_envelopes=[PEBCPowerEnvelope(
            id=str(new_id()), commodity_quantity=CommodityQuantity(e.quantity),
            power_envelope_elements=[PEBCPowerEnvelopeElement(
                duration=Duration.from_milliseconds(duration_ms), upper_limit=e.upper, lower_limit=e.lower)])
            for e in found])


# -- measurements ----------------------------------------------------------------------------------------------
def electric_w(values: dict, symmetric: str = "total") -> float | None:
    """The device's electric power in W with S2's sign (positive consumed) from values per
    commodity quantity (its S2 value -> number), or None when none is electric power (heat or
    gas only): 3_PHASE_SYMMETRIC when present (x 3 for `per_phase`), else the sum of the
    phases named.  Used for measurements and FRBC power ranges alike."""
    if symmetric not in SYMMETRIC_MODES:
        raise S2MappingError(f"symmetric {symmetric!r}: use {' or '.join(SYMMETRIC_MODES)}")
    if SYMMETRIC.value in values:
        w = float(values[SYMMETRIC.value]) * SYMMETRIC_MODES[symmetric]
    else:
        phases = [float(values[p.value]) for p in PHASES if p.value in values]
        if not phases:
            return None
        w = sum(phases)
    if not math.isfinite(w):
        raise S2MappingError(f"power {w!r} is not a finite number")
    return w


def measured_w(message: PowerMeasurement, symmetric: str = "total") -> float | None:
    """The device's electric power with the site's sign (negative: drawing), or None when the
    measurement holds none (`electric_w`)."""
    w = electric_w({_cq(v.commodity_quantity): v.value for v in message.values}, symmetric)
    return None if w is None else -w + 0.0


# -- the session's decisions ------------------------------------------------------------------------------------
def select_version(offered: Any) -> str | None:
    """The S2 version the CEM selects from the RM's Handshake: one we speak, else None."""
    return next((v for v in (offered or []) if v in VERSIONS), None)


def choose_control_type(available: Any) -> ControlType | None:
    """PEBC when the RM offers it (an envelope is what a limit is), else FRBC when offered
    (relevent/protocols/s2/frbc.py); None otherwise (OMBC, PPBC and DDBC are not done)."""
    offered = [ControlType(_cq(c)) for c in (available or [])]
    return next((c for c in CONTROL_TYPES if c in offered), None)


def resource_problem(path_id: str | None, details_id: Any, known: set) -> str | None:
    """Why a ResourceManagerDetails' resource_id may not be served: the path named another
    id, or no DER has it.  None: fine."""
    rid = canonical_id(details_id)
    if path_id is not None and canonical_id(path_id) != rid:
        return f"resource_id {rid} is not the resource id of the path ({path_id})"
    if rid not in known:
        return f"unknown resource id {rid}: no DER of this endpoint has it as its address"
    return None


def canonical_id(value: Any) -> str:
    """A resource id as the site compares them: a UUID in its lower-case hyphenated form,
    anything else as written."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(value)


# -- the CEM's messages ------------------------------------------------------------------------------------------
def handshake(new_id: Callable[[], uuid.UUID] = uuid.uuid4) -> Handshake:
    return Handshake(message_id=new_id(), role=EnergyManagementRole.CEM, supported_protocol_versions=list(VERSIONS))


def handshake_response(version: str, new_id: Callable[[], uuid.UUID] = uuid.uuid4) -> HandshakeResponse:
    return HandshakeResponse(message_id=new_id(), selected_protocol_version=version)


def select_control_type(control: ControlType, new_id: Callable[[], uuid.UUID] = uuid.uuid4) -> SelectControlType:
    return SelectControlType(message_id=new_id(), control_type=control)


def reception_status(subject: Any, status: ReceptionStatusValues, label: str = "") -> ReceptionStatus:
    """The ReceptionStatus for message `subject` (NIL_ID when its id cannot be read)."""
    try:
        subject_id = uuid.UUID(str(subject))
    except ValueError:
        subject_id = NIL_ID
    return ReceptionStatus(subject_message_id=subject_id, status=status, diagnostic_label=label[:500] or None)


# -- time --------------------------------------------------------------------------------------------------------
def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def to_ms(t: datetime) -> int:
    return round(t.timestamp() * 1000)


def iso_ms(ms: int) -> str:
    return from_ms(ms).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _cq(value: Any) -> str:
    """An enum member or its value -> its value."""
    return str(getattr(value, "value", value))


def path_resource_id(path: str) -> str | None:
    """The resource id a websocket path names: `/s2/<id>` -> id (URL-decoded); `/s2` or `/`
    -> None (the RM is known by its ResourceManagerDetails)."""
    segments = [s for s in path.split("?", 1)[0].split("/") if s]
    if not segments or segments == ["s2"]:
        return None
    return unquote(segments[-1])
