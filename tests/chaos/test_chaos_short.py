"""A short chaos run (part of `make test`): every fault on every actor kind, twice, while
schedules run, against topologies/chaos.toml.  The long run is one command:
`relevent chaos topologies/chaos.toml --count 100` (bench/chaos/RESULTS.md)."""
from __future__ import annotations

import os

import pytest

from relevent.audit.site import chains
from relevent.audit.verify import PUBLIC_KEY_FILE, load_public_key, verify
from relevent.chaos.plan import FAULTS, TARGET_KINDS, Plan, fault_sequence
from relevent.chaos.runner import ChaosRun
from relevent.topology import load_topology
from sitectl import REPO, free_port


@pytest.mark.timeout(600)
def test_every_fault_on_every_actor_kind_recovers_without_losing_or_changing_anything(tmp_path, monkeypatch):
    env = {"RELEVENT_STATE_DIR": str(tmp_path / "state"), "RELEVENT_ADMIN_PORT": str(free_port()),
           "RELEVENT_MMS_PORT": str(free_port()), "RELEVENT_MQTT_PORT": str(free_port()),
           "RELEVENT_MODBUS_PORT": str(free_port()), "RELEVENT_HTTP_PORT": str(free_port()),
           "RELEVENT_OPENADR_PORT": str(free_port()), "RELEVENT_IEC104_PORT": str(free_port())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    topo = load_topology(REPO / "topologies" / "chaos.toml", env={**os.environ, **env})
    # Every WAN endpoint kind (MMS, HTTP, the MQTT EMS, IEC 104, OpenADR) is among the targets.
    hit = {path for kind, _fault, path in fault_sequence(Plan(count=2), topo.data) if kind == "wan"}
    assert hit == {ep["name"] for ep in topo.data["wan"]} and {"mms", "http", "mqtt-ems", "iec104", "openadr"} <= \
        {ep["protocol"] for ep in topo.data["wan"]}
    lines = []
    report = ChaosRun(topo, Plan(count=2, timeout=20.0), say=lines.append).run()

    assert report["faults"] == 2 * len(TARGET_KINDS) * len(FAULTS)
    # The run said how far it was: its phases, and a last line with every fault done.
    n = report["faults"]
    assert lines[0].startswith("chaos [0/") and "starting the site" in lines[0], lines[:2]
    assert any(text.startswith(f"chaos [{n}/{n} 100%]") for text in lines), lines[-4:]
    assert lines[-1].startswith(f"chaos {n} of {n} done in ") and "failed" not in lines[-1], lines[-1]
    assert report["failed"] == 0, report["failures"]
    assert set(report["recovery"]) == {f"{k} {f}" for k in TARGET_KINDS for f in FAULTS}
    assert report["schedules_changed"] == {}, report["schedules_changed"]
    assert report["device_commands"], "no simulated device was checked"
    for name, device in report["device_commands"].items():
        assert device["wrong"] == 0, (name, device)
        # Restarted DERs and LAN endpoints re-send the command in force: devices did hear them.
        assert device["commands"] >= 1, (name, device)
    # Every fault was really injected: each recovery needed a new process, which takes time.
    assert all(cell["p50_ms"] > 20 for cell in report["recovery"].values()), report["recovery"]
    # The audit log survived every kill: each chain (one per WAN endpoint, one per DER's
    # device commands) verifies from its first record, a line cut by a kill -9 included.
    audit = tmp_path / "state" / "audit"
    key = load_public_key(audit / PUBLIC_KEY_FILE)
    found = {d.name: verify(d, key) for d in chains(audit)}
    for name, result in found.items():
        assert result.ok, f"audit chain {name}: {result.problem}"
        assert result.from_genesis and result.records > 0, (name, result)
    assert "mms" in found, f"the schedules were written over MMS, no mms chain: {sorted(found)}"
    assert {f"der-{d['name']}" for d in topo.data["der"] if d.get("lan")} <= set(found), sorted(found)
