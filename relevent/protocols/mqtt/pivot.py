"""FledgePower "pivot" JSON, as ReLevENT sites exchange it over MQTT (docs/interfaces.md).

Pure functions: build PivotCommand / PivotSchedule payloads from controller outputs, and
read device measurements (GTIM: power, GTIS: connection) with errors that name the field.
Times: `t` is {SecondSinceEpoch, FractionOfSecond}, the fraction a 24-bit binary fraction.

What we send is JSON and nothing else: a ctlVal that is not a finite number (NaN, +-inf,
which `json.dumps` would write as the non-JSON `NaN`/`-Infinity`) is refused with
PivotError, never encoded.  Callers bound the values to the DER's rating first
(relevent.devices.command.function_values / bound_value)."""
from __future__ import annotations

import json
import math
from typing import Any

CDC = {"ActPow": "ApcTyp", "MaxPow": "ApcTyp", "OnOff": "SpcTyp"}
VALIDITY = ("good", "invalid", "questionable")


class PivotError(ValueError):
    """A payload that is not valid pivot; the text names the field."""


def label(der: dict, key: str) -> str:
    """The pivot Identifier of a DER's control function or measurement (W, Conn)."""
    return der.get("points", {}).get(key) or f"{der['name']}.{key}"


def pivot_time(ms: int) -> dict:
    seconds, frac_ms = divmod(int(ms), 1000)
    return {"SecondSinceEpoch": seconds, "FractionOfSecond": frac_ms * (1 << 24) // 1000}


def time_ms(t: dict, where: str) -> int:
    try:
        return int(t["SecondSinceEpoch"]) * 1000 + int(t.get("FractionOfSecond", 0)) * 1000 // (1 << 24)
    except (KeyError, TypeError, ValueError):
        raise PivotError(f"{where}: expected {{SecondSinceEpoch, FractionOfSecond}}") from None


def _gtic(kind: str, value: Any, identifier: str, at_ms: int, test: bool = False) -> dict:
    ctl = (1 if value else 0) if CDC[kind] == "SpcTyp" else float(value)
    if not math.isfinite(ctl):
        raise PivotError(f"{identifier}: {kind} ctlVal {value!r} is not a finite number: not sent")
    return {"GTIC": {"ComingFrom": "iec61850",
                     CDC[kind]: {"ctlVal": ctl, "q": {"test": 1 if test else 0}, "t": pivot_time(at_ms)},
                     "Identifier": identifier}}


def pivot_command(kind: str, value: Any, identifier: str, at_ms: int) -> bytes:
    return json.dumps({"operation": "PivotCommand",
                       "parameters": [{"name": "PIVOTTC", "value": _gtic(kind, value, identifier, at_ms)}]},
                      allow_nan=False).encode()


def pivot_schedule(kind: str, events: list, identifier: str) -> bytes | None:
    """`events`: [(ms, value, source)], the value in force now first (ForecastReply).  A
    stretch with no schedule in force (value None: even the reserve does not cover it) has
    no set-point to send and is left out; None when nothing is left."""
    params = [{"name": "PIVOTTC", "value": _gtic(kind, value, identifier, ms)}
              for ms, value, _source in events if value is not None]
    return json.dumps({"operation": "PivotSchedule", "parameters": params}, allow_nan=False).encode() \
        if params else None


def parse_command(payload: bytes) -> tuple[str, str, Any, int]:
    """(identifier, CDC, ctlVal, ms) of a PivotCommand (what a device reads)."""
    doc = _json(payload)
    if doc.get("operation") != "PivotCommand":
        raise PivotError(f"operation: expected PivotCommand, got {doc.get('operation')!r}")
    params = doc.get("parameters")
    if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], dict):
        raise PivotError("parameters: expected one {name, value}")
    return _parse_gtic(params[0], "parameters[0]")


def parse_schedule(payload: bytes) -> list[tuple[str, str, Any, int]]:
    """[(identifier, CDC, ctlVal, ms)] of a PivotSchedule, the value in force first."""
    doc = _json(payload)
    if doc.get("operation") != "PivotSchedule":
        raise PivotError(f"operation: expected PivotSchedule, got {doc.get('operation')!r}")
    params = doc.get("parameters")
    if not isinstance(params, list) or not params:
        raise PivotError("parameters: expected a non-empty list")
    return [_parse_gtic(p, f"parameters[{i}]") for i, p in enumerate(params)]


def _parse_gtic(param: Any, where: str) -> tuple[str, str, Any, int]:
    param = _obj(param, where)
    gtic = _obj(_obj(param.get("value"), f"{where}.value").get("GTIC"), f"{where}.value.GTIC")
    ident = gtic.get("Identifier")
    if not isinstance(ident, str):
        raise PivotError("GTIC.Identifier: expected a string")
    for cdc in ("ApcTyp", "SpcTyp", "IncTyp", "DpcTyp", "BscTyp"):
        if cdc in gtic:
            body = _obj(gtic[cdc], f"GTIC.{cdc}")
            value = _number(body.get("ctlVal"), f"GTIC.{cdc}.ctlVal")
            return ident, cdc, value, time_ms(body.get("t", {}), f"GTIC.{cdc}.t") if "t" in body else 0
    raise PivotError("GTIC: no command object (ApcTyp, SpcTyp, ...)")


def measurement(identifier: str, w: float, at_ms: int, validity: str = "good") -> bytes:
    """A device's GTIM (active power), as devices publish it."""
    return json.dumps({"PIVOT": {"GTIM": {"ComingFrom": "device", "Identifier": identifier, "Cause": {"stVal": 3},
                                          "MvTyp": {"mag": {"f": float(w)}, "q": {"Validity": validity},
                                                    "t": pivot_time(at_ms)}}}}).encode()


def status(identifier: str, on: bool, at_ms: int) -> bytes:
    """A device's GTIS (connection state)."""
    return json.dumps({"PIVOT": {"GTIS": {"ComingFrom": "device", "Identifier": identifier, "Cause": {"stVal": 3},
                                          "SpsTyp": {"stVal": 1 if on else 0, "q": {"Validity": "good"},
                                                     "t": pivot_time(at_ms)}}}}).encode()


def parse_measurement(payload: bytes) -> tuple[str, str, float, str, int | None]:
    """(identifier, "W" or "Conn", value, validity, ms or None) of a GTIM or GTIS."""
    doc = _json(payload)
    root = doc.get("PIVOT", doc)
    root = _obj(root, "PIVOT")
    if "GTIM" in root:
        body = _obj(root["GTIM"], "GTIM")
        mv = _obj(body.get("MvTyp"), "GTIM.MvTyp")
        value = _number(_obj(mv.get("mag"), "GTIM.MvTyp.mag").get("f"), "GTIM.MvTyp.mag.f")
        q, t, kind, where = mv.get("q", {}), mv.get("t"), "W", "GTIM"
    elif "GTIS" in root:
        body = _obj(root["GTIS"], "GTIS")
        sps = _obj(body.get("SpsTyp"), "GTIS.SpsTyp")
        value = _number(sps.get("stVal"), "GTIS.SpsTyp.stVal")
        q, t, kind, where = sps.get("q", {}), sps.get("t"), "Conn", "GTIS"
    else:
        raise PivotError("expected a GTIM or GTIS object (under PIVOT)")
    ident = body.get("Identifier")
    if not isinstance(ident, str) or not ident:
        raise PivotError(f"{where}.Identifier: expected a non-empty string")
    validity = _obj(q, f"{where}.q").get("Validity", "good")
    if validity not in VALIDITY:
        raise PivotError(f"{where}.q.Validity: {validity!r} is not one of {', '.join(VALIDITY)}")
    return ident, kind, value, validity, time_ms(t, f"{where}.t") if t is not None else None


def _json(payload: bytes) -> dict:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PivotError(f"not JSON: {exc}") from None
    return _obj(doc, "payload")


def _obj(v: Any, where: str) -> dict:
    if not isinstance(v, dict):
        raise PivotError(f"{where}: expected an object, got {type(v).__name__}")
    return v


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise PivotError(f"{where}: expected a finite number, got {v!r}")
    return float(v)
