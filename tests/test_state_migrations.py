"""The store's format migrations (relevent/state/migrations.py): the chain's mechanics,
with test-only steps, and the store reading an older record through it and writing the
current version at the next save.

Each real step, when there is one, gets its own test here: a literal record of version N
in, the literal record of version N+1 out, the argument unchanged.
"""
from __future__ import annotations

import copy

import msgpack
import pytest

from relevent.state import migrations
from relevent.state.migrations import TooNew, UnknownVersion, current, upgrade
from relevent.store import StateStore, StateTooNew, check_directory


# -- test-only steps: v1 -> v2 renames a field, v2 -> v3 adds one --------------------------------
def v1_to_v2(record: dict) -> dict:
    data = dict(record["data"])
    data["prio"] = data.pop("priority")
    return {**record, "version": 2, "data": data}


def v2_to_v3(record: dict) -> dict:
    return {**record, "version": 3, "data": {**record["data"], "writer": ""}}


def forgets_the_version(record: dict) -> dict:
    return dict(record)


def rec(version, data=None) -> dict:
    return {"format": "relevent-state", "version": version, "key": "controller/der1/ActPow",
            "data": {"priority": 20} if data is None else data}


def test_the_current_version_is_the_end_of_the_chain():
    assert current(()) == migrations.FIRST == 1
    assert current((v1_to_v2, v2_to_v3)) == 3
    assert current() == migrations.FIRST + len(migrations.CHAIN)


def test_an_older_record_goes_through_every_step_in_order_and_its_argument_is_not_changed():
    old = rec(1)
    kept = copy.deepcopy(old)
    assert upgrade(old, (v1_to_v2, v2_to_v3)) == {**rec(3, {"prio": 20, "writer": ""})}
    assert old == kept


def test_a_record_in_the_middle_of_the_chain_takes_only_the_later_steps():
    assert upgrade(rec(2, {"prio": 5}), (v1_to_v2, v2_to_v3)) == rec(3, {"prio": 5, "writer": ""})


def test_a_current_record_is_returned_as_it_is():
    record = rec(2, {"prio": 5})
    assert upgrade(record, (v1_to_v2,)) is record


def test_a_record_from_a_newer_build_is_refused_naming_both_versions():
    with pytest.raises(TooNew) as info:
        upgrade(rec(3), (v1_to_v2,))
    assert (info.value.version, info.value.current) == (3, 2)
    assert "format version 3" in str(info.value) and "reads versions 1..2" in str(info.value)


@pytest.mark.parametrize("version", [0, -1, None, "1", True, 1.0])
def test_a_version_no_build_wrote_is_refused(version):
    with pytest.raises(UnknownVersion):
        upgrade(rec(version), (v1_to_v2,))


def test_a_step_that_does_not_bump_the_version_is_caught():
    with pytest.raises(AssertionError, match="forgets_the_version turned version 1 into 1"):
        upgrade(rec(1), (forgets_the_version,))


# -- the store and the chain --------------------------------------------------------------------------
def test_the_store_reads_an_older_record_through_the_chain_and_the_next_save_writes_the_current_version(
        tmp_path, monkeypatch):
    store = StateStore(tmp_path)
    store.save("controller/der1/ActPow", {"priority": 20})       # written by "today's" build: v1
    path = store.path_of("controller/der1/ActPow")
    v1_bytes = path.read_bytes()
    assert msgpack.unpackb(v1_bytes)["version"] == 1

    monkeypatch.setattr(migrations, "CHAIN", (v1_to_v2,))        # "the next build": v2
    assert check_directory(tmp_path) is None
    data = store.load("controller/der1/ActPow")
    assert data == {"prio": 20}
    assert path.read_bytes() == v1_bytes, "a load never writes"
    assert store.outdated("controller/der1/ActPow")  # so a controller saves it even unchanged
    store.save("controller/der1/ActPow", data)
    assert not store.outdated("controller/der1/ActPow")
    assert msgpack.unpackb(path.read_bytes()) == {**rec(2, {"prio": 20})}

    monkeypatch.setattr(migrations, "CHAIN", ())                 # back on the older build
    v2_bytes = path.read_bytes()
    with pytest.raises(StateTooNew, match="format version 2 was written by a newer relevent"):
        store.load("controller/der1/ActPow")
    assert path.read_bytes() == v2_bytes
