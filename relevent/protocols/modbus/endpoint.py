"""Modbus TCP LAN endpoint: drives the DERs whose `lan` names it.

Thin I/O around the DER actors: a DeviceCommand from a DER goes to that device's task
(relevent/protocols/modbus/device.py) on an asyncio loop in this actor's thread;
measurements come back through a ThreadBridge and go to the DER.  A command that asks for
it (`ack_to`: the site's at_stop reserve) is answered with CommandApplied once the device
has it, or not-ok when the device's link is down."""
from __future__ import annotations

import logging
from typing import Any

from relevent.messages import CommandSubscribe, DeviceCommand, Measurement
from relevent.protocols.confirm import Confirmations
from relevent.protocols.aio import AsyncioThread
from relevent.protocols.modbus.address import parse_device_address
from relevent.protocols.modbus.device import DeviceEvent, ModbusDevice

log = logging.getLogger("relevent.modbus")


class ModbusEndpoint:
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        self.aio: AsyncioThread | None = None
        self.devices: dict[str, ModbusDevice] = {}
        self.der_address: dict[str, Any] = {}
        self.state: dict[str, dict] = {}
        self.confirmations = Confirmations(lambda to, message: self.actor.send(to, message))   # at_stop commands (relevent/protocols/confirm.py)

    def start(self) -> None:
        self.aio = AsyncioThread(f"modbus-{self.config['name']}")
        for der in self.config.get("ders", []):
            where = parse_device_address(der["address"], self.config["host"], self.config["port"])
            device = ModbusDevice(der, where, self.config, self.aio.post)
            self.devices[der["name"]] = device
            self.state[der["name"]] = {"device": str(where), "link": "connecting"}
            self.aio.spawn(device.run(), f"device {der['name']}")
        # Ask every DER for its current command (and all later ones).
        self.actor.send(self.actor.parent, CommandSubscribe(self.actor.name, self.actor.myAddress))

    def on_message(self, message: Any, sender: Any) -> bool:
        if isinstance(message, DeviceCommand):
            device = self.devices.get(message.der)
            if device is None:
                log.warning("endpoint=%s: command for der=%s, which is not on this endpoint", self.config["name"],
                            message.der)
                return True
            self.der_address[message.der] = message.der_address
            state = self.state[message.der]
            self.confirmations.expect(message, state.get("link") == "up",
                                      f"device link down: {state.get('link_detail')}")
            self.aio.call(device.set_command, message)
            return True
        return False

    def on_ready(self, fds: list[int]) -> None:
        for event in self.aio.events(f"modbus endpoint {self.config['name']}"):
            self._event(event)

    def _event(self, ev: DeviceEvent) -> None:
        state = self.state[ev.der]
        if ev.what == "link":
            state["link"] = "up" if ev.up else "down"
            state["link_detail"] = ev.text
            if not ev.up:
                self.confirmations.lost(ev.der, f"device link down: {ev.text}")
            if not ev.up:
                self._send(Measurement(ev.der, None, None, ev.at, "invalid", self.config["name"], ev.text))
        elif ev.what == "applied":
            state["applied_seq"] = ev.seq
            self.confirmations.applied(ev.der, ev.seq)
        elif ev.what == "measured":
            state["w"], state["connected"], state["state"] = ev.w, ev.connected, ev.text
            if ev.info:   # the profile's own facts (SG-Ready: state, limit, tank and indoor temperature)
                state.update(ev.info)
            self._send(Measurement(ev.der, ev.w, ev.connected, ev.at, "good", self.config["name"], ev.text,
                                   voltage_v=ev.voltage_v, frequency_hz=ev.frequency_hz, contact=ev.contact))

    def _send(self, m: Measurement) -> None:
        # Straight to the DER once a command told us where it is; through the site before.
        self.actor.send(self.der_address.get(m.der) or self.actor.parent, m)

    def stop(self) -> None:
        if self.aio:
            self.aio.stop()

    def fds(self) -> list[int]:
        return [self.aio.fileno()] if self.aio else []

    def detail(self) -> dict:
        return {"devices": self.state}
