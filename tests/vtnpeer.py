"""openleadr's own VTN (OpenADRServer) on an event loop thread of the test process, as the
peer of the site's OpenADR VEN: it registers VENs, issues and cancels events, hears the
opt-in/opt-out and the telemetry reports.  The VTN is the library's, never our code path.

For the fuzzers and outage tests it can also stand in for a hostile or broken VTN without
leaving openleadr: an aiohttp middleware in front of openleadr's handlers answers the VEN's
next polls with bodies the test queued (an oadrDistributeEvent rendered by openleadr's own
message templates from any dict, without the checks openleadr's VTN runs before it sends,
then optionally edited as text; or plain garbage) and
records the VEN's oadrCreatedEvent answers to such events itself (openleadr's VTN would
refuse answers to events it never issued)."""
from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web
from openleadr import OpenADRServer, messaging, utils

logging.getLogger("openleadr").setLevel(logging.WARNING)   # it logs every message at INFO

PATH = "/OpenADR2/Simple/2.0b"


class Vtn:
    """What the VTN saw, as lists; `start` again after `stop` is a restarted VTN (it knows no VEN)."""

    def __init__(self, port: int, vtn_id: str = "TEST_VTN", poll_s: float = 1.0) -> None:
        self.port, self.vtn_id, self.poll_s = port, vtn_id, poll_s
        self.url = f"http://127.0.0.1:{port}{PATH}"
        self.registrations: list[tuple[float, str, str]] = []   # (monotonic, ven_name, ven_id)
        self.opts: list[tuple[float, str, str]] = []            # (monotonic, event_id, opt_type)
        self.reports: list[tuple[datetime, float]] = []
        self.polls: list[float] = []                             # monotonic time of every oadrPoll
        self.known: dict[str, str] = {}                          # ven_id -> registration id
        self.hostile: deque[bytes] = deque()                     # bodies for the next polls
        self.hostile_ids: set[str] = set()
        self.created: list[tuple[float, list]] = []                # every oadrCreatedEvent, as (id, opt)s
        self.server: OpenADRServer | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> "Vtn":
        async def serve() -> None:
            self.known = {}
            self.server = OpenADRServer(vtn_id=self.vtn_id, http_host="127.0.0.1", http_port=self.port,
                                        requested_poll_freq=timedelta(seconds=self.poll_s), show_fingerprint=False,
                                        ven_lookup=self._lookup)
            self.server.app.middlewares.append(self._middleware)
            self.server.add_handler("on_create_party_registration", self._register)
            self.server.add_handler("on_register_report", self._offer)
            with contextlib.redirect_stdout(io.StringIO()):   # openleadr prints a banner
                await self.server.run()
        self._call(serve())
        return self

    def stop(self) -> None:
        if self.server is not None:
            self._call(self.server.stop())
            self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    # -- openleadr's callbacks (loop thread) ----------------------------------------------------------
    def _lookup(self, ven_id: str) -> dict | None:
        reg = self.known.get(ven_id)
        return None if reg is None else {"ven_id": ven_id, "registration_id": reg}

    def _register(self, info: dict) -> tuple[str, str]:
        ven_id = f"ven-{info['ven_name']}"
        self.known[ven_id] = f"reg-{len(self.registrations) + 1}"
        self.registrations.append((time.monotonic(), info["ven_name"], ven_id))
        return ven_id, self.known[ven_id]

    def _offer(self, ven_id, resource_id, measurement, unit, scale, min_sampling_interval, max_sampling_interval):
        return self.reports.extend, timedelta(seconds=1)

    def _opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts.append((time.monotonic(), event_id, opt_type))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        service = request.path.rsplit("/", 1)[-1]
        if service == "OadrPoll":
            self.polls.append(time.monotonic())
            if self.hostile:
                return web.Response(body=self.hostile.popleft(), content_type="application/xml")
        if service == "EiEvent" and self.hostile_ids:
            body = await request.read()
            try:
                kind, payload = messaging.parse_message(body)
            except Exception:  # noqa: BLE001 - not ours to judge: openleadr's handler answers it
                kind, payload = "", {}
            answers = (payload.get("event_responses") or []) if kind == "oadrCreatedEvent" else []
            self.created.append((time.monotonic(), [(a.get("event_id"), a.get("opt_type")) for a in answers]))
            if answers and all(a.get("event_id") in self.hostile_ids for a in answers):
                for a in answers:
                    self.opts.append((time.monotonic(), a["event_id"], a["opt_type"]))
                return web.Response(text="", content_type="application/xml")
        return await handler(request)

    # -- the test's side ------------------------------------------------------------------------------
    def event(self, ven_id: str, payloads, *, lead_s: float = 3.0, length_s: int = 2,
              kind=("LOAD_CONTROL", "x-loadControlCapacity")) -> tuple[str, int]:
        """Issue an event starting `lead_s` from now on a whole second: (event id, start ms)."""
        return self.event_steps(ven_id, [(v, length_s) for v in payloads], lead_s=lead_s, kind=kind)

    def event_steps(self, ven_id: str, steps: list[tuple[float, int]], *, lead_s: float = 3.0,
                    kind=("LOAD_CONTROL", "x-loadControlCapacity")) -> tuple[str, int]:
        """The same with intervals of their own lengths: (value, seconds) each."""
        start = datetime.fromtimestamp(int(time.time() + lead_s) + 1, tz=timezone.utc)
        intervals, t = [], start
        for value, seconds in steps:
            intervals.append({"dtstart": t, "duration": timedelta(seconds=seconds), "signal_payload": float(value)})
            t += timedelta(seconds=seconds)

        async def add() -> str:
            return self.server.add_event(ven_id=ven_id, signal_name=kind[0], signal_type=kind[1],
                                         intervals=intervals, callback=self._opt)
        return self._call(add()), int(start.timestamp() * 1000)

    def cancel(self, ven_id: str, event_id: str) -> None:
        async def cancel() -> None:
            self.server.cancel_event(ven_id, event_id)
        self._call(cancel())

    def opt_of(self, event_id: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, eid, opt in list(self.opts):
                if eid == event_id:
                    return opt
            time.sleep(0.02)
        raise AssertionError(f"no opt for event {event_id} within {timeout} s; opts: {self.opts[-5:]}")

    def wait_registrations(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.registrations) < count:
            time.sleep(0.05)
        assert len(self.registrations) >= count, self.registrations

    # -- a hostile VTN ---------------------------------------------------------------------------------
    def serve_raw(self, body: bytes) -> None:
        """Answer one of the next polls with `body`, whatever it is."""
        self.hostile.append(body)

    def distribute(self, events: list[dict], edit=None) -> bytes:
        """An oadrDistributeEvent of `events` (dicts in openleadr's layout), rendered by
        openleadr's own templates; `edit(text) -> text` changes it before it goes out."""
        self.hostile_ids.update(str(e.get("event_descriptor", {}).get("event_id")) for e in events)
        payload = {"request_id": utils.generate_id(), "vtn_id": self.vtn_id, "events": events,
                   "response": {"response_code": 200, "response_description": "OK", "request_id": utils.generate_id()}}
        # openleadr's create_message without its preflight checks (a hostile VTN runs none)
        signed = utils.flatten_xml(messaging.TEMPLATES.get_template("oadrDistributeEvent.xml").render(**payload))
        text = messaging.TEMPLATES.get_template("oadrPayload.xml").render(template="oadrDistributeEvent",
                                                                            signature=None, signed_object=signed)
        return (edit(text) if edit else text).encode()


def event_dict(event_id: str, ven_id: str, intervals: list[tuple[datetime, timedelta, Any]], *,
               signal=("LOAD_CONTROL", "x-loadControlCapacity"), modification: int = 0, status: str = "far",
               active: tuple[datetime, timedelta] | None = None) -> dict:
    """One event in openleadr's dict layout, with whatever values it is given: (start,
    duration, payload) per interval; the active period spans them unless given."""
    if active is None and intervals:
        active = (intervals[0][0], intervals[-1][0] + intervals[-1][1] - intervals[0][0])
    now = datetime.now(timezone.utc)
    return {
        "event_descriptor": {"event_id": event_id, "modification_number": modification, "market_context": "oadr://fuzz",
                             "event_status": status, "created_date_time": now, "modification_date_time": now,
                             "priority": 0, "test_event": False, "vtn_comment": None},
        "event_signals": [{"intervals": [{"dtstart": s, "duration": d, "signal_payload": v, "uid": i}
                                         for i, (s, d, v) in enumerate(intervals)],
                           "signal_name": signal[0], "signal_type": signal[1], "signal_id": f"{event_id}-s",
                           "current_value": None, "targets": None, "targets_by_type": None, "measurement": None}],
        "targets": [{"ven_id": ven_id}], "targets_by_type": {"ven_id": [ven_id]},
        "active_period": {"dtstart": active[0] if active else None, "duration": active[1] if active else None,
                          "tolerance": None, "notification_period": None, "ramp_up_period": None,
                          "recovery_period": None},
        "response_required": "always",
    }
