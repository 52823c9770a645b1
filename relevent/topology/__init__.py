"""Topology files: one TOML file describes a site."""

from relevent.topology.loader import Problem, Topology, TopologyError, load_topology, parse_topology

__all__ = ["Problem", "Topology", "TopologyError", "load_topology", "parse_topology"]
