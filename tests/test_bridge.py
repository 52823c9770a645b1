"""The thread-to-actor bridge delivers every event from a foreign thread, in order."""
from __future__ import annotations

import os
import time

from thespian.actors import ActorSystem

from relevent.runtime.runner import group_processes
from sitectl import free_port


def kill_group(pgid: int) -> None:
    """thespian's shutdown may leave processes behind (see docs/runtime.md)."""
    deadline = time.monotonic() + 5
    while group_processes(pgid) and time.monotonic() < deadline:
        os.killpg(pgid, 15)
        time.sleep(0.05)


def test_every_event_from_a_thread_reaches_the_actor(monkeypatch, tmp_path):
    monkeypatch.setenv("THESPIAN_BASE_IPADDR", "127.0.0.1")
    monkeypatch.setenv("THESPLOG_FILE", str(tmp_path / "thespian.log"))
    pgid = None
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": free_port()}, transientUnique=True)
    try:
        actor = asys.createActor("bridge_actor.BridgeActor")
        pgid = asys.ask(actor, "pgid", 5)
        asys.tell(actor, ("produce", 3000))
        deadline = time.monotonic() + 20
        received = []
        while time.monotonic() < deadline:
            received = asys.ask(actor, "count", 5)
            if len(received) >= 3000:
                break
            time.sleep(0.05)
        assert received == list(range(3000))
    finally:
        asys.shutdown()
        if pgid:
            kill_group(pgid)
