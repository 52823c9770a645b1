"""Every WAN protocol at once on the same DER: a schedule written over one is the same
schedule over the others, priorities arbitrate across them, and kill -9 of one WAN
endpoint leaves the others answering and every schedule intact.

Peers are not our code: httpx for HTTP, the open61850 and libiec61850 MMS clients, and
Mosquitto's own mosquitto_pub against a real Mosquitto broker for the local EMS."""
from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timezone

import httpx
import pytest

from lanctl import Mosquitto, exchange
from mmsclients import LibIec61850Client, Open61850Client
from sitectl import Site, free_port, now_ms

LD = "DER_Scheduler_Control"
EMS_SCHEDULE = 3     # the EMS writes ActPow FSCH03 at priority 40


def topology(state_dir, admin: int, mms: int, http: int, broker: int) -> str:
    return f"""
[site]
name = "together{admin}"
state_dir = "{state_dir}"

[runtime]
admin_port = {admin}

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[[wan]]
name = "mms"
protocol = "mms"
port = {mms}
party = "dso"

[[wan]]
name = "http"
protocol = "http"
port = {http}
party = "aggregator"

[[wan]]
name = "ems"
protocol = "mqtt-ems"
port = {broker}
party = "customer-ems"
function = "ActPow"
schedule = {EMS_SCHEDULE}
priority = 40

[[der]]
name = "der1"
functions = ["ActPow", "MaxPow", "OnOff"]
schedules = 3
lan = "mqtt"
rated_power_w = 10000

[[lan]]
name = "mqtt"
protocol = "mqtt"
port = {broker}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("together")
    broker = Mosquitto(free_port(), tmp).start()
    ports = {"mms": free_port(), "http": free_port(), "broker": broker.port}
    path = tmp / "site.toml"
    path.write_text(topology(tmp / "state", free_port(), **ports))
    s = Site(path, tmp / "state")
    try:
        s.start(timeout=60)
        s.ports = ports
        yield s
        s.stop()
        assert s.leftovers() == []
    finally:
        s.kill_everything()
        broker.stop()


def api(site, path: str = "") -> str:
    return f"http://127.0.0.1:{site.ports['http']}/api/v1/ders/der1{path}"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def http_schedule(site, n, values, prio, start_ms, interval_s=3600) -> dict:
    body = {"values": values, "interval_s": interval_s, "priority": prio, "start": iso(start_ms)}
    r = httpx.put(api(site, f"/ActPow/schedules/{n}"), json=body, timeout=10)
    assert r.status_code == 200, r.text
    r = httpx.post(api(site, f"/ActPow/schedules/{n}/enable"), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def mms_schedule(site, n: int, values, prio, start_ms, interval_s=3600) -> None:
    c = Open61850Client("127.0.0.1", site.ports["mms"])
    ref = f"{LD}/ActPow_FSCH{n:02d}"
    try:
        assert c.write_int(f"{ref}.NumEntr.setVal", len(values)) is None
        assert c.write_int(f"{ref}.SchdIntv.setVal", interval_s) is None
        assert c.write_int(f"{ref}.SchdPrio.setVal", prio) is None
        for i, v in enumerate(values, start=1):
            assert c.write_float(f"{ref}.ValASG{i:03d}.setMag.f", v) is None
        assert c.write_time(f"{ref}.StrTm01.setTm", start_ms) is None
        ok, cause = c.operate(f"{ref}.EnaReq", True)
        assert ok, cause
    finally:
        c.close()


def ems_request(site, values, start_s: int) -> dict:
    """A HEDERA request published with mosquitto_pub, its reply read with mosquitto_sub."""
    payload = {"skipHedera": True, "direction": "EXPORT", "start": {"seconds": start_s, "nanos": 0},
               "resolution": "FIFTEEN_MINUTES", "values": values}
    return exchange(site.ports["broker"], [json.dumps(payload).encode()])[0]


def output(site) -> tuple:
    got = httpx.get(api(site, "/ActPow"), timeout=10).json()
    return got["output"], got["source"]


def wait_for_output(site, value, source, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = output(site)
        if seen == (value, source):
            return
        time.sleep(0.05)
    raise AssertionError(f"output {seen}, expected {(value, source)}")


def mms_output(site) -> tuple:
    c = LibIec61850Client("127.0.0.1", site.ports["mms"])
    try:
        return (c.read_float(f"{LD}/ActPow_GGIO1.AnOut1.mxVal.f"),
                c.read_str(f"{LD}/ActPow_FSCC1.ActSchdRef.stVal").rsplit("_", 1)[-1])
    finally:
        c.close()


def every_schedule(site) -> dict:
    out = {}
    for n in ["1", "2", "3", "reserve"]:
        s = httpx.get(api(site, f"/ActPow/schedules/{n}"), timeout=10).json()
        out[n] = {k: s[k] for k in ("values", "interval_s", "priority", "start", "state")}
    return out


def test_a_schedule_written_over_http_is_the_same_schedule_over_mms(site):
    start = now_ms() + 1500
    http_schedule(site, 1, [1000.0, 2000.0], 20, start)
    c = Open61850Client("127.0.0.1", site.ports["mms"])
    try:
        ref = f"{LD}/ActPow_FSCH01"
        assert c.read_int(f"{ref}.NumEntr.setVal", "SP") == 2
        assert c.read_int(f"{ref}.SchdPrio.setVal", "SP") == 20
        assert c.read_float(f"{ref}.ValASG002.setMag.f", "SP") == 2000.0
        # The MMS endpoint hears the enable from the controller, in parallel with the HTTP
        # answer: within milliseconds, not necessarily before the HTTP client reads.
        deadline = time.monotonic() + 2.0
        while c.read_int(f"{ref}.SchdSt.stVal") not in (3, 4) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.read_int(f"{ref}.SchdSt.stVal") in (3, 4)
    finally:
        c.close()
    wait_for_output(site, 1000.0, "FSCH01")
    assert mms_output(site) == (1000.0, "FSCH01")


def test_a_schedule_written_over_mms_reads_the_same_over_http(site):
    start = now_ms() + 60_000   # ready, not running yet: it must not change the output
    mms_schedule(site, 2, [3000.0], 10, start)
    s = httpx.get(api(site, "/ActPow/schedules/2"), timeout=10).json()
    assert s["values"] == [3000.0] and s["priority"] == 10 and s["state"] == "READY"
    assert s["start"] == [iso(start)]


def test_priorities_arbitrate_across_protocols(site):
    wait_for_output(site, 1000.0, "FSCH01")                     # HTTP's schedule at 20
    mms_schedule(site, 2, [3000.0], 30, now_ms() + 1000)         # MMS at 30 wins
    wait_for_output(site, 3000.0, "FSCH02")
    reply = ems_request(site, [500.0], int(time.time()) + 2)     # the EMS at 40 wins
    assert reply["accepted"] is True, reply
    wait_for_output(site, 500.0, f"FSCH{EMS_SCHEDULE:02d}")
    assert mms_output(site) == (500.0, f"FSCH{EMS_SCHEDULE:02d}")
    r = httpx.post(api(site, f"/ActPow/schedules/{EMS_SCHEDULE}/disable"), timeout=10)  # HTTP can end it
    assert r.status_code == 200, r.text
    wait_for_output(site, 3000.0, "FSCH02")


def test_an_ems_request_refused_by_the_rules_says_why_and_changes_nothing(site):
    before = every_schedule(site)
    reply = ems_request(site, [1.0], int(time.time()) - 3600)
    assert reply["accepted"] is False and reply["rule"] == "value", reply
    assert every_schedule(site) == before


@pytest.mark.parametrize("victim", ["mms", "http", "ems"])
def test_kill_9_of_one_wan_endpoint_leaves_the_others_answering_and_every_schedule_intact(site, victim):
    before = every_schedule(site)
    out_before = output(site)
    pid = site.node(victim)["pid"]
    os.kill(pid, signal.SIGKILL)
    # The others answer while it is down or restarting.
    if victim != "http":
        assert output(site) == out_before
    if victim != "mms":
        assert mms_output(site) == out_before
    site.wait_for(victim, lambda n: n["state"] == "running" and n["pid"] != pid, timeout=20)
    deadline = time.monotonic() + 10
    while True:
        try:
            after = every_schedule(site)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert after == before
    assert output(site) == out_before and mms_output(site) == out_before
