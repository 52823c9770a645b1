"""The MMS endpoint's record of its model: what each controller's state in the model is,
which switch is armed for each controller, and the updates that bring the model from one
to the next.  Pure: no thread, lock, clock or libiec61850 call; the endpoint's shell
(endpoint.py) holds it behind one lock and does the I/O.

Invariants:
* `applied_version[key]` is the version of the newest state of that controller whose
  updates are in the model or queued to be written before anything newer of it; a state
  not newer is never planned (so an older state never overwrites a newer one, whichever
  thread applies it).
* A plan's updates are computed against `applied`, so they are only what changed, and a
  plan is recorded (`commit`) exactly when its updates are handed to the model.
* At most one switch is staged per controller.  When something newer of a controller
  arrives, its staged switch is either cancelled (the switcher had not taken it) or, if
  the switcher took it, recorded as applied first, and the new plan is made on top of it.
  A cancelled switch's due time is kept (`take_cancelled`): one already due when it was
  cancelled reached the model late, by the newer plan, and the endpoint counts it as a
  late switch (a switch lateness histogram without it would drop exactly the worst ones).
* What clients wrote after a state was made (its unacknowledged writes) stays as they
  wrote it: the plan leaves those attributes out.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from relevent.messages import ControllerState
from relevent.protocols.mms.model_map import ScheduleRefs, controller_updates, schedule_updates, write_ref

log = logging.getLogger("relevent.mms")


@dataclass
class Plan:
    """A state's model updates, computed against the model as it was, and what to record
    once they are applied."""
    state: ControllerState
    serial: int = 0                              # its number in the switcher, once armed
    outputs: list = field(default_factory=list)  # the controller's output (FSCC, GGIO)
    rest: list = field(default_factory=list)     # its schedules
    applied: dict = field(default_factory=dict)  # schedule key -> {"status", "settings"}

    @property
    def key(self) -> tuple:
        return (self.state.der, self.state.kind)

    @property
    def updates(self) -> list:
        return self.outputs + self.rest


class ModelBook:
    def __init__(self, ied: str, lds: dict[str, str], has: Callable[[str], bool],
                 pristine: Callable[[ScheduleRefs, int], dict | None] = lambda _refs, _slots: None) -> None:
        self.ied = ied
        self.lds = lds                           # DER name -> logical device inst
        self.has = has                           # does the model have this reference?
        # A schedule's settings as the model holds them since it was built, while no client
        # can have written (None: not known, or no longer): its first plan leaves out what
        # equals them (model_map.pristine_settings).
        self.pristine = pristine
        self.applied: dict[tuple, dict] = {}     # schedule key -> {"status", "settings"} in the model
        self.applied_output: dict[tuple, tuple] = {}
        self.applied_version: dict[tuple, tuple] = {}
        self.staged: dict[tuple, Plan] = {}      # (der, kind) -> the switch armed for it
        self.switch_keys: dict[int, tuple] = {}  # serial of a staged switch -> (der, kind)
        self.unsettled: dict[int, Any] = {}      # serial -> applied by the switcher, not recorded yet
        self.serials = itertools.count(1)
        self.switched_on_time = 0
        self.cancelled: list[int] = []           # due times (ms) of staged switches cancelled since taken

    # -- plans ------------------------------------------------------------------------------------
    def plan(self, state: ControllerState, unacked: list[tuple]) -> Plan | None:
        """The updates that bring the model from what is applied to `state` (None if
        something as new is applied), without recording anything.  `unacked`: writes
        accepted after the state was made, (schedule, field, index, value)."""
        key = (state.der, state.kind)
        if state.der not in self.lds or self.applied_version.get(key, (0, 0)) >= state.version:
            return None
        ld = self.lds[state.der]
        plan = Plan(state)
        for name, change in state.schedules.items():
            refs = ScheduleRefs(self.ied, ld, state.der, state.kind, name)
            if not self.has(refs.ln_ref):
                continue
            prev = self.applied.get(refs.key)
            settings = change["settings"] if change["settings"] is not None else (prev and prev["settings"])
            if settings is None:
                log.warning("partial state for %s/%s/%s before any full state", state.der, state.kind, name)
                continue
            old = None if prev is None else {**prev["settings"], **prev["status"]}
            pristine = self.pristine(refs, len(settings["values"])) if prev is None else None
            plan.rest += schedule_updates(refs, old, {**settings, **change["status"]}, state.at,
                                          settings_changed=change["settings"] is not None, pristine=pristine)
            plan.applied[refs.key] = {"status": change["status"], "settings": settings}
        if self.applied_output.get(key) != state.output:
            plan.outputs = [u for u in controller_updates(self.ied, ld, state.kind, state.output, state.at)
                            if self.has(u[0])]
        # A model type may have fewer StrTm than the core (the reserve has StrTm01 only); what
        # clients wrote after this state was made stays as they wrote it.
        written = {write_ref(ScheduleRefs(self.ied, ld, state.der, state.kind, name), f, i)
                   for name, f, i, _ in unacked}
        plan.rest = [u for u in plan.rest if self.has(u[0]) and u[0] not in written]
        return plan

    def commit(self, plan: Plan) -> None:
        """Record `plan` as applied (its updates are, or are queued to be, in the model)."""
        self.applied_version[plan.key] = plan.state.version
        self.applied.update(plan.applied)
        self.applied_output[plan.key] = plan.state.output

    def take(self, state: ControllerState, unacked: list[tuple], cancel: Callable[[int], bool]) -> Plan | None:
        """Record `state` as applied and return its plan, whose updates must reach the model
        before anything else of this controller does (None: something as new is there
        already).  The controller's staged switch is dropped (`cancel(serial)` says whether
        the switcher still had it), or, if the switcher took it, recorded first: the plan
        is then made on top of it."""
        key = (state.der, state.kind)
        self.settle(key=key)
        plan = self.plan(state, unacked)
        if plan is not None and self.drop_staged(key, cancel):
            plan = self.plan(state, unacked)
        if plan is not None:
            self.commit(plan)
        return plan

    # -- switches -----------------------------------------------------------------------------------
    def stage(self, then: ControllerState | None, unacked: list[tuple]) -> Plan | None:
        """The plan to arm for a controller's announced next state, numbered (None: nothing
        to arm).  Its updates are computed now; the switcher only writes them.  Call
        `armed` once the switcher has it."""
        plan = None if then is None else self.plan(then, unacked)
        if plan is not None:
            plan.serial = next(self.serials)
        return plan

    def armed(self, plan: Plan) -> None:
        assert plan.key not in self.staged, f"a switch is staged for {plan.key} already"
        self.staged[plan.key] = plan
        self.switch_keys[plan.serial] = plan.key

    def drop_staged(self, key: tuple, cancel: Callable[[int], bool]) -> bool:
        """No switch staged for this controller any more.  One the switcher has not taken
        is cancelled; one it has (written, or about to be before anything pushed from now
        on) is recorded as applied, and then this returns True."""
        plan = self.staged.pop(key, None)
        if plan is None:
            return False
        if cancel(plan.serial):
            del self.switch_keys[plan.serial]
            self.cancelled.append(plan.state.at)
            return False
        self.commit(plan)  # its report, when collected, finds it recorded
        self.switched_on_time += 1
        return True

    def take_cancelled(self) -> list[int]:
        """The due times (ms) of the staged switches cancelled since the last call."""
        out, self.cancelled = self.cancelled, []
        return out

    def reported(self, serial: int, report: Any) -> None:
        """The switcher applied the switch `serial`."""
        self.unsettled[serial] = report

    def settle(self, key: tuple | None = None, limit: int | None = None) -> bool:
        """Record switches the switcher applied: this controller's (`key`), or up to `limit`
        of any.  Called before anything reads or changes what is applied or staged for a
        controller, so both stay true.  Returns whether some are left."""
        if key is not None:
            plan = self.staged.get(key)
            todo = [plan.serial] if plan is not None and plan.serial in self.unsettled else []
        else:
            todo = list(itertools.islice(self.unsettled, limit))
        for serial in todo:
            self.unsettled.pop(serial)
            k = self.switch_keys.pop(serial, None)
            plan = self.staged.get(k)
            if plan is None or plan.serial != serial:  # recorded already (drop_staged)
                continue
            del self.staged[k]
            self.commit(plan)
            self.switched_on_time += 1
        return bool(self.unsettled)

    def armed_at(self) -> list[int]:
        """When the staged switches are due (ms)."""
        return [plan.state.at for plan in self.staged.values()]
