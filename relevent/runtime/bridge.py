"""Hand events from threads (asyncio loops, C library callbacks) to an actor.

Calling `self.send()` from a non-actor thread loses messages in thespian.  Instead the
thread puts the event on a queue and writes one byte to a socketpair; the actor returns
`ThespianWatch([bridge.fileno()])` from `receiveMessage` and drains the queue when the
watch fires.
"""
from __future__ import annotations

import queue
import socket
from typing import Any


class ThreadBridge:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def post(self, event: Any) -> None:
        """Thread-safe; never blocks (a full socket buffer already means 'wake up')."""
        self._queue.put(event)
        try:
            self._writer.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def drain(self) -> list[Any]:
        """Called in the actor when its watch fires: every event posted so far."""
        try:
            while self._reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        events = []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
