"""The simulated heat pump's S2 resource manager (EN 50491-12-2, the RM side), made of
s2-python's own RM side: its websocket client medium, S2AsyncConnection,
ResourceManagerHandler and PEBCControlType.  It runs on the heat-pump simulator's asyncio
loop (relevent/simulators/heat_pump.py), next to the thermal model, so it reads and sets
the model without locks.

Invariant: the simulated heat pump never draws more than the upper limit of the PEBC
envelope in force, and an envelope is in force only for its own duration.  Each
`PEBC.Instruction` the site sends (as its CEM: relevent/protocols/s2/) is applied to the
model's `limit_w`, the same attribute the Modbus power-limit register sets (the last
instruction or Modbus write holds: any Modbus write re-applies the register), element by
element from its execution time; when the envelope ends the limit goes back to the rating, the device running by itself as S2 intends when a CEM
stops refreshing.  So a site that dies cannot leave the pump limited for longer than one
envelope, and a reconnect changes nothing until the CEM sends again.

The session, in S2's order: Handshake (s2-python's), ResourceManagerDetails (an
ENERGY_CONSUMER of electricity measuring ELECTRIC.POWER.3_PHASE_SYMMETRIC, offering PEBC
only), then on PEBC's activation the PEBC.PowerConstraints: upper limit 0..rated_w drawn,
lower limit 0 (a load the CEM may limit, never force).  A 3_PHASE_SYMMETRIC value here is
the total over the phases (the endpoint's default `symmetric_power = "total"`).  Once PEBC
is active a PowerMeasurement of the model's electrical power (positive: drawn, S2's sign)
goes out every `s2_measure_s`.  A closed or refused connection is retried with back-off
(BACKOFF_INITIAL_S doubling to BACKOFF_MAX_S; back to the start once a session reached
PEBC).  An instruction without a 3_PHASE_SYMMETRIC envelope cannot be obeyed: s2-python
answers it PERMANENT_ERROR and ends the session, and the RM reconnects.

Every instruction is logged to the simulator's write log, at the moment s2-python hands it
over: {"t_ns": ..., "s2": "PEBC.Instruction", "upper_w": ..., "id": ...} (tests and
bench/s2_bench.py read it from outside the site).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from s2python.common import (
    Commodity, Duration, NumberRange, PowerMeasurement, PowerValue, ReceptionStatusValues, Role, RoleType,
)
from s2python.connection.asset_details import AssetDetails
from s2python.connection.async_ import S2AsyncConnection
from s2python.connection.async_.control_type.class_based import PEBCControlType, ResourceManagerHandler
from s2python.connection.async_.medium.s2_medium import MediumClosedConnectionError, MediumCouldNotConnectError
from s2python.connection.async_.medium.websocket import WebsocketClientMedium
from s2python.connection.errors import CouldNotReceiveStatusReceptionError, PermanentConnectionError
from s2python.pebc import (
    PEBCAllowedLimitRange, PEBCInstruction, PEBCPowerConstraints, PEBCPowerEnvelopeConsequenceType,
    PEBCPowerEnvelopeLimitType,
)

from relevent.protocols.s2 import mapping as M

log = logging.getLogger("relevent.sim.heatpump.s2")

MEASURE_S = 1.0                 # s between PowerMeasurements (config s2_measure_s)
BACKOFF_INITIAL_S = 0.1         # s before the first reconnect
BACKOFF_MAX_S = 5.0             # s, the longest wait between reconnects
STATUS_TIMEOUT_S = 5.0          # s the CEM has to answer a message with a ReceptionStatus
CLOSE_TIMEOUT_S = 2.0           # s a websocket close may take before it is abandoned
PROCESSING_DELAY_MS = 100       # ms, the RM's instruction_processing_delay in its details

SESSION_ERRORS = (MediumCouldNotConnectError, MediumClosedConnectionError, CouldNotReceiveStatusReceptionError,
                  PermanentConnectionError, OSError, asyncio.TimeoutError)


def resource_id(url: str, configured: str) -> uuid.UUID:
    """The RM's resource id: `s2_resource_id`, else the last segment of `s2_url`'s path
    (/s2/<resource id>); a UUID either way, and the same when both name one."""
    path = url.split("://", 1)[-1].partition("/")[2]
    in_path = M.path_resource_id("/" + path) if path else None
    text = configured or in_path
    if not text:
        raise ValueError(f"s2_resource_id: empty, and s2_url {url!r} names no /s2/<resource id>")
    try:
        rid = uuid.UUID(text)
    except ValueError:
        key = "s2_resource_id" if configured else "s2_url"
        raise ValueError(f"{key}: resource id {text!r} is not a UUID (S2 identifiers are UUIDs)") from None
    if configured and in_path and M.canonical_id(in_path) != str(rid):
        raise ValueError(f"s2_resource_id: {configured} is not the resource id of s2_url's path ({in_path})")
    return rid


def envelope_steps(instruction: PEBCInstruction, now_ms: int) -> list[tuple[float, float | None]]:
    """When (s from now, >= 0) each upper limit (W drawn) of the instruction's
    3_PHASE_SYMMETRIC envelope takes over, in order, then (end, None): the envelope's end.
    ValueError when the instruction has no such envelope."""
    envelope = next((e for e in instruction.power_envelopes if e.commodity_quantity == M.SYMMETRIC), None)
    if envelope is None:
        raise ValueError(f"PEBC.Instruction {instruction.id}: no {M.SYMMETRIC.value} envelope (the RM's power "
                         "constraints offer only that quantity)")
    at_ms = M.to_ms(instruction.execution_time) - now_ms
    steps: list[tuple[float, float | None]] = []
    for element in envelope.power_envelope_elements:
        steps.append((max(0.0, at_ms / 1000), float(element.upper_limit)))
        at_ms += element.duration.root
    steps.append((max(0.0, at_ms / 1000), None))
    return steps


class _Pebc(PEBCControlType):
    """PEBC on the RM's side: the constraints when the CEM selects it, each instruction
    applied then answered OK."""

    def __init__(self, rm: "HeatPumpRm") -> None:
        self.rm = rm

    async def activate(self, connection: S2AsyncConnection) -> None:
        await connection.send_msg_and_await_reception_status(self.rm.constraints(), STATUS_TIMEOUT_S)
        self.rm.activated(connection)

    async def deactivate(self, connection: S2AsyncConnection) -> None:
        self.rm.control_type = None

    async def handle_instruction(self, connection: S2AsyncConnection, msg: Any, send_okay: Any) -> None:
        self.rm.instruction(msg, time.time_ns())
        await send_okay()


class HeatPumpRm:
    """One RM for one simulated HeatPump (`pump`: its `limit_w`, `electric_w`, `s.rated_w`);
    `write_log(entry)` appends a JSON line to the simulator's write log."""

    def __init__(self, config: dict, pump: Any, write_log: Callable[[dict], None]) -> None:
        self.name, self.pump, self.write_log = config["name"], pump, write_log
        self.url = config["s2_url"]
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"s2_url: {self.url!r} is not a ws:// or wss:// URL")
        self.rid = resource_id(self.url, config.get("s2_resource_id", ""))
        self.measure_s = float(config.get("s2_measure_s", MEASURE_S))
        if not self.measure_s > 0:
            raise ValueError(f"s2_measure_s: must be > 0, got {self.measure_s}")
        self.link, self.link_detail, self.connects = "never connected", "", 0
        self.control_type: str | None = None
        self.instructions, self.measurements = 0, 0
        self.last_instruction: dict | None = None
        self.last_measurement_status: str | None = None
        self.envelope_until_ms: int | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._medium: WebsocketClientMedium | None = None
        self._active: asyncio.Event | None = None

    # -- what the CEM sees ----------------------------------------------------------------------
    def details(self) -> AssetDetails:
        return AssetDetails(resource_id=self.rid, provides_forecast=False,
                            provides_power_measurements=[M.SYMMETRIC],
                            instruction_processing_delay=Duration(root=PROCESSING_DELAY_MS),
                            roles=[Role(role=RoleType.ENERGY_CONSUMER, commodity=Commodity.ELECTRICITY)],
                            name=self.name, manufacturer="relevent", model="heat-pump simulator")

    def constraints(self) -> PEBCPowerConstraints:
        def limit(kind: PEBCPowerEnvelopeLimitType, end: float) -> PEBCAllowedLimitRange:
            return PEBCAllowedLimitRange(commodity_quantity=M.SYMMETRIC, limit_type=kind,
                                         range_boundary=NumberRange(start_of_range=0.0, end_of_range=end),
                                         abnormal_condition_only=False)
        return PEBCPowerConstraints(
            message_id=uuid.uuid4(), id=uuid.uuid4(), valid_from=datetime.now(timezone.utc), valid_until=None,
            consequence_type=PEBCPowerEnvelopeConsequenceType.DEFER,
            allowed_limit_ranges=[limit(PEBCPowerEnvelopeLimitType.UPPER_LIMIT, float(self.pump.s.rated_w)),
                                  limit(PEBCPowerEnvelopeLimitType.LOWER_LIMIT, 0.0)])

    # -- the session ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, speak S2 until the connection ends, wait, again; forever."""
        delay = BACKOFF_INITIAL_S
        while True:
            reached_pebc = False
            try:
                reached_pebc = await self._session()
                text = "the session ended (socket closed or the CEM refused a message)"
            except SESSION_ERRORS as exc:
                text = f"{type(exc).__name__}: {exc}"
            if text != self.link_detail:
                log.warning("heat-pump simulator=%s S2 RM %s: %s; reconnecting", self.name, self.url, text)
            self.link, self.link_detail, self.control_type = "down", text, None
            if reached_pebc:
                delay = BACKOFF_INITIAL_S
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _session(self) -> bool:
        """One connection; True when the CEM selected PEBC in it."""
        medium = WebsocketClientMedium(self.url)
        await medium.connect()
        self._medium, self._active = medium, asyncio.Event()
        connection = S2AsyncConnection(medium, eventloop=asyncio.get_running_loop())
        ResourceManagerHandler(control_types=[_Pebc(self)], asset_details=self.details()).register_handlers(
            connection)
        self.link, self.link_detail, self.connects = "up", "", self.connects + 1
        log.info("heat-pump simulator=%s S2 RM %s connected to %s", self.name, self.rid, self.url)
        measuring = asyncio.ensure_future(self._measure(connection, self._active))
        try:
            await connection.run()
        finally:
            measuring.cancel()
            await asyncio.gather(measuring, return_exceptions=True)
            await self._disconnect(medium)
        return self._active.is_set()

    def activated(self, connection: S2AsyncConnection) -> None:
        self.control_type = M.PEBC.value
        if self._active is not None:
            self._active.set()

    async def _measure(self, connection: S2AsyncConnection, active: asyncio.Event) -> None:
        """Once PEBC is active: the model's electrical power every measure_s (fixed rate)."""
        await active.wait()
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            message = PowerMeasurement(message_id=uuid.uuid4(), measurement_timestamp=datetime.now(timezone.utc),
                                       values=[PowerValue(commodity_quantity=M.SYMMETRIC,
                                                          value=float(self.pump.electric_w))])
            try:
                status = await connection.send_msg_and_await_reception_status(message, STATUS_TIMEOUT_S,
                                                                              raise_on_error=False)
            except SESSION_ERRORS as exc:   # the session is over: let it end
                log.info("heat-pump simulator=%s S2 measurement not answered: %s", self.name, exc)
                await connection.stop()
                return
            self.measurements += 1
            self.last_measurement_status = str(status.status.value)
            if status.status != ReceptionStatusValues.OK:
                log.warning("heat-pump simulator=%s S2 measurement answered %s: %s", self.name,
                            self.last_measurement_status, status.diagnostic_label)
            due = max(due + self.measure_s, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _disconnect(self, medium: WebsocketClientMedium) -> None:
        try:
            await asyncio.wait_for(medium.disconnect(), CLOSE_TIMEOUT_S)
        except (Exception, asyncio.TimeoutError):  # noqa: BLE001 - the socket is gone either way
            pass

    async def close(self) -> None:
        """At the simulator's stop: close the socket (the CEM sees the RM go)."""
        for timer in self._timers:
            timer.cancel()
        if self._medium is not None:
            await self._disconnect(self._medium)

    # -- instructions ---------------------------------------------------------------------------
    def instruction(self, message: PEBCInstruction, t_ns: int) -> None:
        """Apply an instruction (on the loop); raises ValueError when it cannot be obeyed."""
        now_ms = t_ns // 1_000_000
        steps = envelope_steps(message, now_ms)
        upper = steps[0][1]
        self.write_log({"t_ns": t_ns, "s2": "PEBC.Instruction", "upper_w": upper, "id": str(message.id)})
        for timer in self._timers:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers = []
        until_ms = self.envelope_until_ms = now_ms + round(steps[-1][0] * 1000)
        for delay, limit in steps:
            if delay <= 0:
                self._apply(limit)
            else:
                self._timers.append(loop.call_later(delay, self._apply, limit))
        self.instructions += 1
        self.last_instruction = {"id": str(message.id), "upper_w": upper, "received_ms": now_ms,
                                 "execution_time": M.iso_ms(M.to_ms(message.execution_time)),
                                 "until": M.iso_ms(until_ms)}
        log.info("heat-pump simulator=%s S2 PEBC.Instruction %s: upper limit %s W until %s", self.name, message.id,
                 upper, self.last_instruction["until"])

    def _apply(self, upper_w: float | None) -> None:
        """The model's power limit: the envelope's upper limit within [0, rated], or (None:
        the envelope ended) the rating."""
        rated = float(self.pump.s.rated_w)
        self.pump.limit_w = rated if upper_w is None else max(0.0, min(rated, upper_w))
        if upper_w is None:
            self.envelope_until_ms = None
            log.info("heat-pump simulator=%s S2 envelope ended: limit back to the rating %s W", self.name, rated)

    def detail(self) -> dict:
        return {"url": self.url, "resource_id": str(self.rid), "link": self.link, "link_detail": self.link_detail,
                "connects": self.connects, "control_type": self.control_type, "instructions": self.instructions,
                "last_instruction": self.last_instruction,
                "envelope_until": M.iso_ms(self.envelope_until_ms) if self.envelope_until_ms else None,
                "measurements": self.measurements, "last_measurement_status": self.last_measurement_status}
