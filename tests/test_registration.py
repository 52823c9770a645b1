"""The registration client against the registration service simulator, both real: HTTPS on
loopback, the simulator's own test PKI, certificates checked independently with the
openssl CLI.  The back-off is driven by an injected clock, so months pass in milliseconds."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from relevent.cli import main
from relevent.clock import now_ms
from relevent.protocols.registry import PROTOCOLS
from relevent.registration.client import (CertificateProblem, Config, ConfigError, HttpsTransport, RegistrationClient,
                                          build_csr, check_revoked, load_config, parse_crl, spki,
                                          verify_issued)
from relevent.registration.files import IdentityError, key_pem, new_key
from relevent.simulators.registration_service import RegistrationService, ensure_pki
from relevent.topology import load_topology

sys.path.insert(0, str(Path(__file__).parent))
from sitectl import free_port, walk  # noqa: E402

S, MIN, H, DAY = 1000, 60_000, 3_600_000, 86_400_000
CODE, TOKEN = "DEV-0001-NL", "c2lnbmVkLWJ5LXRoZS1tYW51ZmFjdHVyZXI="


class Clock:
    """An injected clock (ms); starts at the wall clock, so the simulator's certificates
    (made with the real time) are valid at it."""

    def __init__(self) -> None:
        self.t = now_ms()

    def __call__(self) -> int:
        return self.t


class Recording:
    """The real HTTPS transport, recording (clock, method, path) of every request."""

    def __init__(self, ca: Path, clock: Clock) -> None:
        self.inner, self.clock, self.calls = HttpsTransport(ca, 5.0), clock, []

    def request(self, method, url, body=None, headers=None):
        self.calls.append((self.clock(), method, url.rsplit("/", 1)[-1]))
        return self.inner.request(method, url, body, headers)

    def attempts(self) -> list[int]:
        return [t for t, method, what in self.calls if method == "POST" and what == "register"]


@pytest.fixture
def service(tmp_path):
    svc = RegistrationService(None, {"name": "dso", "address": "127.0.0.1", "port": free_port(),
                                     "folder": str(tmp_path / "pki"), "cert_days": 365.0})
    svc.start()
    (tmp_path / "pki" / "tokens.txt").write_text(f"# test devices\n{CODE} {TOKEN}\nDEV-OTHER other-token\n")
    yield svc
    svc.stop()


def admin(svc: RegistrationService, what: str, body: dict) -> dict:
    answer = HttpsTransport(svc.root_ca).request("POST", f"{svc.url}/admin/{what}", json.dumps(body).encode(),
                                                 {"Content-Type": "application/json"})
    assert answer.status == 200, answer
    return json.loads(answer.body)


def make_config(tmp_path: Path, svc: RegistrationService, token: str = TOKEN, **over) -> Config:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    section = {"service_url": f"{svc.url}/register", "device_code": CODE, "token_file": str(token_file),
               "ca": str(svc.root_ca), **over}
    return Config.from_section(section, tmp_path / "state")


def client(config: Config, clock: Clock | None = None) -> tuple[RegistrationClient, Recording]:
    clock = clock or Clock()
    rec = Recording(config.ca, clock)
    return RegistrationClient(config, clock=clock, transport=rec), rec


def openssl_verify(root: Path, cert: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "verify", *extra, "-CAfile", str(root), "-untrusted", str(cert), str(cert)],
                          capture_output=True, text=True, timeout=10)


def leaf(config: Config) -> x509.Certificate:
    return x509.load_pem_x509_certificates(config.cert.read_bytes())[0]


def test_first_registration_stores_a_verified_certificate(tmp_path, service):
    config = make_config(tmp_path, service)
    reg, rec = client(config)
    state = reg.step()
    assert state.kind == "registered", state
    assert [k for _, k, _ in reg.transitions] == ["requesting", "registered"]
    cert = leaf(config)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CODE
    key = serialization.load_pem_private_key(config.key.read_bytes(), None)
    assert spki(cert.public_key()) == spki(key.public_key())
    assert state.serial == f"{cert.serial_number:x}"
    assert state.cert_expiry_ms == int(cert.not_valid_after_utc.timestamp() * 1000)
    # independent check: openssl accepts the stored chain under the root the site trusts
    done = openssl_verify(service.root_ca, config.cert)
    assert done.returncode == 0 and done.stdout.strip().endswith(": OK"), done
    assert stat.S_IMODE(config.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.cert.stat().st_mode) == 0o644
    assert json.loads(config.state_file.read_text())["kind"] == "registered"
    # a second step: still registered, the CRL checked, nothing requested
    assert reg.step().kind == "registered"
    assert [m for _, m, _ in rec.calls] == ["POST", "GET"]
    assert service.detail()["issued"][state.serial]["device_code"] == CODE


def test_the_csr_carries_the_device_code_and_the_token(tmp_path):
    pem = build_csr(new_key(), CODE, TOKEN)
    path = tmp_path / "csr.pem"
    path.write_bytes(pem)
    text = subprocess.run(["openssl", "req", "-in", str(path), "-noout", "-text", "-verify"], capture_output=True,
                          text=True, timeout=10)
    assert text.returncode == 0, text.stderr
    assert f"CN = {CODE}" in text.stdout or f"CN={CODE}" in text.stdout
    assert f"challengePassword        :{TOKEN}" in text.stdout


def test_a_wrong_token_is_refused_and_the_state_says_why(tmp_path, service):
    config = make_config(tmp_path, service, token="forged")
    reg, rec = client(config)
    state = reg.step()
    assert state.kind == "failed" and state.failures == 1
    assert state.reason.startswith("refused: HTTP 403") and "token" in state.reason and CODE in state.reason
    assert state.next_attempt_ms == state.last_attempt_ms          # the first retry is immediate
    assert not config.cert.exists()
    stored = json.loads(config.state_file.read_text())
    assert stored["kind"] == "failed" and stored["reason"] == state.reason
    state = reg.step()                                              # due at once: fails again
    assert state.failures == 2 and state.next_attempt_ms == state.last_attempt_ms + 30 * S
    assert len(rec.attempts()) == 2


def test_the_service_down_for_a_while_follows_the_back_off_exactly(tmp_path, service):
    clock = Clock()
    config = make_config(tmp_path, service)
    reg, rec = client(config, clock)
    admin(service, "down", {"down": True})
    expected = [0, 30 * S, 5 * MIN, 15 * MIN, H, DAY, 7 * DAY, 30 * DAY, 30 * DAY]
    start = clock.t
    state = reg.step()
    assert state.kind == "failed" and "503" in state.reason and "service down" in state.reason
    for i, delay in enumerate(expected):
        assert state.next_attempt_ms == state.last_attempt_ms + delay
        if delay:
            clock.t = state.next_attempt_ms - 1                     # one ms early: nothing happens
            assert reg.step() == state
        clock.t = state.next_attempt_ms
        if i == 4:                                                  # a restart half-way: continues the back-off
            reg = RegistrationClient(config, clock=clock, transport=rec)
        if i == len(expected) - 1:
            admin(service, "down", {"down": False})
        state = reg.step()
    assert state.kind == "registered", state
    attempts = rec.attempts()
    assert attempts[0] == start
    assert [b - a for a, b in zip(attempts, attempts[1:])] == expected
    assert len(attempts) == len(expected) + 1 and service.stats["down"] == len(expected)
    assert openssl_verify(service.root_ca, config.cert).returncode == 0


def test_a_revoked_certificate_sends_the_site_back_to_registration(tmp_path, service):
    config = make_config(tmp_path, service)
    reg, rec = client(config)
    first = reg.step()
    old_cert, old_pem, old_key = leaf(config), config.cert.read_bytes(), config.key.read_bytes()
    assert admin(service, "revoke", {"device_code": CODE}) == {"revoked": [first.serial]}
    # independent check: openssl now refuses the old certificate with the simulator's CRL
    crl_der = HttpsTransport(service.root_ca).request("GET", f"{service.url}/crl").body
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_bytes(parse_crl(crl_der).public_bytes(serialization.Encoding.PEM))
    old_file = tmp_path / "old.pem"
    old_file.write_bytes(old_pem)
    refused = openssl_verify(service.root_ca, old_file, "-crl_check", "-CRLfile", str(crl_pem))
    assert refused.returncode != 0 and "revoked" in (refused.stdout + refused.stderr)
    assert check_revoked(old_cert, parse_crl(crl_der), x509.load_pem_x509_certificates(old_pem)[1])

    # the service is down while the site goes back to registration: the old pair stays as it
    # was (a TLS policy reading key and cert finds a matching pair), the new key waits aside
    admin(service, "down", {"down": True})
    state = reg.step()
    kinds = [k for _, k, _ in reg.transitions]
    assert kinds == ["requesting", "registered", "revoked", "requesting", "failed"], reg.transitions
    assert reg.transitions[2][2].startswith(f"revoked: serial {first.serial} is on the CRL")
    assert config.key.read_bytes() == old_key and config.cert.read_bytes() == old_pem
    pending = reg.pending_key.read_bytes()
    assert pending != old_key and stat.S_IMODE(reg.pending_key.stat().st_mode) == 0o600
    admin(service, "down", {"down": False})
    state = reg.step()                                              # the first retry is due at once
    assert [k for _, k, _ in reg.transitions][5:] == ["requesting", "registered"]
    assert state.kind == "registered" and state.serial != first.serial and state.failures == 0
    assert config.key.read_bytes() == pending and not reg.pending_key.exists()   # a revoked key is not reused
    assert stat.S_IMODE(config.key.stat().st_mode) == 0o600
    new = leaf(config)
    assert not check_revoked(new, parse_crl(crl_der))
    assert openssl_verify(service.root_ca, config.cert, "-crl_check", "-CRLfile", str(crl_pem)).returncode == 0
    assert [m for _, m, _ in rec.calls] == ["POST", "GET", "POST", "POST"]


def test_a_key_readable_by_others_is_refused_naming_the_file(tmp_path, service):
    config = make_config(tmp_path, service)
    config.key.parent.mkdir(parents=True)
    config.key.write_bytes(key_pem(new_key()))
    os.chmod(config.key, 0o644)
    reg, rec = client(config)
    with pytest.raises(IdentityError) as caught:
        reg.step()
    assert str(config.key) in str(caught.value) and "0644" in str(caught.value)
    assert rec.calls == [] and not config.state_file.exists()        # nothing sent, no state changed
    os.chmod(config.key, 0o600)
    assert reg.step().kind == "registered"


def test_an_answer_for_another_key_or_an_untrusted_service_is_not_stored(tmp_path, service):
    config = make_config(tmp_path, service)

    class Swapping(Recording):
        """Sends the service a CSR of another key, as a confused or hostile middle would."""

        def request(self, method, url, body=None, headers=None):
            return super().request(method, url, build_csr(new_key(), CODE, TOKEN), headers)

    clock = Clock()
    reg = RegistrationClient(config, clock=clock, transport=Swapping(config.ca, clock))
    state = reg.step()
    assert state.kind == "failed" and state.reason == "invalid: the certificate is not for our key"
    assert not config.cert.exists()

    other = ensure_pki(tmp_path / "other-pki", ["127.0.0.1"])        # a root the service was not issued by
    (tmp_path / "a").mkdir()
    good = make_config(tmp_path / "a", service)
    assert RegistrationClient(good).step().kind == "registered"
    mine = serialization.load_pem_private_key(good.key.read_bytes(), None).public_key()
    with pytest.raises(CertificateProblem, match="not signed by the expected CA"):
        verify_issued(good.cert.read_bytes(), x509.load_pem_x509_certificates((other / "root-ca.pem").read_bytes()),
                      CODE, mine, now_ms())
    with pytest.raises(CertificateProblem, match="CN is"):
        verify_issued(good.cert.read_bytes(), RegistrationClient(good).roots(), "DEV-OTHER", mine, now_ms())
    (tmp_path / "b").mkdir()
    config2 = make_config(tmp_path / "b", service, ca=str(other / "root-ca.pem"))
    state = RegistrationClient(config2).step()
    assert state.kind == "failed" and state.reason.startswith("unreachable: TLS: the service's certificate does "
                                                              "not verify"), state.reason
    assert not config2.cert.exists()

    closed = make_config(tmp_path / "b", service, service_url=f"https://127.0.0.1:{free_port()}/register")
    state = RegistrationClient(closed).step()
    assert state.kind == "failed" and "ConnectionRefused" in state.reason


def test_an_expired_certificate_is_a_certificate_error(tmp_path, service):
    clock = Clock()
    config = make_config(tmp_path, service)
    reg, _ = client(config, clock)
    assert reg.step().kind == "registered"
    clock.t += 400 * DAY                                            # past the 365-day certificate
    state = reg.step()
    kinds = [(k, r.split(":")[0]) for _, k, r in reg.transitions[2:]]
    assert kinds == [("revoked", "cert_error"), ("requesting", "cert_error"), ("failed", "invalid")], reg.transitions
    assert "expired" in reg.transitions[2][2] and "expired" in state.reason
    with pytest.raises(CertificateProblem):
        reg.held()


def write_topology(tmp_path: Path, svc: RegistrationService, key_line: str = "") -> Path:
    (tmp_path / "token").write_text(TOKEN)
    path = tmp_path / "site.toml"
    path.write_text(f"""
[site]
name = "reg-site"
state_dir = "{tmp_path / 'state'}"

[registration]
service_url = "{svc.url}/register"
device_code = "{CODE}"
token_file = "{tmp_path / 'token'}"
ca = "{svc.root_ca}"
{key_line}
""")
    return path


def test_the_register_command(tmp_path, service, capsys):
    path = write_topology(tmp_path, service)
    assert main(["register", str(path), "--status"]) == 1
    assert "registration of DEV-0001-NL: unregistered" in capsys.readouterr().out
    assert main(["register", str(path)]) == 0
    out = capsys.readouterr().out
    assert "registration of DEV-0001-NL: registered" in out and "site-cert.pem" in out
    assert main(["register", str(path), "--status", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["state"] == "registered" and info["device_code"] == CODE and info["next_attempt"] is None
    config = load_config(load_topology(path))
    assert config.cert == tmp_path / "state" / "registration" / "site-cert.pem"
    assert openssl_verify(service.root_ca, config.cert).returncode == 0

    (tmp_path / "token").write_text("forged")
    admin(service, "revoke", {"device_code": CODE})
    assert main(["register", str(path)]) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "token of device code" in out and "next attempt" in out

    bad = tmp_path / "bad"
    bad.mkdir()
    key = bad / "k.pem"
    key.write_bytes(key_pem(new_key()))
    os.chmod(key, 0o640)
    path2 = write_topology(bad, service, f'key = "{key}"')
    assert main(["register", str(path2)]) == 2
    assert str(key) in capsys.readouterr().err


def test_the_topology_declares_registration_and_the_simulator(tmp_path, service):
    path = write_topology(tmp_path, service, 'crl_url = "http://plain/crl"')
    from relevent.topology import TopologyError

    with pytest.raises(TopologyError) as caught:
        load_config(load_topology(path))
    assert "registration.crl_url" in str(caught.value.problems[0]) and "https" in str(caught.value.problems[0])
    with pytest.raises(ConfigError):
        Config.from_section({"service_url": "https://x/register"}, tmp_path)
    spec = PROTOCOLS["registration-service"]
    assert spec.role == "simulator" and spec.listens
    assert spec.adapter == "relevent.simulators.registration_service.RegistrationService"


def test_the_simulator_runs_in_a_site_and_the_site_registers_with_it(make_site, tmp_path):
    """The simulator declared in a topology, started by a real site (its actor, its state
    folder), and `relevent register` (a process of its own) against it."""
    port = free_port()
    state = tmp_path / "site-state"
    pki = state / "registration-service" / "dso"
    token = tmp_path / "token"
    token.write_text(TOKEN)
    site = make_site(extra=f"""
[[simulator]]
name = "dso"
protocol = "registration-service"
port = {port}

[registration]
service_url = "https://localhost:{port}/register"
device_code = "{CODE}"
token_file = "{token}"
ca = "{pki / 'root-ca.pem'}"
""")
    node = next(n for n in walk(site.tree()) if n["path"].endswith("dso"))
    assert node["state"] == "running" and node["detail"]["root_ca"] == str(pki / "root-ca.pem"), node
    (pki / "tokens.txt").write_text(f"{CODE} {TOKEN}\n")
    done = site.cli("register", str(site.topology))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"registration of {CODE}: registered" in done.stdout
    cert = state / "registration" / "site-cert.pem"
    assert openssl_verify(pki / "root-ca.pem", cert).returncode == 0
    issued = site.wait_for(node["path"], lambda n: n["detail"]["stats"]["issued"] == 1)["detail"]["issued"]
    assert [i["device_code"] for i in issued.values()] == [CODE]
    done = site.cli("register", str(site.topology), "--status")
    assert done.returncode == 0 and "registered" in done.stdout


def test_the_wait_before_the_next_step_follows_the_persisted_state():
    from relevent.actors.registration import MAX_SLEEP_S, seconds_until_next_step as wait
    now = 1_000_000_000
    assert wait("unregistered", None, None, now, 3600) == 0 and wait("revoked", None, None, now, 3600) == 0
    assert wait("failed", now + 30 * S, None, now, 3600) == 30.0
    assert wait("failed", now - S, None, now, 3600) == 0                        # overdue: at once
    assert wait("failed", now + 7 * DAY, None, now, 3600) == MAX_SLEEP_S         # looks again within the hour
    assert wait("registered", None, None, now, 3600) == 0                       # never checked by this actor
    assert wait("registered", None, now - 600 * S, now, 3600) == 3000.0
    assert wait("registered", None, now - 7200 * S, now, 3600) == 0
    from relevent.actors.registration import RETRY_AFTER_ERROR_S, seconds_after_errors
    assert [seconds_after_errors(n) for n in (1, 2, 3, 6, 7, 100)] == [1, 2, 4, 32, RETRY_AFTER_ERROR_S,
                                                                      RETRY_AFTER_ERROR_S]


def test_a_running_site_registers_by_itself_and_again_after_a_revocation(make_site, tmp_path):
    """`relevent run` runs the registration (an actor of the site): it registers at start
    with no command, `relevent status` shows the state, and a revocation found at its next
    certificate check (check_s = 1) sends it back to registration, which issues a new
    certificate for a new key."""
    port = free_port()
    state = tmp_path / "site-state"
    pki = state / "registration-service" / "dso"
    token, tokens = tmp_path / "token", tmp_path / "tokens.txt"
    token.write_text(TOKEN)
    tokens.write_text(f"{CODE} {TOKEN}\n")
    site = make_site(extra=f"""
[[simulator]]
name = "dso"
protocol = "registration-service"
port = {port}
tokens_file = "{tokens}"

[registration]
service_url = "https://localhost:{port}/register"
device_code = "{CODE}"
token_file = "{token}"
ca = "{pki / 'root-ca.pem'}"
check_s = 1
""")
    node = site.wait_for("registration", lambda n: n["detail"].get("state") == "registered", timeout=30)
    first = node["detail"]
    assert first["device_code"] == CODE and first["serial"] and first["cert_expiry"], first
    cert = state / "registration" / "site-cert.pem"
    assert openssl_verify(pki / "root-ca.pem", cert).returncode == 0
    old_key = (state / "registration" / "site-key.pem").read_bytes()
    status = site.cli("status", str(site.topology))
    row = next(line for line in status.stdout.splitlines() if line.split()[:2] == ["registration", "registration"])
    assert f"registered, expires {first['cert_expiry'][:10]}" in row, status.stdout
    # Revoked at the service: the site finds it on its next check and registers again.
    svc = HttpsTransport(pki / "root-ca.pem").request(
        "POST", f"https://localhost:{port}/admin/revoke", json.dumps({"device_code": CODE}).encode(),
        {"Content-Type": "application/json"})
    assert svc.status == 200, svc
    again = site.wait_for("registration", lambda n: n["detail"].get("state") == "registered"
                          and n["detail"].get("serial") != first["serial"], timeout=30)["detail"]
    assert again["attempts"] >= 2 and (state / "registration" / "site-key.pem").read_bytes() != old_key
    assert openssl_verify(pki / "root-ca.pem", cert).returncode == 0
