"""The status tree, as `relevent status --json` and the control socket's "status" give it.

Each node is a dict built by `Supervisor.node()` (the runner builds the root, the site
supervisor, the same way): name, path, role, pid, state, restarts, uptime_s, last_error,
detail, and "children": a list of nodes for a supervisor (its children in start order;
empty when it did not answer), None for a leaf.  Supervisors fill their children in
from their children's `StatusReply`, or, above STATUS_FANOUT_MAX child supervisors, from
the nodes each sent with its last heartbeat reply (then with "children_age_s").

`walk_depths` is the one walk over that nesting: every other reader of the tree uses it
(or `walk`), so the tree's shape is known in one place.
"""
from __future__ import annotations

from collections.abc import Iterator


def walk_depths(node: dict, depth: int = 0) -> Iterator[tuple[int, dict]]:
    """Every node of the tree under `node`, `node` first, each before its children and
    children in start order, with its depth (`node` at `depth`, its children one deeper)."""
    yield depth, node
    for child in node.get("children") or []:
        yield from walk_depths(child, depth + 1)


def walk(node: dict) -> Iterator[dict]:
    """Every node of the tree under `node`, in the order of `walk_depths`."""
    for _depth, each in walk_depths(node):
        yield each
