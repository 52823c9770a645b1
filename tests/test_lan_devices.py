"""Schedules reach real devices: a site with a real Mosquitto broker, the SunSpec inverter
simulator (pymodbus server) and an MQTT device simulator, driven over MMS from this process.
Also: recovery after a broker restart and a simulator kill, an unreachable device next to
a working one, measurements back into MMXU1 and `relevent status`."""
from __future__ import annotations

import os
import signal
import time

import pytest
import sunspec2.modbus.client as ssclient

from lanctl import Blackhole, Mosquitto, MosquittoSub, lan_topology, read_write_log
from mmsclients import LibIec61850Client
from sitectl import Site, free_port, now_ms, wait_until

WMAXLIMPCT_SF = -2          # the simulator's scale factor: 0.01 %


@pytest.fixture
def lan(tmp_path):
    ports = {"admin": free_port(), "mms": free_port(), "mqtt": free_port(), "modbus": free_port()}
    broker = Mosquitto(ports["mqtt"], tmp_path).start()
    hole = Blackhole()
    state, topo, log = tmp_path / "state", tmp_path / "lan.toml", tmp_path / "writes.jsonl"
    topo.write_text(lan_topology(state, ports["admin"], ports["mms"], ports["mqtt"], ports["modbus"], hole.port, log))
    site = Site(topo, state)
    try:
        site.start()
        watcher = MosquittoSub(ports["mqtt"], ["fledge/#"])
        mms = LibIec61850Client("127.0.0.1", ports["mms"])
    except BaseException:
        # A failed set-up never reaches the teardown below: leave no site running.
        site.kill_everything()
        broker.stop()
        hole.close()
        raise
    env = {"site": site, "broker": broker, "watcher": watcher, "mms": mms, "log": log, "ports": ports}
    yield env
    mms.close()
    watcher.close()
    try:
        site.stop()
        assert site.leftovers() == []
    finally:
        site.kill_everything()
        broker.stop()
        hole.close()


def schedule(mms, der: str, kind: str, values: list, intv: int, start: int, prio: int = 30) -> None:
    ref = f"DER_Scheduler_{der}Control/{kind}_FSCH01"
    assert mms.write_int(f"{ref}.NumEntr.setVal", len(values)) is None
    assert mms.write_int(f"{ref}.SchdIntv.setVal", intv) is None
    assert mms.write_int(f"{ref}.SchdPrio.setVal", prio) is None
    for i, v in enumerate(values, start=1):
        assert mms.write_float(f"{ref}.ValASG{i:03d}.setMag.f", float(v)) is None
    assert mms.write_time(f"{ref}.StrTm01.setTm", start) is None
    assert mms.operate(f"{ref}.EnaReq", True) == (True, 0)


def sunspec_device(port: int):
    dev = ssclient.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
    dev.scan()
    return dev


def limit_writes(log, model123: int) -> list[tuple[int, float]]:
    """(time ms, WMaxLimPct in %) of every write covering 123.WMaxLimPct (offset 5)."""
    target, out = model123 + 5, []
    for w in read_write_log(log):
        if w["address"] <= target < w["address"] + len(w["values"]):
            out.append((w["t_ns"] // 1_000_000, w["values"][target - w["address"]] * 10 ** WMAXLIMPCT_SF))
    return out


def poll(fn, timeout: float = 10.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def test_a_schedule_reaches_the_inverter_registers_and_the_mqtt_topic_in_its_second(lan):
    mms, watcher, log = lan["mms"], lan["watcher"], lan["log"]
    start = (now_ms() // 1000 + 4) * 1000
    schedule(mms, "pv1", "ActPow", [4000, 6000], 2, start)
    schedule(mms, "bat1", "ActPow", [-1000, 2000], 2, start)
    wait_until(start + 3000)

    # pysunspec2 reads the simulator's model chain and the limit in force (entry 2: 6 kW of 10 kW).
    dev = sunspec_device(lan["ports"]["modbus"])
    assert [m for m in dev.models if isinstance(m, int)] == [1, 103, 121, 123, 704]
    ctl, inv = dev.models[123][0], dev.models[103][0]
    assert ctl.WMaxLimPct.cvalue == pytest.approx(60.0) and ctl.WMaxLim_Ena.value == 1 and ctl.Conn.value == 1
    assert ctl.WMaxLimPct_RvrtTms.value == 30 and ctl.Conn_RvrtTms.value == 30
    assert inv.W.cvalue == pytest.approx(6000)
    assert dev.models[704][0].WSet.cvalue == pytest.approx(6000) and dev.models[704][0].WSetEna.value == 1

    # Each value was written in its own entry's second, not before.
    writes = limit_writes(log, ctl.model_addr)
    first = next(t for t, pct in writes if pct == pytest.approx(40.0))
    second = next(t for t, pct in writes if pct == pytest.approx(60.0))
    assert start <= first < start + 1000, (first - start, writes)
    assert start + 2000 <= second < start + 3000, (second - start, writes)

    # The battery's commands went out on ReLevENT's topic, in the right second, with the right value.
    cmds = watcher.commands("bat1.ActPow")
    t1 = next(t for t, v in cmds if v == -1000.0) // 1_000_000
    t2 = next(t for t, v in cmds if v == 2000.0) // 1_000_000
    assert start <= t1 < start + 1000 and start + 2000 <= t2 < start + 3000, (t1 - start, t2 - start)
    # ... and a forecast (PivotSchedule) of the running schedule, ending with the reserve.
    sched = watcher.wait_for(lambda m: m[2].get("operation") == "PivotSchedule"
                             and m[2]["parameters"][0]["value"]["GTIC"]["Identifier"] == "bat1.ActPow")[-1][2]
    values = [p["value"]["GTIC"]["ApcTyp"]["ctlVal"] for p in sched["parameters"]]
    assert values[-1] == 0.0 and 2000.0 in values

    # Measurements flow back: MMXU1.TotW in the MMS model and the DER's status.
    assert poll(lambda: mms.read_float("DER_Scheduler_pv1Control/MMXU1.TotW.mag.f") == pytest.approx(6000)), \
        mms.read_float("DER_Scheduler_pv1Control/MMXU1.TotW.mag.f")
    assert poll(lambda: mms.read_float("DER_Scheduler_bat1Control/MMXU1.TotW.mag.f") == pytest.approx(2000))
    assert lan["site"].node("pv1")["detail"]["measured"]["state"] == "St 5 (throttled)"  # 6 of 10 kW
    measured = lan["site"].node("bat1")["detail"]["measured"]
    assert measured["w"] == 2000.0 and measured["connected"] is True
    assert lan["site"].node("pv1")["detail"]["command"] == {"setpoint_w": 6000.0, "limit_w": 10000.0,
                                                            "connected": True}

    # The device that never answers is reported down and did not hold the others back (above).
    devices = lan["site"].node("modbus")["detail"]["devices"]
    assert devices["pv1"]["link"] == "up" and devices["pv2"]["link"] == "down", devices
    assert "No response" in devices["pv2"]["link_detail"], devices["pv2"]


def test_bad_mqtt_payloads_are_rejected_by_field_and_change_nothing(lan):
    site, watcher = lan["site"], lan["watcher"]
    assert poll(lambda: site.node("bat1")["detail"].get("measured"))
    before = site.pids()
    watcher.publish("fledge/south-measurement", b"{not json")
    watcher.publish("fledge/south-measurement", b'{"PIVOT": {"GTIM": {"Identifier": "bat1.W", '
                                                 b'"MvTyp": {"mag": {"f": "lots"}}}}}')
    watcher.publish("fledge/south-measurement", b'{"PIVOT": {"GTIM": {"Identifier": "nobody.W", '
                                                 b'"MvTyp": {"mag": {"f": 1.0}}}}}')
    detail = poll(lambda: (d := site.node("mqtt")["detail"])["rejected"] >= 3 and d)
    assert detail, site.node("mqtt")["detail"]
    assert "Identifier 'nobody.W'" in detail["last_rejection"]
    log_text = site.log.read_text()
    assert "not JSON" in log_text and "GTIM.MvTyp.mag.f: expected a finite number, got 'lots'" in log_text
    assert site.pids() == before
    # A good measurement after the bad ones still gets through.
    t = now_ms()
    assert poll(lambda: site.node("bat1")["detail"]["measured"]["at"] > t)


def test_broker_restart_and_simulator_kill_reapply_the_current_setpoint(lan):
    site, mms, watcher, broker, log = lan["site"], lan["mms"], lan["watcher"], lan["broker"], lan["log"]
    start = now_ms() + 1500
    schedule(mms, "pv1", "ActPow", [3000], 600, start)
    schedule(mms, "bat1", "ActPow", [1234], 600, start)
    dev = sunspec_device(lan["ports"]["modbus"])
    model123 = dev.models[123][0].model_addr
    dev.close()
    assert poll(lambda: (watcher.commands("bat1.ActPow") or [(0, None)])[-1][1] == 1234.0), \
        watcher.commands("bat1.ActPow")[-3:]

    # Broker down for 2 s: after it is back, the endpoint re-sends the set-point in force.
    broker.stop()
    time.sleep(2)
    back = time.time_ns()
    broker.start()
    watcher.wait_for(lambda m: m[0] > back and m[2].get("operation") == "PivotCommand"
                     and m[2]["parameters"][0]["value"]["GTIC"]["Identifier"] == "bat1.ActPow"
                     and m[2]["parameters"][0]["value"]["GTIC"]["ApcTyp"]["ctlVal"] == 1234.0, timeout=10)
    assert poll(lambda: site.node("battery")["detail"]["w"] == 1234.0)

    # The inverter reboots (kill -9; the site restarts it with factory registers): the
    # endpoint reconnects and writes the limit again.
    sim = site.node("inverter")
    killed = now_ms()
    os.kill(sim["pid"], signal.SIGKILL)
    assert poll(lambda: any(t > killed and pct == pytest.approx(30.0) for t, pct in limit_writes(log, model123)))
    dev = sunspec_device(lan["ports"]["modbus"])
    assert dev.models[123][0].WMaxLimPct.cvalue == pytest.approx(30.0) and dev.models[123][0].WMaxLim_Ena.value == 1
    assert poll(lambda: (dev.models[103][0].read() or True) and dev.models[103][0].W.cvalue == 3000, timeout=5)
    dev.close()
    assert site.node("inverter")["restarts"] == 1
