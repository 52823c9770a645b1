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


# -- scheduling (controllers own their schedules; endpoints mirror them) -----------------------
@dataclass
class ScheduleWrite:
    """A client's write of a schedule setting.  field: NumEntr, SchdIntv, SchdPrio, SchdReuse,
    Val (index 1..100) or StrTm (index 1..16, value ms)."""
    der: str
    kind: str
    schedule: str
    field: str
    value: Any
    index: int = 0


@dataclass
class ScheduleOperate:
    """EnaReq/DsaReq with ctlVal=true; answered with OperateResult to reply_to once durable."""
    der: str
    kind: str
    schedule: str
    op: str          # enable | disable
    request_id: int
    reply_to: Any = None


@dataclass
class OperateResult:
    request_id: int
    ok: bool
    refusal: int | None
    reason: str
    state: "ControllerState"


@dataclass
class ControllerState:
    """Everything a protocol endpoint shows of one controller and its schedules."""
    der: str
    kind: str
    schedules: dict      # name -> Schedule snapshot (see relevent.scheduling.schedule.snapshot)
    output: tuple        # (value, source schedule name or None, run start ms or None)
    at: int              # ms, when this state was computed
    version: tuple = (0, 0)  # (controller incarnation stamp, sequence): newer states win


@dataclass
class SnapshotRequest:
    """An endpoint (re)started: every controller publishes its full state."""
