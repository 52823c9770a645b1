"""Four parties on four protocols steer the same DER's MaxPow (use case 6; issue 14's
cross-protocol test): the customer over HTTP (priority 20), a market party over OpenADR
(50), the DSO over MMS (200) and the TSO over IEC 60870-5-104 (250).  One real site
(`relevent run`) whose PV inverter is the SunSpec simulator on Modbus; what the inverter
obeys is read from the simulator's register write log.

Every peer is not our code path: httpx for HTTP, libiec61850's MMS client (pyiec61850) with
the DSO's ACSE password, openleadr's own VTN in this process (tests/vtnpeer.py), and a
controlling station that writes its APCI/ASDU frames itself (tests/iec104peer.py).  Each
party is recognised by its credential ([[party]] tables): a token, a password, the VTN's id,
the station's address; each has a priority band, and a priority outside it is refused."""
from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from iec104peer import ACT_CON, ACT_TERM, C_SC_NA_1, C_SE_NC_1, Peer, describe
from lanctl import read_write_log
from mmsclients import LibIec61850Client
from sitectl import Site, free_port, now_ms
from vtnpeer import Vtn

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")

LD = "DER_Scheduler_Control"
MAXPOW = f"{LD}/MaxPow_FSCH03"         # the DSO's schedule
CA, SETPOINT, RELEASE, OUTPUT = 104, 1001, 1002, 2001
CUSTOMER_TOKEN, DSO_PASSWORD, VTN_ID = "customer-token", "dso-secret", "MARKET_VTN"
VEN = "ven-site-ven"
RATED_W = 10000.0
WMAXLIMPCT_OFFSET, WMAXLIMPCT_SF = 5, -2   # the simulator's model 123 (SunSpec layout)

# (who, W, the controller's source) in the order the test makes them the highest priority
CUSTOMER, MARKET, DSO, TSO = ("customer", 9000.0, "FSCH01"), ("market", 7000.0, "FSCH02"), \
    ("dso", 5000.0, "FSCH03"), ("tso", 3000.0, "FSCH04")
RESERVE = ("reserve", RATED_W, "Res_FSCH01")


def topology(state: Path, ports: dict, vtn_url: str, write_log: Path) -> str:
    return f"""[site]
name = "four{ports['admin']}"
state_dir = "{state}"

[runtime]
admin_port = {ports['admin']}

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[[party]]
name = "customer"
http_token = "{CUSTOMER_TOKEN}"
priority = [0, 49]

[[party]]
name = "market"
peers = ["{VTN_ID}"]
priority = [50, 99]

[[party]]
name = "dso"
mms_password = "{DSO_PASSWORD}"
priority = [100, 200]

[[party]]
name = "tso"
peers = ["127.0.0.1"]
priority = [201, 300]

[[wan]]
name = "http"
protocol = "http"
port = {ports['http']}
parties = ["customer"]
anonymous = "none"

[[wan]]
name = "openadr"
protocol = "openadr"
party = "market"
parties = ["market"]
vtn_url = "{vtn_url}"
ven_name = "site-ven"
der = "pv1"
function = "MaxPow"
schedules = [2]
priority = 50
reconnect_delay = 0.5
backoff_max = 1.0

[[wan]]
name = "mms"
protocol = "mms"
port = {ports['mms']}
party = "dso"
parties = ["dso"]
anonymous = "read"

[[wan]]
name = "scada"
protocol = "iec104"
party = "tso"
parties = ["tso"]
port = {ports['iec104']}
common_address = {CA}
unit = "W"
schedule = 4
priority = 250
functions = [{{ der = "pv1", function = "MaxPow", C_SE_NC_1 = {SETPOINT}, release = {RELEASE}, output = {OUTPUT} }}]

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


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("four")
    ports = {k: free_port() for k in ("admin", "http", "mms", "iec104", "modbus")}
    vtn = Vtn(free_port(), vtn_id=VTN_ID).start()
    state, path, log = tmp / "state", tmp / "site.toml", tmp / "writes.jsonl"
    path.write_text(topology(state, ports, vtn.url, log))
    s = Site(path, state)
    try:
        s.start(timeout=60)
        s.ports, s.write_log, s.vtn = ports, log, vtn
        s.model123 = model_address(ports["modbus"], 123)
        s.steps = []          # (party, W) in the order the test made each the highest
        s.mark_ns = time.time_ns()
        yield s
        s.stop()
        assert s.leftovers() == []
    finally:
        s.kill_everything()
        vtn.close()


# -- the device -------------------------------------------------------------------------------------
def model_address(port: int, model: int) -> int:
    from sunspec2.modbus import client as ssclient
    dev = ssclient.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        dev.scan()
        return dev.models[model][0].model_addr
    finally:
        dev.close()


def limits(site, since_ns: int = 0) -> list[tuple[int, float]]:
    """(t_ns, WMaxLimPct in %) of every write of the inverter's limit register."""
    target, out = site.model123 + WMAXLIMPCT_OFFSET, []
    for w in read_write_log(site.write_log):
        if w["t_ns"] >= since_ns and w["address"] <= target < w["address"] + len(w["values"]):
            out.append((w["t_ns"], w["values"][target - w["address"]] * 10 ** WMAXLIMPCT_SF))
    return out


def follows(site, party: tuple, since_ns: int, timeout: float = 10.0) -> None:
    """The controller's output comes from `party`'s schedule, and the inverter got its limit."""
    name, watts, source = party
    site.wait_for("pv1/MaxPow", lambda n: (n["detail"]["output"], n["detail"]["source"]) == (watts, source),
                  timeout=timeout)
    want = watts / RATED_W * 100
    deadline = time.monotonic() + timeout
    while not any(v == pytest.approx(want) for _, v in limits(site, since_ns)):
        assert time.monotonic() < deadline, f"the inverter never got {want} % ({name}): {limits(site, since_ns)[-5:]}"
        time.sleep(0.05)
    site.steps.append((name, watts))


# -- the parties' peers -----------------------------------------------------------------------------
def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def customer(site) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{site.ports['http']}/api/v1/ders/pv1/MaxPow",
                        headers={"Authorization": f"Bearer {CUSTOMER_TOKEN}"}, timeout=15)


def dso(site) -> LibIec61850Client:
    return LibIec61850Client("127.0.0.1", site.ports["mms"], password=DSO_PASSWORD)


def dso_schedule(c, watts: float, prio: int, start_ms: int) -> list:
    """The 90-10 write sequence; the errors of the writes that were refused."""
    errors = [(attr, c.write_int(f"{MAXPOW}.{attr}.setVal", v))
              for attr, v in (("NumEntr", 1), ("SchdIntv", 3600), ("SchdPrio", prio))]
    errors += [("ValASG001", c.write_float(f"{MAXPOW}.ValASG001.setMag.f", watts)),
               ("StrTm01", c.write_time(f"{MAXPOW}.StrTm01.setTm", start_ms))]
    return [(attr, err) for attr, err in errors if err is not None]


def tso(site) -> Peer:
    peer = Peer("127.0.0.1", site.ports["iec104"], timeout=5.0)
    peer.startdt()
    return peer


def terminated(peer: Peer, mark: int, type_id: int, ioa: int) -> None:
    con = peer.answers(mark, type_id, ioa, (ACT_CON,))
    assert not con.negative, describe(con)
    peer.answers(mark, type_id, ioa, (ACT_TERM,))


# -- tests ------------------------------------------------------------------------------------------
def test_a_party_cannot_outrank_the_others_with_a_priority_outside_its_band(site):
    before = site.node("pv1/MaxPow")["detail"]
    with customer(site) as http:
        body = {"values": [100.0], "interval_s": 600, "start": iso(now_ms() + 60_000)}
        r = http.put("/schedules/1", json={**body, "priority": 250})
        assert r.status_code == 403 and r.json()["rule"] == "band" and "0..49" in r.json()["error"], r.text
    c = dso(site)
    try:
        refused = dso_schedule(c, 100.0, 250, now_ms() + 60_000)
        assert refused == [("SchdPrio", "access-denied")], refused
    finally:
        c.close()
    # A customer without its token is nobody on this endpoint.
    r = httpx.put(f"http://127.0.0.1:{site.ports['http']}/api/v1/ders/pv1/MaxPow/schedules/1",
                  json={"priority": 20}, timeout=10)
    assert r.status_code == 401, r.text
    after = site.node("pv1/MaxPow")["detail"]
    assert (after["output"], after["source"]) == (before["output"], before["source"]) == (RATED_W, "Res_FSCH01")


def test_the_device_follows_the_highest_priority_party_at_each_moment(site):
    vtn = site.vtn
    t0 = time.time_ns()
    with customer(site) as http:
        # The customer alone: its 9 kW.
        since = time.time_ns()
        r = http.put("/schedules/1", json={"values": [CUSTOMER[1]], "interval_s": 3600, "priority": 20,
                                           "start": iso(now_ms() + 1500)})
        assert r.status_code == 200, r.text
        assert http.post("/schedules/1/enable").status_code == 200
        follows(site, CUSTOMER, since)

        # The market's event (OpenADR, 50) outranks it.
        since = time.time_ns()
        event_id, start_ms = vtn.event(VEN, [MARKET[1]], lead_s=1.5, length_s=60)
        assert vtn.opt_of(event_id) == "optIn"
        follows(site, MARKET, since)

        # The DSO's schedule (MMS, 200) outranks the event.
        since = time.time_ns()
        c = dso(site)
        try:
            assert dso_schedule(c, DSO[1], 200, now_ms() + 1500) == []
            ok, cause = c.operate(f"{MAXPOW}.EnaReq", True)
            assert ok, cause
            follows(site, DSO, since)

            # The TSO's set-point (104, 250) outranks everything; its release gives the DSO back.
            with tso(site) as peer:
                since = time.time_ns()
                terminated(peer, peer.setpoint_float(CA, SETPOINT, TSO[1]), C_SE_NC_1, SETPOINT)
                follows(site, TSO, since)
                since = time.time_ns()
                terminated(peer, peer.single_command(CA, RELEASE, True), C_SC_NA_1, RELEASE)
                follows(site, DSO, since)

            # The DSO disables its schedule: the market's event holds again.
            since = time.time_ns()
            ok, cause = c.operate(f"{MAXPOW}.DsaReq", True)
            assert ok, cause
            follows(site, MARKET, since)
        finally:
            c.close()

        # The VTN cancels its event: the customer's limit again; the customer ends it: no limit.
        since = time.time_ns()
        vtn.cancel(VEN, event_id)
        follows(site, CUSTOMER, since)
        since = time.time_ns()
        assert http.post("/schedules/1/disable").status_code == 200
        follows(site, RESERVE, since)
        assert now_ms() < start_ms + 60_000   # the event was ended by its cancellation, not its end

    # Every limit the inverter got, in order, was the one of the highest party at that moment.
    seen = []
    for _, pct in limits(site, t0):
        if not seen or seen[-1] != pct:
            seen.append(pct)
    while seen and seen[0] == pytest.approx(100.0):
        seen.pop(0)
    assert seen == pytest.approx([w / RATED_W * 100 for _, w in site.steps]), seen
    assert [name for name, _ in site.steps] == \
        ["customer", "market", "dso", "tso", "dso", "market", "customer", "reserve"]


def test_every_instruction_is_audited_with_its_party_and_the_chains_verify(site):
    deadline = time.monotonic() + 10
    while True:
        records = [r for f in sorted((site.state_dir / "audit").rglob("*.jsonl")) for r in _lines(f)]
        seen = {(r["endpoint"], r["party"]) for r in records if r["kind"] == "instruction"}
        expected = {("http", "customer"), ("openadr", "market"), ("mms", "dso"), ("scada", "tso")}
        if expected <= seen or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert expected <= seen, seen
    refusals = [r for r in records if r["kind"] == "instruction" and isinstance(r["answer"], dict)]
    assert {(r["endpoint"], r["answer"]["refused"]) for r in refusals} >= {("http", "band"), ("mms", "band")}
    # The DER's own chain holds its command changes: the source of each is the party in force.
    commands = [r for r in records if r["kind"] == "command" and r["der"] == "pv1"]
    sources = [r["schedule"] for r in commands]
    assert sources[-9:] == ["Res_FSCH01", "FSCH01", "FSCH02", "FSCH03", "FSCH04", "FSCH03", "FSCH02", "FSCH01",
                            "Res_FSCH01"], sources
    assert [r["detail"]["limit_w"] for r in commands[-8:]] == [w for _, w in site.steps], commands[-8:]
    cli = subprocess.run([sys.executable, "-m", "relevent", "audit", "verify", str(site.state_dir / "audit")],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stdout + cli.stderr


def _lines(path: Path) -> list[dict]:
    import json
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
