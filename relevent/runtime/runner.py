"""`relevent run`: bring a site up, keep its root alive, answer the control socket, stop cleanly.

The runner process owns the thespian ActorSystem.  It is the supervisor of the site
supervisor (thespian does not report the exit of a top-level actor, so the runner watches
its heartbeats and its pid), with the restart decisions of every other supervisor
(relevent.actors.restart_policy, [supervision.site]), and the only door into the running
site: a Unix socket in the state directory (mode 0600), speaking one JSON line per
request.  Thespian's own ports are never that door.

That door is bounded: a request is at most MAX_REQUEST_BYTES and must arrive within
REQUEST_DEADLINE_S of the connection, read without blocking the main loop (which
watches the root's heartbeat); at most MAX_CONTROL_CONNECTIONS are open at once.  A client
that sends too much is answered with an error, one that sends nothing is dropped.  And the
runner refuses to start when thespian's admin port is already bound by someone else
(relevent.runtime.hardening.admin_port_taken), before anything is started.  Thespian binds
loopback only, or on a multi-host site (convention_leader) only this host's address on
[runtime] private_network: a host without one is refused (docs/deploy.md).
"""
from __future__ import annotations

import json
import logging
import logging.config
import os
import selectors
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import thespian.system.systemBase as thespian_system_base
from thespian.actors import ActorSystemFailure, ActorSystemRequestTimeout

from relevent.clock import now_ms
from relevent.messages import (
    Configure, FaultAck, Failed, ForecastReply, ForecastRequest, Hello, InjectFault, Pong, Ready, Reconfigure,
    Reconfigured, StatusReply, StatusRequest, FAULT_KINDS,
)
from relevent.actors.restart_policy import (
    Escalate, History, RestartPolicy, on_failure, root_hung, silence_limit, stop_overdue,
)
from relevent.actors.site import site_settings
from relevent.runtime.control import alive_path
from relevent.messages import Shutdown
from relevent import __version__
from relevent.runtime import hardening
from relevent.runtime.journal import stderr_is_journal
from relevent.runtime.logs import LOG_DEFS_ENV, log_config
from relevent.runtime.notify import Notifier, SiteSummary, summary_of
from relevent.observe.serve import MetricsAddressError, metrics_address
from relevent.runtime.statelock import LockRefused, StateLock
from relevent.runtime.status import walk
from relevent.store import newer_record, store_directory
from relevent.topology import Topology, TopologyError, load_topology, parse_topology
from relevent.protocols.registry import listen_address  # after relevent.topology: it imports the registry
from relevent.topology.edit import EditError, add_endpoint, parse_snippet, remove_endpoint, write_atomic

log = logging.getLogger("relevent.runner")
# A warning above this many DERs per core with one process per controller: on 2 cores, 100
# DERs switched late and had DERs killed as hung, 10 kept time (bench/README.md); the
# threshold in between is not measured.
DERS_PER_CORE_IN_PROCESS_MODE = 25

# Settings that need a full restart of the site to change.
RESTART_ONLY = {("site", "name"), ("site", "state_dir"), ("runtime", "base"), ("runtime", "admin_port"),
                ("runtime", "convention_leader"), ("runtime", "private_network"), ("runtime", "metrics"),
                ("runtime", "metrics_insecure"), ("runtime", "history_days"), ("runtime", "sample_s"),
                ("runtime", "ders_per_process")}
REPLY_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 64 * 1024    # one control request (a JSON line), bytes
REQUEST_DEADLINE_S = 5.0         # from accept to the request's last byte, seconds
MAX_CONTROL_CONNECTIONS = 8      # open control connections; more are closed at once
ROOT = "site"  # the runner's one child, for restart_policy
# thespian's tell() from the runner blocks until the message is taken, for up to 60 s by
# default: a site supervisor that hangs just after its last heartbeat would stop the
# runner (and its watchdog) that long.  The root takes messages in microseconds.
thespian_system_base.MAX_TELL_PERIOD = timedelta(seconds=1)


class SiteRunner:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.state_dir = topology.state_dir
        self.asys: Any = None
        self.root: Any = None
        self.root_pid: int | None = None
        self.root_ready = False
        self.root_restarts = 0
        self._next_ping = 0.0
        self.started_ms = now_ms()   # the site's boot: power-up schedules
        self._restarting = False   # _watch_root may wait for the new root: no re-entry
        self.root_started = 0.0
        self.root_alive_at = 0.0     # monotonic time of the root's last heartbeat
        self.root_history = History()    # restart_policy's memory of the root's failures
        self.root_due: float | None = None  # monotonic time of the root's restart after a backoff
        self.root_error = ""
        self.root_cause = ""         # why the root failed: killed, crashed, hung, escalated (supervisor.py)
        self.root_causes: dict[str, int] = {}   # its restarts by cause
        self.root_detail: dict = {}
        # Metrics and history (relevent/observe): the runner gathers the status tree every
        # [runtime] sample_s and hands it to the observer thread.
        self.observer: Any = None    # relevent.observe.observer.Observer, once the site is up
        self._announced = False
        self.admin_pgid: int | None = None
        self._request = 0
        self._stopping = False
        self.exit_code = 0
        self._lock = StateLock(self.state_dir)
        self._lock_warning = ""
        # systemd's notify protocol when NOTIFY_SOCKET is set (relevent/runtime/notify.py);
        # read before any actor process is forked, which must not inherit it.
        self.notify = Notifier.from_environment()
        self._reload_asked = False
        self._sel = selectors.DefaultSelector()
        self._signal_r, self._signal_w = socket.socketpair()
        self._clients: dict[socket.socket, tuple[float, bytearray]] = {}  # conn -> (deadline, bytes so far)

    # -- start-up -------------------------------------------------------------------------
    def start(self) -> None:
        newer = newer_record(store_directory(self.state_dir))  # before anything is written here
        if newer is not None:
            raise SystemExit(f"error: {newer}")
        runtime = self.topology.data["runtime"]
        try:
            metrics_address(runtime)   # refused before anything starts (docs/observability.md)
        except MetricsAddressError as exc:
            raise SystemExit(f"error: {exc}") from None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        # Thespian speaks unauthenticated pickles: it binds loopback on a single-host site and,
        # on a multi-host one, only this host's address on [runtime] private_network (which
        # `relevent check` requires with convention_leader); no address there: refused.
        multi_host = bool(runtime["convention_leader"])
        private = ("", "127.0.0.1")
        if multi_host:
            if not runtime["private_network"]:   # the loader refuses this; a hand-made dict may not
                raise SystemExit("error: [runtime] convention_leader needs private_network, the network thespian's "
                                 "traffic stays on (docs/deploy.md); nothing was started")
            private = hardening.private_address(runtime["private_network"])
        if runtime["base"] != "simpleSystemBase":
            taken = hardening.admin_port_taken(runtime["admin_port"], private[1], udp="UDP" in runtime["base"])
            if taken:
                raise SystemExit(f"error: {taken}")
        os.environ["RELEVENT_RUNNER_PID"] = str(os.getpid())
        os.environ["RELEVENT_CRASH_LOG"] = str(self.state_dir / "crash.log")
        os.environ[LOG_DEFS_ENV] = json.dumps(self._log_defs())   # for actors' other threads (logs.py)
        os.environ.setdefault("THESPLOG_FILE", str(self.state_dir / "thespian.log"))
        os.environ.setdefault("THESPLOG_FILE_MAXSIZE", str(1 << 20))
        os.environ["THESPIAN_BASE_IPADDR"] = private[1]
        hardening.bind_thespian_to(private[1])
        from thespian.actors import ActorSystem

        capabilities: dict = {}
        if runtime["base"] != "simpleSystemBase":
            capabilities["Admin Port"] = runtime["admin_port"]
            if multi_host:
                capabilities["Convention Address.IPv4"] = runtime["convention_leader"]
        started = time.monotonic()
        logging.config.dictConfig(self._log_defs())
        if self._lock_warning:
            log.warning("%s", self._lock_warning)
        for warning in self.topology.warnings:   # what `relevent check` prints, in the log too
            log.warning("topology %s", warning)
        if multi_host:
            log.info("site=%s thespian bound to %s on %s (private_network %s), convention leader %s",
                     self.topology.name, private[1], private[0], runtime["private_network"],
                     runtime["convention_leader"])
        # The multiproc bases log through thespian's logger actor, configured with the same
        # definitions; simpleSystemBase runs in this process, configured just above.
        log_defs = self._log_defs() if runtime["base"] != "simpleSystemBase" else False
        self.asys = ActorSystem(runtime["base"], capabilities, logDefs=log_defs, transientUnique=True)
        self._start_root()
        self._open_control_socket()
        self._write_pid_file()
        self._start_observer()
        log.info("site=%s up in %.3f s base=%s admin_port=%s state_dir=%s", self.topology.name,
                 time.monotonic() - started, runtime["base"], runtime["admin_port"], self.state_dir)
        ders, cores = len(self.topology.data["der"]), os.cpu_count() or 1
        if runtime.get("controller_isolation") == "process" and ders > DERS_PER_CORE_IN_PROCESS_MODE * cores:
            # Measured on 2 cores (bench/README.md): 100 DERs with a process per controller
            # switched late and had DERs killed as hung; with "der" they kept time.
            log.warning("site=%s %d DERs on %d cores with controller_isolation=\"process\" (about %d "
                        "processes): set [runtime] controller_isolation = \"der\" (docs/runtime.md)",
                        self.topology.name, ders, cores, 2 * ders)

    def _start_observer(self) -> None:
        """Metrics and history (relevent/observe), once thespian's processes are forked: they
        must not inherit prometheus-client, sqlite3 or the observer's thread."""
        from relevent.observe.observer import observer_of

        self.observer = observer_of(self.topology.name, __version__, self.topology.data["runtime"], self.state_dir)
        if self.observer is not None:
            self.observer.start()

    def _take_lock(self) -> None:
        """One site per state directory; a lock left by a dead runner is taken over with a
        warning, a live one refused with its pid (relevent/runtime/statelock.py)."""
        try:
            self._lock_warning = self._lock.acquire()
        except LockRefused as exc:
            raise SystemExit(f"error: {exc}") from None

    def _log_defs(self) -> dict:
        # relevent.log rotates and repeats are rate-limited (relevent/runtime/logs.py).  Under
        # systemd, stderr is the journal: priority prefixes, and journald stamps time.
        return log_config(str(self.state_dir), self.topology.data["runtime"]["log_level"], stderr_is_journal())

    def _start_root(self) -> None:
        data = self.topology.data
        self.root = self.asys.createActor("relevent.actors.site.SiteSupervisor")
        self.root_pid, self.root_ready = None, False
        self.root_detail = {}
        self.root_started = time.time()
        self.asys.tell(self.root, Configure(data["site"]["name"], "", "site", data, self._site_settings(data),
                                            self.root_restarts))
        deadline = time.monotonic() + data["supervision"]["site"]["startup_timeout"]
        while not self.root_ready and time.monotonic() < deadline:
            self.notify.tick(time.monotonic(), self._summary())  # the watchdog also while the root (re)starts
            self._handle(self.asys.listen(0.1))
        if not self.root_ready:
            raise RuntimeError("site supervisor did not become ready")
        if self.admin_pgid is None and self.root_pid and self.root_pid != os.getpid():
            self.admin_pgid = os.getpgid(self.root_pid)

    def _site_settings(self, data: dict) -> dict:
        # boot_ms: when this site started; power-up schedules run once per start.
        return {**site_settings(data), "boot_ms": self.started_ms}

    def _open_control_socket(self) -> None:
        path = self.topology.control_socket
        if path.exists():
            path.unlink()  # stale: we hold the lock, so no live site owns it
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._server.bind(str(path))
        finally:
            os.umask(old_umask)
        self._server.listen(8)
        self._sel.register(self._server, selectors.EVENT_READ, "accept")
        self._sel.register(self._signal_r, selectors.EVENT_READ, "signal")

    def _write_pid_file(self) -> None:
        info = {"runner": os.getpid(), "admin_pgid": self.admin_pgid,
                "topology": str(self.topology.path)}
        write_atomic(self.state_dir / "relevent.pid", json.dumps(info) + "\n")

    # -- main loop -------------------------------------------------------------------------
    def signal_stop(self, signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self._stopping = True
        try:
            self._signal_w.send(b"s")
        except OSError:
            pass

    def signal_reload(self, _signum: int, _frame: Any) -> None:
        """SIGHUP (`systemctl reload`): reload the topology file, from the main loop."""
        self._reload_asked = True
        try:
            self._signal_w.send(b"r")
        except OSError:
            pass

    def serve(self) -> int:
        while not self._stopping:
            for key, _ in self._sel.select(timeout=0.05):
                if key.data == "accept":
                    self._accept()
                elif key.data == "client":
                    self._read_client(key.fileobj)
                elif key.data == "signal":
                    self._signal_r.recv(64)
            self._drop_late_clients()
            if self._stopping:
                break
            if self._reload_asked:
                self._reload_on_signal()
            self._handle(self.asys.listen(0.02))
            self._heartbeat()
            summary = self._summary()
            self.notify.tick(time.monotonic(), summary)
            if not self._announced and summary.serving:
                self._announce()
            self._observe()
        return self.exit_code

    def _observe(self) -> None:
        """Every [runtime] sample_s: the status tree to the observer thread (metrics, history)."""
        if self.observer is not None and self.observer.due(time.monotonic()):
            self.observer.offer(self.status()["tree"], now_ms())

    def _announce(self) -> None:
        """Once the site serves: where each WAN endpoint listens (or what it connects to), and
        where metrics and history are, one line each on stdout."""
        self._announced = True
        for line in endpoint_lines(self.status()["tree"], self.topology.data["wan"]):
            print(f"site {self.topology.name}: {line}", flush=True)
        for line in self.observer.where() if self.observer is not None else ["metrics off", "history off"]:
            print(f"site {self.topology.name}: {line}", flush=True)

    def _summary(self) -> SiteSummary:
        """The site as systemd hears of it: the root's counts, if it runs and answers."""
        running = self.root_due is None and self._root_answering()
        return summary_of(self.root_detail, running, "" if running else self.root_error)

    def _reload_on_signal(self) -> None:
        self._reload_asked = False
        log.info("SIGHUP: reloading %s", self.topology.path)
        self.notify.reloading(time.monotonic_ns() // 1000)
        reply = self.reload()
        if reply.get("ok"):
            changes = reply.get("changes") or {}
            outcome = ", ".join(f"{len(v)} {k}" for k, v in changes.items() if v) or "no change"
            log.info("reload: %s", changes)
        else:
            outcome = f"refused: {reply.get('error')}"
            log.error("reload refused: %s %s", reply.get("error"), "; ".join(reply.get("problems", [])))
        self.notify.reloaded(outcome)

    def _heartbeat(self) -> None:
        """Watch the root when due.  Also called while waiting for a reply: a client asking
        for status over and over must not keep a hung site supervisor from being killed."""
        now = time.monotonic()
        self.notify.beat(now)
        if now >= self._next_ping and not self._restarting:
            policy = self.topology.data["supervision"]["site"]
            self._next_ping = now + policy["heartbeat_interval"]
            self._restarting = True
            try:
                self._watch_root(now, policy)
            finally:
                self._restarting = False

    def _watch_root(self, now: float, policy: dict) -> None:
        """The site supervisor sends a heartbeat (Pong) every heartbeat_interval unasked;
        none for heartbeat_timeout (startup_timeout while its DERs and WAN endpoints are not
        all up: restart_policy.silence_limit) means hung: kill it and start it again."""
        if self.root_due is not None:
            if now >= self.root_due:
                self._start_root_again()
            return
        dead = False
        if self.root_pid and self.root_pid != os.getpid():
            try:
                os.kill(self.root_pid, 0)
            except ProcessLookupError:
                dead = True
                self.root_error = self.root_error or "site supervisor process exited"
                self.root_cause = self.root_cause or "killed"
        silent = now - self.root_alive_at
        summary = summary_of(self.root_detail, True)
        starting = summary.ders_running < summary.ders or summary.wan_serving < summary.wan
        limit = silence_limit(policy["heartbeat_timeout"], policy["startup_timeout"], starting)
        hung = root_hung(silent, self._root_tick_silence(), limit) if self.root_ready and not dead else ""
        if hung:
            self.root_error = hung
            self.root_cause = "hung"
            if self.root_pid and self.root_pid != os.getpid():
                os.kill(self.root_pid, signal.SIGKILL)
            dead = True
        if dead:
            self._restart_root(policy)

    def _root_tick_silence(self) -> float | None:
        """Seconds since the site supervisor last touched its alive file (control.alive_path),
        or None if it has not since it started."""
        try:
            touched = os.stat(alive_path(self.state_dir)).st_mtime
        except OSError:
            return None
        return max(0.0, time.time() - touched) if touched >= self.root_started else None

    def _root_answering(self) -> bool:
        return self.root_ready and time.monotonic() - self.root_alive_at <= \
            self.topology.data["supervision"]["site"]["heartbeat_timeout"]

    def _tell_root(self, message: Any) -> bool:
        """Send to the site supervisor without ever blocking long: thespian's tell() to a
        hung actor waits (MAX_TELL_PERIOD, 60 s by default), which would stop this loop
        and its watchdog.  So: only to a root with a fresh heartbeat, and bounded."""
        if not self._root_answering():
            return False
        try:
            self.asys.tell(self.root, message)
            return True
        except (ActorSystemRequestTimeout, ActorSystemFailure) as exc:
            log.warning("site supervisor did not take %s: %s", type(message).__name__, exc)
            return False

    def _restart_root(self, policy: dict) -> None:
        decision, self.root_history = on_failure(RestartPolicy.from_settings(policy), self.root_history, (ROOT,),
                                                 ROOT, time.monotonic(), error=self.root_error)
        if isinstance(decision, Escalate):
            # Nobody above us: the service manager restarts the runner.
            log.error("site supervisor: giving up: %s", decision.reason)
            self.exit_code = 1
            self._stopping = True
            return
        self.root_pid, self.root_ready = None, False
        if decision.delay_s > 0:
            log.warning("restarting site supervisor in %.3f s: %s", decision.delay_s, self.root_error)
            self.root_due = time.monotonic() + decision.delay_s
            return
        log.warning("restarting site supervisor: %s", self.root_error)
        self._start_root_again()

    def _start_root_again(self) -> None:
        self.root_due = None
        self.root_restarts += 1
        cause, self.root_cause = self.root_cause or "killed", ""
        self.root_causes[cause] = self.root_causes.get(cause, 0) + 1
        self._start_root()
        self.root_error = ""

    def _handle(self, message: Any) -> Any:
        """Book-keeping for anything the root sends us (ActorSystem.listen() results)."""
        if isinstance(message, Hello):
            self.root_pid = message.pid
        elif isinstance(message, Ready):
            self.root_pid, self.root_ready = message.pid, True
            self.root_alive_at = time.monotonic()
            self.root_detail = message.detail
        elif isinstance(message, Pong):
            self.root_alive_at = time.monotonic()
            self.root_detail = message.detail
        elif isinstance(message, Failed):
            self.root_error = message.error
            self.root_cause = "escalated" if message.error.startswith("escalated:") else "crashed"
            log.error("site supervisor failed: %s", message.error)
        return message

    def _await(self, kind: type, request_id: int, timeout: float = REPLY_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        incarnation = self.root_restarts
        while time.monotonic() < deadline:
            message = self._handle(self.asys.listen(min(0.05, max(0.0, deadline - time.monotonic()))))
            if isinstance(message, kind) and message.request_id == request_id:
                return message
            self._heartbeat()
            if self.root_restarts != incarnation or not self._root_answering():
                return None  # the root that had the request is gone: no answer is coming
        return None

    def _next_id(self) -> int:
        self._request += 1
        return self._request

    # -- control socket ------------------------------------------------------------------
    def _accept(self) -> None:
        try:
            conn, _ = self._server.accept()
        except OSError as exc:
            log.warning("control connection: %s", exc)
            return
        if len(self._clients) >= MAX_CONTROL_CONNECTIONS:
            log.warning("control connection refused: %d already open", len(self._clients))
            conn.close()
            return
        conn.setblocking(False)
        self._clients[conn] = (time.monotonic() + REQUEST_DEADLINE_S, bytearray())
        self._sel.register(conn, selectors.EVENT_READ, "client")

    def _read_client(self, conn: socket.socket) -> None:
        """Take what a control client sent; answer once its line is complete (or it closed)."""
        data = self._clients[conn][1]
        try:
            chunk = conn.recv(MAX_REQUEST_BYTES + 1 - len(data))
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("control connection: %s", exc)
            self._close_client(conn)
            return
        if not chunk and not data:
            self._close_client(conn)  # connected and left without a word
            return
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            log.warning("control request over %d bytes: refused", MAX_REQUEST_BYTES)
            self._answer(conn, {"ok": False, "error": f"request larger than {MAX_REQUEST_BYTES} bytes"})
            return
        if chunk and not data.endswith(b"\n"):
            return  # more to come
        try:
            request = json.loads(bytes(data) or b"{}")
            reply = self.dispatch(request) if isinstance(request, dict) else \
                {"ok": False, "error": "a request is one JSON object"}
        except Exception as exc:  # a bad request must never stop the site
            log.exception("control request failed")
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self._answer(conn, reply)

    def _answer(self, conn: socket.socket, reply: dict) -> None:
        try:
            conn.settimeout(REQUEST_DEADLINE_S)  # a client that does not read is not waited for longer
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError as exc:
            log.warning("control connection: %s", exc)
        finally:
            self._close_client(conn)

    def _close_client(self, conn: socket.socket) -> None:
        self._clients.pop(conn, None)
        try:
            self._sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _drop_late_clients(self) -> None:
        now = time.monotonic()
        for conn in [c for c, (deadline, _) in self._clients.items() if now > deadline]:
            log.warning("control request not complete within %.0f s: connection dropped", REQUEST_DEADLINE_S)
            self._close_client(conn)

    def dispatch(self, request: dict) -> dict:
        op = request.get("op")
        if op == "status":
            return self.status()
        if op == "reload":
            return self.reload()
        if op == "endpoint_add":
            return self.endpoint_add(request.get("role", ""), request.get("snippet", ""))
        if op == "endpoint_remove":
            return self.endpoint_remove(request.get("name", ""))
        if op == "forecast":
            return self.forecast(request.get("der", ""), request.get("kind", ""), float(request.get("hours", 24)))
        if op == "fault":
            return self.fault(request.get("target", ""), request.get("kind", ""))
        if op == "stop":
            self._stopping = True
            return {"ok": True}
        return {"ok": False, "error": f"unknown operation {op!r}"}

    def status(self) -> dict:
        rid = self._next_id()
        reply = self._await(StatusReply, rid) if self._tell_root(StatusRequest(rid)) else None
        root = {
            "name": self.topology.name, "path": "", "role": "site", "pid": self.root_pid,
            "state": "running" if reply is not None else "backoff" if self.root_due is not None else "no answer",
            "restarts": self.root_restarts, "restart_causes": dict(self.root_causes),
            "uptime_s": round(time.time() - self.root_started, 3),
            "last_error": self.root_error, "detail": self.root_detail,
            "children": reply.children if reply is not None else [],
        }
        return {"ok": True, "site": self.topology.name, "version": __version__, "runner_pid": os.getpid(),
                "topology": str(self.topology.path), "tree": root}

    def _apply(self, new: Topology, text_changed: str | None = None) -> dict:
        old = self.topology.data
        blocked = [f"[{section}] {key}" for section, key in sorted(RESTART_ONLY)
                   if old[section][key] != new.data[section][key]]
        if new.data["runtime"]["ders_per_process"] > 1:
            # A DER in a group moves only with a restart: in a reload its new group would
            # start it before its old one had stopped it (relevent/actors/der_group.py).
            hosts = {der["name"]: der.get("host", "") for der in old["der"]}
            blocked += [f"[[der]] {der['name']} host" for der in new.data["der"]
                        if hosts.get(der["name"], der.get("host", "")) != der.get("host", "")]
        if blocked:
            return {"ok": False, "error": "needs a restart of the site: " + ", ".join(blocked) + " changed"}
        if not self._root_answering():
            return {"ok": False, "error": "the site supervisor is not answering; try again"}
        if text_changed is not None:
            write_atomic(self.topology.path, text_changed)
        rid = self._next_id()
        if not self._tell_root(Reconfigure(new.data, self._site_settings(new.data), rid)):
            return {"ok": False, "error": "the site supervisor is not answering; the file is written: "
                                          "`relevent reload` again"}
        self.topology = Topology(self.topology.path, new.text, new.data)
        reply = self._await(Reconfigured, rid)
        if reply is None:
            return {"ok": False, "error": "site supervisor did not confirm the change (it will apply it when it "
                                          "answers; the topology file is updated)"}
        return {"ok": True, "changes": reply.changes}

    def _parse(self, text: str) -> Topology:
        # The state dir is resolved as on every other path (topology.loader.resolve_state_dir).
        return parse_topology(text, str(self.topology.path))

    def reload(self) -> dict:
        try:
            new = load_topology(self.topology.path)
        except TopologyError as exc:
            return {"ok": False, "error": "topology invalid, nothing changed", "problems": [str(p) for p in exc.problems]}
        return self._apply(new)

    def endpoint_add(self, role: str, snippet: str) -> dict:
        if role not in ("wan", "lan"):
            return {"ok": False, "error": "role must be wan or lan"}
        try:
            text = add_endpoint(self.topology.text, role, parse_snippet(snippet))
            new = self._parse(text)
        except EditError as exc:
            return {"ok": False, "error": str(exc)}
        except TopologyError as exc:
            return {"ok": False, "error": "endpoint rejected, nothing changed", "problems": [str(p) for p in exc.problems]}
        return self._apply(new, text)

    def endpoint_remove(self, name: str) -> dict:
        try:
            text, _role = remove_endpoint(self.topology.text, name)
            new = self._parse(text)
        except EditError as exc:
            return {"ok": False, "error": str(exc)}
        except TopologyError as exc:
            return {"ok": False, "error": "removal rejected, nothing changed", "problems": [str(p) for p in exc.problems]}
        return self._apply(new, text)

    def forecast(self, der: str, kind: str, hours: float) -> dict:
        ders = {d["name"]: d for d in self.topology.data["der"]}
        if der not in ders or kind not in ders[der]["functions"]:
            return {"ok": False, "error": f"no controller {der}/{kind} in this site"}
        rid = self._next_id()
        sent = self._tell_root(ForecastRequest(der, kind, rid, int(hours * 3600 * 1000)))
        reply = self._await(ForecastReply, rid) if sent else None
        if reply is None or not reply.events:
            return {"ok": False, "error": f"no forecast from {der}/{kind} (not running?)"}
        return {"ok": True, "der": der, "kind": kind, "events": reply.events}

    def fault(self, target: str, kind: str) -> dict:
        if kind not in FAULT_KINDS:
            return {"ok": False, "error": f"kind must be one of {', '.join(FAULT_KINDS)}"}
        if not self.topology.data["runtime"]["allow_fault_injection"]:
            return {"ok": False, "error": "fault injection is disabled ([runtime] allow_fault_injection)"}
        rid = self._next_id()
        if target in ("", "/"):
            # The site supervisor itself: nobody above it in the tree to acknowledge.
            if not self._tell_root(InjectFault("", kind.removesuffix("-loop"), rid)):
                return {"ok": False, "error": "the site supervisor is not answering"}
            return {"ok": True, "message": f"{kind} sent to the site supervisor, pid {self.root_pid}"}
        if not self._tell_root(InjectFault(target, kind, rid)):
            return {"ok": False, "error": "the site supervisor is not answering"}
        reply = self._await(FaultAck, rid, 2.0)
        if reply is None:
            return {"ok": False, "error": "no acknowledgement"}
        return {"ok": True, "message": reply.text} if reply.ok else {"ok": False, "error": reply.text}

    # -- shutdown ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Undo what start() did, and only that: a runner refused by the lock must not
        touch the files of the site that holds it."""
        if self._lock.fd is None:
            return
        self.notify.stop()
        if self.observer is not None:
            self.observer.stop()   # its last sample written, the history closed
        started = time.monotonic()
        try:
            self._stop_root()
        except Exception:
            log.exception("stopping the site supervisor")
        try:
            if self.asys is not None:
                self.asys.shutdown()
        except Exception:
            log.exception("actor system shutdown")
        self._kill_leftovers()
        for name in ("relevent.sock", "relevent.pid", alive_path(self.state_dir).name):
            try:
                (self.state_dir / name).unlink()
            except FileNotFoundError:
                pass
        self._lock.release()
        log.info("site=%s stopped in %.3f s", self.topology.name, time.monotonic() - started)

    def _stop_root(self) -> None:
        """Ask the site supervisor to stop its children in reverse start order and exit
        (`Shutdown`), and wait for its process to go while it keeps its heartbeat
        (restart_policy.stop_overdue).  Whatever is left then goes with asys.shutdown()
        and the process-group teardown.  A root in this process (simpleSystemBase): only
        those."""
        if not self.root_pid or self.root_pid == os.getpid() or not self._tell_root(Shutdown()):
            return
        asked = time.monotonic()
        timeout = self.topology.data["supervision"]["site"]["heartbeat_timeout"]
        while process_alive(self.root_pid):
            self.notify.beat(time.monotonic())
            self._handle(self.asys.listen(0.05))
            now = time.monotonic()
            if stop_overdue(now - asked, now - self.root_alive_at, True, timeout,
                            limit_s=self.topology.data["runtime"]["stop_timeout"]):
                log.error("site supervisor did not stop in %.3f s; shutting the actor system down",
                          now - asked)
                return
        log.info("site supervisor and its children stopped in %.3f s", time.monotonic() - asked)

    def _kill_leftovers(self) -> None:
        """thespian's shutdown can leave actors behind; they all share the admin's process
        group (it setsid()s)."""
        if not self.admin_pgid:
            return
        deadline = time.monotonic() + 3.0
        while True:
            left = group_processes(self.admin_pgid)
            if not left:
                return
            sig = signal.SIGTERM if time.monotonic() < deadline - 2.0 else signal.SIGKILL
            try:
                os.killpg(self.admin_pgid, sig)
            except ProcessLookupError:
                pass
            if time.monotonic() > deadline:
                log.error("processes left after shutdown: %s", left)
                return
            time.sleep(0.05)


def endpoint_lines(tree: dict, wan: list[dict]) -> list[str]:
    """One line per WAN endpoint: where it listens (what its actor says it serves, else the
    topology's address), or what it connects to."""
    nodes = {node.get("path"): node for node in walk(tree)}
    lines = []
    for ep in wan:
        detail = (nodes.get(ep["name"]) or {}).get("detail") or {}
        listens = listen_address(ep)
        if listens is not None:
            where = detail.get("serving") or f"{listens[0]}:{listens[1]}"
            lines.append(f"WAN {ep['name']} ({ep['protocol']}) listening on {where}")
        else:
            target = detail.get("vtn_url") or detail.get("broker") or ep.get("vtn_url") or \
                (f"{ep.get('host')}:{ep.get('port')}" if ep.get("host") else "")
            lines.append(f"WAN {ep['name']} ({ep['protocol']}) connects to {target or '(see its detail)'}")
    return lines


def group_processes(pgid: int) -> list[int]:
    """Pids of live (not zombie) processes in process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def run_site(path: str) -> int:
    topology = load_topology(path)
    runner = SiteRunner(topology)
    signal.signal(signal.SIGTERM, runner.signal_stop)
    signal.signal(signal.SIGINT, runner.signal_stop)
    signal.signal(signal.SIGHUP, runner.signal_reload)
    try:
        runner.start()
        code = runner.serve()
    finally:
        runner.stop()
    return code
