"""The audit record and its chain: canonical encoding, hashing, signing, checking.

Pure: no file, clock or thread here (time is an argument, keys are objects), so every rule
of the chain is unit-tested on its own.  relevent/audit/log.py writes these lines to files;
relevent/audit/verify.py reads them back.

Invariants, and why:

* **One record, one canonical line.**  A record is a JSON object with exactly `FIELDS`, in
  that order (so `seq` and `time` come first for a human reading the file); nested objects
  have their keys sorted; ASCII only (non-ASCII escaped), compact separators, no NaN or
  infinity (non-finite floats are written as the strings "Infinity", "-Infinity", "NaN";
  an instruction that carried one is still recorded).  A line is accepted only if it
  re-encodes to exactly its own bytes, so *every* byte of the file is covered: a change that
  still parses (an escape, a space, a reordered key, a re-padded base64) is refused as well.
* **Signed.**  `sig` is the base64 Ed25519 signature, by the site's key, of
  `SIGN_CONTEXT` + the canonical encoding of every field but `sig` (the context keeps a
  signature made for the audit log from being valid for anything else, and vice versa).
* **Chained.**  `prev` is the SHA-256 (hex) of the previous record's whole line (its bytes,
  without the newline); the first record of a new chain has `prev = GENESIS`.  `seq` grows
  by one from record to record.  Editing a record breaks its signature; removing,
  inserting or reordering records breaks the next `prev` (and `seq`).
* **Files are part of the chain, not boundaries of it.**  Every file begins with a header
  record (`start` for a new chain, `rotation` when a file follows another) whose `prev`
  is the last hash of the previous file and whose `detail` names that file, its last `seq`
  and hash, and the format, site and key fingerprint, so a single file is self-describing.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from datetime import datetime, timezone
from typing import Any, Mapping, TypedDict

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "relevent-audit"
VERSION = 1
GENESIS = "0" * 64
SIGN_CONTEXT = b"relevent-audit-v1\n"

#: What a caller gives to `AuditLog.append` (all optional; `kind` defaults to "instruction").
INPUT_FIELDS = ("kind", "party", "protocol", "peer", "endpoint", "der", "function", "schedule",
                "action", "detail", "answer")
#: Every record has exactly these fields, in this order (absent ones are null).
FIELDS = ("seq", "time", "iso") + INPUT_FIELDS + ("prev", "sig")

#: Record kinds the log writes itself.  Callers write "instruction" and "command" (and may
#: use other kinds: the chain does not restrict them).
HEADER_KINDS = ("start", "rotation")
LOG_KINDS = HEADER_KINDS + ("open", "retention")


class Entry(TypedDict, total=False):
    """The fields a caller passes to `AuditLog.append` (documentation; a plain dict works).

    kind      "instruction" (a request from a party, answered) or "command" (a DER's command
              changed); the log itself writes "start", "rotation", "open", "retention".
    party     the party that asked (policy's name), or None when unrecognised.
    protocol  "mms", "http", "mqtt_ems", "iec104", "openadr", "local", ...
    peer      the client's address ("10.0.0.5:50123"), broker user, VTN id...
    endpoint  the WAN endpoint's name in the topology.
    der       the DER's name.
    function  "ActPow", "MaxPow", "OnOff", ...
    schedule  the schedule's number (int) or "res" for the reserve.
    action    "write", "enable", "disable", "command", "read", ...
    detail    what was asked, as a JSON object: written fields, values, priority, start; for
              a command, {"from": old, "to": new, "source": ...}.  Any extra fields go here.
    answer    "ok", or {"refused": RULE, "reason": TEXT}; None for a command.
    """

    kind: str
    party: str | None
    protocol: str | None
    peer: str | None
    endpoint: str | None
    der: str | None
    function: str | None
    schedule: int | str | None
    action: str | None
    detail: Any
    answer: Any


class RecordError(ValueError):
    """A line that is not a valid audit record; `reason` says why, for a human."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# -- encoding ---------------------------------------------------------------------------

_MAX_DEPTH = 32


def jsonable(value: Any, _depth: int = 0) -> Any:
    """`value` as plain JSON data with sorted object keys: what the record will hold.

    Never fails: non-finite floats become strings, tuples and sets lists, bytes base64,
    unknown objects their str(); an instruction with odd values is still recorded.
    """
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if _depth >= _MAX_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        items = {str(k): v for k, v in value.items()}
        return {k: jsonable(items[k], _depth + 1) for k in sorted(items)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v, _depth + 1) for v in value), key=repr)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def iso_of(time_ms: int) -> str:
    """UTC ISO 8601 with milliseconds: 2026-12-05T10:15:00.123Z."""
    dt = datetime.fromtimestamp(time_ms // 1000, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{time_ms % 1000:03d}Z"


def day_of(time_ms: int) -> str:
    """The UTC day of `time_ms` as YYYYMMDD (files rotate when it changes)."""
    return datetime.fromtimestamp(time_ms // 1000, timezone.utc).strftime("%Y%m%d")


def entry_fields(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's entry checked and normalised: every INPUT_FIELD, JSON data only.

    Raises ValueError for a field the record does not have (a programming error: extra
    information belongs in `detail`) or one the log sets itself (seq, time, iso, prev, sig).
    """
    unknown = set(entry) - set(INPUT_FIELDS)
    if unknown:
        raise ValueError(f"audit record fields {sorted(unknown)} are not allowed "
                         f"(fields: {', '.join(INPUT_FIELDS)}; put anything else in 'detail')")
    fields = {name: jsonable(entry.get(name)) for name in INPUT_FIELDS}
    if fields["kind"] is None:
        fields["kind"] = "instruction"
    if not isinstance(fields["kind"], str):
        raise ValueError("audit record 'kind' must be a string")
    return fields


def record_hash(line: bytes) -> str:
    """The chain hash of a record: SHA-256 of its whole line (without the newline), hex."""
    return hashlib.sha256(line).hexdigest()


def sign_record(seq: int, time_ms: int, prev: str, fields: Mapping[str, Any],
                key: Ed25519PrivateKey) -> bytes:
    """The canonical, signed line (no newline) of one record.  `fields` from `entry_fields`."""
    record = {"seq": seq, "time": time_ms, "iso": iso_of(time_ms)}
    for name in INPUT_FIELDS:
        record[name] = fields[name]
    record["prev"] = prev
    body = _dumps(record)
    sig = base64.b64encode(key.sign(SIGN_CONTEXT + body))
    return body[:-1] + b',"sig":"' + sig + b'"}'


class Chain:
    """The writer's side of a chain: the next `seq` and the last hash.  Not thread-safe
    (the log holds its lock around `next`)."""

    def __init__(self, key: Ed25519PrivateKey, seq: int = 0, prev: str = GENESIS) -> None:
        self.key = key
        self.seq = seq          # the seq the next record gets
        self.prev = prev        # hash of the last record written

    def next(self, time_ms: int, fields: Mapping[str, Any]) -> bytes:
        """Sign the next record and advance; returns its line (no newline)."""
        line = sign_record(self.seq, time_ms, self.prev, fields, self.key)
        self.seq += 1
        self.prev = record_hash(line)
        return line


# -- checking ---------------------------------------------------------------------------

def parse_line(line: bytes) -> dict[str, Any]:
    """A line parsed as a record with exactly FIELDS, in canonical form (no signature check)."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise RecordError("not a JSON object")
    if tuple(record) != FIELDS:
        missing = [f for f in FIELDS if f not in record]
        extra = [f for f in record if f not in FIELDS]
        if missing or extra:
            raise RecordError(f"fields differ from the record format (missing {missing}, extra {extra})")
        raise RecordError("fields out of order (not the canonical encoding)")
    if not isinstance(record["seq"], int) or isinstance(record["seq"], bool) or record["seq"] < 0:
        raise RecordError("seq is not a non-negative integer")
    if not isinstance(record["time"], int) or isinstance(record["time"], bool):
        raise RecordError("time is not an integer")
    if not isinstance(record["prev"], str) or not re.fullmatch(r"[0-9a-f]{64}", record["prev"]):
        raise RecordError("prev is not a SHA-256 hex digest")
    if not isinstance(record["sig"], str):
        raise RecordError("sig is not a string")
    if _dumps({k: jsonable(v) for k, v in record.items()}) != line:
        raise RecordError("not the canonical encoding of its content (bytes changed)")
    return record


def check_line(line: bytes, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The record of `line` if it is canonical and signed by `public_key`; else RecordError."""
    record = parse_line(line)
    sig_text = record["sig"]
    try:
        sig = base64.b64decode(sig_text, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError("sig is not base64") from None
    if base64.b64encode(sig).decode("ascii") != sig_text or len(sig) != 64:
        raise RecordError("sig is not a canonical base64 Ed25519 signature")
    body = _dumps({k: v for k, v in record.items() if k != "sig"})
    try:
        public_key.verify(sig, SIGN_CONTEXT + body)
    except InvalidSignature:
        raise RecordError("bad signature (record changed, or signed by another key)") from None
    return record


class ChainChecker:
    """The reader's side: feed lines in order; each is checked alone and against the one
    before.  The first line fed is the anchor: its `prev` can only be checked if it starts
    a chain (GENESIS) or against a hash the caller knows (`expect_prev`)."""

    def __init__(self, public_key: Ed25519PublicKey, expect_prev: str | None = None) -> None:
        self.public_key = public_key
        self.prev: str | None = expect_prev
        self.seq: int | None = None
        self.count = 0
        self.first: dict[str, Any] | None = None

    def feed(self, line: bytes) -> dict[str, Any]:
        record = check_line(line, self.public_key)
        if record["kind"] == "start" and record["prev"] != GENESIS:
            raise RecordError("a start record must begin a chain (prev is not the genesis hash)")
        if self.prev is not None:
            if record["kind"] == "start":
                raise RecordError("the chain restarts here: a new chain began, so the link to the "
                                  "records before is lost")
            if record["prev"] != self.prev:
                expected = "" if self.seq is None else f"; expected seq {self.seq + 1}, found {record['seq']}"
                raise RecordError("prev does not match the hash of the record before: a record was "
                                  f"removed, inserted, reordered or changed{expected}")
        elif record["prev"] == GENESIS and record["kind"] != "start":
            raise RecordError("a record with the genesis hash as prev that is not a start record")
        if self.seq is not None and record["seq"] != self.seq + 1:
            raise RecordError(f"seq {record['seq']} follows seq {self.seq} (expected {self.seq + 1})")
        if self.first is None:
            self.first = record
        self.prev = record_hash(line)
        self.seq = record["seq"]
        self.count += 1
        return record


# -- keys and file names ----------------------------------------------------------------

def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """SHA-256 of the raw public key, hex: names the key in header records."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return hashlib.sha256(public_key_bytes(key)).hexdigest()


def public_key_from_bytes(data: bytes) -> Ed25519PublicKey:
    """A public key from PEM (SubjectPublicKeyInfo), or base64 of the 32 raw bytes."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(text)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a PEM public key nor base64 of 32 bytes") from None
    if len(raw) != 32:
        raise ValueError("not a PEM public key nor base64 of 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


_FILE_NAME = re.compile(r"audit-(\d{8})-(\d{10,})\.jsonl")


def file_name(day: str, first_seq: int) -> str:
    """The name of a log file whose first record has `first_seq`, written on UTC `day`."""
    return f"audit-{day}-{first_seq:010d}.jsonl"


def parse_file_name(name: str) -> tuple[str, int] | None:
    """(day, first seq) of a log file's name, or None if it is not one."""
    m = _FILE_NAME.fullmatch(name)
    return (m.group(1), int(m.group(2))) if m else None
