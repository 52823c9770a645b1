"""Mitigations for thespian's process model (see docs/runtime.md).

* `harden_actor_process`: run once in every actor process.  Thespian installs Python
  handlers for SIGSEGV/SIGBUS/SIGFPE/SIGILL, so a crash in C would spin forever unreported;
  put them back to SIG_DFL (with faulthandler writing the traceback) so the process dies
  and the supervisor hears of it.  PR_SET_PDEATHSIG makes an actor die with its parent, so
  a SIGKILLed supervisor never leaves orphans.
* `bind_thespian_to(address)`: thespian binds every actor socket to 0.0.0.0 and speaks
  pickles.  We make it bind the address it advertises: loopback on a single-host site
  (`bind_thespian_to_loopback`), the host's address on the private network a multi-host
  site declares (`[runtime] private_network`, found by `private_address`).  Called in the
  runner before the ActorSystem starts; admin and actors are forked from it and inherit
  the patch.
* `private_address`: this host's IPv4 address inside `private_network`, chosen by
  `choose_private_address` among the (interface, address) pairs the kernel lists
  (`interface_addresses`, the SIOCGIFCONF ioctl: every IPv4 address, secondary ones too).
* `admin_port_taken`: thespian, asked for an ActorSystem whose admin port is already
  bound, talks to whatever listens there and unpickles its answers.  The runner checks
  the port first (after taking the state directory's lock, so a second run of the same
  site is still reported by the lock) and refuses to start, naming the port.
* every actor process rate-limits repeated log messages (relevent/runtime/logs.py).
"""
from __future__ import annotations

import array
import ctypes
import errno
import faulthandler
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import struct
from typing import Iterable

log = logging.getLogger("relevent.runtime")

FATAL_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT)
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_hardened_pid: int | None = None
_crash_log = None


def set_thread_name(name: str) -> bool:
    """The calling thread's name as the kernel shows it (`top -H`, /proc/PID/task/TID/comm;
    at most 15 bytes): Python's thread names stay inside Python."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


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
    from relevent.runtime.logs import install_actor_logging
    install_actor_logging()
    # Orphaned by a dead parent before prctl took effect: do not linger.
    if os.getppid() == 1:
        os._exit(1)


_bound_to: str | None = None   # the address thespian binds, once patched


def _advertised(host: str) -> bool:
    if _bound_to is None:
        return False
    return host.startswith("127.") if _bound_to.startswith("127.") else host == _bound_to


def bind_thespian_to(address: str) -> None:
    """Make thespian bind `address`, the address it advertises, instead of 0.0.0.0.

    With THESPIAN_BASE_IPADDR=`address` every address thespian creates for itself is
    `address`, but "external" addresses (admin, actors, the runner's own endpoint) still
    bind ''.  Narrow those to the advertised address.  For a loopback `address` every
    127.x address counts as advertised (as before for single-host sites).  Patched once
    per process; a later call changes the address."""
    global _bound_to
    from thespian.system.transport import IPBase

    IPBase.thisSystem.add_local_addr(address)   # in case IPBase was imported before THESPIAN_BASE_IPADDR was set
    first = _bound_to is None
    _bound_to = address
    if not first:
        return
    original = IPBase.IPActorAddress.__init__

    def __init__(self, *args, **kwargs):  # noqa: N807 - replaces a constructor
        original(self, *args, **kwargs)
        if self.bindname and self.bindname[0] == "" and _advertised(self.sockname[0]):
            self.bindname = self.sockname

    IPBase.IPActorAddress.__init__ = __init__


def bind_thespian_to_loopback() -> None:
    """A single-host site: thespian binds the loopback address it advertises."""
    bind_thespian_to("127.0.0.1")


# -- this host's address on the private network (multi-host sites) -----------------------
_SIOCGIFCONF = 0x8912
_IFNAMSIZ = 16
# struct ifreq: the name, then a union whose largest member is struct ifmap (two unsigned
# longs, an unsigned short and three bytes, padded to an unsigned long).
_IFREQ_SIZE = _IFNAMSIZ + max(16, struct.calcsize("LLHBBB0L"))


def interface_addresses() -> list[tuple[str, str]]:
    """Every IPv4 address of this host (its network namespace) as (interface, address),
    in the kernel's order: SIOCGIFCONF lists one entry per address, secondary addresses
    included (SIOCGIFADDR would give an interface's first address only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        size = 64 * _IFREQ_SIZE
        while True:
            buf = array.array("B", bytes(size))
            pointer = buf.buffer_info()[0]
            request = struct.pack("iL", size, pointer)       # struct ifconf {int len; char *buf}
            used = struct.unpack("iL", fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, request))[0]
            if used + _IFREQ_SIZE <= size:                    # room left: nothing was cut off
                break
            size *= 2
    raw = buf.tobytes()[:used]
    out = []
    for offset in range(0, used - _IFREQ_SIZE + 1, _IFREQ_SIZE):
        name = raw[offset:offset + _IFNAMSIZ].split(b"\0", 1)[0].decode("utf-8", "replace")
        family = struct.unpack_from("H", raw, offset + _IFNAMSIZ)[0]
        if family == socket.AF_INET:   # sockaddr_in: family, port, then the address
            out.append((name, socket.inet_ntoa(raw[offset + _IFNAMSIZ + 4:offset + _IFNAMSIZ + 8])))
    return out


def choose_private_address(network: str, addresses: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """The first (interface, address) whose address lies inside `network` (a CIDR such as
    "10.8.0.0/24"), or None.  The network's own address and its broadcast address are no
    host's; entries that are not IPv4 addresses are skipped."""
    net = ipaddress.IPv4Network(network, strict=False)
    for interface, address in addresses:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            continue
        if ip in net and (net.prefixlen >= 31 or ip not in (net.network_address, net.broadcast_address)):
            return interface, address
    return None


def private_address(network: str, addresses: list[tuple[str, str]] | None = None) -> tuple[str, str]:
    """This host's (interface, address) inside `network` (the kernel's list unless
    `addresses` is given); SystemExit (nothing was started) if it has none."""
    seen = interface_addresses() if addresses is None else addresses
    found = choose_private_address(network, seen)
    if found is None:
        listed = ", ".join(f"{address} ({interface})" for interface, address in seen) or "none"
        raise SystemExit(f"error: [runtime] private_network = \"{network}\": this host has no address on it, so "
                         f"thespian's convention traffic would leave the private network (addresses seen: "
                         f"{listed}); bring the private interface up (WireGuard: `wg-quick up wg0`) or correct "
                         f"private_network; nothing was started")
    return found


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
