"""The Mosquitto `acl_file` a site's MQTT links need (`relevent broker-acl`, docs/parties.md).

Invariant: the broker grants each user only the topics its role needs; everything else is
denied, because Mosquitto denies what an acl_file does not grant.  So the file holds no
topic line before its first `user` line (those would be anonymous clients' grants) and
no `pattern` line (those apply to every user).

Why it matters: an MQTT broker does not tell a subscriber who published a message, so the
`mqtt-ems` endpoint acts, for every request it reads on its `topic`, as its one party.
Only the broker can make sure that whoever publishes there is that party: the party's
broker user (`[[party]] mqtt_user`) alone may write the request topic and read the reply
topic, and the site's own broker user (the endpoint's `username`) alone reads the requests
and writes the replies.  For a LAN `mqtt` endpoint the site's user writes the command and
schedule topics and reads the measurement topic; the devices' users are not in the
topology, so the file says what each needs instead of granting it.

Pure: `broker_acl(data)` turns a loaded topology's data (`Topology.data`) into the text.
"""
from __future__ import annotations

import textwrap


class AclError(ValueError):
    """A name or topic that a line of an acl_file cannot hold."""


def _safe(value: str, where: str) -> str:
    # Mosquitto reads an acl_file line by line and trims the blanks around a user name or
    # topic: a line break would start a line of its own, a blank around it would be lost.
    if not value or value != value.strip() or not value.isprintable():
        raise AclError(f"{where}: {value!r} cannot be written in a Mosquitto acl_file (it must be non-empty, "
                       "without leading or trailing blanks and without control characters)")
    return value


def _comment(text: str) -> str:
    """A comment line, whatever the topology's strings hold: Mosquitto reads a line as a
    comment only if it starts with '#', so no line break may end it early."""
    return "# " + "".join(c if c.isprintable() else "?" for c in text)


def broker_acl(data: dict, source: str = "") -> str:
    """The acl_file for every Mosquitto the topology's `mqtt-ems` and `mqtt` endpoints use.

    Each granted line is preceded by a comment naming the endpoint it comes from; what
    cannot be granted (an endpoint without `username`, a party without `mqtt_user`, the
    devices' users, an embedded broker) is said in the comments at the top."""
    grants: dict[str, dict[tuple[str, str], list[str]]] = {}   # user -> (access, topic) -> why
    notes: list[str] = []

    def grant(user: str, access: str, topic: str, why: str, where: str) -> None:
        key = (access, _safe(topic, where))
        grants.setdefault(_safe(user, where), {}).setdefault(key, []).append(why)

    parties = {p["name"]: p for p in data.get("party", [])}
    embedded = {(ep["host"], ep["port"]): ep["name"] for ep in data.get("lan", [])
                if ep.get("protocol") == "mqtt" and ep.get("embedded_broker")}
    for ep in data.get("wan", []) + data.get("lan", []):
        protocol = ep.get("protocol")
        if protocol not in ("mqtt-ems", "mqtt"):
            continue
        name, broker = ep["name"], (ep["host"], ep["port"])
        label = f"endpoint {name!r} ({protocol}, broker {broker[0]}:{broker[1]})"
        if broker in embedded:
            notes.append(f"{label}: the broker is the embedded one of endpoint {embedded[broker]!r}, which reads "
                         "no acl_file; nothing below protects it")
        site = ep.get("username", "")
        if not site:
            notes.append(f"{label}: no username, so the site's broker user cannot be granted its topics; give "
                         "the endpoint a username and password_file")
        if protocol == "mqtt-ems":
            topic, reply = ep["topic"], ep["reply_topic"]
            if site:
                where = f"wan {name}.username"
                grant(site, "read", topic, f"{label}: the site reads the EMS's requests", where)
                grant(site, "write", reply, f"{label}: the site answers each request", where)
            party = ep.get("party") or name
            ems = (parties.get(party) or {}).get("mqtt_user", "")
            if ems:
                where = f"party {party}.mqtt_user"
                grant(ems, "write", topic, f"{label}: party {party!r} publishes its requests", where)
                grant(ems, "read", reply, f"{label}: party {party!r} reads the replies", where)
            else:
                notes.append(f"{label}: party {party!r} has no mqtt_user, so nobody is granted publishing on "
                             f"{topic!r}; give the party an mqtt_user (docs/parties.md)")
        else:
            command, schedule, measurement = ep["topic_command"], ep["topic_schedule"], ep["topic_measurement"]
            if site:
                where = f"lan {name}.username"
                grant(site, "write", command, f"{label}: the site's commands to its devices", where)
                grant(site, "write", schedule, f"{label}: the site's schedule forecasts to its devices", where)
                grant(site, "read", measurement, f"{label}: the devices' measurements", where)
            notes.append(f"{label}: each device's own broker user (devices are not in the topology by broker "
                         f"user) needs a block of its own: \"topic read {command}\", \"topic read {schedule}\" "
                         f"and \"topic write {measurement}\"")

    out = [_comment(f"Mosquitto acl_file made by `relevent broker-acl`{f' from {source}' if source else ''}."),
           "# Mosquitto denies what this file does not grant: each user below may use only the topics",
           "# listed under it, and any other user, or an anonymous client, none of them.  Use it with",
           "# allow_anonymous false and a password_file (or certificates) that names these users.",
           "#"]
    out += [_comment(line) for note in notes
            for line in textwrap.wrap(note, 92, subsequent_indent="  ", break_long_words=False,
                                      break_on_hyphens=False)] or ["# nothing left out: every user is granted below"]
    if not grants:
        out += ["#", "# no topic granted: no mqtt-ems or mqtt endpoint with a broker user"]
    for user, lines in grants.items():
        out += ["", f"user {user}"]
        for (access, topic), why in lines.items():
            out += [_comment(reason) for reason in why] + [f"topic {access} {topic}"]
    return "\n".join(out) + "\n"
