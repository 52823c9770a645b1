"""A site's audit chains: where each writer's chain lives, and opening one.

Every actor runs in a process of its own and a chain has exactly one writer (an flock,
relevent/audit/log.py), so a site keeps one chain per writing actor, all signed with the
one site key:

    STATE_DIR/audit/site-key.pem      the site's Ed25519 key (0600)
    STATE_DIR/audit/audit-key.pub     its public half: all `relevent audit verify` needs
    STATE_DIR/audit/<writer>/         one chain: a WAN endpoint's instructions and answers
                                      (writer = the endpoint's name), a DER's device
                                      commands (writer = "der-<name>")

A restarted actor reopens its own chain and continues it (the previous incarnation is
dead, so its lock is free).  `relevent audit verify STATE_DIR/audit` verifies every chain.
"""
from __future__ import annotations

import time
from pathlib import Path

from relevent.audit.log import AuditLog, AuditLogBusy, load_or_create_key

AUDIT_DIR = "audit"
RETENTION_DAYS = 7.0
BUSY_WAIT_S = 3.0      # a killed predecessor's lock is released by the kernel; wait this long for it


def audit_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / AUDIT_DIR


def open_chain(site: dict, writer: str) -> AuditLog:
    """The chain of `writer` in the site's state folder (site: the topology's [site] table)."""
    folder = audit_dir(site["state_dir"])
    key = load_or_create_key(folder)
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        try:
            return AuditLog(site["state_dir"], site.get("name", ""), key=key, chain_dir=folder / writer,
                            retention_days=float(site.get("audit_retention_days", RETENTION_DAYS)))
        except AuditLogBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def chains(path: str | Path) -> list[Path]:
    """The chain folders under a site's audit folder (or [path] if it is one chain)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    subs = sorted(p for p in path.iterdir() if p.is_dir() and any(q.suffix == ".jsonl" for q in p.iterdir()))
    return subs or [path]
