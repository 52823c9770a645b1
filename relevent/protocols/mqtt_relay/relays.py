"""SG-Ready over MQTT relays: a heat pump's two SG-Ready inputs wired to two relays that an
MQTT device switches (Tasmota, a Home Assistant MQTT switch, or any device with topics
written in the topology), and, optionally, a §14a control box's switch contact and the
heat pump's power read from topics.  Pure: topic and payload encoding and decoding, no I/O.

Invariant: a relay's command is always one of the two configured payloads (`on` closes
the relay, `off` opens it) on its own command topic, and a state, contact or power
payload either decodes to exactly one value or raises ValueError naming the topic and the
payload: a device that says something unexpected is reported, never guessed at (a
contact taken as closed by mistake would arm a §14a limit).

The topology's `relays` table of a DER (errors name `relays.<key>`):

* style "tasmota": `device` (Tasmota's %topic%); relays `channels` = [1, 2] (input 1, input 2):
  command `cmnd/<device>/POWER<n>`, state `stat/<device>/POWER<n>`, payloads ON / OFF;
  `contact` = n (optional): the control box's contact on `stat/<device>/SWITCH<n>`, ON / OFF
  (1 / 0 taken too: a Tasmota rule publishing %value% sends those).
* style "homeassistant": `prefix`: command `<prefix>/input1/set` and `<prefix>/input2/set`,
  state `<prefix>/input1/state` and `<prefix>/input2/state` (an MQTT switch's command_topic
  and state_topic), `payload_on` / `payload_off` (ON / OFF); `contact_topic` (optional, a
  binary_sensor's state_topic) with `contact_on` / `contact_off` (ON / OFF).
* style "explicit": `input1_command`, `input2_command` (required), `input1_state`,
  `input2_state` (optional: no read-back without them), `payload_on` / `payload_off`
  (commands), `state_on` / `state_off` (states; default the command payloads),
  `contact_topic`, `contact_on` / `contact_off`.
* every style: `power_topic` (optional): the heat pump's power, a plain number of W drawn
  (positive), measured as consumption (negative W, the model's sign).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from relevent.devices import sgready

STYLES = ("tasmota", "homeassistant", "explicit")
INPUTS = ("input1", "input2")   # sgready.CONTACTS order: (input 1, input 2)
COMMON_KEYS = ("style", "power_topic")
STYLE_KEYS = {
    "tasmota": ("device", "channels", "contact"),
    "homeassistant": ("prefix", "payload_on", "payload_off", "contact_topic", "contact_on", "contact_off"),
    "explicit": ("input1_command", "input2_command", "input1_state", "input2_state", "payload_on", "payload_off",
                 "state_on", "state_off", "contact_topic", "contact_on", "contact_off"),
}
TASMOTA_CHANNELS = (1, 2)     # POWER1, POWER2
TASMOTA_MAX_CHANNEL = 32      # Tasmota's POWER<n> / SWITCH<n> go up to 32
ON, OFF = "ON", "OFF"


@dataclass(frozen=True)
class Relays:
    """One DER's topics and payloads."""
    commands: tuple[str, str]                 # command topic of input 1, input 2
    states: tuple[str | None, str | None]     # state topic of each (None: no read-back)
    payload_on: str = ON
    payload_off: str = OFF
    state_on: tuple[str, ...] = (ON,)
    state_off: tuple[str, ...] = (OFF,)
    contact: str | None = None                # the control box's contact (None: none)
    contact_on: tuple[str, ...] = (ON,)       # closed
    contact_off: tuple[str, ...] = (OFF,)     # open
    power: str | None = None                  # W drawn, a plain number

    def publishes(self, state: int) -> list[tuple[str, bytes]]:
        """(topic, payload) for input 1 and input 2 in SG-Ready `state` (sgready.CONTACTS)."""
        return [(topic, self.payload(closed)) for topic, closed in zip(self.commands, sgready.CONTACTS[state])]

    def payload(self, closed: int | bool) -> bytes:
        return (self.payload_on if closed else self.payload_off).encode()

    def subscriptions(self) -> list[str]:
        return [t for t in (*self.states, self.contact, self.power) if t]

    def route(self, topic: str) -> tuple[str, int | None] | None:
        """What a message on `topic` is: ("state", input index), ("contact", None),
        ("power", None), or None (not this DER's)."""
        for i, t in enumerate(self.states):
            if t == topic:
                return "state", i
        if topic == self.contact:
            return "contact", None
        if topic == self.power:
            return "power", None
        return None

    def decode_state(self, topic: str, payload: bytes) -> bool:
        """A relay's state: True closed (on)."""
        return _switch(topic, payload, self.state_on, self.state_off)

    def decode_contact(self, topic: str, payload: bytes) -> bool:
        """The control box's contact: True closed."""
        return _switch(topic, payload, self.contact_on, self.contact_off)


def _switch(topic: str, payload: bytes, on: tuple[str, ...], off: tuple[str, ...]) -> bool:
    text = _text(topic, payload).strip()
    folded = text.casefold()
    if folded in {x.casefold() for x in on}:
        return True
    if folded in {x.casefold() for x in off}:
        return False
    raise ValueError(f"topic {topic}: payload {text!r} is neither {' nor '.join(map(repr, on + off))}")


def _text(topic: str, payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"topic {topic}: payload {payload!r} is not UTF-8 text") from None


def decode_power(topic: str, payload: bytes) -> float:
    """The heat pump's measured power, W in the model's sign (consumption negative), from a
    plain number of W drawn."""
    text = _text(topic, payload).strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"topic {topic}: payload {text!r} is not a number of W") from None
    if not math.isfinite(value):
        raise ValueError(f"topic {topic}: payload {text!r} is not a finite number of W")
    return -abs(value) + 0.0


def state_of(closed: tuple[bool | None, bool | None]) -> int | None:
    """The SG-Ready state two relays show (None while either is unknown)."""
    if None in closed:
        return None
    pair = tuple(1 if c else 0 for c in closed)
    return next(s for s, c in sgready.CONTACTS.items() if c == pair)


def _topic(table: dict, key: str, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise ValueError(f"relays.{key}: missing (a topic)")
        return None
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ValueError(f"relays.{key}: {value!r} is not a topic (a non-empty string without surrounding blanks)")
    if any(c in value for c in "+#\0"):
        raise ValueError(f"relays.{key}: {value!r}: a topic here names one topic, without the wildcards + and #")
    return value


def _payload(table: dict, key: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"relays.{key}: {value!r} is not a payload (a non-empty string)")
    return value


def _channel(table: dict, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= TASMOTA_MAX_CHANNEL:
        raise ValueError(f"relays.{key}: {value!r} is not a Tasmota channel 1..{TASMOTA_MAX_CHANNEL}")
    return value


def parse(table: dict) -> Relays:
    """A DER's `relays` table as topics; ValueError naming the key at fault."""
    if not isinstance(table, dict) or not table:
        raise ValueError("relays: needs a table, e.g. relays = { style = \"tasmota\", device = \"hp-relay\" }")
    style = table.get("style")
    if style not in STYLES:
        raise ValueError(f"relays.style: {style!r} is not one of {', '.join(STYLES)}")
    for key in table:
        if key not in COMMON_KEYS + STYLE_KEYS[style]:
            raise ValueError(f"relays.{key}: unknown for style {style} (use "
                             f"{', '.join(COMMON_KEYS + STYLE_KEYS[style])})")
    power = _topic(table, "power_topic")
    if style == "tasmota":
        device = _topic(table, "device", required=True)
        channels = table.get("channels", list(TASMOTA_CHANNELS))
        if not isinstance(channels, list) or len(channels) != 2:
            raise ValueError(f"relays.channels: {channels!r} is not two relay channels [input 1, input 2]")
        one, two = (_channel(table, "channels", c) for c in channels)
        if one == two:
            raise ValueError(f"relays.channels: {channels!r}: the two inputs need two relays")
        contact = None
        if "contact" in table:
            contact = f"stat/{device}/SWITCH{_channel(table, 'contact', table['contact'])}"
        return Relays((f"cmnd/{device}/POWER{one}", f"cmnd/{device}/POWER{two}"),
                      (f"stat/{device}/POWER{one}", f"stat/{device}/POWER{two}"),
                      contact=contact, contact_on=(ON, "1"), contact_off=(OFF, "0"), power=power)
    on, off = _payload(table, "payload_on", ON), _payload(table, "payload_off", OFF)
    if on == off:
        raise ValueError(f"relays.payload_off: {off!r} is payload_on too: a relay needs two payloads")
    if style == "homeassistant":
        prefix = _topic(table, "prefix", required=True).rstrip("/")
        commands = (f"{prefix}/input1/set", f"{prefix}/input2/set")
        states: tuple = (f"{prefix}/input1/state", f"{prefix}/input2/state")
        state_on, state_off = on, off
    else:
        commands = (_topic(table, "input1_command", required=True), _topic(table, "input2_command", required=True))
        states = (_topic(table, "input1_state"), _topic(table, "input2_state"))
        state_on, state_off = _payload(table, "state_on", on), _payload(table, "state_off", off)
        if state_on == state_off:
            raise ValueError(f"relays.state_off: {state_off!r} is state_on too")
    if commands[0] == commands[1]:
        raise ValueError(f"relays: input 1 and input 2 both command {commands[0]!r}: the two inputs need two relays")
    contact = _topic(table, "contact_topic")
    contact_on, contact_off = _payload(table, "contact_on", ON), _payload(table, "contact_off", OFF)
    if contact_on == contact_off:
        raise ValueError(f"relays.contact_off: {contact_off!r} is contact_on too")
    return Relays(commands, states, on, off, (state_on,), (state_off,), contact, (contact_on,), (contact_off,), power)
