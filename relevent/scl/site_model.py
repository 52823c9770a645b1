"""The SCL model a site's MMS endpoint serves: its configured SCL file, or one generated
from the DERs it serves (all the site's, or those its `ders` names)."""
from __future__ import annotations

from pathlib import Path

from relevent.protocols.registry import served_ders
from relevent.scl.generate import generate_scl
from relevent.topology import Topology


def mms_endpoint(topo: Topology, name: str | None = None) -> dict:
    endpoints = [ep for ep in topo.data["wan"] if ep["protocol"] == "mms" and (name is None or ep["name"] == name)]
    if not endpoints:
        raise ValueError(f"the topology has no MMS endpoint{f' named {name!r}' if name else ''}")
    return endpoints[0]


def endpoint_scl(endpoint: dict, ders: list[dict], site: str) -> bytes:
    """The SCL file named by the endpoint, or the generated model of `ders`."""
    if endpoint.get("scl"):
        return Path(endpoint["scl"]).read_bytes()
    return generate_scl(ders, ied_name=endpoint.get("ied_name", "DER_Scheduler_"), site=site,
                        address=endpoint.get("address", "0.0.0.0"))


def site_scl(topo: Topology, endpoint_name: str | None = None) -> bytes:
    endpoint = mms_endpoint(topo, endpoint_name)
    return endpoint_scl(endpoint, served_ders(endpoint, topo.data["der"]), topo.name)
