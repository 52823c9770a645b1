"""Hardening of every input, the pure parts (../shared/spec/security.md section 5): the device
command is bounded whatever the outputs, the MQTT pivot never carries a non-finite number,
an enable refuses infinite values and values beyond the DER's rating, a forecast's work is
bounded, repeated log messages are rate-limited and relevent.log rotates, snippet keys are
quoted, and the state dir is resolved by one rule."""
from __future__ import annotations

import json
import logging
import math
import time
import pytest
import tomllib
from hypothesis import given, settings
from hypothesis import strategies as st

from relevent.actors.der import DerActor
from relevent.devices.command import bound_value, device_command, function_values
from relevent.messages import DeviceCommand, ForecastReply
from relevent.protocols.mqtt import pivot
from relevent.protocols.mqtt.endpoint import MqttEndpoint
from relevent.runtime import logs
from relevent.runtime.runner import SiteRunner
from relevent.scheduling.arbitration import forecast
from relevent.scheduling.schedule import SLOTS, START_SLOTS, EnaErr, Schedule, StartTime
from relevent.topology import load_topology
from relevent.topology.edit import add_endpoint, parse_snippet

INF = math.inf

# -- 1. the device command, whatever the outputs ---------------------------------------------------
any_number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 12, 10 ** 12),
                       st.sampled_from([INF, -INF, math.nan, 0.0, -0.0]))
output = st.one_of(st.none(), any_number)
ratings = st.one_of(st.floats(min_value=1e-3, max_value=1e9), st.integers(1, 10 ** 7))


def reference_command(act, max_pow, on_off, rated):
    """Brute force from the rule, case by case: the candidates a value may take, and the
    one the rule picks (NaN: the safe value, 0 W)."""
    rated = float(rated)
    if max_pow is None:
        limit = rated
    elif math.isnan(max_pow):
        limit = 0.0
    else:
        limit = sorted([0.0, float(max_pow), rated])[1]   # the median clamps to [0, rated]
    if act is None:
        setpoint = limit
    elif math.isnan(act):
        setpoint = 0.0
    else:
        setpoint = sorted([-rated, float(act), limit])[1]  # clamps to [-rated, limit] (limit >= 0 > -rated)
    connected = True if on_off is None else bool(on_off)
    return (setpoint if connected else 0.0), limit, connected


@settings(max_examples=400, deadline=None)
@given(act=output, max_pow=output, on_off=st.one_of(st.none(), st.booleans()), rated=ratings)
def test_the_device_command_matches_the_brute_force_rule_and_is_always_finite_and_within_the_rating(
        act, max_pow, on_off, rated):
    outputs = {k: v for k, v in (("ActPow", act), ("MaxPow", max_pow), ("OnOff", on_off)) if v is not None}
    cmd = device_command(outputs, rated)
    assert (cmd.setpoint_w, cmd.limit_w, cmd.connected) == reference_command(act, max_pow, on_off, rated)
    assert math.isfinite(cmd.setpoint_w) and math.isfinite(cmd.limit_w)
    assert 0.0 <= cmd.limit_w <= rated and -rated <= cmd.setpoint_w <= cmd.limit_w
    values = function_values(outputs, rated)
    assert set(values) == set(outputs)
    for kind, value in values.items():
        if kind != "OnOff":
            assert math.isfinite(value) and -rated <= value <= rated
    if "ActPow" in values:
        assert values["ActPow"] <= cmd.limit_w


@pytest.mark.parametrize("rated", [0, -1, INF, math.nan, None, "10000"])
def test_a_device_command_needs_a_finite_positive_rating(rated):
    with pytest.raises(ValueError, match="rated_power_w"):
        device_command({"ActPow": 1.0}, rated)


@pytest.mark.parametrize("value", [INF, -INF, math.nan])
def test_the_pivot_encoder_refuses_a_non_finite_ctlval(value):
    with pytest.raises(pivot.PivotError, match="finite"):
        pivot.pivot_command("ActPow", value, "X", 0)
    with pytest.raises(pivot.PivotError, match="finite"):
        pivot.pivot_schedule("MaxPow", [(0, value, "FSCH01")], "X")


class _Sent:
    """An MqttEndpoint without a broker: what it would publish."""

    def __init__(self, rated: float) -> None:
        config = {"name": "mqtt", "topic_command": "cmd", "topic_schedule": "sched", "qos": 0, "retain": False,
                  "ders": [{"name": "bat1", "functions": ["ActPow", "MaxPow", "OnOff"], "rated_power_w": rated}]}
        self.endpoint = MqttEndpoint(None, config)
        self.payloads: list[tuple[str, dict]] = []
        # allow_nan=False would have failed to parse -Infinity: JSON only.
        self.endpoint._publish = lambda topic, payload: self.payloads.append(
            (topic, json.loads(payload, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))))


@pytest.mark.parametrize("act, max_pow, expected", [
    (-INF, 3000.0, {"ActPow": -5000.0, "MaxPow": 3000.0}),
    (INF, -INF, {"ActPow": 0.0, "MaxPow": 0.0}),
    (math.nan, math.nan, {"ActPow": 0.0, "MaxPow": 0.0}),
    (1e12, 1e12, {"ActPow": 5000.0, "MaxPow": 5000.0}),
])
def test_the_mqtt_pivot_command_carries_the_bounded_value_never_infinity(act, max_pow, expected):
    sent = _Sent(5000.0)
    outputs = {"ActPow": (act, "FSCH01"), "MaxPow": (max_pow, "FSCH01"), "OnOff": (True, "Res_FSCH01")}
    cmd = DeviceCommand("bat1", 0.0, 0.0, True, outputs, [], 1000, 1)
    sent.endpoint.on_message(cmd, None)
    got = {}
    for topic, doc in sent.payloads:
        gtic = doc["parameters"][0]["value"]["GTIC"]
        assert topic == "cmd"
        if "ApcTyp" in gtic:
            got[gtic["Identifier"].split(".")[1]] = gtic["ApcTyp"]["ctlVal"]
    assert got == expected


def test_the_mqtt_pivot_schedule_carries_bounded_values_never_infinity():
    sent = _Sent(5000.0)
    reply = ForecastReply(1, "bat1", "ActPow", [(0, -INF, "FSCH01"), (1000, 7000.0, "FSCH01"),
                                                 (2000, math.nan, "FSCH01"), (3000, None, None)])
    sent.endpoint.on_message(reply, None)
    [(topic, doc)] = sent.payloads
    assert topic == "sched"
    assert [p["value"]["GTIC"]["ApcTyp"]["ctlVal"] for p in doc["parameters"]] == [-5000.0, 5000.0, 0.0]
    assert bound_value("MaxPow", -1.0, 5000) == 0.0 and bound_value("OnOff", 1, 5000) is True


# -- 2. values finite, and within the rating, at enable -------------------------------------------
NOW = 1_800_000_000_000


def ready(values: list, limit: float | None = None, boolean: bool = False) -> Schedule:
    s = Schedule("FSCH01", limit=limit, boolean=boolean)
    s.write_num_entr(len(values))
    s.write_intv(1)
    for i, v in enumerate(values, start=1):
        s.write_value(i, v)
    s.write_start(1, NOW + 10_000, NOW)
    return s


@pytest.mark.parametrize("bad", [INF, -INF, math.nan])
def test_an_enable_with_an_infinite_or_nan_value_is_refused_with_schdenaerr_values(bad):
    s = ready([1.0, bad, 2.0])
    outcome = s.enable(NOW)
    assert not outcome.ok and s.status.ena_err == EnaErr.VALUES
    assert "SchdEnaErr 4 (VALUES): Val002" in outcome.reason and "finite" in outcome.reason


def test_an_enable_beyond_the_rating_is_refused_and_within_it_accepted():
    over = ready([10000.0, -10000.5], limit=10000.0)
    outcome = over.enable(NOW)
    assert not outcome.ok and over.status.ena_err == EnaErr.VALUES
    assert "Val002 = -10000.5 exceeds the DER's rating of 10000 W" in outcome.reason
    assert ready([10000.0, -10000.0], limit=10000.0).enable(NOW).ok
    assert ready([1e12], limit=None).enable(NOW).ok              # no rating known: no bound
    assert ready([True, False], limit=10000.0, boolean=True).enable(NOW).ok


def test_values_past_numentr_are_not_checked_and_the_sites_own_enable_ignores_the_rating():
    s = ready([1.0, 2.0], limit=10.0)
    s.write_value(3, INF)     # beyond NumEntr: never runs
    assert s.enable(NOW).ok
    reserve = ready([50.0], limit=10.0)
    assert reserve.enable(NOW, by_site=True).ok          # the reserve must run: bounded at the device
    assert not ready([INF], limit=10.0).enable(NOW, by_site=True).ok


def test_a_ders_controllers_are_given_its_rating():
    der = DerActor()
    der.config = {"name": "pv1", "functions": ["ActPow", "OnOff"], "schedules": 1, "rated_power_w": 7000.0}
    assert {spec.config["rated_power_w"] for spec in der.child_specs()} == {7000.0}


# -- 3. forecasts capped -----------------------------------------------------------------------------
def full_schedules(count: int = 10) -> list[Schedule]:
    """The worst case of the finding: `count` schedules with every start slot and every
    value slot used, values alternating so that every entry boundary is a change."""
    out = []
    for n in range(1, count + 1):
        s = Schedule(f"FSCH{n:02d}")
        s.settings.num_entr, s.settings.schd_intv, s.settings.prio = SLOTS, 1, n
        s.settings.values = [float((i + n) % 2 * 1000 + n) for i in range(SLOTS)]
        s.settings.starts = [StartTime(NOW + 1000 + k * SLOTS * 1000 + n * 7) for k in range(START_SLOTS)]
        assert s.enable(NOW).ok
        out.append(s)
    return out


def test_a_worst_case_forecast_is_bounded_in_time_and_its_first_events_are_the_full_forecasts():
    schedules = full_schedules()
    # CPU time: the work is what is bounded; wall time on a busy CI box would measure the
    # neighbours too.  Measured 47-127 ms of CPU in 30 runs on the busy 2-core box (shared
    # caches), 1.3 s before the cap: 0.65 s is 5 times the worst.  That the cap cuts is
    # shown by the lengths below, not by the time (uncapped now takes 0.35-0.46 s).
    started = time.process_time()
    capped = forecast(schedules, NOW)
    elapsed = time.process_time() - started
    full = forecast(schedules, NOW, max_events=None, max_steps=None)
    assert elapsed < 0.65, f"a capped forecast took {elapsed:.3f} s"
    assert len(full) > len(capped) >= 100
    assert capped == full[:len(capped)]
    assert capped[0] == (NOW, None, None) and capped[1][0] == NOW + 1000 + 7


def test_a_forecast_window_is_cut_to_a_week():
    s = Schedule("Res_FSCH01", periodic=True, reserve=True)
    from relevent.scheduling.calendar import Calendar, OccPer
    s.settings.num_entr, s.settings.schd_intv = 1, 60
    s.settings.starts[0] = StartTime(1000, Calendar(OccPer.HOUR))
    s.settings.values[0] = 5.0
    assert s.enable(NOW, by_site=True).ok
    events = forecast([s], NOW, 365 * 24 * 3600 * 1000, max_events=None, max_steps=None)
    assert events[-1][0] <= NOW + 7 * 24 * 3600 * 1000


# -- 5. the log: rotation and rate limiting -----------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _logger_with(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_repeated_warnings_are_let_through_n_times_per_interval_then_summarised_once():
    clock, keep = _Clock(), _Keep()
    keep.addFilter(logs.RepeatFilter(burst=3, interval_s=60.0, clock=clock))
    log = _logger_with(keep, "relevent.test.repeat")
    for i in range(100):
        log.warning("rejected payload: %s", i)
    log.warning("something else %s", 1)
    assert keep.lines == ["rejected payload: 0", "rejected payload: 1", "rejected payload: 2", "something else 1"]
    clock.t = 61.0
    log.warning("rejected payload: %s", "late")
    summary = "suppressed 97 similar messages in 61 s (logger relevent.test.repeat): rejected payload: %s"
    assert keep.lines[4:] == [summary, "rejected payload: late"]
    clock.t = 200.0
    log.warning("rejected payload: %s", "quiet")   # nothing suppressed since: no summary
    assert keep.lines[6:] == ["rejected payload: quiet"]
    for i in range(20):
        log.info("command %s", i)                   # information is never dropped
    assert keep.lines[7:] == [f"command {i}" for i in range(20)]


def test_one_repeat_filter_on_two_handlers_decides_each_record_once():
    clock, a, b = _Clock(), _Keep(), _Keep()
    shared = logs.RepeatFilter(burst=2, interval_s=10.0, clock=clock)
    a.addFilter(shared)
    b.addFilter(shared)
    log = _logger_with(a, "relevent.test.shared")
    log.addHandler(b)
    for i in range(5):
        log.warning("x %s", i)
    clock.t = 11.0
    log.warning("x %s", 9)
    assert a.lines == b.lines == ["x 0", "x 1", "suppressed 3 similar messages in 11 s (logger relevent.test.shared): "
                                  "x %s", "x 9"]


def test_relevent_log_rotates_at_its_size_and_keeps_its_backups(tmp_path):
    config = logs.log_config(str(tmp_path), "INFO", False)
    file = config["handlers"]["file"]
    assert issubclass(logs.SiteLogHandler, logging.handlers.RotatingFileHandler)
    assert (file["maxBytes"], file["backupCount"]) == (10 * 1024 * 1024, 5) and file["filters"] == ["repeat"]
    # Two writers of one file (the runner and thespian's logger process): each follows the
    # other's rotation, and no file grows past the size.
    one = logs.SiteLogHandler(str(tmp_path / "relevent.log"), maxBytes=2000, backupCount=3)
    two = logs.SiteLogHandler(str(tmp_path / "relevent.log"), maxBytes=2000, backupCount=3)
    log = _logger_with(one, "relevent.test.rotate")
    log.addHandler(two)
    for i in range(400):
        log.warning("line %04d %s", i, "x" * 40)
    one.close()
    two.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["relevent.log", "relevent.log.1", "relevent.log.2", "relevent.log.3"]
    assert all((tmp_path / f).stat().st_size <= 2000 for f in files)
    assert "line 0399" in (tmp_path / "relevent.log").read_text()


# -- 7. snippet keys quoted; one rule for the state dir --------------------------------------------------
def test_endpoint_add_quotes_snippet_keys_that_toml_cannot_leave_bare():
    snippet = parse_snippet('{name = "m2", protocol = "mms", "a.b" = 1, "with space" = "v", '
                            '"q\\"uote" = {"x.y" = 2}}')
    text = add_endpoint("[site]\nname = \"s\"\n", "wan", snippet)
    assert '"a.b" = 1' in text and '"with space" = "v"' in text
    assert tomllib.loads(text)["wan"][0] == snippet


def test_the_state_dir_is_resolved_against_the_working_directory_on_every_path(tmp_path, monkeypatch):
    folder = tmp_path / "topologies"
    folder.mkdir()
    (folder / "site.toml").write_text('[site]\nname = "s"\nstate_dir = "./state"\n')
    monkeypatch.chdir(tmp_path)
    topology = load_topology("topologies/site.toml")
    assert topology.state_dir == tmp_path / "state"
    runner = SiteRunner(topology)
    try:
        assert runner._parse(topology.text).state_dir == topology.state_dir
        # Past the "needs a restart" check: refused only because no site runs here.
        reply = runner.endpoint_add("wan", '{name = "m2", protocol = "mms", port = 10999}')
        assert reply == {"ok": False, "error": "the site supervisor is not answering; try again"}
    finally:
        runner._signal_r.close()
        runner._signal_w.close()
