"""The HTTP adapter's own decisions, pure (no I/O, no thread, no framework): names and
times between JSON and the 90-10 model, a request body as the control session's writes,
the session's views as JSON objects, and a refusal as an HTTP status and error body.

Times are integer ms since the epoch inside the site and ISO 8601 UTC ('Z') in JSON.
Values are W (ActPow, MaxPow) or booleans (OnOff); a value JSON cannot carry (NaN or an
infinity, which MMS clients may write) reads as null.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from relevent.scheduling.schedule import (
    RESERVE_NAME, START_SLOTS, EnaErr, Refusal, State,
)
from relevent.wan.session import Answer, Write

API = "/api/v1"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
RESERVE = "reserve"                    # the path name of Res_FSCH01
FLOAT32_MAX = 3.4028234663852886e38    # ValASG setMag.f is a FLOAT32: larger values do not fit
MAX_START_MS = (2 ** 32 - 1) * 1000    # StrTm setTm is an MMS UtcTime: 32-bit seconds (2106-02-07)
UNITS = {"ActPow": "W", "MaxPow": "W", "OnOff": "bool"}


# -- names ----------------------------------------------------------------------------------------
def schedule_name(n: str, count: int) -> str | None:
    """The 90-10 name of path segment `n` ("1".."N" or "reserve"), None if there is none."""
    if n == RESERVE:
        return RESERVE_NAME
    if n.isascii() and n.isdigit() and not n.startswith("0") and 1 <= int(n) <= count:
        return f"FSCH{int(n):02d}"
    return None


def path_name(schedule: str) -> str:
    """The path segment of a 90-10 schedule name: FSCH03 -> "3", Res_FSCH01 -> "reserve"."""
    return RESERVE if schedule == RESERVE_NAME else str(int(schedule[4:]))


def schedule_ref(der: str, kind: str, schedule: str | None) -> str | None:
    """The resource of a schedule, e.g. /api/v1/ders/pv1/ActPow/schedules/1."""
    if schedule is None:
        return None
    return f"{API}/ders/{quote(der, safe='')}/{kind}/schedules/{path_name(schedule)}"


# -- times and values -------------------------------------------------------------------------------
def iso(ms: int | None) -> str | None:
    """ms since the epoch as ISO 8601 UTC with 'Z' (microseconds shown only when not zero,
    as datetime.isoformat does)."""
    if ms is None:
        return None
    return (EPOCH + timedelta(milliseconds=ms)).isoformat().replace("+00:00", "Z")


def ms_of(t: datetime) -> int:
    """An aware datetime as ms since the epoch (sub-millisecond digits dropped)."""
    return (t - EPOCH) // timedelta(milliseconds=1)


def json_value(v: Any) -> float | bool | None:
    """A schedule or output value as JSON: a boolean, a finite number, or null."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    return None


# -- request bodies ------------------------------------------------------------------------------------
@dataclass
class FieldError(Exception):
    """A request field the adapter refuses before anything reaches the session."""
    field: str
    message: str


def writes_of(body: dict, kind: str, slots: int) -> list[Write]:
    """The fields of one PUT (already type-checked: values are numbers or booleans, the
    start aware datetimes) as the session's writes, in the order MMS clients write them.
    `slots` is the schedule's number of value slots (the DER's `values`)."""
    writes: list[Write] = []
    values = body.get("values")
    if values is not None:
        if len(values) > slots:
            raise FieldError("body.values", f"at most {slots} values (the DER's value slots), got {len(values)}")
        for i, v in enumerate(values):
            if kind == "OnOff" and not isinstance(v, bool):
                raise FieldError(f"body.values.{i}", "OnOff values are booleans")
            if kind != "OnOff" and isinstance(v, bool):
                raise FieldError(f"body.values.{i}", f"{kind} values are numbers (W), not booleans")
        writes.append(Write("NumEntr", 0, len(values)))
        writes += [Write("Val", i, v) for i, v in enumerate(values, start=1)]
    if body.get("interval_s") is not None:
        writes.append(Write("SchdIntv", 0, body["interval_s"]))
    if body.get("priority") is not None:
        writes.append(Write("SchdPrio", 0, body["priority"]))
    if body.get("reuse") is not None:
        writes.append(Write("SchdReuse", 0, body["reuse"]))
    start = body.get("start")
    if start is not None:
        starts = [start] if isinstance(start, datetime) else list(start)
        if len(starts) > START_SLOTS:
            raise FieldError("body.start", f"at most {START_SLOTS} start times (StrTm01..{START_SLOTS})")
        for i, t in enumerate(starts, start=1):
            ms = ms_of(t)
            if ms > MAX_START_MS:
                raise FieldError(f"body.start.{i - 1}", "start times end at 2106-02-07T06:28:15Z (MMS UtcTime)")
            writes.append(Write("StrTm", i, ms))
        writes += [Write("StrTm", i, None) for i in range(len(starts) + 1, START_SLOTS + 1)]
    return writes


# -- refusals -------------------------------------------------------------------------------------------
def problem(error: str, rule: str, code: int | None = None, name: str | None = None,
            field: str | None = None) -> dict:
    """The JSON body of every 4xx/5xx answer."""
    return {"error": error, "rule": rule, "code": code, "name": name, "field": field}


def refusal_body(refusal: Refusal | None) -> tuple[int | None, str | None]:
    return (None, None) if refusal is None else (int(refusal), Refusal(refusal).name)


def refused(answer: Answer) -> tuple[int, dict]:
    """A refusal of the session as (HTTP status, body).  `code` is the rule's 90-10 code:
    the SchdEnaErr of a failed enable, else the DataAccessError MMS answers with (3 access
    denied, 11 value invalid); `name` is its name."""
    rule = answer.rule
    code, name = refusal_body(answer.refusal)
    if rule == "SchdEnaErr" and answer.ena_err is not None:
        err = EnaErr(answer.ena_err)
        return 409, problem(answer.reason, rule, int(err), err.name)
    if rule.startswith(("lock", "party:")) or rule == "band":
        status = 403
    elif rule.startswith("range:"):
        status = 422
    elif rule == "unknown":
        status = 404
    elif rule == "timeout":
        status = 503   # the controller did not answer: not the client's fault, retry later
    elif rule in ("value", "field", "action"):
        status = 422
    else:                   # the controller refused for another reason: the schedule's state
        status = 409
    return status, problem(answer.reason, rule, code, name)


JSON_FIELDS = {"NumEntr": "body.values", "Val": "body.values", "SchdIntv": "body.interval_s",
               "SchdPrio": "body.priority", "SchdReuse": "body.reuse", "StrTm": "body.start"}


def field_of(answer: Answer) -> str | None:
    """The body field a refused write names: its lock (lock:SchdPrio -> body.priority) or
    the StrTm its reason names (StrTm02 ... -> body.start.1)."""
    if answer.rule.startswith("lock:"):
        return JSON_FIELDS.get(answer.rule[5:])
    match = re.match(r"StrTm(\d\d)\b", answer.reason)
    if match:
        return f"body.start.{int(match.group(1)) - 1}"
    return None


def unknown(what: str, field: str) -> tuple[int, dict]:
    code, name = refusal_body(Refusal.ACCESS_DENIED)  # as the session answers an unknown schedule
    return 404, problem(what, "unknown", code, name, field)


# -- views -------------------------------------------------------------------------------------------------
def ders_json(ders: dict[str, dict]) -> list[dict]:
    return [{"name": d["name"], "type": d.get("type", "generic"), "rated_power_w": float(d.get("rated_power_w", 0.0)),
             "functions": list(d["functions"]), "schedules": d["schedules"],
             "href": f"{API}/ders/{quote(d['name'], safe='')}"} for d in ders.values()]


def function_json(der: str, kind: str, view: dict, measurement: Any = None) -> dict:
    """GET /ders/{der}/{function}: the controller's output (FSCC/GGIO) and its source."""
    m = None
    if measurement is not None:
        m = {"w": json_value(measurement.w), "connected": measurement.connected, "quality": measurement.quality,
             "at": iso(measurement.at), "source": measurement.source}
    return {"der": der, "function": kind, "unit": UNITS[kind], "output": json_value(view["output"]),
            "source": view["source"], "run_start": iso(view["run_start"]), "at": iso(view["at"] or None),
            "active_schedule": schedule_ref(der, kind, view["source"]), "measurement": m}


DEFAULT_STATUS = {"state": int(State.NOT_READY), "ena_err": int(EnaErr.NONE), "entry": 0, "act_start": None,
                  "next_start": None, "value": None}


def schedule_json(der: str, kind: str, name: str, entry: dict) -> dict:
    """One schedule of a view ({"status", "settings"}) as GET .../schedules/{n} shows it."""
    settings = entry["settings"]
    status = entry["status"] or DEFAULT_STATUS
    num_entr = settings["num_entr"]
    values = settings["values"]
    shown = values[:max(0, min(num_entr, len(values)))] if isinstance(num_entr, int) else []
    err = EnaErr(status["ena_err"])
    return {
        "der": der, "function": kind, "schedule": name, "n": path_name(name), "reserve": settings["reserve"],
        "values": [json_value(v) for v in shown], "num_entries": num_entr, "interval_s": settings["schd_intv"],
        "start": [iso(tm) for tm, _cal in settings["starts"] if tm is not None],
        "priority": settings["prio"], "reuse": bool(settings["reuse"]), "locked": list(settings["locked"]),
        "state": State(status["state"]).name, "error": {"code": int(err), "name": err.name},
        "entry": status["entry"], "active_start": iso(status["act_start"]), "next_start": iso(status["next_start"]),
        "value": json_value(status["value"]),
    }


def forecast_json(events: list) -> list[dict]:
    return [{"at": iso(at), "value": json_value(value), "source": source} for at, value, source in events]
