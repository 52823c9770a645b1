"""A 90-10 schedule (FSCH).  It is a leaf of the tree and restarts from the store."""
from __future__ import annotations

from relevent.actors.base import ReleventActor


class ScheduleActor(ReleventActor):
    def detail(self) -> dict:
        return {"kind": self.config.get("kind"), "reserve": self.config.get("reserve"),
                "starts": self.lifetime.get("starts")}
