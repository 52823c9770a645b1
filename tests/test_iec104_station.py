"""The simulated 104 controlling station (relevent/simulators/iec104_station.py: c104's
client) against the site's iec104 endpoint: its set-point becomes the DER's limit, its
release gives the limit back, in turn, as `make demo` shows."""
from __future__ import annotations

import time

from sitectl import Site, free_port

TOPOLOGY = """
[site]
name = "station{admin}"
state_dir = "{state}"

[runtime]
admin_port = {admin}

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4
backoff_initial = 0.05

[[wan]]
name = "iec104"
protocol = "iec104"
port = {port}
common_address = 7
unit = "percent"
schedule = 2
priority = 250

[[wan.functions]]
der = "pv1"
function = "MaxPow"
C_SE_NC_1 = 11
release = 12
output = 21

[[der]]
name = "pv1"
functions = ["MaxPow"]
schedules = 2
rated_power_w = 10000
reserve = {{ MaxPow = 10000.0 }}

[[simulator]]
name = "scada"
protocol = "iec104-station"
port = {port}
common_address = 7
setpoint_ioa = 11
release_ioa = 12
values = [40.0, 25.0]
first_s = 0.5
hold_s = 2.0
every_s = 4.0
"""


def output(site: Site) -> tuple:
    d = site.node("pv1/MaxPow")["detail"]
    return d["output"], d["source"]


def wait_for(site: Site, expected: tuple, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if output(site) == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"output {output(site)}, expected {expected} within {timeout} s; station "
                         f"{site.node('scada')['detail']}; log: {site.log.read_text()[-3000:]}")


def test_the_simulated_station_limits_the_der_in_turn_and_releases_it(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(TOPOLOGY.format(admin=free_port(), port=free_port(), state=tmp_path / "state"))
    site = Site(path, tmp_path / "state")
    try:
        site.start(timeout=60)
        wait_for(site, (4000.0, "FSCH02"), timeout=15)       # 40 % of 10 kW
        wait_for(site, (10000.0, "Res_FSCH01"), timeout=5)   # released after hold_s
        wait_for(site, (2500.0, "FSCH02"), timeout=6)        # the next value, every_s later
        # The station counts a command once its confirmation is back, and its status comes with
        # its heartbeat reply: both may follow the DER's output by a moment (seen under load).
        detail = site.wait_for("scada", lambda n: n["detail"]["confirmed"] >= 3, timeout=5)["detail"]
        assert detail["confirmed"] >= 3 and detail["refused"] == 0 and detail["connected"] and detail["clock_sync"]
        assert site.node("iec104")["detail"]["clock_sync"]["applied"] is False   # logged, never applied
        site.stop()
    finally:
        site.kill_everything()
