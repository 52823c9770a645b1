"""A DER's device command as an OCPP charging profile, and a charger's meter values as W.
Pure: no I/O, no clock (the caller passes the start time).

Units inside the site are W, generation positive, consumption negative (docs/devices.md).
A charger only draws, so:

* the charging limit (W drawn) is 0 when the command disconnects, else
  min(limit_w, |setpoint_w| if the DER has ActPow, else limit_w), within [0, rated];
* it goes out as one `SetChargingProfile`: purpose `ChargePointMaxProfile` (1.6) /
  `ChargingStationMaxProfile` (2.0.1), or `TxDefaultProfile`, on connector / EVSE 0, at the
  configured stack level, kind Absolute from the command's time, one period with no end;
  in W, or in A per phase (A = W / (phases * voltage)), floored to 0.1 (the 1.6 schema's
  `multipleOf 0.1`, and "at most one digit fraction" in 2.0.1), never above the rating;
* the charger's measured power (`Power.Active.Import`, minus `Power.Active.Export` where a
  charger reports one) comes back as a NEGATIVE W for the DER.  Chargers that report only
  their energy register: relevent.protocols.ocpp.meter derives W from it, reading the
  samples with the helpers here.

Whatever the command holds (NaN, +-inf, beyond the rating) the limit sent is finite and
within [0, rated]: NaN is taken as the safe value 0 W, as relevent.devices.command does.
A meter value that cannot be read raises OcppPayloadError naming the field at fault
(`meterValue[0].sampledValue[1].unit: 'kVA' is not a power unit (W or kW)`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

VERSIONS = ("1.6", "2.0.1")
SUBPROTOCOLS = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1"}   # websocket subprotocol -> version
PURPOSES = ("ChargePointMaxProfile", "TxDefaultProfile")    # topology names (1.6's)
PURPOSE_201 = {"ChargePointMaxProfile": "ChargingStationMaxProfile", "TxDefaultProfile": "TxDefaultProfile"}
RATE_UNITS = ("W", "A")
# chargingProfileId = PROFILE_ID_BASE + stack level: the same id every time, so each new
# profile replaces the last one (1.6 3.13.3, 2.0.1 K01.FR.05), apart from ids a back office
# would pick.
PROFILE_ID_BASE = 9010_000
POWER_UNITS = {"W": 1.0, "kW": 1000.0}          # the first is the default and the base unit
POWER_MEASURANDS = ("Power.Active.Import", "Power.Active.Export")
DEFAULT_MEASURAND = "Energy.Active.Import.Register"   # a sampledValue without a measurand (1.6 and 2.0.1)
PHASES = ("L1", "L2", "L3", "L1-N", "L2-N", "L3-N")          # per-phase power, summed when no total


class OcppPayloadError(ValueError):
    """A charger's payload the site cannot use; the message names the field at fault."""


@dataclass(frozen=True)
class ProfileSettings:
    purpose: str = "ChargePointMaxProfile"
    stack_level: int = 0
    rate_unit: str = "W"
    phases: int = 3
    voltage_v: float = 230.0

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise ValueError(f"profile_purpose {self.purpose!r}: use {' or '.join(PURPOSES)}")
        if self.rate_unit not in RATE_UNITS:
            raise ValueError(f"rate_unit {self.rate_unit!r}: use W or A")
        if isinstance(self.stack_level, bool) or not isinstance(self.stack_level, int) or self.stack_level < 0:
            raise ValueError(f"stack_level must be an integer >= 0, got {self.stack_level!r}")
        if isinstance(self.phases, bool) or self.phases not in (1, 2, 3):
            raise ValueError(f"phases must be 1, 2 or 3, got {self.phases!r}")
        if not _finite(self.voltage_v) or self.voltage_v <= 0:
            raise ValueError(f"voltage_v must be a finite number > 0, got {self.voltage_v!r}")

    @classmethod
    def from_config(cls, config: dict) -> "ProfileSettings":
        return cls(config.get("profile_purpose", "ChargePointMaxProfile"), config.get("stack_level", 0),
                   config.get("rate_unit", "W"), config.get("phases", 3), float(config.get("voltage_v", 230.0)))

    @property
    def profile_id(self) -> int:
        return PROFILE_ID_BASE + self.stack_level


# -- the command -> a charging limit ------------------------------------------------------------------
def charging_limit_w(connected: Any, limit_w: Any, setpoint_w: Any, has_actpow: bool, rated_w: Any) -> float:
    """W the charger may draw: 0 if disconnected, else min(limit, |set-point| when the DER
    has ActPow), within [0, rated].  NaN counts as 0 W, +-inf is clamped."""
    rated = _rated(rated_w)
    if not connected:
        return 0.0
    limit = _clamp(limit_w, rated)
    if has_actpow:
        setpoint = _number(setpoint_w)
        limit = min(limit, _clamp(abs(setpoint), rated))
    return limit


def command_limit_w(command: Any, rated_w: Any) -> float:
    """`charging_limit_w` of a DeviceCommand (relevent.messages): the DER has ActPow when its
    outputs hold an ActPow value (None: no schedule in force, like no function)."""
    actpow = (command.outputs or {}).get("ActPow")
    has_actpow = actpow is not None and (actpow[0] if isinstance(actpow, (tuple, list)) else actpow) is not None
    return charging_limit_w(command.connected, command.limit_w, command.setpoint_w, has_actpow, rated_w)


def rate_limit(limit_w: Any, rated_w: Any, settings: ProfileSettings) -> float:
    """The limit in the charger's unit: W, or A per phase = W / (phases * voltage); floored
    to 0.1 and never above the rating in that unit."""
    rated = _rated(rated_w)
    watts = _clamp(limit_w, rated)
    if settings.rate_unit == "W":
        return min(_tenths(watts), _tenths(rated))
    per_amp = settings.phases * settings.voltage_v
    return min(_tenths(watts / per_amp), _tenths(rated / per_amp))


def set_charging_profile(version: str, limit_w: Any, rated_w: Any, settings: ProfileSettings,
                         start_ms: int) -> dict:
    """The SetChargingProfile request payload (OCPP JSON, camelCase) for `version`."""
    if version not in VERSIONS:
        raise ValueError(f"OCPP version {version!r}: use 1.6 or 2.0.1")
    if isinstance(start_ms, bool) or not isinstance(start_ms, int) or start_ms < 0:
        raise ValueError(f"start_ms must be an integer >= 0 (ms since the epoch), got {start_ms!r}")
    schedule = {"startSchedule": iso_seconds(start_ms), "chargingRateUnit": settings.rate_unit,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": rate_limit(limit_w, rated_w, settings),
                                            "numberPhases": settings.phases}]}
    if version == "1.6":
        return {"connectorId": 0,
                "csChargingProfiles": {"chargingProfileId": settings.profile_id, "stackLevel": settings.stack_level,
                                       "chargingProfilePurpose": settings.purpose,
                                       "chargingProfileKind": "Absolute", "chargingSchedule": schedule}}
    return {"evseId": 0,
            "chargingProfile": {"id": settings.profile_id, "stackLevel": settings.stack_level,
                                "chargingProfilePurpose": PURPOSE_201[settings.purpose],
                                "chargingProfileKind": "Absolute",
                                "chargingSchedule": [{"id": settings.profile_id, **schedule}]}}


def iso_seconds(ms: int) -> str:
    """ms since the epoch -> `2030-01-01T06:00:00Z`, floored to the second (an Absolute
    profile that starts at or before the command's time is in force at once)."""
    return datetime.fromtimestamp(ms // 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- meter values -> W ------------------------------------------------------------------------------------
def meter_values_power(version: str, payload: dict) -> tuple[int, float | None]:
    """A MeterValues request: (connector id (1.6) or EVSE id (2.0.1), W with the DER's sign,
    or None when it holds no power sample)."""
    return meter_values_target(version, payload), sampled_power_w(version, _require(payload, "meterValue", ""),
                                                                  "meterValue")


def meter_values_target(version: str, payload: dict) -> int:
    """The meter a MeterValues request is about: its connector id (1.6) or EVSE id (2.0.1);
    0 is the charger's main meter."""
    key = "connectorId" if version == "1.6" else "evseId"
    where = _require(payload, key, "")
    if isinstance(where, bool) or not isinstance(where, int) or where < 0:
        raise OcppPayloadError(f"{key}: expected an integer >= 0, got {where!r}")
    return where


def transaction_event_power(payload: dict) -> tuple[int | None, float | None]:
    """A 2.0.1 TransactionEvent: (EVSE id, or None when the event names none; W with the DER's
    sign, or None when it carries no power sample)."""
    values = payload.get("meterValue")
    return (transaction_event_evse(payload),
            None if values is None else sampled_power_w("2.0.1", values, "meterValue"))


def transaction_event_evse(payload: dict) -> int | None:
    """The EVSE id a 2.0.1 TransactionEvent names, or None when it names none."""
    evse = payload.get("evse")
    if evse is None:
        return None
    if not isinstance(evse, dict):
        raise OcppPayloadError(f"evse: expected an object, got {evse!r}")
    evse_id = _require(evse, "id", "evse.")
    if isinstance(evse_id, bool) or not isinstance(evse_id, int) or evse_id < 0:
        raise OcppPayloadError(f"evse.id: expected an integer >= 0, got {evse_id!r}")
    return evse_id


def sampled_power_w(version: str, meter_values: Any, where: str = "meterValue") -> float | None:
    """W with the DER's sign (export - import: a charger drawing 7.4 kW gives -7400.0) from
    the last meter value that has a Power.Active.Import or .Export sample; per-phase samples
    are summed when there is no total.  None: no power sample at all (energy only)."""
    found = None
    for here, meter_value in meter_value_items(meter_values, where):
        w = meter_value_power_w(version, meter_value, here)
        if w is not None:
            found = w
    return found


def meter_value_items(meter_values: Any, where: str = "meterValue") -> list[tuple[str, dict]]:
    """The MeterValue objects of a `meterValue` list, each with its field path (`meterValue[2]`)."""
    if not isinstance(meter_values, list):
        raise OcppPayloadError(f"{where}: expected a list, got {type(meter_values).__name__}")
    out = []
    for i, meter_value in enumerate(meter_values):
        here = f"{where}[{i}]"
        if not isinstance(meter_value, dict):
            raise OcppPayloadError(f"{here}: expected an object, got {type(meter_value).__name__}")
        out.append((here, meter_value))
    return out


def meter_value_power_w(version: str, meter_value: dict, here: str) -> float | None:
    """One MeterValue's power, W with the DER's sign (export - import); None when it has no
    power sample."""
    power = measurand_values(version, meter_value, here, POWER_MEASURANDS, POWER_UNITS, "power")
    if not power:
        return None
    return power.get("Power.Active.Export", 0.0) - power.get("Power.Active.Import", 0.0) + 0.0   # no -0.0


def measurand_values(version: str, meter_value: dict, here: str, measurands: tuple[str, ...],
                     units: dict[str, float], kind: str) -> dict[str, float]:
    """Of one MeterValue, each of `measurands` it holds, in the base unit of `units` (the
    first: W, Wh): its total sample, else the sum of its per-phase samples.  A sample
    without a measurand is the OCPP default, Energy.Active.Import.Register."""
    samples = _require(meter_value, "sampledValue", here + ".")
    if not isinstance(samples, list):
        raise OcppPayloadError(f"{here}.sampledValue: expected a list, got {type(samples).__name__}")
    totals: dict[str, float] = {}
    phases: dict[str, float] = {}
    for j, sample in enumerate(samples):
        at = f"{here}.sampledValue[{j}]"
        if not isinstance(sample, dict):
            raise OcppPayloadError(f"{at}: expected an object, got {type(sample).__name__}")
        measurand = sample.get("measurand", DEFAULT_MEASURAND)
        if measurand not in measurands:
            continue
        value = sample_quantity(version, sample, at, units, kind)
        phase = sample.get("phase")
        if phase is None:
            totals[measurand] = value
        elif phase in PHASES:
            phases[measurand] = phases.get(measurand, 0.0) + value
    return {m: totals[m] if m in totals else phases[m] for m in measurands if m in totals or m in phases}


def sample_quantity(version: str, sample: dict, at: str, units: dict[str, float], kind: str) -> float:
    """A sampledValue's value in the base unit of `units` (its first key, the default unit:
    W for power, Wh for energy); 1.6 `unit`, 2.0.1 `unitOfMeasure.unit` and `multiplier`."""
    if sample.get("format") == "SignedData":
        raise OcppPayloadError(f"{at}.format: SignedData cannot be read as a number")
    raw = _require(sample, "value", at + ".")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise OcppPayloadError(f"{at}.value: expected a number, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise OcppPayloadError(f"{at}.value: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise OcppPayloadError(f"{at}.value: expected a finite number, got {raw!r}")
    base = next(iter(units))
    if version == "1.6":
        unit, unit_field, multiplier = sample.get("unit", base), f"{at}.unit", 0
    else:
        uom = sample.get("unitOfMeasure", {})
        if not isinstance(uom, dict):
            raise OcppPayloadError(f"{at}.unitOfMeasure: expected an object, got {uom!r}")
        unit, unit_field = uom.get("unit", base), f"{at}.unitOfMeasure.unit"
        multiplier = uom.get("multiplier", 0)
        if isinstance(multiplier, bool) or not isinstance(multiplier, int) or not -9 <= multiplier <= 9:
            raise OcppPayloadError(f"{at}.unitOfMeasure.multiplier: expected an integer -9..9, got {multiplier!r}")
    if unit not in units:
        article = "an" if kind[0] in "aeiou" else "a"
        raise OcppPayloadError(f"{unit_field}: {unit!r} is not {article} {kind} unit ({' or '.join(units)})")
    out = value * units[unit] * 10.0 ** multiplier
    if not math.isfinite(out):
        raise OcppPayloadError(f"{at}.value: {raw!r} {unit} is beyond any {kind}")
    return out


# -- helpers -------------------------------------------------------------------------------------------------
def _require(obj: Any, key: str, prefix: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise OcppPayloadError(f"{prefix}{key}: missing")
    return obj[key]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rated(rated_w: Any) -> float:
    if not _finite(rated_w) or rated_w <= 0:
        raise ValueError(f"a charger needs a finite rated_power_w > 0, got {rated_w!r}")
    return float(rated_w)


def _number(value: Any) -> float:
    """A float; None, NaN and what is not a number count as 0 W (the safe side)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return 0.0 if math.isnan(value) else float(value)


def _clamp(value: Any, rated: float) -> float:
    return max(0.0, min(_number(value), rated))


def _tenths(x: float) -> float:
    """Floor to 0.1, absorbing the float error of x * 10 (2.3 * 10 = 22.999999999999996), yet
    never above x (1.9999999999999432 is 1.9, not 2.0: a rating is never exceeded)."""
    tenths = math.floor(round(x * 10, 6)) / 10
    return tenths if tenths <= x else math.floor(x * 10) / 10
