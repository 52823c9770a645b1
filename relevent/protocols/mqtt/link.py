"""An MQTT connection that stays up: gmqtt on an AsyncioThread's loop.

gmqtt reconnects by itself once connected, but it neither retries a first connection
that failed nor restores subscriptions (docs/runtime-notes.md): we retry the first connection
forever, and subscribe, then call `on_up`, on every connect.  MQTT 3.1.1 works with both
Mosquitto and the embedded amqtt broker, and avoids v5's downgrade round.

TLS and credentials (docs/tls.md): with a `SiteTls` the link connects with the site
policy's client context (the broker's certificate verified against [tls] ca, its name
checked; the site's certificate offered), which gmqtt reuses on its reconnects; the
broker's certificate is checked again after every connect and every crl_refresh_s (a
revoked broker is dropped).  A `username` (and password) goes in the CONNECT packet.  A
first connection that fails after the TCP connect (gmqtt then waits for a CONNACK that
never comes, e.g. when the broker refuses the handshake's client certificate) is given up
after CONNECT_TIMEOUT_S, and one probe of our own (`diagnose`) asks the broker why:
the TLS alert or the CONNACK code becomes `last_error`, shown by `relevent status`."""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import ssl
import struct
from typing import Any, Callable

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError

from relevent.security.tls import SiteTls, read_password

log = logging.getLogger("relevent.mqtt")

_ids = itertools.count(1)
CONNECT_TIMEOUT_S = 5.0
CONNACK_CODES = {1: "unacceptable protocol version", 2: "client identifier rejected", 3: "broker unavailable",
                 4: "bad user name or password", 5: "not authorised"}


class MqttLink:
    def __init__(self, name: str, host: str, port: int, subscriptions: list[tuple[str, int]],
                 on_message: Callable[[str, bytes], None], on_up: Callable[[], None] | None = None,
                 on_down: Callable[[], None] | None = None, reconnect_delay: float = 1.0,
                 tls: SiteTls | None = None, username: str = "", password: str | None = None) -> None:
        self.name, self.host, self.port = name, host, port
        self.subscriptions = subscriptions
        self._on_message, self._on_up, self._on_down = on_message, on_up, on_down
        self.reconnect_delay = reconnect_delay
        self.client = Client(f"relevent-{name}-{os.getpid()}-{next(_ids)}")
        self.tls = tls
        self.ssl: ssl.SSLContext | None = tls.client_context() if tls is not None else None
        self.username, self.password = username, password
        if username:
            self.client.set_auth_credentials(username, password)
        self.last_error = ""   # why the last connect failed ("" once up)
        self._watch: asyncio.Future | None = None
        self._lost = asyncio.Event()   # the connection went down before it was up (secured connects)
        self.client.set_config({"reconnect_retries": -1, "reconnect_delay": reconnect_delay})
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.up = False
        self.connects = 0
        self.overflows = 0
        self.closing = False   # a clean close: the link going down is expected, not a warning

    async def run(self) -> None:
        """Connect, retrying forever; gmqtt keeps the connection afterwards."""
        if self.tls is not None and self._watch is None:
            self._watch = asyncio.ensure_future(self._watch_tls())
        secured = self.ssl is not None or bool(self.username)
        failed = False
        while True:
            # After a refusal, ask first (one connection, one line in the log), so gmqtt's own
            # reconnect loop and its tracebacks do not repeat every reconnect_delay.
            reason = await self.diagnose() if secured and failed else None
            if reason is None:
                try:
                    await self._connect(secured)
                    return
                except (OSError, asyncio.TimeoutError, ConnectionError, MQTTConnectError) as exc:
                    reason = _describe(exc)
                    if isinstance(exc, MQTTConnectError) or (secured and not isinstance(exc, ConnectionRefusedError)):
                        await self._stop_client()   # gmqtt may be retrying on its own: one attempt at a time
                    if secured and not isinstance(exc, ConnectionRefusedError):
                        reason = await self.diagnose() or reason
                failed = True
            log.log(logging.WARNING if reason != self.last_error else logging.DEBUG,
                    "mqtt link=%s broker=%s:%d connect failed: %s; retry every %.1f s", self.name, self.host,
                    self.port, reason, self.reconnect_delay)
            self.last_error = reason
            await asyncio.sleep(self.reconnect_delay)

    async def _connect(self, secured: bool) -> None:
        """gmqtt's connect; a secured one gives up when the connection is lost before the
        CONNACK (gmqtt would wait for it forever) or after CONNECT_TIMEOUT_S."""
        if not secured:
            await self.client.connect(self.host, self.port, version=MQTTv311, keepalive=30)   # as before
            return
        self._lost.clear()
        attempt = asyncio.ensure_future(self.client.connect(self.host, self.port, ssl=self.ssl or False,
                                                            version=MQTTv311, keepalive=30))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({attempt, lost}, timeout=CONNECT_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if attempt in done:
            attempt.result()
            return
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
        if lost in done:
            raise ConnectionError("the broker closed the connection before its CONNACK")
        raise asyncio.TimeoutError()

    async def _stop_client(self) -> None:
        try:
            await asyncio.wait_for(self.client.disconnect(), 1.0)
        except Exception:  # noqa: BLE001 - it is not connected anyway
            pass

    async def diagnose(self) -> str | None:
        """Why the broker does not take us: one TLS connection and one CONNECT of our own
        (MQTT 3.1.1), read back as the handshake's error, the broker closing, or the
        CONNACK's refusal code.  None when the broker accepts it."""
        hint = "" if self.tls is None or self.tls.cert else " (this site has no [tls] cert to offer)"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl), CONNECT_TIMEOUT_S)
        except ssl.SSLCertVerificationError as exc:
            return f"TLS: the broker's certificate does not verify: {exc.verify_message}"
        except ssl.SSLError as exc:
            return f"TLS handshake failed: {exc.reason or exc}{hint}"
        except (OSError, asyncio.TimeoutError) as exc:
            return f"cannot connect: {_describe(exc)}"
        try:
            writer.write(connect_packet(f"relevent-probe-{os.getpid()}-{next(_ids)}", self.username, self.password))
            data = await asyncio.wait_for(reader.read(4), CONNECT_TIMEOUT_S)
        except ssl.SSLError as exc:
            return f"TLS: the broker refused us: {exc.reason or exc}{hint}"
        except (OSError, asyncio.TimeoutError) as exc:
            return f"the broker dropped the connection after the TLS handshake: {_describe(exc)}{hint}"
        finally:
            writer.close()
        if len(data) < 4 or data[0] != 0x20:
            return f"the broker closed the connection without a CONNACK{hint}"
        if data[3]:
            return f"the broker refused the CONNECT: {CONNACK_CODES.get(data[3], f'code {data[3]}')}"
        return None

    def peer_certificate(self) -> bytes | None:
        """The broker's certificate (DER) on the connection up now (gmqtt keeps its transport)."""
        transport = getattr(getattr(self.client, "_connection", None), "_transport", None)
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None

    def _check_broker(self) -> bool:
        """Drop the connection if the broker's certificate is refused now: True if dropped."""
        problem = self.tls.peer_problem(self.peer_certificate()) if self.tls is not None and self.up else None
        if problem:
            self.up = False
            self.tls.refuse(problem, closed=True)
            self.last_error = f"broker certificate refused: {problem}"
            log.error("mqtt link=%s broker=%s:%d: %s: dropping the connection", self.name, self.host, self.port,
                      self.last_error)
            transport = getattr(getattr(self.client, "_connection", None), "_transport", None)
            if transport is not None:
                transport.abort()
        return bool(problem)

    async def _watch_tls(self) -> None:
        """Every crl_refresh_s: the CRLs again, and the broker's certificate checked."""
        while True:
            await asyncio.sleep(self.tls.refresh_s)
            try:
                renewed = self.tls.renewed()
                if renewed:   # a client context takes the new pair for its next connect
                    self.tls.reload_own()
                    log.info("mqtt link=%s: %s", self.name, renewed.replace("restarting to serve", "offering"))
                self.tls.refresh()
                self._check_broker()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("mqtt link=%s: TLS refresh failed", self.name)

    def _connected(self, client: Any, flags: Any, rc: Any, properties: Any) -> None:
        self.up = True
        self.connects += 1
        self.last_error = ""
        log.info("mqtt link=%s broker=%s:%d up (connect #%d)", self.name, self.host, self.port, self.connects)
        if self.tls is not None and self._check_broker():
            return   # dropped: no subscriptions, no on_up
        for topic, qos in self.subscriptions:
            client.subscribe(topic, qos=qos)
        if self._on_up:
            self._on_up()

    def _disconnected(self, client: Any, packet: Any, exc: Any = None) -> None:
        if not self.up:
            self._lost.set()
        if self.up:
            log.log(logging.INFO if self.closing else logging.WARNING, "mqtt link=%s broker=%s:%d down",
                    self.name, self.host, self.port)
        self.up = False
        if self._on_down:
            self._on_down()

    def _message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        self._on_message(topic, payload)
        return 0

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """On the loop thread.  False when not connected (the caller re-sends on_up)."""
        if not self.up:
            return False
        try:
            self.client.publish(topic, payload, qos=qos, retain=retain)
            return True
        except OverflowError:
            # More QoS 1 messages in flight than the broker takes: try again shortly.
            self.overflows += 1
            asyncio.get_running_loop().call_later(0.01, self.publish, topic, payload, qos, retain)
            return True

    async def close(self) -> None:
        self.closing = True
        try:
            await self.client.disconnect()
        except Exception:  # noqa: BLE001 - closing anyway
            pass


def security(config: dict) -> dict:
    """MqttLink's keyword arguments from an endpoint's `tls`, `username` and
    `password_file` keys (the site policy comes as `tls_policy`: relevent/topology/loader.py).
    A file that cannot be read raises TlsError naming it."""
    return {"tls": SiteTls(config["tls_policy"]) if config.get("tls") else None,
            "username": config.get("username") or "",
            "password": read_password(config["password_file"]) if config.get("password_file") else None}


def link_detail(link: "MqttLink | None") -> dict:
    """What `relevent status` shows of a link's security: why it is down, the TLS policy."""
    if link is None:
        return {}
    out: dict = {"error": link.last_error} if link.last_error else {}
    if link.tls is not None:
        out["tls"] = link.tls.status()
    return out


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no CONNACK within {CONNECT_TIMEOUT_S:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate does not verify: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return str(exc) or type(exc).__name__


def connect_packet(client_id: str, username: str = "", password: str | None = None) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session, keep-alive 30 s)."""
    def field(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("!H", len(raw)) + raw
    flags = 0x02 | (0x80 if username else 0) | (0x40 if username and password is not None else 0)
    body = field("MQTT") + bytes([4, flags]) + struct.pack("!H", 30) + field(client_id)
    if username:
        body += field(username)
        if password is not None:
            body += field(password)
    size, remaining = len(body), b""
    while True:
        byte, size = size % 128, size // 128
        remaining += bytes([byte | (0x80 if size else 0)])
        if not size:
            break
    return b"\x10" + remaining + body
