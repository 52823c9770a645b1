"""The state store: round trip, atomic replacement, corrupt files named and kept."""
from __future__ import annotations

import msgpack
import pytest

from relevent.store import StateCorrupt, StateStore


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
    (lambda blob: msgpack.packb({"format": "relevent-state", "version": 99, "key": "k", "data": {}}),
     "format version 99"),
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
