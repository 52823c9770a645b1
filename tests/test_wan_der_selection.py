"""A WAN endpoint serves only the DERs its `ders` names (relevent/protocols/registry.py
`serves`): a big site splits its DERs over several MMS endpoints (IEDs), each model holding
only its own (docs/scaling.md).  Unit tests on the site supervisor outside any ActorSystem
(which DERs each endpoint is given, which DERs send it their states), then a real site with
two MMS endpoints and an HTTP endpoint, driven by the open61850 and libiec61850 clients and
httpx."""
from __future__ import annotations

import httpx
import pytest
from thespian.actors import ActorAddress
from thespian.system.transport.IPBase import TCPv4ActorAddress

from mmsclients import LibIec61850Client, Open61850Client, write_schedule
from relevent.actors.site import SiteSupervisor, site_children
from relevent.actors.supervisor import Child
from relevent.messages import SnapshotRequest
from relevent.scl.parser import parse_scl
from relevent.scl.site_model import site_scl
from relevent.topology import parse_topology
from sitectl import Site, free_port, running, until


def topology(state_dir, admin: int, mms_a: int, mms_b: int, http: int) -> str:
    ders = "".join(f'\n[[der]]\nname = "{name}"\nfunctions = ["ActPow"]\nschedules = 2\nvalues = 4\n'
                   for name in ("d1", "d2", "d3"))
    return f"""
[site]
name = "selection{admin}"
state_dir = "{state_dir}"

[runtime]
admin_port = {admin}

[[wan]]
name = "mms-a"
protocol = "mms"
port = {mms_a}
ders = ["d1", "d2"]

[[wan]]
name = "mms-b"
protocol = "mms"
port = {mms_b}
ied_name = "IedB"
ders = ["d3"]

[[wan]]
name = "http"
protocol = "http"
port = {http}
ders = ["d3"]
{ders}"""


# -- the site supervisor, outside any ActorSystem ----------------------------------------------------
def address(port: int) -> ActorAddress:
    return ActorAddress(TCPv4ActorAddress("127.0.0.1", port, external=True))


class Recorder(SiteSupervisor):
    """A site supervisor whose sends are recorded instead of made."""

    def __init__(self, data: dict) -> None:
        super().__init__()
        self.config = data
        self.sent: list[tuple] = []
        for i, spec in enumerate(s for s in site_children(data) if s.role == "der"):
            self.children.append(Child(spec, address=address(21000 + i), state="running"))

    def send(self, target, message) -> None:
        self.sent.append((target, message))


def parsed(tmp_path) -> dict:
    return parse_topology(topology(tmp_path, 1, 2, 3, 4), "site.toml", env={}).data


def test_each_wan_endpoint_is_given_only_the_ders_it_names(tmp_path):
    specs = {s.name: s for s in site_children(parsed(tmp_path))}
    assert [d["name"] for d in specs["mms-a"].config["ders"]] == ["d1", "d2"]
    assert [d["name"] for d in specs["mms-b"].config["ders"]] == ["d3"]
    assert [d["name"] for d in specs["http"].config["ders"]] == ["d3"]


def test_an_endpoint_without_ders_is_given_every_der(tmp_path):
    data = parsed(tmp_path)
    data["wan"][0]["ders"] = []
    mms_a = next(s for s in site_children(data) if s.name == "mms-a")
    assert [d["name"] for d in mms_a.config["ders"]] == ["d1", "d2", "d3"]


def test_a_snapshot_request_reaches_only_the_ders_the_endpoint_serves(tmp_path):
    sup = Recorder(parsed(tmp_path))
    endpoint = address(22000)
    sup.on_message(SnapshotRequest("mms-a", endpoint), endpoint)
    asked = [next(c.spec.name for c in sup.children if c.address == target) for target, _ in sup.sent]
    assert asked == ["d1", "d2"]
    sup.sent.clear()
    sup.on_message(SnapshotRequest("mms-b", address(22001)), address(22001))
    assert [next(c.spec.name for c in sup.children if c.address == t) for t, _ in sup.sent] == ["d3"]


def test_a_restarted_der_is_handed_only_the_endpoints_that_serve_it(tmp_path):
    sup = Recorder(parsed(tmp_path))
    for i, name in enumerate(("mms-a", "mms-b", "http")):
        sup.on_message(SnapshotRequest(name, address(22000 + i)), address(22000 + i))
    by_name = {c.spec.name: c.spec for c in sup.children}
    assert set(sup.runtime_config(by_name["d1"])["subscribers"]) == {"mms-a"}
    assert set(sup.runtime_config(by_name["d3"])["subscribers"]) == {"mms-b", "http"}


def test_the_exported_model_of_an_endpoint_holds_only_its_ders(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(topology(tmp_path / "state", 1, 2, 3, 4))
    from relevent.topology import load_topology
    topo = load_topology(path)
    for endpoint, ied, lds in (("mms-a", "DER_Scheduler_", ["d1Control", "d2Control"]), ("mms-b", "IedB", ["Control"])):
        served = tmp_path / f"{endpoint}.cid"
        served.write_bytes(site_scl(topo, endpoint))
        model = parse_scl(served)
        assert [ld.inst for ld in model.ied(ied).ldevices] == lds


# -- a real site -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("selection")
    ports = {"mms_a": free_port(), "mms_b": free_port(), "http": free_port()}
    path = tmp / "site.toml"
    path.write_text(topology(tmp / "state", free_port(), **ports))
    with running(Site(path, tmp / "state"), leftovers=True) as s:
        s.ports = ports
        yield s


def readable(client, ref: str) -> bool:
    try:
        client.read_int(ref)
        return True
    except Exception:  # noqa: BLE001 - each client has its own error for a missing object
        return False


def test_each_mms_endpoint_serves_the_logical_devices_of_its_own_ders_only(site):
    a = LibIec61850Client("127.0.0.1", site.ports["mms_a"])
    b = LibIec61850Client("127.0.0.1", site.ports["mms_b"])
    try:
        assert readable(a, "DER_Scheduler_d1Control/ActPow_FSCH01.SchdSt.stVal")
        assert readable(a, "DER_Scheduler_d2Control/ActPow_FSCH01.SchdSt.stVal")
        assert not readable(a, "DER_Scheduler_d3Control/ActPow_FSCH01.SchdSt.stVal")
        assert readable(b, "IedBControl/ActPow_FSCH01.SchdSt.stVal")
        assert not readable(b, "IedBd1Control/ActPow_FSCH01.SchdSt.stVal")
    finally:
        a.close()
        b.close()


def test_a_schedule_written_on_the_second_endpoint_runs_its_der_and_shows_over_http(site):
    c = Open61850Client("127.0.0.1", site.ports["mms_b"])
    ref = "IedBControl/ActPow_FSCH01"
    try:
        write_schedule(c, ref, [1234.0], interval_s=3600, start_in_ms=500)
        ok, cause = c.operate(f"{ref}.EnaReq", True)
        assert ok, cause
    finally:
        c.close()
    url = f"http://127.0.0.1:{site.ports['http']}/api/v1/ders/d3/ActPow"

    def d3_runs_it() -> bool:
        got = httpx.get(url, timeout=10).json()
        return (got["output"], got["source"]) == (1234.0, "FSCH01")
    until(d3_runs_it, "d3 running FSCH01 at 1234 W, over HTTP", timeout=10)
    # d3 runs its schedule; d1, which the first endpoint serves, is untouched by it.
    a = LibIec61850Client("127.0.0.1", site.ports["mms_a"])
    try:
        assert a.read_str("DER_Scheduler_d1Control/ActPow_FSCC1.ActSchdRef.stVal").endswith("Res_FSCH01")
    finally:
        a.close()


def test_the_http_endpoint_lists_and_serves_only_its_ders(site):
    url = f"http://127.0.0.1:{site.ports['http']}/api/v1/ders"
    assert [d["name"] for d in httpx.get(url, timeout=10).json()] == ["d3"]
    refused = httpx.get(f"{url}/d1/ActPow", timeout=10)
    assert refused.status_code == 404 and "no DER 'd1'" in refused.text, refused.text
