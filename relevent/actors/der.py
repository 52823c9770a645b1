"""A DER (inverter, battery, charger, ...): supervises one controller per control function
and turns their outputs into the device command that its LAN endpoint carries out.

Subscriptions it keeps, so that restarts re-wire themselves:
* endpoints subscribed to its controllers (SnapshotRequest): handed to each controller in
  its Configure, so a restarted controller sends its first state straight to them;
* the LAN endpoint named by `lan` (CommandSubscribe): it gets every new command, and the
  current one again whenever it (re)subscribes or this DER restarts.
Measurements from the device come back here and go on to the subscribed endpoints (MMXU),
and to the controllers with a measurement trigger (`local`, relevent/scheduling/trigger.py):
only those, so a DER without one pays nothing more per measurement.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from relevent.audit.site import open_chain
from relevent.clock import now_ms
from relevent.messages import (
    CommandApplied, CommandSubscribe, DeviceCommand, DevicesLeft, ForecastRequest, LeaveDevices, Measurement,
    OutputChanged, ScheduleOperate, ScheduleWrites, SnapshotRequest, WanContact,
)
from relevent.actors.supervisor import ChildSpec, Supervisor
from relevent.devices.command import device_command

log = logging.getLogger("relevent.der")


class DerActor(Supervisor):
    level = "der"

    def __init__(self) -> None:
        super().__init__()
        self.subscribers: dict[str, Any] = {}
        self.lan_address: Any = None
        self.outputs: dict[str, tuple] = {}   # kind -> (value, source schedule)
        self.command: DeviceCommand | None = None
        self.measurement: Measurement | None = None
        self._seq = 0
        self._audit: Any = None      # this DER's chain of device commands (relevent/audit/site.py)
        self._measuring: tuple[str, ...] = ()  # controllers (kinds) with a measurement trigger
        self._left: tuple | None = None  # the site is stopping: (site address, request id) to answer

    def runtime_config(self, spec: ChildSpec) -> dict:
        return {"subscribers": dict(self.subscribers)}

    def hosts(self, spec: ChildSpec) -> bool:
        return spec.role == "controller" and self.site["runtime"].get("controller_isolation") == "der"

    @property
    def placed(self) -> str:
        """The member this DER runs on ("": the leader): its controllers go there too."""
        return self.config.get("host", "")

    def placed_here(self, spec: ChildSpec) -> bool:
        return spec.host == self.placed

    def on_configure(self) -> None:
        self.subscribers = dict(self.config.get("subscribers", {}))  # kept by the site across our restarts
        self.lan_address = self.config.get("lan_subscribers", {}).get(self.config.get("lan") or "")
        super().on_configure()

    def child_specs(self) -> list[ChildSpec]:
        der = self.config
        # (Here because every configuration passes here: Configure and Reconfigure alike.)
        self._measuring = tuple(kind for kind in der["functions"] if any(
            local["trigger"] == "measurement" and local["function"] == kind for local in der.get("local", [])))
        return [ChildSpec(kind, "controller", "relevent.actors.controller.ControllerActor",
                          {"der": der["name"], "kind": kind, "schedules": der["schedules"],
                           "values": der.get("values", 100), "rated_power_w": der.get("rated_power_w", 0.0),
                           **({"reserve": der["reserve"][kind]} if kind in der.get("reserve", {}) else {}),
                           "locks": der.get("locks", {}).get(kind, {}),
                           "local": [local for local in der.get("local", []) if local["function"] == kind]},
                          host=self.placed)
                for kind in der["functions"]]

    def on_message(self, message: Any, sender: Any) -> None:
        if isinstance(message, OutputChanged):
            self._output_changed(message)
        elif isinstance(message, Measurement):
            self.measurement = message
            for address in self.subscribers.values():
                self.send(address, message)
            for kind in self._measuring:
                child = self._by_name(kind)
                if child is not None and child.address is not None and child.state in ("starting", "running"):
                    self.send(child.address, message)  # (a restarting one gets the next: no warning each poll)
        elif isinstance(message, WanContact):
            for child in self.running_children():
                if any(local["trigger"] == "no_telecom" for local in child.spec.config.get("local", [])):
                    self.send(child.address, message)
        elif isinstance(message, CommandSubscribe):
            if message.subscriber == self.config.get("lan"):
                self.lan_address = message.reply_to
                if self.command is not None:
                    self._send_command(self.command, changed=[])
        elif isinstance(message, (ScheduleWrites, ScheduleOperate, ForecastRequest)):
            self.send_to_child(message.kind, message)
        elif isinstance(message, LeaveDevices):
            self._leave(message, sender)
        elif isinstance(message, CommandApplied):
            if self._left is not None and self._left[1] is not None and message.seq == self._seq:
                (site, request_id), self._left = self._left, (self._left[0], None)
                self.send(site, DevicesLeft(self.config["name"], request_id, "reserve", message.ok, message.detail))
        elif isinstance(message, SnapshotRequest):
            self.subscribers[message.subscriber] = message.reply_to
            for child in self.running_children():
                self.send(child.address, message)
        else:
            super().on_message(message, sender)

    def _leave(self, msg: LeaveDevices, site: Any) -> None:
        """The site stops for good: leave the device as `at_stop` says (relevent/actors/site.py),
        and send it nothing more (a schedule boundary during the stop must not undo it)."""
        name, how = self.config["name"], self.config.get("at_stop", "keep")
        self._left = (site, None)
        if not self.config.get("lan") or how != "reserve":
            self.send(site, DevicesLeft(name, msg.request_id, "keep" if self.config.get("lan") else "none"))
            return
        if self.lan_address is None:
            self.send(site, DevicesLeft(name, msg.request_id, "reserve", False, "its LAN endpoint is not running"))
            return
        values = {k: self.config["reserve"][k] for k in self.config["functions"]}
        cmd = device_command(values, self.config["rated_power_w"])
        self._seq += 1
        self._left = (site, msg.request_id)
        self.command = DeviceCommand(name, cmd.setpoint_w, cmd.limit_w, cmd.connected,
                                     {k: (v, "at_stop") for k, v in values.items()}, list(values), now_ms(),
                                     self._seq, self.myAddress, ack_to=self.myAddress)
        log.warning("at stop der=%s: reserve setpoint_w=%s limit_w=%s connected=%s", name, cmd.setpoint_w,
                    cmd.limit_w, cmd.connected)
        self._send_command(self.command, changed=list(values))
        self._audit_command("*", "at_stop", cmd)

    def _output_changed(self, msg: OutputChanged) -> None:
        previous = self.outputs.get(msg.kind)
        self.outputs[msg.kind] = (msg.value, msg.source)
        if self._left is not None:
            return  # the site is stopping: the device was left as at_stop says
        if self.command is not None and previous is not None and previous[0] == msg.value:
            self.command = replace(self.command, outputs=dict(self.outputs))
            return  # another schedule, same value (or a restarted controller): the device is right already
        if not self.config.get("lan") or any(k not in self.outputs for k in self.config["functions"]):
            return  # no device, or not every controller has reported since we started
        cmd = device_command({k: v[0] for k, v in self.outputs.items()}, self.config["rated_power_w"])
        self._seq += 1
        self.command = DeviceCommand(self.config["name"], cmd.setpoint_w, cmd.limit_w, cmd.connected,
                                     dict(self.outputs), [msg.kind], msg.at, self._seq, self.myAddress)
        log.info("command der=%s setpoint_w=%s limit_w=%s connected=%s cause=%s/%s delay_ms=%d",
                 self.config["name"], cmd.setpoint_w, cmd.limit_w, cmd.connected, msg.kind, msg.source,
                 now_ms() - msg.at)
        self._send_command(self.command, changed=[msg.kind])
        self._audit_command(msg.kind, msg.source, cmd)

    def _audit_command(self, kind: str, source: str | None, cmd: Any) -> None:
        """Every change of the device command, in the DER's audit chain: what, and which
        schedule caused it (the instruction behind it is in the endpoint's chain)."""
        if not self.site.get("state_dir"):
            return
        try:
            if self._audit is None:
                self._audit = open_chain(self.site, f"der-{self.config['name']}")
            self._audit.append({"kind": "command", "der": self.config["name"], "function": kind,
                                "schedule": source, "action": "command",
                                "detail": {"setpoint_w": cmd.setpoint_w, "limit_w": cmd.limit_w,
                                           "connected": cmd.connected, "seq": self._seq}})
        except Exception as exc:  # noqa: BLE001 - the device is commanded anyway (docs/audit.md)
            log.error("audit der=%s: cannot append: %s", self.config["name"], exc)

    def on_stop(self) -> None:
        if self._audit is not None:
            self._audit.close()
        super().on_stop()

    def _send_command(self, command: DeviceCommand, changed: list) -> None:
        if self.lan_address is not None:
            self.send(self.lan_address, replace(command, changed=changed))

    def detail(self) -> dict:
        info: dict = {"type": self.config.get("type"), "lan": self.config.get("lan"),
                      "starts": self.lifetime.get("starts")}
        if self.command is not None:
            info["command"] = {"setpoint_w": self.command.setpoint_w, "limit_w": self.command.limit_w,
                               "connected": self.command.connected}
        if self.measurement is not None:
            m = self.measurement
            info["measured"] = {"w": m.w, "connected": m.connected, "at": m.at, "quality": m.quality,
                                "state": m.detail}
            if m.voltage_v is not None or m.frequency_hz is not None:
                info["measured"].update(voltage_v=m.voltage_v, frequency_hz=m.frequency_hz)
            if m.contact is not None:
                info["measured"]["contact"] = "closed" if m.contact else "open"
        return info
