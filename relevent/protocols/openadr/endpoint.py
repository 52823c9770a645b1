"""The OpenADR 2.0b VEN's WAN adapter: the site as a Virtual End Node of one VTN.

Invariant: the VEN opts in to an event only once the schedule that follows it is written
and enabled, durable in its controller; every other outcome is an opt-out whose reason is
logged (and shown in `relevent status`).  An opt-in is a promise the VTN settles on, so it
must never run ahead of the controller.  A cancellation disables the schedule that held the
event; a modification rewrites that schedule whole (`mapping.py` decides, this file does
the I/O, docs/openadr.md).

The VEN is openleadr's `OpenADRClient` on an AsyncioThread loop (relevent/protocols/aio.py):
registration (query, create party registration), report registration, event sync, then
polling at the VTN's requested rate (or `poll_interval`).  openleadr registers once and
never again, so this adapter watches it: after `offline_polls` polls without an answer, a
re-registration request from the VTN, or a cancelled registration, the client is closed and
a fresh one registers, with a backoff from `reconnect_delay` to `backoff_max`.  Events the VTN
sends again after that are recognised (`mapping.armed_with`): a schedule already armed with
the same plan is not rewritten.

Threads: every openleadr call and callback runs on the loop; events are handled one at a
time (openleadr awaits each handler); the enable is awaited with `asyncio.wrap_future`, never
blocking the loop.  The actor thread only marks the endpoint ready: once registered, or
READY_WITHOUT_VTN_S after the session synced, so a VTN that is down does not get the endpoint
killed as hung (it keeps trying; `relevent status` shows `registered: false`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from lxml import etree
from openleadr import OpenADRClient, messaging, objects

from relevent.clock import now_ms
from relevent.protocols.aio import AsyncioThread
from relevent.protocols.openadr import mapping
from relevent.scheduling.schedule import Refusal, State
from relevent.wan.adapter import Answer, WanContext, Write
from relevent.wan.session import OPERATE_TIMEOUT_S

log = logging.getLogger("relevent.openadr")
for _noisy in ("openleadr", "apscheduler"):   # openleadr logs every poll at INFO
    logging.getLogger(_noisy).setLevel(logging.WARNING)

# openleadr checks every answer of the VTN with a schema-validating lxml parser that expands
# entities: with lxml 6.0 / libxml2 2.14, one internal entity referenced in an answer
# (`<!DOCTYPE x [<!ENTITY e 'v'>]>...&e;`) segfaults the process, and an entity bomb would
# expand.  The same schema without entity expansion or network access: such an answer is
# refused by the schema check like any other malformed one (tests/chaos/test_fuzz_openadr.py).
messaging.XML_PARSER = etree.XMLParser(schema=messaging.XML_SCHEMA, resolve_entities=False, no_network=True)

READY_WITHOUT_VTN_S = 20.0    # serve (Ready) anyway this long after the session synced
REGISTERED, READY_ANYWAY = "registered", "ready-anyway"
REPORT_MIN = timedelta(seconds=1)      # the sampling periods the VEN offers for its telemetry
REPORT_MAX = timedelta(hours=1)


class _Ven(OpenADRClient):
    """openleadr's client, plus what the endpoint watches: answered polls, the VTN's id,
    and a re-registration request left to the endpoint (which starts a fresh client)."""

    def __init__(self, *args: Any, poll_s: float = 0.0, has_data: Any = lambda: True,
                 on_registered: Any = lambda client: None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_s = poll_s
        self.has_data = has_data
        self.on_registered = on_registered
        self.polls = 0
        self.unanswered = 0
        self.vtn_id = ""
        self.reregister = False

    async def poll(self):
        try:
            answer = await super().poll()
        except TypeError:   # openleadr unpacks an empty HTTP body: the VTN answered nothing
            answer = (None, {})
        self.polls += 1
        self.unanswered = 0 if answer[0] is not None else self.unanswered + 1
        return answer

    async def create_party_registration(self, *args: Any, **kwargs: Any):
        result = await super().create_party_registration(*args, **kwargs)
        if result:
            self.vtn_id = str(result[1].get("vtn_id") or "")
        if self.registration_id:
            if self.poll_s > 0:
                self.poll_frequency = timedelta(seconds=self.poll_s)
            self.on_registered(self)   # before the event sync: its events need the VTN's identity
        return result

    async def create_party_reregistration(self, registration_id: Any = None) -> None:
        self.reregister = True

    async def update_report(self, report_request_id: Any) -> None:
        if self.has_data():   # no measurement yet: no report, rather than an empty one (a VTN may choke)
            await super().update_report(report_request_id)


class OpenAdrEndpoint:
    def __init__(self, ctx: WanContext, config: dict) -> None:
        self.ctx, self.config = ctx, config
        ders = [d["name"] for d in config.get("ders", [])]
        self.der: str = config.get("der") or (ders[0] if ders else "")
        self.kind: str = config.get("function", "MaxPow")
        self.pool: list[str] = [f"FSCH{int(n):02d}" for n in (config.get("schedules") or [1])]
        self.priority: int = int(config.get("priority", 50))
        self.vtn_url: str = config.get("vtn_url", "").rstrip("/")
        self.ven_name: str = config.get("ven_name") or config["name"]
        der = ctx.ders.get(self.der, {})
        self.policy = mapping.Policy.of(config, float(der.get("rated_power_w") or 0.0))
        self.aio: AsyncioThread | None = None
        self.client: _Ven | None = None
        self.who: Any = None
        self.held: dict[str, mapping.Held] = {}     # schedule -> the event it holds (loop thread)
        self.ready = False
        self.registered = False
        self.stats = {"registrations": 0, "events": 0, "opted_in": 0, "opted_out": 0, "ended": 0,
                      "rearmed_unchanged": 0, "reports": 0, "errors": 0, "lost": 0}
        self.last_opt_out: dict | None = None
        self.last_event: dict | None = None

    # -- life cycle (actor thread) ------------------------------------------------------------------
    def start(self) -> None:
        if self.der not in self.ctx.ders:
            raise ValueError(f"openadr endpoint {self.config['name']}: no DER {self.der!r}")
        self.ctx.defer_ready()
        self.aio = AsyncioThread(f"openadr-{self.config['name']}")

    def on_synced(self) -> None:
        """Every controller's state is in: register now (an event must meet mirrors that
        hold the controllers' state, never placeholders)."""
        self.aio.spawn(self._run(), "ven")
        self.aio.loop.call_soon_threadsafe(self.aio.loop.call_later, READY_WITHOUT_VTN_S,
                                           self.aio.post, READY_ANYWAY)

    def on_state(self, state: Any, unacked: list[tuple]) -> None:
        """Nothing: events read the session's view when they need it."""

    def fds(self) -> list[int]:
        return [self.aio.fileno()] if self.aio else []

    def on_ready(self, fds: list[int]) -> None:
        if self.aio is None or self.aio.fileno() not in fds:
            return
        for event in self.aio.events(f"openadr endpoint {self.config['name']}"):
            if event in (REGISTERED, READY_ANYWAY) and not self.ready:
                self.ready = True
                if event == READY_ANYWAY:
                    log.warning("openadr endpoint=%s: not registered with %s after %g s: ready anyway, still "
                                "trying", self.config["name"], self.vtn_url, READY_WITHOUT_VTN_S)
                self.ctx.mark_ready()

    def stop(self) -> None:
        if self.aio is None:
            return
        if self.client is not None:
            self.aio.run_quietly(_close(self.client), 2.0)
        self.aio.stop()

    def detail(self) -> dict:
        c = self.client
        return {"vtn_url": self.vtn_url, "ven_name": self.ven_name, "registered": self.registered,
                "ven_id": c.ven_id if c else None, "vtn_id": c.vtn_id if c else None,
                "registration_id": c.registration_id if c else None,
                "poll_s": c.poll_frequency.total_seconds() if c and c.poll_frequency else None,
                "polls": c.polls if c else 0, "unanswered_polls": c.unanswered if c else 0,
                "target": f"{self.der}/{self.kind}/{','.join(self.pool)}", "priority": self.priority,
                "held": {name: h.event_id for name, h in dict(self.held).items()},
                **self.stats, "last_event": self.last_event, "last_opt_out": self.last_opt_out}

    # -- the loop thread: registration, polling, re-registration ---------------------------------------
    async def _run(self) -> None:
        delay = float(self.config.get("reconnect_delay", 1.0))
        while True:
            client = self._client()
            self.client = client
            try:
                await client.run()
            except Exception:  # noqa: BLE001 - a VTN that answers nonsense: try again later
                log.exception("openadr endpoint=%s: registration with %s failed", self.config["name"], self.vtn_url)
            if client.registration_id:
                delay = float(self.config.get("reconnect_delay", 1.0))
                await self._watch(client)
            if self.registered:
                self.registered = False
                self.ctx.connected(False, self.who)
                self.stats["lost"] += 1
            await _close(client)
            await asyncio.sleep(delay)
            delay = min(delay * 2, float(self.config.get("backoff_max", 30.0)))

    def _client(self) -> _Ven:
        cfg = self.config
        client = _Ven(ven_name=self.ven_name, vtn_url=self.vtn_url, ven_id=cfg.get("ven_id") or None,
                      poll_s=float(cfg.get("poll_interval", 0.0)), has_data=self._has_measurement,
                      on_registered=self._registered, show_fingerprint=False)
        client.add_handler("on_event", self._on_event)
        client.add_handler("on_update_event", self._on_event)
        if cfg.get("report", True):
            client.add_report(callback=self._measured, resource_id=self.der, measurement="power_real", unit="W",
                              report_specifier_id=f"{self.ven_name}-telemetry", r_id=f"{self.der}-w",
                              sampling_rate=objects.SamplingRate(min_period=REPORT_MIN, max_period=REPORT_MAX,
                                                                 on_change=False),
                              report_duration=REPORT_MAX)
        return client

    def _registered(self, client: _Ven) -> None:
        """Registered (or registered again by the same client): who the VTN is, contact."""
        if self.registered:
            self.ctx.connected(False, self.who)
        self.who = self.ctx.who(peer=self.vtn_url, credential=("peer", client.vtn_id) if client.vtn_id else None)
        self.registered = True
        self.stats["registrations"] += 1
        self.ctx.connected(True, self.who)
        log.info("openadr endpoint=%s registered with %s (vtn %s) as ven %s, registration %s, polling every %s",
                 self.config["name"], self.vtn_url, client.vtn_id, client.ven_id, client.registration_id,
                 client.poll_frequency)
        self.aio.post(REGISTERED)

    async def _watch(self, client: _Ven) -> None:
        """Until the VTN is gone (polls unanswered), asks for a new registration, or
        cancelled ours."""
        offline = int(self.config.get("offline_polls", 3))
        while True:
            await asyncio.sleep(min(1.0, client.poll_frequency.total_seconds()))
            why = ("the VTN asked for a new registration" if client.reregister else
                   "the VTN cancelled the registration" if not client.registration_id else
                   f"{client.unanswered} polls without an answer" if client.unanswered >= offline else "")
            if why:
                log.warning("openadr endpoint=%s: %s: registering again with %s", self.config["name"], why,
                            self.vtn_url)
                return

    def _has_measurement(self) -> bool:
        m = self.ctx.measurement(self.der)
        return m is not None and m.w is not None and m.quality == "good"

    def _measured(self) -> list:
        """The telemetry report's value: the DER's measured power (W, generation positive)."""
        m = self.ctx.measurement(self.der)
        if m is None or m.w is None or m.quality != "good":
            return []
        self.stats["reports"] += 1
        return [(datetime.fromtimestamp(m.at / 1000, tz=timezone.utc), float(m.w))]

    # -- the loop thread: events -----------------------------------------------------------------------
    async def _on_event(self, event: dict) -> str:
        """openleadr's on_event and on_update_event: 'optIn' or 'optOut'."""
        self.stats["events"] += 1
        try:
            return await self._handle(event)
        except Exception as exc:  # noqa: BLE001 - one event must not stop the next
            log.exception("openadr endpoint=%s: event failed", self.config["name"])
            self.stats["errors"] += 1
            descriptor = event.get("event_descriptor") or {}
            return self._opt_out(str(descriptor.get("event_id", "")), f"internal: {type(exc).__name__}: {exc}")

    async def _handle(self, event: dict) -> str:
        now = now_ms()
        elsewhere = mapping.addressed_elsewhere(event, self.client.ven_id if self.client else "")
        if elsewhere:   # openleadr hands on every event the VTN sends, whoever it targets
            descriptor = event.get("event_descriptor") or {}
            return self._opt_out(str(descriptor.get("event_id", "")), elsewhere)
        p = mapping.plan(event, self.policy, now)
        self.last_event = {"event_id": p.event_id, "modification": p.modification, "action": p.action,
                           "opt": p.opt, "reason": p.reason, "at": now}
        if p.action == mapping.END:
            if not any(h.event_id == p.event_id for h in self.held.values()):
                self._adopt(p)   # armed before a restart of the endpoint
            await self._release(p.event_id, p.reason)
            self.stats["ended"] += 1
            return p.opt
        if p.action == mapping.NOTHING:
            if p.over and not any(h.event_id == p.event_id for h in self.held.values()):
                log.debug("openadr endpoint=%s event %s: %s", self.config["name"], p.event_id, p.reason)
                return p.opt   # an old event sent again (openleadr answers nothing for it)
            if p.opt == mapping.OPT_OUT:
                await self._release(p.event_id, "opted out of its new version")
                return self._opt_out(p.event_id, p.reason)
            log.info("openadr endpoint=%s event %s: %s", self.config["name"], p.event_id, p.reason)
            return p.opt
        name = self._adopt(p)
        if name is not None:   # armed before a reconnect or a restart: nothing to write
            self.stats["rearmed_unchanged"] += 1
            return self._opt_in(p, name, "already armed")
        schedules = (self.ctx.view(self.der, self.kind) or {"schedules": {}})["schedules"]
        busy = {n for n in self.pool if n not in self.held and _enabled(schedules.get(n))}
        name, why = mapping.choose_schedule(p.event_id, self.pool, self.held, busy, now)
        if name is None:
            return self._opt_out(p.event_id, why)
        writes = [Write(f, i, v) for f, i, v in mapping.schedule_writes(p, self.priority)]
        answer = self.ctx.write(self.der, self.kind, name, writes, who=self.who)
        if answer.ok:
            answer = await self._operate(name, "enable")
        if not answer.ok:
            await self._release(p.event_id, "its new version could not be armed")
            return self._opt_out(p.event_id, f"{self.der}/{self.kind}/{name} refused ({answer.rule}): {answer.reason}")
        self.held[name] = mapping.Held(p.event_id, p.modification, p.end_ms)
        return self._opt_in(p, name, p.reason)

    def _adopt(self, p: mapping.Plan) -> str | None:
        """The schedule of the pool (this event's, or one holding no known event) that is
        already armed with `p`; it then holds the event."""
        schedules = (self.ctx.view(self.der, self.kind) or {"schedules": {}})["schedules"]
        for name in self.pool:
            h = self.held.get(name)
            if (h is None or h.event_id == p.event_id) and mapping.armed_with(p, schedules.get(name), self.priority):
                self.held[name] = mapping.Held(p.event_id, p.modification, p.end_ms)
                return name
        return None

    async def _release(self, event_id: str, why: str) -> None:
        """Disable the schedule that holds `event_id`, if any."""
        for name, h in list(self.held.items()):
            if h.event_id != event_id:
                continue
            answer = await self._operate(name, "disable")
            if answer.ok:
                del self.held[name]
                log.info("openadr endpoint=%s event %s: %s: %s/%s/%s disabled", self.config["name"], event_id, why,
                         self.der, self.kind, name)
            else:
                log.warning("openadr endpoint=%s event %s: %s, but disabling %s/%s/%s was refused (%s): %s",
                            self.config["name"], event_id, why, self.der, self.kind, name, answer.rule, answer.reason)

    async def _operate(self, schedule: str, op: str) -> Answer:
        fut = self.ctx.operate(self.der, self.kind, schedule, op, who=self.who)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), OPERATE_TIMEOUT_S)
        except TimeoutError:
            fut.cancel()  # still queued: never sent; already sent: its controller may apply it
            return Answer.refused("timeout", Refusal.ACCESS_DENIED,
                                  f"controller {self.der}/{self.kind} did not answer the {op} in {OPERATE_TIMEOUT_S:g} s")

    def _opt_in(self, p: mapping.Plan, schedule: str, note: str) -> str:
        self.stats["opted_in"] += 1
        log.info("openadr endpoint=%s opted in to event %s (modification %d): %d x %d s from %d ms into %s/%s/%s "
                 "at priority %d%s", self.config["name"], p.event_id, p.modification, len(p.values), p.step_s,
                 p.start_ms, self.der, self.kind, schedule, self.priority, f" ({note})" if note else "")
        return mapping.OPT_IN

    def _opt_out(self, event_id: str, reason: str) -> str:
        self.stats["opted_out"] += 1
        self.last_opt_out = {"event_id": event_id, "reason": reason, "at": int(time.time() * 1000)}
        log.warning("openadr endpoint=%s opted out of event %s: %s", self.config["name"], event_id, reason)
        return mapping.OPT_OUT


def _enabled(schedule: dict | None) -> bool:
    status = (schedule or {}).get("status") or {}
    return status.get("state") in (int(State.READY), int(State.RUNNING))


async def _close(client: _Ven) -> None:
    """Stop openleadr's jobs and close its HTTP session (its own `stop` assumes a session)."""
    try:
        if client.scheduler.running:
            client.scheduler.shutdown(wait=False)
    except Exception:  # noqa: BLE001 - closing anyway
        pass
    if client.report_queue_task is not None:
        client.report_queue_task.cancel()
    if client.client_session is not None and not client.client_session.closed:
        await client.client_session.close()
