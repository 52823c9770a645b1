"""Outages of the grid protocols' peers (issue 14, item 4), on a real site whose PV inverter
is the SunSpec simulator (its register write log timestamps what it obeys):

* IEC 104: a controlling station (tests/iec104peer.py) sends a set-point and is gone
  (connection reset) right after the activation confirmation, `--trials` times: time from
  the set-point to the inverter's register written, and whether the endpoint ended each
  command cleanly (done, or refused; never confirmed and left hanging);
* OpenADR: openleadr's VTN (tests/vtnpeer.py) goes away for `--outage` seconds (60 by
  default) while an event runs: lateness of the event's boundary at the inverter during
  the outage and of its end after it, time from the VTN's return to the VEN's new
  registration, and from a new event to the VEN's opt-in.

    .venv/bin/python bench/outage_wan_bench.py --outage 60 --json bench/chaos/results-outages-wan.json

About 85 s with the 60 s outage.  The short version of both runs in
tests/chaos/test_wan_outages.py.
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "chaos")]
from iec104peer import ACT_CON, ACT_TERM, C_SC_NA_1, C_SE_NC_1, Peer  # noqa: E402
from sitectl import Site, free_port, walk  # noqa: E402
from test_wan_outages import CA, RELEASE, SETPOINT, VEN, limits, model_address, topology  # noqa: E402
from vtnpeer import Vtn  # noqa: E402

RATED_W = 10000.0


def first_limit(site, pct: float, since_ns: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = next((t for t, v in limits(site, since_ns) if abs(v - pct) < 0.006), None)
        if hit is not None:
            return hit
        time.sleep(0.01)
    return None


def station(site) -> Peer:
    peer = Peer("127.0.0.1", site.ports["scada"], timeout=5.0)
    peer.startdt()
    return peer


def iec104_trials(site, trials: int) -> dict:
    to_inverter, clean = [], 0
    for i in range(trials):
        watts = 2000.0 + 500.0 * i
        before = site.node("scada")["detail"]
        since = time.time_ns()
        peer = station(site)
        sent = time.time_ns()
        mark = peer.setpoint_float(CA, SETPOINT, watts)
        con = peer.answers(mark, C_SE_NC_1, SETPOINT, (ACT_CON,))
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()                                         # gone before ACT_TERM
        hit = first_limit(site, watts / RATED_W * 100, since, 10.0)
        if hit is not None:
            to_inverter.append((hit - sent) / 1e6)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            d = site.node("scada")["detail"]
            done = d["terminated"] > before["terminated"]
            failed = d["failed_after_confirmation"] > before["failed_after_confirmation"]
            if done or failed or con.negative:
                clean += 1
                break
            time.sleep(0.05)
        with station(site) as again:                         # release for the next trial
            mark = again.single_command(CA, RELEASE, True)
            again.answers(mark, C_SC_NA_1, RELEASE, (ACT_TERM,))
        time.sleep(0.3)
    to_inverter.sort()
    return {"trials": trials, "ended_cleanly": clean, "reached_inverter": len(to_inverter),
            "setpoint_to_inverter_ms": {"p50": round(to_inverter[len(to_inverter) // 2], 1),
                                        "max": round(to_inverter[-1], 1)} if to_inverter else None}


def vtn_outage(site, vtn: Vtn, outage_s: float) -> dict:
    registrations = len(vtn.registrations)
    since = time.time_ns()
    # 4 kW for 4 s, then 2.5 kW until 3 s after the VTN is back.
    event_id, start_ms = vtn.event_steps(VEN, [(4000.0, 4), (2500.0, int(outage_s) + 3)], lead_s=1.5)
    assert vtn.opt_of(event_id) == "optIn"
    assert first_limit(site, 40.0, since, 10.0) is not None
    vtn.stop()
    down = time.monotonic()
    boundary = first_limit(site, 25.0, since, 10.0)
    held_during = event_id in site.node("openadr")["detail"]["held"].values()
    time.sleep(max(0.0, outage_s - (time.monotonic() - down)))
    vtn.start()
    back = time.monotonic()
    deadline = back + 30
    while len(vtn.registrations) == registrations and time.monotonic() < deadline:
        time.sleep(0.01)
    reregistered_s = time.monotonic() - back if len(vtn.registrations) > registrations else None
    held_after = event_id in site.node("openadr")["detail"]["held"].values()
    end_ms = start_ms + 4000 + (int(outage_s) + 3) * 1000
    end = first_limit(site, 100.0, (start_ms + 4000) * 1_000_000, 20.0)
    added = time.monotonic()
    since = time.time_ns()
    next_id, _ = vtn.event(VEN, [3500.0], lead_s=1.5, length_s=2)
    opt = vtn.opt_of(next_id, timeout=10)
    opt_s = time.monotonic() - added
    followed = first_limit(site, 35.0, since, 10.0) is not None
    return {"outage_s": outage_s, "boundary_during_outage_late_ms": round(boundary / 1e6 - (start_ms + 4000), 1)
            if boundary else None, "held_during_outage": held_during, "held_after_reregistration": held_after,
            "vtn_back_to_reregistered_s": round(reregistered_s, 2) if reregistered_s is not None else None,
            "event_end_late_ms": round(end / 1e6 - end_ms, 1) if end else None,
            "next_event_opt": opt, "next_event_to_opt_s": round(opt_s, 2), "next_event_followed": followed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outage", type=float, default=60.0, help="seconds the VTN stays down")
    ap.add_argument("--trials", type=int, default=5, help="104 set-points whose station vanishes")
    ap.add_argument("--json")
    args = ap.parse_args()
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="outage-wan-") as tmp:
        tmp = Path(tmp)
        ports = {k: free_port() for k in ("admin", "scada", "modbus")}
        vtn = Vtn(free_port()).start()
        log = tmp / "writes.jsonl"
        (tmp / "site.toml").write_text(topology(tmp / "state", ports, vtn.url, log))
        site = Site(tmp / "site.toml", tmp / "state")
        try:
            site.start(timeout=60)
            site.ports, site.write_log = ports, log
            site.model123 = model_address(ports["modbus"], 123)
            site.wait_for("openadr", lambda n: n["detail"]["registered"] is True, timeout=10)
            pids = site.pids()
            result["iec104_peer_gone_after_confirmation"] = iec104_trials(site, args.trials)
            result["openadr_vtn_outage"] = vtn_outage(site, vtn, args.outage)
            result["site_restarts"] = sum(n["restarts"] for n in walk(site.tree()))
            result["pids_unchanged"] = site.pids() == pids
        finally:
            site.stop()
            site.kill_everything()
            vtn.close()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
