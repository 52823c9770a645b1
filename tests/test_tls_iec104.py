"""IEC 60870-5-104 over TLS (IEC 62351-3, docs/iec104.md "TLS") against a running site: the
site's PKI made with `relevent pki`, its 104 endpoint with `tls = true` and `peer_certs`, its
PV inverter the SunSpec simulator on Modbus.  The controlling stations are
tests/iec104peer.py (frames written from the standard) over Python's `ssl` (OpenSSL), and
`openssl s_client`: neither is c104 nor mbedtls, which serve the site's side.  (c104 2.2.1's
own client was the first choice of peer, but its mbedtls refuses to verify a server without a
host name, -0x5D80, and the binding cannot set one: it completes no handshake at all.)

An admitted station's set-point reaches the inverter; a certificate of the CA that is not
listed, one of another CA, plain 104 and TLS 1.1 get no session; revoking the admitted
station's certificate closes its open connection within the CRL refresh interval and refuses
its next one, while the schedule it set stays in force.  The verdicts on `peer_certs`
themselves (given a CA, CRLs and a time) are unit-tested at the end."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from iec104peer import ACT_CON, ACT_TERM, C_SE_NC_1, M_SP_NA_1, STOPDT_CON, Peer, describe
from sitectl import Site, free_port, make_pki, running
from sitectl import relevent_cli as relevent
from test_iec104 import model_address, wait_for_limit

from relevent.protocols.iec104 import peers
from relevent.protocols.iec104.endpoint import HANDSHAKE_S
from relevent.security import pki
from relevent.security.tls import check_peer, read_cas, read_crl
from relevent.topology import parse_topology

REFRESH_S = 1.0
MARGIN_S = 3.0            # on top of the refresh interval: a loaded CI host
CA = 100
SP, RUNNING = 1001, 2002

TOPOLOGY = """
[site]
name = "i104tls{admin}"
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
peers = ["127.0.0.1"]      # over TLS too, the station's address names its party
priority = [0, 300]

[[wan]]
name = "scada"
protocol = "iec104"
party = "dso"
parties = ["dso"]
port = {port}
tls = true
peer_certs = ["{pki}/dso.crt", "{pki}/backup.crt", "{pki}/expired.crt", "{other}/stray.crt"]
common_address = {ca}
max_connections = 2
unit = "percent"
schedule = 2
functions = [{{ der = "pv1", function = "MaxPow", C_SE_NC_1 = {sp}, running = {running} }}]

[[der]]
name = "pv1"
functions = ["MaxPow"]
schedules = 2
lan = "modbus"
address = 1
profile = "sunspec"
rated_power_w = 10000
reserve = {{ MaxPow = 10000.0 }}

[[lan]]
name = "modbus"
protocol = "modbus"
port = {modbus}
timeout = 0.5
poll_period = 0.3

[[simulator]]
name = "inverter"
protocol = "sunspec-inverter"
port = {modbus}
wmax = 10000.0
write_log = "{log}"
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls-iec104")
    ca = make_pki(tmp / "pki", ("site", "site"), ("dso", "party"), ("backup", "party"), ("stranger", "party"))
    pki.issue(ca, "expired", "party", days=1, now=datetime.now(timezone.utc) - timedelta(days=3))
    other = tmp / "other-pki"
    pki.init(other)
    pki.issue(other, "dso", "party")      # the right name, the wrong CA
    pki.issue(other, "stray", "party")    # listed in peer_certs, but of another CA
    port, modbus = free_port(), free_port()
    path, log = tmp / "site.toml", tmp / "writes.jsonl"
    path.write_text(TOPOLOGY.format(admin=free_port(), state=tmp / "state", pki=ca, other=other, refresh=REFRESH_S,
                                    port=port, ca=CA, sp=SP, running=RUNNING, modbus=modbus, log=log))
    s = Site(path, tmp / "state")
    s.port, s.ca, s.other, s.write_log = port, ca, other, log
    with running(s, leftovers=True):
        s.model123 = model_address(modbus, 123)
        yield s


# -- the stations -------------------------------------------------------------------------------------
def context(site, name: str, folder: Path | None = None) -> ssl.SSLContext:
    """A controlling station's TLS: the site verified against the site's CA (its certificate
    names 127.0.0.1), `name`'s certificate presented."""
    folder = folder or site.ca
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(site.ca / "ca.crt")
    ctx.load_cert_chain(folder / f"{name}.crt", folder / f"{name}.key")
    return ctx


def station(site, name: str, folder: Path | None = None) -> Peer:
    peer = Peer("127.0.0.1", site.port, timeout=5.0, tls=context(site, name, folder))
    try:
        peer.startdt()
    except BaseException:
        peer.close()
        raise
    return peer


def refused(site, name: str, folder: Path | None = None) -> str:
    """How the station was refused: its handshake failed, or the site closed the connection
    before any STARTDT_CON.  Fails if it got a STARTDT_CON."""
    try:
        peer = Peer("127.0.0.1", site.port, timeout=5.0, tls=context(site, name, folder))
    except (ssl.SSLError, OSError) as exc:
        return f"handshake: {exc}"
    with peer:
        try:
            peer.startdt()
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            return f"after the handshake: {exc}"
        except AssertionError as exc:      # no STARTDT_CON in the peer's timeout, or not an APCI
            return f"no answer: {exc}"
    raise AssertionError(f"{name} got a STARTDT_CON")


def set_limit(site, peer: Peer, percent: float) -> None:
    since = time.time_ns()
    mark = peer.setpoint_float(CA, SP, percent)
    con = peer.answers(mark, C_SE_NC_1, SP, (ACT_CON,))
    assert not con.negative, describe(con)
    peer.answers(mark, C_SE_NC_1, SP, (ACT_TERM,))
    wait_for_limit(site, percent, since)


def tls_detail(site) -> dict:
    return site.node("scada")["detail"]["tls"]


def openssl_client(site, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{site.port}", *args],
                          input="", capture_output=True, text=True, timeout=30)


# -- relevent check ------------------------------------------------------------------------------------
def test_check_refuses_plain_104_beyond_loopback_and_tls_without_peer_certs(tmp_path):
    folder = make_pki(tmp_path / "pki", ("site", "site"), ("dso", "party"))
    base = ('[site]\nname = "s"\nstate_dir = "/tmp/s"\n[[der]]\nname = "pv1"\nfunctions = ["MaxPow"]\n'
            'schedules = 1\n[[wan]]\nname = "scada"\nprotocol = "iec104"\n'
            'functions = [{ der = "pv1", function = "MaxPow", C_SE_NC_1 = 1 }]\n')
    tls = f'[tls]\ncert = "{folder}/site.crt"\nkey = "{folder}/site.key"\nca = "{folder}/ca.crt"\n'
    with pytest.raises(Exception) as err:
        parse_topology(base + 'address = "0.0.0.0"\n', "site.toml", env={})
    assert "wan[0].tls: endpoint 'scada' serves iec104 in plain text on 0.0.0.0:2404: set tls = true" in str(err.value)
    assert parse_topology(base + 'address = "0.0.0.0"\ninsecure = true\n', "site.toml", env={})
    with pytest.raises(Exception) as err:
        parse_topology(tls + base + 'address = "0.0.0.0"\nport = 19998\ntls = true\n', "site.toml", env={})
    assert "wan[0].peer_certs: tls = true needs peer_certs" in str(err.value)
    with pytest.raises(Exception) as err:
        parse_topology(tls + base + f'tls = true\npeer_certs = ["{folder}/gone.crt", "{folder}/dso.key"]\n',
                       "site.toml", env={})
    assert f"peer_certs[0]: cannot read {folder}/gone.crt" in str(err.value)
    assert f"peer_certs[1]: {folder}/dso.key is not a certificate" in str(err.value)
    other = tmp_path / "other"
    pki.init(other)
    pki.issue(other, "dso", "party")
    checked = parse_topology(tls + base + f'tls = true\npeer_certs = ["{folder}/dso.crt", "{other}/dso.crt"]\n',
                             "site.toml", env={})
    assert [w.message for w in checked.warnings] == [   # it starts; that station will be refused
        "peer_certs[1]: certificate of dso is not issued by a CA of the site's bundle ([tls] ca): that station "
        "will be refused"]


# -- a running site -----------------------------------------------------------------------------------
def test_an_admitted_station_connects_over_tls_and_its_set_point_reaches_the_inverter(site):
    with station(site, "dso") as peer:
        assert peer.sock.version() in ("TLSv1.2", "TLSv1.3")
        set_limit(site, peer, 40.0)
        site.wait_for("pv1/MaxPow", lambda n: (n["detail"]["output"], n["detail"]["source"]) == (4000.0, "FSCH02"))
        got = peer.general_interrogation(CA)
        assert got[RUNNING][0] == M_SP_NA_1 and got[RUNNING][1].value is True
        detail = site.wait_for("scada", lambda n: n["detail"]["peers"])["detail"]
        assert detail["peers"][-1]["party"] == "dso" and detail["tls"]["sessions"] >= 1   # its party: by address


def test_a_station_that_stops_and_restarts_data_transfer_keeps_its_party(site):
    """Over TLS the endpoint counts started connections only (c104's open count can freeze
    it): a STOPDT takes the station off the count, its STARTDT puts it back, as its party."""
    site.wait_for("scada", lambda n: n["detail"]["peers"] == [], timeout=10)    # the earlier sessions gone
    with station(site, "dso") as peer:
        site.wait_for("scada", lambda n: n["detail"]["peers"])
        peer.stopdt()
        deadline = time.monotonic() + 5
        while STOPDT_CON not in peer.u_frames:   # read (and acknowledge) what comes until it is confirmed
            assert time.monotonic() < deadline, "no STOPDT_CON"
            peer.collect(0.1)
        site.wait_for("scada", lambda n: n["detail"]["peers"] == [] and n["detail"]["tls"]["sessions"] == 0)
        peer.startdt()
        detail = site.wait_for("scada", lambda n: n["detail"]["peers"])["detail"]
        assert detail["peers"][-1]["party"] == "dso"
        set_limit(site, peer, 45.0)
        assert site.node("scada")["detail"]["last_instruction"]["party"] == "dso"


def test_a_certificate_of_the_ca_that_is_not_listed_is_refused(site):
    before = tls_detail(site)["handshakes_failed"]
    refused(site, "stranger")
    # lib60870 accepts before the handshake: the endpoint counts the connection only once c104
    # does, and one that never started is shown as a failed handshake, never as its party's.
    node = site.wait_for("scada", lambda n: n["detail"]["tls"]["handshakes_failed"] > before, timeout=HANDSHAKE_S + 5)
    assert node["detail"]["peers"] == []


def test_a_certificate_of_another_ca_is_refused(site):
    refused(site, "dso", folder=site.other)      # not of [tls] ca: c104 refuses the chain
    refused(site, "stray", folder=site.other)    # listed, but not of [tls] ca: never admitted


def test_a_plain_104_connection_to_the_tls_port_gets_no_startdt_con(site):
    with Peer("127.0.0.1", site.port, timeout=3.0) as plain:
        with pytest.raises((AssertionError, ConnectionError, OSError)):
            plain.startdt()
        assert 0x0B not in plain.u_frames     # STARTDT_CON


def test_tls_1_1_is_refused(site):
    if "-tls1_1" not in subprocess.run(["openssl", "s_client", "-help"], capture_output=True, text=True).stderr:
        pytest.skip("the local openssl cannot offer TLS 1.1")
    cert = ("-cert", str(site.ca / "dso.crt"), "-key", str(site.ca / "dso.key"))
    res = openssl_client(site, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", *cert)
    assert res.returncode != 0 and "Cipher is (NONE)" in res.stdout, res.stdout + res.stderr   # no session
    res = openssl_client(site, "-tls1_2", *cert)        # the same client, TLS 1.2: a session
    assert "Protocol  : TLSv1.2" in res.stdout, res.stdout + res.stderr


def test_status_lists_the_admitted_and_refused_certificates_with_their_reasons(site):
    t = tls_detail(site)
    assert t["min_version"] == "1.2" and t["errors"] == [] and t["crls"][0]["file"] == str(site.ca / "crl.pem")
    verdicts = {Path(v["file"]).stem: v for v in t["peer_certs"]}
    assert verdicts["dso"]["allowed"] and verdicts["backup"]["allowed"] and t["admitted"] == 2
    assert not verdicts["expired"]["allowed"] and "expired at" in verdicts["expired"]["reason"]
    assert not verdicts["stray"]["allowed"] and "not issued by a CA of the site's bundle" in verdicts["stray"]["reason"]
    assert verdicts["dso"]["subject"] == "dso" and verdicts["dso"]["serial"]


def test_a_silent_connection_does_not_freeze_the_endpoint(site):
    """lib60870 handshakes in its accept thread and holds its connection lock until the
    handshake ends; c104's open_connection_count waits for that lock holding the GIL.  The
    endpoint reads only the active count over TLS: a station's open session goes on, and the
    endpoint's heartbeats too (no restart), while a connection sends nothing."""
    pid = site.node("scada")["pid"]
    with station(site, "backup") as peer:
        with socket.create_connection(("127.0.0.1", site.port)):
            time.sleep(2.0)     # five heartbeat timeouts of this site
            node = site.node("scada")
            assert node["pid"] == pid and node["state"] == "running", node
            assert peer.general_interrogation(CA)[RUNNING][1].value is True
    with station(site, "dso") as again:           # the silent one gone, a new handshake is made
        assert again.general_interrogation(CA)


def test_revoking_the_admitted_station_closes_its_connection_and_it_cannot_reconnect(site):
    peer = station(site, "dso")
    try:
        set_limit(site, peer, 30.0)
        restarts = tls_detail(site)["server_restarts"]
        res = relevent("pki", "revoke", str(site.ca), "dso")
        assert res.returncode == 0, res.stderr
        revoked_at = time.monotonic()
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            peer.collect(REFRESH_S + MARGIN_S + 5)       # returns only if the connection stays open
        took = time.monotonic() - revoked_at
        assert took <= REFRESH_S + MARGIN_S, f"closed after {took:.2f} s"
    finally:
        peer.close()
    detail = site.wait_for("scada", lambda n: n["detail"]["listening"]
                           and n["detail"]["tls"]["server_restarts"] > restarts)["detail"]
    why = refused(site, "dso")
    t = detail["tls"]
    assert "revoked" in t["last_server_restart"]["reason"] and t["closed"] >= 1, t
    dso = next(v for v in t["peer_certs"] if Path(v["file"]).stem == "dso")
    assert not dso["allowed"] and "revoked" in dso["reason"] and t["admitted"] == 1, (t, why)
    # What it set stays in force: the schedule runs, the inverter keeps its 30 %.
    site.wait_for("pv1/MaxPow", lambda n: (n["detail"]["output"], n["detail"]["source"]) == (3000.0, "FSCH02"))
    with station(site, "backup") as other:        # the other listed station carries on
        assert other.general_interrogation(CA)[RUNNING][1].value is True


def served_serial(site) -> str:
    res = openssl_client(site, "-cert", str(site.ca / "backup.crt"), "-key", str(site.ca / "backup.key"))
    cert = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=res.stdout, capture_output=True, text=True,
                          timeout=30)
    return cert.stdout.strip().split("=")[-1].lower().lstrip("0")


def test_a_renewed_site_certificate_is_served_after_the_endpoint_restarts_itself(site):
    before = served_serial(site)
    restarts = site.node("scada")["restarts"]
    issued = pki.issue(site.ca, "site", "site", ips=("127.0.0.1",))    # renewed in place
    assert f"{issued.serial:x}" != before
    node = site.wait_for("scada", lambda n: n["restarts"] > restarts and n["state"] == "running",
                         timeout=REFRESH_S + 15)
    assert "restarting to serve it" in node["last_error"], node
    deadline = time.monotonic() + 10
    while served_serial(site) != f"{issued.serial:x}":
        assert time.monotonic() < deadline, "the renewed certificate is not served"
        time.sleep(0.2)
    with station(site, "backup") as peer:
        assert peer.general_interrogation(CA)


# -- the verdicts, pure ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peer-verdicts")
    folder = make_pki(tmp / "ca", ("good", "party"), ("gone", "party"))
    pki.revoke(folder, "gone")
    twin = tmp / "twin" / "ca"        # a CA of the same name, another key
    pki.init(twin)
    pki.issue(twin, "forged", "party")
    (tmp / "junk.crt").write_text("not a certificate\n")
    return folder, twin


def verdicts(authority, names: list[str], now: datetime, crls: bool = True) -> dict[str, peers.Verdict]:
    folder, twin = authority
    cas = read_cas(str(folder / "ca.crt"))
    lists = [read_crl(str(folder / "crl.pem"), cas, now)] if crls else []
    paths = [str(twin / "forged.crt") if n == "forged" else str(folder.parent / n) if n.endswith(".crt")
             else str(folder / f"{n}.crt") for n in names]
    out = peers.judge(paths, cas, lambda der: check_peer(der, lists, now))
    return {n: v for n, v in zip(names, out)}


def test_a_listed_certificate_of_the_ca_not_revoked_is_admitted(authority):
    got = verdicts(authority, ["good"], datetime.now(timezone.utc))["good"]
    assert got.allowed and got.reason is None and got.subject == "good"
    assert x509.load_der_x509_certificate(got.der).subject.rfc4514_string() == "CN=good"


def test_a_revoked_certificate_is_refused(authority):
    got = verdicts(authority, ["gone"], datetime.now(timezone.utc))["gone"]
    assert not got.allowed and "was revoked at" in got.reason


def test_an_expired_certificate_and_one_whose_crl_is_out_of_date_are_refused(authority):
    later = datetime.now(timezone.utc) + timedelta(days=400)
    assert "expired at" in verdicts(authority, ["good"], later)["good"].reason
    crl_stale = datetime.now(timezone.utc) + timedelta(days=40)      # the CRL is valid 30 days
    assert "out of date" in verdicts(authority, ["good"], crl_stale)["good"].reason


def test_without_crls_only_the_chain_and_validity_decide(authority):
    assert verdicts(authority, ["gone"], datetime.now(timezone.utc), crls=False)["gone"].allowed


def test_a_certificate_signed_by_another_key_under_the_same_ca_name_is_refused(authority):
    got = verdicts(authority, ["forged"], datetime.now(timezone.utc))["forged"]
    assert not got.allowed and "not issued by a CA of the site's bundle" in got.reason


def test_an_unreadable_file_or_one_that_is_no_certificate_is_refused(authority):
    got = verdicts(authority, ["missing", "junk.crt"], datetime.now(timezone.utc))
    assert got["missing"].der is None and "cannot read" in got["missing"].reason
    assert got["junk.crt"].der is None and "is not a certificate" in got["junk.crt"].reason


def test_the_admitted_set_lists_each_certificate_once_in_order(authority):
    folder, _ = authority
    shutil.copy(folder / "good.crt", folder / "good-again.crt")
    got = verdicts(authority, ["good", "gone", "good-again"], datetime.now(timezone.utc))
    assert peers.allowed_set(list(got.values())) == (got["good"].der,)
