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
* the actor thread forwards posts up the tree and hands answers and states over; it
  never waits for the model lock (it must stay free to receive an operate's answer).
* a writer thread applies published states to the model.  States carry a version, so an
  older state never overwrites a newer one, whichever thread applies it.

After a restart the endpoint asks every controller for its state (SnapshotRequest): the
model is rebuilt from the actors, never from the SCL defaults.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from relevent.actors.messages import ControllerState, OperateResult, ScheduleOperate, ScheduleWrite, SnapshotRequest
from relevent.iec61850 import lib as L
from relevent.iec61850.server import MmsServer
from relevent.protocols.mms.model_map import ScheduleRefs, controller_updates, schedule_updates
from relevent.runtime.bridge import ThreadBridge
from relevent.scheduling.schedule import Refusal, Schedule, from_snapshot
from relevent.scl.cfg import to_cfg
from relevent.scl.generate import default_ld_inst
from relevent.scl.parser import parse_scl
from relevent.scl.site_model import endpoint_scl

log = logging.getLogger("relevent.mms")

OPERATE_TIMEOUT_MS = 5000
REFUSAL_TO_WRITE_ERROR = {Refusal.ACCESS_DENIED: L.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED,
                          Refusal.VALUE_INVALID: L.DATA_ACCESS_ERROR_OBJECT_VALUE_INVALID}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class MmsEndpoint:
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor = actor
        self.config = config
        self.bridge = ThreadBridge()
        self.server: MmsServer | None = None
        self.lock = threading.Lock()            # mirrors and pending operates, shared with handlers
        self.mirrors: dict[tuple, Schedule] = {}
        self.applied: dict[tuple, dict] = {}    # last snapshot written into the model, per schedule
        self.applied_output: dict[tuple, tuple] = {}
        self.applied_version: dict[tuple, tuple] = {}  # (der, kind) -> version of the state in the model
        self.waiting: dict[int, dict] = {}      # operate request id -> {"event", "result"}
        self.request_ids = itertools.count(1)
        self.states: queue.SimpleQueue = queue.SimpleQueue()
        self.writer: threading.Thread | None = None
        self.lds: dict[str, str] = {}           # DER name -> logical device inst
        self.stats = {"writes": 0, "operates": 0, "refused": 0}

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
        for der in ders:
            ld = default_ld_inst(der, len(ders))
            if ied.ld(ld) is None:
                raise ValueError(f"{cfg.get('scl') or 'the model'} has no logical device {ld} for DER {der['name']}")
            self.lds[der["name"]] = ld
            for kind in der["functions"]:
                names = [f"FSCH{n:02d}" for n in range(1, der["schedules"] + 1)] + ["Res_FSCH01"]
                for name in names:
                    self._install(ScheduleRefs(ied.name, ld, der["name"], kind, name))
        self.writer = threading.Thread(target=self._write_states, name=f"mms-writer-{cfg['name']}", daemon=True)
        self.writer.start()
        self.server.start(cfg.get("address", "127.0.0.1"), cfg["port"])
        log.info("mms endpoint=%s serving ied=%s lds=%s on %s:%s", cfg["name"], ied.name,
                 ",".join(self.lds.values()), cfg.get("address"), cfg["port"])
        self.actor.send(self.actor.parent, SnapshotRequest())

    def stop(self) -> None:
        if self.writer is not None:
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
        return {"serving": f"{self.config.get('address')}:{self.config['port']}", **self.stats}

    # -- handler installation ---------------------------------------------------------------------
    def _install(self, refs: ScheduleRefs) -> None:
        srv, key = self.server, refs.key
        int_fields = ("NumEntr", "SchdIntv", "SchdPrio")
        for f in int_fields:
            srv.on_write(refs.attr(f"{f}.setVal"), self._write_handler(refs, f, 0, "int"))
        srv.on_write(refs.attr("SchdReuse.setVal"), self._write_handler(refs, "SchdReuse", 0, "bool"))
        prefix, kind = ("ValSPG", "bool") if refs.kind == "OnOff" else ("ValASG", "float")
        n = 1
        while srv.has(refs.attr(f"{prefix}{n:03d}")):
            if kind == "bool":
                srv.on_write(refs.attr(f"{prefix}{n:03d}.setVal"), self._write_handler(refs, "Val", n, "bool"))
            else:
                srv.on_write(refs.attr(f"{prefix}{n:03d}.setMag"), self._write_handler(refs, "Val", n, "float"),
                             complex_attribute=True)
            n += 1
        n = 1
        while srv.has(refs.attr(f"StrTm{n:02d}.setTm")):
            srv.on_write(refs.attr(f"StrTm{n:02d}.setTm"), self._write_handler(refs, "StrTm", n, "time"))
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

    def _write_handler(self, refs: ScheduleRefs, field: str, index: int, kind: str):
        def handle(value: int) -> int:
            decoded = self._decode(value, kind)
            now = now_ms()
            with self.lock:
                mirror = self.mirrors[refs.key]
                if field == "NumEntr":
                    outcome = mirror.write_num_entr(decoded)
                elif field == "SchdIntv":
                    outcome = mirror.write_intv(decoded)
                elif field == "SchdPrio":
                    outcome = mirror.write_prio(decoded)
                elif field == "SchdReuse":
                    outcome = mirror.write_reuse(decoded)
                elif field == "Val":
                    outcome = mirror.write_value(index, decoded)
                else:
                    outcome = mirror.write_start(index, decoded, now)
            if not outcome.ok:
                self.stats["refused"] += 1
                return REFUSAL_TO_WRITE_ERROR[outcome.refusal]
            self.stats["writes"] += 1
            self.bridge.post(ScheduleWrite(refs.der, refs.kind, refs.name, field, decoded, index))
            return L.DATA_ACCESS_ERROR_SUCCESS
        return handle

    def _check_handler(self, refs: ScheduleRefs, op: str, do: str):
        def check(action: int, ctl_val: int, test: bool) -> int:
            if test or not self.server.decode(ctl_val, "bool"):
                return L.CONTROL_ACCEPTED  # accepted, no effect
            request_id = next(self.request_ids)
            waiter = {"event": threading.Event(), "result": None}
            with self.lock:
                self.waiting[request_id] = waiter
            self.bridge.post(ScheduleOperate(refs.der, refs.kind, refs.name, op, request_id))
            answered = waiter["event"].wait(OPERATE_TIMEOUT_MS / 1000)
            with self.lock:
                self.waiting.pop(request_id, None)
            self.stats["operates"] += 1
            result: OperateResult | None = waiter["result"]
            if not answered or result is None:
                log.error("operate %s: no answer from controller %s/%s", refs.attr(do), refs.der, refs.kind)
                return L.CONTROL_OBJECT_ACCESS_DENIED
            self._apply(result.state, locked=True)  # the client reads the new state right after
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
        for message in self.bridge.drain():
            self.actor.send(self.actor.parent, message)

    def on_message(self, message: Any, _sender: Any) -> bool:
        if isinstance(message, ControllerState):
            self.states.put(message)
            return True
        if isinstance(message, OperateResult):
            with self.lock:
                waiter = self.waiting.get(message.request_id)
            if waiter is not None:
                waiter["result"] = message
                waiter["event"].set()
            else:
                self.states.put(message.state)  # a refused enable whose requester is gone, or late
            return True
        return False

    def _write_states(self) -> None:
        while True:
            state = self.states.get()
            if state is None:
                return
            try:
                self._apply(state)
            except Exception:  # one bad state must not stop the writer
                log.exception("applying state of %s/%s", state.der, state.kind)

    def _apply(self, state: ControllerState, locked: bool = False) -> None:
        """Write a state into the model unless a newer one is there.  The version check
        happens under the model lock, which serialises the writer thread and handlers."""
        if state.der not in self.lds or self.server is None:
            return
        if locked:
            self._apply_locked(state)
        else:
            with self.server.model_lock():
                self._apply_locked(state)

    def _apply_locked(self, state: ControllerState) -> None:
        key = (state.der, state.kind)
        if self.applied_version.get(key, (0, 0)) >= state.version:
            return
        self.applied_version[key] = state.version
        ld, ied = self.lds[state.der], self.server.ied_name
        updates: list = []
        for name, snap in state.schedules.items():
            refs = ScheduleRefs(ied, ld, state.der, state.kind, name)
            if not self.server.has(refs.ln_ref):
                continue
            updates += schedule_updates(refs, self.applied.get(refs.key), snap, state.at)
            self.applied[refs.key] = snap
            with self.lock:
                self.mirrors[refs.key] = from_snapshot(name, snap)
        if self.applied_output.get(key) != state.output:
            updates += controller_updates(ied, ld, state.kind, state.output, state.at)
            self.applied_output[key] = state.output
        # A model type may have fewer StrTm than the core (the reserve has StrTm01 only).
        updates = [u for u in updates if self.server.has(u[0])]
        if updates:
            self.server.update(updates, locked=True)
