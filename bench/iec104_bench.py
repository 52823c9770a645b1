"""IEC 104 set-point -> device: how long from a C_SE_NC_1 leaving the controlling station
until the PV inverter's limit register is written, and until ACT_CON and ACT_TERM arrive?

    .venv/bin/python bench/iec104_bench.py --setpoints 100 --json bench/results-iec104.json

The site runs in its own processes (`relevent run`): an iec104 endpoint, one PV DER
(MaxPow + OnOff) on the SunSpec inverter simulator over Modbus TCP.  The controlling
station is tests/iec104peer.py (raw APCI/ASDU frames, this process).  Set-points in per
cent of rated power, each a distinct value, sent one after the other: the next goes once
the inverter has the previous one, after a pause.  The register write is timed by the
simulator (its own actor process logs time_ns when pymodbus hands it the write); the
set-point by time_ns just before the frame goes out.  Both on this host's clock.
A run of 100 set-points takes about 30 s on two cores.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import sunspec2.modbus.client as ssclient  # noqa: E402

from iec104peer import ACT_CON, ACT_TERM, C_SE_NC_1, Peer, describe  # noqa: E402
from sitectl import Site, free_port  # noqa: E402
from switch_bench import summary  # noqa: E402

CA, IOA = 100, 1001
WMAXLIMPCT_OFFSET, WMAXLIMPCT_SF = 5, -2


def topology(state: Path, ports: dict, write_log: Path) -> str:
    return f"""[site]
name = "iec104bench"
state_dir = "{state}"

[runtime]
admin_port = {ports['admin']}
log_level = "WARNING"

[[wan]]
name = "scada"
protocol = "iec104"
port = {ports['iec104']}
common_address = {CA}
unit = "percent"
schedule = 1
priority = 250
functions = [{{ der = "pv1", function = "MaxPow", C_SE_NC_1 = {IOA}, output = 2001, running = 2002 }}]
measurements = [{{ der = "pv1", ioa = 3001 }}]

[[der]]
name = "pv1"
functions = ["MaxPow", "OnOff"]
schedules = 1
lan = "modbus"
address = 1
profile = "sunspec"
rated_power_w = 10000
reserve = {{ MaxPow = 10000.0, OnOff = true }}

[[lan]]
name = "modbus"
protocol = "modbus"
port = {ports['modbus']}
poll_period = 1.0

[[simulator]]
name = "inverter"
protocol = "sunspec-inverter"
port = {ports['modbus']}
wmax = 10000.0
write_log = "{write_log}"
"""


class WriteLog:
    """The simulator's register writes, read incrementally."""

    def __init__(self, path: Path, register: int) -> None:
        self.path, self.register, self.offset = path, register, 0

    def new(self) -> list[tuple[int, int]]:
        if not self.path.exists():
            return []
        with open(self.path) as f:
            f.seek(self.offset)
            text = f.read()
        complete = text[:text.rfind("\n") + 1]
        self.offset += len(complete.encode())
        out = []
        for line in complete.splitlines():
            w = json.loads(line)
            if w["address"] <= self.register < w["address"] + len(w["values"]):
                out.append((w["t_ns"], w["values"][self.register - w["address"]]))
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setpoints", type=int, default=100)
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between one set-point landing and the next")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="iec104-bench-") as tmp:
        tmp = Path(tmp)
        ports = {k: free_port() for k in ("admin", "iec104", "modbus")}
        log = tmp / "writes.jsonl"
        (tmp / "site.toml").write_text(topology(tmp / "state", ports, log))
        site = Site(tmp / "site.toml", tmp / "state")
        try:
            site.start(timeout=60)
            dev = ssclient.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=ports["modbus"],
                                                        timeout=2)
            dev.scan()
            register = dev.models[123][0].model_addr + WMAXLIMPCT_OFFSET
            dev.close()
            writes = WriteLog(log, register)
            device_ms, con_ms, term_ms = [], [], []
            started = time.monotonic()
            with Peer("127.0.0.1", ports["iec104"], timeout=10.0) as peer:
                peer.startdt()
                for i in range(args.setpoints):
                    percent = 10.0 + (i * 7.31) % 80.0          # distinct, never 100 % (the reserve)
                    want = round(percent / 10 ** WMAXLIMPCT_SF)
                    percent = want * 10 ** WMAXLIMPCT_SF
                    writes.new()
                    sent = time.time_ns()
                    mark = peer.setpoint_float(CA, IOA, percent)
                    con = peer.answers(mark, C_SE_NC_1, IOA, (ACT_CON,))
                    assert not con.negative, describe(con)
                    con_at = time.time_ns()
                    peer.answers(mark, C_SE_NC_1, IOA, (ACT_TERM,))
                    term_at = time.time_ns()
                    deadline = time.monotonic() + 10
                    hit = None
                    while hit is None:
                        hit = next((t for t, v in writes.new() if v == want and t >= sent), None)
                        if hit is None:
                            if time.monotonic() > deadline:
                                raise AssertionError(f"set-point {percent} % never reached the inverter")
                            time.sleep(0.002)
                    device_ms.append((hit - sent) / 1e6)
                    con_ms.append((con_at - sent) / 1e6)
                    term_ms.append((term_at - sent) / 1e6)
                    time.sleep(args.pause)
            elapsed = time.monotonic() - started
            site.stop()
        finally:
            site.kill_everything()
    result = {"bench": "iec104", "setpoints": args.setpoints, "pause_s": args.pause,
              "setpoint_to_inverter_register": summary(device_ms), "setpoint_to_act_con": summary(con_ms),
              "setpoint_to_act_term": summary(term_ms), "elapsed_s": round(elapsed, 1),
              "host": {"python": platform.python_version(), "machine": platform.machine()},
              "command": "python bench/iec104_bench.py " + " ".join(sys.argv[1:])}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
