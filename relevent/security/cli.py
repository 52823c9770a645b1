"""`relevent pki init|issue|revoke|crl|list`: the handlers behind the CLI's `pki` subcommand
(relevent/security/pki.py does the work; docs/tls.md).

Only argparse at import (cryptography loads when a handler runs), so every other `relevent`
command starts as fast as before.  Exit 0 on success, 1 with the reason on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_pki_parser(sub: Any) -> None:
    """Add `pki` and its actions to the CLI's subparsers."""
    s = sub.add_parser("pki", help="a small site CA for development and small sites: init, issue, revoke, "
                                   "crl, list (docs/tls.md)")
    psub = s.add_subparsers(dest="action", required=True)
    i = psub.add_parser("init", help="a new CA in DIR: ca.key (0600), ca.crt, an empty crl.pem")
    i.add_argument("dir")
    i.add_argument("--name", default="", help="the CA's common name (default: relevent site CA <DIR>)")
    i.add_argument("--days", type=int, default=3650, help="the CA certificate's validity (default 3650)")
    i.add_argument("--crl-days", type=int, default=30, help="each CRL's validity, until its next update "
                                                            "(default 30)")
    i.set_defaults(func=cmd_pki)
    s2 = psub.add_parser("issue", help="a key (0600) and a certificate signed by DIR's CA: DIR/NAME.key, NAME.crt")
    s2.add_argument("dir")
    s2.add_argument("name", help="a party's certificate: the party's name (its CN); else the site or device")
    kind = s2.add_mutually_exclusive_group(required=True)
    kind.add_argument("--party", dest="kind", action="store_const", const="party",
                      help="a WAN client of the site (clientAuth; CN = the party's name)")
    kind.add_argument("--site", dest="kind", action="store_const", const="site",
                      help="the site itself (serverAuth and clientAuth, with --dns/--ip names)")
    kind.add_argument("--device", dest="kind", action="store_const", const="device",
                      help="a LAN client, e.g. of an MQTT broker (clientAuth)")
    s2.add_argument("--days", type=int, default=365, help="validity (default 365)")
    s2.add_argument("--dns", action="append", default=[], help="a DNS subject alternative name (repeatable)")
    s2.add_argument("--ip", action="append", default=[], help="an IP subject alternative name (repeatable)")
    s2.set_defaults(func=cmd_pki)
    r = psub.add_parser("revoke", help="revoke NAME's certificates and write a new crl.pem")
    r.add_argument("dir")
    r.add_argument("name")
    r.set_defaults(func=cmd_pki)
    c = psub.add_parser("crl", help="sign a fresh crl.pem (run it before the CRL's next update)")
    c.add_argument("dir")
    c.add_argument("--days", type=int, default=None, help="validity (default: the --crl-days of init)")
    c.set_defaults(func=cmd_pki)
    ls = psub.add_parser("list", help="the CA, the CRL and every certificate issued, with its state")
    ls.add_argument("dir")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_pki)


def cmd_pki(args: argparse.Namespace) -> int:
    from relevent.security import pki

    try:
        if args.action == "init":
            path = pki.init(args.dir, args.name, args.days, args.crl_days)
            print(f"CA certificate {path}, key {path.with_name(pki.CA_KEY)} (0600), CRL "
                  f"{path.with_name(pki.CRL_FILE)}")
        elif args.action == "issue":
            issued = pki.issue(args.dir, args.name, args.kind, args.days, tuple(args.dns), tuple(args.ip))
            print(f"{issued.kind} {issued.name}: certificate {issued.cert} (serial {issued.serial:x}, valid until "
                  f"{pki._iso(issued.not_after)}), key {issued.key} (0600)")
        elif args.action == "revoke":
            serials = pki.revoke(args.dir, args.name)
            print(f"revoked {args.name}: serial {', '.join(f'{s:x}' for s in serials)}; new CRL "
                  f"{pki.CRL_FILE} in {args.dir}")
        elif args.action == "crl":
            print(f"new CRL {pki.write_crl(args.dir, args.days)}")
        else:
            found = pki.listing(args.dir)
            if args.json:
                print(json.dumps(found, indent=2))
                return 0
            crl = found["crl"]
            print(f"CA   {found['ca']['subject']}, valid until {found['ca']['not_after']}")
            print(f"CRL  #{crl['number']}, {crl['revoked']} revoked, next update {crl['next_update']}"
                  + (" (EXPIRED: run `relevent pki crl`)" if crl["expired"] else ""))
            print(f"{'NAME':<24} {'KIND':<7} {'SERIAL':<34} {'NOT AFTER':<21} STATE")
            for c in found["certs"]:
                print(f"{c['name']:<24} {c['kind']:<7} {c['serial']:<34} {c['not_after']:<21} {c['state']}")
    except pki.PkiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
