"""The `relevent` command."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from relevent import __version__
from relevent.runtime.control import SiteNotRunning, request
from relevent.runtime.status import walk_depths
from relevent.topology import Topology, TopologyError, load_topology


def _load(path: str) -> Topology:
    try:
        return load_topology(path)
    except TopologyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(1) from None


def cmd_check(args: argparse.Namespace) -> int:
    topo = _load(args.topology)
    print(summary(topo))
    for warning in topo.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_broker_acl(args: argparse.Namespace) -> int:
    """The Mosquitto acl_file of the topology's MQTT links (relevent/protocols/mqtt_ems/acl.py)."""
    from relevent.protocols.mqtt_ems.acl import AclError, broker_acl

    topo = _load(args.topology)
    for warning in topo.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        text = broker_acl(topo.data, str(topo.path))
    except AclError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


def summary(topo: Topology) -> str:
    d = topo.data
    rt = d["runtime"]
    lines = [f"site {topo.name}: topology {topo.path} is valid",
             f"  state dir   {topo.state_dir}",
             f"  runtime     {rt['base']}, admin port {rt['admin_port']} "
             + (f"(on {rt['private_network']}), convention leader {rt['convention_leader']}"
                if rt["convention_leader"] else "(loopback)")]
    sup = d["supervision"]["site"]
    lines.append(f"  supervision {sup['strategy']}, max {sup['max_restarts']} restarts in {sup['period']:g} s, "
                 f"heartbeat {sup['heartbeat_interval']:g}/{sup['heartbeat_timeout']:g} s")
    for role, tag in (("wan", "WAN"), ("lan", "LAN"), ("simulator", "SIM")):
        for ep in d[role]:
            where = f" port {ep['port']}" if "port" in ep else ""
            host = ep.get("address") or ep.get("host") or ""
            extra = " + embedded broker" if ep.get("embedded_broker") else ""
            extra += f", runs on {ep['runs_on']}" if ep.get("runs_on") else ""   # a member host (docs/deploy.md)
            lines.append(f"  {tag}  {ep['name']:<16} {ep['protocol']:<8} {host}{where}{extra}")
    # Processes: the site, each endpoint, simulator and embedded broker, each DER and controller.
    actors = 1 + len(d["wan"]) + len(d["lan"]) + len(d["simulator"]) + sum(1 for ep in d["lan"]
                                                                          if ep.get("embedded_broker"))
    for der in d["der"]:
        actors += 1 + len(der["functions"])
        via = f" via {der['lan']}" if der["lan"] else " (no device endpoint)"
        on = f", runs on {der['host']}" if der.get("host") else ""
        lines.append(f"  DER  {der['name']:<16} {der['type']:<10} {'/'.join(der['functions'])}, "
                     f"{der['schedules']}+1 schedules each{via}{on}")
    lines.append(f"  actors      {actors}")
    return "\n".join(lines)


def _call(args: argparse.Namespace, payload: dict) -> dict:
    topo = _load(args.topology)
    try:
        reply = request(topo.control_socket, payload)
    except SiteNotRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return reply


def _report(reply: dict) -> int:
    if reply.get("ok"):
        changes = reply.get("changes")
        if changes is not None:
            for what in ("added", "removed", "restarted", "reconfigured"):
                for path in changes.get(what, []):
                    print(f"{what:<12} {path}")
            if not any(changes.values()):
                print("no change")
        elif reply.get("message"):
            print(reply["message"])
        return 0
    print(f"error: {reply.get('error')}", file=sys.stderr)
    for problem in reply.get("problems", []):
        print(f"  {problem}", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    reply = _call(args, {"op": "status"})
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0 if reply.get("ok") else 1
    print(f"site {reply.get('site')}: relevent {reply.get('version', '?')}, runner pid {reply.get('runner_pid')}")
    print(f"{'ACTOR':<32} {'ROLE':<10} {'PID':>7} {'STATE':<10} {'RESTARTS':>8} {'UPTIME':>9}  "
          f"{'DETAIL':<34} LAST ERROR")
    for depth, node in walk_depths(reply["tree"]):
        name = "  " * depth + (node["name"])
        uptime = f"{node['uptime_s']:.1f}s" if node.get("uptime_s") is not None else "-"
        # A child placed on a member host (docs/deploy.md): its pid is that host's.
        pid = f"{node['pid']}@{node['host']}" if node.get("host") and node["pid"] else node["pid"] or "-"
        print(f"{name:<32} {node['role']:<10} {pid:>7} {node['state']:<10} "
              f"{node['restarts']:>8} {uptime:>9}  {short_detail(node):<34} {node['last_error']}")
    return 0


def short_detail(node: dict) -> str:
    """One readable fact per role for the status table (all of it is in --json)."""
    d = node.get("detail") or {}
    if node["role"] == "controller" and "output" in d:
        running = sum(1 for state in d.get("schedules", {}).values() if state in ("RUNNING", "READY"))
        return f"out {d['output']} from {d.get('source') or '-'}, {running} enabled"
    if node["role"] == "der" and "command" in d:
        c, m = d["command"], d.get("measured") or {}
        cmd = f"set {c['setpoint_w']:g} W" if c["connected"] else "disconnected"
        return cmd + (f", measured {m['w']:g} W" if m.get("w") is not None else ", no measurement")
    if node["role"] == "lan" and "devices" in d:
        return ", ".join(f"{name} {dev['link']}" for name, dev in d["devices"].items())
    if node["role"] == "lan" and "broker" in d:
        return f"broker {d['broker']} {'up' if d['connected'] else 'down'}, {d['published']} sent"
    if node["role"] == "simulator" and "output_w" in d:
        return f"{d['listen']} output {d['output_w']:g} W"
    if node["role"] == "simulator" and "w" in d:
        return f"{d['der']}: {d['w']:g} W, {d['commands']} commands"
    if node["role"] == "registration" and "state" in d:
        if d.get("error"):
            return f"{d['state']}: error (see --json)"
        if d["state"] == "registered":
            return f"registered, expires {(d.get('cert_expiry') or '?')[:10]}"
        return d["state"] + (f", next {d['next_attempt'][:19]}" if d.get("next_attempt") else "")
    if node["role"] == "crl" and "crls" in d:
        return ", ".join(f"{c['url']}: {c['result']}" + (f" ({c['failures']} failed)" if c["failures"] else "")
                         for c in d["crls"])
    if node["role"] in ("wan", "lan", "simulator"):
        return d.get("serving") or d.get("listen") or (
            f"{d.get('protocol')}: adapter not in this build" if "adapter" in d else str(d.get("protocol", "")))
    return ""


def cmd_endpoint(args: argparse.Namespace) -> int:
    if args.action == "add":
        role = "wan" if args.wan else "lan"
        return _report(_call(args, {"op": "endpoint_add", "role": role, "snippet": args.snippet}))
    return _report(_call(args, {"op": "endpoint_remove", "name": args.name}))


def cmd_reload(args: argparse.Namespace) -> int:
    _load(args.topology)  # report file errors here, with line numbers, before asking the site
    return _report(_call(args, {"op": "reload"}))


def cmd_forecast(args: argparse.Namespace) -> int:
    import datetime as _dt

    reply = _call(args, {"op": "forecast", "der": args.der, "kind": args.kind, "hours": args.hours})
    if not reply.get("ok"):
        return _report(reply)
    if args.json:
        print(json.dumps(reply["events"]))
        return 0
    for t, value, source in reply["events"]:
        when = _dt.datetime.fromtimestamp(t / 1000, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        print(f"{when}Z  {value!s:<12} {source or '-'}")
    return 0


def cmd_fault(args: argparse.Namespace) -> int:
    return _report(_call(args, {"op": "fault", "target": args.target, "kind": args.kind}))


def cmd_chaos(args: argparse.Namespace) -> int:
    from relevent.chaos.plan import Plan
    from relevent.chaos.runner import ChaosError, ChaosRun, markdown

    topo = _load(args.topology)
    plan = Plan(count=args.count, timeout=args.timeout, seed=args.seed, settle=args.settle)
    if args.targets:
        plan.targets = args.targets.split(",")
    if args.faults:
        plan.faults = args.faults.split(",")
    try:
        report = ChaosRun(topo, plan).run()
    except (ChaosError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = markdown(report)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    bad = report["failed"] or report["schedules_changed"] or any(c["wrong"] for c in report["device_commands"].values())
    return 1 if bad else 0


def cmd_scl(args: argparse.Namespace) -> int:
    from relevent.scl.parser import SclError, parse_scl
    from relevent.scl.site_model import site_scl

    if args.action == "check":
        try:
            model = parse_scl(args.file)
        except SclError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 1
        for ied in model.ieds:
            lns = sum(len(ld.lns) for ld in ied.ldevices)
            print(f"IED {ied.name}: {len(ied.ldevices)} logical devices, {lns} logical nodes "
                  f"({', '.join(ld.inst for ld in ied.ldevices)})")
        return 0
    topo = _load(args.topology)
    try:
        blob = site_scl(topo, args.endpoint)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output == "-":
        sys.stdout.buffer.write(blob)
    else:
        with open(args.output, "wb") as f:
            f.write(blob)
    return 0


def _target(text: str, ld: str | None, args: argparse.Namespace | None = None):
    from relevent.protocols.mms.client import Target, tls_context

    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"error: expected HOST:PORT, got {text!r}")
    tls = None
    if args is not None and getattr(args, "ca", None):
        try:
            tls = tls_context(args.ca, args.cert, args.key)
        except (OSError, ValueError) as exc:   # ssl.SSLError is an OSError
            raise SystemExit(f"error: TLS: {args.ca}, {args.cert}, {args.key}: {exc}") from None
    elif args is not None and getattr(args, "cert", None):
        raise SystemExit("error: --cert needs --ca (the CA the server's certificate chains to)")
    return Target(host, int(port), ld, tls)


def _tls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca", help="MMS over TLS: the CA bundle the server's certificate chains to")
    parser.add_argument("--cert", help="MMS over TLS: the client certificate (it names the party)")
    parser.add_argument("--key", help="its private key")


def cmd_schedule(args: argparse.Namespace) -> int:
    from relevent.protocols.mms.client import ClientError, ScheduleClient, format_schedule, parse_time

    try:
        client = ScheduleClient(_target(args.server, args.ld, args))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "show":
            print(format_schedule(client.show(args.kind, args.number)))
            return 0
        if args.action in ("enable", "disable"):
            reason = client.operate(args.kind, args.number, args.action == "enable")
            if reason:
                print(f"error: {args.action} refused: {reason}", file=sys.stderr)
                return 1
            print(f"{args.action}d {client.ld}/{args.kind} schedule {args.number}")
            return 0
        if args.action == "write":
            values = None
            if args.values is not None:
                values = [v.strip().lower() in ("1", "true", "on") if args.kind == "OnOff" else float(v)
                          for v in args.values.split(",")]
            start = parse_time(args.start) if args.start else None
            errors = client.write(args.kind, args.number, values, args.interval, start, args.priority)
            for error in errors:
                print(f"error: {error}", file=sys.stderr)
            if errors:
                return 1
            if args.enable:
                reason = client.operate(args.kind, args.number, True)
                if reason:
                    print(f"error: enable refused: {reason}", file=sys.stderr)
                    return 1
            print(format_schedule(client.show(args.kind, args.number)))
            return 0
        return _watch(client, args)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


def _watch(client, args: argparse.Namespace) -> int:
    """Print each controller's output and active schedule whenever it changes."""
    import time as _time

    kinds, last, shown = client.kinds(), {}, 0
    while args.count is None or shown < args.count:
        for kind in kinds:
            now = client.controller(kind)
            if last.get(kind) != now:
                last[kind] = now
                stamp = _time.strftime("%H:%M:%S", _time.gmtime()) + f".{int(_time.time() * 1000) % 1000:03d}Z"
                print(f"{stamp} {kind:<7} output {now['output']!s:<10} from {now['active'] or '-'}", flush=True)
                shown += 1
        _time.sleep(args.period)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Write a commented site file from the package: the demo, or the template of a real
    site that `relevent check` explains until every "<fill in: ...>" is filled in."""
    from importlib.resources import files

    target = Path(args.path)
    source = "demo.toml" if args.demo else "template.toml"
    text = files("relevent").joinpath("sites", source).read_text(encoding="utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(target, "w" if args.force else "x", encoding="utf-8") as out:  # "x": never overwrite
            out.write(text)
    except FileExistsError:
        print(f"error: {target} exists; --force to overwrite it", file=sys.stderr)
        return 1
    if args.demo:
        print(f"wrote the demo site to {target}; run it with: relevent run {target}")
    else:
        print(f"wrote a site template to {target}; fill in every \"<fill in: ...>\", then: relevent check {target}")
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    """`relevent state export|import|check`: relevent/state/archive.py does the work."""
    from relevent.state.archive import ArchiveError, check_state, export_state, import_state

    topo = _load(args.topology)
    try:
        if args.action == "export":
            manifest = export_state(topo.state_dir, topo.name, args.file)
            print(f"exported {len(manifest['files'])} records of site {topo.name} from {topo.state_dir} to "
                  f"{args.file} (state format {manifest['state_version']}, checksum {manifest['checksum'][:16]})")
            return 0
        if args.action == "import":
            done = import_state(args.file, topo.state_dir, topo.name, force=args.force)
            m = done["manifest"]
            print(f"imported {done['records']} records of site {m['site']} (exported {m['created']} by relevent "
                  f"{m['build']}) into {topo.state_dir}")
            if done["replaced"] is not None:
                print(f"the previous store is kept in {done['replaced']}")
            return 0
        count, bad = check_state(topo.state_dir)
    except ArchiveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if bad is not None:
        print(f"error: {bad.path}: {getattr(bad, 'reason', bad)}", file=sys.stderr)
        return 1
    if count == 0:
        print(f"no records in {topo.state_dir} (the site never ran there): nothing to check")
        return 0
    print(f"ok: {count} records in {topo.state_dir}, every one readable by this build")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """`relevent history FILE DER`: the DER's samples (and --events) from the site's history
    database, read-only (the site may run or not; relevent/history)."""
    import csv

    from relevent.clock import now_ms
    from relevent.history import HistoryError, history_path, read_history
    from relevent.history.query import COLUMNS, iso, parse_since, row, table

    topo = _load(args.topology)
    if args.der not in {d["name"] for d in topo.data["der"]}:
        print(f"error: no DER {args.der!r} in {topo.path}", file=sys.stderr)
        return 2
    try:
        since = parse_since(args.since, now_ms())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = history_path(topo.state_dir)
    try:
        found = read_history(path, args.der, since, limit=args.limit)
    except HistoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        if args.events:
            out.writerow(["time", "kind", "subject", "detail"])
            out.writerows([iso(e["at"]), e["kind"], e["subject"], json.dumps(e["detail"])] for e in found["events"])
        else:
            out.writerow(COLUMNS)
            out.writerows(["" if v is None else v for v in row(s)] for s in found["samples"])
        return 0
    if args.events:
        for e in found["events"]:
            print(f"{iso(e['at'])}  {e['kind']:<9} {e['subject']:<24} {json.dumps(e['detail'])}")
        return 0
    if not found["samples"]:
        print(f"no samples of {args.der} since {iso(since)} in {path}"
              + ("" if path.exists() else " (no history yet: the site never ran with history on)"))
        return 0
    print("\n".join(table(found["samples"])))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from relevent.runtime.runner import run_site

    _load(args.topology)
    return run_site(args.topology)


def cmd_member(args: argparse.Namespace) -> int:
    from relevent.runtime.member import run_member

    _load(args.topology)
    return run_member(args.topology, args.host)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relevent", description="Edge runtime for DER scheduling and control.")
    p.add_argument("--version", action="version", version=f"relevent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init", help="write a commented site file: a template for a real site, or --demo")
    s.add_argument("path", help="the site file to write, e.g. /etc/relevent/SITE.toml")
    s.add_argument("--demo", action="store_true", help="the demo site (simulated inverter and battery)")
    s.add_argument("--force", action="store_true", help="overwrite an existing file")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("run", help="run a site until SIGINT/SIGTERM")
    s.add_argument("topology")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("member", help="run a member host of a multi-host site (its DERs with host = NAME, "
                                      "LAN endpoints and simulators with runs_on = NAME) until SIGINT/SIGTERM")
    s.add_argument("topology")
    s.add_argument("--host", required=True, help="this host's name, as [[der]] host and runs_on name it")
    s.set_defaults(func=cmd_member)

    s = sub.add_parser("check", help="validate a topology file and summarise it")
    s.add_argument("topology")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("broker-acl", help="write the Mosquitto acl_file that lets each broker user use only "
                                          "its topics (the EMS's party alone publishes requests)")
    s.add_argument("topology")
    s.add_argument("-o", "--output", help="file to write; default (or -): stdout")
    s.set_defaults(func=cmd_broker_acl)

    s = sub.add_parser("status", help="show the running site's actor tree")
    s.add_argument("topology")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("endpoint", help="add or remove a protocol endpoint in the running site")
    esub = s.add_subparsers(dest="action", required=True)
    a = esub.add_parser("add", help="add an endpoint; SNIPPET is TOML (lines or {inline table}) or a file")
    a.add_argument("topology")
    side = a.add_mutually_exclusive_group(required=True)
    side.add_argument("--wan", action="store_true")
    side.add_argument("--lan", action="store_true")
    a.add_argument("snippet")
    a.set_defaults(func=cmd_endpoint)
    r = esub.add_parser("remove", help="remove an endpoint by name")
    r.add_argument("topology")
    r.add_argument("name")
    r.set_defaults(func=cmd_endpoint)

    s = sub.add_parser("reload", help="apply the edited topology file to the running site (a diff)")
    s.add_argument("topology")
    s.set_defaults(func=cmd_reload)

    s = sub.add_parser("forecast", help="a controller's output over the next hours, merged by priority")
    s.add_argument("topology")
    s.add_argument("der")
    s.add_argument("kind", choices=["ActPow", "MaxPow", "OnOff"])
    s.add_argument("--hours", type=float, default=24.0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_forecast)

    s = sub.add_parser("history", help="a DER's measured power, command and source schedules over time "
                                       "(the site's history database)")
    s.add_argument("topology")
    s.add_argument("der")
    s.add_argument("--since", default="1h", help="a duration back from now (90s, 15m, 12h, 7d) or an ISO 8601 "
                                                 "time (default 1h)")
    s.add_argument("--csv", action="store_true", help="CSV on stdout")
    s.add_argument("--events", action="store_true", help="the DER's events instead of its samples")
    s.add_argument("--limit", type=int, default=100_000, help="at most this many rows, the newest")
    s.set_defaults(func=cmd_history)

    s = sub.add_parser("fault", help="inject a fault (needs [runtime] allow_fault_injection = true)")
    s.add_argument("topology")
    s.add_argument("target", help="actor path, e.g. pv1/ActPow/FSCH01")
    s.add_argument("kind", choices=["raise", "exit", "segfault", "hang", "sigterm", "raise-loop"])
    s.set_defaults(func=cmd_fault)

    s = sub.add_parser("chaos", help="start the site, inject faults one by one, measure recovery (needs "
                                     "allow_fault_injection)")
    s.add_argument("topology")
    s.add_argument("--count", type=int, default=100, help="faults per target kind and fault (default 100)")
    s.add_argument("--targets", help="comma-separated: site,wan,der,controller,lan (default: all)")
    s.add_argument("--faults", help="comma-separated: kill,sigterm,segfault,hang (default: all)")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds before a fault counts as not recovered")
    s.add_argument("--settle", type=float, default=0.2, help="seconds between a recovery and the next fault")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--json", help="write the full report here")
    s.add_argument("--markdown", help="write the table here")
    s.set_defaults(func=cmd_chaos)

    s = sub.add_parser("scl", help="SCL models: export the site's 90-10 model, check an SCL file")
    ssub = s.add_subparsers(dest="action", required=True)
    e = ssub.add_parser("export", help="write the SCL model the site's MMS endpoint serves")
    e.add_argument("topology")
    e.add_argument("-o", "--output", required=True, help="file to write, - for stdout")
    e.add_argument("--endpoint", help="MMS endpoint name (default: the first)")
    e.set_defaults(func=cmd_scl)
    c = ssub.add_parser("check", help="parse an SCL file (SCD/ICD/CID) and report every problem")
    c.add_argument("file")
    c.set_defaults(func=cmd_scl)

    s = sub.add_parser("schedule", help="90-10 client for any IEC 61850 scheduling server")
    ssub = s.add_subparsers(dest="action", required=True)
    for action, text in (("show", "read a schedule"), ("enable", "operate EnaReq"), ("disable", "operate DsaReq"),
                         ("write", "write a schedule (and --enable it)")):
        a = ssub.add_parser(action, help=text)
        a.add_argument("server", help="HOST:PORT")
        a.add_argument("kind", choices=["ActPow", "MaxPow", "OnOff"])
        a.add_argument("number", help="1..NN, or res for the reserve")
        a.add_argument("--ld", help="logical device (default: the only scheduling LD)")
        _tls_arguments(a)
        if action == "write":
            a.add_argument("--values", help="comma-separated: watts (ActPow, MaxPow) or 0/1 (OnOff)")
            a.add_argument("--interval", type=int, help="seconds per entry (SchdIntv)")
            a.add_argument("--start", help="ISO 8601 UTC time, or +SECONDS from now")
            a.add_argument("--priority", type=int)
            a.add_argument("--enable", action="store_true")
        a.set_defaults(func=cmd_schedule)
    w = ssub.add_parser("watch", help="live controller outputs and active schedules")
    w.add_argument("server", help="HOST:PORT")
    w.add_argument("--ld")
    _tls_arguments(w)
    w.add_argument("--period", type=float, default=0.2, help="seconds between polls")
    w.add_argument("--count", type=int, help="stop after this many changes")
    w.set_defaults(func=cmd_schedule)

    s = sub.add_parser("state", help="back up, move or check the site's persisted state (the store)")
    ssub = s.add_subparsers(dest="action", required=True)
    e = ssub.add_parser("export", help="write the store to a checksummed archive (tar.gz); the site may run")
    e.add_argument("topology")
    e.add_argument("file")
    e.set_defaults(func=cmd_state)
    i = ssub.add_parser("import", help="replace the store with an archive's (the site must be stopped)")
    i.add_argument("topology")
    i.add_argument("file")
    i.add_argument("--force", action="store_true", help="import an archive of another site name")
    i.set_defaults(func=cmd_state)
    c = ssub.add_parser("check", help="verify every record of the store; exit 1 naming the first bad one")
    c.add_argument("topology")
    c.set_defaults(func=cmd_state)

    from relevent.audit.cli import add_audit_parser  # handlers: relevent/audit/cli.py

    add_audit_parser(sub)
    from relevent.registration.cli import add_register_parser  # handlers: relevent/registration/cli.py

    add_register_parser(sub)
    from relevent.security.cli import add_pki_parser  # handlers: relevent/security/cli.py
    add_pki_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
