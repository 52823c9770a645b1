"""The web view in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright with `executable_path`) against a running site, its HTTP endpoint serving /view.

The schedule is written over MMS by open61850 (not our code path, not HTTP), and the page
must show it without a reload; a kill -9 of an actor must show in the tree.  A screenshot
is saved as an artefact (RELEVENT_ARTEFACTS, default the test's tmp dir)."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from sitectl import now_ms, walk
from test_http_api import new_site, running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency (pyproject)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test does it)")

MAXPOW = "DER_Scheduler_der1Control/MaxPow_FSCH02"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = new_site(tmp_path_factory.mktemp("web"), mms=True)
    # Nothing here tests hang detection: a generous heartbeat, so a loaded machine (a browser
    # beside the site on 2 cores) does not restart an endpoint under the page.
    s.topology.write_text(s.topology.read_text().replace("heartbeat_timeout = 0.4", "heartbeat_timeout = 5.0"))
    with running(s) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(site, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844})   # a phone
    pg = context.new_page()
    pg.goto(f"http://127.0.0.1:{site.ports['http']}/view")
    pg.wait_for_selector("#live:text('live')", timeout=15_000)
    pg.evaluate("window.__notReloaded = true")
    yield pg
    context.close()


def mms_maxpow(site, values, prio, start_ms, interval_s=3600) -> None:
    from mmsclients import Open61850Client
    c = Open61850Client("127.0.0.1", site.ports["mms"])
    try:
        assert c.write_int(f"{MAXPOW}.NumEntr.setVal", len(values)) is None
        assert c.write_int(f"{MAXPOW}.SchdIntv.setVal", interval_s) is None
        assert c.write_int(f"{MAXPOW}.SchdPrio.setVal", prio) is None
        for i, v in enumerate(values, start=1):
            assert c.write_float(f"{MAXPOW}.ValASG{i:03d}.setMag.f", v) is None
        assert c.write_time(f"{MAXPOW}.StrTm01.setTm", start_ms) is None
        ok, cause = c.operate(f"{MAXPOW}.EnaReq", True)
        assert ok, cause
    finally:
        c.close()


def test_the_page_shows_every_der_with_a_chart_and_the_actor_tree(site, page):
    assert page.locator("section.der").count() == 2
    for der in ("der1", "der2"):
        card = page.locator(f"section.der[data-der='{der}']")
        assert card.locator("svg.chart").count() == 1
        assert card.locator("line.fc").count() >= 1, f"{der}: the reserve's forecast is drawn"
    assert page.locator("#tree tr[data-path]").count() >= 8
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1, "fits a phone's width"


def test_a_schedule_written_over_mms_is_on_the_chart_within_2_s_without_a_reload(site, page):
    start = now_ms() + 3_600_000
    mms_maxpow(site, [3000.0, 4500.0], 77, start)
    written = now_ms()
    page.wait_for_selector("section.der[data-der='der1'] line.fc[data-source='FSCH02']", state="attached",
                           timeout=2_000)
    seen = now_ms()
    assert seen - written <= 2_000
    row = page.locator("section.der[data-der='der1'] tr[data-schedule='MaxPow/FSCH02']")
    assert "READY" in row.inner_text() and "77" in row.inner_text() and "dso" in row.inner_text()
    assert page.evaluate("window.__notReloaded") is True, "the page was reloaded"


def test_a_killed_actor_shows_its_restart_in_the_tree(site, page):
    path = next(n["path"] for n in walk(site.tree()) if n["role"] == "controller")
    cell = page.locator(f"#tree tr[data-path='{path}'] td.restarts")
    before = int(cell.inner_text())
    os.kill(site.node(path)["pid"], signal.SIGKILL)
    page.wait_for_function(
        f"() => {{const c = document.querySelector(\"#tree tr[data-path='{path}'] td.restarts\");"
        f" return c && Number(c.textContent) > {before}; }}", timeout=15_000)
    assert page.evaluate("window.__notReloaded") is True


def test_a_screenshot_of_the_page_is_saved(site, page, tmp_path):
    out = Path(os.environ.get("RELEVENT_ARTEFACTS") or tmp_path) / "web-view.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000


def test_a_party_that_may_not_read_gets_no_page(site):
    # The endpoint's anonymous rule on loopback is its party: a wrong token names none.
    r = httpx.get(f"http://127.0.0.1:{site.ports['http']}/view", headers={"Authorization": "Bearer wrong"},
                  timeout=10)
    assert r.status_code == 401

