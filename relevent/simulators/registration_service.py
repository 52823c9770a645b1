"""A simulated registration service (Dutch DSO interface specification) for tests and demos:
HTTPS, backed by a test PKI it makes on first start.

    POST /register       body: a PEM CSR (CN = device code, challenge-password = token)
                         200 application/pem-certificate-chain: the leaf, then the device CA
                         400/403 {"error": ...}: a bad CSR, an unknown device code, a wrong token
                         503 {"error": "service down"} while told to be down (the CRL stays up)
    GET  /crl            the device CA's CRL (DER, application/pkix-crl)
    POST /admin/revoke   {"device_code": ...} or {"serial": "hex"}: revoke, new CRL   (loopback only)
    POST /admin/down     {"down": true|false}                                         (loopback only)
    GET  /admin/status   what was issued and revoked                                  (loopback only)

`folder` (default STATE_DIR/registration-service/NAME) holds the PKI, made if absent (keys 0600):

    root-ca.pem/.key     the "central root" (offline in the real world): what devices trust
    device-ca.pem/.key   the online device CA, signed by the root, issues device certificates
    server.pem/.key      the service's TLS certificate (signed by the root; its names: `hostnames`)
    tokens.txt           `DEVICE_CODE TOKEN` per line (# comments), unless `tokens_file` is set;
                         re-read on every request, so a test or an operator edits it live
    issued.json          every certificate issued: serial -> device code, not after, revoked at

Invariants, and why:

* **A certificate only for the right token.**  The CSR's signature must verify (the
  requester holds the key), its CN must be a device code of the token list and its
  challenge-password that device's token (compared in constant time).  The issued leaf is
  made here, from the CSR's subject and key only: requested extensions are ignored, the
  leaf is never a CA (BasicConstraints ca=false, critical) and names the CRL to check.
* **Revocation is visible at once.**  Revoking rewrites issued.json and the CRL before the
  admin request is answered, so the next CRL fetch lists the serial.
* **Down means down for registration, not for the test.**  While `down` (the admin flag,
  or `down_file` existing) every registration is answered 503; the CRL (in the field
  published apart, on a distribution point) and the admin paths keep working, so a test
  can revoke while registration is down and bring the service back.  Admin paths answer
  loopback peers only.
* **Restart keeps the PKI.**  The CA, the issued list and the revocations live in `folder`;
  a restarted service issues from the same CA and serves the same CRL.
"""
from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import json
import logging
import os
import ssl
import threading
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID, NameOID

from relevent.simulators.shell import AsyncioSimulator
from relevent.protocols.aio import AsyncioThread
from relevent.registration.files import key_pem, load_private_key, new_key, write_atomic

log = logging.getLogger("relevent.sim.registration")

CHAIN_TYPE = "application/pem-certificate-chain"
MAX_CSR = 16 * 1024


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "relevent test PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ca_cert(subject: x509.Name, key: Any, issuer: x509.Name, issuer_key: Any, days: int,
             path_length: int | None) -> x509.Certificate:
    now = _now()
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer_key is not key:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _san(hostnames: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def ensure_pki(folder: str | os.PathLike, hostnames: list[str]) -> Path:
    """Make the test PKI in `folder` if it is not there (see the module); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "root-ca.pem").exists():
        root_key, device_key = new_key(), new_key()
        root = _ca_cert(_name("relevent test central root"), root_key, _name("relevent test central root"),
                        root_key, 3650, 1)
        device = _ca_cert(_name("relevent test device CA"), device_key, root.subject, root_key, 1825, 0)
        write_atomic(folder / "root-ca.key", key_pem(root_key), 0o600)
        write_atomic(folder / "device-ca.key", key_pem(device_key), 0o600)
        write_atomic(folder / "device-ca.pem", _pem(device), 0o644)
        write_atomic(folder / "root-ca.pem", _pem(root), 0o644)          # last: marks the PKI complete
        for name in ("server.pem", "issued.json"):                       # of an older PKI: not valid any more
            (folder / name).unlink(missing_ok=True)
    if not (folder / "server.pem").exists():
        root = x509.load_pem_x509_certificate((folder / "root-ca.pem").read_bytes())
        root_key = load_private_key(folder / "root-ca.key", create=False)
        key, now = new_key(), _now()
        cert = (x509.CertificateBuilder().subject_name(_name(hostnames[0])).issuer_name(root.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(_san(hostnames), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                               critical=False)
                .sign(root_key, hashes.SHA256()))
        write_atomic(folder / "server.key", key_pem(key), 0o600)
        write_atomic(folder / "server.pem", _pem(cert), 0o644)
    return folder


def read_tokens(path: Path) -> dict[str, str]:
    """device code -> token, from `DEVICE_CODE TOKEN` lines (blank lines and # comments skipped)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not parts[0].startswith("#"):
            out[parts[0]] = parts[1]
    return out


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class RegistrationService(AsyncioSimulator):
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        state_dir = getattr(actor, "site", {}).get("state_dir") or "."
        self.folder = Path(config.get("folder") or Path(state_dir) / "registration-service"
                           / config.get("name", "service")).resolve()
        hostnames = list(config.get("hostnames") or [])
        for default in (config.get("address", "127.0.0.1"), "localhost", "127.0.0.1"):
            if default not in hostnames and default not in ("0.0.0.0", "::"):
                hostnames.append(default)
        self.hostnames = hostnames
        self.tokens_file = Path(config["tokens_file"]).resolve() if config.get("tokens_file") \
            else self.folder / "tokens.txt"
        self.aio: AsyncioThread | None = None
        self.runner: web.AppRunner | None = None
        self.down = False
        self.lock = threading.Lock()          # issued.json and the CRL: the loop and a test's thread
        self.issued: dict[str, dict] = {}
        self.stats = {"issued": 0, "refused": 0, "down": 0, "crl": 0}
        self.crl_der = b""

    # -- PKI --------------------------------------------------------------------------------------------
    @property
    def root_ca(self) -> Path:
        return self.folder / "root-ca.pem"

    @property
    def url(self) -> str:
        host = self.config.get("address", "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{self.config['port']}"

    def _load_pki(self) -> None:
        ensure_pki(self.folder, self.hostnames)
        if not self.tokens_file.exists() and not self.config.get("tokens_file"):
            self.tokens_file.write_text("# DEVICE_CODE TOKEN, one per line (relevent registration simulator)\n")
        self.device_ca = x509.load_pem_x509_certificate((self.folder / "device-ca.pem").read_bytes())
        self.device_key = load_private_key(self.folder / "device-ca.key", create=False)
        try:
            self.issued = json.loads((self.folder / "issued.json").read_text())
        except FileNotFoundError:
            self.issued = {}
        self._write_crl()

    def _save_issued(self) -> None:
        write_atomic(self.folder / "issued.json", json.dumps(self.issued, indent=1, sort_keys=True).encode(), 0o644)

    def _write_crl(self) -> None:
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.device_ca.subject).last_update(now)
                   .next_update(now + dt.timedelta(days=float(self.config.get("crl_days", 7.0))))
                   .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.device_key.public_key()),
                                  critical=False))
        for serial, item in sorted(self.issued.items()):
            if item.get("revoked_ms") is not None:
                when = dt.datetime.fromtimestamp(item["revoked_ms"] / 1000, dt.timezone.utc)
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(when).build())
        crl = builder.sign(self.device_key, hashes.SHA256())
        self.crl_der = crl.public_bytes(serialization.Encoding.DER)
        write_atomic(self.folder / "crl.der", self.crl_der, 0o644)

    def issue(self, csr_pem: bytes, crl_url: str) -> bytes:
        """The PEM chain for a CSR, or Refused (see the module's first invariant)."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise Refused(400, f"not a PEM CSR: {exc}") from None
        if not csr.is_signature_valid:
            raise Refused(400, "the CSR's signature does not verify")
        public = csr.public_key()
        if not ((isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size >= 256)
                or (isinstance(public, rsa.RSAPublicKey) and public.key_size >= 2048)):
            raise Refused(400, "the CSR's key must be EC P-256 or larger (or RSA 2048+)")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(names) != 1:
            raise Refused(400, "the CSR's subject must have exactly one common name: the device code")
        code = str(names[0].value)
        try:
            token = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
        except x509.AttributeNotFound:
            raise Refused(400, "the CSR carries no challenge-password (the token)") from None
        expected = read_tokens(self.tokens_file).get(code)
        if expected is None:
            raise Refused(403, f"device code {code!r} is not known to the service")
        if not hmac.compare_digest(bytes(token), expected.encode()):
            raise Refused(403, f"the token of device code {code!r} is wrong")
        now = _now()
        days = float(self.config.get("cert_days", 365.0))
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]))
                .issuer_name(self.device_ca.subject).public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=True,
                                             key_cert_sign=False, crl_sign=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                                      ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.device_key.public_key()),
                               critical=False)
                .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                    [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), critical=False)
                .sign(self.device_key, hashes.SHA256()))
        with self.lock:
            self.issued[f"{cert.serial_number:x}"] = {
                "device_code": code, "issued_ms": int(now.timestamp() * 1000),
                "not_after_ms": int(cert.not_valid_after_utc.timestamp() * 1000), "revoked_ms": None}
            self._save_issued()
        self.stats["issued"] += 1
        log.info("registration service=%s: issued %x to %s", self.config.get("name"), cert.serial_number, code)
        return _pem(cert) + _pem(self.device_ca)

    def revoke(self, device_code: str | None = None, serial: str | None = None) -> list[str]:
        """Revoke every live certificate of `device_code`, or the one `serial` (hex); the
        serials revoked.  The CRL is rewritten before this returns."""
        with self.lock:
            now = int(_now().timestamp() * 1000)
            hit = [s for s, item in self.issued.items() if item["revoked_ms"] is None
                   and (s == (serial or "").lower().lstrip("0") or item["device_code"] == device_code)]
            for s in hit:
                self.issued[s]["revoked_ms"] = now
            if hit:
                self._save_issued()
                self._write_crl()
        log.info("registration service=%s: revoked %s", self.config.get("name"), hit)
        return hit

    def is_down(self) -> bool:
        flag = self.config.get("down_file")
        return self.down or bool(flag and Path(flag).exists())

    # -- HTTP ---------------------------------------------------------------------------------------------
    async def _register(self, request: web.Request) -> web.Response:
        if self.is_down():
            self.stats["down"] += 1
            return web.json_response({"error": "service down"}, status=503, headers={"Retry-After": "30"})
        body = await request.content.read(MAX_CSR + 1)
        if len(body) > MAX_CSR:
            return web.json_response({"error": f"CSR larger than {MAX_CSR} bytes"}, status=413)
        try:
            chain = self.issue(body, f"https://{request.host}/crl")
        except Refused as exc:
            self.stats["refused"] += 1
            log.info("registration service=%s: refused: %s", self.config.get("name"), exc)
            return web.json_response({"error": str(exc)}, status=exc.status)
        return web.Response(body=chain, headers={"Content-Type": CHAIN_TYPE})

    async def _crl(self, request: web.Request) -> web.Response:
        self.stats["crl"] += 1
        with self.lock:
            data = self.crl_der
        return web.Response(body=data, headers={"Content-Type": "application/pkix-crl"})

    @staticmethod
    def _loopback(request: web.Request) -> bool:
        from relevent.protocols.registry import is_loopback  # (here: the registry imports the topology package)

        return is_loopback(request.remote or "")

    async def _admin(self, request: web.Request) -> web.Response:
        if not self._loopback(request):
            return web.json_response({"error": "admin from loopback only"}, status=403)
        what = request.match_info["what"]
        if request.method == "GET" and what == "status":
            return web.json_response(self.detail())
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return web.json_response({"error": f"a JSON object please ({exc})"}, status=400)
        if what == "down" and isinstance(data.get("down"), bool):
            self.down = data["down"]
            return web.json_response({"down": self.down})
        if what == "revoke" and (data.get("device_code") or data.get("serial")):
            return web.json_response({"revoked": self.revoke(data.get("device_code"), data.get("serial"))})
        return web.json_response({"error": "POST /admin/down {down} or /admin/revoke {device_code|serial}"},
                                 status=400)

    def _server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.folder / "server.pem", self.folder / "server.key")
        return ctx

    async def _serve(self) -> None:
        app = web.Application(client_max_size=MAX_CSR + 1024)
        app.add_routes([web.post("/register", self._register), web.get("/crl", self._crl),
                        web.post("/admin/{what}", self._admin), web.get("/admin/{what}", self._admin)])
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.get("address", "127.0.0.1"), self.config["port"],
                           ssl_context=self._server_context())
        await site.start()

    # -- the actor's side ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._load_pki()
        self.aio = AsyncioThread(f"registration-{self.config.get('name', 'service')}")
        self.aio.spawn(self._serve(), "serve").result(10.0)    # Ready only once it listens
        log.info("simulated registration service=%s listening %s/register (PKI %s)", self.config.get("name"),
                 self.url, self.folder)

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def detail(self) -> dict:
        with self.lock:
            issued = dict(self.issued)
        return {"listen": f"{self.url}/register", "root_ca": str(self.root_ca), "down": self.is_down(),
                "stats": dict(self.stats), "issued": issued}

