"""The grid protocols' peers going away (issue 14, item 4), against a real site whose PV
inverter is the SunSpec simulator (what it obeys is read from its register write log):

* an IEC 104 controlling station that vanishes in the middle of a command, after its
  set-point was confirmed and before the termination came, or right after sending it: the
  command completes (the inverter gets the limit, the endpoint records it done) or is not
  executed at all, never half; nothing restarts, and the next connection finds the station
  serving and the state as it is;
* the VTN going away for 10 s while an event's schedule runs: the VEN keeps the armed
  schedule (the inverter changes limit at the event's boundary during the outage and drops
  it at the event's end), registers again once the VTN is back, and follows its next event.
  The 60 s outage of the issue is bench/outage_wan_bench.py.

Peers: tests/iec104peer.py (frames written with sockets and struct) and openleadr's own VTN
(tests/vtnpeer.py)."""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from iec104peer import ACT_CON, ACT_TERM, C_SC_NA_1, C_SE_NC_1, Peer, describe
from lanctl import read_write_log
from sitectl import Site, free_port, walk
from vtnpeer import Vtn

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")

CA, SETPOINT, RELEASE, OUTPUT, RUNNING = 100, 1001, 1002, 2001, 2002
VEN = "ven-outage-ven"
RATED_W = 10000.0
WMAXLIMPCT_OFFSET, WMAXLIMPCT_SF = 5, -2
OUTAGE_S = 10.0


def topology(state: Path, ports: dict, vtn_url: str, write_log: Path) -> str:
    return f"""[site]
name = "outage{ports['admin']}"
state_dir = "{state}"

[runtime]
admin_port = {ports['admin']}

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[[wan]]
name = "scada"
protocol = "iec104"
party = "dso"
port = {ports['scada']}
common_address = {CA}
max_connections = 2
unit = "W"
schedule = 4
priority = 250
functions = [{{ der = "pv1", function = "MaxPow", C_SE_NC_1 = {SETPOINT}, release = {RELEASE}, output = {OUTPUT}, running = {RUNNING} }}]

[[wan]]
name = "openadr"
protocol = "openadr"
party = "market"
vtn_url = "{vtn_url}"
ven_name = "outage-ven"
der = "pv1"
function = "MaxPow"
schedules = [2]
priority = 50
offline_polls = 2
reconnect_delay = 0.5
backoff_max = 1.0

[[der]]
name = "pv1"
functions = ["MaxPow"]
schedules = 4
lan = "modbus"
address = 1
profile = "sunspec"
rated_power_w = {RATED_W:g}
reserve = {{ MaxPow = {RATED_W} }}

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
wmax = {RATED_W}
write_log = "{write_log}"
"""


def model_address(port: int, model: int) -> int:
    from sunspec2.modbus import client as ssclient
    dev = ssclient.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        dev.scan()
        return dev.models[model][0].model_addr
    finally:
        dev.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outage")
    ports = {k: free_port() for k in ("admin", "scada", "modbus")}
    vtn = Vtn(free_port()).start()
    state, path, log = tmp / "state", tmp / "site.toml", tmp / "writes.jsonl"
    path.write_text(topology(state, ports, vtn.url, log))
    site = Site(path, state)
    try:
        site.start(timeout=60)
        site.ports, site.write_log = ports, log
        site.model123 = model_address(ports["modbus"], 123)
        site.wait_for("openadr", lambda n: n["detail"]["registered"] is True, timeout=10)
        yield {"site": site, "vtn": vtn}
        site.stop()
        assert site.leftovers() == []
    finally:
        site.kill_everything()
        vtn.close()


def limits(site, since_ns: int = 0) -> list[tuple[int, float]]:
    """(t_ns, WMaxLimPct %) of every write of the inverter's limit register since `since_ns`."""
    target, out = site.model123 + WMAXLIMPCT_OFFSET, []
    for w in read_write_log(site.write_log):
        if w["t_ns"] >= since_ns and w["address"] <= target < w["address"] + len(w["values"]):
            out.append((w["t_ns"], w["values"][target - w["address"]] * 10 ** WMAXLIMPCT_SF))
    return out


def limit_at(site, pct: float, since_ns: int, timeout: float = 10.0) -> int:
    """When (ns) the inverter first got `pct` % after `since_ns`."""
    deadline = time.monotonic() + timeout
    while True:
        hit = next((t for t, v in limits(site, since_ns) if v == pytest.approx(pct)), None)
        if hit is not None:
            return hit
        assert time.monotonic() < deadline, f"never {pct} % after {since_ns}: {limits(site, since_ns)[-5:]}"
        time.sleep(0.05)


def vanish(peer: Peer) -> None:
    """Gone without a goodbye: the connection is reset (SO_LINGER 0), no STOPDT, no FIN."""
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


def connect(site) -> Peer:
    peer = Peer("127.0.0.1", site.ports["scada"], timeout=5.0)
    peer.startdt()
    return peer


def maxpow(site) -> tuple:
    d = site.node("pv1/MaxPow")["detail"]
    return d["output"], d["source"]


def release(site) -> None:
    with connect(site) as peer:
        mark = peer.single_command(CA, RELEASE, True)
        assert not peer.answers(mark, C_SC_NA_1, RELEASE, (ACT_CON,)).negative
        peer.answers(mark, C_SC_NA_1, RELEASE, (ACT_TERM,))
    site.wait_for("pv1/MaxPow", lambda n: n["detail"]["source"] == "Res_FSCH01", timeout=5)


# -- IEC 104: the controlling station gone mid-command ----------------------------------------------------
def test_a_station_gone_after_the_confirmation_still_gets_its_command_carried_out(env):
    site = env["site"]
    pids = site.pids()
    before = site.node("scada")["detail"]
    since = time.time_ns()
    peer = connect(site)
    mark = peer.setpoint_float(CA, SETPOINT, 3000.0)
    con = peer.answers(mark, C_SE_NC_1, SETPOINT, (ACT_CON,))
    assert not con.negative, describe(con)
    assert not [a for a in peer.seen[mark:] if a.cot == ACT_TERM]   # gone before the termination
    vanish(peer)
    limit_at(site, 30.0, since)
    site.wait_for("pv1/MaxPow", lambda n: (n["detail"]["output"], n["detail"]["source"]) == (3000.0, "FSCH04"))
    detail = site.wait_for("scada", lambda n: n["detail"]["terminated"] > before["terminated"], timeout=5)["detail"]
    assert detail["failed_after_confirmation"] == before["failed_after_confirmation"]
    assert detail["last_instruction"]["value"] == 3000.0 and detail["last_instruction"]["result"] == "confirmed"
    assert detail["armed"] == ["pv1/MaxPow/FSCH04"]
    # The next connection finds the station serving and the command in force.
    with connect(site) as again:
        points = again.general_interrogation(CA)
        assert points[OUTPUT][1].value == pytest.approx(3000.0) and points[RUNNING][1].value is True
    assert site.pids() == pids and all(n["restarts"] == 0 for n in walk(site.tree()))
    release(site)


@pytest.mark.parametrize("value", [2500.0, 2000.0, 1500.0])
def test_a_station_gone_right_after_sending_gets_its_command_done_whole_or_not_at_all(env, value):
    site = env["site"]
    pids = site.pids()
    commands = site.node("scada")["detail"]["commands"]
    since = time.time_ns()
    peer = connect(site)
    peer.setpoint_float(CA, SETPOINT, value)
    vanish(peer)                       # before any answer could come
    # The station counts a command as it reads it, and carries out all it counts: its count
    # is the marker that it got this one.  That it never will has no marker (c104's count of
    # open connections lags): 5 s for the station to read the socket, many times what that
    # takes on a busy box.
    deadline = time.monotonic() + 5
    while site.node("scada")["detail"]["commands"] == commands and time.monotonic() < deadline:
        time.sleep(0.05)
    if site.node("scada")["detail"]["commands"] > commands:   # executed: all of it
        site.wait_for("pv1/MaxPow", lambda n: (n["detail"]["output"], n["detail"]["source"]) == (value, "FSCH04"),
                      timeout=10)
        site.wait_for("scada", lambda n: n["detail"]["armed"] == ["pv1/MaxPow/FSCH04"], timeout=10)
        limit_at(site, value / RATED_W * 100, since)
        release(site)
    else:                              # not executed: nothing of it
        output, source = maxpow(site)
        armed = site.node("scada")["detail"]["armed"]
        assert (output, source) == (RATED_W, "Res_FSCH01") and armed == []
        assert all(v == pytest.approx(100.0) for _, v in limits(site, since))
    with connect(site) as again:
        assert again.general_interrogation(CA)[OUTPUT][1].value == pytest.approx(RATED_W)
    assert site.pids() == pids and all(n["restarts"] == 0 for n in walk(site.tree()))


# -- OpenADR: the VTN down for a while -------------------------------------------------------------------------
def test_the_ven_keeps_its_armed_schedule_through_a_vtn_outage_and_registers_again(env):
    site, vtn = env["site"], env["vtn"]
    pids = site.pids()
    registrations = len(vtn.registrations)
    since = time.time_ns()
    # Intervals: 4 kW for 4 s, then 2.5 kW for 8 s; the VTN goes away during the first.
    event_id, start_ms = vtn.event_steps(VEN, [(4000.0, 4), (2500.0, 8)], lead_s=1.5)
    assert vtn.opt_of(event_id) == "optIn"
    limit_at(site, 40.0, since)
    vtn.stop()
    down = time.monotonic()
    site.wait_for("openadr", lambda n: n["detail"]["registered"] is False, timeout=8)
    # The boundary at start + 4 s comes while the VTN is down: the inverter follows it on time.
    t = limit_at(site, 25.0, since, timeout=10)
    # Late by 6 ms here; 1.5 s is 5 times the p99 of boundary -> SunSpec register on this busy
    # 2-core box (257 ms at load average 11, bench/README.md "Heat pump").
    assert -50 <= t / 1e6 - (start_ms + 4000) <= 1500, t / 1e6 - (start_ms + 4000)
    assert event_id in site.node("openadr")["detail"]["held"].values()
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
    vtn.start()                        # a restarted VTN: it knows no VEN and no event
    vtn.wait_registrations(registrations + 1, timeout=15)
    node = site.wait_for("openadr", lambda n: n["detail"]["registered"] is True, timeout=5)
    assert event_id in node["detail"]["held"].values() and node["detail"]["lost"] >= 1
    # The schedule runs to the event's end, then the limit goes away.
    end = limit_at(site, 100.0, (start_ms + 4000) * 1_000_000, timeout=15)
    assert end / 1e6 >= start_ms + 12_000 - 50, "the limit went away before the event's end"
    # And the VEN follows the next event of the VTN that is back.
    since = time.time_ns()
    event_id, _ = vtn.event(VEN, [3500.0], lead_s=1.5, length_s=2)
    assert vtn.opt_of(event_id) == "optIn"
    limit_at(site, 35.0, since)
    assert site.pids() == pids and all(n["restarts"] == 0 for n in walk(site.tree()))

