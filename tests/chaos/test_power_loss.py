"""Power loss during persistence, at the store: a writer process saving records as fast as
it can is killed (SIGKILL) at random points; every time, the record must load (never
corrupt, never missing) and hold at least the last save the writer had confirmed.

SIGKILL stops the writer at any instruction, so this covers a crash between write, fsync
and rename; it does not drop the kernel's page cache as a real power cut would (the
protocol's fsync of file and directory is what covers that).  The whole-site version, with
enables answered over MMS, is bench/power_loss_bench.py."""
from __future__ import annotations

import os
import random
import signal
import time

from relevent.store import StateStore

KEY = "controller/pv1/ActPow"


def _writer(directory: str, ack_fd: int) -> None:
    store = StateStore(directory)
    seq = 0
    rng = random.Random(os.getpid())
    while True:
        seq += 1
        store.save(KEY, {"seq": seq, "schedules": {"FSCH01": {"values": [rng.random()] * rng.randrange(1, 200)}}})
        os.write(ack_fd, seq.to_bytes(8, "big"))   # "positive response": only after save returned


def _acked(fd: int) -> int:
    """The last sequence number the (dead) writer confirmed."""
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    n = len(data) // 8
    return int.from_bytes(data[(n - 1) * 8:n * 8], "big") if n else 0


def kill_points(directory, cycles: int, seed: int = 7, progress=None) -> dict:
    """`progress`: a relevent.progress.Progress told of each cycle (the benchmark's)."""
    rng = random.Random(seed)
    store = StateStore(directory)
    stats = {"cycles": 0, "corrupt": 0, "lost": 0, "behind_ack": 0, "acked_saves": 0}
    for _ in range(cycles):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer
            os.close(r)
            try:
                _writer(str(directory), w)
            finally:
                os._exit(0)
        os.close(w)
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        acked = _acked(r)
        os.close(r)
        stats["cycles"] += 1
        stats["acked_saves"] += acked
        if progress is not None:
            progress.step(f"store kill {stats['cycles']}: {stats['acked_saves']} saves confirmed so far")
        try:
            record = store.load(KEY)
        except Exception:  # noqa: BLE001 - counted: the assertion below names it
            stats["corrupt"] += 1
            continue
        if record is None:
            stats["lost"] += acked > 0
            continue
        if record["seq"] < acked:
            stats["behind_ack"] += 1
        store.save(KEY, {"seq": 0, "schedules": {}})  # next cycle starts over
    return stats


def test_kill_at_random_points_during_persistence_never_corrupts_or_loses_a_confirmed_save(tmp_path):
    stats = kill_points(tmp_path / "store", cycles=300)
    assert stats["cycles"] == 300 and stats["acked_saves"] > 300, stats  # saves really happened
    assert stats == {**stats, "corrupt": 0, "lost": 0, "behind_ack": 0}


def test_whole_site_killed_during_enables_keeps_every_answered_enable(tmp_path):
    from chaos.site_power_loss import power_loss_cycles

    stats = power_loss_cycles(tmp_path, cycles=4)
    assert stats["cycles"] == 4 and stats["failed_starts"] == 0, stats
    assert stats["answered"] > 0 and stats["lost"] == 0, stats


def test_whole_site_killed_the_instant_an_enable_or_disable_is_answered_keeps_it(tmp_path):
    from chaos.site_power_loss import power_loss_cycles

    stats = power_loss_cycles(tmp_path, cycles=6, seed=11, instant=True)
    assert stats["cycles"] == 6 and stats["failed_starts"] == 0, stats
    assert stats["killed_after_answer"] == 6 and stats["lost"] == 0, stats
