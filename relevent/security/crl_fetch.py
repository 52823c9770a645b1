"""CRLs fetched from URLs: the `[tls] crl` entries that are `http://` or `https://` URLs
(docs/tls.md, "CRL URLs").

One fetcher for the whole site (the site actor's child "crl", relevent/actors/crl.py)
downloads each URL into its cache file, STATE_DIR/tls/crl/<cache_name(url)>; every
endpoint's `SiteTls` reads that file as it reads a CRL file (relevent/security/tls.py).

Invariants, and why:

* **Only a CRL of our CA, and never an older one, replaces the cache.**  A download is
  parsed, its signature verified against a CA of `[tls] ca` (`tls.parse_crl`), and compared
  with the cached copy (`replaces`: crlNumber, then lastUpdate): a distribution point that
  serves garbage, another CA's CRL, or a replayed older CRL (which could un-revoke a peer)
  changes nothing.  Plain http is therefore fine (the CRL is signed); https is verified
  against `[tls] ca` with the host name checked.
* **A file is whole or absent.**  The cache is written atomically (temp file, fsync, rename,
  fsync of the folder: relevent/registration/files.py `write_atomic`), so an endpoint
  re-reading it never sees half a CRL.
* **A failed fetch keeps the last good copy.**  It stays in force until its own nextUpdate;
  past that, the endpoints refuse the peers of its CA (fail closed, the rule for every CRL).
  Before the first good fetch there is no copy: the endpoints refuse those peers too.
* **Bounded.**  One download takes at most FETCH_TIMEOUT_S in all and MAX_CRL_BYTES.

The decisions (`seconds_until_fetch`, `replaces`) are pure, on `CrlFacts`; `update` does one
fetch; the actor only schedules it.  No cryptography import at module level: the topology
schema uses `url_problem` and `is_url`.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlsplit

SCHEMES = ("http", "https")
CACHE_SUBDIR = os.path.join("tls", "crl")   # under the site's state_dir
FETCH_TIMEOUT_S = 30.0       # seconds: one whole download (connect, TLS, headers, every byte) at most
MAX_CRL_BYTES = 16 << 20     # bytes: a larger answer is refused (a big public CA's CRL is a few MB)
RETRY_FIRST_S = 2.0          # seconds: after a failed fetch, try again after 2, 4, 8 ... s, at most crl_refresh_s
MIN_AT_NEXT_UPDATE_S = 60.0  # seconds: fetching early for a CRL's nextUpdate, never more often than this
CACHE_MODE = 0o644


class FetchError(Exception):
    """No CRL could be had from the URL (connection, TLS, HTTP status, size, time)."""


# -- the entries: URL or file -------------------------------------------------------------------------
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(entry: str) -> bool:
    """Whether a `[tls] crl` entry is meant as a URL (`scheme://...`); anything else,
    a relative path included, is a file."""
    return bool(_SCHEME.match(entry))


def url_problem(entry: str) -> str | None:
    """What is wrong with a CRL URL, or None: http or https, a host, a valid port, no
    user or password (the URL is shown in `relevent status` and the logs)."""
    try:
        parts = urlsplit(entry)
        parts.port              # a port out of range or not a number raises ValueError
    except ValueError as exc:
        return f"{entry!r} is not a valid URL: {exc}"
    if parts.scheme.lower() not in SCHEMES:
        return (f"{entry!r}: a CRL is fetched over http:// or https:// only (a file is written as a path, "
                "without a scheme)")
    if not parts.hostname:
        return f"{entry!r} names no host"
    if parts.username is not None or parts.password is not None:
        return f"{entry!r}: no user or password in a CRL URL (it is shown in the status and the logs)"
    return None


def cache_dir(state_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(state_dir), CACHE_SUBDIR)


def cache_name(url: str) -> str:
    """A stable file name for a URL's cached CRL: its host (readable) and a hash of the
    whole URL (unique), e.g. `crl.example.net-1f2e3d4c5b6a7980.crl`."""
    host = urlsplit(url).hostname or "crl"
    return f"{re.sub(r'[^A-Za-z0-9.-]', '_', host)[:64]}-{hashlib.sha256(url.encode()).hexdigest()[:16]}.crl"


def cache_path(folder: str | os.PathLike, url: str) -> str:
    return os.path.join(os.fspath(folder), cache_name(url))


# -- the pure decisions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrlFacts:
    """What the decisions need of a (verified) CRL; times are Unix seconds."""
    issuer: str
    number: int | None        # the crlNumber extension, None without one
    last_update: float
    next_update: float | None
    digest: str               # SHA-256 of its DER: the same CRL in PEM or DER is the same


def seconds_until_fetch(now: float, last_attempt: float | None, refresh_s: float, failures: int = 0,
                        next_update: float | None = None) -> float:
    """How long until a URL is fetched again (pure; Unix seconds): at once when never tried;
    `refresh_s` after the last attempt; after `failures` failed ones in a row sooner, 2, 4,
    8 ... s, never later than `refresh_s`; and at the cached CRL's nextUpdate if that comes
    first (though not within MIN_AT_NEXT_UPDATE_S, or `refresh_s` if shorter, of the last
    attempt: a distribution point still serving the stale CRL is not hammered).  A clock
    stepped back never makes the wait longer than the interval."""
    if last_attempt is None:
        return 0.0
    interval = refresh_s if failures <= 0 else min(refresh_s, RETRY_FIRST_S * 2.0 ** min(failures - 1, 30))
    due = last_attempt + interval
    if next_update is not None and next_update < due:
        due = max(next_update, last_attempt + min(refresh_s, MIN_AT_NEXT_UPDATE_S))
    return max(0.0, min(due - now, interval))


def replaces(new: CrlFacts, cached: CrlFacts | None) -> tuple[bool, str]:
    """Whether a downloaded CRL (verified already) replaces the cached one (pure), and why
    (the reason is shown in the status).  Newer means a higher crlNumber when both have one,
    else (or with equal numbers) a later lastUpdate.  An older CRL never replaces a newer
    one: a replayed old CRL would make a revoked peer good again.  The same CRL again is
    "unchanged"; a different CRL claiming the same number and time is refused."""
    if cached is None:
        return True, "no CRL cached yet"
    if new.issuer != cached.issuer:
        return True, f"issued by {new.issuer} (the cached one by {cached.issuer})"
    if new.digest == cached.digest:
        return False, "unchanged"
    if new.number is not None and cached.number is not None and new.number != cached.number:
        if new.number > cached.number:
            return True, f"crlNumber {new.number} > {cached.number}"
        return False, f"older than the cached CRL: crlNumber {new.number} < {cached.number}"
    if new.last_update > cached.last_update:
        return True, f"lastUpdate {_iso(new.last_update)} after {_iso(cached.last_update)}"
    if new.last_update < cached.last_update:
        return False, f"older than the cached CRL: lastUpdate {_iso(new.last_update)} before {_iso(cached.last_update)}"
    return False, "a different CRL with the same crlNumber and lastUpdate as the cached one"


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


# -- one fetch -------------------------------------------------------------------------------------------
def facts_of(crl: Any) -> CrlFacts:
    """CrlFacts of a cryptography CertificateRevocationList."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return CrlFacts(crl.issuer.rfc4514_string(), number, crl.last_update_utc.timestamp(),
                    crl.next_update_utc.timestamp() if crl.next_update_utc is not None else None,
                    hashlib.sha256(crl.public_bytes(serialization.Encoding.DER)).hexdigest())


def download(url: str, ca_file: str = "", timeout_s: float = FETCH_TIMEOUT_S, max_bytes: int = MAX_CRL_BYTES,
             min_version: str = "1.2") -> bytes:
    """GET `url` (http, or https verified against `ca_file` with its host name checked:
    relevent/registration/client.py `tls_context`), at most `max_bytes` within `timeout_s`
    in all (a timer shuts the socket down at the deadline, so a server that sends one byte
    at a time cannot hold the fetcher); no redirects followed.  FetchError names what failed."""
    parts = urlsplit(url)
    problem = url_problem(url)
    if problem:
        raise FetchError(problem)
    late = threading.Event()
    try:
        if parts.scheme.lower() == "https":
            from relevent.registration.client import tls_context

            if not ca_file:
                raise FetchError("an https:// CRL needs [tls] ca to verify the server")
            ctx = tls_context(ca_file)
            if min_version == "1.3":
                ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port or 443, timeout=timeout_s, context=ctx)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)

        def deadline() -> None:
            late.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(timeout_s, deadline)
        timer.daemon = True
        timer.start()
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"Accept": "application/pkix-crl, application/x-pem-file, */*",
                                               "User-Agent": "relevent-crl"})
            answer = conn.getresponse()
            if answer.status != 200:
                where = answer.getheader("Location")
                raise FetchError(f"HTTP {answer.status} {answer.reason}" + (f" (to {where}: redirects are not "
                                                                             "followed)" if where else ""))
            length = answer.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"the answer is {int(length)} bytes, more than {max_bytes}")
            data = bytearray()
            while chunk := answer.read1(65536):
                data += chunk
                if len(data) > max_bytes:
                    raise FetchError(f"the answer is more than {max_bytes} bytes")
            if late.is_set():
                raise TimeoutError
            return bytes(data)
        finally:
            timer.cancel()
            conn.close()
    except ssl.SSLCertVerificationError as exc:
        raise FetchError(f"TLS: the server's certificate does not verify: {exc.verify_message}") from None
    except (OSError, http.client.HTTPException, ssl.SSLError, ValueError) as exc:
        if late.is_set() or isinstance(exc, TimeoutError):
            raise FetchError(f"the download took longer than {timeout_s:g} s") from None
        raise FetchError(f"{type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Outcome:
    """What one fetch of a URL did: `ok` (a CRL of our CA was had and is cached or was
    already), `result` (replaced, unchanged, kept, failed), why, and the cached CRL's facts
    after it (None: nothing cached)."""
    url: str
    at: float
    ok: bool
    result: str
    reason: str
    cached: CrlFacts | None


def cached_facts(path: str, cas: list) -> CrlFacts | None:
    """The facts of the cached copy, or None when there is none that verifies (a copy no CA
    of the bundle signed is as good as none: any verified download replaces it)."""
    from relevent.security.tls import TlsError, parse_crl

    try:
        with open(path, "rb") as f:
            data = f.read()
        return facts_of(parse_crl(data, path, cas))
    except (OSError, TlsError):
        return None


def update(url: str, path: str, ca_file: str, min_version: str = "1.2", clock: Callable[[], float] = time.time,
           fetch: Callable[..., bytes] = download) -> Outcome:
    """Fetch `url` once and replace its cache file `path` when the download is a CRL of
    a CA in `ca_file` that is newer than the cached one (module docstring).  Never raises
    for what the network or the server did: the Outcome says it."""
    from relevent.registration.files import write_atomic
    from relevent.security.tls import TlsError, parse_crl, read_cas

    at = clock()
    try:
        cas = read_cas(ca_file) if ca_file else []
    except TlsError as exc:
        return Outcome(url, at, False, "failed", str(exc), None)
    before = cached_facts(path, cas)
    try:
        data = fetch(url, ca_file, min_version=min_version)
    except FetchError as exc:
        return Outcome(url, at, False, "failed", str(exc), before)
    try:
        crl = parse_crl(data, url, cas)
    except TlsError as exc:
        return Outcome(url, at, False, "kept", f"{exc}: the cached CRL is kept", before)
    new = facts_of(crl)
    replace, why = replaces(new, before)
    if not replace:
        ok = why == "unchanged"
        return Outcome(url, at, ok, "unchanged" if ok else "kept", why if ok else f"{why}: the cached CRL is kept",
                       before)
    try:
        write_atomic(path, data, CACHE_MODE)
    except OSError as exc:
        return Outcome(url, at, False, "failed", f"cannot write {path}: {exc.strerror or exc}", before)
    return Outcome(url, at, True, "replaced", why, new)
