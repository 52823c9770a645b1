"""CRLs fetched from URLs (`[tls] crl = ["http://..."]`, docs/tls.md "CRL URLs"): the pure
decisions of relevent/security/crl_fetch.py (when a URL is fetched next, whether a download
replaces the cached copy), one fetch against a loopback `http.server` (and an https one),
`relevent check`'s rules for URL entries, `SiteTls` failing closed before the first fetch;
then a running site whose HTTPS endpoint asks for client certificates and whose CRL is
served by a plain HTTP server the test controls: a party gets in once the CRL is fetched,
is refused (its keep-alive connection closed) soon after its revocation is served, a
served file that is not a newer CRL of our CA changes nothing, and with the server down
the site keeps the last good CRL and says the fetch failed."""
from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import ssl
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sitectl import Site, free_port, make_pki, running, walk
from sitectl import relevent_cli as relevent
from test_tls_http import TOPOLOGY, client, http_get, refused, tls_socket

from relevent.observe import extract
from relevent.security import pki
from relevent.security.crl_fetch import (
    MIN_AT_NEXT_UPDATE_S, RETRY_FIRST_S, CrlFacts, FetchError, cache_name, download, is_url, replaces,
    seconds_until_fetch, update, url_problem,
)
from relevent.security.tls import AWAIT_FETCH_S, SiteTls, policy_problems
from relevent.topology import TopologyError, parse_topology

REFRESH_S = 1.0
T0 = 1_800_000_000.0


def facts(number: int | None = 1, last: float = T0, digest: str = "a", issuer: str = "CN=ca",
          next_update: float | None = T0 + 86400) -> CrlFacts:
    return CrlFacts(issuer, number, last, next_update, digest)


# -- when to fetch (pure) ------------------------------------------------------------------------------
def test_a_url_never_fetched_is_fetched_at_once():
    assert seconds_until_fetch(T0, None, 300.0) == 0.0
    assert seconds_until_fetch(T0, None, 300.0, failures=5, next_update=T0 - 1) == 0.0


def test_a_url_is_fetched_again_one_refresh_interval_after_the_last_fetch():
    assert seconds_until_fetch(T0, T0, 300.0) == 300.0
    assert seconds_until_fetch(T0 + 100, T0, 300.0) == 200.0
    assert seconds_until_fetch(T0 + 301, T0, 300.0) == 0.0


def test_after_failed_fetches_it_retries_sooner_doubling_but_never_later_than_the_interval():
    waits = [seconds_until_fetch(T0, T0, 300.0, failures=n) for n in range(1, 10)]
    assert waits[:4] == [RETRY_FIRST_S, 2 * RETRY_FIRST_S, 4 * RETRY_FIRST_S, 8 * RETRY_FIRST_S]
    assert max(waits) == 300.0 and waits == sorted(waits)
    assert seconds_until_fetch(T0, T0, 1.0, failures=1) == 1.0       # a short interval caps the retry too


def test_a_crl_whose_next_update_comes_first_is_fetched_then_but_a_stale_one_is_not_hammered():
    assert seconds_until_fetch(T0, T0, 3600.0, next_update=T0 + 600) == 600.0
    assert seconds_until_fetch(T0, T0, 3600.0, next_update=T0 + 7200) == 3600.0
    # Already past its next update (the server still serves the stale CRL): once a minute.
    assert seconds_until_fetch(T0, T0, 3600.0, next_update=T0 - 10) == MIN_AT_NEXT_UPDATE_S
    assert seconds_until_fetch(T0, T0, 5.0, next_update=T0 - 10) == 5.0


def test_a_clock_stepped_back_never_makes_the_wait_longer_than_the_interval():
    assert seconds_until_fetch(T0 - 3600, T0, 300.0) == 300.0
    assert seconds_until_fetch(T0 - 3600, T0, 300.0, failures=1) == RETRY_FIRST_S


# -- whether a download replaces the cache (pure) ----------------------------------------------------------
def test_with_nothing_cached_any_verified_crl_replaces_the_cache():
    assert replaces(facts(), None) == (True, "no CRL cached yet")


def test_a_higher_crl_number_replaces_the_cache_and_a_lower_one_never_does():
    assert replaces(facts(5, digest="new"), facts(4))[0]
    keep, why = replaces(facts(3, last=T0 + 60, digest="replayed"), facts(4))
    assert not keep and "older" in why and "3 < 4" in why        # even with a later lastUpdate


def test_without_crl_numbers_the_later_last_update_wins():
    assert replaces(facts(None, T0 + 1, "new"), facts(None, T0))[0]
    keep, why = replaces(facts(None, T0 - 1, "old"), facts(None, T0))
    assert not keep and "lastUpdate" in why
    assert replaces(facts(4, T0 + 1, "new"), facts(4, T0))[0]     # equal numbers: the lastUpdate decides


def test_the_same_crl_again_is_unchanged_and_a_different_one_claiming_the_same_number_and_time_is_refused():
    assert replaces(facts(4, digest="same"), facts(4, digest="same")) == (False, "unchanged")
    keep, why = replaces(facts(4, digest="other"), facts(4, digest="same"))
    assert not keep and "same crlNumber and lastUpdate" in why


def test_a_crl_of_another_issuer_in_the_bundle_replaces_the_cache():
    keep, why = replaces(facts(1, issuer="CN=new ca", digest="b"), facts(9, issuer="CN=old ca"))
    assert keep and "CN=new ca" in why


# -- URL entries: names, `relevent check`, the loader ---------------------------------------------------------
def test_a_url_entry_is_http_or_https_with_a_host_and_a_relative_path_stays_a_file():
    assert is_url("http://crl.example/ca.crl") and is_url("HTTPS://crl.example/ca.crl")
    assert not is_url("crl.pem") and not is_url("pki/http.crl") and not is_url("/etc/crl.pem")
    assert url_problem("http://crl.example/ca.crl") is None and url_problem("https://10.0.0.1:8443/c") is None
    assert "http:// or https://" in url_problem("ftp://crl.example/ca.crl")
    assert "names no host" in url_problem("http:///ca.crl")
    assert "no user or password" in url_problem("https://u:secret@crl.example/ca.crl")
    assert "not a valid URL" in url_problem("http://crl.example:99999/ca.crl")


def test_cache_names_are_stable_readable_and_distinct_per_url():
    a = cache_name("http://crl.example/ca.crl")
    assert a == cache_name("http://crl.example/ca.crl") and a.startswith("crl.example-") and a.endswith(".crl")
    assert a != cache_name("http://crl.example/ca2.crl") != cache_name("https://crl.example/ca.crl")
    assert "/" not in cache_name("http://[::1]:8080/x/../y.crl")


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crl-pki") / "pki"
    pki.init(folder)
    pki.issue(folder, "site", "site", ips=("127.0.0.1",))
    pki.issue(folder, "dso", "party")
    return folder


def test_relevent_check_validates_url_entries_and_keeps_files_as_files(ca, tmp_path, monkeypatch):
    section = {"cert": str(ca / "site.crt"), "key": str(ca / "site.key"), "ca": str(ca / "ca.crt"),
               "crl": ["http://127.0.0.1:9/ca.crl", "ftp://x/ca.crl", "https://u:p@x/c.crl", "missing.pem"]}
    problems = {key: (message, error) for key, message, error in policy_problems(section)}
    assert ("crl", 0) not in problems                       # a good URL, not fetched yet: nothing to say
    assert problems[("crl", 1)][1] and "http:// or https://" in problems[("crl", 1)][0]
    assert problems[("crl", 2)][1] and "no user or password" in problems[("crl", 2)][0]
    assert problems[("crl", 3)] == ("cannot read CRL missing.pem: no such file", True)
    # Through the loader: the URL stays a URL, a relative file is made absolute, the copies live in STATE_DIR.
    monkeypatch.chdir(tmp_path)
    shutil.copy(ca / "crl.pem", tmp_path / "local.pem")
    text = (f'[site]\nname = "s"\nstate_dir = "state"\n[tls]\nca = "{ca / "ca.crt"}"\n'
            f'crl = ["http://127.0.0.1:9/ca.crl", "local.pem"]\n')
    tls = parse_topology(text, "site.toml", env={}).data["tls"]
    assert tls["crl"] == ["http://127.0.0.1:9/ca.crl", str(tmp_path / "local.pem")]
    assert tls["crl_cache_dir"] == str(tmp_path / "state" / "tls" / "crl")
    with pytest.raises(TopologyError) as err:
        parse_topology(text.replace("http://127.0.0.1:9/ca.crl", "gopher://127.0.0.1/ca.crl"), "site.toml", env={})
    assert "tls.crl[0]: 'gopher://127.0.0.1/ca.crl': a CRL is fetched over http:// or https:// only" in str(err.value)


def test_relevent_check_warns_of_an_expired_cached_copy_of_a_url(ca, tmp_path):
    url = "http://127.0.0.1:9/ca.crl"
    folder = tmp_path / "cache"
    folder.mkdir()
    shutil.copy(ca / "crl.pem", folder / cache_name(url))
    section = {"ca": str(ca / "ca.crt"), "crl": [url], "crl_cache_dir": str(folder)}
    assert policy_problems(section) == []
    later = datetime.now(timezone.utc) + timedelta(days=400)
    [(key, message, error)] = policy_problems(section, now=later)
    assert key == ("crl", 0) and not error and message.startswith(f"CRL {url} expired at")


# -- SiteTls: a URL entry read from its cached copy -----------------------------------------------------------
def test_before_the_first_fetch_peers_are_refused_with_a_reason_naming_the_url(ca, tmp_path):
    url = "http://127.0.0.1:9/ca.crl"
    tls = SiteTls({"cert": str(ca / "site.crt"), "key": str(ca / "site.key"), "ca": str(ca / "ca.crt"),
                   "crl": [url], "crl_refresh_s": 300, "crl_cache_dir": str(tmp_path)})
    dso = x509.load_pem_x509_certificate((ca / "dso.crt").read_bytes()).public_bytes(serialization.Encoding.DER)
    problem = tls.peer_problem(dso)
    assert problem.startswith(f"CRL {url}: not fetched yet") and str(tmp_path / cache_name(url)) in problem
    assert tls.status()["errors"] == [problem]
    assert tls.refresh_s == AWAIT_FETCH_S            # the endpoints look again every second meanwhile
    shutil.copy(ca / "crl.pem", tmp_path / cache_name(url))   # what the fetcher writes
    assert tls.refresh() == [str(tmp_path / cache_name(url))]
    assert tls.peer_problem(dso) is None and tls.status()["errors"] == [] and tls.refresh_s == 300.0
    [entry] = tls.status()["crls"]
    assert entry["url"] == url and entry["file"] == str(tmp_path / cache_name(url))
    (tmp_path / cache_name(url)).unlink()                    # the copy gone later: the last one read stays
    tls.refresh()
    assert tls.peer_problem(dso) is None and "stays in force" in tls.status()["errors"][0]


def test_the_next_update_metric_names_a_fetched_crl_by_its_url():
    tree = {"path": "", "name": "site", "children": [
        {"path": "https", "name": "https", "detail": {"tls": {"crls": [
            {"file": "/state/tls/crl/x.crl", "url": "http://crl.example/ca.crl", "next_update": "2027-01-01T00:00:00Z"},
            {"file": "/pki/crl.pem", "next_update": "2027-01-02T00:00:00Z"}]}}}]}
    assert extract.crls(tree) == {("https", "http://crl.example/ca.crl"): 1798761600.0,
                                  ("https", "/pki/crl.pem"): 1798848000.0}


# -- one fetch, against a loopback server -------------------------------------------------------------------------
class Served:
    """A plain `http.server` on loopback serving the files of a folder the test controls
    (optionally over TLS); `put` replaces a served file atomically."""

    def __init__(self, folder: Path, port: int | None = None, context: ssl.SSLContext | None = None) -> None:
        self.folder, self.port, self.context = folder, port or free_port(), context
        self.server: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def url(self, name: str = "ca.crl") -> str:
        return f"{'https' if self.context else 'http'}://127.0.0.1:{self.port}/{name}"

    def put(self, data: bytes, name: str = "ca.crl") -> None:
        tmp = self.folder / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.folder / name)

    def start(self) -> "Served":
        folder = str(self.folder)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=folder, **kwargs)

            def log_message(self, *args):   # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.context is not None:
            self.server.socket = self.context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)
            self.server = None


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path / "www").start()
    yield s
    s.stop()


def test_a_fetched_crl_of_our_ca_is_cached_and_the_same_one_again_is_unchanged(ca, tmp_path, served):
    served.put((ca / "crl.pem").read_bytes())
    cache = tmp_path / "cache" / "ca.crl"
    first = update(served.url(), str(cache), str(ca / "ca.crt"))
    assert first.ok and first.result == "replaced" and cache.read_bytes() == (ca / "crl.pem").read_bytes()
    assert first.cached.number == x509.load_pem_x509_crl(cache.read_bytes()).extensions.get_extension_for_class(
        x509.CRLNumber).value.crl_number
    again = update(served.url(), str(cache), str(ca / "ca.crt"))
    assert again.ok and again.result == "unchanged" and again.cached == first.cached
    assert not list(cache.parent.glob(".*.tmp"))            # written atomically: no temporary file left


def test_garbage_another_cas_crl_or_an_older_crl_does_not_replace_the_cache(ca, tmp_path, served):
    cache = tmp_path / "cache" / "ca.crl"
    old = (ca / "crl.pem").read_bytes()
    newer = pki.write_crl(ca).read_bytes()
    served.put(newer)
    assert update(served.url(), str(cache), str(ca / "ca.crt")).result == "replaced"
    impostor = tmp_path / "impostor"            # another key under our CA's very name
    pki.init(impostor, name=x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes()).subject.get_attributes_for_oid(
        x509.NameOID.COMMON_NAME)[0].value)
    stranger = tmp_path / "stranger"
    pki.init(stranger)
    for data, why in ((b"<html>not found</html>", "not a CRL"),
                      ((impostor / "crl.pem").read_bytes(), "signature does not verify"),
                      ((stranger / "crl.pem").read_bytes(), "not in the CA bundle"),
                      (old, "older than the cached CRL")):
        served.put(data)
        outcome = update(served.url(), str(cache), str(ca / "ca.crt"))
        assert not outcome.ok and outcome.result == "kept" and why in outcome.reason, outcome
        assert cache.read_bytes() == newer


def test_a_failed_fetch_keeps_the_cache_and_says_why(ca, tmp_path, served):
    cache = tmp_path / "cache" / "ca.crl"
    served.put((ca / "crl.pem").read_bytes())
    good = update(served.url(), str(cache), str(ca / "ca.crt"))
    missing = update(served.url("gone.crl"), str(cache), str(ca / "ca.crt"))
    assert not missing.ok and missing.result == "failed" and missing.reason == "HTTP 404 File not found"
    assert missing.cached == good.cached and cache.read_bytes() == (ca / "crl.pem").read_bytes()
    served.stop()
    down = update(served.url(), str(cache), str(ca / "ca.crt"))
    assert not down.ok and down.result == "failed" and "ConnectionRefusedError" in down.reason, down


def test_a_download_is_bounded_in_size_and_in_time(ca, served):
    served.put(b"x" * 5000)
    with pytest.raises(FetchError, match="more than 4096"):
        download(served.url(), max_bytes=4096)
    # A server that sends its headers, then one byte every 0.1 s: the whole download is timed.
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def dribble() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while not stop.is_set():
                try:
                    conn.sendall(b"x")
                except OSError:
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(FetchError, match="longer than 1 s"):
            download(f"http://127.0.0.1:{listener.getsockname()[1]}/ca.crl", timeout_s=1.0)
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_an_https_distribution_point_is_verified_against_the_ca(ca, tmp_path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(ca / "site.crt"), str(ca / "site.key"))
    s = Served(tmp_path / "www", context=ctx).start()
    try:
        s.put((ca / "crl.pem").read_bytes())
        assert download(s.url(), str(ca / "ca.crt")) == (ca / "crl.pem").read_bytes()
        other = tmp_path / "other"
        pki.init(other)
        with pytest.raises(FetchError, match="certificate does not verify"):
            download(s.url(), str(other / "ca.crt"))
    finally:
        s.stop()


# -- a running site ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The HTTPS site of tests/test_tls_http.py, its `[tls] crl` a URL of a loopback HTTP
    server; the server is not started yet (the first test starts it)."""
    tmp = tmp_path_factory.mktemp("tls-crl-url")
    ca = make_pki(tmp / "pki", ("site", "site"), ("aggregator", "party"), ("customer", "party"), ("victim", "party"))
    served = Served(tmp / "www")
    served.put((ca / "crl.pem").read_bytes())
    ports = {"https": free_port(), "optional": free_port()}
    path = tmp / "site.toml"
    topology = TOPOLOGY.replace('crl = ["{pki}/crl.pem"]', 'crl = ["{crl_url}"]')
    assert topology != TOPOLOGY
    path.write_text(topology.format(admin=free_port(), state=tmp / "state", pki=ca, refresh=REFRESH_S,
                                    crl_url=served.url(), **ports))
    s = Site(path, tmp / "state")
    s.ports, s.ca, s.served, s.tmp = ports, ca, served, tmp
    s.cache = tmp / "state" / "tls" / "crl" / cache_name(served.url())
    try:
        with running(s, leftovers=True):
            yield s
    finally:
        served.stop()


def wait(what: str, condition, timeout: float = 10.0):
    """Poll `condition` until it returns something true; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def answered(site, name: str) -> bool:
    try:
        with client(site, name) as c:
            return c.get("/ders").status_code == 200
    except (httpx.TransportError, ssl.SSLError, OSError):
        return False


def fetcher(site) -> dict:
    [entry] = site.node("crl")["detail"]["crls"]
    return entry


def test_the_site_refuses_peers_until_the_first_fetch_then_lets_a_party_in(site):
    url = site.served.url()
    node = site.wait_for("https", lambda n: any("not fetched yet" in e for e in n["detail"]["tls"]["errors"]))
    assert node["detail"]["tls"]["errors"][0].startswith(f"CRL {url}: not fetched yet")
    assert refused(site, "aggregator")
    assert not site.cache.exists()
    assert site.wait_for("crl", lambda n: n["detail"]["crls"][0]["result"] == "failed")["state"] == "running"
    site.served.start()
    wait("the party is served once the CRL is fetched", lambda: answered(site, "aggregator"))
    entry = site.wait_for("crl", lambda n: n["detail"]["crls"][0]["result"] in ("replaced", "unchanged"))
    entry = entry["detail"]["crls"][0]
    assert entry["url"] == url and entry["file"] == str(site.cache) and entry["next_update"]
    assert site.cache.read_bytes() == (site.ca / "crl.pem").read_bytes()
    tls = site.wait_for("https", lambda n: n["detail"]["tls"]["errors"] == [])["detail"]["tls"]
    assert [c["url"] for c in tls["crls"]] == [url] and tls["crls"][0]["file"] == str(site.cache)


def test_a_revoked_party_is_refused_soon_after_its_revocation_is_served(site):
    wait("the victim is served", lambda: answered(site, "victim"))
    sock = tls_socket(site, "victim")
    status, body = http_get(sock, "/api/v1/ders")
    assert status == 200 and json.loads(body)
    site.wait_for("https", lambda n: n["detail"]["tls"]["sessions"] >= 1)
    res = relevent("pki", "revoke", str(site.ca), "victim")
    assert res.returncode == 0, res.stderr
    site.served.put((site.ca / "crl.pem").read_bytes())
    served_at = time.monotonic()
    # At most one fetch interval until the fetcher has it, and one until the endpoint re-reads it.
    limit = 2 * REFRESH_S + 1.5
    sock.settimeout(limit + 5)
    try:
        closed = sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        closed = True
    took = time.monotonic() - served_at
    sock.close()
    assert closed and took <= limit, f"closed={closed} after {took:.2f} s"
    assert refused(site, "victim")
    assert site.cache.read_bytes() == (site.ca / "crl.pem").read_bytes()
    tls = site.wait_for("https", lambda n: n["detail"]["tls"]["closed"] >= 1)["detail"]["tls"]
    assert "revoked" in tls["last_refusal"] and tls["crls"][0]["revoked"] == 1, tls
    assert answered(site, "aggregator")                  # the others carry on


def test_a_served_file_that_is_not_a_newer_crl_of_our_ca_does_not_replace_the_cache(site):
    good = site.cache.read_bytes()
    impostor = site.tmp / "impostor"
    ca_name = x509.load_pem_x509_certificate((site.ca / "ca.crt").read_bytes()).subject.get_attributes_for_oid(
        x509.NameOID.COMMON_NAME)[0].value
    pki.init(impostor, name=ca_name)              # another key under our CA's name: its CRL lists nobody
    for data, why in ((b"\x00garbage\xff" * 10, "not a CRL"),
                      ((impostor / "crl.pem").read_bytes(), "signature does not verify"),
                      (replayed_without_revocations(site.ca), "older than the cached CRL")):
        fetches = fetcher(site)["fetches"]
        site.served.put(data)
        entry = wait(f"the fetcher has seen {why!r}",
                     lambda: (e := fetcher(site))["fetches"] > fetches + 1 and why in (e.get("last_error") or "")
                     and e)
        assert entry["result"] == "kept" and site.cache.read_bytes() == good, entry
        assert refused(site, "victim") and answered(site, "aggregator")
    site.served.put(good)
    wait("the fetch succeeds again", lambda: fetcher(site)["result"] == "unchanged")


def replayed_without_revocations(folder: Path) -> bytes:
    """A CRL of our CA, properly signed, listing nobody and numbered lower than the
    current one: what an attacker replaying an old CRL would serve."""
    from cryptography.hazmat.primitives import hashes

    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    now = datetime.now(timezone.utc)
    return (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
            .last_update(now).next_update(now + timedelta(days=30))
            .add_extension(x509.CRLNumber(1), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def test_with_the_distribution_point_down_the_site_keeps_the_last_good_crl_and_says_so(site):
    good = site.cache.read_bytes()
    site.served.stop()
    entry = wait("the fetch fails", lambda: (e := fetcher(site))["result"] == "failed" and e)
    assert entry["failures"] >= 1 and "ConnectionRefusedError" in entry["last_error"] and entry["next_update"]
    res = site.cli("status", str(site.topology), "--json")
    assert res.returncode == 0, res.stderr
    [crl] = [n for n in walk(json.loads(res.stdout)["tree"]) if n["name"] == "crl"]
    [shown] = crl["detail"]["crls"]
    assert shown["result"] == "failed" and "ConnectionRefusedError" in shown["last_error"], shown
    assert shown["url"] == site.served.url() and shown["last_success"] and shown["next_update"]
    assert site.cache.read_bytes() == good
    assert answered(site, "aggregator") and refused(site, "victim")     # the last good CRL still in force
    assert site.node("https")["detail"]["tls"]["errors"] == []


def test_the_status_table_gives_each_crl_url_its_last_result_and_failures_in_a_row():
    from relevent.cli import short_detail

    node = {"role": "crl", "detail": {"crls": [{"url": "http://ca.example/a.crl", "result": "replaced", "failures": 0},
                                               {"url": "http://ca.example/b.crl", "result": "kept", "failures": 3}]}}
    assert short_detail(node) == "http://ca.example/a.crl: replaced, http://ca.example/b.crl: kept (3 failed)"
