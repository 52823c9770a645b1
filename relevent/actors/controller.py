"""A 90-10 controller (FSCC) of one control function: supervises its schedules
(FSCH01..NN) and its reserve schedule (Res_FSCH01)."""
from __future__ import annotations

from relevent.actors.supervisor import ChildSpec, Supervisor


def schedule_names(count: int) -> list[str]:
    return [f"FSCH{n:02d}" for n in range(1, count + 1)] + ["Res_FSCH01"]


class ControllerActor(Supervisor):
    level = "controller"

    def child_specs(self) -> list[ChildSpec]:
        cfg = self.config
        return [ChildSpec(name, "schedule", "relevent.actors.schedule.ScheduleActor",
                          {"der": cfg["der"], "kind": cfg["kind"], "schedule": name,
                           "reserve": name.startswith("Res_")})
                for name in schedule_names(cfg["schedules"])]

    def detail(self) -> dict:
        return {"kind": self.config.get("kind"), "starts": self.lifetime.get("starts")}
