"""SG-Ready over MQTT relays (relevent/protocols/mqtt_relay): the pure topic and payload
rules first, then a real site with a real Mosquitto broker, where the witness is Mosquitto's
own clients, not our code: `mosquitto_sub` sees the relay commands a block written over
MMS makes (cmnd/hp-relay/POWER1 ON, POWER2 OFF, Tasmota's conventions), and a
`mosquitto_pub` of the control box's contact (stat/hp-relay/SWITCH3 ON) arms a MaxPow
4200 W local schedule at its priority, which OFF ends."""
from __future__ import annotations

import pytest

from lanctl import Mosquitto, MosquittoSub, publish
from mmsclients import Open61850Client
from relevent.devices import sgready
from relevent.protocols.mqtt_relay import relays
from relevent.topology import load_topology
from sitectl import Site, free_port, now_ms
from test_heat_pump_site import schedule, wait


# -- the pure rules ------------------------------------------------------------------------------------
def test_tasmota_style_commands_power1_and_power2_and_reads_the_contact_on_switch_n():
    r = relays.parse({"style": "tasmota", "device": "hp-relay", "contact": 3})
    assert r.commands == ("cmnd/hp-relay/POWER1", "cmnd/hp-relay/POWER2")
    assert r.states == ("stat/hp-relay/POWER1", "stat/hp-relay/POWER2")
    assert r.contact == "stat/hp-relay/SWITCH3"
    assert r.publishes(sgready.BLOCKED) == [("cmnd/hp-relay/POWER1", b"ON"), ("cmnd/hp-relay/POWER2", b"OFF")]
    assert r.publishes(sgready.NORMAL) == [("cmnd/hp-relay/POWER1", b"OFF"), ("cmnd/hp-relay/POWER2", b"OFF")]
    assert r.publishes(sgready.RECOMMENDED) == [("cmnd/hp-relay/POWER1", b"OFF"), ("cmnd/hp-relay/POWER2", b"ON")]
    assert r.publishes(sgready.FORCED) == [("cmnd/hp-relay/POWER1", b"ON"), ("cmnd/hp-relay/POWER2", b"ON")]
    assert r.route("stat/hp-relay/POWER2") == ("state", 1)
    assert r.route("stat/hp-relay/SWITCH3") == ("contact", None)
    assert r.route("stat/hp-relay/POWER3") is None
    assert r.decode_contact("stat/hp-relay/SWITCH3", b"ON") is True
    assert r.decode_contact("stat/hp-relay/SWITCH3", b"0") is False   # a Tasmota rule's %value%


def test_tasmota_channels_are_configurable_and_without_contact_nothing_is_read_for_it():
    r = relays.parse({"style": "tasmota", "device": "box", "channels": [3, 4]})
    assert r.commands == ("cmnd/box/POWER3", "cmnd/box/POWER4") and r.contact is None
    assert r.subscriptions() == ["stat/box/POWER3", "stat/box/POWER4"]


def test_home_assistant_style_uses_set_and_state_topics_under_the_prefix_with_its_payloads():
    r = relays.parse({"style": "homeassistant", "prefix": "home/heatpump/", "payload_on": "1", "payload_off": "0",
                      "contact_topic": "home/controlbox/state", "power_topic": "home/heatpump/power"})
    assert r.commands == ("home/heatpump/input1/set", "home/heatpump/input2/set")
    assert r.states == ("home/heatpump/input1/state", "home/heatpump/input2/state")
    assert r.publishes(sgready.BLOCKED) == [("home/heatpump/input1/set", b"1"), ("home/heatpump/input2/set", b"0")]
    assert r.decode_state("home/heatpump/input1/state", b"1") is True
    assert r.decode_contact("home/controlbox/state", b"on") is True   # case does not matter
    assert relays.decode_power("home/heatpump/power", b"3500") == -3500.0   # drawn: negative in the model


def test_explicit_style_takes_every_topic_and_payload_from_the_topology():
    r = relays.parse({"style": "explicit", "input1_command": "a/1/cmd", "input2_command": "a/2/cmd",
                      "input1_state": "a/1/st", "payload_on": "close", "payload_off": "open",
                      "state_on": "closed", "state_off": "opened"})
    assert r.commands == ("a/1/cmd", "a/2/cmd") and r.states == ("a/1/st", None)
    assert r.publishes(sgready.FORCED) == [("a/1/cmd", b"close"), ("a/2/cmd", b"close")]
    assert r.decode_state("a/1/st", b"opened") is False


def test_payloads_that_are_not_on_or_off_are_refused_naming_the_topic_and_the_payload():
    r = relays.parse({"style": "tasmota", "device": "hp-relay", "contact": 3})
    with pytest.raises(ValueError, match=r"topic stat/hp-relay/POWER1: payload 'TOGGLE' is neither 'ON' nor 'OFF'"):
        r.decode_state("stat/hp-relay/POWER1", b"TOGGLE")
    with pytest.raises(ValueError, match=r"topic stat/hp-relay/SWITCH3: payload 'maybe'"):
        r.decode_contact("stat/hp-relay/SWITCH3", b"maybe")
    with pytest.raises(ValueError, match=r"topic p: payload b'\\xff' is not UTF-8"):
        r.decode_state("p", b"\xff")
    with pytest.raises(ValueError, match=r"topic hp/power: payload 'nan' is not a finite number of W"):
        relays.decode_power("hp/power", b"nan")
    with pytest.raises(ValueError, match=r"topic hp/power: payload '3 kW' is not a number of W"):
        relays.decode_power("hp/power", b"3 kW")


@pytest.mark.parametrize("table, error", [
    ({}, r"relays: needs a table"),
    ({"style": "shelly"}, r"relays\.style: 'shelly' is not one of tasmota, homeassistant, explicit"),
    ({"style": "tasmota"}, r"relays\.device: missing"),
    ({"style": "tasmota", "device": "x", "prefix": "y"}, r"relays\.prefix: unknown for style tasmota"),
    ({"style": "tasmota", "device": "x", "channels": [1, 1]}, r"relays\.channels: .*two relays"),
    ({"style": "tasmota", "device": "x", "contact": 33}, r"relays\.contact: 33 is not a Tasmota channel"),
    ({"style": "homeassistant", "prefix": "hp/#"}, r"relays\.prefix: .*wildcards"),
    ({"style": "homeassistant", "prefix": "hp", "payload_on": "X", "payload_off": "X"}, r"relays\.payload_off"),
    ({"style": "explicit", "input1_command": "a"}, r"relays\.input2_command: missing"),
    ({"style": "explicit", "input1_command": "a", "input2_command": "a"}, r"relays: input 1 and input 2 both"),
])
def test_a_bad_relays_table_is_refused_naming_the_key(table, error):
    with pytest.raises(ValueError, match=error):
        relays.parse(table)


def test_the_state_the_relays_show_follows_the_sg_ready_contacts_and_is_unknown_until_both_are_seen():
    assert relays.state_of((True, False)) == sgready.BLOCKED
    assert relays.state_of((False, True)) == sgready.RECOMMENDED
    assert relays.state_of((True, None)) is None


# -- the endpoint's decisions, with the broker and the actor faked ----------------------------------------------
class FakeActor:
    name, parent, myAddress = "relays", "site", "me"

    def __init__(self) -> None:
        self.sent: list = []
        self.wakeups: list = []

    def send(self, to, message) -> None:
        self.sent.append((to, message))

    def wakeupAfter(self, seconds, payload) -> None:
        self.wakeups.append((seconds, payload))


class FakeLink:
    up, connects, last_error, tls = True, 1, "", None

    def __init__(self) -> None:
        self.published: list = []

    def publish(self, topic, payload, qos, retain) -> None:
        self.published.append((topic, payload.decode()))


class FakeLoop:
    def __init__(self) -> None:
        self.queue: list = []

    def call(self, fn, *args) -> None:
        fn(*args)

    def events(self, owner) -> list:
        out, self.queue = self.queue, []
        return out


def endpoint(sg: dict | None = None):
    from relevent.protocols.mqtt_relay.endpoint import MqttRelayEndpoint
    der = {"name": "hp1", "rated_power_w": 6000, "sgready": sg or {},
           "relays": {"style": "tasmota", "device": "hp", "contact": 3}}
    ep = MqttRelayEndpoint(FakeActor(), {"name": "relays", "host": "127.0.0.1", "port": 1883, "qos": 1,
                                         "measure_period": 1.0, "ders": [der]})
    ep.link, ep.aio = FakeLink(), FakeLoop()
    return ep


def command(seq: int, **outputs):
    from relevent.messages import DeviceCommand
    return DeviceCommand("hp1", 0.0, 6000.0, True, {k: (v, "FSCH01") for k, v in outputs.items()}, [], now_ms(), seq)


def test_the_endpoint_publishes_only_what_changed_and_both_inputs_again_after_a_reconnect():
    ep = endpoint()
    ep.on_message(command(1, OnOff=True), None)
    assert ep.link.published == [("cmnd/hp/POWER1", "OFF"), ("cmnd/hp/POWER2", "OFF")]
    ep.on_message(command(2, OnOff=False), None)                       # a block: input 1 only
    assert ep.link.published[2:] == [("cmnd/hp/POWER1", "ON")]
    ep.on_message(command(3, OnOff=False), None)                       # the same again: nothing
    assert len(ep.link.published) == 3
    ep.aio.queue = [("down",), ("up",)]
    ep.on_ready([])
    assert ep.link.published[3:] == [("cmnd/hp/POWER1", "ON"), ("cmnd/hp/POWER2", "OFF")]
    invalid = [m for _to, m in ep.actor.sent if getattr(m, "quality", "") == "invalid"]
    assert len(invalid) == 1 and invalid[0].der == "hp1" and invalid[0].w is None


def test_a_relay_that_reports_another_state_is_commanded_again_and_the_contact_reaches_the_der():
    ep = endpoint()
    ep.on_message(command(1, OnOff=False), None)
    ep.aio.queue = [("message", "stat/hp/POWER1", b"ON"), ("message", "stat/hp/POWER2", b"OFF"),
                    ("message", "stat/hp/SWITCH3", b"ON")]
    ep.on_ready([])
    assert len(ep.link.published) == 2                                 # it agrees: nothing again
    m = ep.actor.sent[-1][1]
    assert m.contact is True and m.connected is False and m.quality == "good" and m.w is None
    ep.actor.wakeups.clear()
    ep.aio.queue = [("message", "stat/hp/POWER1", b"OFF"), ("message", "stat/hp/SWITCH3", b"BROKEN")]
    ep.on_ready([])
    # Just published: the resend waits RESEND_MIN_S (a relay that refuses makes no loop), then goes out.
    [(delay, wake)] = [w for w in ep.actor.wakeups if w[1].what == "resend"]
    assert 0 < delay <= 1.0
    ep.on_wakeup(wake)
    assert ep.link.published[-1] == ("cmnd/hp/POWER1", "ON")
    assert ep.rejected == 1 and "stat/hp/SWITCH3" in ep.last_rejection and "'BROKEN'" in ep.last_rejection
    assert ep.detail()["devices"]["hp1"]["relays"] == {"input1": "OFF", "input2": "OFF"}
    assert ep.detail()["devices"]["hp1"]["contact"] == "closed"


def test_a_block_within_min_run_waits_and_is_published_when_due():
    import time as _time
    ep = endpoint({"min_run_s": 0.2})
    ep.on_message(command(1, OnOff=False), None)
    info = ep.detail()["devices"]["hp1"]
    assert info["sgready"]["state"] == 2 and info["sgready"]["note"] == "min_run"
    assert ep.link.published == [("cmnd/hp/POWER1", "OFF"), ("cmnd/hp/POWER2", "OFF")]
    [(delay, wake)] = [w for w in ep.actor.wakeups if w[1].what == "due"]
    assert 0.2 <= delay < 0.3
    _time.sleep(delay)   # the fake actor's wakeup: its time, not a wait for a condition
    ep.on_wakeup(wake)
    assert ep.link.published[-1] == ("cmnd/hp/POWER1", "ON")
    assert ep.detail()["devices"]["hp1"]["sgready"]["state"] == 1


# -- the topology check ---------------------------------------------------------------------------------
def site_toml(state, ports: dict, der_extra: str = "", der_type: str = "heat_pump",
              relays_table: str = '{ style = "tasmota", device = "hp-relay", contact = 3 }') -> str:
    return f"""[site]
name = "mr{ports['admin']}"
state_dir = "{state}"

[runtime]
admin_port = {ports['admin']}

[supervision]
heartbeat_interval = 0.2
heartbeat_timeout = 3.0
backoff_initial = 0.05

[[wan]]
name = "mms"
protocol = "mms"
port = {ports['mms']}

[[der]]
name = "hp1"
type = "{der_type}"
ld_inst = "hp1Control"
functions = ["MaxPow", "OnOff"]
schedules = 2
lan = "relays"
rated_power_w = 6000
relays = {relays_table}
sgready = {{ min_run_s = 0, min_off_s = 0, block_max_s = 60, blocks_per_day = 5 }}
reserve = {{ MaxPow = 6000.0, OnOff = true }}
local = [
  {{ trigger = "measurement", function = "MaxPow", schedule = "FSCH02", value = 4200.0, duration_s = 600, \
priority = 200, measure = "contact", above = 0.5, clear_s = 0.5 }},
]
{der_extra}
[[lan]]
name = "relays"
protocol = "mqtt-relay"
port = {ports['mqtt']}
reconnect_delay = 0.2
measure_period = 0.2
"""


def problems(tmp_path, **kw) -> list[str]:
    ports = {"admin": free_port(), "mms": free_port(), "mqtt": free_port()}
    path = tmp_path / "check.toml"
    path.write_text(site_toml(tmp_path / "state", ports, **kw))
    try:
        load_topology(path)
    except Exception as exc:  # noqa: BLE001 - the loader's error lists the problems
        return [str(exc)]
    return []


def test_the_topology_check_takes_a_tasmota_heat_pump_and_refuses_other_types_and_bad_relays(tmp_path):
    assert problems(tmp_path) == []
    [text] = problems(tmp_path, der_type="pv")
    assert "type" in text and "heat_pump" in text
    [text] = problems(tmp_path, relays_table='{ style = "tasmota" }')
    assert "relays.device" in text
    [text] = problems(tmp_path, relays_table="{}")
    assert "needs its relays" in text


# -- a real site, a real broker, Mosquitto's clients as the relay device ----------------------------------------
@pytest.mark.timeout(60)
def test_a_block_over_mms_closes_power1_and_the_control_box_contact_arms_a_4200_w_limit_until_it_opens(tmp_path):
    ports = {"admin": free_port(), "mms": free_port(), "mqtt": free_port()}
    broker = Mosquitto(ports["mqtt"], tmp_path).start()
    sub = MosquittoSub(ports["mqtt"], ["cmnd/hp-relay/#"])
    path, state = tmp_path / "mr.toml", tmp_path / "state"
    path.write_text(site_toml(state, ports))
    site = Site(path, state)
    mms = None
    try:
        site.start()

        def latest() -> dict:
            with sub.lock:
                return {topic: doc["raw"] for _t, topic, doc in sub.messages}

        def relay() -> dict:
            return site.node("relays")["detail"]["devices"]["hp1"]

        # The first command: state 2 (normal), both inputs open.
        sub.wait_for(lambda m: m[1] == "cmnd/hp-relay/POWER2")
        wait(lambda: latest() == {"cmnd/hp-relay/POWER1": "OFF", "cmnd/hp-relay/POWER2": "OFF"}, 10, "state 2")

        # A block (OnOff false) over MMS: input 1 closes, input 2 stays open (SG-Ready state 1).
        mms = Open61850Client("127.0.0.1", ports["mms"])
        written = now_ms()
        schedule(mms, "OnOff", False, written + 300)
        on = sub.wait_for(lambda m: m[1] == "cmnd/hp-relay/POWER1" and m[2]["raw"] == "ON")[0]
        assert on[0] // 1_000_000 >= written
        assert latest() == {"cmnd/hp-relay/POWER1": "ON", "cmnd/hp-relay/POWER2": "OFF"}
        with sub.lock:   # only what changed is published: POWER2 was OFF already
            assert [m for m in sub.messages if m[0] >= on[0] and m[1] == "cmnd/hp-relay/POWER2"] == []
        sg = wait(lambda: (relay().get("sgready") or {}).get("state") == 1 and relay()["sgready"], 10, "state 1")
        assert sg["name"] == "blocked" and sg["wanted"] == 1 and sg["note"] == ""

        # The relay reports it is open (switched by hand): commanded again.
        seen = len(sub.messages)
        publish(ports["mqtt"], [b"OFF"], "stat/hp-relay/POWER1")
        sub.wait_for(lambda m: m[1] == "cmnd/hp-relay/POWER1" and m[2]["raw"] == "ON" and m[0] > on[0])
        assert len(sub.messages) > seen

        # The control box closes its contact: the local schedule arms MaxPow 4200 W at priority 200.
        publish(ports["mqtt"], [b"ON"], "stat/hp-relay/SWITCH3")
        ctl = site.wait_for("hp1/MaxPow", lambda n: n["detail"].get("triggers") == {"FSCH02": "active"}
                            and n["detail"].get("source") == "FSCH02", timeout=10)
        assert ctl["detail"]["output"] == 4200.0
        assert mms.read_int("DER_Scheduler_hp1Control/MaxPow_FSCH02.SchdPrio.setVal", "SP") == 200
        # (the status is what the last heartbeat brought: up to a heartbeat late)
        site.wait_for("hp1", lambda n: n["detail"].get("measured", {}).get("contact") == "closed")
        assert relay()["contact"] == "closed"

        # It opens: the limit ends (clear_s 0.5).
        publish(ports["mqtt"], [b"OFF"], "stat/hp-relay/SWITCH3")
        ctl = site.wait_for("hp1/MaxPow", lambda n: n["detail"].get("triggers") == {"FSCH02": "idle"}
                            and n["detail"].get("source") != "FSCH02", timeout=10)
        assert ctl["detail"]["output"] == 6000.0
        site.wait_for("hp1", lambda n: n["detail"].get("measured", {}).get("contact") == "open")
        assert relay()["relays"] == {"input1": "OFF", "input2": None}   # what the device last said (no device here)
    finally:
        if mms is not None:
            mms.close()
        site.stop()
        leftovers = site.leftovers()
        site.kill_everything()
        sub.close()
        broker.stop()
    assert leftovers == []
