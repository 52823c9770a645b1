"""Which controlling stations' certificates an IEC 104 endpoint over TLS admits (`peer_certs`).

c104 2.2.1 (lib60870-C with mbedtls) checks a station's certificate during the handshake
against the CA and its validity, and, with `only_known`, against a list of allowed
certificates; it can neither check a CRL nor tell which certificate a station presented.  So
the site decides here, before c104 is given the list: a listed certificate is admitted only
if it is directly issued by a CA of the site's bundle (its signature checked) and the site's
revocation policy finds nothing against it (`SiteTls.peer_problem`: expired, not valid yet,
revoked, its issuer's CRL missing or out of date).  The endpoint asks again at every CRL
refresh and serves a new list when the answer changes (endpoint.py).

`judge` is pure given its inputs (the files' bytes are read here, the revocation check is the
caller's `problem_of`), so the verdicts are unit-tested with a CA, CRLs and a time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Verdict:
    """One `peer_certs` file: its certificate (DER, None if unreadable) and why it is refused
    (None: admitted)."""
    path: str
    der: bytes | None
    subject: str = ""
    serial: str = ""
    not_after: str | None = None
    reason: str | None = None

    @property
    def allowed(self) -> bool:
        return self.reason is None and self.der is not None

    def pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.der).public_bytes(serialization.Encoding.PEM)

    def status(self) -> dict:
        return {"file": self.path, "subject": self.subject or None, "serial": self.serial or None,
                "not_after": self.not_after, "allowed": self.allowed, "reason": self.reason}


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def read_certificate(path: str) -> x509.Certificate:
    """The (first) certificate of a PEM or DER file; ValueError or OSError otherwise."""
    with open(path, "rb") as f:
        data = f.read()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificates(data)[0]
    return x509.load_der_x509_certificate(data)


def issued_by(cert: x509.Certificate, cas: Sequence[x509.Certificate]) -> bool:
    """Is `cert` directly issued (name and signature) by one of `cas`?"""
    for ca in cas:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def judge(paths: Sequence[str], cas: Sequence[x509.Certificate],
          problem_of: Callable[[bytes], str | None]) -> list[Verdict]:
    """A verdict per listed file, in order.  `problem_of(der)` is the site's revocation and
    validity check (`SiteTls.peer_problem`, or `check_peer` with given CRLs and time)."""
    out = []
    for path in paths:
        try:
            cert = read_certificate(path)
        except OSError as exc:
            out.append(Verdict(path, None, reason=f"cannot read {path}: {exc.strerror or exc}"))
            continue
        except (ValueError, IndexError):
            out.append(Verdict(path, None, reason=f"{path} is not a certificate (PEM or DER)"))
            continue
        der = cert.public_bytes(serialization.Encoding.DER)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common = dict(path=path, der=der, subject=str(cns[0].value) if cns else cert.subject.rfc4514_string(),
                      serial=f"{cert.serial_number:x}", not_after=_iso(cert.not_valid_after_utc))
        if not issued_by(cert, cas):
            out.append(Verdict(**common, reason=f"certificate of {common['subject']} is not issued by a CA of the "
                                                f"site's bundle ([tls] ca)"))
            continue
        out.append(Verdict(**common, reason=problem_of(der)))
    return out


def allowed_set(verdicts: Sequence[Verdict]) -> tuple[bytes, ...]:
    """The admitted certificates (DER), each once, in order: what c104 is given."""
    return tuple(dict.fromkeys(v.der for v in verdicts if v.allowed))


def check_problems(ep: dict, data: dict) -> list:
    """`relevent check` for an iec104 endpoint's TLS keys: with tls, `peer_certs` is required
    and each file must be a readable certificate (errors); one the site would refuse today (not
    of the CA bundle, expired, revoked) is a warning: the site starts, that station is refused."""
    paths = ep.get("peer_certs") or []
    if not ep.get("tls"):
        return [("peer_certs", "peer_certs is only used with tls = true", "warning")] if paths else []
    if not paths:
        return [("peer_certs", "tls = true needs peer_certs: the certificate files of the controlling stations "
                               "allowed to connect (c104 can neither check a CRL nor say which certificate a "
                               "station presented, so the site admits listed certificates only; docs/iec104.md)")]
    from relevent.security.tls import TlsError, check_peer, read_cas, read_crl

    tls = data.get("tls") or {}
    out: list = []
    unreadable = set()
    for i, path in enumerate(paths):
        try:
            read_certificate(path)
        except OSError as exc:
            unreadable.add(path)
            out.append(("peer_certs", f"peer_certs[{i}]: cannot read {path}: "
                                      f"{'no such file' if not os.path.exists(path) else exc.strerror or exc}"))
        except (ValueError, IndexError):
            unreadable.add(path)
            out.append(("peer_certs", f"peer_certs[{i}]: {path} is not a certificate (PEM or DER)"))
    ca = tls.get("ca") or ""
    if not ca:
        return out     # the loader says tls needs [tls] ca
    try:
        cas = read_cas(ca)
    except TlsError:
        return out     # the loader names that file
    now = datetime.now(timezone.utc)
    crls = []
    for path in tls.get("crl") or []:
        try:
            crls.append(read_crl(path, cas, now))
        except TlsError:
            pass       # the loader names that file; at run time its peers are refused until it is readable
    readable = [p for p in paths if p not in unreadable]
    for verdict in judge(readable, cas, lambda der: check_peer(der, crls, now)):
        if verdict.reason:
            out.append(("peer_certs", f"peer_certs[{paths.index(verdict.path)}]: {verdict.reason}: that station "
                                      "will be refused", "warning"))
    return out
