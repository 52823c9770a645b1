"""`relevent chaos TOPOLOGY`: start the site, run schedules, inject faults one at a time,
and measure for each how long until everything is right again.

"Right again" means, all at once:
* every actor of the tree is running and the target has a new process;
* every controller drives the value its schedules give, and so does the MMS model (a
  fresh MMS client reads each DER's ActPow actuator);
* every DER commands the matching set-point, and every simulated device obeys it
  (inverter registers 123.WMaxLimPct/WMaxLim_Ena/Conn, MQTT device power).
At the end: every schedule as read over MMS is unchanged, and the devices' own logs show
no wrong command (a value the schedules never gave) and how many were repeated.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from relevent.chaos.plan import Plan, fault_sequence
from relevent.devices import sunspec
from relevent.progress import Progress, to_stderr
from relevent.protocols.mms.client import ScheduleClient, Target
from relevent.protocols.modbus.address import parse_device_address
from relevent.runtime.control import SiteNotRunning, request
from relevent.runtime.status import walk as _walk
from relevent.scl.generate import default_ld_inst
from relevent.simulators.sunspec_inverter import SF as SIMULATOR_SF
from relevent.topology import Topology

log = logging.getLogger("relevent.chaos")

SCHEDULE_S = 86400        # one entry that outlasts any run
PRIORITY = 30
VOLATILE = ("SchdEntr", "Val.q", "ActStrTm.q", "NxtStrTm.q")  # may differ between two reads


class ChaosError(Exception):
    pass


class ChaosRun:
    def __init__(self, topology: Topology, plan: Plan, say: Callable[[str], None] = to_stderr) -> None:
        plan.check()
        if not topology.data["runtime"]["allow_fault_injection"]:
            raise ChaosError(f"{topology.path}: [runtime] allow_fault_injection must be true for a chaos run")
        if topology.data["runtime"]["ders_per_process"] > 1:
            # Its targets and checks are a DER's own path and process (pv1, pv1/ActPow, a new
            # pid after a restart); a grouped DER has neither (relevent/actors/der_group.py).
            raise ChaosError(f"{topology.path}: a chaos run needs every DER in its own process: [runtime] "
                             f"ders_per_process = 1 (it is {topology.data['runtime']['ders_per_process']})")
        mms = [ep for ep in topology.data["wan"] if ep["protocol"] == "mms"]
        if not mms:
            raise ChaosError(f"{topology.path}: a chaos run writes its schedules over MMS: add a [[wan]] endpoint "
                             f"with protocol = \"mms\"")
        if mms[0]["ders"] and len(mms[0]["ders"]) < len(topology.data["der"]):
            raise ChaosError(f"{topology.path}: a chaos run writes its schedules over the first MMS endpoint, "
                             f"{mms[0]['name']!r}, which serves only {', '.join(mms[0]['ders'])}: it must serve "
                             f"every DER (remove its `ders`)")
        self.topo, self.plan, self.say = topology, plan, say
        self.data = topology.data
        self.proc: subprocess.Popen | None = None
        self.expected = {der["name"]: self._value_for(der) for der in self.data["der"] if "ActPow" in der["functions"]}
        self.mms_endpoint = mms[0]
        self.mms_port = mms[0]["port"]
        # Every other WAN endpoint that can be read must show the same outputs.
        self.http_ports = [ep["port"] for ep in self.data["wan"] if ep["protocol"] == "http"]
        self._mms: ScheduleClient | None = None
        self.progress = Progress(0, "chaos", say=say)   # replaced by run(), which knows the total

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> dict:
        started = time.time()
        sequence = fault_sequence(self.plan, self.data)
        self.progress = Progress(len(sequence), "chaos", say=self.say)
        try:
            self.progress.phase(f"starting the site {self.topo.path}")
            self._start_site()   # inside: a site that does not come up is stopped too
            self.progress.phase("writing a schedule per DER over MMS")
            self._setup_schedules()
            baseline = self._read_schedules()
            log_marks = self._log_sizes()
            results = []
            for kind, fault, path in sequence:
                self.progress.begin(f"{fault} {kind} {path or 'site'}")
                r = self._one(kind, fault, path)
                results.append(r)
                self.progress.step(f"{fault} {kind} {path or 'site'} "
                                   f"{'ok' if r['ok'] else 'FAILED'} {r['recovery_ms']:.0f} ms {r.get('error') or ''}"
                                   .rstrip(), ok=r["ok"])
                time.sleep(self.plan.settle)
            self.progress.phase("reading every schedule back and the device commands")
            after = self._read_schedules()
            changed = {name: {k: [v, after.get(name, {}).get(k)] for k, v in baseline[name].items()
                              if after.get(name, {}).get(k) != v}
                       for name in baseline if baseline[name] != after.get(name)}
            commands = self._device_commands(log_marks)
        finally:
            self.progress.phase("stopping the site")
            self._stop_site()
        self.say(self.progress.summary())
        return self._report(results, changed, commands, time.time() - started)

    def _one(self, kind: str, fault: str, path: str) -> dict:
        before = self._status()
        target = self._node(before, path)
        old_pid = target["pid"]
        t0 = time.monotonic()
        if fault == "kill":
            os.kill(old_pid, signal.SIGKILL)
        elif fault == "sigterm":
            os.kill(old_pid, signal.SIGTERM)
        else:
            reply = request(self.topo.control_socket, {"op": "fault", "target": path, "kind": fault})
            if not reply.get("ok"):
                return {"kind": kind, "fault": fault, "path": path, "ok": False, "recovery_ms": 0.0,
                        "error": reply.get("error")}
        deadline = t0 + self.plan.timeout
        problem, trace = "not checked", []   # trace: (ms, what was still wrong) at each change
        while time.monotonic() < deadline:
            problem = self._wrong(old_pid, path)
            if not trace or trace[-1][1] != (problem or "")[:60]:
                trace.append((round((time.monotonic() - t0) * 1000), (problem or "")[:60]))
            if problem is None:
                return {"kind": kind, "fault": fault, "path": path, "ok": True,
                        "recovery_ms": (time.monotonic() - t0) * 1000, "trace": trace}
            self.progress.tick()
            time.sleep(0.01)
        return {"kind": kind, "fault": fault, "path": path, "ok": False,
                "recovery_ms": (time.monotonic() - t0) * 1000, "error": problem, "trace": trace}

    # -- what "right" means ------------------------------------------------------------------------
    def _wrong(self, old_pid: int | None, path: str) -> str | None:
        """None when everything is right, else the first thing that is not."""
        try:
            tree = self._status()
        except (SiteNotRunning, OSError, ValueError) as exc:
            return f"no status: {exc}"
        nodes = list(_walk(tree))
        down = [n["path"] or "site" for n in nodes if n["state"] != "running"]
        if down:
            return f"not running: {', '.join(down)}"
        if self._node(tree, path)["pid"] == old_pid:
            return "target not restarted yet"
        by_path = {n["path"]: n for n in nodes}
        for der, value in self.expected.items():
            out = by_path.get(f"{der}/ActPow", {}).get("detail", {}).get("output")
            if out != value:
                return f"{der}/ActPow output {out}, expected {value}"
            cmd = by_path.get(der, {}).get("detail", {}).get("command")
            if not cmd or cmd["setpoint_w"] != value:
                return f"{der} command {cmd}, expected set-point {value}"
        for sim in self.data.get("simulator", []):
            problem = self._device_wrong(sim, by_path.get(sim["name"], {}).get("detail", {}))
            if problem:
                return problem
        return self._mms_wrong() or self._http_wrong()

    def _http_wrong(self) -> str | None:
        for port in self.http_ports:
            for der, value in self.expected.items():
                url = f"http://127.0.0.1:{port}/api/v1/ders/{der}/ActPow"
                try:
                    with urllib.request.urlopen(url, timeout=2.0) as reply:
                        got = json.loads(reply.read()).get("output")
                except Exception as exc:  # noqa: BLE001 - any client failure means "not right yet"
                    return f"HTTP {url}: {exc}"
                if got != value:
                    return f"HTTP {url}: output {got}, expected {value}"
        return None

    def _device_wrong(self, sim: dict, detail: dict) -> str | None:
        if sim["protocol"] == "sunspec-inverter":
            der = self._der_of_inverter(sim)
            if der is None or der["name"] not in self.expected:
                return None
            pct = self.expected[der["name"]] / sim["wmax"] * 100
            if detail.get("wmaxlim_ena") != 1 or detail.get("conn") != 1 or \
                    abs(detail.get("wmaxlimpct", -1) - pct) > 0.011:
                return f"inverter {sim['name']}: {detail}, expected WMaxLimPct {pct:.2f}"
        elif sim["protocol"] == "mqtt-device" and sim["der"] in self.expected:
            if detail.get("w") != self.expected[sim["der"]]:
                return f"device {sim['name']}: {detail.get('w')} W, expected {self.expected[sim['der']]}"
        return None

    def _mms_wrong(self) -> str | None:
        try:
            if self._mms is None:
                self._mms = ScheduleClient(Target("127.0.0.1", self.mms_port, self._ld(self.data["der"][0])), 2.0)
            for der, value in self.expected.items():
                self._mms.ld = self._ld(self._der(der))
                got = self._mms.controller("ActPow")["output"]
                if got != value:
                    return f"MMS {self._mms.ld} ActPow actuator {got}, expected {value}"
        except Exception as exc:  # noqa: BLE001 - any client failure means "not right yet"
            self._close_mms()
            return f"MMS: {exc}"
        return None

    def _close_mms(self) -> None:
        if self._mms is not None:
            try:
                self._mms.close()
            except Exception:  # noqa: BLE001 - a dead connection
                pass
            self._mms = None

    # -- set-up and checks --------------------------------------------------------------------------
    def _value_for(self, der: dict) -> float:
        rated = der["rated_power_w"] or 10000.0
        return float(round(-0.3 * rated if der["type"] == "battery" else 0.3 * rated))

    def _setup_schedules(self) -> None:
        start = datetime.fromtimestamp(time.time() + 2, tz=timezone.utc)
        for der, value in self.expected.items():
            client = ScheduleClient(Target("127.0.0.1", self.mms_port, self._ld(self._der(der))))
            try:
                errors = client.write("ActPow", "1", [value], SCHEDULE_S, start, PRIORITY)
                if errors:
                    raise ChaosError(f"set-up of {der}: {errors}")
                refused = client.operate("ActPow", "1", True)
                if refused:
                    raise ChaosError(f"enable of {der}/ActPow_FSCH01 refused: {refused}")
            finally:
                client.close()
        deadline = time.monotonic() + 30
        while (problem := self._wrong(None, "")) is not None:
            if time.monotonic() > deadline:
                raise ChaosError(f"the schedules did not take effect: {problem}")
            time.sleep(0.05)
        self.say(f"schedules running: {self.expected}")

    def _read_schedules(self) -> dict:
        out = {}
        for der in self.data["der"]:
            client = ScheduleClient(Target("127.0.0.1", self.mms_port, self._ld(der)))
            try:
                for kind in der["functions"]:
                    for n in [str(i) for i in range(1, der["schedules"] + 1)] + ["res"]:
                        s = client.show(kind, n)
                        # A periodic reserve's run times move on by themselves each period.
                        volatile = VOLATILE + (("ActStrTm", "NxtStrTm") if n == "res" else ())
                        out[s["schedule"]] = {k: v for k, v in s.items() if k not in volatile}
            finally:
                client.close()
        return out

    def _log_sizes(self) -> dict:
        return {sim["name"]: Path(sim[key]).stat().st_size if Path(sim[key]).exists() else 0
                for sim in self.data.get("simulator", [])
                for key in ("write_log", "command_log") if sim.get(key)}

    def _device_commands(self, marks: dict) -> dict:
        """Commands the devices received after the set-up: total, wrong, repeated."""
        out = {}
        for sim in self.data.get("simulator", []):
            key = "write_log" if sim.get("write_log") else "command_log" if sim.get("command_log") else None
            if key is None:
                continue
            with open(sim[key], "rb") as f:
                f.seek(marks.get(sim["name"], 0))
                lines = [json.loads(line) for line in f.read().splitlines() if line.strip()]
            if sim["protocol"] == "sunspec-inverter":
                der = self._der_of_inverter(sim)
                target = self._model_address(sim["models"], 123) + sunspec.layout(123)["WMaxLimPct"].offset
                step = 10.0 ** SIMULATOR_SF["WMaxLimPct_SF"]
                expected = round(self.expected.get(der["name"], 0) / sim["wmax"] * 100 / step) if der else None
                values = [w["values"][target - w["address"]] for w in lines
                          if w["address"] <= target < w["address"] + len(w["values"])]
            else:
                ident = f"{sim['der']}.ActPow"
                expected = self.expected.get(sim["der"])
                values = [c["value"] for c in lines if c["identifier"] == ident]
            out[sim["name"]] = {"commands": len(values), "wrong": sum(1 for v in values if v != expected),
                                "expected": expected}
        return out

    # -- helpers ------------------------------------------------------------------------------------
    def _der(self, name: str) -> dict:
        return next(d for d in self.data["der"] if d["name"] == name)

    def _ld(self, der: dict) -> str:
        return self.mms_endpoint.get("ied_name", "DER_Scheduler_") + default_ld_inst(der, len(self.data["der"]))

    def _der_of_inverter(self, sim: dict) -> dict | None:
        for der in self.data["der"]:
            lan = next((e for e in self.data["lan"] if e["name"] == der["lan"]), None)
            if lan is None or lan["protocol"] != "modbus":
                continue
            where = parse_device_address(der["address"], lan["host"], lan["port"])
            if where.port == sim["port"] and where.unit == sim["unit"]:
                return der
        return None

    @staticmethod
    def _model_address(models: list[int], wanted: int) -> int:
        addr = 40002
        for mid in models:
            if mid == wanted:
                return addr
            addr += 2 + sunspec.model_length(mid)
        raise ChaosError(f"the simulator has no model {wanted}")

    def _status(self) -> dict:
        reply = request(self.topo.control_socket, {"op": "status"})
        if not reply.get("ok"):
            raise ValueError(reply.get("error"))
        return reply["tree"]

    @staticmethod
    def _node(tree: dict, path: str) -> dict:
        for node in _walk(tree):
            if node["path"] == path:
                return node
        raise ChaosError(f"no actor {path!r} in the tree")

    def _start_site(self) -> None:
        state = self.topo.state_dir
        state.mkdir(parents=True, exist_ok=True)
        out = open(state / "chaos-site.out", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "relevent", "run", str(self.topo.path)],
                                     stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChaosError(f"the site exited with {self.proc.returncode}; see {state / 'chaos-site.out'}")
            try:
                if all(n["state"] == "running" for n in _walk(self._status())):
                    return
            except (SiteNotRunning, OSError, ValueError):
                pass
            time.sleep(0.1)
        raise ChaosError("the site did not start within 60 s")

    def _stop_site(self) -> None:
        self._close_mms()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._kill_group()

    def _kill_group(self) -> None:
        """The runner was killed before it could stop its actors: they share the thespian
        admin's process group (relevent.pid says which); none may outlive the run."""
        try:
            pgid = json.loads((self.topo.state_dir / "relevent.pid").read_text())["admin_pgid"]
            os.killpg(pgid, signal.SIGKILL)
        except (OSError, ValueError, KeyError, TypeError):
            pass

    # -- report ---------------------------------------------------------------------------------------
    def _report(self, results: list[dict], changed: list[str], commands: dict, seconds: float) -> dict:
        table = {}
        for r in results:
            cell = table.setdefault(f"{r['kind']} {r['fault']}", {"n": 0, "failed": 0, "ms": []})
            cell["n"] += 1
            if r["ok"]:
                cell["ms"].append(r["recovery_ms"])
            else:
                cell["failed"] += 1
        for cell in table.values():
            ms = sorted(cell.pop("ms"))
            if ms:
                cell.update(p50_ms=round(_pct(ms, 50), 1), p99_ms=round(_pct(ms, 99), 1),
                            max_ms=round(ms[-1], 1), mean_ms=round(statistics.mean(ms), 1))
        failures = [r for r in results if not r["ok"]]
        slowest = sorted(results, key=lambda r: -r["recovery_ms"])[:5]
        return {"topology": str(self.topo.path), "faults": len(results), "failed": len(failures),
                "seconds": round(seconds, 1), "plan": vars(self.plan), "recovery": table,
                "schedules_checked": True, "schedules_changed": changed, "device_commands": commands,
                "failures": failures[:20], "slowest": slowest}


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def markdown(report: dict) -> str:
    lines = ["| target | fault | n | failed | p50 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for key, cell in sorted(report["recovery"].items()):
        kind, fault = key.split(" ", 1)
        lines.append(f"| {kind} | {fault} | {cell['n']} | {cell['failed']} | {cell.get('p50_ms', '-')} ms | "
                     f"{cell.get('p99_ms', '-')} ms | {cell.get('max_ms', '-')} ms |")
    lines.append("")
    lines.append(f"Faults: {report['faults']}, failed: {report['failed']}, run time {report['seconds']} s. "
                 f"Schedules changed: {len(report['schedules_changed'])}.")
    for name, c in report["device_commands"].items():
        per_fault = c["commands"] / max(1, report["faults"])
        lines.append(f"Device {name}: {c['commands']} commands after set-up ({per_fault:.2f} per fault), "
                     f"{c['wrong']} wrong (expected value {c['expected']}).")
    return "\n".join(lines)
