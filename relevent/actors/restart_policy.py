"""What a supervisor does when a child fails or must stop: Erlang/OTP's rules as pure functions.

No thespian and no clock here: every decision takes the time (`now`, monotonic seconds) and
the failure history as arguments and returns a new history, so a test can replay any
timeline.  `relevent.actors.supervisor.Supervisor` carries the decisions out for the actor
tree, `relevent.runtime.runner.SiteRunner` for the site supervisor (the root) it watches.

Invariants, and why:

* Intensity.  A supervisor counts the failures of its children in a sliding window of
  `period_s` seconds ending now, this failure included.  With more than `max_restarts` of
  them it restarts nothing and escalates: it stops its children and exits, and its own
  supervisor counts that as one failure of one child.  A failure that restarts do not cure
  climbs the tree to a level whose restart does cure it (a DER that starts afresh), or to
  the runner, which exits for the service manager, instead of looping at one level.
* Backoff.  The restart of a child that already restarted k times within the window waits
  ``min(backoff_initial_s * 2**(k-1), backoff_max_s)`` seconds; the first (k = 0) waits
  none.  A crash loop then costs less and less CPU while the window fills up.
* Restart set.  one_for_one: the failed child; rest_for_one: it and every child after it;
  one_for_all: every child.  Children are listed in start order, and a child may depend
  on the ones before it (site: devices, then WAN endpoints, then DERs, then LAN
  endpoints), never on the ones after it.
* Order.  The children of a set that are still running are stopped one at a time in
  reverse start order (`stop_order`): a child stops before what it depends on.  The set is
  started again in start order once all of it has exited, after the failed child's
  backoff.  A supervisor that stops (escalation, or asked to) stops all its children
  the same way before it exits.
* Stop timeout.  A child asked to stop and still alive STOP_TIMEOUT_S later is killed
  (SIGKILL, by the pid it reported in `Hello`): a hung child must not keep a restart or a
  shutdown waiting forever.  A supervisor child stops its own children one by one, each
  within that bound, so it gets as long as it keeps answering heartbeats (`stop_overdue`);
  when it is killed, its subtree dies with it (PR_SET_PDEATHSIG, runtime/hardening.py).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

STRATEGIES = ("one_for_one", "rest_for_one", "one_for_all")

# Seconds a child may take to exit once asked.  An actor's on_stop closes its sockets and
# joins its threads: stopping a 10-DER test site, the slowest child (the MMS endpoint)
# exited 20 ms after the request and a DER with its controllers 15 ms ("stopped child=...
# in" lines of relevent.log).  2 s is a hundred times that, and still bounds a group
# restart or a shutdown held up by a hung child.
STOP_TIMEOUT_S = 2.0
# How many times its silence limit the site supervisor's heartbeats may stay away while its
# heartbeat tick still runs (root_hung): long enough for a busy supervisor's transmit queue
# to drain, short enough that one that never does is restarted in minutes, not never.
QUEUED_HEARTBEAT_FACTOR = 5.0
# Pings a supervisor sends at one heartbeat tick at most (heartbeat_slices).  thespian sends
# 20 messages at a time and queues up to 950 more (MAX_PENDING_TRANSMITS and
# MAX_QUEUED_TRANSMITS, thespian/system/transport/asyncTransportBase.py); past that it stops
# receiving until the queue is down to 780: a round of 1,000 Pings at once went past it alone.
PINGS_PER_TICK = 200


@dataclass(frozen=True)
class RestartPolicy:
    strategy: str = "one_for_one"
    max_restarts: int = 10       # failures allowed within period_s; one more escalates
    period_s: float = 30.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r} (use {', '.join(STRATEGIES)})")

    @classmethod
    def from_settings(cls, table: Mapping) -> "RestartPolicy":
        """From one [supervision.<level>] table of a normalised topology."""
        return cls(table["strategy"], table["max_restarts"], float(table["period"]),
                   float(table["backoff_initial"]), float(table["backoff_max"]))

    def backoff_s(self, earlier_restarts: int) -> float:
        """Delay before a child's restart, given its restarts already within the window."""
        if earlier_restarts <= 0:
            return 0.0
        return min(self.backoff_initial_s * 2 ** (earlier_restarts - 1), self.backoff_max_s)


@dataclass(frozen=True)
class History:
    """What one supervisor remembers of past failures (monotonic seconds), never mutated:
    `failures` of any child, for the intensity; `restarts` per child name, for its backoff."""
    failures: tuple[float, ...] = ()
    restarts: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def forget(self, name: str) -> "History":
        """A child removed from the supervisor: a new child of that name starts afresh."""
        return replace(self, restarts={k: v for k, v in self.restarts.items() if k != name})


@dataclass(frozen=True)
class Restart:
    """Stop `stop` one at a time in that order (reverse start order), then, once every child
    of `start` has exited, wait `delay_s` and start `start` in that order (start order)."""
    failed: str
    stop: tuple[str, ...]
    start: tuple[str, ...]
    delay_s: float
    reason: str


@dataclass(frozen=True)
class Escalate:
    """Restart nothing: stop every child (reverse start order), tell the parent `reason`, exit."""
    reason: str


Decision = Restart | Escalate


def within(times: Sequence[float], now: float, period_s: float) -> tuple[float, ...]:
    """The times of the sliding window (now - period_s, now]; a time exactly period_s ago counts."""
    return tuple(t for t in times if now - t <= period_s)


def restart_set(strategy: str, children: Sequence[str], failed: str) -> tuple[str, ...]:
    """The children restarted for the failure of `failed`, in start order."""
    if strategy == "one_for_all":
        return tuple(children)
    if strategy == "rest_for_one":
        return tuple(children[children.index(failed):])
    if strategy == "one_for_one":
        return (failed,)
    raise ValueError(f"unknown strategy {strategy!r}")


def stop_order(children: Sequence[str], names: Collection[str]) -> tuple[str, ...]:
    """`names` in the order to stop them: reverse start order (`children` is the start order)."""
    return tuple(name for name in reversed(children) if name in names)


def on_failure(policy: RestartPolicy, history: History, children: Sequence[str], failed: str, now: float,
               alive: Collection[str] = (), error: str = "") -> tuple[Decision, History]:
    """Decide what to do about the unplanned exit of child `failed` at time `now`.

    `children`: the supervisor's children in start order (`failed` among them); `alive`:
    those whose process has not exited yet (the failed one has).  Returns the decision and
    the history to keep."""
    failures = within(history.failures, now, policy.period_s) + (now,)
    if len(failures) > policy.max_restarts:
        reason = (f"{len(failures)} restarts within {policy.period_s:g} s (max {policy.max_restarts}); "
                  f"last: {failed}: {error}")
        return Escalate(reason), replace(history, failures=failures)
    earlier = within(history.restarts.get(failed, ()), now, policy.period_s)
    delay = policy.backoff_s(len(earlier))
    members = restart_set(policy.strategy, children, failed)
    stop = stop_order(children, {m for m in members if m in alive and m != failed})
    restarts = {**history.restarts, failed: earlier + (now,)}
    decision = Restart(failed, stop, members, delay, f"{failed}: {error}" if error else failed)
    return decision, History(failures, restarts)


def merge(pending: Restart, new: Restart, children: Sequence[str]) -> Restart:
    """A failure while a group restart is still stopping its children: one group restart of
    both sets, so that no child of either starts before all of both have exited."""
    start = set(pending.start) | set(new.start)
    stop = (set(pending.stop) | set(new.stop)) - {pending.failed, new.failed}
    return Restart(new.failed, stop_order(children, stop), tuple(c for c in children if c in start),
                   max(pending.delay_s, new.delay_s), new.reason)


def stop_overdue(waited_s: float, silent_s: float, supervisor: bool, heartbeat_timeout_s: float,
                 stop_timeout_s: float = STOP_TIMEOUT_S, limit_s: float | None = None) -> bool:
    """Whether a child asked to stop `waited_s` ago, and silent for `silent_s` (time since the
    oldest heartbeat it has not answered, 0 if none), must now be killed.  A supervisor
    child that still answers heartbeats is busy stopping its own children: it waits, but
    never past `limit_s` when one is given (the runner's whole-site budget, so that a site
    of many actors on a loaded host still stops before the service manager's own timeout)."""
    if waited_s <= stop_timeout_s:
        return False
    if limit_s is not None and waited_s > limit_s:
        return True
    return not (supervisor and silent_s <= heartbeat_timeout_s)


def root_hung(heartbeat_silent_s: float, tick_silent_s: float | None, limit_s: float,
              queued_factor: float = QUEUED_HEARTBEAT_FACTOR) -> str:
    """Why the runner takes the site supervisor for hung, or "" if it does not.

    `heartbeat_silent_s`: since its last heartbeat (a thespian message) reached the runner;
    `tick_silent_s`: since it last touched its alive file at a heartbeat tick (None: not
    since it started).  A heartbeat waits in thespian's queue behind every transmit queued
    before it, one per DER for each heartbeat round and status request (at 1,000 DERs more
    than 950 at times: bench/README.md, "Scale").  The tick runs on the supervisor's own
    thread, between those messages: while it keeps touching the file it is not hung, unless
    its heartbeats stay away `queued_factor` times the limit (a queue that never drains is a
    fault too)."""
    tick = heartbeat_silent_s if tick_silent_s is None else tick_silent_s
    if min(heartbeat_silent_s, tick) > limit_s:
        return f"hung: no heartbeat for {heartbeat_silent_s:.2f} s"
    if heartbeat_silent_s > queued_factor * limit_s:
        return (f"hung: no heartbeat for {heartbeat_silent_s:.2f} s, although its heartbeat tick ran "
                f"{tick:.2f} s ago (its messages do not leave)")
    return ""


def silence_limit(heartbeat_timeout_s: float, startup_timeout_s: float, starting: bool) -> float:
    """How long a supervisor child may go without a heartbeat before it is taken as hung.
    While its own children are still starting (`starting`), it is as busy as it will ever
    be (it creates a process per child and sends each its Configure, and its heartbeats
    queue behind them; bench/README.md, "Scale"), so it gets its `startup_timeout`, the
    time any child may take to become ready; after that, the heartbeat timeout."""
    return max(heartbeat_timeout_s, startup_timeout_s) if starting else heartbeat_timeout_s


def heartbeat_slices(children: int, per_tick: int = PINGS_PER_TICK) -> int:
    """Over how many ticks a supervisor spreads one heartbeat round to `children` children.
    Its ticks come heartbeat_interval / slices apart and each pings the children whose place
    in the list is the tick's number modulo slices: every child is still pinged once per
    heartbeat_interval (up to two after a reload moved it in the list; its heartbeat_timeout
    counts from its Ping), and never more than `per_tick` Pings go out at once."""
    return max(1, -(-children // per_tick))
