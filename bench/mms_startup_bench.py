"""MMS endpoint start-up for a site of N DERs, phase by phase, then proof that it serves.

    .venv/bin/python bench/mms_startup_bench.py --ders 1 --ders 10 --ders 100 --json bench/results-mms-startup.json

Each DER has 3 functions (ActPow, MaxPow, OnOff) x 11 schedules (FSCH01..10, Res_FSCH01) of
100 values.  The endpoint's own `MmsEndpoint.start` runs, in this process, with a stand-in for
its control session (which accepts every write); each phase is timed by wrapping what the
endpoint calls: generate the SCL (`endpoint_scl`), parse it, write libiec61850's model text
(`to_cfg`), build the model in libiec61850 (`MmsServer`), install every write and control
handler (`_install`, once per schedule), its model book and C switcher, the garbage
collection and freeze, and then listening on a loopback port once "every controller's state
is in" (`on_synced`, at once here: no controller sends any).  `serving_s` is the time from
calling `start` to a listening server.

Then a real MMS client (open61850, pure Python, in this process: the server runs in C
threads) connects, writes a ValASG setMag.f, a StrTm setTm and NumEntr of the last DER's
last schedule (the endpoint's handlers answer: the session stand-in accepts them), reads
them back, and operates EnaReq with ctlVal false (accepted at once by the endpoint's check
handler).  The first write to each attribute includes finding its handler.

`--libiec61850-handlers` installs the handlers through libiec61850's own functions, one by
one (the path used with an unknown build of the library; before this change, the only one).
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mmsclients import Open61850Client  # noqa: E402
from sitectl import free_port  # noqa: E402

from relevent.iec61850 import lib as L  # noqa: E402
from relevent.policy import Decision  # noqa: E402
from relevent.protocols.mms import endpoint as E  # noqa: E402
from relevent.scl.generate import default_ld_inst  # noqa: E402
from relevent.wan.session import Who  # noqa: E402


def site(ders: int) -> dict:
    return {"name": "wan", "port": free_port(), "address": "127.0.0.1", "site": "bench",
            "ders": [{"name": f"d{i:02d}", "functions": ["ActPow", "MaxPow", "OnOff"], "schedules": 10,
                      "values": 100} for i in range(ders)]}


class Session:
    """Stands in for the endpoint's WanContext: accepts every write, never operates."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.ready = threading.Event()
        self.writes: list = []

    def who(self, peer: str = "", credential=None) -> Who:
        return Who("bench", peer, True)

    def may(self, *_args) -> Decision:
        return Decision.allow()

    def contact(self, *_args) -> None:
        pass

    def write(self, der, kind, schedule, writes, who=None):
        self.writes.append((der, kind, schedule, writes))
        return SimpleNamespace(ok=True, refusal=None, rule="", state=None)

    def defer_ready(self) -> None:
        pass

    def mark_ready(self) -> None:
        self.ready.set()

    def connected(self, _up: bool, _who=None) -> None:
        pass

    def unacked(self, *_args) -> list:
        return []


class Phases:
    """Wraps what MmsEndpoint.start calls, in its module, to time each phase."""

    WRAPPED = {"endpoint_scl": "generate_scl", "parse_scl": "parse_scl", "to_cfg": "to_cfg",
               "MmsServer": "libiec61850_model", "ModelBook": "model_book", "Switcher": "switcher"}

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.saved = {name: getattr(E, name) for name in self.WRAPPED if hasattr(E, name)}
        self.saved_install = E.MmsEndpoint._install
        self.saved_collect = gc.collect

    def timed(self, phase: str, fn):
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t
        return run

    def __enter__(self) -> "Phases":
        for name, fn in self.saved.items():
            setattr(E, name, self.timed(self.WRAPPED[name], fn))
        E.MmsEndpoint._install = self.timed("install_handlers", self.saved_install)
        gc.collect = self.timed("gc_collect_freeze", self.saved_collect)
        return self

    def __exit__(self, *_exc) -> None:
        for name, fn in self.saved.items():
            setattr(E, name, fn)
        E.MmsEndpoint._install = self.saved_install
        gc.collect = self.saved_collect


def start_endpoint(cfg: dict, work: Path) -> tuple[E.MmsEndpoint, Session, dict]:
    session = Session(str(work))
    endpoint = E.MmsEndpoint(session, cfg)
    with Phases() as phases:
        t0 = time.perf_counter()
        endpoint.start()
        started = time.perf_counter()
        endpoint.on_synced()  # every controller's state is in (none here): listen
        while not session.ready.is_set():  # the actor thread's part: Ready once listening
            select.select([endpoint.bridge.fileno()], [], [], 0.05)
            endpoint.on_ready([])
        serving = time.perf_counter()
    out = dict(phases.seconds)
    out["start_total"] = started - t0
    out["listen"] = serving - started
    out["serving"] = serving - t0
    return endpoint, session, out


def serve_check(endpoint: E.MmsEndpoint, cfg: dict) -> dict:
    """A real client writes to the last schedule of the last DER and reads it back."""
    srv = endpoint.server
    der = cfg["ders"][-1]
    ld = default_ld_inst(der, len(cfg["ders"]))
    fsch = f"{srv.ied_name}{ld}/ActPow_FSCH10"
    out: dict = {}
    t = time.perf_counter()
    client = Open61850Client(cfg["address"], cfg["port"])
    out["connect_ms"] = round((time.perf_counter() - t) * 1000, 1)
    try:
        checks = [("ValASG100.setMag.f", client.write_float, 42.5, client.read_float),
                  ("StrTm16.setTm", client.write_time, 4_102_444_800_000, client.read_time_ms),
                  ("NumEntr.setVal", client.write_int, 100, client.read_int)]
        for path, write, value, read in checks:
            t = time.perf_counter()
            error = write(f"{fsch}.{path}", value)
            ms = round((time.perf_counter() - t) * 1000, 2)
            back = read(f"{fsch}.{path}", "SP")
            out[path] = {"error": error, "write_ms": ms, "read_back": back}
            if error is not None or back != value:
                raise AssertionError(f"{fsch}.{path}: wrote {value}, answer {error}, read back {back}")
        t = time.perf_counter()
        ok, cause = client.operate(f"{fsch}.EnaReq", False)
        out["operate_EnaReq_false"] = {"ok": ok, "ms": round((time.perf_counter() - t) * 1000, 2)}
        if not ok:
            raise AssertionError(f"operate {fsch}.EnaReq refused (addCause {cause})")
        out["endpoint_writes"] = endpoint.stats["writes"]
    finally:
        client.close()
    return out


def measure(ders: int) -> dict:
    cfg = site(ders)
    with tempfile.TemporaryDirectory() as tmp:
        gc_was = gc.isenabled()
        endpoint, session, phases = start_endpoint(cfg, Path(tmp))
        try:
            result = {"ders": ders, "schedules": ders * 33, "handlers": endpoint.server.handler_count,
                      # (absent before this change: the bench also runs against the old server)
                      "fast_handlers": getattr(endpoint.server, "fast_handlers", False),
                      "libiec61850_build_s": round(getattr(endpoint.server, "build_seconds", None) or 0, 3),
                      **{f"{k}_s": round(v, 3) for k, v in phases.items()},
                      "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
            result["client"] = serve_check(endpoint, cfg)
            result["client"]["session_writes"] = len(session.writes)
        finally:
            endpoint.stop()
            gc.unfreeze()
            if gc_was:
                gc.enable()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ders", type=int, action="append", help="DERs in the site (repeat for several runs)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--libiec61850-handlers", action="store_true",
                    help="install handlers through libiec61850 one by one (quadratic)")
    args = ap.parse_args()
    if args.libiec61850_handlers:
        L.WriteHook.possible = staticmethod(lambda _server: False)
    results = []
    sizes = args.ders or [1, 10]
    for n in sizes:
        if len(sizes) == 1:
            results.append(measure(n))
        else:  # each size in a fresh process: no heap or frozen objects left by the one before
            cmd = [sys.executable, __file__, "--ders", str(n)] + (
                ["--libiec61850-handlers"] if args.libiec61850_handlers else [])
            run = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
            results.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
