"""HTTPS with client certificates against a running site (docs/tls.md): the site's PKI made
with `relevent pki`, the site's HTTP endpoint with `tls = true`, clients played by httpx
and by raw `ssl` sockets.  A party's certificate names it (`cert_cn`); without one, with
one of another CA, an expired or a revoked one, offering TLS 1.1 or speaking plain HTTP,
a client is refused; revoking a party's certificate closes its open keep-alive connection
within the CRL refresh interval."""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from sitectl import REPO, Site, free_port, make_pki, now_ms, running
from sitectl import relevent_cli as relevent
from test_http_api import iso

from relevent.security import pki
from relevent.topology import parse_topology

REFRESH_S = 1.0

TOPOLOGY = """
[site]
name = "tls{admin}"
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
name = "aggregator"
cert_cn = "aggregator"
ders = ["der1"]
priority = [20, 99]

[[party]]
name = "customer"
cert_cn = "customer"
http_token = "cust-token"
ders = ["der2"]
operations = ["read"]
priority = [0, 0]

[[party]]
name = "victim"
cert_cn = "victim"
operations = ["read"]

[[wan]]
name = "https"
protocol = "http"
port = {https}
tls = true
client_cert = "require"
anonymous = "none"

[[wan]]
name = "https-opt"
protocol = "http"
port = {optional}
tls = true
client_cert = "optional"
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
    tmp = tmp_path_factory.mktemp("tls-http")
    ca = make_pki(tmp / "pki", ("site", "site"), ("aggregator", "party"), ("customer", "party"), ("victim", "party"))
    pki.issue(ca, "expired", "party", days=1, now=datetime.now(timezone.utc) - timedelta(days=3))
    other = tmp / "other-pki"
    pki.init(other)
    pki.issue(other, "aggregator", "party")     # the right name, the wrong CA
    ports = {"https": free_port(), "optional": free_port()}
    path = tmp / "site.toml"
    path.write_text(TOPOLOGY.format(admin=free_port(), state=tmp / "state", pki=ca, refresh=REFRESH_S, **ports))
    s = Site(path, tmp / "state")
    s.ports, s.ca, s.other = ports, ca, other
    with running(s):
        yield s


def context(site, name: str | None = None, folder: Path | None = None) -> ssl.SSLContext:
    """A client context trusting the site's CA, with `name`'s certificate if given."""
    ctx = ssl.create_default_context(cafile=str(site.ca / "ca.crt"))
    if name:
        folder = folder or site.ca
        ctx.load_cert_chain(str(folder / f"{name}.crt"), str(folder / f"{name}.key"))
    return ctx


def client(site, name: str | None = None, port: str = "https", **kw) -> httpx.Client:
    return httpx.Client(base_url=f"https://127.0.0.1:{site.ports[port]}/api/v1", verify=context(site, name, **kw),
                        timeout=15)


def refused(site, name: str | None = None, port: str = "https", **kw) -> str:
    """The client is refused at the TLS level: its first request gets no HTTP answer."""
    try:
        with client(site, name, port, **kw) as c:
            r = c.get("/ders")
    except (httpx.TransportError, ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"{name} was answered {r.status_code}: {r.text}")


def tls_socket(site, name: str | None, port: str = "https") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", site.ports[port]), timeout=10)
    return context(site, name).wrap_socket(raw, server_hostname="127.0.0.1")


def http_get(sock: ssl.SSLSocket, path: str) -> tuple[int, bytes]:
    """One keep-alive GET on an open connection."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed before the response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def endpoint_detail(site, name: str) -> dict:
    return site.node(name)["detail"]


# -- the checks before the site ------------------------------------------------------------------------
def test_check_refuses_plain_text_http_beyond_loopback_unless_insecure(tmp_path):
    base = "[site]\nname = \"s\"\nstate_dir = \"/tmp/s\"\n[[wan]]\nname = \"api\"\nprotocol = \"http\"\n"
    with pytest.raises(Exception) as err:
        parse_topology(base + 'address = "0.0.0.0"\n', "site.toml", env={})
    assert ("site.toml:4: wan[0].tls: endpoint 'api' serves http in plain text on 0.0.0.0:8080: set tls = true"
            in str(err.value))
    assert parse_topology(base + 'address = "0.0.0.0"\ninsecure = true\n', "site.toml", env={})
    assert parse_topology(base + 'address = "127.0.0.1"\n', "site.toml", env={})
    with pytest.raises(Exception) as err:
        parse_topology(base + 'address = "0.0.0.0"\ntls = true\n', "site.toml", env={})
    assert "wan[0].tls: serving TLS needs the site's certificate: set [tls] cert and key" in str(err.value)
    path = tmp_path / "site.toml"
    path.write_text(base + 'address = "0.0.0.0"\n')
    res = relevent("check", str(path))
    assert res.returncode == 1 and "wan[0].tls: endpoint 'api' serves http in plain text" in res.stderr
    path.write_text(base + '[tls]\ncrl = ["missing-crl.pem"]\nca = "/nonexistent/ca.crt"\n')
    res = relevent("check", str(path))
    assert res.returncode == 1 and "tls.ca: cannot read /nonexistent/ca.crt" in res.stderr
    assert f"tls.crl[0]: cannot read CRL {REPO / 'missing-crl.pem'}: no such file" in res.stderr


# -- the running site --------------------------------------------------------------------------------------
def test_a_party_certificate_reads_and_writes_per_its_rights(site):
    with client(site, "aggregator") as agg:
        assert [d["name"] for d in agg.get("/ders").json()] == ["der1"]
        assert agg.get("/ders/der2/MaxPow").json()["rule"] == "party:der"
        body = {"values": [4000.0], "interval_s": 600, "start": iso(now_ms() + 60_000)}
        r = agg.put("/ders/der1/MaxPow/schedules/1", json={**body, "priority": 150})
        assert r.status_code == 403 and r.json()["rule"] == "band"
        r = agg.put("/ders/der1/MaxPow/schedules/1", json={**body, "priority": 50})
        assert r.status_code == 200, r.text
        assert agg.post("/ders/der1/MaxPow/schedules/1/enable").status_code == 200
    with client(site, "customer") as customer:
        assert customer.get("/ders/der2/MaxPow").status_code == 200
        r = customer.put("/ders/der2/MaxPow/schedules/1", json={"priority": 0})
        assert r.status_code == 403 and r.json()["rule"] == "party:operation"
    # The audit chain names the party the certificate gave.
    with client(site, "aggregator") as agg:
        records = agg.get("/audit", params={"limit": 50}).json()
    assert any(r.get("party") == "aggregator" and r.get("action") == "enable" for r in records), records[-3:]


def test_a_token_and_a_certificate_must_name_the_same_party(site):
    with client(site, "aggregator", "optional") as agg:
        r = agg.get("/ders", headers={"Authorization": "Bearer nobody"})
        assert r.status_code == 401 and "names no party" in r.json()["error"]
        r = agg.get("/ders", headers={"Authorization": "Bearer cust-token"})
        assert r.status_code == 401 and "client certificate 'aggregator'" in r.json()["error"]
    with client(site, None, "optional") as anonymous:    # a token alone still works
        r = anonymous.get("/ders", headers={"Authorization": "Bearer cust-token"})
        assert r.status_code == 200 and [d["name"] for d in r.json()] == ["der2"]


def test_without_a_certificate_the_handshake_or_the_request_is_refused(site):
    assert refused(site, None, "https")                 # client_cert = "require": the handshake fails
    with client(site, None, "optional") as anonymous:  # "optional": served, as nobody: 401
        r = anonymous.get("/ders")
        assert r.status_code == 401 and r.json()["rule"] == "auth"
    with client(site, "customer", "optional") as customer:
        assert customer.get("/ders").status_code == 200


def test_a_certificate_of_another_ca_an_expired_one_is_refused(site):
    assert refused(site, "aggregator", "https", folder=site.other)
    assert refused(site, "aggregator", "optional", folder=site.other)   # a certificate given is verified
    assert refused(site, "expired", "https")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_a_client_offering_only_tls_1_1_is_refused(site):
    def hello(maximum: ssl.TLSVersion) -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(site.ca / "ca.crt"))
        ctx.load_cert_chain(str(site.ca / "aggregator.crt"), str(site.ca / "aggregator.key"))
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")     # let this client speak TLS 1.1 at all
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
        with socket.create_connection(("127.0.0.1", site.ports["https"]), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return s.version()

    assert hello(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"     # the same client, allowed 1.2: served
    with pytest.raises(ssl.SSLError) as err:
        hello(ssl.TLSVersion.TLSv1_1)
    # The server hangs up on the TLS 1.1 hello (asyncio closes without sending its alert):
    # EOF, or the protocol-version alert; never a client that offered nothing.
    assert isinstance(err.value, ssl.SSLEOFError) or "version" in str(err.value).lower(), err.value
    assert "NO_PROTOCOLS_AVAILABLE" not in str(err.value)
    # openssl s_client as an independent peer.
    res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{site.ports['https']}", "-tls1_1",
                          "-cipher", "DEFAULT:@SECLEVEL=0", "-cert", str(site.ca / "aggregator.crt"),
                          "-key", str(site.ca / "aggregator.key")], input="", capture_output=True, text=True,
                         timeout=30)
    assert res.returncode != 0 and "Cipher is (NONE)" in res.stdout, res.stdout   # no session negotiated


def test_plain_http_on_the_tls_port_is_refused(site):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{site.ports['https']}/api/v1/ders", timeout=10)
    with socket.create_connection(("127.0.0.1", site.ports["https"]), timeout=10) as s:
        s.sendall(b"GET /api/v1/ders HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/"), answer


def test_revoking_a_party_closes_its_open_session_and_refuses_its_next(site):
    sock = tls_socket(site, "victim")
    status, body = http_get(sock, "/api/v1/ders")
    assert status == 200 and json.loads(body)
    site.wait_for("https", lambda n: n["detail"]["tls"]["sessions"] >= 1)   # status lags a heartbeat
    res = relevent("pki", "revoke", str(site.ca), "victim")
    assert res.returncode == 0, res.stderr
    revoked_at = time.monotonic()
    sock.settimeout(REFRESH_S + 5)
    try:
        closed = sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        closed = True
    took = time.monotonic() - revoked_at
    sock.close()
    assert closed and took <= REFRESH_S + 1.0, f"closed={closed} after {took:.2f} s"
    assert refused(site, "victim", "https")
    tls = site.wait_for("https", lambda n: n["detail"]["tls"]["closed"] >= 1)["detail"]["tls"]
    assert tls["closed"] >= 1 and "revoked" in tls["last_refusal"] and tls["crls"][0]["revoked"] == 1, (tls, took)
    with client(site, "aggregator") as agg:                # the others carry on
        assert agg.get("/ders").status_code == 200


def test_status_reports_the_certificate_expiry_and_the_crl(site):
    tls = endpoint_detail(site, "https")["tls"]
    assert 360 < tls["cert_days_left"] <= 365 and tls["min_version"] == "1.2" and tls["errors"] == []
    assert tls["crls"][0]["file"] == str(site.ca / "crl.pem") and tls["crls"][0]["next_update"]
    assert endpoint_detail(site, "https")["serving"].startswith("https://")


def test_a_renewed_site_certificate_is_served_after_the_endpoint_restarts_itself(site):
    def served_serial() -> int:
        with tls_socket(site, "aggregator") as s:
            der = s.getpeercert(binary_form=True)
        from cryptography import x509
        return x509.load_der_x509_certificate(der).serial_number

    restarts, before = site.node("https")["restarts"], served_serial()
    issued = pki.issue(site.ca, "site", "site", ips=("127.0.0.1",))
    assert before != issued.serial
    node = site.wait_for("https", lambda n: n["restarts"] > restarts and n["state"] == "running", timeout=REFRESH_S + 15)
    assert "restarting to serve it" in node["last_error"], node
    deadline = time.monotonic() + 10
    while served_serial() != issued.serial:
        assert time.monotonic() < deadline, "the renewed certificate is not served"
        time.sleep(0.2)
