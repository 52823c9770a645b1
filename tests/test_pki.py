"""The site PKI (`relevent pki`, relevent/security/pki.py) through the CLI in a subprocess:
file modes, certificate contents, revocation and the CRL, checked independently with
Debian's `openssl verify -crl_check`; and the pure peer check (relevent/security/tls.py
`check_peer`) against certificates the PKI issued."""
from __future__ import annotations

import json
import shutil
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sitectl import relevent_cli as relevent

from relevent.security import pki
from relevent.security.tls import check_peer, policy_problems

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def der(path: Path) -> bytes:
    return cert(path).public_bytes(serialization.Encoding.DER)


def crl(folder: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((folder / "crl.pem").read_bytes())


def verify(folder: Path, name: str) -> subprocess.CompletedProcess:
    """The independent check: OpenSSL's own chain verification with the CRL."""
    return subprocess.run([OPENSSL, "verify", "-CAfile", str(folder / "ca.crt"), "-CRLfile", str(folder / "crl.pem"),
                           "-crl_check", str(folder / f"{name}.crt")], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pki") / "ca"
    res = relevent("pki", "init", str(folder), "--name", "Test Site CA")
    assert res.returncode == 0, res.stderr
    return folder


def test_init_writes_a_private_ca_key_a_self_signed_ca_and_an_empty_crl(ca):
    assert mode(ca) == 0o700 and mode(ca / "ca.key") == 0o600
    c = cert(ca / "ca.crt")
    assert c.subject == c.issuer and c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test Site CA"
    assert c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert len(crl(ca)) == 0 and crl(ca).next_update_utc > datetime.now(timezone.utc)
    again = relevent("pki", "init", str(ca))
    assert again.returncode == 1 and "already holds a CA" in again.stderr


def test_issue_party_site_and_device_certificates(ca):
    for args in (("dso", "--party"), ("site1", "--site", "--ip", "127.0.0.1", "--dns", "edge.example"),
                 ("meter7", "--device", "--days", "30")):
        res = relevent("pki", "issue", str(ca), *args)
        assert res.returncode == 0, res.stderr
    for name in ("dso", "site1", "meter7"):
        assert mode(ca / f"{name}.key") == 0o600, name
        c = cert(ca / f"{name}.crt")
        assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert verify(ca, name).returncode == 0, verify(ca, name).stdout
    eku = {name: list(cert(ca / f"{name}.crt").extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
           for name in ("dso", "site1", "meter7")}
    assert eku == {"dso": [ExtendedKeyUsageOID.CLIENT_AUTH],
                   "site1": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                   "meter7": [ExtendedKeyUsageOID.CLIENT_AUTH]}
    san = cert(ca / "site1.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["edge.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    meter = cert(ca / "meter7.crt")
    assert timedelta(days=29) < meter.not_valid_after_utc - datetime.now(timezone.utc) <= timedelta(days=30)


def test_bad_names_and_kinds_are_refused(ca):
    res = relevent("pki", "issue", str(ca), "../evil", "--party")
    assert res.returncode == 1 and "name '../evil'" in res.stderr
    res = relevent("pki", "issue", str(ca), "ca", "--device")
    assert res.returncode == 1
    res = relevent("pki", "issue", str(ca), "x")
    assert res.returncode == 2 and "--party" in res.stderr   # argparse: one kind is required
    res = relevent("pki", "revoke", str(ca), "nobody")
    assert res.returncode == 1 and "no certificate was issued to 'nobody'" in res.stderr


def test_revoke_lists_the_serial_in_a_new_crl_that_openssl_honours(ca):
    assert relevent("pki", "issue", str(ca), "tso", "--party").returncode == 0
    serial = cert(ca / "tso.crt").serial_number
    assert verify(ca, "tso").returncode == 0
    number_before = crl(ca).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    res = relevent("pki", "revoke", str(ca), "tso")
    assert res.returncode == 0, res.stderr
    assert f"{serial:x}" in res.stdout
    new = crl(ca)
    assert new.get_revoked_certificate_by_serial_number(serial) is not None
    assert new.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number_before
    assert new.next_update_utc > datetime.now(timezone.utc) + timedelta(days=29)
    bad = verify(ca, "tso")
    assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr
    assert verify(ca, "dso").returncode == 0                    # the others stay good
    again = relevent("pki", "revoke", str(ca), "tso")
    assert again.returncode == 1 and "revoked already" in again.stderr


def test_list_shows_every_certificate_and_its_state(ca):
    res = relevent("pki", "list", str(ca))
    assert res.returncode == 0, res.stderr
    lines = {line.split()[0]: line for line in res.stdout.splitlines()[3:]}
    assert lines["tso"].endswith("revoked") and lines["dso"].endswith("valid") and "site " in lines["site1"]
    assert "CRL  #" in res.stdout and "1 revoked" in res.stdout
    data = json.loads(relevent("pki", "list", str(ca), "--json").stdout)
    assert {c["name"]: c["state"] for c in data["certs"]} == {"dso": "valid", "site1": "valid", "meter7": "valid",
                                                              "tso": "revoked"}
    assert data["crl"]["revoked"] == 1 and not data["crl"]["expired"]


def test_a_fresh_crl_can_be_signed_before_the_old_one_runs_out(ca):
    before = crl(ca)
    res = relevent("pki", "crl", str(ca), "--days", "2")
    assert res.returncode == 0, res.stderr
    after = crl(ca)
    assert len(after) == len(before) and after.next_update_utc < before.next_update_utc


# -- the pure peer check against what the PKI issued ----------------------------------------------------
def test_check_peer_refuses_revoked_expired_and_not_yet_valid_certificates(ca):
    now = datetime.now(timezone.utc)
    pki.write_crl(ca, days=1, now=now)
    crls = [crl(ca)]
    assert check_peer(der(ca / "dso.crt"), crls, now) is None
    assert "revoked at" in check_peer(der(ca / "tso.crt"), crls, now)
    pki.issue(ca, "old", "party", days=1, now=now - timedelta(days=10))
    assert "expired at" in check_peer(der(ca / "old.crt"), crls, now)
    pki.issue(ca, "future", "party", days=10, now=now + timedelta(days=2))
    assert "not valid before" in check_peer(der(ca / "future.crt"), crls, now)
    # A CRL past its next update fails closed; no CRL of the issuer at all too.
    assert "out of date" in check_peer(der(ca / "dso.crt"), crls, now + timedelta(days=2))
    other = pki.init(ca.parent / "other")
    pki.issue(other.parent, "stranger", "party")
    assert "no CRL of" in check_peer(der(other.parent / "stranger.crt"), crls, now)
    assert check_peer(der(other.parent / "stranger.crt"), [], now) is None   # no CRL configured: validity only


def test_the_newest_crl_of_an_issuer_decides(ca):
    old = crl(ca)
    now = datetime.now(timezone.utc)
    pki.issue(ca, "late", "party")
    pki.revoke(ca, "late", now=now + timedelta(seconds=5))
    newer = crl(ca)
    serial = cert(ca / "late.crt").serial_number
    assert old.get_revoked_certificate_by_serial_number(serial) is None
    assert "revoked" in check_peer(der(ca / "late.crt"), [newer, old], now + timedelta(seconds=10))
    assert "revoked" in check_peer(der(ca / "late.crt"), [old, newer], now + timedelta(seconds=10))


def test_policy_problems_name_the_file(ca, tmp_path):
    section = {"cert": str(ca / "site1.crt"), "key": str(ca / "site1.key"), "ca": str(ca / "ca.crt"),
               "crl": [str(ca / "crl.pem")]}
    assert policy_problems(section) == []
    missing = policy_problems({**section, "crl": [str(tmp_path / "gone.pem")]})
    assert missing == [(("crl", 0), f"cannot read CRL {tmp_path / 'gone.pem'}: no such file", True)]
    expired = policy_problems(section, now=datetime.now(timezone.utc) + timedelta(days=400))
    assert any(key == ("crl", 0) and "expired at" in text and not error for key, text, error in expired)
    foreign = policy_problems({**section, "ca": str(ca.parent / "other" / "ca.crt")})
    assert any(key == ("crl", 0) and "not in the CA bundle" in text and error for key, text, error in foreign)
    wrong_key = policy_problems({**section, "key": str(ca / "dso.key")})
    assert any(key == ("key",) and "cannot be used together" in text for key, text, _ in wrong_key)


def test_a_renewed_pair_is_seen_only_once_key_and_certificate_match(tmp_path):
    from relevent.security.tls import SiteTls
    ca = tmp_path / "pki"
    pki.init(ca)
    pki.issue(ca, "site", "site")
    tls = SiteTls({"cert": str(ca / "site.crt"), "key": str(ca / "site.key"), "ca": str(ca / "ca.crt")})
    assert tls.renewed() is None
    old_cert = (ca / "site.crt").read_bytes()
    issued = pki.issue(ca, "site", "site")
    (ca / "site.crt.new").write_bytes((ca / "site.crt").read_bytes())
    (ca / "site.crt").write_bytes(old_cert)        # the key already new, its certificate not yet
    assert tls.renewed() is None
    (ca / "site.crt.new").rename(ca / "site.crt")
    why = tls.renewed()
    assert why and f"serial {issued.serial:x}" in why and "restarting to serve it" in why
    client = tls.client_context()
    tls.reload_own()                               # a client takes the new pair; then nothing is new
    assert tls.renewed() is None and client is not None
