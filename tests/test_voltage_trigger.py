"""A local schedule triggered by a measurement (use case 4), end to end: a site with the
SunSpec inverter simulator over Modbus TCP and an MMS WAN endpoint.  The grid voltage is
moved from this process through the simulator's test hook (a Modbus write to model 103
PhVphA by pymodbus, not the site's code path); the curtailment is seen at the inverter
(its write log and registers, read by pysunspec2) and over MMS by open61850 (a client
that shares no code with the site), as an ordinary 90-10 schedule.

Trigger: voltage above 239 V, hysteresis 2 V, min_duration_s 2, clear_s 3 -> MaxPow
FSCH03 = 5000 W (50 % of 10 kW) at priority 220.  Measurements every 0.2 s.
"""
from __future__ import annotations

import os
import signal
import time

import pytest
import sunspec2.modbus.client as ssclient
from pymodbus.client import ModbusTcpClient

from lanctl import read_write_log
from mmsclients import Open61850Client
from sitectl import Site, free_port

LD = "DER_Scheduler_Control"
REF = f"{LD}/MaxPow_FSCH03"
POLL = 0.2
MIN_DURATION, CLEAR = 2.0, 3.0
# Slack on top of a delay the site promises (min_duration_s or clear_s, plus a measurement
# poll): 5 times the p99 of the way from a decision to the inverter's register on this busy
# 2-core box (257 ms, SunSpec at load average 11, bench/README.md "Heat pump"); measured
# here: 80-390 ms past the promised delay, poll included.
SLACK_MS = 1500
RUNNING = 4


def topology(state, ports: dict, write_log) -> str:
    return f"""[site]
name = "vt{ports['admin']}"
state_dir = "{state}"

[runtime]
admin_port = {ports['admin']}
allow_fault_injection = true

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[[wan]]
name = "mms"
protocol = "mms"
port = {ports['mms']}

[[der]]
name = "pv1"
type = "pv"
functions = ["MaxPow"]
schedules = 3
lan = "modbus"
address = 1
profile = "sunspec"
rated_power_w = 10000
reserve = {{ MaxPow = 10000.0 }}
locks = {{ MaxPow = {{ FSCH03 = ["DsaReq"] }} }}
local = [
  {{ trigger = "measurement", function = "MaxPow", schedule = "FSCH03", value = 5000.0, duration_s = 600, \
priority = 220, measure = "voltage_v", above = 239.0, hysteresis = 2.0, min_duration_s = {MIN_DURATION}, \
clear_s = {CLEAR} }},
]

[[lan]]
name = "modbus"
protocol = "modbus"
port = {ports['modbus']}
timeout = 0.5
poll_period = {POLL}

[[simulator]]
name = "inverter"
protocol = "sunspec-inverter"
port = {ports['modbus']}
wmax = 10000.0
write_log = "{write_log}"
"""


class Grid:
    """The grid at the simulated inverter, moved through its test hook (Modbus write of
    model 103 PhVphA, V_SF -1) by a pymodbus client of this process."""

    def __init__(self, port: int) -> None:
        dev = ssclient.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
        dev.scan()
        inv, ctl = dev.models[103][0], dev.models[123][0]
        self.phv = inv.model_addr + inv.PhVphA.offset
        self.wmaxlimpct = ctl.model_addr + ctl.WMaxLimPct.offset
        self.dev = dev
        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert self.client.connect()

    def set(self, volts: float) -> int:
        """Set the voltage; returns the time (ms, wall clock) just before: no measurement
        taken before it can have seen the new voltage."""
        before = time.time_ns() // 1_000_000
        rr = self.client.write_register(self.phv, round(volts * 10), device_id=1)
        assert not rr.isError(), rr
        return before

    def limit_pct(self) -> float:
        """WMaxLimPct read back from the inverter by pysunspec2."""
        ctl = self.dev.models[123][0]
        ctl.read()
        return ctl.WMaxLimPct.cvalue if ctl.WMaxLim_Ena.value == 1 else 100.0

    def close(self) -> None:
        self.client.close()
        self.dev.close()


def limit_writes(log, address: int, after_ms: int) -> list[tuple[int, float]]:
    """(ms, WMaxLimPct %) of the site's writes covering the limit register since `after_ms`."""
    out = []
    for w in read_write_log(log):
        if not w.get("hook") and w["address"] <= address < w["address"] + len(w["values"]) \
                and w["t_ns"] // 1_000_000 >= after_ms:
            out.append((w["t_ns"] // 1_000_000, w["values"][address - w["address"]] / 100))  # WMaxLimPct_SF -2
    return out


def first_write(log, address: int, after_ms: int, pct: float, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [t for t, p in limit_writes(log, address, after_ms) if p == pytest.approx(pct)]
        if hits:
            return hits[0]
        time.sleep(0.05)
    raise AssertionError(f"no write of {pct} % since {after_ms}: {limit_writes(log, address, after_ms)}")


@pytest.mark.timeout(90)
def test_voltage_above_239_curtails_after_min_duration_holds_through_a_dip_and_ends_after_clear(tmp_path):
    ports = {k: free_port() for k in ("admin", "mms", "modbus")}
    state, path, log = tmp_path / "state", tmp_path / "vt.toml", tmp_path / "writes.jsonl"
    path.write_text(topology(state, ports, log))
    site = Site(path, state).start()
    grid = None
    try:
        # The site measures the grid: 230 V, 50 Hz (the simulator's defaults) reach the DER's status.
        site.wait_for("pv1", lambda n: n["detail"].get("measured", {}).get("voltage_v") == 230.0)
        assert site.node("pv1")["detail"]["measured"]["frequency_hz"] == 50.0
        grid = Grid(ports["modbus"])
        assert grid.limit_pct() == pytest.approx(100.0)

        # Up past 239 V: nothing for min_duration_s, then MaxPow 50 % at the inverter.
        up = grid.set(241.0)
        pending = site.wait_for("pv1/MaxPow", lambda n: n["detail"]["triggers"] == {"FSCH03": "pending"}, timeout=10)
        assert pending["detail"]["source"] == "Res_FSCH01"
        armed = first_write(log, grid.wmaxlimpct, up, 50.0, timeout=10)
        assert MIN_DURATION * 1000 <= armed - up <= MIN_DURATION * 1000 + POLL * 1000 + SLACK_MS, armed - up
        assert grid.limit_pct() == pytest.approx(50.0)
        assert "trigger=measurement voltage_v=241.0 value=5000.0" in site.log.read_text()

        # Over MMS it is an ordinary schedule: Running, its settings, in force at the controller.
        mms = Open61850Client("127.0.0.1", ports["mms"])
        assert mms.read_int(f"{REF}.SchdSt.stVal") == RUNNING
        assert mms.read_int(f"{REF}.SchdPrio.setVal", "SP") == 220
        assert mms.read_int(f"{REF}.NumEntr.setVal", "SP") == 1
        assert mms.read_float(f"{REF}.ValASG001.setMag.f", "SP") == 5000.0
        assert mms.read_float(f"{REF}.ValMV.mag.f") == 5000.0
        assert abs(mms.read_time_ms(f"{REF}.ActStrTm.stVal") - armed) < 1000
        assert mms.read_str(f"{LD}/MaxPow_FSCC1.ActSchdRef.stVal") == REF
        assert mms.read_float(f"{LD}/MaxPow_GGIO1.AnOut1.mxVal.f") == 5000.0
        # The site locked DsaReq for clients: this one cannot lift the limit (the site can).
        assert mms.operate(f"{REF}.DsaReq", True)[0] is False
        mms.close()

        # A dip below 237 V (threshold - hysteresis) shorter than clear_s: it holds.
        dip = grid.set(235.0)
        # Back up as soon as the site has seen the dip: it must stay shorter than clear_s.
        site.wait_for("pv1/MaxPow", lambda n: n["detail"]["triggers"] == {"FSCH03": "clearing"}, timeout=CLEAR - 0.5)
        grid.set(240.0)
        site.wait_for("pv1/MaxPow", lambda n: n["detail"]["triggers"] == {"FSCH03": "active"}, timeout=10)
        # A marker, not a sleep: the site has measured the grid (every 0.2 s) for a second past
        # the moment clear_s after the dip began, when a dip taken for the end would end it.
        site.wait_for("pv1", lambda n: n["detail"]["measured"]["at"] >= dip + (CLEAR + 1) * 1000, timeout=20)
        assert site.node("pv1/MaxPow")["detail"]["triggers"] == {"FSCH03": "active"}
        assert all(p == pytest.approx(50.0) for _t, p in limit_writes(log, grid.wmaxlimpct, dip)), \
            limit_writes(log, grid.wmaxlimpct, dip)
        assert grid.limit_pct() == pytest.approx(50.0)

        # The controller restarts (kill -9) while the trigger is active: the site's
        # curtailment goes on (the trigger's "active" is saved with the schedule).
        os.kill(site.node("pv1/MaxPow")["pid"], signal.SIGKILL)
        site.wait_for("pv1/MaxPow", lambda n: n["restarts"] == 1 and n["state"] == "running")
        site.wait_for("pv1/MaxPow", lambda n: n["detail"].get("triggers") == {"FSCH03": "active"})
        assert site.node("pv1/MaxPow")["detail"]["source"] == "FSCH03"

        # Down for good: it ends clear_s later, and the limit is lifted at the inverter.
        down = grid.set(232.0)
        ended = first_write(log, grid.wmaxlimpct, down, 100.0, timeout=CLEAR + 10)
        assert CLEAR * 1000 <= ended - down <= CLEAR * 1000 + POLL * 1000 + SLACK_MS, ended - down
        assert grid.limit_pct() == pytest.approx(100.0)
        # (the status is what the last heartbeat brought: up to a heartbeat late)
        site.wait_for("pv1/MaxPow", lambda n: n["detail"]["triggers"] == {"FSCH03": "idle"}, timeout=10)
        mms = Open61850Client("127.0.0.1", ports["mms"])
        assert mms.read_int(f"{REF}.SchdSt.stVal") != RUNNING
        assert mms.quality_invalid(f"{REF}.ValMV.q", "MX") and mms.quality_invalid(f"{REF}.ActStrTm.q")
        assert mms.read_str(f"{LD}/MaxPow_FSCC1.ActSchdRef.stVal") == f"{LD}/MaxPow_Res_FSCH01"
        assert mms.read_float(f"{LD}/MaxPow_GGIO1.AnOut1.mxVal.f") == 10000.0
        mms.close()
        assert "local schedule ends controller=pv1/MaxPow schedule=FSCH03 trigger=measurement" in site.log.read_text()
    finally:
        if grid is not None:
            grid.close()
        site.stop()
        site.kill_everything()
