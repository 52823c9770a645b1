"""The state directory's lock (relevent/runtime/statelock.py): the pure decision, then real
runs: a lock left by a dead runner (power loss) is taken over with a warning naming its pid, a
live one is refused naming the pid that holds it, a killed runner's leftover actor processes
are stopped and the lock taken over, and a clean stop leaves nothing stale."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from relevent.runtime.runner import group_processes
from relevent.runtime.statelock import StateLock, decide, running_pid
from sitectl import REPO, Site, free_port, small_topology


# -- the decision ---------------------------------------------------------------------------------
def test_a_free_lock_with_no_pid_or_our_own_is_simply_taken():
    assert decide(True, None, 10, False, "/s").action == "take"
    assert decide(True, 10, 10, True, "/s").action == "take"


def test_a_free_lock_naming_another_pid_is_taken_over_with_a_warning_naming_it():
    d = decide(True, 4242, 10, False, "/s")
    assert d.action == "take_over" and "pid 4242" in d.message and "/s" in d.message


def test_a_held_lock_whose_runner_lives_is_refused_naming_its_pid():
    d = decide(False, 4242, 10, True, "/s")
    assert d.action == "refuse" and "already running (pid 4242)" in d.message


def test_a_held_lock_whose_runner_is_dead_has_its_holders_stopped_when_all_are_that_runners():
    d = decide(False, 4242, 10, False, "/s", holders=(4300, 4301), orphans=(4300, 4301))
    assert d.action == "clear_orphans" and "4242" in d.message and "4300, 4301" in d.message


def test_a_held_lock_with_a_holder_not_of_the_dead_runner_is_refused_and_nothing_is_killed():
    # e.g. `relevent state import` holding the lock after a power loss left a pid in the file
    d = decide(False, 4242, 10, False, "/s", holders=(4300, 5000), orphans=(4300,))
    assert d.action == "refuse" and "processes 4300, 5000" in d.message


def test_a_held_lock_naming_no_pid_is_refused_naming_its_holders():
    d = decide(False, None, 10, False, "/s", holders=(77,))
    assert d.action == "refuse" and "processes 77" in d.message and "already running" in d.message


# -- the lock itself, in this process ---------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_lock_file_left_with_a_dead_pid_is_taken_over_and_a_clean_release_empties_it(tmp_path):
    (tmp_path / "relevent.lock").write_text(f"{dead_pid()}\n")
    lock = StateLock(tmp_path)
    warning = lock.acquire()
    assert "not running" in warning
    assert (tmp_path / "relevent.lock").read_text() == f"{os.getpid()}\n"
    lock.release()
    assert (tmp_path / "relevent.lock").read_text() == ""
    assert StateLock(tmp_path).acquire() == ""  # nothing stale after a clean release


def test_running_pid_reads_without_taking_or_writing(tmp_path):
    assert running_pid(tmp_path) is None
    lock = StateLock(tmp_path)
    lock.acquire()
    # Held by this process: a second open file description of ours is refused by flock too.
    before = (tmp_path / "relevent.lock").read_text()
    assert running_pid(tmp_path) in (os.getpid(), 0)
    assert (tmp_path / "relevent.lock").read_text() == before
    lock.release()
    assert running_pid(tmp_path) is None


# -- real runs ------------------------------------------------------------------------------------
def site_at(tmp_path, name: str = "site") -> Site:
    state = tmp_path / f"{name}-state"
    path = tmp_path / f"{name}.toml"
    path.write_text(small_topology(state, free_port()))
    return Site(path, state)


def test_a_lock_left_by_a_power_loss_is_taken_over_with_a_warning(tmp_path):
    site = site_at(tmp_path)
    site.state_dir.mkdir(parents=True)
    gone = dead_pid()
    (site.state_dir / "relevent.lock").write_text(f"{gone}\n")
    try:
        site.start()
        text = (site.state_dir / "relevent.log").read_text()
        assert f"WARNING relevent.runner pid={site.proc.pid} taking over the lock" in text
        assert f"left by pid {gone}, which is not running" in text
        assert (site.state_dir / "relevent.lock").read_text() == f"{site.proc.pid}\n"
        assert site.stop() == 0
        assert (site.state_dir / "relevent.lock").read_text() == ""  # a clean stop: nothing stale
    finally:
        site.kill_everything()


def test_a_live_lock_is_refused_naming_the_pid_that_holds_it_and_nothing_is_touched(tmp_path):
    site = site_at(tmp_path)
    try:
        site.start()
        before = site.pids()
        res = subprocess.run([sys.executable, "-m", "relevent", "run", str(site.topology)], capture_output=True,
                             text=True, cwd=REPO, timeout=30)
        assert res.returncode != 0
        assert f"site already running (pid {site.proc.pid})" in res.stderr, res.stderr
        assert (site.state_dir / "relevent.lock").read_text() == f"{site.proc.pid}\n"
        assert site.pids() == before and (site.state_dir / "relevent.sock").exists()
        assert running_pid(site.state_dir) == site.proc.pid
    finally:
        site.stop()
        site.kill_everything()


def test_a_killed_runners_leftover_processes_are_stopped_and_the_lock_taken_over(tmp_path):
    site = site_at(tmp_path)
    old_pgid = None
    try:
        site.start()
        old_runner, old_pgid = site.proc.pid, site.admin_pgid
        site.proc.kill()   # kill -9 of the runner alone: thespian's admin and logger outlive it
        site.proc.wait()
        site.proc = None
        # No marker for "they stay": a process taken down with the runner (a parent-death
        # signal, a broken pipe) goes within milliseconds, well inside this.
        time.sleep(0.5)
        left = group_processes(old_pgid)
        assert left, "expected the admin and logger to outlive a killed runner"
        site.start()
        assert not any(pid in group_processes(old_pgid) for pid in left)
        text = (site.state_dir / "relevent.log").read_text()
        assert f"names pid {old_runner}, which is not running, but its processes" in text
        assert site.stop() == 0
        assert site.leftovers() == []
    finally:
        site.kill_everything()
        if old_pgid and group_processes(old_pgid):
            os.killpg(old_pgid, signal.SIGKILL)
