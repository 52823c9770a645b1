"""The cost of the observer (metrics and history, relevent/observe) and the size of the
history database.

    .venv/bin/python bench/observe_bench.py lateness --observe off
    .venv/bin/python bench/observe_bench.py lateness --observe on              # sample_s 5 (the default)
    .venv/bin/python bench/observe_bench.py lateness --observe on --sample-s 1
    .venv/bin/python bench/observe_bench.py lateness --observe off --reader      # A/B with the next one
    .venv/bin/python bench/observe_bench.py lateness --observe off --tls         # MMS over TLS
    .venv/bin/python bench/observe_bench.py size

lateness: a site of --ders DERs (controller_isolation "der", one MMS endpoint) where every
DER gets one ActPow schedule of --entries 1 s entries, all starting on the same second;
the switch lateness is the MMS endpoint's own record (relevent_switch_lateness_seconds:
from each boundary to the controller's outputs in the model, per controller switch),
read once after the last entry, so nothing but the site (and, with --observe on, its
observer gathering the status tree every sample_s, answering scrapes of /metrics every
--scrape-s and writing the history) runs meanwhile.  Percentiles are the histogram's
bucket bounds (the bucket holding them); the mean is exact (sum / count).
--reader: during the switching, a libiec61850 client (tests/mmsclients.py) reads every DER's
ActPow_GGIO1.AnOut1.mxVal.f every --read-s (one read per DER; a sweep longer than the period
delays the next).  --tls (implies --reader): the MMS endpoint serves MMS over TLS (`tls =
true`, `anonymous = "none"`, the site's PKI made with `relevent pki` in a temporary folder,
tests/sitectl.py make_pki); the set-up (open61850 over Python's ssl,
relevent/protocols/mms/client.py) and the reader (libiec61850's mbedtls, mmsclients'
TlsClient) present the certificate of the party `scada`.  Plain and TLS differ only in that.

size: 7 days of a --ders DER site written through the real HistoryWriter with an injected
clock (a sample every --sample-s, events at --events-per-hour, the observer's folding and
retention every minute); the database's size at the end is the steady state (12 h raw, 6.5
days of 15-minute rows).  synchronous is set to OFF for the synthesis only (speed; the
size does not depend on it).  To stay within a minute, the samples before the last 12 h
(and two buckets) are written every --coarse-s (60 s) rather than every --sample-s: they
are folded into 15-minute rows whose size does not depend on how many samples they hold,
and the raw window at the end, at the full rate, sets the file's high-water mark as in a
real week.  `--coarse-s 5` writes the whole week at 5 s (same size, ~3 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import open61850.mms as o61850  # noqa: E402
from open61850.data import FloatData, IntData, TimestampData  # noqa: E402

from mmsclients import LibIec61850Client, TlsClient, mms_name  # noqa: E402
from mms_tls_bench import quiet  # noqa: E402
from sitectl import Site, free_port, make_pki  # noqa: E402
from switch_bench import summary, topology  # noqa: E402

from relevent.protocols.mms.client import Target, _connect_tls, tls_context  # noqa: E402

from relevent.history import HistoryWriter  # noqa: E402
from relevent.history import fold as F  # noqa: E402


# -- lateness ---------------------------------------------------------------------------------------
TLS_SITE = """
[tls]
cert = "{pki}/site.crt"
key = "{pki}/site.key"
ca = "{pki}/ca.crt"
crl = ["{pki}/crl.pem"]

[[party]]
name = "scada"
cert_cn = "scada"
"""


def site_text(state: Path, ders: int, mms_port: int, observe: bool, sample_s: float, metrics_port: int,
              pki: Path | None = None) -> str:
    text = topology(state, ders, mms_port, heartbeat=1.0, isolation="der")
    keys = (f'metrics = "127.0.0.1:{metrics_port}"\nhistory_days = 7\nsample_s = {sample_s}\n' if observe
            else 'metrics = ""\nhistory_days = 0\n')
    if pki is not None:   # MMS over TLS, the party scada named by its certificate
        text = text.replace(f"port = {mms_port}\n", f'port = {mms_port}\ntls = true\nanonymous = "none"\n', 1)
        text += TLS_SITE.format(pki=pki)
    return text.replace("[runtime]\n", "[runtime]\n" + keys, 1)


def schedule_all(port: int, ders: int, entries: int, pki: Path | None = None) -> int:
    """One ActPow schedule per DER, 1 s entries from the same whole second; returns it (ms).
    With `pki`: over TLS, as the party scada."""
    lds = [f"d{i:03d}Control" for i in range(ders)]
    if pki is None:
        c = o61850.MmsClient.connect("127.0.0.1", port, timeout=30)
    else:
        ctx = tls_context(str(pki / "ca.crt"), str(pki / "scada.crt"), str(pki / "scada.key"))
        c = _connect_tls(Target("127.0.0.1", port, tls=ctx), 30)
    try:
        for i, ld in enumerate(lds):
            ref = f"DER_Scheduler_{ld}/ActPow_FSCH01"
            names = [mms_name(f"{ref}.{n}", "SP") for n in ("NumEntr.setVal", "SchdIntv.setVal", "SchdPrio.setVal")]
            names += [mms_name(f"{ref}.ValASG{k + 1:03d}.setMag.f", "SP") for k in range(entries)]
            data = [IntData(entries), IntData(1), IntData(20)] + [FloatData(1000.0 * (i + 1) + k) for k in range(entries)]
            assert not any(c.write_many(names, data))
        t0 = (int(time.time()) + 3) * 1000
        start = TimestampData(datetime.fromtimestamp(t0 / 1000, tz=timezone.utc))
        for ld in lds:
            ref = f"DER_Scheduler_{ld}/ActPow_FSCH01"
            c.write(mms_name(f"{ref}.StrTm01.setTm", "SP"), start)
            o61850.operate(c, f"{ref}.EnaReq", True, ctl_model=1)
        if time.time() * 1000 > t0 - 300:
            raise RuntimeError("set-up took longer than the lead time")
        return t0
    finally:
        c.close()


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (those still alive)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def bucket_percentile(hist: dict, q: float) -> str:
    """The upper bound of the bucket holding the q-th percentile, e.g. "<= 0.002 s"."""
    rank = q / 100 * hist["count"]
    for le, n in zip(hist["le"], hist["buckets"]):
        if n >= rank:
            return f"<= {le * 1000:g} ms"
    return f"> {hist['le'][-1] * 1000:g} ms"


def connect_reader(port: int, pki: Path | None) -> LibIec61850Client:
    """libiec61850's client, plain (anonymous) or over TLS as the party scada; its TLS
    debugging lines (printed by the C library at the handshake) kept off stdout."""
    tls = None if pki is None else TlsClient(str(pki / "ca.crt"), str(pki / "scada.crt"), str(pki / "scada.key"))
    with quiet():
        return LibIec61850Client("127.0.0.1", port, tls=tls)


def lateness(args) -> dict:
    reader_on = args.reader or args.tls
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mms_port, metrics_port = free_port(), free_port()
        pki = make_pki(tmp / "pki", ("site", "site"), ("scada", "party")) if args.tls else None
        (tmp / "site.toml").write_text(site_text(tmp / "state", args.ders, mms_port, args.observe == "on",
                                                 args.sample_s, metrics_port, pki))
        started = time.monotonic()
        site = Site(tmp / "site.toml", tmp / "state").start(timeout=120)
        up_s = time.monotonic() - started
        scrapes: list[float] = []
        sweeps: list[float] = []
        read_errors = 0
        reader = None
        try:
            if reader_on:
                reader = connect_reader(mms_port, pki)
            t0 = schedule_all(mms_port, args.ders, args.entries, pki)
            outputs = [f"DER_Scheduler_d{i:03d}Control/ActPow_GGIO1.AnOut1.mxVal.f" for i in range(args.ders)]
            scraping = args.observe == "on" and args.scrape_s > 0
            runner, actors = [site.proc.pid], site.leftovers()
            cpu0 = (cpu_s(runner), cpu_s(actors), time.monotonic())
            end = t0 / 1000 + args.entries + 1.0
            next_scrape = next_read = time.time()
            while time.time() < end:
                if scraping and time.time() >= next_scrape:
                    next_scrape += args.scrape_s
                    s = time.perf_counter()
                    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
                        body = r.read()
                    scrapes.append((time.perf_counter() - s) * 1000)
                if reader is not None and time.time() >= next_read:
                    next_read = max(next_read + args.read_s, time.time())
                    s = time.perf_counter()
                    for ref in outputs:
                        try:
                            reader.read_float(ref, "MX")
                        except IOError:
                            read_errors += 1
                    sweeps.append((time.perf_counter() - s) * 1000)
                wake = min([end] + ([next_scrape] if scraping else []) + ([next_read] if reader is not None else []))
                time.sleep(max(0.0, wake - time.time()))
            cpu1 = (cpu_s(runner), cpu_s(actors), time.monotonic())
            detail = site.node("mms")["detail"]
            history = (tmp / "state" / "history.sqlite")
            history_bytes = sum(p.stat().st_size for p in (tmp / "state").glob("history.sqlite*"))
            tls_detail = detail.get("tls", {}) if args.tls else {}
        finally:
            if reader is not None:
                reader.close()
            site.stop(timeout=60)
            site.kill_everything()
        log = tmp / "state" / "relevent.log"
        warnings = [line for line in (log.read_text(errors="replace").splitlines() if log.exists() else [])
                    if " WARNING " in line or " ERROR " in line]
    hist = detail["switch_lateness"]
    recent = [s["outputs_ms"] for s in detail.get("switches", [])]
    return {"ders": args.ders, "entries": args.entries, "observe": args.observe,
            "mms": "tls (party scada's certificate)" if args.tls else "plain",
            "reader": ({"client": "libiec61850", "every_s": args.read_s, "sweeps": len(sweeps),
                        "reads": len(sweeps) * args.ders, "read_errors": read_errors,
                        "sweep_ms": summary(sweeps) if sweeps else None} if reader_on else None),
            "server_tls": {k: tls_detail.get(k) for k in ("min_version", "handshakes_refused", "last_handshake_refusal", "errors")
                           if k in tls_detail} or None,
            "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
            "sample_s": args.sample_s if args.observe == "on" else None,
            "scrape_every_s": args.scrape_s if args.observe == "on" else None,
            "site_up_s": round(up_s, 1), "switches": hist["count"],
            "switched_on_time": detail.get("switched_on_time"),
            "switches_cancelled_late": detail.get("switches_cancelled_late", 0), "log_warnings": warnings[:20],
            "expected_switches": args.ders * args.entries,
            "mean_ms": round(1000 * hist["sum"] / hist["count"], 3) if hist["count"] else None,
            "p50": bucket_percentile(hist, 50) if hist["count"] else None,
            "p99": bucket_percentile(hist, 99) if hist["count"] else None,
            "histogram": dict(zip([f"<= {le * 1000:g} ms" for le in hist["le"]], hist["buckets"])),
            "last_32_batches_outputs_ms_max": max(recent) if recent else None,
            "runner_cpu_percent": round(100 * (cpu1[0] - cpu0[0]) / (cpu1[2] - cpu0[2]), 2),
            "actors_cpu_percent": round(100 * (cpu1[1] - cpu0[1]) / (cpu1[2] - cpu0[2]), 2),
            "scrape_ms_mean": round(sum(scrapes) / len(scrapes), 2) if scrapes else None,
            "metrics_bytes": len(body) if scrapes else None,
            "history_bytes": history_bytes if history else None}


# -- size -------------------------------------------------------------------------------------------
def size(args) -> dict:
    rng = random.Random(1)
    step = int(args.sample_s * 1000)
    t0 = 1_800_000_000_000
    total = 7 * 24 * 3600 * 1000
    ders = [f"der{i:02d}" for i in range(args.ders)]
    power = {d: rng.uniform(0, 10_000) for d in ders}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.sqlite"
        w = HistoryWriter(path)
        w.db.execute("PRAGMA synchronous = OFF")   # synthesis speed only; the size is the same
        started = time.monotonic()
        maintained = t0
        events = 0
        fine_from = t0 + total - F.RAW_KEEP_MS - 2 * F.BUCKET_MS   # the raw window at the end, at full rate
        coarse = int(args.coarse_s * 1000)
        times = list(range(t0, fine_from, coarse)) + list(range(fine_from, t0 + total + 1, step))
        for at in times:
            hour = (at - t0) // 3_600_000
            samples = {}
            for i, d in enumerate(ders):
                power[d] = min(10_000.0, max(0.0, power[d] + rng.gauss(0, 150)))
                schedule = f"FSCH{(hour + i) % 4 + 1:02d}" if hour % 3 else "Res_FSCH01"
                samples[d] = {"measured_w": round(power[d], 1), "setpoint_w": 5000.0 if hour % 3 else 10_000.0,
                              "limit_w": 10_000.0, "connected": True,
                              "sources": {"ActPow": schedule, "MaxPow": "Res_FSCH01", "OnOff": "Res_FSCH01"}}
            new = []
            if rng.random() < args.events_per_hour * (step if at >= fine_from else coarse) / 3_600_000:
                d = rng.choice(ders)
                new.append({"t": at, "kind": "schedule", "subject": f"{d}/ActPow/FSCH01", "der": d,
                            "detail": {"from": "READY", "to": "RUNNING"}})
                events += 1
            w.write(at, samples, new)
            if at - maintained >= 60_000:
                maintained = at
                w.maintain(at, 7)
        synth_s = time.monotonic() - started
        w.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        counts = {t: w.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("sample", "sample_15m", "event", "source")}
        free = w.db.execute("PRAGMA freelist_count").fetchone()[0]
        page = w.db.execute("PRAGMA page_size").fetchone()[0]
        w.close()
        bytes_ = path.stat().st_size
        # One sample's write as the observer does it (synchronous = FULL: one fsync per sample).
        w = HistoryWriter(Path(tmp) / "full.sqlite")
        spent = []
        for k in range(200):
            s0 = time.perf_counter()
            w.write(t0 + k * step, samples, [])
            spent.append((time.perf_counter() - s0) * 1000)
        w.close()
        spent.sort()
    return {"ders": args.ders, "sample_s": args.sample_s, "coarse_s": args.coarse_s, "samples_written": len(times),
            "days": 7, "events_per_hour": args.events_per_hour,
            "events_written": events, "rows": counts, "file_bytes": bytes_, "file_mib": round(bytes_ / 2 ** 20, 2),
            "free_pages": free, "page_size": page, "raw_window_h": F.RAW_KEEP_MS / 3_600_000,
            "synthesis_s": round(synth_s, 1),
            "write_one_sample_full_ms": {"p50": round(spent[100], 2), "p99": round(spent[197], 2),
                                         "max": round(spent[-1], 2)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("lateness")
    a.add_argument("--ders", type=int, default=10)
    a.add_argument("--entries", type=int, default=30)
    a.add_argument("--observe", choices=("on", "off"), default="on")
    a.add_argument("--sample-s", type=float, default=5.0)
    a.add_argument("--scrape-s", type=float, default=1.0, help="a scrape of /metrics this often (on only; 0: none)")
    a.add_argument("--reader", action="store_true",
                   help="a libiec61850 client reads every DER's ActPow output every --read-s during the switching")
    a.add_argument("--read-s", type=float, default=0.25)
    a.add_argument("--tls", action="store_true",
                   help="the MMS endpoint over TLS (tls = true), set-up and reader with a party's certificate; "
                        "implies --reader")
    s = sub.add_parser("size")
    s.add_argument("--ders", type=int, default=10)
    s.add_argument("--sample-s", type=float, default=5.0)
    s.add_argument("--events-per-hour", type=float, default=10.0)
    s.add_argument("--coarse-s", type=float, default=60.0,
                   help="sample period before the last 12 h (folded away by then: a 15-minute row is the same "
                        "size whatever its count); --coarse-s 5 writes all 7 days at 5 s (about 3 minutes)")
    for p in (a, s):
        p.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = lateness(args) if args.what == "lateness" else size(args)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
