"""The audit log: signed, hash-chained records; rotation, retention, verify, show, the CLI."""
from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relevent.audit import chain
from relevent.audit.log import AuditLog, AuditLogBusy, load_or_create_key
from relevent.audit.verify import load_public_key, verify
from relevent.cli import main

DAY = 86_400_000
T0 = 1_796_000_000_000          # 2026-11-29T...Z


class Clock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        self.t += 7
        return self.t


def instruction(i: int, party: str = "dso", der: str = "pv1") -> dict:
    return {"party": party, "protocol": "mms", "peer": f"10.0.0.{i % 250}:50123", "endpoint": "mms",
            "der": der, "function": "ActPow", "schedule": 1 + i % 10, "action": "write",
            "detail": {"SchdPrio": 150, "values": [i * 1.5, -2.0], "SchdIntv": 900}, "answer": "ok"}


def make_log(tmp_path: Path, n: int, **kwargs) -> tuple[Path, object]:
    kwargs.setdefault("clock", Clock())
    with AuditLog(tmp_path / "state", "site1", **kwargs) as log:
        for i in range(n):
            log.append(instruction(i))
    audit = tmp_path / "state" / "audit"
    return audit, load_public_key(audit / "audit-key.pub")


def log_files(audit: Path) -> list[Path]:
    return sorted(audit.glob("audit-*.jsonl"), key=lambda p: chain.parse_file_name(p.name)[1])


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relevent", "audit", *args], capture_output=True, text=True,
                          timeout=60)


# -- round trip -------------------------------------------------------------------------

def test_appended_records_verify_as_one_chain_from_the_start(tmp_path):
    audit, key = make_log(tmp_path, 20)
    result = verify(audit, key)
    assert result.ok and result.problem is None and result.from_genesis
    assert result.records == 21 and (result.first_seq, result.last_seq) == (0, 20)
    assert result.truncated is None


def test_each_record_is_one_canonical_line_with_every_field_in_order(tmp_path):
    audit, _ = make_log(tmp_path, 3)
    lines = log_files(audit)[0].read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(tuple(r) == chain.FIELDS for r in records)
    assert records[0]["kind"] == "start" and records[0]["prev"] == chain.GENESIS
    assert records[0]["detail"]["site"] == "site1"
    assert [r["seq"] for r in records] == [0, 1, 2, 3]
    assert records[1]["iso"] == chain.iso_of(records[1]["time"]) and records[1]["iso"].endswith("Z")
    for before, line in zip(lines, lines[1:]):
        assert json.loads(line)["prev"] == chain.record_hash(before)


def test_a_reopened_log_continues_the_same_chain_with_an_open_record(tmp_path):
    clock = Clock()
    make_log(tmp_path, 3, clock=clock)
    audit, key = make_log(tmp_path, 2, clock=clock)
    records = [json.loads(x) for x in log_files(audit)[0].read_bytes().splitlines()]
    assert [r["kind"] for r in records].count("open") == 1
    assert verify(audit, key).records == 7


def test_odd_values_are_recorded_and_unknown_fields_are_refused(tmp_path):
    with AuditLog(tmp_path, "s", clock=Clock()) as log:
        log.append({"der": "pv1", "detail": {"value": float("-inf"), 3: (1, 2), "raw": b"\x00"}})
        with pytest.raises(ValueError, match="detail"):
            log.append({"der": "pv1", "priority": 3})
        with pytest.raises(ValueError):
            log.append({"seq": 5})
    record = json.loads(log.path.read_bytes().splitlines()[-1])
    assert record["kind"] == "instruction"
    assert record["detail"] == {"3": [1, 2], "raw": "AA==", "value": "-Infinity"}


# -- the key ----------------------------------------------------------------------------

def test_the_site_key_is_made_once_private_to_its_owner_with_its_public_half_beside_it(tmp_path):
    key = load_or_create_key(tmp_path)
    assert stat.S_IMODE((tmp_path / "site-key.pem").stat().st_mode) == 0o600
    assert chain.fingerprint(load_public_key(tmp_path / "audit-key.pub")) == chain.fingerprint(key)
    assert chain.fingerprint(load_or_create_key(tmp_path)) == chain.fingerprint(key)


def test_a_second_writer_on_the_same_directory_is_refused(tmp_path):
    with AuditLog(tmp_path, "s", clock=Clock()):
        with pytest.raises(AuditLogBusy):
            AuditLog(tmp_path, "s", clock=Clock())
    AuditLog(tmp_path, "s", clock=Clock()).close()


# -- tampering --------------------------------------------------------------------------

def change_one_byte(audit: Path) -> int:
    path = log_files(audit)[0]
    data = bytearray(path.read_bytes())
    lines = data.split(b"\n")
    offset = sum(len(x) + 1 for x in lines[:5]) + lines[5].index(b'"values":[') + 10
    data[offset] = ord("9") if data[offset] != ord("9") else ord("8")
    path.write_bytes(bytes(data))
    return 6


def remove_one_record(audit: Path) -> int:
    path = log_files(audit)[0]
    lines = path.read_bytes().split(b"\n")
    del lines[4]
    path.write_bytes(b"\n".join(lines))
    return 5


def swap_two_records(audit: Path) -> int:
    path = log_files(audit)[0]
    lines = path.read_bytes().split(b"\n")
    lines[3], lines[4] = lines[4], lines[3]
    path.write_bytes(b"\n".join(lines))
    return 4


def resign_with_another_key(audit: Path) -> int:
    path = log_files(audit)[0]
    lines = path.read_bytes().split(b"\n")
    old = json.loads(lines[6])
    fields = chain.entry_fields({k: old[k] for k in chain.INPUT_FIELDS} | {"answer": "refused"})
    lines[6] = chain.sign_record(old["seq"], old["time"], old["prev"], fields, Ed25519PrivateKey.generate())
    path.write_bytes(b"\n".join(lines))
    return 7


TAMPERING = {
    "one byte changed": (change_one_byte, "canonical|signature|JSON"),
    "one record removed": (remove_one_record, "prev does not match"),
    "two records swapped": (swap_two_records, "prev does not match"),
    "a record re-signed with another key": (resign_with_another_key, "bad signature"),
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_verify_names_the_first_bad_record_after(tmp_path, how):
    damage, reason = TAMPERING[how]
    audit, key = make_log(tmp_path, 12)
    line = damage(audit)
    result = verify(audit, key)
    assert not result.ok
    assert result.problem.file == log_files(audit)[0] and result.problem.line == line
    assert any(word in result.problem.reason for word in reason.split("|")), result.problem.reason


@pytest.mark.parametrize("how", list(TAMPERING) + ["a middle file removed"])
def test_the_verify_command_exits_1_with_file_and_line_after(tmp_path, how):
    audit, _ = make_log(tmp_path, 40, max_file_bytes=4000)
    assert cli("verify", str(audit)).returncode == 0
    if how == "a middle file removed":
        files = log_files(audit)
        assert len(files) >= 4
        files[2].unlink()
        where = f"{files[3]}:1:"
    else:
        where = f"{log_files(audit)[0]}:{TAMPERING[how][0](audit)}:"
    done = cli("verify", str(audit), "--key", str(audit / "audit-key.pub"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("BAD ") and where in done.stdout


def test_a_file_whose_first_records_were_removed_is_bad(tmp_path):
    audit, key = make_log(tmp_path, 5)
    path = log_files(audit)[0]
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[2:]))
    result = verify(path, key)
    assert not result.ok and result.problem.line == 1 and "not a header" in result.problem.reason


def test_an_anchor_kept_off_site_detects_records_removed_from_the_end(tmp_path):
    clock = Clock()
    with AuditLog(tmp_path, "s", clock=clock) as log:
        for i in range(5):
            log.append(instruction(i))
        anchor = log.last_hash
        log.append(instruction(5))
    audit = tmp_path / "audit"
    key = load_public_key(audit / "audit-key.pub")
    assert verify(audit, key, anchor=anchor).ok
    path = log_files(audit)[0]
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-2]))
    assert verify(audit, key).ok, "without an anchor, removing the last records is undetectable"
    assert "anchored hash" in verify(audit, key, anchor=anchor).problem.reason


# -- power loss -------------------------------------------------------------------------

def cut_last_line(path: Path, keep: int = 40) -> None:
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[:start + keep])


def test_a_cut_last_line_is_reported_distinctly_and_is_not_bad(tmp_path):
    audit, key = make_log(tmp_path, 5)
    path = log_files(audit)[0]
    cut_last_line(path)
    result = verify(audit, key)
    assert result.ok and result.records == 5
    assert result.truncated.file == path and result.truncated.line == 6
    done = cli("verify", str(audit))
    assert done.returncode == 0 and "cut last line" in done.stderr


def test_after_a_cut_the_log_continues_in_a_new_file_that_declares_the_cut(tmp_path):
    clock = Clock()
    audit, key = make_log(tmp_path, 5, clock=clock)
    cut_last_line(log_files(audit)[0])
    make_log(tmp_path, 3, clock=clock)
    files = log_files(audit)
    assert len(files) == 2
    first = json.loads(files[1].read_bytes().splitlines()[0])
    assert first["kind"] == "rotation" and first["detail"]["truncated"]["bytes"] == 40
    result = verify(audit, key)
    assert result.ok and result.truncated is None and len(result.declared_cuts) == 1


def test_an_undeclared_cut_line_in_the_middle_of_the_chain_is_bad(tmp_path):
    audit, key = make_log(tmp_path, 40, max_file_bytes=4000)
    files = log_files(audit)
    data = files[1].read_bytes()
    files[1].write_bytes(data + b'{"seq":99,"ti')
    result = verify(audit, key)
    assert not result.ok and result.problem.file == files[1] and "cut line" in result.problem.reason


# -- rotation and retention -------------------------------------------------------------

def test_rotation_by_size_keeps_the_chain_across_files(tmp_path):
    audit, key = make_log(tmp_path, 60, max_file_bytes=5000)
    files = log_files(audit)
    assert len(files) >= 5
    for before, after in zip(files, files[1:]):
        last = before.read_bytes().splitlines()[-1]
        first = json.loads(after.read_bytes().splitlines()[0])
        assert first["kind"] == "rotation" and first["prev"] == chain.record_hash(last)
        assert first["detail"]["previous_file"] == before.name
        assert first["detail"]["previous_seq"] == json.loads(last)["seq"]
        assert chain.parse_file_name(after.name)[1] == first["seq"]
    assert verify(audit, key).records == 61 + len(files) - 1
    assert verify(files[2:], key).ok, "a tail of the rotation chain verifies on its own"


def test_a_new_utc_day_starts_a_new_file(tmp_path):
    clock = Clock(T0)
    with AuditLog(tmp_path, "s", clock=clock) as log:
        log.append(instruction(1))
        clock.t += DAY
        log.append(instruction(2))
    files = log_files(tmp_path / "audit")
    assert [chain.parse_file_name(f.name)[0] for f in files] == [chain.day_of(T0), chain.day_of(T0 + DAY)]
    assert json.loads(files[1].read_bytes().splitlines()[0])["detail"]["reason"] == "day"


def test_retention_removes_whole_old_files_only_and_never_the_current_one(tmp_path):
    clock = Clock(T0)
    with AuditLog(tmp_path, "s", retention_days=7, clock=clock) as log:
        for day in range(10):
            log.append(instruction(day))
            clock.t = T0 + (day + 1) * DAY
        log.append(instruction(10))          # day 10: files of days 0..2 are older than 7 days
    audit = tmp_path / "audit"
    days = [chain.parse_file_name(f.name)[0] for f in log_files(audit)]
    assert days == [chain.day_of(T0 + d * DAY) for d in range(3, 11)]
    key = load_public_key(audit / "audit-key.pub")
    result = verify(audit, key)
    assert result.ok and not result.from_genesis
    retention = [json.loads(x) for x in log_files(audit)[-1].read_bytes().splitlines()
                 if json.loads(x)["kind"] == "retention"]
    removed = [chain.parse_file_name(r["file"])[0] for r in retention[0]["detail"]["removed"]]
    assert removed == [chain.day_of(T0 + 2 * DAY)] and len(retention) == 1, "each removal is recorded"
    # a log idle far beyond the retention keeps its current file
    clock.t += 30 * DAY
    AuditLog(tmp_path, "s", retention_days=7, clock=clock).close()
    assert len(log_files(audit)) == 1 and verify(audit, key).ok


# -- threads ----------------------------------------------------------------------------

def test_concurrent_appends_from_threads_keep_a_valid_chain(tmp_path):
    log = AuditLog(tmp_path, "s", max_file_bytes=200_000)
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        for i in range(250):
            log.append(instruction(i, party=f"p{n}"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    result = verify(tmp_path / "audit", load_public_key(tmp_path / "audit" / "audit-key.pub"))
    assert result.ok, result.problem
    files = len(result.files)
    assert files > 1 and result.records == 1 + 8 * 250 + files - 1


def test_the_background_sync_runs_and_close_is_idempotent(tmp_path):
    log = AuditLog(tmp_path, "s", sync_interval_ms=10)
    log.append(instruction(1))
    assert log._dirty
    for _ in range(200):
        if not log._dirty:
            break
        threading.Event().wait(0.01)
    assert not log._dirty
    log.close()
    log.close()


# -- show -------------------------------------------------------------------------------

def test_show_filters_by_since_party_and_der(tmp_path, capsys):
    clock = Clock(T0)
    with AuditLog(tmp_path, "s", clock=clock) as log:
        log.append(instruction(1, party="dso", der="pv1"))
        clock.t = T0 + 60_000
        log.append(instruction(2, party="tso", der="pv1"))
        log.append(instruction(3, party="dso", der="bat1"))
        log.append({"kind": "command", "der": "pv1", "function": "ActPow", "detail": {"from": 0, "to": -2.0}})
    audit = str(tmp_path / "audit")

    def show(*args: str) -> list[dict]:
        assert main(["audit", "show", audit, "--json", *args]) == 0
        return [json.loads(x) for x in capsys.readouterr().out.splitlines()]

    assert [r["seq"] for r in show("--party", "dso")] == [1, 3]
    assert [r["seq"] for r in show("--der", "pv1")] == [1, 2, 4]
    assert [r["seq"] for r in show("--since", chain.iso_of(T0 + 60_000))] == [2, 3, 4]
    assert [r["seq"] for r in show("--since", str((T0 + 60_000) / 1000))] == [2, 3, 4]
    assert [r["seq"] for r in show("--since", str(T0 + 60_000), "--party", "dso", "--der", "bat1")] == [3]
    assert main(["audit", "show", audit, "--party", "tso"]) == 0
    text = capsys.readouterr().out
    assert "#2 instruction tso mms/10.0.0.2:50123 pv1/ActPow #3 write -> ok" in text


# -- the pure chain (properties) --------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
KEY = Ed25519PrivateKey.generate()


@given(detail=json_values, party=st.none() | st.text(max_size=10), schedule=st.none() | st.integers(0, 99))
@settings(max_examples=150, deadline=None)
def test_a_signed_line_checks_and_re_encodes_to_itself_for_any_detail(detail, party, schedule):
    fields = chain.entry_fields({"party": party, "schedule": schedule, "detail": detail})
    line = chain.sign_record(3, T0, chain.GENESIS.replace("0", "a"), fields, KEY)
    assert b"\n" not in line and line.isascii()
    record = chain.check_line(line, KEY.public_key())
    assert record["detail"] == fields["detail"] and record["party"] == fields["party"]


@given(detail=json_values, data=st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_single_byte_change_of_a_line_is_detected(detail, data):
    line = chain.sign_record(7, T0, chain.GENESIS, chain.entry_fields({"detail": detail}), KEY)
    position = data.draw(st.integers(0, len(line) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != line[position]))
    changed = line[:position] + bytes([byte]) + line[position + 1:]
    with pytest.raises(chain.RecordError):
        chain.check_line(changed, KEY.public_key())


@given(n=st.integers(3, 12), data=st.data())
@settings(max_examples=60, deadline=None)
def test_removing_or_swapping_any_record_of_a_chain_is_detected(n, data):
    writer = chain.Chain(KEY)
    lines = [writer.next(T0 + i, chain.entry_fields({"kind": "start" if i == 0 else "instruction",
                                                     "detail": {"i": i}})) for i in range(n)]

    def feed_all(candidate: list[bytes]) -> int | None:
        checker = chain.ChainChecker(KEY.public_key())
        for index, line in enumerate(candidate):
            try:
                checker.feed(line)
            except chain.RecordError:
                return index
        return None

    assert feed_all(lines) is None
    i = data.draw(st.integers(1, n - 2))
    assert feed_all(lines[:i] + lines[i + 1:]) == i
    swapped = list(lines)
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    assert feed_all(swapped) == i
