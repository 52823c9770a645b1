"""The web view (/view, docs/web.md): the page's time to first chart, in a real browser.

    .venv/bin/python bench/web_bench.py                       # 10 DERs, 20 loads
    .venv/bin/python bench/web_bench.py --ders 1 10 100 --json bench/results-web.json

(several sizes: one site after the other, one browser for all).

The site runs in its own processes (`relevent run`, as tests/sitectl.py starts it): --ders
battery DERs (ActPow, MaxPow, OnOff; 3 schedules; a reserve on each function, so every
chart has a forecast to draw), `controller_isolation = "der"` (--isolation), an HTTP
endpoint (the party `aggregator`, anonymous on loopback as in tests/test_http_api.py), an
MQTT LAN endpoint with its embedded broker and one simulated MQTT device per DER
(`mqtt-device`, measuring every --measure-period s).  Once every actor runs and
/api/v1/ders answers (not /view: that would fill the endpoint's forecast cache before the
first measured load), headless Chromium (Debian's `chromium`, driven by Playwright with
`executable_path`, --no-sandbox --disable-gpu) is launched once and loads /view --runs
times, each in a new browser context (no cache, no cookies, no connection reuse) with a
phone's viewport, 390x844.

Every time is measured by the page's own clock (performance.now(), whose origin is the
navigation's start), so Playwright's round trips add nothing to the figures:

* DOMContentLoaded: the navigation entry's domContentLoadedEventStart
  (PerformanceNavigationTiming).
* first chart: a MutationObserver, installed by an init script before the document exists,
  takes performance.now() in the first callback that sees, for every one of the --ders
  `section.der` cards, a `line.fc` (a forecast step, the element tests/test_web_view.py
  looks for) inside its `svg.chart` and the card's legend after the chart (so the SVG is
  parsed whole).  The page is rendered on the server, so this is normally during the HTML's
  parse; if the HTML's charts had no forecast yet, the live stream's replacement cards
  count.  Also kept, in the JSON only: the next animation frame after it (`chart_next_frame`)
  and first-contentful-paint.
* live: the same observer's performance.now() when `#live` first says 'live' (the
  EventSource's open).
* the stream's first burst (JSON only): an init-script wrapper around EventSource notes
  when every fragment (each DER's card and the tree) has come once over /view/stream; the
  stream sends them all on connecting.

Bytes: the HTML's transferSize / encodedBodySize from the navigation entry (the script and
style are inline: nothing else is fetched; the first load's requests are in the JSON) and
the bytes of the event stream's body up to that first burst ("retry" line plus each
"data: ...\\n\\n"; the JSON is ASCII, so characters are bytes; HTTP headers and chunk
framing not counted).

Also per load in the JSON (`loads`): when it began (s after the endpoint served), when the
HTML had arrived (the navigation entry's responseEnd: mostly the endpoint's rendering),
its size, the forecast lines and the actor tree's rows on the page.  Playwright's own
wall-clock time from goto() to seeing chart and live is kept too, to show what measuring
from outside the page would have added.

The first load of a site is also its endpoint's first /view: it computes every DER's
forecasts (later loads reuse them for up to 60 s, relevent/web/routes.py), so it is
reported apart (`first_load`) as well as in the percentiles.

The site and the browser are stopped whatever happens (try/finally; SIGTERM and SIGHUP
are turned into an exit that runs them); nothing is left running.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sitectl import Site, free_port  # noqa: E402
from switch_bench import pct  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWPORT = {"width": 390, "height": 844}   # a phone, as tests/test_web_view.py


def topology(state: Path, ders: int, http_port: int, broker_port: int, isolation: str, measure_period: float) -> str:
    der_tables = "".join(f"""
[[der]]
name = "der{i}"
type = "battery"
functions = ["ActPow", "MaxPow", "OnOff"]
schedules = 3
lan = "mqtt"
address = "der{i}"
profile = "pivot"
rated_power_w = 10000
reserve = {{ ActPow = 0.0, MaxPow = 10000.0, OnOff = true }}

[[simulator]]
name = "der{i}-device"
protocol = "mqtt-device"
port = {broker_port}
der = "der{i}"
rated_power_w = 10000.0
measure_period = {measure_period}
""" for i in range(1, ders + 1))
    return f"""[site]
name = "webbench"
state_dir = "{state}"

[runtime]
admin_port = {free_port()}
{"" if isolation == "process" else f'controller_isolation = "{isolation}"'}

[supervision]
heartbeat_interval = 1.0
heartbeat_timeout = 5.0
startup_timeout = 120.0

[[wan]]
name = "http"
protocol = "http"
port = {http_port}
party = "aggregator"

[[lan]]
name = "mqtt"
protocol = "mqtt"
port = {broker_port}
embedded_broker = true
{der_tables}"""


# Installed in every new document before any of its own script runs; %(ders)d is the
# number of DER cards the page must have.
INIT_SCRIPT = """
(() => {
  const N = %(ders)d;
  const b = window.__bench = {chart: null, chartFrame: null, live: null, burst: null,
                              streamBytes: 13, burstBytes: null, messages: 0};   // 13: "retry: 2000\\n\\n"
  const ids = new Set();
  function check() {
    if (b.chart === null) {
      const cards = document.querySelectorAll('section.der');
      if (cards.length >= N) {
        let all = true;
        for (const c of cards) {
          if (!c.querySelector('svg.chart line.fc') || !c.querySelector('p.legend')) { all = false; break; }
        }
        if (all) {
          b.chart = performance.now();
          requestAnimationFrame(() => { b.chartFrame = performance.now(); });
        }
      }
    }
    if (b.live === null) {
      const l = document.getElementById('live');
      if (l && l.textContent === 'live') b.live = performance.now();
    }
    if (b.chart !== null && b.live !== null) mo.disconnect();
  }
  const mo = new MutationObserver(check);
  mo.observe(document, {childList: true, subtree: true, characterData: true});
  const Native = window.EventSource;
  window.EventSource = function (url, init) {
    const es = new Native(url, init);
    es.addEventListener('message', (e) => {
      b.messages += 1;
      b.streamBytes += 6 + e.data.length + 2;   // "data: " + the JSON + "\\n\\n"
      const m = /"id": "([^"]*)"/.exec(e.data.slice(0, 300));
      if (m) ids.add(m[1]);
      if (b.burst === null && ids.size >= N + 1) { b.burst = performance.now(); b.burstBytes = b.streamBytes; }
    });
    return es;
  };
  window.EventSource.prototype = Native.prototype;
})();
"""

COLLECT = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  const b = window.__bench;
  return {dcl: nav.domContentLoadedEventStart, response_start: nav.responseStart, response_end: nav.responseEnd,
          load: nav.loadEventStart, html_transfer: nav.transferSize, html_encoded: nav.encodedBodySize,
          html_decoded: nav.decodedBodySize, fcp: fcp ? fcp.startTime : null,
          chart: b.chart, chart_frame: b.chartFrame, live: b.live, burst: b.burst, burst_bytes: b.burstBytes,
          messages: b.messages, cards: document.querySelectorAll('section.der').length,
          tree_rows: document.querySelectorAll('#tree tr[data-path]').length,
          fc_lines: document.querySelectorAll('svg.chart line.fc').length};
}"""


def wait_serving(http_port: int, timeout: float) -> None:
    """Until the HTTP endpoint answers its API (a cheap GET: /view would compute forecasts)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/v1/ders", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the HTTP endpoint did not answer within {timeout} s")
        time.sleep(0.1)


def one_load(browser, url: str, ders: int, timeout_ms: float, requests: list | None) -> dict:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        context.add_init_script(INIT_SCRIPT % {"ders": ders})
        page = context.new_page()
        if requests is not None:
            page.on("request", lambda r: requests.append(r.url))
        began = time.perf_counter()
        page.goto(url, wait_until="commit", timeout=timeout_ms)
        page.wait_for_function("() => window.__bench && window.__bench.chart !== null && window.__bench.live !== null",
                               polling=50, timeout=timeout_ms)
        wall = (time.perf_counter() - began) * 1000
        try:   # the stream's first burst and the frame after the chart: wanted, not required
            page.wait_for_function("() => window.__bench.burst !== null && window.__bench.chartFrame !== null",
                                   polling=50, timeout=10_000)
        except Exception as exc:  # noqa: BLE001 - playwright's TimeoutError; recorded as missing
            print(f"  (no first burst / frame within 10 s: {type(exc).__name__})", file=sys.stderr)
        out = page.evaluate(COLLECT)
        out["playwright_wall_ms"] = wall
        return out
    finally:
        context.close()


def stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(pct(values, 50), 1), "p90_ms": round(pct(values, 90), 1),
            "max_ms": round(max(values), 1), "min_ms": round(min(values), 1)}


def measure(ders: int, args, browser) -> dict:
    with tempfile.TemporaryDirectory(prefix="web-bench-") as tmp:
        tmp = Path(tmp)
        http_port, broker_port = free_port(), free_port()
        (tmp / "site.toml").write_text(topology(tmp / "state", ders, http_port, broker_port, args.isolation,
                                                args.measure_period))
        site = Site(tmp / "site.toml", tmp / "state")
        try:
            began = time.monotonic()
            site.start(timeout=args.start_timeout)
            running_s = time.monotonic() - began
            wait_serving(http_port, 60)
            serving_s = time.monotonic() - began
            print(f"{ders} DERs: every actor running after {running_s:.1f} s, serving after {serving_s:.1f} s",
                  file=sys.stderr)
            time.sleep(args.settle)   # the devices' first measurements, the tree's first gathering
            url = f"http://127.0.0.1:{http_port}/view"
            loads, requested = [], []
            serving = time.monotonic()
            for k in range(args.runs):
                at = time.monotonic() - serving
                r = one_load(browser, url, ders, args.timeout * 1000, requested if k == 0 else None)
                r["at_s"] = at
                loads.append(r)
                print(f"  load {k + 1} at {at:.0f} s: HTML {r['response_end']:.0f} ms, DCL {r['dcl']:.0f} ms, "
                      f"chart {r['chart']:.0f} ms, live {r['live']:.0f} ms, HTML {r['html_encoded']} B, "
                      f"tree rows {r['tree_rows']}", file=sys.stderr)
        except BaseException:
            if site.log.exists():   # the site's own account, before its folder goes
                print(f"--- the site's log (end) ---\n{site.log.read_text(errors='replace')[-6000:]}", file=sys.stderr)
            raise
        finally:
            site.stop(timeout=60)
            site.kill_everything()
            left = site.leftovers()
    key = {"dcl": "dom_content_loaded", "chart": "first_chart", "live": "live", "chart_frame": "chart_next_frame",
           "fcp": "first_contentful_paint", "burst": "stream_first_burst", "response_end": "html_received",
           "playwright_wall_ms": "playwright_goto_to_chart_and_live"}
    first = loads[0]
    return {"ders": ders, "runs": args.runs, "isolation": args.isolation, "measure_period_s": args.measure_period,
            "site_running_s": round(running_s, 1), "site_serving_s": round(serving_s, 1),
            **{name: stats([r[k] for r in loads]) for k, name in key.items()},
            "first_load": {name: (round(first[k], 1) if first[k] is not None else None) for k, name in key.items()},
            "bytes": {"html_transfer": first["html_transfer"], "html_body": first["html_encoded"],
                      "html_decoded": first["html_decoded"],
                      "stream_first_burst": first["burst_bytes"]},
            "cards": first["cards"], "forecast_lines": first["fc_lines"],
            "requests_first_load": requested, "processes_left": left,
            "loads": [{"at_s": round(r["at_s"], 1), "html_received": round(r["response_end"], 1),
                       "dcl": round(r["dcl"], 1), "chart": round(r["chart"], 1), "live": round(r["live"], 1),
                       "html_bytes": r["html_encoded"], "forecast_lines": r["fc_lines"], "tree_rows": r["tree_rows"]}
                      for r in loads]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ders", type=int, nargs="+", default=[10], help="site size(s), one site after the other")
    ap.add_argument("--runs", type=int, default=20, help="cold page loads per size")
    ap.add_argument("--isolation", choices=("process", "der"), default="der", help="controller_isolation")
    ap.add_argument("--measure-period", type=float, default=1.0, help="the simulated devices' measure_period, s")
    ap.add_argument("--settle", type=float, default=3.0, help="s between serving and the first load")
    ap.add_argument("--start-timeout", type=float, default=300.0, help="s for every actor to run")
    ap.add_argument("--timeout", type=float, default=60.0, help="s for one load's chart and live")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if CHROMIUM is None:
        print("Debian's chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    def leave(signum, _frame):   # SIGTERM/SIGHUP: unwind, so the finally blocks stop site and browser
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, leave)

    results = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        version = browser.version
        try:
            print(f"browser: chromium {version}", file=sys.stderr)
            for n in args.ders:
                results.append(measure(n, args, browser))
        finally:
            browser.close()
    result = {"browser": f"chromium {version}", "viewport": VIEWPORT, "sizes": results}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
