"""Topology files: interpolation, validation with file and line, `relevent check`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relevent.topology import TopologyError, load_topology, parse_topology
from relevent.topology.edit import EditError, add_endpoint, parse_snippet, remove_endpoint

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "topologies").glob("*.toml"))

GOOD = """\
[site]
name = "s"
state_dir = "/tmp/s"

[[wan]]
name = "mms"
protocol = "mms"
port = 10102

[[lan]]
name = "mqtt"
protocol = "mqtt"

[[der]]
name = "pv1"
lan = "mqtt"
rated_power_w = 5000
"""


def problems(text: str, env: dict | None = None) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "site.toml", env=env or {})
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_topologies_are_valid(path):
    topo = load_topology(path, env={})
    assert topo.name
    assert topo.state_dir.is_absolute()


def test_defaults_are_filled_in():
    data = parse_topology(GOOD, env={}).data
    assert data["runtime"] == {"base": "multiprocTCPBase", "admin_port": 19500, "convention_leader": "",
                               "private_network": "", "allow_fault_injection": False, "log_level": "INFO", "stop_timeout": 20.0,
                               "controller_isolation": "process", "ders_per_process": 1, "metrics": "",
                               "metrics_insecure": False,
                               "history_days": 7.0, "sample_s": 5.0}
    assert data["der"][0]["functions"] == ["ActPow", "MaxPow", "OnOff"]
    assert data["der"][0]["schedules"] == 10
    assert data["wan"][0]["address"] == "127.0.0.1"
    assert data["supervision"]["der"]["strategy"] == "one_for_one"


def test_interpolation_from_environment_with_defaults_and_typed_values():
    text = GOOD.replace("port = 10102", 'port = "${MMS_PORT:-10102}"').replace(
        'state_dir = "/tmp/s"', 'state_dir = "${STATE:-/tmp/default}/x"')
    data = parse_topology(text, env={}).data
    assert data["wan"][0]["port"] == 10102 and data["site"]["state_dir"] == "/tmp/default/x"
    data = parse_topology(text, env={"MMS_PORT": "10200", "STATE": "/srv"}).data
    assert data["wan"][0]["port"] == 10200 and data["site"]["state_dir"] == "/srv/x"
    # An empty variable takes the default; ${VAR} without default must be set.
    assert parse_topology(text, env={"MMS_PORT": ""}).data["wan"][0]["port"] == 10102
    assert problems(GOOD.replace('name = "s"', 'name = "${SITE}"')) == [
        "site.toml:2: site.name: environment variable SITE is not set (use ${SITE:-default})"]


def test_supervision_levels_inherit_and_override():
    text = GOOD + "\n[supervision]\nmax_restarts = 3\n[supervision.controller]\nstrategy = \"rest_for_one\"\n"
    sup = parse_topology(text, env={}).data["supervision"]
    assert sup["site"]["max_restarts"] == sup["controller"]["max_restarts"] == 3
    assert sup["controller"]["strategy"] == "rest_for_one" and sup["der"]["strategy"] == "one_for_one"


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace('port = 10102', 'port = 10102\nprot = 1'),
     "site.toml:9: wan[0].prot: unknown key (known: address, anonymous, ders, ied_name, insecure, name, parties, party, port, protocol, scl, serve_nice, switch_nice, tls)"),
    (lambda t: t.replace('port = 10102', 'port = "x"'),
     "site.toml:8: wan[0].port: expected integer, got str 'x'"),
    (lambda t: t.replace('port = 10102', 'port = 70000'),
     "site.toml:8: wan[0].port: port 70000 is outside 1..65535"),
    (lambda t: t.replace('name = "pv1"', 'name = "mqtt"'),
     "site.toml:15: der[0].name: duplicate name 'mqtt' (also lan[0] at line 11)"),
    (lambda t: t.replace('lan = "mqtt"', 'lan = "modbus"'),
     "site.toml:16: der[0].lan: LAN endpoint 'modbus' does not exist (known: mqtt)"),
    (lambda t: t + '\n[[wan]]\nname = "mms2"\nprotocol = "mms"\nport = 10102\n',
     "site.toml:22: wan[1].port: two endpoints on port 10102: also wan[0] at line 8"),
    (lambda t: t.replace('protocol = "mqtt"', 'protocol = "mms"\nport = 1'),
     "site.toml:12: lan[0].protocol: protocol 'mms' is a WAN protocol, not LAN"),
    (lambda t: t.replace('protocol = "mqtt"', 'protocol = "amqp"'),
     "site.toml:12: lan[0].protocol: unknown protocol 'amqp' (known for lan: mqtt, modbus, ocpp, s2, mqtt-relay)"),
    (lambda t: t + 'functions = ["ActPow", "Volt"]\n',
     "site.toml:18: der[0].functions: unknown control function 'Volt' (use ActPow, MaxPow, OnOff)"),
    (lambda t: t + '[supervision]\nstrategy = "one_for_none"\n',
     "site.toml:19: supervision.strategy: 'one_for_none' is not one of one_for_one, rest_for_one, one_for_all"),
    (lambda t: t + '[runtime]\nallow_fault_injection = "yes"\n',
     "site.toml:19: runtime.allow_fault_injection: expected boolean, got str 'yes'"),
    (lambda t: t + '[runtime]\nadmin_port = 10102\n',
     "site.toml:8: wan[0].port: port 10102 is the runtime admin_port"),
    (lambda t: t + '[[site2]]\n',
     "site.toml:18: site2: unknown section (known: site, runtime, supervision, party, wan, lan, der, simulator, registration, tls)"),
    (lambda t: t.replace('name = "s"\n', ''),
     "site.toml:1: site: missing required key 'name'"),
    (lambda t: t.replace('[[der]]', '[[der]\n'),
     "site.toml:14: TOML syntax:"),
    (lambda t: t + '\n[[wan]]\nname = "ems"\nprotocol = "mqtt-ems"\nder = "pv9"\n',
     "site.toml:22: wan[1].der: DER 'pv9' does not exist (known: pv1)"),
    (lambda t: t + '\n[[wan]]\nname = "ems"\nprotocol = "mqtt-ems"\nfunction = "MaxPow"\nschedule = 99\n',
     "site.toml:23: wan[1].schedule: schedule 99 but pv1 has"),
    (lambda t: t.replace('port = 10102', 'port = 10102\nders = ["pv1", "pv2"]'),
     "site.toml:9: wan[0].ders: DER 'pv2' does not exist (known: pv1)"),
    (lambda t: t.replace('port = 10102', 'port = 10102\nders = ["pv1", "pv1"]'),
     "site.toml:9: wan[0].ders: DER 'pv1' is listed twice"),
])
def test_each_error_names_file_line_and_key(edit, expected):
    found = problems(edit(GOOD))
    assert any(p.startswith(expected) for p in found), found


def test_all_errors_are_reported_at_once():
    text = GOOD.replace('port = 10102', 'port = "x"').replace('lan = "mqtt"', 'lan = "nope"') + "bogus = 1\n"
    assert len(problems(text)) == 3


def test_check_command_exit_codes_and_output(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    res = subprocess.run([sys.executable, "-m", "relevent", "check", str(good)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "site s:" in res.stdout and "DER  pv1" in res.stdout and "actors      " in res.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('port = 10102', 'port = "x"'))
    res = subprocess.run([sys.executable, "-m", "relevent", "check", str(bad)], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip() == f"{bad}:8: wan[0].port: expected integer, got str 'x'"
    res = subprocess.run([sys.executable, "-m", "relevent", "check", str(tmp_path / "missing.toml")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "missing.toml: cannot read" in res.stderr


def test_add_then_remove_endpoint_restores_the_text_with_its_comments():
    text = "# my site\n" + GOOD + "# trailing comment\n"
    added = add_endpoint(text, "wan", parse_snippet('{name = "m2", protocol = "mms", port = 1, scl = "a\\"b"}'))
    data = parse_topology(added, env={}).data
    assert data["wan"][1] == {**data["wan"][1], "name": "m2", "port": 1, "scl": 'a"b'}
    removed, role = remove_endpoint(added, "m2")
    assert role == "wan" and removed == text


def test_remove_keeps_the_comment_of_the_next_table():
    text = GOOD.replace("[[lan]]", "# the broker\n[[lan]]")
    removed, _ = remove_endpoint(text, "mms")
    assert "# the broker\n[[lan]]" in removed and 'name = "mms"' not in removed


def test_snippet_forms():
    assert parse_snippet('name = "a"\nprotocol = "mqtt"') == {"name": "a", "protocol": "mqtt"}
    assert parse_snippet('{name = "a", protocol = "mqtt"}') == {"name": "a", "protocol": "mqtt"}
    with pytest.raises(EditError, match="not valid TOML"):
        parse_snippet("{name = ")
    with pytest.raises(EditError, match="needs at least name"):
        parse_snippet('protocol = "mqtt"')
    with pytest.raises(EditError, match="not written as a"):
        remove_endpoint('wan = [{name = "x", protocol = "mms"}]\n[site]\nname = "s"\n', "x")


# -- warnings for a site bigger than its settings (docs/scaling.md) --------------------------------
def many_ders(n: int, wan: str = "", supervision: str = "") -> str:
    ders = "".join(f'[[der]]\nname = "d{i:03d}"\n' for i in range(n))
    return f'[site]\nname = "s"\n{supervision}\n[[wan]]\nname = "mms"\nprotocol = "mms"\nport = 10102\n{wan}\n{ders}'


def warnings_of(text: str) -> list[str]:
    return [str(w) for w in parse_topology(text, "site.toml", env={}).warnings]


def test_an_mms_endpoint_serving_more_than_200_ders_is_warned_about_and_a_split_is_not():
    slow = "[supervision]\nheartbeat_interval = 5.0"
    assert warnings_of(many_ders(200, supervision=slow)) == []
    found = warnings_of(many_ders(201, supervision=slow))
    assert len(found) == 1 and found[0].startswith("site.toml:5: wan[0].ders: MMS endpoint 'mms' serves 201 DERs"), found
    halves = ('ders = [' + ", ".join(f'"d{i:03d}"' for i in range(150)) + ']\n'
              '[[wan]]\nname = "mms2"\nprotocol = "mms"\nport = 10103\nders = [' +
              ", ".join(f'"d{i:03d}"' for i in range(150, 300)) + ']')
    assert warnings_of(many_ders(300, wan=halves, supervision=slow)) == []


def test_a_heartbeat_round_of_more_than_200_pings_a_second_is_warned_about_with_the_interval_to_use():
    assert warnings_of(many_ders(40)) == []        # the default 0.2 s: 200 a second
    found = warnings_of(many_ders(41))
    assert found == ["site.toml: supervision.heartbeat_interval: 41 DERs pinged every 0.2 s: the site supervisor "
                     "sends 205 Pings a second, more than the 200 measured without a DER taken for hung: set "
                     "heartbeat_interval >= 0.205 s and heartbeat_timeout >= 4 intervals (docs/scaling.md)"], found
    assert warnings_of(many_ders(41, supervision="[supervision]\nheartbeat_interval = 0.25")) == []


def test_relevent_run_logs_the_warnings_relevent_check_prints(tmp_path):
    from sitectl import Site, free_port, running, small_topology
    # One DER pinged every 4 ms: 250 Pings a second, a warning (and a cheap one to run).
    path = tmp_path / "site.toml"
    path.write_text(small_topology(tmp_path / "state", free_port()).replace("heartbeat_interval = 0.1",
                                                                             "heartbeat_interval = 0.004"))
    checked = subprocess.run([sys.executable, "-m", "relevent", "check", str(path)], capture_output=True, text=True)
    assert "warning: " in checked.stderr and "250 Pings a second" in checked.stderr, checked.stderr
    with running(Site(path, tmp_path / "state")):
        log = (tmp_path / "state" / "relevent.log").read_text()
    assert "WARNING relevent.runner" in log and "topology" in log and "250 Pings a second" in log, log[-2000:]
