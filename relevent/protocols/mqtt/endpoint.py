"""MQTT LAN endpoint: the DERs whose `lan` names it, over FledgePower pivot JSON.

* every DeviceCommand from a DER: one PivotCommand per control function whose output
  changed, on `topic_command` (ReLevENT's `fledge/south-command`);
* every `schedule_period` s: a PivotSchedule per control function, the controller's 24 h
  forecast, on `topic_schedule`;
* `resend_delay` s after every (re)connect: the current output of every function again, so
  a device that missed commands while the broker was down gets the set-point in force (the
  delay lets devices that reconnect at the same moment subscribe first);
* device measurements (GTIM power, GTIS connection) on `topic_measurement` go to the DER;
  a payload that is not valid pivot is logged with the field at fault and counted.

Every value sent is bounded by the DER's rating first (relevent.devices.command:
`function_values` for commands, `bound_value` for forecast events), and the pivot encoder
refuses anything not finite: a device never gets NaN, +-inf or more than its rating,
whatever a schedule holds (docs: ../shared/spec/security.md section 5).
"""
from __future__ import annotations

import itertools
import logging
from typing import Any

from relevent.clock import now_ms
from relevent.devices.command import bound_value, function_values
from relevent.messages import (
    CommandSubscribe, DeviceCommand, ForecastReply, ForecastRequest, Measurement, Wakeup,
)
from relevent.protocols.aio import AsyncioThread
from relevent.protocols.confirm import Confirmations
from relevent.protocols.mqtt import pivot
from relevent.protocols.mqtt.link import MqttLink, link_detail, security

log = logging.getLogger("relevent.mqtt")

_requests = itertools.count(1 << 30)   # forecast request ids, apart from the runner's


class MqttEndpoint:
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        self.ders = {d["name"]: d for d in config.get("ders", [])}
        self.labels = {pivot.label(d, key): (d["name"], key)
                       for d in self.ders.values() for key in ("W", "Conn")}
        self.aio: AsyncioThread | None = None
        self.confirmations = Confirmations(lambda to, message: self.actor.send(to, message))   # at_stop commands (relevent/protocols/confirm.py)
        self.link: MqttLink | None = None
        self.commands: dict[str, DeviceCommand] = {}
        self.der_address: dict[str, Any] = {}
        self.measured: dict[str, dict] = {}
        self.published = 0
        self._connects = 0
        self.rejected = 0
        self.last_rejection = ""

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        self.aio = AsyncioThread(f"mqtt-{cfg['name']}")
        self.link = MqttLink(cfg["name"], cfg["host"], cfg["port"], [(cfg["topic_measurement"], cfg["qos"])],
                             on_message=lambda topic, payload: self.aio.post(("message", topic, payload)),
                             on_up=lambda: self.aio.post(("up",)), reconnect_delay=cfg["reconnect_delay"],
                             **security(cfg))   # TLS and credentials: docs/tls.md
        self.aio.spawn(self.link.run(), "connect")
        self.actor.send(self.actor.parent, CommandSubscribe(self.actor.name, self.actor.myAddress))
        self.actor.wakeupAfter(cfg["schedule_period"], Wakeup("forecast"))

    def stop(self) -> None:
        if self.aio:
            self.aio.run_quietly(self.link.close(), 1.0)
            self.aio.stop()

    def fds(self) -> list[int]:
        return [self.aio.fileno()] if self.aio else []

    # -- from the actor -------------------------------------------------------------------------
    def on_message(self, message: Any, sender: Any) -> bool:
        if isinstance(message, DeviceCommand):
            if message.der not in self.ders:
                return True
            self.commands[message.der] = message
            self.der_address[message.der] = message.der_address
            # A re-sent command (changed == []) re-publishes every function: the device may be new.
            self._publish_outputs(message, message.changed or list(message.outputs))
            # Pivot has no per-command answer from the device: handed to the broker is all this
            # endpoint can confirm (QoS 1, queued before the link closes at stop).
            self.confirmations.expect(message, bool(self.link and self.link.up), "broker not connected")
            self.confirmations.applied(message.der, message.seq)
            return True
        if isinstance(message, ForecastReply):
            der = self.ders.get(message.der)
            payload = None if der is None else self._schedule_payload(der, message)
            if payload is not None:
                self._publish(self.config["topic_schedule"], payload)
            return True
        if isinstance(message, Wakeup) and message.what == "resend":
            if message.generation == self._connects and self.link.up:
                for cmd in self.commands.values():
                    self._publish_outputs(cmd, list(cmd.outputs))
            return True
        if isinstance(message, Wakeup) and message.what == "forecast":
            self._request_forecasts()
            self.actor.wakeupAfter(self.config["schedule_period"], Wakeup("forecast"))
            return True
        return False

    def on_wakeup(self, payload: Any) -> bool:
        return self.on_message(payload, None)

    def _publish_outputs(self, cmd: DeviceCommand, kinds: list) -> None:
        der = self.ders[cmd.der]
        now = now_ms()
        try:
            # Bounded by the rating, as the DER's own command is: never the raw output.
            values = function_values({k: v[0] for k, v in cmd.outputs.items()}, der.get("rated_power_w"))
        except ValueError as exc:
            log.error("mqtt endpoint=%s der=%s: no command sent: %s", self.config["name"], cmd.der, exc)
            return
        for kind in kinds:
            value = values.get(kind)
            if value is None:  # None: no schedule in force, not even the reserve: nothing to command
                continue
            try:
                payload = pivot.pivot_command(kind, value, pivot.label(der, kind), cmd.at or now)
            except pivot.PivotError as exc:
                log.error("mqtt endpoint=%s der=%s: command not sent: %s", self.config["name"], cmd.der, exc)
                continue
            self._publish(self.config["topic_command"], payload)

    def _schedule_payload(self, der: dict, message: ForecastReply) -> bytes | None:
        """The forecast as a PivotSchedule, each value bounded by the DER's rating."""
        try:
            events = [(ms, bound_value(message.kind, value, der.get("rated_power_w")), source)
                      for ms, value, source in message.events]
            return pivot.pivot_schedule(message.kind, events, pivot.label(der, message.kind))
        except (ValueError, pivot.PivotError) as exc:
            log.error("mqtt endpoint=%s der=%s: schedule not sent: %s", self.config["name"], message.der, exc)
            return None

    def _publish(self, topic: str, payload: bytes) -> None:
        self.published += 1
        self.aio.call(self.link.publish, topic, payload, self.config["qos"], self.config["retain"])

    def _request_forecasts(self) -> None:
        if not (self.link and self.link.up):
            return
        for name, der in self.ders.items():
            for kind in der["functions"]:
                self.actor.send(self.actor.parent, ForecastRequest(name, kind, next(_requests),
                                                                   reply_to=self.actor.myAddress))

    # -- from the loop thread ----------------------------------------------------------------------
    def on_ready(self, fds: list[int]) -> None:
        for event in self.aio.events(f"mqtt endpoint {self.config['name']}"):
            if event[0] == "up":
                self._connects += 1
                self.actor.wakeupAfter(self.config["resend_delay"], Wakeup("resend", generation=self._connects))
                self._request_forecasts()
            elif event[0] == "message":
                self._measurement(event[1], event[2])

    def _measurement(self, topic: str, payload: bytes) -> None:
        try:
            ident, key, value, validity, at = pivot.parse_measurement(payload)
        except pivot.PivotError as exc:
            self._reject(f"topic {topic}: {exc}")
            return
        target = self.labels.get(ident)
        if target is None:
            self._reject(f"topic {topic}: Identifier {ident!r} is no measurement of this endpoint's DERs")
            return
        der, key = target
        state = self.measured.setdefault(der, {"w": None, "connected": None})
        state["w" if key == "W" else "connected"] = value if key == "W" else bool(value)
        at = at or now_ms()
        m = Measurement(der, state["w"], state["connected"], at, validity, self.config["name"])
        self.actor.send(self.der_address.get(der) or self.actor.parent, m)

    def _reject(self, text: str) -> None:
        self.rejected += 1
        self.last_rejection = text
        log.warning("mqtt endpoint=%s rejected payload: %s", self.config["name"], text)

    def detail(self) -> dict:
        link = self.link
        return {"broker": f"{self.config['host']}:{self.config['port']}", "connected": bool(link and link.up),
                "connects": link.connects if link else 0, "published": self.published, "rejected": self.rejected,
                "last_rejection": self.last_rejection, "measured": self.measured, **link_detail(link)}
