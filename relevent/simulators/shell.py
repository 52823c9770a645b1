"""What every asyncio simulator shares with the actor that hosts it (relevent/actors/simulator.py):
its loop in a thread of the actor (`aio`, relevent/protocols/aio.py), the loop's wake-up
descriptor for the actor to watch, the loop's events drained on the actor's thread (a
Crashed event raises there, so the actor crashes with the reason and is restarted), and
the stop: what runs on the loop (a server, a link) is closed there first, within
`CLOSE_S`, then the loop stops, then the simulator's log file is closed.

One owner for that life cycle: each simulator says only what to close (`aclose`).  The
thread-based IEC 104 station (c104 has its own threads) does not use it.

A simulator that serves a port calls `ready_once_listening()` in `start()` and posts
"listening" once the port is bound: its Ready waits for that, so a client that connects
when the site says the simulator runs finds the port (on a loaded machine the server's
bind came after Ready, and a test's first connection was refused).
"""
from __future__ import annotations

from typing import Any

from relevent.protocols.aio import AsyncioThread

CLOSE_S = 2.0   # seconds what runs on the loop gets to close at stop


class AsyncioSimulator:
    config: dict
    actor: Any
    aio: AsyncioThread | None = None
    _log: Any = None   # an open log file (write_log, command_log), or None
    _ready_when_listening = False

    def ready_once_listening(self) -> None:
        """In start(): the actor's Ready waits for the loop's "listening" event (a simulator
        run outside a site, with no actor, has no Ready to wait with)."""
        if self.actor is not None:
            self._ready_when_listening = True
            self.actor.defer_ready()

    async def aclose(self) -> None:
        """On the loop, at stop: close what the simulator serves (a server, a link)."""

    def stop(self) -> None:
        if self.aio is not None:
            self.aio.run_quietly(self.aclose(), CLOSE_S)
            self.aio.stop()
            self.aio = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def fds(self) -> list[int]:
        return [self.aio.fileno()] if self.aio is not None else []

    def on_ready(self, fds: list[int]) -> None:
        if self.aio is not None:
            events = self.aio.events(f"simulator {self.config.get('name')}")
            if self._ready_when_listening and "listening" in events:
                self._ready_when_listening = False
                self.actor.mark_ready()

    def on_message(self, message: Any, sender: Any) -> bool:
        return False
