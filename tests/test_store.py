"""The state store: round trip, atomic replacement, corrupt files named and kept, records
from a newer build refused and kept."""
from __future__ import annotations

import msgpack
import pytest

from relevent.store import StateCorrupt, StateStore, StateTooNew, check_directory, newer_record


def test_round_trip_and_missing(tmp_path):
    store = StateStore(tmp_path)
    assert store.load("der1/ActPow/FSCH01") is None
    data = {"NumEntr": 3, "values": [1.5, float("inf")], "ena": True, "name": "ü"}
    store.save("der1/ActPow/FSCH01", data)
    assert store.load("der1/ActPow/FSCH01") == data
    store.save("der1/ActPow/FSCH01", {"NumEntr": 4})
    assert store.load("der1/ActPow/FSCH01") == {"NumEntr": 4}
    assert [p.name for p in tmp_path.iterdir()] == ["der1__ActPow__FSCH01.msgpack"], "no temp file left"
    store.delete("der1/ActPow/FSCH01")
    assert store.load("der1/ActPow/FSCH01") is None


@pytest.mark.parametrize("damage, reason", [
    (lambda blob: blob[: len(blob) // 2], "not msgpack"),
    (lambda blob: b"", "not msgpack"),
    (lambda blob: b"\xc1garbage", "not msgpack"),
    (lambda blob: msgpack.packb([1, 2]), "not a relevent state record"),
    (lambda blob: msgpack.packb({"format": "relevent-state", "version": 0, "key": "k", "data": {}}),
     "format version 0 is not a version relevent ever wrote"),
    (lambda blob: msgpack.packb({"format": "relevent-state", "version": "1", "key": "k", "data": {}}),
     "format version '1' is not"),
    (lambda blob: msgpack.packb({"format": "relevent-state", "version": 1, "key": "other", "data": {}}),
     "record is for 'other'"),
])
def test_damaged_record_raises_with_the_file_name_and_is_kept(tmp_path, damage, reason):
    store = StateStore(tmp_path)
    store.save("k", {"a": 1})
    path = store.path_of("k")
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(StateCorrupt) as info:
        store.load("k")
    assert str(path) in str(info.value) and reason in str(info.value)
    assert path.read_bytes() == damaged


def test_a_record_from_a_newer_build_is_refused_naming_both_versions_and_is_kept(tmp_path):
    store = StateStore(tmp_path)
    path = store.path_of("k")
    newer = msgpack.packb({"format": "relevent-state", "version": 99, "key": "k", "data": {"a": 1}})
    path.write_bytes(newer)
    with pytest.raises(StateTooNew) as info:
        store.load("k")
    message = str(info.value)
    assert str(path) in message and "format version 99" in message and "reads versions 1..1" in message
    assert path.read_bytes() == newer


def test_the_directory_check_names_the_first_bad_record_and_finds_a_newer_one_behind_a_damaged_one(tmp_path):
    store = StateStore(tmp_path)
    store.save("a", {"x": 1})
    store.save("c", {"x": 3})
    assert check_directory(tmp_path) is None and newer_record(tmp_path) is None
    store.path_of("b").write_bytes(b"\xc1")
    store.path_of("d").write_bytes(msgpack.packb({"format": "relevent-state", "version": 7, "key": "d", "data": {}}))
    (tmp_path / ".e.msgpack.123.tmp").write_bytes(b"half a save")  # a save's temporary is not a record
    first = check_directory(tmp_path)
    assert isinstance(first, StateCorrupt) and first.path == store.path_of("b")
    newer = newer_record(tmp_path)
    assert isinstance(newer, StateTooNew) and newer.path == store.path_of("d") and newer.version == 7


def test_a_record_under_another_files_name_is_reported_by_the_directory_check(tmp_path):
    store = StateStore(tmp_path)
    store.save("a", {"x": 1})
    store.path_of("a").rename(tmp_path / "b.msgpack")
    bad = check_directory(tmp_path)
    assert isinstance(bad, StateCorrupt) and "not this file's key" in str(bad)
