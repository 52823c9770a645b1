"""The actor side of a LAN endpoint whose devices connect to the site (OCPP chargers, S2
resource managers): one owner for what both shells do alike.

Invariant: the protocol runs on an `AsyncioThread`'s loop (its server object, made by the
subclass's `make_server`), which only posts events, tuples `("what", args...)`; the actor
thread turns each into a call of the subclass's `_on_what(*args)`.  So every piece of state
`relevent status` shows is kept on the actor's thread, and the loop never calls the actor.

Also here: Ready once the port is bound (`_on_listening`), the DER commands this endpoint
takes (`DeviceCommand`s of its own DERs; the DER's address kept so measurements go straight
to it), the at_stop confirmations (relevent/protocols/confirm.py), and refusals counted.
"""
from __future__ import annotations

import logging
from typing import Any

from relevent.messages import CommandSubscribe, DeviceCommand, Measurement
from relevent.protocols.aio import AsyncioThread
from relevent.protocols.confirm import Confirmations

log = logging.getLogger("relevent.lan")
STOP_TIMEOUT_S = 2.0    # the server's close on the loop, at most


class DeviceServerEndpoint:
    kind = ""           # the protocol, in thread names and log lines

    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        self.ders = {d["name"]: d for d in config.get("ders", [])}
        self.der_address: dict[str, Any] = {}       # DER -> its actor, from its first command
        self.aio: AsyncioThread | None = None
        self.server: Any = None
        self.listening = False
        self.refused = 0
        self.last_refused = ""
        self.confirmations = Confirmations(lambda to, message: self.actor.send(to, message))

    # -- for the subclass ------------------------------------------------------------------------
    def make_server(self, post: Any) -> Any:
        """The protocol's server object, on the loop: `run()` serves (posting "listening"
        once bound), `close()` ends it; `post` hands events to the actor."""
        raise NotImplementedError

    def on_command(self, message: DeviceCommand, der: dict) -> None:
        """A command for one of this endpoint's DERs (actor thread)."""
        raise NotImplementedError

    def serving(self) -> str:
        """What the endpoint serves, for the log and the status."""
        raise NotImplementedError

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.actor.defer_ready()   # Ready once the port is bound
        self.aio = AsyncioThread(f"{self.kind}-{self.config['name']}")
        self.server = self.make_server(self.aio.post)
        self.aio.spawn(self.server.run(), "serve")
        self.actor.send(self.actor.parent, CommandSubscribe(self.actor.name, self.actor.myAddress))

    def stop(self) -> None:
        if self.aio:
            self.aio.run_quietly(self.server.close(), STOP_TIMEOUT_S)
            self.aio.stop()

    def fds(self) -> list[int]:
        return [self.aio.fileno()] if self.aio else []

    # -- the actor's messages and the loop's events ----------------------------------------------
    def on_message(self, message: Any, sender: Any) -> bool:
        if not isinstance(message, DeviceCommand):
            return False
        der = self.ders.get(message.der)
        if der is None:
            log.warning("%s endpoint=%s: command for der=%s, which is not on this endpoint", self.kind,
                        self.config["name"], message.der)
            return True
        self.der_address[message.der] = message.der_address
        self.on_command(message, der)
        return True

    def on_ready(self, fds: list[int]) -> None:
        for event in self.aio.events(f"{self.kind} endpoint {self.config['name']}"):
            getattr(self, f"_on_{event[0]}")(*event[1:])

    def _on_listening(self, host: str, port: int) -> None:
        self.listening = True
        log.info("%s endpoint=%s listening on %s", self.kind, self.config["name"], self.serving())
        self.actor.mark_ready()

    def _on_refused(self, who: str, reason: str) -> None:
        self.refused += 1
        self.last_refused = reason

    def _send(self, m: Measurement) -> None:
        # Straight to the DER once a command told us where it is; through the site before.
        self.actor.send(self.der_address.get(m.der) or self.actor.parent, m)
