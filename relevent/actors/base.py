"""The common base of every actor in the tree.

It applies the process mitigations, answers heartbeats, persists a small lifetime record,
and lets the actor crash on any unhandled exception (Erlang style): the error goes to the
supervisor as `Failed`, then the actor exits and is restarted with its configuration
re-sent and its state reloaded from the store.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
import traceback
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

try:  # ThespianWatch exists only in the multiproc bases' API.
    from thespian.actors import ThespianWatch, WatchMessage
except ImportError:  # pragma: no cover
    ThespianWatch = WatchMessage = None

from thespian.actors import Actor

from relevent.messages import (
    Configure, Failed, Hello, InjectFault, Ping, Pong, Ready,
)
from relevent.runtime.hardening import harden_actor_process
from relevent.store import StateCorrupt, StateStore, store_directory

log = logging.getLogger("relevent.actor")

# The thespian capability that names a convention member's host (`relevent member --host`):
# the leader's ActorSystem has none.
HOST_CAPABILITY = "relevent host"


class ReleventActor(Actor):
    role = "actor"

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.path = ""
        self.config: dict = {}
        self.site: dict = {}
        self.parent = None
        self.incarnation = 0
        self.lifetime: dict = {}
        self._store: StateStore | None = None
        self._crashing = False
        self._defer_ready = False
        self.stopping = False
        # Harden as soon as the actor process exists, before any message: a child created
        # just before its parent dies must die too.  The runner exports its pid; actors
        # that share its process (simpleSystemBase) leave its signals alone.
        if str(os.getpid()) != os.environ.get("RELEVENT_RUNNER_PID", str(os.getpid())):
            harden_actor_process(os.environ.get("RELEVENT_CRASH_LOG"))

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict, requirements: dict) -> bool:  # noqa: N802 - thespian API
        """Placement (docs/deploy.md "Placing DERs on member hosts"): an actor created with
        targetActorRequirements {"relevent host": NAME} runs only on the member started with
        `relevent member --host NAME`; one created without runs only on an ActorSystem with no
        host name, the leader's, so no unplaced actor ever lands on a member."""
        wanted = (requirements or {}).get(HOST_CAPABILITY, "")
        return (capabilities or {}).get(HOST_CAPABILITY, "") == wanted

    # -- hooks for subclasses -----------------------------------------------------------
    def on_configure(self) -> None:
        """Start work; config, site settings and store are set."""

    def on_message(self, message: Any, sender: Any) -> None:
        """Any message the base does not handle."""
        log.warning("%s: unexpected message %s from %s", self.path, type(message).__name__, sender)

    def on_watch(self, ready: list[int]) -> None:
        """Some watched file descriptors are readable."""

    def on_wakeup(self, payload: Any) -> None:
        """A wakeupAfter() fired."""

    def on_stop(self) -> None:
        """The actor is exiting: close sockets, stop threads."""

    def watch_fds(self) -> list[int]:
        return []

    def detail(self) -> dict:
        """Role-specific state shown by `relevent status`."""
        return {}

    def status_nodes(self) -> list | None:
        """A supervisor's children, as `relevent status` shows them (Supervisor.node)."""
        return None

    # -- helpers -------------------------------------------------------------------------
    @property
    def store(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(store_directory(self.site["state_dir"]))
        return self._store

    @property
    def multiprocess(self) -> bool:
        return self.site.get("runtime", {}).get("base", "multiprocTCPBase") != "simpleSystemBase"

    # -- dispatch ------------------------------------------------------------------------
    def receiveMessage(self, message: Any, sender: Any):  # noqa: N802 - thespian API
        if self._crashing:
            return None
        try:
            self._dispatch(message, sender)
        except Exception as exc:  # let it crash, but say why first
            self._crash(exc)
            return None
        fds = self.watch_fds()
        if fds and ThespianWatch is not None and self.multiprocess:
            return ThespianWatch(fds)
        return None

    def _dispatch(self, message: Any, sender: Any) -> None:
        if isinstance(message, Ping):
            children = self.status_nodes() if message.status else None
            self.send(sender, Pong(self.name, message.seq, os.getpid(), self.detail(), children))
        elif isinstance(message, Configure):
            self._configure(message, sender)
        elif isinstance(message, InjectFault) and not message.target:
            self._inject(message, sender)
        elif isinstance(message, WakeupMessage):
            self.on_wakeup(message.payload)
        elif WatchMessage is not None and isinstance(message, WatchMessage):
            self.on_watch(list(message.ready))
        elif isinstance(message, ActorExitRequest):
            self.stopping = True
            self.on_stop()
        elif isinstance(message, ChildActorExited):
            self.on_message(message, sender)
        else:
            self.on_message(message, sender)

    def _configure(self, msg: Configure, sender: Any) -> None:
        self.parent = sender
        self.name, self.path, self.role = msg.name, msg.path, msg.role
        self.config, self.site, self.incarnation = msg.config, msg.site, msg.incarnation
        self.send(sender, Hello(self.name, os.getpid()))
        self._record_start()
        self.on_configure()
        if not self._defer_ready:
            self.mark_ready()

    def defer_ready(self) -> None:
        """Called in on_configure by an actor that is not ready when it returns (e.g. an
        endpoint that must not serve before it has the site's state); it then calls
        mark_ready().  The supervisor's startup_timeout still applies."""
        self._defer_ready = True

    def mark_ready(self) -> None:
        self.send(self.parent, Ready(self.name, os.getpid(), self.detail()))

    def _record_start(self) -> None:
        """Keep a lifetime record in the store: how often and since when this actor started.
        It is information only (the status shows it), so it is written without fsync (a
        site's start writes one for every actor: bench/README.md, "A lean start-up"), and
        one that a power cut left unreadable starts again, with a warning naming the file.  Records an actor's behaviour depends on (a controller's schedules) fail the
        actor instead (StateCorrupt), and are written durably."""
        key = f"actor/{self.path or self.name}"
        try:
            record = self.store.load(key)
        except StateCorrupt as exc:
            log.warning("%s: lifetime record lost, counting starts again: %s", self.path or self.name, exc)
            record = None
        record = record or {"starts": 0, "first_start": time.time()}
        record["starts"] += 1
        record["last_start"] = time.time()
        self.store.save(key, record, durable=False)
        self.lifetime = record

    def _inject(self, msg: InjectFault, sender: Any) -> None:
        # The supervisor that delivers a fault has checked that the site allows it.
        log.warning("%s: injected fault %s", self.path, msg.kind)
        if msg.kind == "raise":
            raise RuntimeError(f"injected fault in {self.path}")
        if msg.kind == "exit":
            os._exit(3)
        if msg.kind == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if msg.kind == "segfault":
            ctypes.string_at(0)
        if msg.kind == "hang":
            while True:  # blocks this actor for good, as a call stuck in C would
                time.sleep(3600)
        raise ValueError(f"unknown fault kind {msg.kind!r}")

    def _crash(self, exc: BaseException) -> None:
        self._crashing = True
        error = f"{type(exc).__name__}: {exc}"
        log.error("%s crashed: %s\n%s", self.path or type(self).__name__, error, traceback.format_exc())
        if self.parent is not None:
            self.send(self.parent, Failed(self.name, error))
        try:
            self.on_stop()
        finally:
            self.send(self.myAddress, ActorExitRequest())
