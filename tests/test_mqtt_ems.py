"""The local EMS over MQTT (`protocol = "mqtt-ems"`, ReLevENT's HEDERA request format, with
a reply): the pure decoding and mapping first, then a real site with a real Mosquitto broker,
the EMS played by Mosquitto's own command-line clients (mosquitto_pub, mosquitto_sub), and
the schedule read back over MMS with libiec61850 and open61850."""
from __future__ import annotations

import json
import math
import os
import signal
import time

import pytest
from lanctl import Mosquitto, exchange
from mmsclients import LibIec61850Client, Open61850Client
from sitectl import Site, free_port, mms_port, small_topology

from relevent.protocols.mqtt_ems import hedera
from relevent.scheduling.schedule import Schedule, State

LD = "DER_Scheduler_Control"
FSCH = f"{LD}/MaxPow_FSCH01"
REQUESTS, REPLIES = "hedera-requests", "hedera-replies"


def request(values, start_s: int, resolution: str = "FIVE_MINUTES", **extra) -> dict:
    return {"skipHedera": True, "direction": "EXPORT", "start": {"seconds": start_s, "nanos": 0},
            "resolution": resolution, "values": values, **extra}


def raw(doc: dict) -> bytes:
    return json.dumps(doc).encode()


# -- decoding (pure) ----------------------------------------------------------------------------------
def test_a_reference_request_becomes_watts_an_interval_and_a_start_in_ms():
    r = hedera.decode(raw(request([5000, 4000.5, -3000], 1795720000, "FIFTEEN_MINUTES", correlationId="r-17")))
    assert r.values == (5000.0, 4000.5, -3000.0)
    assert r.interval_s == 900 and r.start_ms == 1795720000000
    assert r.direction == "EXPORT" and r.correlation_id == "r-17"
    assert r.echo() == {"start": {"seconds": 1795720000, "nanos": 0}, "resolution": "FIFTEEN_MINUTES", "count": 3,
                        "direction": "EXPORT"}
    five = hedera.decode(raw({**request([1], 1795720000), "start": {"seconds": 1795720000, "nanos": 250_000_000}}))
    assert five.interval_s == 300 and five.start_ms == 1795720000250


def test_the_unquoted_form_the_reference_script_sends_is_read_as_its_gateway_reads_it():
    # test-ems-input-no-hedera.sh: the shell strips the inner quotes; Gson (lenient) reads it anyway.
    r = hedera.decode(b"{skipHedera:true,direction:IMPORT,start:{seconds:1717600722,nanos:0},"
                      b"resolution:FIFTEEN_MINUTES,values:[42,1337]}")
    assert r.values == (42.0, 1337.0) and r.direction == "IMPORT" and r.interval_s == 900


def test_direction_does_not_change_the_values_and_may_be_absent():
    base = request([42, 1337], 1795720000)
    imp = hedera.decode(raw({**base, "direction": "IMPORT"}))
    exp = hedera.decode(raw({**base, "direction": "EXPORT"}))
    absent = hedera.decode(raw({k: v for k, v in base.items() if k != "direction"}))
    assert imp.values == exp.values == absent.values == (42.0, 1337.0)
    assert absent.direction is None


def test_a_start_in_the_past_is_not_the_decoders_business():
    assert hedera.decode(raw(request([1], 1))).start_ms == 1000


def _without(key):
    return lambda d: {k: v for k, v in d.items() if k != key}


def _with(**kw):
    return lambda d: {**d, **kw}


@pytest.mark.parametrize("payload, field", [
    (b"this is not json", "payload"),
    (b'{"values": [1, 2', "payload"),
    (b"\xff\xfe", "payload"),
    (b"[1, 2, 3]", "payload"),
    (b"x" * (hedera.MAX_PAYLOAD_BYTES + 1), "payload"),
    (_without("values"), "values"),
    (_with(values=[]), "values"),
    (_with(values=5000), "values"),
    (_with(values=[1.0] * 101), "values"),
    (_with(values=[1, "2"]), "values[1]"),
    (_with(values=[True]), "values[0]"),
    (_with(values=[1, None]), "values[1]"),
    (lambda d: json.dumps({**d, "values": [1, math.nan]}).encode(), "values[1]"),
    (lambda d: json.dumps({**d, "values": [math.inf]}).encode(), "values[0]"),
    (_with(values=[1e39]), "values[0]"),
    (_with(values=[10 ** 400]), "values[0]"),
    (_with(resolution="HOURLY"), "resolution"),
    (_with(resolution=300), "resolution"),
    (_without("resolution"), "resolution"),
    (_with(start=1795720000), "start"),
    (_with(start="2026-11-26T19:06:40Z"), "start"),
    (_without("start"), "start"),
    (_with(start={"seconds": "1795720000"}), "start.seconds"),
    (_with(start={"seconds": 1795720000.5}), "start.seconds"),
    (_with(start={"nanos": 0}), "start.seconds"),
    (_with(start={"seconds": -1}), "start.seconds"),
    (_with(start={"seconds": 10 ** 400}), "start.seconds"),
    (_with(start={"seconds": 1795720000, "nanos": 1_000_000_000}), "start.nanos"),
    (_with(skipHedera=False), "skipHedera"),
    (_without("skipHedera"), "skipHedera"),
    (_with(direction="SIDEWAYS"), "direction"),
    (_with(correlationId={"a": 1}), "correlationId"),
])
def test_a_payload_that_cannot_be_read_is_refused_naming_the_field(payload, field):
    if callable(payload):
        payload = payload(request([5000, 4000], 1795720000))
        payload = payload if isinstance(payload, bytes) else raw(payload)
    with pytest.raises(hedera.HederaError) as caught:
        hedera.decode(payload)
    assert caught.value.field == field, caught.value
    assert str(caught.value).startswith(f"{field}: ")


def test_a_refusal_keeps_the_correlation_id_and_what_could_be_read():
    with pytest.raises(hedera.HederaError) as caught:
        hedera.decode(raw(request([1, 2, 3], 1795720000, resolution="HOURLY", correlationId=7)))
    assert caught.value.correlation_id == 7
    assert caught.value.echo == {"start": {"seconds": 1795720000, "nanos": 0}, "resolution": "HOURLY", "count": 3,
                                 "direction": "EXPORT"}
    doc = json.loads(hedera.reply(False, der="der1", function="MaxPow", schedule="FSCH01", echo=caught.value.echo,
                                  rule="payload", field="resolution", reason=str(caught.value), code=11,
                                  correlation_id=7))
    assert doc["accepted"] is False and doc["field"] == "resolution" and doc["correlationId"] == 7
    assert set(doc) == {"accepted", "rule", "reason", "code", "field", "enaErr", "request", "schedule", "der",
                        "function", "correlationId"}


# -- the 90-10 writes (pure) ---------------------------------------------------------------------------
def test_a_request_writes_the_whole_schedule_and_clears_every_other_start_time():
    r = hedera.decode(raw(request([5000, 4000], 1795720000)))
    writes = hedera.schedule_writes(r, 20)
    assert writes[:5] == [("NumEntr", 0, 2), ("SchdIntv", 0, 300), ("SchdPrio", 0, 20), ("Val", 1, 5000.0),
                          ("Val", 2, 4000.0)]
    assert writes[5:] == [("StrTm", 1, 1795720000000)] + [("StrTm", i, None) for i in range(2, 17)]


def test_a_request_replacing_a_running_one_is_enabled_by_the_scheduling_core():
    """A new start written into StrTm01 while the run from StrTm01 is in force ends that run,
    and the core keeps the new start (the same core the controller runs)."""
    sched, now = Schedule("FSCH01"), 1_000_000_000

    def apply(req, at):
        for f, i, v in hedera.schedule_writes(req, 20):
            assert sched.write(f, i, v, at).ok
        sched.advance(at)
        return sched.enable(at)

    assert apply(hedera.decode(raw(request([3000, 2500], now // 1000 + 1))), now).ok
    sched.advance(now + 2000)
    assert sched.status.state == State.RUNNING and sched.value() == 3000.0
    later = now + 3000
    assert apply(hedera.decode(raw(request([1500], later // 1000 + 2))), later).ok
    assert sched.status.state == State.READY
    sched.advance(later + 3000)
    assert sched.status.state == State.RUNNING and sched.value() == 1500.0


# -- a real site, a real broker, Mosquitto's clients as the EMS -------------------------------------------
def ask(port: int, doc_or_bytes) -> dict:
    payload = doc_or_bytes if isinstance(doc_or_bytes, bytes) else raw(doc_or_bytes)
    return exchange(port, [payload])[0]


def mms_output(site) -> tuple:
    c = LibIec61850Client("127.0.0.1", mms_port(site))
    try:
        return (c.read_float(f"{LD}/MaxPow_GGIO1.AnOut1.mxVal.f"),
                c.read_str(f"{LD}/MaxPow_FSCC1.ActSchdRef.stVal").rsplit("_", 1)[-1])
    finally:
        c.close()


def wait_for_output(site, expected: tuple, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = mms_output(site)
        if seen == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"output {seen}, expected {expected}")


def schedule_over_mms(site) -> dict:
    """FSCH01 as an MMS client reads it: settings, start times (ms, 0: none) and state."""
    c = Open61850Client("127.0.0.1", mms_port(site))
    try:
        out = {f: c.read_int(f"{FSCH}.{f}.setVal", "SP") for f in ("NumEntr", "SchdIntv", "SchdPrio")}
        out["values"] = [c.read_float(f"{FSCH}.ValASG{i:03d}.setMag.f", "SP") for i in (1, 2, 3)]
        out["starts"] = [c.read_time_ms(f"{FSCH}.StrTm{i:02d}.setTm", "SP") for i in range(1, 17)]
        out["state"] = c.read_int(f"{FSCH}.SchdSt.stVal")
        return out
    finally:
        c.close()


def run_now(site, port: int, values: list, **extra) -> dict:
    """A valid request starting in 2 s; returns once the site runs its first value."""
    reply = ask(port, request(values, int(time.time()) + 2, **extra))
    assert reply["accepted"] is True, reply
    wait_for_output(site, (float(values[0]), "FSCH01"))
    return reply


@pytest.fixture(scope="module")
def ems_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ems")
    broker = Mosquitto(free_port(), tmp).start()
    state, path = tmp / "state", tmp / "site.toml"
    ems = f'\n[[wan]]\nname = "ems"\nprotocol = "mqtt-ems"\nport = {broker.port}\nreconnect_delay = 0.2\n'
    path.write_text(small_topology(state, free_port(), functions=("MaxPow",), wan=ems))
    site = Site(path, state)
    env = {"site": site, "broker": broker, "tmp": tmp}
    try:
        site.start(timeout=60)
        yield env
        site.stop()
        assert site.leftovers() == []
    finally:
        site.kill_everything()
        env["broker"].stop()


def test_a_valid_request_is_accepted_and_its_schedule_runs(ems_site):
    site, port = ems_site["site"], ems_site["broker"].port
    start_s = int(time.time()) + 2
    reply = ask(port, request([4200, 3100], start_s, correlationId="first"))
    assert reply == {"accepted": True, "rule": "", "reason": "", "code": None, "field": None, "enaErr": None,
                     "request": {"start": {"seconds": start_s, "nanos": 0}, "resolution": "FIVE_MINUTES",
                                 "count": 2, "direction": "EXPORT"},
                     "schedule": "FSCH01", "der": "der1", "function": "MaxPow", "correlationId": "first"}
    s = schedule_over_mms(site)
    assert (s["NumEntr"], s["SchdIntv"], s["SchdPrio"], s["values"][:2]) == (2, 300, 20, [4200.0, 3100.0])
    assert sorted(s["starts"], reverse=True)[:2] == [start_s * 1000, 0]
    wait_for_output(site, (4200.0, "FSCH01"))
    assert schedule_over_mms(site)["state"] == 4
    site.wait_for("der1/MaxPow", lambda n: (n["detail"]["output"], n["detail"]["source"]) == (4200.0, "FSCH01"))
    detail = site.node("ems")["detail"]
    assert detail["connected"] is True and detail["accepted"] >= 1 and detail["target"] == "der1/MaxPow/FSCH01"


def test_a_request_starting_in_the_past_is_refused_with_the_rule_and_changes_nothing(ems_site):
    site, port = ems_site["site"], ems_site["broker"].port
    run_now(site, port, [2700])
    before, out_before = schedule_over_mms(site), mms_output(site)
    reply = ask(port, request([1, 2, 3], int(time.time()) - 60, correlationId=41))
    assert reply["accepted"] is False and reply["rule"] == "value" and reply["code"] == 11, reply
    assert "StrTm" in reply["reason"] and "future" in reply["reason"] and reply["correlationId"] == 41
    assert reply["request"]["count"] == 3
    assert schedule_over_mms(site) == before and mms_output(site) == out_before == (2700.0, "FSCH01")


def test_a_malformed_payload_is_refused_naming_the_field_and_the_next_request_is_served(ems_site):
    site, port = ems_site["site"], ems_site["broker"].port
    run_now(site, port, [1900])
    before = schedule_over_mms(site)
    malformed_before = site.node("ems")["detail"]["malformed"]
    good = request([5000], int(time.time()) + 60)
    replies = exchange(port, [b"<request>not json</request>",
                              raw({k: v for k, v in good.items() if k != "values"}),
                              raw({**good, "resolution": "HOURLY", "correlationId": "bad-res"})])
    assert [(r["accepted"], r["rule"], r["field"]) for r in replies] == [
        (False, "payload", "payload"), (False, "payload", "values"), (False, "payload", "resolution")]
    assert "not JSON" in replies[0]["reason"] and "missing" in replies[1]["reason"]
    assert "HOURLY" in replies[2]["reason"] and replies[2]["correlationId"] == "bad-res"
    assert all(r["code"] == 11 for r in replies)
    # Nothing accepted before is lost, and the endpoint serves the next request.
    assert schedule_over_mms(site) == before and mms_output(site) == (1900.0, "FSCH01")
    assert site.node("ems")["detail"]["malformed"] == malformed_before + 3
    run_now(site, port, [2100])


def test_a_second_request_replaces_the_first_while_it_runs(ems_site):
    site, port = ems_site["site"], ems_site["broker"].port
    run_now(site, port, [3000, 2500])
    start_s = int(time.time()) + 2
    reply = ask(port, request([1500], start_s, resolution="FIFTEEN_MINUTES"))
    assert reply["accepted"] is True, reply
    wait_for_output(site, (1500.0, "FSCH01"))
    s = schedule_over_mms(site)
    assert (s["NumEntr"], s["SchdIntv"], s["values"][0], s["state"]) == (1, 900, 1500.0, 4)
    assert [t for t in s["starts"] if t] == [start_s * 1000]   # the first request's start is gone


def test_requests_published_back_to_back_are_answered_in_order_and_the_last_one_wins(ems_site):
    site, port = ems_site["site"], ems_site["broker"].port
    start_s = int(time.time()) + 3
    replies = exchange(port, [raw(request([v], start_s, correlationId=f"r{v}")) for v in (111, 222, 333)])
    assert [(r["correlationId"], r["accepted"]) for r in replies] == [("r111", True), ("r222", True), ("r333", True)]
    wait_for_output(site, (333.0, "FSCH01"))
    assert schedule_over_mms(site)["NumEntr"] == 1


def test_after_kill_9_the_endpoint_comes_back_serving_and_the_running_schedule_is_untouched(ems_site):
    site, port = ems_site["site"], ems_site["broker"].port
    run_now(site, port, [2600, 2400])
    before = schedule_over_mms(site)
    pid = site.node("ems")["pid"]
    os.kill(pid, signal.SIGKILL)
    site.wait_for("ems", lambda n: n["state"] == "running" and n["pid"] != pid, timeout=20)
    assert schedule_over_mms(site) == before and mms_output(site) == (2600.0, "FSCH01")
    run_now(site, port, [2200])


def test_the_endpoint_serves_again_after_the_broker_restarts(ems_site):
    site = ems_site["site"]
    subscribed = site.node("ems")["detail"]["subscribed"]
    port = ems_site["broker"].port
    ems_site["broker"].stop()
    site.wait_for("ems", lambda n: n["detail"]["connected"] is False, timeout=10)
    ems_site["broker"] = Mosquitto(port, ems_site["tmp"]).start()
    site.wait_for("ems", lambda n: n["detail"]["subscribed"] > subscribed, timeout=15)
    assert site.node("ems")["state"] == "running"
    run_now(site, port, [1234])
