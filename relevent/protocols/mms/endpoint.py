"""The IEC 61850 MMS WAN adapter: serves the site's 90-10 model and turns client writes
and operates into requests of the control session (relevent/wan/session.py), which
validates them, applies the site's policy and sends them to the controller actors.

Threads:
* libiec61850's server thread calls our handlers, holding its data model lock.  A write
  is decided at once by the session (its mirror of the schedule: locks, "StrTm in the
  future").  An operate (EnaReq/DsaReq) is decided by the controller itself: the check
  handler asks the session and waits for the answer, which comes only once the change is
  durable; it then writes the new state into the model (it holds the lock) and answers.
  So a client reads Ready right after a positive response, and never gets one for an
  enable that is not saved.
* the actor thread (the session) sends requests to the controllers, one in flight per
  controller, and hands states over; it never waits for the model lock (it must stay
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

What is applied, staged and pushed is recorded in a pure `ModelBook` (book.py, unit-tested)
that this shell reaches only through its lock (`with self.book as book:`; lock order: the
model lock, then the book's).  The record is of the model as it will be once the switcher
has written everything pushed; a handler, which holds the model lock, first has the
switcher write what is still pushed (`drain`), then writes itself.

After a restart the session asks every controller for its state: the model is rebuilt
from the actors, never from the SCL defaults, and the server listens only once it is.

Parties (relevent/policy, docs/mms.md "Parties"): on a site with `[[party]]` tables, or an
endpoint whose clients without credentials are not its own party, every association is
authenticated: its ACSE password names the party (`ctx.who`), a password no accepted party
has is refused, and so is a client that may do nothing at all.  The association gets a
security token, a key into `clients` (token -> Who, the peer filled in once connected), and
every write, operate and read of that client is made as its party: the session decides
writes and operates; reads are checked here (the party's right to read, per DER).

MMS over TLS (`tls = true`, IEC 62351-3/4, docs/tls.md): libiec61850 serves with the site
policy's certificate and verifies each client's against its CA bundle (chain, validity,
TLS 1.2 at least) during the handshake.  The authenticator then gets the certificate it
verified: `SiteTls.peer_problem` refuses a revoked or expired one (libiec61850's own CRL
list cannot be replaced while it serves), and its CN or a SAN names the party (`cert_cn`;
a certificate naming none is the endpoint's anonymous client).  An ACSE password over TLS
is refused: the certificate, which the revocation check sees, is the credential.  A thread
re-reads the CRLs every `crl_refresh_s` and aborts the associations of a peer refused now.
"""
from __future__ import annotations

import bisect
import dataclasses
import gc
import itertools
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from relevent.messages import ControllerState, Measurement
from relevent.clock import now_ms
from relevent.iec61850 import lib as L
from relevent.iec61850.server import MmsServer, MmsServerError
from relevent.iec61850.switcher import Switcher
from relevent.policy import OPERATIONS
from relevent.protocols.mms.book import ModelBook
from relevent.protocols.mms.model_map import ScheduleRefs, measurement_updates, pristine_settings, written_field
from relevent.runtime.bridge import ThreadBridge
from relevent.scheduling.schedule import Refusal, schedule_names
from relevent.scl.cfg import to_cfg
from relevent.scl.generate import default_ld_inst
from relevent.scl.parser import parse_scl
from relevent.scl.site_model import endpoint_scl
from relevent.security.tls import CertificateRenewed, PeerSessions, SiteTls, cert_names
from relevent.wan.adapter import WanContext, Who, Write
from relevent.wan.session import OPERATE_TIMEOUT_S

log = logging.getLogger("relevent.mms")

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
# Upper bounds (s) of the switch lateness histogram: boundary to outputs in the model, per
# controller switch (relevent_switch_lateness_seconds, docs/observability.md).
LATENESS_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LISTENING = "listening"      # posted by the writer thread once the server listens
LISTEN = "listen"            # queued for the writer thread once every controller's state is queued
CONTACT_EVERY = 1.0          # s: a recognised party's reads count as WAN contact at most this often per client
REFUSAL_TO_WRITE_ERROR = {Refusal.ACCESS_DENIED: L.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED,
                          Refusal.VALUE_INVALID: L.DATA_ACCESS_ERROR_OBJECT_VALUE_INVALID}



class MmsEndpoint:
    def __init__(self, ctx: WanContext, config: dict) -> None:
        self.ctx = ctx
        self.config = config
        self.bridge = ThreadBridge()
        self.server: MmsServer | None = None
        # States to write, in order: controllers' states, measurements, LISTEN.
        self.states: queue.SimpleQueue = queue.SimpleQueue()
        self.writer: threading.Thread | None = None
        # What the model holds or will hold once the switcher has written what is pushed, and
        # the announced next states armed in the C switcher (relevent/protocols/mms/book.py),
        # reachable only with its lock held: `with self.book as book:` (see _Guarded).
        self.book: _Guarded | None = None
        self.switcher: Switcher | None = None
        self.last_switch_ms = 0
        self._gc_last = self._gc_full = 0.0
        self.lds: dict[str, str] = {}           # DER name -> logical device inst
        self.stats = {"writes": 0, "operates": 0, "refused": 0, "gc_collections": 0}
        # Switch lateness since this start: counts per LATENESS_BUCKETS bound (+Inf last), sum (s).
        self.lateness = [0] * (len(LATENESS_BUCKETS) + 1)
        self.lateness_sum = 0.0
        # Operates decided by their controller and not answered yet: control object reference
        # -> (future of the session's Answer, monotonic deadline), or None for one accepted
        # with no effect.  libiec61850 has at most one operate in progress per control object.
        self.operating: dict[str, tuple | None] = {}
        # Clients: security token (given at authentication) -> its party (peer filled in once
        # the association is up).  Token 0: no authenticator installed, every client is the
        # anonymous one (`ctx.who()`).  Entries are added and removed on libiec61850's threads
        # (single dict operations: atomic under the GIL).
        self.clients: dict[int, Who] = {}
        self.tokens = itertools.count(1)
        self.up: set[int] = set()                   # tokens whose association the session counts
        self.anonymous: Who = ctx.who()
        self.nobody = Who("")                       # a token not (or no longer) known: no party
        self.parties = bool(config.get("party_tables")) or not self.anonymous.recognised
        self.der_of_ld: dict[str, str] = {}         # logical device inst -> DER name
        self.readable: dict[int, dict[str, bool]] = {}   # token -> LD inst -> may it read there
        self.contacted: dict[int, float] = {}       # token -> monotonic time its reads last counted
        # MMS over TLS: the site policy (revocation, status), the open sessions by token with
        # their certificates, and the thread that refreshes the CRLs and sweeps them.
        self.tls: SiteTls | None = SiteTls(config["tls_policy"]) if config.get("tls") else None
        self.sessions = PeerSessions()
        self.tls_events = {"handshakes_refused": 0, "last_handshake_refusal": ""}
        self._tls_stop = threading.Event()
        self._tls_thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        ders = cfg["ders"]
        work = Path(self.ctx.state_dir) / "mms" / cfg["name"]
        work.mkdir(parents=True, exist_ok=True)
        scl_path = work / "served.cid"
        scl_path.write_bytes(endpoint_scl(cfg, ders, cfg.get("site", "site")))
        model = parse_scl(scl_path)
        ied = model.ied()
        self.server = MmsServer(to_cfg(model, ied.name), ied.name, str(work),
                                tls=cfg["tls_policy"] if self.tls is not None else None)
        # Every libiec61850 call releases the GIL; with the default 5 ms switch interval a
        # thread getting it back waits behind a busy actor thread (docs/runtime-notes.md).
        sys.setswitchinterval(SWITCH_INTERVAL)
        for der in ders:
            ld = default_ld_inst(der, len(ders))
            if ied.ld(ld) is None:
                raise ValueError(f"{cfg.get('scl') or 'the model'} has no logical device {ld} for DER {der['name']}")
            self.lds[der["name"]] = ld
            self.der_of_ld[ld] = der["name"]
            for kind in der["functions"]:
                for name in schedule_names(der["schedules"]):
                    self._install(ScheduleRefs(ied.name, ld, der["name"], kind, name))
        self.book = _Guarded(ModelBook(ied.name, self.lds, self.server.has, self._pristine))
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
        self.ctx.defer_ready()
        self.writer = threading.Thread(target=self._write_states, name=f"mms-writer-{cfg['name']}", daemon=True)
        self.writer.start()
        self.server.on_connection(self._connection)
        self.server.deny_writes_without_handler()  # every SP write goes through a handler (and the policy)
        if self.parties or self.tls is not None:
            self.server.authenticate(self._authenticate)
        if self.parties:
            self.server.on_read_access(self._may_read)
        if self.tls is not None:
            self.server.on_tls_event(self._tls_event)
            self._tls_thread = threading.Thread(target=self._refresh_tls, name=f"mms-tls-{cfg['name']}", daemon=True)
            self._tls_thread.start()

    def on_synced(self) -> None:
        """Every controller's state is queued for the writer: it listens once they are written."""
        self.states.put(LISTEN)

    def on_state(self, state: ControllerState, unacked: list[tuple]) -> None:
        # `unacked` is as the session had it when the state came in; the writer takes it again
        # when it writes the state (_unacked), as a client may have written since.
        self.states.put(state)

    def on_measurement(self, measurement: Measurement) -> None:
        self.states.put(measurement)  # the writer thread puts it in the DER's MMXU1

    # -- clients (libiec61850's threads) ----------------------------------------------------------
    def _authenticate(self, mechanism: int, password: bytes | None, cert: bytes | None) -> int | None:
        """An association's ACSE authentication: its security token, or None to refuse it."""
        name = self.config["name"]
        if self.tls is not None:
            if cert is None:
                log.warning("mms endpoint=%s association refused: %s", name,
                            "an ACSE password over TLS (the client certificate names the party)"
                            if password is not None else "no client certificate")
                self.tls.refuse("association without a client certificate")
                return None
            problem = self.tls.peer_problem(cert)
            if problem:
                log.warning("mms endpoint=%s association refused: %s", name, problem)
                self.tls.refuse(problem)
                return None
            who = self.ctx.who(credential=("cert-cn", cert_names(cert)))
            if not who.party:   # a certificate naming no party: the endpoint's anonymous client
                who = self.ctx.who()
        elif password is not None:
            who = self.ctx.who(credential=("mms-password", password.decode(errors="replace")))
            if not who.recognised:  # a password no accepted party has: never the anonymous rule
                log.warning("mms endpoint=%s association refused: wrong password", self.config["name"])
                return None
        else:
            who = self.ctx.who()
        if not any(self.ctx.may(who, op).ok for op in OPERATIONS):
            log.warning("mms endpoint=%s association refused: %s may do nothing here", self.config["name"],
                        f"party {who.party!r}" if who.party else "a client without credentials")
            return None
        token = next(self.tokens)
        self.clients[token] = who
        if cert is not None:
            label = f"party {who.party!r}" if who.party else "a client without a party"
            self.sessions.opened(token, cert, lambda: self.server.abort({token}), label)
        return token

    def _tls_event(self, level: int, code: int, message: str) -> None:
        """libiec61850's TLS events (its threads): a refused handshake is logged and counted."""
        if level >= L.TLS_EVENT_INCIDENT or code in L.TLS_REFUSALS:
            self.tls_events["handshakes_refused"] += 1
            self.tls_events["last_handshake_refusal"] = message
            log.warning("mms endpoint=%s TLS handshake refused: %s", self.config["name"], message)

    def _refresh_tls(self) -> None:
        """TLS thread: every crl_refresh_s, re-read the CRLs and abort the associations of a
        peer refused now (revoked, expired, its CRL out of date)."""
        while not self._tls_stop.wait(self.tls.refresh_s):
            try:
                self.tls.refresh()
                renewed = self.tls.renewed()
                if renewed:
                    self.bridge.post(CertificateRenewed(renewed))   # the actor crashes with it, restarted at once
                    return
                for label, reason in self.sessions.sweep(self.tls.peer_problem):
                    self.tls.refuse(reason, closed=True)
                    log.warning("mms endpoint=%s closed the association of %s: %s", self.config["name"], label,
                                reason)
                self.server.abort(set())   # releases the connections closed since
            except Exception:  # noqa: BLE001 - the next round tries again; the status shows the errors
                log.exception("mms endpoint=%s TLS refresh failed", self.config["name"])

    def _who(self, client: int) -> Who:
        """The party of the client with this security token."""
        if not client:
            return self.anonymous
        return self.clients.get(client, self.nobody)

    def _connection(self, connected: bool, client: int, peer: str) -> None:
        """libiec61850's threads: a client association opened (authenticated: at its first
        request) or closed.  Only a recognised party's association counts as contact (the
        session decides)."""
        if client:
            who = self.clients.get(client, self.nobody)
            if connected:
                who = self.clients[client] = dataclasses.replace(who, peer=peer)
                self.up.add(client)
            else:
                self.sessions.closed(client)
                self.clients.pop(client, None)
                self.readable.pop(client, None)
                self.contacted.pop(client, None)
                if client not in self.up:  # authenticated, never used: it was not counted
                    return
                self.up.discard(client)
        else:
            who = dataclasses.replace(self.anonymous, peer=peer)
        self.ctx.connected(connected, who)
        log.info("mms endpoint=%s client %s %s party=%s", self.config["name"], peer,
                 "connected" if connected else "disconnected", who.party or "(none)")

    def _may_read(self, ld: str, client: int) -> bool:
        """libiec61850's thread, at every read of a data object (keep it cheap): may this
        client read in logical device `ld`?  Decided once per client and LD; a recognised
        party's reads count as contact, at most every CONTACT_EVERY per client."""
        seen = self.readable.get(client)
        if seen is None:
            seen = self.readable[client] = {}
        allowed = seen.get(ld)
        if allowed is None:
            who = self._who(client)
            der = self.der_of_ld.get(ld, "")
            allowed = seen[ld] = self.ctx.may(who, "read", der).ok
        if allowed and client:
            now = time.monotonic()
            if now - self.contacted.get(client, 0.0) >= CONTACT_EVERY:
                self.contacted[client] = now
                who = self._who(client)
                if who.recognised:
                    self.ctx.contact(who)
        return allowed

    def _listen(self) -> None:
        """Writer thread: start the server, then tell the actor thread (which reports Ready)."""
        cfg = self.config
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
        self._tls_stop.set()
        if self._tls_thread is not None:
            self._tls_thread.join(timeout=2)
            self._tls_thread = None
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
        on_time = 0
        counts, total = list(self.lateness), self.lateness_sum
        if self.book is not None:
            with self.book as book:
                on_time = book.switched_on_time
                counts, total = list(self.lateness), self.lateness_sum  # _collect counts under the book's lock
        cumulative = list(itertools.accumulate(counts))
        tls = {"tls": {**self.tls.status(), **self.tls_events, "sessions": len(self.sessions)}} if self.tls else {}
        return {**tls, "serving": f"{self.config.get('address')}:{self.config['port']}",
                "switch_priority": self.switcher is not None and self.switcher.boosts, "switched_on_time": on_time,
                **self.stats, "switch_lateness": {"le": list(LATENESS_BUCKETS), "buckets": cumulative[:-1],
                                                  "count": cumulative[-1], "sum": round(total, 6)}}

    def _pristine(self, refs: ScheduleRefs, slots: int) -> dict | None:
        """A schedule's settings as the model holds them since libiec61850 built it, while no
        client can have written (the server does not listen yet): its first state leaves
        out what equals them, mostly zeros the model holds already (bench/README.md, "A
        lean start-up")."""
        initialised = self.server.pristine(refs.ln_ref)
        return None if initialised is None else pristine_settings(refs.kind, initialised, slots)

    # -- handler installation ---------------------------------------------------------------------
    def _install(self, refs: ScheduleRefs) -> None:
        """The schedule's write handlers, made at a first write to each attribute (the
        server asks `written_field`), and its two control objects' handlers."""
        def resolve(path: str):
            found = written_field(refs.kind, path)
            if found is None:
                return None
            field, index, value_type, structure = found
            return self._write_handler(refs, field, index, value_type), structure
        self.server.on_writes(refs.ln_ref, resolve, with_client=True)
        srv = self.server
        for op, do in (("enable", "EnaReq"), ("disable", "DsaReq")):
            srv.on_control(refs.attr(do), self._check_handler(refs, op, do), self._control_handler(refs, op, do),
                           wait=self._wait_handler(refs, op, do), with_client=True)

    # -- handlers (libiec61850's thread) ----------------------------------------------------------
    def _decode(self, value: int, kind: str) -> Any:
        srv = self.server
        if kind == "float" and srv.lib.MmsValue_getType(value) == L.MMS_STRUCTURE:
            value = srv.element(value, 0)
        return srv.decode(value, kind)

    def _write_handler(self, refs: ScheduleRefs, field: str, index: int, kind: str):
        def handle(value: int, client: int) -> int:
            answer = self.ctx.write(refs.der, refs.kind, refs.name, [Write(field, index, self._decode(value, kind))],
                                    who=self._who(client))
            if not answer.ok:
                self.stats["refused"] += 1
                return REFUSAL_TO_WRITE_ERROR.get(answer.refusal, L.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED)
            self._unstage_in_handler((refs.der, refs.kind))  # the write may change the next switch
            self.stats["writes"] += 1
            return L.DATA_ACCESS_ERROR_SUCCESS
        return handle

    def _check_handler(self, refs: ScheduleRefs, op: str, do: str):
        """Model lock held: only hand the operate to the session (which checks the policy and
        queues it for the controller) and accept; the decision is the wait handler's."""
        def check(action: int, ctl_val: int, test: bool, client: int) -> int:
            who = self._who(client)
            if test or not self.server.decode(ctl_val, "bool"):
                if not self.ctx.may(who, op, refs.der, refs.kind).ok:  # no effect, but not for anyone
                    self.stats["refused"] += 1
                    return L.CONTROL_OBJECT_ACCESS_DENIED
                self.operating[refs.attr(do)] = None  # accepted, no effect
                return L.CONTROL_ACCEPTED
            future = self.ctx.operate(refs.der, refs.kind, refs.name, op, who=who)
            if not future.done() or future.result().ok:  # (one the policy refused at once changes nothing)
                self._unstage_in_handler((refs.der, refs.kind))
            self.operating[refs.attr(do)] = (future, time.monotonic() + OPERATE_TIMEOUT_S)
            self.stats["operates"] += 1
            return L.CONTROL_ACCEPTED
        return check

    def _wait_handler(self, refs: ScheduleRefs, op: str, do: str):
        """libiec61850's thread, every ~10 ms until it decides, WITHOUT the model lock (so
        clients' reads go on meanwhile): the client's operate is answered only once this
        returns OK (positive) or FAILED (negative, LastApplError with the AddCause)."""
        def wait(action: int, _ctl_val: int, _test: bool, _client: int) -> int:
            pending = self.operating.get(refs.attr(do))
            if pending is None:
                return L.CONTROL_RESULT_OK
            future, deadline = pending
            if not future.done():
                if time.monotonic() < deadline:
                    return L.CONTROL_RESULT_WAITING
                future.cancel()  # still queued: never sent; already sent: its controller may apply it
                self.operating.pop(refs.attr(do), None)
                log.error("operate %s: no answer from controller %s/%s", refs.attr(do), refs.der, refs.kind)
                self.stats["refused"] += 1
                self.server.set_add_cause(action, L._C.ADD_CAUSE_TIME_LIMIT_OVER)
                return L.CONTROL_RESULT_FAILED
            self.operating.pop(refs.attr(do), None)
            answer = future.result() if not future.cancelled() else None
            if answer is not None and answer.state is not None:
                with self.server.model_lock():
                    self._apply_in_handler(answer.state)  # the client reads the new state right after
            if answer is not None and answer.ok:
                return L.CONTROL_RESULT_OK
            self.stats["refused"] += 1
            denied = answer is None or answer.refusal == Refusal.ACCESS_DENIED
            self.server.set_add_cause(action, L._C.ADD_CAUSE_NO_ACCESS_AUTHORITY if denied
                                      else L.ADD_CAUSE_INCONSISTENT_PARAMETERS)
            return L.CONTROL_RESULT_FAILED
        return wait

    def _control_handler(self, refs: ScheduleRefs, op: str, do: str):
        def execute(_action: int, _ctl_val: int, _test: bool, _client: int) -> int:
            return L.CONTROL_RESULT_OK  # decided and done in the wait handler
        return execute

    # -- actor thread ---------------------------------------------------------------------------
    def on_ready(self, _fds: list[int]) -> None:
        for message in self.bridge.drain():
            if message == LISTENING:
                self.ctx.mark_ready()
            elif isinstance(message, (MmsServerError, CertificateRenewed)):
                raise message

    # -- writer thread ----------------------------------------------------------------------------
    def _write_states(self) -> None:
        listening = False
        while True:
            if listening:
                self._collect_garbage_if_quiet(idle=self.states.empty())
            try:
                item = self.states.get(timeout=GC_TICK if listening else None)
            except queue.Empty:
                continue
            if item is None:
                return
            if item == LISTEN:
                try:
                    self._listen()
                except MmsServerError as exc:  # e.g. port in use: let the actor crash with it
                    self.bridge.post(exc)
                    return
                listening = True
                continue
            try:
                if isinstance(item, Measurement):
                    self._apply_measurement(item)
                else:
                    self._apply(item)
            except Exception:  # one bad state must not stop the writer
                log.exception("applying %r", item)

    def _collect_garbage_if_quiet(self, idle: bool) -> None:
        """Writer thread: collect garbage if it is time to, nothing is queued (`idle`) and no
        switch is near (none armed within GC_CLEAR_MS, none applied in the last
        GC_CLEAR_MS); or anyway after GC_AT_LATEST.  Every GC_FULL_EVERY, all generations."""
        now = time.monotonic()
        if now - self._gc_last < (GC_EVERY if idle else GC_AT_LATEST):
            return
        wall = now_ms()
        with self.book as book:
            armed = book.armed_at()
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

    def _unacked(self, state: ControllerState) -> list[tuple]:
        """What clients wrote to this controller after `state`, as the session has it now:
        taken with the book held, it holds every write whose handler has not yet taken the
        book, and a write after it drains what this push puts in before its own value goes
        in (_unstage_in_handler).  Taken when the state came in instead, a write made
        since was overwritten with the value before it until the next state (a read-back
        of -inf gave inf, seen on a loaded machine)."""
        return self.ctx.unacked(state.der, state.kind, state.writes_applied.get(self.config["name"], 0))

    def _apply(self, state: ControllerState) -> None:
        """Writer thread: have the switcher write a state into the model unless a newer one
        is there or will be; what clients wrote after it stays as they wrote it (`_unacked`)."""
        if state.der not in self.lds or self.server is None:
            return
        with self.book as book:
            unacked = self._unacked(state)
            self._collect(book)
            plan = book.take(state, unacked, self.switcher.cancel)
            self._cancelled(book)
            if plan is None:
                return
            if plan.updates:
                self.switcher.push(plan.outputs, plan.rest)
            self._stage(book, state.then, unacked)  # after the push: it may be due at once

    def _apply_in_handler(self, state: ControllerState) -> None:
        """libiec61850's thread, model lock held: write a state into the model now, after
        what is still pushed, unless a newer one is there or will be."""
        if state.der not in self.lds or self.server is None:
            return
        with self.book as book:
            unacked = self._unacked(state)
            self.switcher.drain()
            self._collect(book)
            plan = book.take(state, unacked, self.switcher.cancel)
            self._cancelled(book)
            if plan is None:
                return
            if plan.updates:
                self.server.update(plan.updates, locked=True)
            self._stage(book, state.then, unacked)

    # -- switches ---------------------------------------------------------------------------------
    def _stage(self, book: ModelBook, then: ControllerState | None, unacked: list[tuple]) -> None:
        """`book` held, nothing staged for this controller (its caller took or dropped it):
        arm `then` in the switcher."""
        plan = book.stage(then, unacked)
        if plan is not None:
            self.switcher.arm(plan.serial, then.at, plan.outputs, plan.rest)
            book.armed(plan)  # only once armed (reports are collected under the book's lock)

    def _unstage_in_handler(self, key: tuple) -> None:
        """libiec61850's thread, model lock held: what is pushed goes into the model now, and
        the switch announced for this controller is dropped (one written is recorded)."""
        with self.book as book:
            self.switcher.drain()
            self._collect(book)
            book.settle(key=key)
            book.drop_staged(key, self.switcher.cancel)
            self._cancelled(book)

    def _switched(self) -> None:
        """The follower thread, after the switcher applied some switches: records them a
        few at a time, so a handler (which holds the model lock, and reads wait for it)
        waits for a few of them at most."""
        more = True
        while more and self.server is not None:
            with self.book as book:
                self._collect(book)
                more = book.settle(limit=SETTLE_BATCH)
            if more:
                time.sleep(0)  # let a handler waiting for the book have it

    def _late(self, late_s: float) -> None:
        self.lateness[bisect.bisect_left(LATENESS_BUCKETS, late_s)] += 1
        self.lateness_sum += late_s

    def _cancelled(self, book: ModelBook) -> None:
        """`book` held, after a take or drop: a staged switch cancelled once it was due (the
        switcher had not run yet) reaches the model by the newer plan, so it is a late switch,
        counted with the time until now (a lower bound: the push writes it just after)."""
        now = now_ms()
        for at in book.take_cancelled():
            if at <= now:
                self._late((now - at) / 1000)
                self.stats["switches_cancelled_late"] = self.stats.get("switches_cancelled_late", 0) + 1

    def _collect(self, book: ModelBook) -> None:
        """`book` held: take the switcher's reports."""
        batches: dict[int, Any] = {}
        for done in self.switcher.collect():
            book.reported(done.key, done)
            self.last_switch_ms = max(self.last_switch_ms, done.at_ms)
            self._late(max(0.0, (done.outputs_ns - done.at_ms * 1_000_000) / 1e9))   # early counts as on time
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


class _Guarded:
    """The model book behind its lock: the only way to reach it is `with guarded as book:`,
    so no code can read or change it unlocked.  Lock order (by structure, too): the
    model lock (held by libiec61850 around handlers) before this one, and nothing done
    under this one takes another lock but the switcher's own short mutex and the session's
    lock (to read `unacked`: the session takes neither of ours while it holds it)."""

    def __init__(self, book: ModelBook) -> None:
        self._book = book
        self._lock = threading.Lock()

    def __enter__(self) -> ModelBook:
        self._lock.acquire()
        return self._book

    def __exit__(self, *_exc: Any) -> None:
        self._lock.release()
