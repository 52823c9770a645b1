"""The HTTP/JSON API (FastAPI): resources under /api/v1, their pydantic models (from
which FastAPI generates the OpenAPI 3.1 document at /openapi.json), and the error
handlers that give every 4xx/5xx the same JSON body (mapping.problem).

Handlers run on the endpoint's asyncio loop and call only the `WanContext`, whose calls
are thread-safe and never block for long (a write holds the session's lock for a
dictionary update; an enable or disable is awaited as a future).  Docs: docs/http.md.

No `from __future__ import annotations` here: FastAPI resolves the handlers' annotations,
which use aliases local to `build_app`.
"""
import asyncio
import math
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from relevent import __version__
from relevent.clock import now_ms
from relevent.history import HistoryError, history_path, read_history
from relevent.protocols.http import mapping as M
from relevent.scheduling.schedule import INT32, SLOTS, START_SLOTS, Refusal
from relevent.security.tls import cert_names
from relevent.wan.adapter import WanContext, Who
from relevent.web import routes as web
from relevent.wan.session import FORECAST_MAX_HOURS, FORECAST_TIMEOUT_S, OPERATE_TIMEOUT_S

VALUE_INVALID = M.refusal_body(Refusal.VALUE_INVALID)


class Function(str, Enum):
    """The 90-10 control functions (a DER has some of them)."""
    ActPow = "ActPow"
    MaxPow = "MaxPow"
    OnOff = "OnOff"


# -- request body -------------------------------------------------------------------------------------
def _value(v: Any) -> float | bool:
    """A schedule value: a boolean (OnOff) or a finite number that fits a FLOAT32 (W)."""
    if isinstance(v, bool):
        return v
    if not isinstance(v, (int, float)):
        raise PydanticCustomError("value_type", "expected a number (W) or a boolean (OnOff)")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f) or abs(f) > M.FLOAT32_MAX:
        raise PydanticCustomError("finite_number", "expected a finite number within ±3.4028234663852886e38 (FLOAT32)")
    return f


def _time_string(v: Any) -> Any:
    if not isinstance(v, (str, datetime)):  # a datetime only from _starts, never from JSON
        raise PydanticCustomError("datetime_type", "expected an ISO 8601 date-time string with a UTC offset")
    return v


Value = Annotated[float | bool, PlainValidator(_value), WithJsonSchema({"anyOf": [
    {"type": "number", "minimum": -M.FLOAT32_MAX, "maximum": M.FLOAT32_MAX}, {"type": "boolean"}]})]
UtcTime = Annotated[AwareDatetime, BeforeValidator(_time_string)]
_ONE_TIME = TypeAdapter(UtcTime)


def _starts(v: Any) -> Any:
    """One time or a list of them; an error in a single time names `start` itself."""
    if isinstance(v, str):
        try:
            return [_ONE_TIME.validate_python(v)]
        except ValidationError as exc:
            raise PydanticCustomError("datetime_invalid", "{reason}",
                                      {"reason": exc.errors()[0]["msg"]}) from None
    if not isinstance(v, list):
        raise PydanticCustomError("start_type", "expected an ISO 8601 date-time string or a list of them")
    return v

Int32 = Annotated[int, Field(strict=True, ge=INT32[0], le=INT32[1])]
Starts = Annotated[list[UtcTime], Field(max_length=START_SLOTS), BeforeValidator(_starts), WithJsonSchema({
    "anyOf": [{"type": "string", "format": "date-time"},
              {"type": "array", "items": {"type": "string", "format": "date-time"}, "maxItems": START_SLOTS}]})]


class ScheduleSettings(BaseModel):
    """Any of a schedule's settings; all of them are written, or none.  Absent or null
    fields are left as they are."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"values": [3000.0, 1500.0], "interval_s": 900, "start": "2030-01-01T06:00:00Z", "priority": 20}]})

    values: Annotated[list[Value], Field(min_length=1, max_length=SLOTS)] | None = Field(
        None, description="ValASG001.. in W (ActPow, MaxPow) or ValSPG001.. booleans (OnOff); "
                          "NumEntr becomes their number")
    interval_s: Int32 | None = Field(None, description="SchdIntv, s per entry (checked at enable: > 0)")
    start: Starts | None = Field(None, description="StrTm01..: one ISO 8601 time with an offset, or a list of "
                                                   "up to 16; the other StrTm are cleared; each must lie ahead")
    priority: Int32 | None = Field(None, description="SchdPrio (higher wins)")
    reuse: Annotated[bool, Field(strict=True)] | None = Field(None, description="SchdReuse")


# -- responses ------------------------------------------------------------------------------------------
class Problem(BaseModel):
    """Every 4xx/5xx answer."""
    error: str = Field(description="why, in words")
    rule: str = Field(description="the rule that refused: lock:<field>, SchdEnaErr, value, unknown, request, "
                                  "timeout, ...")
    code: int | None = Field(description="the rule's 90-10 code: SchdEnaErr (2 NumEntr, 3 SchdIntv, 4 values, "
                                         "6 StrTm) for a failed enable, else the MMS DataAccessError "
                                         "(3 access denied, 11 value invalid)")
    name: str | None = Field(description="the code's name, e.g. NUM_ENTR, ACCESS_DENIED")
    field: str | None = Field(description="the request field at fault, e.g. body.values.2, path.der")


class Der(BaseModel):
    name: str
    type: str
    rated_power_w: float
    functions: list[str]
    schedules: int = Field(description="schedules FSCH01..NN per function, besides the reserve")
    href: str


class MeasurementOut(BaseModel):
    w: float | None = Field(description="measured active power, W (generation positive)")
    connected: bool | None
    quality: str
    at: str | None
    source: str


class FunctionState(BaseModel):
    der: str
    function: str
    unit: Literal["W", "bool"]
    output: float | bool | None = Field(description="the controller's output (null: none)")
    source: str | None = Field(description="the schedule in force (ActSchdRef), e.g. FSCH01, Res_FSCH01")
    run_start: str | None = Field(description="start of the run in force")
    at: str | None = Field(description="when the controller computed this state")
    active_schedule: str | None = Field(description="the resource of the schedule in force")
    measurement: MeasurementOut | None = Field(description="the DER's last measurement, if any")


class EnaErrOut(BaseModel):
    code: int
    name: str


class ScheduleOut(BaseModel):
    der: str
    function: str
    schedule: str = Field(description="the 90-10 name, FSCH01.. or Res_FSCH01")
    n: str = Field(description="the path name, 1.. or reserve")
    reserve: bool
    values: list[float | bool | None] = Field(description="the first NumEntr values (null: not a finite number)")
    num_entries: int = Field(description="NumEntr")
    interval_s: int = Field(description="SchdIntv")
    start: list[str] = Field(description="the start times set (StrTm)")
    priority: int = Field(description="SchdPrio")
    reuse: bool = Field(description="SchdReuse")
    locked: list[str] = Field(description="what the site does not let clients change")
    state: Literal["NOT_READY", "START_TIME_REQUIRED", "READY", "RUNNING"] = Field(description="SchdSt")
    error: EnaErrOut = Field(description="SchdEnaErr of the last enable")
    entry: int = Field(description="SchdEntr: 1.. while running, else 0")
    active_start: str | None = Field(description="ActStrTm")
    next_start: str | None = Field(description="NxtStrTm")
    value: float | bool | None = Field(description="ValMV/ValSPS: the value while running")


class ForecastEntry(BaseModel):
    at: str
    value: float | bool | None
    source: str | None


class HistorySample(BaseModel):
    at: str
    resolution_s: int | None = Field(description="null: a raw sample; 900: a 15-minute row (measured_w its mean)")
    measured_w: float | None = Field(description="measured active power, W (null: none, or older than 15 s)")
    min_w: float | None = Field(description="15-minute rows: the lowest measured power, W")
    max_w: float | None = Field(description="15-minute rows: the highest measured power, W")
    setpoint_w: float | None = Field(description="the device command's set-point, W (a 15-minute row: its last)")
    limit_w: float | None = Field(description="the device command's limit, W")
    connected: bool | None = Field(description="the device command: connected")
    sources: dict[str, str | None] = Field(description="per control function, the schedule in force")


class HistoryEvent(BaseModel):
    at: str
    kind: str = Field(description="actor, restart, link, schedule (docs/observability.md)")
    subject: str
    detail: dict[str, Any]


class HistoryOut(BaseModel):
    der: str
    since: str
    samples: list[HistorySample]
    events: list[HistoryEvent]


# -- errors ---------------------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, body: dict) -> None:
        super().__init__(body["error"])
        self.status, self.body = status, body
        self.headers: dict | None = None


def _response(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple) -> str:
    """A pydantic error location as a dotted field name, without union branch tags."""
    parts = [str(x) for i, x in enumerate(loc) if i < 2 or isinstance(x, int)]
    return ".".join(parts) or "body"


def _validation_problem(exc: RequestValidationError) -> dict:
    messages: dict[str, list[str]] = {}
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            field = "body"
            msg = f"invalid JSON at character {err['loc'][-1]}: {(err.get('ctx') or {}).get('error', '')}".rstrip(": ")
        elif err.get("type") == "model_attributes_type" and tuple(err.get("loc", ())) == ("body",):
            field = "body"
            msg = "expected a JSON object, sent with Content-Type: application/json"
        else:
            field = _field(tuple(err.get("loc", ())))
            msg = str(err.get("msg", "invalid"))
        if msg not in messages.setdefault(field, []):
            messages[field].append(msg)
    error = "; ".join(f"{field}: {' / '.join(msgs)}" for field, msgs in messages.items()) or "invalid request"
    return M.problem(error, "request", *VALUE_INVALID, field=next(iter(messages), None))


ERRORS = {status: {"model": Problem, "description": what} for status, what in (
    (400, "a body that is not JSON"),
    (401, "no accepted bearer token (rule auth): this endpoint serves no anonymous client, or the token "
          "names no party"),
    (403, "refused by the party's rights (rule party:operation, party:der, party:function, party:owner, band) "
          "or the site's locks (rule lock:<field>); code 3"),
    (404, "no such DER, function or schedule (rule unknown)"),
    (409, "the enable failed its checks (rule SchdEnaErr, code = SchdEnaErr)"),
    (422, "a field is missing, of the wrong type or refused (rule request or value; field names it)"),
    (503, "the controller did not answer in time (rule timeout): not the request's fault, retry"),
)}


def _errors(*statuses: int) -> dict:
    return {s: ERRORS[s] for s in statuses}


# -- the app ---------------------------------------------------------------------------------------------
def build_app(ctx: WanContext, stats: dict) -> FastAPI:
    """The ASGI app of one HTTP endpoint: `ctx` is its control session, `stats` counts
    requests, writes, operates and refusals (relevent status).  No Swagger UI or ReDoc
    pages: they load their scripts from a CDN, which an edge device may not reach."""
    ders = ctx.ders
    names = list(ders)
    app = FastAPI(
        title="ReLevENT edge: IEC 61850-90-10 schedules over HTTP/JSON",
        version=__version__,   # relevent's (the API's own version is its path: /api/v1)
        description="The site's DER schedules with 90-10 semantics (docs/http.md). Times are ISO 8601 with an "
                    "offset (answers in UTC, 'Z'); values in W (ActPow, MaxPow) or booleans (OnOff). "
                    f"Endpoint {ctx.name}, party {ctx.party}.",
        openapi_url="/openapi.json", docs_url=None, redoc_url=None,
    )
    app.add_middleware(_Count, stats=stats)
    bearer = HTTPBearer(auto_error=False, description="the party's token (`http_token` of its [[party]])")

    def refuse(status: int, body: dict) -> ApiError:
        stats["refused"] += 1
        return ApiError(status, body)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _response(exc.status, exc.body, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        stats["refused"] += 1
        return _response(422, _validation_problem(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        stats["refused"] += 1
        rule = {400: "request", 404: "unknown", 405: "method"}.get(exc.status_code, "http")
        code, name = VALUE_INVALID if exc.status_code == 400 else (None, None)
        field = "body" if exc.status_code == 400 else None
        return _response(exc.status_code, M.problem(str(exc.detail), rule, code, name, field),
                         getattr(exc, "headers", None))

    # -- who is asking ------------------------------------------------------------------------------
    def unauthorised(error: str) -> ApiError:
        stats["refused"] += 1
        err = ApiError(401, M.problem(error, "auth", *M.refusal_body(Refusal.ACCESS_DENIED)))
        err.headers = {"WWW-Authenticate": "Bearer"}
        return err

    def caller(request: Request,
               credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Who:
        """The party of this request (its bearer token, or the CN / a SAN of its verified TLS
        client certificate, else the endpoint's anonymous rule); a client that may not even
        read is refused here (401).  A certificate naming no party counts as none; a token
        and a certificate naming different parties are refused."""
        peer = f"{request.client.host}:{request.client.port}" if request.client else ""
        if request.headers.get("authorization") and credentials is None:
            raise unauthorised("Authorization must be 'Bearer <token>'")
        if credentials is None and request.cookies.get(web.TOKEN_COOKIE):
            # A browser on the web view (EventSource sends no Authorization header).
            credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=request.cookies[web.TOKEN_COOKIE])
        names = client_cert_names(request.scope)
        by_cert = ctx.who(peer, ("cert-cn", names)) if names else None
        if by_cert is not None and not by_cert.party:
            by_cert = None
        who = ctx.who(peer, ("http-token", credentials.credentials) if credentials else None)
        if credentials is not None and not who.party:
            raise unauthorised("the bearer token names no party this endpoint accepts")
        if by_cert is not None:
            if credentials is not None and who.party != by_cert.party:
                raise unauthorised(f"the bearer token names party {who.party!r}, the client certificate "
                                   f"{by_cert.party!r}")
            who = by_cert
        if not ctx.may(who, "read").ok and not who.party:
            raise unauthorised("this endpoint serves no anonymous client: send a party's bearer token")
        ctx.contact(who)   # WAN contact, if a recognised party
        return who

    Caller = Annotated[Who, Depends(caller)]

    def readable(who: Who, der: str, kind: str | None = None) -> None:
        decision = ctx.may(who, "read", der, kind)
        if not decision.ok:
            raise refuse(403, M.problem(decision.reason, decision.rule, *M.refusal_body(Refusal.ACCESS_DENIED)))

    # -- resolving the path ---------------------------------------------------------------------
    def der_of(der: str) -> dict:
        d = ders.get(der)
        if d is None:
            raise refuse(*M.unknown(f"no DER {der!r} (known: {', '.join(names) or 'none'})", "path.der"))
        return d

    def function_of(der: str, function: Function) -> tuple[dict, str]:
        d = der_of(der)
        kind = function.value
        if kind not in d["functions"]:
            raise refuse(*M.unknown(f"DER {der} has no {kind} (it has {', '.join(d['functions'])})",
                                    "path.function"))
        return d, kind

    def schedule_of(der: str, function: Function, n: str) -> tuple[str, str]:
        d, kind = function_of(der, function)
        name = M.schedule_name(n, d["schedules"])
        if name is None:
            raise refuse(*M.unknown(f"no schedule {n!r} on {der}/{kind} (1..{d['schedules']} or reserve)", "path.n"))
        return kind, name

    def view_of(der: str, kind: str) -> dict:
        view = ctx.view(der, kind)
        if view is None:  # the session serves every function of ctx.ders: not expected
            raise refuse(*M.unknown(f"no controller {der}/{kind}", "path.function"))
        return view

    def schedule_now(der: str, kind: str, name: str) -> dict:
        entry = view_of(der, kind)["schedules"].get(name)
        if entry is None:
            raise refuse(*M.unknown(f"no schedule {name} on {der}/{kind}", "path.n"))
        return M.schedule_json(der, kind, name, entry)

    # -- resources ------------------------------------------------------------------------------
    api = APIRouter(prefix=M.API)
    DerPath = Annotated[str, Path(description="the DER's name (GET /ders)", examples=names[:3] or ["der1"])]
    FunctionPath = Annotated[Function, Path(description="the control function")]
    SchedulePath = Annotated[str, Path(description="1..N (FSCH01..) or reserve (Res_FSCH01)",
                                       pattern=r"^(reserve|[1-9][0-9]?)$", examples=["1", "reserve"])]

    @api.get("/ders", response_model=list[Der], responses=_errors(401), summary="The site's DERs")
    async def get_ders(who: Caller) -> Any:
        return M.ders_json({name: d for name, d in ders.items() if ctx.may(who, "read", name).ok})

    @api.get("/ders/{der}/{function}", response_model=FunctionState, responses=_errors(401, 403, 404, 422),
             summary="A control function's output and the schedule in force")
    async def get_function(der: DerPath, function: FunctionPath, who: Caller) -> Any:
        _, kind = function_of(der, function)
        readable(who, der, kind)
        return M.function_json(der, kind, view_of(der, kind), ctx.measurement(der))

    @api.get("/ders/{der}/{function}/schedules/{n}", response_model=ScheduleOut,
             responses=_errors(401, 403, 404, 422), summary="One schedule: settings and state")
    async def get_schedule(der: DerPath, function: FunctionPath, n: SchedulePath, who: Caller) -> Any:
        kind, name = schedule_of(der, function, n)
        readable(who, der, kind)
        return schedule_now(der, kind, name)

    @api.put("/ders/{der}/{function}/schedules/{n}", response_model=ScheduleOut,
             responses=_errors(400, 401, 403, 404, 422),
             summary="Write settings (all or nothing); enable separately")
    async def put_schedule(der: DerPath, function: FunctionPath, n: SchedulePath, body: ScheduleSettings,
                           who: Caller) -> Any:
        kind, name = schedule_of(der, function, n)
        slots = len(view_of(der, kind)["schedules"][name]["settings"]["values"])
        try:
            writes = M.writes_of(body.model_dump(exclude_none=True), kind, slots)
        except M.FieldError as exc:
            raise refuse(422, M.problem(f"{exc.field}: {exc.message}", "request", *VALUE_INVALID,
                                        field=exc.field)) from None
        if writes:
            answer = ctx.write(der, kind, name, writes, who)
            if not answer.ok:
                status, problem = M.refused(answer)
                problem["field"] = M.field_of(answer)
                raise refuse(status, problem)
            stats["writes"] += 1
        return schedule_now(der, kind, name)

    async def operate(der: str, function: Function, n: str, op: str, who: Who) -> Any:
        kind, name = schedule_of(der, function, n)
        fut = ctx.operate(der, kind, name, op, who)
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(fut), OPERATE_TIMEOUT_S)
        except TimeoutError:
            fut.cancel()  # still queued: never sent; already sent: its controller may apply it
            raise refuse(503, M.problem(f"controller {der}/{kind} did not answer in {OPERATE_TIMEOUT_S:g} s",
                                        "timeout", *M.refusal_body(Refusal.ACCESS_DENIED))) from None
        if not answer.ok:
            raise refuse(*M.refused(answer))
        stats["operates"] += 1
        return schedule_now(der, kind, name)

    @api.post("/ders/{der}/{function}/schedules/{n}/enable", response_model=ScheduleOut,
              responses=_errors(401, 403, 404, 409, 422, 503),
              summary="EnaReq: validate and enable (answered once durable)")
    async def enable(der: DerPath, function: FunctionPath, n: SchedulePath, who: Caller) -> Any:
        return await operate(der, function, n, "enable", who)

    @api.post("/ders/{der}/{function}/schedules/{n}/disable", response_model=ScheduleOut,
              responses=_errors(401, 403, 404, 422, 503), summary="DsaReq: disable (answered once durable)")
    async def disable(der: DerPath, function: FunctionPath, n: SchedulePath, who: Caller) -> Any:
        return await operate(der, function, n, "disable", who)

    @api.get("/ders/{der}/{function}/forecast", response_model=list[ForecastEntry],
             responses=_errors(401, 403, 404, 422, 503),
             summary="The output over the next hours, from every enabled schedule")
    async def forecast(der: DerPath, function: FunctionPath, who: Caller,
                       hours: Annotated[int, Query(ge=1, le=FORECAST_MAX_HOURS,
                                                   description="window, hours")] = 24) -> Any:
        _, kind = function_of(der, function)
        readable(who, der, kind)
        fut = ctx.forecast(der, kind, hours * 3_600_000)
        try:
            events = await asyncio.wait_for(asyncio.wrap_future(fut), FORECAST_TIMEOUT_S)
        except TimeoutError:
            fut.cancel()
            raise refuse(503, M.problem(f"controller {der}/{kind} did not answer in {FORECAST_TIMEOUT_S:g} s",
                                        "timeout", *M.refusal_body(Refusal.ACCESS_DENIED))) from None
        return M.forecast_json(events)

    @api.get("/audit", response_model=list[dict[str, Any]], responses=_errors(401, 422),
             summary="The site's audit records about the DERs this party may read (newest last)")
    async def audit(who: Caller,
                    since: Annotated[AwareDatetime | None, Query(description="only records from then on")] = None,
                    limit: Annotated[int, Query(ge=1, le=AUDIT_LIMIT, description="at most this many, the "
                                                                                  "newest")] = 100) -> Any:
        since_ms = None if since is None else int(since.timestamp() * 1000)
        readable_ders = {name for name in names if ctx.may(who, "read", name).ok}
        return await asyncio.to_thread(read_audit, ctx.state_dir, readable_ders, since_ms, limit)

    @api.get("/history/{der}", response_model=HistoryOut, responses=_errors(401, 403, 404, 422, 503),
             summary="A DER's measured power, command and source schedules over time, and its events")
    async def history(der: DerPath, who: Caller,
                      since: Annotated[AwareDatetime | None, Query(description="from then on (default: the last "
                                                                                "12 h)")] = None,
                      limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT, description="at most this many "
                                                  "samples (and events), the newest")] = 5000) -> Any:
        der_of(der)
        readable(who, der)
        since_ms = now_ms() - HISTORY_DEFAULT_MS if since is None else int(since.timestamp() * 1000)
        try:
            found = await asyncio.to_thread(read_history, history_path(ctx.state_dir), der, since_ms, limit)
        except HistoryError as exc:
            raise refuse(503, M.problem(str(exc), "history", None, None)) from None
        return {"der": der, "since": M.iso(since_ms),
                "samples": [{**s, "at": M.iso(s["at"])} for s in found["samples"]],
                "events": [{**e, "at": M.iso(e["at"])} for e in found["events"]]}

    app.include_router(api)
    web.mount(app, ctx, caller)   # the web view, /view (docs/web.md)
    return app


def client_cert_names(scope: dict) -> tuple[str, ...]:
    """The CN and SANs of the client certificate the TLS handshake verified, from the ASGI
    TLS extension (set by the HTTP endpoint's protocol: relevent/protocols/http/endpoint.py)."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    return cert_names(chain[0]) if chain else ()


HISTORY_LIMIT = 100_000
HISTORY_DEFAULT_MS = 12 * 3_600_000


AUDIT_LIMIT = 1000


def read_audit(state_dir: str, ders: set, since_ms: int | None, limit: int) -> list[dict]:
    """Audit records (every chain of the site) about `ders`, from `since_ms`, the newest
    `limit`, oldest first.  Signatures are not checked here: `relevent audit verify` does."""
    import json as _json

    from relevent.audit.site import audit_dir, chains
    from relevent.audit.verify import audit_files

    folder = audit_dir(state_dir)
    if not folder.is_dir():
        return []
    found = []
    for chain_dir in chains(folder):
        for path in audit_files(chain_dir):
            with open(path, "rb") as f:
                for raw in f:
                    try:
                        record = _json.loads(raw)
                    except ValueError:
                        continue   # a cut last line (power loss)
                    if not isinstance(record, dict) or record.get("der") not in ders:
                        continue
                    at = record.get("time")
                    if since_ms is not None and not (isinstance(at, int) and at >= since_ms):
                        continue
                    found.append(record)
    found.sort(key=lambda r: r.get("time") or 0)
    return found[-limit:]


class _Count:
    """ASGI middleware: counts requests (WAN contact is a recognised party's: `caller`)."""

    def __init__(self, app: Any, stats: dict) -> None:
        self.app, self.stats = app, stats

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.stats["requests"] += 1
        await self.app(scope, receive, send)
