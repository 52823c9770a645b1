"""Parties and policy on the shared request path (relevent/policy, relevent/wan/session.py):
the pure decision, a session with the topology's parties (credentials, anonymous rules,
ownership, bands, contact), the audit chain each request leaves, and what `relevent check`
says about parties.  Over real protocols: tests/test_mms_parties.py (MMS, use case 5) and
tests/test_http_parties.py."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from relevent.audit.site import audit_dir
from relevent.audit.verify import load_public_key, verify
from relevent.messages import WanContact, Wakeup
from relevent.policy import NOTHING, OPERATIONS, PRIO_MAX, READ_ONLY, UNRESTRICTED, Request, Rights, check
from relevent.scheduling.schedule import Schedule
from relevent.topology.loader import TopologyError, parse_topology
from relevent.wan.session import ControlSession, Write

from test_control_session import DER, FakeActor, FakeAdapter, schedules, state

DSO = {"name": "dso", "mms_password": "dso-secret", "http_token": "", "peers": [], "ders": [], "functions": [],
       "operations": list(OPERATIONS), "priority": [100, 200], "others": False}
TSO = {**DSO, "name": "tso", "mms_password": "tso-secret", "priority": [250, 300], "others": True}
READER = {**DSO, "name": "reader", "mms_password": "look", "operations": ["read"], "priority": [0, 0]}


def fsch(writer: str = "", prio: int = 0, reserve: bool = False) -> Schedule:
    s = Schedule("Res_FSCH01" if reserve else "FSCH01", periodic=reserve, reserve=reserve)
    s.settings.writer, s.settings.prio = writer, prio
    return s


# -- the pure decision -----------------------------------------------------------------------------
def test_a_priority_outside_the_partys_band_is_refused_not_clamped():
    rights = Rights.of(DSO)
    d = check(Request("dso", "write", "pv1", "ActPow", "FSCH01", "SchdPrio", 250), fsch(), rights)
    assert (d.ok, d.rule) == (False, "band") and "100..200" in d.reason
    assert check(Request("dso", "write", "pv1", "ActPow", "FSCH01", "SchdPrio", 150), fsch(), rights).ok


def test_a_priority_beyond_int32_is_refused_for_every_party_even_an_unrestricted_one():
    for value in (-1, PRIO_MAX + 1):
        d = check(Request("site", "write", "pv1", "ActPow", "FSCH01", "SchdPrio", value), fsch(), UNRESTRICTED)
        assert (d.ok, d.rule) == (False, "range:SchdPrio")


def test_an_enable_of_a_schedule_whose_priority_lies_outside_the_band_is_refused():
    d = check(Request("dso", "enable", "pv1", "ActPow", "FSCH01"), fsch("dso", prio=0), Rights.of(DSO))
    assert (d.ok, d.rule) == (False, "band") and "write SchdPrio first" in d.reason
    assert check(Request("dso", "enable", "pv1", "ActPow", "FSCH01"), fsch("dso", prio=120), Rights.of(DSO)).ok


def test_a_schedule_written_by_another_party_is_untouchable_without_the_others_right():
    mine = fsch("tso", prio=260)
    for action in ("write", "enable", "disable"):
        d = check(Request("dso", action, "pv1", "ActPow", "FSCH01", "Val" if action == "write" else "", 1.0),
                  mine, Rights.of(DSO))
        assert (d.ok, d.rule) == (False, "party:owner"), action
    assert check(Request("tso", "disable", "pv1", "ActPow", "FSCH01"), fsch("dso", prio=150), Rights.of(TSO)).ok


def test_rights_limit_operations_ders_and_functions():
    only_pv1 = Rights(ders=frozenset({"pv1"}), functions=frozenset({"MaxPow"}),
                      operations=frozenset({"read", "write"}))
    assert check(Request("p", "write", "pv2", "MaxPow", "FSCH01", "Val", 1.0), fsch(), only_pv1).rule == "party:der"
    assert check(Request("p", "write", "pv1", "ActPow", "FSCH01", "Val", 1.0), fsch(),
                 only_pv1).rule == "party:function"
    assert check(Request("p", "enable", "pv1", "MaxPow", "FSCH01"), fsch(), only_pv1).rule == "party:operation"
    assert check(Request("p", "write", "pv1", "MaxPow", "FSCH01", "Val", 1.0), fsch(), only_pv1).ok
    assert check(Request("", "write", "pv1", "MaxPow", "FSCH01", "Val", 1.0), fsch(), READ_ONLY).rule == \
        "party:operation"
    assert check(Request("", "disable", "pv1", "MaxPow", "FSCH01"), fsch(), NOTHING).rule == "party:operation"


@given(lo=st.integers(0, 1000), width=st.integers(0, 1000), value=st.integers(-10, 3000),
       writer=st.sampled_from(["", "me", "other"]), others=st.booleans())
def test_the_decision_on_a_priority_write_matches_its_three_rules(lo, width, value, writer, others):
    """Brute-force reference: allowed iff in INT32 range, in the band, and (own or unowned
    or `others`)."""
    rights = Rights(band=(lo, lo + width), others=others)
    d = check(Request("me", "write", "pv1", "ActPow", "FSCH01", "SchdPrio", value), fsch(writer), rights)
    expected = value >= 0 and lo <= value <= lo + width and (writer in ("", "me") or others)
    assert d.ok == expected


def test_the_sites_locks_hold_for_every_party_even_an_unrestricted_one():
    d = check(Request("tso", "disable", "pv1", "ActPow", "Res_FSCH01"), fsch(reserve=True), UNRESTRICTED)
    assert (d.ok, d.rule) == (False, "lock:DsaReq")


# -- a session with parties ----------------------------------------------------------------------
@pytest.fixture
def site_session(tmp_path):
    made = []

    def make(anonymous: str = "", parties=(DSO, TSO, READER), accept: list | None = None, party: str = ""):
        actor, adapter = FakeActor(str(tmp_path)), FakeAdapter()
        config = {"name": f"ep{len(made)}", "protocol": "mms", "ders": [DER], "party_tables": list(parties),
                  "parties": accept or [], "anonymous": anonymous, "party": party, "address": "127.0.0.1", "port": 102}
        s = ControlSession(actor, config)
        s.start(adapter)
        s.on_message(state(1, schedules()))
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_a_credential_names_its_party_and_a_wrong_one_names_none(site_session):
    s = site_session(anonymous="read")
    assert s.who("10.0.0.1:5000", ("mms-password", "tso-secret")).party == "tso"
    wrong = s.who("10.0.0.1:5000", ("mms-password", "guess"))
    assert (wrong.party, wrong.recognised) == ("", False)
    # a credential of a party this endpoint does not accept names none either
    only_dso = site_session(accept=["dso"], anonymous="none")
    assert only_dso.who("", ("mms-password", "tso-secret")).party == ""


def test_the_anonymous_rule_decides_what_a_client_without_credentials_may_do(site_session):
    reading = site_session(anonymous="read")
    who = reading.who("10.0.0.9:1")
    assert reading.may(who, "read", "pv1").ok
    answer = reading.write("pv1", "ActPow", "FSCH01", [Write("Val", 1, 5.0)], who)
    assert (answer.ok, answer.rule) == (False, "party:operation")
    closed = site_session(anonymous="none")
    assert not closed.may(closed.who(), "read").ok
    as_party = site_session(anonymous="party", party="dso")
    assert as_party.who().party == "dso"


def test_a_party_cannot_raise_its_priority_above_its_band_nor_touch_another_partys_schedule(site_session):
    s = site_session()
    tso, dso = s.who("t", ("mms-password", "tso-secret")), s.who("d", ("mms-password", "dso-secret"))
    assert s.write("pv1", "ActPow", "FSCH02", [Write("SchdPrio", 0, 260)], tso).ok
    refused = s.write("pv1", "ActPow", "FSCH02", [Write("Val", 1, 0.0)], dso)
    assert (refused.ok, refused.rule) == (False, "party:owner")
    refused = s.write("pv1", "ActPow", "FSCH01", [Write("SchdPrio", 0, 2147483647)], dso)
    assert (refused.ok, refused.rule) == (False, "band")
    assert s.view("pv1", "ActPow")["schedules"]["FSCH01"]["settings"]["prio"] == 0   # nothing changed
    assert s.view("pv1", "ActPow")["schedules"]["FSCH02"]["settings"]["writer"] == "tso"
    fut = s.operate("pv1", "ActPow", "FSCH02", "disable", dso)
    assert fut.result(0).rule == "party:owner"


def test_writes_carry_their_party_to_the_controller(site_session):
    s = site_session()
    tso = s.who("t", ("mms-password", "tso-secret"))
    s.write("pv1", "ActPow", "FSCH01", [Write("SchdPrio", 0, 250)], tso)
    s.on_ready([])
    batch = s.actor.to("controller-address-1")[-1]
    assert [w.party for w in batch.writes] == ["tso"]


def test_only_a_recognised_partys_requests_and_connections_count_as_contact(site_session):
    s = site_session(anonymous="read")
    s.connected(True, s.who("x:1"))            # an anonymous reader: no contact
    s.on_wakeup(Wakeup("contact"))
    assert not [m for m in s.actor.to("site") if isinstance(m, WanContact)]
    s.contact(s.who("x:1", ("mms-password", "dso-secret")))
    s.on_wakeup(Wakeup("contact"))
    assert [m for m in s.actor.to("site") if isinstance(m, WanContact)]


def test_every_request_and_its_answer_is_in_the_endpoints_signed_audit_chain(site_session, tmp_path):
    s = site_session(anonymous="read")
    dso = s.who("192.0.2.7:4000", ("mms-password", "dso-secret"))
    s.write("pv1", "ActPow", "FSCH01", [Write("SchdPrio", 0, 150)], dso)
    s.write("pv1", "ActPow", "FSCH01", [Write("SchdPrio", 0, 999)], dso)
    s.write("pv1", "ActPow", "FSCH01", [Write("Val", 1, 1.0)], s.who("198.51.100.1:1"))
    s.audit.sync()
    folder = audit_dir(tmp_path) / s.name
    lines = [__import__("json").loads(x) for f in sorted(folder.glob("*.jsonl")) for x in f.read_text().splitlines()]
    instructions = [r for r in lines if r["kind"] == "instruction"]
    assert [(r["party"], r["peer"], r["answer"] if r["answer"] == "ok" else r["answer"]["refused"])
            for r in instructions] == [("dso", "192.0.2.7:4000", "ok"), ("dso", "192.0.2.7:4000", "band"),
                                       ("", "198.51.100.1:1", "party:operation")]
    assert instructions[0]["detail"] == {"writes": [["SchdPrio", 0, 150]]}
    key = load_public_key(audit_dir(tmp_path) / "audit-key.pub")
    assert verify(folder, key).ok
    cli = subprocess.run([sys.executable, "-m", "relevent", "audit", "verify", str(audit_dir(tmp_path))],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stdout + cli.stderr


# -- the topology --------------------------------------------------------------------------------
SITE = """
[site]
name = "p"
state_dir = "/tmp/relevent-parties-test"

[[party]]
name = "dso"
mms_password = "a"
priority = [100, 200]

[[party]]
name = "tso"
mms_password = "{tso_password}"
priority = [{tso_lo}, 300]
ders = [{tso_ders}]

[[wan]]
name = "mms"
protocol = "mms"
address = "{address}"
party = "{party}"

[[der]]
name = "pv1"

[[der]]
name = "pv2"
"""


def topo(**kw):
    values = {"tso_password": "b", "tso_lo": 250, "tso_ders": '"pv1"', "address": "127.0.0.1", "party": "dso"}
    values.update(kw)
    return parse_topology(SITE.format(**values), "site.toml", env={})


def test_a_valid_site_with_parties_loads_with_its_rights():
    t = topo()
    assert [p["name"] for p in t.data["party"]] == ["dso", "tso"]
    assert t.data["party"][1]["ders"] == ["pv1"] and t.data["party"][0]["others"] is False
    assert not t.warnings


def test_party_problems_name_file_line_and_key():
    with pytest.raises(TopologyError) as err:
        topo(tso_password="a", tso_ders='"pv9"', party="nobody")
    text = str(err.value)
    assert "site.toml:13: party[1].mms_password: party 'dso' has the same mms_password" in text
    assert "party[1].ders: DER 'pv9' does not exist" in text
    assert "wan[0].party: clients without credentials act as party 'nobody', which is not defined" in text


def test_overlapping_bands_and_a_der_no_party_may_steer_are_reported_not_refused():
    t = topo(tso_lo=150)
    messages = [str(w) for w in t.warnings]
    assert any("priority bands of 'dso' 100..200 and 'tso' 150..300 overlap" in m for m in messages)
    with_reader_only = parse_topology(SITE.format(tso_password="b", tso_lo=250, tso_ders='"pv1"',
                                                  address="127.0.0.1", party="dso").replace(
        'name = "dso"\nmms_password = "a"', 'name = "dso"\nmms_password = "a"\nders = ["pv1"]'), "site.toml", env={})
    assert any("no party may steer DER 'pv2'" in str(w) for w in with_reader_only.warnings)


def test_an_endpoint_beyond_loopback_serves_no_anonymous_client_by_default():
    from relevent.topology.loader import anonymous_mode
    text = SITE.format(tso_password="b", tso_lo=250, tso_ders='"pv1"', address="0.0.0.0", party="dso")
    t = parse_topology(text.replace('party = "dso"\n\n[[der]]', 'party = "dso"\ninsecure = true\n\n[[der]]'),
                       "site.toml", env={})   # (plain text beyond loopback: acknowledged)
    assert anonymous_mode(t.data["wan"][0]) == "none"
    assert anonymous_mode(topo().data["wan"][0]) == "party"
