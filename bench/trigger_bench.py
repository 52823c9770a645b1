"""Trigger condition -> device command: when the grid voltage at the inverter crosses a
measurement trigger's threshold, how long until the inverter gets the curtailment (and,
when it falls back, the release)?

    .venv/bin/python bench/trigger_bench.py --runs 40 --poll 0.1

The site (its own processes): the SunSpec inverter simulator, a Modbus LAN endpoint
polling it every `--poll` s, one DER with a voltage trigger (above 239 V, hysteresis 2 V,
min_duration_s 0, clear_s 0 -> MaxPow 50 %).  This process moves the grid voltage through
the simulator's test hook (a pymodbus write of model 103 PhVphA: 241 V, then 230 V).  Both
ends are timed by the simulator in its write log (time_ns when pymodbus hands it the
write): the hook write, then the site's first write of WMaxLimPct = 50 % (or 100 %) after
it.  So the figure is the whole path: the endpoint's next poll (0..poll_period, uniform:
the runs start at random phases), the measurement to the DER and its controller, the
trigger, the schedule, the DER's command and the Modbus write.  min_duration_s and clear_s
are 0 so that the figure is the path, not the configured wait.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import sunspec2.modbus.client as ssclient  # noqa: E402
from pymodbus.client import ModbusTcpClient  # noqa: E402

from lanctl import read_write_log  # noqa: E402
from sitectl import Site, free_port  # noqa: E402
from switch_bench import summary  # noqa: E402


def topology(state: Path, admin: int, modbus: int, write_log: Path, poll: float) -> str:
    return f"""[site]
name = "triggerbench"
state_dir = "{state}"
[runtime]
admin_port = {admin}
[[der]]
name = "pv1"
type = "pv"
functions = ["MaxPow"]
schedules = 2
lan = "modbus"
address = 1
profile = "sunspec"
rated_power_w = 10000
reserve = {{ MaxPow = 10000.0 }}
local = [{{ trigger = "measurement", function = "MaxPow", schedule = "FSCH02", value = 5000.0, duration_s = 3600, \
priority = 220, measure = "voltage_v", above = 239.0, hysteresis = 2.0 }}]
[[lan]]
name = "modbus"
protocol = "modbus"
port = {modbus}
timeout = 0.5
poll_period = {poll}
[[simulator]]
name = "inverter"
protocol = "sunspec-inverter"
port = {modbus}
wmax = 10000.0
write_log = "{write_log}"
"""


class Log:
    """The simulator's write log, read incrementally."""

    def __init__(self, path: Path, limit_address: int) -> None:
        self.path, self.limit = path, limit_address
        self.seen = 0

    def wait(self, predicate, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            writes = read_write_log(self.path)
            for i in range(self.seen, len(writes)):
                if predicate(writes[i]):
                    self.seen = i + 1
                    return writes[i]
            time.sleep(0.002)
        return None

    def limit_pct(self, w: dict) -> float | None:
        if w.get("hook") or not w["address"] <= self.limit < w["address"] + len(w["values"]):
            return None
        return w["values"][self.limit - w["address"]] / 100  # WMaxLimPct_SF -2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40, help="up/down cycles")
    ap.add_argument("--poll", type=float, default=0.1, help="the Modbus endpoint's poll_period, s")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    arm_ms, end_ms, missing = [], [], 0
    with tempfile.TemporaryDirectory(prefix="trigger-bench-") as tmp:
        tmp = Path(tmp)
        admin, modbus = free_port(), free_port()
        write_log = tmp / "writes.jsonl"
        (tmp / "site.toml").write_text(topology(tmp / "state", admin, modbus, write_log, args.poll))
        site = Site(tmp / "site.toml", tmp / "state").start()
        try:
            dev = ssclient.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=modbus, timeout=2)
            dev.scan()
            inv, ctl = dev.models[103][0], dev.models[123][0]
            phv, limit = inv.model_addr + inv.PhVphA.offset, ctl.model_addr + ctl.WMaxLimPct.offset
            dev.close()
            log = Log(write_log, limit)
            client = ModbusTcpClient("127.0.0.1", port=modbus, timeout=2)
            assert client.connect()
            # The site is up and has written its first command (100 %).
            assert log.wait(lambda w: log.limit_pct(w) == 100.0, timeout=10), "no first command"
            for _ in range(args.runs):
                for volts, pct, out in ((241.0, 50.0, arm_ms), (230.0, 100.0, end_ms)):
                    time.sleep(random.uniform(0.05, 0.05 + args.poll))  # a random phase against the polls
                    assert not client.write_register(phv, round(volts * 10), device_id=1).isError()
                    hook = log.wait(lambda w: w.get("hook"), timeout=5)
                    done = log.wait(lambda w: log.limit_pct(w) == pct, timeout=5)
                    if hook is None or done is None:
                        missing += 1
                        continue
                    out.append((done["t_ns"] - hook["t_ns"]) / 1e6)
            client.close()
        finally:
            site.stop()
            site.kill_everything()
    result = {"runs": args.runs, "poll_period_s": args.poll,
              "condition_to_curtailment_write": summary(arm_ms) if arm_ms else None,
              "condition_to_release_write": summary(end_ms) if end_ms else None, "missing": missing}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
