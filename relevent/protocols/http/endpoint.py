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
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from relevent.messages import ControllerState
from relevent.protocols.aio import AsyncioThread
from relevent.protocols.http.api import build_app
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

    # -- lifecycle (actor thread) -------------------------------------------------------------------
    def start(self) -> None:
        self.app = build_app(self.ctx, self.stats)
        self.aio = AsyncioThread(f"http-{self.config['name']}")
        self.ctx.defer_ready()  # Ready once listening, after every controller's state is in

    def on_synced(self) -> None:
        self.serving = self.aio.spawn(self._serve(), "serve")

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
        return {"serving": f"http://{self.address}:{self.port}/api/v1", "listening": self.listening,
                "http": dict(self.stats)}

    # -- the loop thread ------------------------------------------------------------------------------
    async def _serve(self) -> None:
        import uvicorn

        sock = self._bind()
        config = uvicorn.Config(self.app, host=self.address, port=self.port, log_level="warning", lifespan="off",
                                access_log=False, log_config=None, timeout_graceful_shutdown=GRACEFUL_S)
        self.server = uvicorn.Server(config)
        task = asyncio.ensure_future(self.server.serve(sockets=[sock]))
        while not self.server.started and not task.done():
            await asyncio.sleep(0.01)
        if self.server.started:
            log.info("http endpoint=%s party=%s serving http://%s:%d/api/v1", self.config["name"], self.ctx.party,
                     self.address, self.port)
            self.aio.post(LISTENING)
        await task
        if not self.stopping and not self.server.should_exit:
            raise RuntimeError("uvicorn stopped serving")

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
