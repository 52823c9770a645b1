"""`relevent register FILE [--status] [--json]`: the handlers behind the CLI's `register`.

`relevent register FILE` makes one attempt now (an operator does not wait for the back-off;
a failure still counts and schedules the next attempt), unless the site is registered and
its certificate holds (checked against the CRL first): then it only says so.  `--status`
reads the persisted state and touches neither the network nor the key.

Only argparse at import (cryptography loads when a handler runs).  Exit codes: 0
registered, 1 not registered (the state says why and when the next attempt is), 2 the
topology, the configuration or the identity files are wrong (nothing was sent).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_register_parser(sub: Any) -> None:
    """Add `register` to the CLI's subparsers."""
    s = sub.add_parser("register", help="register the site with its [registration] service (Dutch DSO "
                                        "specification): one attempt now; --status: the state only")
    s.add_argument("topology")
    s.add_argument("--status", action="store_true", help="print the persisted state; no request is made")
    s.add_argument("--json", action="store_true", help="the state as JSON")
    s.set_defaults(func=cmd_register)


def _print(info: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=1))
        return
    print(f"registration of {info['device_code']}: {info['state']}" + (f" since {info['since']}" if info["since"]
                                                                          else ""))
    if info["reason"]:
        print(f"  reason        {info['reason']}")
    if info["state"] == "registered":
        print(f"  certificate   {info['cert']} (serial {info['serial']}, expires {info['cert_expiry']})")
        print(f"  key           {info['key']}")
    print(f"  attempts      {info['attempts']} ({info['failures']} failed in a row)")
    if info["last_attempt"]:
        print(f"  last attempt  {info['last_attempt']}")
    print(f"  next attempt  {info['next_attempt'] or ('none (registered)' if info['state'] == 'registered' else '-')}")
    print(f"  service       {info['service_url']}")


def cmd_register(args: argparse.Namespace) -> int:
    from relevent.registration.client import ConfigError, RegistrationClient, describe, load_config
    from relevent.registration.files import IdentityError
    from relevent.topology import TopologyError, load_topology

    try:
        topo = load_topology(args.topology)
        config = load_config(topo)
        client = RegistrationClient(config)
        state = client.state() if args.status else client.step(force=True)
    except TopologyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except (ConfigError, IdentityError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print(describe(state, config), args.json)
    return 0 if state.kind == "registered" else 1
