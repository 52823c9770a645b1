"""Process mitigations, each against the real failure it prevents."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sitectl import alive

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from relevent.runtime.hardening import harden_actor_process
    # What thespian does in every actor: a Python handler for every catchable signal.
    for sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL):
        signal.signal(sig, lambda *a: None)
    if sys.argv[1] == "harden":
        harden_actor_process(sys.argv[2])
    import ctypes
    print("faulting", flush=True)
    ctypes.string_at(0)
""")


def test_segfault_kills_a_hardened_process_and_logs_the_traceback(tmp_path):
    log = tmp_path / "crash.log"
    res = subprocess.run([sys.executable, "-c", CHILD, "harden", str(log)], timeout=30)
    assert res.returncode == -signal.SIGSEGV
    assert "Segmentation fault" in log.read_text()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime, stime


def test_without_hardening_a_segfault_spins_forever():
    # The trap itself, shown once: thespian's handlers turn a segfault into a busy loop.
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "plain"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "faulting\n"
        # A marker, not a sleep: the process has burnt half a second of CPU after it reached
        # the fault (a busy loop, not a wait), and never exited meanwhile.
        faulted = cpu_seconds(proc.pid)
        deadline = time.monotonic() + 30
        while cpu_seconds(proc.pid) < faulted + 0.5:
            assert proc.poll() is None, "the unhardened process should still be spinning"
            assert time.monotonic() < deadline, "the unhardened process neither spins nor exits"
            time.sleep(0.05)
        assert proc.poll() is None, "the unhardened process should still be spinning"
    finally:
        proc.kill()
        proc.wait()


PARENT = textwrap.dedent("""
    import os, sys, time
    pid = os.fork()
    if pid == 0:
        from relevent.runtime.hardening import harden_actor_process
        harden_actor_process(None)
        print("hardened", flush=True)
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
    time.sleep(60)
""")


def test_child_dies_with_its_sigkilled_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    # The parent's pid line and the child's "hardened" (its parent-death signal is set),
    # in either order: the parent is killed only once the child is hardened.
    lines = {parent.stdout.readline().strip() for _ in range(2)}
    assert "hardened" in lines, lines
    child = int(next(line for line in lines if line != "hardened"))
    assert alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child), "child survived its parent"
    if alive(child):
        os.kill(child, signal.SIGKILL)
