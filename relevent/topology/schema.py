"""What a topology file may contain: sections, keys, types, defaults.

The schema is data, so `relevent check`, the loader and the docs all read one source.
Protocol-specific endpoint keys come from `relevent.protocols.registry`.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable

STRATEGIES = ("one_for_one", "rest_for_one", "one_for_all")
BASES = ("multiprocTCPBase", "simpleSystemBase")
KINDS = ("ActPow", "MaxPow", "OnOff")
DER_TYPES = ("pv", "battery", "ev_charger", "heat_pump", "hems", "generic")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Field:
    """One key: accepted Python types, default (``REQUIRED`` if none) and an extra check
    returning an error message or None."""

    types: tuple[type, ...]
    default: Any = None
    required: bool = False
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None
    doc: str = ""
    item_types: tuple[type, ...] | None = field(default=None)


def port_check(v: Any) -> str | None:
    return None if 1 <= v <= 65535 else f"port {v} is outside 1..65535"


def positive(v: Any) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def nice_check(v: Any) -> str | None:
    return None if -20 <= v <= 19 else f"must be a nice value from -20 to 19, got {v}"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v}"


def host_port(v: Any) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit():
        return f"expected HOST:PORT, got {v!r}"
    return port_check(int(port))


PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")


def private_network_check(v: Any) -> str | None:
    """An IPv4 network in CIDR form inside PRIVATE_RANGES (RFC 1918, and the 100.64.0.0/10
    shared space some VPNs use): thespian's unauthenticated pickles must not leave it."""
    try:
        net = ipaddress.IPv4Network(v)
    except ipaddress.NetmaskValueError:
        return f"{v!r} is not an IPv4 network: expected a CIDR such as \"10.8.0.0/24\""
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.IPv4Network(v, strict=False)
            return f"{v!r} has host bits set: write the network, \"{fixed}\""
        return f"{v!r} is not an IPv4 network: expected a CIDR such as \"10.8.0.0/24\""
    if "/" not in v:
        return f"{v!r} has no prefix length: write a CIDR such as \"{v}/24\""
    if net.is_loopback:
        return f"{v} is loopback: a multi-host site's hosts cannot reach each other on it"
    if not any(net.subnet_of(ipaddress.IPv4Network(p)) for p in PRIVATE_RANGES):
        return (f"{v} is not a private network (RFC 1918 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, or "
                f"100.64.0.0/10): thespian's traffic must stay on a WireGuard tunnel or an isolated VLAN")
    return None


NUMBER = (int, float)

SITE = {
    "name": Field((str,), required=True, doc="site name, used in logs and actor names"),
    "description": Field((str,), default=""),
    "state_dir": Field((str,), default="./state", doc="persisted state, control socket and logs"),
    "audit_retention_days": Field(NUMBER, default=7.0, check=positive,
                                  doc="days the audit log keeps (whole files, STATE_DIR/audit; docs/audit.md)"),
    "audit_failure": Field((str,), default="continue", choices=("continue", "refuse"),
                           doc="when the audit log cannot be written (a full disk): continue (the site keeps "
                               "following its grid operator, the failure is logged) or refuse every instruction "
                               "until it can (docs/audit.md)"),
}

def _host_label(v: str) -> str | None:
    """A host name is a label that names a convention member (thespian capability "relevent host")."""
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,62}", v):
        return None
    return f"host {v!r} must start with a letter and use only letters, digits, '_', '-' and '.' (at most 63)"


RUNTIME = {
    "base": Field((str,), default="multiprocTCPBase", choices=BASES,
                  doc="thespian system base; simpleSystemBase runs everything in one process"),
    "admin_port": Field((int,), default=19500, check=port_check,
                        doc="thespian admin port (loopback; a multi-host site's address on private_network)"),
    "convention_leader": Field((str,), default="", check=lambda v: host_port(v) if v else None,
                               doc="HOST:PORT of the convention leader for multi-host sites: the "
                                   "leader's address on private_network (docs/deploy.md)"),
    "private_network": Field((str,), default="", check=lambda v: private_network_check(v) if v else None,
                             doc="CIDR of the private network (a WireGuard tunnel or an isolated VLAN) "
                                 "thespian's convention traffic stays on, e.g. \"10.8.0.0/24\"; needed "
                                 "with convention_leader: thespian binds this host's address in it"),
    "allow_fault_injection": Field((bool,), default=False,
                                   doc="accept `relevent fault` (chaos tests); never in production"),
    "log_level": Field((str,), default="INFO", choices=LOG_LEVELS),
    "stop_timeout": Field(NUMBER, default=20.0, check=positive,
                          doc="seconds a stop for good may take (actors stopped in reverse start order) "
                              "before what is left is killed; under systemd, below TimeoutStopSec (30)"),
    "controller_isolation": Field((str,), default="process", choices=("process", "der"),
                                  doc="process: every controller in its own process; der: a DER's "
                                      "controllers in the DER's process (~7 MiB less each; a crash "
                                      "in C or a hang takes the DER's other controllers along)"),
    "ders_per_process": Field((int,), default=1, check=lambda v: None if 1 <= v <= 1000 else
                              f"ders_per_process must be 1..1000, got {v}",
                              doc="1: every DER in a process of its own; N > 1: DERs share processes, N "
                                  "to a group (in topology order, per host), each DER with its "
                                  "controllers (needs controller_isolation = \"der\"); ~5 MiB less a DER "
                                  "and a faster start, but a crash in C or a hang takes the group's other "
                                  "DERs along (docs/scaling.md)"),
    "metrics": Field((str,), default="", check=lambda v: host_port(v) if v else None,
                     doc="HOST:PORT of the Prometheus metrics endpoint (/metrics), e.g. \"127.0.0.1:9108\"; "
                         "\"\" (the default: two sites on a host must not fight for one port) disables it; "
                         "a non-loopback address needs metrics_insecure (docs/observability.md)"),
    "metrics_insecure": Field((bool,), default=False,
                              doc="serve metrics on a non-loopback address (no authentication: a "
                                  "trusted network only)"),
    "history_days": Field(NUMBER, default=7.0, check=non_negative,
                          doc="days of DER history (STATE_DIR/history.sqlite) to keep; 0 disables it"),
    "sample_s": Field(NUMBER, default=5.0, check=positive,
                      doc="seconds between the observer's samples of the site (metrics and history)"),
}

SUPERVISION = {
    "strategy": Field((str,), default="one_for_one", choices=STRATEGIES),
    "max_restarts": Field((int,), default=10, check=non_negative,
                          doc="restart intensity: more restarts than this within `period` escalates"),
    "period": Field(NUMBER, default=30.0, check=positive, doc="seconds"),
    "backoff_initial": Field(NUMBER, default=0.1, check=non_negative,
                             doc="delay before the 2nd restart of a child within `period`, doubling"),
    "backoff_max": Field(NUMBER, default=5.0, check=non_negative),
    "heartbeat_interval": Field(NUMBER, default=0.2, check=positive),
    "heartbeat_timeout": Field(NUMBER, default=0.6, check=positive,
                               doc="no heartbeat reply for this long: the child is killed and restarted"),
    "startup_timeout": Field(NUMBER, default=60.0, check=positive,
                             doc="seconds a child may take to become ready (an MMS endpoint serving 10 DERs "
                                 "needs ~16 s: bench/README.md)"),
    "placement_timeout": Field(NUMBER, default=5.0, check=positive,
                               doc="seconds a child placed on a member host may take to say Hello (its first "
                                   "message, before any work); after that its creation is taken as lost (the "
                                   "member died or is restarting) and tried again after backoff_max, without "
                                   "counting as a failure (docs/deploy.md)"),
}
# [supervision] holds defaults; [supervision.<level>] overrides them per supervisor level.
SUPERVISION_LEVELS = ("site", "group", "der", "controller")

ENDPOINT_COMMON = {
    "name": Field((str,), required=True),
    "protocol": Field((str,), required=True),
}

# Where a [[lan]] endpoint or a [[simulator]] runs (docs/deploy.md "Placing DERs on member
# hosts"): the same host names as [[der]] host, under another key because a [[lan]]'s `host`
# is already its device's or broker's address.  WAN endpoints are not placed: they face the
# grid operator from the leader.  An embedded broker goes with its LAN endpoint.
PLACED_ROLES = ("lan", "simulator")
RUNS_ON = {
    "runs_on": Field((str,), default="", check=lambda v: _host_label(v) if v else None,
                     doc="the host this LAN endpoint (with its embedded broker) or simulator runs on: \"\" (the "
                         "default) is the leader (`relevent run`), a name is the member started with `relevent "
                         "member --host NAME` on a multi-host site, e.g. the one next to its devices; its "
                         "addresses (host, address, url) are then that host's, 127.0.0.1 its own loopback "
                         "(docs/deploy.md)"),
}

DER = {
    "name": Field((str,), required=True),
    "type": Field((str,), default="generic", choices=DER_TYPES),
    "functions": Field((list,), default=list(KINDS), item_types=(str,),
                       check=lambda v: next((f"unknown control function {k!r} (use {', '.join(KINDS)})"
                                             for k in v if k not in KINDS), None)
                       or (f"duplicate control function in {v}" if len(set(v)) != len(v) else None)
                       or ("needs at least one control function" if not v else None)),
    "schedules": Field((int,), default=10, check=lambda v: None if 1 <= v <= 99 else
                       f"schedules per control function must be 1..99, got {v}"),
    "lan": Field((str,), default="", doc="name of the LAN endpoint that reaches the device"),
    "host": Field((str,), default="", check=lambda v: _host_label(v) if v else None,
                  doc="the host this DER (and its controllers) runs on: \"\" (the default) is the leader "
                      "(`relevent run`), a name is the member started with `relevent member --host NAME` "
                      "on a multi-host site; best the runs_on of its LAN endpoint (docs/deploy.md)"),
    "address": Field((int, str), default="", doc="device address on that endpoint (unit id, topic, ...)"),
    "profile": Field((str,), default="", doc="device profile, e.g. sunspec, pivot"),
    "rated_power_w": Field(NUMBER, default=0.0, check=non_negative),
    "values": Field((int,), default=100, check=lambda v: None if 1 <= v <= 100 else
                    f"values per schedule must be 1..100, got {v}", doc="value slots per schedule"),
    "reserve": Field((dict,), default={}, check=lambda v: next(
        (f"reserve.{k}: not a control function (use {', '.join(KINDS)})" for k in v if k not in KINDS), None)
        or next((f"reserve.{k}: expected a number or boolean" for k, x in v.items()
                 if not isinstance(x, (int, float, bool))), None),
        doc="reserve (fallback) value per control function, e.g. {MaxPow = 10000.0, OnOff = true}"),
    "locks": Field((dict,), default={}, check=lambda v: _check_locks(v),
                   doc="per function and schedule, what clients may not do: "
                       "{ActPow = {FSCH01 = [\"DsaReq\", \"StrTm\"]}}"),
    "points": Field((dict,), default={}, check=lambda v: next(
        (f"points.{k}: expected a string label" for k, x in v.items() if not isinstance(x, str)), None),
        doc="pivot labels (Identifier) per control function and measurement (W, Conn); "
            "default \"<der>.<key>\", e.g. {ActPow = \"TS1\"}"),
    "registers": Field((dict,), default={}, check=lambda v: _check_registers(v),
                       doc="plain Modbus register map (profile = \"registers\"): holding register addresses "
                           "setpoint, connect, power and a scale in W per count, e.g. "
                           "{setpoint = 100, connect = 101, power = 200, scale = 10}"),
    "guaranteed_min_w": Field(NUMBER, default=4200.0, check=non_negative,
                              doc="a load (heat_pump): the least a DSO limit (MaxPow) leaves it, W drawn; a "
                                  "lower limit is raised to it unless rated_power_w is smaller (§14a EnWG: 4200)"),
    "sgready": Field((dict,), default={}, check=lambda v: _check_sgready(v),
                     doc="profile = \"sgready\": {map = \"example-register\" (relevent/devices/sgready_maps.toml), "
                         "min_run_s, min_off_s (the compressor's), block_max_s = 7200, blocks_per_day = 3 (the "
                         "tariff's), forced_w (a requested consumption from which state 4 is sent; default "
                         "rated_power_w)} (docs/devices.md)"),
    "relays": Field((dict,), default={}, check=lambda v: _check_relays(v),
                    doc="lan on an mqtt-relay endpoint: the MQTT relays on the SG-Ready inputs, {style = "
                        "\"tasmota\", device, channels = [1, 2], contact (SWITCHn)} or {style = \"homeassistant\", "
                        "prefix, contact_topic} or {style = \"explicit\", input1_command, input2_command, ...}; "
                        "power_topic (docs/devices.md \"SG-Ready over MQTT relays\")"),
    "local": Field((list,), default=[], check=lambda v: _check_local(v),
                   doc="local schedules (docs/scheduling.md): [{trigger = \"no_telecom\" | \"power_up\" | "
                       "\"measurement\", function, schedule = \"FSCHnn\", value, duration_s, priority, after_s "
                       "(no_telecom); measure = \"voltage_v\" | \"frequency_hz\" | \"power_w\" | \"contact\", above or "
                       "below, hysteresis, min_duration_s, clear_s (measurement)}]"),
    "at_stop": Field((str,), default="keep", choices=("keep", "reserve"),
                     doc="what the device is left with when the site stops for good (SIGTERM, systemctl stop): "
                         "keep the last command until the device's own reversion timer, or send the reserve "
                         "values (confirmed by the device) before the LAN endpoints stop"),
    "ld_inst": Field((str,), default="", check=lambda v: None if not v or (v.isidentifier() and len(v) <= 64)
                     else f"ld_inst {v!r} must be letters, digits and '_' (max 64)",
                     doc="IEC 61850 logical device; default Control (one DER) or <name>Control"),
}

from relevent.policy import OPERATIONS, PRIO_MAX  # noqa: E402 - the policy owns its vocabulary
from relevent.scheduling.schedule import LOCKABLE  # noqa: E402 - one definition of what can be locked
from relevent.scheduling.local import MEASURES as LOCAL_MEASURES  # noqa: E402 - what a trigger can watch
from relevent.scheduling.local import TRIGGERS as LOCAL_TRIGGERS  # noqa: E402


REGISTER_KEYS = ("setpoint", "connect", "power", "scale")


def _check_registers(v: dict) -> str | None:
    for key, x in v.items():
        if key not in REGISTER_KEYS:
            return f"registers.{key}: unknown (use {', '.join(REGISTER_KEYS)})"
        if key == "scale":
            if isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0:
                return "registers.scale: expected a positive number (W per register count)"
        elif isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= 65535:
            return f"registers.{key}: expected a register address 0..65535"
    return None


SGREADY_KEYS = {"map": (str,), "min_run_s": NUMBER, "min_off_s": NUMBER, "block_max_s": NUMBER,
                "blocks_per_day": (int,), "forced_w": NUMBER}


def _check_sgready(v: dict) -> str | None:
    from relevent.devices import sgready
    for key, x in v.items():
        if key not in SGREADY_KEYS:
            return f"sgready.{key}: unknown (use {', '.join(SGREADY_KEYS)})"
        if isinstance(x, bool) or not isinstance(x, SGREADY_KEYS[key]):
            return f"sgready.{key}: wrong type {type(x).__name__}"
    if "map" in v:
        try:
            sgready.get_map(v["map"])
        except ValueError as exc:
            return f"sgready.map: {exc}"
    if v.get("block_max_s", 7200) <= 0:
        return "sgready.block_max_s: must be > 0"
    if v.get("forced_w", 1) <= 0:
        return "sgready.forced_w: must be > 0"
    try:
        sgready.Rules(v.get("min_run_s", 0), v.get("min_off_s", 0), v.get("block_max_s", 7200),
                      v.get("blocks_per_day", 3))
    except ValueError as exc:
        return f"sgready: {exc}"
    return None


def _check_relays(v: dict) -> str | None:
    """An empty table is no relays (the mqtt-relay endpoint's check asks for them)."""
    from relevent.protocols.mqtt_relay.relays import parse
    if not v:
        return None
    try:
        parse(v)
    except ValueError as exc:
        return str(exc)
    return None


LOCAL_KEYS = {"trigger": (str,), "function": (str,), "schedule": (str,), "value": (int, float, bool),
              "duration_s": (int,), "priority": (int,), "after_s": (int, float),
              "measure": (str,), "above": (int, float), "below": (int, float), "hysteresis": (int, float),
              "min_duration_s": (int, float), "clear_s": (int, float)}
# Keys of one trigger only: required (R) or optional (O, default 0).  The others are common and required.
LOCAL_TRIGGER_KEYS = {"after_s": ("no_telecom", "R"), "measure": ("measurement", "R"),
                      "above": ("measurement", "O"), "below": ("measurement", "O"),
                      "hysteresis": ("measurement", "O"), "min_duration_s": ("measurement", "O"),
                      "clear_s": ("measurement", "O")}


def _check_local(v: list) -> str | None:
    seen = set()
    for i, item in enumerate(v):
        where = f"local[{i}]"
        if not isinstance(item, dict):
            return f"{where}: expected a table"
        for key in item:
            if key not in LOCAL_KEYS:
                return f"{where}.{key}: unknown (use {', '.join(LOCAL_KEYS)})"
        for key, types in LOCAL_KEYS.items():
            only = LOCAL_TRIGGER_KEYS.get(key)
            if only is not None and item.get("trigger") != only[0]:
                if key in item and item.get("trigger") in LOCAL_TRIGGERS:
                    return f"{where}.{key}: only for trigger = \"{only[0]}\""
                continue
            if key not in item:
                if only is not None and only[1] == "O":
                    continue
                return f"{where}: missing {key}"
            if not isinstance(item[key], types) or (isinstance(item[key], bool) and bool not in types):
                return f"{where}.{key}: wrong type {type(item[key]).__name__}"
        if item["trigger"] not in LOCAL_TRIGGERS:
            return f"{where}.trigger: {item['trigger']!r} is not power_up or no_telecom or measurement"
        if item["trigger"] == "measurement":
            err = _check_measurement_trigger(item)
            if err:
                return f"{where}{err}"
        if item["function"] not in KINDS:
            return f"{where}.function: {item['function']!r} is not one of {', '.join(KINDS)}"
        if not (item["schedule"].startswith("FSCH") and item["schedule"][4:].isdigit()):
            return f"{where}.schedule: {item['schedule']!r} is not FSCHnn (the reserve cannot be used)"
        if item["duration_s"] <= 0 or not 0 <= item["priority"] <= 255:
            return f"{where}: duration_s must be > 0 and priority 0..255"
        if item["trigger"] == "no_telecom" and item["after_s"] <= 0:
            return f"{where}.after_s: must be > 0"
        key = (item["function"], item["schedule"])
        if key in seen:
            return f"{where}: {item['function']} {item['schedule']} is already a local schedule"
        seen.add(key)
    return None


def _check_measurement_trigger(item: dict) -> str | None:
    """The keys of a measurement trigger (relevent/scheduling/trigger.py); an error starts
    with the key (".above: ...") for the caller to put after local[i]."""
    if item["measure"] not in LOCAL_MEASURES:
        return f".measure: {item['measure']!r} is not one of {', '.join(LOCAL_MEASURES)}"
    if ("above" in item) == ("below" in item):
        return ".above: measurement trigger needs exactly one of above/below"
    threshold = item.get("above", item.get("below"))
    if item["measure"] == "contact" and not 0 < threshold < 1:
        key = "above" if "above" in item else "below"
        return (f".{key}: a contact reads 1 closed and 0 open: use above = 0.5 (armed while closed) or "
                f"below = 0.5 (while open), not {threshold}")
    for key in ("hysteresis", "min_duration_s", "clear_s"):
        if item.get(key, 0) < 0:
            return f".{key}: must be >= 0, got {item[key]}"
    return None


def _check_locks(v: dict) -> str | None:
    for kind, per_schedule in v.items():
        if kind not in KINDS:
            return f"locks.{kind}: not a control function (use {', '.join(KINDS)})"
        if not isinstance(per_schedule, dict):
            return f"locks.{kind}: expected a table of schedule = [locks]"
        for name, locks in per_schedule.items():
            if not (name.startswith("FSCH") or name == "Res_FSCH01"):
                return f"locks.{kind}.{name}: not a schedule name (FSCH01.., Res_FSCH01)"
            if not isinstance(locks, list) or any(x not in LOCKABLE for x in locks):
                return f"locks.{kind}.{name}: expected a list of {', '.join(LOCKABLE)}"
    return None


def _check_band(v: list) -> str | None:
    if len(v) != 2 or not 0 <= v[0] <= v[1] <= PRIO_MAX:
        return f"expected [lowest, highest] with 0 <= lowest <= highest <= {PRIO_MAX}, got {v}"
    return None


# [[party]]: who sends instructions, how each protocol recognises it, and its rights
# (relevent/policy, docs/parties.md).  A site without parties gives every endpoint's party
# every right.
PARTY = {
    "name": Field((str,), required=True),
    "description": Field((str,), default=""),
    "mms_password": Field((str,), default="", doc="ACSE password its MMS clients present (use ${VAR} to keep "
                                                  "it out of the file)"),
    "http_token": Field((str,), default="", doc="bearer token its HTTP clients present (Authorization: Bearer)"),
    "cert_cn": Field((str,), default="", doc="the common name (or a subject alternative name) of its TLS client "
                                             "certificate (docs/tls.md)"),
    "mqtt_user": Field((str,), default="", check=lambda v: None if v == v.strip() and v.isprintable() else
                       f"{v!r}: a broker user name has no leading or trailing blanks and no control characters "
                       "(a line of the broker's acl_file names it)",
                       doc="the broker user its local EMS publishes as (docs/parties.md: the broker's ACL, from "
                           "`relevent broker-acl`, lets only this user publish on the EMS's request topic)"),
    "peers": Field((list,), default=[], item_types=(str,),
                   doc="peer identities: IEC 104 controlling-station IP addresses, OpenADR VTN ids"),
    "ders": Field((list,), default=[], item_types=(str,), doc="DERs it may steer; empty: all"),
    "functions": Field((list,), default=[], item_types=(str,),
                       check=lambda v: next((f"unknown control function {k!r} (use {', '.join(KINDS)})"
                                             for k in v if k not in KINDS), None),
                       doc="control functions it may steer; empty: all"),
    "operations": Field((list,), default=list(OPERATIONS), item_types=(str,),
                        check=lambda v: next((f"unknown operation {k!r} (use {', '.join(OPERATIONS)})"
                                              for k in v if k not in OPERATIONS), None)),
    "priority": Field((list,), default=[0, PRIO_MAX], item_types=(int,), check=_check_band,
                      doc="its band of SchdPrio, [lowest, highest]: a priority outside it is refused"),
    "others": Field((bool,), default=False, doc="may write, enable or disable schedules another party wrote"),
}


def _https_url(v: str) -> str | None:
    return None if not v or v.startswith("https://") else f"{v!r} is not an https:// URL (TLS 1.2+ only)"


# [registration]: the site's identity per the Dutch DSO specification (relevent/registration,
# docs/registration.md).  Absent or service_url = "": the site does not register.  Relative
# paths are relative to the working directory, like [site] state_dir; empty key, cert and
# state_file: STATE_DIR/registration/site-key.pem, site-cert.pem, state.json.
REGISTRATION = {
    "service_url": Field((str,), default="", check=_https_url,
                         doc="the registration service (POST of a PEM CSR); empty: the site does not register"),
    "device_code": Field((str,), default="", doc="the device code, the CSR's common name (no personal data)"),
    "token_file": Field((str,), default="", doc="file holding the token: the device code signed by the "
                                                "manufacturer, sent as the CSR's challenge password"),
    "key": Field((str,), default="", doc="the site's EC P-256 key (PEM, mode 0600, made if missing)"),
    "cert": Field((str,), default="", doc="where the issued certificate chain is stored (PEM, 0644): the "
                                          "site's TLS links read `key` and this"),
    "ca": Field((str,), default="", doc="the root to trust (PEM): for the service's TLS certificate and "
                                        "the issued chain"),
    "state_file": Field((str,), default="", doc="the registration state (JSON), so a restart continues the "
                                                "back-off"),
    "crl_url": Field((str,), default="", check=_https_url,
                     doc="the CRL to check our certificate against; empty: the certificate's CRL "
                         "distribution point"),
    "timeout_s": Field(NUMBER, default=15.0, check=positive, doc="seconds one request may take"),
    "check_s": Field(NUMBER, default=3600.0, check=positive,
                     doc="while registered, the site checks its certificate and the CRL this often (a "
                         "revocation sends it back to registration)"),
}

# [tls]: the site's one TLS policy, applied by every endpoint with `tls = true`
# (relevent/security/tls.py, docs/tls.md).  Relative paths are relative to the working
# directory, like [site] state_dir.
TLS = {
    "cert": Field((str,), default="", doc="the site's certificate (PEM, may hold its chain): served by TLS "
                                          "listeners, offered by TLS clients"),
    "key": Field((str,), default="", doc="its private key (PEM, mode 0600)"),
    "ca": Field((str,), default="", doc="the CA bundle (PEM) peers' certificates must chain to; empty: "
                                        "clients trust the system's CAs, servers cannot ask for client "
                                        "certificates"),
    "crl": Field((list,), default=[], item_types=(str,),
                 doc="CRLs (PEM or DER) of the CAs in `ca`, each a file (a path, relative to the working "
                     "directory) or an http:// or https:// URL (fetched by the site every crl_refresh_s into "
                     "STATE_DIR/tls/crl/; https verified against `ca`); re-read every crl_refresh_s; given, "
                     "every peer's issuer needs a current one (fail closed)"),
    "crl_refresh_s": Field(NUMBER, default=300.0, check=positive,
                           doc="seconds between CRL re-reads and fetches of CRL URLs; sessions of a peer revoked "
                               "or expired meanwhile are closed then"),
    "min_version": Field((str,), default="1.2", choices=("1.2", "1.3"), doc="the lowest TLS version accepted"),
}

# TLS keys of a listening endpoint (http) and of a client of a broker (mqtt, mqtt-ems):
# relevent/protocols/registry.py adds them to those protocols.
TLS_SERVER_KEYS = {
    "tls": Field((bool,), default=False, doc="serve over TLS with the site's [tls] certificate (docs/tls.md)"),
    "client_cert": Field((str,), default="require", choices=("require", "optional", "none"),
                         doc="with tls: clients must present a certificate of the [tls] ca (require), may "
                             "(optional), or are not asked (none); its CN or a SAN names the party (cert_cn)"),
    "insecure": Field((bool,), default=False,
                      doc="acknowledge serving in plain text on a non-loopback address (`relevent check` "
                          "refuses that otherwise)"),
}
TLS_CLIENT_KEYS = {
    "tls": Field((bool,), default=False, doc="connect over TLS: the broker verified against [tls] ca (its "
                                             "name checked), the site's [tls] cert offered as client "
                                             "certificate (docs/tls.md)"),
    "username": Field((str,), default="", doc="the site's user at the broker"),
    "password_file": Field((str,), default="", doc="a file whose first line is that user's password"),
}

TOP_LEVEL = ("site", "runtime", "supervision", "party", "wan", "lan", "der", "simulator", "registration", "tls")
