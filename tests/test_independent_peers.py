"""Independent peers (issue 20, item 3): the product's LAN endpoints against peers that
share no code with it, so that our encoder is never checked against our own decoder.

* SunSpec over Modbus TCP: a device served by pymodbus' own server and datastore
  (SimDevice/SimData: pymodbus 3.16 turns the deprecated ModbusDeviceContext into these),
  its holding registers laid out by a builder in this file that walks pysunspec2's model
  JSON (sunspec2/models/json/model_<id>.json); what the product writes is read back from
  that datastore and decoded with the same JSON, never with relevent.devices.sunspec.
* FledgePower pivot over MQTT: GTIM/GTIS payloads written by hand here from the pivot model
  as docs/interfaces.md ("LAN: controller outputs as FledgePower "pivot" JSON over MQTT",
  "Measurements and status from devices"; ../shared/spec/interfaces.md "LAN: scheduler
  output over MQTT") describes it, published by Mosquitto's `mosquitto_pub`; the site's
  PivotCommand/PivotSchedule captured by `mosquitto_sub` (lanctl.MosquittoSub, not gmqtt)
  and compared key by key with literals from the same pages.

One site for the module (starting one costs seconds): MMS in; pv1 (SunSpec) on the Modbus
endpoint, whose port is the pymodbus device's; bat1 (pivot) on a real Mosquitto; no
simulator of ours.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from functools import lru_cache
from pathlib import Path

import pytest
import sunspec2
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from lanctl import Blackhole, Mosquitto, MosquittoSub, lan_topology, publish, without_simulators
from mmsclients import LibIec61850Client
from sitectl import Site, free_port, now_ms, wait_until, walk
from test_lan_devices import schedule, sunspec_device

MODEL_JSON = Path(sunspec2.__file__).parent / "models" / "json"
BASE = 40000
UNIT = 1

# Register sizes of SunSpec's fixed-size point types (strings carry their size in the JSON).
TYPE_SIZE = {"int16": 1, "uint16": 1, "enum16": 1, "bitfield16": 1, "sunssf": 1, "count": 1, "pad": 1,
             "int32": 2, "uint32": 2, "acc32": 2, "enum32": 2, "bitfield32": 2, "float32": 2, "ipaddr": 2,
             "int64": 4, "uint64": 4, "acc64": 4, "float64": 4, "eui48": 4, "ipv6addr": 8}
SIGNED = ("int16", "int32", "int64", "sunssf")


# -- a SunSpec register map from pysunspec2's model definitions -----------------------------------
@lru_cache(maxsize=None)
def model(mid: int) -> tuple[dict[str, dict], int]:
    """({point name: its JSON definition plus "offset" and "size"}, registers from ID to the
    model's end) for model `mid`: top-level points in order, then its fixed groups (once
    each, or `count` times), sizes from the types."""
    doc = json.loads((MODEL_JSON / f"model_{mid}.json").read_text())
    points: dict[str, dict] = {}

    def walk_group(group: dict, offset: int, top: bool) -> int:
        for p in group["points"]:
            size = p["size"] if p["type"] == "string" else TYPE_SIZE[p["type"]]
            assert size == p["size"], (mid, p["name"], size, p["size"])
            if top:
                points[p["name"]] = {**p, "offset": offset, "size": size}
            offset += size
        for sub in group.get("groups", []):
            count = sub.get("count", 1)
            assert isinstance(count, int), f"model {mid}: group {sub['name']} repeats per a point: not handled"
            for _ in range(count):
                offset = walk_group(sub, offset, False)
        return offset

    total = walk_group(doc["group"], 0, True)
    assert points["ID"]["value"] == mid
    if "value" in points["L"]:
        assert points["L"]["value"] == total - 2, (mid, points["L"]["value"], total)
    return points, total


def to_registers(point: dict, value: int | str) -> list[int]:
    if point["type"] == "string":
        raw = value.encode().ljust(2 * point["size"], b"\0")
        return [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]
    bits = 16 * point["size"]
    value = value % (1 << bits)
    return [(value >> (16 * (point["size"] - 1 - i))) & 0xFFFF for i in range(point["size"])]


def from_registers(point: dict, regs: list[int]) -> int:
    value = 0
    for r in regs:
        value = value << 16 | r
    bits = 16 * point["size"]
    return value - (1 << bits) if point["type"] in SIGNED and value >> (bits - 1) else value


def sunspec_image(values: dict[int, dict[str, int | str]]) -> list[int]:
    """'SunS' at BASE, then each model of `values` (ID, L, its points: the given values,
    0 elsewhere), then the end model (0xFFFF, 0)."""
    regs = [ord("S") << 8 | ord("u"), ord("n") << 8 | ord("S")]
    for mid, given in values.items():
        points, total = model(mid)
        block = [0] * total
        for name, value in {"ID": mid, "L": total - 2, **given}.items():
            p = points[name]
            block[p["offset"]:p["offset"] + p["size"]] = to_registers(p, value)
        regs += block
    return regs + [0xFFFF, 0]


def symbol(mid: int, point: str, name: str) -> int:
    return next(s["value"] for s in model(mid)[0][point]["symbols"] if s["name"] == name)


# The device: WMax 800 x 10^1 = 8000 W (not the DER's rated 10 kW: percentages must use it),
# the limit in 0.1 %, WSet in 10 W, 432.1 W measured at 230.1 V and 50.02 Hz, state MPPT.
DEVICE = {
    1: {"Mn": "independent", "Md": "pymodbus", "SN": "peer-1", "DA": UNIT},
    103: {"W": 4321, "W_SF": -1, "PhVphA": 2301, "V_SF": -1, "Hz": 5002, "Hz_SF": -2, "St": 4},
    121: {"WMax": 800, "WMax_SF": 1},
    123: {"WMaxLimPct_SF": -1},
    704: {"WSet_SF": 1},
}


class PymodbusDevice:
    """pymodbus' TCP server and datastore on a loop in a thread of the test process."""

    def __init__(self, port: int, image: list[int]) -> None:
        self.port, self.loop = port, asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._call(self._start(image))
        self.address = {mid: BASE + 2 + sum(model(m)[1] for m in list(DEVICE)[:i])
                        for i, mid in enumerate(DEVICE)}

    async def _start(self, image: list[int]) -> ModbusTcpServer:
        device = SimDevice(id=UNIT, simdata=[SimData(BASE, values=image, datatype=DataType.REGISTERS)])
        server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await server.serve_forever(background=True)
        return server

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)

    def get(self, mid: int, name: str) -> int:
        """A point of the datastore, decoded per pysunspec2's JSON."""
        p = model(mid)[0][name]
        regs = self._call(self.server.async_getValues(UNIT, 3, self.address[mid] + p["offset"], p["size"]))
        return from_registers(p, regs)

    def value(self, mid: int, name: str) -> float:
        """A point times 10 ^ its scale factor (as pysunspec2's JSON names it)."""
        p = model(mid)[0][name]
        return self.get(mid, name) * 10.0 ** self.get(mid, p["sf"]) if p.get("sf") else float(self.get(mid, name))

    def set(self, mid: int, name: str, value: int) -> None:
        p = model(mid)[0][name]
        self._call(self.server.async_setValues(UNIT, 16, self.address[mid] + p["offset"], to_registers(p, value)))

    def close(self) -> None:
        self._call(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(2)


def until(fn, what: str, timeout: float = 10.0, every: float = 0.05, show=None):
    """fn()'s first truthy value within `timeout` s, or AssertionError with its last (or
    with show(), what to look at instead)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s; last: {show() if show else value!r}")
        time.sleep(every)


def status(site: Site) -> dict:
    """`relevent status --json`, as {path: node}."""
    out = site.cli("status", str(site.topology), "--json")
    assert out.returncode == 0, out.stderr
    return {n["path"]: n for n in walk(json.loads(out.stdout)["tree"])}


def differences(actual, expected, path: str = "") -> list[str]:
    """Where `actual` departs from `expected`, key by key (keys missing, extra, values, types)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{path}.{k}: missing" for k in expected if k not in actual]
        out += [f"{path}.{k}: not expected ({actual[k]!r})" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                out += differences(actual[k], expected[k], f"{path}.{k}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(actual) != len(expected):
            return [f"{path}: {len(actual)} items, expected {len(expected)}"]
        return [d for i, (a, e) in enumerate(zip(actual, expected)) for d in differences(a, e, f"{path}[{i}]")]
    if type(actual) is not type(expected) or actual != expected:
        return [f"{path}: {actual!r} ({type(actual).__name__}), expected {expected!r} ({type(expected).__name__})"]
    return []


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peers")
    ports = {"admin": free_port(), "mms": free_port(), "mqtt": free_port(), "modbus": free_port()}
    broker = Mosquitto(ports["mqtt"], tmp).start()
    device = PymodbusDevice(ports["modbus"], sunspec_image(DEVICE))
    hole = Blackhole()
    state, topo = tmp / "state", tmp / "peers.toml"
    topo.write_text(without_simulators(lan_topology(state, ports["admin"], ports["mms"], ports["mqtt"],
                                                    ports["modbus"], hole.port, tmp / "unused.jsonl")))
    site = Site(topo, state)
    watcher = mms = None
    try:
        site.start()
        watcher = MosquittoSub(ports["mqtt"], ["fledge/south-command", "fledge/south-schedule"])
        mms = LibIec61850Client("127.0.0.1", ports["mms"])
        yield {"site": site, "device": device, "watcher": watcher, "mms": mms, "ports": ports}
        site.stop()
        assert site.leftovers() == []
    finally:
        if mms is not None:
            mms.close()
        if watcher is not None:
            watcher.close()
        site.kill_everything()
        device.close()
        broker.stop()
        hole.close()


# -- (a) SunSpec: pymodbus' datastore, pysunspec2's layout ---------------------------------------
def test_pysunspec2_reads_the_pymodbus_device_as_the_models_it_was_built_from(peers):
    # The builder is checked against pysunspec2's own client before the product is judged by it.
    dev = sunspec_device(peers["ports"]["modbus"])
    try:
        assert [m for m in dev.models if isinstance(m, int)] == list(DEVICE)
        assert dev.models[121][0].WMax.cvalue == 8000 and dev.models[103][0].W.cvalue == pytest.approx(432.1)
        assert {mid: dev.models[mid][0].model_addr for mid in DEVICE} == peers["device"].address
    finally:
        dev.close()


def test_an_actpow_schedule_is_written_as_123_wmaxlimpct_of_the_devices_wmax(peers):
    device, mms = peers["device"], peers["mms"]
    start = now_ms() + 1500
    schedule(mms, "pv1", "ActPow", [6000], 600, start)
    wait_until(start)
    # 6000 W of WMax 8000 W is 75 %: 750 at WMaxLimPct_SF -1.
    until(lambda: device.get(123, "WMaxLimPct") == 750, "123.WMaxLimPct = 750", timeout=5,
          show=lambda: {p: device.get(123, p) for p in ("WMaxLimPct", "WMaxLimPct_SF", "WMaxLim_Ena", "Conn")})
    assert device.value(123, "WMaxLimPct") == pytest.approx(75.0)
    assert device.get(123, "WMaxLim_Ena") == symbol(123, "WMaxLim_Ena", "ENABLED")
    assert device.get(123, "Conn") == symbol(123, "Conn", "CONNECT")
    assert device.get(123, "WMaxLimPct_RvrtTms") == 30 and device.get(123, "Conn_RvrtTms") == 30
    assert device.get(123, "WMaxLimPct_WinTms") == 0 and device.get(123, "WMaxLimPct_RmpTms") == 0
    # 704: the set-point itself, in W (WSet_SF 1: 600 counts), enabled, reverting after 30 s.
    assert device.value(704, "WSet") == pytest.approx(6000.0) and device.get(704, "WSet") == 600
    assert device.get(704, "WSetEna") == symbol(704, "WSetEna", "ENABLED")
    assert device.get(704, "WSetRvrtTms") == 30


# Found by this test: the product wrote WSetMod=0, which model_704.json names W_MAX_PCT (a
# percentage), next to WSet in watts.
def test_the_704_set_point_in_watts_is_written_with_the_watts_mode(peers):
    device = peers["device"]
    until(lambda: device.get(704, "WSetEna") == 1, "704.WSetEna = 1")
    assert device.get(704, "WSetMod") == symbol(704, "WSetMod", "WATTS")


def test_the_power_the_device_measures_reaches_the_der_in_relevent_status_json(peers):
    site, device = peers["site"], peers["device"]
    measured = until(lambda: (m := status(site)["pv1"]["detail"].get("measured")) and m.get("w") is not None and m,
                     "pv1 measured")
    assert measured["w"] == pytest.approx(432.1) and measured["connected"] is True and measured["quality"] == "good"
    assert measured["voltage_v"] == pytest.approx(230.1) and measured["frequency_hz"] == pytest.approx(50.02)
    assert measured["state"] == "St 4 (MPPT)"
    # The device's own value changes (scale factor too): the new one arrives.
    device.set(103, "W_SF", 0)
    device.set(103, "W", -2500)
    measured = until(lambda: (m := status(site)["pv1"]["detail"]["measured"])["w"] == -2500.0 and m,
                     "pv1 measured -2500 W", show=lambda: status(site)["pv1"]["detail"]["measured"])
    assert measured["connected"] is True


# -- (b) pivot: hand-written payloads, Mosquitto's own clients ----------------------------------
def pivot_t(ms: int) -> dict:
    """docs/interfaces.md: SecondSinceEpoch and a 24-bit binary fraction (ms * 2^24 / 1000)."""
    return {"SecondSinceEpoch": ms // 1000, "FractionOfSecond": ms % 1000 * 2 ** 24 // 1000}


def test_a_gtim_and_a_gtis_from_a_device_reach_the_ders_measurement(peers):
    site, port = peers["site"], peers["ports"]["mqtt"]
    second = now_ms() // 1000 - 1
    # A GTIM under PIVOT, as the docs' example; 0.5 s is 8388608 / 2^24.
    gtim = {"PIVOT": {"GTIM": {"ComingFrom": "device", "Identifier": "bat1.W", "Cause": {"stVal": 3},
                               "MvTyp": {"mag": {"f": -1234.5}, "q": {"Validity": "questionable"},
                                         "t": {"SecondSinceEpoch": second, "FractionOfSecond": 8388608}}}}}
    publish(port, [json.dumps(gtim).encode()], "fledge/south-measurement")
    measured = until(lambda: (m := status(site)["bat1"]["detail"].get("measured")) and m.get("w") == -1234.5 and m,
                     "bat1 measured -1234.5 W", show=lambda: status(site)["bat1"]["detail"].get("measured"))
    assert measured["at"] == second * 1000 + 500 and measured["quality"] == "questionable"
    # A GTIS at the top level (the docs allow both): the device says it is disconnected.
    gtis = {"GTIS": {"ComingFrom": "device", "Identifier": "bat1.Conn", "Cause": {"stVal": 3},
                     "SpsTyp": {"stVal": 0, "q": {"Validity": "good"},
                                "t": {"SecondSinceEpoch": second + 1, "FractionOfSecond": 4194304}}}}
    publish(port, [json.dumps(gtis).encode()], "fledge/south-measurement")
    measured = until(lambda: (m := status(site)["bat1"]["detail"]["measured"])["connected"] is False and m,
                     "bat1 connected False", show=lambda: status(site)["bat1"]["detail"]["measured"])
    assert measured["w"] == -1234.5 and measured["at"] == (second + 1) * 1000 + 250
    assert measured["quality"] == "good"
    assert status(site)["mqtt"]["detail"]["rejected"] == 0


def test_a_pivot_command_on_the_wire_is_the_documented_structure_key_by_key(peers):
    mms, watcher = peers["mms"], peers["watcher"]
    start = (now_ms() // 1000 + 2) * 1000

    def bat1(m):
        return m[1] == "fledge/south-command" and m[2].get("operation") == "PivotCommand" \
            and m[2]["parameters"][0]["value"]["GTIC"].get("Identifier") == "bat1.ActPow" \
            and m[2]["parameters"][0]["value"]["GTIC"].get("ApcTyp", {}).get("ctlVal") == -1500.0

    schedule(mms, "bat1", "ActPow", [-1500], 600, start)
    received, _topic, doc = watcher.wait_for(bat1, timeout=start / 1000 - time.time() + 5)[0]
    # The switching time: in the entry's first second, before the message arrived.
    t = doc["parameters"][0]["value"]["GTIC"]["ApcTyp"]["t"]
    assert isinstance(t, dict) and set(t) == {"SecondSinceEpoch", "FractionOfSecond"}, t
    assert t["SecondSinceEpoch"] == start // 1000 and 0 <= t["FractionOfSecond"] < 2 ** 24, t
    # (the fraction is ms * 2^24 / 1000 rounded down: rounding it back up gives the ms)
    switched_ms = t["SecondSinceEpoch"] * 1000 - (-t["FractionOfSecond"] * 1000 // 2 ** 24)
    assert start <= switched_ms <= received // 1_000_000 + 1, (switched_ms - start, received // 1_000_000 - start)
    # docs/interfaces.md "Commands and schedules": the whole message, as written there.
    expected = {"operation": "PivotCommand",
                "parameters": [{"name": "PIVOTTC",
                                "value": {"GTIC": {"ComingFrom": "iec61850",
                                                   "ApcTyp": {"ctlVal": -1500.0, "q": {"test": 0},
                                                              "t": pivot_t(switched_ms)},
                                                   "Identifier": "bat1.ActPow"}}}]}
    assert differences(doc, expected) == []


def test_a_pivot_schedule_for_onoff_is_the_documented_spctyp_structure(peers):
    watcher = peers["watcher"]

    def onoff(m):
        return m[1] == "fledge/south-schedule" and m[2].get("operation") == "PivotSchedule" \
            and m[2]["parameters"][0]["value"]["GTIC"].get("Identifier") == "bat1.OnOff"

    _received, _topic, doc = watcher.wait_for(onoff, timeout=5)[-1]
    # Only the reserve (OnOff on) is in force: one event, SpcTyp with ctlVal 1 (an integer 0/1).
    t = doc["parameters"][0]["value"]["GTIC"]["SpcTyp"]["t"]
    assert set(t) == {"SecondSinceEpoch", "FractionOfSecond"} and 0 <= t["FractionOfSecond"] < 2 ** 24
    expected = {"operation": "PivotSchedule",
                "parameters": [{"name": "PIVOTTC",
                                "value": {"GTIC": {"ComingFrom": "iec61850",
                                                   "SpcTyp": {"ctlVal": 1, "q": {"test": 0}, "t": t},
                                                   "Identifier": "bat1.OnOff"}}}]}
    assert differences(doc, expected) == []
