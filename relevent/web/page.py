"""The web view's HTML, pure: a view model (plain dicts, times in ms) in, HTML text out.

No clock and no I/O here (the routes in relevent/web/routes.py gather the model), so every
fragment is a function of its model and is tested as such.  The page is server-rendered:
the chart of each DER is SVG drawn here, and live updates replace whole fragments (a DER's
card, the actor tree) by id, so the browser runs no chart library and there is no
JavaScript build step; the only script is the few lines in `SCRIPT` that take fragments
from the server-sent events and put them in place.

Invariant: every text that comes from outside (DER and party names, error messages, the
values) is escaped before it reaches the HTML, so nothing a topology or a client wrote
can inject markup into an operator's browser.

View model, per DER (`der_model`):
  name, type, rated_w, measured (w, at, quality or None), command (setpoint_w, limit_w,
  connected or None), history [(at ms, w)] measured over the last hours, and functions:
  {kind: {output, source, forecast [(at, value, source)], schedules [{name, state, prio,
  party, value, next_start, reserve}]}}.
"""
from __future__ import annotations

import html
import math
from typing import Any

PAST_MS = 3 * 3_600_000      # the chart shows the measured power of the last 3 h...
FUTURE_MS = 24 * 3_600_000   # ...and the forecast of the next 24 h
WIDTH, HEIGHT = 640, 200     # SVG user units; the SVG scales to the card's width
PAD_L, PAD_R, PAD_T, PAD_B = 52, 8, 8, 22
# One colour per schedule in the legend (colour-blind safe palette, Okabe-Ito), the reserve grey.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000")
RESERVE_COLOUR = "#999999"
MEASURED_COLOUR = "#222222"
DASH = {"ActPow": "", "MaxPow": "8 4"}   # how each function's forecast is drawn (the legend says)
STATE_CLASS = {"RUNNING": "ok", "READY": "info", "NOT_READY": "off"}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt_w(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)) and not math.isfinite(value):
        return str(value)
    return f"{value:,.0f} W".replace(",", "\u202f")


def fmt_axis(value: float) -> str:
    """Axis labels: kW from 1 kW up, so they stay short."""
    return f"{value / 1000:g} kW" if abs(value) >= 1000 else f"{value:g} W"


def fmt_time(ms: int | None, now: int) -> str:
    """Relative to now: "in 12 min", "3 h ago"."""
    if ms is None:
        return "-"
    d = (ms - now) / 1000
    size = abs(d)
    text = (f"{size:.0f} s" if size < 120 else f"{size / 60:.0f} min" if size < 7200 else f"{size / 3600:.1f} h")
    return f"in {text}" if d > 0 else f"{text} ago" if d < 0 else "now"


def dom_id(prefix: str, name: str) -> str:
    """An HTML id from a name: letters, digits, '-' and '_' kept, the rest hex-escaped, so
    two DER names never share an id."""
    return prefix + "".join(c if c.isalnum() or c in "-_" else f".{ord(c):x}" for c in name)


def colours(functions: dict) -> dict[str, str]:
    """Source schedule -> colour, the same for the chart and the legend of one DER."""
    names: list[str] = []
    for fn in functions.values():
        for s in fn.get("schedules", []):
            if s["name"] not in names:
                names.append(s["name"])
        for _at, _v, source in fn.get("forecast", []):
            if source is not None and source not in names:
                names.append(source)
    out, i = {}, 0
    for name in names:
        if name.startswith("Res"):
            out[name] = RESERVE_COLOUR
        else:
            out[name] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def _numeric(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def chart(der: dict, now: int) -> str:
    """SVG: the forecast of each numeric function (step line, each step coloured by its
    source schedule) from now to +24 h, the measured power of the last 3 h, a "now" line."""
    t0, t1 = now - PAST_MS, now + FUTURE_MS
    values = [0.0, float(der.get("rated_w") or 0.0)]
    for fn in der["functions"].values():
        values += [x for x in (_numeric(v) for _at, v, _s in fn.get("forecast", [])) if x is not None]
    values += [x for x in (_numeric(w) for _at, w in der.get("history", [])) if x is not None]
    lo, hi = min(values), max(values)
    if hi - lo < 1.0:
        hi = lo + 1.0
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B

    def x(t: int) -> float:
        return PAD_L + (min(max(t, t0), t1) - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return PAD_T + (hi - v) / (hi - lo) * plot_h

    cols = colours(der["functions"])
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{esc(der["name"])}: measured power and forecast">']
    # Axes: W at bottom, top and zero; hours along the bottom.
    for v in sorted({lo, hi, 0.0}):
        parts.append(f'<line class="grid" x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
                     f'<text class="axis" x="{PAD_L - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{esc(fmt_axis(v))}</text>')
    for h in range(-3, 25, 3):
        t = now + h * 3_600_000
        anchor = "start" if h == -3 else "end" if h == 24 else "middle"
        parts.append(f'<text class="axis" x="{x(t):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
                     f'{"now" if h == 0 else f"{h:+d} h"}</text>')
    parts.append(f'<line class="now" x1="{x(now):.1f}" x2="{x(now):.1f}" y1="{PAD_T}" y2="{HEIGHT - PAD_B}"/>')
    # The forecast: one horizontal segment per event, to the next event (or the window's end).
    for kind, fn in der["functions"].items():
        events = [(at, v, s) for at, v, s in fn.get("forecast", []) if _numeric(v) is not None or v is None]
        for i, (at, value, source) in enumerate(events):
            v = _numeric(value)
            if v is None:
                continue
            end = events[i + 1][0] if i + 1 < len(events) else t1
            colour = cols.get(source, RESERVE_COLOUR)
            dash = f' stroke-dasharray="{DASH[kind]}"' if DASH.get(kind) else ""
            parts.append(f'<line class="fc fc-{esc(kind)}" stroke="{colour}"{dash} x1="{x(max(at, now)):.1f}" '
                         f'x2="{x(end):.1f}" y1="{y(v):.1f}" y2="{y(v):.1f}" data-source="{esc(source)}">'
                         f'<title>{esc(kind)} {esc(fmt_w(v))} from {esc(source)}</title></line>')
    points = [(at, _numeric(w)) for at, w in der.get("history", []) if t0 <= at <= now]
    line = " ".join(f"{x(at):.1f},{y(w):.1f}" for at, w in points if w is not None)
    if line:
        parts.append(f'<polyline class="measured" stroke="{MEASURED_COLOUR}" points="{line}"/>')
    parts.append("</svg>")
    return "".join(parts)


def legend(der: dict) -> str:
    """Which line is which: the functions drawn and the measured power."""
    items = [f'<span><svg width="28" height="8"><line x1="0" x2="28" y1="4" y2="4" stroke="#555" stroke-width="3"'
             f'{f" stroke-dasharray={chr(34)}{DASH[k]}{chr(34)}" if DASH.get(k) else ""}/></svg> {esc(k)}</span>'
             for k in der["functions"] if k in DASH]
    items.append(f'<span><svg width="28" height="8"><line x1="0" x2="28" y1="4" y2="4" stroke="{MEASURED_COLOUR}" '
                 f'stroke-width="1.5"/></svg> measured</span>')
    return f'<p class="legend">{" ".join(items)} <span>colour: the schedule in force</span></p>'


def der_card(der: dict, now: int) -> str:
    """One DER: now (measured, command), the chart, the legend, the schedules."""
    cols = colours(der["functions"])
    m, cmd = der.get("measured"), der.get("command")
    measured = "no measurement" if not m or m.get("w") is None else \
        f'{fmt_w(m["w"])} ({esc(m.get("quality", "good"))}, {fmt_time(m.get("at"), now)})'
    command = "-" if not cmd else (f'set-point {fmt_w(cmd["setpoint_w"])}, limit {fmt_w(cmd["limit_w"])}'
                                   + ("" if cmd.get("connected", True) else ", disconnected"))
    out = [f'<section class="der" id="{dom_id("der-", der["name"])}" data-der="{esc(der["name"])}">',
           f'<h2>{esc(der["name"])} <small>{esc(der.get("type") or "")}'
           f'{", rated " + fmt_w(der["rated_w"]) if der.get("rated_w") else ""}</small></h2>',
           f'<p class="now">Measured: <b class="measured-w">{measured}</b><br>Command: {command}</p>',
           chart(der, now), legend(der), '<table class="schedules"><thead><tr><th></th><th>function</th><th>schedule</th>'
           '<th>state</th><th>prio</th><th>party</th><th>value</th><th>next start</th></tr></thead><tbody>']
    for kind, fn in der["functions"].items():
        out.append(f'<tr class="output"><td></td><td>{esc(kind)}</td><td colspan="6">output '
                   f'<b>{esc(fmt_w(fn.get("output")))}</b> from {esc(fn.get("source") or "-")}</td></tr>')
        for s in sorted(fn.get("schedules", []), key=lambda s: (-(s.get("prio") or 0), s["name"])):
            if s["state"] == "NOT_READY" and not s.get("reserve"):
                continue   # not enabled: nothing to show (the API lists every schedule)
            out.append(f'<tr class="{STATE_CLASS.get(s["state"], "")}" data-schedule="{esc(kind)}/{esc(s["name"])}">'
                       f'<td><span class="swatch" style="background:{cols.get(s["name"], RESERVE_COLOUR)}"></span></td>'
                       f'<td>{esc(kind)}</td><td>{esc(s["name"])}</td><td>{esc(s["state"])}</td>'
                       f'<td>{esc(s.get("prio"))}</td><td>{esc(s.get("party") or "-")}</td>'
                       f'<td>{esc(fmt_w(s.get("value")))}</td><td>{esc(fmt_time(s.get("next_start"), now))}</td></tr>')
    out.append("</tbody></table></section>")
    return "".join(out)


def tree_table(tree: dict | None, walk: Any) -> str:
    """The actor tree (relevent status): `walk` is relevent.runtime.status.walk_depths."""
    out = ['<section id="tree"><h2>Actors</h2>']
    if tree is None:
        out.append('<p class="off">the runner did not answer</p></section>')
        return "".join(out)
    out.append('<table class="tree"><thead><tr><th>actor</th><th>state</th><th>restarts</th><th>pid</th>'
               '<th>last error</th></tr></thead><tbody>')
    for depth, node in walk(tree):
        state = node.get("state", "?")
        out.append(f'<tr class="{"ok" if state == "running" else "off"}" data-path="{esc(node.get("path", ""))}">'
                   f'<td style="padding-left:{0.3 + depth}em">{esc(node.get("name", "?"))}</td>'
                   f'<td>{esc(state)}</td><td class="restarts">{esc(node.get("restarts", 0))}</td>'
                   f'<td>{esc(node.get("pid") or "-")}</td><td class="err">{esc(node.get("last_error") or "")}</td></tr>')
    out.append("</tbody></table></section>")
    return "".join(out)


STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:.5em;color:#111;background:#fafafa}
header{display:flex;flex-wrap:wrap;gap:.2em 1em;align-items:baseline}
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.1em;margin:.3em 0}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,34em),1fr));gap:.6em}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em;overflow-x:auto}
.chart{width:100%;height:auto}.grid{stroke:#eee}.now{stroke:#c00;stroke-dasharray:3 3}
.axis{font-size:11px;fill:#555}.fc{stroke-width:3}.measured{fill:none;stroke-width:1.5}
table{border-collapse:collapse;width:100%;font-size:.9em}td,th{padding:.1em .4em;text-align:left;
border-bottom:1px solid #eee;white-space:nowrap}.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px}
.ok td:nth-child(4),.tree .ok td:nth-child(2){color:#075}.off{color:#a00}.info{color:#057}
.err{white-space:normal;color:#a00}.legend{font-size:.8em;color:#555;margin:0}.legend span{margin-right:.8em}#live{font-size:.85em;color:#555}small{color:#666;font-weight:normal}
"""

# Server-sent events: each message is {"id": fragment id, "html": its new HTML}; a fragment
# not on the page yet is appended to <main>.  EventSource reconnects by itself.
SCRIPT = """
(function(){const live=document.getElementById('live');
const es=new EventSource(document.body.dataset.stream);
es.onopen=()=>{live.textContent='live';};
es.onerror=()=>{live.textContent='reconnecting\\u2026';};
es.onmessage=(e)=>{const m=JSON.parse(e.data);const old=document.getElementById(m.id);
const t=document.createElement('template');t.innerHTML=m.html;const n=t.content.firstElementChild;
if(old){old.replaceWith(n);}else{document.getElementById(m.id==='tree'?'side':'main').appendChild(n);}
document.getElementById('updated').textContent=new Date().toLocaleTimeString();};})();
"""


def page(site: str, ders: list[dict], tree_html: str, now: int, stream_url: str) -> str:
    """The whole page: a card per DER and `tree_html` (tree_table's, or "" for a party that
    may not see the whole site)."""
    cards = "".join(der_card(d, now) for d in ders)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>{esc(site)}: relevent</title><style>{STYLE}</style></head>'
            f'<body data-stream="{esc(stream_url)}"><header><h1>{esc(site)}</h1>'
            f'<span id="live">connecting\u2026</span><span>updated <span id="updated">-</span></span></header>'
            f'<main id="main">{cards}</main><div id="side">{tree_html}</div>'
            f'<script>{SCRIPT}</script></body></html>')


def login(site: str) -> str:
    """A form for a party's token (the HTTP endpoint's `http_token`), for browsers."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>{esc(site)}: sign in</title><style>{STYLE}</style></head><body><section>'
            f'<h1>{esc(site)}</h1><form method="post" action="login"><label>Party token '
            f'<input name="token" type="password" autocomplete="current-password" required></label> '
            f'<button>Sign in</button></form></section></body></html>')
