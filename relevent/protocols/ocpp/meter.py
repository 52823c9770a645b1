"""A charger's power from its energy register, for chargers that sample no power.
Pure: no I/O, no clock (the times are the charger's own).

Many chargers report only `Energy.Active.Import.Register` (OCPP's default measurand), and no
`Power.Active.Import`.  Their power is the rise of the register between two readings:

    W = (delta export Wh - delta import Wh) * 3600 / delta s

with the DER's sign (drawing is negative; `Energy.Active.Export.Register` counts positive
where a charger reports one).  Units Wh and kWh (1.6 `unit`, default Wh; 2.0.1
`unitOfMeasure.unit` and `multiplier`), per-phase registers summed when there is no total,
read by the same helpers as power samples (relevent.protocols.ocpp.profile).

Invariant: a derived figure only ever comes from two successive readings of ONE meter (a
connector / EVSE, or the main meter 0), each timed by its own `MeterValue.timestamp`, that
describe the present power:

* the later reading's timestamp is after the earlier one's;
* no register went backwards (a meter reset or replaced: the difference means nothing);
* both hold the same registers (import, export);
* they are at most MAX_GAP_S apart;
* the result is a finite W.

Anything else gives no figure (None) and the new reading becomes the baseline, so a bad pair
is never carried into the next one.  Why the charger's timestamps and not the arrival time:
the register was read at the charger's time; messages wait in queues, and a charger that was
offline sends its readings late and in a burst, yet its own times still give the right
delta.  Their clock may be off from ours; only differences between them are used.

A meter value that has a power sample keeps that power: it always wins over a derived one
(its energy registers, where readable, still move the baseline).  Only energy-only meter
values use the delta.  The state per meter is one small EnergyDelta, fed by the endpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from relevent.protocols.ocpp import profile as P

IMPORT = "Energy.Active.Import.Register"
EXPORT = "Energy.Active.Export.Register"
ENERGY_REGISTERS = (IMPORT, EXPORT)
ENERGY_UNITS = {"Wh": 1.0, "kWh": 1000.0}      # the first is the default and the base unit
# Seconds: two readings further apart than this give no figure.  The delta of a longer
# interval is that interval's average, not the present power (an EV that stopped ten
# minutes ago would still look as if charging).  15 min is also the longest interval
# chargers are commonly set to send readings at (1.6 ClockAlignedDataInterval, often
# 900 s), so those still get a figure.
MAX_GAP_S = 900.0
# Derived W are rounded to 1 mW: far below any register's resolution (1 Wh over 900 s is
# 4 W), it drops the binary noise of decimal kWh (12.356 - 12.345 = 0.01099999...).
ROUND_DIGITS = 3
POWER = "power"                 # sources of a meter's figure (`meter_source` in relevent status)
ENERGY_DELTA = "energy delta"


@dataclass(frozen=True)
class EnergyReading:
    """One meter value's energy registers, Wh, and the charger's timestamp of it."""
    at: datetime                       # aware (UTC when the charger gave no offset)
    import_wh: float | None = None     # None: the meter value has no such register
    export_wh: float | None = None


@dataclass
class EnergyDelta:
    """One meter's baseline: its last energy reading.  `feed` each new reading in the
    charger's order; `why` says why the last one gave no figure ("" when it gave one)."""
    last: EnergyReading | None = None
    why: str = "no reading yet"

    def feed(self, reading: EnergyReading) -> float | None:
        """W with the DER's sign from the last reading to this one, or None (see the module
        docstring); either way this reading is the new baseline."""
        prev, self.last = self.last, reading
        self.why = _no_figure(prev, reading)
        if self.why:
            return None
        seconds = (reading.at - prev.at) / timedelta(seconds=1)
        wh = _rise(prev.export_wh, reading.export_wh) - _rise(prev.import_wh, reading.import_wh)
        w = wh * 3600.0 / seconds
        if not math.isfinite(w):
            self.why = f"{wh:g} Wh in {seconds:g} s is beyond any power"
            return None
        return round(w, ROUND_DIGITS) + 0.0   # no -0.0


def meter_figure(version: str, meter_values: Any, delta: EnergyDelta,
                 where: str = "meterValue") -> tuple[float, str] | None:
    """One meter's figure from a message's `meterValue` list, in the order given: (W with the
    DER's sign, POWER or ENERGY_DELTA), the last meter value that gives one; None when none
    does.  A meter value with a power sample gives that power; one with only energy
    registers goes through `delta`.  Raises OcppPayloadError naming the field when a
    power sample, or an energy-only meter value, cannot be read; then `delta` is unchanged."""
    parsed: list[tuple[float | None, EnergyReading | None]] = []
    for here, meter_value in P.meter_value_items(meter_values, where):
        w = P.meter_value_power_w(version, meter_value, here)
        if w is None:
            parsed.append((None, energy_reading(version, meter_value, here)))
            continue
        try:
            reading = energy_reading(version, meter_value, here)
        except P.OcppPayloadError:   # e.g. a signed register (SignedData): the power is what counts
            reading = None
        parsed.append((w, reading))
    found = None
    for w, reading in parsed:
        derived = None if reading is None else delta.feed(reading)
        if w is not None:
            found = (w, POWER)
        elif derived is not None:
            found = (derived, ENERGY_DELTA)
    return found


def energy_reading(version: str, meter_value: dict, here: str) -> EnergyReading | None:
    """One MeterValue's energy registers (Wh) and timestamp; None when it has no register."""
    registers = P.measurand_values(version, meter_value, here, ENERGY_REGISTERS, ENERGY_UNITS, "energy")
    if not registers:
        return None
    if "timestamp" not in meter_value:
        raise P.OcppPayloadError(f"{here}.timestamp: missing")
    at = charger_time(meter_value["timestamp"], f"{here}.timestamp")
    return EnergyReading(at, registers.get(IMPORT), registers.get(EXPORT))


def charger_time(text: Any, field: str) -> datetime:
    """An OCPP dateTime (ISO 8601) as an aware datetime; without an offset it is UTC (OCPP's
    times are UTC)."""
    if not isinstance(text, str):
        raise P.OcppPayloadError(f"{field}: expected an ISO 8601 time, got {text!r}")
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise P.OcppPayloadError(f"{field}: {text!r} is not an ISO 8601 time") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


def _no_figure(prev: EnergyReading | None, now: EnergyReading) -> str:
    """Why the pair (prev, now) gives no figure; "" when it does."""
    if prev is None:
        return "first reading"
    if (prev.import_wh is None) != (now.import_wh is None) or (prev.export_wh is None) != (now.export_wh is None):
        return "other registers than the last reading"
    seconds = (now.at - prev.at) / timedelta(seconds=1)
    if seconds <= 0:
        return f"timestamp {now.at.isoformat()} is not after the last reading's ({prev.at.isoformat()})"
    for name, before, after in (("import", prev.import_wh, now.import_wh), ("export", prev.export_wh, now.export_wh)):
        if before is not None and after is not None and after < before:
            return f"the {name} register went back from {before:g} to {after:g} Wh (meter reset or replaced)"
    if seconds > MAX_GAP_S:
        return f"{seconds:g} s since the last reading, more than {MAX_GAP_S:g} s"
    return ""


def _rise(before: float | None, after: float | None) -> float:
    return 0.0 if before is None or after is None else after - before
