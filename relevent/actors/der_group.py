"""Several DERs in one process ([runtime] ders_per_process > 1): a DER group.

Invariant: a DER in a group is the same `DerActor`, supervised the same way (Configure,
Hello/Ready, heartbeats, Failed, restart from the store), its controllers hosted in it as
with controller_isolation = "der"; only its process is shared (relevent/actors/hosted.py:
the group hosts its DERs, each DER hosts its controllers).  A Python exception in a DER or
one of its controllers restarts that DER or controller alone; a crash in C, a hang or a
kill of the process takes the whole group, which the site restarts, each DER going on from
the store.

Why: a DER in a process of its own costs ~7.4 MiB PSS and a process start; a site of
1,000 DERs was 1,000 processes, 7.2 GiB of them, and on 2 cores it did not stay up (DERs
starting too slowly to answer heartbeats were killed as hung until the site escalated).
In a group a DER costs 0.4 MiB, and the same site stays up (bench/README.md, "Scale").

Routing.  A hosted actor's address is its host's, so every DER of a group and every
controller in it has the group's address.  What other processes send one of them names its
DER (`der`: ScheduleWrites, ScheduleOperate and ForecastRequest to a controller or a DER,
Measurement and CommandApplied from a LAN endpoint): the group hands it to that DER, which
routes it on to its controller as in a process of its own.  What the site sends every DER
(SnapshotRequest, CommandSubscribe, WanContact, LeaveDevices) comes to the group once and
goes on to the DERs it concerns; the group remembers the subscribers, as the site does, for
the DERs it restarts.  A DER's answer to the site (DevicesLeft) comes to the group, its
parent, which passes it up.
"""
from __future__ import annotations

import logging
from typing import Any

from relevent.actors.supervisor import Child, ChildSpec, Supervisor
from relevent.messages import (
    CommandApplied, CommandSubscribe, DevicesLeft, ForecastReply, ForecastRequest, LeaveDevices, Measurement,
    ScheduleOperate, ScheduleWrites, SnapshotRequest, WanContact,
)

log = logging.getLogger("relevent.der_group")

# Messages for one DER of the group (or one of its controllers), by their `der`.
ROUTED = (ScheduleWrites, ScheduleOperate, ForecastRequest, Measurement, CommandApplied)


def groups_of(ders: list[dict], per_process: int, previous: dict[str, str] | None = None,
              hosts: dict[str, str] | None = None) -> list[tuple[str, str, list[dict]]]:
    """(group name, host, its DERs in topology order), groups in the order of their numbers.

    Without `previous` (DER -> group, the running site's; `hosts`: group -> its host), the
    DERs in topology order go `per_process` at a time into groups of their host (a DER's
    `host`, "" the leader).  With it (a reload), every DER stays in its group, so an edit
    restarts no DER it does not touch: a new DER, or one whose host is no longer its
    group's, joins the first group of its host with room, else a new group; a group left
    empty goes, and its number is not given again.  (The runner refuses a reload that
    moves a grouped DER to another host: a restart regroups.)  Names ("ders.1", ...)
    cannot be a DER's or an endpoint's (topology names have no '.')."""
    previous, hosts = previous or {}, dict(hosts or {})
    order = {der["name"]: i for i, der in enumerate(ders)}
    members: dict[str, list[dict]] = {}   # group -> its DERs
    joining = []
    for der in ders:
        group, host = previous.get(der["name"]), der.get("host", "")
        if group is not None and hosts.get(group, host) == host:
            hosts[group] = host
            members.setdefault(group, []).append(der)
        else:
            joining.append(der)
    def number(name: str) -> int:
        return int(name.rpartition(".")[2])
    last = max(map(number, [*previous.values(), *hosts]), default=0)
    for der in joining:
        host = der.get("host", "")
        group = next((g for g in sorted(members, key=number)
                      if hosts[g] == host and len(members[g]) < per_process), None)
        if group is None:
            last += 1
            group = f"ders.{last}"
            hosts[group] = host
        members.setdefault(group, []).append(der)
    return [(g, hosts[g], sorted(members[g], key=lambda d: order[d["name"]])) for g in sorted(members, key=number)]


def endpoint_serves(wan: list[dict], endpoint: str, der: str) -> bool:
    """Whether WAN endpoint `endpoint` (of the site's `wan` list) serves DER `der`: a DER
    sends its states only to the endpoints that serve it.  One it does not know (gone from
    the topology) gets them all, as before its removal."""
    from relevent.protocols.registry import serves   # here: the registry imports the topology package
    ep = next((e for e in wan if e["name"] == endpoint), None)
    return ep is None or serves(ep, der)


def reserve_at_stop(der: dict) -> bool:
    """Whether a DER leaves its device at its reserve when the site stops for good (LeaveDevices)."""
    return der.get("at_stop") == "reserve" and bool(der.get("lan"))


def no_telecom(der: dict) -> bool:
    """Whether a DER has a "no telecom" schedule: only those need WanContact."""
    return any(local["trigger"] == "no_telecom" for local in der.get("local", []))


class DerGroupActor(Supervisor):
    level = "group"

    def __init__(self) -> None:
        super().__init__()
        self.subscribers: dict[str, Any] = {}       # WAN endpoint name -> address (SiteSupervisor's)
        self.lan_subscribers: dict[str, Any] = {}   # LAN endpoint name -> address

    def hosts(self, spec: ChildSpec) -> bool:
        return True

    def on_configure(self) -> None:
        self.subscribers = dict(self.config.get("subscribers", {}))
        self.lan_subscribers = dict(self.config.get("lan_subscribers", {}))
        super().on_configure()

    def child_specs(self) -> list[ChildSpec]:
        # The group is placed (its spec's host); its DERs are hosted in it, so not placed again.
        return [ChildSpec(der["name"], "der", "relevent.actors.der.DerActor", der, supervisor=True)
                for der in self.config["ders"]]

    def runtime_config(self, spec: ChildSpec) -> dict:
        return {"subscribers": {name: address for name, address in self.subscribers.items()
                                if self._serves(name, spec.name)},
                "lan_subscribers": dict(self.lan_subscribers)}

    def _serves(self, endpoint: str, der: str) -> bool:
        return endpoint_serves(self.config.get("wan", []), endpoint, der)

    def on_message(self, message: Any, sender: Any) -> None:
        if isinstance(message, ROUTED):
            if not self.send_to_child(message.der, message) and isinstance(message, ForecastRequest):
                self.send(message.reply_to or sender, ForecastReply(message.request_id, message.der, message.kind, []))
        elif isinstance(message, SnapshotRequest):
            self.subscribers[message.subscriber] = message.reply_to
            for der in self.running_children("der"):
                if self._serves(message.subscriber, der.spec.name):
                    self.send(der.address, message)
        elif isinstance(message, CommandSubscribe):
            self.lan_subscribers[message.subscriber] = message.reply_to
            for der in self.running_children("der"):
                self.send(der.address, message)
        elif isinstance(message, WanContact):
            for der in self.running_children("der"):
                if no_telecom(der.spec.config):
                    self.send(der.address, message)
        elif isinstance(message, LeaveDevices):
            for der in self.children:
                if der.spec.role != "der" or not reserve_at_stop(der.spec.config):
                    continue
                if der.address is not None and der.state in ("starting", "running"):
                    self.send(der.address, message)
                else:   # (restarting): the site waits for each, and must not wait its timeout out
                    self.send(self.parent, DevicesLeft(der.spec.name, message.request_id, "reserve", False,
                                                       "its DER is not running"))
        elif isinstance(message, DevicesLeft):
            self.send(self.parent, message)   # from one of our DERs: the site waits for it
        else:
            super().on_message(message, sender)

    def node(self, child: Child) -> dict:
        node = super().node(child)
        if child.spec.config.get("host"):   # a group on a member: its DERs' pids are that host's
            node["host"] = child.spec.config["host"]
        return node

    def detail(self) -> dict:
        """The site counts its DERs, and their faults, from these (SiteSupervisor.summary)."""
        ders = [c for c in self.children if c.spec.role == "der"]
        return {"ders": len(self.config.get("ders", [])),
                "ders_running": sum(1 for c in ders if c.state == "running"),
                "faults": sum(1 for c in ders if c.state != "running" and not (c.state == "starting" and c.restarts == 0)),
                "starts": self.lifetime.get("starts")}
