"""DERs sharing processes ([runtime] ders_per_process, relevent/actors/der_group.py): a site
of three DERs, two to a process: pv1 and pv2 in group ders.1, pv3 alone in ders.2.  pv1
drives the SunSpec inverter simulator over Modbus TCP; a real libiec61850 client writes the
schedules; pysunspec2's map of the inverter and its own write log say what it was sent.
What a group shares (a process) and what it does not (a DER's failure, its schedules)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from mmsclients import LibIec61850Client, write_schedule
from sitectl import Site, free_port, now_ms, until, wait_until, walk
from test_at_stop import limit_address, limit_writes, wait_for_limit

S = 1000
DERS = ("pv1", "pv2", "pv3")


def ld(der: str) -> str:
    return f"DER_Scheduler_{der}Control"


def actuator(der: str) -> str:
    return f"{ld(der)}/MaxPow_GGIO1.AnOut1.mxVal.f"


def topology(state, ports: dict, write_log) -> str:
    ders = "".join(f"""
[[der]]
name = "{name}"
type = "pv"
functions = ["MaxPow"]
schedules = 2
rated_power_w = 10000
reserve = {{ MaxPow = 3000.0 }}
""" + ("""lan = "modbus"
address = 1
profile = "sunspec"
at_stop = "reserve"
""" if name == "pv1" else "") for name in DERS)
    return f"""[site]
name = "grp{ports['admin']}"
state_dir = "{state}"

[runtime]
admin_port = {ports['admin']}
allow_fault_injection = true
controller_isolation = "der"
ders_per_process = 2

[supervision]
heartbeat_interval = 0.2
heartbeat_timeout = 2.0
backoff_initial = 0.05

[[wan]]
name = "mms"
protocol = "mms"
port = {ports['mms']}
{ders}
[[lan]]
name = "modbus"
protocol = "modbus"
port = {ports['modbus']}
timeout = 0.5
poll_period = 0.2

[[simulator]]
name = "inverter"
protocol = "sunspec-inverter"
port = {ports['modbus']}
wmax = 10000.0
write_log = "{write_log}"
"""


@pytest.fixture
def grouped(tmp_path):
    ports = {k: free_port() for k in ("admin", "mms", "modbus")}
    log = tmp_path / "writes.jsonl"
    path = tmp_path / "site.toml"
    path.write_text(topology(tmp_path / "state", ports, log))
    site = Site(path, tmp_path / "state")
    client = None
    try:
        site.start(timeout=60)
        client = LibIec61850Client("127.0.0.1", ports["mms"])
        yield site, client, ports, log
    finally:
        if client is not None:
            client.close()
        site.kill_everything()


def run(client, der: str, values: list, start: int, schedule: str = "FSCH01", prio: int = 20) -> None:
    ref = f"{ld(der)}/MaxPow_{schedule}"
    write_schedule(client, ref, values, prio=prio, start_ms=start)
    assert client.operate(f"{ref}.EnaReq", True)[0]


def test_two_ders_share_one_process_and_their_controllers_with_them(grouped):
    site, _client, _ports, _log = grouped
    nodes = {n["path"]: n for n in walk(site.tree())}
    g1, g2 = nodes["ders.1"], nodes["ders.2"]
    assert g1["role"] == g2["role"] == "group" and g1["pid"] != g2["pid"]
    for path, group in (("ders.1/pv1", g1), ("ders.1/pv2", g1), ("ders.2/pv3", g2)):
        assert nodes[path]["hosted"] and nodes[path]["state"] == "running" and nodes[path]["pid"] == group["pid"]
        controller = nodes[f"{path}/MaxPow"]
        assert controller["hosted"] and controller["pid"] == group["pid"]
    assert nodes["mms"]["pid"] not in (g1["pid"], g2["pid"])
    summary = site.tree()["detail"]["summary"]
    assert summary["ders"] == 3 and summary["ders_running"] == 3


def test_a_schedule_over_mms_reaches_each_der_of_a_group_and_the_inverter(grouped):
    site, client, ports, log = grouped
    address = limit_address(ports["modbus"])
    t0 = (now_ms() // S + 3) * S
    run(client, "pv1", [6000.0, 7000.0], t0)
    run(client, "pv2", [1111.0, 2222.0], t0)
    wait_until(t0 + 1 * S + 500)
    assert client.read_float(actuator("pv1")) == 7000.0
    assert client.read_float(actuator("pv2")) == 2222.0
    assert client.read_float(actuator("pv3")) == 3000.0   # its reserve: nothing was written to it
    wait_for_limit(log, address, 70.0)   # 7000 W of 10000 W: the inverter's own record


def test_an_exception_in_one_der_restarts_it_alone_and_its_schedule_goes_on(grouped):
    site, client, _ports, _log = grouped
    t0 = (now_ms() // S + 3) * S
    run(client, "pv2", [1.0, 2.0, 3.0, 4.0, 5.0], t0)
    group_pid = site.node("ders.1")["pid"]
    wait_until(t0 + 1200)
    site.fault("pv2", "raise")   # by the DER's name: the site finds its group
    site.wait_for("ders.1/pv2", lambda n: n["restarts"] == 1 and n["state"] == "running")
    wait_until(t0 + 3 * S + 500)
    assert client.read_float(actuator("pv2")) == 4.0
    nodes = {n["path"]: n for n in walk(site.tree())}
    assert nodes["ders.1"]["pid"] == group_pid and nodes["ders.1"]["restarts"] == 0
    assert nodes["ders.1/pv1"]["restarts"] == 0 and nodes["ders.2/pv3"]["restarts"] == 0


def test_a_kill_of_a_group_process_restarts_its_ders_where_their_schedules_are(grouped):
    site, client, _ports, _log = grouped
    t0 = (now_ms() // S + 3) * S
    run(client, "pv1", [10.0, 20.0, 30.0, 40.0, 50.0, 60.0], t0)
    run(client, "pv3", [5.0, 6.0, 7.0, 8.0, 9.0, 10.0], t0)
    g1, g2 = site.node("ders.1"), site.node("ders.2")
    wait_until(t0 + 1200)
    os.kill(g1["pid"], signal.SIGKILL)
    until(lambda: site.node("ders.1")["restarts"] == 1 and all(
        n["state"] == "running" for n in walk(site.node("ders.1"))) and site.node("ders.1")["children"],
        "the group and its DERs running again")
    wait_until(t0 + 4 * S + 500)
    assert client.read_float(actuator("pv1")) == 50.0   # went on from the store, at the right entry
    assert client.read_float(actuator("pv3")) == 9.0
    after = site.node("ders.2")
    assert after["pid"] == g2["pid"] and after["restarts"] == 0   # the other group never noticed


def test_a_stop_for_good_leaves_a_grouped_ders_inverter_at_its_reserve(grouped):
    site, client, ports, log = grouped
    address = limit_address(ports["modbus"])
    run(client, "pv1", [6000.0] * 10, (now_ms() // S + 2) * S)
    wait_for_limit(log, address, 60.0)
    stop_ns = time.time_ns()
    assert site.stop() == 0
    after = [(t, p) for t, p in limit_writes(log, address) if t >= stop_ns]
    assert after and after[-1][1] == pytest.approx(30.0), f"writes after SIGTERM: {after}"
    assert "at stop der=pv1 device left at reserve" in (site.state_dir / "relevent.log").read_text()


def test_check_refuses_shared_processes_without_hosted_controllers(tmp_path):
    from relevent.topology import load_topology
    from relevent.topology.loader import TopologyError
    path = tmp_path / "site.toml"
    path.write_text(topology(tmp_path / "state", {"admin": 19501, "mms": 10102, "modbus": 10502},
                             tmp_path / "w.jsonl").replace('controller_isolation = "der"\n', ""))
    with pytest.raises(TopologyError) as err:
        load_topology(path)
    assert "ders_per_process = 2 needs controller_isolation = \"der\"" in str(err.value)
    assert "site.toml:8: runtime.ders_per_process:" in str(err.value)   # the file, its line, the field


def test_a_der_added_by_a_reload_joins_a_group_with_room_and_no_other_der_restarts(grouped):
    site, _client, _ports, _log = grouped
    before = {n["path"]: n for n in walk(site.tree())}
    text = site.topology.read_text()
    added = text.replace("[[lan]]", '[[der]]\nname = "pv4"\ntype = "pv"\nfunctions = ["MaxPow"]\nschedules = 2\n'
                                     'rated_power_w = 10000\nreserve = { MaxPow = 3000.0 }\n\n[[lan]]', 1)
    site.topology.write_text(added)
    res = site.cli("reload", str(site.topology))
    assert res.returncode == 0, res.stdout + res.stderr
    node = site.wait_for("ders.2/pv4", lambda n: n["state"] == "running", timeout=20)
    after = {n["path"]: n for n in walk(site.tree())}
    assert node["pid"] == before["ders.2"]["pid"]                    # in pv3's group, which kept running
    for path in ("ders.1", "ders.2", "ders.1/pv1", "ders.1/pv2", "ders.2/pv3", "ders.2/pv3/MaxPow"):
        assert after[path]["ready_at"] == before[path]["ready_at"] and after[path]["restarts"] == 0, path

    # Regrouping moves DERs between processes: only with a restart.
    site.topology.write_text(added.replace("ders_per_process = 2", "ders_per_process = 3"))
    reply = site.call({"op": "reload"})
    assert not reply["ok"] and "[runtime] ders_per_process" in reply["error"], reply


def test_a_chaos_run_refuses_a_site_whose_ders_share_processes(tmp_path):
    from relevent.chaos.plan import Plan
    from relevent.chaos.runner import ChaosError, ChaosRun
    from relevent.topology import load_topology
    path = tmp_path / "site.toml"
    path.write_text(topology(tmp_path / "state", {"admin": 19501, "mms": 10102, "modbus": 10502}, tmp_path / "w.jsonl"))
    with pytest.raises(ChaosError, match="needs every DER in its own process: \\[runtime\\] ders_per_process = 1"):
        ChaosRun(load_topology(path), Plan(count=1))
