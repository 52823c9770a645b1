"""OCPP LAN endpoint: the site is the CSMS (central system) of the EV chargers whose DER
names it as `lan`; each charger is the DER whose `address` is its charge point id.

A websocket server (`websockets`) on an asyncio loop in this actor's thread
(relevent/protocols/aio.py) takes chargers at `ws://address:port/ocpp/<charge point id>`
(any path whose last segment is the id), OCPP 1.6J or 2.0.1 by subprotocol (`ocpp2.0.1`
preferred when a charger offers both).  An id no DER has is refused at the handshake (404)
and logged with the id.  The `ocpp` package (ChargePoint in the central role) frames,
routes and validates every message against the OCPP JSON schemas.

* BootNotification: Accepted, interval = `heartbeat_s`; Heartbeat, StatusNotification,
  Authorize (accepted), StartTransaction / StopTransaction (1.6), TransactionEvent (2.0.1)
  answered; MeterValues and the meter values of a TransactionEvent -> the DER's measured
  power (negative W: the charger draws), relevent.protocols.ocpp.profile; from a charger
  that reports only its energy register, the power derived from successive readings per
  connector / EVSE (relevent.protocols.ocpp.meter).  `meter_source` says which.
* The DER's command -> one SetChargingProfile (profile.set_charging_profile), sent on every
  DeviceCommand, again once a (re)connected charger is registered (after its
  BootNotification, or its first other message when it reconnects without one) and when a
  transaction starts.  Newer commands replace one still queued: a charger gets the latest.
* A profile the charger answers Rejected, with a CALLERROR, or not within `call_timeout_s`
  (retried after as long again) is reported: `relevent status` (per charger
  `profile_status`, `rejections`, `errors`), a log warning, and the DER's measurements
  turn `questionable` with the reason in their detail until a profile is Accepted.
* A charger whose socket closes: its measurement turns `invalid` (like an unreachable
  Modbus device).

Security profiles (`security_profile`, docs/ocpp.md "Security profiles"; OCPP 1.6
Security Whitepaper, OCPP 2.0.1 part 2): every check runs in the websocket upgrade
(`process_request`, after the TLS handshake and before any OCPP frame), so a refused
charger gets an HTTP answer and never a session.
* 0: a known charge point id is enough (as before).
* 1 and 2: HTTP Basic auth, user = the charge point id of the path, password = the first
  line of that charger's file in `password_files` (read at every connection: a changed
  password needs no restart), compared in constant time; else 401.  2 is over TLS with
  the site's certificate (`[tls]`, relevent/security/tls.py), no client certificate.
* 3: TLS with a client certificate of `[tls] ca` (the handshake); after it the
  certificate must pass `SiteTls.peer_problem` (revoked, expired, its CRL out of date)
  and name the charge point id of the path (CN or a SAN); else 403.  Every
  `crl_refresh_s` the CRLs are re-read and every open charger re-checked: a revoked
  charger's websocket is closed (1008).
Refusals are logged with the reason and counted (`refused`, and certificate refusals in
`tls` too); a refusal never ends the server.

The loop thread only posts events (tuples) to the actor through the AsyncioThread's
bridge; state shown by `relevent status` is kept on the actor's side."""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import itertools
import logging
import ssl
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import unquote

import websockets
from ocpp.charge_point import snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import serve

from relevent.clock import now_ms
from relevent.messages import DeviceCommand, Measurement
from relevent.protocols.device_server import DeviceServerEndpoint
from relevent.protocols.ocpp import meter as M
from relevent.protocols.ocpp import profile as P
from relevent.security.tls import CertificateRenewed, PeerSessions, SiteTls, TlsError, cert_names, read_password

log = logging.getLogger("relevent.ocpp")


class _WireLog(logging.LoggerAdapter):
    """The ocpp package logs every frame at INFO: at DEBUG here (`relevent.ocpp.wire`)."""

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


class _SocketLog(_WireLog):
    """For websockets: it adds the connection object to every record (`extra`), which the
    site's log forwarding cannot pickle (a record that fails to pickle fails the handshake
    it was logged from); dropped here.  Its INFO lines (each connection open) at DEBUG:
    the endpoint logs every charger's link itself."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("extra", None)
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


WIRE_LOG = _WireLog(logging.getLogger("relevent.ocpp.wire"), {})
SOCKET_LOG = _SocketLog(logging.getLogger("relevent.ocpp.ws"), {})
OFFLINE_STATES = ("Unavailable", "Faulted")
PROFILE_NAMES = {0: "no check", 1: "password", 2: "wss://, password", 3: "wss://, client certificate"}
REVOKED_CLOSE = (1008, "charger certificate refused on CRL refresh")   # policy violation
ENDED = "transaction ended"    # a meter's figure set to 0 W by the end of its transaction (`meter_source`)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def charge_point_id(path: str) -> str:
    """The last segment of the request path (`/ocpp/CP-1` -> `CP-1`), URL-decoded."""
    return unquote(path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])


# -- the central system's side of one connection, per OCPP version ------------------------------------------
class _Csms16(ChargePoint16):
    def __init__(self, session: "Session") -> None:
        super().__init__(session.link.cp_id, session.ws, response_timeout=session.link.config["call_timeout_s"],
                         logger=WIRE_LOG)
        self.session = session

    @on("BootNotification")
    def on_boot(self, charge_point_vendor: str, charge_point_model: str, **kw: Any) -> Any:
        self.session.booted({"vendor": charge_point_vendor, "model": charge_point_model,
                             "firmware": kw.get("firmware_version")})
        return result16.BootNotification(current_time=utc_now(), interval=self.session.link.heartbeat,
                                         status="Accepted")

    @after("BootNotification")
    def after_boot(self, **kw: Any) -> None:
        self.session.register("BootNotification")

    @on("Heartbeat")
    def on_heartbeat(self, **kw: Any) -> Any:
        self.session.heard("Heartbeat")
        return result16.Heartbeat(current_time=utc_now())

    @on("StatusNotification")
    def on_status(self, connector_id: int, error_code: str, status: str, **kw: Any) -> Any:
        self.session.heard("StatusNotification")
        self.session.status(connector_id, status, error_code)
        return result16.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_tag: str, **kw: Any) -> Any:
        self.session.heard("Authorize")
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @on("StartTransaction")
    def on_start(self, connector_id: int, **kw: Any) -> Any:
        self.session.heard("StartTransaction")
        tid = self.session.link.new_transaction(connector_id)
        return result16.StartTransaction(transaction_id=tid, id_tag_info={"status": "Accepted"})

    @after("StartTransaction")
    def after_start(self, **kw: Any) -> None:
        self.session.push("transaction started")

    @on("StopTransaction")
    def on_stop(self, transaction_id: int, **kw: Any) -> Any:
        self.session.heard("StopTransaction")
        self.session.link.end_transaction(transaction_id)
        return result16.StopTransaction(id_tag_info={"status": "Accepted"})

    @on("MeterValues")
    def on_meter_values(self, connector_id: int, meter_value: list, **kw: Any) -> Any:
        self.session.heard("MeterValues")
        self.session.link.meter_values({"connectorId": connector_id, "meterValue": snake_to_camel_case(meter_value)})
        return result16.MeterValues()


class _Csms201(ChargePoint201):
    def __init__(self, session: "Session") -> None:
        super().__init__(session.link.cp_id, session.ws, response_timeout=session.link.config["call_timeout_s"],
                         logger=WIRE_LOG)
        self.session = session

    @on("BootNotification")
    def on_boot(self, charging_station: dict, reason: str, **kw: Any) -> Any:
        self.session.booted({"vendor": charging_station.get("vendor_name"), "model": charging_station.get("model"),
                             "firmware": charging_station.get("firmware_version"), "reason": reason})
        return result201.BootNotification(current_time=utc_now(), interval=self.session.link.heartbeat,
                                          status="Accepted")

    @after("BootNotification")
    def after_boot(self, **kw: Any) -> None:
        self.session.register("BootNotification")

    @on("Heartbeat")
    def on_heartbeat(self, **kw: Any) -> Any:
        self.session.heard("Heartbeat")
        return result201.Heartbeat(current_time=utc_now())

    @on("StatusNotification")
    def on_status(self, connector_status: str, evse_id: int, connector_id: int, **kw: Any) -> Any:
        self.session.heard("StatusNotification")
        self.session.status(evse_id, connector_status, "")
        return result201.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_token: dict, **kw: Any) -> Any:
        self.session.heard("Authorize")
        return result201.Authorize(id_token_info={"status": "Accepted"})

    @on("TransactionEvent")
    def on_transaction_event(self, event_type: str, transaction_info: dict, meter_value: list | None = None,
                             evse: dict | None = None, id_token: dict | None = None, **kw: Any) -> Any:
        self.session.heard("TransactionEvent")
        payload: dict = {"eventType": event_type}
        if meter_value is not None:
            payload["meterValue"] = snake_to_camel_case(meter_value)
        if evse is not None:
            payload["evse"] = snake_to_camel_case(evse)
        self.session.link.transaction_event(transaction_info.get("transaction_id"), payload)
        return result201.TransactionEvent(id_token_info={"status": "Accepted"} if id_token else None)

    @after("TransactionEvent")
    def after_transaction_event(self, event_type: str, **kw: Any) -> None:
        if event_type == "Started":
            self.session.push("transaction started")

    @on("MeterValues")
    def on_meter_values(self, evse_id: int, meter_value: list, **kw: Any) -> Any:
        self.session.heard("MeterValues")
        self.session.link.meter_values({"evseId": evse_id, "meterValue": snake_to_camel_case(meter_value)})
        return result201.MeterValues()


# -- one connection, one charger ---------------------------------------------------------------------------
class Session:
    """A charger's current websocket connection: its OCPP peer, whether it is registered,
    and the profile sender."""

    def __init__(self, link: "ChargerLink", ws: Any, version: str) -> None:
        self.link, self.ws, self.version = link, ws, version
        self.registered = False
        self.pending = ""          # why a profile is due ("" : none)
        self.wake = asyncio.Event()
        self.cp = (_Csms16 if version == "1.6" else _Csms201)(self)

    def booted(self, info: dict) -> None:
        self.link.post(("boot", self.link.der, info))

    def heard(self, action: str) -> None:
        """Any message but a BootNotification: a charger that reconnects without booting
        again takes itself as registered, so it gets the profile now."""
        if not self.registered and action != "BootNotification":
            self.register(action)

    def register(self, why: str) -> None:
        self.registered = True
        self.push(f"registered ({why})")

    def push(self, why: str) -> None:
        self.pending = why
        self.wake.set()

    def status(self, connector: int, status: str, error_code: str) -> None:
        self.link.post(("status", self.link.der, connector, status, error_code))

    async def send_profiles(self) -> None:
        """Forever: once registered, send the latest limit whenever one is due."""
        link = self.link
        retry_in: float | None = None
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), retry_in)
            except asyncio.TimeoutError:
                self.pending = self.pending or "retry after a timeout"
            self.wake.clear()
            retry_in = None
            if not (self.pending and self.registered and link.limit is not None):
                continue
            why, self.pending = self.pending, ""
            limit_w, start_ms, seq = link.limit
            summary = {"limit_w": limit_w, "purpose": link.settings.purpose, "stack_level": link.settings.stack_level,
                       "unit": link.settings.rate_unit, "seq": seq, "why": why}
            try:
                payload = P.set_charging_profile(self.version, limit_w, link.rated, link.settings, start_ms)
            except ValueError as exc:
                link.post(("profile", link.der, summary, "error", f"not sent: {exc}", now_ms(), 0.0))
                continue
            summary["limit"] = P.rate_limit(limit_w, link.rated, link.settings)
            request = (call16.SetChargingProfile(connector_id=payload["connectorId"],
                                                 cs_charging_profiles=payload["csChargingProfiles"])
                       if self.version == "1.6" else
                       call201.SetChargingProfile(evse_id=payload["evseId"], charging_profile=payload["chargingProfile"]))
            t0 = time.perf_counter()
            text = ""
            try:
                result = await self.cp.call(request, suppress=False)
                status = str(getattr(result.status, "value", result.status))
                info = getattr(result, "status_info", None)
                if info:
                    text = str(info.get("reason_code", info)) if isinstance(info, dict) else str(info)
            except asyncio.TimeoutError:
                status, text = "timeout", f"no answer within {link.config['call_timeout_s']} s"
                self.pending, retry_in = "retry after a timeout", float(link.config["call_timeout_s"])
            except OCPPError as exc:
                status, text = "error", f"CALLERROR {type(exc).__name__}: {exc.description}"
            except websockets.ConnectionClosed:
                return  # the connection's end is reported by serve()
            link.post(("profile", link.der, summary, status, text, now_ms(), (time.perf_counter() - t0) * 1000))


class ChargerLink:
    """One charger (DER), across its connections."""

    def __init__(self, der: dict, config: dict, settings: P.ProfileSettings, post: Callable[[Any], None]) -> None:
        self.der, self.cp_id = der["name"], str(der["address"])
        self.rated = der.get("rated_power_w")
        self.config, self.settings, self.post = config, settings, post
        self.heartbeat = int(config["heartbeat_s"])
        self.limit: tuple[float, int, int] | None = None   # (W, start ms, command seq)
        self.session: Session | None = None
        self.power: dict[int, tuple[float, str]] = {}       # connector / EVSE -> (W (DER sign), its source)
        self.energy: dict[int, M.EnergyDelta] = {}          # connector / EVSE -> its energy register baseline
        self.transactions: dict[Any, int] = {}              # transaction id -> connector / EVSE
        self._generation = 0

    # -- from the actor (on the loop thread) --
    def set_limit(self, limit_w: float, start_ms: int, seq: int) -> None:
        self.limit = (limit_w, start_ms, seq)
        if self.session is not None:
            self.session.push("command")

    # -- a connection --
    async def serve(self, ws: Any, version: str) -> None:
        self._generation += 1
        generation, previous = self._generation, self.session
        if previous is not None:   # the charger came back before its old socket was seen closed
            asyncio.ensure_future(previous.ws.close(1000, "replaced by a new connection"))
        session = self.session = Session(self, ws, version)
        self.power.clear()
        self.energy.clear()     # a new connection starts from nothing: two readings before a derived figure
        how = PROFILE_NAMES[self.config.get("security_profile", 0)]
        self.post(("link", self.der, True, version,
                   f"from {ws.remote_address[0]}:{ws.remote_address[1]} ({how})", now_ms()))
        sender = asyncio.ensure_future(session.send_profiles())
        text = "closed"
        try:
            await session.cp.start()
        except websockets.ConnectionClosed as exc:
            text = f"socket closed ({exc.rcvd.code if exc.rcvd else 'no close frame'}"
            text += f" {exc.rcvd.reason})" if exc.rcvd and exc.rcvd.reason else ")"
        finally:
            sender.cancel()
            if self._generation == generation:
                self.session = None
                self.post(("link", self.der, False, version, text, now_ms()))

    # -- what the charger reports --
    def new_transaction(self, connector: int) -> int:
        tid = next(_transaction_ids)
        self.transactions[tid] = connector
        return tid

    def end_transaction(self, transaction_id: Any) -> None:
        connector = self.transactions.pop(transaction_id, None)
        if connector is not None and connector in self.power:
            self._set(connector, (0.0, ENDED))   # no transaction, nothing drawn

    def transaction_event(self, transaction_id: Any, payload: dict) -> None:
        try:
            named = P.transaction_event_evse(payload)
            evse = named if named is not None else self.transactions.get(transaction_id, 1)
            values = payload.get("meterValue")
            figure = None if values is None else M.meter_figure("2.0.1", values, self._baseline(evse))
        except P.OcppPayloadError as exc:
            self.post(("bad", self.der, f"TransactionEvent {exc}"))
            return
        if named is not None:
            self.transactions[transaction_id] = named
        if payload["eventType"] == "Ended":
            self.transactions.pop(transaction_id, None)
            if figure is None or figure[1] != M.POWER:   # a delta is the past interval's: now nothing is drawn
                figure = (0.0, ENDED)
        if figure is not None:
            self._set(evse, figure)

    def meter_values(self, payload: dict) -> None:
        version = "1.6" if "connectorId" in payload else "2.0.1"
        try:
            where = P.meter_values_target(version, payload)
            if "meterValue" not in payload:
                raise P.OcppPayloadError("meterValue: missing")
            figure = M.meter_figure(version, payload["meterValue"], self._baseline(where))
        except P.OcppPayloadError as exc:
            self.post(("bad", self.der, f"MeterValues {exc}"))
            return
        if figure is not None:
            self._set(where, figure)

    def _baseline(self, meter: int) -> M.EnergyDelta:
        return self.energy.setdefault(meter, M.EnergyDelta())

    def _set(self, meter: int, figure: tuple[float, str]) -> None:
        self.power[meter] = figure
        self._report()

    def _report(self) -> None:
        """The charger's power: its main meter (connector / EVSE 0) when it reports one,
        else the sum over its connectors; with where the figures came from."""
        counted = [0] if 0 in self.power else [k for k in self.power if k != 0]
        w = sum(self.power[k][0] for k in counted)
        source = " + ".join(sorted({self.power[k][1] for k in counted}))
        self.post(("meter", self.der, w + 0.0, now_ms(), source))


_transaction_ids = itertools.count(int(time.time()) % (1 << 30))  # 1.6 transaction ids, apart across restarts


class CsmsServer:
    """The websocket server and the chargers, on the endpoint's asyncio loop."""

    def __init__(self, config: dict, ders: list[dict], settings: P.ProfileSettings, post: Callable[[Any], None],
                 tls: SiteTls | None = None, ssl_context: ssl.SSLContext | None = None):
        self.config, self.post = config, post
        self.links = {str(d["address"]): ChargerLink(d, config, settings, post) for d in ders}
        self.by_der = {link.der: link for link in self.links.values()}
        self.server: Any = None
        self.profile = int(config.get("security_profile", 0))
        self.tls, self.ssl = tls, ssl_context
        files = config.get("password_files") or {}
        self.password_files = {str(d["address"]): files.get(d["name"], "") for d in ders}   # cp id -> file
        self.sessions = PeerSessions()      # profile 3: open chargers and their certificates

    def set_limit(self, der: str, limit_w: float, start_ms: int, seq: int) -> None:
        self.by_der[der].set_limit(limit_w, start_ms, seq)

    async def run(self) -> None:
        host, port = self.config["address"], self.config["port"]
        try:
            self.server = await serve(self._handler, host, port, subprotocols=["ocpp2.0.1", "ocpp1.6"],
                                      process_request=self._check_request, logger=SOCKET_LOG, ssl=self.ssl)
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        if self.profile >= 2:
            asyncio.ensure_future(self._refresh_forever())
        self.post(("listening", host, port))
        await self.server.serve_forever()

    def _check_request(self, connection: Any, request: Any) -> Any:
        """Before the websocket handshake (after TLS's): a known charge point id, its
        credentials on security profiles 1 to 3, and an OCPP version we speak (websockets
        would refuse the latter too, but logs it as a server error)."""
        cp_id = charge_point_id(request.path)
        peer = connection.remote_address
        where = f"charge point id {cp_id!r} from {peer[0]}:{peer[1]}"
        www_authenticate = False
        try:
            if cp_id not in self.links:
                reason = f"{where}: no DER of this endpoint has that address"
                status, text = 404, f"unknown charge point id {cp_id!r}\n"
            elif self.profile in (1, 2) and (why := self._password_problem(cp_id, request)):
                reason, status, text, www_authenticate = f"{where}: {why}", 401, "authentication required\n", True
            elif self.profile == 3 and (why := self._certificate_problem(cp_id, connection)):
                self.tls.refuse(f"{where}: {why}")
                reason, status, text = f"{where}: {why}", 403, "client certificate refused\n"
            else:
                offered = [p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",")]
                if any(p in P.SUBPROTOCOLS for p in offered):
                    return None
                reason = (f"{where}: offers no OCPP version we speak "
                          f"({', '.join(offered) or 'no subprotocol'}; ocpp1.6 or ocpp2.0.1)")
                status, text = 400, "offer subprotocol ocpp1.6 or ocpp2.0.1\n"
        except Exception as exc:  # noqa: BLE001 - a refusal, never the end of the server
            log.exception("ocpp endpoint=%s: checking %s", self.config["name"], where)
            reason, status, text = f"{where}: the check failed: {type(exc).__name__}: {exc}", 500, "error\n"
        log.warning("ocpp endpoint=%s refused %s", self.config["name"], reason)
        self.post(("refused", cp_id, reason))
        response = connection.respond(status, text)
        if www_authenticate:
            response.headers["WWW-Authenticate"] = 'Basic realm="OCPP", charset="UTF-8"'
        return response

    def _password_problem(self, cp_id: str, request: Any) -> str | None:
        """Profiles 1 and 2: why the request's Basic credentials are not this charger's
        (user = the charge point id of the path, password = its file's first line)."""
        header = request.headers.get("Authorization")
        if header is None:
            return "no Authorization header (security profile %d asks for the charger's password)" % self.profile
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return f"Authorization {scheme!r}, not Basic"
        try:
            user, colon, password = base64.b64decode(token.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return "Authorization Basic: not base64"
        if not colon:
            return "Authorization Basic: no user:password"
        path = self.password_files.get(cp_id, "")
        try:
            expected = read_password(path).encode() if path else b""
        except TlsError as exc:
            log.error("ocpp endpoint=%s: %s", self.config["name"], exc)
            return f"its password cannot be read ({exc})"
        if not expected:
            return "no password configured for it (password_files)"
        # Both compared in full, in constant time: a wrong user and a wrong password look alike.
        user_ok = hmac.compare_digest(user, cp_id.encode())
        if not (hmac.compare_digest(password, expected) and user_ok):
            return "wrong user or password" if user_ok else \
                f"user {user.decode('utf-8', 'replace')!r} is not the charge point id of the path"
        return None

    def _certificate_problem(self, cp_id: str, connection: Any) -> str | None:
        """Profile 3: the certificate the handshake verified must still pass the policy
        (revocation, expiry) and name this charge point (CN or a SAN)."""
        ssl_object = connection.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            return "no client certificate"
        problem = self.tls.peer_problem(der)
        if problem:
            return problem
        names = cert_names(der)
        if cp_id not in names:
            return f"its certificate names {', '.join(map(repr, names)) or 'nobody'}, not {cp_id!r}"
        return None

    async def _handler(self, ws: Any) -> None:
        link = self.links.get(charge_point_id(ws.request.path))
        version = P.SUBPROTOCOLS.get(ws.subprotocol or "")
        if link is None or version is None:   # the handshake checks both; never reached
            await ws.close(1002, "no charge point id or OCPP subprotocol")
            return
        if self.profile == 3:   # re-checked on every CRL refresh
            der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            peer = f"{ws.remote_address[0]}:{ws.remote_address[1]}"
            self.sessions.opened(ws, der, lambda: asyncio.ensure_future(ws.close(*REVOKED_CLOSE)),
                                 f"charge point {link.cp_id!r} ({link.der}) from {peer}")
        try:
            await link.serve(ws, version)
        finally:
            self.sessions.closed(ws)

    async def _refresh_forever(self) -> None:
        """Profiles 2 and 3, every crl_refresh_s: a renewed site certificate ends the endpoint
        (restarted at once to serve it, docs/tls.md "Renewal"); profile 3: the CRLs again,
        and every open charger whose certificate is refused now (revoked, expired) closed."""
        while True:
            await asyncio.sleep(self.tls.refresh_s)
            try:
                renewed = self.tls.renewed()
                if renewed:
                    self.post(("renewed", renewed))
                    return
                self.tls.refresh()
                for label, reason in self.sessions.sweep(self.tls.peer_problem):
                    self.tls.refuse(f"{label}: {reason}", closed=True)
                    log.warning("ocpp endpoint=%s closed %s: %s", self.config["name"], label, reason)
            except Exception:  # noqa: BLE001 - the next refresh tries again
                log.exception("ocpp endpoint=%s: CRL refresh", self.config["name"])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# -- the endpoint actor's side ----------------------------------------------------------------------------
@dataclass
class ChargerState:
    """What `relevent status` shows of a charger (kept on the actor's thread)."""
    charge_point: str
    link: str = "never connected"
    ocpp: str | None = None
    link_detail: str = ""
    connects: int = 0
    boot: dict | None = None
    boots: int = 0
    command_limit_w: float | None = None
    profile: dict | None = None           # the last SetChargingProfile sent
    profile_status: str | None = None     # Accepted | Rejected | NotSupported (1.6) | error | timeout
    profile_detail: str = ""
    profile_rtt_ms: float | None = None
    profiles_sent: int = 0
    rejections: int = 0
    errors: int = 0
    meter_w: float | None = None           # last meter value, W with the DER's sign (negative: drawing)
    meter_at: int | None = None
    meter_source: str | None = None        # "power", "energy delta", "transaction ended" (joined by " + ")
    connectors: dict = field(default_factory=dict)
    bad_payloads: int = 0
    last_bad_payload: str = ""


class OcppEndpoint(DeviceServerEndpoint):
    """The actor side (relevent/protocols/device_server.py): the chargers' state, the
    profiles asked for, the measurements sent."""
    kind = "ocpp"

    def __init__(self, actor: Any, config: dict) -> None:
        super().__init__(actor, config)
        self.settings = P.ProfileSettings.from_config(config)
        self.state = {name: ChargerState(str(d["address"])) for name, d in self.ders.items()}
        self.profile = int(config.get("security_profile", 0))
        self.tls: SiteTls | None = None
        self.ssl: ssl.SSLContext | None = None

    def start(self) -> None:
        if self.profile >= 2:      # a missing file raises, naming it: the actor crashes with it
            self.tls = SiteTls(self.config["tls_policy"])
            self.ssl = self.tls.server_context("require" if self.profile == 3 else "none")
        super().start()

    def make_server(self, post: Callable[[Any], None]) -> "CsmsServer":
        return CsmsServer(self.config, list(self.ders.values()), self.settings, post, self.tls, self.ssl)

    def serving(self) -> str:
        cfg = self.config
        return (f"{'wss' if self.ssl is not None else 'ws'}://{cfg['address']}:{cfg['port']}/ocpp/<charge point id>"
                f" (security profile {self.profile}: {PROFILE_NAMES[self.profile]})")

    # -- from the DERs --------------------------------------------------------------------------------
    def on_command(self, message: DeviceCommand, der: dict) -> None:
        try:
            limit = P.command_limit_w(message, der.get("rated_power_w"))
        except ValueError as exc:
            log.error("ocpp endpoint=%s der=%s: no profile sent: %s", self.config["name"], message.der, exc)
            return
        self.state[message.der].command_limit_w = limit
        # The site's at_stop: answered once the charger accepts the profile (or not).
        self.confirmations.expect(message, self.state[message.der].link == "up", "charger offline")
        start = message.at if isinstance(message.at, int) and message.at > 0 else now_ms()
        self.aio.call(self.server.set_limit, message.der, limit, start, message.seq)

    # -- from the loop thread ---------------------------------------------------------------------------
    def _on_renewed(self, why: str) -> None:
        raise CertificateRenewed(why)   # the actor crashes with it and is restarted at once

    def _on_link(self, der: str, up: bool, version: str, text: str, at: int) -> None:
        s = self.state[der]
        s.link, s.ocpp, s.link_detail = ("up" if up else "down"), version, text
        (log.info if up else log.warning)("ocpp endpoint=%s der=%s charge point=%s OCPP %s link %s: %s",
                                          self.config["name"], der, s.charge_point, version, s.link, text)
        if up:
            s.connects += 1
            s.connectors = {}
        else:
            self.confirmations.lost(der, f"charger offline: {text}")
            self._send(Measurement(der, None, None, at, "invalid", self.config["name"], f"charger offline: {text}"))

    def _on_boot(self, der: str, info: dict) -> None:
        s = self.state[der]
        s.boot, s.boots = info, s.boots + 1

    def _on_status(self, der: str, connector: int, status: str, error_code: str) -> None:
        self.state[der].connectors[str(connector)] = status if not error_code or error_code == "NoError" \
            else f"{status} ({error_code})"

    def _on_profile(self, der: str, summary: dict, status: str, text: str, at: int, rtt_ms: float) -> None:
        s = self.state[der]
        s.profile = {**summary, "at": at}
        s.profile_status, s.profile_detail, s.profile_rtt_ms = status, text, round(rtt_ms, 3)
        s.profiles_sent += 1
        if status != "timeout":   # (a timeout is retried: the confirmation waits for its answer)
            self.confirmations.applied(der, summary.get("seq", -1), status == "Accepted",
                                       "" if status == "Accepted" else f"{status}: {text or '-'}")
        if status == "Accepted":
            log.info("ocpp endpoint=%s der=%s charge point=%s: %s %s %s at stack level %d Accepted (%s) in %.1f ms",
                     self.config["name"], der, s.charge_point, summary["purpose"], summary.get("limit"),
                     summary["unit"], summary["stack_level"], summary["why"], rtt_ms)
            if s.meter_w is not None:   # the questionable flag, if any, is lifted
                self._measure(der, at)
            return
        if status in ("Rejected", "NotSupported"):   # the charger said no (NotSupported: 1.6)
            s.rejections += 1
        else:
            s.errors += 1
        log.warning("ocpp endpoint=%s der=%s charge point=%s: SetChargingProfile %s %s (%s %s, %s): %s",
                    self.config["name"], der, s.charge_point, summary["purpose"], status, summary.get("limit"),
                    summary["unit"], summary["why"], text or "-")
        self._measure(der, at)

    def _on_meter(self, der: str, w: float, at: int, source: str) -> None:
        s = self.state[der]
        s.meter_w, s.meter_at, s.meter_source = w, at, source
        self._measure(der, at)

    def _on_bad(self, der: str, text: str) -> None:
        s = self.state[der]
        s.bad_payloads += 1
        s.last_bad_payload = text
        log.warning("ocpp endpoint=%s der=%s charge point=%s: payload not used: %s", self.config["name"], der,
                    s.charge_point, text)

    def _measure(self, der: str, at: int) -> None:
        """The DER's measurement: the last meter value; questionable while the charger has
        not accepted the last profile, with the reason."""
        s = self.state[der]
        if s.link != "up":
            return
        statuses = list(s.connectors.values())
        connected = not statuses or any(x.split(" ")[0] not in OFFLINE_STATES for x in statuses)
        if s.profile_status not in (None, "Accepted"):
            quality = "questionable"
            detail = (f"charging profile {s.profile_status}: limit {s.profile.get('limit')} {s.profile['unit']} "
                      f"not in force ({s.profile_detail or 'no reason given'})")
        else:
            quality, detail = "good", ", ".join(f"{k}: {v}" for k, v in sorted(s.connectors.items()))
        self._send(Measurement(der, s.meter_w, connected, at, quality, self.config["name"], detail))

    def detail(self) -> dict:
        cfg = self.config
        scheme = "wss" if self.ssl is not None else "ws"
        out = {"serving": f"{scheme}://{cfg['address']}:{cfg['port']}/ocpp/<charge point id>",
               "listening": self.listening, "security_profile": self.profile,
               "profile": {"purpose": self.settings.purpose, "stack_level": self.settings.stack_level,
                           "rate_unit": self.settings.rate_unit, "phases": self.settings.phases,
                           "voltage_v": self.settings.voltage_v},
               "devices": {der: asdict(s) for der, s in self.state.items()},
               "refused": self.refused, "last_refused": self.last_refused}
        if self.tls is not None:
            out["tls"] = {**self.tls.status(), "client_cert": "require" if self.profile == 3 else "none",
                          "sessions": len(self.server.sessions) if self.server is not None else 0}
        return out
