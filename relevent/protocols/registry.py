"""Protocols a topology can name for its WAN and LAN endpoints.

Each entry says which side it belongs to, whether it listens (so two endpoints must not
share its port), its topology keys, and the adapter that implements it.  An adapter is a
class path loaded inside the endpoint actor; ``None`` means the adapter is not part of
this build yet, and the endpoint actor reports that state instead of pretending.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable

from relevent.protocols.iec104.mapping import site_problems as _iec104_site
from relevent.protocols.modbus.address import parse_device_address
from relevent.protocols.s2.checks import der_problems as _s2_der
from relevent.topology.schema import (
    NUMBER, TLS_CLIENT_KEYS, TLS_SERVER_KEYS, Field, nice_check, non_negative, port_check, positive,
)


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
    # drives; check_site(endpoint, whole topology) for a WAN endpoint, whose items may also
    # be (key, message, "warning"): reported by `relevent check`, the site still starts.
    check_der: Callable[[dict, dict], list] | None = None
    check_site: Callable[[dict, dict], list] | None = None
    # DER keys a LAN endpoint of this protocol gets besides the ones every LAN endpoint gets
    # (relevent/actors/site.py DEVICE_KEYS): a protocol's own per-DER table.
    der_keys: tuple[str, ...] = ()


def _modbus_der(der: dict, lan: dict) -> list:
    out = []
    try:
        parse_device_address(der["address"], lan["host"], lan["port"])
    except ValueError as exc:
        out.append(("address", str(exc)))
    if der["profile"] not in ("sunspec", "registers", "sgready"):
        out.append(("profile", f"profile {der['profile']!r} on a Modbus endpoint: use sunspec, registers or sgready"))
    elif der["profile"] == "registers" and "setpoint" not in der["registers"]:
        out.append(("registers", "profile registers needs at least registers.setpoint"))
    elif der["profile"] == "sgready" and der.get("type") != "heat_pump":
        out.append(("type", f"profile sgready drives a load: use type = \"heat_pump\", not {der.get('type')!r}"))
    return out


def _mqtt_relay_der(der: dict, lan: dict) -> list:
    """A heat pump with a `relays` table (whose keys the DER key's own check validates:
    relevent/topology/schema.py `_check_relays`, relevent/protocols/mqtt_relay/relays.py)."""
    out = []
    if der.get("type") != "heat_pump":
        out.append(("type", f"an mqtt-relay endpoint drives SG-Ready contacts of a load: use type = \"heat_pump\", "
                            f"not {der.get('type')!r}"))
    if not der.get("relays"):
        out.append(("relays", "a DER on an mqtt-relay endpoint needs its relays, e.g. "
                              "relays = { style = \"tasmota\", device = \"hp-relay\" } (docs/devices.md)"))
    if not der.get("rated_power_w"):
        out.append(("rated_power_w", "an SG-Ready heat pump needs its rated_power_w (the state 4 threshold and "
                                     "the §14a floor are taken from it)"))
    return out


def _sgready_map(name: str) -> str | None:
    from relevent.devices.sgready import get_map
    try:
        get_map(name)
    except ValueError as exc:
        return str(exc)
    return None


def _ocpp_der(der: dict, lan: dict) -> list:
    """A charger: an ev_charger whose address is its charge point id (the last segment of
    the websocket path it connects to)."""
    out = []
    address = der.get("address")
    if not isinstance(address, str) or not address.strip() or "/" in address or address != address.strip():
        out.append(("address", f"{address!r}: an OCPP charger's address is its charge point id, a non-empty "
                               "string without '/' or surrounding spaces"))
    if der.get("type") != "ev_charger":
        out.append(("type", f"type {der.get('type')!r} on an OCPP endpoint: use type = \"ev_charger\""))
    return out


OCPP_PROFILES = {0: "no check", 1: "HTTP Basic auth over ws", 2: "TLS and HTTP Basic auth",
                 3: "TLS and a client certificate"}
OCPP_MIN_PASSWORD = 16   # OCPP 2.0.1 BasicAuthPassword: 16..40 characters (1.6 AuthorizationKey: 16..20 bytes)


def ocpp_security(ep: dict, ders: list[dict], tls: dict, address_known: bool = True) -> list:
    """What an `ocpp` endpoint's security profile needs of the site: [(key, message,
    is_error)].  Profiles 2 and 3 serve wss:// (`tls` follows from the profile, and
    writing it otherwise is refused), 3 needs [tls] ca; on 1 and 2 every charger of the
    endpoint needs a readable, non-empty password file (`password_files`, by DER name).
    Profiles 0 and 1 in plain text beyond loopback need `insecure = true` (1 would send
    the chargers' passwords in clear)."""
    out: list = []
    profile = ep.get("security_profile", 0)
    over_tls = profile >= 2
    if ep.get("tls") is not None and bool(ep["tls"]) != over_tls:
        out.append(("tls", f"tls = true but security_profile = {profile} ({OCPP_PROFILES[profile]}): OCPP over TLS "
                           "is security_profile = 2 (with passwords) or 3 (with client certificates)" if ep["tls"]
                    else f"tls = false but security_profile = {profile} is over TLS: remove tls (it follows "
                         "from the profile)", True))
    if over_tls and not (tls.get("cert") and tls.get("key")):
        out.append(("security_profile", f"security_profile = {profile} serves wss:// with the site's certificate: "
                                        "set [tls] cert and key", True))
    if profile == 3 and not tls.get("ca"):
        out.append(("security_profile", "security_profile = 3 verifies every charger's certificate: set [tls] ca, "
                                        "the bundle the chargers' certificates chain to", True))
    mine = [d for d in ders if d.get("lan") == ep.get("name") and isinstance(d.get("name"), str)]
    files = ep.get("password_files") or {}
    for name in files:
        if name not in {d["name"] for d in mine}:
            out.append(("password_files", f"{name!r} is not a charger of this endpoint (its DERs: "
                                          f"{', '.join(d['name'] for d in mine) or 'none'})", True))
    if profile in (1, 2):
        for d in mine:
            path = files.get(d["name"])
            if path and not isinstance(path, str):
                continue   # reported by the key's own check
            if not path:
                out.append(("password_files", f"charger {d['name']!r} (charge point {d.get('address')!r}) has no "
                                              f"password: security_profile = {profile} checks every charger's "
                                              f"password: add {d['name']} = \"FILE\" to password_files", True))
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    password = f.readline().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                out.append(("password_files", f"{d['name']}: cannot read {path}: "
                                              f"{getattr(exc, 'strerror', None) or exc}", True))
                continue
            if not password:
                out.append(("password_files", f"{d['name']}: the first line of {path} (the password) is empty", True))
            elif len(password) < OCPP_MIN_PASSWORD:
                out.append(("password_files", f"{d['name']}: the password in {path} has {len(password)} characters; "
                                              f"OCPP asks for at least {OCPP_MIN_PASSWORD}", False))
    elif files:
        out.append(("password_files", f"not used: security_profile = {profile} checks no password", False))
    bound = listen_address(ep)
    if not over_tls and address_known and bound is not None and not is_loopback(bound[0]) and not ep.get("insecure"):
        out.append(("security_profile", f"endpoint {ep.get('name')!r} serves ocpp in plain text on "
                                        f"{bound[0]}:{bound[1]}"
                                        + (" (the chargers' passwords in clear)" if profile == 1 else "")
                                        + ": set security_profile = 2 or 3 (and [tls] cert and key), listen on "
                                          "loopback, or write insecure = true on this endpoint", True))
    return out


def _target(ep: dict, data: dict) -> tuple[dict | None, list]:
    """The DER and function a single-target WAN endpoint (`der`, `function`) steers: the
    DER (None if it does not exist) and the problems found."""
    ders = {d["name"]: d for d in data["der"] if isinstance(d.get("name"), str)}
    name = ep.get("der") or next(iter(ders), "")
    der = ders.get(name)
    if der is None:
        return None, [("der", f"DER {name!r} does not exist (known: {', '.join(ders) or 'none defined'})")]
    out = []
    if ep.get("function") not in der["functions"]:
        out.append(("function", f"{ep.get('function')!r} is not one of {name}'s functions "
                                f"({', '.join(der['functions'])})"))
    return der, out


def _ems_site(ep: dict, data: dict) -> list:
    """The EMS's DER, function and schedule must exist.  Who the EMS is, the broker decides:
    MQTT does not tell a subscriber who published, so whoever may publish on `topic` acts as
    the endpoint's party, and only the broker's ACL (`relevent broker-acl`, docs/parties.md)
    can keep the others out.  Warned about: a party without the broker user that ACL names
    (`mqtt_user`), and a site without a broker user of its own on a broker beyond loopback."""
    der, out = _target(ep, data)
    if der is not None and isinstance(ep.get("schedule"), int) and ep["schedule"] > der["schedules"]:
        out.append(("schedule", f"schedule {ep['schedule']} but {der['name']} has {der['schedules']} per function"))
    party = ep.get("party") or ep.get("name")
    parties = {p.get("name"): p for p in data.get("party", [])}
    if party in parties and not parties[party].get("mqtt_user"):
        out.append(("party", f"anyone who may publish on {ep.get('topic')!r} at the broker acts as party {party!r}: "
                             "give the party an mqtt_user and restrict the broker with `relevent broker-acl`",
                    "warning"))
    host = ep.get("host", "")
    if not ep.get("username") and not is_loopback(host):
        out.append(("username", f"endpoint {ep.get('name')!r} connects to the broker at {host}:{ep.get('port')} "
                                "without a username: the broker cannot tell the site from anyone else, so it "
                                "cannot keep others from reading the EMS's requests or answering them on "
                                f"{ep.get('reply_topic')!r}; give the site a broker user (username, password_file; "
                                "with a certificate the broker takes as user name, its CN) and restrict the "
                                "broker with `relevent broker-acl`", "warning"))
    return out


def _openadr_site(ep: dict, data: dict) -> list:
    """The VEN's DER, function and schedules must exist; a SIMPLE level or a capacity
    fraction needs powers to map to."""
    der, out = _target(ep, data)
    if der is None:
        return out
    name = der["name"]
    numbers = ep.get("schedules") or []
    if not numbers:
        out.append(("schedules", "needs at least one schedule (FSCH number) for the VTN's events"))
    elif len(set(numbers)) != len(numbers):
        out.append(("schedules", f"{numbers}: a schedule is listed twice"))
    elif any(not 1 <= n <= der["schedules"] for n in numbers):
        out.append(("schedules", f"{numbers}: {name} has schedules 1..{der['schedules']} per function"))
    levels = ep.get("simple_levels") or []
    if levels and len(levels) != 4:
        out.append(("simple_levels", f"{len(levels)} powers: SIMPLE has levels 0..3, give 4 (W)"))
    if not der.get("rated_power_w") and (not levels or ep.get("capacity_unit") == "fraction"):
        out.append(("simple_levels" if not levels else "capacity_unit",
                    f"{name} has no rated_power_w to map SIMPLE levels or capacity fractions onto"))
    if not str(ep.get("vtn_url", "")).startswith(("http://", "https://")):
        out.append(("vtn_url", f"{ep.get('vtn_url')!r} is not an http:// or https:// URL"))
    return out


# Every WAN request is made by a party (relevent/policy): one recognised by the credential
# its client presents, else the endpoint's `anonymous` rule.
WAN_KEYS = {
    "party": Field((str,), default="", doc="the party of clients that present no credential of an accepted "
                                           "party, when anonymous = \"party\"; empty: the endpoint's name"),
    "parties": Field((list,), default=[], item_types=(str,),
                     doc="the [[party]] names whose credentials this endpoint accepts; empty: every party"),
    "anonymous": Field((str,), default="", choices=("", "party", "read", "none"),
                       doc="what a client without an accepted credential gets: act as `party`, read only, or "
                           "nothing; empty: \"party\" on a loopback address, \"none\" on any other"),
}
# An endpoint that serves every DER of the site unless told which (MMS, HTTP); the other WAN
# protocols name their DERs in their own tables (`der`, an IEC 104 address table).
SERVED_DERS = {
    "ders": Field((list,), default=[], item_types=(str,),
                  doc="the DERs this endpoint serves, by name (an MMS endpoint's model holds only these: a big "
                      "site splits its DERs over several IEDs, docs/scaling.md); empty: every DER of the site"),
}

PROTOCOLS: dict[str, ProtocolSpec] = {
    spec.name: spec
    for spec in (
        ProtocolSpec(
            "mms", "wan", True,
            {
                **WAN_KEYS,
                **SERVED_DERS,
                "address": Field((str,), default="127.0.0.1", doc="listen address"),
                "port": Field((int,), default=102, check=port_check,
                              doc="102 for plain MMS; 3782 by convention for MMS over TLS (IEC 62351-3)"),
                # MMS over TLS always asks for a client certificate (it names the party)
                **{k: v for k, v in TLS_SERVER_KEYS.items() if k != "client_cert"},
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
                **SERVED_DERS,
                "address": Field((str,), default="127.0.0.1", doc="listen address (loopback unless a proxy or TLS "
                                                                  "faces the network)"),
                "port": Field((int,), default=8080, check=port_check),
                **TLS_SERVER_KEYS,
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
                **TLS_CLIENT_KEYS,
            },
            "relevent.protocols.mqtt_ems.endpoint.MqttEmsEndpoint",
            "schedule requests from a local EMS over MQTT (ReLevENT HEDERA format, watts; docs/mqtt-ems.md)",
            check_site=_ems_site),
        ProtocolSpec(
            "openadr", "wan", False,
            {
                **WAN_KEYS,
                "vtn_url": Field((str,), default="http://127.0.0.1:8081/OpenADR2/Simple/2.0b",
                                 doc="the VTN's OpenADR 2.0b simpleHttp base (services are posted below it)"),
                "ven_name": Field((str,), default="", doc="the name this VEN registers with; empty: the "
                                                          "endpoint's name"),
                "ven_id": Field((str,), default="", doc="a venID agreed with the VTN; empty: the VTN assigns one"),
                "poll_interval": Field(NUMBER, default=0.0, check=non_negative,
                                       doc="seconds between polls; 0: the VTN's requested rate"),
                "der": Field((str,), default="", doc="the DER the VTN's events steer; empty: the site's first DER"),
                "function": Field((str,), default="MaxPow", choices=("ActPow", "MaxPow"),
                                  doc="MaxPow: the event's values are limits (W); ActPow: set-points"),
                "schedules": Field((list,), default=[1], item_types=(int,),
                                   doc="the FSCH numbers events are armed in, one per event to come"),
                "priority": Field((int,), default=50, doc="SchdPrio of the VTN's schedules (market: 50)"),
                "simple_levels": Field((list,), default=[], item_types=(int, float),
                                       doc="W for SIMPLE levels 0..3; empty: 100/70/40/0 % of rated_power_w"),
                "capacity_unit": Field((str,), default="W", choices=("W", "fraction"),
                                       doc="x-loadControlCapacity payloads: watts, or a fraction of rated power"),
                "min_limit_w": Field(NUMBER, default=0.0, doc="a limit under this is opted out of"),
                "lead_s": Field(NUMBER, default=0.5, check=non_negative,
                                doc="a schedule's start is written at least this far ahead"),
                "report": Field((bool,), default=True, doc="offer the DER's measured power as TELEMETRY_USAGE"),
                "offline_polls": Field((int,), default=3, check=positive,
                                       doc="unanswered polls after which the VEN registers again"),
                "reconnect_delay": Field(NUMBER, default=1.0, check=positive,
                                         doc="seconds before registering again (doubling up to backoff_max)"),
                "backoff_max": Field(NUMBER, default=30.0, check=positive),
            },
            "relevent.protocols.openadr.endpoint.OpenAdrEndpoint",
            "OpenADR 2.0b VEN: a VTN's events as schedules, opt-in/out, telemetry reports (docs/openadr.md)",
            check_site=_openadr_site),
        ProtocolSpec(
            "iec104", "wan", True,
            {
                **WAN_KEYS,
                "address": Field((str,), default="127.0.0.1", doc="listen address"),
                "port": Field((int,), default=2404, check=port_check,
                              doc="2404 for plain 104; 19998 by convention for 104 over TLS (IANA iec-104-sec, "
                                  "IEC 62351-3)"),
                # 104 over TLS always asks for a client certificate, and admits only peer_certs
                **{k: v for k, v in TLS_SERVER_KEYS.items() if k != "client_cert"},
                "peer_certs": Field((list,), default=[], item_types=(str,),
                                    doc="with tls: certificate files (PEM or DER) of the controlling stations "
                                        "allowed; each is checked against [tls] ca and the CRLs at start and every "
                                        "crl_refresh_s, and only good ones are admitted (docs/iec104.md)"),
                "common_address": Field((int,), default=1, check=lambda v: None if 1 <= v <= 65534 else
                                        f"common address must be 1..65534, got {v}",
                                        doc="the station's common address (ASDU address)"),
                "max_connections": Field((int,), default=1, check=lambda v: None if 0 <= v <= 255 else
                                         f"max_connections must be 0..255, got {v}",
                                         doc="controlling-station connections open at once (0: no limit); "
                                             "all of them must be of one party"),
                "schedule": Field((int,), default=1, check=positive,
                                  doc="the FSCH (1..N) each command writes, per DER function it steers"),
                "priority": Field((int,), default=250, doc="SchdPrio of the command schedules (250: emergency)"),
                "unit": Field((str,), default="W", choices=("W", "percent"),
                              doc="set-points and analogue monitoring in W or per cent of rated_power_w"),
                "scaled_step": Field(NUMBER, default=1.0, check=positive,
                                     doc="one count of a scaled set-point (C_SE_NB_1), in `unit`"),
                "release_value": Field(NUMBER, default=None,
                                       doc="a set-point of this value (in `unit`) releases (disables) the command "
                                           "schedule; absent: none"),
                "max_age_s": Field(NUMBER, default=10.0, check=positive,
                                   doc="a time-tagged command (C_SE_TC_1) older than this is refused"),
                "no_contact_s": Field(NUMBER, default=60.0, check=non_negative,
                                      doc="seconds without a connected client or a command after which the "
                                          "command schedules end (disabled); 0: never"),
                "functions": Field((list,), default=[], item_types=(dict,),
                                   doc="per DER function, its IOAs: {der, function, C_SE_NC_1, C_SE_NB_1, "
                                       "C_SE_TC_1 (set-points) or C_SC_NA_1 (OnOff), release, output, running, "
                                       "in_force} (docs/iec104.md)"),
                "measurements": Field((list,), default=[], item_types=(dict,),
                                      doc="measured power points: [{der, ioa}] (M_ME_NC_1, in `unit`)"),
            },
            "relevent.protocols.iec104.endpoint.Iec104Endpoint",
            "IEC 60870-5-104 controlled station: set-points and single commands as one-entry schedules, "
            "monitoring points (c104; docs/iec104.md)",
            check_site=_iec104_site),
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
                **TLS_CLIENT_KEYS,
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
        ProtocolSpec(
            "ocpp", "lan", True,
            {
                "address": Field((str,), default="127.0.0.1", doc="listen address of the websocket server"),
                "port": Field((int,), default=9000, check=port_check,
                              doc="chargers connect to ws://address:port/ocpp/<charge point id>"),
                "heartbeat_s": Field((int,), default=60, check=positive,
                                     doc="the Heartbeat interval given in the BootNotification answer"),
                "stack_level": Field((int,), default=0, check=non_negative,
                                     doc="stackLevel of the profiles sent (higher wins on the charger)"),
                "profile_purpose": Field((str,), default="ChargePointMaxProfile",
                                         choices=("ChargePointMaxProfile", "TxDefaultProfile"),
                                         doc="ChargePointMaxProfile (ChargingStationMaxProfile in 2.0.1) or "
                                             "TxDefaultProfile, on connector / EVSE 0"),
                "rate_unit": Field((str,), default="W", choices=("W", "A"),
                                   doc="the chargers' ChargingScheduleAllowedChargingRateUnit: limits in W, "
                                       "or in A per phase = W / (phases * voltage_v)"),
                "phases": Field((int,), default=3, choices=(1, 2, 3), doc="numberPhases of the profiles"),
                "voltage_v": Field(NUMBER, default=230.0, check=positive, doc="phase voltage for A = W / (phases * V)"),
                "call_timeout_s": Field(NUMBER, default=10.0, check=positive,
                                        doc="seconds a charger has to answer a SetChargingProfile (then retried)"),
                "security_profile": Field((int,), default=0, choices=(0, 1, 2, 3),
                                          doc="OCPP security profile: 0 none (a known charge point id is enough), "
                                              "1 HTTP Basic auth over ws (loopback or insecure only), 2 wss:// "
                                              "and Basic auth, 3 wss:// and a client certificate of [tls] ca "
                                              "naming the charge point id (CN or SAN) (docs/ocpp.md)"),
                "tls": Field((bool,), default=None,
                             doc="follows from security_profile (2 and 3 serve wss:// with the site's [tls] "
                                 "certificate); written, it must agree"),
                "password_files": Field((dict,), default={}, check=lambda v: next(
                    (f"password_files.{k}: expected a file name" for k, x in v.items()
                     if not isinstance(x, str) or not x), None),
                    doc="security_profile 1 and 2: per charger, DER name = a file whose first line is its "
                        "Basic auth password (the user is its charge point id), e.g. {ev1 = \"secrets/cp1.pw\"}"),
                "insecure": Field((bool,), default=False,
                                  doc="acknowledge security_profile 0 or 1 (plain ws) on a non-loopback address "
                                      "(`relevent check` refuses that otherwise)"),
            },
            "relevent.protocols.ocpp.endpoint.OcppEndpoint",
            "OCPP 1.6J / 2.0.1 central system (CSMS) for EV chargers: commands as charging profiles, meter "
            "values as measurements (docs/ocpp.md)", check_der=_ocpp_der),
        ProtocolSpec(
            "s2", "lan", True,
            {
                "address": Field((str,), default="127.0.0.1", doc="listen address of the websocket server"),
                "port": Field((int,), default=8765, check=port_check,
                              doc="resource managers connect to ws://address:port/s2/<resource id> (or /s2, "
                                  "known then by their ResourceManagerDetails); S2 assigns no port"),
                "envelope_s": Field(NUMBER, default=900.0, check=positive,
                                    doc="s each PEBC power envelope lasts; refreshed every envelope_s / 3, so it "
                                        "ends (and the device runs by itself) only when the site stops"),
                "call_timeout_s": Field(NUMBER, default=10.0, check=positive,
                                        doc="s an RM has to answer an instruction's ReceptionStatus (then retried)"),
                "symmetric_power": Field((str,), default="total", choices=("total", "per_phase"),
                                         doc="what a value on ELECTRIC.POWER.3_PHASE_SYMMETRIC is: the device's "
                                             "total W, or W per phase (x 3); S2 does not say"),
                "insecure": Field((bool,), default=False,
                                  doc="acknowledge plain ws:// on a non-loopback address (`relevent check` "
                                      "refuses that otherwise: S2 over TLS is not in this build)"),
            },
            "relevent.protocols.s2.endpoint.S2Endpoint",
            "S2 (EN 50491-12-2) CEM for smart devices' resource managers: commands as PEBC power envelopes, "
            "PowerMeasurements as measurements (docs/s2.md)", check_der=_s2_der),
        ProtocolSpec(
            "mqtt-relay", "lan", False,
            {
                "host": Field((str,), default="127.0.0.1", doc="the broker the relays are on"),
                "port": Field((int,), default=1883, check=port_check),
                "qos": Field((int,), default=1, choices=(0, 1, 2), doc="of the relay commands and subscriptions"),
                "reconnect_delay": Field(NUMBER, default=1.0, check=positive, doc="seconds between reconnects"),
                "measure_period": Field(NUMBER, default=1.0, check=positive,
                                        doc="seconds between measurements sent to the DER from the last relay, "
                                            "contact and power values seen (devices report changes only)"),
                **TLS_CLIENT_KEYS,
            },
            "relevent.protocols.mqtt_relay.endpoint.MqttRelayEndpoint",
            "SG-Ready over MQTT relays (Tasmota, Home Assistant or explicit topics), a control box's contact "
            "as a §14a input (docs/devices.md)", check_der=_mqtt_relay_der, der_keys=("relays",)),
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
                "grid_voltage_v": Field(NUMBER, default=230.0, check=positive,
                                        doc="V, phase to neutral, in model 103 PhVphA..C (a Modbus write to "
                                            "PhVphA sets it too: the simulator's test hook)"),
                "voltage_steps": Field((list,), default=[], item_types=(list,), check=lambda v: next(
                    (f"{s!r} is not [after_s >= 0, volts > 0]" for s in v if len(s) != 2 or any(
                        isinstance(x, bool) or not isinstance(x, (int, float)) for x in s) or s[0] < 0 or s[1] <= 0),
                    None), doc="scenario: the grid voltage becomes `volts` `after_s` seconds after the start, "
                               "e.g. [[60, 241.0], [180, 232.0]]"),
            },
            "relevent.simulators.sunspec_inverter.SunSpecInverter", "SunSpec inverter on Modbus TCP"),
        ProtocolSpec(
            "heat-pump", "simulator", True,
            {
                "address": Field((str,), default="127.0.0.1", doc="listen address"),
                "port": Field((int,), default=5021, check=port_check),
                "unit": Field((int,), default=1, check=lambda v: None if 1 <= v <= 247 else "unit must be 1..247"),
                "map": Field((str,), default="example-register", check=_sgready_map,
                             doc="the SG-Ready register map it serves (relevent/devices/sgready_maps.toml)"),
                "rated_w": Field(NUMBER, default=6000.0, check=positive, doc="electrical power at full speed, W"),
                "min_modulation": Field(NUMBER, default=0.3, check=lambda v: None if 0 <= v <= 1 else
                                        "must be 0..1", doc="least speed (fraction of rated_w): a lower power "
                                                            "limit stops the compressor"),
                "min_run_s": Field(NUMBER, default=600.0, check=non_negative, doc="compressor, simulated s"),
                "min_off_s": Field(NUMBER, default=300.0, check=non_negative, doc="compressor, simulated s"),
                "ua_w_per_k": Field(NUMBER, default=350.0, check=positive, doc="the house's heat loss, W/K"),
                "house_j_per_k": Field(NUMBER, default=3.0e7, check=positive, doc="the house's thermal mass, J/K"),
                "emitter_w_per_k": Field(NUMBER, default=800.0, check=positive,
                                         doc="radiators/floor: heat to the house per K of tank over indoor"),
                "tank_l": Field(NUMBER, default=300.0, check=positive, doc="buffer tank, litres of water"),
                "tank_set_c": Field(NUMBER, default=45.0, doc="tank set-point, C (state 3: +5 K, state 4: +10 K)"),
                "tank_hysteresis_k": Field(NUMBER, default=5.0, check=positive),
                "tank_max_c": Field(NUMBER, default=60.0, doc="the compressor stops above it, whatever the state"),
                "carnot_fraction": Field(NUMBER, default=0.45, check=lambda v: None if 0 < v <= 1 else
                                         "must be 0 < f <= 1", doc="COP = fraction x Carnot COP of the temperatures"),
                "indoor_start_c": Field(NUMBER, default=20.5),
                "tank_start_c": Field(NUMBER, default=42.0),
                "comfort_min_c": Field(NUMBER, default=19.0,
                                       doc="indoor below it: the heat pump leaves a block on its own (reported)"),
                "room_set_c": Field(NUMBER, default=21.0, doc="the room thermostat: heat flows to the house below it"),
                "outdoor_mean_c": Field(NUMBER, default=2.0, doc="daily sine: mean, C"),
                "outdoor_amplitude_k": Field(NUMBER, default=5.0, check=non_negative, doc="daily sine: amplitude"),
                "coldest_hour": Field(NUMBER, default=5.0, doc="daily sine: the coldest hour of the day"),
                "start_hour": Field(NUMBER, default=0.0, doc="simulated time of day at the start, h"),
                "time_scale": Field(NUMBER, default=1.0, check=positive,
                                    doc="simulated seconds per real second (1440: a day in a minute)"),
                "write_log": Field((str,), default="", doc="append every register write (JSON lines, ns) here"),
                "s2_url": Field((str,), default="", check=lambda v: None if v == "" or v.startswith(
                    ("ws://", "wss://")) else f"{v!r} is not a ws:// or wss:// URL",
                                doc="also an S2 resource manager (s2-python's RM side) of the CEM at this URL, "
                                    "e.g. ws://127.0.0.1:8765/s2/<resource id>; empty: no S2 (docs/s2.md)"),
                "s2_resource_id": Field((str,), default="", check=lambda v: None if v == "" or (
                    len(v.replace("-", "")) == 32 and all(c in "0123456789abcdefABCDEF" for c in v.replace("-", "")))
                    else f"{v!r} is not a UUID (S2 identifiers are UUIDs)",
                                        doc="the RM's resource id (its DER's address); empty: the last segment of "
                                            "s2_url's path"),
                "s2_measure_s": Field(NUMBER, default=1.0, check=positive,
                                      doc="s between the RM's PowerMeasurements of the electrical power"),
            },
            "relevent.simulators.heat_pump.HeatPumpSimulator",
            "a heat pump in a house (thermal model) serving SG-Ready and a power limit on Modbus TCP"),
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
        ProtocolSpec(
            "ocpp-charger", "simulator", False,
            {
                "url": Field((str,), default="ws://127.0.0.1:9000/ocpp",
                             check=lambda v: None if v.startswith(("ws://", "wss://")) else
                             f"{v!r} is not a ws:// or wss:// URL",
                             doc="the site's OCPP endpoint; the charge point id is appended as the last segment"),
                "charge_point_id": Field((str,), required=True, doc="the charger's id: the address of its DER"),
                "ocpp_version": Field((str,), default="1.6", choices=("1.6", "2.0.1")),
                "rated_power_w": Field(NUMBER, default=11000.0, check=positive,
                                       doc="what the EV draws when no profile limits it"),
                "voltage_v": Field(NUMBER, default=230.0, check=positive, doc="to read limits given in A"),
                "ramp_w_per_s": Field(NUMBER, default=0.0, check=non_negative, doc="0: instant"),
                "meter_period_s": Field(NUMBER, default=1.0, check=positive, doc="seconds between meter values"),
                "power_samples": Field((bool,), default=True,
                                       doc="false: its meter values hold only the energy register "
                                           "(Energy.Active.Import.Register), as many chargers send"),
                "reject_profiles": Field((bool,), default=False, doc="answer every SetChargingProfile Rejected"),
                "command_log": Field((str,), default="", doc="append every profile obeyed (JSON lines, ns) here"),
                "ca": Field((str,), default="", doc="wss://: the CA bundle the site's certificate must chain to "
                                                   "(its name checked against the URL's host); empty: the "
                                                   "system's CAs"),
                "cert": Field((str,), default="", doc="wss://, security profile 3: the charger's certificate (PEM; "
                                                     "CN or SAN = charge point id)"),
                "key": Field((str,), default="", doc="its private key (PEM)"),
                "password_file": Field((str,), default="",
                                       doc="security profiles 1 and 2: a file whose first line is the charger's "
                                           "Basic auth password (user: charge point id)"),
            },
            "relevent.simulators.ocpp_charger.OcppCharger",
            "an EV charger (OCPP 1.6J or 2.0.1) with an EV plugged in: obeys charging profiles, ramps, reports "
            "meter values"),
        ProtocolSpec(
            "openadr-vtn", "simulator", True,
            {
                "address": Field((str,), default="127.0.0.1", doc="listen address"),
                "port": Field((int,), default=8081, check=port_check),
                "vtn_id": Field((str,), default="RELEVENT_VTN", doc="not all lower case (openleadr's VENs refuse it)"),
                "poll_s": Field(NUMBER, default=10.0, check=positive, doc="the poll rate it asks of VENs"),
                "report_s": Field(NUMBER, default=10.0, check=positive, doc="the telemetry sampling it asks for"),
                "first_event_s": Field(NUMBER, default=30.0, check=non_negative,
                                       doc="seconds from a VEN's registration to its first event"),
                "event_every_s": Field(NUMBER, default=300.0, check=positive, doc="seconds between events"),
                "lead_s": Field(NUMBER, default=30.0, check=positive, doc="an event starts this long after it is issued"),
                "interval_s": Field((int,), default=60, check=positive, doc="length of each interval"),
                "signal": Field((str,), default="LOAD_CONTROL", choices=("LOAD_CONTROL", "SIMPLE"),
                                doc="LOAD_CONTROL/x-loadControlCapacity (W) or SIMPLE/level"),
                "values": Field((list,), default=[6000.0, 4000.0, 2000.0], item_types=(int, float),
                                doc="one payload per interval: W, or SIMPLE levels 0..3"),
            },
            "relevent.simulators.openadr_vtn.OpenAdrVtn",
            "an OpenADR 2.0b VTN (openleadr) that registers VENs, issues an event every few minutes, takes reports"),
        ProtocolSpec(
            "iec104-station", "simulator", False,
            {
                "host": Field((str,), default="127.0.0.1", doc="the site's iec104 endpoint"),
                "port": Field((int,), default=2404, check=port_check),
                "common_address": Field((int,), default=1, check=lambda v: None if 1 <= v <= 65534 else
                                        "common_address must be 1..65534"),
                "setpoint_ioa": Field((int,), required=True, doc="IOA of a C_SE_NC_1 set-point at the endpoint"),
                "release_ioa": Field((int,), required=True, doc="IOA of the C_SC_NA_1 release at the endpoint"),
                "values": Field((list,), default=[60.0, 30.0], item_types=(int, float),
                                doc="set-points sent in turn, in the endpoint's unit (W or per cent)"),
                "first_s": Field(NUMBER, default=20.0, check=non_negative, doc="seconds before the first"),
                "every_s": Field(NUMBER, default=240.0, check=positive, doc="seconds between set-points"),
                "hold_s": Field(NUMBER, default=60.0, check=positive, doc="seconds a set-point holds before "
                                                                          "its release"),
            },
            "relevent.simulators.iec104_station.Iec104Station",
            "an IEC 104 controlling station (c104's client) sending set-points and releases in turn"),
        ProtocolSpec(
            "registration-service", "simulator", True,
            {
                "address": Field((str,), default="127.0.0.1", doc="listen address (HTTPS)"),
                "port": Field((int,), default=8443, check=port_check),
                "folder": Field((str,), default="",
                                doc="the test PKI (root, device CA, TLS certificate, issued list), made if absent; "
                                    "empty: STATE_DIR/registration-service/NAME"),
                "tokens_file": Field((str,), default="",
                                     doc="`DEVICE_CODE TOKEN` lines it accepts; empty: FOLDER/tokens.txt"),
                "hostnames": Field((list,), default=[], item_types=(str,),
                                   doc="names and addresses in its TLS certificate (plus address, localhost, "
                                       "127.0.0.1)"),
                "cert_days": Field(NUMBER, default=365.0, check=positive, doc="lifetime of an issued certificate"),
                "crl_days": Field(NUMBER, default=7.0, check=positive, doc="the CRL's next update, from now"),
                "down_file": Field((str,), default="", doc="while this file exists, devices get 503 (tests)"),
            },
            "relevent.simulators.registration_service.RegistrationService",
            "a registration service (Dutch DSO specification) backed by a test CA: issues certificates for CSRs "
            "with a known token, serves a CRL, revokes on request (docs/registration.md)"),
    )
}


def serves(endpoint: dict, der: str) -> bool:
    """Whether a WAN endpoint serves the DER named `der`: one its `ders` names, or any if it
    names none.  The one place that decides it: the site hands an endpoint only the DERs it
    serves (served_ders) and sends it only their states, and an MMS endpoint's model,
    exported or served, holds only these."""
    return not endpoint.get("ders") or der in endpoint["ders"]


def served_ders(endpoint: dict, ders: list[dict]) -> list[dict]:
    """The DERs a WAN endpoint serves (see serves), in the site's order."""
    return [d for d in ders if serves(endpoint, d["name"])]


def is_loopback(host: str) -> bool:
    """Whether a host (a name or an address) only reaches this machine: "localhost" or a
    loopback address; any other name counts as facing the network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def listen_address(endpoint: dict) -> tuple[str, int] | None:
    """(address, port) an endpoint binds, or None if it only connects out."""
    spec = PROTOCOLS.get(endpoint.get("protocol", ""))
    if endpoint.get("embedded_broker"):
        return endpoint.get("host", "127.0.0.1"), endpoint["port"]
    if spec is None or not spec.listens:
        return None
    return endpoint.get("address", "127.0.0.1"), endpoint["port"]
