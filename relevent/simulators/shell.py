"""What every asyncio simulator shares with the actor that hosts it (relevent/actors/simulator.py):
its loop in a thread of the actor (`aio`, relevent/protocols/aio.py), the loop's wake-up
descriptor for the actor to watch, the loop's events drained on the actor's thread (a
Crashed event raises there, so the actor crashes with the reason and is restarted), and
the stop: what runs on the loop (a server, a link) is closed there first, within
`CLOSE_S`, then the loop stops, then the simulator's log file is closed.

One owner for that life cycle: each simulator says only what to close (`aclose`).  The
thread-based IEC 104 station (c104 has its own threads) does not use it.
"""
from __future__ import annotations

from typing import Any

from relevent.protocols.aio import AsyncioThread

CLOSE_S = 2.0   # seconds what runs on the loop gets to close at stop


class AsyncioSimulator:
    config: dict
    aio: AsyncioThread | None = None
    _log: Any = None   # an open log file (write_log, command_log), or None

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
            self.aio.events(f"simulator {self.config.get('name')}")

    def on_message(self, message: Any, sender: Any) -> bool:
        return False
