"""A small certificate authority for development and small sites (`relevent pki`).

One folder holds everything (docs/tls.md):

    DIR/ca.key        the CA's private key (mode 0600; keep it off the site in production)
    DIR/ca.crt        the CA's self-signed certificate: the `[tls] ca` bundle of every peer
    DIR/crl.pem       the CA's certificate revocation list, re-signed on every revocation
    DIR/index.json    what was issued and revoked (names, kinds, serials, dates)
    DIR/NAME.key      an issued key (mode 0600) and DIR/NAME.crt its certificate

Keys are ECDSA P-256, signatures SHA-256 (the Dutch DSO specification's example choice).
Certificates: a *party*'s (a client of the site's WAN endpoints) has CN = the party's
name and clientAuth; a *site*'s has serverAuth and clientAuth and subject alternative
names (the names and addresses its clients connect to); a *device*'s (a LAN client of a
broker) clientAuth.  None of them is a CA.

Every function here is pure apart from the folder it reads and writes, and takes `now`
so tests can issue certificates that are expired or not valid yet.  Files are written
atomically (a temporary file renamed over the old one), keys created with mode 0600.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KINDS = ("party", "site", "device")
CA_KEY, CA_CERT, CRL_FILE, INDEX = "ca.key", "ca.crt", "crl.pem", "index.json"
RESERVED = ("ca", "crl", "index")
CA_DAYS = 3650
LEAF_DAYS = 365
CRL_DAYS = 30
SKEW = timedelta(minutes=5)     # certificates start this long before `now` (clocks differ)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class PkiError(Exception):
    pass


@dataclass(frozen=True)
class Issued:
    name: str
    kind: str
    serial: int
    not_after: datetime
    cert: Path
    key: Path


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


# -- files ---------------------------------------------------------------------------------------------
def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically: a temporary file in the same folder, then renamed over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_index(folder: Path) -> dict:
    try:
        return json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PkiError(f"{folder}: no site CA here (run `relevent pki init {folder}` first)") from None
    except (OSError, ValueError) as exc:
        raise PkiError(f"{folder / INDEX}: cannot read: {exc}") from None


def _save_index(folder: Path, index: dict) -> None:
    _write(folder / INDEX, (json.dumps(index, indent=1) + "\n").encode())


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise PkiError(f"{folder}: cannot read the CA ({CA_CERT}, {CA_KEY}): {exc}") from None
    return cert, key


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name.lower() in RESERVED:
        raise PkiError(f"name {name!r}: use letters, digits, '.', '_' and '-' (max 64, not starting with a "
                       f"dot or dash; not {', '.join(RESERVED)})")
    return name


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# -- the CA --------------------------------------------------------------------------------------------
def init(folder: str | os.PathLike, name: str = "", days: int = CA_DAYS, crl_days: int = CRL_DAYS,
         now: datetime | None = None) -> Path:
    """A new CA in `folder` (created, mode 0700): key, self-signed certificate, an empty
    CRL.  Refuses a folder that already holds a CA."""
    folder = Path(folder)
    now = now or utcnow()
    if (folder / CA_KEY).exists() or (folder / INDEX).exists():
        raise PkiError(f"{folder}: already holds a CA ({CA_KEY}); use another folder")
    if days < 1 or crl_days < 1:
        raise PkiError("--days and --crl-days must be at least 1")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name or f"relevent site CA {folder.resolve().name}"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "relevent site PKI")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(_serial()).not_valid_before(now - SKEW).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    _write(folder / CA_KEY, _key_pem(key), 0o600)
    _write(folder / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    index = {"ca": subject.rfc4514_string(), "crl_days": crl_days, "crl_number": 0, "certs": []}
    _save_index(folder, index)
    write_crl(folder, now=now)
    return folder / CA_CERT


def _serial() -> int:
    return secrets.randbits(126) | (1 << 125)   # positive, 16 bytes, never 0


def issue(folder: str | os.PathLike, name: str, kind: str, days: int = LEAF_DAYS, dns: tuple = (),
          ips: tuple = (), now: datetime | None = None) -> Issued:
    """A key and a certificate for `name` signed by the folder's CA (NAME.key, NAME.crt;
    an earlier pair of that name is replaced, its certificate stays valid until revoked
    or expired)."""
    folder = Path(folder)
    now = now or utcnow()
    check_name(name)
    if kind not in KINDS:
        raise PkiError(f"kind {kind!r}: use one of {', '.join(KINDS)}")
    if days < 1:
        raise PkiError("--days must be at least 1")
    index = _load_index(folder)
    ca_cert, ca_key = _load_ca(folder)
    sans: list[x509.GeneralName] = []
    for d in dns:
        sans.append(x509.DNSName(d))
    for ip in ips:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiError(f"--ip {ip!r} is not an IP address") from None
    if kind == "site" and not sans:
        sans.append(x509.DNSName(name))
    usage = {"party": [ExtendedKeyUsageOID.CLIENT_AUTH],
             "site": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
             "device": [ExtendedKeyUsageOID.CLIENT_AUTH]}[kind]
    key = ec.generate_private_key(ec.SECP256R1())
    serial = _serial()
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(serial)
               .not_valid_before(now - SKEW).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.crt"
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    index["certs"].append({"name": name, "kind": kind, "serial": f"{serial:x}", "not_before": _iso(now - SKEW),
                           "not_after": _iso(not_after), "revoked": None})
    _save_index(folder, index)
    return Issued(name, kind, serial, not_after, cert_path, key_path)


def revoke(folder: str | os.PathLike, name: str, now: datetime | None = None) -> list[int]:
    """Revoke every certificate issued to `name` that is not revoked yet, and write a new
    CRL.  Returns their serials; none (an unknown name, or all revoked already) is an error."""
    folder = Path(folder)
    now = now or utcnow()
    index = _load_index(folder)
    mine = [c for c in index["certs"] if c["name"] == name]
    if not mine:
        raise PkiError(f"{folder}: no certificate was issued to {name!r}")
    fresh = [c for c in mine if not c["revoked"]]
    if not fresh:
        raise PkiError(f"{folder}: every certificate of {name!r} is revoked already")
    for c in fresh:
        c["revoked"] = _iso(now)
    _save_index(folder, index)
    write_crl(folder, now=now)
    return [int(c["serial"], 16) for c in fresh]


def write_crl(folder: str | os.PathLike, days: int | None = None, now: datetime | None = None) -> Path:
    """Sign a new CRL (DIR/crl.pem) listing every revoked certificate, valid `days`
    (default: the folder's crl_days) from `now`: run it (`relevent pki crl DIR`) well before
    the CRL's next update, or every TLS peer of the site refuses its clients."""
    folder = Path(folder)
    now = now or utcnow()
    index = _load_index(folder)
    ca_cert, ca_key = _load_ca(folder)
    days = index.get("crl_days", CRL_DAYS) if days is None else days
    if days < 1:
        raise PkiError("--days must be at least 1")
    index["crl_number"] = int(index.get("crl_number", 0)) + 1
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now).next_update(now + timedelta(days=days))
               .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    for c in index["certs"]:
        if c["revoked"]:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(c["serial"], 16))
                .revocation_date(datetime.fromisoformat(c["revoked"].replace("Z", "+00:00"))).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    _write(folder / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM))
    _save_index(folder, index)
    return folder / CRL_FILE


def listing(folder: str | os.PathLike, now: datetime | None = None) -> dict:
    """What `relevent pki list` shows: the CA, the CRL and every certificate issued, with
    its state now (valid, expired, revoked)."""
    folder = Path(folder)
    now = now or utcnow()
    index = _load_index(folder)
    ca_cert, _ = _load_ca(folder)
    try:
        crl = x509.load_pem_x509_crl((folder / CRL_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"{folder / CRL_FILE}: cannot read: {exc}") from None
    certs = []
    for c in index["certs"]:
        not_after = datetime.fromisoformat(c["not_after"].replace("Z", "+00:00"))
        state = "revoked" if c["revoked"] else ("expired" if not_after < now else "valid")
        certs.append({**c, "state": state})
    next_update = crl.next_update_utc
    return {"folder": str(folder), "ca": {"subject": ca_cert.subject.rfc4514_string(),
                                          "not_after": _iso(ca_cert.not_valid_after_utc)},
            "crl": {"number": index.get("crl_number"), "revoked": len(crl), "last_update": _iso(crl.last_update_utc),
                    "next_update": _iso(next_update) if next_update else None,
                    "expired": bool(next_update and next_update < now)},
            "certs": certs}
