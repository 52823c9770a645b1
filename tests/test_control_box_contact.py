"""A §14a control box's switch contact as a local trigger, end to end over Modbus.

The heat pump's device is pymodbus' own server and datastore in this process, laid out per
the shipped map "example-register" (SG-Ready state at holding 100, power limit at holding
101, the control box's contact at discrete input 0): no code of the site's device path or
of our simulator serves it.  The test closes and opens the contact in that datastore and
reads the power-limit register the site wrote from it; over MMS (open61850, a client that
shares no code with the site) the limit is an ordinary 90-10 schedule of the site.

Trigger: measure = "contact", above = 0.5 (armed while closed), clear_s 1 -> MaxPow FSCH02
= 4200 W at priority 200 (the §14a guaranteed minimum), over a DSO-free reserve of 6 kW.
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from mmsclients import Open61850Client
from sitectl import Site, free_port, until

LD = "DER_Scheduler_hp1Control"
REF = f"{LD}/MaxPow_FSCH02"
UNIT = 1
STATE, LIMIT, CONTACT = 100, 101, 0      # holding, holding, discrete input (the map's addresses)
RUNNING, NOT_READY = 4, 1
FC_HOLDING, FC_DISCRETE = 3, 2


class Device:
    """pymodbus' TCP server and datastore on a loop in a thread of the test process."""

    def __init__(self, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._call(self._start(port))

    async def _start(self, port: int) -> ModbusTcpServer:
        simdata = ([SimData(0xFFF0, values=False, datatype=DataType.BITS)],                 # coils: unused
                   [SimData(CONTACT, values=False, datatype=DataType.BITS)],                # discrete inputs
                   [SimData(STATE, values=[2, 6000], datatype=DataType.REGISTERS)],          # holding
                   [SimData(200, values=[2, 1500, 450, 210, 50, 1], datatype=DataType.REGISTERS)])  # input
        device = SimDevice(id=UNIT, simdata=simdata)
        server = ModbusTcpServer(device, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        return server

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)

    def contact(self, closed: bool) -> None:
        self._call(self.server.async_setValues(UNIT, FC_DISCRETE, CONTACT, [closed]))

    def holding(self, address: int) -> int:
        return self._call(self.server.async_getValues(UNIT, FC_HOLDING, address, 1))[0]

    def close(self) -> None:
        self._call(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(2)


def topology(state: Path, ports: dict) -> str:
    return f"""[site]
name = "cb{ports['admin']}"
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
type = "heat_pump"
ld_inst = "hp1Control"
functions = ["MaxPow"]
schedules = 2
lan = "modbus"
address = 1
profile = "sgready"
rated_power_w = 6000
sgready = {{ map = "example-register" }}
reserve = {{ MaxPow = 6000.0 }}
local = [
  {{ trigger = "measurement", measure = "contact", above = 0.5, clear_s = 1, function = "MaxPow", \
schedule = "FSCH02", value = 4200.0, duration_s = 3600, priority = 200 }},
]

[[lan]]
name = "modbus"
protocol = "modbus"
port = {ports['modbus']}
timeout = 0.5
poll_period = 0.2
"""


@pytest.mark.timeout(90)
def test_a_closed_control_box_contact_limits_the_heat_pump_to_4_2_kw_and_opening_it_lifts_the_limit(tmp_path):
    ports = {k: free_port() for k in ("admin", "mms", "modbus")}
    device = Device(ports["modbus"])
    state, path = tmp_path / "state", tmp_path / "cb.toml"
    path.write_text(topology(state, ports))
    site = Site(path, state).start()
    mms = None
    try:
        # Open: the site reads the contact, and the reserve's 6 kW is the limit at the device.
        site.wait_for("hp1", lambda n: n["detail"].get("measured", {}).get("contact") == "open")
        until(lambda: device.holding(LIMIT) == 6000, "the reserve's 6000 W at the device")
        assert site.node("hp1/MaxPow")["detail"]["triggers"] == {"FSCH02": "idle"}

        # Closed: 4.2 kW at the device, from the site's own schedule at priority 200.
        device.contact(True)
        until(lambda: device.holding(LIMIT) == 4200, "4200 W at the device after the contact closed")
        node = site.wait_for("hp1/MaxPow", lambda n: n["detail"]["triggers"] == {"FSCH02": "active"})
        assert node["detail"]["source"] == "FSCH02"
        # The DER's measurement reaches the status with its next heartbeat reply.
        site.wait_for("hp1", lambda n: n["detail"].get("measured", {}).get("contact") == "closed")
        mms = Open61850Client("127.0.0.1", ports["mms"])
        assert mms.read_int(f"{REF}.SchdSt.stVal") == RUNNING
        assert mms.read_int(f"{REF}.SchdPrio.setVal", "SP") == 200
        assert mms.read_float(f"{REF}.ValASG001.setMag.f", "SP") == 4200.0
        assert "trigger=measurement contact=1.0 value=4200.0" in site.log.read_text()

        # Open again: clear_s later the site ends its schedule and the reserve's 6 kW is back.
        device.contact(False)
        until(lambda: device.holding(LIMIT) == 6000, "6000 W at the device after the contact opened")
        node = site.wait_for("hp1/MaxPow", lambda n: n["detail"]["triggers"] == {"FSCH02": "idle"})
        assert mms.read_int(f"{REF}.SchdSt.stVal") != RUNNING
        assert node["detail"]["source"] == "Res_FSCH01"
    finally:
        if mms is not None:
            mms.close()
        try:
            site.stop()
            assert site.leftovers() == []
        finally:
            site.kill_everything()
            device.close()


def test_a_contact_trigger_with_a_threshold_outside_0_and_1_is_refused_naming_the_key(tmp_path):
    from relevent.topology.loader import TopologyError, load_topology
    ports = {k: free_port() for k in ("admin", "mms", "modbus")}
    path = tmp_path / "cb.toml"
    path.write_text(topology(tmp_path / "state", ports).replace("above = 0.5", "above = 1"))
    with pytest.raises(TopologyError) as err:
        load_topology(path)
    assert "local[0].above" in str(err.value) and "above = 0.5" in str(err.value)
