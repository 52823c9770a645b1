"""Policy: may this party do this to this schedule?  One pure decision that every WAN
request passes through, in the control session (relevent/wan/session.py), before it is
answered or reaches a controller; no adapter decides it, so no protocol can bypass it.

The rules, in the order they are checked (the first that fails names the refusal):

1. the request is well formed (a known action, a known 90-10 field);
2. **rights** of the party (`[[party]]` in the topology, `Rights`): the operation
   (read, write, enable, disable, command), the DER and the control function;
3. **ownership**: a schedule remembers the party that last wrote it (`Settings.writer`);
   another party may write, enable or disable it only with `others = true`;
4. **priority band**: a `SchdPrio` written outside the party's band is refused, never
   clamped, and so is an enable of a schedule whose priority lies outside it (a default
   priority, or one another party set);
5. the site's **locks** (a schedule's `locked` set: EnaReq, DsaReq, StrTm, SchdPrio,
   SchdReuse; the reserve always has EnaReq, DsaReq, StrTm and SchdPrio locked), which
   hold for every party.

A site without `[[party]]` sections gives each endpoint's party every right (`Rights()`,
today's behaviour for sites that predate parties); `relevent check` says so.

A refusal names its rule (a stable string an adapter can show: "lock:StrTm",
"party:der", "band") and the 90-10 refusal code it maps to (Refusal.ACCESS_DENIED), so
every protocol reports the same reason in its own way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relevent.scheduling.schedule import FIELDS, Refusal, Schedule

ACTIONS = ("write", "enable", "disable")
OPERATIONS = ("read", "write", "enable", "disable", "command")
PRIO_MIN, PRIO_MAX = 0, 2147483647       # SchdPrio is an INT32 in 90-10; negative priorities are refused
_LOCK_OF_ACTION = {"enable": "EnaReq", "disable": "DsaReq"}


@dataclass(frozen=True)
class Rights:
    """What a party may do.  Empty `ders`/`functions` mean all of them."""
    ders: frozenset = frozenset()
    functions: frozenset = frozenset()
    operations: frozenset = frozenset(OPERATIONS)
    band: tuple = (PRIO_MIN, PRIO_MAX)       # SchdPrio it may set, inclusive
    others: bool = False                      # may touch schedules another party wrote

    @staticmethod
    def of(party: dict) -> "Rights":
        """From a topology `[[party]]` table (normalised by the loader)."""
        return Rights(frozenset(party.get("ders") or ()), frozenset(party.get("functions") or ()),
                      frozenset(party.get("operations") or OPERATIONS), tuple(party.get("priority") or
                                                                               (PRIO_MIN, PRIO_MAX)),
                      bool(party.get("others", False)))


UNRESTRICTED = Rights(others=True)
READ_ONLY = Rights(operations=frozenset({"read"}))
NOTHING = Rights(operations=frozenset())


@dataclass(frozen=True)
class Request:
    """What a party asks of one schedule: a write of `field` (a 90-10 name, FIELDS) with
    `value`, or an enable or disable."""
    party: str
    action: str          # write | enable | disable
    der: str
    kind: str            # ActPow | MaxPow | OnOff
    schedule: str        # FSCH01.. or Res_FSCH01
    field: str = ""      # for writes
    value: Any = None    # for writes


@dataclass(frozen=True)
class Decision:
    ok: bool
    rule: str = ""                  # e.g. "lock:StrTm"; empty when allowed
    refusal: Refusal | None = None
    reason: str = ""

    @staticmethod
    def allow() -> "Decision":
        return Decision(True)


def _deny(rule: str, reason: str) -> Decision:
    return Decision(False, rule, Refusal.ACCESS_DENIED, reason)


def may(rights: Rights, operation: str, der: str, kind: str | None = None, party: str = "") -> Decision:
    """Rule 2 alone: may a party with `rights` do `operation` on this DER (and function)?
    (Reads use it directly; `check` uses it for every request.)"""
    who = f"party {party!r}" if party else "an unrecognised client"
    if operation not in rights.operations:
        return _deny("party:operation", f"{who} may not {operation} (its operations: "
                                        f"{', '.join(sorted(rights.operations)) or 'none'})")
    if rights.ders and der not in rights.ders:
        return _deny("party:der", f"{who} may not steer DER {der!r}")
    if kind is not None and rights.functions and kind not in rights.functions:
        return _deny("party:function", f"{who} may not steer {der}/{kind}")
    return Decision.allow()


def check(request: Request, schedule: Schedule, rights: Rights = UNRESTRICTED) -> Decision:
    """The decision for `request` on `schedule` (the session's mirror of it)."""
    if request.action not in ACTIONS:
        return _deny("action", f"unknown action {request.action!r}")
    if request.action == "write" and request.field not in FIELDS:
        return _deny("field", f"unknown schedule field {request.field!r} (one of {', '.join(FIELDS)})")
    allowed = may(rights, request.action, request.der, request.kind, request.party)
    if not allowed.ok:
        return allowed
    target = f"{request.der}/{request.kind}/{request.schedule}"
    writer = schedule.settings.writer
    if writer and writer != request.party and not rights.others:
        return _deny("party:owner", f"{target} was written by party {writer!r}; party {request.party!r} may "
                                    f"not touch another party's schedule")
    lo, hi = rights.band
    if request.action == "write" and request.field == "SchdPrio":
        value = request.value   # not an integer: the core refuses it as a value
        if isinstance(value, int) and not isinstance(value, bool) and not PRIO_MIN <= value <= PRIO_MAX:
            return Decision(False, "range:SchdPrio", Refusal.VALUE_INVALID,
                            f"SchdPrio {value} is outside {PRIO_MIN}..{PRIO_MAX}")
        if isinstance(value, int) and not lo <= value <= hi:
            return _deny("band", f"SchdPrio {value} is outside party {request.party!r}'s band {lo}..{hi}")
    if request.action == "enable" and not schedule.reserve and not lo <= schedule.settings.prio <= hi:
        return _deny("band", f"{target} has SchdPrio {schedule.settings.prio}, outside party "
                             f"{request.party!r}'s band {lo}..{hi}: write SchdPrio first")
    locked = request.field if request.action == "write" else _LOCK_OF_ACTION[request.action]
    if locked in schedule.locked:
        return _deny(f"lock:{locked}", f"{locked} of {target} is locked by the site")
    return Decision.allow()
