"""The HTTP/JSON WAN adapter (`protocol = "http"`): the site's 90-10 schedules as
resources under /api/v1, served by uvicorn on an asyncio loop in a thread of the
endpoint actor (relevent/protocols/aio.py), over the same control session as MMS
(relevent/wan/session.py): the same validation at enable, refusal codes, locks, policy
and ordering.  Resources and JSON shapes: relevent/protocols/http/api.py, docs/http.md.

Why FastAPI + uvicorn: both are widely used and maintained; FastAPI generates the
OpenAPI 3.1 document from the same pydantic models that validate every request (so the
document cannot drift from the code), and that document is what schemathesis fuzzes
(tests/test_http_fuzz.py).  uvicorn's `Server.serve()` is a coroutine, so it runs on our
own loop in the actor's process, with no process or signal handling of its own.

Life cycle: `start` builds the app and the loop thread and defers Ready; `on_synced`
(every controller's state is in) binds the port and serves; once uvicorn reports
`started`, the loop posts LISTENING and the actor thread reports Ready.  A port that
cannot be bound (or uvicorn failing) reaches the actor as `Crashed` and the actor crashes
with the reason, so its supervisor restarts it.  Reads use `ctx.view`: `on_state` has
nothing to do.

TLS (`tls = true`, docs/tls.md): uvicorn serves with the site policy's server context
(set on its loaded Config) and our own subclass of its HTTP protocol, which sees each
connection once its handshake is done: the peer's certificate is checked
(`SiteTls.peer_problem`: revoked, expired, its CRL out of date) and the connection dropped
if refused, else the certificate reaches the app as the ASGI TLS extension
(`scope["extensions"]["tls"]["client_cert_chain"]`, which uvicorn does not fill itself)
and `api.caller` names the party from it.  Every `crl_refresh_s` the CRLs are re-read and
every open connection re-checked: a revoked peer's keep-alive connection is closed.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

from relevent.messages import ControllerState
from relevent.protocols.aio import AsyncioThread
from relevent.protocols.http.api import build_app
from relevent.security.tls import CertificateRenewed, PeerSessions, SiteTls, cert_names
from relevent.wan.adapter import WanContext

log = logging.getLogger("relevent.http")

LISTENING = "listening"
GRACEFUL_S = 0.5        # requests in progress get this long at stop
STOP_WAIT_S = 2.0


class HttpEndpoint:
    def __init__(self, ctx: WanContext, config: dict) -> None:
        self.ctx = ctx
        self.config = config
        self.address: str = config.get("address") or "127.0.0.1"
        self.port: int = config.get("port", 8080)
        self.aio: AsyncioThread | None = None
        self.app: Any = None
        self.server: Any = None          # uvicorn.Server, once serving
        self.serving: Any = None         # the concurrent future of _serve
        self.listening = False
        self.stopping = False
        self.stats = {"requests": 0, "writes": 0, "operates": 0, "refused": 0}
        self.tls: SiteTls | None = None            # the site policy, with tls = true
        self.ssl: ssl.SSLContext | None = None
        self.sessions = PeerSessions()              # open TLS connections with a client certificate

    # -- lifecycle (actor thread) -------------------------------------------------------------------
    def start(self) -> None:
        self.app = build_app(self.ctx, self.stats)
        if self.config.get("tls"):   # a missing file raises, naming it: the actor crashes with it
            self.tls = SiteTls(self.config["tls_policy"])
            self.ssl = self.tls.server_context(self.config.get("client_cert", "require"))
        self.aio = AsyncioThread(f"http-{self.config['name']}")
        self.ctx.defer_ready()  # Ready once listening, after every controller's state is in

    def on_synced(self) -> None:
        self.serving = self.aio.spawn(self._serve(), "serve")
        if self.tls is not None:
            self.aio.spawn(self._refresh_forever(), "tls-refresh")

    def on_state(self, state: ControllerState, unacked: list[tuple]) -> None:
        pass  # reads use ctx.view

    def fds(self) -> list[int]:
        return [self.aio.fileno()] if self.aio is not None else []

    def on_ready(self, _fds: list[int]) -> None:
        if self.aio is None:
            return
        for event in self.aio.events(f"http endpoint {self.config['name']}"):  # Crashed raises
            if event == LISTENING:
                self.listening = True
                self.ctx.mark_ready()

    def stop(self) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.should_exit = True   # uvicorn's main loop looks every 0.1 s
        if self.serving is not None:
            try:
                self.serving.result(STOP_WAIT_S)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        if self.aio is not None:
            self.aio.stop()

    def detail(self) -> dict:
        scheme = "https" if self.ssl is not None else "http"
        out = {"serving": f"{scheme}://{self.address}:{self.port}/api/v1", "listening": self.listening,
               "http": dict(self.stats)}
        if self.tls is not None:
            out["tls"] = {**self.tls.status(), "client_cert": self.config.get("client_cert", "require"),
                          "sessions": len(self.sessions)}
        return out

    # -- the loop thread ------------------------------------------------------------------------------
    async def _serve(self) -> None:
        import uvicorn

        sock = self._bind()
        tls = {"http": self._tls_protocol()} if self.ssl is not None else {}
        config = uvicorn.Config(self.app, host=self.address, port=self.port, log_level="warning", lifespan="off",
                                access_log=False, log_config=None, timeout_graceful_shutdown=GRACEFUL_S, **tls)
        if self.ssl is not None:
            config.load()            # then our context, not one uvicorn builds from file names (any
            config.ssl = self.ssl    # uvicorn >= 0.30; serve() does not load a loaded config again)
        self.server = uvicorn.Server(config)
        task = asyncio.ensure_future(self.server.serve(sockets=[sock]))
        while not self.server.started and not task.done():
            await asyncio.sleep(0.01)
        if self.server.started:
            log.info("http endpoint=%s party=%s serving %s://%s:%d/api/v1", self.config["name"], self.ctx.party,
                     "https" if self.ssl is not None else "http", self.address, self.port)
            self.aio.post(LISTENING)
        await task
        if not self.stopping and not self.server.should_exit:
            raise RuntimeError("uvicorn stopped serving")

    # -- TLS (the loop thread) ---------------------------------------------------------------------------
    def _tls_protocol(self) -> type:
        """uvicorn's HTTP protocol, told of each connection after its handshake."""
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        endpoint = self

        class TlsHttpProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                endpoint._handshaken(self, transport)

            def connection_lost(self, exc: Exception | None) -> None:
                endpoint.sessions.closed(self)
                super().connection_lost(exc)

        return TlsHttpProtocol

    def _handshaken(self, protocol: Any, transport: Any) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        peer = "%s:%d" % tuple(protocol.client) if protocol.client else "?"
        problem = self.tls.peer_problem(der)
        if problem:
            self.tls.refuse(problem)
            log.warning("http endpoint=%s refused %s: %s", self.config["name"], peer, problem)
            transport.abort()
            return
        info = tls_extension(der, ssl_object)
        app = protocol.app

        async def with_tls(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket"):
                scope.setdefault("extensions", {})["tls"] = info
            await app(scope, receive, send)

        protocol.app = with_tls
        if der is not None:
            names = cert_names(der)
            self.sessions.opened(protocol, der, transport.close, f"{peer} ({names[0] if names else '?'})")

    async def _refresh_forever(self) -> None:
        """Every crl_refresh_s: the CRLs again, and every open session of a peer refused
        now (revoked, expired) closed."""
        while True:
            await asyncio.sleep(self.tls.refresh_s)
            self.tls.refresh()
            renewed = self.tls.renewed()
            if renewed:
                raise CertificateRenewed(renewed)   # the actor crashes with it and is restarted at once
            for label, reason in self.sessions.sweep(self.tls.peer_problem):
                self.tls.refuse(reason, closed=True)
                log.warning("http endpoint=%s closed the session of %s: %s", self.config["name"], label, reason)

    def _bind(self) -> socket.socket:
        """The listening socket, or OSError with the reason (the actor crashes with it)."""
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(self.address, self.port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise OSError(f"cannot listen on {self.address}:{self.port}: {exc.strerror or exc}") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen on {self.address}:{self.port}: {exc.strerror or exc}") from exc
        return sock


TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(der: bytes | None, ssl_object: Any) -> dict:
    """The ASGI TLS extension of a connection (asgi.readthedocs.io, "TLS"): the client's
    certificate as PEM (an empty chain without one) and the negotiated version."""
    name = None
    if der is not None:
        from cryptography import x509

        try:
            name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except ValueError:
            name = None
    return {"server_cert": None, "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der is not None else [],
            "client_cert_name": name, "client_cert_error": None,
            "tls_version": TLS_VERSIONS.get(ssl_object.version()) if ssl_object is not None else None,
            "cipher_suite": None}
