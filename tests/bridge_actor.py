"""A test actor that receives events from its own thread through a ThreadBridge."""
from __future__ import annotations

import os
import threading

from thespian.actors import Actor, ThespianWatch, WatchMessage

from relevent.runtime.bridge import ThreadBridge


class BridgeActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.bridge = ThreadBridge()
        self.received: list[int] = []

    def receiveMessage(self, message, sender):  # noqa: N802
        if isinstance(message, tuple) and message[0] == "produce":
            count = message[1]
            threading.Thread(target=lambda: [self.bridge.post(i) for i in range(count)], daemon=True).start()
        elif isinstance(message, WatchMessage):
            self.received.extend(self.bridge.drain())
        elif message == "pgid":
            self.send(sender, os.getpgid(0))
        elif message == "count":
            self.send(sender, list(self.received))
        return ThespianWatch([self.bridge.fileno()])
