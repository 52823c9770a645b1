"""Measurement triggers of local schedules (use case 4): the pure state machine
(relevent/scheduling/trigger.py) by example and against a brute-force reference, the site's
arm / end / re-arm rules (relevent/scheduling/local.py), their topology checks, and the
SunSpec side that feeds them (the simulator's grid voltage, the profile that reads it).

The reference (`reference()` below) shares no code with relevent.scheduling.trigger: it
does not step through phases but looks, at each sample, at every window of samples ending
there, straight from the invariant in the trigger module's docstring:
* an inactive trigger arms at sample i when some window j..i of good samples has the
  condition set at j, not cleared anywhere in j..i, and t_i - t_j >= min_duration;
* an active trigger ends at sample i when some window j..i of good samples has it cleared
  at j, not set anywhere in j..i, and t_i - t_j >= clear;
and it names the phase the same way: pending / clearing while such a window exists but is
not long enough yet, its start being the phase's `since`.
"""
from __future__ import annotations

import asyncio
import math
import socket
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relevent.messages import Measurement
from relevent.scheduling.local import LocalSchedule, arm, end, measurement_rearm_due
from relevent.scheduling.schedule import Schedule, State
from relevent.scheduling.trigger import Condition, Decision, Phase, TriggerState, step
from relevent.topology import TopologyError, parse_topology

VOLTAGE = Condition(above=239.0, hysteresis=2.0, min_duration_ms=3000, clear_ms=5000)


def run(cond: Condition, samples: list, state: TriggerState = TriggerState()) -> list[tuple]:
    """(phase, decision) after each (t ms, value[, quality]) sample."""
    out = []
    for sample in samples:
        t, value, quality = (*sample, "good") if len(sample) == 2 else sample
        state, decision = step(cond, state, value, quality, t)
        out.append((state.phase, decision))
    return out


# -- by example ----------------------------------------------------------------------------------
def test_arms_only_once_the_condition_held_for_min_duration():
    got = run(VOLTAGE, [(0, 230.0), (1000, 240.0), (2000, 241.0), (3999, 240.0), (4000, 239.5), (5000, 245.0)])
    assert got == [(Phase.IDLE, Decision.NONE), (Phase.PENDING, Decision.NONE), (Phase.PENDING, Decision.NONE),
                   (Phase.PENDING, Decision.NONE), (Phase.ACTIVE, Decision.ARM), (Phase.ACTIVE, Decision.NONE)]


def test_the_threshold_itself_does_not_set_and_a_clear_sample_resets_a_pending_trigger():
    got = run(VOLTAGE, [(0, 239.0), (1000, 240.0), (2000, 236.9), (3000, 240.0), (5999, 240.0), (6000, 240.0)])
    assert [d for _p, d in got] == [Decision.NONE] * 5 + [Decision.ARM]
    assert got[0][0] == Phase.IDLE and got[2][0] == Phase.IDLE   # 239.0 is not above 239; 236.9 clears


def test_the_hysteresis_band_keeps_what_the_condition_was():
    # 237..239 V: neither sets nor clears.  Pending goes on through it (and arms), ...
    got = run(VOLTAGE, [(0, 240.0), (1000, 238.0), (3000, 237.0), (4000, 238.5)])
    assert [p for p, _d in got] == [Phase.PENDING, Phase.PENDING, Phase.ACTIVE, Phase.ACTIVE]
    # ... an idle trigger stays idle in it, and a clearing one keeps clearing in it.
    assert run(VOLTAGE, [(0, 238.9)]) == [(Phase.IDLE, Decision.NONE)]
    got = run(VOLTAGE, [(0, 236.0), (3000, 238.9), (5000, 238.9)], TriggerState(Phase.ACTIVE))
    assert got == [(Phase.CLEARING, Decision.NONE), (Phase.CLEARING, Decision.NONE), (Phase.IDLE, Decision.END)]


def test_a_dip_shorter_than_clear_does_not_end_it_and_a_long_one_does():
    active = TriggerState(Phase.ACTIVE)
    got = run(VOLTAGE, [(0, 235.0), (4000, 235.0), (4500, 240.0), (8000, 236.0), (12999, 230.0), (13000, 230.0)],
              active)
    assert got == [(Phase.CLEARING, Decision.NONE), (Phase.CLEARING, Decision.NONE), (Phase.ACTIVE, Decision.NONE),
                   (Phase.CLEARING, Decision.NONE), (Phase.CLEARING, Decision.NONE), (Phase.IDLE, Decision.END)]


@pytest.mark.parametrize("bad", [(None, "good"), (math.nan, "good"), (math.inf, "good"), (241.0, "invalid"),
                                 (241.0, "questionable")])
def test_an_invalid_or_missing_sample_neither_arms_nor_ends_and_restarts_the_timers(bad):
    value, quality = bad
    # Pending 2.9 s, then no evidence: back to idle; the 3 s count from the next good sample.
    got = run(VOLTAGE, [(0, 241.0), (2900, 241.0), (3000, value, quality), (3100, 241.0), (6099, 241.0),
                        (6100, 241.0)])
    assert [d for _p, d in got] == [Decision.NONE] * 5 + [Decision.ARM]
    assert got[2][0] == Phase.IDLE
    # Clearing 4.9 s, then no evidence: still active; the 5 s count again.
    got = run(VOLTAGE, [(0, 230.0), (4900, 230.0), (5000, value, quality), (5100, 230.0), (10099, 230.0),
                        (10100, 230.0)], TriggerState(Phase.ACTIVE))
    assert [d for _p, d in got] == [Decision.NONE] * 5 + [Decision.END]
    assert got[2][0] == Phase.ACTIVE
    # Idle and active are left as they are.
    assert run(VOLTAGE, [(0, value, quality)]) == [(Phase.IDLE, Decision.NONE)]
    assert run(VOLTAGE, [(0, value, quality)], TriggerState(Phase.ACTIVE)) == [(Phase.ACTIVE, Decision.NONE)]


def test_below_a_threshold_and_zero_durations_act_on_the_sample_itself():
    under = Condition(below=49.8, hysteresis=0.1)
    got = run(under, [(0, 50.0), (1, 49.7), (2, 49.85), (3, 49.95)])
    assert got == [(Phase.IDLE, Decision.NONE), (Phase.ACTIVE, Decision.ARM), (Phase.ACTIVE, Decision.NONE),
                   (Phase.IDLE, Decision.END)]


# -- against the brute-force reference ------------------------------------------------------------
def reference(above: float | None, below: float | None, hyst: float, min_ms: int, clear_ms: int,
              samples: list[tuple[int, float | None, str]]) -> list[tuple[str, int | None, str]]:
    """(phase, since, decision) after each sample, from the windows (module docstring)."""
    def good(k: int) -> bool:
        _t, v, q = samples[k]
        return q == "good" and v is not None and not isinstance(v, bool) and math.isfinite(v)

    def sets(k: int) -> bool:
        v = samples[k][1]
        return good(k) and (v > above if above is not None else v < below)

    def clears(k: int) -> bool:
        v = samples[k][1]
        return good(k) and (v < above - hyst if above is not None else v > below + hyst)

    def held(j: int, i: int) -> bool:
        return sets(j) and all(good(k) and not clears(k) for k in range(j, i + 1))

    def cleared(j: int, i: int) -> bool:
        return clears(j) and all(good(k) and not sets(k) for k in range(j, i + 1))

    def open_windows(active: bool, i: int) -> list[int]:
        """Starts of the windows ending at i that would change the trigger (earliest first)."""
        return [j for j in range(i + 1) if (cleared if active else held)(j, i)]

    out, active = [], False
    for i, (t, _v, _q) in enumerate(samples):
        decision = "none"
        starts = open_windows(active, i)
        if starts and t - samples[starts[0]][0] >= (clear_ms if active else min_ms):
            active, decision = not active, "end" if active else "arm"
            starts = open_windows(active, i)
        if starts:
            out.append(("clearing" if active else "pending", samples[starts[0]][0], decision))
        else:
            out.append(("active" if active else "idle", None, decision))
    return out


# Values on both sides of every threshold and band edge (thresholds -1, 0, 1.5 with hysteresis
# 0-2.5: equal to the threshold or to its edge too); 1 in 10 missing or not finite.
VALUES = [float(v) for v in range(-4, 5)] * 4 + [None, math.nan, math.inf, -math.inf]
# Runs of one value, so that conditions hold (and stay clear) long enough to arm and end.
runs_st = st.lists(st.tuples(st.sampled_from([0, 1, 100, 250, 499, 500, 1000, 2000]),  # ms between samples
                             st.sampled_from(VALUES),
                             st.sampled_from(["good"] * 12 + ["invalid", "questionable"]),
                             st.integers(1, 6)),                                       # samples in the run
                   min_size=1, max_size=12)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(["above", "below"]), threshold=st.sampled_from([-1.0, 0.0, 1.5]),
       hyst=st.sampled_from([0.0, 0.0, 1.0, 2.0, 2.5]), min_ms=st.sampled_from([0, 0, 500, 1000, 2500]),
       clear_ms=st.sampled_from([0, 0, 500, 1000, 2500]), runs=runs_st, t0=st.integers(0, 2 ** 41))
def test_the_state_machine_agrees_with_the_reference(mode, threshold, hyst, min_ms, clear_ms, runs, t0):
    above, below = (threshold, None) if mode == "above" else (None, threshold)
    samples, t = [], t0
    for dt, value, quality, n in runs:
        for _ in range(n):
            t += dt
            samples.append((t, value, quality))
    expected = reference(above, below, hyst, min_ms, clear_ms, samples)
    cond, state = Condition(above, below, hyst, min_ms, clear_ms), TriggerState()
    decisions = []
    for (t, value, quality), (phase, since, decision) in zip(samples, expected):
        state, got = step(cond, state, value, quality, t)
        assert (state.phase.value, state.since, got.value) == (phase, since, decision), (samples, expected)
        if got != Decision.NONE:
            decisions.append(got)
        event(f"phase {phase}")
    # Arm and end alternate, arm first.
    assert decisions == [Decision.ARM, Decision.END] * (len(decisions) // 2) + [Decision.ARM] * (len(decisions) % 2)
    event(f"{len(decisions)} decisions")


# -- the site's arm / end / re-arm (local.py) ----------------------------------------------------------
CURTAIL = LocalSchedule.from_config({"trigger": "measurement", "function": "MaxPow", "schedule": "FSCH03",
                                     "value": 5000, "duration_s": 60, "priority": 220, "measure": "voltage_v",
                                     "above": 239, "hysteresis": 2, "min_duration_s": 3, "clear_s": 5.5})


def test_a_measurement_trigger_reads_its_quantity_and_keys_from_the_config():
    assert CURTAIL.condition == Condition(239.0, None, 2.0, 3000, 5500)
    m = Measurement("pv1", 7000.0, True, 0, voltage_v=240.1, frequency_hz=50.02)
    assert CURTAIL.measured(m) == 240.1
    assert LocalSchedule("measurement", "FSCH03", 1.0, 1, 1, measure="frequency_hz").measured(m) == 50.02
    assert LocalSchedule("measurement", "FSCH03", 1.0, 1, 1, measure="power_w").measured(m) == 7000.0
    # A sender that predates voltage and frequency still makes a Measurement: they are missing.
    assert CURTAIL.measured(Measurement("pv1", 7000.0, True, 0, "good", "modbus", "")) is None
    # A control box's contact reads 1.0 closed, 0.0 open, None where the device has none.
    box = LocalSchedule("measurement", "FSCH02", 4200.0, 1, 1, measure="contact", above=0.5)
    assert box.measured(Measurement("hp1", None, True, 0, contact=True)) == 1.0
    assert box.measured(Measurement("hp1", None, True, 0, contact=False)) == 0.0
    assert box.measured(m) is None


def test_the_site_ends_its_run_despite_client_locks_and_runs_it_again_while_the_condition_holds():
    sched = Schedule("FSCH03", locked=frozenset({"DsaReq", "EnaReq"}))
    sched.settings.values = [0.0] * 10
    assert arm(sched, CURTAIL, 1_000).ok and sched.status.state == State.RUNNING and sched.value() == 5000.0
    assert not measurement_rearm_due(TriggerState(Phase.ACTIVE), sched)
    assert not sched.disable().ok                      # a client cannot lift it: DsaReq locked
    assert end(sched).ok and sched.status.state == State.NOT_READY and sched.value() is None
    # Its run is over while the trigger is still active (or clearing): due again; not when idle.
    assert measurement_rearm_due(TriggerState(Phase.ACTIVE), sched)
    assert measurement_rearm_due(TriggerState(Phase.CLEARING, 5), sched)
    assert not measurement_rearm_due(TriggerState(Phase.IDLE), sched)
    assert not measurement_rearm_due(TriggerState(Phase.PENDING, 5), sched)
    arm(sched, CURTAIL, 2_000)
    sched.advance(62_000)                               # duration_s elapsed
    assert sched.status.state != State.RUNNING and measurement_rearm_due(TriggerState(Phase.ACTIVE), sched)
    reserve = Schedule("Res_FSCH01", periodic=True, reserve=True)
    assert not end(reserve).ok


# -- topology checks --------------------------------------------------------------------------------
BASE = """[site]
name = "s"
[[der]]
name = "d"
functions = ["MaxPow"]
schedules = 3
local = [{{ trigger = "power_up", function = "MaxPow", schedule = "FSCH01", value = 1.0, duration_s = 1, \
priority = 1 }}, {entry}]
"""
COMMON = 'function = "MaxPow", schedule = "FSCH02", value = 5000.0, duration_s = 60, priority = 220'


@pytest.mark.parametrize("entry, message", [
    (f'{{ trigger = "measurement", {COMMON}, measure = "voltage_v" }}',
     "local[1].above: measurement trigger needs exactly one of above/below"),
    (f'{{ trigger = "measurement", {COMMON}, measure = "voltage_v", above = 239, below = 200 }}',
     "local[1].above: measurement trigger needs exactly one of above/below"),
    (f'{{ trigger = "measurement", {COMMON}, above = 239 }}', "local[1]: missing measure"),
    (f'{{ trigger = "measurement", {COMMON}, measure = "volts", above = 239 }}',
     "local[1].measure: 'volts' is not one of voltage_v, frequency_hz, power_w"),
    (f'{{ trigger = "measurement", {COMMON}, measure = "voltage_v", above = 239, hysteresis = -1 }}',
     "local[1].hysteresis: must be >= 0, got -1"),
    (f'{{ trigger = "measurement", {COMMON}, measure = "voltage_v", above = 239, min_duration_s = -0.5 }}',
     "local[1].min_duration_s: must be >= 0, got -0.5"),
    (f'{{ trigger = "measurement", {COMMON}, measure = "voltage_v", above = 239, clear_s = "5" }}',
     "local[1].clear_s: wrong type str"),
    (f'{{ trigger = "measurement", {COMMON}, measure = "voltage_v", above = true }}',
     "local[1].above: wrong type bool"),
    (f'{{ trigger = "measurement", {COMMON}, measure = "voltage_v", above = 239, after_s = 5 }}',
     'local[1].after_s: only for trigger = "no_telecom"'),
    (f'{{ trigger = "no_telecom", {COMMON}, after_s = 5, above = 239 }}',
     'local[1].above: only for trigger = "measurement"'),
    (f'{{ trigger = "threshold", {COMMON} }}',
     "local[1].trigger: 'threshold' is not power_up or no_telecom or measurement"),
])
def test_bad_measurement_triggers_name_the_key_and_the_rule(entry, message):
    with pytest.raises(TopologyError) as err:
        parse_topology(BASE.format(entry=entry), "t.toml", env={})
    assert "t.toml:7: der[0].local" in str(err.value) and message in str(err.value), str(err.value)


def test_a_measurement_trigger_with_defaults_loads():
    topo = parse_topology(BASE.format(entry=f'{{ trigger = "measurement", {COMMON}, measure = "frequency_hz", '
                                            'below = 49.8 }'), "t.toml", env={})
    local = LocalSchedule.from_config(topo.data["der"][0]["local"][1])
    assert local.condition == Condition(None, 49.8, 0.0, 0, 0)


SIM = """[site]
name = "s"
[[simulator]]
name = "inv"
protocol = "sunspec-inverter"
port = 5020
{extra}
"""


def test_simulator_voltage_keys_are_checked():
    topo = parse_topology(SIM.format(extra="grid_voltage_v = 231\nvoltage_steps = [[5, 241.0], [20, 232]]"),
                          "s.toml", env={})
    sim = topo.data["simulator"][0]
    assert sim["grid_voltage_v"] == 231.0 and sim["voltage_steps"] == [[5, 241.0], [20, 232]]
    assert parse_topology(SIM.format(extra=""), "s.toml", env={}).data["simulator"][0]["grid_voltage_v"] == 230.0
    for bad, message in (("voltage_steps = [[5]]", "[5] is not [after_s >= 0, volts > 0]"),
                         ("voltage_steps = [[-1, 240]]", "[-1, 240] is not [after_s >= 0, volts > 0]"),
                         ("voltage_steps = [5]", "every item must be"),
                         ("grid_voltage_v = 0", "must be > 0")):
        with pytest.raises(TopologyError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_topology(SIM.format(extra=bad), "s.toml", env={})


# -- the SunSpec side: simulator grid, test hook, profile ----------------------------------------------------
def test_simulator_shows_the_grid_in_model_103_with_its_scale_factors():
    from relevent.simulators.sunspec_inverter import SunSpecImage
    img = SunSpecImage([1, 103, 121, 123], 10000.0, 10000.0, 0.0, "x", grid_v=241.3)
    assert [img.get(103, p) for p in ("PhVphA", "PhVphB", "PhVphC", "V_SF", "Hz", "Hz_SF")] == \
        [2413, 2413, 2413, -1, 5000, -2]
    img.set_grid(228.75)
    assert img.scaled(103, "PhVphA") == pytest.approx(228.8) and img.grid_v == 228.75
    # Single phase (model 101): the phases it does not have are "not implemented".
    one = SunSpecImage([1, 101, 123], 5000.0, 5000.0, 0.0, "y")
    assert one.get(101, "PhVphA") == 2300 and one.get(101, "PhVphB") == 0xFFFF
    # The test hook takes writes to the phase voltages or Hz only, nothing next to them.
    phv, hz, w = (img.addr[103] + img._index(103, n)[1].offset for n in ("PhVphA", "Hz", "W"))
    assert img.hook_points(phv, 1) == ["103.PhVphA"] and img.hook_points(hz, 1) == ["103.Hz"]
    assert img.hook_points(phv, 4) == [] and img.hook_points(w, 1) == [] and not img.writable(phv, 1)


def test_profile_reads_voltage_and_frequency_set_at_the_simulator_from_outside():
    """The SunSpec profile against the simulator over Modbus TCP: the scenario's step, then
    a pymodbus client that is not the profile moves the grid through the test hook."""
    from pymodbus.client import AsyncModbusTcpClient

    from relevent.protocols.modbus.profiles import Io, SunSpecProfile
    from relevent.simulators.sunspec_inverter import SunSpecInverter
    from sitectl import free_port

    def simulator(models: list[int], **extra) -> tuple[SunSpecInverter, int]:
        port = free_port()
        sim = SunSpecInverter(None, {"name": "inv", "address": "127.0.0.1", "port": port, "unit": 1,
                                     "wmax": 10000.0, "available_w": 6000.0, "ramp_w_per_s": 0.0, "models": models,
                                     "write_log": "", **extra})
        sim.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # listening once a connection is accepted
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        return sim, port

    async def measure(port: int) -> tuple:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0, reconnect_delay=0)
        try:
            assert await client.connect()
            profile = SunSpecProfile(Io(client, 1), {"rated_power_w": 10000.0}, 30)
            await profile.discover()
            w, conn = await profile.measure()
            return w, conn, profile.voltage_v, profile.frequency_hz
        finally:
            client.close()

    async def hook(port: int, offset_of: str, counts: int) -> None:
        from relevent.devices import sunspec
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0, reconnect_delay=0)
        try:
            assert await client.connect()
            models = await sunspec.discover(lambda a, n: _read(client, a, n))
            rr = await client.write_register(models[103] + sunspec.layout(103)[offset_of].offset, counts,
                                             device_id=1)
            assert not rr.isError()
        finally:
            client.close()

    def eventually(port: int, expected: tuple) -> tuple:
        deadline = time.monotonic() + 5
        while (got := asyncio.run(measure(port))) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    sim, port = simulator([1, 103, 121, 123, 704], voltage_steps=[[0.3, 241.5]])
    try:
        assert asyncio.run(measure(port))[2] == 230.0            # grid_voltage_v's default, until the step
        assert eventually(port, (6000.0, True, 241.5, 50.0)) == (6000.0, True, 241.5, 50.0)
        asyncio.run(hook(port, "PhVphA", 2334))             # 233.4 V (V_SF -1)
        asyncio.run(hook(port, "Hz", 4985))                 # 49.85 Hz (Hz_SF -2)
        assert asyncio.run(measure(port)) == (6000.0, True, 233.4, 49.85)
        assert sim.detail()["grid_voltage_v"] == 233.4 and sim.detail()["writes"] == 0  # not control writes
    finally:
        sim.stop()
    sim, port = simulator([1, 101, 121, 123])               # single phase: the same points
    try:
        assert eventually(port, (6000.0, True, 230.0, 50.0)) == (6000.0, True, 230.0, 50.0)
    finally:
        sim.stop()


async def _read(client, address: int, count: int) -> list[int]:
    from relevent.devices import sunspec
    rr = await client.read_holding_registers(address, count=count, device_id=1)
    if rr.isError():
        raise sunspec.SunSpecError(str(rr))
    return list(rr.registers)
