"""`relevent audit show|verify`: the handlers behind the CLI's `audit` subcommand.

Only argparse at import (cryptography loads when a handler runs), so every other `relevent`
command starts as fast as before.  `show` reads and filters without checking signatures
(use `verify` for that); `verify` exits 0 when the chain holds (a cut last line is reported
on stderr and is not a failure, see relevent/audit/verify.py), 1 with the first bad record as
FILE:LINE: REASON, 2 when it cannot run (no files, no key).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timezone
from typing import Any


def add_audit_parser(sub: Any) -> None:
    """Add `audit show` and `audit verify` to the CLI's subparsers."""
    s = sub.add_parser("audit", help="the tamper-evident audit log: show records, verify the chain")
    asub = s.add_subparsers(dest="action", required=True)
    a = asub.add_parser("show", help="print records (not verified: see `audit verify`)")
    a.add_argument("path", metavar="FILE_OR_DIR", help="a log file, or the log directory (STATE_DIR/audit)")
    a.add_argument("--since", help="ISO 8601 time (UTC unless it has an offset) or epoch seconds")
    a.add_argument("--party", help="only records of this party")
    a.add_argument("--der", help="only records about this DER")
    a.add_argument("--json", action="store_true", help="print the records as stored (JSON lines)")
    a.set_defaults(func=cmd_audit_show)
    v = asub.add_parser("verify", help="check signatures and the hash chain; exit 1 at the first bad record")
    v.add_argument("path", metavar="FILE_OR_DIR")
    v.add_argument("--key", help="the site's public key (PEM, or base64 of 32 bytes); default: "
                                 "audit-key.pub beside the log (checks consistency only)")
    v.add_argument("--anchor", help="a record hash kept off-site: fail unless the chain contains it")
    v.set_defaults(func=cmd_audit_verify)


def parse_since(text: str) -> int:
    """ms since the epoch from ISO 8601 or epoch seconds (values above 1e11 are taken as ms)."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d*)?", text):
        value = float(text)
        return int(value) if value >= 1e11 else int(value * 1000)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since: expected ISO 8601 or epoch seconds, got {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def matches(record: dict, since_ms: int | None, party: str | None, der: str | None) -> bool:
    if since_ms is not None and not (isinstance(record.get("time"), int) and record["time"] >= since_ms):
        return False
    if party is not None and record.get("party") != party:
        return False
    return der is None or record.get("der") == der


def _answer(answer: Any) -> str:
    if answer is None:
        return ""
    if isinstance(answer, dict) and "refused" in answer:
        return f" -> refused ({answer['refused']}: {answer.get('reason', '')})"
    return f" -> {answer if isinstance(answer, str) else json.dumps(answer)}"


def format_record(r: dict) -> str:
    """One line for a human: time, seq, kind, who, where, target, what, answer, detail."""
    who = r.get("party") or "-"
    via = "/".join(str(r[k]) for k in ("protocol", "peer") if r.get(k) is not None)
    target = "/".join(str(r[k]) for k in ("der", "function") if r.get(k) is not None)
    if r.get("schedule") is not None:
        target += f" #{r['schedule']}"
    parts = [r.get("iso") or str(r.get("time")), f"#{r.get('seq')}", f"{r.get('kind')!s:<11}", who]
    parts += [p for p in (via, target, r.get("action")) if p]
    text = " ".join(str(p) for p in parts) + _answer(r.get("answer"))
    if r.get("detail") not in (None, {}):
        text += "  " + json.dumps(r["detail"], separators=(",", ":"))
    return text


def cmd_audit_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relevent.audit.verify import audit_files

    if not Path(args.path).exists():
        print(f"error: {args.path}: no such file or directory", file=sys.stderr)
        return 2
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from relevent.audit.site import chains

    for path in [f for chain_dir in chains(args.path) for f in audit_files(chain_dir)]:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    print(f"{path}:{number}: cut last line ({len(raw)} bytes), skipped", file=sys.stderr)
                    continue
                try:
                    record = json.loads(raw)
                    if not isinstance(record, dict):
                        raise ValueError("not an object")
                except ValueError:
                    print(f"{path}:{number}: not a record, skipped", file=sys.stderr)
                    continue
                if matches(record, since, args.party, args.der):
                    print(raw.decode("ascii", "replace").rstrip("\n") if args.json else format_record(record))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relevent.audit.verify import default_public_key, load_public_key

    if not Path(args.path).exists():
        print(f"error: {args.path}: no such file or directory", file=sys.stderr)
        return 2
    key_path = args.key or default_public_key(args.path)
    if key_path is None:
        print("error: no public key: pass --key (audit-key.pub is not beside the log)", file=sys.stderr)
        return 2
    try:
        key = load_public_key(key_path)
    except (OSError, ValueError) as exc:
        print(f"error: {key_path}: {exc}", file=sys.stderr)
        return 2
    from relevent.audit.site import chains

    worst = 0
    for chain_dir in chains(args.path):   # a site's audit folder: every chain, each on its own
        if chain_dir != Path(args.path):
            print(f"{chain_dir.name}: ", end="", flush=True)
        worst = max(worst, _verify_one(chain_dir, key, args))
    return worst


def _verify_one(path: Any, key: Any, args: argparse.Namespace) -> int:
    from relevent.audit.verify import verify

    result = verify(path, key, anchor=args.anchor)
    if not result.ok:
        print(f"BAD {result.problem}")
        return 1
    if not result.files or result.records == 0:
        print("error: no records", file=sys.stderr)
        return 2
    for cut in result.declared_cuts:
        print(f"note: {cut}", file=sys.stderr)
    if result.truncated:
        print(f"warning: {result.truncated}", file=sys.stderr)
    start = "from the start of the chain" if result.from_genesis else \
        f"from seq {result.first_seq} (earlier files removed by retention, or not given)"
    print(f"OK {result.records} records in {len(result.files)} file(s), seq {result.first_seq}..{result.last_seq} "
          f"{start}; last hash {result.last_hash}")
    if not args.key:
        print("note: checked with the public key beside the log; verify with the operator's copy "
              "(--key) to rule out a rewritten log", file=sys.stderr)
    return 0
