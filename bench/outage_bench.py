"""Outages of the devices' side, each for --outage seconds (60 by default), with a schedule
running: how long after the peer is back is the current set-point applied again?

    .venv/bin/python bench/outage_bench.py --outage 60 --json bench/chaos/results-outages.json

* MQTT broker (a real Mosquitto) stopped, then started: time from the broker's restart to
  the PivotCommand with the current value reaching a subscriber, and to the simulated
  MQTT device running at it again;
* Modbus device (the SunSpec simulator, run here, outside the site) stopped, then started
  with factory registers: time from its restart to 123.WMaxLimPct written again.
The site keeps running throughout; nothing is restarted by hand.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lanctl import (  # noqa: E402
    Blackhole, Mosquitto, MqttWatcher, lan_topology, read_write_log, without_inverter_simulator,
)
from relevent.clock import now_ms  # noqa: E402
from relevent.progress import Progress  # noqa: E402
from relevent.protocols.mms.client import ScheduleClient, Target  # noqa: E402
from relevent.runtime.status import walk  # noqa: E402
from relevent.simulators.sunspec_inverter import SunSpecInverter  # noqa: E402
from sitectl import Site, free_port  # noqa: E402


def external_inverter(port: int, log: Path) -> SunSpecInverter:
    sim = SunSpecInverter(None, {"name": "inverter", "address": "127.0.0.1", "port": port, "unit": 1,
                                 "wmax": 10000.0, "available_w": -1.0, "ramp_w_per_s": 0.0,
                                 "models": [1, 103, 121, 123, 704], "write_log": str(log)})
    sim.start()
    deadline = time.monotonic() + 5
    while "listening" not in sim.aio.drain():
        if time.monotonic() > deadline:
            raise RuntimeError("simulator did not listen")
        time.sleep(0.01)
    return sim


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outage", type=float, default=60.0, help="seconds each peer stays down")
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="outage-") as tmp:
        tmp = Path(tmp)
        ports = {k: free_port() for k in ("admin", "mms", "mqtt", "modbus")}
        broker = Mosquitto(ports["mqtt"], tmp).start()
        hole = Blackhole()
        log = tmp / "writes.jsonl"
        text = lan_topology(tmp / "state", ports["admin"], ports["mms"], ports["mqtt"], ports["modbus"], hole.port, log)
        text = without_inverter_simulator(text)
        (tmp / "site.toml").write_text(text)
        inverter = external_inverter(ports["modbus"], log)
        site = Site(tmp / "site.toml", tmp / "state").start()
        result = {"outage_s": args.outage}
        try:
            sc = ScheduleClient(Target("127.0.0.1", ports["mms"], "DER_Scheduler_pv1Control"))
            start = datetime.fromtimestamp(time.time() + 1.5, tz=timezone.utc)
            assert sc.write("ActPow", "1", [3300.0], 3600, start, 30) == [] and sc.operate("ActPow", "1", True) is None
            sc.ld = "DER_Scheduler_bat1Control"
            assert sc.write("ActPow", "1", [-1200.0], 3600, start, 30) == [] and sc.operate("ActPow", "1", True) is None
            sc.close()
            time.sleep(3)
            watcher = MqttWatcher(ports["mqtt"], ["fledge/south-command"])

            progress = Progress(2, "outage_bench")
            progress.begin(f"MQTT broker down for {args.outage:g} s")
            # MQTT broker down.
            broker.stop()
            time.sleep(args.outage)
            back = time.time_ns()
            broker.start()
            got = watcher.wait_for(lambda m: m[0] > back and m[2]["parameters"][0]["value"]["GTIC"]["Identifier"]
                                   == "bat1.ActPow" and m[2]["parameters"][0]["value"]["GTIC"]["ApcTyp"]["ctlVal"]
                                   == -1200.0, timeout=60)
            result["mqtt_broker_back_to_command_ms"] = round((got[0][0] - back) / 1e6, 1)
            while site.node("battery")["detail"]["w"] != -1200.0:
                time.sleep(0.01)
            result["mqtt_broker_back_to_device_right_ms"] = round((time.time_ns() - back) / 1e6, 1)
            watcher.close()
            progress.step(f"MQTT broker back: command after {result['mqtt_broker_back_to_command_ms']} ms")
            progress.begin(f"Modbus device down for {args.outage:g} s")

            # Modbus device down (and back with factory registers).
            inverter.stop()
            time.sleep(args.outage)
            back_ms = now_ms()
            inverter = external_inverter(ports["modbus"], log)
            while True:
                writes = [w for w in read_write_log(log) if w["t_ns"] // 1_000_000 > back_ms
                          and "123.WMaxLimPct" in w["points"]]
                if writes:
                    break
                time.sleep(0.01)
            result["modbus_device_back_to_limit_written_ms"] = round(writes[0]["t_ns"] / 1e6 - back_ms, 1)
            progress.step(f"Modbus device back: limit written after "
                          f"{result['modbus_device_back_to_limit_written_ms']} ms")
            result["site_restarts_during_outages"] = sum(n["restarts"] for n in walk(site.tree()))
        finally:
            site.stop()
            site.kill_everything()
            inverter.stop()
            broker.stop()
            hole.close()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
