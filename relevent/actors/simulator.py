"""A simulated device (or embedded broker) as a supervised actor of the site: it fails and
restarts like a real device reboots, which is what the LAN endpoints must survive."""
from __future__ import annotations

from relevent.actors.endpoint import EndpointActor


class SimulatorActor(EndpointActor):
    """Same adapter interface as an endpoint; the registry names the simulator class."""
