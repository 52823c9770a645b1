"""Controllers hosted in their DER's process ([runtime] controller_isolation = "der"), the
setting that keeps a 10-DER site within its memory budget: same behaviour over MMS, one
process per DER, and what a fault in a hosted controller does and does not take along."""
from __future__ import annotations

import os
import signal

import pytest

from mmsclients import LibIec61850Client, write_schedule
from sitectl import mms_port as port_of, now_ms, wait_until, walk

LD = "DER_Scheduler_Control"
S = 1000
ACTUATOR = f"{LD}/ActPow_GGIO1.AnOut1.mxVal.f"


def fsch(kind: str, n: str) -> str:
    return f"{LD}/{kind}_{n}"


@pytest.fixture
def site(make_site):
    return make_site(schedules=3, functions=("ActPow", "MaxPow", "OnOff"), runtime='controller_isolation = "der"\n')


@pytest.fixture
def client(site):
    c = LibIec61850Client("127.0.0.1", port_of(site))
    yield c
    c.close()


def prepare(c, n: str, values: list, start: int, prio: int = 20) -> None:
    ref = fsch("ActPow", n)
    write_schedule(c, ref, values, prio=prio, start_ms=start)
    assert c.operate(f"{ref}.EnaReq", True)[0]


def test_controllers_share_their_der_process(site):
    nodes = {n["path"]: n for n in walk(site.tree())}
    der = nodes["der1"]
    for kind in ("ActPow", "MaxPow", "OnOff"):
        node = nodes[f"der1/{kind}"]
        assert node["hosted"] and node["state"] == "running"
        assert node["pid"] == der["pid"]
    assert not der["hosted"] and nodes["mms"]["pid"] != der["pid"]


def test_stacked_schedules_at_the_actuator(site, client):
    t0 = (now_ms() // 1000 + 2) * 1000
    prepare(client, "FSCH01", [100.0, 101.0, 102.0], start=t0, prio=20)
    prepare(client, "FSCH02", [200.0], start=t0 + 1 * S, prio=30)
    for k, value in enumerate([100.0, 200.0, 102.0, 11.0]):
        wait_until(t0 + k * S + 500)
        assert client.read_float(ACTUATOR) == value, f"second {k}"


def test_an_exception_restarts_only_that_controller(site, client):
    t0 = (now_ms() // 1000 + 2) * 1000
    prepare(client, "FSCH01", [1.0, 2.0, 3.0, 4.0, 5.0], start=t0)
    der_pid = site.node("der1")["pid"]
    wait_until(t0 + 1200)
    site.fault("der1/ActPow", "raise")
    site.wait_for("der1/ActPow", lambda n: n["restarts"] == 1 and n["state"] == "running")
    # A write right after the restart reaches the new incarnation, which took over the run.
    assert client.write_float(f"{fsch('ActPow', 'FSCH01')}.ValASG004.setMag.f", 44.0) is None
    wait_until(t0 + 3 * S + 500)
    assert client.read_float(ACTUATOR) == 44.0
    assert client.read_int(f"{fsch('ActPow', 'FSCH01')}.SchdEntr.stVal") == 4
    nodes = {n["path"]: n for n in walk(site.tree())}
    assert nodes["der1"]["pid"] == der_pid and nodes["der1"]["restarts"] == 0
    assert nodes["der1/MaxPow"]["restarts"] == 0 and nodes["der1/OnOff"]["restarts"] == 0


def test_kill_of_the_der_process_continues_every_schedule_at_the_right_entry(site, client):
    t0 = (now_ms() // 1000 + 2) * 1000
    prepare(client, "FSCH01", [1.0, 2.0, 3.0, 4.0, 5.0], start=t0)
    wait_until(t0 + 1200)
    old = site.node("der1")["pid"]
    os.kill(old, signal.SIGKILL)  # the DER and the controllers it hosts
    site.wait_for("der1/ActPow", lambda n: n["state"] == "running" and n["pid"] not in (None, old), 5)
    wait_until(t0 + 3 * S + 500)
    assert client.read_float(ACTUATOR) == 4.0
    assert client.read_int(f"{fsch('ActPow', 'FSCH01')}.SchdEntr.stVal") == 4
    assert site.node("der1")["restarts"] == 1


def test_an_enabled_schedule_survives_a_restart_of_the_whole_site(site):
    # Enable is durable before its answer whatever process holds the controller.
    c = LibIec61850Client("127.0.0.1", port_of(site))
    prepare(c, "FSCH03", [5.0], start=now_ms() + 120_000)
    c.close()
    assert site.stop() == 0
    site.start()
    c = LibIec61850Client("127.0.0.1", port_of(site))
    try:
        assert c.read_int(f"{fsch('ActPow', 'FSCH03')}.SchdSt.stVal") == 3
    finally:
        c.close()
