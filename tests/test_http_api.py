"""The HTTP/JSON WAN endpoint (docs/http.md) against a real site: `relevent run` in its own
process, the endpoint's uvicorn in its actor, controllers in theirs, a simulated MQTT
device obeying the DER.  The client is httpx; an MMS client (open61850) writes what HTTP
cannot (NumEntr 0, a NaN value), so the 90-10 semantics are shown to be the same."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
from datetime import datetime, timezone

import httpx
import pytest

from mmsclients import Open61850Client
from relevent.cli import main
from sitectl import Site, free_port, now_ms, walk
from sitectl import running as _running

MMS_LD = "DER_Scheduler_der1Control"   # two DERs: one logical device each


def topology(state_dir, admin: int, http: int, broker: int | None = None, mms: int | None = None) -> str:
    """der1 (three functions) and der2 (4 value slots; its ActPow FSCH01 has its priority
    locked by the site).  The HTTP endpoint speaks for an aggregator.  With `broker`, an
    MQTT LAN endpoint with an embedded broker there and a simulated device obeying der1;
    with `mms`, an MMS endpoint on that port for a DSO."""
    lan = 'lan = "mqtt"' if broker else ""
    mms_endpoint = f"""
[[wan]]
name = "mms"
protocol = "mms"
port = {mms}
party = "dso"
""" if mms else ""
    devices = f"""
[[lan]]
name = "mqtt"
protocol = "mqtt"
port = {broker}
embedded_broker = true

[[simulator]]
name = "der1-device"
protocol = "mqtt-device"
port = {broker}
der = "der1"
rated_power_w = 10000.0
measure_period = 0.2
""" if broker else ""
    return f"""
[site]
name = "http{admin}"
state_dir = "{state_dir}"

[runtime]
admin_port = {admin}

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[[wan]]
name = "http"
protocol = "http"
port = {http}
party = "aggregator"
{mms_endpoint}
[[der]]
name = "der1"
type = "battery"
functions = ["ActPow", "MaxPow", "OnOff"]
schedules = 3
{lan}
address = "der1"
profile = "pivot"
rated_power_w = 10000
reserve = {{ ActPow = 0.0, MaxPow = 10000.0, OnOff = true }}

[[der]]
name = "der2"
functions = ["ActPow"]
schedules = 2
values = 4
{lan}
address = "der2"
profile = "pivot"
rated_power_w = 5000
locks = {{ ActPow = {{ FSCH01 = ["SchdPrio"] }} }}
{devices}"""


def new_site(tmp, name: str = "site", *, devices: bool = True, mms: bool = False) -> Site:
    """A site on free loopback ports (`site.ports`), not started yet."""
    ports = {"http": free_port(), **({"broker": free_port()} if devices else {}),
             **({"mms": free_port()} if mms else {})}
    path = tmp / f"{name}.toml"
    path.write_text(topology(tmp / f"{name}-state", free_port(), **ports))
    site = Site(path, tmp / f"{name}-state")
    site.ports = ports
    return site


def running(site: Site):
    """The site started, then stopped and checked to leave no process behind."""
    return _running(site, leftovers=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with running(new_site(tmp_path_factory.mktemp("http"))) as s:
        yield s


@pytest.fixture(scope="module")
def http(site):
    with httpx.Client(base_url=f"http://127.0.0.1:{site.ports['http']}", timeout=15) as client:
        yield client


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def schedule_url(der: str, kind: str, n) -> str:
    return f"/api/v1/ders/{der}/{kind}/schedules/{n}"


def put(http, der: str, kind: str, n, body: dict) -> httpx.Response:
    return http.put(schedule_url(der, kind, n), json=body)


def enable(http, der: str, kind: str, n) -> httpx.Response:
    return http.post(schedule_url(der, kind, n) + "/enable")


def wait_for(fetch, predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if predicate(last):
            return last
        time.sleep(0.05)
    raise AssertionError(f"not reached in {timeout} s; last: {last}")


def mms(site) -> Open61850Client:
    return Open61850Client("127.0.0.1", site.ports["mms"])


# -- reading ------------------------------------------------------------------------------------------
def test_get_ders_lists_the_sites_ders_with_their_functions_and_schedule_counts(http):
    r = http.get("/api/v1/ders")
    assert r.status_code == 200
    assert [(d["name"], d["functions"], d["schedules"]) for d in r.json()] == [
        ("der1", ["ActPow", "MaxPow", "OnOff"], 3), ("der2", ["ActPow"], 2)]
    assert r.json()[0]["type"] == "battery" and r.json()[0]["rated_power_w"] == 10000.0


def test_a_fresh_site_runs_the_reserve_and_shows_the_schedules_settings_and_state(http):
    out = http.get("/api/v1/ders/der1/ActPow").json()
    assert (out["unit"], out["source"], out["active_schedule"]) == (
        "W", "Res_FSCH01", "/api/v1/ders/der1/ActPow/schedules/reserve")
    reserve = http.get(schedule_url("der1", "OnOff", "reserve")).json()
    assert reserve["schedule"] == "Res_FSCH01" and reserve["state"] == "RUNNING" and reserve["value"] is True
    assert {"EnaReq", "DsaReq", "StrTm", "SchdPrio"} <= set(reserve["locked"])
    fresh = http.get(schedule_url("der1", "MaxPow", 3)).json()
    assert (fresh["state"], fresh["error"], fresh["entry"], fresh["next_start"]) == (
        "NOT_READY", {"code": 1, "name": "NONE"}, 0, None)


# -- writing and enabling --------------------------------------------------------------------------------
def test_a_put_then_enable_runs_the_schedule_and_the_ders_output_follows(site, http):
    start = now_ms() + 1500
    r = put(http, "der1", "ActPow", 1, {"values": [1000.0, 2000], "interval_s": 3600, "priority": 20,
                                         "start": iso(start)})
    assert r.status_code == 200, r.text
    written = r.json()
    assert (written["values"], written["num_entries"], written["interval_s"], written["priority"],
            written["start"]) == ([1000.0, 2000.0], 2, 3600, 20, [iso(start)])
    r = enable(http, "der1", "ActPow", 1)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "READY" and r.json()["next_start"] == iso(start)  # durable when answered
    out = wait_for(lambda: http.get("/api/v1/ders/der1/ActPow").json(), lambda o: o["source"] == "FSCH01")
    assert (out["output"], out["run_start"], out["active_schedule"]) == (
        1000.0, iso(start), "/api/v1/ders/der1/ActPow/schedules/1")
    s = http.get(schedule_url("der1", "ActPow", 1)).json()
    assert (s["state"], s["entry"], s["value"], s["active_start"]) == ("RUNNING", 1, 1000.0, iso(start))
    # The device obeys, and its measurement comes back under the function.
    out = wait_for(lambda: http.get("/api/v1/ders/der1/ActPow").json(),
                   lambda o: (o["measurement"] or {}).get("w") == 1000.0, timeout=15)
    assert out["measurement"]["source"] == "mqtt"
    site.wait_for("der1-device", lambda n: n["detail"]["w"] == 1000.0, timeout=10)


def test_disable_stops_the_schedule_and_the_output_falls_back_to_the_reserve(http):
    start = now_ms() + 1000
    assert put(http, "der1", "MaxPow", 2, {"values": [4000.0], "interval_s": 3600, "priority": 20,
                                            "start": iso(start)}).status_code == 200
    assert enable(http, "der1", "MaxPow", 2).status_code == 200
    wait_for(lambda: http.get("/api/v1/ders/der1/MaxPow").json(), lambda o: o["source"] == "FSCH02")
    r = http.post(schedule_url("der1", "MaxPow", 2) + "/disable")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "NOT_READY"
    out = wait_for(lambda: http.get("/api/v1/ders/der1/MaxPow").json(), lambda o: o["source"] == "Res_FSCH01")
    assert out["output"] == 10000.0


def test_times_are_accepted_with_any_offset_and_answered_in_utc(http):
    r = put(http, "der1", "MaxPow", 3, {"start": ["2031-06-01T08:00:00+02:00", "2031-06-02T06:00:00.250Z"]})
    assert r.status_code == 200, r.text
    assert r.json()["start"] == ["2031-06-01T06:00:00Z", "2031-06-02T06:00:00.250000Z"]
    r = put(http, "der1", "MaxPow", 3, {"start": "2031-07-01T00:00:00-05:00"})  # one start: the rest cleared
    assert r.json()["start"] == ["2031-07-01T05:00:00Z"]
    r = put(http, "der1", "MaxPow", 3, {"start": []})
    assert r.json()["start"] == []


# -- refusals ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("der, n, body, code, name", [
    ("der2", 2, None, 2, "NUM_ENTR"),               # a fresh schedule: NumEntr 100, der2 has 4 value slots
    ("der1", 3, {"interval_s": 0}, 3, "SCHD_INTV"),
    ("der1", 3, {"start": []}, 6, "STR_TM"),        # no start time
], ids=["NumEntr", "SchdIntv", "StrTm"])
def test_an_enable_that_fails_validation_answers_409_with_the_SchdEnaErr_code(http, der, n, body, code, name):
    if body is not None:
        valid = {"values": [1.0, 2.0], "interval_s": 60, "priority": 1, "start": iso(now_ms() + 3_600_000)}
        assert put(http, der, "ActPow", n, valid | body).status_code == 200
    r = enable(http, der, "ActPow", n)
    assert r.status_code == 409, r.text
    assert r.json() | {"error": ""} == {"error": "", "rule": "SchdEnaErr", "code": code, "name": name, "field": None}
    s = http.get(schedule_url(der, "ActPow", n)).json()
    assert s["state"] == "NOT_READY" and s["error"] == {"code": code, "name": name}


def test_a_start_in_the_past_answers_422_and_changes_nothing(http):
    before = http.get(schedule_url("der1", "MaxPow", 3)).json()
    r = put(http, "der1", "MaxPow", 3, {"values": [1.0], "start": iso(now_ms() - 60_000)})
    assert r.status_code == 422, r.text
    assert r.json() == {"error": "StrTm01 must lie in the future", "rule": "value", "code": 11,
                        "name": "VALUE_INVALID", "field": "body.start.0"}
    assert http.get(schedule_url("der1", "MaxPow", 3)).json() == before  # all or nothing


def test_writing_a_locked_field_answers_403_and_nothing_of_the_request_is_written(http):
    before = http.get(schedule_url("der2", "ActPow", 1)).json()
    assert before["locked"] == ["SchdPrio"]
    r = put(http, "der2", "ActPow", 1, {"values": [7.0], "priority": 50})
    assert r.status_code == 403, r.text
    assert r.json() | {"error": ""} == {"error": "", "rule": "lock:SchdPrio", "code": 3, "name": "ACCESS_DENIED",
                                        "field": "body.priority"}
    assert http.get(schedule_url("der2", "ActPow", 1)).json() == before
    assert put(http, "der2", "ActPow", 1, {"values": [7.0]}).status_code == 200  # the rest is writable


def test_the_reserve_cannot_be_enabled_disabled_or_moved(http):
    for op in ("enable", "disable"):
        r = http.post(schedule_url("der1", "ActPow", "reserve") + f"/{op}")
        assert r.status_code == 403 and r.json()["rule"] == ("lock:EnaReq" if op == "enable" else "lock:DsaReq")
    r = put(http, "der1", "ActPow", "reserve", {"start": iso(now_ms() + 60_000)})
    assert r.status_code == 403 and r.json()["rule"] == "lock:StrTm" and r.json()["field"] == "body.start"


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/v1/ders/nope/ActPow"),
    ("GET", "/api/v1/ders/nope/ActPow/schedules/1"),
    ("PUT", "/api/v1/ders/nope/ActPow/schedules/1"),
    ("POST", "/api/v1/ders/nope/ActPow/schedules/1/enable"),
    ("GET", "/api/v1/ders/nope/ActPow/forecast"),
])
def test_an_unknown_der_answers_404(http, method, path):
    r = http.request(method, path, json={"priority": 1} if method == "PUT" else None)
    assert r.status_code == 404, r.text
    assert r.json()["rule"] == "unknown" and r.json()["field"] == "path.der"


def test_an_unknown_function_or_schedule_answers_4xx_naming_it(http):
    r = http.get("/api/v1/ders/der2/MaxPow")          # a 90-10 function der2 does not have
    assert r.status_code == 404 and r.json()["field"] == "path.function"
    r = http.get("/api/v1/ders/der2/Power")           # not a 90-10 function
    assert r.status_code == 422 and r.json()["field"] == "path.function"
    r = http.get(schedule_url("der2", "ActPow", 3))   # der2 has two schedules per function
    assert r.status_code == 404 and r.json()["field"] == "path.n"
    r = http.get(schedule_url("der2", "ActPow", "FSCH01"))
    assert r.status_code == 422 and r.json()["field"] == "path.n"


@pytest.mark.parametrize("content, field", [
    (b'{"values": [1.0,', "body"),                                 # not JSON
    (b'{"values": [NaN]}', "body.values.0"),                         # Python's json reads NaN: refused
    (b'{"values": [1e999]}', "body.values.0"),                       # infinity
    (b'{"values": [1.0, "2"]}', "body.values.1"),                    # a string
    (b'{"values": [true]}', "body.values.0"),                        # ActPow values are W
    (b'{"values": []}', "body.values"),
    (b'{"interval_s": 1.5}', "body.interval_s"),
    (b'{"interval_s": "60"}', "body.interval_s"),
    (b'{"interval_s": 4294967296}', "body.interval_s"),              # INT32
    (b'{"priority": true}', "body.priority"),
    (b'{"reuse": "yes"}', "body.reuse"),
    (b'{"start": "2031-01-01T00:00:00"}', "body.start"),            # naive: refused
    (b'{"start": ["2031-01-01T00:00:00Z", "2031-01-02T00:00:00"]}', "body.start.1"),
    (b'{"start": 1924992000000}', "body.start"),                     # ms: not ISO 8601
    (b'{"start": ["2031-01-01T00:00:00Z", "tomorrow"]}', "body.start.1"),
    (b'{"start": "2200-01-01T00:00:00Z"}', "body.start.0"),          # beyond MMS UtcTime
    (b'{"interval": 60}', "body.interval"),                          # unknown field
    (b'[1, 2]', "body"),
])
def test_a_malformed_body_answers_4xx_naming_the_field(http, content, field):
    before = http.get(schedule_url("der1", "ActPow", 2)).json()
    r = http.put(schedule_url("der1", "ActPow", 2), content=content, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["field"] == field and r.json()["rule"] == "request" and r.json()["code"] == 11, r.json()
    assert field in r.json()["error"]
    assert http.get(schedule_url("der1", "ActPow", 2)).json() == before


def test_more_values_than_the_ders_value_slots_answers_422(http):
    r = put(http, "der2", "ActPow", 1, {"values": [1.0] * 5})
    assert r.status_code == 422 and r.json()["field"] == "body.values" and "at most 4" in r.json()["error"]


def test_a_body_without_a_json_content_type_is_refused_and_says_so(http):
    r = http.put(schedule_url("der1", "ActPow", 2), content=b'{"priority": 1}',
                 headers={"content-type": "application/x-www-form-urlencoded"})  # curl -d's default
    assert r.status_code == 422 and "application/json" in r.json()["error"]


# -- forecast, document, status ------------------------------------------------------------------------------
def test_the_forecast_shows_the_schedules_values(http):
    start = (now_ms() // 1000 + 3600) * 1000
    assert put(http, "der1", "MaxPow", 1, {"values": [5000.0, 6000.0, 7000.0], "interval_s": 600, "priority": 30,
                                            "start": iso(start)}).status_code == 200
    assert enable(http, "der1", "MaxPow", 1).status_code == 200
    r = http.get("/api/v1/ders/der1/MaxPow/forecast", params={"hours": 2})
    assert r.status_code == 200, r.text
    events = [(e["at"], e["value"], e["source"]) for e in r.json()]
    assert events[0][1:] == (10000.0, "Res_FSCH01")   # in force now
    assert events[1:] == [(iso(start), 5000.0, "FSCH01"), (iso(start + 600_000), 6000.0, "FSCH01"),
                          (iso(start + 1_200_000), 7000.0, "FSCH01"), (iso(start + 1_800_000), 10000.0, "Res_FSCH01")]
    assert http.get("/api/v1/ders/der1/MaxPow/forecast", params={"hours": 0}).status_code == 422
    assert http.get("/api/v1/ders/der1/MaxPow/forecast", params={"hours": 169}).status_code == 422


def test_the_openapi_document_is_3_1_and_lists_every_path(http):
    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    from relevent import __version__
    assert doc["info"]["version"] == __version__   # which relevent serves it (issue 22)
    ops = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert ops == {
        ("/api/v1/ders", "get"),
        ("/api/v1/audit", "get"),
        ("/api/v1/history/{der}", "get"),
        ("/api/v1/ders/{der}/{function}", "get"),
        ("/api/v1/ders/{der}/{function}/schedules/{n}", "get"),
        ("/api/v1/ders/{der}/{function}/schedules/{n}", "put"),
        ("/api/v1/ders/{der}/{function}/schedules/{n}/enable", "post"),
        ("/api/v1/ders/{der}/{function}/schedules/{n}/disable", "post"),
        ("/api/v1/ders/{der}/{function}/forecast", "get"),
    }
    put_op = doc["paths"]["/api/v1/ders/{der}/{function}/schedules/{n}"]["put"]
    assert {"403", "404", "422"} <= set(put_op["responses"])


def test_relevent_status_shows_the_endpoint_serving_and_counting_requests(site, http):
    http.get("/api/v1/ders")
    detail = site.node("http")["detail"]
    assert detail["listening"] is True and detail["serving"] == f"http://127.0.0.1:{site.ports['http']}/api/v1"
    assert detail["http"]["requests"] > 0 and detail["http"]["refused"] > 0 and detail["party"] == "aggregator"


# Every node of `relevent status --json` (relevent/runtime/runner.py status; docs/observability.md).
NODE_KEYS = {"name", "path", "role", "pid", "state", "restarts", "restart_causes", "uptime_s", "last_error",
             "detail", "children"}


def test_relevent_status_json_gives_every_actor_its_name_path_role_pid_state_restarts_uptime_error_and_children(
        site, capsys):
    """README "Operations": `relevent status FILE [--json]`: the actor tree as JSON, each node
    with the keys the table shows (and docs/observability.md's restart_causes), children nested."""
    assert main(["status", str(site.topology), "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["ok"] is True and reply["site"].startswith("http")
    assert {"site", "version", "runner_pid", "tree"} <= set(reply)
    tree = reply["tree"]
    assert tree["role"] == "site" and tree["path"] == "" and tree["state"] == "running"
    nodes = list(walk(tree))
    for node in nodes:
        assert set(node) >= NODE_KEYS, (node["path"], NODE_KEYS - set(node))
        assert isinstance(node["name"], str) and isinstance(node["path"], str) and isinstance(node["role"], str)
        assert isinstance(node["pid"], int) and node["pid"] > 0, node["path"]
        assert isinstance(node["restarts"], int) and isinstance(node["restart_causes"], dict)
        assert isinstance(node["uptime_s"], (int, float)) and node["uptime_s"] >= 0, node["path"]
        assert isinstance(node["last_error"], str) and isinstance(node["detail"], dict)
        assert node["children"] is None or isinstance(node["children"], list)   # None: not a supervisor
    by_path = {n["path"]: n for n in nodes}
    assert {"http", "der1", "der1/ActPow", "der1/MaxPow", "der1/OnOff", "der2", "der2/ActPow"} <= set(by_path)
    assert by_path["der1"]["role"] == "der" and by_path["der1/ActPow"]["role"] == "controller"
    assert by_path["der1/ActPow"] in by_path["der1"]["children"]   # nested under its DER
    assert by_path["der1"] in tree["children"] and by_path["der1/ActPow"]["children"] is None
    assert by_path["der1/ActPow"]["name"] == "ActPow" and by_path["http"]["role"] == "wan"
    assert all(n["state"] == "running" for n in nodes), [(n["path"], n["state"]) for n in nodes]


def test_relevent_fault_is_refused_when_the_site_does_not_allow_fault_injection(site, capsys):
    """README "Operations": `relevent fault` (only with `allow_fault_injection = true`); this
    site leaves it at its default, false."""
    before, root = site.node("der1"), site.call({"op": "status"})["tree"]
    assert main(["fault", str(site.topology), "der1", "raise"]) == 1
    assert "fault injection is disabled" in capsys.readouterr().err
    assert main(["fault", str(site.topology), "", "segfault"]) == 1   # nor at the site supervisor
    assert "fault injection is disabled" in capsys.readouterr().err
    time.sleep(0.5)   # a fault let through would have crashed der1 (heartbeat 0.1/0.4 s) by now
    after = site.node("der1")
    assert (after["pid"], after["restarts"], after["state"]) == (before["pid"], before["restarts"], "running")
    assert site.call({"op": "status"})["tree"]["pid"] == root["pid"]


def test_a_port_already_taken_crashes_the_endpoint_with_the_reason(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    ports = {"http": taken.getsockname()[1]}
    path = tmp_path / "taken.toml"
    path.write_text(topology(tmp_path / "state", free_port(), **ports))
    site = Site(path, tmp_path / "state")
    try:
        with pytest.raises((TimeoutError, RuntimeError)):  # the site never gets fully running
            site.start(timeout=4, keep_on_failure=True)
        node = site.wait_for("http", lambda n: "cannot listen on" in (n["last_error"] or ""), timeout=10)
        assert f"cannot listen on 127.0.0.1:{ports['http']}: Address already in use" in node["last_error"]
    finally:
        site.stop()
        site.kill_everything()
        taken.close()


def test_after_kill_9_the_endpoint_comes_back_on_its_port_with_every_schedule_as_it_was(site, http):
    urls = [schedule_url("der1", kind, n) for kind in ("ActPow", "MaxPow", "OnOff") for n in (1, 2, 3, "reserve")]
    moving = ("entry", "value", "active_start", "next_start")  # a running schedule moves on meanwhile

    def every_schedule() -> list:
        return [{k: v for k, v in http.get(u).json().items() if k not in moving} for u in urls]

    before = every_schedule()
    pid = site.node("http")["pid"]
    os.kill(pid, signal.SIGKILL)
    site.wait_for("http", lambda n: n["state"] == "running" and n["pid"] != pid, timeout=20)
    assert every_schedule() == before  # Ready means listening, with the controllers' states


def test_when_no_schedule_runs_the_output_reads_null_and_the_site_keeps_running(tmp_path):
    """The reserve runs 1 s per period once written so (its values and SchdIntv are writable,
    over MMS too): then no schedule runs, the output is null, and nothing may crash."""
    with running(new_site(tmp_path, "idle")) as s, \
            httpx.Client(base_url=f"http://127.0.0.1:{s.ports['http']}", timeout=15) as c:
        assert put(c, "der1", "ActPow", "reserve", {"values": [1.0], "interval_s": 1}).status_code == 200
        out = wait_for(lambda: c.get("/api/v1/ders/der1/ActPow").json(), lambda o: o["source"] is None)
        assert out["output"] is None and out["active_schedule"] is None
        # A marker, not a sleep: der1 has taken five more measurements of its device (0.2 s
        # each) since, so the DER and the LAN endpoint went on working with the null output.
        since = now_ms()
        s.wait_for("der1", lambda n: (n["detail"].get("measured") or {}).get("at", 0) >= since + 1000, timeout=20)
        assert [(n["path"], n["last_error"]) for n in walk(s.tree()) if n["restarts"]] == []


# -- the same schedules over MMS ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mms_site(tmp_path_factory):
    with running(new_site(tmp_path_factory.mktemp("http-mms"), "mms", devices=False, mms=True)) as s:
        yield s


@pytest.fixture(scope="module")
def http_mms(mms_site):
    with httpx.Client(base_url=f"http://127.0.0.1:{mms_site.ports['http']}", timeout=15) as client:
        yield client


def mms_reads(c: Open61850Client, ref: str) -> tuple:
    return (c.read_int(f"{ref}.NumEntr.setVal", "SP"), c.read_int(f"{ref}.SchdPrio.setVal", "SP"),
            c.read_float(f"{ref}.ValASG002.setMag.f", "SP"))


def test_a_schedule_written_over_http_reads_the_same_over_mms(mms_site, http_mms):
    r = put(http_mms, "der1", "OnOff", 2, {"values": [True, False, True], "interval_s": 60, "priority": 7,
                                            "start": iso(now_ms() + 3_600_000)})
    assert r.status_code == 200, r.text
    c = mms(mms_site)
    try:  # the MMS endpoint has it once the controller's state reaches it
        ref = f"{MMS_LD}/OnOff_FSCH02"
        wait_for(lambda: (c.read_int(f"{ref}.NumEntr.setVal", "SP"), c.read_int(f"{ref}.SchdPrio.setVal", "SP"),
                          c.read_bool(f"{ref}.ValSPG002.setVal", "SP")), lambda got: got == (3, 7, False))
    finally:
        c.close()


@pytest.mark.parametrize("what, code, name", [("NumEntr 0", 2, "NUM_ENTR"), ("NaN", 4, "VALUES")])
def test_what_only_mms_can_write_fails_an_http_enable_with_the_same_SchdEnaErr(mms_site, http_mms, what, code, name):
    """HTTP cannot write these (its NumEntr is len(values); NaN is refused): an MMS client can."""
    body = {"values": [1.0, 2.0], "interval_s": 60, "priority": 1, "start": iso(now_ms() + 3_600_000)}
    assert put(http_mms, "der1", "ActPow", 3, body).status_code == 200
    c = mms(mms_site)
    try:
        ref = f"{MMS_LD}/ActPow_FSCH03"
        wait_for(lambda: mms_reads(c, ref), lambda got: got == (2, 1, 2.0))  # the HTTP write is in: no race
        if what == "NumEntr 0":
            assert c.write_int(f"{ref}.NumEntr.setVal", 0) is None
        else:
            assert c.write_float(f"{ref}.ValASG002.setMag.f", math.nan) is None
    finally:
        c.close()
    # HTTP shows it once the controller has it; NaN reads as null (JSON has no NaN).
    expected = [] if what == "NumEntr 0" else [1.0, None]
    wait_for(lambda: http_mms.get(schedule_url("der1", "ActPow", 3)).json()["values"], lambda v: v == expected)
    r = enable(http_mms, "der1", "ActPow", 3)
    assert r.status_code == 409, r.text
    assert (r.json()["rule"], r.json()["code"], r.json()["name"]) == ("SchdEnaErr", code, name)
