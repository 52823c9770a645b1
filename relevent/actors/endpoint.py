"""A WAN or LAN protocol endpoint: one actor process per endpoint, so a crash in a
protocol stack (a C extension included) takes down only that endpoint.

The protocol adapter named by the registry runs inside this actor.  A WAN adapter gets a
control session (relevent/wan/session.py) and talks to it through a WanContext: the session
handles the controllers' states and the requests to them, the adapter only its protocol.
A LAN adapter or a simulator gets the actor itself.  Until a protocol's adapter is part of
the build, the endpoint says so in `relevent status` instead of pretending to serve.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

from relevent.actors.base import ReleventActor
from relevent.protocols.registry import PROTOCOLS
from relevent.wan.adapter import WanContext
from relevent.wan.session import ControlSession

log = logging.getLogger("relevent.endpoint")


class EndpointActor(ReleventActor):
    def __init__(self) -> None:
        super().__init__()
        self.adapter: Any = None
        self.session: ControlSession | None = None

    def on_configure(self) -> None:
        spec = PROTOCOLS[self.config["protocol"]]
        if spec.adapter is None:
            log.warning("endpoint=%s protocol=%s: no adapter in this build", self.path, spec.name)
            return
        module, _, cls = spec.adapter.rpartition(".")
        factory = getattr(importlib.import_module(module), cls)
        if spec.role == "wan":
            self.session = ControlSession(self, self.config)
            self.adapter = factory(WanContext(self.session, self), self.config)
            self.adapter.start()
            self.session.start(self.adapter)
        else:
            self.adapter = factory(self, self.config)
            self.adapter.start()

    def on_message(self, message: Any, sender: Any) -> None:
        if self.session is not None and self.session.on_message(message):
            return
        if self.adapter is None or self.session is not None or not self.adapter.on_message(message, sender):
            super().on_message(message, sender)

    def watch_fds(self) -> list[int]:
        fds = self.session.fds() if self.session else []
        return fds + (self.adapter.fds() if self.adapter else [])

    def on_watch(self, ready: list[int]) -> None:
        if self.session and set(ready) & set(self.session.fds()):
            self.session.on_ready(ready)
        if self.adapter:
            self.adapter.on_ready(ready)

    def on_wakeup(self, payload: Any) -> None:
        if self.session is not None and self.session.on_wakeup(payload):
            return
        if self.adapter is not None and hasattr(self.adapter, "on_wakeup"):
            self.adapter.on_wakeup(payload)

    def on_stop(self) -> None:
        if self.adapter:
            self.adapter.stop()
        if self.session:
            self.session.stop()

    def detail(self) -> dict:
        info = {"protocol": self.config.get("protocol"), "starts": self.lifetime.get("starts")}
        if self.adapter is None:
            info["adapter"] = "not in this build"
        else:
            info.update(self.adapter.detail())
        if self.session is not None:
            info.update(self.session.detail())
        return info
