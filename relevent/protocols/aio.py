"""An asyncio loop in a daemon thread of an actor (gmqtt, pymodbus), wired to the actor
through a ThreadBridge: the loop posts events, the actor drains them when its
ThespianWatch fires (docs/runtime-notes.md: `self.send()` from a thread loses messages).

A coroutine that fails unexpectedly posts a Crashed event; the actor raises it, so the
supervisor restarts the endpoint (let it crash) instead of it limping on half dead.

A clean stop logs no traceback: `stop` cancels the tasks left, and a library's done
callback that reads such a task's result then raises CancelledError inside the loop (gmqtt
does, for the reconnect it starts when the embedded broker stops before its clients:
"Exception in callback MqttPackageHandler._handle_exception_in_future", printed on every
stop of the demo).  While stopping, the loop's exception handler takes a CancelledError as
what it is, the cancellation we asked for; any other error is reported as before."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from dataclasses import dataclass
from typing import Any, Coroutine

from relevent.runtime.bridge import ThreadBridge

log = logging.getLogger("relevent.aio")


@dataclass
class Crashed:
    what: str
    error: str


class AsyncioThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self.bridge = ThreadBridge()
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._loop_exception)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def spawn(self, coro: Coroutine, what: str) -> concurrent.futures.Future:
        """Run `coro` on the loop; an exception in it reaches the actor as Crashed."""
        async def guarded() -> Any:
            try:
                return await coro
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - reported to the actor, which crashes
                log.exception("task=%s of %s failed", what, self.name)
                self.bridge.post(Crashed(what, f"{type(exc).__name__}: {exc}"))
                raise
        return asyncio.run_coroutine_threadsafe(guarded(), self.loop)

    def call(self, fn: Any, *args: Any) -> None:
        """Run a plain function on the loop thread, soon."""
        self.loop.call_soon_threadsafe(fn, *args)

    def post(self, event: Any) -> None:
        self.bridge.post(event)

    def fileno(self) -> int:
        return self.bridge.fileno()

    def drain(self) -> list[Any]:
        return self.bridge.drain()

    def events(self, owner: str) -> list[Any]:
        """What the loop posted; a Crashed event raises instead, so the actor crashes and
        its supervisor restarts it."""
        out = []
        for event in self.drain():
            if isinstance(event, Crashed):
                raise RuntimeError(f"{owner}: {event.what}: {event.error}")
            out.append(event)
        return out

    def run_quietly(self, coro: Coroutine, timeout: float) -> None:
        """Run a closing coroutine and wait for it; a failure does not matter when stopping."""
        try:
            asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)
        except Exception:  # noqa: BLE001 - stopping anyway
            pass

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if self._stopping and isinstance(context.get("exception"), asyncio.CancelledError):
            log.debug("%s: cancelled while stopping: %s", self.name, context.get("message"))
            return
        loop.default_exception_handler(context)

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping = True

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
