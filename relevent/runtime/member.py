"""`relevent member TOPOLOGY --host NAME`: a member host of a multi-host site.

It starts an ActorSystem (multiprocTCPBase) that joins the leader's convention over the
site's private network, bound to this host's address there exactly as `relevent run` binds
the leader's (relevent/runtime/hardening.py), with the capability {"relevent host": NAME}.
It runs no supervisor of its own: the leader's site supervisor creates here the DERs whose
`host` is NAME and the LAN endpoints and simulators whose `runs_on` is NAME
(ReleventActor.actorSystemCapabilityCheck) and supervises them over the convention; it logs
what is placed on it at start.  It waits for SIGTERM or SIGINT, then shuts its ActorSystem
down, which stops the actors placed here (the leader sees them exit and restarts them when
a member with that name comes back).  docs/deploy.md, "Placing DERs on member hosts".
"""
from __future__ import annotations

import json
import logging
import logging.config
import os
import signal
import sys
import threading
import time
from pathlib import Path

from relevent.actors.base import HOST_CAPABILITY
from relevent.runtime import hardening
from relevent.runtime.journal import stderr_is_journal
from relevent.runtime.logs import LOG_DEFS_ENV, log_config
from relevent.topology import Topology, load_topology
from relevent.topology.schema import _host_label

log = logging.getLogger("relevent.member")


def member_problem(topology: Topology, host: str) -> str | None:
    """Why this topology cannot have a member called `host`, or None."""
    runtime = topology.data["runtime"]
    label = _host_label(host)
    if label:
        return f"--host: {label}"
    if runtime["base"] != "multiprocTCPBase":
        return f"a member needs [runtime] base = \"multiprocTCPBase\", not {runtime['base']!r}"
    if not runtime["convention_leader"] or not runtime["private_network"]:
        return "a member needs a multi-host site: [runtime] convention_leader and private_network (docs/deploy.md)"
    return None


def placed_on(topology: Topology, host: str) -> dict[str, list[str]]:
    """What the leader creates on member `host`: DERs (`host`, their controllers with them),
    LAN endpoints (`runs_on`, an embedded broker with its endpoint) and simulators (`runs_on`)."""
    data = topology.data
    return {"der": [d["name"] for d in data["der"] if d.get("host") == host],
            "lan": [e["name"] + (" (+ embedded broker)" if e.get("embedded_broker") else "")
                    for e in data["lan"] if e.get("runs_on") == host],
            "simulator": [s["name"] for s in data["simulator"] if s.get("runs_on") == host]}


def member_files(state_dir: Path, host: str) -> dict[str, Path]:
    """This member's own files in the state directory (on a shared one, apart from the leader's)."""
    return {"log": state_dir / f"member-{host}.log", "thespian": state_dir / f"member-{host}-thespian.log",
            "pid": state_dir / f"member-{host}.pid"}


def run_member(path: str, host: str) -> int:
    topology = load_topology(path)
    problem = member_problem(topology, host)
    if problem:
        print(f"error: {problem}; nothing was started", file=sys.stderr)
        return 2
    runtime = topology.data["runtime"]
    placed = placed_on(topology, host)
    state_dir = topology.state_dir
    files = member_files(state_dir, host)
    # The same bind as the runner's: this host's address on the private network, or refused.
    interface, address = hardening.private_address(runtime["private_network"])
    taken = hardening.admin_port_taken(runtime["admin_port"], address)
    if taken:
        print(f"error: {taken}", file=sys.stderr)
        return 2
    state_dir.mkdir(parents=True, exist_ok=True)   # the placed actors' store and audit chains
    # The environment the actors expect (relevent/actors/base.py): they harden themselves
    # unless they run in this process; crashes go to the crash log.
    os.environ["RELEVENT_RUNNER_PID"] = str(os.getpid())
    os.environ["RELEVENT_CRASH_LOG"] = str(state_dir / "crash.log")
    os.environ.setdefault("THESPLOG_FILE", str(files["thespian"]))
    os.environ.setdefault("THESPLOG_FILE_MAXSIZE", str(1 << 20))
    # Thespian registers a member with its leader every 7 min 22 s, and after a failed attempt
    # (the leader not up yet, or restarting) tries again only then: every 10 s instead, so a
    # member started before its leader joins within seconds.
    os.environ.setdefault("CONVENTION_REREGISTRATION_PERIOD", "0:10")
    os.environ["THESPIAN_BASE_IPADDR"] = address
    hardening.bind_thespian_to(address)
    from thespian.actors import ActorSystem

    defs = log_config(str(state_dir), runtime["log_level"], stderr_is_journal())
    defs["handlers"]["file"]["filename"] = str(files["log"])
    os.environ[LOG_DEFS_ENV] = json.dumps(defs)   # for actors' other threads (relevent/runtime/logs.py)
    logging.config.dictConfig(defs)
    capabilities = {"Admin Port": runtime["admin_port"], "Convention Address.IPv4": runtime["convention_leader"],
                    HOST_CAPABILITY: host}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    started = time.monotonic()
    asys = ActorSystem("multiprocTCPBase", capabilities, logDefs=defs, transientUnique=True)
    files["pid"].write_text(json.dumps({"member": os.getpid(), "host": host, "address": address}) + "\n")
    log.info("member host=%s of site=%s up in %.3f s: thespian bound to %s on %s (private_network %s), "
             "convention leader %s, placed here: DERs %s; LAN endpoints %s; simulators %s", host, topology.name,
             time.monotonic() - started, address, interface, runtime["private_network"],
             runtime["convention_leader"], *(", ".join(names) or "none" for names in placed.values()))
    if not any(placed.values()):
        log.warning("member host=%s: no [[der]] has host = %r, no [[lan]] or [[simulator]] runs_on = %r in %s",
                    host, host, host, path)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("member host=%s stopping", host)
        try:
            asys.shutdown()
        except Exception:  # noqa: BLE001 - going anyway
            log.exception("actor system shutdown")
        files["pid"].unlink(missing_ok=True)
    return 0
