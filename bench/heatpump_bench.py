"""Heat pumps: (1) schedule boundary -> SG-Ready register write at the device, through a
running site; (2) a simulated day of a DSO's limits and blocks against the house's comfort.

    .venv/bin/python bench/heatpump_bench.py --entries 30          # both, ~50 s
    .venv/bin/python bench/heatpump_bench.py --skip-site           # the simulated day only, ~2 s

(1) A site (MMS in, Modbus LAN endpoint, a heat_pump DER with profile sgready, the
heat-pump simulator) runs in its own processes.  An OnOff schedule alternates off/on every
second (SG-Ready state 1 / 2; the DER's rules are set to allow a switch every second) and a
MaxPow schedule alternates 5000/5500 W on the half seconds (the power-limit register).  The
simulator logs time_ns when pymodbus hands it each write; lateness = that time minus the
entry's boundary.  Goal: p99 <= 20 ms.

(2) No site: the same pure code the edge runs (relevent/devices/load.py -> sgready.py's
rules, with the time as an argument) drives the simulator's thermal model
(relevent/simulators/heat_pump.py) through a simulated day, once per scenario, and says
how much energy moved out of the DSO's windows and whether the house stayed above its
comfort limit (or the heat pump left a block for it).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lanctl import read_write_log  # noqa: E402
from mmsclients import Open61850Client  # noqa: E402
from sitectl import Site, free_port  # noqa: E402
from switch_bench import summary  # noqa: E402
from relevent.clock import now_ms  # noqa: E402
from relevent.devices import sgready  # noqa: E402
from relevent.devices.load import load_command  # noqa: E402
from relevent.simulators.heat_pump import HeatPump, House, Settings  # noqa: E402

LD = "DER_Scheduler_hp1Control"


def topology(state: Path, ports: dict, log: Path) -> str:
    return f"""[site]
name = "hpbench"
state_dir = "{state}"
[runtime]
admin_port = {ports['admin']}
[[wan]]
name = "mms"
protocol = "mms"
port = {ports['mms']}
[[der]]
name = "hp1"
type = "heat_pump"
ld_inst = "hp1Control"
functions = ["MaxPow", "OnOff"]
schedules = 1
lan = "modbus"
address = 1
profile = "sgready"
rated_power_w = 6000
sgready = {{ map = "example-register", min_run_s = 0, min_off_s = 0, block_max_s = 3600, blocks_per_day = 1000 }}
reserve = {{ MaxPow = 6000.0, OnOff = true }}
[[lan]]
name = "modbus"
protocol = "modbus"
port = {ports['modbus']}
poll_period = 1.0
[[simulator]]
name = "heatpump"
protocol = "heat-pump"
port = {ports['modbus']}
min_run_s = 0
min_off_s = 0
write_log = "{log}"
"""


def schedule(mms, kind: str, values: list, start: int) -> None:
    ref = f"{LD}/{kind}_FSCH01"
    assert mms.write_int(f"{ref}.NumEntr.setVal", len(values)) is None
    assert mms.write_int(f"{ref}.SchdIntv.setVal", 1) is None
    assert mms.write_int(f"{ref}.SchdPrio.setVal", 30) is None
    for i, v in enumerate(values, start=1):
        if kind == "OnOff":
            assert mms.write_bool(f"{ref}.ValSPG{i:03d}.setVal", v) is None
        else:
            assert mms.write_float(f"{ref}.ValASG{i:03d}.setMag.f", v) is None
    assert mms.write_time(f"{ref}.StrTm01.setTm", start) is None
    assert mms.operate(f"{ref}.EnaReq", True) == (True, 0)


def lateness(log: Path, point: str, expected: list[int], boundaries: list[int]) -> tuple[list[float], int]:
    """Per boundary, the first write of the expected value within (boundary - 500 ms,
    boundary + 1 s): its lateness in ms; and how many came early (before the boundary)."""
    got = [(w["t_ns"] / 1e6, w["values"][w["points"].index(point)]) for w in read_write_log(log)
           if point in w.get("points", [])]
    out, early = [], 0
    for value, boundary in zip(expected, boundaries):
        t = next((t for t, v in got if v == value and boundary - 500 < t < boundary + 1000), None)
        if t is not None:
            out.append(t - boundary)
            early += t < boundary
    return out, early


def site_latency(entries: int, keep: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="hp-bench-") as tmp:
        tmp = Path(keep or tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        ports = {k: free_port() for k in ("admin", "mms", "modbus")}
        log = tmp / "writes.jsonl"
        topo = tmp / "hp.toml"
        topo.write_text(topology(tmp / "state", ports, log))
        site = Site(topo, tmp / "state").start()
        try:
            mms = Open61850Client("127.0.0.1", ports["mms"])
            deadline = time.monotonic() + 10
            while not read_write_log(log) and time.monotonic() < deadline:
                time.sleep(0.05)
            onoff = [i % 2 == 1 for i in range(entries)]                 # off, on, off, ...
            limits = [5000.0 if i % 2 == 0 else 5500.0 for i in range(entries)]
            start = (now_ms() // 1000 + 3) * 1000
            schedule(mms, "OnOff", onoff, start)
            schedule(mms, "MaxPow", limits, start + 500)
            time.sleep((start + entries * 1000 + 1500 - now_ms()) / 1000)
            mms.close()
        finally:
            site.stop()
            site.kill_everything()
        states, early_s = lateness(log, "state", [2 if on else 1 for on in onoff],
                                   [start + i * 1000 for i in range(entries)])
        lims, early_l = lateness(log, "power_limit", [int(v) for v in limits],
                                 [start + 500 + i * 1000 for i in range(entries)])
    return {"entries": entries, "boundary_to_sgready_state_write": summary(states),
            "boundary_to_power_limit_write": summary(lims),
            "missing": {"state": entries - len(states), "power_limit": entries - len(lims)},
            "early": {"state": early_s, "power_limit": early_l}}


# -- (2) a simulated day -------------------------------------------------------------------------
H = 3600.0


def simulate(windows: list[tuple[float, float, dict]], outdoor_mean_c: float, rules: sgready.Rules,
             step_s: float = 60.0) -> dict:
    """One day: the DSO's outputs per window [(from h, to h, outputs)], the edge's rules, the
    simulator's heat pump; energy per hour and comfort."""
    hp = HeatPump(House(), Settings(outdoor_mean_c=outdoor_mean_c), 20.8, 42.0)
    sg, notes = sgready.SgState(), []
    hourly = [0.0] * 24
    t = 0.0
    while t < 24 * H:
        outputs = next((o for a, b, o in windows if a * H <= t < b * H), {})
        load = load_command(outputs, 6000.0, 4200.0)
        d = sgready.step(sg, sgready.wanted_state(load.blocked, load.requested_w, 6000.0), t, rules)
        if d.note in ("block_max", "blocks_per_day") and (not notes or notes[-1][1] != d.note):
            notes.append((round(t / H, 2), d.note))
        sg = d.sg
        hp.sg = d.state
        hp.limit_w = load_command({**outputs, "OnOff": None}, 6000.0, 4200.0).limit_w
        before = hp.th.electric_j
        hp.advance(step_s)
        hourly[int(t // H)] += (hp.th.electric_j - before) / 3.6e6
        t += step_s
    return {"kwh": round(sum(hourly), 2), "hourly_kwh": [round(x, 3) for x in hourly],
            "min_indoor_c": round(hp.min_indoor_c, 2), "minutes_below_comfort": round(hp.comfort_low_s / 60),
            "comfort_overrides": hp.overrides, "rule_notes": notes, "blocks": len(sg.block_starts)}


def simulated_day() -> dict:
    rules = sgready.Rules(min_run_s=600, min_off_s=300, block_max_s=2 * H, blocks_per_day=3)
    off = {"OnOff": False}
    scenarios = {
        "dim_to_3kw_17_20h": [(17, 20, {"MaxPow": 3000.0})],                       # §14a: raised to 4.2 kW
        "blocks_3x2h": [(6, 8, off), (11, 13, off), (17, 19, off)],
        "blocks_3x2h_plus_a_4th_and_a_long_one": [(6, 8, off), (11, 13, off), (17, 19.5, off), (21, 22, off)],
    }
    out = {}
    for mean in (2.0, -8.0):
        base = simulate([], mean, rules)
        day = {"baseline": {k: base[k] for k in ("kwh", "min_indoor_c", "minutes_below_comfort")}}
        for name, windows in scenarios.items():
            r = simulate(windows, mean, rules)
            hours = {h for a, b, _ in windows for h in range(int(a), int(-(-b // 1)))}
            in_windows = sum(r["hourly_kwh"][h] for h in hours)
            base_windows = sum(base["hourly_kwh"][h] for h in hours)
            day[name] = {"kwh": r["kwh"], "kwh_in_dso_windows": round(in_windows, 2),
                         "baseline_kwh_in_dso_windows": round(base_windows, 2),
                         "energy_shifted_out_kwh": round(base_windows - in_windows, 2),
                         "min_indoor_c": r["min_indoor_c"], "comfort_limit_c": 19.0,
                         "comfort_limit_hit": r["minutes_below_comfort"] > 0,
                         "minutes_below_comfort": r["minutes_below_comfort"],
                         "heat_pump_left_a_block_for_comfort": r["comfort_overrides"],
                         "blocks_started": r["blocks"], "rule_notes": r["rule_notes"]}
        out[f"outdoor_mean_{mean:g}C"] = day
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=30, help="1 s entries per schedule (max 100)")
    ap.add_argument("--skip-site", action="store_true", help="only the simulated day")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--keep", help="a directory for the site's files (its log, the write log), kept afterwards")
    args = ap.parse_args()
    t0 = time.monotonic()
    result: dict = {"simulated_day": simulated_day()}
    if not args.skip_site:
        result["site"] = site_latency(min(args.entries, 100), args.keep)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
