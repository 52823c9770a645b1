"""The IEC 61850 MMS WAN endpoint: serves the site's 90-10 model and turns client writes
and operates into requests to the controller actors that own the schedules.

Threads:
* libiec61850's server thread calls our handlers, holding its data model lock.  A write
  is decided at once with a *mirror* of the schedule (the last state its controller
  published: locks, "StrTm in the future") and posted to the actor.  An operate
  (EnaReq/DsaReq) is decided by the controller itself: the check handler posts it and
  waits for the answer, which comes only once the change is durable; it then writes the
  new state into the model (it holds the lock) and answers.  So a client reads Ready
  right after a positive response, and never gets one for an enable that is not saved.
* the actor thread sends posts to the controllers, one request in flight per controller,
  and hands answers and states over; it never waits for the model lock (it must stay
  free to receive an operate's answer).
* a writer thread turns published states into model updates.  States carry a version, so
  an older state never overwrites a newer one, whichever thread applies it.  It also
  collects garbage, between switches: automatic collection is off in this process.
* a switcher thread in C (relevent/iec61850/switcher.c) does every write into the model
  outside libiec61850's handlers: the updates the writer pushes, at once and in order, and,
  at its instant, the state each controller announced for its next boundary
  (`ControllerState.then`), its updates computed here beforehand.  So no Python thread
  holds the model lock, which clients' reads need (one holding it can wait for the GIL or
  a core: reads waited 40-136 ms at 100 DERs), and a switch is in the model on time even
  when a hundred controllers switch in the same second, their states queue here, and every
  Python thread waits for a core.  An announced switch is dropped if anything newer
  arrives first or a client writes to that controller; the controller's own state at the
  boundary confirms it (or corrects it).  A follower thread then records what it applied.
* libiec61850's server thread answers reads without the GIL, at the switch priority for
  200 ms after each switch, else at nice `serve_nice` (docs/mms.md).

What is applied, staged and pushed is recorded under `book` (lock order: the model lock,
`book`, `lock`).  The record is of the model as it will be once the switcher has written
everything pushed; a handler, which holds the model lock, first has the switcher write
what is still pushed (`drain`), then writes itself.

After a restart the endpoint asks every controller for its state (SnapshotRequest): the
model is rebuilt from the actors, never from the SCL defaults.
"""
from __future__ import annotations

import gc
import itertools
import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relevent.actors.messages import (
    ControllerState, Measurement, OperateResult, ScheduleOperate, ScheduleWrite, ScheduleWrites, SnapshotRequest,
    WanContact, Wakeup,
)
from relevent.iec61850 import lib as L
from relevent.iec61850.server import MmsServer, MmsServerError
from relevent.iec61850.switcher import Switcher
from relevent.protocols.mms.model_map import ScheduleRefs, controller_updates, measurement_updates, schedule_updates
from relevent.runtime.bridge import ThreadBridge
from relevent.scheduling.schedule import Refusal, Schedule, from_snapshot
from relevent.scl.cfg import to_cfg
from relevent.scl.generate import default_ld_inst
from relevent.scl.parser import parse_scl
from relevent.scl.site_model import endpoint_scl
from relevent.clock import now_ms

log = logging.getLogger("relevent.mms")

OPERATE_TIMEOUT_MS = 5000
CONTACT_TICK = 1.0           # s between WanContact reports while clients are connected
FIRST_STATES_TIMEOUT = 10.0  # s: serve anyway if a controller has not sent its state by then
SWITCH_INTERVAL = 0.0005     # s, this process's GIL switch interval
SWITCH_NICE = -20            # priority around a switch (see switcher.c)
SERVE_NICE = 0               # libiec61850's server thread outside switches (0: as started)
SETTLE_BATCH = 10            # applied switches recorded per turn of `book` (a handler may wait for it)
GC_EVERY = 1.0               # s between the endpoint's own garbage collections (generation 1)
GC_FULL_EVERY = 60.0         # s between full ones
GC_CLEAR_MS = 200            # ... never this close to a switch
GC_AT_LATEST = 10.0          # s: collect anyway if it is never quiet that long
GC_TICK = 0.2                # s: the writer looks at least this often
READ_TAIL_MS = 200           # libiec61850's server thread keeps the switch priority this long after
BOOST_LEAD_MS = 50           # how long before a switch the priority goes up
SWITCHES_KEPT = 32           # recent switches shown in the status (timing)
LISTENING = "listening"      # posted by the writer thread once the server listens
REFUSAL_TO_WRITE_ERROR = {Refusal.ACCESS_DENIED: L.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED,
                          Refusal.VALUE_INVALID: L.DATA_ACCESS_ERROR_OBJECT_VALUE_INVALID}



class MmsEndpoint:
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor = actor
        self.config = config
        self.bridge = ThreadBridge()
        self.server: MmsServer | None = None
        self.lock = threading.Lock()            # mirrors, pending writes, operate waiters: shared with handlers
        self.mirrors: dict[tuple, Schedule] = {}
        self.applied: dict[tuple, dict] = {}    # per schedule: {"status", "settings"} in the model
        self.applied_output: dict[tuple, tuple] = {}
        self.applied_version: dict[tuple, tuple] = {}  # (der, kind) -> version of the state in the model
        self.waiting: dict[int, dict] = {}      # operate request id -> {"event", "result"}
        self.request_ids = itertools.count(1)
        self.write_seqs = itertools.count(1)
        # Writes accepted but not yet in a state from their controller: (der, kind, schedule,
        # attribute ref) -> (seq, field, index, value).  A state that does not include them
        # must not put the old values back into the model or the mirror.
        self.pending: dict[tuple, tuple] = {}
        self.states: queue.SimpleQueue = queue.SimpleQueue()
        self.controllers: dict[tuple, Any] = {}  # (der, kind) -> controller address (actor thread only)
        self.incarnations: dict[tuple, int] = {}  # (der, kind) -> its stamp (ControllerState.version[0])
        # Per controller, at most one request in flight (thespian does not keep the order of
        # messages sent in quick succession: an operate could overtake the writes before it).
        self.outbox: dict[tuple, list] = {}      # (der, kind) -> requests not sent yet
        self.in_flight: dict[tuple, Any] = {}    # (der, kind) -> request sent, not acknowledged
        self.writer: threading.Thread | None = None
        # What the model holds or will hold once the switcher has written what is pushed
        # (applied*, mirrors' base), and the announced next states: (der, kind) -> its _Plan,
        # armed in the C switcher under a serial number of its own.
        self.book = threading.Lock()
        self.staged: dict[tuple, _Plan] = {}
        self.switcher: Switcher | None = None
        self.serials = itertools.count(1)
        self.switch_keys: dict[int, tuple] = {}  # serial of a staged switch -> (der, kind)
        self.unsettled: dict[int, Any] = {}      # serial -> applied by the switcher, not recorded yet
        self.last_switch_ms = 0
        self._gc_last = self._gc_full = 0.0
        self.lds: dict[str, str] = {}           # DER name -> logical device inst
        self.stats = {"writes": 0, "operates": 0, "refused": 0, "switched_on_time": 0, "gc_collections": 0}
        # WAN contact, for the site's "no telecom" schedules: clients connected now, and the
        # last request (set on libiec61850's thread; read by the actor's 1 s contact tick).
        self.clients = 0
        self.last_request = 0
        self._contact_sent = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        ders = cfg["ders"]
        work = Path(self.actor.site["state_dir"]) / "mms" / cfg["name"]
        work.mkdir(parents=True, exist_ok=True)
        scl_path = work / "served.cid"
        scl_path.write_bytes(endpoint_scl(cfg, ders, cfg.get("site", "site")))
        model = parse_scl(scl_path)
        ied = model.ied()
        self.server = MmsServer(to_cfg(model, ied.name), ied.name, str(work))
        # Every libiec61850 call releases the GIL; with the default 5 ms switch interval a
        # thread getting it back waits behind a busy actor thread (iec61850-binding.md).
        sys.setswitchinterval(SWITCH_INTERVAL)
        for der in ders:
            ld = default_ld_inst(der, len(ders))
            if ied.ld(ld) is None:
                raise ValueError(f"{cfg.get('scl') or 'the model'} has no logical device {ld} for DER {der['name']}")
            self.lds[der["name"]] = ld
            for kind in der["functions"]:
                names = [f"FSCH{n:02d}" for n in range(1, der["schedules"] + 1)] + ["Res_FSCH01"]
                for name in names:
                    self._install(ScheduleRefs(ied.name, ld, der["name"], kind, name))
        self.switcher = Switcher(self.server, cfg.get("switch_nice", SWITCH_NICE), BOOST_LEAD_MS,
                                 self._switched, name=f"mms-switcher-{cfg['name']}")
        # The model's bookkeeping (mirrors, ~100 handlers per schedule) lives as long as the
        # endpoint: out of the collector's sight, a full collection does not stop every Python
        # thread for 57-83 ms on a 100- or 10-DER model (bench/gc_bench.py).
        gc.collect()
        gc.freeze()
        # And the collector runs only when this endpoint says so, between switches (see
        # _collect_garbage_if_quiet): an automatic one in a handler, which holds the model
        # lock, keeps clients' reads waiting (a generation-1 collection took 52 ms at 100 DERs).
        gc.disable()
        self._gc_last = self._gc_full = time.monotonic()
        # Listen only once every controller's state is in the model: a client must never read
        # the SCL's placeholders (SchdSt 0) as the state of a schedule.  Ready comes then too.
        self.awaiting = {(der["name"], kind) for der in ders for kind in der["functions"]}
        self.actor.defer_ready()
        self.writer = threading.Thread(target=self._write_states, name=f"mms-writer-{cfg['name']}", daemon=True)
        self.writer.start()
        self.actor.send(self.actor.parent, SnapshotRequest(cfg["name"], self.actor.myAddress))
        self.server.on_connection(self._connection)
        self.actor.wakeupAfter(CONTACT_TICK, Wakeup("contact"))

    def _connection(self, connected: bool) -> None:
        """libiec61850's thread: a client association opened or closed."""
        with self.lock:
            self.clients = max(0, self.clients + (1 if connected else -1))
        self.last_request = now_ms()
        log.info("mms endpoint=%s client %s (clients: %d)", self.config["name"],
                 "connected" if connected else "disconnected", self.clients)

    def on_wakeup(self, payload: Any) -> None:
        if isinstance(payload, Wakeup) and payload.what == "contact":
            contact = now_ms() if self.clients > 0 else self.last_request
            if contact > self._contact_sent:
                self._contact_sent = contact
                self.actor.send(self.actor.parent, WanContact(contact, self.config["name"]))
            self.actor.wakeupAfter(CONTACT_TICK, Wakeup("contact"))

    def _listen(self) -> None:
        """Writer thread: start the server, then tell the actor thread (which reports Ready)."""
        cfg = self.config
        if self.awaiting:
            log.warning("mms endpoint=%s serving without the state of %s after %g s", cfg["name"],
                        sorted(self.awaiting), FIRST_STATES_TIMEOUT)
        threads_before = set(os.listdir("/proc/self/task"))
        self.server.start(cfg.get("address", "127.0.0.1"), cfg["port"])
        serving = [int(t) for t in set(os.listdir("/proc/self/task")) - threads_before]
        self._serve_at_priority(serving)
        self.switcher.serve(serving, READ_TAIL_MS)
        log.info("mms endpoint=%s serving ied=%s lds=%s on %s:%s", cfg["name"], self.server.ied_name,
                 ",".join(self.lds.values()), cfg.get("address"), cfg["port"])
        self.bridge.post(LISTENING)

    def _serve_at_priority(self, tids: list[int]) -> None:
        """libiec61850's server thread (started just now, its connections' threads inherit
        from it) runs at nice `serve_nice`: reads are answered from C, without the GIL, and a
        client reading a switch must not wait behind every process waking at a boundary."""
        nice = self.config.get("serve_nice", SERVE_NICE)
        if nice >= 0:  # as started
            return
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except OSError as exc:  # no CAP_SYS_NICE: served at normal priority
                log.warning("mms endpoint=%s serving at normal priority (cannot set nice %d: %s)",
                            self.config["name"], nice, exc)
                return

    def stop(self) -> None:
        if self.switcher is not None:
            self.switcher.close()
        if self.writer is not None and self.writer.is_alive():
            self.states.put(None)
            self.writer.join(timeout=2)
            self.writer = None
        if self.server is not None:
            self.server.close()
            self.server = None
        self.bridge.close()

    def fds(self) -> list[int]:
        return [self.bridge.fileno()]

    def detail(self) -> dict:
        return {"serving": f"{self.config.get('address')}:{self.config['port']}",
                "switch_priority": self.switcher is not None and self.switcher.boosts, **self.stats}

    # -- handler installation ---------------------------------------------------------------------
    def _install(self, refs: ScheduleRefs) -> None:
        srv, key = self.server, refs.key
        int_fields = ("NumEntr", "SchdIntv", "SchdPrio")
        for f in int_fields:
            ref = refs.attr(f"{f}.setVal")
            srv.on_write(ref, self._write_handler(refs, ref, f, 0, "int"))
        ref = refs.attr("SchdReuse.setVal")
        srv.on_write(ref, self._write_handler(refs, ref, "SchdReuse", 0, "bool"))
        prefix, kind = ("ValSPG", "bool") if refs.kind == "OnOff" else ("ValASG", "float")
        n = 1
        while srv.has(refs.attr(f"{prefix}{n:03d}")):
            if kind == "bool":
                ref = refs.attr(f"{prefix}{n:03d}.setVal")
                srv.on_write(ref, self._write_handler(refs, ref, "Val", n, "bool"))
            else:
                handler = self._write_handler(refs, refs.attr(f"{prefix}{n:03d}.setMag.f"), "Val", n, "float")
                srv.on_write(refs.attr(f"{prefix}{n:03d}.setMag"), handler, complex_attribute=True)
            n += 1
        n = 1
        while srv.has(refs.attr(f"StrTm{n:02d}.setTm")):
            ref = refs.attr(f"StrTm{n:02d}.setTm")
            srv.on_write(ref, self._write_handler(refs, ref, "StrTm", n, "time"))
            n += 1
        for op, do in (("enable", "EnaReq"), ("disable", "DsaReq")):
            srv.on_control(refs.attr(do), self._check_handler(refs, op, do), self._control_handler(refs, op, do))
        self.mirrors.setdefault(key, Schedule(refs.name, boolean=refs.kind == "OnOff",
                                              periodic=refs.reserve, reserve=refs.reserve))

    # -- handlers (libiec61850's thread) ----------------------------------------------------------
    def _decode(self, value: int, kind: str) -> Any:
        srv = self.server
        if kind == "float" and srv.lib.MmsValue_getType(value) == L.MMS_STRUCTURE:
            value = srv.element(value, 0)
        return srv.decode(value, kind)

    def _write_handler(self, refs: ScheduleRefs, model_ref: str, field: str, index: int, kind: str):
        def handle(value: int) -> int:
            decoded = self._decode(value, kind)
            with self.lock:
                outcome = _write_mirror(self.mirrors[refs.key], field, index, decoded, now_ms())
                if outcome.ok:
                    seq = next(self.write_seqs)
                    self.pending[refs.key + (model_ref,)] = (seq, field, index, decoded)
            if not outcome.ok:
                self.stats["refused"] += 1
                return REFUSAL_TO_WRITE_ERROR[outcome.refusal]
            self._unstage_in_handler((refs.der, refs.kind))  # the write may change the next switch
            self.stats["writes"] += 1
            self.last_request = now_ms()
            self.bridge.post(ScheduleWrite(refs.der, refs.kind, refs.name, field, decoded, index, seq))
            return L.DATA_ACCESS_ERROR_SUCCESS
        return handle

    def _check_handler(self, refs: ScheduleRefs, op: str, do: str):
        def check(action: int, ctl_val: int, test: bool) -> int:
            if test or not self.server.decode(ctl_val, "bool"):
                return L.CONTROL_ACCEPTED  # accepted, no effect
            request_id = next(self.request_ids)
            self.last_request = now_ms()
            waiter = {"event": threading.Event(), "result": None}
            with self.lock:
                self.waiting[request_id] = waiter
            self._unstage_in_handler((refs.der, refs.kind))
            self.bridge.post(ScheduleOperate(refs.der, refs.kind, refs.name, op, request_id))
            answered = waiter["event"].wait(OPERATE_TIMEOUT_MS / 1000)
            with self.lock:
                self.waiting.pop(request_id, None)
            self.stats["operates"] += 1
            result: OperateResult | None = waiter["result"]
            if not answered or result is None:
                log.error("operate %s: no answer from controller %s/%s", refs.attr(do), refs.der, refs.kind)
                return L.CONTROL_OBJECT_ACCESS_DENIED
            self._apply_in_handler(result.state)  # the client reads the new state right after
            if result.ok:
                return L.CONTROL_ACCEPTED
            self.stats["refused"] += 1
            if result.refusal == Refusal.ACCESS_DENIED:
                self.server.set_add_cause(action, L._C.ADD_CAUSE_NO_ACCESS_AUTHORITY)
                return L.CONTROL_OBJECT_ACCESS_DENIED
            self.server.set_add_cause(action, L.ADD_CAUSE_INCONSISTENT_PARAMETERS)
            return L.CONTROL_VALUE_INVALID
        return check

    def _control_handler(self, refs: ScheduleRefs, op: str, do: str):
        def execute(_action: int, _ctl_val: int, _test: bool) -> int:
            return L.CONTROL_RESULT_OK  # decided and done in the check handler
        return execute

    # -- actor thread ---------------------------------------------------------------------------
    def on_ready(self, _fds: list[int]) -> None:
        batches: dict[tuple, list] = {}
        for message in self.bridge.drain():
            if message == LISTENING:
                self.actor.mark_ready()
                continue
            if isinstance(message, MmsServerError):
                raise message
            key = (message.der, message.kind)
            if isinstance(message, ScheduleWrite):
                batches.setdefault(key, []).append(message)
                continue
            self._send(key, batches.pop(key, None))  # writes made before an operate go first
            message.reply_to = self.actor.myAddress
            self._send(key, message)
        for key, writes in batches.items():
            self._send(key, writes)

    def _send(self, key: tuple, message: Any) -> None:
        """Queue a request for its controller; it goes out when the one before it has been
        acknowledged (writes by a state that includes them, an operate by its result) and
        the controller's address is known (its first state)."""
        if not message:
            return
        if isinstance(message, list):
            message = ScheduleWrites(key[0], key[1], message, self.config["name"])
        self.outbox.setdefault(key, []).append(message)
        self._pump(key)

    def _pump(self, key: tuple) -> None:
        address = self.controllers.get(key)
        while address is not None and key not in self.in_flight and self.outbox.get(key):
            message = self.outbox[key].pop(0)
            if isinstance(message, ScheduleOperate):
                with self.lock:
                    abandoned = message.request_id not in self.waiting
                if abandoned:  # its client already got a negative response: never apply it later
                    log.warning("dropping operate %s on %s/%s: its client gave up", message.op, *key)
                    continue
            self.in_flight[key] = message
            self.actor.send(address, message)

    def _acknowledged(self, key: tuple, state: ControllerState | None = None,
                      result: OperateResult | None = None) -> None:
        sent = self.in_flight.get(key)
        if sent is None:
            return
        if isinstance(sent, ScheduleWrites):
            done = state is not None and state.writes_applied.get(self.config["name"], 0) >= sent.writes[-1].seq
        else:
            done = result is not None and result.request_id == sent.request_id
        if done:
            del self.in_flight[key]
            self._pump(key)

    def on_message(self, message: Any, _sender: Any) -> bool:
        if isinstance(message, Measurement):
            self.states.put(message)  # the writer thread puts it in the DER's MMXU1
            return True
        if isinstance(message, ControllerState):
            self._track(message)
            self._acknowledged((message.der, message.kind), state=message)
            self.states.put(message)
            return True
        if isinstance(message, OperateResult):
            with self.lock:
                waiter = self.waiting.get(message.request_id)
            self._track(message.state)
            key = (message.state.der, message.state.kind)
            self._acknowledged(key, state=message.state)
            self._acknowledged(key, result=message)
            if waiter is not None:
                waiter["result"] = message
                waiter["event"].set()
            else:
                self.states.put(message.state)  # a refused enable whose requester is gone, or late
            return True
        return False

    def _track(self, state: ControllerState) -> None:
        """Remember where each controller is.  A new incarnation gets, in order: every write
        it has not acknowledged (one sent to a controller that then died would be lost), the
        request that was in flight, and the queue."""
        key = (state.der, state.kind)
        # An incarnation is its address and its stamp: controllers hosted in their DER's
        # process (controller_isolation = "der") keep the DER's address across restarts.
        if state.address is None or self.incarnations.get(key) == state.version[0] \
                and self.controllers.get(key) == state.address:
            return
        known_before = key in self.controllers
        self.controllers[key] = state.address
        self.incarnations[key] = state.version[0]
        if known_before:
            acked = state.writes_applied.get(self.config["name"], 0)
            with self.lock:
                resend = sorted((v[0], k[2], v[1], v[2], v[3]) for k, v in self.pending.items()
                                if k[:2] == key and v[0] > acked)
            queue_ = self.outbox.setdefault(key, [])
            sent = self.in_flight.pop(key, None)
            if isinstance(sent, ScheduleOperate):
                queue_.insert(0, sent)
            if resend:
                log.warning("re-sending %d unacknowledged writes to the new %s/%s", len(resend), *key)
                queue_.insert(0, ScheduleWrites(key[0], key[1], [
                    ScheduleWrite(key[0], key[1], name, field, value, index, seq)
                    for seq, name, field, index, value in resend], self.config["name"]))
        self._pump(key)

    def _write_states(self) -> None:
        deadline = time.monotonic() + FIRST_STATES_TIMEOUT
        listening = False
        while True:
            if not listening and (not self.awaiting or time.monotonic() >= deadline):
                try:
                    self._listen()
                except MmsServerError as exc:  # e.g. port in use: let the actor crash with it
                    self.bridge.post(exc)
                    return
                listening = True
            if listening:
                self._collect_garbage_if_quiet(idle=self.states.empty())
            try:
                state = self.states.get(timeout=GC_TICK if listening else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                continue
            if state is None:
                return
            try:
                if isinstance(state, Measurement):
                    self._apply_measurement(state)
                    continue
                self._apply(state)
                self.awaiting.discard((state.der, state.kind))
            except Exception:  # one bad state must not stop the writer
                log.exception("applying state of %s/%s", state.der, state.kind)

    def _collect_garbage_if_quiet(self, idle: bool) -> None:
        """Writer thread: collect garbage if it is time to, nothing is queued (`idle`) and no
        switch is near (none armed within GC_CLEAR_MS, none applied in the last
        GC_CLEAR_MS); or anyway after GC_AT_LATEST.  Every GC_FULL_EVERY, all generations."""
        now = time.monotonic()
        if now - self._gc_last < (GC_EVERY if idle else GC_AT_LATEST):
            return
        wall = now_ms()
        armed = [plan.state.at for plan in list(self.staged.values())]  # one C-level copy
        near = any(abs(at - wall) < GC_CLEAR_MS for at in armed) or wall - self.last_switch_ms < GC_CLEAR_MS
        if near and now - self._gc_last < GC_AT_LATEST:
            return
        full = now - self._gc_full >= GC_FULL_EVERY
        gc.collect(2 if full else 1)
        self.stats["gc_collections"] += 1
        self._gc_last = now
        if full:
            self._gc_full = now

    def _apply_measurement(self, m: Measurement) -> None:
        if m.der not in self.lds or self.server is None:
            return
        updates = measurement_updates(self.lds[m.der], m.w, m.quality, m.at)
        updates = [u for u in updates if self.server.has(u[0])]  # a configured SCL may have no MMXU
        if updates:
            self.switcher.push(updates)

    def _apply(self, state: ControllerState) -> None:
        """Writer thread: have the switcher write a state into the model unless a newer one
        is there or will be."""
        if state.der not in self.lds or self.server is None:
            return
        with self.book:
            plan = self._take_locked(state)
            if plan is None:
                return
            if plan.outputs or plan.rest:
                self.switcher.push(plan.outputs, plan.rest)
            self._stage((state.der, state.kind), state.then)  # after the push: it may be due at once

    def _apply_in_handler(self, state: ControllerState) -> None:
        """libiec61850's thread, model lock held: write a state into the model now, after
        what is still pushed, unless a newer one is there or will be."""
        if state.der not in self.lds or self.server is None:
            return
        with self.book:
            self.switcher.drain()
            plan = self._take_locked(state)
            if plan is None:
                return
            if plan.outputs or plan.rest:
                self.server.update(plan.outputs + plan.rest, locked=True)
            self._stage((state.der, state.kind), state.then)

    def _take_locked(self, state: ControllerState) -> "_Plan | None":
        """`book` held: record `state` as applied and return its plan, whose updates must
        reach the model before anything else of this controller does (None: something as
        new is there already).  The switch staged for this controller is dropped, or, if the
        switcher took it already, recorded first: the plan is then made on top of it."""
        key = (state.der, state.kind)
        self._settle_locked(key=key)
        plan = self._plan_locked(state)
        if plan is not None and self._drop_staged_locked(key):
            plan = self._plan_locked(state)
        if plan is not None:
            self._commit_locked(plan)
        return plan

    def _plan_locked(self, state: ControllerState) -> "_Plan | None":
        """`book` held: the updates that bring the model from what is applied to `state`
        (None if something as new is applied), without recording anything."""
        key = (state.der, state.kind)
        if self.applied_version.get(key, (0, 0)) >= state.version:
            return None
        ld, ied = self.lds[state.der], self.server.ied_name
        acked = state.writes_applied.get(self.config["name"], 0)
        with self.lock:
            unacked = {k: v for k, v in self.pending.items() if k[:2] == key and v[0] > acked}
        plan = _Plan(state, acked)
        for name, change in state.schedules.items():
            refs = ScheduleRefs(ied, ld, state.der, state.kind, name)
            if not self.server.has(refs.ln_ref):
                continue
            prev = self.applied.get(refs.key)
            settings = change["settings"] if change["settings"] is not None else (prev and prev["settings"])
            if settings is None:
                log.warning("partial state for %s/%s/%s before any full state", state.der, state.kind, name)
                continue
            old = None if prev is None else {**prev["settings"], **prev["status"]}
            plan.rest += schedule_updates(refs, old, {**settings, **change["status"]}, state.at,
                                          settings_changed=change["settings"] is not None)
            plan.applied[refs.key] = {"status": change["status"], "settings": settings}
            if change["settings"] is not None:
                mirror = from_snapshot(name, change["status"], settings)
                for k, (_seq, written_field, index, value) in unacked.items():  # writes it does not include yet
                    if k[2] == name:
                        _write_mirror(mirror, written_field, index, value, None)
                plan.mirrors[refs.key] = mirror
        if self.applied_output.get(key) != state.output:
            plan.outputs = [u for u in controller_updates(ied, ld, state.kind, state.output, state.at)
                            if self.server.has(u[0])]
        # A model type may have fewer StrTm than the core (the reserve has StrTm01 only); what
        # clients wrote after this state was made stays as they wrote it.
        written = {k[3] for k in unacked}
        plan.rest = [u for u in plan.rest if self.server.has(u[0]) and u[0] not in written]
        return plan

    def _commit_locked(self, plan: "_Plan") -> None:
        """`book` held: record `plan` as applied (its updates are, or are about to be)."""
        state = plan.state
        key = (state.der, state.kind)
        self.applied_version[key] = state.version
        self.applied.update(plan.applied)
        self.applied_output[key] = state.output
        with self.lock:
            for k in [k for k, v in self.pending.items() if k[:2] == key and v[0] <= plan.acked]:
                del self.pending[k]
            self.mirrors.update(plan.mirrors)

    # -- switches ---------------------------------------------------------------------------------
    def _stage(self, key: tuple, then: ControllerState | None) -> None:
        """`book` held, nothing staged for this controller: arm `then`.  Its updates are
        computed now; the switcher only writes them."""
        self._drop_staged_locked(key)  # (none: every caller dropped or settled it)
        plan = None if then is None else self._plan_locked(then)
        if plan is None:
            return
        plan.serial = next(self.serials)
        self.switcher.arm(plan.serial, then.at, plan.outputs, plan.rest)
        self.staged[key] = plan  # only once armed (reports are collected under `book`)
        self.switch_keys[plan.serial] = key

    def _drop_staged_locked(self, key: tuple) -> bool:
        """`book` held: no switch staged for this controller any more.  One the switcher has
        not taken is cancelled; one it has (written, or about to be before anything pushed
        from now on) is recorded as applied, and then this returns True."""
        plan = self.staged.pop(key, None)
        if plan is None:
            return False
        if self.switcher.cancel(plan.serial):
            del self.switch_keys[plan.serial]
            return False
        self._commit_locked(plan)  # its report, when collected, finds it recorded
        self.stats["switched_on_time"] += 1
        return True

    def _unstage_in_handler(self, key: tuple) -> None:
        """libiec61850's thread, model lock held: what is pushed goes into the model now, and
        the switch announced for this controller is dropped (one written is recorded)."""
        with self.book:
            self.switcher.drain()
            self._settle_locked(key=key)
            self._drop_staged_locked(key)

    def _switched(self) -> None:
        """The follower thread, after the switcher applied some switches: records them a
        few at a time, so a handler (which holds the model lock, and reads wait for it)
        waits for a few of them at most."""
        more = True
        while more and self.server is not None:
            with self.book:
                more = self._settle_locked(limit=SETTLE_BATCH)
            if more:
                time.sleep(0)  # let a handler waiting for `book` have it

    def _settle_locked(self, key: tuple | None = None, limit: int | None = None) -> bool:
        """`book` held: record switches the switcher applied: this controller's (`key`), or
        up to `limit` of any.  Called before anything reads or changes what is applied or
        staged for a controller, so both stay true.  Returns whether some are left."""
        if self.switcher is None:
            return False
        self._collect_locked()
        if key is not None:
            plan = self.staged.get(key)
            todo = [plan.serial] if plan is not None and plan.serial in self.unsettled else []
        else:
            todo = list(itertools.islice(self.unsettled, limit))
        for serial in todo:
            self.unsettled.pop(serial)
            k = self.switch_keys.pop(serial, None)
            plan = self.staged.get(k)
            if plan is None or plan.serial != serial:  # recorded already (_drop_staged_locked)
                continue
            del self.staged[k]
            self._commit_locked(plan)
            self.stats["switched_on_time"] += 1
        return bool(self.unsettled)

    def _collect_locked(self) -> None:
        """`book` held: take the switcher's reports."""
        batches: dict[int, Any] = {}
        for done in self.switcher.collect():
            self.unsettled[done.key] = done
            self.last_switch_ms = max(self.last_switch_ms, done.at_ms)
            batches.setdefault(done.outputs_ns, done)
        if self.switcher.lost:
            log.error("mms endpoint=%s %d applied switches not recorded (collected too late)",
                      self.config["name"], self.switcher.lost)
            self.switcher.lost = 0
        for done in batches.values():
            at_ns = done.at_ms * 1_000_000
            switch = {"at": done.at_ms, "controllers": done.batch,
                      **{f"{name}_ms": round((ns - at_ns) / 1e6, 2) for name, ns in (
                          ("woke", done.woke_ns), ("locked", done.locked_ns), ("outputs", done.outputs_ns),
                          ("done", done.done_ns))}}
            self.stats["switches"] = (self.stats.get("switches", []) + [switch])[-SWITCHES_KEPT:]
            log.debug("mms switch %s", switch)


@dataclass
class _Plan:
    """A state's model updates, computed against the model as it was, and what to record
    once they are applied."""
    state: ControllerState
    acked: int                                   # this endpoint's writes the state includes
    serial: int = 0                              # its number in the switcher, once armed
    outputs: list = field(default_factory=list)  # the controller's output (FSCC, GGIO)
    rest: list = field(default_factory=list)     # its schedules
    applied: dict = field(default_factory=dict)  # schedule key -> {"status", "settings"}
    mirrors: dict = field(default_factory=dict)  # schedule key -> Schedule


def _write_mirror(mirror: Schedule, field: str, index: int, value: Any, now: int | None):
    """Apply a client write to a mirror; `now` None skips the "in the future" check (a
    write already accepted, applied again on top of a newer state)."""
    if field == "NumEntr":
        return mirror.write_num_entr(value)
    if field == "SchdIntv":
        return mirror.write_intv(value)
    if field == "SchdPrio":
        return mirror.write_prio(value)
    if field == "SchdReuse":
        return mirror.write_reuse(value)
    if field == "Val":
        return mirror.write_value(index, value)
    return mirror.write_start(index, value, value - 1 if now is None else now)
