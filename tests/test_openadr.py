"""The OpenADR 2.0b VEN (`protocol = "openadr"`) end to end: a real site against openleadr's
own VTN (OpenADRServer, run in this process on its own event loop thread), a real Mosquitto
broker between the site and its device, and an MQTT witness (mosquitto_sub, not gmqtt, the
library the site uses) timestamping the pivot commands the device gets.  The peer is the
library's VTN, never our code path: it registers the VEN, issues and cancels events,
receives the opt-in/opt-out and the telemetry reports."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from lanctl import Mosquitto, MosquittoSub
from openleadr import OpenADRServer
from sitectl import Site, free_port, now_ms, until, wait_until

VEN = "ven-site-ven"           # the id the VTN gives our VEN (ven_name "site-ven")
MAXPOW = "der1.MaxPow"         # the device's pivot label for MaxPow
RESERVE_W = 10000.0            # MaxPow when no event runs: no limit
MIN_LIMIT_W = 500.0            # the site opts out of a limit under this

logging.getLogger("openleadr").setLevel(logging.WARNING)   # the VTN logs every message at INFO
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")


class Vtn:
    """openleadr's OpenADRServer on a loop thread of this process: what it saw, as lists."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b"
        self.registrations: list[tuple[float, str, str]] = []   # (monotonic, ven_name, ven_id)
        self.opts: list[tuple[float, str, str]] = []            # (monotonic, event_id, opt_type)
        self.reports: list[tuple[datetime, float]] = []
        self.known: dict[str, str] = {}                         # ven_id -> registration id
        self.server: OpenADRServer | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> "Vtn":
        """A fresh VTN on the port: it knows no VEN (a restarted VTN)."""
        async def serve() -> None:
            self.known = {}
            self.server = OpenADRServer(vtn_id="TEST_VTN", http_host="127.0.0.1", http_port=self.port,
                                        requested_poll_freq=timedelta(seconds=1), show_fingerprint=False,
                                        ven_lookup=self._lookup)
            self.server.add_handler("on_create_party_registration", self._register)
            self.server.add_handler("on_register_report", self._offer)
            await self.server.run()
        self._call(serve())
        return self

    def stop(self) -> None:
        if self.server is not None:
            self._call(self.server.stop())
            self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    # openleadr's callbacks (loop thread)
    def _lookup(self, ven_id: str) -> dict | None:
        reg = self.known.get(ven_id)
        return None if reg is None else {"ven_id": ven_id, "registration_id": reg}

    def _register(self, info: dict) -> tuple[str, str]:
        ven_id = f"ven-{info['ven_name']}"
        self.known[ven_id] = f"reg-{len(self.registrations) + 1}"
        self.registrations.append((time.monotonic(), info["ven_name"], ven_id))
        return ven_id, self.known[ven_id]

    def _offer(self, ven_id, resource_id, measurement, unit, scale, min_sampling_interval, max_sampling_interval):
        assert (resource_id, unit) == ("der1", "W")
        return self.reports.extend, timedelta(seconds=1)

    def _opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts.append((time.monotonic(), event_id, opt_type))

    # the test's side
    def event(self, payloads, *, lead_s: float = 3.0, length_s: int = 2, kind=("LOAD_CONTROL",
              "x-loadControlCapacity")) -> tuple[str, int]:
        """Issue an event starting `lead_s` from now on a whole second: (event id, start ms)."""
        start = datetime.fromtimestamp(int(time.time() + lead_s) + 1, tz=timezone.utc)
        intervals = [{"dtstart": start + timedelta(seconds=i * length_s), "duration": timedelta(seconds=length_s),
                      "signal_payload": float(v)} for i, v in enumerate(payloads)]

        async def add() -> str:
            return self.server.add_event(ven_id=VEN, signal_name=kind[0], signal_type=kind[1],
                                         intervals=intervals, callback=self._opt)
        return self._call(add()), int(start.timestamp() * 1000)

    def cancel(self, event_id: str) -> None:
        async def cancel() -> None:
            self.server.cancel_event(VEN, event_id)
        self._call(cancel())

    def opt_of(self, event_id: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, eid, opt in self.opts:
                if eid == event_id:
                    return opt
            time.sleep(0.02)
        raise AssertionError(f"no opt for event {event_id} within {timeout} s; opts: {self.opts}")


def topology(state_dir, admin: int, vtn_url: str, broker: int) -> str:
    return f"""
[site]
name = "openadr{admin}"
state_dir = "{state_dir}"

[runtime]
admin_port = {admin}

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[[wan]]
name = "openadr"
protocol = "openadr"
party = "cpo"
vtn_url = "{vtn_url}"
ven_name = "site-ven"
der = "der1"
schedules = [1, 2]
priority = 50
min_limit_w = {MIN_LIMIT_W}
reconnect_delay = 0.5
backoff_max = 1.0

[[der]]
name = "der1"
functions = ["MaxPow"]
schedules = 3
lan = "mqtt"
rated_power_w = 10000
reserve = {{ MaxPow = {RESERVE_W} }}

[[lan]]
name = "mqtt"
protocol = "mqtt"
port = {broker}
reconnect_delay = 0.2

[[simulator]]
name = "device"
protocol = "mqtt-device"
port = {broker}
der = "der1"
rated_power_w = 10000.0
measure_period = 0.5
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openadr")
    broker = Mosquitto(free_port(), tmp).start()
    vtn = Vtn(free_port()).start()
    path = tmp / "site.toml"
    path.write_text(topology(tmp / "state", free_port(), vtn.url, broker.port))
    site = Site(path, tmp / "state")
    watcher = None
    try:
        site.start(timeout=60)
        watcher = MosquittoSub(broker.port, ["fledge/south-command"])
        yield {"site": site, "vtn": vtn, "watcher": watcher}
        site.stop()
        assert site.leftovers() == []
    finally:
        site.kill_everything()
        if watcher is not None:
            watcher.close()
        vtn.close()
        broker.stop()


def commands_since(watcher: MosquittoSub, t_ns: int) -> list[tuple[int, float]]:
    return [(t, v) for t, v in watcher.commands(MAXPOW) if t >= t_ns]


def wait_for_command(watcher: MosquittoSub, value: float, since_ns: int, timeout: float = 10.0) -> int:
    """The receive time (ns) of the first command of `value` after `since_ns`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, v in commands_since(watcher, since_ns):
            if v == value:
                return t
        time.sleep(0.02)
    raise AssertionError(f"no command {value} after {since_ns}; got {commands_since(watcher, since_ns)}")


def test_the_ven_registers_with_the_vtn_and_says_so_in_its_status(env):
    site, vtn = env["site"], env["vtn"]
    assert [(name, ven_id) for _, name, ven_id in vtn.registrations] == [("site-ven", VEN)]
    node = site.wait_for("openadr", lambda n: n["detail"]["registered"] is True)
    d = node["detail"]
    assert (d["ven_id"], d["vtn_id"], d["poll_s"], d["target"]) == (VEN, "TEST_VTN", 1.0, "der1/MaxPow/FSCH01,FSCH02")


def test_an_events_intervals_reach_the_device_at_their_times_and_the_vtn_hears_opt_in(env):
    vtn, watcher = env["vtn"], env["watcher"]
    since = time.time_ns()
    event_id, start_ms = vtn.event([3000, 1500, 2500], lead_s=3.0, length_s=2)
    assert vtn.opt_of(event_id) == "optIn"
    opted_at = next(t for t, eid, _ in vtn.opts if eid == event_id)
    assert time.time() * 1000 < start_ms      # opted in (armed) before the event starts
    for i, value in enumerate([3000.0, 1500.0, 2500.0, RESERVE_W]):
        t = wait_for_command(watcher, value, since, timeout=12.0)
        late_ms = t / 1e6 - (start_ms + i * 2000)
        assert -20 <= late_ms <= 500, f"interval {i} ({value} W) arrived {late_ms:.0f} ms from its boundary"
        since = t
    assert opted_at > 0


def test_a_cancellation_ends_a_running_event_and_the_limit_goes_away(env):
    site, vtn, watcher = env["site"], env["vtn"], env["watcher"]
    since = time.time_ns()
    event_id, start_ms = vtn.event([4000, 4000, 4000], lead_s=2.0, length_s=10)
    assert vtn.opt_of(event_id) == "optIn"
    wait_for_command(watcher, 4000.0, since, timeout=10.0)
    vtn.cancel(event_id)
    cancelled = time.time_ns()
    t = wait_for_command(watcher, RESERVE_W, cancelled, timeout=8.0)
    assert t / 1e6 < start_ms + 30_000 - 5_000    # well before the event would have ended
    node = site.wait_for("openadr", lambda n: n["detail"]["ended"] >= 1 and event_id not in n["detail"]["held"].values())
    assert node["detail"]["last_event"]["action"] == "end"
    site.wait_for("der1/MaxPow", lambda n: (n["detail"]["output"], n["detail"]["source"]) == (RESERVE_W, "Res_FSCH01"))


def test_reports_of_measured_power_reach_the_vtn(env):
    vtn, site = env["vtn"], env["site"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(vtn.reports) < 3:
        time.sleep(0.1)
    assert len(vtn.reports) >= 3, vtn.reports
    assert all(isinstance(v, float) for _, v in vtn.reports[-3:])

    def reported_as_measured() -> bool:
        # No event runs: the device holds still once the previous test's cancellation has
        # reached it.  The status's measurement lags by a heartbeat, the reports by their
        # period: the newest reports carry what the DER measures once both have caught up.
        measured = site.node("der1")["detail"]["measured"]["w"]
        return measured in [v for _, v in vtn.reports[-3:]]
    until(reported_as_measured, f"the measured power in the VTN's last reports {vtn.reports[-3:]}", timeout=15)
    newest = max(dt for dt, _ in vtn.reports)
    assert abs(newest.timestamp() * 1000 - now_ms()) < 5000


def test_an_event_the_site_cannot_follow_gets_opt_out_and_changes_nothing(env):
    site, vtn, watcher = env["site"], env["vtn"], env["watcher"]
    opted_out = site.node("openadr")["detail"]["opted_out"]
    since = time.time_ns()
    too_low, too_low_ms = vtn.event([200], lead_s=2.0, length_s=2)          # under min_limit_w
    price, price_ms = vtn.event([0.31, 0.12], lead_s=2.0, length_s=2, kind=("ELECTRICITY_PRICE", "price"))
    assert vtn.opt_of(too_low) == "optOut"
    assert vtn.opt_of(price) == "optOut"
    node = site.wait_for("openadr", lambda n: n["detail"]["opted_out"] >= opted_out + 2)
    last = node["detail"]["last_opt_out"]
    assert (last["event_id"], "ELECTRICITY_PRICE" in last["reason"] or "500 W" in last["reason"]) in \
        ((price, True), (too_low, True))
    # Both would have started and ended by then; the marker that the site got there: der1
    # has two measurements of its device (0.5 s each) taken after that.
    ended = max(too_low_ms + 2000, price_ms + 2 * 2000)
    wait_until(ended)
    site.wait_for("der1", lambda n: (n["detail"].get("measured") or {}).get("at", 0) >= ended + 1000, timeout=20)
    assert [v for _, v in commands_since(watcher, since) if v != RESERVE_W] == []


def test_after_kill_9_the_endpoint_registers_again_and_the_running_event_is_untouched(env):
    site, vtn, watcher = env["site"], env["vtn"], env["watcher"]
    since = time.time_ns()
    event_id, start_ms = vtn.event([3300], lead_s=2.0, length_s=12)
    assert vtn.opt_of(event_id) == "optIn"
    wait_for_command(watcher, 3300.0, since, timeout=10.0)
    before = len(vtn.registrations)
    pid = site.node("openadr")["pid"]
    os.kill(pid, signal.SIGKILL)
    node = site.wait_for("openadr", lambda n: n["pid"] != pid and n["state"] == "running"
                         and n["detail"]["registered"] is True, timeout=20)
    assert len(vtn.registrations) == before + 1
    # The VTN sent the event again at the new registration: recognised as armed, not rewritten.
    node = site.wait_for("openadr", lambda n: n["detail"]["rearmed_unchanged"] >= 1, timeout=5)
    assert event_id in node["detail"]["held"].values()
    end_ns = (start_ms + 12_000) * 1_000_000
    t = wait_for_command(watcher, RESERVE_W, since, timeout=20.0)
    assert t >= end_ns - 50_000_000, "the limit went away before the event's end"
    assert [v for tt, v in commands_since(watcher, since) if tt < end_ns - 50_000_000] == [3300.0]


def test_after_a_vtn_outage_the_ven_registers_again_and_follows_the_next_event(env):
    site, vtn, watcher = env["site"], env["vtn"], env["watcher"]
    before = len(vtn.registrations)
    vtn.stop()
    site.wait_for("openadr", lambda n: n["detail"]["registered"] is False, timeout=10)
    time.sleep(max(0.0, 5.0 - 3.0))   # a 5 s outage in all (about 3 s went into noticing it)
    vtn.start()                       # a restarted VTN: it knows no VEN
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(vtn.registrations) == before:
        time.sleep(0.05)
    assert len(vtn.registrations) == before + 1, vtn.registrations
    assert vtn.registrations[-1][1:] == ("site-ven", VEN)
    site.wait_for("openadr", lambda n: n["detail"]["registered"] is True, timeout=5)
    since = time.time_ns()
    event_id, _ = vtn.event([2200], lead_s=2.0, length_s=2)
    assert vtn.opt_of(event_id) == "optIn"
    wait_for_command(watcher, 2200.0, since, timeout=10.0)
    assert site.node("openadr")["detail"]["lost"] >= 1 and site.node("openadr")["state"] == "running"


# -- the simulated VTN (relevent/simulators/openadr_vtn.py) inside a site ------------------------------------------
def test_the_simulated_vtn_registers_the_site_issues_events_and_hears_opt_in_and_reports(tmp_path):
    broker_port, vtn_port = free_port(), free_port()
    path, state = tmp_path / "sim.toml", tmp_path / "state"
    text = topology(state, free_port(), f"http://127.0.0.1:{vtn_port}/OpenADR2/Simple/2.0b", broker_port)
    text = text.replace('port = {0}\nreconnect_delay = 0.2'.format(broker_port),
                        f'port = {broker_port}\nreconnect_delay = 0.2\nembedded_broker = true', 1)
    text += f"""
[[simulator]]
name = "vtn"
protocol = "openadr-vtn"
port = {vtn_port}
poll_s = 1.0
report_s = 1.0
first_event_s = 1.0
event_every_s = 6.0
lead_s = 2.0
interval_s = 1
values = [3000.0, 2000.0]
"""
    path.write_text(text)
    site = Site(path, state)
    try:
        site.start(timeout=60)
        node = site.wait_for("vtn", lambda n: any(v["opt_in"] >= 1 and v["reports"] >= 1
                                                  for v in n["detail"]["vens"].values()), timeout=20)
        ven = node["detail"]["vens"][VEN]
        assert ven["registrations"] == 1 and ven["opt_out"] == 0 and ven["events"] >= 1
        site.wait_for("der1/MaxPow", lambda n: n["detail"]["output"] in (3000.0, 2000.0), timeout=10)
        site.stop()
        assert site.leftovers() == []
    finally:
        site.kill_everything()
