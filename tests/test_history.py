"""History (relevent/history, docs/observability.md): folding, merging and retention with an
injected clock; the schema version; a writer killed with SIGKILL at random points leaves a
database that passes `PRAGMA integrity_check` with every committed sample in it; and on a
running site, `relevent history` shows a DER's samples and GET /api/v1/history/{der}
answers a party that may read that DER, and only such a party."""
from __future__ import annotations

import csv
import io
import os
import random
import signal
import sqlite3
import time

import httpx
import pytest

from relevent.history import HistoryWriter, TooNew, read_history
from relevent.history import fold as F
from relevent.history.query import parse_since
from relevent.history.schema import current

T0 = 1_800_000_000_000 - 1_800_000_000_000 % F.BUCKET_MS   # a bucket boundary
MIN = 60_000
HOUR = 60 * MIN


def sample(w, setpoint=1000.0, source=None):
    return {"measured_w": w, "setpoint_w": setpoint, "limit_w": 5000.0, "connected": True,
            "sources": source or {"ActPow": "FSCH01"}}


def rows(db_path, table):
    with sqlite3.connect(db_path) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY der, t").fetchall()


# -- pure ----------------------------------------------------------------------------------------------
def test_fold_gives_mean_min_max_and_the_last_command_per_bucket():
    samples = [F.Sample("pv1", T0 + i * MIN, float(100 * i), 10.0 * i, 50.0, True, 1) for i in range(15)]
    samples.append(F.Sample("pv1", T0 + 15 * MIN, 7.0, 1.0, 2.0, False, 2))       # the next bucket
    samples.append(F.Sample("pv1", T0 + 3 * MIN + 1, None, 99.0, 98.0, True, 3))   # no measurement
    first, second = F.fold(samples)
    assert (first.t, first.n, first.min_w, first.max_w) == (T0, 15, 0.0, 1400.0)
    assert first.mean_w == pytest.approx(700.0)
    assert (first.last_t, first.setpoint_w, first.source) == (T0 + 14 * MIN, 140.0, 1)
    assert (second.t, second.n, second.mean_w, second.connected, second.source) == (T0 + 15 * MIN, 1, 7.0, False, 2)


def test_merge_of_two_folds_of_one_bucket_is_their_fold():
    samples = [F.Sample("b", T0 + i * 30_000, float(i % 7), float(i), 0.0, True, i) for i in range(30)]
    random.Random(3).shuffle(samples)
    whole, = F.fold(samples)
    a, = F.fold(samples[:11])
    b, = F.fold(samples[11:])
    merged = F.merge(a, b)
    assert merged == F.merge(b, a)
    assert (merged.n, merged.min_w, merged.max_w, merged.last_t, merged.source) == \
        (whole.n, whole.min_w, whole.max_w, whole.last_t, whole.source)
    assert merged.mean_w == pytest.approx(whole.mean_w)


def test_cutoffs_fold_whole_buckets_only():
    now = T0 + 12 * HOUR + 7 * MIN
    assert F.fold_cutoff(now) == T0            # the bucket holding now - 12 h is not folded yet
    assert F.retention_cutoff(now, 7) == now - 7 * 24 * HOUR
    assert F.retention_cutoff(now, 0.5) == now - 12 * HOUR


def test_parse_since():
    now = T0
    assert parse_since("90s", now) == now - 90_000
    assert parse_since("15m", now) == now - 15 * MIN
    assert parse_since("12h", now) == parse_since("12", now) == now - 12 * HOUR
    assert parse_since("7d", now) == now - 7 * 24 * HOUR
    assert parse_since("2030-01-01T00:00:00Z", now) == parse_since("2030-01-01T00:00:00", now) == 1_893_456_000_000
    assert parse_since("2030-01-01T01:00:00+01:00", now) == 1_893_456_000_000
    with pytest.raises(ValueError, match="duration"):
        parse_since("yesterday", now)


# -- the writer with an injected clock ------------------------------------------------------------------
def test_raw_samples_older_than_12_h_are_folded_and_retention_removes_old_rows(tmp_path):
    path = tmp_path / "history.sqlite"
    w = HistoryWriter(path)
    step = 5 * MIN
    for i in range(0, 8 * 24 * 12):                     # 8 days, every 5 minutes
        at = T0 + i * step
        w.write(at, {"pv1": sample(float(i % 3) * 100, setpoint=float(i)), "bat1": sample(None)},
                [{"t": at, "kind": "link", "subject": "device/pv1", "der": "pv1", "detail": {"up": i % 2 == 0}}]
                if i % 12 == 0 else [])
        if i % 12 == 11:                                # an hour: maintain, as the observer does every minute
            w.maintain(at, days=7)
    now = T0 + (8 * 24 * 12 - 1) * step
    w.maintain(now, days=7)
    w.close()
    raw, folded = rows(path, "sample"), rows(path, "sample_15m")
    assert min(r[1] for r in raw) >= F.fold_cutoff(now)                  # no raw sample beyond 12 h (+ a bucket)
    assert max(r[1] for r in raw) == now
    assert min(r[1] for r in folded) + F.BUCKET_MS > F.retention_cutoff(now, 7)   # 7 days kept, no more
    assert max(r[1] for r in folded) + F.BUCKET_MS == F.fold_cutoff(now)
    pv1 = [r for r in folded if r[0] == "pv1"]
    assert all(r[2] == 3 for r in pv1)                                    # 3 samples of 5 min per 15 min
    assert all((r[3], r[4], r[5]) == (100.0, 0.0, 200.0) for r in pv1)     # mean, min, max of 0, 100, 200
    assert all(r[7] == (r[6] - T0) // step for r in pv1)                  # the last command of the bucket
    bat1 = [r for r in folded if r[0] == "bat1"]
    assert all(r[2] == 0 and r[3] is None for r in bat1)                  # never a measurement
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT min(t) FROM event").fetchone()[0] >= F.retention_cutoff(now, 7)
        assert db.execute("SELECT count(*) FROM source").fetchone()[0] == 1   # one distinct map, stored once
    # a 15-minute row per DER for 6.5 days, plus 12 h of raw samples: what the reader gives
    got = read_history(path, "pv1", now - 7 * 24 * HOUR)
    assert {s["resolution_s"] for s in got["samples"]} == {None, 900}
    assert [s["at"] for s in got["samples"]] == sorted(s["at"] for s in got["samples"])
    assert got["samples"][-1]["sources"] == {"ActPow": "FSCH01"} and got["samples"][-1]["at"] == now
    assert all(e["kind"] == "link" for e in got["events"])
    assert read_history(path, "pv1", now - HOUR, limit=5)["samples"][0]["at"] == now - 4 * step


def test_history_days_below_the_raw_window_removes_raw_samples_too(tmp_path):
    path = tmp_path / "h.sqlite"
    w = HistoryWriter(path)
    for i in range(10):
        w.write(T0 + i * HOUR, {"pv1": sample(1.0)}, [])
    w.maintain(T0 + 9 * HOUR, days=0.25)     # 6 h
    w.close()
    assert [r[1] for r in rows(path, "sample")] == [T0 + i * HOUR for i in range(3, 10)]


def test_a_sample_for_a_bucket_already_folded_is_merged_into_it(tmp_path):
    path = tmp_path / "h.sqlite"
    w = HistoryWriter(path)
    w.write(T0, {"pv1": sample(100.0)}, [])
    w.maintain(T0 + 13 * HOUR, days=7)
    w.write(T0 + MIN, {"pv1": sample(300.0, setpoint=7.0)}, [])   # late (a clock set back)
    w.maintain(T0 + 13 * HOUR, days=7)
    w.close()
    (bucket,) = rows(path, "sample_15m")
    assert bucket[2:8] == (2, 200.0, 100.0, 300.0, T0 + MIN, 7.0)
    assert rows(path, "sample") == []


def test_schema_version_is_recorded_and_a_newer_database_is_refused(tmp_path):
    path = tmp_path / "h.sqlite"
    HistoryWriter(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchone() == (current(),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.execute("UPDATE schema_version SET version = ?", (current() + 1,))
    with pytest.raises(TooNew, match="newer relevent"):
        HistoryWriter(path)
    with pytest.raises(TooNew):
        read_history(path, "pv1", 0)
    assert read_history(tmp_path / "none.sqlite", "pv1", 0) == {"samples": [], "events": []}


def test_the_reader_opens_a_closed_database_read_only(tmp_path):
    path = tmp_path / "h.sqlite"
    w = HistoryWriter(path)
    w.write(T0, {"pv1": sample(1.0)}, [])
    w.close()                                    # -wal and -shm removed by the last close
    os.chmod(path, 0o444)
    try:
        assert len(read_history(path, "pv1", 0)["samples"]) == 1
    finally:
        os.chmod(path, 0o644)


# -- kill -9 at random points ---------------------------------------------------------------------------
STEP = 5 * MIN     # the writer's injected clock: 5 minutes per sample, so folding starts after 144 samples


def _writer(path: str, ack_fd: int, start: int) -> None:
    w = HistoryWriter(path)
    rng = random.Random(os.getpid())
    i = start
    while True:
        at = T0 + i * STEP
        w.write(at, {f"der{k}": sample(float(rng.randrange(0, 5000)), source={"ActPow": f"FSCH{i % 5:02d}"})
                     for k in range(3)},
                [{"t": at, "kind": "schedule", "subject": "der0/ActPow/FSCH01", "der": "der0",
                  "detail": {"i": i}}])
        if i % 6 == 0:
            w.maintain(at, days=30)
        os.write(ack_fd, i.to_bytes(8, "big"))   # only after the commit returned
        i += 1


def _acked(fd: int) -> int | None:
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    n = len(data) // 8
    return int.from_bytes(data[(n - 1) * 8:n * 8], "big") if n else None


def _present(path, upto: int) -> tuple[str, int, int, int | None]:
    """(integrity_check, samples of der0 kept up to sample `upto` (raw or folded), events up
    to it, the newest sample's time)."""
    with sqlite3.connect(path) as db:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sample'").fetchone() is None:
            return check, 0, 0, None    # killed before its first migration committed: an empty database
        last = T0 + upto * STEP
        raw = db.execute("SELECT count(*) FROM sample WHERE der = 'der0' AND t <= ?", (last,)).fetchone()[0]
        folded = db.execute("SELECT coalesce(sum(n), 0) FROM sample_15m WHERE der = 'der0' AND last_t <= ?",
                            (last,)).fetchone()[0]
        events = db.execute("SELECT count(*) FROM event WHERE t <= ?", (last,)).fetchone()[0]
        top = db.execute("SELECT max(t) FROM (SELECT max(t) AS t FROM sample UNION SELECT max(last_t) "
                         "FROM sample_15m)").fetchone()[0]
    return check, raw + folded, events, top


def test_a_writer_killed_at_random_points_leaves_every_committed_sample_and_no_corruption(tmp_path):
    path = str(tmp_path / "history.sqlite")
    rng = random.Random(11)
    committed, top = -1, None
    cycles = 0
    while cycles < 80:
        start = 0 if top is None else (top - T0) // STEP + 1   # after the newest sample, confirmed or not
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # the writer
            os.close(r)
            try:
                _writer(path, w, start)
            finally:
                os._exit(0)
        os.close(w)
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        acked = _acked(r)
        os.close(r)
        cycles += 1
        if acked is not None:
            committed = acked
        check, kept, events, top = _present(path, committed)
        assert check == "ok", check
        assert kept == committed + 1 and events == committed + 1, (cycles, committed, kept, events)
        # beyond what this writer confirmed, one sample at most (committed, killed before it said so)
        assert top is None or top <= T0 + ((start - 1 if acked is None else acked) + 1) * STEP
    assert committed > 300, committed   # folding (from 144 samples on) was reached under kills
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM sample_15m").fetchone()[0] > 0


# -- a running site ---------------------------------------------------------------------------------------
TOPOLOGY = """
[site]
name = "history{admin}"
state_dir = "{state}"

[runtime]
admin_port = {admin}
metrics = ""
sample_s = 0.2

[supervision]
heartbeat_interval = 0.1
heartbeat_timeout = 0.4

[[party]]
name = "aggregator"
http_token = "agg-token"
ders = ["der1"]

[[party]]
name = "customer"
http_token = "cust-token"
ders = ["der2"]
operations = ["read"]

[[wan]]
name = "http"
protocol = "http"
port = {http}
anonymous = "none"

[[der]]
name = "der1"
functions = ["MaxPow"]
schedules = 2

[[der]]
name = "der2"
functions = ["ActPow", "OnOff"]
schedules = 2
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from sitectl import Site, free_port
    tmp = tmp_path_factory.mktemp("history")
    ports = {"http": free_port(), "admin": free_port()}
    path = tmp / "site.toml"
    path.write_text(TOPOLOGY.format(state=tmp / "state", **ports))
    s = Site(path, tmp / "state")
    s.ports = ports
    try:
        s.start(timeout=60)
        yield s
        s.stop()
    finally:
        s.kill_everything()


def wait_samples(site, der, n, timeout=10.0) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    got: list = []
    while time.monotonic() < deadline:
        done = site.cli("history", str(site.topology), der, "--since", "5m", "--csv")
        assert done.returncode == 0, done.stderr
        got = list(csv.reader(io.StringIO(done.stdout)))
        if len(got) > n:
            return got
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} samples of {der}: {got}")


def test_relevent_history_shows_the_samples_of_a_der_of_a_running_site(site):
    header, *data = wait_samples(site, "der2", 5)
    assert header == ["time", "resolution_s", "measured_w", "min_w", "max_w", "setpoint_w", "limit_w", "connected",
                      "sources"]
    assert data[-1][-1] == "ActPow=Res_FSCH01 OnOff=Res_FSCH01"       # the reserve is in force
    times = [row[0] for row in data]
    assert times == sorted(times) and len(set(times)) == len(times)
    table = site.cli("history", str(site.topology), "der2")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["TIME", "RES", "MEASURED_W"]
    assert "raw" in table.stdout
    events = site.cli("history", str(site.topology), "der2", "--events", "--since", "1h")
    assert events.returncode == 0
    unknown = site.cli("history", str(site.topology), "nope")
    assert unknown.returncode == 2 and "no DER 'nope'" in unknown.stderr
    bad = site.cli("history", str(site.topology), "der2", "--since", "soon")
    assert bad.returncode == 2 and "duration" in bad.stderr


def test_a_killed_controller_is_in_the_history_as_a_restart_event(site):
    before = site.node("der2/ActPow")["pid"]
    os.kill(before, signal.SIGKILL)
    site.wait_for("der2/ActPow", lambda n: n["state"] == "running" and n["pid"] != before, timeout=10)
    deadline = time.monotonic() + 10
    found = []
    while time.monotonic() < deadline and not found:
        done = site.cli("history", str(site.topology), "der2", "--events", "--csv", "--since", "10m")
        found = [row for row in csv.reader(io.StringIO(done.stdout)) if row[1:3] == ["restart", "der2/ActPow"]]
        time.sleep(0.2)
    assert found and '"killed": 1' in found[-1][3], done.stdout


def test_the_http_history_resource_needs_the_right_to_read_that_der(site):
    base = f"http://127.0.0.1:{site.ports['http']}/api/v1/history"
    wait_samples(site, "der1", 3)
    agg = httpx.get(f"{base}/der1", headers={"Authorization": "Bearer agg-token"}, timeout=15)
    assert agg.status_code == 200, agg.text
    body = agg.json()
    assert body["der"] == "der1" and len(body["samples"]) >= 3
    assert body["samples"][-1]["sources"] == {"MaxPow": "Res_FSCH01"} and body["samples"][-1]["resolution_s"] is None
    assert body["samples"][-1]["at"].endswith("Z")
    refused = httpx.get(f"{base}/der2", headers={"Authorization": "Bearer agg-token"}, timeout=15)
    assert refused.status_code == 403 and refused.json()["rule"] == "party:der"
    assert httpx.get(f"{base}/der2", timeout=15).status_code == 401
    assert httpx.get(f"{base}/nope", headers={"Authorization": "Bearer agg-token"}, timeout=15).status_code == 404
    customer = httpx.get(f"{base}/der2", params={"since": "2020-01-01T00:00:00Z", "limit": 2},
                         headers={"Authorization": "Bearer cust-token"}, timeout=15)
    assert customer.status_code == 200 and len(customer.json()["samples"]) == 2
