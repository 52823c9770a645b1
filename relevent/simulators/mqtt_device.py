"""A device that obeys FledgePower pivot commands and publishes its measurements (GTIM
power, GTIS connection), like the Home Assistant devices of the ReLevENT demo.

It keeps the last ActPow, MaxPow and OnOff commanded for its DER's labels (or, for a
function never commanded since it started, the value in force from a PivotSchedule), runs
at the set-point those give (relevent.devices.command, the same rule the DER applies), and
publishes on every change and every `measure_period`."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from relevent.simulators.shell import AsyncioSimulator
from relevent.clock import now_ms
from relevent.devices.command import device_command
from relevent.protocols.aio import AsyncioThread
from relevent.protocols.mqtt import pivot
from relevent.protocols.mqtt.link import MqttLink

log = logging.getLogger("relevent.sim.mqtt")


class MqttDevice(AsyncioSimulator):
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        der = next((d for d in config.get("ders", []) if d["name"] == config["der"]), {"name": config["der"]})
        self.kinds = {pivot.label(der, k): k for k in ("ActPow", "MaxPow", "OnOff")}
        self.w_label, self.conn_label = pivot.label(der, "W"), pivot.label(der, "Conn")
        self.outputs: dict[str, Any] = {}
        self.commands = 0
        self.synced = 0   # values learnt from a PivotSchedule, not a command
        self.rejected = 0
        self.aio: AsyncioThread | None = None
        self.link: MqttLink | None = None
        self._log = open(config["command_log"], "a", buffering=1) if config.get("command_log") else None

    def start(self) -> None:
        cfg = self.config
        self.aio = AsyncioThread(f"sim-{cfg['name']}")
        self.link = MqttLink(cfg["name"], cfg["host"], cfg["port"],
                             [(cfg["topic_command"], 1), (cfg["topic_schedule"], 0)],
                             on_message=self._message, on_up=self._publish_state, reconnect_delay=0.5)
        self.aio.spawn(self.link.run(), "connect")
        self.aio.spawn(self._measure_forever(), "measure")

    def state(self) -> tuple[float, bool]:
        cmd = device_command(self.outputs, self.config["rated_power_w"])
        return cmd.setpoint_w, cmd.connected

    def _message(self, topic: str, payload: bytes) -> None:
        """On the loop thread.  A device that (re)starts after the last command learns the
        value in force from the next PivotSchedule (its first event is 'now')."""
        if topic == self.config["topic_schedule"]:
            try:
                ident, _cdc, value, _at = pivot.parse_schedule(payload)[0]
            except pivot.PivotError as exc:
                self.rejected += 1
                log.warning("sim=%s rejected schedule: %s", self.config["name"], exc)
                return
            kind = self.kinds.get(ident)
            if kind is not None and kind not in self.outputs:
                self.outputs[kind] = bool(value) if kind == "OnOff" else value
                self.synced += 1
                self._publish_state()
            return
        try:
            ident, _cdc, value, _at = pivot.parse_command(payload)
        except pivot.PivotError as exc:
            self.rejected += 1
            log.warning("sim=%s rejected command: %s", self.config["name"], exc)
            return
        kind = self.kinds.get(ident)
        if kind is None:
            return  # another device's point
        self.commands += 1
        self.outputs[kind] = bool(value) if kind == "OnOff" else value
        if self._log:
            self._log.write(json.dumps({"t_ns": time.time_ns(), "identifier": ident, "value": value}) + "\n")
        self._publish_state()

    def _publish_state(self) -> None:
        w, on = self.state()
        now = now_ms()
        self.link.publish(self.config["topic_measurement"], pivot.measurement(self.w_label, w, now), qos=0)
        self.link.publish(self.config["topic_measurement"], pivot.status(self.conn_label, on, now), qos=0)

    async def _measure_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config["measure_period"])
            self._publish_state()

    async def aclose(self) -> None:
        await self.link.close()

    def detail(self) -> dict:
        w, on = self.state()
        return {"der": self.config["der"], "connected_to_broker": bool(self.link and self.link.up),
                "commands": self.commands, "synced": self.synced, "rejected": self.rejected, "w": w, "on": on,
                "outputs": dict(self.outputs)}
