"""Client side of the control socket (`relevent status`, `endpoint`, `reload`, `fault`)."""
from __future__ import annotations

import json
import socket
from pathlib import Path


class SiteNotRunning(Exception):
    pass


def control_socket_path(state_dir: str | Path) -> Path:
    """Where a site's runner listens: in its state directory (one per site)."""
    return Path(state_dir) / "relevent.sock"


def alive_path(state_dir: str | Path) -> Path:
    """The file the site supervisor touches at each of its heartbeat ticks, from its own
    thread: the runner reads its time when the heartbeats (thespian messages) are late
    (relevent/actors/restart_policy.py `root_hung`)."""
    return Path(state_dir) / "site.alive"


def request(socket_path: Path, payload: dict, timeout: float = 15.0) -> dict:
    """Send one request to a running site and return its JSON reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(socket_path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise SiteNotRunning(f"no running site answers at {socket_path}") from None
    try:
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    if not data:
        raise SiteNotRunning(f"the site at {socket_path} closed the connection without answering")
    return json.loads(data)
