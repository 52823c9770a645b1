"""A DER (inverter, battery, charger, ...): supervises one controller per control function."""
from __future__ import annotations

from relevent.actors.supervisor import ChildSpec, Supervisor


class DerActor(Supervisor):
    level = "der"

    def child_specs(self) -> list[ChildSpec]:
        der = self.config
        return [ChildSpec(kind, "controller", "relevent.actors.controller.ControllerActor",
                          {"der": der["name"], "kind": kind, "schedules": der["schedules"]}, supervisor=True)
                for kind in der["functions"]]

    def detail(self) -> dict:
        return {"type": self.config.get("type"), "lan": self.config.get("lan"),
                "starts": self.lifetime.get("starts")}
