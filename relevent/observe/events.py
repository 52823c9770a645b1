"""Events of the site, from two successive status trees: `diff(before, after, now_ms)` is
pure and returns what changed between them, as history rows (relevent/history):

    {"t": ms, "kind": ..., "subject": ..., "der": DER name or None, "detail": {...}}

kinds:
* "actor": an actor's state changed (detail from, to, last_error), or it was added or
  removed under a supervisor that ran and answered all along (from/to None: a topology
  change);
* "restart": a supervisor restarted it (detail restarts, causes {cause: how many}, last_error);
* "link": a link went up or down under the 15 s rule (subject "wan/mms", "device/pv1";
  detail up, contact_ms);
* "schedule": a schedule's state changed (subject "pv1/ActPow/FSCH01"; detail from, to);
* "refusal": a WAN endpoint refused requests (subject the endpoint; detail party, rule, count).

Only what both trees show is compared: an actor missing from one of them (its supervisor
restarting, or late with its status) yields no event for that gap, and a counter kept by
a new incarnation (another owner) counts from 0.
"""
from __future__ import annotations

from relevent.observe import extract


def _der_names(*trees: dict) -> set[str]:
    names: set[str] = set()
    for tree in trees:
        names |= set(extract.ders(tree, 0))
    return names


def _der(path: str, ders: set[str]) -> str | None:
    """The DER a path is in: its first part, or its second under a DER group (ders.1/pv1/...)."""
    return next((part for part in path.split("/")[:2] if part in ders), None)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else extract.ROOT_PATH


def _increase(before: dict, after: dict, owner_changed: bool) -> dict:
    """Per key, how much `after` counted beyond `before` (all of it from a new owner)."""
    out = {}
    for key, n in after.items():
        more = n if owner_changed else n - before.get(key, 0)
        if more > 0:
            out[key] = more
    return out


def diff(before: dict | None, after: dict, now_ms: int) -> list[dict]:
    """What changed from `before` to `after` (both status trees), as events at `now_ms`."""
    if before is None:
        return []
    ders = _der_names(before, after)
    events: list[dict] = []

    def event(kind: str, subject: str, der: str | None, **detail) -> None:
        events.append({"t": now_ms, "kind": kind, "subject": subject, "der": der, "detail": detail})

    old_actors, new_actors = extract.actors(before), extract.actors(after)
    for path in sorted(new_actors.keys() | old_actors.keys()):
        old, new = old_actors.get(path), new_actors.get(path)
        if old is None or new is None:
            parent_old, parent_new = old_actors.get(_parent(path)), new_actors.get(_parent(path))
            steady = path != extract.ROOT_PATH and all(
                parent is not None and parent["up"] and parent["children"] > 0 for parent in (parent_old, parent_new)) \
                and parent_old["incarnation"] == parent_new["incarnation"]
            if steady:
                event("actor", path, _der(path, ders), **{"from": old and old["state"], "to": new and new["state"],
                                                          "last_error": (new or old)["last_error"]})
            continue
        if old["state"] != new["state"]:
            event("actor", path, _der(path, ders), **{"from": old["state"], "to": new["state"],
                                                      "last_error": new["last_error"]})
        causes = _increase(old["causes"], new["causes"], old["owner"] != new["owner"])
        if causes:
            event("restart", path, _der(path, ders), restarts=new["restarts"], causes=causes,
                  last_error=new["last_error"])

    old_links, new_links = extract.links(before, now_ms), extract.links(after, now_ms)
    for key in sorted(new_links.keys() & old_links.keys()):
        if old_links[key]["up"] != new_links[key]["up"]:
            link, name = key
            event("link", f"{link}/{name}", name if link == "device" else None, up=new_links[key]["up"],
                  contact_ms=new_links[key]["contact_ms"])

    old_schedules, new_schedules = extract.schedules(before), extract.schedules(after)
    for key in sorted(new_schedules.keys() & old_schedules.keys()):
        if old_schedules[key] != new_schedules[key]:
            event("schedule", "/".join(key), key[0], **{"from": old_schedules[key], "to": new_schedules[key]})

    old_refusals = {r.source: r for r in extract.refusal_readings(before)}
    for r in extract.refusal_readings(after):
        prior = old_refusals.get(r.source)
        endpoint, party, rule = r.series[1:]
        if prior is None:
            # First seen: new only if its endpoint was there, same incarnation, in `before`.
            was = old_actors.get(endpoint)
            more = r.value if was is not None and was["up"] else 0
        else:
            more = r.value if prior.owner != r.owner or r.value < prior.value else r.value - prior.value
        if more > 0:
            event("refusal", endpoint, None, party=party, rule=rule, count=more)
    return events
