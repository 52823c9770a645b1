"""An embedded MQTT broker (amqtt, MQTT 3.1.1) so the demo runs with no broker installed.
Production sites use their own broker (Mosquitto); this one is for demos and tests."""
from __future__ import annotations

import logging
import warnings
from typing import Any

from relevent.simulators.shell import AsyncioSimulator
from relevent.protocols.aio import AsyncioThread

log = logging.getLogger("relevent.sim.broker")


class MqttBroker(AsyncioSimulator):
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        self.aio: AsyncioThread | None = None
        self.broker: Any = None

    def start(self) -> None:
        self.aio = AsyncioThread(f"broker-{self.config['name']}")
        self.aio.spawn(self._serve(), "serve").result(10.0)  # Ready only once it listens
        log.info("embedded broker=%s listening %s:%d", self.config["name"], self.config["address"],
                 self.config["port"])

    async def _serve(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from amqtt.broker import Broker
            for noisy in ("amqtt", "transitions"):
                logging.getLogger(noisy).setLevel(logging.ERROR)
            self.broker = Broker({"listeners": {"default": {"type": "tcp",
                                                            "bind": f"{self.config['address']}:{self.config['port']}"}},
                                  "auth": {"allow-anonymous": True}, "topic-check": {"enabled": False}})
            await self.broker.start()

    async def aclose(self) -> None:
        if self.broker is not None:
            await self.broker.shutdown()

    def detail(self) -> dict:
        return {"listen": f"{self.config['address']}:{self.config['port']}", "kind": "amqtt"}
