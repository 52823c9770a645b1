"""OTP-style supervision for thespian actors.

A `Supervisor` owns an ordered list of children (`ChildSpec`) and keeps them alive:

* strategies: ``one_for_one`` (restart the failed child), ``rest_for_one`` (and every
  child after it, for children that depend on earlier ones), ``one_for_all``;
* restart intensity: more than ``max_restarts`` failures within ``period`` seconds and
  the supervisor gives up: it stops its children, tells its own supervisor why
  (`Failed`) and exits, so the failure escalates one level up;
* backoff: the first restart of a child within the period is immediate, later ones wait
  ``backoff_initial * 2**(k-1)`` seconds, capped at ``backoff_max``;
* heartbeat: every ``heartbeat_interval`` each child gets a `Ping`; a child that has not
  answered for ``heartbeat_timeout`` (e.g. blocked in C) is SIGKILLed and restarted;
* configuration is re-sent on every restart (`Configure`), and `Reconfigure` applies a
  new child list as a diff: only added, removed or changed children are touched.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited

from relevent.actors.base import ReleventActor
from relevent.actors.hosted import Host
from relevent.actors.messages import (
    Configure, FaultAck, Failed, ForecastReply, Hello, InjectFault, Ping, Pong, Ready, Reconfigure, Reconfigured,
    StatusReply, StatusRequest, Wakeup,
)

log = logging.getLogger("relevent.supervisor")

STATUS_TIMEOUT = 1.0


@dataclass(frozen=True)
class ChildSpec:
    name: str
    role: str
    actor: str          # class path, e.g. "relevent.actors.der.DerActor"
    config: dict
    supervisor: bool = False


@dataclass
class Child:
    spec: ChildSpec
    address: Any = None
    pid: int | None = None
    # starting | running | backoff | restarting (stopped for a group restart or a config
    # change, started again when it exits) | removing | killing
    state: str = "new"
    restarts: int = 0
    generation: int = 0
    started_wall: float = 0.0
    started_mono: float = 0.0
    ready_wall: float | None = None
    ping_sent: float | None = None   # monotonic time of the oldest unanswered Ping
    last_error: str = ""
    reason: str = ""    # why the current incarnation is failing (Failed or heartbeat kill)
    history: deque = field(default_factory=deque)   # monotonic times of this child's restarts
    sticky_fault: str = ""
    detail: dict = field(default_factory=dict)


class Supervisor(Host, ReleventActor):
    level = "site"  # which [supervision.<level>] table applies

    def __init__(self) -> None:
        super().__init__()
        self.init_host()
        self.children: list[Child] = []
        self._failures: deque = deque()      # monotonic times of failures, for intensity
        self._ping_seq = 0
        self._status_jobs: dict[int, dict] = {}
        self._next_request = 1
        self._escalated = False
        self._reply_origins: dict[int, Any] = {}  # request id -> who asked (see reply_via_self)

    # -- to be provided by each supervisor ---------------------------------------------
    def child_specs(self) -> list[ChildSpec]:
        raise NotImplementedError

    def runtime_config(self, spec: ChildSpec) -> dict:
        """What a child needs at (re)start besides its topology slice; not part of the diff."""
        return {}

    def hosts(self, spec: ChildSpec) -> bool:
        """Whether this child runs in this process (relevent/actors/hosted.py) rather than its own."""
        return False

    # -- hosted children: thespian's entry points, routed ----------------------------------
    def send(self, target: Any, message: Any) -> None:
        if self.is_hosted(target):
            self.deliver_local(target, message)
        else:
            super().send(target, message)

    def receiveMessage(self, message: Any, sender: Any):  # noqa: N802 - thespian API
        result = None if self.hosted_wakeup(message) else super().receiveMessage(message, sender)
        self.drain(super().receiveMessage)
        return result

    def on_stop(self) -> None:
        self.stop_hosted()
        super().on_stop()

    # -- settings ----------------------------------------------------------------------
    @property
    def policy(self) -> dict:
        return self.site["supervision"][self.level]

    def on_configure(self) -> None:
        self._apply_specs(self.child_specs())
        self.wakeupAfter(self.policy["heartbeat_interval"], Wakeup("tick"))

    # -- message handling ----------------------------------------------------------------
    def on_message(self, message: Any, sender: Any) -> None:
        if isinstance(message, ChildActorExited):
            self._child_exited(message.childAddress)
        elif isinstance(message, (Hello, Ready, Pong, Failed)):
            self._child_report(message, sender)
        elif isinstance(message, StatusRequest):
            self._status_start(message.request_id, sender)
        elif isinstance(message, StatusReply):
            self._status_part(message)
        elif isinstance(message, InjectFault):
            self._route_fault(message, sender)
        elif isinstance(message, (FaultAck, ForecastReply)):
            origin = self._reply_origins.pop(message.request_id, None)
            if origin is not None:
                self.send(origin, message)
        elif isinstance(message, Reconfigure):
            self._reconfigure(message, sender)
        elif isinstance(message, Reconfigured):
            pass  # a child supervisor applied its part; the diff was already reported
        else:
            super().on_message(message, sender)

    def on_wakeup(self, payload: Any) -> None:
        if not isinstance(payload, Wakeup) or self._escalated:
            return
        if payload.what == "tick":
            self._heartbeat()
            self.wakeupAfter(self.policy["heartbeat_interval"], Wakeup("tick"))
        elif payload.what == "restart":
            child = self._by_name(payload.key)
            if child and child.state == "backoff" and child.generation == payload.generation:
                self._start(child)
        elif payload.what == "status-timeout":
            self._status_finish(payload.key)

    def _by_name(self, name: str) -> Child | None:
        return next((c for c in self.children if c.spec.name == name), None)

    def send_to_child(self, name: str, message: Any) -> bool:
        child = self._by_name(name)
        if child is None or child.address is None or child.state not in ("starting", "running"):
            log.warning("%s: no running child %r for %s", self.path or self.name, name, type(message).__name__)
            return False
        self.send(child.address, message)
        return True

    def running_children(self, role: str | None = None) -> list[Child]:
        return [c for c in self.children if c.address is not None and c.state in ("starting", "running")
                and (role is None or c.spec.role == role)]

    def _by_address(self, address: Any) -> Child | None:
        # ActorAddress is unhashable and its str() changes: compare with ==.
        return next((c for c in self.children if c.address is not None and c.address == address), None)

    # -- starting and stopping children ----------------------------------------------------
    def _start(self, child: Child) -> None:
        child.generation += 1
        if self.hosts(child.spec):
            child.address = self.host_actor(child.spec.actor, child.spec.name, child.generation)
        else:
            child.address = self.createActor(child.spec.actor)
        child.pid = None
        child.state = "starting"
        child.started_wall = time.time()
        child.started_mono = time.monotonic()
        child.ready_wall = None
        child.ping_sent = None
        child.detail = {}
        child.reason = ""
        path = f"{self.path}/{child.spec.name}" if self.path else child.spec.name
        config = {**child.spec.config, **self.runtime_config(child.spec)}
        self.send(child.address, Configure(child.spec.name, path, child.spec.role, config, self.site, child.restarts))
        if child.sticky_fault:
            self.send(child.address, InjectFault("", child.sticky_fault.removesuffix("-loop")))
        log.info("start child=%s role=%s incarnation=%d", path, child.spec.role, child.restarts)

    def _stop(self, child: Child, then: str) -> None:
        """Ask a child to exit; `then` is the state that decides what its exit means."""
        child.state = then
        if child.address is not None:
            self.send(child.address, ActorExitRequest())
        else:
            self._after_exit(child)

    def _child_report(self, msg: Any, sender: Any) -> None:
        child = self._by_address(sender)
        if child is None:
            return
        if isinstance(msg, Hello):
            child.pid = msg.pid
        elif isinstance(msg, Ready):
            child.pid, child.detail = msg.pid, msg.detail
            if child.state == "starting":
                child.state = "running"
                child.ready_wall = time.time()
        elif isinstance(msg, Pong):
            child.ping_sent = None
            child.detail = msg.detail
        elif isinstance(msg, Failed):
            child.reason = child.last_error = msg.error

    def _child_exited(self, address: Any) -> None:
        child = self._by_address(address)
        if child is None or self.stopping:
            return  # while we stop, thespian takes our children down with us
        child.address, child.pid = None, None
        self._after_exit(child)

    def _after_exit(self, child: Child) -> None:
        if child.state == "removing":
            self.children.remove(child)
            log.info("removed child=%s", child.spec.name)
        elif child.state == "restarting":
            self._start(child)
        elif not self._escalated:
            child.last_error = child.reason or "process exited unexpectedly (killed or crashed)"
            log.warning("child exited child=%s state=%s error=%s", child.spec.name, child.state, child.last_error)
            self._failed(child)

    def _failed(self, child: Child) -> None:
        now = time.monotonic()
        period = self.policy["period"]
        self._failures.append(now)
        while self._failures and now - self._failures[0] > period:
            self._failures.popleft()
        if len(self._failures) > self.policy["max_restarts"]:
            self._escalate(f"{len(self._failures)} restarts within {period:g} s "
                           f"(max {self.policy['max_restarts']}); last: {child.spec.name}: {child.last_error}")
            return
        strategy = self.policy["strategy"]
        index = self.children.index(child)
        if strategy == "one_for_all":
            group = [c for c in self.children if c is not child]
        elif strategy == "rest_for_one":
            group = self.children[index + 1:]
        else:
            group = []
        for sibling in group:
            if sibling.state in ("starting", "running", "killing"):
                sibling.restarts += 1
                self._stop(sibling, "restarting")
        while child.history and now - child.history[0] > period:
            child.history.popleft()
        k = len(child.history)
        delay = 0.0 if k == 0 else min(self.policy["backoff_initial"] * 2 ** (k - 1), self.policy["backoff_max"])
        child.history.append(now)
        child.restarts += 1
        if delay <= 0:
            self._start(child)
        else:
            child.state = "backoff"
            log.info("backoff child=%s delay=%.3fs", child.spec.name, delay)
            self.wakeupAfter(delay, Wakeup("restart", child.spec.name, child.generation))

    def _escalate(self, reason: str) -> None:
        self._escalated = True
        log.error("escalate supervisor=%s reason=%s", self.path or self.name, reason)
        if self.parent is not None:
            self.send(self.parent, Failed(self.name, f"escalated: {reason}"))
        self.send(self.myAddress, ActorExitRequest())  # thespian stops our children with us

    # -- heartbeat -------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        now = time.monotonic()
        self._ping_seq += 1
        for child in self.children:
            if child.state == "running":
                if child.ping_sent is None:
                    child.ping_sent = now
                    self.send(child.address, Ping(self._ping_seq))
                elif now - child.ping_sent > self.policy["heartbeat_timeout"]:
                    self._kill(child, f"hung: no heartbeat reply for {now - child.ping_sent:.2f} s")
            elif child.state == "starting" and now - child.started_mono > self.policy["startup_timeout"]:
                self._kill(child, f"hung: not ready {self.policy['startup_timeout']:g} s after start")

    def _kill(self, child: Child, reason: str) -> None:
        log.error("kill child=%s pid=%s reason=%s", child.spec.name, child.pid, reason)
        child.reason = child.last_error = reason
        child.state = "killing"
        if self.is_hosted(child.address):
            self.send(child.address, ActorExitRequest())  # it shares our process: never kill -9 it
        elif child.pid:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif child.address is not None:
            self.send(child.address, ActorExitRequest())

    # -- hot changes -----------------------------------------------------------------------
    def _apply_specs(self, specs: list[ChildSpec], site_changed: bool = False) -> dict:
        changes: dict = {"added": [], "removed": [], "restarted": [], "reconfigured": []}
        prefix = f"{self.path}/" if self.path else ""
        wanted = {s.name for s in specs}
        for child in list(self.children):
            if child.spec.name not in wanted:
                changes["removed"].append(prefix + child.spec.name)
                self._stop(child, "removing")
        ordered: list[Child] = []
        for spec in specs:
            child = self._by_name(spec.name)
            if child is None or child.state == "removing":
                child = Child(spec)
                ordered.append(child)
                changes["added"].append(prefix + spec.name)
                continue
            ordered.append(child)
            if child.spec == spec:
                if site_changed and spec.supervisor and child.state in ("starting", "running"):
                    self.send(child.address, Reconfigure(spec.config, self.site))
                continue
            old, child.spec = child.spec, spec
            if spec.supervisor and old.actor == spec.actor and old.role == spec.role \
                    and child.state in ("starting", "running"):
                self.send(child.address, Reconfigure(spec.config, self.site))
                changes["reconfigured"].append(prefix + spec.name)
            else:
                changes["restarted"].append(prefix + spec.name)
                if child.state in ("starting", "running", "killing"):
                    self._stop(child, "restarting")
        removing = [c for c in self.children if c.state == "removing"]
        self.children = ordered + removing
        for child in ordered:
            if child.state == "new":
                self._start(child)
        return changes

    def _reconfigure(self, msg: Reconfigure, sender: Any) -> None:
        site_changed = msg.site != self.site
        self.config, self.site = msg.config, msg.site
        changes = self._apply_specs(self.child_specs(), site_changed)
        log.info("reconfigured supervisor=%s changes=%s", self.path or self.name, changes)
        self.send(sender, Reconfigured(msg.request_id, changes))

    def reply_via_self(self, request_id: int, sender: Any, reply_to: Any) -> Any:
        """Where the answer to a request should go.  A request from the runner has no
        reply_to: an actor deep in the tree cannot reach the runner's external address, so
        the answer comes here and is relayed to the runner (on_message)."""
        if reply_to is not None:
            return reply_to
        self._reply_origins[request_id] = sender
        return self.myAddress

    # -- fault injection routing -----------------------------------------------------------
    def _route_fault(self, msg: InjectFault, sender: Any) -> None:
        reply_to = self.reply_via_self(msg.request_id, sender, msg.reply_to)
        head, _, rest = msg.target.partition("/")
        child = self._by_name(head)
        if child is None or child.address is None:
            self.send(reply_to, FaultAck(msg.request_id, False, f"no running actor {head!r} under "
                                                               f"{self.path or self.name or 'site'}"))
            return
        if rest:
            self.send(child.address, InjectFault(rest, msg.kind, msg.request_id, reply_to))
            return
        if not self.site["runtime"].get("allow_fault_injection"):
            self.send(reply_to, FaultAck(msg.request_id, False, "fault injection is disabled in [runtime]"))
            return
        if msg.kind == "raise-loop":
            child.sticky_fault = msg.kind
        self.send(child.address, InjectFault("", msg.kind.removesuffix("-loop"), msg.request_id, reply_to))
        self.send(reply_to, FaultAck(msg.request_id, True, f"{msg.kind} sent to pid {child.pid}"))

    # -- status --------------------------------------------------------------------------
    def node(self, child: Child) -> dict:
        prefix = f"{self.path}/" if self.path else ""
        alive = child.state in ("starting", "running", "killing")
        return {
            "name": child.spec.name,
            "path": prefix + child.spec.name,
            "role": child.spec.role,
            "pid": child.pid,
            "hosted": self.hosts(child.spec),
            "state": child.state,
            "restarts": child.restarts,
            "uptime_s": round(time.time() - child.started_wall, 3) if alive else None,
            "ready_at": child.ready_wall,
            "last_error": child.last_error,
            "detail": child.detail,
            "children": [] if child.spec.supervisor else None,
        }

    def _status_start(self, request_id: int, sender: Any) -> None:
        job = {"reply_to": sender, "request_id": request_id,
               "nodes": [self.node(c) for c in self.children], "waiting": {}}
        key = self._next_request
        self._next_request += 1
        for index, child in enumerate(self.children):
            if child.spec.supervisor and child.state == "running":
                sub = self._next_request
                self._next_request += 1
                job["waiting"][sub] = index
                self.send(child.address, StatusRequest(sub))
        self._status_jobs[key] = job
        if job["waiting"]:
            self.wakeupAfter(STATUS_TIMEOUT, Wakeup("status-timeout", key))
        else:
            self._status_finish(key)

    def _status_part(self, reply: StatusReply) -> None:
        for key, job in self._status_jobs.items():
            if reply.request_id in job["waiting"]:
                job["nodes"][job["waiting"].pop(reply.request_id)]["children"] = reply.children
                if not job["waiting"]:
                    self._status_finish(key)
                return

    def _status_finish(self, key: int) -> None:
        job = self._status_jobs.pop(key, None)
        if job is None:
            return
        for index in job["waiting"].values():
            job["nodes"][index]["last_error"] = job["nodes"][index]["last_error"] or "no status reply"
        self.send(job["reply_to"], StatusReply(job["request_id"], job["nodes"]))
