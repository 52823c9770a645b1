"""ReLevENT's HEDERA schedule request, as a local EMS publishes it over MQTT (docs/mqtt-ems.md).

Pure: payload bytes -> `HederaRequest` (values in W, interval in s, start in ms), or a
`HederaError` naming the field at fault; the 90-10 writes a request makes; the reply.
Whether the start lies in the future is the control session's rule (StrTm), not ours.

    {"skipHedera": true, "direction": "EXPORT", "start": {"seconds": 1795720000, "nanos": 0},
     "resolution": "FIFTEEN_MINUTES", "values": [5000, 4000, 3000], "correlationId": "r-17"}
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from relevent.scheduling.schedule import SLOTS, START_SLOTS

RESOLUTIONS = {"FIVE_MINUTES": 300, "FIFTEEN_MINUTES": 900}   # the reference's HederaScheduleInterval
DIRECTIONS = ("IMPORT", "EXPORT")
MAX_VALUES = SLOTS               # ValASG001..100
MAX_PAYLOAD_BYTES = 65536
MAX_CORRELATION_ID = 256         # characters
FLOAT32_MAX = 3.4028234663852886e38  # values travel as MMS FLOAT32 (ValASG.setMag.f)
UTC_TIME_MAX_S = 2 ** 32 - 1     # StrTm travels as MMS UtcTime: 32-bit seconds

# Gson (the reference gateway's parser) is lenient: it reads names and enum values without
# quotes, and the reference's own mosquitto_pub example sends exactly that (its shell eats the
# inner quotes).  Only when a payload is not JSON, bare words between JSON punctuation are
# quoted and it is read again; true, false and null stay what they are.
_BARE_WORD = re.compile(r"(?<=[{\[,:])(\s*)([A-Za-z_][A-Za-z0-9_]*)(\s*)(?=[,:}\]])")
_LITERALS = ("true", "false", "null")


class HederaError(ValueError):
    """A request that cannot be read: `field` names what is wrong ("payload" for the whole
    message), `reason` says how.  `correlation_id` and `echo` are what could be read anyway,
    for the reply."""

    def __init__(self, field: str, reason: str, correlation_id: Any = None, echo: dict | None = None) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason
        self.correlation_id = correlation_id
        self.echo = echo if echo is not None else empty_echo()


@dataclass(frozen=True)
class HederaRequest:
    values: tuple[float, ...]     # W, one per interval, in the site's sign convention (as given)
    interval_s: int               # SchdIntv
    start_ms: int                 # StrTm, ms since the epoch
    resolution: str
    start_seconds: int
    start_nanos: int
    direction: str | None         # IMPORT, EXPORT or absent: checked and echoed, the values are as given
    correlation_id: Any = None    # a string or an integer, echoed in the reply; None: absent

    def echo(self) -> dict:
        return {"start": {"seconds": self.start_seconds, "nanos": self.start_nanos},
                "resolution": self.resolution, "count": len(self.values), "direction": self.direction}


def empty_echo() -> dict:
    return {"start": None, "resolution": None, "count": None, "direction": None}


# -- decoding -----------------------------------------------------------------------------------
def decode(payload: bytes) -> HederaRequest:
    """The request in `payload`, or HederaError naming the field at fault."""
    doc = _document(payload)
    correlation_id = _correlation_id(doc)
    echo = _echo(doc)

    def fail(field: str, reason: str) -> HederaError:
        return HederaError(field, reason, correlation_id, echo)

    skip = doc.get("skipHedera")
    if skip is not True:
        raise fail("skipHedera", f"must be true, got {_show(skip) if 'skipHedera' in doc else 'nothing'}: this edge "
                                 "applies a request itself and does not forward it to HEDERA first (the "
                                 "reference's default, false, would)")
    direction = doc.get("direction")
    if "direction" in doc and direction not in DIRECTIONS:
        raise fail("direction", f"must be one of {', '.join(DIRECTIONS)}, got {_show(direction)}")

    if "start" not in doc:
        raise fail("start", "missing: expected {\"seconds\": <unix s>, \"nanos\": 0}")
    start = doc["start"]
    if not isinstance(start, dict):
        raise fail("start", f"expected an object {{\"seconds\", \"nanos\"}}, got {_show(start)}")
    seconds = start.get("seconds")
    if not _is_int(seconds):
        raise fail("start.seconds", f"expected an integer (Unix seconds), got "
                                    f"{_show(seconds) if 'seconds' in start else 'nothing'}")
    if not 0 <= seconds <= UTC_TIME_MAX_S:
        raise fail("start.seconds", f"{_show(seconds)} is out of range (0..{UTC_TIME_MAX_S})")
    nanos = start.get("nanos", 0)
    if not _is_int(nanos) or not 0 <= nanos <= 999_999_999:
        raise fail("start.nanos", f"expected an integer 0..999999999, got {_show(nanos)}")

    if "resolution" not in doc:
        raise fail("resolution", f"missing: expected one of {', '.join(RESOLUTIONS)}")
    resolution = doc["resolution"]
    if resolution not in RESOLUTIONS:
        raise fail("resolution", f"unknown resolution {_show(resolution)}: expected one of {', '.join(RESOLUTIONS)}")

    if "values" not in doc:
        raise fail("values", "missing: expected a list of 1..100 numbers (W)")
    values = doc["values"]
    if not isinstance(values, list):
        raise fail("values", f"expected a list of numbers (W), got {_show(values)}")
    if not values:
        raise fail("values", "empty: expected 1..100 numbers (W)")
    if len(values) > MAX_VALUES:
        raise fail("values", f"{len(values)} values: a schedule holds at most {MAX_VALUES}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise fail(f"values[{i}]", f"expected a number (W), got {_show(v)}")
        if isinstance(v, float) and not math.isfinite(v) or abs(v) > FLOAT32_MAX:
            raise fail(f"values[{i}]", f"expected a finite number (W), got {v!r}")
        out.append(float(v))

    return HederaRequest(tuple(out), RESOLUTIONS[resolution], seconds * 1000 + nanos // 1_000_000, resolution,
                         seconds, nanos, direction, correlation_id)


def _document(payload: bytes) -> dict:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise HederaError("payload", f"{len(payload)} bytes: at most {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HederaError("payload", f"not JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        try:
            doc = json.loads(_quote_bare_words(text))
        except ValueError:
            raise HederaError("payload", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HederaError("payload", f"expected a JSON object, got {_show(doc)}")
    return doc


def _quote_bare_words(text: str) -> str:
    def quote(m: re.Match) -> str:
        return m.group(0) if m.group(2) in _LITERALS else f'{m.group(1)}"{m.group(2)}"{m.group(3)}'
    return _BARE_WORD.sub(quote, text)


def _correlation_id(doc: dict) -> Any:
    if "correlationId" not in doc:
        return None
    cid = doc["correlationId"]
    if isinstance(cid, str) and len(cid) <= MAX_CORRELATION_ID or _is_int(cid) and abs(cid) < 2 ** 63:
        return cid
    raise HederaError("correlationId", f"expected a string of at most {MAX_CORRELATION_ID} characters or an "
                                       f"integer, got {_show(cid)}")


def _echo(doc: dict) -> dict:
    """What a refusal can say of the request: the parts that are there and of the right kind."""
    echo = empty_echo()
    start = doc.get("start")
    if isinstance(start, dict):
        echo["start"] = {k: start.get(k) for k in ("seconds", "nanos")
                         if k in start and _is_int(start.get(k)) and abs(start[k]) < 2 ** 63}
    if isinstance(doc.get("resolution"), str):
        echo["resolution"] = doc["resolution"][:64]
    if isinstance(doc.get("values"), list):
        echo["count"] = len(doc["values"])
    if doc.get("direction") in DIRECTIONS:
        echo["direction"] = doc["direction"]
    return echo


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v: Any) -> str:
    """A value as it appears in a reason: JSON, cut short."""
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# -- the 90-10 writes -------------------------------------------------------------------------------
def schedule_writes(request: HederaRequest, priority: int) -> list[tuple[str, int, Any]]:
    """(field, index, value) for Schedule.write, in order: the whole schedule, so a request
    replaces whatever the schedule held.  The start goes into StrTm01, every other StrTm
    is cleared (None)."""
    writes: list[tuple[str, int, Any]] = [("NumEntr", 0, len(request.values)), ("SchdIntv", 0, request.interval_s),
                                          ("SchdPrio", 0, priority)]
    writes += [("Val", i, v) for i, v in enumerate(request.values, start=1)]
    writes += [("StrTm", i, request.start_ms if i == 1 else None) for i in range(1, START_SLOTS + 1)]
    return writes


# -- the reply ---------------------------------------------------------------------------------------
def reply(accepted: bool, *, der: str, function: str, schedule: str, echo: dict, rule: str = "",
          reason: str = "", code: int | None = None, field: str | None = None, ena_err: int | None = None,
          correlation_id: Any = None) -> bytes:
    """The answer published on the reply topic.  `rule`: why refused ("payload" with `field`, or
    the control session's: "value", "lock:<field>", "SchdEnaErr", "timeout", ...); `code`: the
    90-10 refusal (3 access denied, 11 value invalid); `ena_err`: SchdEnaErr of a failed enable."""
    doc = {"accepted": accepted, "rule": rule, "reason": reason, "code": code, "field": field, "enaErr": ena_err,
           "request": echo, "schedule": schedule, "der": der, "function": function}
    if correlation_id is not None:
        doc["correlationId"] = correlation_id
    return json.dumps(doc).encode()
