"""Entry boundary -> device: when a schedule entry starts, how late does the value reach
the SunSpec inverter's registers (Modbus) and an MQTT subscriber (pivot command)?

    .venv/bin/python bench/lan_bench.py --entries 60

The site (tests/lanctl.py's topology: MMS in, a SunSpec inverter simulator over Modbus
TCP, an MQTT pivot device over a real Mosquitto broker, plus a Modbus device that never
answers) runs in its own processes.  One ActPow schedule per DER with 1 s entries of
distinct values.  Register writes are timed by the simulator (its own actor process: it
logs time_ns when pymodbus hands it the write request); MQTT messages by a gmqtt
subscriber in this process.  Lateness = that time minus the entry boundary.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import sunspec2.modbus.client as ssclient  # noqa: E402

from lanctl import Blackhole, Mosquitto, MqttWatcher, lan_topology, read_write_log  # noqa: E402
from mmsclients import LibIec61850Client  # noqa: E402
from sitectl import Site, free_port  # noqa: E402
from switch_bench import summary  # noqa: E402
from relevent.clock import now_ms



def schedule(mms, der: str, values: list[float], start: int) -> None:
    ref = f"DER_Scheduler_{der}Control/ActPow_FSCH01"
    assert mms.write_int(f"{ref}.NumEntr.setVal", len(values)) is None
    assert mms.write_int(f"{ref}.SchdIntv.setVal", 1) is None
    assert mms.write_int(f"{ref}.SchdPrio.setVal", 30) is None
    for i, v in enumerate(values, start=1):
        assert mms.write_float(f"{ref}.ValASG{i:03d}.setMag.f", v) is None
    assert mms.write_time(f"{ref}.StrTm01.setTm", start) is None
    assert mms.operate(f"{ref}.EnaReq", True) == (True, 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=60, help="1 s entries per schedule (max 100)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    entries = min(args.entries, 100)
    with tempfile.TemporaryDirectory(prefix="lan-bench-") as tmp:
        tmp = Path(tmp)
        ports = {k: free_port() for k in ("admin", "mms", "mqtt", "modbus")}
        broker = Mosquitto(ports["mqtt"], tmp).start()
        hole = Blackhole()
        log = tmp / "writes.jsonl"
        topo = tmp / "lan.toml"
        topo.write_text(lan_topology(tmp / "state", ports["admin"], ports["mms"], ports["mqtt"], ports["modbus"],
                                     hole.port, log).replace('log_level = "INFO"', ""))
        site = Site(topo, tmp / "state").start()
        try:
            watcher = MqttWatcher(ports["mqtt"], ["fledge/south-command"])
            mms = LibIec61850Client("127.0.0.1", ports["mms"])
            dev = ssclient.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=ports["modbus"])
            dev.scan()
            wmaxlimpct = dev.models[123][0].model_addr + 5
            dev.close()
            pv = [1000.0 + 50 * i for i in range(entries)]          # distinct, all within WMax
            bat = [-2000.0 + 37 * i for i in range(entries)]
            start = (now_ms() // 1000 + 3) * 1000
            schedule(mms, "pv1", pv, start)
            schedule(mms, "bat1", bat, start)
            time.sleep((start + entries * 1000 + 1500 - now_ms()) / 1000)

            modbus_ms = []
            seen = set()
            for w in read_write_log(log):
                if w["address"] <= wmaxlimpct < w["address"] + len(w["values"]):
                    value = w["values"][wmaxlimpct - w["address"]] / 100 * 10000 / 100
                    if value in pv and value not in seen:
                        seen.add(value)
                        boundary = start + pv.index(value) * 1000
                        modbus_ms.append(w["t_ns"] / 1e6 - boundary)
            mqtt_ms = []
            seen = set()
            for t, value in watcher.commands("bat1.ActPow"):
                if value in bat and value not in seen:
                    seen.add(value)
                    mqtt_ms.append(t / 1e6 - (start + bat.index(value) * 1000))
            watcher.close()
            mms.close()
        finally:
            site.stop()
            site.kill_everything()
            broker.stop()
            hole.close()
    result = {"entries": entries, "boundary_to_register_write": summary(modbus_ms),
              "boundary_to_mqtt_receive": summary(mqtt_ms),
              "missing": {"modbus": entries - len(modbus_ms), "mqtt": entries - len(mqtt_ms)},
              "early": {"modbus": sum(1 for x in modbus_ms if x < 0), "mqtt": sum(1 for x in mqtt_ms if x < 0)}}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
