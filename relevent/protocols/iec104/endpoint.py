"""The IEC 60870-5-104 WAN adapter (`protocol = "iec104"`): the site as a controlled station.

Invariant: a command is confirmed positively (ACT_CON) only once the control session has
accepted its schedule's writes and the policy has let its enable (or, for a release, its
disable) through; it is terminated (ACT_TERM) only once the controller has answered that
enable or disable ok, durable.  Everything else is a negative ACT_CON, sent at once: a
controlling station never waits on our controllers for its confirmation, and never gets a
termination for something the site did not do.  What a command means is mapping.py's; this
file only moves values between c104 and the control session.

c104 (lib60870-C underneath) runs the TCP server and decodes frames on its own threads and
calls our command callback there; the callback returns c104's ResponseState at once (the
session's `write` and `operate` do not block: the operate's future is answered later), so
c104 sends ACT_CON before the next frame is read.  Unknown common addresses (COT 46),
information object addresses (COT 47) and types (COT 44) are answered by c104 itself with a
negative ACT_CON and the cause.  c104 gives no peer address with a command: the peer is
the connection that `on_connect` accepted, so connections open at the same time must all be
of one party (a second party's connection is refused while the first is open), and
`max_connections` (default 1) bounds them.

One thread of ours (`iec104-<name>`) does the rest: ACT_TERM when an operate's answer
arrives, spontaneous monitoring points when the views or measurements change, the count of
open connections (c104 has no disconnect callback; `ctx.connected` follows the count), and
the no-contact rule: with no client connected and no command for `no_contact_s`, the
command schedules this endpoint enabled are disabled, on the party's behalf but without
counting as contact, so the site's own no-telecom rules take over.

Over TLS (`tls = true`, IEC 62351-3, docs/iec104.md "TLS"), c104's `TransportSecurity` serves
with the site's [tls] certificate and key, verifies each station's certificate against [tls]
ca (chain and validity) and admits only the certificates it is given (`only_known`).  c104
checks no CRL and does not say which certificate a station presented, so the site decides
which of `peer_certs` it is given (peers.py: issued by the bundle's CA, and nothing against it
in `SiteTls.peer_problem`), at start and again every `crl_refresh_s` on our thread.  When that
set changes (a revocation, an expiry), our thread stops the c104 server, which closes every
open connection, and serves a new one with the new set: a revoked station's session ends
within one refresh interval and its next handshake fails.  The actor, its command schedules,
its armed list and its counters stay; only the port is closed for the second c104 takes to
start.  A renewed site certificate ends the endpoint with `CertificateRenewed` (its supervisor
restarts it at once), as MMS does.  lib60870 handshakes in its accept thread and holds its
connection lock meanwhile, and c104's `open_connection_count` waits for that lock holding the
GIL: over TLS the endpoint only reads `active_connection_count` (connections that started data
transfer), so a slow or silent handshake never freezes the process.

No `from __future__ import annotations` here: c104 checks a callback's annotations as
objects ("Invalid callback signature" otherwise).
"""
import dataclasses
import datetime
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import c104

from relevent.clock import now_ms
from relevent.messages import ControllerState
from relevent.protocols.aio import Crashed
from relevent.protocols.iec104 import mapping, peers as peer_certs
from relevent.runtime.bridge import ThreadBridge
from relevent.scheduling.schedule import EnaErr, Refusal
from relevent.security.tls import CertificateRenewed, SiteTls
from relevent.wan.adapter import Answer, WanContext, Who, Write
from relevent.wan.session import OPERATE_TIMEOUT_S

log = logging.getLogger("relevent.iec104")

TYPES = {"C_SE_NC_1": c104.Type.C_SE_NC_1, "C_SE_NB_1": c104.Type.C_SE_NB_1, "C_SE_TC_1": c104.Type.C_SE_TC_1,
         "C_SC_NA_1": c104.Type.C_SC_NA_1, "M_ME_NC_1": c104.Type.M_ME_NC_1, "M_SP_NA_1": c104.Type.M_SP_NA_1}
TICK_S = 0.25            # the thread's period: connection count, no-contact rule, monitoring refresh
SETTLE_S = 1.0           # a connection accepted this recently may not be counted by c104 yet
TICK_RATE_MS = 100       # c104's server thread (periodic transmission and connection count)
REFRESH = "refresh"
STR_TM = int(EnaErr.STR_TM)   # an enable refused because no start covers now or lies ahead
HANDSHAKE_S = 5.0        # TLS: a connection not started this long after its accept is counted as refused
TLS_VERSIONS = {"1.2": c104.TlsVersion.TLS_1_2, "1.3": c104.TlsVersion.TLS_1_3}


@dataclass
class _Job:
    """A confirmed command, until its operate is answered."""
    seq: int
    ioa: int
    instruction: mapping.Instruction
    record: dict
    who: Who
    retried: bool = False


@dataclass
class _Peer:
    ip: str
    who: Who
    since: float          # time.monotonic()
    since_ms: int
    address: str = ""     # ip:port, once a clock synchronisation told it
    pending: bool = False  # TLS: accepted, its handshake and STARTDT not yet seen by c104


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _quality(flags: frozenset) -> c104.Quality:
    q = c104.Quality()
    if mapping.INVALID in flags:
        q = q | c104.Quality.Invalid
    if mapping.NOT_TOPICAL in flags:
        q = q | c104.Quality.NonTopical
    return q


def _number(value: Any) -> Any:
    """A command's value as mapping.decide takes it: bool, int (a scaled count) or float."""
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, c104.Int16):
        return int(value)
    return value


class Iec104Endpoint:
    def __init__(self, ctx: WanContext, config: dict) -> None:
        self.ctx, self.config = ctx, config
        self.name: str = config["name"]
        self.address: str = config.get("address") or "127.0.0.1"
        self.port = int(config.get("port", 2404))
        self.common_address = int(config.get("common_address", 1))
        self.max_connections = int(config.get("max_connections", 1))
        self.options = mapping.Options.of(config)
        self.no_contact_ms = int(float(config.get("no_contact_s", 60.0)) * 1000)
        self.rated = {name: float(d.get("rated_power_w") or 0.0) for name, d in ctx.ders.items()}
        self.table: mapping.Table | None = None
        self.server: Any = None
        self.points: dict[int, Any] = {}           # ioa -> c104.Point
        self.sent: dict[int, mapping.Reading] = {}  # what each monitoring point holds (our thread)
        self.lock = threading.Lock()               # peers, armed, pending, records, stats
        self.command_lock = threading.Lock()       # one command's write and operate at a time
        self.peers: list[_Peer] = []
        self.armed: dict[tuple, Who] = {}          # (der, kind) -> who enabled its command schedule
        self.pending: dict[int, tuple] = {}        # seq -> (future, monotonic deadline)
        self.latest: dict[tuple, int] = {}         # (der, kind) -> seq of its latest confirmed command
        self.seq = 0
        self.last_contact = now_ms()
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.bridge = ThreadBridge()
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.listening = False
        self.stats = {"commands": 0, "confirmed": 0, "refused": 0, "terminated": 0, "failed_after_confirmation": 0, "retried": 0,
                      "released": 0, "ended_without_contact": 0, "connections": 0, "connections_refused": 0,
                      "unexpected": 0, "clock_syncs": 0, "errors": 0}
        self.last_instruction: dict | None = None
        self.last_refusal: dict | None = None
        self.last_unexpected: dict | None = None
        self.clock_sync: dict | None = None
        # TLS: the site policy (CRLs, status), the verdict on each of peer_certs, the set c104
        # serves (DER), when our thread next refreshes, and what happened.
        self.tls: SiteTls | None = SiteTls(config["tls_policy"]) if config.get("tls") else None
        self.peer_paths = [os.path.abspath(p) for p in config.get("peer_certs") or []]
        self.verdicts: list[peer_certs.Verdict] = []
        self.admitted: tuple[bytes, ...] = ()
        self.tls_due = 0.0
        self.renewing = False
        self.departed: list[_Peer] = []   # TLS: started peers no longer counted, newest last (a STOPDT)
        self.tls_events = {"handshakes_failed": 0, "server_restarts": 0, "last_server_restart": None,
                           "sessions_closed": 0}

    # -- life cycle (actor thread) -----------------------------------------------------------------
    def start(self) -> None:
        self.table, problems = mapping.parse_table(self.config.get("functions"), self.config.get("measurements"),
                                                   self.ctx.ders, self.options.unit)
        if problems:
            raise ValueError(f"iec104 endpoint {self.name}: " + "; ".join(message for _, message in problems))
        self.ctx.defer_ready()  # Ready once listening, after every controller's state is in
        if self.tls is not None:
            if not self.peer_paths:
                raise ValueError(f"iec104 endpoint {self.name}: tls = true needs peer_certs")
            self._judge_peers()
            self.tls_due = time.monotonic() + self.tls.refresh_s
        self.server, self.points = self._make_server()

    def _make_server(self) -> tuple[Any, dict]:
        """A c104 server with the station and its points (and over TLS the certificates
        admitted now); not started."""
        security = None
        if self.tls is not None:
            security = c104.TransportSecurity(validate=True, only_known=True)
            security.set_certificate(cert=self.tls.cert, key=self.tls.key)
            security.set_ca_certificate(cert=self.tls.ca)
            security.set_version(min=TLS_VERSIONS[self.config["tls_policy"].get("min_version") or "1.2"])
            for der in self.admitted:   # the very bytes judged: a file changed since is not admitted
                verdict = next(v for v in self.verdicts if v.der == der)
                with tempfile.NamedTemporaryFile(suffix=".pem", prefix="relevent-iec104-peer-") as f:
                    f.write(verdict.pem())
                    f.flush()
                    security.add_allowed_remote_certificate(cert=f.name)
        server = c104.Server(ip=self.address, port=self.port, tick_rate_ms=TICK_RATE_MS,
                             max_connections=self.max_connections, transport_security=security)
        station = server.add_station(common_address=self.common_address)
        points = {}
        for ioa, command in self.table.commands.items():
            point = station.add_point(io_address=ioa, type=TYPES[command.type])
            point.on_receive(callable=self._on_command)
            points[ioa] = point
        for ioa, monitor in self.table.monitors.items():
            point = station.add_point(io_address=ioa, type=TYPES[monitor.type])
            point.quality = c104.Quality.Invalid   # until the first refresh
            points[ioa] = point
        server.on_connect(callable=self._on_connect)
        server.on_clock_sync(callable=self._on_clock_sync)
        server.on_unexpected_message(callable=self._on_unexpected)
        return server, points

    def _judge_peers(self) -> bool:
        """The verdict on every listed certificate now; True if the admitted set changed."""
        verdicts = peer_certs.judge(self.peer_paths, self.tls.cas, self.tls.peer_problem)
        admitted = peer_certs.allowed_set(verdicts)
        before = {v.path: v.reason for v in self.verdicts}
        for v in verdicts:
            if v.path not in before or before[v.path] != v.reason:
                if v.allowed:
                    log.info("iec104 endpoint=%s admits the certificate of %s (%s, serial %s)", self.name, v.subject,
                             v.path, v.serial)
                else:
                    log.warning("iec104 endpoint=%s refuses the certificate in %s: %s", self.name, v.path, v.reason)
        changed = admitted != self.admitted
        self.verdicts, self.admitted = verdicts, admitted
        return changed

    def on_synced(self) -> None:
        """Every controller's state is in: values first, then the port (a general
        interrogation never reads placeholders), then Ready."""
        for der, kind in self.table.targets:
            view = self.ctx.view(der, kind)
            if mapping.armed(view, self.options.schedule):
                writer = view["schedules"][self.options.schedule]["settings"].get("writer") or self.ctx.party
                self.armed[(der, kind)] = Who(writer, "(before a restart)", False)
        self._refresh(transmit=False)
        self._bind_or_raise()
        self.last_contact = now_ms()
        self.thread = threading.Thread(target=self._run, name=f"iec104-{self.name}", daemon=True)
        self.thread.start()
        self.listening = True
        log.info("iec104 endpoint=%s party=%s serving %s:%d common address %d (%d command and %d monitoring points)%s",
                 self.name, self.ctx.party, self.address, self.port, self.common_address, len(self.table.commands),
                 len(self.table.monitors), f"; armed: {sorted(self.armed)}" if self.armed else "")
        self.ctx.mark_ready()

    def on_state(self, state: ControllerState, unacked: list[tuple]) -> None:
        self.events.put(REFRESH)   # reads use ctx.view; our thread refreshes the points

    def on_measurement(self, measurement: Any) -> None:
        self.events.put(REFRESH)

    def fds(self) -> list[int]:
        return [self.bridge.fileno()]

    def on_ready(self, fds: list[int]) -> None:
        if self.bridge.fileno() not in fds:
            return
        for event in self.bridge.drain():
            if isinstance(event, CertificateRenewed):
                raise event   # the actor crashes with it and its supervisor restarts it at once
            if isinstance(event, Crashed):
                raise RuntimeError(f"iec104 endpoint {self.name}: {event.what} failed: {event.error}")

    def stop(self) -> None:
        self.stopping.set()
        self.events.put(None)
        if self.server is not None:
            try:
                self.server.stop()
            except Exception:  # noqa: BLE001 - stopping anyway
                log.exception("iec104 endpoint=%s: stopping c104", self.name)
        if self.thread is not None:
            self.thread.join(2.0)
        with self.lock:
            pending = [fut for fut, _ in self.pending.values()]
        for fut in pending:
            fut.cancel()

    def _open_count(self) -> int:
        """Connections open now.  Over TLS, those that started data transfer: c104's
        open_connection_count waits, holding the GIL, for the lock lib60870 holds during a
        handshake, and would freeze the process for as long as a station takes to finish it."""
        return self.server.active_connection_count if self.tls is not None else self.server.open_connection_count

    def detail(self) -> dict:
        connections = self._open_count() if self.server is not None and self.listening else 0
        tls = {}
        if self.tls is not None:
            tls = {"tls": {**self.tls.status(), **self.tls_events, "sessions": connections,
                           "peer_certs": [v.status() for v in list(self.verdicts)],
                           "admitted": sum(1 for v in list(self.verdicts) if v.allowed)}}
        with self.lock:
            peers = [{"ip": p.ip, "address": p.address or None, "party": p.who.party or None,
                      "since": _iso(p.since_ms)} for p in self.peers if not p.pending]
            out = {**tls, "serving": f"{self.address}:{self.port}", "listening": self.listening,
                   "common_address": self.common_address, "schedule": self.options.schedule,
                   "priority": self.options.priority, "unit": self.options.unit,
                   "connections": connections, "peers": peers, "peer": peers[-1]["address"] or peers[-1]["ip"] if peers else None,
                   "armed": [f"{d}/{k}/{self.options.schedule}" for d, k in sorted(self.armed)],
                   "last_contact": _iso(self.last_contact), **{key: None if record is None else dict(record)
                                                               for key, record in self._records()}, **self.stats}
        return out

    def _records(self) -> list[tuple[str, dict | None]]:
        """Copies are shown: our thread still completes a record (terminated) after it is shown."""
        return [("last_instruction", self.last_instruction), ("last_refusal", self.last_refusal),
                ("clock_sync", self.clock_sync), ("last_unexpected", self.last_unexpected)]

    def _bind_or_raise(self) -> None:
        """c104 says only "Port in use?": a probe bind first gives the real reason."""
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(self.address, self.port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(addr)
        except OSError as exc:
            raise OSError(f"cannot listen on {self.address}:{self.port}: {exc.strerror or exc}") from exc
        try:
            self.server.start()
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.address}:{self.port}: {exc}") from exc

    # -- c104's threads ----------------------------------------------------------------------------------
    def _on_connect(self, server: c104.Server, ip: str) -> bool:
        try:
            who = self.ctx.who(peer=ip, credential=("peer", ip))
            allowed = self.ctx.may(who, "read")
            with self.lock:
                other = next((p for p in self.peers if p.who.party != who.party), None)
                if not allowed.ok or other is not None:
                    self.stats["connections_refused"] += 1
                    why = allowed.reason if not allowed.ok else \
                        f"a connection of party {other.who.party or '(unrecognised)'} from {other.ip} is open"
                    log.warning("iec104 endpoint=%s refused a connection from %s: %s", self.name, ip, why)
                    return False
                # Over TLS, lib60870 calls this before the handshake: the peer counts once c104 does.
                self.peers.append(_Peer(ip, who, time.monotonic(), now_ms(), pending=self.tls is not None))
                if self.tls is not None:
                    return True
                self.stats["connections"] += 1
                self.last_contact = now_ms()
            self.ctx.connected(True, who)
            log.info("iec104 endpoint=%s connection from %s (party %s)", self.name, ip, who.party or "(unrecognised)")
            return True
        except Exception:  # noqa: BLE001 - never raise into c104
            log.exception("iec104 endpoint=%s: connection from %s", self.name, ip)
            return False

    def _on_command(self, point: c104.Point, previous_info: c104.Information,
                    message: c104.IncomingMessage) -> c104.ResponseState:
        try:
            return self._command(point.io_address, message)
        except Exception as exc:  # noqa: BLE001 - a negative confirmation, never an exception into c104
            log.exception("iec104 endpoint=%s: command on IOA %s", self.name, point.io_address)
            with self.lock:
                self.stats["errors"] += 1
                self.stats["refused"] += 1
                self.last_refusal = {"at": _iso(now_ms()), "ioa": point.io_address, "rule": "internal",
                                     "reason": f"{type(exc).__name__}: {exc}"}
            return c104.ResponseState.FAILURE

    def _on_clock_sync(self, server: c104.Server, ip: str, date_time: datetime.datetime) -> c104.ResponseState:
        """Logged and shown, never applied: the host's clock is NTP's business."""
        try:
            return self._clock_sync(ip, date_time)
        except Exception:  # noqa: BLE001 - never raise into c104 (it drops the connection)
            log.exception("iec104 endpoint=%s: clock synchronisation from %s", self.name, ip)
            return c104.ResponseState.FAILURE

    def _clock_sync(self, ip: str, date_time: datetime.datetime) -> c104.ResponseState:
        ours = now_ms()
        theirs = int(date_time.timestamp() * 1000)   # c104 gives the CP56 time (UTC) as local naive time
        with self.lock:
            self.stats["clock_syncs"] += 1
            self.clock_sync = {"peer": ip, "their_time": _iso(theirs), "our_time": _iso(ours),
                               "offset_ms": theirs - ours, "applied": False}
            host = ip.rsplit(":", 1)[0]
            for p in self.peers:
                if p.ip == host:
                    p.address = ip
            who = self.peers[-1].who if self.peers else None
            self.last_contact = ours
        log.info("iec104 endpoint=%s clock synchronisation from %s: their clock %s, ours %s (%+d ms); the host clock "
                 "is not set", self.name, ip, _iso(theirs), _iso(ours), theirs - ours)
        self.ctx.contact(who)
        return c104.ResponseState.SUCCESS

    def _on_unexpected(self, server: c104.Server, message: c104.IncomingMessage, cause: c104.Umc) -> None:
        with self.lock:
            self.stats["unexpected"] += 1
            self.last_unexpected = {"at": _iso(now_ms()), "type": message.type.name, "cause": cause.name,
                                    "common_address": message.common_address, "ioa": message.io_address}
        log.info("iec104 endpoint=%s answered %s (CA %s, IOA %s) negatively: %s", self.name, message.type.name,
                 message.common_address, message.io_address, cause.name)

    def _who(self) -> Who:
        with self.lock:
            if self.peers:
                return self.peers[-1].who
        return self.ctx.who()

    def _command(self, ioa: int, message: c104.IncomingMessage) -> c104.ResponseState:
        now = now_ms()
        command = self.table.commands[ioa]   # c104 answered unknown IOAs (COT 47) itself
        info = message.info
        value = _number(info.value)
        tag = info.recorded_at
        tag_ms = int(tag.timestamp() * 1000) if tag is not None else None
        who = self._who()
        target = f"{command.der}/{command.kind}/{self.options.schedule}"
        record = {"at": _iso(now), "peer": who.peer or None, "party": who.party or None, "ioa": ioa,
                  "type": command.type, "value": value, "time_tag": _iso(tag_ms), "target": target}
        with self.lock:
            self.stats["commands"] += 1
            self.last_contact = now
        why = mapping.cause_refusal(int(message.cot.value), bool(message.is_test), bool(message.is_negative))
        if why:   # c104 hands on a command whatever its cause of transmission
            return self._refuse(record, "cot", why)
        instruction = mapping.decide(command, value, self.options, self.rated.get(command.der, 0.0), now, tag_ms)
        if instruction.action == "refuse":
            return self._refuse(record, "value", instruction.reason)
        der, kind, schedule = command.der, command.kind, self.options.schedule
        with self.command_lock:   # this command's writes and its operate, before another command's
            if instruction.action == "set":
                current = (self.ctx.view(der, kind) or {}).get("schedules", {}).get(schedule)
                writes = [Write(f, i, v) for f, i, v in
                          mapping.command_writes(instruction.value, self.options.priority, now_ms(), current)]
                answer = self.ctx.write(der, kind, schedule, writes, who=who)
                if not answer.ok:
                    return self._refuse(record, answer.rule, answer.reason, answer)
                fut = self.ctx.operate(der, kind, schedule, "enable", who=who)
            else:
                fut = self.ctx.operate(der, kind, schedule, "disable", who=who)
        if fut.done() and not fut.cancelled() and not fut.result().ok:   # refused by the policy at once
            answer = fut.result()
            return self._refuse(record, answer.rule, answer.reason, answer)
        record.update(action=instruction.action, command_value=instruction.value, result="confirmed",
                      terminated=False)
        with self.lock:
            self.seq += 1
            job = _Job(self.seq, ioa, instruction, record, who)
            self.latest[(der, kind)] = job.seq
            self.stats["confirmed"] += 1
            if instruction.action == "set":
                self.armed[(der, kind)] = who
            self.last_instruction = record
        log.info("iec104 endpoint=%s party=%s %s %s on IOA %d -> %s %s", self.name, who.party or "(unrecognised)",
                 command.type, value, ioa, instruction.action, target)
        self._await(job, fut)
        return c104.ResponseState.SUCCESS

    def _await(self, job: "_Job", fut: Any) -> None:
        with self.lock:
            self.pending[job.seq] = (fut, time.monotonic() + OPERATE_TIMEOUT_S)
        fut.add_done_callback(lambda f: self.events.put(("done", job, f)))

    def _refuse(self, record: dict, rule: str, reason: str, answer: Answer | None = None) -> c104.ResponseState:
        policy = answer is not None and mapping.policy_refusal(answer.rule, answer.refusal)
        refusal = {**record, "result": "refused", "rule": rule, "reason": reason, "policy": policy}
        with self.lock:
            self.stats["refused"] += 1
            self.last_instruction = refusal
            self.last_refusal = refusal
        log.warning("iec104 endpoint=%s refused %s %r on IOA %d (%s): %s", self.name, record["type"], record["value"],
                    record["ioa"], rule, reason)
        return c104.ResponseState.FAILURE

    # -- our thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    event = self.events.get(timeout=TICK_S)
                except queue.Empty:
                    event = REFRESH
                while event is not None or not self.events.empty():
                    if isinstance(event, tuple):
                        self._operated(event)
                    try:
                        event = self.events.get_nowait()
                    except queue.Empty:
                        break
                if self.stopping.is_set():
                    return
                self._tls_round()
                self._count_connections()
                self._expire()
                self._watch_contact()
                self._refresh(transmit=True)
        except Exception as exc:  # noqa: BLE001 - the actor crashes with the reason
            log.exception("iec104 endpoint=%s: thread failed", self.name)
            self.bridge.post(Crashed("iec104 thread", f"{type(exc).__name__}: {exc}"))

    def _operated(self, event: tuple) -> None:
        if event[0] == "ended":
            _, target, fut = event
            answer = self._answer_of(fut)
            if answer.ok:
                log.warning("iec104 endpoint=%s: no contact for %g s: %s/%s/%s disabled, the site's no-telecom "
                            "rules apply", self.name, self.no_contact_ms / 1000, *target, self.options.schedule)
            else:
                log.error("iec104 endpoint=%s: no contact, but disabling %s/%s/%s failed (%s): %s", self.name,
                          *target, self.options.schedule, answer.rule, answer.reason)
            return
        _, job, fut = event
        ioa, instruction, record = job.ioa, job.instruction, job.record
        answer = self._answer_of(fut)
        with self.lock:
            self.pending.pop(job.seq, None)
        if not answer.ok and answer.ena_err == STR_TM and instruction.action == "set" and not job.retried \
                and self._retry(job):
            return
        with self.lock:
            if answer.ok:
                self.stats["terminated"] += 1
                if instruction.action == "release":
                    self.stats["released"] += 1
                    self.armed.pop((instruction.der, instruction.kind), None)
                record["terminated"] = True
            else:
                self.stats["failed_after_confirmation"] += 1
                if instruction.action == "set" and self.armed.get((instruction.der, instruction.kind)):
                    self.armed.pop((instruction.der, instruction.kind), None)
                record.update(result="failed after confirmation", rule=answer.rule, reason=answer.reason)
                self.last_refusal = record
        if answer.ok:
            if not self.points[ioa].transmit(cause=c104.Cot.ACTIVATION_TERMINATION):
                log.warning("iec104 endpoint=%s: ACT_TERM for %s on IOA %d not sent: c104 sees no active connection "
                            "(open: %d)", self.name, record["target"], ioa, self._open_count())
        else:
            log.error("iec104 endpoint=%s: %s of %s, confirmed, then refused by its controller (%s): %s; no "
                      "termination sent", self.name, "enable" if instruction.action == "set" else "disable",
                      record["target"], answer.rule, answer.reason)

    def _retry(self, job: "_Job") -> bool:
        """The controller found the start in the past (a write that took longer than
        START_LEAD_MS to reach it, under load): write the schedule again with a start
        RETRY_LEAD_MS ahead and enable it again, unless a newer command for the same
        function came in meanwhile (it replaced this one).  True if a retry is under way."""
        instruction = job.instruction
        key = (instruction.der, instruction.kind)
        with self.command_lock:
            with self.lock:
                if self.latest.get(key) != job.seq:
                    return False
            writes = [Write(f, i, v) for f, i, v in mapping.schedule_writes(
                instruction.value, self.options.priority, now_ms() + mapping.RETRY_LEAD_MS)]
            if not self.ctx.write(*key, self.options.schedule, writes, who=job.who).ok:
                return False
            fut = self.ctx.operate(*key, self.options.schedule, "enable", who=job.who)
        log.warning("iec104 endpoint=%s: %s/%s/%s started too close to now for its controller: written again to "
                    "start in %d ms", self.name, *key, self.options.schedule, mapping.RETRY_LEAD_MS)
        job.retried = True
        with self.lock:
            self.stats["retried"] += 1
        self._await(job, fut)
        return True

    @staticmethod
    def _answer_of(fut: Any) -> Answer:
        if fut.cancelled():
            return Answer.refused("timeout", Refusal.ACCESS_DENIED,
                                  f"the controller did not answer in {OPERATE_TIMEOUT_S:g} s")
        return fut.result()

    def _expire(self) -> None:
        """An operate unanswered after OPERATE_TIMEOUT_S is given up (its controller may
        still apply it: the schedule's state, reported, shows whether it did)."""
        now = time.monotonic()
        with self.lock:
            late = [fut for fut, deadline in self.pending.values() if deadline < now]
        for fut in late:
            fut.cancel()

    def _count_connections(self) -> None:
        """c104 reports no disconnection: follow its count of open connections.  Over TLS a
        connection accepted (pending) counts once c104 counts it started; one still pending
        after HANDSHAKE_S was refused by the handshake (or never started) and is dropped."""
        count = self._open_count()
        now = time.monotonic()
        gone, came = [], []
        with self.lock:
            if count > 0:
                self.last_contact = now_ms()
            if self.tls is not None:
                while sum(1 for p in self.peers if not p.pending) < count:
                    waiting = [p for p in self.peers if p.pending]
                    if waiting:
                        peer = waiting[0]
                    elif self.departed:   # started again after a STOPDT, or its STARTDT came late
                        peer = self.departed.pop()
                        self.peers.append(peer)
                    else:
                        break
                    peer.pending = False
                    came.append(peer)
                    self.stats["connections"] += 1
                for p in [p for p in self.peers if p.pending and now - p.since > HANDSHAKE_S]:
                    self.peers.remove(p)   # never in departed: only a station that once started returns
                    self.tls_events["handshakes_failed"] += 1
                    log.warning("iec104 endpoint=%s: the connection from %s did not start over TLS within %g s "
                                "(its certificate refused, or no STARTDT)", self.name, p.ip, HANDSHAKE_S)
            while sum(1 for p in self.peers if not p.pending) > count:
                settled = [p for p in self.peers if not p.pending and now - p.since > SETTLE_S]
                if not settled:
                    break
                self.peers.remove(settled[0])
                gone.append(settled[0])
                if self.tls is not None:
                    self.departed = self.departed[-7:] + [settled[0]]
        for p in came:
            self.ctx.connected(True, p.who)
            log.info("iec104 endpoint=%s connection from %s over TLS (party %s)", self.name, p.ip,
                     p.who.party or "(unrecognised)")
        for p in gone:
            self.ctx.connected(False, p.who)
            log.info("iec104 endpoint=%s connection from %s closed", self.name, p.address or p.ip)

    def _tls_round(self) -> None:
        """Every crl_refresh_s (our thread): re-read the CRLs, look for a renewed site
        certificate, judge peer_certs again; a changed set is served by a new c104 server."""
        now = time.monotonic()
        if self.tls is None or self.renewing or now < self.tls_due:
            return
        self.tls_due = now + self.tls.refresh_s
        self.tls.refresh()
        renewed = self.tls.renewed()
        if renewed:
            self.renewing = True
            self.bridge.post(CertificateRenewed(renewed))   # the actor crashes with it, restarted at once
            return
        was = set(self.admitted)
        if not self._judge_peers():
            return
        refused = [f"{v.path}: {v.reason}" for v in self.verdicts if v.der in was and not v.allowed]
        self._serve_anew("; ".join(refused) or "the certificates admitted changed (now: "
                         + (", ".join(v.subject for v in self.verdicts if v.allowed) or "none") + ")")

    def _serve_anew(self, reason: str) -> None:
        """Stop the c104 server (every connection closes) and serve a new one with the
        certificates admitted now.  Our thread: the points and what they hold are ours."""
        old = self.server
        self.listening = False
        try:
            old.stop()
        except Exception:  # noqa: BLE001 - a new server anyway
            log.exception("iec104 endpoint=%s: stopping c104", self.name)
        with self.lock:
            closed = [p for p in self.peers if not p.pending]
            self.peers, self.departed = [], []   # a revoked station's address must not be reused
            self.tls_events["server_restarts"] += 1
            self.tls_events["sessions_closed"] += len(closed)
            self.tls_events["last_server_restart"] = {"at": _iso(now_ms()), "reason": reason,
                                                      "sessions_closed": len(closed)}
        for p in closed:
            self.tls.refuse(reason, closed=True)
            self.ctx.connected(False, p.who)
        log.warning("iec104 endpoint=%s serves anew with %d admitted certificate(s), %d connection(s) closed: %s",
                    self.name, len(self.admitted), len(closed), reason)
        self.server, self.points = self._make_server()
        self.sent = {}
        self._refresh(transmit=False)
        if self.stopping.is_set():
            return
        self._bind_or_raise()   # a port taken meanwhile: the thread fails, the actor restarts
        self.listening = True

    def _watch_contact(self) -> None:
        if not self.no_contact_ms:
            return
        with self.lock:
            if any(not p.pending for p in self.peers) or not self.armed \
                    or now_ms() - self.last_contact <= self.no_contact_ms:
                return
            targets, self.armed = self.armed, {}
            self.stats["ended_without_contact"] += len(targets)
        for (der, kind), who in targets.items():
            # On the party's behalf (its rights), but not its voice: no WAN contact.
            quiet = dataclasses.replace(who, peer="(no contact)", recognised=False)
            fut = self.ctx.operate(der, kind, self.options.schedule, "disable", who=quiet)
            fut.add_done_callback(lambda f, t=(der, kind): self.events.put(("ended", t, f)))

    def _refresh(self, transmit: bool) -> None:
        """Every monitoring point from the views and measurements; a change is sent
        spontaneously (and a general interrogation reads the values set here)."""
        now = now_ms()
        views: dict[tuple, Any] = {}
        for ioa, monitor in self.table.monitors.items():
            view = None
            if monitor.kind is not None:
                key = (monitor.der, monitor.kind)
                if key not in views:
                    views[key] = self.ctx.view(*key, now)
                view = views[key]
            reading = mapping.reading(monitor, view, self.ctx.measurement(monitor.der), self.options,
                                      self.rated.get(monitor.der, 0.0), now)
            if self.sent.get(ioa) == reading:
                continue
            point = self.points[ioa]
            point.value = float(reading.value) if monitor.type == "M_ME_NC_1" else bool(reading.value)
            point.quality = _quality(reading.flags)
            self.sent[ioa] = reading
            if transmit:
                point.transmit(cause=c104.Cot.SPONTANEOUS)
