"""Messages exchanged in the actor tree.  Plain data only (they are pickled across
processes and must survive a code reload)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Configure:
    """Sent by a supervisor right after creating a child, and again after every restart."""
    name: str
    path: str            # e.g. "pv1/ActPow/FSCH01", unique in the site
    role: str            # site | wan | lan | der | controller | schedule
    config: dict         # the child's own slice of the topology
    site: dict           # site-wide settings: state_dir, runtime, supervision
    incarnation: int     # 0 at first start, +1 per restart by this supervisor


@dataclass
class Hello:
    """First thing a child does on Configure, before any work that could hang: its pid."""
    name: str
    pid: int


@dataclass
class Ready:
    name: str
    pid: int
    detail: dict = field(default_factory=dict)


@dataclass
class Ping:
    seq: int


@dataclass
class Pong:
    name: str
    seq: int
    pid: int
    detail: dict = field(default_factory=dict)


@dataclass
class Failed:
    """A child tells its supervisor why it is about to exit (let it crash)."""
    name: str
    error: str


@dataclass
class Reconfigure:
    """New configuration for a running actor; supervisors diff their children."""
    config: dict
    site: dict
    request_id: int = 0


@dataclass
class Reconfigured:
    request_id: int
    changes: dict  # {"added": [...], "removed": [...], "restarted": [...]} (paths)


@dataclass
class StatusRequest:
    request_id: int


@dataclass
class StatusReply:
    request_id: int
    children: list  # list of node dicts, see Supervisor.node()


@dataclass
class InjectFault:
    """Fault injection for tests and `relevent chaos`; refused unless the topology allows it.
    ``target`` is a path relative to the receiver ("" = the receiver itself); the supervisor
    that delivers it answers FaultAck to ``reply_to``."""
    target: str
    kind: str  # raise | exit | segfault | hang | sigterm | raise-loop
    request_id: int = 0
    reply_to: Any = None


@dataclass
class FaultAck:
    request_id: int
    ok: bool
    text: str = ""


@dataclass
class Wakeup:
    """Payload of wakeupAfter: wakeups cannot be cancelled, so each carries what it is for."""
    what: str
    key: Any = None
    generation: int = 0


FAULT_KINDS = ("raise", "exit", "segfault", "hang", "sigterm", "raise-loop")
