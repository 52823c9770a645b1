"""The site's one TLS policy (`[tls]` in the topology; docs/tls.md), applied by every
endpoint that speaks TLS: HTTP serves with it, the MQTT links connect with it.

* **Contexts**: `SiteTls.server_context(client_cert)` and `client_context()` build
  `ssl.SSLContext`s from the one policy (own key and certificate, CA bundle, minimum
  version 1.2 or 1.3); no endpoint builds half a copy of its own.
* **Revocation, twice**: OpenSSL checks the CRLs during the handshake
  (`VERIFY_CRL_CHECK_LEAF`, the CRLs loaded with `load_verify_locations`), and the pure
  `check_peer` (on `cryptography`, whose chain verification ignores revocation) checks the
  peer's certificate after every handshake and again on every refresh: revoked, expired,
  not valid yet, or its issuer's CRL out of date.  OpenSSL keeps every CRL it was given and
  prefers the newest by lastUpdate; `check_peer` always uses the newest of each issuer, so
  a CRL replaced within the same second is still honoured.
* **Refresh**: `SiteTls.refresh()` (every `crl_refresh_s`) re-reads the CRL files; a changed
  CRL is verified against the CA bundle and loaded into every context made so far.  The
  caller then re-checks its open sessions (`PeerSessions.sweep`) and closes those of a
  peer that is revoked or expired now: within one refresh interval.
* **Renewal**: a new certificate and key on disk (renewed, or issued by a new registration,
  docs/registration.md) are not swapped into running listeners: libiec61850's cannot be.
  `renewed()` says when the files hold a different, matching pair; a listener then ends
  with `CertificateRenewed` and its supervisor restarts it at once with the new pair (no
  schedule is lost: they live in the controllers), while a client loads it into its
  contexts (`reload_own`) for its next connect.  A pair caught half-written (the key
  already new, the certificate not yet) is not a renewal yet; the next refresh sees it.
* **Errors name the file**: a missing, unreadable, badly signed or expired CRL is kept in
  `errors` (shown by `relevent status`) and fails closed: a peer whose issuer has no
  current CRL is refused.  A CRL that goes missing later keeps the last good one in force
  until its own next update.  The own certificate, key or CA bundle missing raises
  `TlsError` (the endpoint cannot serve TLS at all).
* **CRL URLs**: an `http://` or `https://` entry of `[tls] crl` is read from its cache file
  (`crl_cache_dir`/`crl_fetch.cache_name(url)`), which the site's one fetcher keeps
  (relevent/security/crl_fetch.py, relevent/actors/crl.py); its errors name the URL.  Until
  the first fetch has written it, the peers of its CA are refused (as for a missing CRL
  file) and `refresh_s` is at most AWAIT_FETCH_S, so the endpoints see the first copy
  within a second of its fetch rather than one whole `crl_refresh_s` later.
"""
from __future__ import annotations

import functools
import logging
import os
import ssl
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from relevent.security.crl_fetch import cache_path, is_url, url_problem

log = logging.getLogger("relevent.tls")

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
CLIENT_CERT = {"require": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
CRL_REFRESH_S = 300.0
AWAIT_FETCH_S = 1.0   # seconds between re-reads while a CRL URL has no cached copy yet (its first fetch)


class TlsError(Exception):
    pass


class CertificateRenewed(Exception):
    """The site's certificate and key changed on disk: the endpoint restarts to use them."""


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# -- the pure checks ---------------------------------------------------------------------------------
def check_peer(cert_der: bytes, crls: Sequence[x509.CertificateRevocationList], now: datetime) -> str | None:
    """Why a peer's certificate (DER) must be refused at `now`, or None.  `crls` are trusted
    CRLs (signatures checked when loaded); when any are given, the certificate's issuer must
    have one that is current (fail closed), and the newest of that issuer decides."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        return f"unreadable certificate: {exc}"
    who = _subject(cert)
    if now < cert.not_valid_before_utc:
        return f"certificate of {who} is not valid before {_iso(cert.not_valid_before_utc)}"
    if now > cert.not_valid_after_utc:
        return f"certificate of {who} expired at {_iso(cert.not_valid_after_utc)}"
    if not crls:
        return None
    mine = [c for c in crls if c.issuer == cert.issuer]
    if not mine:
        return f"no CRL of {cert.issuer.rfc4514_string()}, the issuer of {who}'s certificate"
    crl = max(mine, key=lambda c: (c.last_update_utc, _crl_number(c)))
    if crl.next_update_utc is not None and now > crl.next_update_utc:
        return f"the CRL of {cert.issuer.rfc4514_string()} is out of date since {_iso(crl.next_update_utc)}"
    revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if revoked is not None:
        return f"certificate of {who} (serial {cert.serial_number:x}) was revoked at {_iso(revoked.revocation_date_utc)}"
    return None


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _subject(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()


@functools.lru_cache(maxsize=256)
def cert_names(cert: bytes | str) -> tuple[str, ...]:
    """The names a certificate (DER bytes or PEM text) gives its holder: the subject's
    common name(s) first, then its subject alternative names (DNS, IP, URI, e-mail)."""
    try:
        parsed = (x509.load_pem_x509_certificate(cert.encode()) if isinstance(cert, str)
                  else x509.load_der_x509_certificate(cert))
    except ValueError:
        return ()
    names = [str(a.value) for a in parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for kind in (x509.DNSName, x509.IPAddress, x509.UniformResourceIdentifier, x509.RFC822Name):
            names += [str(v) for v in san.get_values_for_type(kind)]
    return tuple(dict.fromkeys(names))


def read_crl(path: str, cas: Sequence[x509.Certificate], now: datetime) -> x509.CertificateRevocationList:
    """A CRL file (PEM or DER), its signature checked against the CA that issued it; an
    error names the file.  An expired CRL is returned too: `crl_problem` says so."""
    try:
        data = _read(path)
    except OSError as exc:
        raise TlsError(f"CRL {path}: cannot read: {exc.strerror or exc}") from None
    return parse_crl(data, path, cas)


def parse_crl(data: bytes, path: str, cas: Sequence[x509.Certificate]) -> x509.CertificateRevocationList:
    try:
        crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----BEGIN")
               else x509.load_der_x509_crl(data))
    except ValueError as exc:
        raise TlsError(f"CRL {path}: not a CRL (PEM or DER): {exc}") from None
    issuer = [ca for ca in cas if ca.subject == crl.issuer]
    if not issuer:
        raise TlsError(f"CRL {path}: issued by {crl.issuer.rfc4514_string()}, which is not in the CA bundle")
    if not any(crl.is_signature_valid(ca.public_key()) for ca in issuer):
        raise TlsError(f"CRL {path}: its signature does not verify with {crl.issuer.rfc4514_string()}'s key")
    return crl


def crl_problem(path: str, crl: x509.CertificateRevocationList, now: datetime) -> str | None:
    if crl.next_update_utc is not None and now > crl.next_update_utc:
        return f"CRL {path} expired at {_iso(crl.next_update_utc)} (its next update): peers of its CA are refused"
    return None


def read_cas(path: str) -> list[x509.Certificate]:
    try:
        data = _read(path)
    except OSError as exc:
        raise TlsError(f"CA bundle {path}: cannot read: {exc.strerror or exc}") from None
    try:
        cas = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsError(f"CA bundle {path}: not PEM certificates: {exc}") from None
    return cas


def policy_problems(section: dict, now: datetime | None = None) -> list[tuple[tuple, str, bool]]:
    """What `relevent check` says of a `[tls]` section's files: [(key path, message, is_error)].
    Unreadable files, a key that does not match the certificate, a CRL not signed by the CA
    bundle are errors; a private key readable by others, an expired own certificate or an
    expired CRL are warnings (the site starts; its TLS endpoints refuse peers until fixed)."""
    now = now or datetime.now(timezone.utc)
    out: list[tuple[tuple, str, bool]] = []
    cert, key, ca = section.get("cert") or "", section.get("key") or "", section.get("ca") or ""
    if bool(cert) != bool(key):
        out.append((("cert",) if not cert else ("key",), "give both cert and key (the site's certificate and its "
                                                   "private key), or neither", True))
    unreadable = set()
    for name, path in (("cert", cert), ("key", key), ("ca", ca)):
        if path and not os.access(path, os.R_OK):
            unreadable.add(name)
            out.append(((name,), f"cannot read {path}: {'no such file' if not os.path.exists(path) else 'no permission'}",
                        True))
    if cert and key and not unreadable & {"cert", "key"}:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            out.append((("key",), f"{key} and {cert} cannot be used together: {exc}", True))
        if os.stat(key).st_mode & 0o077:
            out.append((("key",), f"{key} can be read by other users (mode {os.stat(key).st_mode & 0o777:o}): "
                               f"chmod 600 it", False))
        try:
            own = x509.load_pem_x509_certificate(_read(cert))
            if now > own.not_valid_after_utc:
                out.append((("cert",), f"{cert} expired at {_iso(own.not_valid_after_utc)}", False))
        except ValueError as exc:
            out.append((("cert",), f"{cert}: not a PEM certificate: {exc}", True))
    cas: list[x509.Certificate] = []
    if ca and "ca" not in unreadable:
        try:
            cas = read_cas(ca)
        except TlsError as exc:
            out.append((("ca",), str(exc), True))
    crls = section.get("crl") or []
    if crls and not ca:
        out.append((("crl",), "CRLs are checked against the CA bundle: give ca too", True))
        return out
    for i, path in enumerate(crls):
        if is_url(path):
            out += _url_problems(section, i, path, cas if "ca" not in unreadable else None, now)
            continue
        if not os.access(path, os.R_OK):
            out.append((("crl", i), f"cannot read CRL {path}: "
                                     f"{'no such file' if not os.path.exists(path) else 'no permission'}", True))
            continue
        if "ca" in unreadable:
            continue
        try:
            problem = crl_problem(path, read_crl(path, cas, now), now)
        except TlsError as exc:
            out.append((("crl", i), str(exc), True))
            continue
        if problem:
            out.append((("crl", i), problem, False))
    return out


def _url_problems(section: dict, i: int, url: str, cas: list[x509.Certificate] | None,
                  now: datetime) -> list[tuple[tuple, str, bool]]:
    """A CRL URL: an error when it is not a URL the site can fetch (http or https, a host);
    a warning when its cached copy (if the site fetched it before) is bad or expired: the
    next fetch replaces it."""
    problem = url_problem(url)
    if problem:
        return [(("crl", i), problem, True)]
    folder = section.get("crl_cache_dir") or ""
    path = cache_path(folder, url) if folder else ""
    if not path or cas is None or not os.path.exists(path):
        return []
    try:
        problem = crl_problem(url, read_crl(path, cas, now), now)
    except TlsError as exc:
        problem = f"{exc} (the copy fetched from {url}; the next fetch replaces it)"
    return [(("crl", i), problem, False)] if problem else []


# -- the policy at run time ----------------------------------------------------------------------------
class SiteTls:
    """One endpoint's copy of the site policy (a plain dict from the topology's `[tls]`),
    the contexts made from it, and the CRLs in force.  Not thread-safe: call it from the
    thread of the event loop that uses its contexts."""

    def __init__(self, section: dict, clock: Callable[[], float] = time.time) -> None:
        self.section = section
        self.clock = clock
        self.cert, self.key, self.ca = section.get("cert") or "", section.get("key") or "", section.get("ca") or ""
        self.crl_urls: dict[str, str] = {}       # the cache file of a CRL URL -> the URL
        self.crl_paths: list[str] = [self._crl_file(entry, section.get("crl_cache_dir") or "")
                                     for entry in section.get("crl") or []]
        self._refresh_s = float(section.get("crl_refresh_s") or CRL_REFRESH_S)
        self.min_version = VERSIONS[section.get("min_version") or "1.2"]
        self.cas = read_cas(self.ca) if self.ca else []
        self.own: x509.Certificate | None = None
        if self.cert:
            try:
                self.own = x509.load_pem_x509_certificate(_read(self.cert))
            except (OSError, ValueError) as exc:
                raise TlsError(f"certificate {self.cert}: cannot read: {exc}") from None
        self._raw: dict[str, bytes] = {}
        self.crls: dict[str, x509.CertificateRevocationList] = {}
        self.errors: dict[str, str] = {}          # CRL path -> what is wrong with it now
        self._contexts: list[ssl.SSLContext] = []
        self._client_contexts: list[ssl.SSLContext] = []
        self.refused = 0
        self.closed = 0
        self.last_refusal = ""
        self.refreshed_at = 0.0
        self._own_pair = self._read_own_pair()
        self.refresh()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def _crl_file(self, entry: str, folder: str) -> str:
        """The file a `[tls] crl` entry is read from: itself, or a URL's cached copy."""
        if not is_url(entry):
            return entry
        problem = url_problem(entry)
        if problem:
            raise TlsError(f"CRL {problem}")
        if not folder:
            raise TlsError(f"CRL {entry}: a fetched CRL is cached in the site's state_dir, and this policy has no "
                           "crl_cache_dir")
        path = cache_path(folder, entry)
        self.crl_urls[path] = entry
        return path

    def _crl_name(self, path: str) -> str:
        """How errors name a CRL: its file, or its URL."""
        return self.crl_urls.get(path, path)

    @property
    def refresh_s(self) -> float:
        """Seconds until the caller's next `refresh`: `crl_refresh_s`, but at most
        AWAIT_FETCH_S while a CRL URL has no copy read yet (so its first fetch is in force
        within a second, not one interval later)."""
        if any(path not in self.crls for path in self.crl_urls):
            return min(self._refresh_s, AWAIT_FETCH_S)
        return self._refresh_s

    @refresh_s.setter
    def refresh_s(self, value: float) -> None:
        self._refresh_s = float(value)

    # contexts
    def server_context(self, client_cert: str = "require") -> ssl.SSLContext:
        """A server context with the site's certificate; `client_cert` "require",
        "optional" or "none" (the CA bundle verifies the clients')."""
        if not (self.cert and self.key):
            raise TlsError("serving TLS needs [tls] cert and key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        self._own_chain(ctx)
        ctx.verify_mode = CLIENT_CERT[client_cert]
        if client_cert != "none":
            if not self.ca:
                raise TlsError(f"client_cert = \"{client_cert}\" needs [tls] ca (the bundle clients' certificates "
                               "chain to)")
            ctx.load_verify_locations(cafile=self.ca)
            self._revocation(ctx)
        self._contexts.append(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client context: the server's certificate verified (CA bundle, else the
        system's; its name checked), the site's certificate offered when it has one."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = self.min_version
        if self.ca:
            ctx.load_verify_locations(cafile=self.ca)
        else:
            ctx.load_default_certs()
        if self.cert and self.key:
            self._own_chain(ctx)
        self._revocation(ctx)
        self._contexts.append(ctx)
        self._client_contexts.append(ctx)
        return ctx

    def _own_chain(self, ctx: ssl.SSLContext) -> None:
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"certificate {self.cert} with key {self.key}: {exc}") from None

    def _revocation(self, ctx: ssl.SSLContext) -> None:
        if not self.crl_paths:
            return
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        for crl in self.crls.values():
            _load_crl(ctx, crl)

    # revocation
    def refresh(self) -> list[str]:
        """Re-read every CRL file; a changed, valid one replaces the one in force and goes
        into every context.  Returns the files that changed."""
        changed = []
        now = self.now()
        cas = self.cas
        for path in self.crl_paths:
            name = self._crl_name(path)
            try:
                data = _read(path)
            except OSError as exc:
                if path in self.crl_urls and path not in self.crls and isinstance(exc, FileNotFoundError):
                    message = (f"CRL {name}: not fetched yet (no copy in {path}): the peers of its CA are refused "
                               "until it is")
                elif path in self.crl_urls:
                    message = f"CRL {name}: cannot read its copy {path}: {exc.strerror or exc}"
                else:
                    message = f"CRL {path}: cannot read: {exc.strerror or exc}"
                self._error(path, message + (" (the last one read stays in force until its next update)"
                                             if path in self.crls else ""))
                continue
            if data != self._raw.get(path):
                try:
                    crl = parse_crl(data, name, cas)
                except TlsError as exc:
                    self._error(path, str(exc))
                    continue
                self._raw[path], self.crls[path] = data, crl
                for ctx in self._contexts:
                    _load_crl(ctx, crl)
                changed.append(path)
            problem = crl_problem(name, self.crls[path], now)
            if problem:
                self._error(path, problem)
            elif self.errors.pop(path, None) is not None:
                log.info("tls: CRL %s is fine again", name)
        self.refreshed_at = self.clock()
        return changed

    def _read_own_pair(self) -> tuple[bytes, bytes] | None:
        if not (self.cert and self.key):
            return None
        try:
            return _read(self.cert), _read(self.key)
        except OSError:
            return None

    def renewed(self) -> str | None:
        """Why this endpoint must restart to serve the site's certificate: the files hold a
        different pair than at start, and the new key matches the new certificate; else None."""
        pair = self._read_own_pair()
        if pair is None or self._own_pair is None or pair == self._own_pair:
            return None
        try:
            cert = x509.load_pem_x509_certificate(pair[0])
            key = serialization.load_pem_private_key(pair[1], password=None)
        except ValueError:
            return None     # half-written or not PEM: the next refresh looks again
        if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
                != cert.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo):
            return None     # the key replaced before its certificate (registration, point 7): not yet
        return (f"the site's certificate {self.cert} changed (now {_subject(cert)}, serial {cert.serial_number:x}, "
                f"until {_iso(cert.not_valid_after_utc)}): restarting to serve it")

    def reload_own(self) -> None:
        """Load the files' pair into every client context made so far (their next handshake
        offers it); listeners restart instead (`CertificateRenewed`)."""
        self._own_pair = self._read_own_pair()
        self.own = x509.load_pem_x509_certificate(self._own_pair[0]) if self._own_pair else self.own
        for ctx in self._client_contexts:
            self._own_chain(ctx)

    def _error(self, path: str, message: str) -> None:
        if self.errors.get(path) != message:
            log.error("tls: %s", message)
        self.errors[path] = message

    def peer_problem(self, cert_der: bytes | None) -> str | None:
        """Why this peer must be refused now (check_peer with the CRLs in force), or None.
        A configured CRL never read fails closed."""
        if cert_der is None:
            return None
        missing = [self.errors[p] for p in self.crl_paths if p not in self.crls and p in self.errors]
        if missing:
            return missing[0]
        return check_peer(cert_der, list(self.crls.values()), self.now())

    def refuse(self, reason: str, closed: bool = False) -> None:
        """Count a refusal (at the handshake's end, or an open session closed)."""
        if closed:
            self.closed += 1
        else:
            self.refused += 1
        self.last_refusal = reason

    def status(self) -> dict:
        """What `relevent status` shows: the own certificate's expiry, each CRL's age and
        next update, the errors, refusals and sessions closed."""
        now = self.now()
        out: dict[str, Any] = {"min_version": {v: k for k, v in VERSIONS.items()}[self.min_version]}
        if self.own is not None:
            out["cert"] = self.cert
            out["cert_not_after"] = _iso(self.own.not_valid_after_utc)
            out["cert_days_left"] = round((self.own.not_valid_after_utc - now).total_seconds() / 86400, 1)
        out["crls"] = [{"file": p, **({"url": self.crl_urls[p]} if p in self.crl_urls else {}), "revoked": len(c),
                        "age_s": round((now - c.last_update_utc).total_seconds()),
                        "next_update": _iso(c.next_update_utc)} for p, c in list(self.crls.items())]
        out["errors"] = list(self.errors.values())   # copies: read from the actor thread
        out["refused"], out["closed"], out["last_refusal"] = self.refused, self.closed, self.last_refusal
        return out


def _load_crl(ctx: ssl.SSLContext, crl: x509.CertificateRevocationList) -> None:
    """Into OpenSSL's store: `load_verify_locations` reads CRLs only from a PEM file."""
    with tempfile.NamedTemporaryFile(suffix=".pem", prefix="relevent-crl-") as f:
        f.write(crl.public_bytes(serialization.Encoding.PEM))
        f.flush()
        ctx.load_verify_locations(cafile=f.name)


@dataclass
class _Session:
    der: bytes
    close: Callable[[], None]
    label: str


class PeerSessions:
    """The open TLS sessions of one endpoint and their peers' certificates: what a refresh
    re-checks, closing those refused now."""

    def __init__(self) -> None:
        self._open: dict[Any, _Session] = {}

    def opened(self, key: Any, cert_der: bytes, close: Callable[[], None], label: str) -> None:
        """`key`: the connection object, or any hashable that names the session."""
        self._open[key] = _Session(cert_der, close, label)

    def closed(self, key: Any) -> None:
        self._open.pop(key, None)

    def __len__(self) -> int:
        return len(self._open)

    def sweep(self, problem_of: Callable[[bytes], str | None]) -> list[tuple[str, str]]:
        """Close every session whose peer `problem_of` refuses now: [(label, reason)]."""
        out = []
        for key, session in list(self._open.items()):
            reason = problem_of(session.der)
            if reason:
                self._open.pop(key, None)
                try:
                    session.close()
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
                out.append((session.label, reason))
        return out


def read_password(path: str) -> str:
    """The first line of a password file (an MQTT password), without its line end."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise TlsError(f"password file {path}: cannot read: {exc}") from None
