"""Parties over HTTP against a real site: bearer tokens name parties, the policy of the
shared request path refuses with 401/403 and the rule, every instruction lands in the
endpoint's audit chain (which `relevent audit verify` accepts), and the customer reads the
audit records of its own DER.  The client is httpx."""
from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from sitectl import Site, free_port, now_ms, running
from test_http_api import iso

TOPOLOGY = """
[site]
name = "parties{admin}"
state_dir = "{state}"

[runtime]
admin_port = {admin}

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[[party]]
name = "aggregator"
http_token = "agg-token"
ders = ["der1"]
priority = [20, 99]

[[party]]
name = "customer"
http_token = "cust-token"
ders = ["der2"]
operations = ["read"]
priority = [0, 0]

[[wan]]
name = "http"
protocol = "http"
port = {http}
anonymous = "none"

[[der]]
name = "der1"
functions = ["MaxPow"]
schedules = 2

[[der]]
name = "der2"
functions = ["MaxPow"]
schedules = 2
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http-parties")
    http = free_port()
    path = tmp / "site.toml"
    path.write_text(TOPOLOGY.format(admin=free_port(), http=http, state=tmp / "state"))
    s = Site(path, tmp / "state")
    s.ports = {"http": http}
    with running(s):
        yield s


def client(site, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{site.ports['http']}/api/v1", headers=headers, timeout=15)


def test_a_client_without_a_token_or_with_a_wrong_one_is_refused_with_401(site):
    with client(site) as anonymous, client(site, "guess") as wrong:
        r = anonymous.get("/ders")
        assert r.status_code == 401 and r.json()["rule"] == "auth" and r.headers["www-authenticate"] == "Bearer"
        r = wrong.get("/ders/der1/MaxPow")
        assert r.status_code == 401 and "names no party" in r.json()["error"]


def test_a_party_sees_and_steers_only_its_ders_within_its_band(site):
    with client(site, "agg-token") as agg:
        assert [d["name"] for d in agg.get("/ders").json()] == ["der1"]
        r = agg.get("/ders/der2/MaxPow")
        assert r.status_code == 403 and r.json()["rule"] == "party:der"
        body = {"values": [4000.0], "interval_s": 600, "start": iso(now_ms() + 60_000)}
        r = agg.put("/ders/der1/MaxPow/schedules/1", json={**body, "priority": 150})
        assert r.status_code == 403 and r.json()["rule"] == "band" and "20..99" in r.json()["error"]
        r = agg.put("/ders/der1/MaxPow/schedules/1", json={**body, "priority": 50})
        assert r.status_code == 200, r.text
        assert agg.post("/ders/der1/MaxPow/schedules/1/enable").status_code == 200
        r = agg.put("/ders/der2/MaxPow/schedules/1", json={**body, "priority": 50})
        assert r.status_code == 403 and r.json()["rule"] == "party:der"


def test_a_read_only_party_reads_its_der_but_cannot_write_it(site):
    with client(site, "cust-token") as customer:
        assert customer.get("/ders/der2/MaxPow").status_code == 200
        r = customer.put("/ders/der2/MaxPow/schedules/1", json={"priority": 0})
        assert r.status_code == 403 and r.json()["rule"] == "party:operation"


def test_every_instruction_is_audited_and_the_chain_verifies(site):
    with client(site, "agg-token") as agg:
        agg.put("/ders/der1/MaxPow/schedules/2", json={"priority": 500})        # refused: band
    deadline = now_ms() + 5000
    records = []
    while now_ms() < deadline:
        with client(site, "agg-token") as agg:
            records = agg.get("/audit", params={"limit": 1000}).json()
        if any(r.get("answer", {}) == {"refused": "band", "reason": r["answer"].get("reason")}
               for r in records if isinstance(r.get("answer"), dict) and r["schedule"] == "FSCH02"):
            break
    instructions = [r for r in records if r["kind"] == "instruction"]
    assert {r["party"] for r in instructions} == {"aggregator"}
    assert all(r["protocol"] == "http" and r["peer"].startswith("127.0.0.1:") for r in instructions)
    assert any(r["action"] == "enable" and r["answer"] == "ok" for r in instructions)
    assert any(r["schedule"] == "FSCH02" and r["answer"]["refused"] == "band" for r in instructions
               if isinstance(r["answer"], dict))
    assert all(r["der"] == "der1" for r in records)          # der2's records are not the aggregator's
    cli = subprocess.run([sys.executable, "-m", "relevent", "audit", "verify", str(site.state_dir / "audit")],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "http: OK" in cli.stdout


def test_the_customer_reads_the_audit_records_of_its_own_der_only(site):
    with client(site, "cust-token") as customer:
        customer.put("/ders/der2/MaxPow/schedules/1", json={"priority": 0})      # refused, audited
        records = customer.get("/audit").json()
    assert records and {r["der"] for r in records} == {"der2"}
    assert records[-1]["party"] == "customer" and records[-1]["answer"]["refused"] == "party:operation"
