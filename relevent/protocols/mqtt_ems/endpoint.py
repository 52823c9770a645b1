"""The local EMS's WAN adapter: ReLevENT's HEDERA schedule requests over MQTT, answered.

The EMS publishes a request (`hedera.py`) on `topic` of the site broker; each one becomes
one schedule of one control function of one DER (`der`, `function`, FSCH`schedule`,
SchdPrio `priority`): one `WanContext.write` of the whole schedule (validated all or nothing
by the control session: the start must lie in the future), then an enable, then a reply on
`reply_topic`: accepted, or refused with the rule and the reason.  A request replaces the
previous one.  A payload that cannot be read gets a refusal naming the field.

Threads: gmqtt runs on an AsyncioThread's loop (`relevent/protocols/aio.py`, the LAN MQTT
endpoint's `MqttLink`, which subscribes again after every reconnect).  Requests are handled
one at a time, in arrival order, by one coroutine on that loop; the enable is awaited
(`asyncio.wrap_future`, with the session's timeout), never blocking the loop.  The actor
thread only marks the endpoint ready: once the broker acknowledged the subscription, or
READY_WITHOUT_BROKER_S after the session synced, so a broker that is down does not get the
endpoint killed as hung every startup_timeout (it keeps reconnecting; `relevent status`
shows `connected: false`).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from datetime import datetime, timezone
from typing import Any

from relevent.protocols.aio import AsyncioThread
from relevent.protocols.mqtt import link as mqtt_link
from relevent.protocols.mqtt_ems import hedera
from relevent.scheduling.schedule import Refusal
from relevent.wan.adapter import Answer, WanContext, Write
from relevent.wan.session import OPERATE_TIMEOUT_S

log = logging.getLogger("relevent.mqtt_ems")

QOS = 1
READY_WITHOUT_BROKER_S = 20.0   # serve (Ready) anyway this long after the session synced
MAX_PENDING = 64                # requests waiting their turn; more are refused ("busy")
MAX_UNSENT_REPLIES = 100        # replies kept while the broker is away, sent on reconnect
SUBSCRIBED, READY_ANYWAY = "subscribed", "ready-anyway"


class MqttEmsEndpoint:
    def __init__(self, ctx: WanContext, config: dict) -> None:
        self.ctx, self.config = ctx, config
        ders = [d["name"] for d in config.get("ders", [])]
        self.der: str = config.get("der") or (ders[0] if ders else "")
        self.kind: str = config.get("function", "MaxPow")
        self.schedule: str = f"FSCH{int(config.get('schedule', 1)):02d}"
        self.priority: int = int(config.get("priority", 20))
        self.topic: str = config.get("topic", "hedera-requests")
        self.reply_topic: str = config.get("reply_topic", "hedera-replies")
        self.aio: AsyncioThread | None = None
        self.link: mqtt_link.MqttLink | None = None
        self.queue: asyncio.Queue | None = None          # (payload, received at ms); the loop's
        self.unsent: collections.deque = collections.deque(maxlen=MAX_UNSENT_REPLIES)
        self.ready = False
        self.subscribed = 0
        self.stats = {"received": 0, "accepted": 0, "malformed": 0, "refused_by_rules": 0, "busy": 0,
                      "errors": 0, "replies_sent": 0, "replies_lost": 0}
        self.last_accepted: dict | None = None
        self.last_refusal: dict | None = None

    # -- life cycle (actor thread) ------------------------------------------------------------------
    def start(self) -> None:
        if self.der not in self.ctx.ders:
            raise ValueError(f"mqtt-ems endpoint {self.config['name']}: no DER {self.der!r}")
        self.security = mqtt_link.security(self.config)   # TLS and credentials (docs/tls.md); files read now
        self.ctx.defer_ready()
        self.aio = AsyncioThread(f"mqtt-ems-{self.config['name']}")

    def on_synced(self) -> None:
        """Every controller's state is in: connect and subscribe now (a request must meet
        mirrors that hold the controllers' state, never placeholders)."""
        cfg = self.config
        self.queue = asyncio.Queue()
        self.link = mqtt_link.MqttLink(f"ems-{cfg['name']}", cfg.get("host", "127.0.0.1"), cfg.get("port", 1883),
                                       [(self.topic, QOS)], on_message=self._received, on_up=self._up,
                                       reconnect_delay=cfg.get("reconnect_delay", 1.0), **self.security)
        self.link.client.on_subscribe = self._suback
        self.aio.spawn(self._serve(), "serve")
        self.aio.spawn(self.link.run(), "connect")
        self.aio.loop.call_soon_threadsafe(self.aio.loop.call_later, READY_WITHOUT_BROKER_S,
                                           self.aio.post, READY_ANYWAY)

    def on_state(self, state: Any, unacked: list[tuple]) -> None:
        """Nothing: requests read the session's view when they need it."""

    def fds(self) -> list[int]:
        return [self.aio.fileno()] if self.aio else []

    def on_ready(self, fds: list[int]) -> None:
        if self.aio is None or self.aio.fileno() not in fds:
            return
        for event in self.aio.events(f"mqtt-ems endpoint {self.config['name']}"):
            if event in (SUBSCRIBED, READY_ANYWAY) and not self.ready:
                self.ready = True
                if event == READY_ANYWAY:
                    log.warning("mqtt-ems endpoint=%s: no subscription on %s:%s after %g s: ready anyway, "
                                "still trying", self.config["name"], self.config.get("host"),
                                self.config.get("port"), READY_WITHOUT_BROKER_S)
                self.ctx.mark_ready()

    def stop(self) -> None:
        if self.aio is None:
            return
        if self.link is not None:
            self.aio.run_quietly(self.link.close(), 1.0)
        self.aio.stop()

    def detail(self) -> dict:
        link = self.link
        return {"broker": f"{self.config.get('host')}:{self.config.get('port')}",
                "connected": bool(link and link.up), "connects": link.connects if link else 0,
                "subscribed": self.subscribed, "topic": self.topic, "reply_topic": self.reply_topic,
                "target": f"{self.der}/{self.kind}/{self.schedule}", "priority": self.priority,
                "pending": self.queue.qsize() if self.queue is not None else 0,
                **self.stats, "last_accepted": self.last_accepted, "last_refusal": self.last_refusal,
                **mqtt_link.link_detail(link)}

    # -- the loop thread --------------------------------------------------------------------------------
    def _received(self, topic: str, payload: bytes) -> None:
        self.stats["received"] += 1
        self.ctx.contact()
        if self.queue.qsize() >= MAX_PENDING:
            self.stats["busy"] += 1
            self._answer(False, hedera.empty_echo(), rule="busy", code=int(Refusal.ACCESS_DENIED),
                         reason=f"{MAX_PENDING} requests are waiting their turn: send again later")
            return
        self.queue.put_nowait(payload)

    def _suback(self, client: Any, mid: int, qos: Any, properties: Any) -> None:
        granted = qos if isinstance(qos, (list, tuple)) else [qos]
        if any(q is None or q >= 128 for q in granted):
            log.error("mqtt-ems endpoint=%s: the broker refused the subscription to %r", self.config["name"],
                      self.topic)
            return
        self.subscribed += 1
        log.info("mqtt-ems endpoint=%s subscribed to %r on %s:%s", self.config["name"], self.topic,
                 self.config.get("host"), self.config.get("port"))
        self.aio.post(SUBSCRIBED)

    def _up(self) -> None:
        """(Re)connected: the replies the broker did not take go out now, in order."""
        while self.unsent and self.link.up:
            self._publish(self.unsent.popleft())

    async def _serve(self) -> None:
        while True:
            payload = await self.queue.get()
            try:
                await self._handle(payload)
            except Exception as exc:  # one request must not stop the next
                log.exception("mqtt-ems endpoint=%s: request failed", self.config["name"])
                self.stats["errors"] += 1
                self._answer(False, hedera.empty_echo(), rule="internal", code=int(Refusal.ACCESS_DENIED),
                             reason=f"{type(exc).__name__}: {exc}")

    async def _handle(self, payload: bytes) -> None:
        try:
            request = hedera.decode(payload)
        except hedera.HederaError as exc:
            self.stats["malformed"] += 1
            self._answer(False, exc.echo, rule="payload", field=exc.field, reason=str(exc),
                         code=int(Refusal.VALUE_INVALID), correlation_id=exc.correlation_id)
            return
        echo = request.echo()
        writes = [Write(f, i, v) for f, i, v in hedera.schedule_writes(request, self.priority)]
        answer = self.ctx.write(self.der, self.kind, self.schedule, writes)
        reason = answer.reason
        if answer.ok:
            answer = await self._enable()
            reason = answer.reason
        elif answer.rule == "value":  # the session names the StrTm slot; the EMS knows its start
            reason = f"start {_iso(request.start_ms)}: {answer.reason}"
        if not answer.ok:
            self.stats["refused_by_rules"] += 1
            self._answer(False, echo, rule=answer.rule, reason=reason,
                         code=None if answer.refusal is None else int(answer.refusal), ena_err=answer.ena_err,
                         correlation_id=request.correlation_id)
            return
        self.stats["accepted"] += 1
        self.last_accepted = {**echo, "at": int(time.time() * 1000),
                              "correlationId": request.correlation_id}
        log.info("mqtt-ems endpoint=%s party=%s accepted %d values from %d ms every %d s into %s/%s/%s",
                 self.config["name"], self.ctx.party, len(request.values), request.start_ms, request.interval_s,
                 self.der, self.kind, self.schedule)
        self._answer(True, echo, correlation_id=request.correlation_id)

    async def _enable(self) -> Answer:
        fut = self.ctx.operate(self.der, self.kind, self.schedule, "enable")
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), OPERATE_TIMEOUT_S)
        except TimeoutError:
            fut.cancel()  # still queued: never sent; already sent: its controller may apply it
            return Answer.refused("timeout", Refusal.ACCESS_DENIED,
                                  f"controller {self.der}/{self.kind} did not answer the enable in "
                                  f"{OPERATE_TIMEOUT_S:g} s: the schedule's settings may be written and the enable "
                                  "may still take effect; send the request again")

    def _answer(self, accepted: bool, echo: dict, *, rule: str = "", reason: str = "", code: int | None = None,
                field: str | None = None, ena_err: int | None = None, correlation_id: Any = None) -> None:
        if not accepted:
            self.last_refusal = {"rule": rule, "field": field, "reason": reason, "at": int(time.time() * 1000)}
            log.warning("mqtt-ems endpoint=%s refused rule=%s%s: %s", self.config["name"], rule,
                        f" field={field}" if field else "", reason)
        self._publish(hedera.reply(accepted, der=self.der, function=self.kind, schedule=self.schedule, echo=echo,
                                   rule=rule, reason=reason, code=code, field=field, ena_err=ena_err,
                                   correlation_id=correlation_id))

    def _publish(self, payload: bytes) -> None:
        if self.link.publish(self.reply_topic, payload, QOS):
            self.stats["replies_sent"] += 1
            return
        if len(self.unsent) == self.unsent.maxlen:
            self.stats["replies_lost"] += 1
        self.unsent.append(payload)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
