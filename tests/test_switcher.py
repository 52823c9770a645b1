"""The C switcher (relevent/iec61850/switcher.c) against a real libiec61850 server in this
process, read by a real MMS client (open61850, pure Python) over loopback."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from relevent.iec61850.server import MmsServer
from relevent.iec61850.switcher import Switcher
from relevent.iec61850 import lib as L
from relevent.scl.cfg import to_cfg
from relevent.scl.generate import generate_scl
from relevent.scl.parser import parse_scl
from mmsclients import Open61850Client
from sitectl import free_port
from relevent.clock import now_ms

OUT = "Control/ActPow_GGIO1.AnOut1"   # as the server names them; a client prefixes the IED
FSCC = "Control/ActPow_FSCC1"
IED = "DER_Scheduler_"


@pytest.fixture
def served(tmp_path: Path):
    ders = [{"name": "d1", "functions": ["ActPow"], "schedules": 1, "values": 10}]
    (tmp_path / "site.cid").write_bytes(generate_scl(ders))
    server = MmsServer(to_cfg(parse_scl(tmp_path / "site.cid")), "DER_Scheduler_", str(tmp_path))
    port = free_port()
    server.start("127.0.0.1", port)
    applied = threading.Event()
    switcher = Switcher(server, nice=0, lead_ms=50, on_applied=applied.set)
    client = Open61850Client("127.0.0.1", port)
    yield server, switcher, client, applied
    client.close()
    switcher.close()
    server.close()


def output_updates(value: float, at: int) -> list:
    return [(f"{OUT}.mxVal.f", "float", value), (f"{OUT}.q", "quality", L.QUALITY_GOOD), (f"{OUT}.t", "time", at)]


def arm(server: MmsServer, switcher: Switcher, key: int, at: int, outputs: list, rest: list = ()) -> None:
    switcher.arm(key, at, outputs, list(rest))



def test_a_switch_is_written_at_its_instant_never_before(served):
    server, switcher, client, applied = served
    at = now_ms() + 400
    arm(server, switcher, 7, at, output_updates(42.5, at),
        [(f"{FSCC}.ActSchdRef.stVal", "string", "DER_Scheduler_Control/ActPow_FSCH01")])
    seen_before = []
    while now_ms() < at - 30:
        seen_before.append(client.read_float(f"{IED}{OUT}.mxVal.f"))
        time.sleep(0.01)
    assert seen_before and 42.5 not in seen_before
    assert applied.wait(5), "the follower was not told"
    assert client.read_float(f"{IED}{OUT}.mxVal.f") == 42.5
    assert client.read_time_ms(f"{IED}{OUT}.t", "MX") == at
    assert client.read_str(f"{IED}{FSCC}.ActSchdRef.stVal") == "DER_Scheduler_Control/ActPow_FSCH01"
    [done] = switcher.collect()
    assert (done.key, done.at_ms, done.batch) == (7, at, 1)
    assert at * 1_000_000 <= done.woke_ns <= done.locked_ns <= done.outputs_ns <= done.done_ns
    assert done.outputs_ns - at * 1_000_000 < 1e9  # generous: on time is for the benchmark
    assert switcher.collect() == []


def test_arming_again_replaces_and_cancel_drops(served):
    server, switcher, client, applied = served
    at = now_ms() + 300
    arm(server, switcher, 1, at, output_updates(1.0, at))
    arm(server, switcher, 1, at + 100, output_updates(2.0, at + 100))  # replaces key 1
    arm(server, switcher, 2, at, [(f"{FSCC}.ActSchdRef.stVal", "string", "dropped")])
    with server.model_lock():
        assert switcher.cancel(2) is True
        assert switcher.cancel(2) is False  # nothing armed under it any more
    assert applied.wait(5)
    # What the switcher applied, until key 1's replacement at `at` + 100: the switch it
    # replaced and the cancelled one were due at `at`, before it, so they would be in too.
    done, deadline = [], time.monotonic() + 5
    while (1, at + 100) not in [(d.key, d.at_ms) for d in done] and time.monotonic() < deadline:
        done += switcher.collect()
        time.sleep(0.02)
    assert [(d.key, d.at_ms) for d in done] == [(1, at + 100)]
    assert client.read_float(f"{IED}{OUT}.mxVal.f") == 2.0
    assert client.read_str(f"{IED}{FSCC}.ActSchdRef.stVal") != "dropped"
    with server.model_lock():
        assert switcher.cancel(1) is False  # already applied


def test_switches_due_together_are_one_batch_outputs_first(served):
    server, switcher, client, applied = served
    at = now_ms() + 300
    for key in range(20):  # the same attribute: the last written wins, all applied at once
        arm(server, switcher, key, at, output_updates(float(key), at),
            [(f"{FSCC}.ActSchdRef.stVal", "string", f"rest-{key}")])
    assert applied.wait(5)
    deadline = time.monotonic() + 5
    done = []
    while len(done) < 20 and time.monotonic() < deadline:
        done += switcher.collect()
        time.sleep(0.05)
    assert sorted(d.key for d in done) == list(range(20))
    assert {d.batch for d in done} == {20} and len({d.outputs_ns for d in done}) == 1
    # Every output before any rest: the rest written last is some key's, not an output
    assert client.read_str(f"{IED}{FSCC}.ActSchdRef.stVal").startswith("rest-")
    assert client.read_float(f"{IED}{OUT}.mxVal.f") in {float(k) for k in range(20)}


def test_close_with_a_switch_armed_returns_and_never_applies_it(served):
    server, switcher, client, applied = served
    at = now_ms() + 60_000
    arm(server, switcher, 3, at, output_updates(99.0, at))
    started = time.monotonic()
    switcher.close()
    assert time.monotonic() - started < 2
    assert client.read_float(f"{IED}{OUT}.mxVal.f") != 99.0
    assert not applied.is_set()
    # A handler of the endpoint may still come by before the server stops: harmless now
    arm(server, switcher, 4, now_ms(), output_updates(98.0, now_ms()))
    with server.model_lock():
        assert switcher.cancel(4) is False and switcher.collect() == []
    switcher.close()  # twice is fine


def read_until(read, expected, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


def test_pushed_updates_are_written_at_once_and_before_a_switch_armed_after_them(served):
    server, switcher, client, applied = served
    read = lambda: client.read_float(f"{IED}{OUT}.mxVal.f")  # noqa: E731
    switcher.push(output_updates(5.0, now_ms()), [(f"{FSCC}.ActSchdRef.stVal", "string", "pushed")])
    assert read_until(read, 5.0) == 5.0
    assert client.read_str(f"{IED}{FSCC}.ActSchdRef.stVal") == "pushed"
    assert switcher.collect() == [] and not applied.is_set()  # pushes are not reported
    for _ in range(20):  # a switch due at once, armed after a push: the switch wins every time
        at = now_ms()
        switcher.push(output_updates(4.0, at))
        arm(server, switcher, 9, at, output_updates(6.0, at))
        assert read_until(read, 6.0) == 6.0
        assert applied.wait(5)
        applied.clear()
        assert [d.key for d in switcher.collect()] == [9]
        switcher.push(output_updates(0.0, at))
        assert read_until(read, 0.0) == 0.0


def test_drain_writes_what_is_pushed_in_the_thread_holding_the_lock(served):
    server, switcher, client, _applied = served
    read = lambda: client.read_float(f"{IED}{OUT}.mxVal.f")  # noqa: E731
    with server.model_lock():  # as a libiec61850 handler: the switcher's thread cannot write now
        switcher.push(output_updates(8.0, now_ms()))
        time.sleep(0.1)
        assert switcher.drain() == 1
        assert switcher.drain() == 0
        server.update(output_updates(9.0, now_ms()), locked=True)  # what the handler writes itself
    # The switcher's thread had woken for the push: it must find nothing left.  A marker
    # pushed now is written after anything still queued, so once it shows, so would 8.0.
    switcher.push([(f"{FSCC}.ActSchdRef.stVal", "string", "marker")])
    assert read_until(lambda: client.read_str(f"{IED}{FSCC}.ActSchdRef.stVal"), "marker") == "marker"
    assert read() == 9.0
