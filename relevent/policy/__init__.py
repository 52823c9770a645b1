"""Policy: may this party do this to this schedule?  One pure decision that every WAN
request passes through, in the control session (relevent/wan/session.py), before it is
answered or reaches a controller; no adapter decides it, so no protocol can bypass it.

Today the rules are the topology's locks (a schedule's `locked` set: EnaReq, DsaReq,
StrTm, SchdPrio, SchdReuse; the reserve always has EnaReq, DsaReq, StrTm and SchdPrio
locked).  Per-party rights and priority bands come next: they add rules here, with the
same `Decision` shape, so the session and every adapter stay as they are.

A refusal names its rule (a stable string an adapter can show: "lock:StrTm") and the
90-10 refusal code it maps to (Refusal.ACCESS_DENIED), so every protocol reports the
same reason in its own way.
"""
from __future__ import annotations

from dataclasses import dataclass

from relevent.scheduling.schedule import FIELDS, Refusal, Schedule

ACTIONS = ("write", "enable", "disable")
_LOCK_OF_ACTION = {"enable": "EnaReq", "disable": "DsaReq"}


@dataclass(frozen=True)
class Request:
    """What a party asks of one schedule: a write of `field` (a 90-10 name, FIELDS), or an
    enable or disable."""
    party: str
    action: str          # write | enable | disable
    der: str
    kind: str            # ActPow | MaxPow | OnOff
    schedule: str        # FSCH01.. or Res_FSCH01
    field: str = ""      # for writes


@dataclass(frozen=True)
class Decision:
    ok: bool
    rule: str = ""                  # e.g. "lock:StrTm"; empty when allowed
    refusal: Refusal | None = None
    reason: str = ""

    @staticmethod
    def allow() -> "Decision":
        return Decision(True)


def check(request: Request, schedule: Schedule) -> Decision:
    """The decision for `request` on `schedule` (the session's mirror of it)."""
    if request.action not in ACTIONS:
        return Decision(False, "action", Refusal.ACCESS_DENIED, f"unknown action {request.action!r}")
    if request.action == "write" and request.field not in FIELDS:
        return Decision(False, "field", Refusal.ACCESS_DENIED,
                        f"unknown schedule field {request.field!r} (one of {', '.join(FIELDS)})")
    locked = request.field if request.action == "write" else _LOCK_OF_ACTION[request.action]
    if locked in schedule.locked:
        return Decision(False, f"lock:{locked}", Refusal.ACCESS_DENIED,
                        f"{locked} of {request.der}/{request.kind}/{request.schedule} is locked by the site")
    return Decision.allow()
