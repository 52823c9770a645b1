"""Two hosts on one private network, on one machine: two network namespaces linked by a veth
pair, for the multi-host tests (tests/test_private_convention.py's `netns` fixture,
tests/test_multi_host.py) and benchmarks (bench/multihost_bench.py).  Root only.

    with linked_namespaces() as names:      # {"leader": "relevent-pn-1a2b3c-l", "member": "...-m"}
        subprocess.run(["ip", "netns", "exec", names["member"], ...])

Each namespace has `lo` up; d0 (LEADER_IP) is in the leader's, d1 (MEMBER_IP) in the
member's, both /PREFIX_LEN on NETWORK.  The devices are created inside the namespaces
(`ip link add ... netns`), so the names d0/d1 never meet another namespace's.  At exit every
process still in the namespaces is killed (SIGKILL: only what the caller started runs there)
and the namespaces are deleted, whatever happened, a failed set-up included.

`inside(name)` moves the calling thread into a namespace for a while (setns(2); os.setns is
Python 3.12's): a benchmark's client then reaches the leader's loopback endpoints in-process.
"""
from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

LEADER_IP, MEMBER_IP, NETWORK = "10.231.7.1", "10.231.7.2", "10.231.7.0/24"
PREFIX_LEN = 24              # bits: NETWORK's prefix length, given to d0 and d1
IP_TIMEOUT_S = 30.0          # s: one `ip` command
CLONE_NEWNET = 0x40000000    # setns(2) nstype: a network namespace (<sched.h>)


class NetnsUnavailable(RuntimeError):
    """This process cannot make the namespaces (not root, no iproute2, no netns or veth support):
    the caller skips (pytest.skip) or stops with this message."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`ip ARGS...`, its output captured as text."""
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=check)


def ns_pids(name: str) -> set[int]:
    """The pids of every process in network namespace `name` (empty once it is gone)."""
    return {int(p) for p in ip("netns", "pids", name, check=False).stdout.split()}


def kill_ns(name: str) -> set[int]:
    """kill -9 every process in network namespace `name` (a host losing power); the pids signalled."""
    killed = set()
    for pid in ns_pids(name) - {os.getpid()}:   # never this process, were it inside() that namespace
        try:
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        except ProcessLookupError:
            pass
    return killed


def _setns(fd: int) -> None:
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside(name: str) -> Iterator[None]:
    """The calling thread in network namespace `name` (made by `ip netns add`) meanwhile: the
    sockets it opens meanwhile are that namespace's (and stay so).  Threads started meanwhile
    inherit it; the process's other threads stay where they are.  Leave it before the
    namespace's kill_ns (which skips this process anyway) and deletion."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


@contextmanager
def linked_namespaces(prefix: str = "relevent-pn") -> Iterator[dict[str, str]]:
    """Two network namespaces, "leader" and "member" (named PREFIX-TAG-l and PREFIX-TAG-m, TAG
    random), linked by a veth pair: d0 (LEADER_IP) in the leader's, d1 (MEMBER_IP) in the
    member's.  Yields {"leader": name, "member": name}.  Raises NetnsUnavailable when not root
    or when a namespace or the veth pair cannot be made (what was made is deleted first)."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("needs root: it makes network namespaces (ip netns add)")
    tag = secrets.token_hex(3)
    names = {"leader": f"{prefix}-{tag}-l", "member": f"{prefix}-{tag}-m"}
    made: list[str] = []
    try:
        for name in names.values():
            try:
                res = ip("netns", "add", name, check=False)
            except FileNotFoundError:
                raise NetnsUnavailable("needs iproute2 (the ip command)") from None
            if res.returncode != 0:
                raise NetnsUnavailable(f"cannot make a network namespace: {res.stderr.strip()}")
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        res = ip("link", "add", "d0", "netns", names["leader"], "type", "veth", "peer", "name", "d1", "netns",
                 names["member"], check=False)
        if res.returncode != 0:
            raise NetnsUnavailable(f"cannot make a veth pair: {res.stderr.strip()}")
        for role, dev, address in (("leader", "d0", LEADER_IP), ("member", "d1", MEMBER_IP)):
            ip("-n", names[role], "addr", "add", f"{address}/{PREFIX_LEN}", "dev", dev)
            ip("-n", names[role], "link", "set", dev, "up")
        yield names
    finally:
        for name in made:
            kill_ns(name)
            ip("netns", "del", name, check=False)   # takes the veth pair along
