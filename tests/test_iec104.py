"""The IEC 60870-5-104 controlled station end to end: a real site (`relevent run`) whose PV
inverter is the SunSpec simulator on Modbus, steered by a controlling station that writes
its APCI/ASDU frames itself (tests/iec104peer.py: sockets and struct, not c104 nor
lib60870).  What the inverter obeys is read from the simulator's register write log and
with pysunspec2, a SunSpec client that is not ours either.

Three 104 endpoints share the site: `scada` (the DSO: every command type, per cent of
rated power, release value -1), `backup` (the DSO again at a higher priority, with a 2 s
no-contact limit) and `agg` (an aggregator recognised by its peer address, whose priority
band stops below the endpoint's priority: every command refused by the policy)."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
from iec104peer import (
    ACT_CON, ACT_TERM, C_CS_NA_1, C_SC_NA_1, C_SE_NB_1, C_SE_NC_1, C_SE_TC_1, INTERROGATED, M_ME_NC_1, M_SP_NA_1,
    SPONTANEOUS, UNKNOWN_CA, UNKNOWN_IOA, UNKNOWN_TYPE, Peer, describe,
)
from lanctl import read_write_log
from sitectl import Site, free_port, now_ms

CA = 100
SP_FLOAT, SP_SCALED, SP_TIMED, SP_RELEASE = 1001, 1002, 1003, 1004
SWITCH, SWITCH_RELEASE = 1101, 1102
OUTPUT, RUNNING, IN_FORCE = 2001, 2002, 2003
ONOFF_OUTPUT, ONOFF_RUNNING = 2101, 2102
MEASURED = 3001
BACKUP_SP, BACKUP_RUNNING = 1201, 2201
AGG_SP = 1301
WMAXLIMPCT_OFFSET, WMAXLIMPCT_SF, CONN_OFFSET = 5, -2, 4   # the simulator's model 123 (SunSpec layout)


def topology(state: Path, ports: dict, write_log: Path) -> str:
    return f"""[site]
name = "iec{ports['admin']}"
state_dir = "{state}"

[runtime]
admin_port = {ports['admin']}
allow_fault_injection = true

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[[party]]
name = "dso"
priority = [0, 300]

[[party]]
name = "aggregator"
peers = ["127.0.0.1"]
priority = [0, 100]

[[wan]]
name = "scada"
protocol = "iec104"
party = "dso"
parties = ["dso"]
port = {ports['scada']}
common_address = {CA}
max_connections = 2
unit = "percent"
schedule = 2
priority = 250
scaled_step = 0.1
release_value = -1.0
max_age_s = 5.0
measurements = [{{ der = "pv1", ioa = {MEASURED} }}]

[[wan.functions]]
der = "pv1"
function = "MaxPow"
C_SE_NC_1 = {SP_FLOAT}
C_SE_NB_1 = {SP_SCALED}
C_SE_TC_1 = {SP_TIMED}
release = {SP_RELEASE}
output = {OUTPUT}
running = {RUNNING}
in_force = {IN_FORCE}

[[wan.functions]]
der = "pv1"
function = "OnOff"
C_SC_NA_1 = {SWITCH}
release = {SWITCH_RELEASE}
output = {ONOFF_OUTPUT}
running = {ONOFF_RUNNING}

[[wan]]
name = "backup"
protocol = "iec104"
party = "dso"
parties = ["dso"]
port = {ports['backup']}
common_address = {CA}
unit = "W"
schedule = 1
priority = 251
no_contact_s = 2.0
functions = [{{ der = "pv1", function = "MaxPow", C_SE_NC_1 = {BACKUP_SP}, running = {BACKUP_RUNNING} }}]

[[wan]]
name = "agg"
protocol = "iec104"
parties = ["aggregator"]
anonymous = "none"
port = {ports['agg']}
common_address = {CA}
schedule = 3
priority = 250
functions = [{{ der = "pv1", function = "MaxPow", C_SE_NC_1 = {AGG_SP} }}]

[[der]]
name = "pv1"
functions = ["MaxPow", "OnOff"]
schedules = 3
lan = "modbus"
address = 1
profile = "sunspec"
rated_power_w = 10000
reserve = {{ MaxPow = 10000.0, OnOff = true }}

[[lan]]
name = "modbus"
protocol = "modbus"
port = {ports['modbus']}
timeout = 0.5
poll_period = 0.3

[[simulator]]
name = "inverter"
protocol = "sunspec-inverter"
port = {ports['modbus']}
wmax = 10000.0
write_log = "{write_log}"
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iec104")
    ports = {k: free_port() for k in ("admin", "scada", "backup", "agg", "modbus")}
    state, path, log = tmp / "state", tmp / "site.toml", tmp / "writes.jsonl"
    path.write_text(topology(state, ports, log))
    s = Site(path, state)
    try:
        s.start(timeout=60)
        s.ports, s.write_log = ports, log
        s.model123 = model_address(ports["modbus"], 123)
        yield s
        s.stop()
        assert s.leftovers() == []
    finally:
        s.kill_everything()


# -- the inverter's side ---------------------------------------------------------------------------
def model_address(port: int, model: int) -> int:
    from sunspec2.modbus import client as ssclient
    dev = ssclient.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        dev.scan()
        return dev.models[model][0].model_addr
    finally:
        dev.close()


def inverter_writes(site, offset: int, since_ns: int = 0) -> list[tuple[int, int]]:
    """(t_ns, register value) of every write covering model 123 + offset, from the simulator's log."""
    target, out = site.model123 + offset, []
    for w in read_write_log(site.write_log):
        if w["t_ns"] >= since_ns and w["address"] <= target < w["address"] + len(w["values"]):
            out.append((w["t_ns"], w["values"][target - w["address"]]))
    return out


def wait_for_limit(site, percent: float, since_ns: int, timeout: float = 10.0) -> int:
    """The time (ns) of the first write of WMaxLimPct = `percent` after `since_ns`."""
    want = round(percent / 10 ** WMAXLIMPCT_SF)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = next((t for t, v in inverter_writes(site, WMAXLIMPCT_OFFSET, since_ns) if v == want), None)
        if hit is not None:
            return hit
        time.sleep(0.05)
    raise AssertionError(f"WMaxLimPct never {percent} % after {since_ns}: "
                         f"{inverter_writes(site, WMAXLIMPCT_OFFSET, since_ns)[-5:]}")


def polls_after(site, n: int) -> None:
    """Wait (a marker, not a sleep) until pv1 has a measurement its Modbus endpoint read at
    least `n` poll periods (0.3 s) after now: a command sent before now has had the DER and
    the endpoint's loop, which writes a new command before its next poll, to itself."""
    since = now_ms()
    site.wait_for("pv1", lambda node: (node["detail"].get("measured") or {}).get("at", 0) >= since + n * 300,
                  timeout=20)


def last_limit(site) -> float | None:
    writes = inverter_writes(site, WMAXLIMPCT_OFFSET)
    return writes[-1][1] * 10 ** WMAXLIMPCT_SF if writes else None


# -- the controlling station's side ----------------------------------------------------------------------
def connect(site, endpoint: str = "scada") -> Peer:
    peer = Peer("127.0.0.1", site.ports[endpoint], timeout=5.0)
    peer.startdt()
    return peer


def confirmed(peer: Peer, mark: int, type_id: int, ioa: int) -> None:
    con = peer.answers(mark, type_id, ioa, (ACT_CON,))
    assert not con.negative, describe(con)


def terminated(peer: Peer, mark: int, type_id: int, ioa: int) -> None:
    confirmed(peer, mark, type_id, ioa)
    peer.answers(mark, type_id, ioa, (ACT_TERM,))


def refused(peer: Peer, mark: int, type_id: int, ioa: int, quiet_s: float = 0.5) -> list:
    """A negative ACT_CON, and no termination after it; returns everything that came."""
    con = peer.answers(mark, type_id, ioa, (ACT_CON,))
    assert con.negative, describe(con)
    later = peer.collect(quiet_s)
    assert not [a for a in peer.seen[mark:] if a.type == type_id and a.cot == ACT_TERM], \
        [describe(a) for a in peer.seen[mark:]]
    return later


def detail_when(site, endpoint: str, predicate) -> dict:
    """The endpoint's `relevent status` detail once `predicate` holds (status comes with the
    heartbeats, so it may lag a command by a beat)."""
    return site.wait_for(endpoint, lambda n: bool(predicate(n["detail"])))["detail"]


def point(peer: Peer, ioa: int):
    got = peer.general_interrogation(CA)
    assert ioa in got, sorted(got)
    return got[ioa]


def release_all(site, peer: Peer) -> None:
    for ioa in (SP_RELEASE, SWITCH_RELEASE):
        terminated(peer, peer.single_command(CA, ioa, True), C_SC_NA_1, ioa)


def set_limit(site, peer: Peer, percent: float) -> int:
    since = time.time_ns()
    terminated(peer, peer.setpoint_float(CA, SP_FLOAT, percent), C_SE_NC_1, SP_FLOAT)
    return wait_for_limit(site, percent, since)


# -- tests ------------------------------------------------------------------------------------------------
def test_a_float_set_point_is_confirmed_terminated_and_obeyed_by_the_inverter(site):
    with connect(site) as peer:
        since = time.time_ns()
        mark = peer.setpoint_float(CA, SP_FLOAT, 40.0)
        confirmed(peer, mark, C_SE_NC_1, SP_FLOAT)
        peer.answers(mark, C_SE_NC_1, SP_FLOAT, (ACT_TERM,))
        wait_for_limit(site, 40.0, since)
        site.wait_for("pv1/MaxPow", lambda n: (n["detail"]["output"], n["detail"]["source"]) == (4000.0, "FSCH02"))
        kind, output = point(peer, OUTPUT)
        assert kind == M_ME_NC_1 and output.value == pytest.approx(40.0) and not output.invalid
        assert point(peer, RUNNING)[1].value is True and point(peer, IN_FORCE)[1].value is True
        release_all(site, peer)


def test_a_change_of_the_active_limit_is_sent_spontaneously(site):
    with connect(site) as peer:
        mark = len(peer.seen)
        set_limit(site, peer, 35.0)
        spont = peer.wait_for(lambda a: a.cot == SPONTANEOUS and a.obj(OUTPUT) is not None
                              and a.obj(OUTPUT).value == pytest.approx(35.0), since=mark)
        assert spont.type == M_ME_NC_1 and spont.ca == CA
        peer.wait_for(lambda a: a.cot == SPONTANEOUS and a.obj(RUNNING) is not None and a.obj(RUNNING).value is True,
                      since=mark)
        release_all(site, peer)


def test_a_scaled_set_point_counts_in_configured_steps(site):
    with connect(site) as peer:
        since = time.time_ns()
        terminated(peer, peer.setpoint_scaled(CA, SP_SCALED, 255), C_SE_NB_1, SP_SCALED)   # 255 x 0.1 %
        wait_for_limit(site, 25.5, since)
        release_all(site, peer)


def test_a_fresh_time_tag_is_executed_and_an_old_one_refused(site):
    with connect(site) as peer:
        since = time.time_ns()
        terminated(peer, peer.setpoint_float_time(CA, SP_TIMED, 55.0, now_ms() - 1000), C_SE_TC_1, SP_TIMED)
        wait_for_limit(site, 55.0, since)
        writes_before = len(inverter_writes(site, WMAXLIMPCT_OFFSET))
        refused(peer, peer.setpoint_float_time(CA, SP_TIMED, 12.0, now_ms() - 60_000), C_SE_TC_1, SP_TIMED)
        refused(peer, peer.setpoint_float_time(CA, SP_TIMED, 12.0, now_ms() + 60_000), C_SE_TC_1, SP_TIMED)
        site.wait_for("scada", lambda n: "time tag" in (n["detail"]["last_refusal"] or {}).get("reason", ""))
        # A marker, not a sleep: a good set-point sent after the refused ones takes the same
        # way to the inverter (station, controller, DER, Modbus), so a 12 % would be before it.
        since = time.time_ns()
        terminated(peer, peer.setpoint_float_time(CA, SP_TIMED, 57.0, now_ms() - 1000), C_SE_TC_1, SP_TIMED)
        marker = wait_for_limit(site, 57.0, since)
        assert all(v == 5500 for t, v in inverter_writes(site, WMAXLIMPCT_OFFSET)[writes_before:] if t < marker)
        release_all(site, peer)


def test_unknown_addresses_and_types_are_refused_with_their_causes(site):
    with connect(site) as peer:
        mark = peer.setpoint_float(CA, 4242, 10.0)
        refused(peer, mark, C_SE_NC_1, 4242)
        peer.answers(mark, C_SE_NC_1, 4242, (UNKNOWN_IOA,))
        mark = peer.setpoint_float(CA + 1, SP_FLOAT, 10.0)
        refused(peer, mark, C_SE_NC_1, SP_FLOAT)
        assert peer.answers(mark, C_SE_NC_1, SP_FLOAT, (UNKNOWN_CA,)).ca == CA + 1
        mark = peer.setpoint_scaled(CA, SP_FLOAT, 100)    # a scaled set-point where a float one is expected
        refused(peer, mark, C_SE_NB_1, SP_FLOAT)
        peer.answers(mark, C_SE_NB_1, SP_FLOAT, (UNKNOWN_TYPE,))
        mark = peer.command(42, CA, SP_FLOAT, b"\x00")     # a type identification the standard leaves unused
        peer.answers(mark, 42, SP_FLOAT, (UNKNOWN_TYPE,))
        site.wait_for("scada", lambda n: n["detail"]["unexpected"] >= 4)
        assert peer.general_interrogation(CA)   # the connection is still fine


def test_a_value_out_of_range_gets_a_negative_confirmation_and_changes_nothing(site):
    with connect(site) as peer:
        set_limit(site, peer, 45.0)
        for bad in (150.0, -20.0, float("nan")):
            refused(peer, peer.setpoint_float(CA, SP_FLOAT, bad), C_SE_NC_1, SP_FLOAT, quiet_s=0.2)
        assert point(peer, OUTPUT)[1].value == pytest.approx(45.0)
        refusal = detail_when(site, "scada", lambda d: d["last_refusal"] and "nan" in d["last_refusal"]["reason"])
        assert refusal["last_refusal"]["rule"] == "value" and refusal["last_refusal"]["result"] == "refused"
        release_all(site, peer)


def test_the_release_value_and_the_release_command_give_the_limit_back_to_the_reserve(site):
    with connect(site) as peer:
        set_limit(site, peer, 30.0)
        since = time.time_ns()
        terminated(peer, peer.setpoint_float(CA, SP_FLOAT, -1.0), C_SE_NC_1, SP_FLOAT)
        wait_for_limit(site, 100.0, since)
        assert point(peer, RUNNING)[1].value is False and point(peer, IN_FORCE)[1].value is False
        assert point(peer, OUTPUT)[1].value == pytest.approx(100.0)
        set_limit(site, peer, 20.0)
        since = time.time_ns()
        terminated(peer, peer.single_command(CA, SP_RELEASE, True), C_SC_NA_1, SP_RELEASE)
        wait_for_limit(site, 100.0, since)
        detail_when(site, "scada", lambda d: d["armed"] == [] and d["released"] >= 2)


def test_a_single_command_switches_the_inverter_off_and_on(site):
    with connect(site) as peer:
        since = time.time_ns()
        terminated(peer, peer.single_command(CA, SWITCH, False), C_SC_NA_1, SWITCH)
        deadline = time.monotonic() + 10
        while not any(v == 0 for _, v in inverter_writes(site, CONN_OFFSET, since)):
            assert time.monotonic() < deadline, inverter_writes(site, CONN_OFFSET, since)[-3:]
            time.sleep(0.05)
        kind, onoff = point(peer, ONOFF_OUTPUT)
        assert kind == M_SP_NA_1 and onoff.value is False and point(peer, ONOFF_RUNNING)[1].value is True
        since = time.time_ns()
        terminated(peer, peer.single_command(CA, SWITCH_RELEASE, True), C_SC_NA_1, SWITCH_RELEASE)
        deadline = time.monotonic() + 10
        while not any(v == 1 for _, v in inverter_writes(site, CONN_OFFSET, since)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert point(peer, ONOFF_OUTPUT)[1].value is True and point(peer, ONOFF_RUNNING)[1].value is False


def test_general_interrogation_answers_every_monitoring_point_with_its_quality(site):
    with connect(site) as peer:
        deadline = time.monotonic() + 10
        while True:
            got = peer.general_interrogation(CA)
            if not got[MEASURED][1].invalid or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert {ioa: kind for ioa, (kind, _) in got.items()} == {
            OUTPUT: M_ME_NC_1, RUNNING: M_SP_NA_1, IN_FORCE: M_SP_NA_1, ONOFF_OUTPUT: M_SP_NA_1,
            ONOFF_RUNNING: M_SP_NA_1, MEASURED: M_ME_NC_1}
        assert all(a.cot == INTERROGATED and a.ca == CA for a in peer.seen if a.type in (M_ME_NC_1, M_SP_NA_1)
                   and a.cot != SPONTANEOUS)
        measured = got[MEASURED][1]
        assert measured.quality == 0 and 0.0 <= measured.value <= 100.0   # per cent of 10 kW, valid
        assert got[OUTPUT][1].quality == 0


def test_clock_synchronisation_is_confirmed_and_reported_but_never_sets_the_host_clock(site):
    with connect(site) as peer:
        before = time.time()
        mark = peer.clock_sync(CA, now_ms() + 3_600_000)   # an hour ahead
        confirmed(peer, mark, C_CS_NA_1, 0)
        assert abs(time.time() - before) < 5
        sync = site.wait_for("scada", lambda n: n["detail"]["clock_sync"] is not None)["detail"]["clock_sync"]
        assert sync["applied"] is False and 3_590_000 < sync["offset_ms"] < 3_610_000
        assert sync["peer"].startswith("127.0.0.1:")


def test_status_shows_the_peer_and_the_last_instruction(site):
    with connect(site) as peer:
        set_limit(site, peer, 65.0)
        detail = detail_when(site, "scada", lambda d: (d["last_instruction"] or {}).get("value") == 65.0
                             and d["last_instruction"]["terminated"])
        assert detail["listening"] is True and detail["connections"] >= 1
        assert detail["peers"][-1]["ip"] == "127.0.0.1" and detail["peers"][-1]["party"] == "dso"
        last = detail["last_instruction"]
        assert (last["type"], last["ioa"], last["value"], last["target"], last["action"], last["terminated"]) == \
            ("C_SE_NC_1", SP_FLOAT, 65.0, "pv1/MaxPow/FSCH02", "set", True)
        assert last["command_value"] == pytest.approx(6500.0) and last["party"] == "dso"
        assert detail["armed"] == ["pv1/MaxPow/FSCH02"]
        status = site.cli("status", str(site.topology))
        assert status.returncode == 0, status.stderr
        release_all(site, peer)


def test_a_party_outside_its_priority_band_gets_a_negative_confirmation(site):
    with connect(site, "agg") as peer:
        writes_before = len(inverter_writes(site, WMAXLIMPCT_OFFSET))
        refused(peer, peer.setpoint_float(CA, AGG_SP, 5000.0), C_SE_NC_1, AGG_SP)
        refusal = detail_when(site, "agg", lambda d: d["last_refusal"] is not None)["last_refusal"]
        assert refusal["party"] == "aggregator" and refusal["rule"] == "band" and refusal["policy"] is True
        polls_after(site, 3)   # agg has every command refused, so no later one can be the marker
        assert all(v != 5000 for _, v in inverter_writes(site, WMAXLIMPCT_OFFSET)[writes_before:])


def test_without_contact_the_command_schedule_ends_and_the_limit_falls_back(site):
    since = time.time_ns()
    with connect(site, "backup") as peer:
        terminated(peer, peer.setpoint_float(CA, BACKUP_SP, 1500.0), C_SE_NC_1, BACKUP_SP)
        wait_for_limit(site, 15.0, since)
        assert point(peer, BACKUP_RUNNING)[1].value is True
    # The client is gone: 2 s later the schedule is disabled and the reserve (100 %) returns.
    gone = time.monotonic()
    back = wait_for_limit(site, 100.0, time.time_ns(), timeout=10)
    assert time.monotonic() - gone >= 1.5
    detail_when(site, "backup", lambda d: d["ended_without_contact"] == 1 and d["armed"] == [] and d["peers"] == [])
    assert back > since


def test_after_kill_9_the_endpoint_serves_again_and_still_knows_its_running_command(site):
    with connect(site) as peer:
        set_limit(site, peer, 70.0)
    pid = site.node("scada")["pid"]
    os.kill(pid, signal.SIGKILL)
    site.wait_for("scada", lambda n: n["state"] == "running" and n["pid"] != pid, timeout=20)
    assert last_limit(site) == pytest.approx(70.0)
    with connect(site) as peer:
        assert point(peer, RUNNING)[1].value is True and point(peer, OUTPUT)[1].value == pytest.approx(70.0)
        detail_when(site, "scada", lambda d: d["armed"] == ["pv1/MaxPow/FSCH02"])
        release_all(site, peer)


def test_a_port_already_taken_stops_the_endpoint_with_the_reason():
    from relevent.protocols.iec104.endpoint import Iec104Endpoint

    class Context:
        ders = {"pv1": {"name": "pv1", "functions": ["MaxPow"], "rated_power_w": 1000.0, "schedules": 1}}
        party = "dso"

        def defer_ready(self):
            pass

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        endpoint = Iec104Endpoint(Context(), {"name": "x", "port": port, "common_address": 1,
                                              "functions": [{"der": "pv1", "function": "MaxPow", "C_SE_NC_1": 1}]})
        endpoint.start()
        try:
            with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port}: Address already in use"):
                endpoint._bind_or_raise()
        finally:
            endpoint.stop()
