"""A DER (inverter, battery, charger, ...): supervises one controller per control function.

It also keeps the endpoints' subscriptions for its controllers (they pass through it in
SnapshotRequest) and hands them to a controller in its Configure, so that a restarted
controller sends its first state straight to every endpoint."""
from __future__ import annotations

from typing import Any

from relevent.actors.messages import ForecastRequest, ScheduleOperate, ScheduleWrites, SnapshotRequest
from relevent.actors.supervisor import ChildSpec, Supervisor


class DerActor(Supervisor):
    level = "der"

    def __init__(self) -> None:
        super().__init__()
        self.subscribers: dict[str, Any] = {}

    def runtime_config(self, spec: ChildSpec) -> dict:
        return {"subscribers": dict(self.subscribers)}

    def on_configure(self) -> None:
        self.subscribers = dict(self.config.get("subscribers", {}))  # kept by the site across our restarts
        super().on_configure()

    def child_specs(self) -> list[ChildSpec]:
        der = self.config
        return [ChildSpec(kind, "controller", "relevent.actors.controller.ControllerActor",
                          {"der": der["name"], "kind": kind, "schedules": der["schedules"],
                           "values": der.get("values", 100),
                           **({"reserve": der["reserve"][kind]} if kind in der.get("reserve", {}) else {}),
                           "locks": der.get("locks", {}).get(kind, {})})
                for kind in der["functions"]]

    def on_message(self, message: Any, sender: Any) -> None:
        if isinstance(message, (ScheduleWrites, ScheduleOperate, ForecastRequest)):
            self.send_to_child(message.kind, message)
        elif isinstance(message, SnapshotRequest):
            self.subscribers[message.subscriber] = message.reply_to
            for child in self.running_children():
                self.send(child.address, message)
        else:
            super().on_message(message, sender)

    def detail(self) -> dict:
        return {"type": self.config.get("type"), "lan": self.config.get("lan"),
                "starts": self.lifetime.get("starts")}
