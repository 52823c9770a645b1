"""The site's Prometheus metrics, built from one status tree: `families(tree, now_ms,
totals)` is pure (prometheus-client's metric families are plain data), and the collector
of relevent/observe/observer.py yields them at every scrape.

Names follow Prometheus conventions: prefix `relevent_`, base units (seconds, watts),
`_total` for counters, a timestamp rather than an age where both are given.  The list with
meanings is in docs/observability.md; this module is its source.
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from relevent.observe import extract
from relevent.observe.extract import SCHEDULE_STATES


def _number(value) -> float | None:
    """A gauge value: numbers and booleans (1/0); None for anything else."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return None


def families(tree: dict | None, now_ms: int, totals: dict, site: str = "", version: str = "",
             sampled_ms: int | None = None) -> list[Metric]:
    """Every metric family of the site from its last status tree (`sampled_ms`: when it was
    gathered), the counters' totals (relevent/observe/counters.py) and the time of the
    scrape (ages are computed against it)."""
    out: list[Metric] = []
    info = GaugeMetricFamily("relevent_build_info", "The site and the relevent version it runs (always 1).",
                             labels=["site", "version"])
    info.add_metric([site, version], 1.0)
    out.append(info)
    if tree is None:
        return out
    if sampled_ms is not None:
        out.append(GaugeMetricFamily("relevent_observer_last_sample_timestamp_seconds",
                                     "When the observer last gathered the site's status (Unix time).",
                                     value=sampled_ms / 1000))
    out += _actors(tree, totals)
    out += _links(tree, now_ms)
    out += _ders(tree, now_ms)
    out += _schedules(tree)
    out += _refusals(totals)
    out += _lateness(totals)
    out += _device_refusals(totals)
    out += _certificates(tree)
    return out


def _actors(tree: dict, totals: dict) -> list[Metric]:
    up = GaugeMetricFamily("relevent_actor_up", "1 while the actor runs (state running), else 0.",
                           labels=["path", "kind"])
    for path, actor in extract.actors(tree).items():
        up.add_metric([path, actor["kind"]], 1.0 if actor["up"] else 0.0)
    restarts = CounterMetricFamily("relevent_actor_restarts", "Actor restarts by kind (role: site, wan, lan, "
                                   "der, controller, simulator) and cause (killed, crashed, hung, escalated, "
                                   "sibling).", labels=["kind", "cause"])
    for series, total in sorted(totals.items()):
        if series[0] == "restarts":
            restarts.add_metric(list(series[1:]), total)
    return [up, restarts]


def _links(tree: dict, now_ms: int) -> list[Metric]:
    up = GaugeMetricFamily("relevent_link_up", "1 when the link's last contact is at most 15 s old "
                           "(security.md section 4), else 0; link: wan, lan or device.",
                           labels=["link", "name", "via"])
    age = GaugeMetricFamily("relevent_link_contact_age_seconds", "Seconds since the link's last contact "
                            "(absent: never).", labels=["link", "name", "via"])
    stamp = GaugeMetricFamily("relevent_link_last_contact_timestamp_seconds", "The link's last contact "
                              "(Unix time; absent: never).", labels=["link", "name", "via"])
    for (link, name), record in sorted(extract.links(tree, now_ms).items()):
        labels = [link, name, record["via"]]
        up.add_metric(labels, 1.0 if record["up"] else 0.0)
        if record["contact_ms"]:
            age.add_metric(labels, max(0.0, (now_ms - record["contact_ms"]) / 1000))
            stamp.add_metric(labels, record["contact_ms"] / 1000)
    return [up, age, stamp]


def _ders(tree: dict, now_ms: int) -> list[Metric]:
    setpoint = GaugeMetricFamily("relevent_der_setpoint_watts", "The DER's device command: active power "
                                 "set-point, W.", labels=["der"])
    limit = GaugeMetricFamily("relevent_der_limit_watts", "The DER's device command: active power limit, W.",
                              labels=["der"])
    connected = GaugeMetricFamily("relevent_der_connected", "The DER's device command: 1 connected, 0 "
                                  "disconnected.", labels=["der"])
    measured = GaugeMetricFamily("relevent_der_measured_power_watts", "The DER's measured active power, W "
                                 "(absent when the last measurement is older than 15 s).", labels=["der"])
    output = GaugeMetricFamily("relevent_controller_output", "A control function's output (W for ActPow "
                               "and MaxPow, 1/0 for OnOff).", labels=["der", "function"])
    source = GaugeMetricFamily("relevent_controller_source_info", "The schedule in force per control "
                               "function (ActSchdRef; always 1).", labels=["der", "function", "schedule"])
    for der, sample in sorted(extract.ders(tree, now_ms).items()):
        for family, value in ((setpoint, sample["setpoint_w"]), (limit, sample["limit_w"]),
                              (connected, sample["connected"]), (measured, sample["measured_w"])):
            number = _number(value)
            if number is not None:
                family.add_metric([der], number)
        for kind, value in sorted(sample["outputs"].items()):
            number = _number(value)
            if number is not None:
                output.add_metric([der, kind], number)
            if sample["sources"].get(kind):
                source.add_metric([der, kind, sample["sources"][kind]], 1.0)
    return [setpoint, limit, connected, measured, output, source]


def _schedules(tree: dict) -> list[Metric]:
    family = GaugeMetricFamily("relevent_schedules", "Schedules per DER, control function and state "
                               "(SchdSt).", labels=["der", "function", "state"])
    counts: dict[tuple, int] = {}
    for (der, kind, _name), state in extract.schedules(tree).items():
        for each in SCHEDULE_STATES:
            counts.setdefault((der, kind, each), 0)
        counts[(der, kind, state)] = counts.get((der, kind, state), 0) + 1
    for labels, n in sorted(counts.items()):
        family.add_metric(list(labels), float(n))
    return [family]


def _refusals(totals: dict) -> list[Metric]:
    family = CounterMetricFamily("relevent_refusals", "Requests refused by a WAN endpoint, by party "
                                 "(unrecognised: no accepted credential) and rule (party:operation, band, "
                                 "lock:<field>, SchdEnaErr, ...).", labels=["endpoint", "party", "rule"])
    for series, total in sorted(totals.items()):
        if series[0] == "refusals":
            family.add_metric(list(series[1:]), total)
    return [family]


def _device_refusals(totals: dict) -> list[Metric]:
    connections = CounterMetricFamily("relevent_device_connections_refused", "Device connections a LAN endpoint "
                                      "refused (OCPP, S2: unknown device, wrong password or certificate).",
                                      labels=["endpoint"])
    commands = CounterMetricFamily("relevent_device_commands_refused", "Commands a DER's device refused "
                                   "(outcome rejected: a charger's Rejected, an S2 resource manager's refusal) "
                                   "or that failed (outcome error: no answer, a broken call).",
                                   labels=["endpoint", "der", "outcome"])
    for series, total in sorted(totals.items()):
        if series[0] == "device_connections_refused":
            connections.add_metric(list(series[1:]), total)
        elif series[0] == "device_commands_refused":
            commands.add_metric(list(series[1:]), total)
    return [connections, commands]


def _lateness(totals: dict) -> list[Metric]:
    family = HistogramMetricFamily("relevent_switch_lateness_seconds", "Lateness of each controller switch "
                                   "in the MMS model: from the schedule's boundary to its outputs in the "
                                   "model, s.", labels=["endpoint"])
    endpoints = sorted({series[1] for series in totals if series[0] == "lateness_count"})
    for endpoint in endpoints:
        bounds = sorted(series[2] for series in totals if series[0] == "lateness_bucket" and series[1] == endpoint)
        buckets = [(floatToGoString(le), totals[("lateness_bucket", endpoint, le)]) for le in bounds]
        count = totals[("lateness_count", endpoint)]
        buckets.append(("+Inf", count))
        family.add_metric([endpoint], buckets, totals.get(("lateness_sum", endpoint), 0.0))
    return [family]


REGISTRATION_STATES = ("unregistered", "requesting", "registered", "failed", "revoked")


def _certificates(tree: dict) -> list[Metric]:
    """Certificate expiry and CRL next update as timestamps, so an alert reads
    `relevent_tls_certificate_expiry_timestamp_seconds - time() < 14 * 86400`."""
    cert = GaugeMetricFamily("relevent_tls_certificate_expiry_timestamp_seconds",
                             "When a certificate of the site expires (Unix time): the one a TLS endpoint "
                             "serves or offers (which = site), or the registered one (which = registered).",
                             labels=["path", "which"])
    for (path, which), expiry in sorted(extract.certificates(tree).items()):
        cert.add_metric([path, which], expiry)
    crl = GaugeMetricFamily("relevent_tls_crl_next_update_timestamp_seconds",
                            "A CRL's next update (Unix time): past it, the peers of its CA are refused.",
                            labels=["path", "file"])
    for (path, file), when in sorted(extract.crls(tree).items()):
        crl.add_metric([path, file], when)
    out: list[Metric] = [cert, crl]
    state = extract.registration(tree)
    if state is not None:
        family = GaugeMetricFamily("relevent_registration_state", "The site's registration state with its DSO's "
                                   "service (1 for the current one; docs/registration.md).", labels=["state"])
        for name in REGISTRATION_STATES:
            family.add_metric([name], 1.0 if state == name else 0.0)
        out.append(family)
    return out
