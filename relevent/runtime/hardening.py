"""Mitigations for thespian's process model (see docs/runtime.md).

* `harden_actor_process`: run once in every actor process.  Thespian installs Python
  handlers for SIGSEGV/SIGBUS/SIGFPE/SIGILL, so a crash in C would spin forever unreported;
  put them back to SIG_DFL (with faulthandler writing the traceback) so the process dies
  and the supervisor hears of it.  PR_SET_PDEATHSIG makes an actor die with its parent, so
  a SIGKILLed supervisor never leaves orphans.
* `bind_thespian_to_loopback`: thespian binds every actor socket to 0.0.0.0 and speaks
  pickles.  On a single-host site we make it bind the loopback address it advertises.
  Called in the runner before the ActorSystem starts; admin and actors are forked from it
  and inherit the patch.
* `admin_port_taken`: thespian, asked for an ActorSystem whose admin port is already
  bound, talks to whatever listens there and unpickles its answers.  The runner checks
  the port first (after taking the state directory's lock, so a second run of the same
  site is still reported by the lock) and refuses to start, naming the port.
* every actor process rate-limits repeated log messages (relevent/runtime/logs.py).
"""
from __future__ import annotations

import ctypes
import errno
import faulthandler
import logging
import os
import signal
import socket

log = logging.getLogger("relevent.runtime")

FATAL_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT)
_PR_SET_PDEATHSIG = 1
_hardened_pid: int | None = None
_crash_log = None


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def harden_actor_process(crash_log_path: str | None = None) -> None:
    """Idempotent per process (a fork gets it again)."""
    global _hardened_pid, _crash_log
    if _hardened_pid == os.getpid():
        return
    _hardened_pid = os.getpid()
    for sig in FATAL_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    # faulthandler's "enabled" flag survives fork while thespian has replaced its signal
    # handlers in the child: enable() alone would then do nothing.
    faulthandler.disable()
    if crash_log_path:
        try:
            _crash_log = open(crash_log_path, "a", buffering=1)
            faulthandler.enable(file=_crash_log, all_threads=True)
        except OSError:
            faulthandler.enable(all_threads=True)
    else:
        faulthandler.enable(all_threads=True)
    set_parent_death_signal()
    from relevent.runtime.logs import install_repeat_filter
    install_repeat_filter()
    # Orphaned by a dead parent before prctl took effect: do not linger.
    if os.getppid() == 1:
        os._exit(1)


_patched = False


def bind_thespian_to_loopback() -> None:
    """Make thespian bind the address it advertises instead of 0.0.0.0.

    With THESPIAN_BASE_IPADDR=127.0.0.1 every address thespian creates is on loopback,
    but "external" addresses still bind ''.  Narrow that to the advertised address."""
    global _patched
    if _patched:
        return
    from thespian.system.transport import IPBase

    original = IPBase.IPActorAddress.__init__

    def __init__(self, *args, **kwargs):  # noqa: N807 - replaces a constructor
        original(self, *args, **kwargs)
        if self.bindname and self.bindname[0] == "" and self.sockname[0].startswith("127."):
            self.bindname = self.sockname

    IPBase.IPActorAddress.__init__ = __init__
    _patched = True


def admin_port_taken(port: int, host: str = "127.0.0.1", udp: bool = False) -> str | None:
    """Why thespian's admin port cannot be ours (someone else has it bound), or None.

    Binds a probe socket the way the admin will (SO_REUSEADDR, so a port that only has
    connections in TIME_WAIT from our own last run counts as free) and closes it again."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return (f"thespian's admin port {port} ({'udp' if udp else 'tcp'} {host or '*'}) is already in use by "
                    f"another program: stop it or set [runtime] admin_port to a free port; nothing was started")
        return f"thespian's admin port {port}: cannot bind {host or '*'}: {exc}; nothing was started"
    finally:
        probe.close()
    return None
