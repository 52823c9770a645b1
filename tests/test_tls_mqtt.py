"""MQTT over TLS with client certificates (docs/tls.md): a real Mosquitto started here with a
TLS listener, `require_certificate`, `use_identity_as_username` (the certificate's CN is
the MQTT user) and an ACL; the site's LAN `mqtt` endpoint and its WAN `mqtt-ems` endpoint
connect with the site's certificate from `relevent pki`.  Independent peers: Mosquitto's
own mosquitto_sub / mosquitto_pub with device certificates.  A site without a certificate
is refused by the broker and says why in `relevent status`."""
from __future__ import annotations

import getpass
import json
import queue
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from lanctl import MOSQUITTO
from sitectl import Site, free_port, make_pki, now_ms, running
from sitectl import relevent_cli as relevent
from test_http_api import iso

MARK = 4321.0     # the set-point a schedule sends, to find among the reserve's commands

SITE = """
[site]
name = "{name}"
state_dir = "{state}"

[runtime]
admin_port = {admin}

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[tls]
{cert}ca = "{pki}/ca.crt"
crl = ["{pki}/crl.pem"]
crl_refresh_s = 1

[[wan]]
name = "http"
protocol = "http"
port = {http}
{ems}
[[der]]
name = "der1"
functions = ["MaxPow"]
schedules = 2
lan = "mqtt"
rated_power_w = 10000
reserve = {{MaxPow = 10000.0}}

[[lan]]
name = "mqtt"
protocol = "mqtt"
host = "127.0.0.1"
port = {broker}
tls = true
reconnect_delay = 0.5
resend_delay = 0.2
"""

EMS = """
[[wan]]
name = "ems"
protocol = "mqtt-ems"
host = "127.0.0.1"
port = {broker}
tls = true
der = "der1"
function = "MaxPow"
"""

ACL = """user site1
topic readwrite fledge/#
topic readwrite hedera-requests
topic readwrite hedera-replies

user dev1
topic readwrite fledge/#

user ems1
topic readwrite hedera-requests
topic readwrite hedera-replies
"""


class TlsMosquitto:
    """Mosquitto with one TLS listener on loopback that wants a client certificate of the
    site CA, takes its CN as the user name and applies an ACL."""

    def __init__(self, port: int, workdir: Path, ca: Path, nodelay: bool = True) -> None:
        self.port, self.log = port, workdir / "mosquitto.log"
        (workdir / "acl").write_text(ACL)
        self.conf = workdir / "mosquitto.conf"
        # `user`: as root, Mosquitto would drop to `mosquitto`, who cannot read the PKI (0700).
        self.conf.write_text(f"""per_listener_settings false
persistence false
allow_anonymous false
user {getpass.getuser()}
acl_file {workdir / 'acl'}
listener {port} 127.0.0.1
cafile {ca / 'ca.crt'}
certfile {ca / 'broker.crt'}
keyfile {ca / 'broker.key'}
crlfile {ca / 'crl.pem'}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
""" + ("set_tcp_nodelay true\n" if nodelay else ""))   # docs/tls.md: without it Nagle delays small records
        self.proc: subprocess.Popen | None = None

    def start(self) -> "TlsMosquitto":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


def tls_args(ca: Path, name: str) -> list[str]:
    return ["--cafile", str(ca / "ca.crt"), "--cert", str(ca / f"{name}.crt"), "--key", str(ca / f"{name}.key")]


class Subscriber:
    """mosquitto_sub with a device certificate; lines kept as they come."""

    def __init__(self, port: int, ca: Path, name: str, topic: str) -> None:
        self.proc = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), *tls_args(ca, name),
                                      "-t", topic, "-q", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def wait_for(self, predicate, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                doc = json.loads(self.lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
            seen.append(doc)
            if predicate(doc):
                return doc
        raise AssertionError(f"nothing matching in {timeout} s; seen {seen[-3:]}; "
                             f"mosquitto_sub: {self.proc.poll()} {self.proc.stderr.read() if self.proc.poll() else ''}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def publish(port: int, ca: Path, name: str, topic: str, payload: str) -> None:
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), *tls_args(ca, name), "-t", topic,
                    "-q", "1", "-m", payload], check=True, timeout=10)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("tls-mqtt") / "pki", ("broker", "site"), ("site1", "site"),
                    ("dev1", "device"), ("ems1", "device"))


@pytest.fixture(scope="module")
def broker(pki_dir):
    b = TlsMosquitto(free_port(), pki_dir.parent, pki_dir).start()
    yield b
    b.stop()


def topology(tmp: Path, ca: Path, broker: int, name: str, with_cert: bool = True, ems: bool = True) -> Site:
    state = tmp / f"state-{name}"
    path = tmp / f"{name}.toml"
    http = free_port()
    cert = f'cert = "{ca}/site1.crt"\nkey = "{ca}/site1.key"\n' if with_cert else ""
    path.write_text(SITE.format(name=name, state=state, admin=free_port(), pki=ca, cert=cert, http=http,
                                broker=broker, ems=EMS.format(broker=broker) if ems else ""))
    site = Site(path, state)
    site.http = http
    return site


def lan_detail(site: Site) -> dict:
    return site.node("mqtt")["detail"]


def test_the_site_reaches_a_device_over_tls_with_its_certificate(pki_dir, broker, tmp_path):
    device = Subscriber(broker.port, pki_dir, "dev1", "fledge/south-command")
    site = topology(tmp_path, pki_dir, broker.port, "tlsmqtt")
    try:
        with running(site):
            detail = site.wait_for("mqtt", lambda n: n["detail"].get("connected"), timeout=15)["detail"]
            assert detail["tls"]["errors"] == [] and "error" not in detail
            # The reserve's set-point after the connect, over TLS to a device with its own certificate.
            device.wait_for(lambda d: d.get("operation") == "PivotCommand", timeout=15)
            with httpx.Client(base_url=f"http://127.0.0.1:{site.http}/api/v1", timeout=15) as api:
                r = api.put("/ders/der1/MaxPow/schedules/1", json={"values": [MARK], "interval_s": 600,
                                                                   "start": iso(now_ms() + 1500), "priority": 30})
                assert r.status_code == 200, r.text
                assert api.post("/ders/der1/MaxPow/schedules/1/enable").status_code == 200, r.text
            command = device.wait_for(lambda d: str(MARK).rstrip("0").rstrip(".") in json.dumps(d), timeout=15)
            assert command["operation"] == "PivotCommand"
    finally:
        device.close()
    log = broker.log.read_text()
    assert "as relevent-mqtt" in log and "u'site1'" in log   # the broker took the certificate's CN as user


def test_the_ems_endpoint_takes_requests_over_tls(pki_dir, broker, tmp_path):
    replies = Subscriber(broker.port, pki_dir, "ems1", "hedera-replies")
    site = topology(tmp_path, pki_dir, broker.port, "tlsems")
    try:
        with running(site):
            site.wait_for("ems", lambda n: n["detail"].get("subscribed", 0) >= 1, timeout=20)
            start_s = int(time.time()) + 120
            request = {"skipHedera": True, "direction": "EXPORT", "start": {"seconds": start_s, "nanos": 0},
                       "resolution": "FIFTEEN_MINUTES", "values": [3000, 2000], "correlationId": "tls-1"}
            publish(broker.port, pki_dir, "ems1", "hedera-requests", json.dumps(request))
            reply = replies.wait_for(lambda d: d.get("correlationId") == "tls-1", timeout=20)
            assert reply["accepted"] is True, reply
            assert site.node("ems")["detail"]["tls"]["errors"] == []
    finally:
        replies.close()


def test_a_site_without_a_certificate_is_refused_and_says_why(pki_dir, broker, tmp_path):
    site = topology(tmp_path, pki_dir, broker.port, "nocert", with_cert=False, ems=False)
    with running(site):
        # The first error may be the bare connect failure; the probe's reason follows it.
        detail = site.wait_for("mqtt", lambda n: "certificate" in (n["detail"].get("error") or "").lower(),
                               timeout=30)["detail"]
        assert not detail["connected"]
        assert "certificate" in detail["error"].lower(), detail["error"]
        assert "no [tls] cert to offer" in detail["error"]
        res = relevent("status", str(site.topology), "--json")
        assert res.returncode == 0
        node = next(n for n in json.loads(res.stdout)["tree"]["children"] if n["name"] == "mqtt")
        # Between two reconnects the error is the probe's reason or the bare reset; both say why.
        assert "no [tls] cert to offer" in node["detail"]["error"], node["detail"]["error"]
