"""Protocols a topology can name for its WAN and LAN endpoints.

Each entry says which side it belongs to, whether it listens (so two endpoints must not
share its port), its topology keys, and the adapter that implements it.  An adapter is a
class path loaded inside the endpoint actor; ``None`` means the adapter is not part of
this build yet, and the endpoint actor reports that state instead of pretending.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from relevent.protocols.modbus.address import parse_device_address
from relevent.topology.schema import NUMBER, Field, nice_check, non_negative, port_check, positive


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    role: str  # "wan", "lan" or "simulator"
    listens: bool
    keys: dict
    adapter: str | None
    doc: str
    # Checks beyond the keys, run by `relevent check` (and so by every load): each returns
    # [(topology key, message)].  check_der(der, lan endpoint) for a DER this LAN protocol
    # drives; check_site(endpoint, whole topology) for a WAN endpoint.
    check_der: Callable[[dict, dict], list] | None = None
    check_site: Callable[[dict, dict], list] | None = None


def _modbus_der(der: dict, lan: dict) -> list:
    out = []
    try:
        parse_device_address(der["address"], lan["host"], lan["port"])
    except ValueError as exc:
        out.append(("address", str(exc)))
    if der["profile"] not in ("sunspec", "registers"):
        out.append(("profile", f"profile {der['profile']!r} on a Modbus endpoint: use sunspec or registers"))
    elif der["profile"] == "registers" and "setpoint" not in der["registers"]:
        out.append(("registers", "profile registers needs at least registers.setpoint"))
    return out


def _ems_site(ep: dict, data: dict) -> list:
    """The EMS's DER, function and schedule must exist."""
    ders = {d["name"]: d for d in data["der"] if isinstance(d.get("name"), str)}
    name = ep.get("der") or next(iter(ders), "")
    der = ders.get(name)
    if der is None:
        return [("der", f"DER {name!r} does not exist (known: {', '.join(ders) or 'none defined'})")]
    out = []
    if ep.get("function") not in der["functions"]:
        out.append(("function", f"{ep.get('function')!r} is not one of {name}'s functions "
                                f"({', '.join(der['functions'])})"))
    if isinstance(ep.get("schedule"), int) and ep["schedule"] > der["schedules"]:
        out.append(("schedule", f"schedule {ep['schedule']} but {name} has {der['schedules']} per function"))
    return out


# Every WAN endpoint speaks for one party: the control session checks each request with it.
WAN_KEYS = {
    "party": Field((str,), default="", doc="the party this endpoint speaks for (policy, audit); empty: its name"),
}

PROTOCOLS: dict[str, ProtocolSpec] = {
    spec.name: spec
    for spec in (
        ProtocolSpec(
            "mms", "wan", True,
            {
                **WAN_KEYS,
                "address": Field((str,), default="127.0.0.1", doc="listen address"),
                "port": Field((int,), default=102, check=port_check),
                "scl": Field((str,), default="", doc="SCL file to serve; empty: generate from the DERs"),
                "ied_name": Field((str,), default="DER_Scheduler_"),
                "switch_nice": Field((int,), default=-20, check=nice_check,
                                     doc="priority (nice, -20..19) of the switcher thread, and of every thread "
                                         "of the endpoint from 50 ms before an announced switch until it is "
                                         "written; 0: none"),
                "serve_nice": Field((int,), default=0, check=nice_check,
                                    doc="priority (nice) of libiec61850's server thread (which also runs the "
                                        "write and operate handlers); 0: none (a client polling hard at -10 "
                                        "took the CPU of a 200-process site)"),
            },
            "relevent.protocols.mms.endpoint.MmsEndpoint", "IEC 61850 MMS server with the 90-10 scheduling model"),
        ProtocolSpec(
            "http", "wan", True,
            {
                **WAN_KEYS,
                "address": Field((str,), default="127.0.0.1", doc="listen address (loopback unless a proxy or TLS "
                                                                  "faces the network)"),
                "port": Field((int,), default=8080, check=port_check),
            },
            "relevent.protocols.http.endpoint.HttpEndpoint",
            "HTTP/JSON with 90-10 semantics under /api/v1, OpenAPI 3.1 at /openapi.json (docs/http.md)"),
        ProtocolSpec(
            "mqtt-ems", "wan", False,
            {
                **WAN_KEYS,
                "host": Field((str,), default="127.0.0.1", doc="the site broker"),
                "port": Field((int,), default=1883, check=port_check),
                "topic": Field((str,), default="hedera-requests", doc="where the EMS publishes its requests"),
                "reply_topic": Field((str,), default="hedera-replies",
                                     doc="where each request is answered: accepted, or refused and why"),
                "der": Field((str,), default="", doc="the DER the EMS steers; empty: the site's first DER"),
                "function": Field((str,), default="MaxPow", choices=("ActPow", "MaxPow"),
                                  doc="the control function a request schedules"),
                "schedule": Field((int,), default=1, check=positive, doc="which FSCH (1..N) a request writes"),
                "priority": Field((int,), default=20, doc="SchdPrio of the EMS's schedule (the reference: 20)"),
                "reconnect_delay": Field(NUMBER, default=1.0, check=positive, doc="seconds between reconnects"),
            },
            "relevent.protocols.mqtt_ems.endpoint.MqttEmsEndpoint",
            "schedule requests from a local EMS over MQTT (ReLevENT HEDERA format, watts; docs/mqtt-ems.md)",
            check_site=_ems_site),
        ProtocolSpec(
            "mqtt", "lan", False,
            {
                "host": Field((str,), default="127.0.0.1"),
                "port": Field((int,), default=1883, check=port_check),
                "topic_command": Field((str,), default="fledge/south-command"),
                "topic_schedule": Field((str,), default="fledge/south-schedule"),
                "topic_measurement": Field((str,), default="fledge/south-measurement",
                                           doc="pivot GTIM (power) and GTIS (connection) from devices"),
                "qos": Field((int,), default=1, choices=(0, 1, 2)),
                "retain": Field((bool,), default=False),
                "schedule_period": Field(NUMBER, default=5.0, check=positive,
                                         doc="seconds between PivotSchedule forecasts"),
                "reconnect_delay": Field(NUMBER, default=1.0, check=positive, doc="seconds between reconnects"),
                "resend_delay": Field(NUMBER, default=1.0, check=non_negative,
                                      doc="seconds after a reconnect before the current commands are re-sent"),
                "embedded_broker": Field((bool,), default=False,
                                         doc="start a broker (amqtt) on host:port inside the site"),
            },
            "relevent.protocols.mqtt.endpoint.MqttEndpoint", "FledgePower pivot commands and forecasts over MQTT"),
        ProtocolSpec(
            "modbus", "lan", False,
            {
                "host": Field((str,), default="127.0.0.1"),
                "port": Field((int,), default=502, check=port_check),
                "timeout": Field(NUMBER, default=1.0, check=positive, doc="seconds per request"),
                "poll_period": Field(NUMBER, default=1.0, check=positive, doc="seconds between measurement reads"),
                "reversion_s": Field((int,), default=30, check=lambda v: None if 0 <= v <= 65535 else
                                     "reversion_s must be 0..65535", doc="SunSpec RvrtTms: the device reverts "
                                     "on its own when the edge stops refreshing (0: never)"),
                "backoff_max": Field(NUMBER, default=5.0, check=positive, doc="seconds, reconnect backoff cap"),
            },
            "relevent.protocols.modbus.endpoint.ModbusEndpoint",
            "Modbus TCP client, SunSpec or plain register devices", check_der=_modbus_der),
        # Simulated devices, started by the site like endpoints (tests, demos, commissioning).
        ProtocolSpec(
            "sunspec-inverter", "simulator", True,
            {
                "address": Field((str,), default="127.0.0.1", doc="listen address"),
                "port": Field((int,), default=5020, check=port_check),
                "unit": Field((int,), default=1, check=lambda v: None if 1 <= v <= 247 else "unit must be 1..247"),
                "wmax": Field(NUMBER, default=10000.0, check=positive, doc="W (model 121 WMax)"),
                "available_w": Field(NUMBER, default=-1.0, doc="W the sun gives; negative: wmax"),
                "ramp_w_per_s": Field(NUMBER, default=0.0, check=non_negative, doc="0: instant"),
                "models": Field((list,), default=[1, 103, 121, 123, 704], item_types=(int,),
                                check=lambda v: next((f"model {m} not simulated (use 1, 103, 121, 123, 704)"
                                                      for m in v if m not in (1, 103, 121, 123, 704)), None)),
                "write_log": Field((str,), default="", doc="append every register write (JSON lines, ns) here"),
            },
            "relevent.simulators.sunspec_inverter.SunSpecInverter", "SunSpec inverter on Modbus TCP"),
        ProtocolSpec(
            "mqtt-broker", "simulator", True,
            {
                "address": Field((str,), default="127.0.0.1", doc="listen address"),
                "port": Field((int,), default=1883, check=port_check),
            },
            "relevent.simulators.mqtt_broker.MqttBroker", "an embedded MQTT 3.1.1 broker (amqtt)"),
        ProtocolSpec(
            "mqtt-device", "simulator", False,
            {
                "host": Field((str,), default="127.0.0.1"),
                "port": Field((int,), default=1883, check=port_check),
                "der": Field((str,), required=True, doc="the DER this device plays (its pivot labels)"),
                "rated_power_w": Field(NUMBER, default=5000.0, check=positive),
                "topic_command": Field((str,), default="fledge/south-command"),
                "topic_schedule": Field((str,), default="fledge/south-schedule"),
                "topic_measurement": Field((str,), default="fledge/south-measurement"),
                "measure_period": Field(NUMBER, default=1.0, check=positive),
                "command_log": Field((str,), default="", doc="append every command obeyed (JSON lines, ns) here"),
            },
            "relevent.simulators.mqtt_device.MqttDevice", "a device obeying pivot commands, publishing GTIM"),
    )
}


def listen_address(endpoint: dict) -> tuple[str, int] | None:
    """(address, port) an endpoint binds, or None if it only connects out."""
    spec = PROTOCOLS.get(endpoint.get("protocol", ""))
    if endpoint.get("embedded_broker"):
        return endpoint.get("host", "127.0.0.1"), endpoint["port"]
    if spec is None or not spec.listens:
        return None
    return endpoint.get("address", "127.0.0.1"), endpoint["port"]
