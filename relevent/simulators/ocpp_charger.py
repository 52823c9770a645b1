"""An EV charger speaking OCPP 1.6J or 2.0.1 to the site's OCPP endpoint, with an EV
plugged in that would draw `rated_power_w`.

As a real charger: it connects to `url`/<charge point id> with the version's subprotocol,
sends BootNotification, heartbeats at the interval the CSMS gives, reports its connector's
status, starts a transaction (StartTransaction in 1.6, TransactionEvent Started in 2.0.1),
obeys SetChargingProfile (the profile of the highest stack level per purpose; the charger
draws min(ChargePointMax / ChargingStationMax, TxProfile or else TxDefault, what the EV
wants)), ramps at `ramp_w_per_s`, and reports its power and energy every `meter_period_s`
(MeterValues in 1.6, TransactionEvent Updated in 2.0.1).  With `power_samples = false` it
reports only its energy register (`Energy.Active.Import.Register`, OCPP's default
measurand), as many chargers do; the site derives the power from it.  Each meter value's
timestamp (whole ms, as chargers send) is the instant its register was read.  When the
site goes away it reconnects with back-off (0.1 s doubling to 5 s) and boots again; its
transaction goes on.

Security profiles (docs/ocpp.md): `password_file` sends HTTP Basic auth (user = the charge
point id, password = the file's first line; profiles 1 and 2); a `wss://` url connects over
TLS, verifying the site's certificate against `ca` (else the system's CAs) and its name
against the url's host, and offers `cert`/`key` as the charger's certificate (profile 3).
A refused connection (401, 403, a failed handshake) is retried with the same back-off and
its reason kept in `last_error`.

`reject_profiles = true` answers every SetChargingProfile Rejected (tests).  Every profile
obeyed is appended to `command_log` (JSON lines, with the time in ns it arrived):
benchmarks and tests read it from outside the site."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import websockets
from ocpp.exceptions import OCPPError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from relevent.simulators.shell import AsyncioSimulator
from relevent.protocols.aio import AsyncioThread
from relevent.protocols.ocpp.endpoint import SOCKET_LOG, WIRE_LOG
from relevent.security.tls import TlsError, read_password

log = logging.getLogger("relevent.sim.ocpp")

ID_TAG = "RELEVENT-EV"
PURPOSE = {"ChargingStationMaxProfile": "ChargePointMaxProfile"}   # 2.0.1 name -> the 1.6 one used here


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def iso_ms(ms: int) -> str:
    """ms since the epoch -> `2030-01-01T06:00:00.123Z`."""
    return datetime.fromtimestamp(ms // 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class ElectricVehicle:
    """The charger's output: what its profiles allow of what the EV wants, ramping.
    Times are seconds (time.monotonic()) passed in."""

    def __init__(self, rated_w: float, ramp_w_per_s: float) -> None:
        self.rated, self.ramp = float(rated_w), float(ramp_w_per_s)
        self.profiles: dict[tuple[str, int], float] = {}   # (purpose, stack level) -> W
        self.charging = False
        self._p0, self._t0, self._target = 0.0, 0.0, 0.0
        self.energy_wh = 0.0
        self._e_at: float | None = None

    def limit_w(self) -> float:
        def top(purpose: str) -> float | None:
            levels = [(level, w) for (p, level), w in list(self.profiles.items()) if p == purpose]
            return max(levels)[1] if levels else None
        cap = top("ChargePointMaxProfile")
        tx = top("TxProfile")
        tx = tx if tx is not None else top("TxDefaultProfile")
        return min(x for x in (cap, tx, self.rated) if x is not None)

    def power(self, now: float) -> float:
        if self.ramp <= 0:
            return self._target
        step = self.ramp * max(0.0, now - self._t0)
        delta = self._target - self._p0
        return self._target if abs(delta) <= step else self._p0 + (step if delta > 0 else -step)

    def update(self, now: float) -> None:
        """Call after any change of profiles or of charging."""
        self.meter(now)
        self._p0, self._t0 = self.power(now), now
        self._target = max(0.0, self.limit_w()) if self.charging else 0.0

    def meter(self, now: float) -> float:
        """The power now, and the energy register brought up to date (never backwards: a
        `now` before the last one adds nothing)."""
        w = self.power(now)
        if self._e_at is None or now > self._e_at:
            if self._e_at is not None:
                self.energy_wh += w * (now - self._e_at) / 3600.0
            self._e_at = now
        return w


def meter_value(version: str, stamp: str, w: float, energy_wh: float, power_samples: bool = True) -> dict:
    """One MeterValue as the ocpp package takes it (snake_case): the energy register (Wh, to
    the mWh), and the power drawn (W) unless `power_samples` is false."""
    if version == "1.6":
        samples = [{"value": f"{w:.1f}", "measurand": "Power.Active.Import", "unit": "W", "context": "Sample.Periodic"},
                   {"value": f"{energy_wh:.3f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh",
                    "context": "Sample.Periodic"}]
    else:
        samples = [{"value": round(w, 1), "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"},
                    "context": "Sample.Periodic"},
                   {"value": round(energy_wh, 3), "measurand": "Energy.Active.Import.Register",
                    "unit_of_measure": {"unit": "Wh"}, "context": "Sample.Periodic"}]
    return {"timestamp": stamp, "sampled_value": samples if power_samples else samples[1:]}


def profile_limit_w(schedule: dict, voltage_v: float, now: float) -> float:
    """The limit (W) in force at `now` (s since the epoch) of one charging schedule
    (snake_case, as the ocpp package hands it): the period with the latest start at or
    before now (the first one when the schedule has not started)."""
    start = _parse_time(schedule.get("start_schedule"))
    elapsed = max(0.0, now - start) if start is not None else 0.0
    periods = sorted(schedule["charging_schedule_period"], key=lambda p: p["start_period"])
    period = periods[0]
    for p in periods:
        if p["start_period"] <= elapsed:
            period = p
    limit = float(period["limit"])
    if schedule["charging_rate_unit"] == "A":
        limit *= period.get("number_phases") or 3
        limit *= voltage_v
    return limit


class _Charger16(ChargePoint16):
    def __init__(self, sim: "OcppCharger", ws: Any) -> None:
        super().__init__(sim.cp_id, ws, response_timeout=10, logger=WIRE_LOG)
        self.sim = sim

    @on("SetChargingProfile")
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict, **kw: Any) -> Any:
        p = cs_charging_profiles
        status = self.sim.obey(p["charging_profile_purpose"], p["stack_level"], p["charging_schedule"],
                               {"connectorId": connector_id, "chargingProfileId": p["charging_profile_id"]})
        return result16.SetChargingProfile(status=status)

    @on("ClearChargingProfile")
    def on_clear_charging_profile(self, **kw: Any) -> Any:
        self.sim.clear()
        return result16.ClearChargingProfile(status="Accepted")


class _Charger201(ChargePoint201):
    def __init__(self, sim: "OcppCharger", ws: Any) -> None:
        super().__init__(sim.cp_id, ws, response_timeout=10, logger=WIRE_LOG)
        self.sim = sim

    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict, **kw: Any) -> Any:
        p = charging_profile
        purpose = PURPOSE.get(p["charging_profile_purpose"], p["charging_profile_purpose"])
        status = self.sim.obey(purpose, p["stack_level"], p["charging_schedule"][0],
                               {"evseId": evse_id, "id": p["id"]})
        return result201.SetChargingProfile(status=status)

    @on("ClearChargingProfile")
    def on_clear_charging_profile(self, **kw: Any) -> Any:
        self.sim.clear()
        return result201.ClearChargingProfile(status="Accepted")


class OcppCharger(AsyncioSimulator):
    def __init__(self, actor: Any, config: dict) -> None:
        self.actor, self.config = actor, config
        self.cp_id = config["charge_point_id"]
        self.version = config["ocpp_version"]
        self.url = config["url"].rstrip("/") + "/" + self.cp_id
        self.ev = ElectricVehicle(config["rated_power_w"], config["ramp_w_per_s"])
        self.aio: AsyncioThread | None = None
        self.up = False
        self.connects = 0
        self.boots = 0
        self.profiles = 0
        self.rejected = 0
        self.meter_values = 0
        self.last_error = ""
        self.transaction: Any = None
        self._seq = 0
        self._log = open(config["command_log"], "a", buffering=1) if config.get("command_log") else None

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.aio = AsyncioThread(f"sim-{self.config['name']}")
        self.aio.spawn(self.run(), "charger")


    # -- the charger -------------------------------------------------------------------------------
    def obey(self, purpose: str, stack_level: int, schedule: dict, where: dict) -> str:
        """On the loop thread, for a SetChargingProfile: Accepted (and applied) or Rejected."""
        t_ns = time.time_ns()
        if self.config["reject_profiles"]:
            self.rejected += 1
            return "Rejected"
        limit_w = profile_limit_w(schedule, self.config["voltage_v"], time.time())
        self.ev.profiles[(purpose, stack_level)] = limit_w
        self.ev.update(time.monotonic())
        self.profiles += 1
        if self._log:
            period = schedule["charging_schedule_period"][0]
            self._log.write(json.dumps({"t_ns": t_ns, "charge_point_id": self.cp_id, "purpose": purpose,
                                        "stack_level": stack_level, "limit": float(period["limit"]),
                                        "unit": schedule["charging_rate_unit"], "limit_w": limit_w, **where}) + "\n")
        return "Accepted"

    def clear(self) -> None:
        self.ev.profiles.clear()
        self.ev.update(time.monotonic())

    def security(self) -> dict:
        """The websockets.connect arguments of the charger's security profile: its TLS
        context (wss://) and its Basic credentials (password_file).  Files are read at each
        connection, like a charger whose password the CSMS changed."""
        cfg, out = self.config, {}
        if self.url.startswith("wss://"):
            ctx = ssl.create_default_context(cafile=cfg.get("ca") or None)
            if cfg.get("cert"):
                ctx.load_cert_chain(cfg["cert"], cfg.get("key") or None)
            out["ssl"] = ctx
        if cfg.get("password_file"):
            token = base64.b64encode(f"{self.cp_id}:{read_password(cfg['password_file'])}".encode()).decode()
            out["additional_headers"] = {"Authorization": f"Basic {token}"}
        return out

    async def run(self) -> None:
        delay = 0.1
        subprotocol = "ocpp1.6" if self.version == "1.6" else "ocpp2.0.1"
        while True:
            try:
                async with websockets.connect(self.url, subprotocols=[subprotocol], open_timeout=5,
                                              logger=SOCKET_LOG, **self.security()) as ws:
                    cp = (_Charger16 if self.version == "1.6" else _Charger201)(self, ws)
                    self.up = True
                    self.connects += 1
                    # The reader routes what the site sends; the session talks.  Whichever ends
                    # first (a closed socket, an unanswered call) ends the connection.
                    tasks = {asyncio.ensure_future(cp.start()), asyncio.ensure_future(self._session(cp))}
                    try:
                        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for task in tasks:
                            task.cancel()
                    for task in done:
                        task.result()
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed,
                    websockets.InvalidURI, OCPPError, TlsError) as exc:
                text = f"{type(exc).__name__}: {exc}"
                if text != self.last_error:
                    log.warning("sim=%s charge point=%s: %s; reconnecting", self.config["name"], self.cp_id, text)
                self.last_error = text
            if self.up:
                delay = 0.1   # it was connected: come back quickly
            self.up = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _session(self, cp: Any) -> None:
        v16 = self.version == "1.6"
        while True:
            boot = await cp.call(call16.BootNotification(charge_point_model="relevent-sim",
                                                         charge_point_vendor="ReLevENT") if v16 else
                                 call201.BootNotification(charging_station={"model": "relevent-sim",
                                                                            "vendor_name": "ReLevENT"},
                                                          reason="PowerUp"))
            if boot is not None and boot.status == "Accepted":
                break
            await asyncio.sleep(boot.interval if boot is not None and boot.interval else 5)
        self.boots += 1
        self.last_error = ""
        log.info("sim=%s charge point=%s OCPP %s booted at %s", self.config["name"], self.cp_id, self.version, self.url)
        heartbeat = max(1, int(boot.interval))
        await self._status(cp, "Available")
        if self.transaction is None:
            await self._start_transaction(cp)
        await self._status(cp, "Charging" if v16 else "Occupied")
        now = time.monotonic()
        next_beat, next_meter = now + heartbeat, now
        while True:
            now = time.monotonic()
            if now >= next_meter:
                await self._meter(cp)
                next_meter = max(next_meter + self.config["meter_period_s"], now)
            if now >= next_beat:
                await cp.call(call16.Heartbeat() if v16 else call201.Heartbeat())
                next_beat = now + heartbeat
            await asyncio.sleep(max(0.0, min(next_meter, next_beat) - time.monotonic()))

    async def _status(self, cp: Any, status: str) -> None:
        if self.version == "1.6":
            await cp.call(call16.StatusNotification(connector_id=1, error_code="NoError", status=status,
                                                    timestamp=utc_now()))
        else:
            await cp.call(call201.StatusNotification(timestamp=utc_now(), connector_status=status, evse_id=1,
                                                     connector_id=1))

    async def _start_transaction(self, cp: Any) -> None:
        self.ev.meter(time.monotonic())
        if self.version == "1.6":
            result = await cp.call(call16.StartTransaction(connector_id=1, id_tag=ID_TAG,
                                                           meter_start=int(self.ev.energy_wh), timestamp=utc_now()))
            self.transaction = result.transaction_id if result is not None else 0
        else:
            self.transaction = str(uuid.uuid4())
            await cp.call(call201.TransactionEvent(
                event_type="Started", timestamp=utc_now(), trigger_reason="CablePluggedIn", seq_no=self._next_seq(),
                transaction_info={"transaction_id": self.transaction, "charging_state": "Charging"},
                evse={"id": 1, "connector_id": 1}, id_token={"id_token": ID_TAG, "type": "Central"}))
        self.ev.charging = True
        self.ev.update(time.monotonic())

    async def _meter(self, cp: Any) -> None:
        # The register is read at the instant the timestamp names (whole ms): a CSMS that
        # derives power from register deltas over the timestamps gets it right to the mW.
        wall, mono = time.time(), time.monotonic()
        at_ms = int(wall * 1000)
        w = self.ev.meter(mono - (wall - at_ms / 1000))
        stamp = iso_ms(at_ms)
        values = [meter_value(self.version, stamp, w, self.ev.energy_wh, self.config.get("power_samples", True))]
        if self.version == "1.6":
            await cp.call(call16.MeterValues(connector_id=1, transaction_id=self.transaction, meter_value=values))
        else:
            await cp.call(call201.TransactionEvent(
                event_type="Updated", timestamp=stamp, trigger_reason="MeterValuePeriodic", seq_no=self._next_seq(),
                transaction_info={"transaction_id": self.transaction, "charging_state": "Charging"},
                meter_value=values))
        self.meter_values += 1

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq - 1

    def detail(self) -> dict:
        now = time.monotonic()
        return {"der": self.cp_id, "charge_point_id": self.cp_id, "url": self.url, "ocpp": self.version,
                "connected": self.up, "connects": self.connects, "boots": self.boots, "transaction": self.transaction,
                "commands": self.profiles, "rejected": self.rejected, "limit_w": self.ev.limit_w(),
                "w": round(self.ev.power(now), 1), "energy_wh": round(self.ev.energy_wh, 1),
                "meter_values": self.meter_values, "power_samples": self.config.get("power_samples", True),
                "last_error": self.last_error,
                "tls": self.url.startswith("wss://"), "certificate": bool(self.config.get("cert")),
                "password": bool(self.config.get("password_file"))}
