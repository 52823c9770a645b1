"""The embedded default (`make demo`): topologies/demo.toml runs with nothing installed
beyond the package (embedded amqtt broker, simulated inverter and battery), several
side by side through the environment, a schedule written over MMS moves both devices, and
the same schedules read over HTTP on the same site."""
from __future__ import annotations

import time

import httpx

from mmsclients import LibIec61850Client
from sitectl import demo_site


def test_demo_runs_side_by_side_and_obeys_schedules(tmp_path, monkeypatch):
    site, ports = demo_site(tmp_path, monkeypatch)
    site.start(timeout=120)   # 29 actors; generous for a loaded machine
    mms = LibIec61850Client("127.0.0.1", ports["RELEVENT_MMS_PORT"])
    try:
        assert site.node("mqtt-broker")["detail"]["kind"] == "amqtt"
        start = int(time.time() * 1000) + 1500
        for der, kind, value in (("bat1", "ActPow", 1500.0), ("pv1", "MaxPow", 2500.0)):
            ref = f"DER_Scheduler_{der}Control/{kind}_FSCH01"
            assert mms.write_int(f"{ref}.NumEntr.setVal", 1) is None
            assert mms.write_int(f"{ref}.SchdIntv.setVal", 60) is None
            assert mms.write_int(f"{ref}.SchdPrio.setVal", 30) is None
            assert mms.write_float(f"{ref}.ValASG001.setMag.f", value) is None
            assert mms.write_time(f"{ref}.StrTm01.setTm", start) is None
            assert mms.operate(f"{ref}.EnaReq", True) == (True, 0)
        deadline = time.monotonic() + 15
        battery = inverter = measured = None
        while time.monotonic() < deadline:
            battery, inverter = site.node("bat1-device")["detail"], site.node("pv1-inverter")["detail"]
            measured = site.node("pv1")["detail"].get("measured", {}).get("w")
            if battery["w"] == 1500.0 and inverter["output_w"] == 2500.0 and measured == 2500.0:
                break
            time.sleep(0.1)
        assert battery["w"] == 1500.0, battery
        assert inverter["output_w"] == 2500.0 and inverter["wmaxlimpct"] == 25.0, inverter  # ramped at 2 kW/s
        assert measured == 2500.0  # read back over Modbus (model 103 W) by the endpoint
        api = f"http://127.0.0.1:{ports['RELEVENT_HTTP_PORT']}/api/v1/ders"
        got = httpx.get(f"{api}/pv1/MaxPow/schedules/1", timeout=10).json()
        assert (got["values"], got["priority"], got["state"]) == ([2500.0], 30, "RUNNING")
        assert httpx.get(f"{api}/bat1/ActPow", timeout=10).json()["output"] == 1500.0
        # The EV charger over OCPP (its simulator: an EV plugged in drawing 7.4 kW) is measured.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (site.node("ev1")["detail"].get("measured") or {}).get("w") is None:
            time.sleep(0.1)
        assert site.node("ev1")["detail"]["measured"]["w"] < 0, site.node("ev1")["detail"]  # consumption
    finally:
        mms.close()
        site.stop()
        site.kill_everything()
