"""What a status tree says, as plain records: pure functions of the tree (and of `now_ms`
where an age matters), shared by the metrics, the events and the history.

The tree is the one `SiteRunner.status()` gathers (relevent/runtime/status.py describes its
nodes); these functions only read it, through `walk_depths`.  Where a detail key comes from:

* actors: every node (supervisor.py `node()`): state, restarts, `restart_causes`;
* WAN endpoints: the control session's `contact_ms` and `refusals` (relevent/wan/session.py),
  the MMS endpoint's `switch_lateness` (relevent/protocols/mms/endpoint.py);
* LAN endpoints: `connected` (MQTT), `devices[..].link` (Modbus);
* DERs: `command` and `measured` (relevent/actors/der.py), their controllers' `output`,
  `source` and `schedules` (relevent/actors/controller.py);
* TLS endpoints: `tls` (relevent/security/tls.py `SiteTls.status`): the certificate's
  `cert_not_after`, each CRL's `next_update`; the registration actor: `state`, `cert_expiry`
  (relevent/actors/registration.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from relevent.runtime.status import walk, walk_depths

# ../shared/spec/security.md section 4: a link whose last reply is older than this is offline.
LINK_TIMEOUT_MS = 15_000
SCHEDULE_STATES = ("NOT_READY", "START_TIME_REQUIRED", "READY", "RUNNING")
ROOT_PATH = "/"          # the site supervisor's path in labels and events (its tree path is "")


@dataclass(frozen=True)
class Reading:
    """One value of a counter kept by an actor.  `source` names the counter in that actor,
    `owner` the incarnation keeping it (when it changes, counting started again from 0),
    `series` the metric series (family name first, then label values) it adds to."""
    source: tuple
    owner: Any
    series: tuple
    value: float


def path_of(node: dict) -> str:
    return node.get("path") or ROOT_PATH


def with_parents(tree: dict) -> Iterator[tuple[dict, dict | None]]:
    """Every node with its parent (None for the root), in the order of `walk_depths`."""
    stack: list[dict] = []
    for depth, node in walk_depths(tree):
        del stack[depth:]
        yield node, (stack[-1] if stack else None)
        stack.append(node)


def incarnation(node: dict | None) -> tuple:
    """What changes when an actor is started again: its pid and its restart count."""
    if node is None:
        return ("runner",)
    return (node.get("pid"), node.get("restarts"))


# -- actors --------------------------------------------------------------------------------------
def actors(tree: dict) -> dict[str, dict]:
    """path -> {kind, state, up, restarts, causes, last_error, owner (its supervisor's
    incarnation), incarnation, children}.  `causes`
    is the supervisor's restart count per cause (restarts it did not classify count as
    "unknown"); `children` how many children the tree shows (0: a leaf, or a supervisor that
    did not answer in time)."""
    out = {}
    for node, parent in with_parents(tree):
        causes = dict(node.get("restart_causes") or {})
        unclassified = (node.get("restarts") or 0) - sum(causes.values())
        if unclassified > 0:
            causes["unknown"] = causes.get("unknown", 0) + unclassified
        out[path_of(node)] = {"kind": node.get("role", ""), "state": node.get("state", ""),
                              "up": node.get("state") == "running", "restarts": node.get("restarts") or 0,
                              "causes": causes, "last_error": node.get("last_error") or "",
                              "owner": incarnation(parent), "incarnation": incarnation(node),
                              "children": len(node.get("children") or [])}
    return out


def restart_readings(tree: dict) -> list[Reading]:
    """Restarts by cause: kept by each actor's supervisor (the owner: its parent)."""
    return [Reading(("restarts", path, cause), actor["owner"], ("restarts", actor["kind"], cause), n)
            for path, actor in actors(tree).items() for cause, n in actor["causes"].items()]


# -- WAN endpoints: refusals, switch lateness -------------------------------------------------------
def _wan_nodes(tree: dict) -> Iterator[dict]:
    return (node for node in walk(tree) if node.get("role") == "wan")


def refusal_readings(tree: dict) -> list[Reading]:
    """Refusals by party and rule, counted by each WAN endpoint's session since its start."""
    out = []
    for node in _wan_nodes(tree):
        for party, rule, n in (node.get("detail") or {}).get("refusals") or []:
            out.append(Reading(("refusals", node["name"], party, rule), incarnation(node),
                               ("refusals", node["name"], party or "unrecognised", rule), n))
    return out


def lateness_readings(tree: dict) -> list[Reading]:
    """The switch lateness histogram of each MMS endpoint since its start: one reading per
    cumulative bucket, the count and the sum."""
    out = []
    for node in _wan_nodes(tree):
        hist = (node.get("detail") or {}).get("switch_lateness")
        if not hist:
            continue
        name, owner = node["name"], incarnation(node)
        for le, n in zip(hist["le"], hist["buckets"]):
            out.append(Reading(("lateness", name, le), owner, ("lateness_bucket", name, float(le)), n))
        out.append(Reading(("lateness", name, "count"), owner, ("lateness_count", name), hist["count"]))
        out.append(Reading(("lateness", name, "sum"), owner, ("lateness_sum", name), hist["sum"]))
    return out


# -- LAN endpoints devices connect to (OCPP, S2): refused connections, refused commands ------------
def device_readings(tree: dict) -> list[Reading]:
    """Counted by each LAN endpoint since its start: connections it refused (`refused`:
    unknown device, wrong password or certificate), and per DER the commands its device
    refused (`rejections`: a charger's Rejected, an RM's refusal) or never answered or
    broke (`errors`)."""
    out = []
    for node in walk(tree):
        if node.get("role") != "lan":
            continue
        d, name, owner = node.get("detail") or {}, node["name"], incarnation(node)
        if isinstance(d.get("refused"), int):
            out.append(Reading(("device-connections", name), owner, ("device_connections_refused", name),
                               d["refused"]))
        for der, device in (d.get("devices") or {}).items():
            for outcome, key in (("rejected", "rejections"), ("error", "errors")):
                if isinstance(device, dict) and isinstance(device.get(key), int):
                    out.append(Reading(("device-commands", name, der, outcome), owner,
                                       ("device_commands_refused", name, der, outcome), device[key]))
    return out


def readings(tree: dict) -> list[Reading]:
    """Every counter reading of the tree (counters.accumulate makes them monotonic)."""
    return restart_readings(tree) + refusal_readings(tree) + lateness_readings(tree) + device_readings(tree)


# -- links ----------------------------------------------------------------------------------------
def _link(up: bool, contact_ms: int | None, via: str) -> dict:
    return {"up": up, "contact_ms": contact_ms, "via": via}


def _fresh(contact_ms: int | None, now_ms: int) -> bool:
    return contact_ms is not None and now_ms - contact_ms <= LINK_TIMEOUT_MS


def links(tree: dict, now_ms: int) -> dict[tuple[str, str], dict]:
    """(link, name) -> {up, contact_ms, via}; link is "wan", "lan" (via: the protocol) or
    "device" (via: its LAN endpoint).

    * WAN endpoint: its session's last contact with a recognised party (a request, or now
      while such a client is connected); up when that is at most 15 s old.
    * device (a DER with a LAN endpoint): its last measurement; up within 15 s.
    * LAN endpoint: its newest device measurement; up within 15 s and while its own link
      (broker connection, Modbus device links) says so.  One without devices: its own link.
    A link whose actor is not running is down."""
    out: dict[tuple[str, str], dict] = {}
    lan_contact: dict[str, int] = {}
    served: set[str] = set()     # LAN endpoints with a device
    for node in walk(tree):
        if node.get("role") != "der":
            continue
        d = node.get("detail") or {}
        if not d.get("lan"):
            continue
        at = (d.get("measured") or {}).get("at")
        served.add(d["lan"])
        out[("device", node["name"])] = _link(node.get("state") == "running" and _fresh(at, now_ms), at, d["lan"])
        if at is not None:
            lan_contact[d["lan"]] = max(lan_contact.get(d["lan"], 0), at)
    for node in walk(tree):
        role, d = node.get("role"), node.get("detail") or {}
        running = node.get("state") == "running"
        if role == "wan":
            contact = d.get("contact_ms") or None
            out[("wan", node["name"])] = _link(running and _fresh(contact, now_ms), contact, d.get("protocol", ""))
        elif role == "lan":
            own = bool(d.get("connected", True))
            devices = d.get("devices")
            if isinstance(devices, dict) and devices:
                own = own and any(dev.get("link") == "up" for dev in devices.values() if isinstance(dev, dict))
            contact = lan_contact.get(node["name"])
            has_devices = node["name"] in served
            up = running and own and (_fresh(contact, now_ms) if has_devices else True)
            out[("lan", node["name"])] = _link(up, contact, d.get("protocol", ""))
    return out


# -- DERs and schedules ------------------------------------------------------------------------
def ders(tree: dict, now_ms: int) -> dict[str, dict]:
    """DER name -> {measured_w (None when none or older than 15 s), setpoint_w, limit_w,
    connected (the command's), outputs {function: value}, sources {function: schedule}}."""
    out = {}
    for node in walk(tree):
        if node.get("role") != "der":
            continue
        d = node.get("detail") or {}
        command, measured = d.get("command") or {}, d.get("measured") or {}
        w = measured.get("w") if _fresh(measured.get("at"), now_ms) else None
        outputs, sources = {}, {}
        for child in walk(node):
            cd = child.get("detail") or {}
            if child.get("role") == "controller" and cd.get("kind"):
                outputs[cd["kind"]] = cd.get("output")
                sources[cd["kind"]] = cd.get("source")
        out[node["name"]] = {"measured_w": w, "setpoint_w": command.get("setpoint_w"),
                             "limit_w": command.get("limit_w"), "connected": command.get("connected"),
                             "outputs": outputs, "sources": sources}
    return out


def schedules(tree: dict) -> dict[tuple[str, str, str], str]:
    """(der, function, schedule) -> state (SCHEDULE_STATES) of every running controller."""
    out = {}
    for node, parent in with_parents(tree):
        d = node.get("detail") or {}
        if node.get("role") != "controller" or parent is None or not d.get("kind"):
            continue
        for name, state in (d.get("schedules") or {}).items():
            out[(parent["name"], d["kind"], name)] = state
    return out


def _epoch_s(iso: str | None) -> float | None:
    """Unix time of an ISO 8601 time from a status detail ("...Z" or "+00:00"), or None."""
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def certificates(tree: dict) -> dict[tuple[str, str], float]:
    """(endpoint path, "site") -> the expiry (Unix time) of the certificate each TLS
    endpoint serves or offers, and ("registration", "registered") -> the registered one's."""
    out = {}
    for node in walk(tree):
        d = node.get("detail") or {}
        expiry = _epoch_s((d.get("tls") or {}).get("cert_not_after"))
        if expiry is not None:
            out[(path_of(node), "site")] = expiry
        if node.get("role") == "registration":
            expiry = _epoch_s(d.get("cert_expiry"))
            if expiry is not None and d.get("state") == "registered":
                out[(path_of(node), "registered")] = expiry
    return out


def crls(tree: dict) -> dict[tuple[str, str], float]:
    """(endpoint path, CRL file or URL) -> the CRL's next update (Unix time): past it, every
    peer of its CA is refused (docs/tls.md).  A CRL fetched from a URL is named by its URL,
    as `[tls] crl` names it, not by its cached copy."""
    out = {}
    for node in walk(tree):
        for crl in ((node.get("detail") or {}).get("tls") or {}).get("crls") or []:
            when = _epoch_s(crl.get("next_update"))
            if when is not None:
                out[(path_of(node), crl.get("url") or crl.get("file", ""))] = when
    return out


def registration(tree: dict) -> str | None:
    """The site's registration state (docs/registration.md), None when it does not register."""
    for node in walk(tree):
        if node.get("role") == "registration":
            return (node.get("detail") or {}).get("state") or "unknown"
    return None
