"""The registration client: the site's identity, its CSR, the request, the certificate.

One `RegistrationClient.step()` does what is due now and returns the state
(relevent/registration/schedule.py):

* registered: the stored certificate is checked (present, ours, our device code, chained to
  the configured root, not expired at the clock's now); any problem is a `cert_error`.
  Then the CRL (`[registration] crl_url`, else the certificate's CRL distribution point)
  is fetched and, if it lists our serial, the state becomes `revoked`.  Either sends the
  site back to registration in the same step (an attempt is due at once).
* not registered and an attempt due (or forced): the state is persisted as `requesting`,
  a CSR is built (CN = device code, challenge-password = the token), POSTed as PEM to
  `service_url` over HTTPS (TLS 1.2 minimum, only the configured root trusted, host name
  checked), and the answer is judged: a PEM chain is verified (`verify_issued`) and stored,
  anything else is a failure that follows the back-off.

Invariants, and why:

* **Nothing unverified is stored.**  The certificate file is replaced only by a chain whose
  leaf has our public key, CN = our device code, is not a CA, is valid now and chains to
  the configured root: a TLS link reading `[registration] cert` never gets a certificate
  that does not match `[registration] key`.  Files are written atomically (files.py).
* **The state survives a restart.**  Every transition is saved (JSON, atomic) before the
  next action: `requesting` is on disk before the request leaves, so a crash counts as a
  failed attempt (schedule.recover) and the back-off continues where it was.
* **One writer.**  A step holds an exclusive lock (`<state_file>.lock`, flock) so a site
  and an operator's `relevent register` never interleave their transitions.
* **A revoked key is not reused, and key and certificate change together.**  After a
  revocation (which may mean the key leaked) a new key is made as `<key>.new` and used for
  every attempt until a certificate is issued for it; only then does it replace `key`, just
  before the certificate replaces `cert`.  Until then the old pair stays as it was, so a TLS
  policy reading `key` and `cert` always finds a matching pair (a crash between the two
  renames is a certificate error at the next step, repaired by registering again).  A
  certificate error keeps the key.
* **Local problems are not network failures.**  A key readable by others, a missing token
  file, a bad configuration raise `IdentityError` / `ConfigError` and change no state: no
  number of retries fixes them.

The clock (ms since the epoch) and the transport are injected, so tests drive the back-off
with a fake clock against the real HTTPS simulator (tests/test_registration.py).
"""
from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import logging
import os
import ssl
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AttributeOID, ExtensionOID, NameOID

from relevent.clock import now_ms as wall_ms
from relevent.registration import schedule
from relevent.registration.files import IdentityError, fsync_dir, key_pem, load_private_key, new_key, write_atomic
from relevent.registration.schedule import Result, State

log = logging.getLogger("relevent.registration")

SUBDIR = "registration"
DEFAULT_KEY, DEFAULT_CERT, DEFAULT_STATE = "site-key.pem", "site-cert.pem", "state.json"
CSR_TYPE = "application/pkcs10"
CHAIN_TYPE = "application/pem-certificate-chain"
MAX_ANSWER = 1 << 20          # bytes: a certificate chain or a CRL of a test service is far smaller
MAX_TOKEN = 255               # the challenge-password is a DirectoryString of at most 255 characters


class ConfigError(ValueError):
    """`[registration]` is missing or incomplete."""


class TransportError(Exception):
    """No answer: connection refused, TLS failure, timeout."""


class CertificateProblem(Exception):
    """A certificate (issued or held) that does not verify; the message says why."""


# -- configuration ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    service_url: str
    device_code: str
    token_file: Path
    key: Path
    cert: Path
    ca: Path
    state_file: Path
    crl_url: str = ""
    timeout_s: float = 15.0

    @classmethod
    def from_section(cls, section: dict, state_dir: str | os.PathLike, where: str = "[registration]") -> "Config":
        """From the validated `[registration]` table (schema.REGISTRATION); relative paths are
        relative to the working directory, like `[site] state_dir`."""
        missing = [k for k in ("service_url", "device_code", "token_file", "ca") if not section.get(k)]
        if missing:
            raise ConfigError(f"{where}: {', '.join(missing)} must be set for the site to register")
        if not section["service_url"].startswith("https://"):
            raise ConfigError(f"{where} service_url: {section['service_url']!r} is not https:// (TLS 1.2+ only)")
        code = section["device_code"]
        if code != code.strip() or len(code) > 64 or not code.isprintable():
            raise ConfigError(f"{where} device_code: {code!r} must be 1..64 printable characters, no surrounding "
                              "spaces (it is the certificate's common name)")
        base = Path(state_dir) / SUBDIR

        def path(key: str, default: str) -> Path:
            value = section.get(key) or ""
            return (Path.cwd() / value).resolve() if value else base / default

        return cls(section["service_url"], code, path("token_file", ""), path("key", DEFAULT_KEY),
                   path("cert", DEFAULT_CERT), path("ca", ""), path("state_file", DEFAULT_STATE),
                   section.get("crl_url") or "", float(section.get("timeout_s") or 15.0))


def registration_section(topo: Any) -> dict:
    """The validated `[registration]` table of a loaded topology (relevent.topology.Topology).

    The loader puts it in `topo.data` once it validates the section; until then it is read
    and validated here from the topology's text with the loader's own rules."""
    if isinstance(topo.data.get("registration"), dict):
        return topo.data["registration"]
    from relevent.topology import TopologyError, schema
    from relevent.topology.loader import _Validator

    raw = tomllib.loads(topo.text).get("registration", {})
    v = _Validator(str(topo.path), topo.text, dict(os.environ))
    raw = v.interpolate(raw, ("registration",))
    section = v.table(raw, schema.REGISTRATION, ("registration",))
    if v.problems:
        raise TopologyError(v.problems)
    return section


def load_config(topo: Any) -> Config:
    section = registration_section(topo)
    if not section.get("service_url"):
        raise ConfigError(f"{topo.path}: no [registration] service_url: this site does not register")
    return Config.from_section(section, topo.state_dir, f"{topo.path}: [registration]")


# -- identity and CSR -------------------------------------------------------------------------------

def read_token(path: Path) -> str:
    """The token (the device code signed by the manufacturer) as text, stripped."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise IdentityError(f"{path}: no token file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"{path}: cannot read the token: {exc}") from None
    if not token or len(token) > MAX_TOKEN or not token.isprintable():
        raise IdentityError(f"{path}: the token must be 1..{MAX_TOKEN} printable characters on one line")
    return token


def build_csr(key: ec.EllipticCurvePrivateKey, device_code: str, token: str) -> bytes:
    """A PEM CSR whose subject is CN = device code and which carries the token as its
    challenge-password attribute (PKCS#9), signed with `key` (ECDSA SHA-256)."""
    builder = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_code)]))
               .add_attribute(AttributeOID.CHALLENGE_PASSWORD, token.encode()))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def spki(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# -- verification (pure: time is an argument) -------------------------------------------------------

def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _valid_at(cert: x509.Certificate, now_ms: int, what: str) -> None:
    if now_ms < _ms(cert.not_valid_before_utc):
        raise CertificateProblem(f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now_ms > _ms(cert.not_valid_after_utc):
        raise CertificateProblem(f"{what} expired at {cert.not_valid_after_utc.isoformat()}")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def verify_chain(leaf: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate],
                 now_ms: int) -> list[x509.Certificate]:
    """The path leaf -> ... -> a root, each link signed by the next, every issuer a CA valid at
    `now_ms`; CertificateProblem if there is none.  (cryptography's own verifier applies the
    web PKI's rules, which a DSO's device PKI need not follow; this checks exactly signature,
    CA flag and validity.)  Revocation is checked apart: `check_revoked`."""
    path, cert = [leaf], leaf
    for _ in range(8):
        for root in roots:
            if root.subject == cert.issuer and _signed_by(cert, root):
                _valid_at(root, now_ms, f"the root {root.subject.rfc4514_string()}")
                return path + [root]
        issuer = next((c for c in intermediates if c.subject == cert.issuer and c not in path
                       and _signed_by(cert, c)), None)
        if issuer is None:
            raise CertificateProblem(f"{cert.subject.rfc4514_string()} is not signed by the expected CA "
                                     f"(its issuer {cert.issuer.rfc4514_string()} does not chain to the "
                                     "configured root)")
        if not _is_ca(issuer):
            raise CertificateProblem(f"{issuer.subject.rfc4514_string()} signs certificates but is not a CA")
        _valid_at(issuer, now_ms, f"the CA {issuer.subject.rfc4514_string()}")
        path.append(issuer)
        cert = issuer
    raise CertificateProblem("certificate chain longer than 8")


def verify_issued(chain_pem: bytes, roots: list[x509.Certificate], device_code: str, public_key: Any,
                  now_ms: int) -> list[x509.Certificate]:
    """The verified path (leaf, its CAs, the root) of a returned PEM chain if the leaf is ours:
    our public key, CN = device code, not a CA, valid at `now_ms`, chained to one of `roots`.
    Certificates of the answer that are not on the path are dropped."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise CertificateProblem(f"not a PEM certificate chain ({exc})") from None
    leaf = certs[0]
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [device_code]:
        raise CertificateProblem(f"the certificate's CN is {[n.value for n in names]}, not {device_code!r}")
    if spki(leaf.public_key()) != spki(public_key):
        raise CertificateProblem("the certificate is not for our key")
    if _is_ca(leaf):
        raise CertificateProblem("the certificate is a CA certificate, not a device's")
    _valid_at(leaf, now_ms, "the certificate")
    return verify_chain(leaf, certs[1:], roots, now_ms)


def check_revoked(cert: x509.Certificate, crl: x509.CertificateRevocationList,
                  issuer: x509.Certificate | None = None) -> bool:
    """Whether `crl` lists `cert`.  A CRL of another issuer, or (given the `issuer`) one whose
    signature does not verify, raises CertificateProblem: it proves nothing either way."""
    if crl.issuer != cert.issuer:
        raise CertificateProblem(f"the CRL is of {crl.issuer.rfc4514_string()}, not of our certificate's "
                                 f"issuer {cert.issuer.rfc4514_string()}")
    if issuer is not None and not crl.is_signature_valid(issuer.public_key()):
        raise CertificateProblem("the CRL's signature does not verify against the issuing CA")
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def crl_urls(cert: x509.Certificate) -> list[str]:
    """The https:// URLs of a certificate's CRL distribution points."""
    try:
        points = cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS).value
    except x509.ExtensionNotFound:
        return []
    return [name.value for point in points for name in (point.full_name or [])
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith("https://")]


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CertificateProblem(f"not a CRL ({exc})") from None


# -- transport --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


class Transport(Protocol):
    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response: ...


def tls_context(ca_file: str | os.PathLike) -> ssl.SSLContext:
    """TLS 1.2 at least, only `ca_file`'s roots trusted (not the system's), host name checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


class HttpsTransport:
    """http.client over `tls_context(ca)`; any failure to get an answer is a TransportError."""

    def __init__(self, ca_file: str | os.PathLike, timeout_s: float = 15.0) -> None:
        self.ca_file, self.timeout_s = ca_file, timeout_s
        self._ctx: ssl.SSLContext | None = None

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise TransportError(f"{url}: only https:// URLs")
        try:
            if self._ctx is None:
                self._ctx = tls_context(self.ca_file)
            conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=self.timeout_s,
                                               context=self._ctx)
            try:
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                conn.request(method, path, body=body, headers=headers or {})
                answer = conn.getresponse()
                data = answer.read(MAX_ANSWER + 1)
                if len(data) > MAX_ANSWER:
                    raise TransportError(f"{url}: answer larger than {MAX_ANSWER} bytes")
                return Response(answer.status, answer.getheader("Content-Type", "") or "", data)
            finally:
                conn.close()
        except ssl.SSLCertVerificationError as exc:
            raise TransportError(f"TLS: the service's certificate does not verify: {exc.verify_message}") from None
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None


# -- the client -------------------------------------------------------------------------------------

def _error_text(response: Response) -> str:
    try:
        data = json.loads(response.body)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return data["error"][:300]
    except ValueError:
        pass
    return response.body[:200].decode("utf-8", "replace").strip() or "no reason given"


def load_state(path: Path, now_ms: int) -> State:
    """The persisted state (recovered: an interrupted attempt counts as failed), or the
    initial one if there is none.  A corrupt file raises ValueError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return schedule.initial(now_ms)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable registration state: {exc}") from None
    try:
        return schedule.recover(State.from_json(data))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def save_state(path: Path, state: State) -> None:
    write_atomic(path, (json.dumps(state.to_json(), indent=1, sort_keys=True) + "\n").encode(), 0o644)


class RegistrationClient:
    def __init__(self, config: Config, clock: Callable[[], int] = wall_ms,
                 transport: Transport | None = None) -> None:
        self.config = config
        self.clock = clock
        self.transport = transport if transport is not None else HttpsTransport(config.ca, config.timeout_s)
        self.transitions: list[tuple[int, str, str]] = []    # (ms, state kind, reason) saved by this client

    # -- state --------------------------------------------------------------------------------------
    def state(self) -> State:
        return load_state(self.config.state_file, self.clock())

    def _save(self, state: State) -> State:
        save_state(self.config.state_file, state)
        self.transitions.append((self.clock(), state.kind, state.reason))
        log.info("registration of %s: %s%s", self.config.device_code, state.kind,
                 f" ({state.reason})" if state.reason else "")
        return state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.config.state_file.with_name(self.config.state_file.name + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def roots(self) -> list[x509.Certificate]:
        try:
            return x509.load_pem_x509_certificates(self.config.ca.read_bytes())
        except (OSError, ValueError) as exc:
            raise IdentityError(f"{self.config.ca}: cannot read the root to trust: {exc}") from None

    # -- one step -----------------------------------------------------------------------------------
    def step(self, force: bool = False) -> State:
        """Do what is due now (see the module); `force`: attempt now even before the back-off
        allows (an operator's `relevent register`), unless registered and fine."""
        with self._locked():
            state = self.state()
            if state.kind == "registered":
                state = self._check_held(state)
            if state.kind != "registered" and (force or schedule.due(state, self.clock())):
                state = self._attempt(state, force)
            return state

    def held(self) -> list[x509.Certificate]:
        """The stored chain's verified path at the clock's now (leaf first, root last);
        CertificateProblem if it does not verify."""
        cfg = self.config
        try:
            data = cfg.cert.read_bytes()
        except FileNotFoundError:
            raise CertificateProblem(f"{cfg.cert}: no certificate") from None
        except OSError as exc:
            raise CertificateProblem(f"{cfg.cert}: {exc.strerror}") from None
        if not cfg.key.exists():
            raise CertificateProblem(f"{cfg.key}: no private key for the certificate")
        key = load_private_key(cfg.key, create=False)
        return verify_issued(data, self.roots(), cfg.device_code, key.public_key(), self.clock())

    def _check_held(self, state: State) -> State:
        try:
            chain = self.held()
        except CertificateProblem as exc:
            return self._save(schedule.on_result(state, Result(schedule.CERT_ERROR, str(exc)), self.clock()))
        reason = self._revocation(chain)
        if reason:
            return self._save(schedule.on_result(state, Result(schedule.REVOKED, reason), self.clock()))
        return state

    def _revocation(self, chain: list[x509.Certificate]) -> str:
        """Why our certificate is revoked, or "" (also when the CRL cannot be had: an
        unreachable CRL is no proof of revocation; it is logged)."""
        leaf = chain[0]
        issuer = chain[1]                       # the verified path: leaf, issuer, ..., root
        urls = [self.config.crl_url] if self.config.crl_url else crl_urls(leaf)
        for url in urls:
            try:
                answer = self.transport.request("GET", url)
                if answer.status != 200:
                    raise TransportError(f"HTTP {answer.status}: {_error_text(answer)}")
                crl = parse_crl(answer.body)
                if crl.next_update_utc is not None and self.clock() > _ms(crl.next_update_utc):
                    log.warning("registration: the CRL at %s is stale (next update %s)", url,
                                crl.next_update_utc.isoformat())
                if check_revoked(leaf, crl, issuer):
                    return f"serial {leaf.serial_number:x} is on the CRL at {url}"
                return ""
            except (TransportError, CertificateProblem) as exc:
                log.warning("registration: cannot check the CRL at %s: %s", url, exc)
        return ""

    @property
    def pending_key(self) -> Path:
        """The new key made after a revocation, until a certificate for it is issued."""
        return self.config.key.with_name(self.config.key.name + ".new")

    def _attempt(self, state: State, force: bool) -> State:
        cfg = self.config
        token = read_token(cfg.token_file)
        if state.kind == "revoked" and state.reason.startswith(schedule.REVOKED) and not self.pending_key.exists():
            write_atomic(self.pending_key, key_pem(new_key()), 0o600)      # a revoked key is not reused
            log.info("registration: new key %s after the revocation", self.pending_key)
        key_path = self.pending_key if self.pending_key.exists() else cfg.key
        key = load_private_key(key_path)
        roots = self.roots()
        state = self._save(schedule.on_result(state, Result(schedule.ATTEMPT), self.clock(), force=force))
        result = self._request(key, key_path, token, roots)
        return self._save(schedule.on_result(state, result, self.clock()))

    def _request(self, key: ec.EllipticCurvePrivateKey, key_path: Path, token: str,
                 roots: list[x509.Certificate]) -> Result:
        cfg = self.config
        csr = build_csr(key, cfg.device_code, token)
        try:
            answer = self.transport.request("POST", cfg.service_url, csr,
                                            {"Content-Type": CSR_TYPE, "Accept": CHAIN_TYPE})
        except TransportError as exc:
            return Result(schedule.UNREACHABLE, str(exc))
        if answer.status == 200:
            try:
                chain = verify_issued(answer.body, roots, cfg.device_code, key.public_key(), self.clock())
            except CertificateProblem as exc:
                return Result(schedule.INVALID, str(exc))
            pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain if c not in roots)
            if key_path != cfg.key:             # the new key and its certificate replace the old pair together
                os.replace(key_path, cfg.key)
                fsync_dir(cfg.key.parent)
            write_atomic(cfg.cert, pem, 0o644)
            leaf = chain[0]
            return Result(schedule.ISSUED, expiry_ms=_ms(leaf.not_valid_after_utc), serial=f"{leaf.serial_number:x}")
        text = f"HTTP {answer.status}: {_error_text(answer)}"
        if 400 <= answer.status < 500:
            return Result(schedule.REFUSED, text)
        return Result(schedule.UNREACHABLE, text)


def describe(state: State, config: Config | None = None) -> dict:
    """The state as a plain dict with ISO times, for `relevent register` and status."""
    def iso(ms: int | None) -> str | None:
        return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")

    out = {"state": state.kind, "reason": state.reason or None, "failures": state.failures,
           "attempts": state.attempts, "since": iso(state.since_ms), "last_attempt": iso(state.last_attempt_ms),
           "next_attempt": iso(state.next_attempt_ms), "cert_expiry": iso(state.cert_expiry_ms),
           "serial": state.serial}
    if config is not None:
        out.update(device_code=config.device_code, service_url=config.service_url, cert=str(config.cert),
                   key=str(config.key), state_file=str(config.state_file))
    return out
