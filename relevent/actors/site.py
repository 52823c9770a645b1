"""The root of a site's tree: simulated devices, WAN endpoints, DERs, then LAN endpoints.

Its configuration is the whole normalised topology; `Reconfigure` with an edited topology
starts, stops or restarts only the children whose slice changed.

On a multi-host site a DER (`host`), a LAN endpoint or a simulator (`runs_on`) may run on a
member host (docs/deploy.md "Placing DERs on member hosts"): created there through thespian's
convention (ChildSpec host), supervised from here like any other child; WAN endpoints and
the site's own children stay on the leader.

Stopping for good (`Shutdown` from the runner: SIGTERM, `systemctl stop`) first leaves
every device as its DER's `at_stop` says: "keep" (the last command stays until the
device's own reversion timer, e.g. SunSpec RvrtTms) or "reserve" (the DER's reserve values
are sent, and confirmed by the device, before any LAN endpoint stops).  Only then are the
children stopped in reverse start order.  Why here and not in each DER's stop: the LAN
endpoints start after the DERs, so they stop before them; and a DER also stops for a
restart or a reload, when its device must not be sent anywhere.  Bounded: a device that
does not confirm within AT_STOP_TIMEOUT_S is logged and the stop goes on.

Memory: every child process is forked from this one (thespian's multiprocTCPBase), and a
page it shares with us stays shared until either side writes to it.  So the modules a DER
runs (its controllers' too) are imported here, before the forks, and what this process
holds is frozen out of the garbage collector's reach before its children start (what it
saves a DER: bench/README.md, "Scale").
"""
from __future__ import annotations

import gc
import logging
import os
import time
from typing import Any

from relevent.messages import (
    CommandSubscribe, DevicesLeft, ForecastReply, ForecastRequest, Hello, InjectFault, LeaveDevices, Measurement,
    Pong, ScheduleOperate, ScheduleWrites, Shutdown, SnapshotRequest, WanContact, Wakeup,
)
from relevent.actors.crl import crl_child
from relevent.actors.der_group import endpoint_serves, groups_of, no_telecom, reserve_at_stop
from relevent.actors.registration import registration_child
from relevent.actors.supervisor import ChildSpec, Supervisor
from relevent.runtime.control import alive_path
# Loaded here, before the DER processes are forked from this one, so that each DER shares
# these modules' pages instead of importing them again into memory of its own (module
# docstring, "Memory").
import relevent.actors.controller  # noqa: E402,F401
import relevent.actors.der  # noqa: E402,F401
import relevent.actors.der_group  # noqa: E402,F401


log = logging.getLogger("relevent.site")

AT_STOP_TIMEOUT_S = 3.0   # devices get this long to confirm their at_stop command


def site_settings(data: dict) -> dict:
    """What every actor of the site needs besides its own slice of the topology."""
    return {"name": data["site"]["name"], "state_dir": data["site"]["state_dir"],
            "runtime": data["runtime"], "supervision": data["supervision"]}


DEVICE_KEYS = ("name", "functions", "address", "profile", "rated_power_w", "points", "registers", "type",
               "guaranteed_min_w", "sgready")


def device_slice(der: dict, extra: tuple[str, ...] = ()) -> dict:
    """What a LAN endpoint or simulator needs of a DER (DEVICE_KEYS, and the `extra` keys
    its protocol declares: ProtocolSpec.der_keys): a change elsewhere (schedules, locks,
    ...) must not restart the endpoint."""
    return {k: der[k] for k in (*DEVICE_KEYS, *extra) if k in der}


def site_children(data: dict, groups: dict[str, str] | None = None,
                  group_hosts: dict[str, str] | None = None) -> list[ChildSpec]:
    """The site's children in start order.  `groups` (DER -> group) and `group_hosts`
    (group -> host): the running site's, kept on a reload (der_group.groups_of)."""
    # here: the registry imports the topology package
    from relevent.protocols.registry import PROTOCOLS, served_ders
    # Simulated devices and embedded brokers first: endpoints find them up.  Each runs on its
    # `runs_on` host ("": the leader); an embedded broker with its LAN endpoint, whose
    # `host` (the broker's address) is then that host's.
    specs = [ChildSpec(sim["name"], "simulator", "relevent.actors.simulator.SimulatorActor",
                       {**sim, "ders": [device_slice(d) for d in data["der"] if d["name"] == sim.get("der")]},
                       host=sim.get("runs_on", ""))
              for sim in data.get("simulator", [])]
    specs += [ChildSpec(f"{ep['name']}-broker", "simulator", "relevent.actors.simulator.SimulatorActor",
                        {"name": f"{ep['name']}-broker", "protocol": "mqtt-broker", "address": ep["host"],
                         "port": ep["port"]}, host=ep.get("runs_on", ""))
              for ep in data["lan"] if ep.get("embedded_broker")]
    # The site's registration with its DSO (docs/registration.md), once its service may be up.
    registration = registration_child(data)
    if registration is not None:
        specs.append(ChildSpec("registration", "registration", "relevent.actors.registration.RegistrationActor",
                               registration))
    # The site's one CRL fetcher (docs/tls.md "CRL URLs"), before the endpoints that read its copies.
    crl = crl_child(data)
    if crl is not None:
        specs.append(ChildSpec("crl", "crl", "relevent.actors.crl.CrlActor", crl))
    # WAN endpoints serve the site's DERs (the MMS model is built from them).
    specs += [ChildSpec(ep["name"], "wan", "relevent.actors.endpoint.EndpointActor",
                        {**ep, "ders": served_ders(ep, data["der"]), "site": data["site"]["name"],
                         "party_tables": data["party"]})
              for ep in data["wan"]]
    # A DER with a member host runs there (its controllers with it), a LAN endpoint on its
    # runs_on; WAN endpoints and the site's own children stay on the leader.  With
    # ders_per_process > 1 the DERs share processes, a group of them in each
    # (relevent/actors/der_group.py), a group on one host.
    per_process = data["runtime"].get("ders_per_process", 1)
    if per_process > 1:
        wan = [{"name": ep["name"], "ders": ep.get("ders", [])} for ep in data["wan"]]
        specs += [ChildSpec(name, "group", "relevent.actors.der_group.DerGroupActor",
                            {"ders": members, "wan": wan}, supervisor=True, host=host)
                  for name, host, members in groups_of(data["der"], per_process, groups, group_hosts)]
    else:
        specs += [ChildSpec(der["name"], "der", "relevent.actors.der.DerActor", der, supervisor=True,
                            host=der.get("host", ""))
                  for der in data["der"]]
    specs += [ChildSpec(ep["name"], "lan", "relevent.actors.endpoint.EndpointActor",
                        {**ep, "ders": [device_slice(d, PROTOCOLS[ep["protocol"]].der_keys)
                                        for d in data["der"] if d["lan"] == ep["name"]]},
                        host=ep.get("runs_on", ""))
              for ep in data["lan"]]
    return specs


class SiteSupervisor(Supervisor):
    level = "site"

    def __init__(self) -> None:
        super().__init__()
        self.subscribers: dict[str, Any] = {}  # endpoint name -> address, handed to (re)started DERs
        self.lan_subscribers: dict[str, Any] = {}  # LAN endpoint name -> address, likewise
        self._reported: dict | None = None  # the summary the runner last heard (see _report_change)
        self._leaving: set[str] | None = None  # DERs leaving their device at stop, not answered yet
        self._leave_started = 0.0
        self._group_of: dict[str, str] = {}   # DER -> the group it runs in (ders_per_process > 1)
        self._group_hosts: dict[str, str] = {}   # group -> the host it runs on

    def runtime_config(self, spec: ChildSpec) -> dict:
        if spec.role == "group":   # the group hands each of its DERs its part (DerGroupActor)
            return {"subscribers": dict(self.subscribers), "lan_subscribers": dict(self.lan_subscribers)}
        if spec.role != "der":
            return {}
        return {"subscribers": {name: address for name, address in self.subscribers.items()
                                if self._serves(name, spec.name)},
                "lan_subscribers": dict(self.lan_subscribers)}

    def _serves(self, endpoint: str, der: str) -> bool:
        return endpoint_serves(self.config.get("wan", []), endpoint, der)

    def child_specs(self) -> list[ChildSpec]:
        specs = site_children(self.config, self._group_of, self._group_hosts)
        self._group_of = {der["name"]: spec.name for spec in specs if spec.role == "group"
                          for der in spec.config["ders"]}
        self._group_hosts = {spec.name: spec.host for spec in specs if spec.role == "group"}
        return specs

    def _carriers(self) -> list[tuple[Any, list[dict]]]:
        """Each running child that carries DERs' messages, with those DERs' topology slices:
        a DER, or a group of them (ders_per_process > 1)."""
        return [(c, [c.spec.config] if c.spec.role == "der" else c.spec.config["ders"])
                for c in self.running_children() if c.spec.role in ("der", "group")]

    def _to_der(self, der: str, message: Any) -> bool:
        """Send to a DER, through its group if it has one (which routes by `der`)."""
        return self.send_to_child(self._group_of.get(der, der), message)

    def on_configure(self) -> None:
        # Before the children are forked (module docstring, "Memory"): what this process
        # holds now is never collected here again, so no collection in a child touches (and
        # copies) the pages it shares with us.
        gc.freeze()
        super().on_configure()

    def on_message(self, message: Any, sender: Any) -> None:
        if isinstance(message, (ScheduleWrites, ScheduleOperate)):
            if isinstance(message, ScheduleOperate) and message.reply_to is None:
                message.reply_to = sender
            self._to_der(message.der, message)
        elif isinstance(message, ForecastRequest):
            message.reply_to = self.reply_via_self(message.request_id, sender, message.reply_to)
            if not self._to_der(message.der, message):
                self.send(message.reply_to, ForecastReply(message.request_id, message.der, message.kind, []))
        elif isinstance(message, SnapshotRequest):
            self.subscribers[message.subscriber] = message.reply_to
            for child, ders in self._carriers():
                if any(self._serves(message.subscriber, der["name"]) for der in ders):
                    self.send(child.address, message)
        elif isinstance(message, CommandSubscribe):
            self.lan_subscribers[message.subscriber] = message.reply_to
            for child, _ders in self._carriers():
                self.send(child.address, message)
        elif isinstance(message, Measurement):
            self._to_der(message.der, message)
        elif isinstance(message, Shutdown):
            self._leave_devices()
        elif isinstance(message, DevicesLeft):
            self._device_left(message)
        elif isinstance(message, WanContact):
            # Only DERs with a "no telecom" schedule need it: a copy to every DER each second
            # filled thespian's 20 transmit slots at 100 DERs and delayed the heartbeats.
            for child, ders in self._carriers():
                if any(no_telecom(der) for der in ders):
                    self.send(child.address, message)
        elif isinstance(message, InjectFault) and message.target.partition("/")[0] in self._group_of:
            # `relevent fault DER/...` for a DER in a group: its path is GROUP/DER/...
            message.target = f"{self._group_of[message.target.partition('/')[0]]}/{message.target}"
            super().on_message(message, sender)
        else:
            super().on_message(message, sender)
            if not isinstance(message, (Pong, Hello)):   # neither changes a child's state
                # (the summary walks every child: after each Pong it made a heartbeat round
                # quadratic in the number of DERs)
                self._report_change()

    # -- stopping for good: devices first (module docstring) -----------------------------------
    def _leave_devices(self) -> None:
        if self._leaving is not None or self._closing is not None:
            return
        carriers = [(child, [d["name"] for d in ders if reserve_at_stop(d)]) for child, ders in self._carriers()]
        carriers = [(child, names) for child, names in carriers if names]
        if not carriers:
            self._close("asked to stop")
            return
        self._leaving = {name for _child, names in carriers for name in names}
        self._leave_started = time.monotonic()
        for child, _names in carriers:
            self.send(child.address, LeaveDevices(0))
        self.wakeupAfter(AT_STOP_TIMEOUT_S, Wakeup("leave-timeout"))

    def _device_left(self, msg: DevicesLeft) -> None:
        if self._leaving is None or msg.der not in self._leaving:
            return
        self._leaving.discard(msg.der)
        took = time.monotonic() - self._leave_started
        if msg.ok:
            log.info("at stop der=%s device left at %s in %.3f s", msg.der, msg.how, took)
        else:
            log.warning("at stop der=%s device not confirmed at %s: %s", msg.der, msg.how, msg.detail)
        if not self._leaving:
            self._leaving = None
            self._close("asked to stop")

    def _report_change(self) -> None:
        """A child became ready or failed: tell the runner now rather than at the next tick,
        so systemd hears READY=1 as soon as the last WAN endpoint serves."""
        if self.parent is not None and self.summary() != self._reported:
            self.send(self.parent, Pong(self.name, 0, os.getpid(), self.detail()))

    def on_wakeup(self, payload: Any) -> None:
        if isinstance(payload, Wakeup) and payload.what == "tick" and self.parent is not None:
            # Unasked heartbeat to the runner: the runner must never `tell` a hung actor
            # (thespian's tell() then blocks for up to 60 s), so it only listens for these.
            # Sent before this tick's Pings: thespian transmits in order, and behind a Ping
            # to every DER of a big site it would reach the runner seconds late.  It can
            # still wait behind what earlier ticks and status requests queued: the alive
            # file, touched here, says the tick ran (restart_policy.root_hung).
            self._mark_alive()
            self.send(self.parent, Pong(self.name, 0, os.getpid(), self.detail()))
        super().on_wakeup(payload)
        if isinstance(payload, Wakeup) and payload.what == "leave-timeout" and self._leaving:
            log.warning("at stop: ders=%s did not confirm in %.1f s; stopping anyway", sorted(self._leaving),
                        AT_STOP_TIMEOUT_S)
            self._leaving = None
            self._close("asked to stop")

    def _mark_alive(self) -> None:
        path = alive_path(self.site["state_dir"])
        try:
            try:
                os.utime(path)
            except FileNotFoundError:
                path.touch()
        except OSError as exc:   # a full or read-only disk: the heartbeats alone then decide
            log.warning("cannot touch %s: %s", path, exc)

    def detail(self) -> dict:
        self._reported = self.summary()
        return {"site": self.site.get("name"), "starts": self.lifetime.get("starts"), "summary": self._reported}

    def summary(self) -> dict:
        """Counts for the service manager (relevent/runtime/notify.py): DERs running, WAN
        endpoints serving (ready: listening, with the controllers' states in), and children
        failing (down, or restarting after a failure; a first start is not a fault)."""
        children = [c for c in self.children if c.state != "removing"]
        def count(role: str, running: bool) -> int:
            return sum(1 for c in children if c.spec.role == role and (c.state == "running" or not running))
        faults = sum(1 for c in children if c.state != "running" and not (c.state == "starting" and c.restarts == 0))
        groups = [c for c in children if c.spec.role == "group"]   # their DERs, as each last said
        faults += sum(c.detail.get("faults", 0) for c in groups if c.state == "running")
        return {"ders": count("der", False) + sum(len(c.spec.config["ders"]) for c in groups),
                "ders_running": count("der", True) + sum(c.detail.get("ders_running", 0) for c in groups
                                                         if c.state == "running"),
                "wan": count("wan", False), "wan_serving": count("wan", True), "faults": faults}
