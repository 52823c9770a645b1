"""The heat-pump simulator as an S2 resource manager (relevent/simulators/heat_pump_s2.py) of
a running site's S2 endpoint: the whole path product code to product code.

A real site (`relevent run` in its own processes): an HTTP WAN endpoint, the S2 endpoint
(the CEM), a heat_pump DER whose address is the RM's resource id, and the heat-pump
simulator with `s2_url` pointing at the endpoint.  What the simulator received is read
from its write log (the instructions, with the time s2-python handed each over) and its
status detail (its power limit, its S2 link); what the site made of the RM from the S2
endpoint's and the DER's status.  The pure parts (resource id, envelope timing) first.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from relevent.protocols.s2 import mapping as M
from relevent.simulators.heat_pump_s2 import HeatPumpRm, envelope_steps, resource_id
from lanctl import read_write_log
from sitectl import Site, free_port, running, until
from test_s2 import schedule

RID = str(uuid.uuid4())
RATED = 6000.0


# -- pure ----------------------------------------------------------------------------------------------------------
def test_the_resource_id_comes_from_the_key_or_the_urls_path_and_must_be_one_uuid():
    rid = uuid.UUID(RID)
    assert resource_id(f"ws://127.0.0.1:8765/s2/{RID}", "") == rid
    assert resource_id("ws://127.0.0.1:8765/s2", RID.upper()) == rid
    with pytest.raises(ValueError, match="s2_resource_id: empty"):
        resource_id("ws://127.0.0.1:8765/s2", "")
    with pytest.raises(ValueError, match="s2_url: resource id 'hp-1' is not a UUID"):
        resource_id("ws://127.0.0.1:8765/s2/hp-1", "")
    with pytest.raises(ValueError, match="s2_resource_id: .* is not the resource id of s2_url's path"):
        resource_id(f"ws://127.0.0.1:8765/s2/{uuid.uuid4()}", RID)


def test_an_envelope_holds_from_its_execution_time_for_its_duration_then_ends():
    ranges = M.Constraints(uuid.uuid4(), 0, None, "DEFER", {M.SYMMETRIC.value: [(0.0, RATED)]},
                           {M.SYMMETRIC.value: [(0.0, 0.0)]})
    message = M.pebc_instruction(M.envelopes(4500.0, ranges), ranges, 10_000, 900_000)
    assert envelope_steps(message, 9_750) == [(0.25, 4500.0), (900.25, None)]
    assert envelope_steps(message, 20_000) == [(0.0, 4500.0), (890.0, None)]   # late: what is left of it


def test_the_rm_applies_the_upper_limit_at_once_and_the_rating_again_when_the_envelope_ends():
    from types import SimpleNamespace
    pump = SimpleNamespace(limit_w=RATED, s=SimpleNamespace(rated_w=RATED))
    logged: list[dict] = []
    rm = HeatPumpRm({"name": "hp", "s2_url": f"ws://127.0.0.1:1/s2/{RID}"}, pump, logged.append)
    ranges = M.constraints_from(rm.constraints())
    assert (ranges.upper, ranges.lower) == ({M.SYMMETRIC.value: [(0.0, RATED)]}, {M.SYMMETRIC.value: [(0.0, 0.0)]})

    async def go():
        now = time.time_ns() // 1_000_000
        message = M.pebc_instruction(M.envelopes(9000.0, ranges), ranges, now, 200)   # fitted: 6000
        rm.instruction(M.pebc_instruction(M.envelopes(4200.0, ranges), ranges, now, 200), time.time_ns())
        during = pump.limit_w
        await asyncio.sleep(0.3)
        ended = pump.limit_w
        rm.instruction(message, time.time_ns())
        return during, ended
    during, ended = asyncio.run(go())
    assert (during, ended) == (4200.0, RATED)
    assert [(e["s2"], e["upper_w"]) for e in logged] == [("PEBC.Instruction", 4200.0), ("PEBC.Instruction", RATED)]
    assert rm.detail()["instructions"] == 2 and rm.detail()["last_instruction"]["upper_w"] == RATED


# -- a running site ----------------------------------------------------------------------------------------------
def topology(tmp: Path, ports: dict, log: Path) -> str:
    return f"""
[site]
name = "hps2{ports['admin']}"
state_dir = "{tmp / 'state'}"

[runtime]
admin_port = {ports['admin']}

[supervision]
heartbeat_interval = 0.2
heartbeat_timeout = 2.0
backoff_initial = 0.05

[[wan]]
name = "http"
protocol = "http"
port = {ports['http']}
party = "aggregator"

[[der]]
name = "hp1"
type = "heat_pump"
functions = ["MaxPow", "OnOff"]
schedules = 2
lan = "s2"
address = "{RID}"
rated_power_w = {RATED}
reserve = {{ MaxPow = {RATED}, OnOff = true }}

[[lan]]
name = "s2"
protocol = "s2"
port = {ports['s2']}

[[simulator]]
name = "heatpump"
protocol = "heat-pump"
port = {ports['modbus']}
rated_w = {RATED}
tank_start_c = 30.0
min_run_s = 0
min_off_s = 0
s2_url = "ws://127.0.0.1:{ports['s2']}/s2/{RID}"
s2_measure_s = 0.2
write_log = "{log}"
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hps2")
    ports = {k: free_port() for k in ("admin", "http", "s2", "modbus")}
    path = tmp / "hps2.toml"
    s = Site(path, tmp / "state")
    s.write_log = tmp / "writes.jsonl"
    path.write_text(topology(tmp, ports, s.write_log))
    s.ports = ports
    with running(s, leftovers=True):
        yield s


@pytest.fixture(scope="module")
def http(site):
    with httpx.Client(base_url=f"http://127.0.0.1:{site.ports['http']}", timeout=15) as client:
        yield client


def instructions(site, since_ns: int = 0) -> list[dict]:
    return [w for w in read_write_log(site.write_log) if w.get("s2") == "PEBC.Instruction" and w["t_ns"] >= since_ns]


def rm_at_site(site) -> dict:
    return site.node("s2")["detail"]["devices"]["hp1"]


def simulator(site) -> dict:
    return site.node("heatpump")["detail"]


def test_the_simulators_rm_completes_the_handshake_and_the_site_selects_pebc_and_sends_the_reserve(site):
    node = site.wait_for("s2", lambda n: n["detail"]["devices"]["hp1"]["link"] == "up"
                         and n["detail"]["devices"]["hp1"]["instruction_status"] == "OK", timeout=15)
    dev = node["detail"]["devices"]["hp1"]
    assert (dev["control_type"], dev["resource_id"]) == ("POWER_ENVELOPE_BASED_CONTROL", RID)
    assert dev["details"]["model"] == "heat-pump simulator" and dev["details"]["control_types"] == [
        "POWER_ENVELOPE_BASED_CONTROL"]
    assert dev["constraints"]["upper"] == {"ELECTRIC.POWER.3_PHASE_SYMMETRIC": [[0.0, RATED]]}
    assert dev["constraints"]["lower"] == {"ELECTRIC.POWER.3_PHASE_SYMMETRIC": [[0.0, 0.0]]}
    s2 = simulator(site)["s2"]
    assert (s2["link"], s2["control_type"], s2["resource_id"]) == ("up", "POWER_ENVELOPE_BASED_CONTROL", RID)
    first = until(lambda: instructions(site), "the first PEBC.Instruction in the write log")[0]
    assert first["upper_w"] == RATED and isinstance(first["t_ns"], int)      # no MaxPow schedule: the reserve


def test_a_maxpow_schedule_written_over_http_becomes_the_simulators_power_limit_at_the_boundary(site, http):
    site.wait_for("s2", lambda n: n["detail"]["devices"]["hp1"]["instruction_status"] == "OK", timeout=15)
    start = schedule(http, "hp1", [5000.0])
    got = until(lambda: [w for w in instructions(site) if w["upper_w"] == 5000.0], "5000 W at the simulator")[0]
    assert start <= got["t_ns"] / 1e6 < start + 3000         # at the boundary, not before
    detail = until(lambda: (d := simulator(site))["limit_w"] == 5000.0 and d, "limit_w 5000")
    assert detail["s2"]["last_instruction"]["id"] == got["id"]
    node = site.wait_for("s2", lambda n: n["detail"]["devices"]["hp1"]["instruction_status"] == "OK"
                         and n["detail"]["devices"]["hp1"]["instruction"]["limit_w"] == 5000.0, timeout=10)
    assert node["detail"]["devices"]["hp1"]["instruction"]["instruction_id"] == got["id"]


def test_the_simulators_measured_power_is_the_ders_measured_power_with_the_sites_sign(site):
    # The cold tank keeps the compressor on at the 5000 W limit of the previous test.
    node = site.wait_for("hp1", lambda n: (n["detail"].get("measured") or {}).get("w") == -5000.0, timeout=10)
    assert node["detail"]["measured"]["quality"] == "good"
    detail = until(lambda: (d := simulator(site))["s2"]["measurements"] > 0 and d, "the simulator's measurements")
    assert detail["electric_w"] == 5000.0 and detail["compressor"] is True
    assert detail["s2"]["last_measurement_status"] == "OK"


def test_after_a_kill_9_of_the_s2_endpoint_the_simulator_reconnects_and_gets_the_current_instruction_again(site):
    before = simulator(site)["s2"]["connects"]
    old = site.node("s2")["pid"]
    killed_ns = time.time_ns()
    os.kill(old, signal.SIGKILL)
    site.wait_for("s2", lambda n: n["state"] == "running" and n["pid"] not in (None, old), timeout=10)
    again = until(lambda: [w for w in instructions(site, killed_ns) if w["upper_w"] == 5000.0],
                  "the current instruction after the reconnect")[0]
    # (the status tree holds the detail as of the simulator's last heartbeat: wait for it)
    detail = until(lambda: (d := simulator(site))["s2"]["last_instruction"]["id"] == again["id"] and d,
                   "the simulator's detail after the reconnect")
    assert detail["s2"]["connects"] == before + 1 and detail["s2"]["link"] == "up" and detail["limit_w"] == 5000.0
    # Never back to the rating in between: the envelope outlives its CEM (900 s).
    assert all(w["upper_w"] == 5000.0 for w in instructions(site, killed_ns))
    site.wait_for("s2", lambda n: n["detail"]["devices"]["hp1"]["instruction_status"] == "OK"
                  and n["detail"]["devices"]["hp1"]["link"] == "up", timeout=10)
