"""One Modbus device's connection, as an asyncio task of the Modbus endpoint.

Forever: connect, discover, write the current command, then write every new command at
once, refresh it before the device's reversion timeout, and poll measurements.  Any I/O
problem closes the connection and retries with exponential backoff; the command is
re-written after every reconnect (a rebooted device forgot it).  Each device has its own
task and connection, so a device that hangs only delays itself."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from relevent.clock import now_ms
from relevent.protocols.modbus.address import DeviceAddress
from relevent.protocols.modbus.profiles import PROFILES, DeviceError, Io

log = logging.getLogger("relevent.modbus")

IO_ERRORS = (ModbusException, DeviceError, OSError, asyncio.TimeoutError, ConnectionError)


@dataclass
class DeviceEvent:
    """Posted to the endpoint actor: a measurement, an applied command or a link change."""
    der: str
    what: str            # measured | applied | link
    at: int              # ms
    w: float | None = None
    connected: bool | None = None
    seq: int = 0
    up: bool = False
    text: str = ""
    voltage_v: float | None = None      # measured: where the profile reads them (SunSpec 101-103)
    frequency_hz: float | None = None
    info: dict | None = None            # measured: the profile's own facts for the endpoint's detail (SG-Ready)
    contact: bool | None = None         # measured: a control box's switch contact (SG-Ready maps with `contact`)


class ModbusDevice:
    def __init__(self, der: dict, where: DeviceAddress, config: dict, post: Callable[[DeviceEvent], None]) -> None:
        self.der, self.where, self.config, self.post = der, where, config, post
        self.command: Any = None
        self._wake = asyncio.Event()
        self.up = False
        self._last_text = ""
        self.keep: dict = {}   # what a profile keeps across connections (SG-Ready: its rules' history)

    def set_command(self, command: Any) -> None:
        """Called on the loop thread."""
        self.command = command
        self._wake.set()

    async def run(self) -> None:
        delay = 0.1
        while True:
            client = AsyncModbusTcpClient(self.where.host, port=self.where.port, timeout=self.config["timeout"],
                                          retries=0, reconnect_delay=0)
            try:
                if not await client.connect():
                    raise ConnectionError(f"cannot connect to {self.where}")
                profile = PROFILES[self.der["profile"]](Io(client, self.where.unit), self.der,
                                                        self.config["reversion_s"])
                if hasattr(profile, "resume"):
                    profile.resume(self.keep)
                found = await profile.discover()
                self._link(True, found)
                delay = 0.1
                await self._serve(profile)
            except IO_ERRORS as exc:
                self._link(False, f"{type(exc).__name__}: {exc}")
            finally:
                client.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config["backoff_max"])

    def _link(self, up: bool, text: str) -> None:
        # Log every connect, and a failure when it is new (not each retry of the same one).
        if up or up != self.up or text != self._last_text:
            (log.info if up else log.warning)("device der=%s at=%s link=%s %s", self.der["name"], self.where,
                                              "up" if up else "down", text)
        self.up, self._last_text = up, text
        self.post(DeviceEvent(self.der["name"], "link", now_ms(), up=up, text=text))

    async def _serve(self, profile: Any) -> None:
        applied = None          # seq written on this connection: none yet, so the current one goes out
        refresh = self.config["reversion_s"] / 3.0 if self.config["reversion_s"] else 10.0
        next_write = next_poll = time.monotonic()
        while True:
            now = time.monotonic()
            cmd = self.command
            due = getattr(profile, "due", None)   # wall-clock s: a switch the profile deferred (SG-Ready)
            if cmd is not None and (cmd.seq != applied or now >= next_write or (due is not None and time.time() >= due)):
                await profile.apply(cmd)
                if cmd.seq != applied:
                    self.post(DeviceEvent(self.der["name"], "applied", now_ms(), seq=cmd.seq))
                applied, next_write = cmd.seq, time.monotonic() + refresh
            if now >= next_poll:
                w, conn = await profile.measure()
                self.post(DeviceEvent(self.der["name"], "measured", now_ms(), w=w, connected=conn, text=profile.state,
                                      voltage_v=getattr(profile, "voltage_v", None),
                                      frequency_hz=getattr(profile, "frequency_hz", None),
                                      info=getattr(profile, "info", None),
                                      contact=getattr(profile, "contact", None)))
                next_poll = max(next_poll + self.config["poll_period"], now)
            wait = min(next_poll, next_write if cmd is not None else next_poll) - time.monotonic()
            due = getattr(profile, "due", None)
            if cmd is not None and due is not None:
                wait = min(wait, due - time.time())
            self._wake.clear()
            if self.command is not None and self.command.seq != applied:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, wait))
            except asyncio.TimeoutError:
                pass

