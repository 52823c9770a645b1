"""The site's one CRL fetcher (docs/tls.md, "CRL URLs"): the site supervisor's child "crl",
present when some `[tls] crl` entry is an http:// or https:// URL.

A thin shell: what to fetch when is `crl_fetch.seconds_until_fetch` (pure), what a download
may replace is `crl_fetch.replaces` (pure), one fetch is `crl_fetch.update`.  This actor
fetches every URL at start, then each again when due (every `crl_refresh_s`; sooner after
a failure, or at the cached CRL's nextUpdate), in a worker thread (a download may take
FETCH_TIMEOUT_S, and the actor must keep answering its supervisor's heartbeats meanwhile),
one fetch at a time, and shows per URL in `relevent status`: the last fetch and its result,
the cached CRL's nextUpdate, the error of the last failed fetch.  Its configuration is the
site's `[tls]` section (the loader adds `crl_cache_dir`).

The endpoints do not hear from it: each one's `SiteTls` re-reads the cache files every
`crl_refresh_s` (every second while a URL has no copy yet).  A failure never crashes the
actor: a restart would fetch the same URL from the same server.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from relevent.actors.base import ReleventActor
from relevent.runtime.bridge import ThreadBridge
from relevent.security import crl_fetch
from relevent.security.crl_fetch import CrlFacts, Outcome

log = logging.getLogger("relevent.tls")


@dataclass
class _Url:
    url: str
    path: str
    cached: CrlFacts | None = None
    last: Outcome | None = None         # the last fetch
    last_ok: float | None = None        # when a fetch last succeeded (replaced or unchanged)
    error: str = ""                     # the error of the last failed fetch (kept after a good one, with its time)
    error_at: float | None = None
    failures: int = 0                   # failed fetches in a row
    fetches: int = 0


class CrlActor(ReleventActor):
    role = "crl"

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[_Url] = []
        self.bridge: ThreadBridge | None = None
        self.worker: threading.Thread | None = None
        self.refresh_s = 300.0

    def on_configure(self) -> None:
        folder = self.config.get("crl_cache_dir") or crl_fetch.cache_dir(self.site["state_dir"])
        self.refresh_s = float(self.config.get("crl_refresh_s") or 300.0)
        self.urls = [_Url(url, crl_fetch.cache_path(folder, url)) for url in fetched_urls(self.config)]
        self._read_cache()
        self.bridge = ThreadBridge()
        self._plan()

    def _read_cache(self) -> None:
        """The copies a previous run fetched, for the status until the first fetch ends."""
        from relevent.security.tls import TlsError, read_cas

        try:
            cas = read_cas(self.config["ca"]) if self.config.get("ca") else []
        except TlsError:
            return      # the first fetch says so
        for u in self.urls:
            u.cached = crl_fetch.cached_facts(u.path, cas)

    def _wait(self, u: _Url, now: float) -> float:
        return crl_fetch.seconds_until_fetch(now, u.last.at if u.last else None, self.refresh_s, u.failures,
                                             u.cached.next_update if u.cached else None)

    def _plan(self) -> None:
        """Fetch what is due now, else wake up when the next one is."""
        if self.worker is not None or not self.urls:
            return
        now = time.time()
        due = [u for u in self.urls if self._wait(u, now) <= 0]
        if due:
            jobs = [(u.url, u.path) for u in due]
            self.worker = threading.Thread(target=self._fetch, args=(jobs,), name="crl-fetch", daemon=True)
            self.worker.start()
        else:
            self.wakeupAfter(max(0.05, min(self._wait(u, now) for u in self.urls)), "crl-fetch")

    def _fetch(self, jobs: list[tuple[str, str]]) -> None:
        """Worker thread: each due URL once; every outcome goes back through the bridge."""
        ca, version = self.config.get("ca") or "", self.config.get("min_version") or "1.2"
        for url, path in jobs:
            try:
                self.bridge.post(crl_fetch.update(url, path, ca, version))
            except Exception as exc:  # noqa: BLE001 - a bug in one fetch must not stop the others
                self.bridge.post(Outcome(url, time.time(), False, "failed", f"{type(exc).__name__}: {exc}", None))
        self.bridge.post(None)

    def watch_fds(self) -> list[int]:
        return [self.bridge.fileno()] if self.bridge is not None else []

    def on_watch(self, ready: list[int]) -> None:
        for outcome in self.bridge.drain():
            if outcome is None:
                self.worker = None
                continue
            self._record(outcome)
        self._plan()

    def _record(self, outcome: Outcome) -> None:
        u = next((u for u in self.urls if u.url == outcome.url), None)
        if u is None:
            return
        u.last, u.fetches = outcome, u.fetches + 1
        if outcome.cached is not None or outcome.ok:
            u.cached = outcome.cached
        if outcome.ok:
            if u.failures:
                log.info("tls: CRL %s fetched again (%s)", u.url, outcome.reason)
            elif outcome.result == "replaced":
                log.info("tls: CRL %s fetched: %s", u.url, outcome.reason)
            u.last_ok, u.failures = outcome.at, 0
        else:
            if outcome.reason != u.error or not u.failures:
                log.error("tls: CRL %s: fetch failed: %s", u.url, outcome.reason)
            u.error, u.error_at, u.failures = outcome.reason, outcome.at, u.failures + 1

    def on_wakeup(self, payload: Any) -> None:
        if payload == "crl-fetch":
            self._plan()

    def on_stop(self) -> None:
        if self.worker is not None:
            self.worker.join(timeout=0.1)    # a download in flight ends with its timeout (a daemon thread)
        if self.bridge is not None:
            self.bridge.close()

    def detail(self) -> dict:
        now = time.time()
        return {"refresh_s": self.refresh_s, "fetching": self.worker is not None,
                "crls": [describe(u, self._wait(u, now) if self.worker is None else None) for u in self.urls]}


def describe(u: _Url, next_fetch_in_s: float | None) -> dict:
    """One URL in `relevent status`."""
    iso = crl_fetch._iso
    out: dict[str, Any] = {"url": u.url, "file": u.path, "fetches": u.fetches,
                           "last_fetch": iso(u.last.at) if u.last else None,
                           "result": u.last.result if u.last else "not fetched yet",
                           "reason": u.last.reason if u.last else "",
                           "last_success": iso(u.last_ok), "failures": u.failures,
                           "next_update": iso(u.cached.next_update) if u.cached else None,
                           "crl_number": u.cached.number if u.cached else None}
    if next_fetch_in_s is not None:
        out["next_fetch_in_s"] = round(next_fetch_in_s, 1)
    if u.error:
        out["last_error"], out["last_error_at"] = u.error, iso(u.error_at)
    return out


def fetched_urls(tls: dict) -> list[str]:
    """The `[tls] crl` entries the site fetches (in order, once each)."""
    return list(dict.fromkeys(e for e in tls.get("crl") or [] if crl_fetch.is_url(e)))


def crl_child(data: dict) -> dict | None:
    """The fetcher's configuration (the site's [tls]), when some CRL is a URL."""
    tls = data.get("tls") or {}
    if not fetched_urls(tls):
        return None
    return {**tls, "name": "crl"}
