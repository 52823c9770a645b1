"""Upgrades keep state: the current build takes over the state a site of an earlier build
left (tests/fixtures/state-v<N>/, written by a real run: tests/fixtures/make_state_fixture.py)
and resumes every schedule with every state and value intact, as MMS clients read them
(tests/statefixture.py computes what each must show, whatever the year)."""
from __future__ import annotations

import json
import subprocess
import sys

import msgpack
import pytest

from relevent.state.migrations import current
from sitectl import REPO, now_ms
from statefixture import FIXTURES, check_every_schedule, facts_of, fx, snapshot, take_over


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_the_current_build_takes_over_a_fixture_state_and_resumes_every_schedule_intact(tmp_path, fixture):
    site, mms = take_over(tmp_path, fixture)
    started = now_ms()
    try:
        site.start()
        check_every_schedule(site, mms, facts_of(fixture), started)
        assert site.stop() == 0
    finally:
        site.kill_everything()
    # Every record the site saved is at this build's version; none was left behind.
    for path in (site.state_dir / "store").iterdir():
        assert msgpack.unpackb(path.read_bytes(), strict_map_key=False)["version"] == current(), path.name


def test_the_v1_fixture_is_a_state_directory_as_the_build_of_its_day_wrote_it():
    store = fx.HERE / "state-v1" / "store"
    records = {p.name: msgpack.unpackb(p.read_bytes(), strict_map_key=False) for p in store.iterdir()}
    assert {r["version"] for r in records.values()} == {1}
    assert {"controller__pv1__ActPow.msgpack", "controller__pv1__MaxPow.msgpack", "controller__pv1__OnOff.msgpack",
            "controller__bat1__ActPow.msgpack", "controller__bat1__MaxPow.msgpack"} <= set(records)
    assert json.loads((fx.HERE / "state-v1.expected.json").read_text())["state_version"] == 1


def test_state_check_passes_on_every_fixture(tmp_path):
    for fixture in FIXTURES:
        site, _ = take_over(tmp_path / fixture.name, fixture)
        out = subprocess.run([sys.executable, "-m", "relevent", "state", "check", str(site.topology)],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"ok: {len(list((fixture / 'store').iterdir()))} records" in out.stdout


def test_a_state_directory_from_a_newer_build_is_refused_naming_both_versions_and_nothing_is_written(tmp_path):
    site, _ = take_over(tmp_path, fx.fixture_dir(1))
    path = site.state_dir / "store" / "controller__pv1__OnOff.msgpack"
    record = msgpack.unpackb(path.read_bytes(), strict_map_key=False)
    record["version"] = current() + 1
    path.write_bytes(msgpack.packb(record, use_bin_type=True))
    before = snapshot(site.state_dir)
    run = subprocess.run([sys.executable, "-m", "relevent", "run", str(site.topology)], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert run.returncode != 0
    assert str(path) in run.stderr
    assert f"format version {current() + 1} was written by a newer relevent" in run.stderr
    assert f"this build reads versions 1..{current()}" in run.stderr
    assert snapshot(site.state_dir) == before
