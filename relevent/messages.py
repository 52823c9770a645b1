"""Messages exchanged in the actor tree.  Plain data only (they are pickled across
processes and must survive a code reload).

Big messages have a short repr: thespian formats every received message for a debug log
line before it checks the log level, and a full dataclass repr of a controller state
(every schedule, every value) cost more than handling the message."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ShortRepr:
    def __repr__(self) -> str:
        keys = [k for k in ("name", "der", "kind", "request_id") if hasattr(self, k)]
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"


@dataclass(repr=False)
class Configure(ShortRepr):
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


@dataclass(repr=False)
class Ready(ShortRepr):
    name: str
    pid: int
    detail: dict = field(default_factory=dict)


@dataclass
class Ping:
    seq: int
    # Asked of a child supervisor by a parent with more of them than it fans status requests
    # out to (relevent/actors/supervisor.py, STATUS_FANOUT_MAX): answer with your children.
    status: bool = False


@dataclass(repr=False)
class Pong(ShortRepr):
    """A heartbeat reply (thespian formats every message it logs: a short repr, as the
    children's nodes a child supervisor may send with it run to kilobytes)."""
    name: str
    seq: int
    pid: int
    detail: dict = field(default_factory=dict)
    children: list | None = None  # the sender's children's nodes, when its Ping asked for them


@dataclass
class Shutdown:
    """Sent to a supervisor in place of ActorExitRequest: stop your children in reverse start
    order, each within STOP_TIMEOUT_S (relevent/actors/restart_policy.py), then exit.
    (ActorExitRequest makes thespian stop them all at once and wait with no timeout.)"""


@dataclass
class Failed:
    """A child tells its supervisor why it is about to exit (let it crash)."""
    name: str
    error: str


@dataclass(repr=False)
class Reconfigure(ShortRepr):
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


@dataclass(repr=False)
class StatusReply(ShortRepr):
    """(A short repr: `children` is every node below the sender, 4,000 at 1,000 DERs.)"""
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
    seq: int = 0     # the endpoint's write number, acknowledged in ControllerState.writes_applied
    party: str = ""  # who wrote it (the schedule remembers its last writer)


@dataclass(repr=False)
class ScheduleWrites(ShortRepr):
    """Writes to one controller's schedules, in the order clients made them (one message for
    a whole MMS write request instead of one per attribute)."""
    der: str
    kind: str
    writes: list  # of ScheduleWrite
    origin: str = ""  # the endpoint's name


@dataclass
class ScheduleOperate:
    """EnaReq/DsaReq with ctlVal=true; answered with OperateResult to reply_to once durable."""
    der: str
    kind: str
    schedule: str
    op: str          # enable | disable
    request_id: int
    reply_to: Any = None


@dataclass(repr=False)
class OperateResult(ShortRepr):
    request_id: int
    ok: bool
    refusal: int | None
    reason: str
    state: "ControllerState"


@dataclass(repr=False)
class ControllerState(ShortRepr):
    """What a protocol endpoint shows of one controller and its schedules.  `schedules`
    holds the schedules that changed since the last state (all of them when `full`): per
    name {"status": ..., "settings": ... or None when unchanged}; see
    relevent.scheduling.schedule.status_snapshot / settings_snapshot."""
    der: str
    kind: str
    schedules: dict
    output: tuple        # (value, source schedule name or None, run start ms or None)
    at: int              # ms, when this state was computed
    version: tuple = (0, 0)  # (controller incarnation stamp, sequence): newer states win
    address: Any = None      # the controller: endpoints send requests straight to it
    full: bool = True        # every schedule with its settings (after a subscription, with an answer)
    writes_applied: dict = field(default_factory=dict)  # endpoint name -> last write seq included
    # The state due at the controller's next boundary if nothing changes before (version
    # (stamp, seq, 1)); endpoints apply it on time themselves.  See ControllerActor._next_state.
    then: "ControllerState | None" = None
    writes_saved: dict = field(default_factory=dict)  # endpoint name -> last write seq saved (durable)


@dataclass
class SnapshotRequest:
    """An endpoint (re)started: it subscribes to every controller (through the site and the
    DERs, which remember it) and each controller sends it its full state."""
    subscriber: str = ""
    reply_to: Any = None


@dataclass
class ForecastRequest:
    """The output of one controller over the next `window_ms` (default 24 h), answered
    with ForecastReply to reply_to (an endpoint) or, from the runner, through the site."""
    der: str
    kind: str
    request_id: int
    window_ms: int = 24 * 3600 * 1000
    reply_to: Any = None


@dataclass(repr=False)
class ForecastReply(ShortRepr):
    request_id: int
    der: str
    kind: str
    events: list  # [(ms, value, schedule name or None)], first the value in force now


# -- devices (DER -> LAN endpoint -> device, and back) ----------------------------------------
@dataclass
class OutputChanged:
    """A controller tells its DER the output it drives now (value, source schedule)."""
    der: str
    kind: str
    value: Any
    source: str | None
    at: int  # ms, when the controller switched


@dataclass
class CommandSubscribe:
    """A LAN endpoint (re)started: the site and each DER remember it, and each DER served by
    it answers with its current DeviceCommand (so a restarted endpoint re-applies it)."""
    subscriber: str
    reply_to: Any = None


@dataclass
class DeviceCommand:
    """What a device must do now, in W; see relevent.devices.command.  `changed` lists the
    control functions whose output changed (empty when the command is only re-sent)."""
    der: str
    setpoint_w: float
    limit_w: float
    connected: bool
    outputs: dict         # kind -> (value, source schedule or None)
    changed: list
    at: int               # ms, when the change took effect at the controller
    seq: int
    der_address: Any = None  # where the endpoint sends this DER's measurements
    ack_to: Any = None       # set: the endpoint answers CommandApplied there once the device has it


@dataclass
class CommandApplied:
    """A LAN endpoint's answer to a DeviceCommand with `ack_to`: the device took command
    `seq` (ok), or the endpoint could not give it (not ok, `detail` says why)."""
    der: str
    seq: int
    ok: bool
    detail: str = ""


@dataclass
class LeaveDevices:
    """The site is stopping for good (not a restart, not a reload): each DER leaves its
    device as its `at_stop` says before any LAN endpoint stops, then answers DevicesLeft."""
    request_id: int


@dataclass
class DevicesLeft:
    der: str
    request_id: int
    how: str              # "keep", "reserve", or "none" (no device)
    ok: bool = True       # reserve: the device confirmed it
    detail: str = ""


@dataclass
class Measurement:
    """A device's measured active power (W, generation positive) and state, from a LAN endpoint;
    the grid voltage and frequency at its terminals where the device reports them (None where
    not: a measurement trigger treats None as missing, relevent/scheduling/trigger.py)."""
    der: str
    w: float | None
    connected: bool | None
    at: int               # ms, when the endpoint read it
    quality: str = "good"  # good | invalid | questionable (pivot Validity)
    source: str = ""       # the endpoint's name
    detail: str = ""
    voltage_v: float | None = None     # phase A to neutral, V (SunSpec 101-103 PhVphA)
    frequency_hz: float | None = None  # Hz (SunSpec 101-103 Hz)
    contact: bool | None = None        # a control box's switch contact wired to the device (§14a): True closed


@dataclass
class WanContact:
    """A WAN endpoint heard from a remote actor (a client connected, wrote or operated) at
    `at` ms: the site's "no telecom" schedules count from the last one."""
    at: int
    source: str = ""
