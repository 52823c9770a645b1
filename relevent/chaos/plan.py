"""What a chaos run does: which actor kinds, which faults, how many of each.

Actor kinds are the levels of the tree: the site supervisor, WAN endpoints, DERs,
controllers (which own the schedules: a schedule is not a process of its own, see
docs/scheduling.md) and LAN endpoints.  Faults: kill -9, SIGTERM, a segfault in C, a hang.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

TARGET_KINDS = ("site", "wan", "der", "controller", "lan")
FAULTS = ("kill", "sigterm", "segfault", "hang")


@dataclass
class Plan:
    targets: list[str] = field(default_factory=lambda: list(TARGET_KINDS))
    faults: list[str] = field(default_factory=lambda: list(FAULTS))
    count: int = 100             # per (target kind, fault)
    timeout: float = 30.0        # s: a fault not recovered by then counts as a failure
    settle: float = 0.2          # s between a recovery and the next fault
    seed: int = 1

    def check(self) -> None:
        bad = [t for t in self.targets if t not in TARGET_KINDS] + [f for f in self.faults if f not in FAULTS]
        if bad:
            raise ValueError(f"unknown target kinds or faults: {', '.join(bad)} "
                             f"(targets: {', '.join(TARGET_KINDS)}; faults: {', '.join(FAULTS)})")
        if self.count < 1:
            raise ValueError("count must be at least 1")


def paths_of(kind: str, data: dict) -> list[str]:
    """Actor paths of one kind in a normalised topology ("" is the site supervisor)."""
    if kind == "site":
        return [""]
    if kind == "wan":
        return [ep["name"] for ep in data["wan"]]
    if kind == "lan":
        return [ep["name"] for ep in data["lan"]]
    if kind == "der":
        return [der["name"] for der in data["der"]]
    if kind == "controller":
        return [f"{der['name']}/{k}" for der in data["der"] for k in der["functions"]]
    raise ValueError(kind)


def fault_sequence(plan: Plan, data: dict) -> list[tuple[str, str, str]]:
    """(target kind, fault, actor path), `count` of each pair, actors taken in turn, the
    whole sequence shuffled with the plan's seed (so a run can be repeated)."""
    out = []
    for kind in plan.targets:
        paths = paths_of(kind, data)
        if not paths:
            continue
        turn = 0  # across faults, so every actor of a kind is hit (every WAN protocol, say)
        for fault in plan.faults:
            for _ in range(plan.count):
                out.append((kind, fault, paths[turn % len(paths)]))
                turn += 1
    random.Random(plan.seed).shuffle(out)
    return out
