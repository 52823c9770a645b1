"""Actors hosted in their supervisor's process ([runtime] controller_isolation = "der").

A hosted actor is the same class as a process actor and is supervised the same way
(Configure, Hello/Ready, heartbeats, Failed, restart with its state from the store); only
its messages and wake-ups come through a `HostedRef` and its host instead of thespian.
Why: an actor process costs ~7 MiB PSS (bench/README.md), and a DER's three controllers
in their own processes put a 10-DER site over its 400 MB budget.

What a host gives up: a crash in C, a hang or a kill of one hosted actor takes its host
and its siblings with it, and the host's own supervisor restarts them all (each continues
from the store).  A Python exception in a hosted actor stays contained: the host restarts
that actor alone.  WAN and LAN endpoints and DERs keep their own processes.

Delivery is asynchronous, as with thespian: a message to or from a hosted actor is queued
and handled after the current handler returns, in order.
"""
from __future__ import annotations

import importlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest, ChildActorExited, WakeupMessage

log = logging.getLogger("relevent.hosted")


class HostedAddress(ActorAddress):
    """A host's handle on one incarnation of a hosted actor: equal only to itself."""

    def __init__(self, name: str, generation: int) -> None:
        super().__init__(f"hosted:{name}#{generation}")

    def eqOverride(self, other: Any) -> bool:  # noqa: N802 - thespian's hook for ActorAddress.__eq__
        return self is other


@dataclass
class HostedWakeup:
    """A hosted actor's wakeupAfter, carried by its host's."""
    key: str          # HostedAddress.actorAddressString
    payload: Any


class HostedRef:
    """What a hosted actor has in place of thespian's reference (Actor._myRef)."""

    def __init__(self, host: "Host", address: HostedAddress) -> None:
        self.host = host
        self.hosted = address
        self.globalName = None  # noqa: N815 - thespian's name

    @property
    def address(self) -> Any:
        # Requests from other processes reach a hosted actor through its host, which routes them.
        return self.host.myAddress

    def actor_send(self, target: Any, message: Any) -> None:
        self.host.hosted_send(self.hosted, target, message)

    def wakeupAfter(self, period: Any, payload: Any = None) -> None:  # noqa: N802 - thespian's name
        self.host.wakeupAfter(period, HostedWakeup(self.hosted.actorAddressString, payload))

    def createActor(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - thespian's name
        raise NotImplementedError("a hosted actor cannot create actors")


class Host:
    """Mixin for a ReleventActor that hosts actors in its own process (see DerActor)."""

    def init_host(self) -> None:
        self.hosted: dict[str, tuple[HostedAddress, Any]] = {}
        self._local: deque = deque()   # (target HostedAddress or None for this host, message, sender)
        self._draining = False

    def host_actor(self, class_path: str, name: str, generation: int) -> HostedAddress:
        module, _, cls_name = class_path.rpartition(".")
        actor = getattr(importlib.import_module(module), cls_name)()
        address = HostedAddress(name, generation)
        actor._myRef = HostedRef(self, address)
        self.hosted[address.actorAddressString] = (address, actor)
        return address

    def is_hosted(self, address: Any) -> bool:
        return isinstance(address, HostedAddress)

    def hosted_actor(self, address: Any) -> Any:
        """The actor object of one of our hosted incarnations; None for any other address."""
        if not isinstance(address, HostedAddress):
            return None
        entry = self.hosted.get(address.actorAddressString)
        return entry[1] if entry is not None and entry[0] is address else None

    # -- sending -------------------------------------------------------------------------------
    def deliver_local(self, target: HostedAddress, message: Any) -> None:
        """The host sends to one of its hosted actors."""
        self._local.append((target, message, self.myAddress))

    def hosted_send(self, source: HostedAddress, target: Any, message: Any) -> None:
        if isinstance(target, HostedAddress):
            self._local.append((target, message, self.myAddress))
        elif target == self.myAddress:
            if isinstance(message, ActorExitRequest):  # the hosted actor asks to exit (base._crash)
                self._local.append((source, message, source))
            else:
                self._local.append((None, message, source))
        else:
            self.send(target, message)

    def hosted_wakeup(self, message: Any) -> bool:
        """A wake-up for a hosted actor: queue it for the incarnation that asked; True if it was one."""
        if not (isinstance(message, WakeupMessage) and isinstance(message.payload, HostedWakeup)):
            return False
        entry = self.hosted.get(message.payload.key)
        if entry is not None:
            self._local.append((entry[0], WakeupMessage(message.delayPeriod, message.payload.payload),
                                self.myAddress))
        return True

    # -- delivery ------------------------------------------------------------------------------
    def drain(self, receive_as_host) -> None:
        """Deliver queued messages until none is left.  `receive_as_host(message, sender)`
        handles one addressed to the host (its own receiveMessage, without draining)."""
        if self._draining:
            return
        self._draining = True
        try:
            while self._local:
                target, message, sender = self._local.popleft()
                if target is None:
                    receive_as_host(message, sender)
                    continue
                entry = self.hosted.get(target.actorAddressString)
                if entry is None or entry[0] is not target:
                    continue  # an exited incarnation: a dead letter, as with thespian
                entry[1].receiveMessage(message, sender)
                if isinstance(message, ActorExitRequest):
                    del self.hosted[target.actorAddressString]
                    self._local.append((None, ChildActorExited(target), self.myAddress))
        finally:
            self._draining = False

    def stop_hosted(self) -> None:
        """The host exits: every hosted actor gets its ActorExitRequest (on_stop) now."""
        for address, actor in list(self.hosted.values()):
            try:
                actor.receiveMessage(ActorExitRequest(), self.myAddress)
            except Exception:  # noqa: BLE001 - the host is going anyway
                log.exception("stopping hosted actor %s", address.actorAddressString)
        self.hosted.clear()
        self._local.clear()
