"""Hostile and malformed OpenADR 2.0b payloads from the VTN side, against a running site's
VEN: events with absurd values (NaN, infinities, negative or enormous capacities, 10,000
intervals, a century-long interval, an event in 2999, unknown signals, SIMPLE levels that
do not exist), events addressed to another VEN, events that lack what the VEN needs, and
bodies that are not OpenADR at all (garbage, cut messages, an XML entity bomb).  Each is
answered with an opt-out or dropped; none is ever opted in to (a cancellation of an unknown
event is acknowledged, arming nothing), nothing restarts, and the inverter never gets a
limit from them (its register write log shows only "no limit").  Afterwards the VEN still
follows a good event.

The hostile bodies go out through openleadr's own VTN (tests/vtnpeer.py: its message
templates render them, a middleware in front of its handlers serves them to the VEN's
polls); the decisions behind the answers are also fuzzed without a network, with
hypothesis, on events in the layout openleadr's parser hands the VEN."""
from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanctl import read_write_log
from relevent.protocols.openadr import mapping
from sitectl import Site, free_port, walk
from vtnpeer import Vtn, event_dict

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")

VEN = "ven-fuzz-ven"
RATED_W = 10000.0
MIN_LIMIT_W = 500.0
WMAXLIMPCT_OFFSET, WMAXLIMPCT_SF = 5, -2
UTC = timezone.utc


# -- the decisions, without a network ---------------------------------------------------------------------
POLICY = mapping.Policy(rated_w=RATED_W, simple_w=(RATED_W, 7000.0, 4000.0, 0.0), min_limit_w=MIN_LIMIT_W)
NOW = 1_800_000_000_000
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 12, 10 ** 12),
                    st.sampled_from([0, 1, 2, 3, 4, -1, 2.5, 499.9, 500.0, RATED_W, 1e300, -0.0]),
                    st.none(), st.booleans(), st.text(max_size=3))
DURATIONS = st.one_of(st.timedeltas(min_value=timedelta(seconds=-10), max_value=timedelta(days=80000)),
                      st.sampled_from([timedelta(0), timedelta(seconds=1), timedelta(milliseconds=1500),
                                       timedelta(days=999_999)]), st.none())
STARTS = st.one_of(st.integers(-86_400, 86_400 * 30).map(
    lambda s: datetime.fromtimestamp(NOW / 1000 + s, tz=UTC)), st.none())
SIGNALS = st.sampled_from([("LOAD_CONTROL", "x-loadControlCapacity"), ("SIMPLE", "level"), ("simple", "level"),
                           ("ELECTRICITY_PRICE", "price"), ("x-fuzz", "x-loadControlCapacity"),
                           ("LOAD_CONTROL", "setpoint"), (None, None)])


SOON = st.integers(1, 7200).map(lambda s: datetime.fromtimestamp(NOW / 1000 + s, tz=UTC))
WHOLE = st.integers(1, 3600).map(lambda s: timedelta(seconds=s))
PLAUSIBLE = st.one_of(st.floats(MIN_LIMIT_W, RATED_W), st.floats(MIN_LIMIT_W, RATED_W), st.floats(0, 2 * RATED_W),
                      st.integers(0, 3), st.sampled_from([RATED_W, 0.0, 1e12]))


@st.composite
def intervals(draw) -> list[dict]:
    """Mostly intervals one after the other (so some events can be armed), some hostile."""
    count = draw(st.integers(1, 6)) if draw(st.integers(0, 9)) else 0
    cursor, out = draw(SOON), []
    for _ in range(count):
        if draw(st.integers(0, 9)):
            length = draw(WHOLE)
            out.append({"dtstart": cursor, "duration": length, "signal_payload": draw(PLAUSIBLE)})
            cursor += length
        else:
            out.append(draw(st.fixed_dictionaries({}, optional={
                "dtstart": STARTS, "duration": DURATIONS, "signal_payload": NUMBERS})))
    return out


@st.composite
def signals(draw) -> dict:
    name, kind = draw(st.one_of(st.just(("LOAD_CONTROL", "x-loadControlCapacity")), SIGNALS))
    signal = {"signal_name": name, "signal_type": kind, "intervals": draw(intervals())}
    if draw(st.integers(0, 3)) == 0:
        signal["measurement"] = draw(st.fixed_dictionaries({}, optional={
            "unit": st.sampled_from(["W", "Wh", "V", "", None]), "scale": st.sampled_from(["k", "M", "none", "x", None])}))
    return signal


@st.composite
def events(draw) -> dict:
    descriptor = draw(st.fixed_dictionaries({"event_id": st.text(max_size=4)}, optional={
        "modification_number": st.one_of(st.integers(0, 10 ** 6), st.none())}))
    if not draw(st.integers(0, 5)):
        descriptor["event_status"] = draw(st.sampled_from(["far", "near", "active", "completed", "cancelled", "none"]))
    if not draw(st.integers(0, 5)):
        descriptor["test_event"] = draw(st.one_of(st.booleans(), st.sampled_from(["false", "true", "", "0"])))
    event = {"event_descriptor": descriptor, "event_signals": draw(st.lists(signals(), min_size=1, max_size=3))}
    if draw(st.booleans()):
        event["active_period"] = draw(st.fixed_dictionaries({}, optional={"dtstart": STARTS, "duration": DURATIONS}))
    return event


@settings(max_examples=250, deadline=None, derandomize=True, database=None)
@given(events())
def test_any_event_becomes_an_opt_out_or_a_schedule_within_the_rating(event):
    try:
        p = mapping.plan(event, POLICY, NOW)
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError):
        return   # the endpoint opts out of an event its decision cannot read ("internal: ...")
    assert p.opt in (mapping.OPT_IN, mapping.OPT_OUT) and p.action in (mapping.ARM, mapping.END, mapping.NOTHING)
    if p.action == mapping.ARM:
        assert p.opt == mapping.OPT_IN
        assert 1 <= len(p.values) <= mapping.SLOTS and p.step_s >= 1
        assert p.start_ms >= NOW + POLICY.lead_ms
        assert p.step_s <= mapping.STEP_MAX_S and p.end_ms <= mapping.END_MAX_MS   # what 90-10 can hold
        assert all(isinstance(v, float) and math.isfinite(v) and v >= MIN_LIMIT_W for v in p.values), p.values
        writes = mapping.schedule_writes(p, 50)
        assert [w for w in writes if w[0] == "NumEntr"] == [("NumEntr", 0, len(p.values))]


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 15, 10 ** 15)),
                min_size=1, max_size=8), WHOLE, st.integers(1, 600))
def test_a_well_formed_load_control_event_is_armed_exactly_when_every_limit_is_a_number_over_the_minimum(
        payloads, length, lead_s):
    start = datetime.fromtimestamp(NOW / 1000 + lead_s, tz=UTC)
    event = {"event_descriptor": {"event_id": "e", "modification_number": 0, "event_status": "far"},
             "active_period": {"dtstart": start, "duration": length * len(payloads)},
             "event_signals": [{"signal_name": "LOAD_CONTROL", "signal_type": "x-loadControlCapacity",
                                "intervals": [{"dtstart": start + i * length, "duration": length, "signal_payload": v}
                                              for i, v in enumerate(payloads)]}]}
    p = mapping.plan(event, POLICY, NOW)
    followable = all(math.isfinite(v) and v >= MIN_LIMIT_W for v in payloads)
    assert (p.action, p.opt) == ((mapping.ARM, mapping.OPT_IN) if followable else (mapping.NOTHING, mapping.OPT_OUT)), p
    if followable:
        assert list(p.values) == [float(v) for v in payloads] and p.step_s == length.total_seconds()
    else:
        assert p.reason


# -- a site ---------------------------------------------------------------------------------------------------------
def topology(state: Path, ports: dict, vtn_url: str, write_log: Path) -> str:
    return f"""[site]
name = "fuzzadr{ports['admin']}"
state_dir = "{state}"

[runtime]
admin_port = {ports['admin']}

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[[wan]]
name = "mms"
protocol = "mms"
port = {ports['mms']}

[[wan]]
name = "openadr"
protocol = "openadr"
party = "market"
vtn_url = "{vtn_url}"
ven_name = "fuzz-ven"
der = "pv1"
function = "MaxPow"
schedules = [1, 2]
priority = 50
min_limit_w = {MIN_LIMIT_W}
poll_interval = 0.3
offline_polls = 5
reconnect_delay = 0.2
backoff_max = 0.5

[[der]]
name = "pv1"
functions = ["MaxPow"]
schedules = 2
lan = "modbus"
address = 1
profile = "sunspec"
rated_power_w = {RATED_W:g}
reserve = {{ MaxPow = {RATED_W} }}

[[lan]]
name = "modbus"
protocol = "modbus"
port = {ports['modbus']}
timeout = 0.5
poll_period = 0.3

[[simulator]]
name = "inverter"
protocol = "sunspec-inverter"
port = {ports['modbus']}
wmax = {RATED_W}
write_log = "{write_log}"
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzzadr")
    ports = {k: free_port() for k in ("admin", "mms", "modbus")}
    vtn = Vtn(free_port()).start()
    state, path, log = tmp / "state", tmp / "site.toml", tmp / "writes.jsonl"
    path.write_text(topology(state, ports, vtn.url, log))
    site = Site(path, state)
    try:
        site.start(timeout=60)
        site.write_log = log
        site.model123 = model_address(ports["modbus"], 123)
        site.wait_for("openadr", lambda n: n["detail"]["registered"] is True, timeout=10)
        yield {"site": site, "vtn": vtn}
        site.stop()
        assert site.leftovers() == []
    finally:
        site.kill_everything()
        vtn.close()


def model_address(port: int, model: int) -> int:
    from sunspec2.modbus import client as ssclient
    dev = ssclient.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        dev.scan()
        return dev.models[model][0].model_addr
    finally:
        dev.close()


def limits(site, since_ns: int = 0) -> list[float]:
    """Every WMaxLimPct the inverter got (%), from the simulator's write log."""
    out = []
    for w in read_write_log(site.write_log):
        for i, v in enumerate(w["values"]):
            if w["t_ns"] >= since_ns and w["address"] + i == site.model123 + WMAXLIMPCT_OFFSET:
                out.append(v * 10 ** WMAXLIMPCT_SF)
    return out


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(int(time.time() + seconds) + 1, tz=UTC)


def load(event_id: str, payloads, *, lead_s: float = 40.0, length=timedelta(seconds=2), **kwargs) -> dict:
    """An event of `payloads`, starting well after every hostile body has been served (an
    event already over when it arrives is not answered at all, by openleadr's rule)."""
    start = at(lead_s)
    return event_dict(event_id, VEN, [(start + i * length, length, p) for i, p in enumerate(payloads)], **kwargs)


def without(tag: str):
    """An edit that removes every element `tag` (with its content) from the message text."""
    def edit(text: str) -> str:
        out = text
        while f"<{tag}>" in out:
            a = out.index(f"<{tag}>")
            b = out.index(f"</{tag}>", a) + len(f"</{tag}>")
            out = out[:a] + out[b:]
        return out
    return edit


def hostile_bodies(vtn: Vtn) -> dict[str, bytes]:
    far = datetime(2999, 1, 1, tzinfo=UTC)
    century = timedelta(days=36_500)
    events = {
        "NaN capacity": load("nan", ["NaN"]),
        "infinite capacity": load("inf", ["INF"]),
        "minus infinity": load("minf", ["-INF"]),
        "negative capacity": load("neg", [-5000.0]),
        "capacity of 1e12 W, above the rating": load("huge", [1e12]),
        "capacity of 1e39, beyond a float": load("toobig", ["1e39"]),
        "a century-long interval": load("century", [6000.0], length=century),
        "an interval of a millisecond": load("ms", [6000.0], length=timedelta(milliseconds=1)),
        "an interval of no length": load("zero", [6000.0], length=timedelta(0)),
        "starts in 2999": event_dict("y2999", VEN, [(far, timedelta(seconds=60), 6000.0)]),
        "unknown signal name": load("xfuzz", [6000.0], signal=("x-fuzz", "x-loadControlCapacity")),
        "a price signal only": load("price", [0.3], signal=("ELECTRICITY_PRICE", "price")),
        "SIMPLE level 7": load("lvl7", [7], signal=("SIMPLE", "level")),
        "SIMPLE level 2.5": load("lvl25", [2.5], signal=("SIMPLE", "level")),
        "no intervals": event_dict("empty", VEN, [], active=(at(40), timedelta(seconds=4))),
        "cancellation of an event never sent": load("ghost", [6000.0], status="cancelled", modification=3),
        "targets another VEN": event_dict("other", "ven-somebody-else", [(at(40), timedelta(seconds=2), 6000.0)]),
    }
    events["10,000 intervals"] = load("many", [3000.0] * 10_000, length=timedelta(seconds=1))
    bodies = {name: vtn.distribute([e]) for name, e in events.items()}
    good = load("nodur", [6000.0])
    bodies["an interval without duration"] = vtn.distribute([good], edit=without("xcal:duration"))
    bodies["an event without active period"] = vtn.distribute([load("noact", [6000.0])],
                                                              edit=without("ei:eiActivePeriod"))
    bodies["an event without descriptor"] = vtn.distribute([load("nodesc", [6000.0])],
                                                           edit=without("ei:eventDescriptor"))
    bodies["a payload that is text"] = vtn.distribute([load("text", ["lots"])])
    inner = vtn.distribute([load("entity", [6000.0])]).decode()
    inner = inner.replace("?>", "?><!DOCTYPE oadr:oadrPayload [<!ENTITY e '-5000.0'>]>", 1)
    bodies["an entity in a real event"] = inner.replace("<ei:value>6000.0</ei:value>", "<ei:value>&e;</ei:value>").encode()
    whole = vtn.distribute([load("cut", [6000.0])])
    bodies["the message cut in half"] = whole[:len(whole) // 2]
    bodies["not XML"] = b"\x00\xffthis is not xml at all <<<"
    bodies["an empty body"] = b""
    bodies["XML of another kind"] = b"<?xml version='1.0'?><html><body>502 Bad Gateway</body></html>"
    bodies["entity expansion"] = (b"<?xml version='1.0'?><!DOCTYPE a [<!ENTITY b 'bbbbbbbbbb'>"
                                  + b"".join(f"<!ENTITY b{i} '{('&b' + (str(i - 1) if i else '') + ';') * 10}'>"
                                             .encode() for i in range(8))
                                  + b"]><a>&b7;</a>")
    return bodies


def test_hostile_payloads_are_opted_out_of_or_ignored_and_never_reach_the_inverter(env):
    site, vtn = env["site"], env["vtn"]
    node = site.node("openadr")
    pids = site.pids()
    since = time.time_ns()
    bodies = hostile_bodies(vtn)
    polls = len(vtn.polls)
    for body in bodies.values():
        vtn.serve_raw(body)
    deadline = time.monotonic() + 25
    while vtn.hostile and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not vtn.hostile, f"{len(vtn.hostile)} bodies never polled for"
    # The last one was served; the VEN has answered what it answers within a few polls more.
    served = len(vtn.polls)
    while len(vtn.polls) < served + 3 and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    assert len(vtn.polls) - polls >= len(bodies)

    opts = {eid: opt for _, eid, opt in vtn.opts}
    # A cancellation is acknowledged (optIn) even of an event the VEN never had: it arms nothing.
    assert opts.pop("ghost", "optIn") == "optIn"
    assert set(opts.values()) <= {"optOut"}, opts   # never an opt-in to any of the others
    answered = set(opts)
    # Those openleadr's own parser lets through reach our decision and get an opt-out with a reason.
    for must in ("nan", "inf", "minf", "neg", "huge", "toobig", "many", "century", "y2999", "xfuzz", "price", "lvl7",
                 "lvl25", "zero", "ms", "other"):
        assert must in answered, (must, sorted(answered), " ".join(f"{e}:{o}" for _, a in vtn.created for e, o in a), len(vtn.polls))
    detail = site.node("openadr")["detail"]
    assert detail["opted_in"] == node["detail"]["opted_in"], detail
    print("answered (opt-out):", sorted(answered), "ignored:", sorted(vtn.hostile_ids - answered))
    assert detail["held"] == {}, detail["held"]

    # Nothing armed, nothing sent to the inverter but "no limit", nothing restarted.
    maxpow = site.node("pv1/MaxPow")["detail"]
    assert (maxpow["output"], maxpow["source"]) == (RATED_W, "Res_FSCH01")
    assert set(limits(site, since)) <= {100.0}, sorted(set(limits(site, since)))
    assert site.pids() == pids, "an actor restarted under hostile OpenADR payloads"
    assert all(n["restarts"] == 0 for n in walk(site.tree()))


def test_after_the_hostile_payloads_a_good_event_is_still_followed(env):
    site, vtn = env["site"], env["vtn"]
    site.wait_for("openadr", lambda n: n["detail"]["registered"] is True, timeout=10)
    since = time.time_ns()
    event_id, start_ms = vtn.event(VEN, [4000.0], lead_s=1.5, length_s=3)
    assert vtn.opt_of(event_id) == "optIn"
    site.wait_for("pv1/MaxPow", lambda n: n["detail"]["output"] == 4000.0, timeout=8)
    deadline = time.monotonic() + 10
    while 40.0 not in limits(site, since):
        assert time.monotonic() < deadline, limits(site, since)[-5:]
        time.sleep(0.05)
    site.wait_for("pv1/MaxPow", lambda n: n["detail"]["source"] == "Res_FSCH01", timeout=8)
    assert set(limits(site, since)) <= {100.0, 40.0}
