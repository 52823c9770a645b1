"""OTP-style supervision for thespian actors.

A `Supervisor` owns an ordered list of children (`ChildSpec`) and keeps them alive.  The
list order is the start order: a child may depend on the children before it.  What to do
about a failure or a stop is decided by the pure functions of
`relevent.actors.restart_policy` (strategies one_for_one, rest_for_one, one_for_all;
restart intensity and escalation; backoff; reverse start order for stops; the stop
timeout); this module carries the decisions out:

* a group restart (rest_for_one, one_for_all) stops the group's running children one at a
  time in reverse start order, then starts the whole group again in start order;
* a supervisor that escalates, or is sent `Shutdown`, stops all its children the same way
  and then exits.  ActorExitRequest instead makes thespian stop them all at once, with no
  timeout: it is what a leaf gets, and what a supervisor gets only as a last resort;
* a child asked to stop and not gone after STOP_TIMEOUT_S is SIGKILLed by its pid (from
  `Hello`); a supervisor child, which stops its own children first, gets as long as it
  keeps answering heartbeats;
* heartbeat: every ``heartbeat_interval`` each child gets a `Ping` (a round to many
  children spread over several ticks, `restart_policy.heartbeat_slices`); a child that has
  not answered for ``heartbeat_timeout`` (e.g. blocked in C) is SIGKILLed and restarted;
* configuration is re-sent on every restart (`Configure`), and `Reconfigure` applies a
  new child list as a diff: only added, removed or changed children are touched;
* status (`StatusRequest`) is this supervisor's view of its children, and each child
  supervisor's of its own: asked of each at the request, or, above STATUS_FANOUT_MAX of
  them, pushed by each with its heartbeat reply.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from thespian.actors import ActorExitRequest, ActorSystemConventionUpdate, ChildActorExited

from relevent.actors.base import HOST_CAPABILITY, ReleventActor
from relevent.actors.hosted import Host
from relevent.messages import (
    Configure, FaultAck, Failed, ForecastReply, Hello, InjectFault, Ping, Pong, Ready, Reconfigure, Reconfigured,
    Shutdown, StatusReply, StatusRequest, Wakeup,
)
from relevent.actors.restart_policy import (
    STOP_TIMEOUT_S, Escalate, History, Restart, RestartPolicy, heartbeat_slices, merge, on_failure, stop_order,
    stop_overdue,
)

log = logging.getLogger("relevent.supervisor")

STATUS_TIMEOUT = 1.0

# Child supervisors (a site's DERs) a status request is sent on to.  With more, each pushes its
# children's status with its heartbeat reply (Ping.status) and a status request is answered
# from those, up to a heartbeat_interval old: one request to each of 1,000 DERs, with the
# heartbeat round's Pings, overran the ~950 transmits thespian queues before it stops
# receiving, and the observer and `relevent status` ask every few seconds (bench/README.md,
# "Scale").  At or below it, a request sees every child as it is now.
STATUS_FANOUT_MAX = 200

# Asked to exit; the state says what the exit means: stopping = for a group restart or for
# the supervisor's own stop (the child waits in "stopped"), restarting = for a changed
# configuration (started again at once), removing = gone from the topology (forgotten).
STOPPING = ("stopping", "restarting", "removing")

# Why a child was restarted: killed = its process ended without reporting an error (kill -9,
# a crash in C, os._exit, SIGTERM), crashed = it reported an exception (Failed), hung = a
# heartbeat or its start-up went unanswered, escalated = a child supervisor gave up,
# sibling = it was restarted with a failed sibling (rest_for_one, one_for_all).
RESTART_CAUSES = ("killed", "crashed", "hung", "escalated", "sibling")




@dataclass(frozen=True)
class ChildSpec:
    name: str
    role: str
    actor: str          # class path, e.g. "relevent.actors.der.DerActor"
    config: dict
    supervisor: bool = False
    # The convention member it runs on ("": this supervisor's own ActorSystem): created with
    # targetActorRequirements {"relevent host": host} (ReleventActor.actorSystemCapabilityCheck,
    # docs/deploy.md "Placing DERs on member hosts").
    host: str = ""


def requirements(spec: ChildSpec) -> dict | None:
    return {HOST_CAPABILITY: spec.host} if spec.host else None


@dataclass
class Child:
    spec: ChildSpec
    address: Any = None
    pid: int | None = None
    # new | starting | running | backoff (waits for its restart, alone or with its group) |
    # one of STOPPING | stopped (exited, waits for its group) | killing (as hung: a failure)
    state: str = "new"
    restarts: int = 0
    generation: int = 0
    started_wall: float = 0.0
    started_mono: float = 0.0
    ready_wall: float | None = None
    ping_sent: float | None = None   # monotonic time of the oldest unanswered Ping
    last_error: str = ""
    reason: str = ""    # why the current incarnation is failing (Failed or heartbeat kill)
    stop_asked: float | None = None  # monotonic time it was asked to exit (STOPPING states)
    sticky_fault: str = ""
    detail: dict = field(default_factory=dict)
    nodes: list | None = None  # a child supervisor's children, from its last Pong (STATUS_FANOUT_MAX)
    nodes_at: float = 0.0      # monotonic time of that Pong
    # Why the current incarnation failed (killed, crashed, hung, escalated; RESTART_CAUSES),
    # and the restarts so far by cause (their sum is `restarts`): metrics (docs/observability.md).
    cause: str = ""
    restart_causes: dict = field(default_factory=dict)


class Supervisor(Host, ReleventActor):
    level = "site"  # which [supervision.<level>] table applies

    def __init__(self) -> None:
        super().__init__()
        self.init_host()
        self.children: list[Child] = []
        self._index_key: tuple = ()              # _named's index, and the list it was built from
        self._index: dict[str, list[Child]] = {}
        self._history = History()            # failures and restarts, for restart_policy
        self._group: Restart | None = None   # a group restart in progress
        self._group_key = 0                  # the group a Wakeup("group") must name to start it
        self._closing: str | None = None     # why we stop every child before we exit
        self._exit_sent = False
        self._ping_seq = 0
        self._status_jobs: dict[int, dict] = {}
        self._next_request = 1
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

    def placed_here(self, spec: ChildSpec) -> bool:
        """Whether a placed child runs on this supervisor's host (a DER's controllers, on the
        DER's member): then its pid is one of this host's."""
        return False

    def remote(self, spec: ChildSpec) -> bool:
        """Whether a child runs on another host than this supervisor: its pid is not ours."""
        return bool(spec.host) and not self.placed_here(spec)

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

    @property
    def tick_interval(self) -> float:
        """Seconds between heartbeat ticks: a round of Pings spreads over several of them
        with many children (restart_policy.heartbeat_slices)."""
        return self.policy["heartbeat_interval"] / heartbeat_slices(len(self.children))

    @property
    def restart_policy(self) -> RestartPolicy:
        return RestartPolicy.from_settings(self.policy)

    def on_configure(self) -> None:
        specs = self.child_specs()
        if any(self.remote(spec) for spec in specs) and self.multiprocess:
            # Members joining and leaving the convention (ActorSystemConventionUpdate): see
            # _member_update.
            self.notifyOnSystemRegistrationChanges(True)
        self._apply_specs(specs)
        self.wakeupAfter(self.tick_interval, Wakeup("tick"))

    # -- message handling ----------------------------------------------------------------
    def on_message(self, message: Any, sender: Any) -> None:
        if isinstance(message, ChildActorExited):
            self._child_exited(message.childAddress)
        elif isinstance(message, ActorSystemConventionUpdate):
            self._member_update((message.remoteCapabilities or {}).get(HOST_CAPABILITY, ""), message.remoteAdded)
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
        elif isinstance(message, Shutdown):
            self._close("asked to stop")
        else:
            super().on_message(message, sender)

    def on_wakeup(self, payload: Any) -> None:
        if not isinstance(payload, Wakeup):
            return
        if payload.what == "tick":
            # Also while closing: the stop timeout is checked here, and the site supervisor's
            # heartbeat to the runner goes with it (SiteSupervisor.on_wakeup).
            self._heartbeat()
            self.wakeupAfter(self.tick_interval, Wakeup("tick"))
        elif self._closing is not None:
            return
        elif payload.what == "restart":
            child = self._by_name(payload.key)
            in_group = self._group is not None and payload.key in self._group.start
            if child and child.state == "backoff" and child.generation == payload.generation and not in_group:
                self._start(child)
        elif payload.what == "group":
            if self._group is not None and payload.key == self._group_key:
                self._start_group()
        elif payload.what == "status-timeout":
            self._status_finish(payload.key)

    def _named(self, name: str) -> list[Child]:
        """The children with this name (one, or a removing one and its successor), from an
        index rebuilt whenever the list of children changed.  Why an index: every child's
        Pong each heartbeat and every write to a DER looks a child up: a scan of the list,
        comparing ActorAddresses, made each heartbeat round quadratic in the number of
        children (at 1,000 DERs, longer than the heartbeat; bench/README.md, "Scale")."""
        key = tuple(map(id, self.children))
        if key != self._index_key:
            self._index_key, self._index = key, {}
            for c in self.children:
                self._index.setdefault(c.spec.name, []).append(c)
        return self._index.get(name, [])

    def _by_name(self, name: str) -> Child | None:
        return next(iter(self._named(name)), None)

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
            child.address = self.createActor(child.spec.actor, targetActorRequirements=requirements(child.spec))
        child.pid, child.stop_asked = None, None
        child.state = "starting"
        child.started_wall = time.time()
        child.started_mono = time.monotonic()
        child.ready_wall = None
        child.ping_sent = None
        child.detail, child.nodes = {}, None
        child.reason = child.cause = ""
        path = f"{self.path}/{child.spec.name}" if self.path else child.spec.name
        config = {**child.spec.config, **self.runtime_config(child.spec)}
        self.send(child.address, Configure(child.spec.name, path, child.spec.role, config, self.site, child.restarts))
        if child.sticky_fault:
            self.send(child.address, InjectFault("", child.sticky_fault.removesuffix("-loop")))
        log.info("start child=%s role=%s incarnation=%d", path, child.spec.role, child.restarts)

    def _stop(self, child: Child, then: str) -> None:
        """Ask a child to exit; `then` (one of STOPPING) is the state that decides what its
        exit means.  A supervisor child gets `Shutdown`, to stop its own children in order."""
        child.state = then
        if child.address is None:
            self._after_exit(child)
            return
        child.stop_asked = time.monotonic()
        self.send(child.address, Shutdown() if child.spec.supervisor else ActorExitRequest())

    def _child_report(self, msg: Any, sender: Any) -> None:
        # By its name first (every report carries it), then the incarnation by its address.
        child = next((c for c in self._named(msg.name) if c.address is not None and c.address == sender), None)
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
            child.detail, child.nodes, child.nodes_at = msg.detail, msg.children, time.monotonic()
        elif isinstance(msg, Failed):
            child.reason = child.last_error = msg.error
            child.cause = "escalated" if msg.error.startswith("escalated:") else "crashed"

    def _child_exited(self, address: Any) -> None:
        child = self._by_address(address)
        if child is None or self.stopping:
            return  # while thespian stops us (ActorExitRequest), it takes our children down with us
        child.address, child.pid = None, None
        if child.stop_asked is not None:
            log.info("stopped child=%s in %.3f s", child.spec.name, time.monotonic() - child.stop_asked)
            child.stop_asked = None
        self._after_exit(child)
        self._advance()

    def _after_exit(self, child: Child) -> None:
        in_group = self._group is not None and child.spec.name in self._group.start
        if child.state == "removing":
            self.children.remove(child)
            self._history = self._history.forget(child.spec.name)
            log.info("removed child=%s", child.spec.name)
        elif self._closing is not None or child.state == "stopping" or (child.state == "restarting" and in_group):
            child.state = "stopped"
        elif child.state == "restarting":
            self._start(child)
        elif child.state == "starting" and child.pid is None and self.remote(child.spec):
            # Placed on a member and gone before its Hello: thespian found no member with that
            # host (not started yet, or dead).  Not a failure of the child: tried again every
            # backoff_max without counting towards the restart intensity, which would otherwise
            # escalate and restart the whole site while a member is away (docs/deploy.md).
            child.state = "backoff"
            child.last_error = f"no member host {child.spec.host!r} (relevent member --host {child.spec.host})"
            self.wakeupAfter(self.policy["backoff_max"], Wakeup("restart", child.spec.name, child.generation))
        else:
            child.last_error = child.reason or "process exited unexpectedly (killed or crashed)"
            child.cause = child.cause or "killed"
            log.warning("child exited child=%s state=%s error=%s", child.spec.name, child.state, child.last_error)
            self._failed(child)

    def _advance(self) -> None:
        """Take the next step of a shutdown or a group restart, if one is in progress."""
        if self._closing is not None:
            self._advance_close()
        elif self._group is not None:
            self._advance_group()

    def _names(self) -> list[str]:
        """The children's names in start order, without those being removed."""
        return [c.spec.name for c in self.children if c.state != "removing"]

    def _stop_next(self, members: list[Child]) -> bool:
        """Stop the next of `members` still alive in reverse start order, one at a time: none
        while one of them is already on its way out.  False once none of them is alive."""
        alive = [c for c in members if c.address is not None]
        if not alive:
            return False
        if not any(c.state in STOPPING or c.state == "killing" for c in alive):
            by_name = {c.spec.name: c for c in alive}
            first = stop_order([c.spec.name for c in self.children], by_name)[0]
            self._stop(by_name[first], "stopping")
        return True

    # -- failures and group restarts ---------------------------------------------------------
    def _failed(self, child: Child) -> None:
        """Carry out restart_policy's decision; a group restart goes on in _advance_group,
        which the caller (_child_exited) runs next."""
        alive = {c.spec.name for c in self.children if c.address is not None}
        decision, self._history = on_failure(self.restart_policy, self._history, self._names(), child.spec.name,
                                             time.monotonic(), alive, child.last_error)
        if isinstance(decision, Escalate):
            self._escalate(decision.reason)
            return
        if self._group is not None:
            self._group = merge(self._group, decision, self._names())
        elif decision.stop or len(decision.start) > 1:
            self._group = decision
        else:
            self._restart_alone(child, decision.delay_s)
            return
        self._group_key += 1  # a new or bigger group: a Wakeup("group") for the old one is void
        log.info("group restart supervisor=%s failed=%s stop=%s then start=%s delay=%.3fs",
                 self.path or self.name, decision.failed, ",".join(self._group.stop),
                 ",".join(self._group.start), self._group.delay_s)

    @staticmethod
    def _count_restart(child: Child) -> None:
        child.restarts += 1
        cause = child.cause or "sibling"
        child.restart_causes[cause] = child.restart_causes.get(cause, 0) + 1

    def _restart_alone(self, child: Child, delay: float) -> None:
        self._count_restart(child)
        if delay <= 0:
            self._start(child)
        else:
            child.state = "backoff"
            log.info("backoff child=%s delay=%.3fs", child.spec.name, delay)
            self.wakeupAfter(delay, Wakeup("restart", child.spec.name, child.generation))

    def _advance_group(self) -> None:
        group = self._group
        members = [c for c in self.children if c.spec.name in group.start and c.state != "removing"]
        if self._stop_next(members):
            return
        for child in members:
            child.state = "backoff"
        if group.delay_s <= 0:
            self._start_group()
        else:
            log.info("backoff group=%s delay=%.3fs", ",".join(group.start), group.delay_s)
            self.wakeupAfter(group.delay_s, Wakeup("group", self._group_key))

    def _start_group(self) -> None:
        group, self._group = self._group, None
        for child in self.children:  # in start order
            if child.spec.name in group.start and child.state == "backoff":
                self._count_restart(child)
                self._start(child)

    # -- stopping ourselves ----------------------------------------------------------------
    def _escalate(self, reason: str) -> None:
        log.error("escalate supervisor=%s reason=%s", self.path or self.name, reason)
        if self.parent is not None:
            self.send(self.parent, Failed(self.name, f"escalated: {reason}"))
        self._close(f"escalated: {reason}")

    def _close(self, reason: str) -> None:
        """Stop every child in reverse start order, then exit."""
        if self._closing is not None:
            return
        log.info("stopping supervisor=%s children=%d reason=%s", self.path or self.name,
                 sum(1 for c in self.children if c.address is not None), reason)
        self._closing = reason
        self._group = None
        for child in self.children:
            if child.address is None:
                child.state = "stopped"
        self._advance_close()

    def _advance_close(self) -> None:
        if self._stop_next(self.children) or self._exit_sent:
            return
        self._exit_sent = True
        self.send(self.myAddress, ActorExitRequest())  # no child left: thespian exits at once

    # -- heartbeat and stop timeout --------------------------------------------------------
    def _member_update(self, host: str, added: bool) -> None:
        """A member host joined the convention (or registered again after a restart): what
        is placed there and waits (in backoff, or created while the member was away and never
        answered) is created now, instead of after backoff_max or placement_timeout.  A
        member leaving is seen by the heartbeats of what runs there (a dead member's
        registration stays until thespian's expiry), so nothing is done here then."""
        if not host or not added:
            return
        waiting = [c for c in self.children if c.spec.host == host and self.remote(c.spec)
                   and (c.state == "backoff" or (c.state == "starting" and c.pid is None))]
        log.info("member host=%s joined: creating %s there", host, ", ".join(c.spec.name for c in waiting) or "nothing")
        for child in waiting:
            if child.state == "starting":
                self._sigkill(child)     # gone (to backoff, not a failure): then created again
            if child.state == "backoff" and (self._group is None or child.spec.name not in self._group.start):
                self._start(child)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        self._ping_seq += 1
        timeout = self.policy["heartbeat_timeout"]
        push_status = self._status_pushed()
        slices = heartbeat_slices(len(self.children))
        for index, child in enumerate(list(self.children)):   # a copy: a child on another host is taken as gone at its kill
            if child.address is None:
                continue
            stopping = child.state in STOPPING
            if child.state == "running" or (stopping and child.spec.supervisor):
                if child.ping_sent is None:
                    if index % slices == self._ping_seq % slices:   # else at another tick of the round
                        child.ping_sent = now
                        self.send(child.address, Ping(self._ping_seq, push_status and child.spec.supervisor))
                elif not stopping and now - child.ping_sent > timeout:
                    self._kill(child, f"hung: no heartbeat reply for {now - child.ping_sent:.2f} s")
            elif child.state == "starting" and child.pid is None and self.remote(child.spec) \
                    and now - child.started_mono > self.policy["placement_timeout"]:
                # Its creation went to a member that is gone (thespian forwards it to the
                # member's last registration and never answers): given up, tried again after
                # backoff_max without counting as a failure (_after_exit), so a member that
                # comes back gets its actors within seconds, not after startup_timeout.
                log.warning("child=%s on member host %r: no Hello %.1f s after its creation; trying again",
                            child.spec.name, child.spec.host, now - child.started_mono)
                self._sigkill(child)
            elif child.state == "starting" and now - child.started_mono > self.policy["startup_timeout"]:
                self._kill(child, f"hung: not ready {self.policy['startup_timeout']:g} s after start")
            if stopping and child.stop_asked is not None:
                silent = 0.0 if child.ping_sent is None else now - child.ping_sent
                if stop_overdue(now - child.stop_asked, silent, child.spec.supervisor, timeout):
                    child.stop_asked = None  # one kill
                    reason = f"did not stop within {STOP_TIMEOUT_S:g} s of the request: killed"
                    log.error("kill child=%s pid=%s reason=%s", child.spec.name, child.pid, reason)
                    child.reason = child.last_error = reason
                    self._sigkill(child)  # the state stays: it still says what the exit means

    def _kill(self, child: Child, reason: str) -> None:
        log.error("kill child=%s pid=%s reason=%s", child.spec.name, child.pid, reason)
        child.reason = child.last_error = reason
        child.cause = "hung"
        child.state = "killing"
        self._sigkill(child)

    def _sigkill(self, child: Child) -> None:
        if self.is_hosted(child.address) or child.pid == os.getpid():
            # It shares our process (hosted, or simpleSystemBase): never kill -9 it.
            self.send(child.address, ActorExitRequest())
        elif self.remote(child.spec):
            # On another host: its pid is not one of ours to kill.  Ask it to exit and take it
            # as gone now: thespian reports no exit of an actor whose member died (or whose
            # creation found no member), so waiting for ChildActorExited could wait for ever.
            # A hung one left behind dies with its member's admin (harden_actor_process).
            address = child.address
            if address is not None:
                self.send(address, ActorExitRequest())
                self._child_exited(address)
        elif child.pid:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif child.address is not None:
            log.error("child=%s has not said Hello: no pid to kill", child.spec.name)
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
            if spec.supervisor and old.actor == spec.actor and old.role == spec.role and old.host == spec.host \
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
        self._advance()  # a removed child may have been the last one a group was waiting for
        return changes

    def _reconfigure(self, msg: Reconfigure, sender: Any) -> None:
        if self._closing is not None:
            self.send(sender, Reconfigured(msg.request_id, {"added": [], "removed": [], "restarted": [],
                                                            "reconfigured": []}))
            return  # stopping: nothing to start any more
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
        alive = child.address is not None
        pushed = alive and child.nodes is not None and (child.state == "running" or child.state in STOPPING)
        # A child supervisor in our process (a DER in a group): its children as they are now.
        live = self.hosted_actor(child.address) if child.spec.supervisor else None
        node = {
            "name": child.spec.name,
            "path": prefix + child.spec.name,
            "role": child.spec.role,
            "pid": child.pid,
            "hosted": self.hosts(child.spec),
            **({"host": child.spec.host} if child.spec.host else {}),
            "state": child.state,
            "restarts": child.restarts,
            "restart_causes": dict(child.restart_causes),
            "uptime_s": round(time.time() - child.started_wall, 3) if alive else None,
            "ready_at": child.ready_wall,
            "last_error": child.last_error,
            "detail": child.detail,
            "children": (live.status_nodes() if live is not None else child.nodes if pushed else [])
                        if child.spec.supervisor else None,
        }
        if pushed and live is None:   # how old (STATUS_FANOUT_MAX): a DER slow to answer shows what it last sent
            node["children_age_s"] = round(time.monotonic() - child.nodes_at, 3)
        return node

    def status_nodes(self) -> list:
        """Sent with a Pong when the parent asks (Ping.status); a child supervisor of its own
        shows the children it last pushed, a hosted one (a group's DER) its children now."""
        return [self.node(c) for c in self.children]

    def _status_pushed(self) -> bool:
        """Whether child supervisors push their status with their Pongs (STATUS_FANOUT_MAX);
        hosted ones (a group's DERs) are read in-process, never asked (node)."""
        return sum(1 for c in self.children if c.spec.supervisor and not self.is_hosted(c.address)) \
            > STATUS_FANOUT_MAX

    def _status_start(self, request_id: int, sender: Any) -> None:
        job = {"reply_to": sender, "request_id": request_id,
               "nodes": [self.node(c) for c in self.children], "waiting": {}}
        key = self._next_request
        self._next_request += 1
        fan_out = not self._status_pushed()   # else node() has them from the last Pongs
        for index, child in enumerate(self.children):
            if fan_out and child.spec.supervisor and child.state == "running" and not self.is_hosted(child.address):
                sub = self._next_request
                self._next_request += 1
                job["waiting"][sub] = index
                job["nodes"][index]["children"] = []   # its reply's, not an older Pong's
                job["nodes"][index].pop("children_age_s", None)
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
