"""S2 LAN endpoint: the site is the CEM (customer energy manager, EN 50491-12-2) of the
smart devices whose DER names it as `lan`; each device's resource manager (RM) is the DER
whose `address` is the RM's resource id.

A websocket server (`websockets`) on an asyncio loop in this actor's thread
(relevent/protocols/aio.py) takes RMs at `ws://address:port/s2/<resource id>`, or at
`ws://address:port/s2`, where the RM is then known by the resource_id of its
ResourceManagerDetails.  Every message both ways is an s2-python model: what the RM sends
is parsed and validated by s2-python's parser before anything reads it, and what the site
sends was built (so validated) as one (relevent/protocols/s2/mapping.py).

Per connection, in S2's order:
* Handshake (role RM) -> ReceptionStatus OK, the CEM's Handshake and a HandshakeResponse
  selecting a version both speak (mapping.VERSIONS); none in common: INVALID_CONTENT and
  the socket closed (1008) with the reason.
* ResourceManagerDetails -> its resource_id must be the path's (when the path names one)
  and a DER's address; then the control type is selected (SelectControlType,
  mapping.choose_control_type): PEBC when offered, else FRBC when offered.  An RM with
  neither is kept (its measurements are used) but not controlled, and says so in
  `relevent status`; OMBC, PPBC and DDBC are not done.
* PowerMeasurement -> the DER's measured power (negative W: the load draws).
* PEBC.PowerConstraints -> kept (the latest; a RevokeObject of it drops it), and the DER's
  command is sent again fitted into them.
* FRBC.SystemDescription (the latest; a RevokeObject of it drops it), FRBC.StorageStatus
  (the present fill level), FRBC.ActuatorStatus (active mode and factor per actuator) ->
  kept; a new description sends the command again, a new fill level sends it only when it
  changes the modes or factors chosen.  Other FRBC messages are answered OK, not used.
* Every message the RM sends but a ReceptionStatus is answered with a ReceptionStatus:
  OK, or INVALID_DATA / INVALID_MESSAGE (not JSON, not a valid S2 message: s2-python's
  error as the label) or INVALID_CONTENT (valid, but not here: a CEM's message, a message
  of a control type not selected, details before the Handshake) with the reason.

The DER's command (mapping.command_load) -> under PEBC one PEBC.Instruction
(mapping.envelopes, pebc_instruction), once the RM's PowerConstraints are in; under FRBC
one FRBC.Instruction per actuator (relevent/protocols/s2/frbc.py: the mode and factor
drawing the most within the limit, or closest to an ActPow request), once its
SystemDescription and StorageStatus are in.  Sent on every DeviceCommand, again after
every reconnect (a reconnecting RM gets the current instruction), when new constraints or
a new system description arrive, and under PEBC every `envelope_s` / 3 while accepted so
the envelope never ends while the site runs (an FRBC instruction does not end: no refresh).
The RM's ReceptionStatus is the answer, the same for both (for FRBC: every actuator's; the
first not OK is the instruction's): OK is in force, TEMPORARY_ERROR or none within
`call_timeout_s` is retried after as long again, any other is reported.  An instruction
not answered OK, or that cannot be built (no FRBC mode stays within the limit: refused,
`error` with the reason, nothing sent), is reported: `relevent status` (per RM
`instruction_status`, `rejections`, `errors`), a log warning, and the DER's measurements
turn `questionable` with the reason until one is OK.

Refused, logged with the reason and counted (`refused`, `last_refused`): a path or a
resource_id no DER has (the socket closed 1008 with the reason), a resource_id that is not
the path's, an RM that speaks no S2 version of ours.  A refusal never ends the server.  An
RM whose socket closes: its measurement turns `invalid` (like an unreachable Modbus
device).

Plain ws:// only: S2 over TLS is not in this build (the topology check asks for
`insecure = true` beyond loopback).  The loop thread only posts events (tuples) to the actor
through the AsyncioThread's bridge; state shown by `relevent status` is kept on the actor's
side."""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Callable

import websockets
from s2python.common import ReceptionStatus, ReceptionStatusValues, SessionRequestType
from s2python.message import S2Message
from s2python.s2_parser import S2Parser
from s2python.s2_validation_error import S2ValidationError
from websockets.asyncio.server import serve

from relevent.clock import now_ms
from relevent.devices.load import GUARANTEED_MIN_W
from relevent.messages import DeviceCommand, Measurement
from relevent.protocols.device_server import DeviceServerEndpoint
from relevent.protocols.s2 import frbc as F
from relevent.protocols.s2 import mapping as M

log = logging.getLogger("relevent.s2")
WIRE_LOG = logging.getLogger("relevent.s2.wire")


class _SocketLog(logging.LoggerAdapter):
    """For websockets: it adds the connection object to every record (`extra`), which the
    site's log forwarding cannot pickle; dropped here.  Its INFO lines (each connection
    open) at DEBUG: the endpoint logs every RM's link itself."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("extra", None)
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


SOCKET_LOG = _SocketLog(logging.getLogger("relevent.s2.ws"), {})
REFUSED_CODE = 1008          # websocket close: policy violation
CLOSE_REASON_BYTES = 120     # a close frame's reason holds at most 123 bytes
OK = ReceptionStatusValues.OK
# Messages only a CEM sends: the site is the CEM, an RM sending one is answered INVALID_CONTENT.
CEM_MESSAGES = {"HandshakeResponse", "SelectControlType", "PEBC.Instruction", "FRBC.Instruction",
                "PPBC.ScheduleInstruction", "PPBC.StartInterruptionInstruction", "PPBC.EndInterruptionInstruction",
                "OMBC.Instruction", "DDBC.Instruction"}
# Message prefix of each control type's own messages: answered INVALID_CONTENT unless it is the one selected.
CONTROL_PREFIX = {"PEBC.": M.PEBC, "FRBC.": M.FRBC, "PPBC.": None, "OMBC.": None, "DDBC.": None}


def _reason(text: str) -> str:
    """A close frame's reason: at most CLOSE_REASON_BYTES of UTF-8."""
    data = text.encode()
    return text if len(data) <= CLOSE_REASON_BYTES else data[:CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."


def _validation_text(exc: S2ValidationError) -> str:
    """s2-python's error, with pydantic's first complaints (field: problem) where it has them."""
    cause = exc.__cause__
    errors = getattr(cause, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(map(str, e.get('loc', ()))) or '-'}: {e.get('msg')}" for e in errors()[:3])
    return str(getattr(exc, "msg", exc))


def _message_id(text: Any) -> str | None:
    """The message_id of a message s2-python refused, if it has one to answer to."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return None
    value = data.get("message_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


# -- one connection ----------------------------------------------------------------------------------------------
class Session:
    """An RM's websocket connection: its S2 session state (version, control type, power
    constraints) and the instruction sender."""

    def __init__(self, server: "CemServer", ws: Any, path_id: str | None) -> None:
        self.server, self.ws, self.path_id = server, ws, path_id
        self.config = server.config
        self.peer = f"{ws.remote_address[0]}:{ws.remote_address[1]}"
        self.link: RmLink | None = None
        self.version: str | None = None
        self.control: Any = None            # the ControlType selected, None before
        self.uncontrolled = ""              # why the RM cannot be controlled ("": it can, or not known yet)
        self.constraints: M.Constraints | None = None
        self.system: Any = None             # the latest FRBC.SystemDescription
        self.fill_level: float | None = None        # the latest FRBC.StorageStatus
        self.actuators: dict[str, tuple[str, float]] = {}   # actuator id -> (active mode id, factor)
        self.frbc_sent: tuple | None = None  # the last FRBC plan's key sent (frbc.Plan.key)
        self.waiting: dict[uuid.UUID, asyncio.Future] = {}
        self.pending = ""                   # why an instruction is due ("": none)
        self.wake = asyncio.Event()
        self.closing = ""

    # -- wiring --
    def bind(self, link: "RmLink") -> None:
        self.link = link
        link.attach(self)
        self.push("connected")

    def push(self, why: str) -> None:
        self.pending = why
        self.wake.set()

    def post(self, event: tuple) -> None:
        self.server.post(event)

    async def send(self, message: S2Message) -> None:
        text = message.to_json()
        WIRE_LOG.debug("to %s: %s", self.peer, text)
        await self.ws.send(text)

    async def ack(self, subject: Any, status: ReceptionStatusValues = OK, label: str = "") -> None:
        await self.send(M.reception_status(subject, status, label))

    def expect(self, message_id: uuid.UUID) -> asyncio.Future:
        """A future for the ReceptionStatus of a message about to be sent."""
        future = asyncio.get_running_loop().create_future()
        self.waiting[message_id] = future
        return future

    async def close(self, code: int, why: str) -> None:
        self.closing = why
        await self.ws.close(code, _reason(why))

    # -- the connection's life --
    async def run(self) -> str:
        """Serve the connection until it closes; returns how it ended."""
        sender = asyncio.ensure_future(self.send_instructions())
        text = "closed"
        try:
            async for raw in self.ws:
                await self.receive(raw)
        except websockets.ConnectionClosed as exc:
            text = f"socket closed ({exc.rcvd.code if exc.rcvd else 'no close frame'}"
            text += f" {exc.rcvd.reason})" if exc.rcvd and exc.rcvd.reason else ")"
        except Exception as exc:  # noqa: BLE001 - a fault here ends this connection, never the server
            log.exception("s2 endpoint=%s: the connection from %s failed", self.config["name"], self.peer)
            text = f"closed by the site after an error: {type(exc).__name__}: {exc}"
            try:
                await self.ws.close(1011, _reason(f"internal error: {type(exc).__name__}"))
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        else:
            rcvd = self.ws.close_code
            text = f"socket closed ({rcvd}" + (f" {self.ws.close_reason})" if self.ws.close_reason else ")")
        finally:
            sender.cancel()
            for future in self.waiting.values():
                if not future.done():
                    future.cancel()
        return f"{text}: {self.closing}" if self.closing else text

    async def receive(self, raw: Any) -> None:
        WIRE_LOG.debug("from %s: %s", self.peer, raw)
        try:
            message = S2Parser.parse_as_any_message(raw)
        except S2ValidationError as exc:   # JSON, but not a valid S2 message
            why = f"not a valid S2 message: {_validation_text(exc)}"
            mid = _message_id(raw)   # none: INVALID_DATA, about the nil id
            if mid is None:
                await self.ack(M.NIL_ID, ReceptionStatusValues.INVALID_DATA, why)
            else:
                await self.ack(mid, ReceptionStatusValues.INVALID_MESSAGE, why)
            self.bad(why)
            return
        except Exception:  # noqa: BLE001 - not JSON, or not a JSON object: answered, never the end of the session
            await self.ack(M.NIL_ID, ReceptionStatusValues.INVALID_DATA, "not a JSON object")
            self.bad("not a JSON object")
            return
        kind = message.message_type
        if isinstance(message, ReceptionStatus):   # the answer to one of ours; never answered
            future = self.waiting.pop(message.subject_message_id, None)
            if future is not None and not future.done():
                future.set_result(message)
            return
        handler = getattr(self, "on_" + kind.replace(".", "_"), None)
        if handler is not None:
            await handler(message)
        elif kind in CEM_MESSAGES:
            await self.ack(message.message_id, ReceptionStatusValues.INVALID_CONTENT,
                           f"{kind} is a CEM's message; this side is the CEM")
        elif kind.startswith(tuple(CONTROL_PREFIX)):
            if self._selected_for(kind):   # received, not used (FRBC's forecasts, leakage, targets, timers)
                await self.ack(message.message_id)
            else:
                await self.ack(message.message_id, ReceptionStatusValues.INVALID_CONTENT,
                               f"{kind}: {kind.split('.')[0]} is not the selected control type")
        else:   # PowerForecast and what else the RM may tell: received, not used
            await self.ack(message.message_id)

    def _selected_for(self, kind: str) -> bool:
        """Whether a message of this kind belongs to the control type selected."""
        control = next((c for prefix, c in CONTROL_PREFIX.items() if kind.startswith(prefix)), None)
        return control is not None and self.control == control and self.link is not None

    def bad(self, text: str) -> None:
        self.post(("bad", self.link.der if self.link else None, self.peer, text[:300]))

    # -- the RM's messages --
    async def on_Handshake(self, m: Any) -> None:
        if str(getattr(m.role, "value", m.role)) != "RM":
            await self.ack(m.message_id, ReceptionStatusValues.INVALID_CONTENT, "the site is the CEM: expected role RM")
            await self.server.refuse(self, "a Handshake with role CEM (the site is the CEM)")
            return
        version = M.select_version(m.supported_protocol_versions)
        if version is None:
            why = (f"no common S2 version: the RM offers {', '.join(m.supported_protocol_versions or []) or 'none'}, "
                   f"the site speaks {', '.join(M.VERSIONS)}")
            await self.ack(m.message_id, ReceptionStatusValues.INVALID_CONTENT, why)
            await self.server.refuse(self, why)
            return
        await self.ack(m.message_id)
        self.version = version
        await self.send(M.handshake())
        await self.send(M.handshake_response(version))

    async def on_ResourceManagerDetails(self, m: Any) -> None:
        if self.version is None:
            await self.ack(m.message_id, ReceptionStatusValues.INVALID_CONTENT, "Handshake first")
            return
        problem = M.resource_problem(self.path_id, m.resource_id, set(self.server.links))
        if problem:
            await self.ack(m.message_id, ReceptionStatusValues.PERMANENT_ERROR, problem)
            await self.server.refuse(self, problem, M.canonical_id(m.resource_id))
            return
        link = self.server.links[M.canonical_id(m.resource_id)]
        await self.ack(m.message_id)
        if self.link is None:
            self.bind(link)
        offered = [str(getattr(c, "value", c)) for c in m.available_control_types]
        self.post(("details", link.der, {
            "resource_id": M.canonical_id(m.resource_id), "name": m.name, "manufacturer": m.manufacturer,
            "model": m.model, "serial_number": m.serial_number, "firmware_version": m.firmware_version,
            "roles": [f"{r.role.value} {r.commodity.value}" for r in m.roles], "control_types": offered,
            "measures": [str(getattr(q, "value", q)) for q in m.provides_power_measurement_types],
            "instruction_processing_delay_ms": m.instruction_processing_delay.root, "s2_version": self.version}))
        if self.control is not None:
            return   # details again (an update): the control type stays
        chosen = M.choose_control_type(m.available_control_types)
        if chosen is None:
            self.uncontrolled = (f"the RM offers no PEBC or FRBC ({', '.join(offered)}); only those are done")
            self.post(("control", link.der, None, self.uncontrolled))
            self.push("details")   # the sender reports the command as not sent
            return
        select = M.select_control_type(chosen)
        future = self.expect(select.message_id)
        future.add_done_callback(lambda f, der=link.der: self._selected(der, chosen, f))
        self.control = chosen
        await self.send(select)

    def _selected(self, der: str, chosen: Any, future: asyncio.Future) -> None:
        if future.cancelled():
            return
        rs = future.result()
        self.post(("control", der, chosen.value, f"SelectControlType answered {rs.status.value}"
                   + (f" ({rs.diagnostic_label})" if rs.diagnostic_label else "")))

    async def on_PowerMeasurement(self, m: Any) -> None:
        if self.link is None:
            await self.ack(m.message_id, ReceptionStatusValues.INVALID_CONTENT,
                           "ResourceManagerDetails first: the resource is not known yet")
            return
        try:
            w = M.measured_w(m, self.config["symmetric_power"])
        except M.S2MappingError as exc:
            await self.ack(m.message_id, ReceptionStatusValues.INVALID_CONTENT, str(exc))
            self.bad(f"PowerMeasurement: {exc}")
            return
        await self.ack(m.message_id)
        if w is None:
            self.bad("PowerMeasurement without electric power (used: ELECTRIC.POWER.*)")
            return
        self.post(("meter", self.link.der, w, now_ms()))

    async def on_PEBC_PowerConstraints(self, m: Any) -> None:
        if self.control != M.PEBC or self.link is None:
            await self.ack(m.message_id, ReceptionStatusValues.INVALID_CONTENT, "PEBC is not the selected control type")
            return
        self.constraints = M.constraints_from(m)
        await self.ack(m.message_id)
        self.post(("constraints", self.link.der, self.constraints.summary()))
        self.push("power constraints")

    async def on_PEBC_EnergyConstraint(self, m: Any) -> None:
        if self.control != M.PEBC:
            await self.ack(m.message_id, ReceptionStatusValues.INVALID_CONTENT, "PEBC is not the selected control type")
            return
        await self.ack(m.message_id)   # received; the site plans no energy (docs/s2.md)

    async def _frbc_message(self, m: Any) -> bool:
        """Whether an FRBC message may be taken (answered OK); answered INVALID_CONTENT if not."""
        if self._selected_for(m.message_type):
            await self.ack(m.message_id)
            return True
        await self.ack(m.message_id, ReceptionStatusValues.INVALID_CONTENT, "FRBC is not the selected control type")
        return False

    def _post_frbc(self) -> None:
        self.post(("frbc", self.link.der, {
            "system_description": F.description(self.system) if self.system is not None else None,
            "fill_level": self.fill_level,
            "actuator_status": {a: {"operation_mode": mode, "factor": factor}
                                for a, (mode, factor) in self.actuators.items()}}))

    async def on_FRBC_SystemDescription(self, m: Any) -> None:
        if await self._frbc_message(m):
            self.system = m
            self._post_frbc()
            self.push("system description")

    async def on_FRBC_StorageStatus(self, m: Any) -> None:
        if await self._frbc_message(m):
            self.fill_level = float(m.present_fill_level)
            self._post_frbc()
            if not self.pending:   # sent only if it changes the plan (the sender compares)
                self.push("storage status")
            else:
                self.wake.set()

    async def on_FRBC_ActuatorStatus(self, m: Any) -> None:
        if await self._frbc_message(m):   # kept: the mode to stay in on ties, and where transitions start
            self.actuators[str(m.actuator_id)] = (str(m.active_operation_mode_id), float(m.operation_mode_factor))
            self._post_frbc()

    async def on_InstructionStatusUpdate(self, m: Any) -> None:
        await self.ack(m.message_id)
        if self.link is not None:
            self.post(("update", self.link.der, str(m.instruction_id), str(m.status_type.value), now_ms()))

    async def on_RevokeObject(self, m: Any) -> None:
        await self.ack(m.message_id)
        if self.constraints is not None and str(m.object_id) == str(self.constraints.id):
            self.constraints = None
            if self.link is not None:
                self.post(("constraints", self.link.der, None))
        if self.system is not None and str(m.object_id) == str(self.system.message_id):
            self.system, self.frbc_sent = None, None
            if self.link is not None:
                self._post_frbc()

    async def on_SessionRequest(self, m: Any) -> None:
        await self.ack(m.message_id)
        what = "TERMINATE" if m.request == SessionRequestType.TERMINATE else "RECONNECT"
        await self.close(1000, f"the RM asked {what}" + (f" ({m.diagnostic_label})" if m.diagnostic_label else ""))

    # -- the instruction sender --
    def ready(self) -> bool:
        """Whether the selected control type has what an instruction is built from."""
        if self.control == M.PEBC:
            return self.constraints is not None
        return self.control == M.FRBC and self.system is not None and self.fill_level is not None

    def build(self, load: Any, at: int, summary: dict) -> list[S2Message] | None:
        """The instruction(s) of the command under the selected control type, `summary`
        completed; None: nothing to send (a fill level that changes no FRBC mode or factor).
        S2MappingError: cannot be built."""
        cfg = self.config
        if self.control == M.PEBC:
            found = M.envelopes(load.limit_w, self.constraints, cfg["symmetric_power"])
            message = M.pebc_instruction(found, self.constraints, at, int(float(cfg["envelope_s"]) * 1000))
            summary.update(kind=message.message_type, instruction_id=str(message.id),
                           constraints_id=str(self.constraints.id), envelopes=[asdict(e) for e in found],
                           duration_s=message.power_envelopes[0].power_envelope_elements[0].duration.root / 1000)
            return [message]
        plan = F.choose(self.system, self.fill_level, self.actuators, load.limit_w, load.requested_w,
                        cfg["symmetric_power"])
        if summary["why"] == "storage status" and plan.key() == self.frbc_sent:
            return None
        messages = F.instructions(plan, at)
        self.frbc_sent = plan.key()
        summary.update(kind=messages[0].message_type, instruction_id=",".join(str(m.id) for m in messages),
                       system_description_id=str(self.system.message_id), requested_w=load.requested_w,
                       **plan.summary())
        return messages

    async def send_instructions(self) -> None:
        """Forever: the latest command as the selected control type's instruction(s) whenever
        one is due and what it is built from is in; under PEBC a refresh every envelope_s / 3
        while accepted."""
        cfg = self.config
        timeout_s = float(cfg["call_timeout_s"])
        refresh_s = float(cfg["envelope_s"]) / 3
        retry_due, in_force = False, False
        while True:
            wait = timeout_s if retry_due else (refresh_s if in_force and self.control == M.PEBC else None)
            try:
                await asyncio.wait_for(self.wake.wait(), wait)
            except asyncio.TimeoutError:
                self.pending = self.pending or ("retry" if retry_due else "refresh")
            self.wake.clear()
            retry_due = False
            link = self.link
            if not (self.pending and link is not None and link.limit is not None):
                continue
            load, seq = link.limit
            summary: dict = {"limit_w": load.limit_w, "seq": seq, "why": self.pending}
            if self.uncontrolled:
                self.pending = ""
                self.post(("instruction", link.der, summary, "not sent", self.uncontrolled, now_ms(), 0.0))
                continue
            if not self.ready():
                continue   # kept pending until the RM's PowerConstraints (FRBC: description, fill level) are in
            self.pending = ""
            at = now_ms()
            try:
                messages = self.build(load, at, summary)
            except M.S2MappingError as exc:
                self.post(("instruction", link.der, summary, "error", f"not sent: {exc}", at, 0.0))
                in_force, self.frbc_sent = False, None
                continue
            if messages is None:
                continue
            futures = [self.expect(m.message_id) for m in messages]
            t0 = time.perf_counter()
            try:
                for message in messages:
                    await self.send(message)
                answers = await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
                rs = next((a for a in answers if a.status != OK), answers[0])
                status, text = rs.status.value, rs.diagnostic_label or ""
            except asyncio.TimeoutError:
                status, text = "timeout", f"no ReceptionStatus within {timeout_s} s"
            except (websockets.ConnectionClosed, asyncio.CancelledError):
                return   # the connection's end is reported by run()
            finally:
                for message in messages:
                    self.waiting.pop(message.message_id, None)
            in_force = status == OK.value
            if not in_force:
                self.frbc_sent = None   # a fill level change sends it again
            if status in ("timeout", ReceptionStatusValues.TEMPORARY_ERROR.value):
                self.pending, retry_due = self.pending or "retry", True
            self.post(("instruction", link.der, summary, status, text, now_ms(), (time.perf_counter() - t0) * 1000))


class RmLink:
    """One resource manager (DER), across its connections."""

    def __init__(self, der: dict, post: Callable[[Any], None]) -> None:
        self.der, self.rid = der["name"], M.canonical_id(der["address"])
        self.rated = der.get("rated_power_w")
        self.guaranteed = der.get("guaranteed_min_w", GUARANTEED_MIN_W)
        self.post = post
        self.limit: tuple[Any, int] | None = None      # (the command as a LoadCommand: W drawn at most, ..., seq)
        self.session: Session | None = None

    def set_limit(self, load: Any, seq: int) -> None:
        self.limit = (load, seq)
        if self.session is not None:
            self.session.push("command")

    def attach(self, session: Session) -> None:
        previous, self.session = self.session, session
        if previous is not None:   # the RM came back before its old socket was seen closed
            asyncio.ensure_future(previous.close(1000, "replaced by a new connection"))
        self.post(("link", self.der, True, f"from {session.peer}", now_ms()))

    def detach(self, session: Session, text: str) -> None:
        if self.session is session:
            self.session = None
            self.post(("link", self.der, False, text, now_ms()))


class CemServer:
    """The websocket server and the RMs, on the endpoint's asyncio loop."""

    def __init__(self, config: dict, ders: list[dict], post: Callable[[Any], None]) -> None:
        self.config, self.post = config, post
        self.links = {M.canonical_id(d["address"]): RmLink(d, post) for d in ders}
        self.by_der = {link.der: link for link in self.links.values()}
        self.server: Any = None

    def set_limit(self, der: str, load: Any, seq: int) -> None:
        self.by_der[der].set_limit(load, seq)

    async def run(self) -> None:
        host, port = self.config["address"], self.config["port"]
        try:
            self.server = await serve(self._handler, host, port, logger=SOCKET_LOG)
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.post(("listening", host, port))
        await self.server.serve_forever()

    async def refuse(self, session: Session, why: str, rid: str | None = None) -> None:
        rid = rid or session.path_id or "-"
        log.warning("s2 endpoint=%s refused resource id %s from %s: %s", self.config["name"], rid, session.peer, why)
        self.post(("refused", rid, f"resource id {rid} from {session.peer}: {why}"))
        await session.close(REFUSED_CODE, why)

    async def _handler(self, ws: Any) -> None:
        path_id = M.path_resource_id(ws.request.path)
        session = Session(self, ws, path_id)
        if path_id is not None:
            link = self.links.get(M.canonical_id(path_id))
            if link is None:
                await self.refuse(session, f"unknown resource id {path_id!r}: no DER of this endpoint has it "
                                           "as its address")
                return
            session.bind(link)
        text = "closed"
        try:
            text = await session.run()
        finally:
            if session.link is not None:
                session.link.detach(session, text)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# -- the endpoint actor's side ------------------------------------------------------------------------------------
@dataclass
class RmState:
    """What `relevent status` shows of a resource manager (kept on the actor's thread)."""
    resource_id: str
    link: str = "never connected"
    link_detail: str = ""
    connects: int = 0
    details: dict | None = None              # its last ResourceManagerDetails
    control_type: str | None = None          # POWER_ENVELOPE_BASED_CONTROL, FILL_RATE_BASED_CONTROL, or None
    control_detail: str = ""
    constraints: dict | None = None          # the PEBC.PowerConstraints in use
    frbc: dict | None = None                 # FRBC: the system description, fill level, actuators' status
    command_limit_w: float | None = None     # W drawn at most, from the DER's command
    # the last instruction (or the one that could not be sent): PEBC its envelopes, FRBC per
    # actuator the mode and factor chosen (`frbc`) and the W drawn at the fill level (`power_w`)
    instruction: dict | None = None
    # OK | INVALID_DATA | INVALID_MESSAGE | INVALID_CONTENT | TEMPORARY_ERROR | PERMANENT_ERROR (the RM's
    # ReceptionStatus), timeout, error (could not be built), not sent (no PEBC)
    instruction_status: str | None = None
    instruction_detail: str = ""
    instruction_rtt_ms: float | None = None
    instructions_sent: int = 0
    instruction_update: dict | None = None   # the RM's last InstructionStatusUpdate
    rejections: int = 0
    errors: int = 0
    meter_w: float | None = None             # last PowerMeasurement, W with the DER's sign (negative: drawing)
    meter_at: int | None = None
    bad_payloads: int = 0
    last_bad_payload: str = ""


class S2Endpoint(DeviceServerEndpoint):
    """The actor side (relevent/protocols/device_server.py): the resource managers' state,
    the envelopes asked for, the measurements sent."""
    kind = "s2"

    def __init__(self, actor: Any, config: dict) -> None:
        super().__init__(actor, config)
        self.state = {name: RmState(M.canonical_id(d["address"])) for name, d in self.ders.items()}
        self.bad_unbound = 0   # payloads from RMs not known yet

    def make_server(self, post: Callable[[Any], None]) -> "CemServer":
        return CemServer(self.config, list(self.ders.values()), post)

    def serving(self) -> str:
        return f"ws://{self.config['address']}:{self.config['port']}/s2/<resource id> (the site is the CEM)"

    # -- from the DERs --------------------------------------------------------------------------------------------
    def on_command(self, message: DeviceCommand, der: dict) -> None:
        load = M.command_load(message, der.get("rated_power_w"), der.get("guaranteed_min_w", GUARANTEED_MIN_W))
        self.state[message.der].command_limit_w = load.limit_w
        self.confirmations.expect(message, self.state[message.der].link == "up", "resource manager offline")
        self.aio.call(self.server.set_limit, message.der, load, message.seq)

    # -- from the loop thread -------------------------------------------------------------------------------------
    def _on_link(self, der: str, up: bool, text: str, at: int) -> None:
        s = self.state[der]
        s.link, s.link_detail = ("up" if up else "down"), text
        (log.info if up else log.warning)("s2 endpoint=%s der=%s resource id=%s link %s: %s", self.config["name"], der,
                                          s.resource_id, s.link, text)
        if up:
            s.connects += 1
            s.control_type, s.control_detail, s.constraints, s.frbc = None, "", None, None
        else:
            self.confirmations.lost(der, f"resource manager offline: {text}")
            self._send(Measurement(der, None, None, at, "invalid", self.config["name"],
                                   f"resource manager offline: {text}"))

    def _on_details(self, der: str, details: dict) -> None:
        s = self.state[der]
        s.details = details
        log.info("s2 endpoint=%s der=%s: %s %s %s, S2 %s, control types %s", self.config["name"], der,
                 details.get("manufacturer") or "-", details.get("model") or "-", details.get("name") or "",
                 details["s2_version"], ", ".join(details["control_types"]))

    def _on_control(self, der: str, control: str | None, text: str) -> None:
        s = self.state[der]
        s.control_type, s.control_detail = control, text
        (log.info if control else log.warning)("s2 endpoint=%s der=%s: %s", self.config["name"], der,
                                               f"{control}: {text}" if control else text)

    def _on_constraints(self, der: str, summary: dict | None) -> None:
        self.state[der].constraints = summary

    def _on_frbc(self, der: str, summary: dict) -> None:
        self.state[der].frbc = summary

    def _on_update(self, der: str, instruction_id: str, status: str, at: int) -> None:
        self.state[der].instruction_update = {"instruction_id": instruction_id, "status": status, "at": at}

    def _on_instruction(self, der: str, summary: dict, status: str, text: str, at: int, rtt_ms: float) -> None:
        s = self.state[der]
        s.instruction = {**summary, "at": at}
        s.instruction_status, s.instruction_detail, s.instruction_rtt_ms = status, text, round(rtt_ms, 3)
        if "instruction_id" in summary:
            s.instructions_sent += 1
        if status != "timeout":   # (a timeout is retried: the confirmation waits for its answer)
            self.confirmations.applied(der, summary.get("seq", -1), status == OK.value,
                                       "" if status == OK.value else f"{status}: {text or '-'}")
        kind = summary.get("kind") or ("FRBC.Instruction" if s.control_type == M.FRBC.value else "PEBC.Instruction")
        if status == OK.value:
            log.info("s2 endpoint=%s der=%s: %s %s OK (%s) in %.1f ms", self.config["name"], der, kind,
                     _instructed(summary), summary["why"], rtt_ms)
        else:
            if status in ("timeout", "error", "not sent"):
                s.errors += 1
            else:
                s.rejections += 1
            log.warning("s2 endpoint=%s der=%s: %s for %s W %s (%s): %s", self.config["name"], der, kind,
                        summary["limit_w"], status, summary["why"], text or "-")
        if s.meter_w is not None:   # the questionable flag follows the instruction's fate
            self._measure(der, at)

    def _on_meter(self, der: str, w: float, at: int) -> None:
        s = self.state[der]
        s.meter_w, s.meter_at = w, at
        self._measure(der, at)

    def _on_bad(self, der: str | None, peer: str, text: str) -> None:
        if der is None:
            self.bad_unbound += 1
        else:
            s = self.state[der]
            s.bad_payloads += 1
            s.last_bad_payload = text
        log.warning("s2 endpoint=%s der=%s from %s: message not used: %s", self.config["name"], der or "-", peer, text)

    def _measure(self, der: str, at: int) -> None:
        """The DER's measurement: the last PowerMeasurement; questionable while the RM has
        not taken the last instruction, with the reason.  `connected`: whether the
        envelope in force lets the device draw (None before one is in force)."""
        s = self.state[der]
        if s.link != "up":
            return
        instruction = s.instruction or {}
        if s.instruction_status not in (None, OK.value):
            quality = "questionable"
            kind = "FRBC" if s.control_type == M.FRBC.value else "PEBC"
            detail = (f"{kind} instruction {s.instruction_status}: limit {instruction.get('limit_w')} W not "
                      f"in force ({s.instruction_detail or 'no reason given'})")
            connected = None
        else:
            quality = "good"
            connected = None
            if s.instruction_status == OK.value:   # whether what is in force lets the device draw
                connected = (instruction["power_w"] > 0 if "frbc" in instruction
                             else any(e["upper"] > 0 for e in instruction.get("envelopes") or []))
            detail = (_instructed(instruction, quantities=False) if connected is not None
                      else f"S2 {s.control_type or 'no control type'}, no instruction yet")
        self._send(Measurement(der, s.meter_w, connected, at, quality, self.config["name"], detail))

    def detail(self) -> dict:
        cfg = self.config
        return {"serving": f"ws://{cfg['address']}:{cfg['port']}/s2/<resource id>", "listening": self.listening,
                "s2_versions": list(M.VERSIONS), "control_types": [c.value for c in M.CONTROL_TYPES],
                "envelope_s": cfg["envelope_s"], "symmetric_power": cfg["symmetric_power"],
                "devices": {der: asdict(s) for der, s in self.state.items()},
                "refused": self.refused, "last_refused": self.last_refused, "bad_unknown_rm": self.bad_unbound}


def _instructed(summary: dict, quantities: bool = True) -> str:
    """An instruction's content in a line: PEBC its envelopes (with their commodity
    quantities and clamping for the log, without for the measurement's state), FRBC the
    modes and factors."""
    if "frbc" in summary:
        return "FRBC " + ", ".join(f"{a['mode']} x{a['factor']:.3g}" for a in summary["frbc"]) + \
            f" ({summary['power_w']:g} W at fill level {summary['fill_level']:g})"
    return "PEBC envelope " + ", ".join(
        (f"{e['quantity']} " if quantities else "") + f"[{e['lower']:g}, {e['upper']:g}] W"
        + (" (clamped to the RM's range)" if e["clamped"] and quantities else "")
        for e in summary.get("envelopes", []))
