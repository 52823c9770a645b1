"""Schedule boundary -> SetChargingProfile at the charger: when a MaxPow schedule entry
starts, how late does the charging profile with its limit reach an OCPP charger?

    .venv/bin/python bench/ocpp_bench.py --entries 30 --json bench/results-ocpp.json

The site (an HTTP WAN endpoint, one OCPP LAN endpoint, `--chargers` ev_charger DERs) runs
in its own processes.  Each charger is a charge point written with the `ocpp` package in
the client role (tests/test_ocpp_endpoint.py's TestCharger, OCPP `--version`), on its own
asyncio loop in a thread of this process; it notes time.time() when a SetChargingProfile
frame reaches its router, and answers Accepted.  One MaxPow schedule per DER, written
over HTTP, `--entries` entries of 1 s with distinct values.  Lateness = arrival - the
entry's boundary.  Path: controller timer -> DER (`OutputChanged`) -> OCPP endpoint
(`DeviceCommand`) -> its asyncio thread -> schema validation -> websocket -> charger.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import httpx  # noqa: E402

from sitectl import Site, free_port  # noqa: E402
from switch_bench import summary  # noqa: E402
from test_ocpp_endpoint import TestCharger, iso, limit_of  # noqa: E402
from relevent.clock import now_ms  # noqa: E402


def topology(tmp: Path, ports: dict, chargers: int) -> str:
    ders = "".join(f"""
[[der]]
name = "ev{i}"
type = "ev_charger"
functions = ["MaxPow"]
schedules = 1
lan = "ocpp"
address = "CP{i}"
rated_power_w = 11000
reserve = {{ MaxPow = 11000.0 }}
""" for i in range(chargers))
    return f"""
[site]
name = "ocppbench"
state_dir = "{tmp / 'state'}"

[runtime]
admin_port = {ports['admin']}

[[wan]]
name = "http"
protocol = "http"
port = {ports['http']}
{ders}
[[lan]]
name = "ocpp"
protocol = "ocpp"
port = {ports['ocpp']}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=30, help="1 s entries per schedule (max 100)")
    ap.add_argument("--chargers", type=int, default=1, help="at most 37")
    ap.add_argument("--version", choices=("1.6", "2.0.1"), default="1.6")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    entries = min(args.entries, 100)
    with tempfile.TemporaryDirectory(prefix="ocpp-bench-") as tmp:
        tmp = Path(tmp)
        ports = {k: free_port() for k in ("admin", "http", "ocpp")}
        path = tmp / "ocpp.toml"
        path.write_text(topology(tmp, ports, args.chargers))
        site = Site(path, tmp / "state").start(timeout=60)
        chargers: list[TestCharger] = []
        try:
            for i in range(args.chargers):
                cp = TestCharger(ports["ocpp"], f"CP{i}", args.version).connect()
                cp.boot()
                cp.wait_profile(lambda p: limit_of(p) == 11000.0)
                chargers.append(cp)
            values = [[1000.0 + 37 * k + i for k in range(entries)] for i in range(args.chargers)]  # distinct
            start = (now_ms() // 1000 + 3) * 1000
            with httpx.Client(base_url=f"http://127.0.0.1:{ports['http']}", timeout=15) as http:
                for i in range(args.chargers):
                    url = f"/api/v1/ders/ev{i}/MaxPow/schedules/1"
                    r = http.put(url, json={"values": values[i], "interval_s": 1, "priority": 20,
                                            "start": iso(start)})
                    assert r.status_code == 200, r.text
                    assert http.post(url + "/enable").status_code == 200
            time.sleep(max(0.0, (start + entries * 1000 + 1500 - now_ms()) / 1000))
            late: list[float] = []
            for i, cp in enumerate(chargers):
                seen = set()
                for arrived, payload in cp.profiles:
                    value = limit_of(payload)
                    if value in values[i] and value not in seen:
                        seen.add(value)
                        late.append(arrived * 1000 - (start + values[i].index(value) * 1000))
            rtt = [d["profile_rtt_ms"] for d in site.node("ocpp")["detail"]["devices"].values()]
        finally:
            for cp in chargers:
                cp.close()
            site.stop()
            site.kill_everything()
    result = {"entries": entries, "chargers": args.chargers, "ocpp": args.version,
              "boundary_to_set_charging_profile": summary(late),
              "missing": entries * args.chargers - len(late), "early": sum(1 for x in late if x < 0),
              "last_set_charging_profile_round_trip_ms": rtt}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
