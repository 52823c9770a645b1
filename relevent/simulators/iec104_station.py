"""A simulated IEC 60870-5-104 controlling station (a DSO's or TSO's SCADA) for demos and
commissioning: it connects to the site's `iec104` endpoint (then one clock
synchronisation) and, every `every_s` (the first after `first_s`), sends the next set-point of `values` (C_SE_NC_1 at `setpoint_ioa`),
holds it `hold_s`, then releases it (C_SC_NA_1 at `release_ioa`).

It is c104's client (lib60870-C), not our code path: the endpoint meets a real station's
library here, as tests/test_iec104.py meets raw frames.  Invariant: it never blocks the
actor: commands go out from a thread of its own (c104's `transmit` waits for the
confirmation), and `relevent status` shows what it sent and what came back.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("relevent.sim.iec104")

CONNECT_TIMEOUT_S = 10.0     # a connection not up by then: try again at the next command
COMMAND_TIMEOUT_MS = 5000    # c104 waits this long for ACT_CON
MUTED_S = 1.0                # connected but muted this long: send STARTDT again


class Iec104Station:
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        self.client: Any = None
        self.connection: Any = None
        self.setpoint: Any = None
        self.release: Any = None
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.stats = {"sent": 0, "confirmed": 0, "refused": 0, "released": 0, "clock_sync": None, "last": None}

    def start(self) -> None:
        import c104

        cfg = self.config
        self.client = c104.Client(tick_rate_ms=100, command_timeout_ms=COMMAND_TIMEOUT_MS)
        self.connection = self.client.add_connection(ip=cfg["host"], port=cfg["port"], init=c104.Init.NONE)
        station = self.connection.add_station(common_address=cfg["common_address"])
        self.setpoint = station.add_point(io_address=cfg["setpoint_ioa"], type=c104.Type.C_SE_NC_1)
        self.release = station.add_point(io_address=cfg["release_ioa"], type=c104.Type.C_SC_NA_1)
        self.client.start()
        self.thread = threading.Thread(target=self._run, name=f"sim-{cfg['name']}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        cfg = self.config
        index = 0
        if self.stop_event.wait(cfg["first_s"]):
            return
        # c104's client sometimes stays muted after connecting (no STARTDT; seen against the
        # endpoint, not against a bare c104 server): _wait_open unmutes it.
        if self._wait_open():
            self.stats["clock_sync"] = bool(self.connection.clock_sync(cfg["common_address"]))
        while not self.stop_event.is_set():
            value = float(cfg["values"][index % len(cfg["values"])])
            index += 1
            if self._send(self.setpoint, value, "set-point") and not self.stop_event.wait(cfg["hold_s"]):
                if self._send(self.release, True, "release"):
                    self.stats["released"] += 1
            self.stop_event.wait(max(0.0, cfg["every_s"] - cfg["hold_s"]))

    def _send(self, point: Any, value: Any, what: str) -> bool:
        import c104

        if not self._wait_open():
            log.warning("simulated 104 station=%s: not connected to %s:%d", self.config["name"],
                        self.config["host"], self.config["port"])
            return False
        point.value = value
        self.stats["sent"] += 1
        ok = bool(point.transmit(cause=c104.Cot.ACTIVATION))
        self.stats["confirmed" if ok else "refused"] += 1
        self.stats["last"] = {"what": what, "value": value, "confirmed": ok, "at": time.time()}
        log.info("simulated 104 station=%s: %s %s -> %s", self.config["name"], what, value,
                 "confirmed" if ok else "refused")
        return ok

    def _wait_open(self) -> bool:
        """Wait for the connection to be open, sending STARTDT again if it stays muted: c104's
        client sometimes does not start data transfer by itself after connecting."""
        import c104

        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        muted_since = None
        while not self._open() and time.monotonic() < deadline and not self.stop_event.is_set():
            if self.connection.state == c104.ConnectionState.OPEN_MUTED:
                muted_since = muted_since or time.monotonic()
                if time.monotonic() - muted_since > MUTED_S:
                    self.connection.unmute()
                    muted_since = None
            self.stop_event.wait(0.1)
        return self._open()

    def _open(self) -> bool:
        """Connected and past its start-up (interrogation, clock sync): a command sent while
        the connection is still muted is never answered."""
        import c104

        return bool(self.connection.is_connected and self.connection.state == c104.ConnectionState.OPEN)

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(COMMAND_TIMEOUT_MS / 1000 + 1)
        if self.client is not None:
            self.client.stop()

    def fds(self) -> list[int]:
        return []

    def on_ready(self, fds: list[int]) -> None:
        pass

    def on_message(self, message: Any, sender: Any) -> bool:
        return False

    def detail(self) -> dict:
        connected = bool(self.connection is not None and self.connection.is_connected)
        state = str(self.connection.state).rpartition(".")[2] if self.connection is not None else None
        return {"peer": f"{self.config['host']}:{self.config['port']}", "connected": connected, "state": state,
                **self.stats}
