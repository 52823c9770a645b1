"""A heat pump in a running site: MMS in, SG-Ready over Modbus out, the heat-pump simulator
as the device.  A block written over MMS reaches SG-Ready state 1 no sooner than the
compressor's minimum run time allows and is lifted after block_max_s; a DSO limit below
4.2 kW is applied as 4.2 kW; `relevent status` shows the SG-Ready state, the measured power
and the tank temperature; kill -9 of the heat pump's DER during a block leaves the block
intact.  The simulator's register writes are read from its write log; its registers with a
pymodbus client."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from lanctl import read_write_log
from mmsclients import Open61850Client
from sitectl import Site, free_port, now_ms, walk

LD = "DER_Scheduler_hp1Control"


def topology(state: Path, ports: dict, log: Path, min_run_s: float, block_max_s: float) -> str:
    return f"""[site]
name = "hp{ports['admin']}"
state_dir = "{state}"

[runtime]
admin_port = {ports['admin']}
allow_fault_injection = true

[supervision]
heartbeat_interval = 0.2
heartbeat_timeout = 3.0
backoff_initial = 0.05

[[wan]]
name = "mms"
protocol = "mms"
port = {ports['mms']}

[[der]]
name = "hp1"
type = "heat_pump"
ld_inst = "hp1Control"
functions = ["MaxPow", "OnOff"]
schedules = 2
lan = "modbus"
address = 1
profile = "sgready"
rated_power_w = 6000
guaranteed_min_w = 4200
sgready = {{ map = "example-register", min_run_s = {min_run_s}, min_off_s = 1, block_max_s = {block_max_s}, blocks_per_day = 5 }}
reserve = {{ MaxPow = 6000.0, OnOff = true }}

[[lan]]
name = "modbus"
protocol = "modbus"
port = {ports['modbus']}
timeout = 0.5
poll_period = 0.5
reversion_s = 3

[[simulator]]
name = "heatpump"
protocol = "heat-pump"
port = {ports['modbus']}
map = "example-register"
rated_w = 6000
tank_start_c = 30.0
min_run_s = 0
min_off_s = 0
write_log = "{log}"
"""


@pytest.fixture
def start_site(tmp_path):
    sites = []

    def start(min_run_s: float, block_max_s: float):
        ports = {"admin": free_port(), "mms": free_port(), "modbus": free_port()}
        state, topo, log = tmp_path / "state", tmp_path / "hp.toml", tmp_path / "writes.jsonl"
        topo.write_text(topology(state, ports, log, min_run_s, block_max_s))
        site = Site(topo, state)
        sites.append(site)
        site.start()
        return site, Open61850Client("127.0.0.1", ports["mms"]), log, ports

    yield start
    for site in sites:
        try:
            site.stop()
            assert site.leftovers() == []
        finally:
            site.kill_everything()


def schedule(mms, kind: str, value, start_ms: int, intv: int = 60, prio: int = 30) -> None:
    ref = f"{LD}/{kind}_FSCH01"
    assert mms.write_int(f"{ref}.NumEntr.setVal", 1) is None
    assert mms.write_int(f"{ref}.SchdIntv.setVal", intv) is None
    assert mms.write_int(f"{ref}.SchdPrio.setVal", prio) is None
    if kind == "OnOff":
        assert mms.write_bool(f"{ref}.ValSPG001.setVal", value) is None
    else:
        assert mms.write_float(f"{ref}.ValASG001.setMag.f", float(value)) is None
    assert mms.write_time(f"{ref}.StrTm01.setTm", start_ms) is None
    assert mms.operate(f"{ref}.EnaReq", True) == (True, 0)


def polls_after(site: Site, n: int) -> None:
    """Wait (a marker, not a sleep) until the heat pump's DER has a measurement read at least
    `n` poll periods after now: whatever the device path does per poll has had its chances."""
    since = int(time.time() * 1000)
    site.wait_for("hp1", lambda node: (node["detail"].get("measured") or {}).get("at", 0) >= since + n * 500,
                  timeout=20)


def writes(log: Path, point: str) -> list[tuple[int, int]]:
    """(time ms, value) of the simulator's writes of `point`."""
    return [(w["t_ns"] // 1_000_000, w["values"][w["points"].index(point)]) for w in read_write_log(log)
            if "points" in w and point in w["points"]]


def wait(fn, timeout: float = 10.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


def device(site: Site) -> dict:
    return site.node("modbus")["detail"]["devices"]["hp1"]


def test_block_waits_for_min_run_is_lifted_after_block_max_and_a_dso_limit_keeps_4_2_kw(start_site):
    site, mms, log, ports = start_site(min_run_s=8, block_max_s=6)
    try:
        # The first command: state 2 (normal) at once; the compressor may have started then.
        first = wait(lambda: writes(log, "state"), what="first SG-Ready write")[0]
        assert first[1] == 2
        t_first = first[0]
        # A block asked now, well within the minimum run time: pending, and said so.
        start = now_ms() + 800
        assert start < t_first + 6000, "the site took too long to start for this test"
        schedule(mms, "OnOff", False, start)
        pending = wait(lambda: (device(site).get("sgready") or {}).get("note") == "min_run" and device(site),
                       what="status says the block waits for the minimum run time")
        assert pending["sgready"]["state"] == 2 and pending["sgready"]["wanted"] == 1
        allowed = pending["sgready"]["pending_until"] * 1000    # the edge's first command + min_run_s
        assert abs(allowed - (t_first + 8000)) < 300            # (t_first: when the simulator got it)
        assert "pending until" in pending["state"] and "minimum run time" in pending["state"]
        # State 1 reaches the device at the next allowed moment, not before.
        blocked = wait(lambda: [w for w in writes(log, "state") if w[1] == 1], 15, "state 1 write")[0]
        assert 0 <= blocked[0] - allowed < 1000, (blocked[0] - allowed)
        assert all(v == 2 for t, v in writes(log, "state") if t < blocked[0])
        # The block lasts block_max_s (6 s), then is lifted although OnOff still says off.
        lifted = wait(lambda: [w for w in writes(log, "state") if w[0] > blocked[0] and w[1] == 2], 15,
                      "the block lifted")[0]
        assert 5900 <= lifted[0] - blocked[0] < 7000, lifted[0] - blocked[0]
        note = wait(lambda: (device(site).get("sgready") or {}).get("note") == "block_max" and device(site))
        assert note["sgready"]["state"] == 2 and "was lifted" in note["state"]
        assert site.node("hp1/OnOff")["detail"]["output"] is False          # the request itself stands

        # A DSO limit of 3 kW is applied as the guaranteed 4.2 kW.
        schedule(mms, "MaxPow", 3000.0, now_ms() + 300, prio=40)
        limit = wait(lambda: [w for w in writes(log, "power_limit") if w[1] != 6000], what="limit write")[0]
        assert limit[1] == 4200 and all(v in (6000, 4200) for _, v in writes(log, "power_limit"))
        with ModbusTcpClient("127.0.0.1", port=ports["modbus"]) as c:
            assert c.read_holding_registers(100, count=2, device_id=1).registers == [2, 4200]

        # `relevent status`: SG-Ready state, measured power (consumption: negative) and tank temperature.
        dev = wait(lambda: (d := device(site)).get("w") == -4200.0 and d, what="compressor at the limit")
        out = site.cli("status", str(site.topology), "--json")
        assert out.returncode == 0, out.stderr
        nodes = {n["path"]: n for n in walk(json.loads(out.stdout)["tree"])}
        hp = nodes["modbus"]["detail"]["devices"]["hp1"]
        assert hp["sgready"]["state"] == 2 and hp["sgready"]["name"] == "normal" and hp["limit_w"] == 4200.0
        assert 20.0 < hp["tank_c"] < 70.0 and 15.0 < hp["indoor_c"] < 25.0 and hp["w"] == -4200.0
        assert hp["compressor"] is True and hp["limited"] is True
        measured = nodes["hp1"]["detail"]["measured"]
        assert measured["w"] == -4200.0 and "SG-Ready 2 (normal)" in measured["state"] and "tank" in measured["state"]
        table = site.cli("status", str(site.topology))
        assert "measured -4200 W" in table.stdout, table.stdout
        assert dev["sgready"]["map"] == "example-register"

        # Unchanged points are not rewritten (EEPROMs), but a device that lost its state
        # (here: another client wrote state 4) gets it again at the next refresh.
        count = len(writes(log, "state"))
        polls_after(site, 4)   # four device polls (0.5 s each): a rewrite would have come by now
        assert len(writes(log, "state")) == count
        with ModbusTcpClient("127.0.0.1", port=ports["modbus"]) as c:
            assert not c.write_register(100, 4, device_id=1).isError()
            wait(lambda: c.read_holding_registers(100, count=1, device_id=1).registers == [2], 5, "state restored")
    finally:
        mms.close()


def test_kill_9_of_the_der_during_a_block_leaves_the_block_intact(start_site):
    site, mms, log, ports = start_site(min_run_s=0, block_max_s=60)
    try:
        wait(lambda: writes(log, "state"), what="first SG-Ready write")
        schedule(mms, "OnOff", False, now_ms() + 300)
        blocked = wait(lambda: [w for w in writes(log, "state") if w[1] == 1], what="state 1")[0]
        wait(lambda: site.node("hp1")["detail"].get("command", {}).get("connected") is False)
        old = site.node("hp1")["pid"]
        os.kill(old, signal.SIGKILL)
        site.wait_for("hp1/OnOff", lambda n: n["state"] == "running" and n["pid"] not in (None, old), 10)
        restarted = site.wait_for("hp1", lambda n: n["detail"].get("command", {}).get("connected") is False, 10)
        assert restarted["restarts"] == 1
        polls_after(site, 3)   # a few polls and command writes after the restart
        assert {v for t, v in writes(log, "state") if t >= blocked[0]} == {1}   # never released meanwhile
        with ModbusTcpClient("127.0.0.1", port=ports["modbus"]) as c:
            assert c.read_holding_registers(100, count=1, device_id=1).registers == [1]
            assert c.read_input_registers(200, count=1, device_id=1).registers == [1]
        sg = device(site)["sgready"]
        assert sg["state"] == 1 and sg["note"] == "" and sg["blocks_in_window"] == 1   # the same block, not a new one
    finally:
        mms.close()
