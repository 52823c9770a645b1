"""The OCPP LAN endpoint (docs/ocpp.md) against a real site: `relevent run` in its own
processes, schedules written over HTTP, chargers that are not the site's code path:

* charge points written here with the `ocpp` package in the client role, OCPP 1.6J and
  2.0.1, each on its own asyncio loop in a thread of the test;
* a charge point from another implementation, ocpp-rpc run with Node (tests/node),
  validating every message against its own copy of the OCPP schemas;
* the site's own charger simulator (`ocpp-charger`), whose command log shows what it obeyed.
"""
from __future__ import annotations

import asyncio
import json
import queue
import shutil
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import websockets
from ocpp.exceptions import GenericError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from sitectl import Site, free_port, now_ms, walk

NODE_DIR = Path(__file__).resolve().parent / "node"
STACK = 3
PROFILE_ID = 9010_000 + STACK


def topology(tmp: Path, ports: dict) -> str:
    """Chargers on two OCPP endpoints: `ocpp` (W, ChargePointMaxProfile at stack level 3)
    and `ocppa` (A per phase, TxDefaultProfile at stack level 1); the site's simulator
    plays CPSIM (OCPP 2.0.1)."""
    def charger(name: str, cp_id: str, lan: str = "ocpp", functions: str = '["MaxPow", "OnOff"]',
                reserve: str = "MaxPow = 11000.0, OnOff = true") -> str:
        return f"""
[[der]]
name = "{name}"
type = "ev_charger"
functions = {functions}
schedules = 2
lan = "{lan}"
address = "{cp_id}"
rated_power_w = 11000
reserve = {{ {reserve} }}
"""
    ders = "".join([
        charger("ev16", "CP16"), charger("ev201", "CP201"), charger("evrej", "CPREJ"), charger("evrej2", "CPREJ2"),
        charger("evback", "CPBACK"), charger("evback2", "CPBACK2"), charger("evmeter", "CPMETER"), charger("evnode", "CPNODE"),
        charger("evnode2", "CPNODE2"), charger("evsim", "CPSIM"), charger("everr", "CPERR"),
        charger("evsilent", "CPSILENT"), charger("evenergy", "CPENERGY"),
        charger("evamp", "CPAMP", lan="ocppa", functions='["ActPow", "MaxPow"]',
                reserve="ActPow = -7360.0, MaxPow = 11000.0"),
    ])
    return f"""
[site]
name = "ocpp{ports['admin']}"
state_dir = "{tmp / 'state'}"

[runtime]
admin_port = {ports['admin']}
controller_isolation = "der"   # 14 DERs: one process each, on 2 shared cores
allow_fault_injection = true

[supervision]
heartbeat_interval = 0.2
heartbeat_timeout = 2.0
backoff_initial = 0.05

[[wan]]
name = "http"
protocol = "http"
port = {ports['http']}
party = "aggregator"
{ders}
[[lan]]
name = "ocpp"
protocol = "ocpp"
port = {ports['ocpp']}
heartbeat_s = 30
stack_level = {STACK}
call_timeout_s = 2.0

[[lan]]
name = "ocppa"
protocol = "ocpp"
port = {ports['ocppa']}
profile_purpose = "TxDefaultProfile"
rate_unit = "A"
phases = 3
voltage_v = 230.0
stack_level = 1

[[simulator]]
name = "charger"
protocol = "ocpp-charger"
url = "ws://127.0.0.1:{ports['ocpp']}/ocpp"
charge_point_id = "CPSIM"
ocpp_version = "2.0.1"
rated_power_w = 7400.0
meter_period_s = 0.2
command_log = "{tmp / 'sim-commands.jsonl'}"
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ocpp")
    ports = {k: free_port() for k in ("admin", "http", "ocpp", "ocppa")}
    path = tmp / "ocpp.toml"
    path.write_text(topology(tmp, ports))
    s = Site(path, tmp / "state")
    s.ports, s.tmp = ports, tmp
    try:
        s.start(timeout=60)
        yield s
        s.stop()
        assert s.leftovers() == [], f"processes left behind: {s.leftovers()}"
    finally:
        s.kill_everything()


@pytest.fixture(scope="module")
def http(site):
    with httpx.Client(base_url=f"http://127.0.0.1:{site.ports['http']}", timeout=15) as client:
        yield client


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def limit_from(start_ms: int, http, der: str, values: list, kind: str = "MaxPow", n: int = 1) -> None:
    """Write and enable a one-hour schedule of `values` (1 s entries would do too) on `der`."""
    r = http.put(f"/api/v1/ders/{der}/{kind}/schedules/{n}",
                 json={"values": values, "interval_s": 3600, "priority": 20, "start": iso(start_ms)})
    assert r.status_code == 200, r.text
    r = http.post(f"/api/v1/ders/{der}/{kind}/schedules/{n}/enable")
    assert r.status_code == 200, r.text


def wait_for(fetch, predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if predicate(last):
            return last
        time.sleep(0.05)
    raise AssertionError(f"not reached in {timeout} s; last: {last}")


def device(site, lan: str, der: str) -> dict:
    return site.node(lan)["detail"]["devices"][der]


def measured(site, der: str) -> dict:
    return site.node(der)["detail"].get("measured") or {}


# -- a charge point written with the `ocpp` package, client role --------------------------------------------
class _Recorder:
    """Keeps every SetChargingProfile as it came on the wire (the raw JSON payload) with
    its arrival time, and answers Accepted or Rejected."""

    def _init_recorder(self, owner: "TestCharger") -> None:
        self.owner = owner

    async def route_message(self, raw_msg):
        msg = json.loads(raw_msg)
        if msg[0] == 2 and msg[2] == "SetChargingProfile":
            self.owner.record(msg[3])
            if self.owner.answer == "silent":
                return None   # a charger that never answers
        return await super().route_message(raw_msg)

    def _answer(self, result_module):
        if self.owner.answer == "error":
            raise GenericError(description="profile storage full")
        return result_module.SetChargingProfile(status=self.owner.answer)


class _Cp16(_Recorder, ChargePoint16):
    @on("SetChargingProfile")
    def on_set_charging_profile(self, **kw):
        return self._answer(result16)


class _Cp201(_Recorder, ChargePoint201):
    @on("SetChargingProfile")
    def on_set_charging_profile(self, **kw):
        return self._answer(result201)


class TestCharger:
    """One charge point on its own event loop thread; every method waits for its result."""
    __test__ = False

    def __init__(self, port: int, cp_id: str, version: str = "1.6", answer: str = "Accepted",
                 path: str = "/ocpp/") -> None:
        """`answer` to SetChargingProfile: Accepted, Rejected, error (a CALLERROR) or silent."""
        self.url = f"ws://127.0.0.1:{port}{path}{cp_id}"
        self.cp_id, self.version, self.answer = cp_id, version, answer
        self.profiles: list[tuple[float, dict]] = []     # (arrival, time.time(); payload)
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ws = None
        self.cp = None
        self.reader = None

    def record(self, payload: dict) -> None:
        with self.lock:
            self.profiles.append((time.time(), payload))

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connect(self) -> "TestCharger":
        async def go():
            sub = "ocpp1.6" if self.version == "1.6" else "ocpp2.0.1"
            self.ws = await websockets.connect(self.url, subprotocols=[sub], open_timeout=5)
            assert self.ws.subprotocol == sub
            self.cp = (_Cp16 if self.version == "1.6" else _Cp201)(self.cp_id, self.ws, response_timeout=5)
            self.cp._init_recorder(self)
            self.reader = asyncio.ensure_future(self.cp.start())
        self.run(go())
        return self

    def call(self, payload):
        return self.run(self.cp.call(payload, suppress=False))

    def boot(self):
        if self.version == "1.6":
            return self.call(call16.BootNotification(charge_point_model="test", charge_point_vendor="pytest"))
        return self.call(call201.BootNotification(charging_station={"model": "test", "vendor_name": "pytest"},
                                                  reason="PowerUp"))

    def status(self, status: str):
        if self.version == "1.6":
            return self.call(call16.StatusNotification(connector_id=1, error_code="NoError", status=status))
        return self.call(call201.StatusNotification(timestamp=iso(now_ms()), connector_status=status, evse_id=1,
                                                    connector_id=1))

    def close(self) -> None:
        async def go():
            if self.reader:
                self.reader.cancel()
            if self.ws:
                await self.ws.close()
        try:
            self.run(go())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    def wait_profile(self, predicate=lambda p: True, timeout: float = 10.0, after: int = 0) -> tuple[float, dict]:
        """The first SetChargingProfile (arrival time, payload) from index `after` on that
        satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [p for p in self.profiles[after:] if predicate(p[1])]
            if found:
                return found[0]
            time.sleep(0.01)
        raise AssertionError(f"{self.cp_id}: no matching SetChargingProfile in {timeout} s; got {self.profiles}")


def limit_of(payload: dict) -> float:
    if "csChargingProfiles" in payload:
        return payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]
    return payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"]


# -- boot and the profile ----------------------------------------------------------------------------------
def test_a_1_6_charger_boots_and_gets_the_ders_limit_as_a_charge_point_max_profile_on_connector_0(site):
    cp = TestCharger(site.ports["ocpp"], "CP16").connect()
    try:
        before = time.time()
        boot = cp.boot()
        assert (boot.status, boot.interval) == ("Accepted", 30)
        arrived, payload = cp.wait_profile()
        start = payload["csChargingProfiles"]["chargingSchedule"].pop("startSchedule")
        assert payload == {"connectorId": 0, "csChargingProfiles": {
            "chargingProfileId": PROFILE_ID, "stackLevel": STACK, "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": {
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.0, "numberPhases": 3}]}}}
        assert datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() <= arrived  # in force at once
        assert arrived >= before  # after the BootNotification, never before it was answered
        detail = site.wait_for("ocpp", lambda n: n["detail"]["devices"]["ev16"]["profile_status"] == "Accepted")
        dev = detail["detail"]["devices"]["ev16"]
        assert (dev["link"], dev["ocpp"], dev["charge_point"], dev["profile"]["limit"]) == ("up", "1.6", "CP16", 11000.0)
    finally:
        cp.close()


@pytest.mark.parametrize("der, cp_id, version, value", [
    ("ev16", "CP16", "1.6", 3680.0),
    ("ev201", "CP201", "2.0.1", 4140.0),
])
def test_a_schedule_written_over_http_arrives_as_a_set_charging_profile_with_its_limit(
        site, http, der, cp_id, version, value):
    cp = TestCharger(site.ports["ocpp"], cp_id, version).connect()
    try:
        cp.boot()
        cp.wait_profile(lambda p: limit_of(p) == 11000.0)       # the reserve's, first
        start = (now_ms() // 1000 + 2) * 1000
        limit_from(start, http, der, [value])
        arrived, payload = cp.wait_profile(lambda p: limit_of(p) == value)
        assert start / 1000 <= arrived < start / 1000 + 2.0     # at the boundary, not before
        if version == "2.0.1":
            profile = payload["chargingProfile"]
            assert payload["evseId"] == 0
            assert (profile["id"], profile["stackLevel"], profile["chargingProfilePurpose"],
                    profile["chargingProfileKind"]) == (PROFILE_ID, STACK, "ChargingStationMaxProfile", "Absolute")
            assert profile["chargingSchedule"][0]["chargingRateUnit"] == "W"
        dev = site.wait_for("ocpp", lambda n: n["detail"]["devices"][der]["profile"]["limit"] == value)
        assert dev["detail"]["devices"][der]["ocpp"] == version
    finally:
        cp.close()


@pytest.mark.parametrize("der, cp_id, version", [("evback", "CPBACK", "1.6"), ("evback2", "CPBACK2", "2.0.1")])
def test_a_charger_that_disconnects_goes_invalid_and_gets_the_profile_again_when_it_reconnects(
        site, http, der, cp_id, version):
    start = (now_ms() // 1000 + 1) * 1000
    limit_from(start, http, der, [2300.0])
    site.wait_for(der, lambda n: n["detail"].get("command", {}).get("limit_w") == 2300.0, timeout=10)
    cp = TestCharger(site.ports["ocpp"], cp_id, version).connect()
    cp.boot()
    cp.wait_profile(lambda p: limit_of(p) == 2300.0)
    cp.close()
    node = site.wait_for(der, lambda n: (n["detail"].get("measured") or {}).get("quality") == "invalid")
    assert node["detail"]["measured"]["state"].startswith("charger offline")
    site.wait_for("ocpp", lambda n: n["detail"]["devices"][der]["link"] == "down")
    # Back, booting again: the same limit, at once.
    cp = TestCharger(site.ports["ocpp"], cp_id, version).connect()
    try:
        cp.boot()
        cp.wait_profile(lambda p: limit_of(p) == 2300.0)
    finally:
        cp.close()
    # Back without a BootNotification (a charger that kept its registration): its first
    # message makes it registered, and the profile follows.
    cp = TestCharger(site.ports["ocpp"], cp_id, version).connect()
    try:
        cp.status("Occupied" if version == "2.0.1" else "Charging")
        cp.wait_profile(lambda p: limit_of(p) == 2300.0)
        site.wait_for("ocpp", lambda n: n["detail"]["devices"][der]["connects"] == 3)
    finally:
        cp.close()


def test_a_transaction_that_starts_gets_the_profile_again(site):
    cp = TestCharger(site.ports["ocpp"], "CP16").connect()
    try:
        cp.boot()
        cp.wait_profile()
        seen = len(cp.profiles)
        result = cp.call(call16.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0,
                                                 timestamp=iso(now_ms())))
        assert result.id_tag_info["status"] == "Accepted" and isinstance(result.transaction_id, int)
        _, payload = cp.wait_profile(after=seen)
        assert payload["csChargingProfiles"]["chargingProfilePurpose"] == "ChargePointMaxProfile"
        site.wait_for("ocpp", lambda n: n["detail"]["devices"]["ev16"]["profile"]["why"] == "transaction started")
        cp.call(call16.StopTransaction(meter_stop=10, timestamp=iso(now_ms()), transaction_id=result.transaction_id))
    finally:
        cp.close()


@pytest.mark.parametrize("der, cp_id, version", [("evrej", "CPREJ", "1.6"), ("evrej2", "CPREJ2", "2.0.1")])
def test_a_charger_that_rejects_the_profile_is_reported_in_relevent_status_json(site, der, cp_id, version):
    cp = TestCharger(site.ports["ocpp"], cp_id, version, answer="Rejected").connect()
    try:
        cp.boot()
        cp.wait_profile()
        if version == "1.6":
            cp.call(call16.MeterValues(connector_id=1, meter_value=[{"timestamp": iso(now_ms()), "sampled_value": [
                {"value": "11000", "measurand": "Power.Active.Import", "unit": "W"}]}]))
        else:
            cp.call(call201.MeterValues(evse_id=1, meter_value=[{"timestamp": iso(now_ms()), "sampled_value": [
                {"value": 11000.0, "measurand": "Power.Active.Import"}]}]))
        site.wait_for(der, lambda n: (n["detail"].get("measured") or {}).get("w") == -11000.0)
        site.wait_for("ocpp", lambda n: n["detail"]["devices"][der]["meter_w"] == -11000.0)
        out = site.cli("status", str(site.topology), "--json")
        assert out.returncode == 0, out.stderr
        nodes = {node["path"]: node for node in walk(json.loads(out.stdout)["tree"])}
        dev = nodes["ocpp"]["detail"]["devices"][der]
        assert dev["profile_status"] == "Rejected" and dev["rejections"] >= 1
        assert dev["profile"]["limit"] == 11000.0 and dev["meter_w"] == -11000.0 and dev["ocpp"] == version
        m = nodes[der]["detail"]["measured"]
        assert m["quality"] == "questionable" and "charging profile Rejected" in m["state"]
        assert f"{cp_id}: SetChargingProfile ChargePointMaxProfile Rejected" in site.log.read_text()
    finally:
        cp.close()


@pytest.mark.parametrize("der, cp_id, answer, status, detail", [
    ("everr", "CPERR", "error", "error", "CALLERROR GenericError: profile storage full"),
    ("evsilent", "CPSILENT", "silent", "timeout", "no answer within 2.0 s"),
])
def test_a_charger_that_answers_a_callerror_or_nothing_is_reported_and_its_measurement_questionable(
        site, der, cp_id, answer, status, detail):
    cp = TestCharger(site.ports["ocpp"], cp_id, "2.0.1", answer=answer).connect()
    try:
        cp.boot()
        cp.call(call201.MeterValues(evse_id=0, meter_value=[{"timestamp": iso(now_ms()), "sampled_value": [
            {"value": 4.2, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "kW"}}]}]))
        node = site.wait_for("ocpp", lambda n: n["detail"]["devices"][der]["profile_status"] == status, timeout=10)
        dev = node["detail"]["devices"][der]
        assert dev["profile_detail"] == detail and dev["errors"] >= 1 and dev["rejections"] == 0
        m = site.wait_for(der, lambda n: (n["detail"].get("measured") or {}).get("quality") == "questionable")
        assert m["detail"]["measured"]["w"] == -4200.0 and f"charging profile {status}" in m["detail"]["measured"]["state"]
        if answer == "silent":   # sent again after as long again
            cp.wait_profile(after=1, timeout=6)
    finally:
        cp.close()


# -- meter values ----------------------------------------------------------------------------------------
def test_meter_values_reach_the_ders_status_as_negative_watts_from_1_6_and_2_0_1(site, http):
    cp = TestCharger(site.ports["ocpp"], "CPMETER").connect()
    try:
        cp.boot()
        cp.call(call16.MeterValues(connector_id=1, meter_value=[{"timestamp": iso(now_ms()), "sampled_value": [
            {"value": "123456", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": "7.36", "measurand": "Power.Active.Import", "unit": "kW"}]}]))
        site.wait_for("evmeter", lambda n: (n["detail"].get("measured") or {}).get("w") == -7360.0)
        out = wait_for(lambda: http.get("/api/v1/ders/evmeter/MaxPow").json(),
                       lambda o: (o["measurement"] or {}).get("w") == -7360.0)
        assert out["measurement"]["source"] == "ocpp" and out["measurement"]["quality"] == "good"
        # A payload the site cannot read is logged with the field and changes nothing.
        cp.call(call16.MeterValues(connector_id=1, meter_value=[{"timestamp": iso(now_ms()), "sampled_value": [
            {"value": "7.36", "measurand": "Power.Active.Import", "unit": "kvar"}]}]))
        dev = site.wait_for("ocpp", lambda n: n["detail"]["devices"]["evmeter"]["bad_payloads"] == 1)
        assert "meterValue[0].sampledValue[0].unit" in dev["detail"]["devices"]["evmeter"]["last_bad_payload"]
        assert measured(site, "evmeter")["w"] == -7360.0
    finally:
        cp.close()
    cp = TestCharger(site.ports["ocpp"], "CPMETER", "2.0.1").connect()
    try:
        cp.boot()
        cp.call(call201.TransactionEvent(
            event_type="Started", timestamp=iso(now_ms()), trigger_reason="CablePluggedIn", seq_no=0,
            transaction_info={"transaction_id": "tx-1"}, evse={"id": 1, "connector_id": 1},
            meter_value=[{"timestamp": iso(now_ms()), "sampled_value": [
                {"value": 1.2, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W", "multiplier": 3}}]}]))
        site.wait_for("evmeter", lambda n: (n["detail"].get("measured") or {}).get("w") == -1200.0)
        cp.call(call201.MeterValues(evse_id=1, meter_value=[{"timestamp": iso(now_ms()), "sampled_value": [
            {"value": 2000.0, "measurand": "Power.Active.Import", "phase": phase} for phase in ("L1", "L2", "L3")]}]))
        site.wait_for("evmeter", lambda n: (n["detail"].get("measured") or {}).get("w") == -6000.0)
        cp.call(call201.TransactionEvent(event_type="Ended", timestamp=iso(now_ms()), trigger_reason="EVDeparted",
                                         seq_no=1, transaction_info={"transaction_id": "tx-1"}))
        node = site.wait_for("evmeter", lambda n: (n["detail"].get("measured") or {}).get("w") == 0.0)
        assert node["detail"]["measured"]["connected"] is True
    finally:
        cp.close()


@pytest.mark.parametrize("version, w", [
    ("1.6", -7200.0),     # 5000 -> 5020 Wh in 10 s: 20 Wh * 3600 / 10 s
    ("2.0.1", -1320.0),   # 12.345 -> 12.356 kWh (Wh x 10^3) in 30 s: 11 Wh * 3600 / 30 s
])
def test_a_charger_reporting_only_its_energy_register_is_measured_by_its_rise_over_the_charger_s_timestamps(
        site, http, version, w):
    cp = TestCharger(site.ports["ocpp"], "CPENERGY", version).connect()
    t0 = now_ms() - 120_000     # the charger's clock, not the site's: only its differences count
    try:
        cp.boot()
        if version == "1.6":
            tid = cp.call(call16.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=5000,
                                                  timestamp=iso(t0))).transaction_id
            for dt, wh in ((0, "5000"), (10_000, "5020")):
                cp.call(call16.MeterValues(connector_id=1, transaction_id=tid, meter_value=[
                    {"timestamp": iso(t0 + dt), "sampled_value": [
                        {"value": wh, "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]))
        else:
            kwh = {"unit": "Wh", "multiplier": 3}
            cp.call(call201.TransactionEvent(          # the first reading in the event, no measurand: the register
                event_type="Started", timestamp=iso(t0), trigger_reason="CablePluggedIn", seq_no=0,
                transaction_info={"transaction_id": "tx-energy"}, evse={"id": 1, "connector_id": 1},
                meter_value=[{"timestamp": iso(t0), "sampled_value": [{"value": 12.345, "unit_of_measure": kwh}]}]))
            cp.call(call201.MeterValues(evse_id=1, meter_value=[{"timestamp": iso(t0 + 30_000), "sampled_value": [
                {"value": 12.356, "measurand": "Energy.Active.Import.Register", "unit_of_measure": kwh}]}]))
        node = site.wait_for("evenergy", lambda n: (n["detail"].get("measured") or {}).get("w") == w)
        assert node["detail"]["measured"]["quality"] == "good"
        out = wait_for(lambda: http.get("/api/v1/ders/evenergy/MaxPow").json(),
                       lambda o: (o["measurement"] or {}).get("w") == w)
        assert out["measurement"]["source"] == "ocpp"
        status = site.cli("status", str(site.topology), "--json")
        assert status.returncode == 0, status.stderr
        nodes = {n["path"]: n for n in walk(json.loads(status.stdout)["tree"])}
        dev = nodes["ocpp"]["detail"]["devices"]["evenergy"]
        assert (dev["meter_w"], dev["meter_source"], dev["bad_payloads"]) == (w, "energy delta", 0)
        assert nodes["evenergy"]["detail"]["measured"]["w"] == w
        # A power sample wins over the register's rise (which would say -7200 W here).
        if version == "1.6":
            cp.call(call16.MeterValues(connector_id=1, transaction_id=tid, meter_value=[
                {"timestamp": iso(t0 + 20_000), "sampled_value": [
                    {"value": "5040", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                    {"value": "3.68", "measurand": "Power.Active.Import", "unit": "kW"}]}]))
        else:
            cp.call(call201.MeterValues(evse_id=1, meter_value=[{"timestamp": iso(t0 + 40_000), "sampled_value": [
                {"value": 12.376, "measurand": "Energy.Active.Import.Register", "unit_of_measure": kwh},
                {"value": 3680.0, "measurand": "Power.Active.Import"}]}]))
        site.wait_for("ocpp", lambda n: (n["detail"]["devices"]["evenergy"]["meter_w"],
                                         n["detail"]["devices"]["evenergy"]["meter_source"]) == (-3680.0, "power"))
        # The transaction ends: nothing drawn, whatever the last interval's average was.
        if version == "1.6":
            cp.call(call16.StopTransaction(meter_stop=5060, timestamp=iso(t0 + 30_000), transaction_id=tid))
        else:
            cp.call(call201.TransactionEvent(
                event_type="Ended", timestamp=iso(t0 + 50_000), trigger_reason="EVDeparted", seq_no=1,
                transaction_info={"transaction_id": "tx-energy"},
                meter_value=[{"timestamp": iso(t0 + 50_000), "sampled_value": [
                    {"value": 12.396, "unit_of_measure": kwh}]}]))
        node = site.wait_for("ocpp", lambda n: n["detail"]["devices"]["evenergy"]["meter_source"] == "transaction ended")
        assert node["detail"]["devices"]["evenergy"]["meter_w"] == 0.0
        site.wait_for("evenergy", lambda n: (n["detail"].get("measured") or {}).get("w") == 0.0)
    finally:
        cp.close()


# -- handshake, units ------------------------------------------------------------------------------------
def test_an_unknown_charge_point_id_is_refused_at_the_handshake_and_logged_with_the_id(site):
    async def attempt():
        await websockets.connect(f"ws://127.0.0.1:{site.ports['ocpp']}/ocpp/NOBODY-42", subprotocols=["ocpp1.6"],
                                 open_timeout=5)
    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(attempt())
    assert refused.value.response.status_code == 404
    detail = site.wait_for("ocpp", lambda n: n["detail"]["refused"] >= 1)["detail"]
    assert "'NOBODY-42'" in detail["last_refused"]
    assert "refused charge point id 'NOBODY-42'" in site.log.read_text()


def test_a_charger_offering_no_ocpp_subprotocol_is_refused(site):
    async def attempt():
        await websockets.connect(f"ws://127.0.0.1:{site.ports['ocpp']}/ocpp/CP16", subprotocols=["ocpp0.9"],
                                 open_timeout=5)
    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(attempt())
    assert refused.value.response.status_code == 400
    detail = site.wait_for("ocpp", lambda n: "ocpp0.9" in n["detail"]["last_refused"])["detail"]
    assert "offers no OCPP version we speak" in detail["last_refused"]


def test_an_amps_charger_gets_a_tx_default_profile_in_amperes_per_phase_at_any_path(site):
    # 7360 W (|ActPow|, below MaxPow) / (3 phases * 230 V) = 10.67 A, floored to 10.6.
    cp = TestCharger(site.ports["ocppa"], "CPAMP", path="/steve/websocket/CentralSystemService/").connect()
    try:
        cp.boot()
        _, payload = cp.wait_profile()
        profile = payload["csChargingProfiles"]
        assert (profile["chargingProfilePurpose"], profile["stackLevel"]) == ("TxDefaultProfile", 1)
        assert profile["chargingSchedule"]["chargingRateUnit"] == "A"
        assert profile["chargingSchedule"]["chargingSchedulePeriod"] == [
            {"startPeriod": 0, "limit": 10.6, "numberPhases": 3}]
    finally:
        cp.close()


# -- the site's simulator ----------------------------------------------------------------------------------
def test_the_simulated_charger_obeys_a_schedule_and_its_meter_values_reach_the_der(site, http):
    log = site.tmp / "sim-commands.jsonl"
    wait_for(lambda: log.read_text() if log.exists() else "", lambda t: '"limit_w": 11000.0' in t, timeout=15)
    # The EV wants 7400 W: under the reserve's 11000 W limit it draws 7400.
    site.wait_for("evsim", lambda n: (n["detail"].get("measured") or {}).get("w") == -7400.0, timeout=10)
    start = (now_ms() // 1000 + 2) * 1000
    limit_from(start, http, "evsim", [3000.0])
    entries = wait_for(lambda: [json.loads(x) for x in log.read_text().splitlines()],
                       lambda e: any(x["limit_w"] == 3000.0 for x in e))
    obeyed = next(x for x in entries if x["limit_w"] == 3000.0)
    assert (obeyed["purpose"], obeyed["stack_level"], obeyed["unit"], obeyed["evseId"]) == (
        "ChargePointMaxProfile", STACK, "W", 0)
    assert obeyed["t_ns"] / 1e6 >= start
    site.wait_for("evsim", lambda n: (n["detail"].get("measured") or {}).get("w") == -3000.0, timeout=10)
    sim = site.node("charger")["detail"]
    assert sim["connected"] and sim["ocpp"] == "2.0.1" and sim["limit_w"] == 3000.0


def test_the_simulated_charger_comes_back_after_the_site_endpoint_restarts_and_gets_the_profile_again(site):
    log = site.tmp / "sim-commands.jsonl"
    site.wait_for("charger", lambda n: n["detail"]["limit_w"] == 3000.0 and n["detail"]["connected"], timeout=15)
    before = site.node("charger")["detail"]
    killed_ns = time.time_ns()
    site.fault("ocpp", "segfault")   # the endpoint process dies; its supervisor restarts it
    node = site.wait_for("charger", lambda n: n["detail"]["boots"] > before["boots"], timeout=20)
    assert node["detail"]["connects"] > before["connects"]
    entries = wait_for(lambda: [json.loads(x) for x in log.read_text().splitlines()],
                       lambda e: any(x["t_ns"] > killed_ns for x in e), timeout=10)
    assert [x["limit_w"] for x in entries if x["t_ns"] > killed_ns][0] == 3000.0
    site.wait_for("evsim", lambda n: (n["detail"].get("measured") or {}).get("w") == -3000.0
                  and n["detail"]["measured"]["quality"] == "good", timeout=10)


# -- another implementation: ocpp-rpc on Node --------------------------------------------------------------
def node_charger_ready() -> None:
    """tests/node/node_modules installed (npm ci); skip only when npm cannot reach its registry."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    if (NODE_DIR / "node_modules" / "ocpp-rpc").is_dir():
        return
    cmd = ["npm", "ci"] if (NODE_DIR / "package-lock.json").exists() else ["npm", "install"]
    done = subprocess.run(cmd + ["--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        ping = subprocess.run(["npm", "ping"], cwd=NODE_DIR, capture_output=True, text=True, timeout=60)
        if ping.returncode != 0:
            pytest.skip(f"npm cannot reach its registry to install ocpp-rpc: {ping.stderr.strip()[-300:]}")
        raise AssertionError(f"{' '.join(cmd)} failed in {NODE_DIR}:\n{done.stderr[-2000:]}")


@pytest.mark.parametrize("der, cp_id, protocol", [("evnode", "CPNODE", "ocpp1.6"),
                                                  ("evnode2", "CPNODE2", "ocpp2.0.1")])
def test_an_ocpp_rpc_charger_on_node_boots_gets_the_limit_and_its_meter_value_reaches_the_der(
        site, http, der, cp_id, protocol):
    node_charger_ready()
    proc = subprocess.Popen(["node", str(NODE_DIR / "ocpp_rpc_charger.js"), f"ws://127.0.0.1:{site.ports['ocpp']}/ocpp",
                             cp_id, protocol, "5520"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=NODE_DIR)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(json.loads(x)) for x in proc.stdout], daemon=True).start()
    events: list[dict] = []

    def until(predicate, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((e for e in events if predicate(e)), None)
            if found:
                return found
            try:
                events.append(lines.get(timeout=0.1))
            except queue.Empty:
                if proc.poll() is not None and lines.empty():
                    break
        raise AssertionError(f"node charger: no such event; got {events}; stderr: "
                             f"{proc.stderr.read() if proc.poll() is not None else ''}")
    try:
        boot = until(lambda e: e["event"] == "boot")
        assert boot["boot"]["status"] == "Accepted" and boot["protocol"] == protocol
        until(lambda e: e["event"] == "SetChargingProfile")
        site.wait_for(der, lambda n: (n["detail"].get("measured") or {}).get("w") == -5520.0, timeout=10)
        start = (now_ms() // 1000 + 2) * 1000
        limit_from(start, http, der, [1840.0])
        got = until(lambda e: e["event"] == "SetChargingProfile" and limit_of(e["params"]) == 1840.0)
        assert got["t_ms"] >= start
        assert not [e for e in events if e["event"] in ("error", "unhandled")], events  # strict mode found nothing
        site.wait_for("ocpp", lambda n: n["detail"]["devices"][der]["profile"]["limit"] == 1840.0
                      and n["detail"]["devices"][der]["profile_status"] == "Accepted")
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
