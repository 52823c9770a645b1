"""HTTPS (mutual TLS, the site policy of docs/tls.md) against plain HTTP: the time of a new
connection's handshake and first request, p50/p99 over `--connections` connections each.

    .venv/bin/python bench/tls_bench.py --connections 100 --json bench/results-tls.json

A site (its own processes) serves one DER over two HTTP endpoints on loopback: `plain`
and `tls` (`tls = true`, `client_cert = "require"`, a CRL, the party named by its
certificate's CN).  The PKI is made with `relevent pki` in a temporary folder.  For each
connection, in turn (plain, then TLS, alternating, so both see the same machine): connect,
handshake (TLS only), `GET /api/v1/ders/der1/MaxPow`, read the whole answer, close.  The
client is a raw socket (and `ssl` with one SSLContext made up front, as a long-lived
client would keep it), so the figures are the server's and the handshake's, not an HTTP
library's.  Reported: connect+handshake, and connect+handshake+first response, in ms.
"""
from __future__ import annotations

import argparse
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sitectl import Site, free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

TOPOLOGY = """
[site]
name = "tlsbench"
state_dir = "{state}"

[runtime]
admin_port = {admin}

[tls]
cert = "{pki}/site.crt"
key = "{pki}/site.key"
ca = "{pki}/ca.crt"
crl = ["{pki}/crl.pem"]

[[party]]
name = "dso"
cert_cn = "dso"
http_token = "dso-token"

[[wan]]
name = "plain"
protocol = "http"
port = {plain}
anonymous = "none"

[[wan]]
name = "tls"
protocol = "http"
port = {tls}
tls = true
client_cert = "require"
anonymous = "none"

[[der]]
name = "der1"
functions = ["MaxPow"]
schedules = 2
"""

PATH = "/api/v1/ders/der1/MaxPow"


def pki(folder: Path) -> None:
    for args in (("init", str(folder)), ("issue", str(folder), "site", "--site", "--ip", "127.0.0.1"),
                 ("issue", str(folder), "dso", "--party")):
        subprocess.run([sys.executable, "-m", "relevent", "pki", *args], check=True, capture_output=True, cwd=REPO)


def one(port: int, ctx: ssl.SSLContext | None, headers: str) -> tuple[float, float]:
    """(connect + handshake, connect + handshake + first response) in ms."""
    t0 = time.perf_counter()
    sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    t1 = time.perf_counter()
    sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    t2 = time.perf_counter()
    sock.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return (t1 - t0) * 1000, (t2 - t0) * 1000


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def figures(values: list[float]) -> dict:
    return {"p50": round(pct(values, 50), 2), "p99": round(pct(values, 99), 2), "mean": round(statistics.mean(values), 2),
            "max": round(max(values), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tls-bench-") as tmp:
        tmp = Path(tmp)
        pki(tmp / "pki")
        ports = {"plain": free_port(), "tls": free_port()}
        path = tmp / "site.toml"
        path.write_text(TOPOLOGY.format(state=tmp / "state", admin=free_port(), pki=tmp / "pki", **ports))
        site = Site(path, tmp / "state")
        try:
            site.start(timeout=60)
            ctx = ssl.create_default_context(cafile=str(tmp / "pki" / "ca.crt"))
            ctx.load_cert_chain(str(tmp / "pki" / "dso.crt"), str(tmp / "pki" / "dso.key"))
            token = "Authorization: Bearer dso-token\r\n"
            for _ in range(5):   # warm up both
                one(ports["plain"], None, token)
                one(ports["tls"], ctx, "")
            plain, tls = [], []
            for _ in range(args.connections):
                plain.append(one(ports["plain"], None, token))
                tls.append(one(ports["tls"], ctx, ""))
            version = ctx.wrap_socket(socket.create_connection(("127.0.0.1", ports["tls"])),
                                      server_hostname="127.0.0.1")
            negotiated = f"{version.version()} {version.cipher()[0]}"
            version.close()
        finally:
            site.stop()
            site.kill_everything()
    result = {
        "connections": args.connections, "tls": negotiated,
        "plain_connect_ms": figures([p[0] for p in plain]), "plain_first_response_ms": figures([p[1] for p in plain]),
        "tls_handshake_ms": figures([t[0] for t in tls]), "tls_first_response_ms": figures([t[1] for t in tls]),
    }
    print(f"{args.connections} connections each, one at a time; {negotiated}, ECDSA P-256 certificates both ways")
    print(f"{'':<38} {'p50 ms':>8} {'p99 ms':>8} {'mean':>8} {'max':>8}")
    for key, label in (("plain_connect_ms", "plain HTTP: connect"), ("plain_first_response_ms",
                                                                     "plain HTTP: connect + first response"),
                       ("tls_handshake_ms", "HTTPS: connect + handshake"),
                       ("tls_first_response_ms", "HTTPS: handshake + first response")):
        f = result[key]
        print(f"{label:<38} {f['p50']:>8.2f} {f['p99']:>8.2f} {f['mean']:>8.2f} {f['max']:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
