"""The contract between a WAN protocol adapter and the control session.

An adapter is one protocol's I/O and mapping, nothing else: decode a request, call its
`WanContext`, encode the answer.  Validation, policy, ordering, restart tracking, contact
and forecasts are the session's (relevent/wan/session.py); an adapter cannot bypass them
because the context is all it gets.  docs/protocols.md lists the files a new protocol
touches.

Threads: the adapter's own threads (a server library's, an asyncio loop) may call every
`WanContext` method at any time.  The session calls the adapter's `WanAdapter` methods on
the endpoint actor's thread, one at a time; those must not block.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Protocol

from relevent.messages import ControllerState, Measurement
from relevent.policy import Decision
from relevent.wan.session import OPERATE_TIMEOUT_S, Answer, ControlSession, Who, Write

__all__ = ["Answer", "WanAdapter", "WanContext", "Who", "Write"]


class WanAdapter(Protocol):
    """What the endpoint actor and the session call.  Construct with (context, config)."""

    def start(self) -> None:
        """Prepare (load models, open nothing that clients can reach before `on_synced`)."""

    def on_synced(self) -> None:
        """Every controller's state is in (or FIRST_STATES_TIMEOUT_S passed): serve now,
        then call `context.mark_ready()` once clients can connect."""

    def on_state(self, state: ControllerState, unacked: list[tuple]) -> None:
        """A controller's state (also every announced next state in `state.then`), with the
        writes accepted after it: (schedule, field, index, value).  Adapters that read
        `context.view` need nothing here."""

    def on_measurement(self, measurement: Measurement) -> None:
        """A DER's measured power (optional)."""

    def fds(self) -> list[int]:
        """File descriptors of the adapter's own ThreadBridge, if it has one."""

    def on_ready(self, fds: list[int]) -> None:
        """One of `fds()` is readable (actor thread)."""

    def stop(self) -> None:
        """Close listeners and threads; may be called at any time after __init__."""

    def detail(self) -> dict:
        """What `relevent status` shows of the adapter."""


class WanContext:
    """What an adapter may use: the session's thread-safe calls, and the few actor
    services an endpoint needs (its state folder, deferring its Ready)."""

    def __init__(self, session: ControlSession, actor: Any) -> None:
        self._session = session
        self._actor = actor
        self.name: str = session.name
        self.party: str = session.party
        self.ders: dict[str, dict] = session.ders

    @property
    def state_dir(self) -> str:
        return self._actor.site["state_dir"]

    @property
    def site_name(self) -> str:
        return self._actor.site["name"]

    def who(self, peer: str = "", credential: tuple | None = None) -> Who:
        """The party of a client, from the credential it presented (("mms-password", x),
        ("http-token", x), ("peer", identity)), else the endpoint's `anonymous` rule.
        Pass it to every request; without one, a request is the anonymous client's."""
        return self._session.who(peer, credential)

    def may(self, who: Who, operation: str, der: str = "", kind: str | None = None) -> Decision:
        """May `who` read (or ...) this DER's data?  Writes and operates are checked by the
        session itself; an adapter asks this before serving a read or a connection."""
        return self._session.may(who, operation, der, kind)

    def write(self, der: str, kind: str, schedule: str, writes: list[Write], who: Who | None = None) -> Answer:
        return self._session.write(der, kind, schedule, writes, who)

    def operate(self, der: str, kind: str, schedule: str, op: str,
                who: Who | None = None) -> concurrent.futures.Future:
        return self._session.operate(der, kind, schedule, op, who)

    def operate_wait(self, der: str, kind: str, schedule: str, op: str,
                     timeout: float = OPERATE_TIMEOUT_S, who: Who | None = None) -> Answer:
        return self._session.operate_wait(der, kind, schedule, op, timeout, who)

    def forecast(self, der: str, kind: str, window_ms: int) -> concurrent.futures.Future:
        return self._session.forecast(der, kind, window_ms)

    def view(self, der: str, kind: str, now: int | None = None) -> dict | None:
        return self._session.view(der, kind, now)

    def unacked(self, der: str, kind: str, acked: int) -> list[tuple]:
        """Writes to this controller accepted after its write number `acked` (a state's
        `writes_applied[context.name]`): (schedule, field, index, value)."""
        return self._session.unacked(der, kind, acked)

    def measurement(self, der: str) -> Measurement | None:
        return self._session.measurement(der)

    def contact(self, who: Who | None = None) -> None:
        """A read of `who` was served: contact, if it is a recognised party."""
        self._session.contact(who)

    def connected(self, up: bool, who: Who | None = None) -> None:
        self._session.connected(up, who)

    # actor thread only
    def defer_ready(self) -> None:
        self._actor.defer_ready()

    def mark_ready(self) -> None:
        self._actor.mark_ready()
