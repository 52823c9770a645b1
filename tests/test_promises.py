"""Promises of the README that no other test kept (issue 20), each against real components:
a site in its own processes, open61850 over MMS, pysunspec2 over Modbus, Mosquitto and its
own `mosquitto_sub`, `relevent status --json` and /proc.

* Devices: an OnOff schedule disconnects the inverter (SunSpec model 123 `Conn`) and the
  MQTT pivot device (`SpcTyp` command), and its disable connects them again.
* Scheduling: the periodic schedule a client sees (the reserve: StrTm01 with setCal, occPer
  Hour) runs in every UTC hour, as its ActStrTm and NxtStrTm say over MMS.
* The actor tree: one process per actor, and what `controller_isolation = "der"` changes.
* `RELEVENT_MQTT_EMBEDDED=false`: the demo uses a broker of the user's own, not amqtt.
"""
from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import sunspec2.modbus.client as ssclient

from lanctl import Blackhole, Mosquitto, lan_topology, publish
from mmsclients import Open61850Client
from sitectl import Site, demo_site, free_port, mms_port, now_ms, relevent_cli, running, walk

HOUR_MS = 3_600_000


def until(read, ok, timeout: float, what: str):
    """read() again and again until ok(value) (the value is returned), or fail after
    `timeout` s naming `what` and the last value read."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s; last read {value!r}"[-2000:])
        time.sleep(0.05)


class MosquittoSub:
    """`mosquitto_sub` (Mosquitto's client, not the site's gmqtt) on `topic`, keeping every
    payload it prints.  Ready once it printed a probe published on a topic of its own, which
    it subscribed to in the same SUBSCRIBE as `topic`: so no command is missed, no sleep."""

    def __init__(self, port: int, topic: str, timeout: float = 10.0) -> None:
        self.port, self.topic = port, topic
        probe_topic = f"relevent-test/probe/{time.time_ns()}"
        self.proc = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-v",
                                      "-t", topic, "-t", probe_topic], stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.payloads: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line.rstrip("\n")) for line in self.proc.stdout],
                         daemon=True).start()
        deadline = time.monotonic() + timeout
        while not any(p.startswith(f"{probe_topic} ") for p in self._drain()):
            assert time.monotonic() < deadline, f"mosquitto_sub on port {port} never got its own probe"
            assert self.proc.poll() is None, f"mosquitto_sub exited with {self.proc.returncode}"
            publish(port, [b"probe"], probe_topic)
            try:
                self.payloads.append(self.lines.get(timeout=0.5))
            except queue.Empty:
                pass

    def _drain(self) -> list[str]:
        while True:
            try:
                self.payloads.append(self.lines.get_nowait())
            except queue.Empty:
                return self.payloads

    def commands(self) -> list[dict]:
        """The GTIC of every PivotCommand seen on `topic`, in arrival order (read from the
        JSON as ReLevENT's devices read it, docs/interfaces.md, not with our own decoder)."""
        out = []
        for line in self._drain():
            topic, _, payload = line.partition(" ")
            if topic == self.topic:
                doc = json.loads(payload)
                if doc.get("operation") == "PivotCommand":
                    out.append(doc["parameters"][0]["value"]["GTIC"])
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def ctl_val(gtic: dict, identifier: str, cdc: str):
    """The ctlVal of a command for `identifier` under `cdc`, None for any other command."""
    return gtic[cdc]["ctlVal"] if gtic["Identifier"] == identifier and cdc in gtic else None


# -- 1. an OnOff schedule reaches the devices ---------------------------------------------------------------
@pytest.fixture
def lan_site(tmp_path):
    """lanctl.lan_topology: pv1 (the SunSpec inverter simulator over Modbus) and bat1 (the
    MQTT pivot device simulator) behind a real Mosquitto, MMS in."""
    ports = {"admin": free_port(), "mms": free_port(), "mqtt": free_port(), "modbus": free_port()}
    broker = Mosquitto(ports["mqtt"], tmp_path).start()
    hole = Blackhole()
    state, topo = tmp_path / "state", tmp_path / "lan.toml"
    topo.write_text(lan_topology(state, ports["admin"], ports["mms"], ports["mqtt"], ports["modbus"], hole.port,
                                 tmp_path / "writes.jsonl"))
    try:
        with running(Site(topo, state), leftovers=True) as site:
            yield site, ports
    finally:
        broker.stop()
        hole.close()


def test_an_onoff_schedule_over_mms_disconnects_the_modbus_inverter_and_the_mqtt_device_until_it_is_disabled(
        lan_site):
    _site, ports = lan_site
    with ExitStack() as closing:
        sub = MosquittoSub(ports["mqtt"], "fledge/south-command")
        closing.callback(sub.close)
        mms = Open61850Client("127.0.0.1", ports["mms"])
        closing.callback(mms.close)
        inverter = ssclient.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=ports["modbus"],
                                                         timeout=2)
        closing.callback(inverter.close)
        inverter.scan()
        controls = inverter.models[123][0]   # SunSpec immediate controls, read by pysunspec2

        def conn() -> int:
            controls.read()
            return controls.Conn.value

        until(conn, lambda v: v == 1, 10, "SunSpec 123.Conn = 1: connected by the OnOff reserve (on)")
        start = now_ms() + 1500
        for der in ("pv1", "bat1"):
            ref = f"DER_Scheduler_{der}Control/OnOff_FSCH01"
            assert mms.write_int(f"{ref}.NumEntr.setVal", 1) is None
            assert mms.write_int(f"{ref}.SchdIntv.setVal", 600) is None
            assert mms.write_int(f"{ref}.SchdPrio.setVal", 30) is None
            assert mms.write_bool(f"{ref}.ValSPG001.setVal", False) is None   # off
            assert mms.write_time(f"{ref}.StrTm01.setTm", start) is None
            assert mms.operate(f"{ref}.EnaReq", True) == (True, 0)

        until(conn, lambda v: v == 0, 10, "SunSpec 123.Conn = 0 (disconnect) on the inverter")
        assert now_ms() >= start
        seen = until(sub.commands, lambda cmds: any(ctl_val(g, "bat1.OnOff", "SpcTyp") == 0 for g in cmds),
                     10, "the SpcTyp off command (ctlVal 0) for bat1.OnOff at Mosquitto")
        off = next(i for i, g in enumerate(seen) if ctl_val(g, "bat1.OnOff", "SpcTyp") == 0)
        gtic = seen[off]
        assert gtic["ComingFrom"] == "iec61850" and gtic["SpcTyp"]["q"] == {"test": 0}, gtic
        assert gtic["SpcTyp"]["t"]["SecondSinceEpoch"] >= start // 1000, (gtic, start)   # switched at the start

        for der in ("pv1", "bat1"):
            assert mms.operate(f"DER_Scheduler_{der}Control/OnOff_FSCH01.DsaReq", True) == (True, 0)
        until(conn, lambda v: v == 1, 10, "SunSpec 123.Conn = 1 (connect) again after the disable")
        until(lambda: sub.commands()[off + 1:], lambda cmds: any(ctl_val(g, "bat1.OnOff", "SpcTyp") == 1 for g in cmds),
              10, "the SpcTyp on command (ctlVal 1) for bat1.OnOff after the off one")


# -- 2. periodic schedules over MMS -------------------------------------------------------------------------
def test_the_periodic_reserve_runs_in_every_utc_hour_as_its_calendar_says_over_mms(make_site):
    """A client's own schedules have no setCal in the served model (the reference's
    "nonperiodic" FSCH type); the periodic one it sees is the reserve: StrTm01 at
    1970-01-01T00:00:01Z with setCal occType Time, occPer Hour, minute 0 (docs/scheduling.md,
    rule 4).  Its current run is this hour's occurrence, its next start the next hour's."""
    site = make_site(schedules=1, functions=("ActPow",))
    mms = Open61850Client("127.0.0.1", mms_port(site))
    ref = "DER_Scheduler_Control/ActPow_Res_FSCH01"
    try:
        assert mms.read_time_ms(f"{ref}.StrTm01.setTm", "SP") == 1000
        calendar = {f: mms.read_int(f"{ref}.StrTm01.setCal.{f}", "SP")
                    for f in ("occType", "occPer", "weekDay", "month", "day", "hr", "mn")}
        assert calendar == {"occType": 0, "occPer": 0, "weekDay": 0, "month": 0, "day": 0, "hr": 0, "mn": 0}
        assert mms.read_int(f"{ref}.SchdIntv.setVal", "SP") * mms.read_int(f"{ref}.NumEntr.setVal", "SP") == 3600
        for _attempt in range(3):   # an hour boundary between the reads: read again
            before = now_ms()
            run = (mms.read_int(f"{ref}.SchdSt.stVal"), mms.read_int(f"{ref}.SchdEntr.stVal"),
                   mms.read_time_ms(f"{ref}.ActStrTm.stVal"), mms.quality_invalid(f"{ref}.ActStrTm.q"),
                   mms.read_time_ms(f"{ref}.NxtStrTm.stVal"), mms.quality_invalid(f"{ref}.NxtStrTm.q"))
            if before // HOUR_MS == now_ms() // HOUR_MS:
                break
        this_hour = before // HOUR_MS * HOUR_MS
        assert run == (4, 1, this_hour, False, this_hour + HOUR_MS, False), \
            (run, datetime.fromtimestamp(this_hour / 1000, timezone.utc))
    finally:
        mms.close()


# -- 3. one process per actor -------------------------------------------------------------------------------
def thespian_processes(site: Site) -> tuple[int, int, set[int]]:
    """(admin, logger, the other processes) of the site's thespian process group, from /proc:
    the admin is the one whose parent is outside the group (`relevent run`, or init once
    orphaned), the logger the admin's first child (thespian starts it before any actor)."""
    procs = {}
    for pid in site.leftovers():   # every live process of the admin's group (runner.group_processes)
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        procs[pid] = (int(fields[1]), int(fields[19]))   # ppid, start time (clock ticks after boot)
    admins = [pid for pid, (ppid, _) in procs.items() if ppid not in procs]
    assert len(admins) == 1, procs
    admin = admins[0]
    logger = min((start, pid) for pid, (ppid, start) in procs.items() if ppid == admin)[1]
    assert not any(ppid == logger for ppid, _ in procs.values()), ("thespian's logger has children", procs)
    return admin, logger, set(procs) - {admin, logger}


def status_nodes(site: Site) -> list[dict]:
    res = relevent_cli("status", str(site.topology), "--json")
    assert res.returncode == 0, res.stderr
    return list(walk(json.loads(res.stdout)["tree"]))


def test_with_process_isolation_every_actor_has_a_process_of_its_own_and_no_actor_process_is_unlisted(make_site):
    site = make_site(ders=2, functions=("ActPow", "OnOff"), runtime='controller_isolation = "process"\n')
    nodes = status_nodes(site)
    assert {n["path"] for n in nodes} == {"", "mms", "mqtt", "der1", "der1/ActPow", "der1/OnOff",
                                          "der2", "der2/ActPow", "der2/OnOff"}
    pids = [n["pid"] for n in nodes]
    assert all(isinstance(pid, int) and pid > 0 for pid in pids), nodes
    assert len(set(pids)) == len(pids), {n["path"]: n["pid"] for n in nodes}   # no two actors share one
    admin, logger, actor_processes = thespian_processes(site)
    assert set(pids) == actor_processes, (admin, logger, {n["path"]: n["pid"] for n in nodes})


def test_with_der_isolation_controllers_live_in_their_ders_process_and_have_none_of_their_own(make_site):
    """(That hosted controllers report their DER's pid is tests/test_hosted_controllers.py's;
    here /proc confirms there is no other process behind them.)"""
    site = make_site(ders=2, functions=("ActPow", "OnOff"), runtime='controller_isolation = "der"\n')
    by_path = {n["path"]: n for n in status_nodes(site)}
    for der in ("der1", "der2"):
        for kind in ("ActPow", "OnOff"):
            assert by_path[f"{der}/{kind}"]["pid"] == by_path[der]["pid"], by_path
    unhosted = [n["pid"] for n in by_path.values() if not n.get("hosted")]
    assert len(set(unhosted)) == len(unhosted) == 5, by_path   # site, mms, mqtt, der1, der2: one each
    assert thespian_processes(site)[2] == set(unhosted)


# -- 4. the demo against a broker of one's own ----------------------------------------------------------------
def test_the_demo_with_mqtt_embedded_false_uses_the_users_mosquitto_and_runs_no_broker_of_its_own(
        tmp_path, monkeypatch):
    site, ports = demo_site(tmp_path, monkeypatch, RELEVENT_MQTT_EMBEDDED="false")
    broker = Mosquitto(ports["RELEVENT_MQTT_PORT"], tmp_path).start()
    try:
        with running(site, timeout=120, leftovers=True):   # 28 actors; generous for a loaded machine
            nodes = status_nodes(site)
            assert not [n for n in nodes if n["path"].endswith("-broker")
                        or (n.get("detail") or {}).get("kind") == "amqtt"], [n["path"] for n in nodes]
            sub = MosquittoSub(ports["RELEVENT_MQTT_PORT"], "fledge/south-command")
            try:
                start = now_ms() + 1500
                api = f"http://127.0.0.1:{ports['RELEVENT_HTTP_PORT']}/api/v1/ders/bat1/ActPow/schedules/1"
                body = {"values": [1234.0], "interval_s": 600, "priority": 30,
                        "start": datetime.fromtimestamp(start / 1000, timezone.utc).isoformat()}
                assert httpx.put(api, json=body, timeout=15).status_code == 200
                enabled = httpx.post(f"{api}/enable", timeout=15)
                assert enabled.status_code == 200 and enabled.json()["state"] in ("READY", "RUNNING"), enabled.text
                until(sub.commands, lambda cmds: any(ctl_val(g, "bat1.ActPow", "ApcTyp") == 1234.0 for g in cmds),
                      15, "the PivotCommand of the HTTP schedule (ApcTyp 1234 W) at the user's Mosquitto")
            finally:
                sub.close()
    finally:
        broker.stop()
