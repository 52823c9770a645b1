"""A simulated OpenADR 2.0b VTN (openleadr's OpenADRServer) for demos and commissioning: it
registers every VEN that asks, asks for its telemetry, and issues it an event every
`event_every_s` (the first `first_event_s` after the VEN registered), each `lead_s` ahead,
with one interval of `interval_s` per entry of `values`.

Invariant: the VTN forgets nothing a VEN needs while it runs, and knows nothing after a
restart: a VEN it does not know (its registration lost with the process) is asked to
register again (openleadr's `ven_lookup`), which is what a VEN must survive from a real VTN.
Events that are over are marked completed, so they are sent one last time and dropped
instead of piling up in every distribution.

It is openleadr's own server, not our code path: the VEN adapter meets the library's VTN
here exactly as in tests/test_openadr.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

from openleadr import OpenADRServer, utils

from relevent.simulators.shell import AsyncioSimulator
from relevent.protocols.aio import AsyncioThread

log = logging.getLogger("relevent.sim.openadr")
for _noisy in ("openleadr", "apscheduler"):   # openleadr logs every message at INFO
    logging.getLogger(_noisy).setLevel(logging.WARNING)

SIGNALS = {"LOAD_CONTROL": ("LOAD_CONTROL", "x-loadControlCapacity"), "SIMPLE": ("SIMPLE", "level")}
PATH = "/OpenADR2/Simple/2.0b"


class OpenAdrVtn(AsyncioSimulator):
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        self.aio: AsyncioThread | None = None
        self.server: OpenADRServer | None = None
        self.vens: dict[str, dict] = {}     # ven_id -> what the VTN knows of it (loop thread)

    def start(self) -> None:
        self.aio = AsyncioThread(f"vtn-{self.config['name']}")
        self.aio.spawn(self._serve(), "serve").result(10.0)   # Ready only once it listens
        self.aio.spawn(self._issue_forever(), "events")
        log.info("simulated VTN=%s listening http://%s:%d%s", self.config["name"], self.config["address"],
                 self.config["port"], PATH)

    async def _serve(self) -> None:
        cfg = self.config
        self.server = OpenADRServer(vtn_id=cfg["vtn_id"], http_host=cfg["address"], http_port=cfg["port"],
                                    requested_poll_freq=timedelta(seconds=cfg["poll_s"]), ven_lookup=self._lookup,
                                    show_fingerprint=False)
        self.server.add_handler("on_create_party_registration", self._register)
        self.server.add_handler("on_register_report", self._offer)
        with contextlib.redirect_stdout(io.StringIO()):   # openleadr prints a banner
            await self.server.run()

    # -- openleadr's callbacks (loop thread) ------------------------------------------------------------
    def _lookup(self, ven_id: str) -> dict | None:
        ven = self.vens.get(ven_id)
        return None if ven is None else {"ven_id": ven_id, "ven_name": ven["name"],
                                         "registration_id": ven["registration_id"], "fingerprint": None}

    def _register(self, info: dict) -> tuple[str, str]:
        ven_id = info.get("ven_id") or f"ven-{info['ven_name']}"
        ven = self.vens.setdefault(ven_id, {"name": info["ven_name"], "registrations": 0, "events": 0, "opt_in": 0,
                                            "opt_out": 0, "reports": 0, "last_report_w": None,
                                            "next_event": 0.0})
        ven["registration_id"] = uuid.uuid4().hex
        ven["registrations"] += 1
        ven["next_event"] = time.monotonic() + self.config["first_event_s"]
        log.info("simulated VTN=%s registered ven %s (%s)", self.config["name"], ven_id, info["ven_name"])
        return ven_id, ven["registration_id"]

    def _offer(self, ven_id: str, resource_id: str, measurement: str, unit: str, scale: str,
               min_sampling_interval: timedelta, max_sampling_interval: timedelta) -> tuple | None:
        wanted = timedelta(seconds=self.config["report_s"])
        wanted = min(max(wanted, min_sampling_interval), max_sampling_interval)
        return partial(self._report, ven_id), wanted

    def _report(self, ven_id: str, values: list) -> None:
        ven = self.vens.get(ven_id)
        if ven is not None and values:
            ven["reports"] += len(values)
            ven["last_report_w"] = values[-1][1]

    def _opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        ven = self.vens.get(ven_id)
        if ven is not None:
            ven["opt_in" if opt_type == "optIn" else "opt_out"] += 1
        log.info("simulated VTN=%s: ven %s answered %s to event %s", self.config["name"], ven_id, opt_type, event_id)

    # -- events -------------------------------------------------------------------------------------------
    async def _issue_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for ven_id, ven in list(self.vens.items()):
                if now >= ven["next_event"]:
                    ven["next_event"] = now + self.config["event_every_s"]
                    self._issue(ven_id)

    def _issue(self, ven_id: str) -> None:
        cfg = self.config
        now = datetime.now(timezone.utc)
        for event in self.server.events.get(ven_id, []):   # sent once more as completed, then dropped
            period = utils.getmember(event, "active_period")
            if utils.getmember(period, "dtstart") + utils.getmember(period, "duration") < now:
                utils.setmember(event, "event_descriptor.event_status", "completed")
        start = now.replace(microsecond=0) + timedelta(seconds=cfg["lead_s"])
        step = timedelta(seconds=cfg["interval_s"])
        name, kind = SIGNALS[cfg["signal"]]
        intervals = [{"dtstart": start + i * step, "duration": step, "signal_payload": float(v)}
                     for i, v in enumerate(cfg["values"])]
        event_id = self.server.add_event(ven_id=ven_id, signal_name=name, signal_type=kind, intervals=intervals,
                                         callback=self._opt)
        self.vens[ven_id]["events"] += 1
        log.info("simulated VTN=%s: event %s for ven %s: %s from %s, %d x %d s", self.config["name"], event_id,
                 ven_id, name, start.isoformat(), len(intervals), cfg["interval_s"])

    # -- the actor's side -----------------------------------------------------------------------------------
    async def aclose(self) -> None:
        if self.server is not None and getattr(self.server, "app_runner", None) is not None:
            await self.server.stop()

    def detail(self) -> dict:
        vens = {k: {key: v for key, v in ven.items() if key not in ("next_event", "registration_id")}
                for k, ven in dict(self.vens).items()}
        return {"listen": f"http://{self.config['address']}:{self.config['port']}{PATH}",
                "vtn_id": self.config["vtn_id"], "vens": vens}
