"""A DER (inverter, battery, charger, ...): supervises one controller per control function
and relays between them and the site (controller states up, schedule requests down)."""
from __future__ import annotations

from typing import Any

from relevent.actors.messages import ControllerState, ScheduleOperate, ScheduleWrite, SnapshotRequest
from relevent.actors.supervisor import ChildSpec, Supervisor


class DerActor(Supervisor):
    level = "der"

    def child_specs(self) -> list[ChildSpec]:
        der = self.config
        return [ChildSpec(kind, "controller", "relevent.actors.controller.ControllerActor",
                          {"der": der["name"], "kind": kind, "schedules": der["schedules"],
                           "values": der.get("values", 100),
                           **({"reserve": der["reserve"][kind]} if kind in der.get("reserve", {}) else {}),
                           "locks": der.get("locks", {}).get(kind, {})})
                for kind in der["functions"]]

    def on_message(self, message: Any, sender: Any) -> None:
        if isinstance(message, ControllerState):
            self.send(self.parent, message)
        elif isinstance(message, (ScheduleWrite, ScheduleOperate)):
            self.send_to_child(message.kind, message)
        elif isinstance(message, SnapshotRequest):
            for child in self.running_children():
                self.send(child.address, message)
        else:
            super().on_message(message, sender)

    def detail(self) -> dict:
        return {"type": self.config.get("type"), "lan": self.config.get("lan"),
                "starts": self.lifetime.get("starts")}
