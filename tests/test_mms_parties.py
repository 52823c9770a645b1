"""Parties over MMS (security.md sections 1 and 5, use case 5 of interfaces.md): each MMS
client is the party its ACSE password names, and the site's one policy decides its
requests.  A real site, and real MMS clients (libiec61850's, through pyiec61850) in the
test process."""
from __future__ import annotations

import time
from pathlib import Path

import open61850.mms as o61850
import pytest

from mmsclients import AssociationRefused, LibIec61850Client, Open61850Client, write_schedule
from relevent.iec61850 import lib as L
from relevent.iec61850.server import MmsServer
from sitectl import Site, free_port, now_ms, small_topology
from sitectl import mms_port as port_of

IED = "DER_Scheduler_"
LD = f"{IED}Control"            # one DER: its logical device is `Control`
DSO, TSO = "dso-secret", "tso-secret"

USE_CASE_5 = f"""
[[party]]
name = "dso"
mms_password = "{DSO}"
priority = [100, 200]

[[party]]
name = "tso"
mms_password = "{TSO}"
priority = [250, 300]
others = true
"""

ONE_DER_ONLY = """
[[party]]
name = "aggregator"
mms_password = "agg-secret"
ders = ["der1"]
"""


# What the site locks for clients on the grid's DER (the topology's per-DER `locks`): every
# lockable attribute (relevent.scheduling.schedule.LOCKABLE) of one schedule no other test uses.
GRID_LOCKS = 'locks = { MaxPow = { FSCH03 = ["EnaReq", "DsaReq", "StrTm", "SchdPrio", "SchdReuse"] } }\n'

# IEC 61850-7-2 AddCause values (LastApplError), as the standard numbers them.
ADD_CAUSE_NO_ACCESS_AUTHORITY = 20
ADD_CAUSE_INCONSISTENT_PARAMETERS = 26


def start_site(tmp_path: Path, name: str, der1: str = "", **kwargs) -> Site:
    """`der1`: more keys for der1's table."""
    state = tmp_path / f"{name}-state"
    path = tmp_path / f"{name}.toml"
    text = small_topology(state, free_port(), **kwargs)
    if der1:
        anchor = 'name = "der1"\n'
        assert anchor in text
        text = text.replace(anchor, anchor + der1, 1)
    path.write_text(text)
    return Site(path, state).start()


def stop_site(site: Site) -> None:
    try:
        site.stop()
        assert site.leftovers() == [], f"processes left behind: {site.leftovers()}"
    finally:
        site.kill_everything()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One DER steered by a DSO and a TSO; clients without a password may read; the site
    locks MaxPow FSCH03 (GRID_LOCKS)."""
    site = start_site(tmp_path_factory.mktemp("grid"), "grid", schedules=3, functions=("ActPow", "MaxPow"),
                      wan='anonymous = "read"', extra=USE_CASE_5, der1=GRID_LOCKS)
    yield site
    stop_site(site)


@pytest.fixture(scope="module")
def closed(tmp_path_factory):
    """Two DERs; an aggregator may steer der1 only; clients without a password get nothing."""
    site = start_site(tmp_path_factory.mktemp("closed"), "closed", ders=2, schedules=2, functions=("MaxPow",),
                      wan='anonymous = "none"', extra=ONE_DER_ONLY)
    yield site
    stop_site(site)


@pytest.fixture
def connect(grid):
    clients = []

    def open_(password: str | None = None, site: Site = grid, client=LibIec61850Client):
        c = client("127.0.0.1", port_of(site), password=password)
        clients.append(c)
        return c
    yield open_
    for c in clients:
        c.close()


def fsch(kind: str, n: str, ld: str = LD) -> str:
    return f"{ld}/{kind}_{n}"


def prepare(c, ref: str, value: float, prio: int, start: int) -> None:
    write_schedule(c, ref, [value], interval_s=3600, prio=prio, start_ms=start)


def output_becomes(c, ref: str, value: float, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    seen = c.read_float(ref)
    while seen != value and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = c.read_float(ref)
    return seen


# -- use case 5: a DSO and a TSO on one site -------------------------------------------------------
def test_the_tso_emergency_limit_wins_over_the_dso_limit_at_the_der(connect):
    dso, tso = connect(DSO), connect(TSO, client=Open61850Client)  # two client libraries
    start = now_ms() + 1500
    prepare(dso, fsch("MaxPow", "FSCH01"), 50.0, 150, start)
    prepare(tso, fsch("MaxPow", "FSCH02"), 5.0, 280, start)
    assert dso.operate(f"{fsch('MaxPow', 'FSCH01')}.EnaReq", True)[0]
    assert tso.operate(f"{fsch('MaxPow', 'FSCH02')}.EnaReq", True)[0]
    out = f"{LD}/MaxPow_GGIO1.AnOut1.mxVal.f"
    assert output_becomes(dso, out, 5.0) == 5.0
    assert dso.read_str(f"{LD}/MaxPow_FSCC1.ActSchdRef.stVal") == f"{LD}/MaxPow_FSCH02"
    # The DSO's limit takes over once the TSO lifts its own.
    assert tso.operate(f"{fsch('MaxPow', 'FSCH02')}.DsaReq", True)[0]
    assert output_becomes(dso, out, 50.0) == 50.0


def test_the_dso_can_neither_write_nor_enable_the_tso_schedule(connect):
    dso, tso = connect(DSO), connect(TSO)
    ref = fsch("ActPow", "FSCH02")
    prepare(tso, ref, 7.0, 260, now_ms() + 60_000)
    assert dso.write_int(f"{ref}.NumEntr.setVal", 1) == "access-denied"
    assert dso.write_float(f"{ref}.ValASG001.setMag.f", 99.0) == "access-denied"
    assert dso.write_int(f"{ref}.SchdPrio.setVal", 150) == "access-denied"
    assert dso.read_float(f"{ref}.ValASG001.setMag.f", "SP") == 7.0
    assert dso.read_int(f"{ref}.SchdPrio.setVal", "SP") == 260
    ok, _cause = dso.operate(f"{ref}.EnaReq", True)
    assert not ok
    assert dso.read_int(f"{ref}.SchdSt.stVal") == 1  # not ready
    assert tso.operate(f"{ref}.EnaReq", True)[0]  # its owner may


def test_the_dso_cannot_raise_its_priority_above_its_band(connect):
    dso = connect(DSO)
    ref = fsch("ActPow", "FSCH03")
    assert dso.write_int(f"{ref}.SchdPrio.setVal", 150) is None
    assert dso.write_int(f"{ref}.SchdPrio.setVal", 250) == "access-denied"  # refused, never clamped
    assert dso.write_int(f"{ref}.SchdPrio.setVal", 99) == "access-denied"
    assert dso.read_int(f"{ref}.SchdPrio.setVal", "SP") == 150


@pytest.mark.parametrize("client", [LibIec61850Client, Open61850Client], ids=lambda c: c.name)
def test_a_wrong_password_is_refused_at_association(grid, client):
    with pytest.raises(AssociationRefused):
        client("127.0.0.1", port_of(grid), password="not-the-dso-secret")


def test_a_client_without_a_password_may_read_but_not_write_when_anonymous_is_read(connect):
    anonymous = connect()
    ref = fsch("ActPow", "FSCH01")
    assert anonymous.read_int(f"{ref}.SchdSt.stVal") == 1
    assert anonymous.write_int(f"{ref}.NumEntr.setVal", 2) == "access-denied"
    assert anonymous.write_float(f"{ref}.ValASG001.setMag.f", 2.0) == "access-denied"
    assert not anonymous.operate(f"{ref}.EnaReq", True)[0]
    assert not anonymous.operate(f"{ref}.EnaReq", False)[0]  # not even one without effect


def test_only_a_recognised_party_association_counts_as_wan_contact(grid, connect):
    def clients() -> int:
        return grid.node("mms")["detail"]["clients"]

    def becomes(n: int) -> int:
        deadline = time.monotonic() + 5
        while clients() != n and time.monotonic() < deadline:
            time.sleep(0.05)
        return clients()
    # The clients of earlier tests closed at their teardown; the count follows a moment later.
    assert becomes(0) == 0
    anonymous = connect()
    anonymous.read_int(f"{fsch('ActPow', 'FSCH01')}.SchdSt.stVal")
    assert clients() == 0
    tso = connect(TSO)  # counted from its first request (libiec61850 indicates it before its authentication)
    tso.read_int(f"{fsch('ActPow', 'FSCH01')}.SchdSt.stVal")
    assert becomes(1) == 1
    tso.close()
    assert becomes(0) == 0  # had the anonymous association counted, one would remain


# -- refused enables: the AddCause, and the topology's locks (README "Features": IEC 61850 MMS) ----------
@pytest.mark.parametrize("client", [LibIec61850Client, Open61850Client], ids=lambda c: c.name)
def test_each_refused_enable_answers_the_add_cause_of_its_reason(connect, client):
    """README: "every write and operate validated by the scheduling rules with the right error
    codes and AddCause"; docs/mms.md: AddCause no-access-authority (locks, reserve),
    inconsistent-parameters (validation; SchdEnaErr tells which)."""
    dso = connect(DSO, client=client)
    ref = fsch("ActPow", "FSCH03")   # the DSO's (in its band); NumEntr 0 fails the enable's checks
    prepare(dso, ref, 1.0, 150, now_ms() + 3_600_000)
    assert dso.write_int(f"{ref}.NumEntr.setVal", 0) is None
    assert dso.operate(f"{ref}.EnaReq", True) == (False, ADD_CAUSE_INCONSISTENT_PARAMETERS)
    assert dso.read_int(f"{ref}.SchdEnaErr.stVal") == 2 and dso.read_int(f"{ref}.SchdSt.stVal") == 1
    reserve = fsch("ActPow", "Res_FSCH01")
    assert dso.operate(f"{reserve}.DsaReq", True) == (False, ADD_CAUSE_NO_ACCESS_AUTHORITY)
    assert dso.operate(f"{reserve}.EnaReq", True) == (False, ADD_CAUSE_NO_ACCESS_AUTHORITY)
    assert dso.read_int(f"{reserve}.SchdSt.stVal") == 4


def test_the_topologys_locks_refuse_every_lockable_attribute_over_mms_and_keep_its_value(connect):
    """README: "per-DER reserve values and locks" (topology); docs/scheduling.md: a locked
    attribute refuses the write with object-access-denied and keeps its value.  Even the TSO,
    which may do everything to every schedule, is refused."""
    tso = connect(TSO, client=Open61850Client)   # reads StrTm as a time
    ref = fsch("MaxPow", "FSCH03")
    prio = tso.read_int(f"{ref}.SchdPrio.setVal", "SP")
    reuse = tso.read_bool(f"{ref}.SchdReuse.setVal", "SP")
    start = tso.read_time_ms(f"{ref}.StrTm01.setTm", "SP")
    assert tso.write_int(f"{ref}.SchdPrio.setVal", 260) == "access-denied"
    assert tso.write_bool(f"{ref}.SchdReuse.setVal", not reuse) == "access-denied"
    assert tso.write_time(f"{ref}.StrTm01.setTm", now_ms() + 3_600_000) == "access-denied"
    assert tso.write_int(f"{ref}.NumEntr.setVal", 1) is None   # what is not locked stays writable
    assert tso.operate(f"{ref}.EnaReq", True) == (False, ADD_CAUSE_NO_ACCESS_AUTHORITY)
    assert tso.operate(f"{ref}.DsaReq", True) == (False, ADD_CAUSE_NO_ACCESS_AUTHORITY)
    assert tso.read_int(f"{ref}.SchdPrio.setVal", "SP") == prio
    assert tso.read_bool(f"{ref}.SchdReuse.setVal", "SP") == reuse
    assert tso.read_time_ms(f"{ref}.StrTm01.setTm", "SP") == start
    assert tso.read_int(f"{ref}.SchdSt.stVal") == 1


# -- writes no handler decides (security.md section 5) ----------------------------------------------
def test_a_setting_without_a_handler_cannot_be_written_even_by_a_party_with_every_right(connect):
    tso = connect(TSO)
    src = f"{LD}/ActPow_FSCC1.Schd01.setSrcRef"
    before = tso.read_str(src, "SP")
    assert tso.write_str(src, "@Control/ActPow_FSCH03") == "access-denied"
    assert tso.read_str(src, "SP") == before
    cal = f"{LD}/ActPow_Res_FSCH01.StrTm01.setCal.occPer"   # the reserve's calendar
    before = tso.read_int(cal, "SP")
    assert tso.write_int(cal, before + 1) == "access-denied"
    assert tso.read_int(cal, "SP") == before
    anonymous = connect(client=Open61850Client)   # the other client library, as anonymous = "read"
    assert anonymous.write_str(src, "@Control/ActPow_FSCH03") == "access-denied"


def test_setting_writes_with_a_handler_still_reach_the_session(connect):
    tso = connect(TSO)  # every handled kind of attribute: int, float (setMag.f), bool, time
    ref = fsch("ActPow", "FSCH01")
    assert tso.write_int(f"{ref}.SchdIntv.setVal", 60) is None
    assert tso.write_bool(f"{ref}.SchdReuse.setVal", True) is None
    assert tso.write_float(f"{ref}.ValASG002.setMag.f", 4.5) is None
    assert tso.write_time(f"{ref}.StrTm02.setTm", now_ms() + 3_600_000) is None
    assert tso.read_float(f"{ref}.ValASG002.setMag.f", "SP") == 4.5


# -- an endpoint closed to the unknown ----------------------------------------------------------------
@pytest.mark.parametrize("client", [LibIec61850Client, Open61850Client], ids=lambda c: c.name)
def test_a_client_without_a_password_cannot_connect_when_anonymous_is_none(closed, client):
    with pytest.raises(AssociationRefused):
        client("127.0.0.1", port_of(closed))


def test_a_party_restricted_to_der1_can_neither_read_nor_write_der2(closed):
    agg = LibIec61850Client("127.0.0.1", port_of(closed), password="agg-secret")
    try:
        mine, other = fsch("MaxPow", "FSCH01", f"{IED}der1Control"), fsch("MaxPow", "FSCH01", f"{IED}der2Control")
        assert agg.read_int(f"{mine}.SchdSt.stVal") == 1
        assert agg.write_int(f"{mine}.NumEntr.setVal", 1) is None
        with pytest.raises(IOError):
            agg.read_int(f"{other}.SchdSt.stVal")
        with pytest.raises(IOError):
            agg.read_float(f"{IED}der2Control/MaxPow_GGIO1.AnOut1.mxVal.f")
        assert agg.write_int(f"{other}.NumEntr.setVal", 1) == "access-denied"
        with pytest.raises(RuntimeError):  # libiec61850's client reads ctlModel first: denied
            agg.operate(f"{other}.EnaReq", True)
        assert agg.read_int(f"{mine}.SchdSt.stVal") == 1  # still served
    finally:
        agg.close()
    agg = Open61850Client("127.0.0.1", port_of(closed), password="agg-secret")  # operates at once
    try:
        assert agg.operate(f"{other}.EnaReq", True)[0] is False
        assert agg.operate(f"{other}.EnaReq", False)[0] is False    # even without effect
    finally:
        agg.close()


# -- the server's side alone: both write paths, the authenticator, the read check -----------------
@pytest.fixture(params=["write-hook", "libiec61850-list"])
def bare(request, tmp_path: Path, monkeypatch):
    """An MmsServer with handlers that note the client token they get, as the endpoint
    installs them, with the write hook (fast path) and without (libiec61850's own list)."""
    from test_mms_startup import FSCH, site_model
    if request.param == "libiec61850-list":
        monkeypatch.setattr(L.WriteHook, "possible", staticmethod(lambda _server: False))
    server = MmsServer(site_model(tmp_path, [{"name": "d1", "functions": ["ActPow"], "schedules": 2, "values": 3}]),
                       IED, str(tmp_path))
    seen = {"writes": [], "checks": [], "reads": [], "connections": []}

    def handler(name: str):
        def handle(_value: int, client: int) -> int:
            seen["writes"].append((name, client))
            return L.DATA_ACCESS_ERROR_SUCCESS
        return handle
    server.on_write(f"{FSCH}.ValASG001.setMag", handler("ValASG001"), complex_attribute=True, with_client=True)
    server.on_write(f"{FSCH}.StrTm01.setTm", handler("StrTm01"), with_client=True)
    server.on_write(f"{FSCH}.NumEntr.setVal", handler("NumEntr"), with_client=True)
    server.on_control(f"{FSCH}.EnaReq", lambda _a, _v, _t, client: seen["checks"].append(client) or L.CONTROL_ACCEPTED,
                      lambda *_args: L.CONTROL_RESULT_OK, with_client=True)
    tokens = {b"pw-a": 7, b"pw-b": 9}
    server.authenticate(lambda _mechanism, password, _cert: tokens.get(password))  # no password: refused
    server.on_read_access(lambda ld, client: seen["reads"].append((ld, client)) or client == 7)
    server.on_connection(lambda up, client, peer: seen["connections"].append((up, client, peer)))
    server.deny_writes_without_handler()
    port = free_port()
    server.start("127.0.0.1", port)
    yield server, port, seen, FSCH, request.param
    server.close()


def test_each_write_path_hands_handlers_the_client_token_and_refuses_unhandled_settings(bare):
    server, port, seen, fsch_, path = bare
    assert server.fast_handlers is (path == "write-hook")
    a = Open61850Client("127.0.0.1", port, password="pw-a")
    b = Open61850Client("127.0.0.1", port, password="pw-b")
    try:
        ref = f"{IED}{fsch_}"
        assert a.write_float(f"{ref}.ValASG001.setMag.f", 1.5) is None
        assert a.write_time(f"{ref}.StrTm01.setTm", 4_102_444_800_000) is None
        assert b.write_int(f"{ref}.NumEntr.setVal", 3) is None
        assert seen["writes"] == [("ValASG001", 7), ("StrTm01", 7), ("NumEntr", 9)]
        assert a.read_float(f"{ref}.ValASG001.setMag.f", "SP") == 1.5
        # No handler: refused, whoever asks (libiec61850's write policy).
        assert a.write_int(f"{ref}.SchdPrio.setVal", 42) == "access-denied"
        assert a.write_str(f"{IED}Control/ActPow_FSCC1.Schd01.setSrcRef", "@Control/ActPow_FSCH01") == "access-denied"
        assert a.read_int(f"{ref}.SchdPrio.setVal", "SP") != 42
        assert a.operate(f"{ref}.EnaReq", True)[0] is True
        assert seen["checks"] == [7]
        # The read check: client 9 may read nothing, and the logical device is named by its inst.
        with pytest.raises(o61850.DataAccessError):
            b.read_int(f"{ref}.SchdSt.stVal")
        assert ("Control", 9) in seen["reads"] and ("Control", 7) in seen["reads"]
    finally:
        a.close()
        b.close()
    deadline = time.monotonic() + 5
    while len(seen["connections"]) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    ups = {(client, peer.startswith("127.0.0.1:")) for up, client, peer in seen["connections"] if up}
    downs = sorted(client for up, client, _peer in seen["connections"] if not up)
    assert ups == {(7, True), (9, True)} and downs == [7, 9]


@pytest.mark.parametrize("password", [None, "wrong"])
def test_the_authenticator_refuses_an_association_it_gives_no_token(bare, password):
    _server, port, seen, _fsch, _path = bare
    with pytest.raises(AssociationRefused):
        Open61850Client("127.0.0.1", port, password=password)
    assert seen["connections"] == []  # never authenticated: never indicated
