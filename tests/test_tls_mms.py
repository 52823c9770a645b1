"""MMS over TLS (IEC 62351-3/4, docs/tls.md) against a running site: the site's PKI made
with `relevent pki`, its MMS endpoint with `tls = true`, clients played by libiec61850's own
client (through pyiec61850, with its mbedtls), by `openssl s_client` and by a raw socket.
A party's certificate names it (`cert_cn`) and its requests are decided by its rights;
without a certificate, with one of another CA, an expired or a revoked one, with an ACSE
password in place of a certificate, offering TLS 1.1 only, or speaking plain MMS, a client
is refused; revoking a party's certificate aborts its open association within the CRL
refresh interval."""
from __future__ import annotations

import json
import socket
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyiec61850.pyiec61850 as iec
import pytest

from mmsclients import AssociationRefused, LibIec61850Client, TlsClient, write_schedule
from sitectl import Site, free_port, make_pki, now_ms, running
from sitectl import relevent_cli as relevent

from relevent.security import pki
from relevent.topology import parse_topology

REFRESH_S = 1.0
LD = "DER_Scheduler_der1Control"   # two DERs: one logical device each, named after the DER

TOPOLOGY = """
[site]
name = "mtls{admin}"
state_dir = "{state}"

[runtime]
admin_port = {admin}

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[tls]
cert = "{pki}/site.crt"
key = "{pki}/site.key"
ca = "{pki}/ca.crt"
crl = ["{pki}/crl.pem"]
crl_refresh_s = {refresh}

[[party]]
name = "dso"
cert_cn = "dso"
mms_password = "dso-secret"
ders = ["der1"]
priority = [100, 200]

[[party]]
name = "victim"
cert_cn = "victim"
operations = ["read"]

[[wan]]
name = "mms"
protocol = "mms"
port = {port}
tls = true
anonymous = "none"

[[der]]
name = "der1"
functions = ["MaxPow"]
schedules = 2

[[der]]
name = "der2"
functions = ["MaxPow"]
schedules = 2
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls-mms")
    ca = make_pki(tmp / "pki", ("site", "site"), ("dso", "party"), ("victim", "party"), ("stranger", "party"))
    pki.issue(ca, "expired", "party", days=1, now=datetime.now(timezone.utc) - timedelta(days=3))
    other = tmp / "other-pki"
    pki.init(other)
    pki.issue(other, "dso", "party")     # the right name, the wrong CA
    port = free_port()
    path = tmp / "site.toml"
    path.write_text(TOPOLOGY.format(admin=free_port(), state=tmp / "state", pki=ca, refresh=REFRESH_S, port=port))
    s = Site(path, tmp / "state")
    s.port, s.ca, s.other = port, ca, other
    with running(s):
        yield s


def tls(site, name: str | None, folder: Path | None = None, **kw) -> TlsClient:
    folder = folder or site.ca
    return TlsClient(str(site.ca / "ca.crt"), str(folder / f"{name}.crt") if name else None,
                     str(folder / f"{name}.key") if name else None, **kw)


@contextmanager
def connected(site, name: str | None, **kw):
    client = LibIec61850Client("127.0.0.1", site.port, tls=tls(site, name, **kw))
    try:
        yield client
    finally:
        client.close()


def refused(site, name: str | None, password: str | None = None, **kw) -> None:
    with pytest.raises(AssociationRefused):
        LibIec61850Client("127.0.0.1", site.port, password=password, tls=tls(site, name, **kw))


def mms_tls(site) -> dict:
    return site.node("mms")["detail"]["tls"]


def prepare(c, ref: str, value: float, prio: int, start: int) -> None:
    write_schedule(c, ref, [value], interval_s=3600, prio=prio, start_ms=start)


def audit_records(site) -> list[dict]:
    return [json.loads(line) for f in sorted((site.state_dir / "audit").glob("*/audit-*.jsonl"))
            for line in f.read_text().splitlines() if line]


# -- the checks before the site ------------------------------------------------------------------------
def test_check_refuses_plain_mms_beyond_loopback_and_tls_without_a_ca(tmp_path):
    base = "[site]\nname = \"s\"\nstate_dir = \"/tmp/s\"\n[[wan]]\nname = \"mms\"\nprotocol = \"mms\"\n"
    with pytest.raises(Exception) as err:
        parse_topology(base + 'address = "0.0.0.0"\n', "site.toml", env={})
    assert "wan[0].tls: endpoint 'mms' serves mms in plain text on 0.0.0.0:102: set tls = true" in str(err.value)
    assert parse_topology(base + 'address = "0.0.0.0"\ninsecure = true\n', "site.toml", env={})
    key = tmp_path / "k.pem"
    key.write_text("x")
    with pytest.raises(Exception) as err:
        parse_topology(f'[tls]\ncert = "{key}"\nkey = "{key}"\n' + base + 'address = "0.0.0.0"\ntls = true\n',
                       "site.toml", env={})
    assert "wan[0].tls: mms over TLS asks every client for a certificate: set [tls] ca" in str(err.value)


# -- a running site --------------------------------------------------------------------------------------
def test_a_party_certificate_reads_and_writes_per_its_rights(site):
    ref = f"{LD}/MaxPow_FSCH01"
    with connected(site, "dso") as dso:
        assert dso.read_int(f"{ref}.SchdSt.stVal") == 1
        assert dso.write_int(f"{ref}.SchdPrio.setVal", 250) == "access-denied"    # above its band
        prepare(dso, ref, 4000.0, 150, now_ms() + 60_000)
        assert dso.operate(f"{ref}.EnaReq", True)[0]
        assert dso.read_int(f"{ref}.SchdSt.stVal") == 3                             # ready
        other = "DER_Scheduler_der2Control/MaxPow_FSCH01"
        assert dso.write_int(f"{other}.NumEntr.setVal", 1) == "access-denied"      # not its DER
    with connected(site, "victim") as victim:                                       # read only
        assert victim.read_int(f"{ref}.SchdSt.stVal") == 3
        assert victim.write_int(f"{ref}.NumEntr.setVal", 1) == "access-denied"
        assert not victim.operate(f"{ref}.DsaReq", True)[0]
    # The audit chain names the party the certificate gave, and the peer.
    deadline = time.monotonic() + 5
    while not any(r.get("party") == "dso" and r.get("action") == "enable" for r in audit_records(site)):
        assert time.monotonic() < deadline, audit_records(site)[-3:]
        time.sleep(0.1)
    enable = next(r for r in audit_records(site) if r.get("party") == "dso" and r.get("action") == "enable")
    assert enable["protocol"] == "mms" and enable["answer"] == "ok" and enable["peer"].startswith("127.0.0.1:")


def test_a_certificate_that_names_no_party_gets_the_anonymous_rule(site):
    refused(site, "stranger")     # anonymous = "none": a valid certificate alone is not enough


def test_without_a_certificate_or_with_another_ca_or_an_expired_one_the_handshake_fails(site):
    before = mms_tls(site)["handshakes_refused"]
    refused(site, None)
    refused(site, "dso", folder=site.other)
    refused(site, "expired")
    after = site.wait_for("mms", lambda n: n["detail"]["tls"]["handshakes_refused"] >= before + 3)
    assert after["detail"]["tls"]["last_handshake_refusal"]


def test_an_acse_password_over_tls_is_refused(site):
    refused(site, "dso", password="dso-secret")   # the certificate is the credential over TLS


def test_a_client_offering_only_tls_1_1_is_refused(site):
    with connected(site, "dso", max_version=iec.TLS_VERSION_TLS_1_2) as dso:   # the same client, 1.2: served
        assert dso.read_int(f"{LD}/MaxPow_FSCH02.SchdSt.stVal") == 1
    refused(site, "dso", max_version=iec.TLS_VERSION_TLS_1_1)
    # openssl s_client as an independent peer.
    res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{site.port}", "-tls1_1",
                          "-cipher", "DEFAULT:@SECLEVEL=0", "-cert", str(site.ca / "dso.crt"),
                          "-key", str(site.ca / "dso.key")], input="", capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "Cipher is (NONE)" in res.stdout, res.stdout   # no session negotiated
    res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{site.port}", "-tls1_2",
                          "-cert", str(site.ca / "dso.crt"), "-key", str(site.ca / "dso.key")],
                         input="", capture_output=True, text=True, timeout=30)
    assert "Protocol  : TLSv1.2" in res.stdout or "TLSv1.2" in res.stdout, res.stdout


def test_plain_mms_on_the_tls_port_is_refused(site):
    with pytest.raises((AssociationRefused, ConnectionError)):
        LibIec61850Client("127.0.0.1", site.port)
    # A raw COTP connection request (ISO 8073 CR TPDU in a TPKT) gets no COTP answer.
    cr = bytes.fromhex("0300001611e00000000100c0010ac2020001c1020001")
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as s:
        s.sendall(cr)
        try:
            answer = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            answer = b""
    assert not answer.startswith(b"\x03\x00"), answer.hex()   # no TPKT back: never a COTP connection confirm


def test_the_schedule_command_speaks_mms_over_tls_with_pythons_openssl(site):
    """A second, independent TLS client: `relevent schedule` (Python's ssl, OpenSSL, and
    the pure-Python open61850 MMS stack) against libiec61850's mbedtls server."""
    server, pki_dir = f"127.0.0.1:{site.port}", site.ca
    tls = ("--ca", str(pki_dir / "ca.crt"), "--cert", str(pki_dir / "dso.crt"), "--key", str(pki_dir / "dso.key"))
    res = relevent("schedule", "write", server, "MaxPow", "1", "--ld", LD.split("/")[0], "--values", "3000",
                   "--interval", "600", "--start", "+120", "--priority", "120", "--enable", *tls)
    assert res.returncode == 0, res.stdout + res.stderr
    res = relevent("schedule", "show", server, "MaxPow", "1", "--ld", LD.split("/")[0], *tls)
    assert res.returncode == 0 and "3000" in res.stdout, res.stdout + res.stderr
    res = relevent("schedule", "write", server, "MaxPow", "1", "--ld", LD.split("/")[0], "--priority", "250", *tls)
    assert res.returncode == 1 and "access" in (res.stdout + res.stderr).lower(), res.stdout + res.stderr   # band
    res = relevent("schedule", "show", server, "MaxPow", "1", "--ld", LD.split("/")[0], "--ca", str(pki_dir / "ca.crt"))
    assert res.returncode == 2 and "over TLS" in res.stderr, res.stderr    # no client certificate: refused
    res = relevent("schedule", "show", server, "MaxPow", "1", "--ld", LD.split("/")[0])
    assert res.returncode == 2, res.stdout                                  # plain MMS on the TLS port


def test_revoking_a_party_aborts_its_open_association_and_refuses_its_next(site):
    victim = LibIec61850Client("127.0.0.1", site.port, tls=tls(site, "victim"))
    ref = f"{LD}/MaxPow_FSCH02.SchdSt.stVal"
    try:
        assert victim.read_int(ref) == 1
        site.wait_for("mms", lambda n: n["detail"]["tls"]["sessions"] >= 1)
        res = relevent("pki", "revoke", str(site.ca), "victim")
        assert res.returncode == 0, res.stderr
        revoked_at = time.monotonic()
        state = iec.IedConnection_getState(victim.con)
        while state == iec.IED_STATE_CONNECTED and time.monotonic() - revoked_at < REFRESH_S + 5:
            time.sleep(0.05)
            state = iec.IedConnection_getState(victim.con)
        took = time.monotonic() - revoked_at
        assert state != iec.IED_STATE_CONNECTED and took <= REFRESH_S + 1.0, f"state={state} after {took:.2f} s"
        with pytest.raises(IOError):
            victim.read_int(ref)
    finally:
        victim.close()
    refused(site, "victim")
    t = site.wait_for("mms", lambda n: n["detail"]["tls"]["closed"] >= 1)["detail"]["tls"]
    assert "revoked" in t["last_refusal"] and t["crls"][0]["revoked"] == 1, t
    with connected(site, "dso") as dso:                      # the others carry on
        assert dso.read_int(ref) == 1


def test_status_reports_the_certificate_expiry_and_the_crl(site):
    t = mms_tls(site)
    assert 360 < t["cert_days_left"] <= 365 and t["min_version"] == "1.2" and t["errors"] == []
    assert t["crls"][0]["file"] == str(site.ca / "crl.pem") and t["crls"][0]["next_update"]


def served_serial(site) -> str:
    res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{site.port}", "-cert", str(site.ca / "dso.crt"),
                          "-key", str(site.ca / "dso.key")], input="", capture_output=True, text=True, timeout=30)
    cert = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=res.stdout, capture_output=True, text=True,
                          timeout=30)
    return cert.stdout.strip().split("=")[-1].lower().lstrip("0")


def test_a_renewed_site_certificate_is_served_after_the_endpoint_restarts_itself(site):
    before = served_serial(site)
    restarts = site.node("mms")["restarts"]
    issued = pki.issue(site.ca, "site", "site", ips=("127.0.0.1",))    # renewed in place: new key, new certificate
    assert f"{issued.serial:x}" != before
    node = site.wait_for("mms", lambda n: n["restarts"] > restarts and n["state"] == "running", timeout=REFRESH_S + 15)
    assert "restarting to serve it" in node["last_error"], node
    deadline = time.monotonic() + 10
    while served_serial(site) != f"{issued.serial:x}":
        assert time.monotonic() < deadline, "the renewed certificate is not served"
        time.sleep(0.2)
    with connected(site, "dso") as dso:     # and parties connect as before
        assert dso.read_int(f"{LD}/MaxPow_FSCH02.SchdSt.stVal") == 1
