"""The state directory's lock: one running site per state directory, and who holds it.

`<state_dir>/relevent.lock` is held with `flock` by the runner, and by the actor processes it
forks (they share its open file).  The file holds the pid of the runner that took it, and is
emptied by a clean stop.  The kernel releases a flock when the last process holding the open
file exits, so:

* lock free, file empty: the last run stopped cleanly; take it.
* lock free, file names a pid: that run ended without stopping (power loss, kill -9 of the
  whole group); take it over, with a warning naming the pid.
* lock held, the named runner alive: a site runs; refuse, naming its pid.  Nothing of that
  site's files is touched.
* lock held, the named runner dead: its actor processes outlived it (the runner was killed
  with SIGKILL; actors die with their parent, thespian's admin and logger do not).  They hold
  the site's ports as well as the lock, so a new runner could not serve: they are stopped
  (SIGKILL) and the lock is taken over, with a warning naming the dead pid and the processes
  stopped -- only when every holder is one of them: in the process group of that runner's
  thespian admin (`relevent.pid`).  Any other holder (`relevent state import` holds the lock
  while it writes) is refused, named.

`decide` is the pure decision; `StateLock` does the flock, the /proc look-ups and the kills.
`running_pid` answers "does a site run on this state directory?" without taking the lock
(for commands that must not touch a running site's state).
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "relevent.lock"


@dataclass(frozen=True)
class Decision:
    action: str        # "take", "take_over", "refuse", "clear_orphans"
    message: str = ""  # the warning (take_over, clear_orphans) or the refusal


def decide(acquired: bool, recorded: int | None, me: int, recorded_alive: bool, state_dir: str,
           holders: tuple[int, ...] = (), orphans: tuple[int, ...] = ()) -> Decision:
    """What to do with the lock.  `recorded`: the pid in the file; `recorded_alive`: that pid
    is a live relevent process; `holders`: processes other than us holding the file open;
    `orphans`: those of them that are the recorded runner's own (its admin's process group)."""
    if acquired:
        if recorded is None or recorded == me:
            return Decision("take")
        return Decision("take_over", f"taking over the lock of {state_dir} left by pid {recorded}, which is not "
                                     "running (the site was not stopped: power loss or kill)")
    if recorded is not None and recorded_alive:
        return Decision("refuse", f"site already running (pid {recorded}) with state directory {state_dir}")
    if recorded is not None and holders and set(holders) <= set(orphans):
        return Decision("clear_orphans", f"the lock of {state_dir} names pid {recorded}, which is not running, but "
                                         f"its processes {', '.join(map(str, holders))} still hold it: stopping them "
                                         "and taking the lock over")
    who = f"processes {', '.join(map(str, holders))}" if holders else "another process"
    return Decision("refuse", f"site already running ({who} hold {state_dir}/{LOCK_NAME}) with state directory "
                              f"{state_dir}")


class LockRefused(Exception):
    pass


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def relevent_alive(pid: int) -> bool:
    """A live (not zombie) process running relevent: a reused pid is not the site."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and b"relevent" in cmdline


def holders_of(path: Path, exclude: int | None = None) -> tuple[int, ...]:
    """Pids of processes with `path` open (from /proc/*/fd; those we may read)."""
    target = str(path.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        try:
            for fd in (entry / "fd").iterdir():
                try:
                    if os.readlink(fd) == target:
                        found.append(int(entry.name))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return tuple(sorted(found))


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, orphan_wait: float = 5.0) -> str:
        """Take the lock or raise LockRefused; returns the warning to log (a take-over), or
        "".  Opening never truncates: a refused runner leaves the holder's pid in place."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            warning = self._acquire(fd, orphan_wait)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return warning

    def _acquire(self, fd: int, orphan_wait: float) -> str:
        me = os.getpid()
        acquired = _try_flock(fd)
        recorded = read_pid(self.path)
        alive = recorded is not None and recorded != me and relevent_alive(recorded)
        holders = () if acquired or alive else holders_of(self.path, exclude=me)
        orphans = tuple(pid for pid in holders if _pgid(pid) == self._admin_pgid(recorded)) if holders else ()
        decision = decide(acquired, recorded, me, alive, str(self.state_dir), holders, orphans)
        if decision.action == "refuse":
            raise LockRefused(decision.message)
        if decision.action == "clear_orphans":
            for pid in holders:
                if relevent_alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + orphan_wait
            while not _try_flock(fd):
                if time.monotonic() > deadline:
                    raise LockRefused(f"site already running: processes {', '.join(map(str, holders_of(self.path, me)))}"
                                      f" still hold {self.path} after {orphan_wait:g} s")
                time.sleep(0.05)
        return decision.message if decision.action != "take" else ""

    def _admin_pgid(self, runner: int | None) -> int | None:
        """The process group of `runner`'s thespian admin, from the pid file it wrote."""
        try:
            info = json.loads((self.state_dir / "relevent.pid").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or info.get("runner") != runner or not info.get("admin_pgid"):
            return None
        return int(info["admin_pgid"])

    def release(self) -> None:
        """A clean stop: empty the file (no pid: nothing stale), then let go."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def running_pid(state_dir: Path) -> int | None:
    """The pid of the site running on `state_dir` (0 when the lock is held but names no live
    runner), or None when none runs.  Takes no lock and writes nothing."""
    path = Path(state_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = read_pid(path)
            return pid if pid is not None and relevent_alive(pid) else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
