"""SunSpec reversion: the edge writes every control with RvrtTms and refreshes it; when the
edge dies, the inverter drops the limit by itself.  The simulator runs in this process
(outside the site) so that stopping the whole site leaves it alone."""
from __future__ import annotations

import time

import pytest

from lanctl import Blackhole, Mosquitto, lan_topology, without_inverter_simulator
from mmsclients import LibIec61850Client
from relevent.simulators.sunspec_inverter import SunSpecImage, SunSpecInverter
from sitectl import Site, free_port


def test_image_reverts_each_control_after_its_timeout_without_refresh():
    img = SunSpecImage([1, 103, 121, 123, 704], 10000.0, 10000.0, 0.0, "x")
    img.set(123, "WMaxLimPct", 2500), img.set(123, "WMaxLim_Ena", 1), img.set(123, "WMaxLimPct_RvrtTms", 5)
    img.set(123, "Conn", 0), img.set(123, "Conn_RvrtTms", 5)
    img.refreshed = {"123.WMaxLimPct": 100.0, "123.Conn": 100.0}
    img.tick(0.05, 100.1)
    assert img.output == 0.0                                   # disconnected
    img.revert(104.9)
    assert img.get(123, "Conn") == 0 and img.get(123, "WMaxLim_Ena") == 1
    img.revert(105.1)
    assert img.get(123, "Conn") == 1 and img.get(123, "WMaxLim_Ena") == 0 and img.reverted == 2
    img.tick(0.05, 105.2)
    assert img.output == 10000.0                               # back to what the sun gives


@pytest.mark.timeout(120)
def test_inverter_reverts_on_its_own_when_the_site_is_gone(tmp_path):
    ports = {k: free_port() for k in ("admin", "mms", "mqtt", "modbus")}
    broker = Mosquitto(ports["mqtt"], tmp_path).start()
    hole = Blackhole()
    text = lan_topology(tmp_path / "state", ports["admin"], ports["mms"], ports["mqtt"], ports["modbus"], hole.port,
                        tmp_path / "unused.jsonl", reversion_s=2)
    text = without_inverter_simulator(text)
    (tmp_path / "site.toml").write_text(text)
    sim = SunSpecInverter(None, {"name": "inv", "address": "127.0.0.1", "port": ports["modbus"], "unit": 1,
                                 "wmax": 10000.0, "available_w": -1.0, "ramp_w_per_s": 0.0,
                                 "models": [1, 103, 121, 123, 704], "write_log": ""})
    sim.start()
    site = Site(tmp_path / "site.toml", tmp_path / "state").start()
    try:
        mms = LibIec61850Client("127.0.0.1", ports["mms"])
        ref = "DER_Scheduler_pv1Control/MaxPow_FSCH01"
        for attr, value in (("NumEntr.setVal", 1), ("SchdIntv.setVal", 3600), ("SchdPrio.setVal", 30)):
            assert mms.write_int(f"{ref}.{attr}", value) is None
        assert mms.write_float(f"{ref}.ValASG001.setMag.f", 4000.0) is None
        assert mms.write_time(f"{ref}.StrTm01.setTm", int(time.time() * 1000) + 1000) is None
        assert mms.operate(f"{ref}.EnaReq", True) == (True, 0)
        mms.close()
        deadline = time.monotonic() + 10
        while sim.detail()["output_w"] != 4000.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sim.detail()["output_w"] == 4000.0, sim.detail()
        # Refreshed while the site lives: still limited well past the 2 s timeout (a time
        # span under test, not a wait: the simulator's timer is in this process).
        time.sleep(4)
        assert sim.detail()["output_w"] == 4000.0 and sim.detail()["reversions"] == 0
        last = sim.image.refreshed["123.WMaxLimPct"]   # the site's last refresh, as the inverter saw it
        site.stop()
        gone = time.monotonic()
        while sim.detail()["output_w"] != 10000.0 and time.monotonic() - gone < 10:
            last = sim.image.refreshed.get("123.WMaxLimPct", last)   # (dropped when it reverts)
            time.sleep(0.05)
        reverted = time.monotonic()
        assert sim.detail()["output_w"] == 10000.0 and sim.detail()["wmaxlim_ena"] == 0, sim.detail()
        # By its own timer: the 2 s after the last refresh, not sooner (timed from the refresh,
        # not from the end of a stop that takes 0.2-1.4 s); the upper bound leaves a missed
        # refresh (0.7 s apart) and 1.8 s of slack.
        assert 2.0 <= reverted - last <= 4.5, reverted - last
    finally:
        site.stop()
        site.kill_everything()
        sim.stop()
        broker.stop()
        hole.close()
