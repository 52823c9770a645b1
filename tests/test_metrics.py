"""Metrics (docs/observability.md): the pure part, status tree -> metric families and
counters that stay monotonic across restarts; the metrics address rule; and a running site
scraped over HTTP, its text checked with `promtool check metrics` and by value: a kill -9 of
an actor increments the restart counter of its kind, a refused write the refusals of its
party."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
import urllib.request

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relevent.observe import counters, extract
from relevent.observe.events import diff
from relevent.observe.observer import SiteCollector
from relevent.observe.serve import MetricsAddressError, metrics_address

NOW = 1_800_000_000_000


# -- a status tree, as SiteRunner.status() gives it ------------------------------------------------
def node(name, role, path=None, state="running", pid=100, restarts=0, causes=None, detail=None, children=None):
    return {"name": name, "path": name if path is None else path, "role": role, "pid": pid, "state": state,
            "restarts": restarts, "restart_causes": causes or {}, "uptime_s": 1.0, "last_error": "",
            "detail": detail or {}, "children": children}


def controller(der, kind, output, source, schedules, **kw):
    return node(kind, "controller", f"{der}/{kind}", detail={"kind": kind, "output": output, "source": source,
                                                              "schedules": schedules}, **kw)


def tree(*, refusals=None, mms_pid=200, mms_restarts=0, ctl_causes=None, der_pid=300, measured_at=NOW - 1000,
         contact=NOW - 2000, lateness=None, fsch01="NOT_READY", bat_lan_connected=True):
    mms = node("mms", "wan", pid=mms_pid, restarts=mms_restarts, causes={"killed": mms_restarts} if mms_restarts
               else {}, detail={"protocol": "mms", "serving": "127.0.0.1:10102", "contact_ms": contact,
                                "refusals": refusals or [],
                                "switch_lateness": lateness or {"le": [0.001, 0.01], "buckets": [0, 0],
                                                                "count": 0, "sum": 0.0}})
    pv1 = node("pv1", "der", pid=der_pid, detail={
        "lan": "mqtt", "command": {"setpoint_w": 3000.0, "limit_w": 10000.0, "connected": True},
        "measured": {"w": 2990.0, "connected": True, "at": measured_at, "quality": "good"}},
        children=[controller("pv1", "ActPow", 3000.0, "FSCH01", {"FSCH01": fsch01, "FSCH02": "NOT_READY",
                                                                 "Res_FSCH01": "RUNNING"},
                             pid=der_pid + 1, restarts=sum((ctl_causes or {}).values()), causes=ctl_causes),
                  controller("pv1", "OnOff", True, "Res_FSCH01", {"FSCH01": "NOT_READY", "Res_FSCH01": "RUNNING"},
                             pid=der_pid + 2)])
    lan = node("mqtt", "lan", detail={"protocol": "mqtt", "connected": bat_lan_connected})
    return node("site", "site", path="", pid=10, children=[mms, pv1, lan])


def scrape(tree_, totals=None, now=NOW):
    """The exposition text of the families of `tree_`, through prometheus-client."""
    collector = SiteCollector("t", "1.0", clock=lambda: now)
    collector.latest = (tree_, now - 500, totals if totals is not None else
                        counters.accumulate(counters.EMPTY, extract.readings(tree_))["totals"])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def values(text: str) -> dict:
    """{(sample name, frozenset of labels): value} of an exposition text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, metric: str, **labels) -> float | None:
    return values(text).get((metric, frozenset(labels.items())))


# -- pure: tree -> families ----------------------------------------------------------------------------
def test_every_family_from_one_tree():
    text = scrape(tree(refusals=[["aggregator", "band", 2], ["", "auth", 1]],
                       lateness={"le": [0.001, 0.01], "buckets": [3, 5], "count": 6, "sum": 0.05}))
    assert value(text, "relevent_actor_up", path="pv1/ActPow", kind="controller") == 1.0
    assert value(text, "relevent_actor_up", path="/", kind="site") == 1.0
    assert value(text, "relevent_der_setpoint_watts", der="pv1") == 3000.0
    assert value(text, "relevent_der_limit_watts", der="pv1") == 10000.0
    assert value(text, "relevent_der_measured_power_watts", der="pv1") == 2990.0
    assert value(text, "relevent_der_connected", der="pv1") == 1.0
    assert value(text, "relevent_controller_output", der="pv1", function="OnOff") == 1.0
    assert value(text, "relevent_controller_source_info", der="pv1", function="ActPow", schedule="FSCH01") == 1.0
    assert value(text, "relevent_schedules", der="pv1", function="ActPow", state="NOT_READY") == 2.0
    assert value(text, "relevent_schedules", der="pv1", function="ActPow", state="RUNNING") == 1.0
    assert value(text, "relevent_schedules", der="pv1", function="ActPow", state="READY") == 0.0
    assert value(text, "relevent_refusals_total", endpoint="mms", party="aggregator", rule="band") == 2.0
    assert value(text, "relevent_refusals_total", endpoint="mms", party="unrecognised", rule="auth") == 1.0
    assert value(text, "relevent_switch_lateness_seconds_bucket", endpoint="mms", le="0.001") == 3.0
    assert value(text, "relevent_switch_lateness_seconds_bucket", endpoint="mms", le="0.01") == 5.0
    assert value(text, "relevent_switch_lateness_seconds_bucket", endpoint="mms", le="+Inf") == 6.0
    assert value(text, "relevent_switch_lateness_seconds_count", endpoint="mms") == 6.0
    assert value(text, "relevent_switch_lateness_seconds_sum", endpoint="mms") == 0.05
    assert value(text, "relevent_build_info", site="t", version="1.0") == 1.0
    assert value(text, "relevent_observer_last_sample_timestamp_seconds") == (NOW - 500) / 1000


def test_links_follow_the_15_s_rule():
    fresh = scrape(tree(measured_at=NOW - 15_000, contact=NOW - 14_000))
    assert value(fresh, "relevent_link_up", link="device", name="pv1", via="mqtt") == 1.0
    assert value(fresh, "relevent_link_up", link="lan", name="mqtt", via="mqtt") == 1.0
    assert value(fresh, "relevent_link_up", link="wan", name="mms", via="mms") == 1.0
    assert value(fresh, "relevent_link_contact_age_seconds", link="wan", name="mms", via="mms") == 14.0
    assert value(fresh, "relevent_link_last_contact_timestamp_seconds", link="device", name="pv1",
                 via="mqtt") == (NOW - 15_000) / 1000
    stale = scrape(tree(measured_at=NOW - 15_001, contact=NOW - 16_000))
    assert value(stale, "relevent_link_up", link="device", name="pv1", via="mqtt") == 0.0
    assert value(stale, "relevent_link_up", link="lan", name="mqtt", via="mqtt") == 0.0  # its only device is silent
    assert value(stale, "relevent_link_up", link="wan", name="mms", via="mms") == 0.0
    assert value(stale, "relevent_der_measured_power_watts", der="pv1") is None  # too old to be shown as now
    never = scrape(tree(contact=0))
    assert value(never, "relevent_link_up", link="wan", name="mms", via="mms") == 0.0
    assert value(never, "relevent_link_contact_age_seconds", link="wan", name="mms", via="mms") is None
    broker_down = scrape(tree(bat_lan_connected=False))
    assert value(broker_down, "relevent_link_up", link="lan", name="mqtt", via="mqtt") == 0.0


def test_restarts_by_kind_and_cause_and_an_actor_down():
    t = tree(ctl_causes={"killed": 2, "hung": 1}, mms_restarts=1)
    t["children"][0]["state"] = "backoff"
    text = scrape(t)
    assert value(text, "relevent_actor_restarts_total", kind="controller", cause="killed") == 2.0
    assert value(text, "relevent_actor_restarts_total", kind="controller", cause="hung") == 1.0
    assert value(text, "relevent_actor_restarts_total", kind="wan", cause="killed") == 1.0
    assert value(text, "relevent_actor_up", path="mms", kind="wan") == 0.0
    # restarts a supervisor did not classify (an older build) still count
    t["children"][0]["restart_causes"] = {}
    assert value(scrape(t), "relevent_actor_restarts_total", kind="wan", cause="unknown") == 1.0


def test_no_tree_yet_gives_only_the_build_info():
    collector = SiteCollector("t", "1.0", clock=lambda: NOW)
    names = {f.name for f in collector.collect()}
    assert names == {"relevent_build_info"}


# -- pure: counters stay monotonic ------------------------------------------------------------------
def totals_after(*trees):
    memory = counters.EMPTY
    for t in trees:
        memory = counters.accumulate(memory, extract.readings(t))
    return memory["totals"]


def test_refusals_of_a_restarted_endpoint_add_up_instead_of_going_back():
    before = tree(refusals=[["aggregator", "band", 5]])
    # The endpoint restarted (new pid, one more restart): its session counts from 0 again.
    after = tree(refusals=[["aggregator", "band", 2]], mms_pid=201, mms_restarts=1)
    later = tree(refusals=[["aggregator", "band", 3]], mms_pid=201, mms_restarts=1)
    assert totals_after(before, after, later)[("refusals", "mms", "aggregator", "band")] == 8
    # the same incarnation never adds twice what it counted once
    assert totals_after(before, before, before)[("refusals", "mms", "aggregator", "band")] == 5
    # a sample where the endpoint is missing (no status) changes nothing
    gone = tree()
    gone["children"] = gone["children"][1:]
    assert totals_after(before, gone, before)[("refusals", "mms", "aggregator", "band")] == 5
    # a restart between two samples with as many refusals as before is still seen (owner changed)
    again = tree(refusals=[["aggregator", "band", 5]], mms_pid=202, mms_restarts=2)
    assert totals_after(before, again)[("refusals", "mms", "aggregator", "band")] == 10


def test_restart_counts_kept_by_a_restarted_supervisor_start_over():
    # The controller's restarts are kept by its DER; the DER restarts (new pid): they start at 0.
    t1 = tree(ctl_causes={"killed": 2})
    t2 = tree(ctl_causes={"killed": 1}, der_pid=400)
    t3 = tree(ctl_causes={"killed": 1, "crashed": 1}, der_pid=400)
    totals = totals_after(t1, t2, t3)
    assert totals[("restarts", "controller", "killed")] == 3
    assert totals[("restarts", "controller", "crashed")] == 1


def test_lateness_histogram_is_cumulative_across_endpoint_restarts():
    h1 = {"le": [0.001, 0.01], "buckets": [3, 5], "count": 6, "sum": 0.05}
    h2 = {"le": [0.001, 0.01], "buckets": [1, 1], "count": 2, "sum": 0.5}
    totals = totals_after(tree(lateness=h1), tree(lateness=h2, mms_pid=201, mms_restarts=1))
    text = scrape(tree(lateness=h2, mms_pid=201, mms_restarts=1), totals)
    assert value(text, "relevent_switch_lateness_seconds_bucket", endpoint="mms", le="0.001") == 4.0
    assert value(text, "relevent_switch_lateness_seconds_bucket", endpoint="mms", le="+Inf") == 8.0
    assert value(text, "relevent_switch_lateness_seconds_sum", endpoint="mms") == pytest.approx(0.55)


# -- pure: events -----------------------------------------------------------------------------------
def test_events_of_two_trees():
    before = tree(refusals=[["aggregator", "band", 1]], fsch01="READY")
    after = tree(refusals=[["aggregator", "band", 3]], fsch01="RUNNING", ctl_causes={"crashed": 1},
                 measured_at=NOW - 20_000)
    after["children"][2]["state"] = "backoff"
    got = {(e["kind"], e["subject"]): e for e in diff(before, after, NOW)}
    assert got[("schedule", "pv1/ActPow/FSCH01")]["detail"] == {"from": "READY", "to": "RUNNING"}
    assert got[("schedule", "pv1/ActPow/FSCH01")]["der"] == "pv1"
    assert got[("restart", "pv1/ActPow")]["detail"]["causes"] == {"crashed": 1}
    assert got[("link", "device/pv1")]["detail"]["up"] is False and got[("link", "device/pv1")]["der"] == "pv1"
    assert got[("actor", "mqtt")]["detail"] == {"from": "running", "to": "backoff", "last_error": ""}
    assert got[("refusal", "mms")]["detail"] == {"party": "aggregator", "rule": "band", "count": 2}
    assert diff(None, after, NOW) == [] and diff(after, after, NOW) == []


def test_actors_missing_from_one_tree_make_no_events():
    before = tree(ctl_causes={"killed": 1})
    gap = tree()
    gap["children"][1]["children"] = []   # the DER did not answer in time
    assert [e for e in diff(before, gap, NOW) if e["kind"] in ("actor", "restart")] == []
    assert [e for e in diff(gap, before, NOW) if e["kind"] in ("actor", "restart")] == []


# -- the address rule ---------------------------------------------------------------------------------
def test_metrics_address_is_loopback_unless_insecure_is_said():
    assert metrics_address({"metrics": "127.0.0.1:9108"}) == ("127.0.0.1", 9108)
    assert metrics_address({"metrics": "[::1]:9108"}) == ("::1", 9108)
    assert metrics_address({"metrics": "localhost:9"}) == ("localhost", 9)
    assert metrics_address({"metrics": ""}) is None
    with pytest.raises(MetricsAddressError, match="not a loopback address.*metrics_insecure = true"):
        metrics_address({"metrics": "0.0.0.0:9108"})
    assert metrics_address({"metrics": "0.0.0.0:9108", "metrics_insecure": True}) == ("0.0.0.0", 9108)


def test_a_site_with_metrics_beyond_loopback_is_refused_with_a_clear_error(tmp_path):
    from sitectl import free_port, small_topology
    path = tmp_path / "site.toml"
    path.write_text(small_topology(tmp_path / "state", free_port(), runtime='metrics = "0.0.0.0:9108"'))
    done = subprocess.run([sys.executable, "-m", "relevent", "run", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "is not a loopback address" in done.stderr, done.stderr
    assert "metrics_insecure = true" in done.stderr
    assert not (tmp_path / "state" / "relevent.pid").exists()   # refused before anything started


# -- a running site -----------------------------------------------------------------------------------
TOPOLOGY = """
[site]
name = "metrics{admin}"
state_dir = "{state}"

[runtime]
admin_port = {admin}
allow_fault_injection = true
metrics = "127.0.0.1:{metrics}"
sample_s = 0.3

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[[party]]
name = "aggregator"
http_token = "agg-token"

[[party]]
name = "customer"
http_token = "cust-token"
operations = ["read"]

[[wan]]
name = "http"
protocol = "http"
port = {http}
anonymous = "none"

[[wan]]
name = "mms"
protocol = "mms"
port = {mms}
party = "aggregator"

[[der]]
name = "der1"
functions = ["ActPow", "MaxPow"]
schedules = 2
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from sitectl import Site, free_port
    tmp = tmp_path_factory.mktemp("metrics")
    ports = {"metrics": free_port(), "http": free_port(), "mms": free_port(), "admin": free_port()}
    path = tmp / "site.toml"
    path.write_text(TOPOLOGY.format(state=tmp / "state", **ports))
    s = Site(path, tmp / "state")
    s.ports = ports
    try:
        s.start(timeout=60)
        yield s
        s.stop()
    finally:
        s.kill_everything()


def get_metrics(site) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{site.ports['metrics']}/metrics", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def wait_metric(site, predicate, timeout=15.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = get_metrics(site)
        if predicate(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"metric not reached in {timeout} s:\n{text}")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_the_scrape_of_a_running_site_passes_promtool(site):
    # The lateness histogram is there once the MMS endpoint has recorded a switch: on a loaded
    # machine, a scrape or two after the rest.
    text = wait_metric(site, lambda t: "relevent_der_setpoint_watts" in t and "relevent_link_up" in t
                       and "relevent_switch_lateness_seconds_bucket" in t)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert value(text, "relevent_actor_up", path="der1/ActPow", kind="controller") == 1.0
    assert value(text, "relevent_schedules", der="der1", function="MaxPow", state="RUNNING") == 1.0  # the reserve
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{site.ports['metrics']}/other", timeout=10)
    assert err.value.code == 404


def test_kill_9_increments_the_restart_counter_of_that_kind(site):
    def killed(text):
        return value(text, "relevent_actor_restarts_total", kind="controller", cause="killed") or 0.0
    before = killed(wait_metric(site, lambda t: "relevent_actor_up" in t))
    pid = site.node("der1/MaxPow")["pid"]
    os.kill(pid, signal.SIGKILL)
    text = wait_metric(site, lambda t: killed(t) >= before + 1)
    assert killed(text) == before + 1
    site.wait_for("der1/MaxPow", lambda n: n["state"] == "running" and n["pid"] != pid, timeout=10)
    assert site.node("der1/MaxPow")["restart_causes"].get("killed", 0) >= 1


def test_an_exception_and_a_hang_count_as_crashed_and_hung(site):
    def restarts(text, cause):
        return value(text, "relevent_actor_restarts_total", kind="controller", cause=cause) or 0.0
    before = wait_metric(site, lambda t: "relevent_actor_up" in t)
    site.fault("der1/ActPow", "raise")
    wait_metric(site, lambda t: restarts(t, "crashed") == restarts(before, "crashed") + 1)
    site.wait_for("der1/ActPow", lambda n: n["state"] == "running", timeout=10)
    site.fault("der1/ActPow", "hang")
    wait_metric(site, lambda t: restarts(t, "hung") == restarts(before, "hung") + 1)
    site.wait_for("der1/ActPow", lambda n: n["state"] == "running", timeout=10)


def test_a_refused_write_increments_that_partys_refusals(site):
    def refused(text, party="customer", rule="party:operation"):
        return value(text, "relevent_refusals_total", endpoint="http", party=party, rule=rule) or 0.0
    before = refused(wait_metric(site, lambda t: "relevent_actor_up" in t))
    url = f"http://127.0.0.1:{site.ports['http']}/api/v1/ders/der1/MaxPow/schedules/1"
    r = httpx.put(url, json={"priority": 1}, headers={"Authorization": "Bearer cust-token"}, timeout=15)
    assert r.status_code == 403 and r.json()["rule"] == "party:operation", r.text
    text = wait_metric(site, lambda t: refused(t) >= before + 1)
    assert refused(text) == before + 1
    assert refused(text, party="aggregator") == 0.0
    # the endpoint restarted (kill -9): the counter does not go back
    pid = site.node("http")["pid"]
    os.kill(pid, signal.SIGKILL)
    site.wait_for("http", lambda n: n["state"] == "running" and n["pid"] != pid, timeout=20)
    r = httpx.put(url, json={"priority": 1}, headers={"Authorization": "Bearer cust-token"}, timeout=15)
    assert r.status_code == 403
    text = wait_metric(site, lambda t: refused(t) >= before + 2)
    assert refused(text) == before + 2
    assert value(text, "relevent_actor_restarts_total", kind="wan", cause="killed") >= 1


def test_relevent_run_says_where_endpoints_and_metrics_are(site):
    out = site.log.read_text()
    name = f"metrics{site.ports['admin']}"
    assert f"site {name}: WAN http (http) listening on http://127.0.0.1:{site.ports['http']}/api/v1" in out
    assert f"site {name}: WAN mms (mms) listening on" in out and str(site.ports["mms"]) in out
    assert f"site {name}: metrics http://127.0.0.1:{site.ports['metrics']}/metrics" in out
    assert f"site {name}: history " in out


def test_the_observer_thread_runs_ten_nicer_than_the_runner(site):
    """Its work on each sample is background: on a busy host the MMS endpoints go first."""
    def nice(stat: Path) -> int:
        return int(stat.read_text().rpartition(")")[2].split()[16])  # field 19 of stat
    tasks = Path(f"/proc/{site.proc.pid}/task")
    threads = {(t / "comm").read_text().strip(): t for t in tasks.iterdir()}
    assert "observer" in threads, sorted(threads)
    runner = nice(tasks / str(site.proc.pid) / "stat")
    assert nice(threads["observer"] / "stat") == min(19, runner + 10)


def test_certificate_expiry_crl_next_update_and_registration_state_from_the_tree():
    t = tree()
    t["children"][0]["detail"]["tls"] = {"cert_not_after": "2027-01-02T03:04:05Z",
                                         "crls": [{"file": "/pki/crl.pem", "next_update": "2026-12-20T00:00:00Z"}]}
    t["children"].append(node("registration", "registration", detail={
        "state": "registered", "cert_expiry": "2027-06-01T00:00:00+00:00"}))
    text = scrape(t)
    assert value(text, "relevent_tls_certificate_expiry_timestamp_seconds", path="mms", which="site") == 1798859045.0
    assert value(text, "relevent_tls_certificate_expiry_timestamp_seconds", path="registration",
                 which="registered") == 1811808000.0
    assert value(text, "relevent_tls_crl_next_update_timestamp_seconds", path="mms", file="/pki/crl.pem") == 1797724800.0
    assert value(text, "relevent_registration_state", state="registered") == 1.0
    assert value(text, "relevent_registration_state", state="revoked") == 0.0
    plain = scrape(tree())   # no TLS, no registration: no series (the families stay empty)
    assert "relevent_registration_state" not in plain
    assert value(plain, "relevent_tls_certificate_expiry_timestamp_seconds", path="mms", which="site") is None


def test_device_refusals_add_up_across_an_endpoint_restart():
    def with_ocpp(pid, refused, rejections, errors):
        t = tree()
        t["children"].append(node("chargers", "lan", pid=pid, detail={
            "protocol": "ocpp", "refused": refused,
            "devices": {"ev1": {"rejections": rejections, "errors": errors, "link": "up"}}}))
        return t
    first = counters.accumulate(counters.EMPTY, extract.readings(with_ocpp(500, 2, 3, 1)))
    after = counters.accumulate(first, extract.readings(with_ocpp(501, 1, 1, 0)))   # restarted: counts from 0
    text = scrape(with_ocpp(501, 1, 1, 0), totals=after["totals"])
    assert value(text, "relevent_device_connections_refused_total", endpoint="chargers") == 3.0
    assert value(text, "relevent_device_commands_refused_total", endpoint="chargers", der="ev1",
                 outcome="rejected") == 4.0
    assert value(text, "relevent_device_commands_refused_total", endpoint="chargers", der="ev1", outcome="error") == 1.0
