"""The web view's HTML (relevent/web/page.py), pure: fragments as functions of their model."""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from relevent.runtime.status import walk_depths
from relevent.web import page

NOW = 1_800_000_000_000
H = 3_600_000


def der(**over) -> dict:
    base = {"name": "pv1", "type": "pv", "rated_w": 10000.0, "measured": {"w": 4200.0, "at": NOW - 1000,
                                                                          "quality": "good"},
            "history": [(NOW - 2 * H, 3000.0), (NOW - H, 5000.0), (NOW - 1000, 4200.0)],
            "functions": {"MaxPow": {"output": 6000.0, "source": "FSCH01", "forecast": [
                (NOW, 6000.0, "FSCH01"), (NOW + 12 * H, 10000.0, "Res_FSCH01")],
                "schedules": [{"name": "FSCH01", "state": "RUNNING", "prio": 100, "party": "dso", "value": 6000.0,
                               "next_start": None, "reserve": False},
                              {"name": "Res_FSCH01", "state": "RUNNING", "prio": 10, "party": "", "value": 10000.0,
                               "next_start": None, "reserve": True},
                              {"name": "FSCH02", "state": "NOT_READY", "prio": 20, "party": "", "value": None,
                               "next_start": None, "reserve": False}]}}}
    base.update(over)
    return base


def svg_of(html: str) -> ET.Element:
    return ET.fromstring(re.search(r"<svg.*?</svg>", html, re.S).group(0))


def test_the_forecast_is_drawn_as_steps_coloured_by_their_source_schedule():
    svg = svg_of(page.der_card(der(), NOW))
    steps = [e for e in svg.iter("line") if "fc" in e.get("class", "")]
    assert [s.get("data-source") for s in steps] == ["FSCH01", "Res_FSCH01"]
    cols = page.colours(der()["functions"])
    assert steps[0].get("stroke") == cols["FSCH01"] != page.RESERVE_COLOUR
    assert steps[1].get("stroke") == page.RESERVE_COLOUR
    # 6000 W is drawn above... no: lower on screen than 10000 W (SVG y grows downwards)
    assert float(steps[0].get("y1")) > float(steps[1].get("y1"))
    # the first step runs from now to +12 h, the second from +12 h to the end of the window
    x_now = page.PAD_L + page.PAST_MS / (page.PAST_MS + page.FUTURE_MS) * (page.WIDTH - page.PAD_L - page.PAD_R)
    assert abs(float(steps[0].get("x1")) - x_now) < 0.2
    assert float(steps[0].get("x2")) == float(steps[1].get("x1"))
    assert abs(float(steps[1].get("x2")) - (page.WIDTH - page.PAD_R)) < 0.2


def test_measured_power_is_a_line_over_the_past_only():
    d = der(history=[(NOW - 4 * H, 1.0), (NOW - H, 5000.0), (NOW - 1000, 4200.0), (NOW + H, 9.0)])
    svg = svg_of(page.der_card(d, NOW))
    line = next(e for e in svg.iter("polyline") if e.get("class") == "measured")
    xs = [float(p.split(",")[0]) for p in line.get("points").split()]
    assert len(xs) == 2, "points before the window and in the future are left out"
    x_now = page.PAD_L + page.PAST_MS / (page.PAST_MS + page.FUTURE_MS) * (page.WIDTH - page.PAD_L - page.PAD_R)
    assert all(x <= x_now + 0.1 for x in xs)


def test_values_that_are_not_finite_numbers_are_not_drawn():
    d = der()
    d["functions"]["MaxPow"]["forecast"] = [(NOW, math.nan, "FSCH01"), (NOW + H, math.inf, "FSCH01"),
                                            (NOW + 2 * H, 5000.0, "FSCH01"), (NOW + 3 * H, None, None)]
    steps = [e for e in svg_of(page.der_card(d, NOW)).iter("line") if "fc" in e.get("class", "")]
    assert len(steps) == 1 and all(math.isfinite(float(steps[0].get(k))) for k in ("x1", "x2", "y1", "y2"))


def test_names_parties_and_errors_cannot_inject_markup():
    evil = '<script>alert(1)</script>"'
    d = der(name=evil)
    d["functions"]["MaxPow"]["schedules"][0]["party"] = evil
    html = page.der_card(d, NOW)
    assert "<script>" not in html and "&lt;script&gt;" in html
    tree = {"name": evil, "path": "/x", "state": "running", "restarts": 0, "pid": 1, "last_error": evil,
            "children": None}
    assert "<script>" not in page.tree_table(tree, walk_depths)


def test_schedules_not_enabled_are_left_out_and_the_rest_listed_by_priority():
    html = page.der_card(der(), NOW)
    rows = re.findall(r'data-schedule="MaxPow/(\w+)"', html)
    assert rows == ["FSCH01", "Res_FSCH01"]
    assert ">dso<" in html


def test_fragment_ids_of_different_names_differ():
    names = ["pv 1", "pv_1", "pv-1", "pv.1", "pv/1"]
    assert len({page.dom_id("der-", n) for n in names}) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+", page.dom_id("der-", n)) for n in names)


def test_the_tree_shows_each_actor_with_its_restarts_and_last_error():
    tree = {"name": "site", "path": "/site", "state": "running", "restarts": 0, "pid": 10, "last_error": "",
            "children": [{"name": "pv1", "path": "/site/pv1", "state": "restarting", "restarts": 3, "pid": None,
                          "last_error": "killed (SIGKILL)", "children": None}]}
    html = page.tree_table(tree, walk_depths)
    row = re.search(r'<tr class="off" data-path="/site/pv1">(.*?)</tr>', html).group(1)
    assert ">3<" in row and "killed (SIGKILL)" in row
    assert "did not answer" in page.tree_table(None, walk_depths)


def test_the_page_is_one_document_with_the_stream_address_and_no_external_resources():
    html = page.page("farm <1>", [der()], page.tree_table(None, walk_depths), NOW, "view/stream")
    assert html.startswith("<!doctype html>") and 'data-stream="view/stream"' in html
    assert "farm &lt;1&gt;" in html
    assert not re.search(r'(src|href)="(https?:)?//', html), "an edge device may not reach a CDN"
    assert 'name="viewport"' in html
