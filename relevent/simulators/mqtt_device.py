"""A device that obeys FledgePower pivot commands and publishes its measurements (GTIM
power, GTIS connection), like the Home Assistant devices of the ReLevENT demo.

It keeps the last ActPow, MaxPow and OnOff commanded for its DER's labels, runs at the
set-point those give (relevent.devices.command, the same rule the DER applies), and
publishes on every change and every `measure_period`."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from relevent.devices.command import device_command
from relevent.protocols.aio import AsyncioThread, Crashed
from relevent.protocols.mqtt import pivot
from relevent.protocols.mqtt.link import MqttLink

log = logging.getLogger("relevent.sim.mqtt")


class MqttDevice:
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        der = next((d for d in config.get("ders", []) if d["name"] == config["der"]), {"name": config["der"]})
        self.kinds = {pivot.label(der, k): k for k in ("ActPow", "MaxPow", "OnOff")}
        self.w_label, self.conn_label = pivot.label(der, "W"), pivot.label(der, "Conn")
        self.outputs: dict[str, Any] = {}
        self.commands = 0
        self.rejected = 0
        self.aio: AsyncioThread | None = None
        self.link: MqttLink | None = None

    def start(self) -> None:
        cfg = self.config
        self.aio = AsyncioThread(f"sim-{cfg['name']}")
        self.link = MqttLink(cfg["name"], cfg["host"], cfg["port"], [(cfg["topic_command"], 1)],
                             on_message=self._command, on_up=self._publish_state, reconnect_delay=0.5)
        self.aio.spawn(self.link.run(), "connect")
        self.aio.spawn(self._measure_forever(), "measure")

    def state(self) -> tuple[float, bool]:
        cmd = device_command(self.outputs, self.config["rated_power_w"])
        return cmd.setpoint_w, cmd.connected

    def _command(self, topic: str, payload: bytes) -> None:
        """On the loop thread."""
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
        self._publish_state()

    def _publish_state(self) -> None:
        w, on = self.state()
        now = time.time_ns() // 1_000_000
        self.link.publish(self.config["topic_measurement"], pivot.measurement(self.w_label, w, now), qos=0)
        self.link.publish(self.config["topic_measurement"], pivot.status(self.conn_label, on, now), qos=0)

    async def _measure_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config["measure_period"])
            self._publish_state()

    def stop(self) -> None:
        if self.aio:
            try:
                self.aio.spawn(self.link.close(), "close").result(1.0)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
            self.aio.stop()

    def fds(self) -> list[int]:
        return [self.aio.fileno()] if self.aio else []

    def on_ready(self, fds: list[int]) -> None:
        for event in self.aio.drain():
            if isinstance(event, Crashed):
                raise RuntimeError(f"simulator {self.config['name']}: {event.what}: {event.error}")

    def on_message(self, message: Any, sender: Any) -> bool:
        return False

    def detail(self) -> dict:
        w, on = self.state()
        return {"der": self.config["der"], "connected_to_broker": bool(self.link and self.link.up),
                "commands": self.commands, "rejected": self.rejected, "w": w, "on": on,
                "outputs": dict(self.outputs)}
