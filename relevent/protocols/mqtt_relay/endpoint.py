"""MQTT relay LAN endpoint: heat pumps whose two SG-Ready inputs are wired to MQTT relays
(Tasmota, Home Assistant or explicit topics: relevent/protocols/mqtt_relay/relays.py), and
optionally a §14a control box's switch contact read from a topic.

Invariant: the relays show the SG-Ready state the DER's command asks for, as far as the
compressor's and the tariff's rules allow it -- the same decision as the Modbus SG-Ready
profile (relevent/protocols/modbus/profiles.py `SgReadyProfile`), made by the same pure
modules: the command's outputs as a load command (relevent/devices/load.py), the wanted
state and its switching rules (relevent/devices/sgready.py) with wall time, stepped again
when a deferred switch is `due`.  Why it holds:

* every DeviceCommand, and every `due`, steps the rules and publishes what changed since
  the last (re)connect (a relay module may keep its state in flash: no needless writes);
* after every (re)connect, both inputs are published again (a device that rebooted or
  missed messages while the broker was down gets the state in force);
* a relay state message that disagrees with what was commanded makes the endpoint publish
  that input again, at most every RESEND_MIN_S (a relay that refuses must not make a loop);
* the rules' history (`SgState`: the block in force, blocks in the window) lives in this
  endpoint's memory: it survives reconnects to the broker, not a restart of this endpoint
  actor -- like the Modbus device's `keep`, which survives reconnects only.  A restarted
  endpoint starts from state 2 with an empty window (the DER re-sends its command at once).

Measurements go to the DER on every relay state, contact or power message and every
`measure_period` s from the last values seen (relays and contacts report changes only, and a
measurement trigger on "contact" counts its clear_s in samples): w from `power_topic` (else
None), connected = the state the relays show (else the decided one) is not 1 (blocked),
contact = True closed.  While the broker link is down the DER gets quality "invalid".
A command asking for a confirmation (at_stop) is confirmed once handed to the broker."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from relevent.clock import now_ms
from relevent.devices import sgready
from relevent.messages import CommandSubscribe, DeviceCommand, Measurement, Wakeup
from relevent.protocols.aio import AsyncioThread
from relevent.protocols.confirm import Confirmations
from relevent.protocols.mqtt.link import MqttLink, link_detail, security
from relevent.protocols.mqtt_relay import relays

log = logging.getLogger("relevent.mqtt_relay")

RESEND_MIN_S = 1.0   # s: a disagreeing relay is commanded again at most this often


@dataclass
class RelayDer:
    """One heat pump: its topics, its rules, and what is known of it."""
    name: str
    topics: relays.Relays
    pump: sgready.HeatPump
    sg: sgready.SgState = field(default_factory=sgready.SgState)   # the rules' history (module doc)
    command: DeviceCommand | None = None
    decision: sgready.Decision | None = None
    limit_w: float | None = None
    sent: dict = field(default_factory=dict)        # input index -> closed, published since the last connect
    sent_at: dict = field(default_factory=dict)     # input index -> time.monotonic() of that publish
    seen: list = field(default_factory=lambda: [None, None])   # relay states last reported (True closed)
    contact: bool | None = None
    w: float | None = None
    heard: bool = False                               # any message from the device yet
    due_armed: float | None = None                    # the `due` a wakeup is set for (wall-clock s)

    @classmethod
    def from_config(cls, der: dict) -> "RelayDer":
        if not der.get("relays"):   # the topology check asks for them: the DER's slice must carry them
            raise RuntimeError(f"der {der['name']}: no relays in this endpoint's configuration (the DER keys "
                               "a LAN endpoint gets: the registry entry's der_keys must include relays)")
        return cls(der["name"], relays.parse(der.get("relays") or {}), sgready.HeatPump.from_der(der))

    def decide(self, now: float) -> sgready.Decision | None:
        """Step the rules with the current command at wall time `now` (s)."""
        if self.command is None:
            return None
        d, limit_w = self.pump.decide(self.sg, self.command.outputs, now)   # the limit: shown, the relays cannot carry it
        if self.decision is None or d.text() != self.decision.text() or limit_w != self.limit_w:
            log.info("sgready der=%s %s limit_w=%s (mqtt relays)", self.name, d.text(), limit_w)
        self.sg, self.decision, self.limit_w = d.sg, d, limit_w
        return d

    def shown(self) -> int | None:
        """The SG-Ready state the relays report, else the one decided."""
        state = relays.state_of(tuple(self.seen))
        if state is None and self.decision is not None:
            return self.decision.state
        return state

    def text(self) -> str:
        parts = [self.decision.text() if self.decision is not None else "SG-Ready: no command yet"]
        state = relays.state_of(tuple(self.seen))
        if state is not None and self.decision is not None and state != self.decision.state:
            parts.append(f"relays show state {state}")
        if self.contact:
            parts.append("control box contact closed")
        return ", ".join(parts)

    def info(self) -> dict:
        d = self.decision
        out: dict = {"commands": list(self.topics.commands),
                     "relays": {name: None if s is None else ("ON" if s else "OFF")
                                for name, s in zip(relays.INPUTS, self.seen)},
                     "contact": None if self.contact is None else ("closed" if self.contact else "open"),
                     "w": self.w, "state": self.text()}
        if d is not None:
            out["sgready"] = d.summary()
            out["limit_w"] = self.limit_w
        return out


class MqttRelayEndpoint:
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        self.ders = {d["name"]: RelayDer.from_config(d) for d in config.get("ders", [])}
        self.aio: AsyncioThread | None = None
        self.link: MqttLink | None = None
        self.confirmations = Confirmations(lambda to, message: self.actor.send(to, message))
        self.der_address: dict[str, Any] = {}
        self.published = 0
        self.rejected = 0
        self.last_rejection = ""

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        topics = sorted({t for d in self.ders.values() for t in d.topics.subscriptions()})
        self.aio = AsyncioThread(f"mqtt-relay-{cfg['name']}")
        self.link = MqttLink(cfg["name"], cfg["host"], cfg["port"], [(t, cfg["qos"]) for t in topics],
                             on_message=lambda topic, payload: self.aio.post(("message", topic, payload)),
                             on_up=lambda: self.aio.post(("up",)), on_down=lambda: self.aio.post(("down",)),
                             reconnect_delay=cfg["reconnect_delay"], **security(cfg))   # TLS: docs/tls.md
        self.aio.spawn(self.link.run(), "connect")
        self.actor.send(self.actor.parent, CommandSubscribe(self.actor.name, self.actor.myAddress))
        self.actor.wakeupAfter(cfg["measure_period"], Wakeup("measure"))

    def stop(self) -> None:
        if self.aio:
            self.aio.run_quietly(self.link.close(), 1.0)
            self.aio.stop()

    def fds(self) -> list[int]:
        return [self.aio.fileno()] if self.aio else []

    # -- from the actor -------------------------------------------------------------------------
    def on_message(self, message: Any, sender: Any) -> bool:
        if isinstance(message, DeviceCommand):
            der = self.ders.get(message.der)
            if der is None:
                log.warning("endpoint=%s: command for der=%s, which is not on this endpoint", self.config["name"],
                            message.der)
                return True
            der.command = message
            self.der_address[message.der] = message.der_address
            up = bool(self.link and self.link.up)
            self.confirmations.expect(message, up, "broker not connected")
            self._apply(der)
            if up:   # handed to the broker (QoS >= 1: queued before the link closes at stop)
                self.confirmations.applied(der.name, message.seq)
            return True
        if isinstance(message, Wakeup) and message.what == "due":
            der = self.ders.get(message.key)
            if der is not None and der.decision is not None and der.decision.due is not None \
                    and time.time() >= der.decision.due:
                self._apply(der)
            return True
        if isinstance(message, Wakeup) and message.what == "resend":
            der = self.ders.get(message.key)
            if der is not None:
                self._publish_state(der)
            return True
        if isinstance(message, Wakeup) and message.what == "measure":
            if self.link is not None and self.link.up:
                for der in self.ders.values():
                    if der.heard:
                        self._measured(der)
            self.actor.wakeupAfter(self.config["measure_period"], Wakeup("measure"))
            return True
        return False

    def on_wakeup(self, payload: Any) -> bool:
        return self.on_message(payload, None)

    def _apply(self, der: RelayDer) -> None:
        d = der.decide(time.time())
        if d is None:
            return
        if d.due is not None and d.due != der.due_armed:   # a deferred switch, or the block's end: step again
            der.due_armed = d.due                            # then (one wakeup per moment: they cannot be cancelled)
            self.actor.wakeupAfter(max(0.0, d.due - time.time()) + 0.01, Wakeup("due", key=der.name))
        self._publish_state(der)

    def _publish_state(self, der: RelayDer) -> None:
        """Publish the inputs whose value differs from what was published since the last
        connect (after a connect: both)."""
        if der.decision is None or not (self.link and self.link.up):
            return
        now = time.monotonic()
        for i, (topic, closed) in enumerate(zip(der.topics.commands, sgready.CONTACTS[der.decision.state])):
            if der.sent.get(i) == bool(closed):
                continue
            self.published += 1
            der.sent[i], der.sent_at[i] = bool(closed), now
            self.aio.call(self.link.publish, topic, der.topics.payload(closed), self.config["qos"], False)

    # -- from the loop thread ----------------------------------------------------------------------
    def on_ready(self, fds: list[int]) -> None:
        for event in self.aio.events(f"mqtt-relay endpoint {self.config['name']}"):
            if event[0] == "up":
                for der in self.ders.values():
                    der.sent.clear()
                    self._publish_state(der)
            elif event[0] == "down":
                at = now_ms()
                for der in self.ders.values():
                    der.sent.clear()
                    self.confirmations.lost(der.name, "broker not connected")
                    self._send(Measurement(der.name, None, None, at, "invalid", self.config["name"],
                                           f"broker {self.config['host']}:{self.config['port']} not connected"))
            elif event[0] == "message":
                self._message(event[1], event[2])

    def _message(self, topic: str, payload: bytes) -> None:
        for der in self.ders.values():
            what = der.topics.route(topic)
            if what is None:
                continue
            try:
                if what[0] == "state":
                    self._relay_state(der, what[1], der.topics.decode_state(topic, payload))
                elif what[0] == "contact":
                    der.contact = der.topics.decode_contact(topic, payload)
                else:
                    der.w = relays.decode_power(topic, payload)
            except ValueError as exc:
                self._reject(str(exc))
                continue
            der.heard = True
            self._measured(der)

    def _relay_state(self, der: RelayDer, i: int, closed: bool) -> None:
        der.seen[i] = closed
        if der.decision is None or closed == bool(sgready.CONTACTS[der.decision.state][i]):
            return
        # The relay is not as commanded (switched by hand, rebooted, or our message lost):
        # command it again, at most every RESEND_MIN_S.
        der.sent.pop(i, None)
        wait = der.sent_at.get(i, -RESEND_MIN_S) + RESEND_MIN_S - time.monotonic()
        if wait <= 0:
            self._publish_state(der)
        else:
            self.actor.wakeupAfter(wait, Wakeup("resend", key=der.name))

    def _measured(self, der: RelayDer) -> None:
        state = der.shown()
        self._send(Measurement(der.name, der.w, None if state is None else state != sgready.BLOCKED, now_ms(),
                               "good", self.config["name"], der.text(), contact=der.contact))

    def _send(self, m: Measurement) -> None:
        # Straight to the DER once a command told us where it is; through the site before.
        self.actor.send(self.der_address.get(m.der) or self.actor.parent, m)

    def _reject(self, text: str) -> None:
        self.rejected += 1
        self.last_rejection = text
        log.warning("mqtt-relay endpoint=%s rejected payload: %s", self.config["name"], text)

    def detail(self) -> dict:
        link = self.link
        return {"broker": f"{self.config['host']}:{self.config['port']}", "connected": bool(link and link.up),
                "connects": link.connects if link else 0, "published": self.published, "rejected": self.rejected,
                "last_rejection": self.last_rejection,
                "devices": {name: der.info() for name, der in self.ders.items()}, **link_detail(link)}
