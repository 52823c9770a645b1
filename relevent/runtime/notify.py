"""systemd's notify protocol for `relevent run` (Type=notify, WatchdogSec, ExecReload).

Invariants, and why:

* `READY=1` is sent once per start, and only when the site supervisor runs and every WAN
  endpoint serves (its Ready reached the site supervisor: listening, with the controllers'
  states in).  systemd orders `After=` units and reports `systemctl start` done on it, so an
  early READY would tell a waiting client that a port is open when it is not.
* `WATCHDOG=1` is due every `WATCHDOG_USEC / 2` and is sent from the runner's own loops,
  including the one that waits for a restarted site supervisor: the runner heals a killed or
  hung site supervisor itself in about a second, and systemd's watchdog must fire only when
  the runner itself is stuck.  A beat is never skipped because the site is unhealthy.
* `RELOADING=1` (with `MONOTONIC_USEC`) before a SIGHUP reload, `READY=1` when the reload is
  answered, whatever its outcome (the site keeps serving with the old topology if the new
  one is refused; `STATUS=` says which).
* `STOPPING=1` first thing when the runner stops.
* `STATUS=` says how many DERs run, how many WAN endpoints serve and how many children are
  failing, and is sent when that text changes.

`NotifyPlan` decides what to send and when; it has no clock or socket (time is an
argument).  `NotifySocket` sends one datagram per message to `$NOTIFY_SOCKET` (a path, or an
abstract address written with a leading '@'); `Notifier` joins the two for the runner.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

log = logging.getLogger("relevent.notify")


@dataclass(frozen=True)
class SiteSummary:
    """What the runner knows of its site when it decides what to tell systemd."""

    root_running: bool        # the site supervisor is up and its heartbeat fresh
    ders: int = 0
    ders_running: int = 0
    wan: int = 0
    wan_serving: int = 0
    faults: int = 0           # children of the site supervisor failing or waiting for a restart
    root_error: str = ""      # why the site supervisor is being restarted

    @property
    def serving(self) -> bool:
        return self.root_running and self.wan_serving >= self.wan


def summary_of(detail: dict, root_running: bool, root_error: str = "") -> SiteSummary:
    """The site supervisor's heartbeat detail (`SiteSupervisor.detail()["summary"]`) as a
    SiteSummary; before its first heartbeat with a summary, nothing serves yet."""
    counts = detail.get("summary") if isinstance(detail, dict) else None
    if not isinstance(counts, dict):
        return SiteSummary(root_running=False, root_error=root_error)
    return SiteSummary(root_running, counts.get("ders", 0), counts.get("ders_running", 0), counts.get("wan", 0),
                       counts.get("wan_serving", 0), counts.get("faults", 0), root_error)


def status_text(site: SiteSummary) -> str:
    text = (f"{site.ders_running}/{site.ders} DERs running, {site.wan_serving}/{site.wan} WAN endpoints serving, "
            f"{site.faults} faults")
    if not site.root_running:
        text = (f"site supervisor restarting ({site.root_error})" if site.root_error else "site supervisor starting") \
            + "; " + text
    return text


class NotifyPlan:
    """What to send, and when.  Each method returns the datagrams to send now (each one a
    newline-separated list of assignments), in order."""

    def __init__(self, watchdog_usec: int | None) -> None:
        self.interval = watchdog_usec / 2_000_000 if watchdog_usec and watchdog_usec > 0 else None
        self.next_beat: float | None = None
        self.ready_sent = False
        self.stopping = False
        self.status = ""

    def beat(self, now: float) -> list[str]:
        """The watchdog alone: called from every loop of the runner, often."""
        if self.interval is None or self.stopping:
            return []
        if self.next_beat is None or now >= self.next_beat:
            self.next_beat = now + self.interval
            return ["WATCHDOG=1"]
        return []

    def tick(self, now: float, site: SiteSummary) -> list[str]:
        """The runner's main loop: the watchdog, READY once the site serves, STATUS on change."""
        out = self.beat(now)
        if self.stopping:
            return out
        status = status_text(site)
        fields = []
        if not self.ready_sent and site.serving:
            self.ready_sent = True
            fields.append("READY=1")
        if status != self.status:
            self.status = status
            fields.append(f"STATUS={status}")
        if fields:
            out.append("\n".join(fields))
        return out

    def reloading(self, monotonic_usec: int) -> list[str]:
        """A reload before the first READY is part of the start: systemd hears nothing of it
        and READY still waits for the site to serve."""
        if self.stopping or not self.ready_sent:
            return []
        self.status = "reloading the topology"
        return [f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS={self.status}"]

    def reloaded(self, outcome: str) -> list[str]:
        """The reload was answered (`outcome` says how): ready again.  The next tick's STATUS
        goes back to the site's counts."""
        if self.stopping or not self.ready_sent:
            return []
        self.status = f"reload: {outcome}"
        return [f"READY=1\nSTATUS={self.status}"]

    def stop(self) -> list[str]:
        if self.stopping:
            return []
        self.stopping = True
        return ["STOPPING=1\nSTATUS=stopping"]


def socket_address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as an AF_UNIX address: a path, or '@name' for the abstract name."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other families: not used by systemd for services


class NotifySocket:
    """One AF_UNIX datagram per message; a failed send is logged once and never raised: the
    site must keep running if the service manager's socket goes away."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._warned = False

    def send(self, message: str) -> bool:
        try:
            self.sock.sendto(message.encode(), self.address)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("notify socket %r: %s (further failures not logged)", self.address, exc)
                self._warned = True
            return False

    def close(self) -> None:
        self.sock.close()


class Notifier:
    """The runner's handle: a plan, and a socket when systemd gave one."""

    def __init__(self, plan: NotifyPlan, sock: NotifySocket | None) -> None:
        self.plan = plan
        self.sock = sock

    @classmethod
    def from_environment(cls, environ: "os._Environ[str] | dict[str, str]" = os.environ) -> "Notifier":
        """Read and remove NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, so the actor
        processes the runner forks never speak for the service (systemd accepts only the main
        pid by default) nor think the watchdog is theirs."""
        address = socket_address(environ.pop("NOTIFY_SOCKET", ""))
        usec_text = environ.pop("WATCHDOG_USEC", "")
        watchdog_pid = environ.pop("WATCHDOG_PID", "")
        usec = int(usec_text) if usec_text.isdigit() else None
        if watchdog_pid.isdigit() and int(watchdog_pid) != os.getpid():
            usec = None  # the watchdog is meant for another process
        return cls(NotifyPlan(usec if address else None), NotifySocket(address) if address else None)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def _send(self, messages: list[str]) -> None:
        if self.sock is None:
            return
        for message in messages:
            self.sock.send(message)
            if not message.startswith("WATCHDOG"):
                log.info("notify: %s", message.replace("\n", " "))

    def beat(self, now: float) -> None:
        if self.sock is not None:
            self._send(self.plan.beat(now))

    def tick(self, now: float, site: SiteSummary) -> None:
        if self.sock is not None:
            self._send(self.plan.tick(now, site))

    def reloading(self, monotonic_usec: int) -> None:
        self._send(self.plan.reloading(monotonic_usec))

    def reloaded(self, outcome: str) -> None:
        self._send(self.plan.reloaded(outcome))

    def stop(self) -> None:
        self._send(self.plan.stop())
