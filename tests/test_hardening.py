"""Process mitigations, each against the real failure it prevents."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

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
    ctypes.string_at(0)
""")


def test_segfault_kills_a_hardened_process_and_logs_the_traceback(tmp_path):
    log = tmp_path / "crash.log"
    res = subprocess.run([sys.executable, "-c", CHILD, "harden", str(log)], timeout=30)
    assert res.returncode == -signal.SIGSEGV
    assert "Segmentation fault" in log.read_text()


def test_without_hardening_a_segfault_spins_forever():
    # The trap itself, shown once: thespian's handlers turn a segfault into a busy loop.
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "plain"])
    try:
        time.sleep(1.5)
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
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
    time.sleep(60)
""")


def test_child_dies_with_its_sigkilled_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(0.3)
    assert alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child), "child survived its parent"
    if alive(child):
        os.kill(child, signal.SIGKILL)
