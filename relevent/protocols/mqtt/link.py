"""An MQTT connection that stays up: gmqtt on an AsyncioThread's loop.

gmqtt reconnects by itself once connected, but it neither retries a first connection
that failed nor restores subscriptions (docs/runtime-notes.md): we retry the first connection
forever, and subscribe, then call `on_up`, on every connect.  MQTT 3.1.1 works with both
Mosquitto and the embedded amqtt broker, and avoids v5's downgrade round."""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any, Callable

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311

log = logging.getLogger("relevent.mqtt")

_ids = itertools.count(1)


class MqttLink:
    def __init__(self, name: str, host: str, port: int, subscriptions: list[tuple[str, int]],
                 on_message: Callable[[str, bytes], None], on_up: Callable[[], None] | None = None,
                 on_down: Callable[[], None] | None = None, reconnect_delay: float = 1.0) -> None:
        self.name, self.host, self.port = name, host, port
        self.subscriptions = subscriptions
        self._on_message, self._on_up, self._on_down = on_message, on_up, on_down
        self.reconnect_delay = reconnect_delay
        self.client = Client(f"relevent-{name}-{os.getpid()}-{next(_ids)}")
        self.client.set_config({"reconnect_retries": -1, "reconnect_delay": reconnect_delay})
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.up = False
        self.connects = 0
        self.overflows = 0
        self.closing = False   # a clean close: the link going down is expected, not a warning

    async def run(self) -> None:
        """Connect, retrying forever; gmqtt keeps the connection afterwards."""
        while True:
            try:
                await self.client.connect(self.host, self.port, version=MQTTv311, keepalive=30)
                return
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                log.warning("mqtt link=%s broker=%s:%d connect failed: %s; retry in %.1f s", self.name, self.host,
                            self.port, exc, self.reconnect_delay)
                await asyncio.sleep(self.reconnect_delay)

    def _connected(self, client: Any, flags: Any, rc: Any, properties: Any) -> None:
        self.up = True
        self.connects += 1
        log.info("mqtt link=%s broker=%s:%d up (connect #%d)", self.name, self.host, self.port, self.connects)
        for topic, qos in self.subscriptions:
            client.subscribe(topic, qos=qos)
        if self._on_up:
            self._on_up()

    def _disconnected(self, client: Any, packet: Any, exc: Any = None) -> None:
        if self.up:
            log.log(logging.INFO if self.closing else logging.WARNING, "mqtt link=%s broker=%s:%d down",
                    self.name, self.host, self.port)
        self.up = False
        if self._on_down:
            self._on_down()

    def _message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        self._on_message(topic, payload)
        return 0

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """On the loop thread.  False when not connected (the caller re-sends on_up)."""
        if not self.up:
            return False
        try:
            self.client.publish(topic, payload, qos=qos, retain=retain)
            return True
        except OverflowError:
            # More QoS 1 messages in flight than the broker takes: try again shortly.
            self.overflows += 1
            asyncio.get_running_loop().call_later(0.01, self.publish, topic, payload, qos, retain)
            return True

    async def close(self) -> None:
        self.closing = True
        try:
            await self.client.disconnect()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
