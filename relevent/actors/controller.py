"""A 90-10 controller (FSCC) and its schedules (FSCH01..NN, Res_FSCH01), in one actor.

Why one process for a controller and its schedules: an actor process costs ~5 MB PSS
(bench/README.md); a process per schedule would put a 10-DER site (330 schedules) at
~1.8 GB, against a budget of 400 MB.  The schedules are pure state machines
(relevent/scheduling) that this actor drives: it persists them, wakes at their exact
boundaries, arbitrates, and sends its state to the subscribed endpoints.

Durability: an enable or disable is saved (fsync) before its result is sent; other
writes are saved within FLUSH_DELAY.

Paths: states go straight to the subscribed endpoints, and endpoints send requests
straight here: one thespian hop (1-2 ms) instead of three.  Subscriptions come with
SnapshotRequest and, after a restart, with the configuration (the DER keeps them).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from relevent.actors.base import ReleventActor
from relevent.messages import (
    ControllerState, ForecastReply, ForecastRequest, Measurement, OperateResult, OutputChanged, ScheduleOperate,
    ScheduleWrite, ScheduleWrites, SnapshotRequest, WanContact, Wakeup,
)
from relevent.scheduling.calendar import Calendar, OccPer
from relevent.scheduling.arbitration import forecast, next_change, output_of
from relevent.scheduling.local import (
    LocalSchedule, arm, end, measurement_rearm_due, no_telecom_due, power_up_due,
)
from relevent.scheduling.trigger import Decision, Phase, TriggerState, step
from relevent.scheduling.schedule import (
    LOCKABLE, Schedule, StartTime, schedule_names, settings_snapshot, status_snapshot,
)
from relevent.clock import now_ms

log = logging.getLogger("relevent.controller")

FLUSH_DELAY = 0.05            # s; writes other than enable/disable are durable within 100 ms
RESERVE_START = 1000          # 1970-01-01T00:00:01Z, hourly: the reference model's reserve
DEFAULT_RESERVE = {"ActPow": 11.0, "MaxPow": 11.0, "OnOff": False}  # the reference model's values
LOCAL_TICK = 1.0              # s between "no telecom" checks



class ControllerActor(ReleventActor):
    def __init__(self) -> None:
        super().__init__()
        self.schedules: list[Schedule] = []
        self._timer_generation = 0
        self._timer_at: int | None = None
        self._dirty = False
        self._flush_armed = False
        self._last_output: tuple | None = None
        self._der_output: tuple | None = None   # (value, source) last told to the DER
        self._stamp = time.time_ns()   # orders states across restarts of this controller
        self._seq = 0
        self.subscribers: dict[str, Any] = {}  # endpoint name -> address
        self._published: dict[str, tuple] = {}  # schedule -> (status, settings) last sent
        self._writes_applied: dict[str, int] = {}  # endpoint -> last write seq applied
        self._writes_saved: dict[str, int] = {}    # ... of those, the last saved (durable)
        self._acked: dict[str, tuple] = {}         # (applied, saved) as last published
        self._predicted: dict[str, bool] = {}      # schedules in the last `then` -> with settings
        self.locals: list[LocalSchedule] = []
        self._local_state: dict = {}               # power_up_boot, last_contact, measurement (persisted)
        self.last_contact = 0
        self.triggers: dict[str, TriggerState] = {}  # schedule -> its measurement trigger's state

    # -- set-up ----------------------------------------------------------------------------
    @property
    def store_key(self) -> str:
        return f"controller/{self.config['der']}/{self.config['kind']}"

    def on_configure(self) -> None:
        cfg = self.config
        self.subscribers = dict(cfg.get("subscribers", {}))
        boolean = cfg["kind"] == "OnOff"
        locks = cfg.get("locks", {})
        # An enable whose values exceed the DER's rating is refused (SchdEnaErr VALUES);
        # a DER without a rating (0: not driven over a LAN) sets no bound.
        rated = float(cfg.get("rated_power_w") or 0.0)
        limit = rated if not boolean and rated > 0 else None
        self.schedules = []
        for name in schedule_names(cfg["schedules"]):
            reserve = name.startswith("Res_")
            locked = frozenset(x for x in locks.get(name, []) if x in LOCKABLE)
            sched = Schedule(name, boolean=boolean, periodic=reserve, reserve=reserve, locked=locked, limit=limit)
            sched.settings.values = [False if boolean else 0.0] * cfg.get("values", 100)
            if reserve:
                self._reserve_defaults(sched, cfg.get("reserve", DEFAULT_RESERVE[cfg["kind"]]))
            self.schedules.append(sched)
        # Restart from the store, never from defaults; an unreadable record raises (StateCorrupt).
        saved = self.store.load(self.store_key)
        if saved is not None:
            slots = cfg.get("values", 100)
            for sched in self.schedules:
                if sched.name in saved["schedules"]:
                    sched.load_record(saved["schedules"][sched.name])
                    # The topology may have changed the number of value slots since.
                    pad = [False if boolean else 0.0] * slots
                    sched.settings.values = (sched.settings.values + pad)[:slots]
        now = now_ms()
        for sched in self.schedules:
            if sched.reserve:
                sched.enable(now, by_site=True)  # always running, whatever was saved
            sched.advance(now)
        self._setup_local(saved or {}, now)
        self._save(stored=saved)
        self._publish(now, full=True)
        self._arm(now)

    # -- local fallback schedules (relevent/scheduling/local.py) ----------------------------------
    def _setup_local(self, saved: dict, now: int) -> None:
        self.locals = [LocalSchedule.from_config(c) for c in self.config.get("local", [])]
        self._local_state = dict(saved.get("local", {}))
        boot = self.site.get("boot_ms")  # when the site started (the runner says)
        # Contact is unknown before the site started: count from the start (or from the last
        # contact this controller heard, if it restarted since).
        self.last_contact = max(self._local_state.get("last_contact", 0), boot or now)
        for local in self.locals:
            if local.trigger == "power_up" and power_up_due(boot, self._local_state.get("power_up_boot")):
                self._arm_local(local, now)
                self._local_state["power_up_boot"] = boot
        if any(local.trigger == "no_telecom" for local in self.locals):
            self.wakeupAfter(LOCAL_TICK, Wakeup("local"))
        # A measurement trigger's state survives a restart as far as it is known: "active"
        # (its schedule runs, saved with the schedule at arm and end, in the same fsync).  Its
        # timers (pending, clearing) start again with the next sample: the time this
        # controller did not see counts neither toward arming nor toward ending.
        active = self._local_state.get("measurement", {})
        self.triggers = {local.schedule: TriggerState(Phase.ACTIVE if active.get(local.schedule) else Phase.IDLE)
                         for local in self.locals if local.trigger == "measurement"}

    def _measured(self, m: Measurement) -> None:
        """A sample through each measurement trigger (relevent/scheduling/trigger.py): arm
        its schedule, end it, or run it again while the condition holds."""
        for local in self.locals:
            if local.trigger != "measurement":
                continue
            sched = self._schedule(local.schedule)
            value = local.measured(m)
            state, decision = step(local.condition, self.triggers[local.schedule], value, m.quality, m.at)
            self.triggers[local.schedule] = state
            if decision == Decision.NONE and not measurement_rearm_due(state, sched):
                continue
            now = now_ms()
            if decision == Decision.END:
                outcome = end(sched)
                for other in self.schedules:
                    other.advance(now)
                log.warning("local schedule ends controller=%s schedule=%s trigger=measurement %s=%s ok=%s %s",
                            self.path, sched.name, local.measure, value, outcome.ok, outcome.reason)
            else:
                self._arm_local(local, now, f" {local.measure}={value}")
            self._local_state.setdefault("measurement", {})[local.schedule] = state.active
            self._save()
            self._publish(now, force=True)
            self._arm(now)

    def _check_no_telecom(self) -> None:
        now = now_ms()
        for local in self.locals:
            if local.trigger == "no_telecom" and no_telecom_due(local, self._schedule(local.schedule),
                                                               self.last_contact, now):
                self._arm_local(local, now)
                self._save()
                self._publish(now, force=True)
                self._arm(now)

    def _arm_local(self, local: LocalSchedule, now: int, why: str = "") -> None:
        sched = self._schedule(local.schedule)
        outcome = arm(sched, local, now)
        for other in self.schedules:
            other.advance(now)
        log.warning("local schedule controller=%s schedule=%s trigger=%s%s value=%s duration_s=%d priority=%d "
                    "ok=%s %s", self.path, sched.name, local.trigger, why, local.value, local.duration_s,
                    local.priority, outcome.ok, outcome.reason)

    @staticmethod
    def _reserve_defaults(sched: Schedule, value: Any) -> None:
        s = sched.settings
        s.num_entr, s.schd_intv, s.prio, s.reuse = 1, 3600, 10, True
        s.values[0] = bool(value) if sched.boolean else float(value)
        s.starts[0] = StartTime(RESERVE_START, Calendar(OccPer.HOUR))

    # -- messages -----------------------------------------------------------------------------
    def on_message(self, message: Any, sender: Any) -> None:
        if isinstance(message, ScheduleWrites):
            for write in message.writes:
                self._apply_write(write)
            if message.origin and message.writes:
                self._writes_applied[message.origin] = message.writes[-1].seq
            self._written()
        elif isinstance(message, ScheduleOperate):
            self._operate(message, sender)
        elif isinstance(message, ForecastRequest):
            events = forecast(self.schedules, now_ms(), message.window_ms)
            self.send(message.reply_to or sender,
                      ForecastReply(message.request_id, message.der, message.kind, events))
        elif isinstance(message, Measurement):
            if self.triggers:
                self._measured(message)
        elif isinstance(message, WanContact):
            if message.at > self.last_contact:
                self.last_contact = self._local_state["last_contact"] = message.at
        elif isinstance(message, SnapshotRequest):
            if message.subscriber:
                self.subscribers[message.subscriber] = message.reply_to
            self._publish(now_ms(), force=True, full=True)
        else:
            super().on_message(message, sender)

    def _schedule(self, name: str) -> Schedule:
        for sched in self.schedules:
            if sched.name == name:
                return sched
        raise KeyError(f"{self.path}: no schedule {name}")

    def _apply_write(self, msg: ScheduleWrite) -> None:
        sched = self._schedule(msg.schedule)
        outcome = sched.write(msg.field, msg.index, msg.value, now_ms())
        if outcome.ok and msg.party:
            sched.settings.writer = msg.party
        if not outcome.ok:
            # The control session validated against its mirror; a refusal here means the mirror was stale.
            log.warning("write refused controller=%s schedule=%s field=%s reason=%s", self.path, sched.name,
                        msg.field, outcome.reason)

    def _written(self) -> None:
        # A state goes out after every batch: it acknowledges the writes (writes_applied) and
        # carries what they changed (settings, and status or output if they moved).
        self._after_change(now_ms())
        self._dirty = True
        if not self._flush_armed:
            self._flush_armed = True
            self.wakeupAfter(FLUSH_DELAY, Wakeup("flush"))

    def _operate(self, msg: ScheduleOperate, sender: Any) -> None:
        sched, now = self._schedule(msg.schedule), now_ms()
        outcome = sched.enable(now) if msg.op == "enable" else sched.disable()
        for other in self.schedules:
            other.advance(now)
        self._save()  # durable before the answer goes out
        state = self._state(now, full=True)
        self.send(msg.reply_to or sender, OperateResult(msg.request_id, outcome.ok,
                                                        None if outcome.refusal is None else int(outcome.refusal),
                                                        outcome.reason, state))
        log.info("operate controller=%s schedule=%s op=%s ok=%s reason=%s state=%s", self.path, sched.name, msg.op,
                 outcome.ok, outcome.reason, sched.status.state.name)
        self._publish(now, state=state)
        self._arm(now)

    # -- time ---------------------------------------------------------------------------------
    def on_wakeup(self, payload: Any) -> None:
        if not isinstance(payload, Wakeup):
            return
        if payload.what == "local":
            self._check_no_telecom()
            self.wakeupAfter(LOCAL_TICK, Wakeup("local"))
        elif payload.what == "flush":
            self._flush_armed = False
            if self._dirty:
                self._save()
                self._publish(now_ms(), force=False)  # endpoints learn that the writes are durable
        elif payload.what == "boundary" and payload.generation == self._timer_generation:
            now = now_ms()
            if self._timer_at is not None and now < self._timer_at:
                self._arm_at(self._timer_at)  # woke early: never switch before the boundary
                return
            self._after_change(now)

    def _after_change(self, now: int, force: bool = False) -> None:
        changed = force
        for sched in self.schedules:
            changed |= sched.advance(now)
        self._publish(now, force=changed)
        self._arm(now)

    def _arm(self, now: int) -> None:
        wakeups = [w for w in (s.next_wakeup() for s in self.schedules) if w is not None]
        if wakeups:
            self._arm_at(min(wakeups))

    def _arm_at(self, at: int) -> None:
        self._timer_generation += 1
        self._timer_at = at
        # thespian counts the delay from this call: read the clock now, not when the work began.
        delay = (at - time.time_ns() / 1e6) / 1000.0
        self.wakeupAfter(max(0.0, delay), Wakeup("boundary", generation=self._timer_generation))

    # -- persistence and publication ------------------------------------------------------------
    def _save(self, stored: dict | None = None) -> None:
        """Make the schedules durable; not written again when equal to `stored`, the record
        the store holds already at the current version (a restart that changed nothing
        writes nothing: a big site starts again with one fsync'd save fewer a controller)."""
        record = {"schedules": {s.name: s.to_record() for s in self.schedules}, "local": dict(self._local_state)}
        if record != stored or self.store.outdated(self.store_key):
            self.store.save(self.store_key, record)
        self._dirty = False
        self._writes_saved = dict(self._writes_applied)

    def _state(self, now: int, full: bool = False) -> ControllerState:
        """The state to send: every schedule when `full`, else those that changed since the
        last state, with their settings only when those changed too."""
        out = output_of(self.schedules)
        changed = {}
        # What the last prediction showed early is sent again as it really is, so an
        # endpoint that applied a prediction which was then overtaken is put right.
        predicted, self._predicted = self._predicted, {}
        for s in self.schedules:
            status, settings = status_snapshot(s), settings_snapshot(s)
            last = self._published.get(s.name)
            if full or last is None or last[1] != settings or predicted.get(s.name):
                changed[s.name] = {"status": status, "settings": settings}
            elif last[0] != status or s.name in predicted:
                changed[s.name] = {"status": status, "settings": None}
            self._published[s.name] = (status, settings)
        self._seq += 1
        state = ControllerState(self.config["der"], self.config["kind"], changed, (out.value, out.source, out.start),
                                now, (self._stamp, self._seq), self.myAddress, full, dict(self._writes_applied),
                                writes_saved=dict(self._writes_saved))
        if self.subscribers:
            state.then = self._next_state(state)
        return state

    def _next_state(self, state: ControllerState) -> ControllerState | None:
        """The state this controller will publish at its next boundary if nothing happens
        before.  Endpoints put it in their model at that instant themselves, so a switch
        shown over MMS does not wait for this process to wake up and for its message to
        cross (and 100 DERs switching on the same second do not queue in one endpoint);
        the state sent at the boundary confirms it, or corrects it if the prediction was
        overtaken.  Its version sorts between this state's and the next one's."""
        nxt = next_change(self.schedules, state.at)
        if nxt is None:
            return None
        at, sims = nxt
        changed = {}
        for sched, sim in zip(self.schedules, sims):
            status = status_snapshot(sim)
            if status != self._published[sched.name][0]:
                settings = settings_snapshot(sim) if sim.settings.starts != sched.settings.starts else None
                changed[sched.name] = {"status": status, "settings": settings}
                self._predicted[sched.name] = settings is not None
        out = output_of(sims)
        return ControllerState(state.der, state.kind, changed, (out.value, out.source, out.start), at,
                               (*state.version, 1), state.address, False, state.writes_applied,
                               writes_saved=state.writes_saved)

    def _publish(self, now: int, force: bool = True, state: ControllerState | None = None,
                 full: bool = False) -> None:
        state = state or self._state(now, full)
        if state.output[:2] != self._der_output and self.parent is not None:
            # The DER turns the outputs of its controllers into the device command.
            self._der_output = state.output[:2]
            self.send(self.parent, OutputChanged(self.config["der"], self.config["kind"], state.output[0],
                                                 state.output[1], state.at))
        acked = (self._writes_applied, self._writes_saved)
        if force or state.output != self._last_output or state.schedules or acked != self._acked:
            self._acked = (dict(self._writes_applied), dict(self._writes_saved))
            self._last_output = state.output
            for address in self.subscribers.values():
                self.send(address, state)

    def detail(self) -> dict:
        out = output_of(self.schedules) if self.schedules else None
        info = {"kind": self.config.get("kind"), "starts": self.lifetime.get("starts"),
                "output": None if out is None else out.value, "source": None if out is None else out.source,
                "schedules": {s.name: s.status.state.name for s in self.schedules}}
        if self.triggers:
            info["triggers"] = {name: t.phase.value for name, t in self.triggers.items()}
        return info
