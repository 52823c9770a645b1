"""The WAN control session: what every WAN endpoint shares, whatever its protocol.

One `ControlSession` lives in each WAN endpoint actor (relevent/actors/endpoint.py).  The
protocol adapter (MMS, HTTP, MQTT EMS, ...) never reaches into the actor: it talks to a
`WanContext` (relevent/wan/adapter.py), whose calls are safe from any thread (libiec61850's,
an asyncio loop's, a broker client's), and the session calls the adapter back from the
actor thread.  The session owns:

* the **snapshot**: at start (and so after every restart of the endpoint) it subscribes to
  every controller (SnapshotRequest) and tells the adapter once every controller's state
  is in (`on_synced`), so a client never reads placeholders as the state of a schedule;
* **one request in flight per controller**: thespian does not keep the order of messages
  sent in quick succession, so an enable could overtake the writes before it.  Requests
  queue per controller and the next goes out when the one before is acknowledged (writes
  by a state whose `writes_applied` includes them, an operate by its result);
* **restart tracking**: a controller's new incarnation gets, in order, every write it has
  not acknowledged, the request that was in flight, and the queue;
* **validation before the answer**: every write is checked against a *mirror* of the
  schedule (the controller's last state plus the writes accepted since) with the
  scheduling core's own rules (`Schedule.write`, one dispatch of the written fields) and
  with the site's policy (`relevent.policy.check`), all or nothing; an enable or disable
  is decided by the controller itself, after the policy check, and answered once durable;
* **WAN contact** for the site's "no telecom" schedules (a request, or a connected client,
  once per CONTACT_TICK), and **forecasts**.

Every request carries a `Who`: the party the client's credential names (`who()`: an MMS
password, an HTTP token, a 104 or OpenADR peer identity of a `[[party]]` this endpoint
accepts), else what the endpoint's `anonymous` rule gives.  The one policy check
(`relevent.policy.check`: rights, ownership, priority band, locks) decides with it, here,
never in an adapter; only a recognised party's requests count as WAN contact; and every
request with its answer is appended to this endpoint's audit chain
(`relevent/audit/site.py`), refusals included.

Locking: `lock` guards the mirrors, views, pending writes and waiters; it is held only for
dictionary work, never while waiting, and no callback into the adapter runs under it.  An
adapter may call the context while holding a lock of its own (libiec61850's model lock).
"""
from __future__ import annotations

import concurrent.futures
import hmac
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from relevent.audit.log import AuditLog
from relevent.audit.site import open_chain
from relevent.messages import (
    ControllerState, ForecastReply, ForecastRequest, Measurement, OperateResult, ScheduleOperate, ScheduleWrite,
    ScheduleWrites, SnapshotRequest, WanContact, Wakeup,
)
from relevent.clock import now_ms
from relevent.policy import NOTHING, READ_ONLY, UNRESTRICTED, Decision, Request, Rights, check, may
from relevent.runtime.bridge import ThreadBridge
from relevent.scheduling.schedule import (
    LOCKABLE, EnaErr, Refusal, Schedule, from_snapshot, schedule_names, settings_snapshot,
)
from relevent.topology.loader import anonymous_mode

log = logging.getLogger("relevent.wan")

OPERATE_TIMEOUT_S = 5.0      # an enable/disable not answered by its controller by then is refused
FORECAST_TIMEOUT_S = 5.0
CONTACT_TICK_S = 1.0         # s between WanContact reports while clients are connected
FIRST_STATES_TIMEOUT_S = 10.0  # serve anyway if a controller has not sent its state by then
AUDIT_DOWN = "the audit log cannot be written (audit_failure = \"refuse\"): nothing was applied"
FORECAST_MAX_HOURS = 168     # 7 days: what the edge keeps of control data


@dataclass(frozen=True)
class Write:
    """One field written by a client: a 90-10 name (Schedule FIELDS), its index (Val 1..100,
    StrTm 1..16, else 0) and value (StrTm in ms since the epoch, None clears it)."""
    field: str
    index: int
    value: Any


@dataclass(frozen=True)
class Who:
    """Who makes a request: the party its credential names (or the endpoint's `anonymous`
    rule gives it; "" for a client no party is recognised in) and its peer (for audit).
    Only a `recognised` party's requests count as WAN contact."""
    party: str
    peer: str = ""
    recognised: bool = False


@dataclass(frozen=True)
class Answer:
    """The session's answer to a write or an operate, for the adapter to encode.  A refusal
    names its `rule` ("lock:StrTm", "SchdEnaErr", "value", "unknown", "timeout") and the
    90-10 codes: `refusal` (MMS DataAccessError: 3 access denied, 11 value invalid) and,
    for a failed enable, `ena_err` (SchdEnaErr: 2 NumEntr, 3 SchdIntv, 4 values, 6 StrTm)."""
    ok: bool
    rule: str = ""
    refusal: Refusal | None = None
    reason: str = ""
    ena_err: int | None = None
    state: ControllerState | None = None   # an operate's: the controller's state right after it

    @staticmethod
    def refused(rule: str, refusal: Refusal | None, reason: str, **kw: Any) -> "Answer":
        return Answer(False, rule, refusal, reason, **kw)


@dataclass
class _Controller:
    """What the session knows of one controller (actor thread, except the view under `lock`)."""
    address: Any = None
    incarnation: int | None = None
    outbox: list = field(default_factory=list)   # requests not sent yet, in order
    in_flight: Any = None                         # the request sent and not acknowledged
    sent_seq: int = 0                             # the newest write sent to it (any incarnation)
    version: tuple = (0, 0)                       # of the newest state seen
    output: tuple = (None, None, None)            # (value, source schedule, run start ms)
    at: int = 0
    then: ControllerState | None = None           # announced next state (applied when due in views)
    statuses: dict = field(default_factory=dict)  # schedule name -> status snapshot


def answer_of(result: OperateResult, schedule: str) -> Answer:
    """An operate's result from its controller, as an Answer naming the rule."""
    if result.ok:
        return Answer(True, state=result.state)
    status = result.state.schedules.get(schedule, {}).get("status") or {}
    ena_err = status.get("ena_err")
    if result.refusal == int(Refusal.VALUE_INVALID) and ena_err not in (None, int(EnaErr.NONE)):
        return Answer.refused("SchdEnaErr", Refusal.VALUE_INVALID, result.reason, ena_err=ena_err, state=result.state)
    refusal = None if result.refusal is None else Refusal(result.refusal)
    rule = "lock" if refusal == Refusal.ACCESS_DENIED else "controller"
    return Answer.refused(rule, refusal, result.reason, state=result.state)


class ControlSession:
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor = actor
        self.config = config
        self.name: str = config["name"]
        self.party: str = config.get("party") or config["name"]
        # Parties (relevent/policy): rights by name, and the credentials of those this endpoint accepts.
        tables = config.get("party_tables") or []
        accepted = set(config.get("parties") or [t["name"] for t in tables])
        self.rights_of: dict[str, Rights] = {t["name"]: Rights.of(t) for t in tables}
        self.credentials: list[tuple[str, str, str]] = []   # (kind, value, party)
        for t in tables:
            if t["name"] in accepted:
                self.credentials += [(kind, value, t["name"]) for kind, value in
                                     (("mms-password", t.get("mms_password")), ("http-token", t.get("http_token")),
                                      ("cert-cn", t.get("cert_cn")))
                                     if value]
                self.credentials += [("peer", peer, t["name"]) for peer in t.get("peers", [])]
        self.anonymous: str = anonymous_mode(config)
        self.default_who = self.who()
        self.audit: AuditLog | None = None     # this endpoint's chain (relevent/audit/site.py), from start
        self.audit_refuses = False              # [site] audit_failure = "refuse": no unrecorded instruction
        self.ders: dict[str, dict] = {d["name"]: d for d in config.get("ders", [])}
        self.adapter: Any = None
        self.bridge = ThreadBridge()
        self.lock = threading.Lock()
        self.mirrors: dict[tuple, Schedule] = {}      # (der, kind, schedule) -> settings as clients see them
        # (der, kind) -> {(schedule, field, index): (seq, value, party)}: by controller, because
        # every state of a controller looks up its own (a scan of every controller's was most
        # of the endpoint's work under a stream of writes; bench/README.md, "Scale").
        self.pending: dict[tuple, dict[tuple, tuple]] = {}
        self.waiting: dict[int, tuple] = {}           # operate request id -> (future, schedule)
        self.forecasts: dict[int, concurrent.futures.Future] = {}
        self.controllers: dict[tuple, _Controller] = {}
        self.measured: dict[str, Measurement] = {}
        self.request_ids = itertools.count(1)
        self.write_seqs = itertools.count(1)
        self.stats = {"writes": 0, "operates": 0, "refused": 0, "resent": 0}
        self.refusals: dict[tuple[str, str], int] = {}   # (party, rule) -> refusals (under `lock`)
        self.awaiting: set[tuple] = set()
        self.synced = False
        self.clients = 0
        self.last_request = 0
        self._contact_sent = 0
        for der in self.ders.values():
            for kind in der["functions"]:
                self.controllers[(der["name"], kind)] = _Controller()
                locks = (der.get("locks") or {}).get(kind, {})
                for name in schedule_names(der["schedules"]):
                    # Until its controller's first state: the topology's locks and value slots,
                    # as the controller has them, so the policy holds from the first request.
                    reserve = name.startswith("Res_")
                    mirror = Schedule(name, boolean=kind == "OnOff", periodic=reserve, reserve=reserve,
                                      locked=frozenset(x for x in locks.get(name, []) if x in LOCKABLE))
                    mirror.settings.values = [False if kind == "OnOff" else 0.0] * der.get("values", 100)
                    self.mirrors[(der["name"], kind, name)] = mirror

    # -- life cycle (actor thread) --------------------------------------------------------------
    def start(self, adapter: Any) -> None:
        self.adapter = adapter
        site = getattr(self.actor, "site", None) or {}
        if site.get("state_dir"):
            self.audit = open_chain(site, self.name)
        self.audit_refuses = self.audit is not None and site.get("audit_failure") == "refuse"
        self.awaiting = set(self.controllers)
        self.actor.send(self.actor.parent, SnapshotRequest(self.name, self.actor.myAddress))
        self.actor.wakeupAfter(CONTACT_TICK_S, Wakeup("contact"))
        self.actor.wakeupAfter(FIRST_STATES_TIMEOUT_S, Wakeup("first-states"))
        if not self.awaiting:
            self._synced()

    def stop(self) -> None:
        for fut, _ in list(self.waiting.values()):
            fut.cancel()
        for fut in list(self.forecasts.values()):
            fut.cancel()
        self.bridge.close()
        if self.audit is not None:
            self.audit.close()

    def fds(self) -> list[int]:
        return [self.bridge.fileno()]

    def detail(self) -> dict:
        # refusals: [party ("" unrecognised), rule, count]; contact_ms: the last WAN contact
        # (now while a recognised party's client is connected; 0 never): metrics and history.
        with self.lock:
            refusals = [[party, rule, n] for (party, rule), n in self.refusals.items()]
        contact = now_ms() if self.clients > 0 else self.last_request
        return {"party": self.party, "synced": self.synced, "clients": self.clients, **self.stats,
                "refusals": refusals, "contact_ms": contact}

    def _synced(self) -> None:
        if self.synced:
            return
        self.synced = True
        if self.awaiting:
            log.warning("wan endpoint=%s serving without the state of %s after %g s", self.name,
                        sorted(self.awaiting), FIRST_STATES_TIMEOUT_S)
        self.adapter.on_synced()

    # -- the adapter's side (any thread) ------------------------------------------------------------
    def who(self, peer: str = "", credential: tuple | None = None) -> Who:
        """The party a client is, from the credential it presented: ("mms-password", secret),
        ("http-token", token), ("cert-cn", names) (the CN and subject alternative names of a
        TLS client certificate the handshake verified, a name or a tuple of them: the first
        that is a party's `cert_cn` counts) or ("peer", identity) of a party this endpoint
        accepts.  Without a credential: the endpoint's `anonymous` rule (act as its `party`,
        or no party).  A credential that names no accepted party gives no party at all,
        whatever the anonymous rule: the adapter refuses that client (authentication failed)."""
        if credential is not None:
            kind, value = credential
            for one in (value if isinstance(value, (tuple, list)) else (value,)):
                given = str(one).encode()
                for k, v, party in self.credentials:
                    if k == kind and hmac.compare_digest(v.encode(), given):
                        return Who(party, peer, True)
            if kind != "peer":   # a peer address is not a secret: unknown peers are anonymous
                return Who("", peer, False)
        if self.anonymous == "party":
            return Who(self.party, peer, True)
        return Who("", peer, False)

    def rights(self, who: Who) -> Rights:
        if not who.party:
            return READ_ONLY if self.anonymous == "read" else NOTHING
        if not self.rights_of:
            return UNRESTRICTED   # a site without [[party]] tables: today's behaviour
        return self.rights_of.get(who.party, NOTHING)

    def may(self, who: Who, operation: str, der: str = "", kind: str | None = None) -> Decision:
        """May `who` do `operation` (read, ...) on this DER (and function)?  Without a DER:
        on at least one (an adapter deciding whether to serve a client at all)."""
        rights = self.rights(who)
        if not der:
            ok = operation in rights.operations
            return Decision.allow() if ok else may(rights, operation, "", None, who.party)
        return may(rights, operation, der, kind, who.party)

    def write(self, der: str, kind: str, schedule: str, writes: list[Write], who: Who | None = None) -> Answer:
        """Validate `writes` (all or nothing) against the mirror and the policy; on success
        they are queued for the controller in order and the answer is positive."""
        who = who or self.default_who
        now = now_ms()
        key = (der, kind, schedule)
        rights = self.rights(who)
        with self.lock:
            mirror = self.mirrors.get(key)
            if mirror is None:
                return self._refused_locked(Answer.refused("unknown", Refusal.ACCESS_DENIED,
                                                           f"no schedule {der}/{kind}/{schedule}"), who,
                                            ("write", der, kind, schedule, writes))
            trial = mirror.copy()
            for w in writes:
                decision = check(Request(who.party, "write", der, kind, schedule, w.field, w.value), trial, rights)
                if not decision.ok:
                    return self._refused_locked(Answer.refused(decision.rule, decision.refusal, decision.reason), who,
                                                ("write", der, kind, schedule, writes))
                outcome = trial.write(w.field, w.index, w.value, now)
                if not outcome.ok:
                    return self._refused_locked(Answer.refused("value", outcome.refusal, outcome.reason), who,
                                                ("write", der, kind, schedule, writes))
            if who.party:
                trial.settings.writer = who.party
            if self.audit_refuses and not self._audit(who, "write", der, kind, schedule, Answer(True), writes):
                # audit_failure = "refuse": no instruction takes effect unrecorded (docs/audit.md)
                return self._refused_locked(Answer.refused("audit", Refusal.ACCESS_DENIED, AUDIT_DOWN), who)
            self.mirrors[key] = trial
            messages = []
            for w in writes:
                seq = next(self.write_seqs)
                self.pending.setdefault(key[:2], {})[(schedule, w.field, w.index)] = (seq, w.value, who.party)
                messages.append(ScheduleWrite(der, kind, schedule, w.field, w.value, w.index, seq, who.party))
            self.stats["writes"] += len(writes)
            self._heard(who, now)
        for message in messages:
            self.bridge.post(message)
        answer = Answer(True)
        if not self.audit_refuses:
            self._audit(who, "write", der, kind, schedule, answer, writes)
        return answer

    def operate(self, der: str, kind: str, schedule: str, op: str,
                who: Who | None = None) -> concurrent.futures.Future:
        """An enable or disable: a future of its Answer, set once the controller made it
        durable (or refused it).  Cancel the future to give up: an operate still queued is
        then never sent; one already sent may still be applied by its controller, and the
        schedule's state shows whether it was."""
        who = who or self.default_who
        fut: concurrent.futures.Future = concurrent.futures.Future()
        rights = self.rights(who)
        with self.lock:
            mirror = self.mirrors.get((der, kind, schedule))
            if mirror is None:
                fut.set_result(self._refused_locked(Answer.refused("unknown", Refusal.ACCESS_DENIED,
                                                                   f"no schedule {der}/{kind}/{schedule}"), who,
                                                    (op, der, kind, schedule, None)))
                return fut
            decision = check(Request(who.party, op, der, kind, schedule), mirror, rights)
            if not decision.ok:
                fut.set_result(self._refused_locked(Answer.refused(decision.rule, decision.refusal, decision.reason),
                                                    who, (op, der, kind, schedule, None)))
                return fut
            if self.audit_refuses and not self._audit(who, op, der, kind, schedule, Answer(True), requested=True):
                fut.set_result(self._refused_locked(Answer.refused("audit", Refusal.ACCESS_DENIED, AUDIT_DOWN), who))
                return fut
            self._heard(who, now_ms())
            request_id = next(self.request_ids)
            self.waiting[request_id] = (fut, schedule)
            self.stats["operates"] += 1
        fut.add_done_callback(lambda f: f.cancelled() and self._forget_operate(request_id))
        fut.add_done_callback(lambda f: f.cancelled() or f.result().ok or self._count_refusal(who, f.result().rule))
        fut.add_done_callback(lambda f: self._audit(
            who, op, der, kind, schedule, Answer.refused("gave-up", None, "the client stopped waiting; the "
                                                         "controller may still apply it") if f.cancelled()
            else f.result()))
        self.bridge.post(ScheduleOperate(der, kind, schedule, op, request_id))
        return fut

    def _forget_operate(self, request_id: int) -> None:
        """Its client gave up: not sent yet, it never will be (_pump drops it); sent, its
        controller may still apply it, and its state then shows that."""
        with self.lock:
            self.waiting.pop(request_id, None)

    def operate_wait(self, der: str, kind: str, schedule: str, op: str,
                     timeout: float = OPERATE_TIMEOUT_S, who: Who | None = None) -> Answer:
        """`operate`, waiting for the answer (a thread that may block)."""
        fut = self.operate(der, kind, schedule, op, who)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            with self.lock:
                return self._refused_locked(Answer.refused(   # audited by operate's callback ("gave-up")
                    "timeout", Refusal.ACCESS_DENIED, f"controller {der}/{kind} did not answer in {timeout:g} s"),
                    who or self.default_who)

    def forecast(self, der: str, kind: str, window_ms: int) -> concurrent.futures.Future:
        """The controller's output over the next `window_ms`: a future of
        [(ms, value, schedule or None)], first the value in force now."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        request_id = next(self.request_ids)
        with self.lock:
            self.forecasts[request_id] = fut
        fut.add_done_callback(lambda _f: self._forget_forecast(request_id))  # answered, or given up
        self.bridge.post(ForecastRequest(der, kind, request_id, window_ms))
        return fut

    def _forget_forecast(self, request_id: int) -> None:
        with self.lock:
            self.forecasts.pop(request_id, None)

    def view(self, der: str, kind: str, now: int | None = None) -> dict | None:
        """What a reader sees of one controller now: output, and per schedule its status and
        settings (with the writes accepted since the controller's last state).  A switch
        the controller announced for a boundary that has passed is shown as made, so every
        protocol shows the same state as MMS does at that instant."""
        now = now_ms() if now is None else now
        with self.lock:
            ctl = self.controllers.get((der, kind))
            if ctl is None:
                return None
            statuses, output, at = dict(ctl.statuses), ctl.output, ctl.at
            then = ctl.then
            if then is not None and then.at <= now:
                for name, change in then.schedules.items():
                    statuses[name] = change["status"]
                output, at = then.output, then.at
            schedules = {}
            for (d, k, name), mirror in self.mirrors.items():
                if d == der and k == kind:
                    schedules[name] = {"status": statuses.get(name), "settings": settings_snapshot(mirror)}
        return {"der": der, "kind": kind, "output": output[0], "source": output[1], "run_start": output[2],
                "at": at, "schedules": schedules}

    def measurement(self, der: str) -> Measurement | None:
        with self.lock:
            return self.measured.get(der)

    def unacked(self, der: str, kind: str, acked: int) -> list[tuple]:
        """Writes to this controller accepted after its write `acked`: (schedule, field, index, value)."""
        with self.lock:
            return [(*k, v[1]) for k, v in self.pending.get((der, kind), {}).items() if v[0] > acked]

    def contact(self, who: Who | None = None) -> None:
        """A request of `who` was served (a read): WAN contact for the site's "no telecom"
        schedules, if it is a recognised party (security.md: never from the unknown)."""
        self._heard(who or self.default_who, now_ms())

    def connected(self, up: bool, who: Who | None = None) -> None:
        """A client connected (True) or went away (False).  While a recognised party's
        client is connected (an authenticated association), the site is in contact."""
        if not (who or self.default_who).recognised:
            return
        with self.lock:
            self.clients = max(0, self.clients + (1 if up else -1))
        self.last_request = now_ms()

    def _heard(self, who: Who, now: int) -> None:
        if who.recognised:
            self.last_request = max(self.last_request, now)

    def _count_refusal(self, who: Who, rule: str) -> None:
        """An operate its controller refused (SchdEnaErr, lock, ...): counted like the session's own."""
        with self.lock:
            self.refusals[(who.party, rule)] = self.refusals.get((who.party, rule), 0) + 1

    def _refused_locked(self, answer: Answer, who: Who, request: tuple | None = None) -> Answer:
        """Count and log a refusal; audit it when `request` = (action, der, kind, schedule, writes)."""
        self.stats["refused"] += 1
        key = (who.party, answer.rule)
        self.refusals[key] = self.refusals.get(key, 0) + 1
        log.info("wan endpoint=%s party=%s peer=%s refused rule=%s: %s", self.name, who.party or "(unrecognised)",
                 who.peer, answer.rule, answer.reason)
        if request is not None:
            action, der, kind, schedule, writes = request
            self._audit(who, action, der, kind, schedule, answer, writes)
        return answer

    def _audit(self, who: Who, action: str, der: str, kind: str, schedule: str, answer: Answer,
               writes: list | None = None, requested: bool = False) -> bool:
        """One instruction and its answer, in this endpoint's audit chain; whether it was
        written.  With [site] audit_failure = "continue" (the default) a log that cannot be
        written is reported and the instruction still answered: the site keeps following its
        grid operator when a disk is full.  With "refuse" the caller writes the record first
        (an operate as `requested`, its answer in a second record) and refuses the
        instruction when it cannot be written (docs/audit.md)."""
        if self.audit is None:
            return True
        record = {"kind": "instruction", "party": who.party, "protocol": self.config.get("protocol", ""),
                  "peer": who.peer, "endpoint": self.name, "der": der, "function": kind, "schedule": schedule,
                  "action": action,
                  "answer": "requested" if requested else "ok" if answer.ok else {"refused": answer.rule,
                                                                                    "reason": answer.reason}}
        if writes:
            record["detail"] = {"writes": [[w.field, w.index, w.value] for w in writes]}
        try:
            self.audit.append(record)
            return True
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.error("audit endpoint=%s: cannot append: %s", self.name, exc)
            return False

    # -- actor thread -------------------------------------------------------------------------------
    def on_ready(self, _fds: list[int]) -> None:
        batches: dict[tuple, list] = {}
        for message in self.bridge.drain():
            if isinstance(message, ForecastRequest):
                self._ask_forecast(message)
                continue
            key = (message.der, message.kind)
            if isinstance(message, ScheduleWrite):
                batches.setdefault(key, []).append(message)
                continue
            self._send(key, batches.pop(key, None))  # writes made before an operate go first
            message.reply_to = self.actor.myAddress
            self._send(key, message)
        for key, writes in batches.items():
            self._send(key, writes)

    def _ask_forecast(self, request: ForecastRequest) -> None:
        ctl = self.controllers.get((request.der, request.kind))
        if ctl is None or ctl.address is None:
            with self.lock:
                fut = self.forecasts.pop(request.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result([])
            return
        request.reply_to = self.actor.myAddress
        self.actor.send(ctl.address, request)

    def on_wakeup(self, payload: Any) -> bool:
        if not isinstance(payload, Wakeup):
            return False
        if payload.what == "contact":
            contact = now_ms() if self.clients > 0 else self.last_request
            if contact > self._contact_sent:
                self._contact_sent = contact
                self.actor.send(self.actor.parent, WanContact(contact, self.name))
            self.actor.wakeupAfter(CONTACT_TICK_S, Wakeup("contact"))
            return True
        if payload.what == "first-states":
            self._synced()
            return True
        return False

    def on_message(self, message: Any) -> bool:
        if isinstance(message, (ControllerState, Measurement)) and message.der not in self.ders:
            return True   # a DER this endpoint does not serve (`ders`): the site sends none; ignored
        if isinstance(message, Measurement):
            with self.lock:
                self.measured[message.der] = message
            if hasattr(self.adapter, "on_measurement"):
                self.adapter.on_measurement(message)
            return True
        if isinstance(message, ControllerState):
            self._track(message)
            self._acknowledged((message.der, message.kind), state=message)
            unacked = self._record(message)
            self.adapter.on_state(message, unacked)
            self._first_state((message.der, message.kind))
            return True
        if isinstance(message, OperateResult):
            key = (message.state.der, message.state.kind)
            self._track(message.state)
            self._acknowledged(key, state=message.state)
            self._acknowledged(key, result=message)
            unacked = self._record(message.state)
            with self.lock:
                fut, schedule = self.waiting.pop(message.request_id, (None, ""))
            if fut is None or not fut.set_running_or_notify_cancel():
                # a refused enable whose requester is gone, or late: shown like any state
                self.adapter.on_state(message.state, unacked)
            else:
                fut.set_result(answer_of(message, schedule))
            return True
        if isinstance(message, ForecastReply):
            with self.lock:
                fut = self.forecasts.pop(message.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(message.events)
            return True
        return False

    def _first_state(self, key: tuple) -> None:
        if key in self.awaiting:
            self.awaiting.discard(key)
            if not self.awaiting:
                self._synced()

    def _record(self, state: ControllerState) -> list[tuple]:
        """Take a controller's state into the views and mirrors (unless a newer one is in);
        writes it includes are no longer pending, those it does not are kept on top of it.
        Returns those unacknowledged writes: (schedule, field, index, value)."""
        key = (state.der, state.kind)
        acked = state.writes_applied.get(self.name, 0)
        saved = state.writes_saved.get(self.name, 0)
        with self.lock:
            # A write is forgotten only once saved: one applied but not yet saved is lost if its
            # controller dies within FLUSH_DELAY, and the next incarnation gets it again.
            pending = self.pending.get(key, {})
            for k in [k for k, v in pending.items() if v[0] <= saved]:
                del pending[k]
            unacked = sorted((v[0], *k, v[1]) for k, v in pending.items() if v[0] > acked)
            ctl = self.controllers.setdefault(key, _Controller())
            if state.version <= ctl.version:
                return [u[1:] for u in unacked]
            ctl.version, ctl.output, ctl.at, ctl.then = state.version, state.output, state.at, state.then
            for name, change in state.schedules.items():
                ctl.statuses[name] = change["status"]
                if change["settings"] is None:
                    continue
                mirror = from_snapshot(name, change["status"], change["settings"])
                for _seq, sched, field_, index, value in unacked:
                    if sched == name:
                        mirror.write(field_, index, value, None)
                        mirror.settings.writer = pending[(sched, field_, index)][2] or \
                            mirror.settings.writer
                self.mirrors[key + (name,)] = mirror
        return [u[1:] for u in unacked]

    def _send(self, key: tuple, message: Any) -> None:
        """Queue a request for its controller; it goes out when the one before it has been
        acknowledged and the controller's address is known (its first state)."""
        if not message:
            return
        if isinstance(message, list):
            message = ScheduleWrites(key[0], key[1], message, self.name)
        self.controllers.setdefault(key, _Controller()).outbox.append(message)
        self._pump(key)

    def _pump(self, key: tuple) -> None:
        ctl = self.controllers[key]
        while ctl.address is not None and ctl.in_flight is None and ctl.outbox:
            message = ctl.outbox.pop(0)
            if isinstance(message, ScheduleOperate):
                with self.lock:
                    waiter = self.waiting.get(message.request_id)
                if waiter is None or waiter[0].cancelled():  # its client gave up: never apply it later
                    log.warning("dropping operate %s on %s/%s: its client gave up", message.op, *key)
                    with self.lock:
                        self.waiting.pop(message.request_id, None)
                    continue
            ctl.in_flight = message
            if isinstance(message, ScheduleWrites) and message.writes:
                ctl.sent_seq = max(ctl.sent_seq, message.writes[-1].seq)
            self.actor.send(ctl.address, message)

    def _acknowledged(self, key: tuple, state: ControllerState | None = None,
                      result: OperateResult | None = None) -> None:
        ctl = self.controllers.get(key)
        sent = None if ctl is None else ctl.in_flight
        if sent is None:
            return
        if isinstance(sent, ScheduleWrites):
            done = state is not None and state.writes_applied.get(self.name, 0) >= sent.writes[-1].seq
        else:
            done = result is not None and result.request_id == sent.request_id
        if done:
            ctl.in_flight = None
            self._pump(key)

    def _track(self, state: ControllerState) -> None:
        """Remember where each controller is.  A new incarnation gets, in order: every write
        it has not acknowledged (one sent to a controller that then died would be lost), the
        request that was in flight, and the queue."""
        key = (state.der, state.kind)
        ctl = self.controllers.setdefault(key, _Controller())
        # An incarnation is its address and its stamp: controllers hosted in their DER's
        # process (controller_isolation = "der") keep the DER's address across restarts.
        if state.address is None or ctl.incarnation == state.version[0] and ctl.address == state.address:
            return
        if ctl.incarnation is not None and state.version[0] < ctl.incarnation:
            return  # a late message of an incarnation already replaced: its address is dead
        known_before = ctl.address is not None
        ctl.address, ctl.incarnation = state.address, state.version[0]
        if known_before:
            acked = state.writes_saved.get(self.name, 0)  # what the new incarnation loaded
            with self.lock:  # sent and possibly lost; those still queued go out in their turn
                resend = sorted((v[0], *k, v[1], v[2]) for k, v in self.pending.get(key, {}).items()
                                if acked < v[0] <= ctl.sent_seq)
            sent, ctl.in_flight = ctl.in_flight, None
            if isinstance(sent, ScheduleOperate):
                ctl.outbox.insert(0, sent)
            if resend:
                log.warning("re-sending %d unacknowledged writes to the new %s/%s", len(resend), *key)
                self.stats["resent"] += len(resend)
                ctl.outbox.insert(0, ScheduleWrites(key[0], key[1], [
                    ScheduleWrite(key[0], key[1], name, field_, value, index, seq, party)
                    for seq, name, field_, index, value, party in resend], self.name))
        self._pump(key)
