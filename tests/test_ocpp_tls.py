"""OCPP security profiles 2 and 3 (docs/ocpp.md "Security profiles") against a running site:
the site's PKI made with `relevent pki`, one OCPP endpoint on profile 3 (TLS with client
certificates: CN = charge point id) and one on profile 2 (TLS and HTTP Basic auth).

The chargers are not the site's code: raw OCPP 1.6J frames over the `websockets` client
with an `ssl.SSLContext` of the test's own making.  A BootNotification is answered
Accepted; every CALL the site makes (SetChargingProfile) is answered Accepted.  The site's
own simulator connects on both profiles too (its keys `ca`, `cert`, `key`,
`password_file`).  Refused: another charger's certificate, none, another CA's, a revoked
one (and the revoked charger's open websocket is closed within crl_refresh_s = 1 s), a
wrong password, none, another charger's user, plain ws on the TLS port.  Plus what
`relevent check` says of a profile the site cannot serve."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from sitectl import Site, free_port, make_pki, now_ms, running
from sitectl import relevent_cli as relevent
from test_ocpp_endpoint import limit_from, limit_of

from relevent.security import pki
from relevent.topology import TopologyError, parse_topology

REFRESH_S = 1.0
PASSWORD = "correct-horse-battery-staple"   # 28 characters: OCPP asks for 16..40


def charger(name: str, cp_id: str, lan: str) -> str:
    return f"""
[[der]]
name = "{name}"
type = "ev_charger"
functions = ["MaxPow"]
schedules = 2
lan = "{lan}"
address = "{cp_id}"
rated_power_w = 11000
reserve = {{ MaxPow = 11000.0 }}
"""


TOPOLOGY = """
[site]
name = "ocpptls{admin}"
state_dir = "{state}"

[runtime]
admin_port = {admin}
controller_isolation = "der"

[supervision]
heartbeat_interval = 0.2
heartbeat_timeout = 2.0
backoff_initial = 0.05

[tls]
cert = "{pki}/site.crt"
key = "{pki}/site.key"
ca = "{pki}/ca.crt"
crl = ["{pki}/crl.pem"]
crl_refresh_s = {refresh}

[[wan]]
name = "http"
protocol = "http"
port = {http}
{ders}
[[lan]]
name = "ocpp3"
protocol = "ocpp"
port = {ocpp3}
security_profile = 3
call_timeout_s = 3.0

[[lan]]
name = "ocpp2"
protocol = "ocpp"
port = {ocpp2}
security_profile = 2
password_files = {{ ev2 = "{tmp}/cp2.pw", evsim2 = "{tmp}/cpsim2.pw" }}

[[simulator]]
name = "sim3"
protocol = "ocpp-charger"
url = "wss://127.0.0.1:{ocpp3}/ocpp"
charge_point_id = "CPSIM3"
ca = "{pki}/ca.crt"
cert = "{pki}/CPSIM3.crt"
key = "{pki}/CPSIM3.key"
meter_period_s = 0.5

[[simulator]]
name = "sim2"
protocol = "ocpp-charger"
url = "wss://127.0.0.1:{ocpp2}/ocpp"
charge_point_id = "CPSIM2"
ocpp_version = "2.0.1"
ca = "{pki}/ca.crt"
password_file = "{tmp}/cpsim2.pw"
meter_period_s = 0.5
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ocpp-tls")
    ca = make_pki(tmp / "pki", ("site", "site"))
    for name in ("CP3", "CP3B", "CPREV", "CPSIM3"):
        pki.issue(ca, name, "device")                # CN = the charge point id
    other = tmp / "other-pki"
    pki.init(other)
    pki.issue(other, "CP3", "device")                # the right name, the wrong CA
    for name in ("cp2", "cpsim2"):
        (tmp / f"{name}.pw").write_text(PASSWORD + "\n")
        os.chmod(tmp / f"{name}.pw", 0o600)
    ports = {k: free_port() for k in ("admin", "http", "ocpp3", "ocpp2")}
    ders = "".join([charger("ev3", "CP3", "ocpp3"), charger("ev3b", "CP3B", "ocpp3"),
                    charger("evrev", "CPREV", "ocpp3"), charger("evsim3", "CPSIM3", "ocpp3"),
                    charger("ev2", "CP2", "ocpp2"), charger("evsim2", "CPSIM2", "ocpp2")])
    path = tmp / "site.toml"
    path.write_text(TOPOLOGY.format(state=tmp / "state", pki=ca, refresh=REFRESH_S, tmp=tmp, ders=ders, **ports))
    s = Site(path, tmp / "state")
    s.ports, s.ca, s.other, s.tmp = ports, ca, other, tmp
    with running(s, leftovers=True):
        yield s


@pytest.fixture(scope="module")
def http(site):
    with httpx.Client(base_url=f"http://127.0.0.1:{site.ports['http']}", timeout=15) as client:
        yield client


def context(site, name: str | None = None, folder: Path | None = None) -> ssl.SSLContext:
    """A charger's client context: the site's CA trusted, `name`'s certificate offered."""
    ctx = ssl.create_default_context(cafile=str(site.ca / "ca.crt"))
    if name:
        folder = folder or site.ca
        ctx.load_cert_chain(str(folder / f"{name}.crt"), str(folder / f"{name}.key"))
    return ctx


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- a charge point in raw OCPP 1.6J frames -------------------------------------------------------------------
class RawCharger:
    """One charge point on its own event loop thread, speaking OCPP-J frames itself:
    `[2, id, action, payload]` out, `[3, id, payload]` back; every CALL of the site is kept
    and answered `{"status": "Accepted"}`."""

    def __init__(self, port: int, cp_id: str, ctx: ssl.SSLContext | None = None, headers: dict | None = None,
                 scheme: str = "wss") -> None:
        self.url = f"{scheme}://127.0.0.1:{port}/ocpp/{cp_id}"
        self.cp_id, self.ctx, self.headers = cp_id, ctx, headers
        self.calls: list[tuple[float, list]] = []      # (arrival time.time(), the CALL frame)
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.lock = threading.Lock()
        self.pending: dict[str, asyncio.Future] = {}
        self.ids = iter(range(1, 1_000_000))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ws = None

    def run(self, coro, timeout: float = 15.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connect(self) -> "RawCharger":
        async def go():
            kw = {"ssl": self.ctx} if self.ctx is not None else {}
            self.ws = await connect(self.url, subprotocols=["ocpp1.6"], additional_headers=self.headers,
                                    open_timeout=10, **kw)
            assert self.ws.subprotocol == "ocpp1.6"
            asyncio.ensure_future(self._read())
        self.run(go())
        return self

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                frame = json.loads(text)
                if frame[0] == 2:
                    with self.lock:
                        self.calls.append((time.time(), frame))
                    await self.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
                elif frame[0] in (3, 4) and frame[1] in self.pending:
                    self.pending.pop(frame[1]).set_result(frame)
        except websockets.ConnectionClosed:
            pass
        self.closed_at = time.monotonic()
        self.close_code = self.ws.close_code

    def call(self, action: str, payload: dict) -> list:
        async def go():
            uid = str(next(self.ids))
            self.pending[uid] = self.loop.create_future()
            await self.ws.send(json.dumps([2, uid, action, payload]))
            return await asyncio.wait_for(self.pending[uid], 10)
        return self.run(go())

    def boot(self) -> dict:
        frame = self.call("BootNotification", {"chargePointVendor": "pytest", "chargePointModel": "raw-frames"})
        assert frame[0] == 3, frame
        return frame[2]

    def wait_call(self, predicate, timeout: float = 10.0) -> tuple[float, list]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [c for c in self.calls if predicate(c[1])]
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"{self.cp_id}: no matching CALL in {timeout} s; got {self.calls}")

    def close(self) -> None:
        async def go():
            if self.ws is not None:
                await self.ws.close()
        try:
            self.run(go())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


def refused(port: int, cp_id: str, **kw) -> Exception:
    """The charger gets no websocket: the exception its connect raised."""
    cp = RawCharger(port, cp_id, **kw)
    try:
        cp.connect()
    except Exception as exc:  # noqa: BLE001 - whatever the refusal looked like
        return exc
    finally:
        cp.close()
    raise AssertionError(f"{cp_id} was let in at {cp.url}")


def status_code(exc: Exception) -> int | None:
    return exc.response.status_code if isinstance(exc, websockets.InvalidStatus) else None


def booted(site, port: str, cp_id: str, **kw) -> RawCharger:
    cp = RawCharger(site.ports[port], cp_id, **kw).connect()
    answer = cp.boot()
    assert answer["status"] == "Accepted" and answer["interval"] == 60, answer
    return cp


def detail(site, lan: str) -> dict:
    return site.node(lan)["detail"]


# -- `relevent check` ------------------------------------------------------------------------------------------
def check_site(lan: str, tls: str = "", ders: str = charger("ev1", "CP1", "chargers")) -> str:
    return f"""[site]
name = "s"
state_dir = "/tmp/s"
{tls}
[[lan]]
name = "chargers"
protocol = "ocpp"
{lan}
{ders}"""


def problems(text: str) -> str:
    with pytest.raises(TopologyError) as err:
        parse_topology(text, "site.toml", env={})
    return str(err.value)


def test_check_refuses_a_profile_the_site_cannot_serve(tmp_path):
    folder = tmp_path / "pki"
    pki.init(folder)
    pki.issue(folder, "site", "site", ips=("127.0.0.1",))
    cert_key = f'[tls]\ncert = "{folder}/site.crt"\nkey = "{folder}/site.key"\n'
    pw = tmp_path / "cp1.pw"
    pw.write_text(PASSWORD + "\n")

    text = problems(check_site("security_profile = 2"))
    assert "lan[0].security_profile: security_profile = 2 serves wss:// with the site's certificate: set [tls] " \
           "cert and key" in text
    assert "lan[0].password_files: charger 'ev1' (charge point 'CP1') has no password: security_profile = 2 " \
           "checks every charger's password: add ev1 = \"FILE\" to password_files" in text
    text = problems(check_site("security_profile = 3", cert_key))
    assert "lan[0].security_profile: security_profile = 3 verifies every charger's certificate: set [tls] ca" in text
    assert "cert and key" not in text
    text = problems(check_site(f'security_profile = 2\npassword_files = {{ ev1 = "{tmp_path}/missing.pw" }}',
                               cert_key))
    assert f"lan[0].password_files: ev1: cannot read {tmp_path}/missing.pw" in text
    text = problems(check_site(f'security_profile = 2\npassword_files = {{ ev9 = "{pw}" }}', cert_key))
    assert "lan[0].password_files: 'ev9' is not a charger of this endpoint (its DERs: ev1)" in text
    text = problems(check_site("tls = true"))
    assert "lan[0].tls: tls = true but security_profile = 0 (no check): OCPP over TLS is security_profile = 2" in text
    text = problems(check_site('address = "0.0.0.0"'))
    assert ("lan[0].security_profile: endpoint 'chargers' serves ocpp in plain text on 0.0.0.0:9000: set "
            "security_profile = 2 or 3 (and [tls] cert and key), listen on loopback, or write insecure = true on "
            "this endpoint") in text
    text = problems(check_site(f'address = "0.0.0.0"\nsecurity_profile = 1\npassword_files = {{ ev1 = "{pw}" }}'))
    assert "plain text on 0.0.0.0:9000 (the chargers' passwords in clear)" in text

    # What passes: each profile with what it needs; plain ws on loopback or with insecure.
    short = tmp_path / "short.pw"
    short.write_text("short\n")
    ok = parse_topology(check_site(f'security_profile = 2\npassword_files = {{ ev1 = "{short}" }}', cert_key),
                        "site.toml", env={})
    assert ok.data["lan"][0]["tls"] is True and ok.data["lan"][0]["tls_policy"]["cert"] == f"{folder}/site.crt"
    assert any("OCPP asks for at least 16" in str(w) for w in ok.warnings)
    assert parse_topology(check_site("security_profile = 3", cert_key + f'ca = "{folder}/ca.crt"\n'),
                          "site.toml", env={}).data["lan"][0]["tls"] is True
    assert parse_topology(check_site('address = "0.0.0.0"\ninsecure = true'), "site.toml", env={})
    plain = parse_topology(check_site(f'security_profile = 1\npassword_files = {{ ev1 = "{pw}" }}'),
                           "site.toml", env={})
    assert plain.data["lan"][0]["tls"] is False and "tls_policy" not in plain.data["lan"][0]

    path = tmp_path / "site.toml"
    path.write_text(check_site("security_profile = 3"))
    res = relevent("check", str(path))
    assert res.returncode == 1, res.stdout
    assert "lan[0].security_profile: security_profile = 3 serves wss://" in res.stderr
    assert "lan[0].security_profile: security_profile = 3 verifies every charger's certificate" in res.stderr


# -- profile 3: TLS with client certificates -------------------------------------------------------------------
def test_profile_3_a_charger_whose_certificate_names_its_id_boots_and_gets_its_profile(site):
    cp = booted(site, "ocpp3", "CP3", ctx=context(site, "CP3"))
    try:
        _, frame = cp.wait_call(lambda f: f[2] == "SetChargingProfile")
        assert limit_of(frame[3]) == 11000.0        # the DER's reserve: no schedule yet
        node = site.wait_for("ocpp3", lambda n: n["detail"]["devices"]["ev3"]["link"] == "up"
                             and n["detail"]["devices"]["ev3"]["profile_status"] == "Accepted"
                             and n["detail"]["tls"]["sessions"] >= 1)
        d = node["detail"]
        assert d["serving"].startswith("wss://127.0.0.1:") and d["security_profile"] == 3
        assert d["tls"]["client_cert"] == "require" and d["tls"]["errors"] == []
        assert "wss://, client certificate" in d["devices"]["ev3"]["link_detail"]
    finally:
        cp.close()


def test_profile_3_refuses_another_chargers_certificate_none_and_another_cas(site):
    port = site.ports["ocpp3"]
    exc = refused(port, "CP3", ctx=context(site, "CP3B"))    # a valid certificate, of another charger
    assert status_code(exc) == 403, exc
    node = site.wait_for("ocpp3", lambda n: "'CP3B', not 'CP3'" in n["detail"]["tls"]["last_refusal"])
    assert "its certificate names 'CP3B', not 'CP3'" in node["detail"]["last_refused"]
    assert node["detail"]["tls"]["refused"] >= 1
    # Refused by the TLS handshake: no HTTP answer at all.
    for kw in ({"ctx": context(site)}, {"ctx": context(site, "CP3", site.other)}):
        exc = refused(port, "CP3", **kw)
        assert status_code(exc) is None, exc
    # The same charger with its own certificate is still welcome.
    cp = booted(site, "ocpp3", "CP3B", ctx=context(site, "CP3B"))
    cp.close()


def test_profile_3_revoking_a_charger_closes_its_websocket_and_refuses_its_next(site):
    cp = booted(site, "ocpp3", "CPREV", ctx=context(site, "CPREV"))
    try:
        site.wait_for("ocpp3", lambda n: n["detail"]["devices"]["evrev"]["link"] == "up")
        res = relevent("pki", "revoke", str(site.ca), "CPREV")
        assert res.returncode == 0, res.stderr
        revoked_at = time.monotonic()
        deadline = revoked_at + REFRESH_S + 5
        while cp.closed_at is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cp.closed_at is not None, "still open"
        took = cp.closed_at - revoked_at
        assert took <= REFRESH_S + 1.0 and cp.close_code == 1008, (took, cp.close_code)
    finally:
        cp.close()
    exc = refused(site.ports["ocpp3"], "CPREV", ctx=context(site, "CPREV"))   # OpenSSL's CRL check
    assert status_code(exc) is None, exc
    node = site.wait_for("ocpp3", lambda n: n["detail"]["tls"]["closed"] >= 1
                         and n["detail"]["devices"]["evrev"]["link"] == "down")
    tls = node["detail"]["tls"]
    assert "revoked" in tls["last_refusal"] and "CPREV" in tls["last_refusal"], tls
    assert tls["crls"][0]["revoked"] == 1
    assert "1008" in node["detail"]["devices"]["evrev"]["link_detail"]


def test_profile_3_a_schedule_reaches_the_charger_as_a_set_charging_profile(site, http):
    cp = booted(site, "ocpp3", "CP3", ctx=context(site, "CP3"))
    try:
        start = (now_ms() // 1000 + 2) * 1000
        limit_from(start, http, "ev3", [4200.0])
        arrived, frame = cp.wait_call(lambda f: f[2] == "SetChargingProfile" and limit_of(f[3]) == 4200.0)
        assert start / 1000 - 0.5 <= arrived < start / 1000 + 3.0
        profile = frame[3]["csChargingProfiles"]
        assert frame[3]["connectorId"] == 0 and profile["chargingProfilePurpose"] == "ChargePointMaxProfile"
        assert profile["chargingSchedule"]["chargingRateUnit"] == "W"
        site.wait_for("ocpp3", lambda n: n["detail"]["devices"]["ev3"]["profile"]["limit"] == 4200.0
                      and n["detail"]["devices"]["ev3"]["profile_status"] == "Accepted")
    finally:
        cp.close()


# -- profile 2: TLS and Basic auth ------------------------------------------------------------------------------
def test_profile_2_the_right_password_boots_and_others_get_401(site):
    port, ctx = site.ports["ocpp2"], lambda: context(site)
    cp = booted(site, "ocpp2", "CP2", ctx=ctx(), headers=basic("CP2", PASSWORD))
    try:
        site.wait_for("ocpp2", lambda n: n["detail"]["devices"]["ev2"]["link"] == "up")
    finally:
        cp.close()
    for headers, why in ((basic("CP2", PASSWORD + "x"), "wrong user or password"),
                         (None, "no Authorization header"),
                         (basic("CPSIM2", PASSWORD), "user 'CPSIM2' is not the charge point id"),
                         ({"Authorization": "Bearer " + PASSWORD}, "not Basic")):
        exc = refused(port, "CP2", ctx=ctx(), headers=headers)
        assert status_code(exc) == 401, exc
        assert exc.response.headers["WWW-Authenticate"].startswith("Basic realm=")
        site.wait_for("ocpp2", lambda n: why in n["detail"]["last_refused"])
    d = detail(site, "ocpp2")
    assert d["serving"].startswith("wss://") and d["security_profile"] == 2 and d["tls"]["client_cert"] == "none"
    assert d["refused"] >= 4
    # An unknown charge point id is still a 404, whatever its credentials.
    assert status_code(refused(port, "CP404", ctx=ctx(), headers=basic("CP404", PASSWORD))) == 404


def test_plain_ws_on_the_tls_ports_gets_no_websocket(site):
    for lan, headers in (("ocpp2", basic("CP2", PASSWORD)), ("ocpp3", None)):
        exc = refused(site.ports[lan], "CP2" if lan == "ocpp2" else "CP3", scheme="ws", headers=headers)
        assert status_code(exc) is None, exc


# -- the site's own simulator on both profiles -------------------------------------------------------------------
@pytest.mark.parametrize("lan, der", [("ocpp3", "evsim3"), ("ocpp2", "evsim2")])
def test_the_simulator_connects_with_its_certificate_or_its_password(site, lan, der):
    node = site.wait_for(lan, lambda n: n["detail"]["devices"][der]["link"] == "up"
                         and n["detail"]["devices"][der]["profile_status"] == "Accepted"
                         and n["detail"]["devices"][der]["meter_w"] is not None, timeout=20)
    dev = node["detail"]["devices"][der]
    assert dev["boots"] >= 1 and dev["meter_w"] < 0            # drawing: negative for the DER
    sim = site.node("sim3" if lan == "ocpp3" else "sim2")["detail"]
    assert sim["connected"] and sim["tls"] and sim["last_error"] == ""
