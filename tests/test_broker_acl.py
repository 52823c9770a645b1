"""Who may publish an MQTT EMS's requests (docs/parties.md, "The local EMS over MQTT"): the
broker user of the endpoint's party (`[[party]] mqtt_user`), enforced by the Mosquitto
acl_file `relevent broker-acl` writes, and the warnings of `relevent check` when it cannot
be.  First the pure text and the topology checks, then a real Mosquitto restricted by that
file (allow_anonymous false, a password_file from mosquitto_passwd) in front of a real
site: the EMS's broker user is served, another user of the same broker is not."""
from __future__ import annotations

import getpass
import json
import queue
import subprocess
import threading
import time

import pytest
from lanctl import Mosquitto, publish
from sitectl import Site, free_port, relevent_cli, running, small_topology
from test_mqtt_ems import REPLIES, REQUESTS, raw, request, schedule_over_mms

from relevent.cli import main
from relevent.protocols.mqtt_ems.acl import AclError, broker_acl
from relevent.topology import TopologyError, parse_topology

SITE = """
[site]
name = "acl"

[[party]]
name = "customer-ems"
mqtt_user = "{ems_user}"
priority = [0, 99]

[[party]]
name = "dso"
mms_password = "a"
mqtt_user = "{dso_user}"
priority = [100, 200]

[[wan]]
name = "ems"
protocol = "mqtt-ems"
party = "customer-ems"
host = "broker.site.lan"
username = "{site_user}"
topic = "{topic}"
reply_topic = "site7/ems/replies"

[[der]]
name = "pv1"
functions = ["MaxPow"]
lan = "devices"
rated_power_w = 5000

[[lan]]
name = "devices"
protocol = "mqtt"
host = "broker.site.lan"
username = "{site_user}"
topic_command = "site7/pivot/command"
topic_schedule = "site7/pivot/schedule"
topic_measurement = "site7/pivot/measurement"
"""


def site_text(**kw) -> str:
    values = {"ems_user": "ems", "dso_user": "", "site_user": "site", "topic": "site7/ems/requests"}
    values.update(kw)
    return SITE.format(**values)


def topo(**kw):
    return parse_topology(site_text(**kw), "site.toml", env={})


def grants(text: str) -> dict[str, set[tuple[str, str]]]:
    """The acl_file as Mosquitto reads it: per user, its (access, topic) lines.  Every line
    is blank, a comment, `user NAME` or `topic ACCESS TOPIC`, and no topic line comes
    before the first user (it would be an anonymous client's grant)."""
    out: dict[str, set] = {}
    user = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "user":
            user = rest
            assert user not in out, f"user {user} has two blocks"
            out[user] = set()
        else:
            access, _, topic = rest.partition(" ")
            assert word == "topic" and access in ("read", "write") and topic, line
            assert user is not None, f"{line!r} would grant anonymous clients"
            out[user].add((access, topic))
    return out


# -- the acl_file (pure) ------------------------------------------------------------------------------
def test_the_acl_grants_the_site_and_the_ems_party_exactly_the_topics_their_roles_need():
    assert grants(broker_acl(topo().data)) == {
        "site": {("read", "site7/ems/requests"), ("write", "site7/ems/replies"),
                 ("write", "site7/pivot/command"), ("write", "site7/pivot/schedule"),
                 ("read", "site7/pivot/measurement")},
        "ems": {("write", "site7/ems/requests"), ("read", "site7/ems/replies")},
    }


def test_every_granted_line_follows_a_comment_naming_its_endpoint_and_devices_are_told_what_they_need():
    lines = broker_acl(topo().data, "site.toml").splitlines()
    assert lines[0] == "# Mosquitto acl_file made by `relevent broker-acl` from site.toml."
    for i, line in enumerate(lines):
        if line.startswith("topic "):
            endpoint = "'devices' (mqtt" if "pivot" in line else "'ems' (mqtt-ems"
            assert lines[i - 1].startswith(f"# endpoint {endpoint}, broker broker.site.lan:1883)"), lines[i - 1]
    header = " ".join(line[2:].strip() for line in lines if line.startswith("#"))
    assert ("each device's own broker user (devices are not in the topology by broker user) needs a block of its "
            'own: "topic read site7/pivot/command", "topic read site7/pivot/schedule" and "topic write '
            'site7/pivot/measurement"') in header


def test_what_cannot_be_granted_is_said_in_a_comment_and_granted_to_nobody():
    text = broker_acl(topo(ems_user="", site_user="").data)
    assert grants(text) == {}
    comments = " ".join(line[2:].strip() for line in text.splitlines() if line.startswith("#"))
    assert "endpoint 'ems' (mqtt-ems, broker broker.site.lan:1883): no username" in comments
    assert "endpoint 'devices' (mqtt, broker broker.site.lan:1883): no username" in comments
    assert ("party 'customer-ems' has no mqtt_user, so nobody is granted publishing on 'site7/ems/requests'"
            in comments)


def test_an_embedded_broker_is_said_to_read_no_acl_file():
    text = site_text().replace('host = "broker.site.lan"', 'host = "127.0.0.1"').replace(
        'protocol = "mqtt"\n', 'protocol = "mqtt"\nembedded_broker = true\n')
    comments = " ".join(line[2:].strip() for line in broker_acl(parse_topology(text, "site.toml", env={}).data)
                        .splitlines() if line.startswith("#"))
    for endpoint in ("'ems' (mqtt-ems", "'devices' (mqtt"):
        assert (f"endpoint {endpoint}, broker 127.0.0.1:1883): the broker is the embedded one of endpoint "
                "'devices', which reads no acl_file; nothing below protects it") in comments


def test_a_line_break_in_a_topic_cannot_smuggle_a_grant_into_the_acl():
    with pytest.raises(AclError, match=r"wan ems.username: 'site7/ems/requests\\nuser ems\\ntopic readwrite #'"):
        broker_acl(topo(topic=r"site7/ems/requests\nuser ems\ntopic readwrite #").data)
    with pytest.raises(TopologyError, match=r"party\[0\].mqtt_user: 'ems\\ntopic readwrite #': a broker user name"):
        topo(ems_user=r"ems\ntopic readwrite #")


# -- the topology checks ------------------------------------------------------------------------------
def test_two_parties_with_the_same_mqtt_user_are_refused_naming_file_line_and_field():
    with pytest.raises(TopologyError) as err:
        topo(dso_user="ems")
    assert ("site.toml:13: party[1].mqtt_user: party 'customer-ems' has the same mqtt_user: a client would not "
            "know which party it is") in str(err.value)


def test_check_warns_when_the_ems_party_has_no_broker_user_and_the_site_none_on_a_remote_broker():
    messages = [str(w) for w in topo(ems_user="", site_user="").warnings]
    assert ("site.toml:19: wan[0].party: anyone who may publish on 'site7/ems/requests' at the broker acts as "
            "party 'customer-ems': give the party an mqtt_user and restrict the broker with `relevent broker-acl`"
            in messages)
    assert any(m.startswith("site.toml:21: wan[0].username: endpoint 'ems' connects to the broker at "
                            "broker.site.lan:1883 without a username: the broker cannot tell the site from anyone "
                            "else") for m in messages), messages
    assert len(messages) == 2


def test_check_says_nothing_once_the_party_and_the_site_have_broker_users():
    assert topo().warnings == []


def test_a_site_without_parties_on_a_loopback_broker_is_not_warned_about():
    text = site_text(site_user="").replace("broker.site.lan", "127.0.0.1")
    text = text[:text.index("[[party]]")] + text[text.index("[[wan]]"):].replace('party = "customer-ems"\n', "")
    assert parse_topology(text, "site.toml", env={}).warnings == []


# -- the command ----------------------------------------------------------------------------------------
def test_the_command_prints_the_acl_or_writes_it_to_a_file(tmp_path, capsys):
    path = tmp_path / "site.toml"
    path.write_text(site_text())
    assert main(["broker-acl", str(path)]) == 0
    printed = capsys.readouterr()
    assert printed.out == broker_acl(parse_topology(site_text(), str(path), env={}).data, str(path))
    assert printed.err == ""
    assert main(["broker-acl", str(path), "-o", str(tmp_path / "acl")]) == 0
    assert (tmp_path / "acl").read_text() == printed.out and capsys.readouterr().out == ""


def test_the_command_refuses_a_topology_with_errors_as_check_does(tmp_path, capsys):
    path = tmp_path / "site.toml"
    path.write_text(site_text(dso_user="ems"))
    outputs = []
    for command in ("check", "broker-acl"):
        with pytest.raises(SystemExit) as stopped:
            main([command, str(path), *(["-o", str(tmp_path / "acl")] if command == "broker-acl" else [])])
        assert stopped.value.code == 1
        outputs.append(capsys.readouterr())
    assert outputs[0].err == outputs[1].err and "has the same mqtt_user" in outputs[1].err
    assert outputs[1].out == "" and not (tmp_path / "acl").exists()


# -- a real Mosquitto restricted by the file, a real site -------------------------------------------------
PASSWORDS = {"site": "site-secret", "ems": "ems-secret", "intruder": "intruder-secret"}
# The intruder is a valid user of the same broker, with topics of its own (as a device has):
# appended to the generated file, as an installer adds the devices' blocks.
INTRUDER = "\nuser intruder\ntopic readwrite intruder/#\n"


def credentials(user: str) -> tuple[str, str]:
    return user, PASSWORDS[user]


class Reader:
    """mosquitto_sub as a broker user, ready once the broker acknowledged its subscriptions
    (-d prints the SUBACK; stdbuf: its stdout is a pipe, which the C library buffers)."""

    def __init__(self, port: int, user: str, topics: list[str]) -> None:
        self.topics = topics
        self.proc = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-d", "-v", "-h", "127.0.0.1",
                                      "-p", str(port), "-u", user, "-P", PASSWORDS[user], "-q", "1",
                                      *[a for t in topics for a in ("-t", t)]],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line.rstrip("\n")) for line in self.proc.stdout],
                         daemon=True).start()
        self.seen: list[tuple[str, str]] = []   # (topic, payload) in arrival order
        deadline = time.monotonic() + 10
        try:
            while True:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
                if line.startswith("Subscribed"):
                    assert line.endswith(": " + ", ".join("1" for _ in topics)), line
                    return
                assert "refused" not in line.lower(), line
        except BaseException:
            self.close()
            raise

    def wait_for(self, predicate, timeout: float = 20.0) -> list[tuple[str, str]]:
        """Every message received until one matches predicate(topic, payload), that one included."""
        deadline = time.monotonic() + timeout
        while not any(predicate(*m) for m in self.seen):
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no matching message in {timeout} s; seen {self.seen}") from None
            topic, _, payload = line.partition(" ")
            if topic in self.topics:
                self.seen.append((topic, payload))
        return list(self.seen)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def correlation(cid: str):
    return lambda topic, payload: topic == REPLIES and json.loads(payload).get("correlationId") == cid


@pytest.fixture(scope="module")
def acl_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("broker-acl")
    port, state, path = free_port(), tmp / "state", tmp / "site.toml"
    (tmp / "site.pw").write_text(PASSWORDS["site"] + "\n")
    ems = f"""
[[party]]
name = "mms"            # the tests' MMS reader: a client without a password on loopback
priority = [100, 200]

[[party]]
name = "customer-ems"
mqtt_user = "ems"
priority = [0, 99]

[[wan]]
name = "ems"
protocol = "mqtt-ems"
party = "customer-ems"
port = {port}
username = "site"
password_file = "{tmp / 'site.pw'}"
reconnect_delay = 0.2
"""
    path.write_text(small_topology(state, free_port(), functions=("MaxPow",), wan=ems))
    made = relevent_cli("broker-acl", str(path), "-o", str(tmp / "acl"))
    assert made.returncode == 0, made.stderr
    with open(tmp / "acl", "a") as acl:
        acl.write(INTRUDER)
    passwords = tmp / "passwords"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwords), user, password],
                       check=True, timeout=10)
    # `user`: as root, Mosquitto drops to `mosquitto`, who cannot read pytest's folders (0700).
    broker = Mosquitto(port, tmp, access=f"allow_anonymous false\npassword_file {passwords}\n"
                                         f"acl_file {tmp / 'acl'}\nuser {getpass.getuser()}\n").start()
    site = Site(path, state)
    try:
        with running(site, leftovers=True):
            site.wait_for("ems", lambda n: n["detail"].get("subscribed", 0) >= 1, timeout=20)
            yield {"site": site, "port": port}
    finally:
        broker.stop()


def test_the_ems_partys_broker_user_gets_an_accepted_reply_and_the_schedule_is_written(acl_site):
    site, port = acl_site["site"], acl_site["port"]
    replies = Reader(port, "ems", [REPLIES])
    try:
        start_s = int(time.time()) + 3600
        publish(port, [raw(request([4100, 3200], start_s, correlationId="ems-1"))], REQUESTS, credentials("ems"))
        reply = json.loads(replies.wait_for(correlation("ems-1"))[-1][1])
    finally:
        replies.close()
    assert reply["accepted"] is True, reply
    s = schedule_over_mms(site)
    assert (s["NumEntr"], s["SchdIntv"], s["SchdPrio"], s["values"][:2]) == (2, 300, 20, [4100.0, 3200.0])
    assert [t for t in s["starts"] if t] == [start_s * 1000]


def test_another_broker_user_publishing_a_request_changes_nothing_and_gets_no_reply(acl_site):
    site, port = acl_site["site"], acl_site["port"]
    replies = Reader(port, "ems", [REPLIES])
    try:
        publish(port, [raw(request([2500], int(time.time()) + 3600, correlationId="known"))], REQUESTS,
                credentials("ems"))
        replies.wait_for(correlation("known"))
        # `relevent status` is a heartbeat behind: the counters once it shows this request.
        counters = site.wait_for("ems", lambda n: (n["detail"]["last_accepted"] or {}).get("correlationId")
                                 == "known")["detail"]
        before = schedule_over_mms(site)
        # A valid user of the broker (its CONNECT accepted: mosquitto_pub exits 0) ...
        publish(port, [raw(request([666], int(time.time()) + 1800, correlationId="intruder"))], REQUESTS,
                credentials("intruder"))
        # ... then the EMS's next request, refused (its start is past), so it changes nothing either.
        # Requests are served in the order the broker delivers them: once this one's reply is
        # here, the intruder's would have been answered before it.
        refused_from = int(time.time() * 1000)
        publish(port, [raw(request([1], int(time.time()) - 60, correlationId="after"))], REQUESTS,
                credentials("ems"))
        seen = replies.wait_for(correlation("after"))
    finally:
        replies.close()
    answers = [json.loads(payload) for _, payload in seen]
    assert [a["correlationId"] for a in answers] == ["known", "after"]
    assert answers[-1]["rule"] == "value"
    assert schedule_over_mms(site) == before
    detail = site.wait_for("ems", lambda n: (n["detail"]["last_refusal"] or {}).get("at", 0) >= refused_from)["detail"]
    assert detail["received"] == counters["received"] + 1     # the intruder's request never reached the site
    assert detail["accepted"] == counters["accepted"]
    # Without a user, nobody gets in at all.
    anonymous = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", REQUESTS, "-q", "1",
                                "-m", "{}"], capture_output=True, text=True, timeout=10)
    assert anonymous.returncode != 0 and "not authorised" in anonymous.stderr


def test_another_broker_user_cannot_read_the_replies(acl_site):
    port = acl_site["port"]
    intruder = Reader(port, "intruder", [REPLIES, "intruder/probe"])   # the broker acknowledges both
    replies = Reader(port, "ems", [REPLIES])
    try:
        publish(port, [raw(request([1800], int(time.time()) + 3600, correlationId="read-1"))], REQUESTS,
                credentials("ems"))
        replies.wait_for(correlation("read-1"))
        # The reply is out; a message the intruder may read, published after it, reaches the
        # intruder after anything the broker queued for it before: the reply, had it been allowed.
        publish(port, [b"probe"], "intruder/probe", credentials("intruder"))
        seen = intruder.wait_for(lambda topic, payload: topic == "intruder/probe")
    finally:
        intruder.close()
        replies.close()
    assert seen == [("intruder/probe", "probe")]
