"""Protocols a topology can name for its WAN and LAN endpoints.

Each entry says which side it belongs to, whether it listens (so two endpoints must not
share its port), its topology keys, and the adapter that implements it.  An adapter is a
class path loaded inside the endpoint actor; ``None`` means the adapter is not part of
this build yet, and the endpoint actor reports that state instead of pretending.
"""
from __future__ import annotations

from dataclasses import dataclass

from relevent.topology.schema import Field, port_check, positive


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    role: str  # "wan" or "lan"
    listens: bool
    keys: dict
    adapter: str | None
    doc: str


PROTOCOLS: dict[str, ProtocolSpec] = {
    spec.name: spec
    for spec in (
        ProtocolSpec(
            "mms", "wan", True,
            {
                "address": Field((str,), default="127.0.0.1", doc="listen address"),
                "port": Field((int,), default=102, check=port_check),
                "scl": Field((str,), default="", doc="SCL file to serve; empty: generate from the DERs"),
                "ied_name": Field((str,), default="DER_Scheduler_"),
            },
            "relevent.protocols.mms.endpoint.MmsEndpoint", "IEC 61850 MMS server with the 90-10 scheduling model"),
        ProtocolSpec(
            "hedera", "wan", False,
            {
                "host": Field((str,), default="127.0.0.1"),
                "port": Field((int,), default=1883, check=port_check),
                "topic": Field((str,), default="hedera-requests"),
            },
            None, "schedule requests from a local EMS over MQTT (ReLevENT HEDERA gateway format)"),
        ProtocolSpec(
            "mqtt", "lan", False,
            {
                "host": Field((str,), default="127.0.0.1"),
                "port": Field((int,), default=1883, check=port_check),
                "topic_command": Field((str,), default="fledge/south-command"),
                "topic_schedule": Field((str,), default="fledge/south-schedule"),
                "qos": Field((int,), default=1, choices=(0, 1, 2)),
                "retain": Field((bool,), default=False),
            },
            None, "FledgePower pivot commands and forecasts over MQTT"),
        ProtocolSpec(
            "modbus", "lan", False,
            {
                "host": Field((str,), default="127.0.0.1"),
                "port": Field((int,), default=502, check=port_check),
                "timeout": Field((int, float), default=1.0, check=positive),
            },
            None, "Modbus TCP client, SunSpec devices"),
    )
}


def listen_address(endpoint: dict) -> tuple[str, int] | None:
    """(address, port) an endpoint binds, or None if it only connects out."""
    spec = PROTOCOLS.get(endpoint.get("protocol", ""))
    if spec is None or not spec.listens:
        return None
    return endpoint.get("address", "127.0.0.1"), endpoint["port"]
