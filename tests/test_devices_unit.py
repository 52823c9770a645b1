"""Pure parts of the LAN side: the device command rule, pivot JSON, SunSpec layout and
encodings, Modbus device addresses, and the topology checks for DERs on a LAN."""
from __future__ import annotations

import asyncio
import json

import pytest

from relevent.devices import sunspec
from relevent.devices.command import device_command
from relevent.protocols.modbus.address import parse_device_address
from relevent.protocols.mqtt import pivot
from relevent.topology import TopologyError, parse_topology


# -- device command -------------------------------------------------------------------------------
@pytest.mark.parametrize("outputs, expected", [
    ({"ActPow": 4000.0, "MaxPow": 10000.0, "OnOff": True}, (4000.0, 10000.0, True)),
    ({"ActPow": 8000.0, "MaxPow": 5000.0, "OnOff": True}, (5000.0, 5000.0, True)),    # MaxPow bounds ActPow
    ({"ActPow": 8000.0, "MaxPow": 50000.0}, (8000.0, 10000.0, True)),                  # rated bounds MaxPow
    ({"MaxPow": 3000.0}, (3000.0, 3000.0, True)),                                      # no ActPow: the limit
    ({"ActPow": -20000.0}, (-10000.0, 10000.0, True)),                                 # charging, bounded
    ({"ActPow": 4000.0, "OnOff": False}, (0.0, 10000.0, False)),                       # off: disconnect, 0 W
    ({}, (10000.0, 10000.0, True)),
])
def test_device_command(outputs, expected):
    cmd = device_command(outputs, 10000)
    assert (cmd.setpoint_w, cmd.limit_w, cmd.connected) == expected


def test_device_command_needs_a_rated_power():
    with pytest.raises(ValueError, match="rated_power_w"):
        device_command({"ActPow": 1.0}, 0)


# -- pivot ------------------------------------------------------------------------------------------
def test_pivot_command_is_relevents_format():
    doc = json.loads(pivot.pivot_command("ActPow", 1500, "TS1", 1_700_000_000_250))
    assert doc["operation"] == "PivotCommand" and len(doc["parameters"]) == 1
    gtic = doc["parameters"][0]["value"]["GTIC"]
    assert gtic["ComingFrom"] == "iec61850" and gtic["Identifier"] == "TS1"
    assert gtic["ApcTyp"]["ctlVal"] == 1500.0 and gtic["ApcTyp"]["q"] == {"test": 0}
    assert gtic["ApcTyp"]["t"] == {"SecondSinceEpoch": 1_700_000_000, "FractionOfSecond": 250 * (1 << 24) // 1000}
    on = json.loads(pivot.pivot_command("OnOff", True, "TS2", 0))["parameters"][0]["value"]["GTIC"]
    assert on["SpcTyp"]["ctlVal"] == 1 and "ApcTyp" not in on
    assert pivot.parse_command(pivot.pivot_command("MaxPow", 7.5, "X", 1000)) == ("X", "ApcTyp", 7.5, 1000)


def test_pivot_schedule_has_one_parameter_per_event_in_order():
    doc = json.loads(pivot.pivot_schedule("ActPow", [(1000, 5.0, "FSCH01"), (2000, 6.0, "FSCH01"),
                                                     (3000, 0.0, "Res_FSCH01")], "TS1"))
    assert doc["operation"] == "PivotSchedule"
    assert [(p["value"]["GTIC"]["ApcTyp"]["t"]["SecondSinceEpoch"], p["value"]["GTIC"]["ApcTyp"]["ctlVal"])
            for p in doc["parameters"]] == [(1, 5.0), (2, 6.0), (3, 0.0)]


def test_measurements_round_trip():
    assert pivot.parse_measurement(pivot.measurement("bat1.W", -250.5, 5000)) == ("bat1.W", "W", -250.5, "good", 5000)
    assert pivot.parse_measurement(pivot.status("bat1.Conn", False, 5000)) == ("bat1.Conn", "Conn", 0.0, "good", 5000)


@pytest.mark.parametrize("payload, message", [
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "payload: expected an object, got list"),
    (b'{"PIVOT": {"GTXX": {}}}', "expected a GTIM or GTIS object"),
    (b'{"GTIM": {"Identifier": "a", "MvTyp": {"mag": {"f": "x"}}}}', "GTIM.MvTyp.mag.f: expected a finite number"),
    (b'{"GTIM": {"Identifier": "a", "MvTyp": {"mag": {"f": NaN}}}}', "GTIM.MvTyp.mag.f: expected a finite number"),
    (b'{"GTIM": {"MvTyp": {"mag": {"f": 1}}}}', "GTIM.Identifier: expected a non-empty string"),
    (b'{"GTIM": {"Identifier": "a", "MvTyp": {"mag": {"f": 1}, "q": {"Validity": "meh"}}}}', "GTIM.q.Validity"),
    (b'{"GTIM": {"Identifier": "a", "MvTyp": {"mag": {"f": 1}, "t": {"x": 1}}}}', "GTIM.t: expected"),
    (b'{"GTIS": {"Identifier": "a", "SpsTyp": []}}', "GTIS.SpsTyp: expected an object"),
])
def test_bad_measurements_name_the_field(payload, message):
    with pytest.raises(pivot.PivotError, match=message.replace(".", r"\.").replace("(", r"\(")):
        pivot.parse_measurement(payload)


def test_labels_default_to_der_and_key_and_follow_the_points_table():
    assert pivot.label({"name": "bat1"}, "ActPow") == "bat1.ActPow"
    assert pivot.label({"name": "bat1", "points": {"ActPow": "TS1"}}, "ActPow") == "TS1"


# -- SunSpec --------------------------------------------------------------------------------------------
def test_layout_comes_from_pysunspec2_definitions():
    p = sunspec.layout(123)
    assert (p["Conn"].offset, p["WMaxLimPct"].offset, p["WMaxLim_Ena"].offset) == (4, 5, 9)
    assert p["WMaxLimPct"].sf == "WMaxLimPct_SF" and sunspec.model_length(123) == 24
    assert sunspec.layout(704)["WSet"].size == 2 and sunspec.layout(103)["W"].type == "int16"


def test_encode_decode_signed_and_wide_points():
    wset = sunspec.layout(704)["WSet"]
    assert sunspec.encode(wset, -2000) == [0xFFFF, 0xF830]
    assert sunspec.decode(wset, [0xFFFF, 0xF830]) == -2000
    assert sunspec.decode(sunspec.layout(123)["WMaxLimPct_SF"], [0xFFFE]) == -2
    with pytest.raises(sunspec.SunSpecError, match="WMaxLimPct: 70000 does not fit uint16"):
        sunspec.encode(sunspec.layout(123)["WMaxLimPct"], 70000)


def _reader(regs: dict[int, int]):
    async def read(address: int, count: int) -> list[int]:
        return [regs.get(address + i, 0) for i in range(count)]
    return read


def test_discovery_walks_the_model_chain():
    regs = {40000: 0x5375, 40001: 0x6E53, 40002: 1, 40003: 66, 40070: 123, 40071: 24, 40096: 0xFFFF}
    assert asyncio.run(sunspec.discover(_reader(regs))) == {1: 40002, 123: 40070}


def test_discovery_without_marker_or_end_fails_clearly():
    with pytest.raises(sunspec.SunSpecError, match="no SunS marker"):
        asyncio.run(sunspec.discover(_reader({})))
    looping = {40000: 0x5375, 40001: 0x6E53, **{40002 + 2 * i: 1 for i in range(100)}}
    with pytest.raises(sunspec.SunSpecError, match="more than 64 models"):
        asyncio.run(sunspec.discover(_reader(looping)))


# -- Modbus addresses and topology checks -------------------------------------------------------------
@pytest.mark.parametrize("address, expected", [
    (3, "gw:502/3"), ("", "gw:502/1"), ("10.0.0.7:1502", "10.0.0.7:1502/1"), ("10.0.0.7:1502/9", "10.0.0.7:1502/9"),
    ("4", "gw:502/4"),
])
def test_device_addresses(address, expected):
    assert str(parse_device_address(address, "gw", 502)) == expected


@pytest.mark.parametrize("address", ["host", "h:99999/1", 300, "a:b/c"])
def test_bad_device_addresses(address):
    with pytest.raises(ValueError, match="Modbus address"):
        parse_device_address(address, "gw", 502)


LAN_TOPOLOGY = """[site]
name = "s"
[[der]]
name = "pv"
lan = "bus"
address = "nowhere"
profile = "pivot"
[[lan]]
name = "bus"
protocol = "modbus"
[[simulator]]
name = "sim"
protocol = "sunspec-inverter"
port = 5020
models = [1, 999]
"""


def test_topology_checks_for_ders_on_a_lan_name_the_lines():
    with pytest.raises(TopologyError) as err:
        parse_topology(LAN_TOPOLOGY, "lan.toml", env={})
    text = str(err.value)
    assert "lan.toml:6: der[0].address: Modbus address 'nowhere'" in text
    assert "lan.toml:7: der[0].profile: profile 'pivot' on a Modbus endpoint" in text
    assert "der[0].rated_power_w: a DER driven over a LAN endpoint needs rated_power_w > 0" in text
    assert "lan.toml:15: simulator[0].models: model 999 not simulated" in text


# -- the plain register profile against a real Modbus TCP server ----------------------------------------
def test_register_profile_writes_setpoint_and_connect_and_reads_power():
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    from relevent.messages import DeviceCommand
    from relevent.protocols.modbus.profiles import DeviceError, Io, RegistersProfile
    from sitectl import free_port

    port = free_port()
    der = {"name": "hp", "rated_power_w": 9000, "registers": {"setpoint": 100, "connect": 101, "power": 102,
                                                            "scale": 10}}

    async def scenario():
        regs = [0, 0, (-450) & 0xFFFF]  # the device draws 4.5 kW
        server = ModbusTcpServer(SimDevice(id=1, simdata=[SimData(100, values=regs, datatype=DataType.REGISTERS)]),
                                 address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0, reconnect_delay=0)
        try:
            assert await client.connect()
            io = Io(client, 1)
            profile = RegistersProfile(io, der, 30)
            assert "registers" in await profile.discover()
            await profile.apply(DeviceCommand("hp", -3000.0, 9000.0, True, {}, [], 0, 1))
            assert await io.read(100, 2) == [(-300) & 0xFFFF, 1]
            await profile.apply(DeviceCommand("hp", 0.0, 9000.0, False, {}, [], 0, 2))
            assert await io.read(100, 2) == [0, 0]
            assert await profile.measure() == (-4500.0, False)
            with pytest.raises(DeviceError, match="read 300\\+1: Modbus exception"):
                await io.read(300, 1)  # nothing mapped there: an exception reply, named
        finally:
            client.close()
            await server.shutdown()

    asyncio.run(scenario())


def test_a_stretch_with_no_schedule_in_force_is_left_out_of_the_pivot_forecast_and_commands():
    from relevent.protocols.mqtt import pivot
    payload = pivot.pivot_schedule("ActPow", [(1000, None, None), (2000, 5.0, "FSCH01")], "TS1")
    assert [value for _i, _c, value, _ms in pivot.parse_schedule(payload)] == [5.0]
    assert pivot.pivot_schedule("ActPow", [(1000, None, None)], "TS1") is None


# -- PivotSchedule: every 5 s, the next 24 h ----------------------------------------------------------
PIVOT_TOPOLOGY = """[site]
name = "s"
[[der]]
name = "bat"
functions = ["ActPow"]
lan = "mqtt"
profile = "pivot"
rated_power_w = 10000
[[lan]]
name = "mqtt"
protocol = "mqtt"
"""


class _Actor:
    """What MqttEndpoint asks of its actor, noted."""
    name, myAddress, parent = "mqtt", "me", "der-parent"

    def __init__(self) -> None:
        self.sent, self.wakeups = [], []

    def send(self, to, message) -> None:
        self.sent.append((to, message))

    def wakeupAfter(self, delay, payload) -> None:
        self.wakeups.append((delay, payload))


def test_pivot_schedule_is_the_24_h_forecast_sent_every_5_s_by_default():
    """README "Devices": the MQTT endpoint publishes ReLevENT's pivot `PivotSchedule` (24 h
    forecast every 5 s); docs/devices.md: every `schedule_period` (5 s)."""
    from types import SimpleNamespace

    from relevent.actors.site import device_slice
    from relevent.messages import ForecastReply, ForecastRequest, Wakeup
    from relevent.protocols.mqtt.endpoint import MqttEndpoint
    from relevent.scheduling.arbitration import forecast
    from relevent.scheduling.calendar import Calendar, OccPer
    from relevent.scheduling.schedule import Schedule, StartTime

    data = parse_topology(PIVOT_TOPOLOGY, "pivot.toml", env={}).data
    lan = data["lan"][0]
    assert lan["schedule_period"] == 5.0 and lan["topic_schedule"] == "fledge/south-schedule"
    actor = _Actor()
    ep = MqttEndpoint(actor, {**lan, "ders": [device_slice(d) for d in data["der"]]})
    ep.link = SimpleNamespace(up=True)              # connected (start() not called: no thread, no socket)
    published = []
    ep._publish = lambda topic, payload: published.append((topic, payload))

    assert ep.on_message(Wakeup("forecast"), None)
    assert actor.wakeups == [(5.0, Wakeup("forecast"))]   # the next one in 5 s
    [(to, request)] = actor.sent
    assert isinstance(request, ForecastRequest) and (request.der, request.kind) == ("bat", "ActPow")
    assert request.window_ms == 24 * 3600 * 1000 and request.reply_to == "me"

    # The controller answers with its forecast over the window asked for: a schedule of two
    # hour-long entries from 23.5 h on shows its first entry, not its second (beyond 24 h).
    now, hour = 1_800_000_000_000, 3600 * 1000
    res = Schedule("Res_FSCH01", periodic=True, reserve=True)
    res.settings.num_entr, res.settings.schd_intv, res.settings.prio = 1, 3600, 10
    res.settings.values[0] = 0.0
    res.settings.starts[0] = StartTime(1000, Calendar(OccPer.HOUR))
    assert res.enable(now, by_site=True).ok
    s = Schedule("FSCH01")
    s.write_num_entr(2), s.write_intv(3600), s.write_prio(20), s.write_value(1, 3000.0), s.write_value(2, 4000.0)
    assert s.write_start(1, now + 23 * hour + hour // 2, now).ok and s.enable(now).ok
    events = forecast([s, res], now, request.window_ms)
    assert ep.on_message(ForecastReply(request.request_id, "bat", "ActPow", events), None)
    [(topic, payload)] = published
    assert topic == "fledge/south-schedule"
    sent = pivot.parse_schedule(payload)
    assert [(value, ms - now) for _ident, _cdc, value, ms in sent] == [(0.0, 0), (3000.0, 23 * hour + hour // 2)]
    assert all(ident == "bat.ActPow" for ident, *_ in sent)
