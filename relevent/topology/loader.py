"""Read and validate a topology file.

`load_topology` returns a `Topology` whose ``data`` is a plain, normalised dict (every
default filled in) that can be sent to actors as is.  Every problem found is collected as a
`Problem` naming file, line and key; `TopologyError` carries all of them at once so an
installer fixes a file in one pass.
"""
from __future__ import annotations

import copy
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relevent.problems import Problem, ProblemsError
from relevent.protocols.modbus.address import parse_device_address
from relevent.protocols.registry import PROTOCOLS, is_loopback, listen_address, ocpp_security, served_ders
from relevent.runtime.control import control_socket_path
from relevent.topology import schema
from relevent.topology.locate import LineIndex

# Scale warnings (scale_checks): DERs one MMS endpoint serves at most (its model build grows
# with the square of the model), and Pings a second the site supervisor sends at most (the
# most the scale benchmark ran without a DER taken for hung; bench/README.md, "Scale").
MMS_DERS_PER_ENDPOINT = 200
PINGS_PER_SECOND = 200
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# A value a site template (`relevent init`) leaves for the installer: "<fill in: what goes here>".
# Reported as not filled in, naming its key, and never also as a wrong type.
_FILL_IN = re.compile(r"<\s*fill in\s*:?\s*(.*?)\s*>", re.IGNORECASE | re.DOTALL)


class TopologyError(ProblemsError):
    pass


@dataclass
class Topology:
    path: Path
    text: str
    data: dict
    warnings: list = field(default_factory=list)   # Problems that do not stop a site (`relevent check`)

    @property
    def name(self) -> str:
        return self.data["site"]["name"]

    @property
    def state_dir(self) -> Path:
        return Path(self.data["site"]["state_dir"])

    @property
    def control_socket(self) -> Path:
        return control_socket_path(self.state_dir)

    def endpoints(self) -> list[dict]:
        return self.data["wan"] + self.data["lan"]


def key_name(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Validator:
    def __init__(self, file: str, text: str, env: dict[str, str]) -> None:
        self.file = file
        self.index = LineIndex(text)
        self.env = env
        self.problems: list[Problem] = []
        self.unfilled: set[tuple] = set()   # paths still holding a template's "<fill in: ...>"
        self.warnings: list[Problem] = []

    def problem(self, path: tuple, message: str) -> None:
        self.problems.append(Problem(self.file, self.index.line_of(path), key_name(path), message))

    def warning(self, path: tuple, message: str) -> None:
        self.warnings.append(Problem(self.file, self.index.line_of(path), key_name(path), message))

    # -- interpolation -------------------------------------------------------------
    def interpolate(self, value: Any, path: tuple) -> Any:
        if isinstance(value, str) and _FILL_IN.fullmatch(value.strip()):
            hint = _FILL_IN.fullmatch(value.strip()).group(1)
            self.problem(path, f"not filled in yet: {hint}" if hint else "not filled in yet")
            self.unfilled.add(path)
            return value
        if isinstance(value, str):
            def repl(m: re.Match) -> str:
                name, default = m.group(1), m.group(2)
                if name in self.env and (self.env[name] != "" or default is None):
                    return self.env[name]
                if default is not None:
                    return default
                self.problem(path, f"environment variable {name} is not set (use ${{{name}:-default}})")
                return ""
            return _VAR.sub(repl, value)
        if isinstance(value, list):
            return [self.interpolate(v, path + (i,)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.interpolate(v, path + (k,)) for k, v in value.items()}
        return value

    # -- typed tables ----------------------------------------------------------------
    def table(self, raw: Any, fields: dict, path: tuple, extra_ok: tuple = ()) -> dict:
        if not isinstance(raw, dict):
            self.problem(path, f"must be a table, got {type(raw).__name__}")
            return {k: copy.deepcopy(f.default) for k, f in fields.items()}
        out: dict = {}
        for key in raw:
            if key not in fields and key not in extra_ok:
                known = ", ".join(sorted(fields))
                self.problem(path + (key,), f"unknown key (known: {known})")
        for key, f in fields.items():
            if key not in raw:
                if f.required:
                    self.problem(path, f"missing required key '{key}'")
                out[key] = copy.deepcopy(f.default)
                continue
            out[key] = self.value(raw[key], f, path + (key,))
        return out

    def value(self, v: Any, f: schema.Field, path: tuple) -> Any:
        if path in self.unfilled:
            return copy.deepcopy(f.default)   # reported once, as not filled in
        # ${VAR} yields strings; a numeric or boolean field accepts their text.
        if isinstance(v, str) and str not in f.types:
            v = _coerce(v, f.types)
        if isinstance(v, bool) and bool not in f.types:
            self.problem(path, f"expected {_type_names(f.types)}, got a boolean")
            return f.default
        if not isinstance(v, f.types):
            self.problem(path, f"expected {_type_names(f.types)}, got {type(v).__name__} {v!r}")
            return f.default
        if f.item_types and any(not isinstance(i, f.item_types) for i in v):
            self.problem(path, f"every item must be {_type_names(f.item_types)}")
            return f.default
        if f.choices is not None and v not in f.choices:
            self.problem(path, f"{v!r} is not one of {', '.join(map(str, f.choices))}")
            return f.default
        if f.check is not None:
            err = f.check(v)
            if err:
                self.problem(path, err)
        if isinstance(v, int) and not isinstance(v, bool) and float in f.types:
            v = float(v)
        return v

    # -- sections ------------------------------------------------------------------
    def validate(self, raw: dict) -> dict:
        for key in raw:
            if key not in schema.TOP_LEVEL:
                self.problem((key,), f"unknown section (known: {', '.join(schema.TOP_LEVEL)})")
        data = {
            "site": self.table(raw.get("site", {}), schema.SITE, ("site",)),
            "runtime": self.table(raw.get("runtime", {}), schema.RUNTIME, ("runtime",)),
            "supervision": self.supervision(raw.get("supervision", {})),
            "party": self.array(raw.get("party", []), schema.PARTY, "party"),
            "wan": self.endpoints(raw.get("wan", []), "wan"),
            "lan": self.endpoints(raw.get("lan", []), "lan"),
            "der": self.ders(raw.get("der", [])),
            "simulator": self.endpoints(raw.get("simulator", []), "simulator"),
            "registration": self.table(raw.get("registration", {}), schema.REGISTRATION, ("registration",)),
            "tls": self.table(raw.get("tls", {}), schema.TLS, ("tls",)),
        }
        if "site" not in raw:
            self.problem((), "missing [site] section")
        self.cross_checks(data)
        self.convention_checks(data)
        self.placement_checks(data)
        self.grouping_checks(data)
        self.party_checks(data)
        self.tls_checks(data)
        return data

    def supervision(self, raw: dict) -> dict:
        base = self.table(raw, schema.SUPERVISION, ("supervision",), extra_ok=schema.SUPERVISION_LEVELS)
        out = {}
        for level in schema.SUPERVISION_LEVELS:
            override = raw.get(level, {}) if isinstance(raw, dict) else {}
            fields = {k: schema.Field(f.types, base[k], False, f.choices, f.check, f.doc)
                      for k, f in schema.SUPERVISION.items()}
            out[level] = self.table(override, fields, ("supervision", level))
            if out[level]["backoff_max"] < out[level]["backoff_initial"]:
                self.problem(("supervision", level, "backoff_max"), "must be >= backoff_initial")
        return out

    def endpoints(self, raw: Any, role: str) -> list[dict]:
        if not isinstance(raw, list):
            self.problem((role,), f"must be an array of tables ([[{role}]]), got {type(raw).__name__}")
            return []
        out = []
        for i, item in enumerate(raw):
            path = (role, i)
            proto_name = item.get("protocol") if isinstance(item, dict) else None
            spec = PROTOCOLS.get(proto_name) if isinstance(proto_name, str) else None
            if isinstance(proto_name, str) and spec is None:
                known = ", ".join(n for n, s in PROTOCOLS.items() if s.role == role)
                self.problem(path + ("protocol",), f"unknown protocol {proto_name!r} (known for {role}: {known})")
            elif spec is not None and spec.role != role:
                self.problem(path + ("protocol",), f"protocol {proto_name!r} is a {spec.role.upper()} protocol, "
                                                   f"not {role.upper()}")
            placed = schema.RUNS_ON if role in schema.PLACED_ROLES else {}
            fields = {**schema.ENDPOINT_COMMON, **placed, **(spec.keys if spec else {})}
            extra = tuple(item) if spec is None and isinstance(item, dict) else ()
            out.append(self.table(item, fields, path, extra_ok=extra))
            out[-1]["role"] = role
        return out

    def ders(self, raw: Any) -> list[dict]:
        return self.array(raw, schema.DER, "der")

    def array(self, raw: Any, fields: dict, section: str) -> list[dict]:
        if not isinstance(raw, list):
            self.problem((section,), f"must be an array of tables ([[{section}]]), got {type(raw).__name__}")
            return []
        return [self.table(item, fields, (section, i)) for i, item in enumerate(raw)]

    def party_checks(self, data: dict) -> None:
        """Parties name existing DERs, credentials are unique, every endpoint's parties
        exist; overlapping bands and DERs no party may steer are reported, not refused."""
        parties = data["party"]
        names = {p["name"]: i for i, p in enumerate(parties) if p["name"]}
        if len(names) != len([p for p in parties if p["name"]]):
            seen: set = set()
            for i, p in enumerate(parties):
                if p["name"] in seen:
                    self.problem(("party", i, "name"), f"duplicate party {p['name']!r}")
                seen.add(p["name"])
        ders = {d["name"]: d for d in data["der"]}
        credentials: dict[tuple, int] = {}
        for i, p in enumerate(parties):
            for der in p["ders"]:
                if der not in ders:
                    self.problem(("party", i, "ders"), f"DER {der!r} does not exist (known: "
                                                       f"{', '.join(ders) or 'none defined'})")
            for key, values in (("mms_password", [p["mms_password"]]), ("http_token", [p["http_token"]]),
                                ("cert_cn", [p["cert_cn"]]), ("mqtt_user", [p["mqtt_user"]]),
                                ("peers", p["peers"])):
                for value in values:
                    if not value:
                        continue
                    other = credentials.setdefault((key, value), i)
                    if other != i:
                        self.problem(("party", i, key), f"party {parties[other]['name']!r} has the same {key}: "
                                                        "a client would not know which party it is")
        for i, a in enumerate(parties):
            for b in parties[i + 1:]:
                (lo1, hi1), (lo2, hi2) = a["priority"], b["priority"]
                if lo1 <= hi2 and lo2 <= hi1:
                    self.warning(("party", i, "priority"), f"priority bands of {a['name']!r} {lo1}..{hi1} and "
                                                           f"{b['name']!r} {lo2}..{hi2} overlap")
        if parties:
            for i, der in enumerate(data["der"]):
                if not any(("write" in p["operations"] or "enable" in p["operations"])
                           and (not p["ders"] or der["name"] in p["ders"]) for p in parties):
                    self.warning(("der", i, "name"), f"no party may steer DER {der['name']!r}")
        for i, ep in enumerate(data["wan"]):
            for name in ep.get("parties", []):
                if name not in names:
                    self.problem(("wan", i, "parties"), f"party {name!r} is not defined (known: "
                                                        f"{', '.join(names) or 'none: add [[party]] tables'})")
            anonymous = anonymous_mode(ep)
            party = ep.get("party") or ep.get("name")
            if anonymous == "party" and parties and party not in names:
                self.problem(("wan", i, "party"), f"clients without credentials act as party {party!r}, which is "
                                                  f"not defined (define it, or set anonymous = \"read\" or "
                                                  f"\"none\")")
            if anonymous == "party" and not parties and not _loopback(ep):
                self.warning(("wan", i, "anonymous"), "every client of this endpoint may do everything: no "
                                                      "[[party]] is defined and it listens beyond loopback")

    def scale_checks(self, data: dict) -> None:
        """Warnings for a site bigger than its settings (docs/scaling.md): an MMS endpoint
        whose model build takes minutes, a heartbeat round that floods the site supervisor."""
        for i, ep in enumerate(data["wan"]):
            served = len(served_ders(ep, data["der"])) if ep.get("protocol") == "mms" else 0
            if served > MMS_DERS_PER_ENDPOINT and not ep.get("scl"):
                self.warning(("wan", i, "ders"), f"MMS endpoint {ep['name']!r} serves {served} DERs: libiec61850 "
                                                 f"builds its model in a time that grows with the square of its "
                                                 f"size (minutes at 1,000 DERs): split the DERs over several MMS "
                                                 f"endpoints of at most {MMS_DERS_PER_ENDPOINT} with `ders` "
                                                 f"(docs/scaling.md)")
        interval = data["supervision"]["site"]["heartbeat_interval"]
        # The site pings its DERs' processes: one a DER, or one a group (ders_per_process).
        per_process = data["runtime"].get("ders_per_process", 1)
        ders = len(data["der"]) if per_process == 1 else -(-len(data["der"]) // per_process)
        what = "DERs" if per_process == 1 else "DER groups"
        if ders / interval > PINGS_PER_SECOND:
            self.warning(("supervision", "heartbeat_interval"),
                         f"{ders} {what} pinged every {interval:g} s: the site supervisor sends "
                         f"{ders / interval:.0f} Pings a second, more than the {PINGS_PER_SECOND} measured without "
                         f"a DER taken for hung: set heartbeat_interval >= {ders / PINGS_PER_SECOND:g} s and "
                         f"heartbeat_timeout >= 4 intervals (docs/scaling.md)")

    def cross_checks(self, data: dict) -> None:
        seen: dict[str, tuple] = {}
        for section in ("simulator", "wan", "lan", "der"):
            for i, item in enumerate(data[section]):
                name, path = item.get("name"), (section, i, "name")
                if not name:
                    continue
                if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,47}", name):
                    self.problem(path, f"name {name!r} must start with a letter and use only letters, "
                                       "digits, '_' and '-' (max 48)")
                if name in seen:
                    other = seen[name]
                    self.problem(path, f"duplicate name {name!r} (also {key_name(other[:2])} at line "
                                       f"{self.index.line_of(other)})")
                else:
                    seen[name] = path
        lan_names = {e["name"] for e in data["lan"] if isinstance(e.get("name"), str)}  # bad names: reported
        for i, der in enumerate(data["der"]):
            if der["lan"] and der["lan"] not in lan_names:
                known = ", ".join(sorted(lan_names)) or "none defined"
                self.problem(("der", i, "lan"), f"LAN endpoint {der['lan']!r} does not exist (known: {known})")
            lan = next((e for e in data["lan"] if e["name"] == der["lan"]), None)
            spec = PROTOCOLS.get(lan["protocol"]) if lan is not None else None
            if spec is not None and spec.check_der is not None:  # what this LAN protocol needs of a DER
                for key, message in spec.check_der(der, lan):
                    self.problem(("der", i, key), message)
            for j, local in enumerate(der["local"]):
                if isinstance(local, dict) and local.get("function") not in der["functions"]:
                    self.problem(("der", i, "local"), f"local[{j}].function: {local.get('function')!r} is not one "
                                                      f"of this DER's functions")
                elif isinstance(local, dict) and str(local.get("schedule", ""))[4:].isdigit() and \
                        int(local["schedule"][4:]) > der["schedules"]:
                    self.problem(("der", i, "local"), f"local[{j}].schedule: {local['schedule']} but the DER has "
                                                      f"{der['schedules']} schedules per function")
            if der["at_stop"] == "reserve":
                missing = [k for k in der["functions"] if k not in der["reserve"]]
                if not der["lan"]:
                    self.problem(("der", i, "at_stop"), "at_stop = \"reserve\" needs a device: this DER has no lan")
                elif missing:
                    self.problem(("der", i, "at_stop"), f"at_stop = \"reserve\" sends the reserve values: give "
                                                        f"reserve.{missing[0]} (every function needs one)")
            if lan is not None and not der["rated_power_w"] > 0 and ("der", i, "rated_power_w") not in self.unfilled:
                self.problem(("der", i, "rated_power_w"), "a DER driven over a LAN endpoint needs rated_power_w > 0 "
                                                          "(the device set-point is bounded by it)")
        der_names = [d["name"] for d in data["der"] if isinstance(d.get("name"), str)]
        for i, ep in enumerate(data["wan"]):  # the DERs an endpoint serves (`ders`) exist, once each
            for j, name in enumerate(ep.get("ders", [])):
                if name not in der_names:
                    self.problem(("wan", i, "ders"), f"DER {name!r} does not exist (known: "
                                                     f"{', '.join(der_names) or 'none defined'})")
                elif name in ep["ders"][:j]:
                    self.problem(("wan", i, "ders"), f"DER {name!r} is listed twice")
        self.scale_checks(data)
        for i, ep in enumerate(data["wan"]):  # what a WAN protocol needs of the site
            spec = PROTOCOLS.get(ep.get("protocol"))
            if spec is not None and spec.check_site is not None:
                for key, message, *warning in spec.check_site(ep, data):
                    (self.warning if warning and warning[0] == "warning" else self.problem)(("wan", i, key), message)
        ports: dict[tuple, tuple] = {}   # (runs_on, port): a port is taken once per host
        admin = data["runtime"]["admin_port"]
        for section in ("simulator", "wan", "lan"):
            for i, ep in enumerate(data[section]):
                bound = listen_address(ep)
                if bound is None:
                    continue
                path = (section, i, "port")
                port, host = bound[1], ep.get("runs_on", "")
                if port == admin:
                    self.problem(path, f"port {port} is the runtime admin_port")
                if (host, port) in ports:
                    other = ports[host, port]
                    on = f" on {host!r}" if host else ""
                    self.problem(path, f"two endpoints on port {port}{on}: also {key_name(other[:2])} "
                                       f"at line {self.index.line_of(other)}")
                else:
                    ports[host, port] = path


    def convention_checks(self, data: dict) -> None:
        """A multi-host site (convention_leader set) keeps thespian's traffic, unauthenticated
        pickles, on the private network it declares: private_network is required and the
        leader is an IP address inside it (the runner binds thespian to this host's address
        there, docs/deploy.md)."""
        runtime = data["runtime"]
        leader, network = runtime["convention_leader"], runtime["private_network"]
        leader_path, network_path = ("runtime", "convention_leader"), ("runtime", "private_network")
        if leader_path in self.unfilled or network_path in self.unfilled:
            return
        if not leader:
            if network:
                self.warning(network_path, "unused: private_network only matters for a multi-host site "
                                           "(convention_leader)")
            return
        if not network:
            self.problem(network_path, "a multi-host site (convention_leader) needs the private network its "
                                       "thespian traffic stays on (a WireGuard tunnel or an isolated VLAN): e.g. "
                                       "private_network = \"10.8.0.0/24\"")
        host = leader.rpartition(":")[0]
        if not host:
            return   # not HOST:PORT: reported by the field's check
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            self.problem(leader_path, f"{host!r} is not an IPv4 address: write the leader's address on the "
                                      f"private network (e.g. \"10.8.0.1:{runtime['admin_port']}\"), not a host "
                                      "name, so thespian's traffic cannot be resolved elsewhere")
            return
        if not network or schema.private_network_check(network):
            return   # missing or malformed: reported above or by the field's check
        net = ipaddress.IPv4Network(network)
        if address not in net:
            self.problem(leader_path, f"{address} is outside private_network {network}: thespian's traffic would "
                                      "leave the private network; write the leader's address on it")
        elif net.prefixlen < 31 and address in (net.network_address, net.broadcast_address):
            which = "network" if address == net.network_address else "broadcast"
            self.problem(leader_path, f"{address} is the {which} address of {network}, not a host's")

    def grouping_checks(self, data: dict) -> None:
        """DERs sharing processes ([runtime] ders_per_process > 1, relevent/actors/der_group.py)
        host their controllers in them: a hosted DER cannot create processes."""
        runtime, path = data["runtime"], ("runtime", "ders_per_process")
        if runtime["ders_per_process"] > 1 and runtime["controller_isolation"] != "der" \
                and path not in self.unfilled:
            self.problem(path, f"ders_per_process = {runtime['ders_per_process']} needs controller_isolation = "
                               "\"der\" (a DER sharing a process hosts its controllers in it)")

    def placement_checks(self, data: dict) -> None:
        """Placement on member hosts (docs/deploy.md "Placing DERs on member hosts"): a DER's
        `host`, a LAN endpoint's or a simulator's `runs_on` ("" is the leader) needs a
        multi-host site.  Warned, not refused, for the site still works: a DER on another
        host than its LAN endpoint (its device commands cross the private network); and a
        simulated device on another host than the LAN endpoint it meets over loopback on
        both sides (a DER's `der`, or a listener on the port the endpoint connects to for
        a DER): 127.0.0.1 is each host's own, so the two never meet."""
        runtime = data["runtime"]
        multi_host = runtime["convention_leader"] and runtime["private_network"]
        for section, key, what in (("der", "host", "a DER"), ("lan", "runs_on", "a LAN endpoint"),
                                   ("simulator", "runs_on", "a simulator")):
            for i, item in enumerate(data[section]):
                host = item.get(key, "")
                if host and not multi_host and (section, i, key) not in self.unfilled:
                    self.problem((section, i, key), f"{what} on member host {host!r} needs a multi-host site: "
                                                    f"[runtime] convention_leader and private_network (or "
                                                    f"{key} = \"\", the leader)")
        lans = {ep["name"]: ep for ep in data["lan"]}
        for i, der in enumerate(data["der"]):
            lan = lans.get(der["lan"])
            if lan is not None and der.get("host", "") != lan.get("runs_on", ""):
                self.warning(("der", i, "host"), f"the DER runs on {_where(der.get('host', ''))} but its LAN endpoint "
                                                 f"{lan['name']!r} on {_where(lan.get('runs_on', ''))}: its device "
                                                 "commands cross the private network")
        for k, sim in enumerate(data["simulator"]):
            side = _simulator_side(sim)
            if side is None or not is_loopback(side[0]):
                continue
            for der in data["der"]:
                lan = lans.get(der["lan"])
                if lan is None or lan.get("runs_on", "") == sim.get("runs_on", ""):
                    continue
                meets = _lan_side(der, lan)
                if meets is None or not is_loopback(meets[0]):
                    continue
                if sim.get("der") == der["name"] or (listen_address(sim) is not None and listen_address(lan) is None
                                                     and meets[1] == side[1]):
                    self.warning(("simulator", k, "runs_on"),
                                 f"simulator {sim['name']!r} on {_where(sim.get('runs_on', ''))} {_uses(sim, side)} "
                                 f"and DER {der['name']!r}'s LAN endpoint {lan['name']!r} on "
                                 f"{_where(lan.get('runs_on', ''))} {_uses(lan, meets)}: a loopback address is each "
                                 "host's own, so the two never meet (give both the same runs_on)")
                    break   # one warning per simulator

    def tls_checks(self, data: dict) -> None:
        """The [tls] files (relevent/security/tls.py `policy_problems`), what each endpoint
        with `tls = true` needs of them, and no WAN protocol served in plain text beyond
        loopback unless `insecure = true` says so (docs/tls.md); the same for an OCPP LAN
        listener on security profile 0 or 1, whose profile 2 or 3 sets its `tls` (registry
        `ocpp_security`, docs/ocpp.md).  Each TLS endpoint gets the
        policy as `tls_policy`, paths made absolute (not resolved: a symlinked certificate
        renewed in place is read anew)."""
        tls = data["tls"]
        for key in ("cert", "key", "ca"):
            if tls[key] and ("tls", key) not in self.unfilled:
                tls[key] = os.path.abspath(tls[key])
        from relevent.security.crl_fetch import cache_dir, is_url  # a CRL URL stays a URL (docs/tls.md)

        tls["crl"] = [p if is_url(p) else os.path.abspath(p) for p in tls["crl"]]
        if any(is_url(p) for p in tls["crl"]):   # where the site's fetcher keeps their copies, SiteTls reads them
            tls["crl_cache_dir"] = cache_dir(resolve_state_dir(data["site"]["state_dir"]))
        if any(tls[k] for k in ("cert", "key", "ca", "crl")):
            from relevent.security.tls import policy_problems  # cryptography: only for a site with [tls] files

            for key, message, error in policy_problems(tls):
                (self.problem if error else self.warning)(("tls",) + key, message)
        for i, ep in enumerate(data["lan"]):
            if ep.get("protocol") == "ocpp":   # OCPP security profiles (registry.ocpp_security, docs/ocpp.md)
                ep["password_files"] = {k: os.path.abspath(v) if isinstance(v, str) and v else v
                                       for k, v in ep["password_files"].items()}
                for key, message, error in ocpp_security(ep, data["der"], tls,
                                                         ("lan", i, "address") not in self.unfilled):
                    (self.problem if error else self.warning)(("lan", i, key), message)
                ep["tls"] = ep["security_profile"] >= 2   # wss:// follows from the profile
        for role in ("wan", "lan"):
            for i, ep in enumerate(data[role]):
                path = (role, i)
                if ep.get("password_file"):
                    ep["password_file"] = os.path.abspath(ep["password_file"])
                    if not ep.get("username"):
                        self.problem(path + ("password_file",), "a password needs a username (MQTT sends none "
                                                                "without one)")
                    elif not os.access(ep["password_file"], os.R_OK):
                        self.problem(path + ("password_file",), f"cannot read {ep['password_file']}")
                if not ep.get("tls"):
                    continue
                spec = PROTOCOLS.get(ep.get("protocol"))
                if spec is not None and spec.listens and spec.name != "ocpp":   # ocpp: checked above
                    if not (tls["cert"] and tls["key"]):
                        self.problem(path + ("tls",), "serving TLS needs the site's certificate: set [tls] cert "
                                                      "and key")
                    if "client_cert" not in spec.keys and not tls["ca"]:
                        self.problem(path + ("tls",), f"{ep['protocol']} over TLS asks every client for a "
                                                      "certificate: set [tls] ca, the bundle they chain to")
                    elif ep.get("client_cert", "none") != "none" and not tls["ca"]:
                        self.problem(path + ("client_cert",), f"client_cert = \"{ep['client_cert']}\" needs [tls] "
                                                              "ca, the bundle clients' certificates chain to (or "
                                                              "client_cert = \"none\")")
                if ep.get("embedded_broker"):
                    self.problem(path + ("tls",), "the embedded broker serves plain MQTT only: TLS needs an "
                                                  "external broker (Mosquitto)")
                ep["tls_policy"] = copy.deepcopy(tls)
        for i, ep in enumerate(data["wan"]):
            spec = PROTOCOLS.get(ep.get("protocol"))
            if ep.get("tls") or spec is None or _loopback(ep) or ("wan", i, "address") in self.unfilled:
                continue
            host, port = listen_address(ep)
            where = f"{ep['protocol']} in plain text on {host}:{port}"
            if "tls" in spec.keys:
                if not ep.get("insecure"):
                    self.problem(("wan", i, "tls"), f"endpoint {ep['name']!r} serves {where}: set tls = true (and "
                                                    "[tls] cert and key), listen on loopback, or write insecure = "
                                                    "true on this endpoint")
            else:
                self.warning(("wan", i, "address"), f"endpoint {ep['name']!r} serves {where}: {ep['protocol']} "
                                                    "over TLS is not in this build (docs/tls.md)")


def _where(host: str) -> str:
    """A placement as a message names it: "the leader" or the member's name."""
    return repr(host) if host else "the leader"


def _uses(endpoint: dict, side: tuple[str, int | None]) -> str:
    verb = "listens on" if listen_address(endpoint) is not None else "connects to"
    return f"{verb} {side[0]}:{side[1]}" if side[1] else f"{verb} {side[0]}"


def _lan_side(der: dict, lan: dict) -> tuple[str, int | None] | None:
    """Where a LAN endpoint meets a DER's device: the address it listens on (an embedded
    broker's too), the Modbus device address it connects to, or its broker's."""
    bound = listen_address(lan)
    if bound is not None:
        return bound
    if lan.get("protocol") == "modbus":
        try:
            where = parse_device_address(der["address"], lan["host"], lan["port"])
        except ValueError:
            return None   # reported by the protocol's check_der
        return where.host, where.port
    return (lan["host"], lan.get("port")) if lan.get("host") else None


def _simulator_side(sim: dict) -> tuple[str, int | None] | None:
    """The address a simulator listens on, or the one it connects to (`host` or `url`)."""
    bound = listen_address(sim)
    if bound is not None:
        return bound
    if sim.get("host"):
        return sim["host"], sim.get("port")
    if sim.get("url"):
        url = urlsplit(sim["url"])
        try:
            port = url.port
        except ValueError:
            port = None
        return (url.hostname, port) if url.hostname else None
    return None


def _loopback(endpoint: dict) -> bool:
    """Does this WAN endpoint only face the host itself (or connect out, like the EMS's)?"""
    bound = listen_address(endpoint)
    return bound is None or is_loopback(bound[0])


def anonymous_mode(endpoint: dict) -> str:
    """What a client without an accepted credential gets on this WAN endpoint: "party"
    (acts as the endpoint's `party`), "read" or "none".  Default: "party" on loopback,
    "none" beyond it (security.md: nothing for the unknown on a network)."""
    return endpoint.get("anonymous") or ("party" if _loopback(endpoint) else "none")


def _coerce(text: str, types: tuple) -> Any:
    stripped = text.strip()
    if bool in types and stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if int in types and re.fullmatch(r"[+-]?\d+", stripped):
        return int(stripped)
    if float in types:
        try:
            return float(stripped)
        except ValueError:
            pass
    return text


def _type_names(types: tuple) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "table"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def resolve_state_dir(state_dir: str) -> str:
    """The one rule for `[site] state_dir`, on every path that reads a topology (`relevent
    run`, the CLI finding the control socket, the runner's reload and `endpoint add`): a
    relative path is relative to the working directory, as installers expect of
    `${RELEVENT_STATE_DIR:-./state}` (docs/state.md), never to the topology file's folder;
    made absolute so every actor agrees.  Two rules once made the README's `relevent
    endpoint add topologies/demo.toml ...` fail with "[site] state_dir changed"."""
    return str((Path.cwd() / Path(state_dir)).resolve())


def parse_topology(text: str, file: str = "<topology>", env: dict[str, str] | None = None) -> Topology:
    """Validate topology ``text``; raise TopologyError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        raise TopologyError([Problem(file, int(m.group(1)) if m else None, "", f"TOML syntax: {exc}")]) from None
    v = _Validator(file, text, dict(os.environ) if env is None else env)
    raw = v.interpolate(raw, ())
    data = v.validate(raw)
    if v.problems:
        raise TopologyError(v.problems)
    data["site"]["state_dir"] = resolve_state_dir(data["site"]["state_dir"])
    return Topology(Path(file), text, data, v.warnings)


def load_topology(path: str | os.PathLike, env: dict[str, str] | None = None) -> Topology:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError([Problem(str(path), None, "", f"cannot read: {exc}")]) from None
    topo = parse_topology(text, str(path), env)
    topo.path = path.resolve()
    return topo
