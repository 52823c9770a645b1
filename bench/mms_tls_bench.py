"""MMS over TLS (IEC 62351-3/4, docs/tls.md) against plain MMS with an ACSE password: the time
of a new association and its first read, and of a schedule's write, enable and disable on a
kept-open association, p50/p99 each.

    .venv/bin/python bench/mms_tls_bench.py --connections 50 --operates 50 --json bench/results-mms-tls.json

A site (its own processes) serves one DER (`der1`, ActPow, 2 schedules) over two MMS endpoints
on loopback: `plain` (the party `dso` known by its ACSE password) and `tls` (`tls = true`, the
party named by its certificate's CN, a CRL), both `anonymous = "none"`.  The PKI is made with
`relevent pki` in a temporary folder.  The client is libiec61850's own (pyiec61850, its
mbedtls), one connection at a time, plain and TLS alternating so both see the same machine:

* connections: `IedConnection_connect` (TCP, the TLS handshake, the MMS association; a fresh
  TLSConfiguration per connection, as a libiec61850 client keeps it), then the first
  `IedConnection_readInt32Value` of `ActPow_FSCH01.SchdSt.stVal` [ST], then close/destroy;
* operates, on one association per protocol kept open: the write of a schedule (NumEntr,
  SchdIntv, SchdPrio = 150, ValASG001.setMag.f, StrTm01.setTm 60 s ahead: five MMS writes),
  then the round trip of an EnaReq operate and of a DsaReq operate (direct control; the answer
  comes once the controller made the change durable).  The ControlObjectClients are made
  once per association, so the figures are the operates' own.

libiec61850's TLS client prints its certificate checks ("TLS: Verify cert ...") on the
process's stdout/stderr: file descriptors 1 and 2 go to /dev/null while the client runs and
the report is printed afterwards.  The TLS version and cipher suite the client negotiated are
read from the server's ServerHello, seen by a one-connection relay on loopback (its own
process).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pyiec61850.pyiec61850 as iec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sitectl import Site, free_port, now_ms  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "dso-secret"
LD = "DER_Scheduler_Control"            # one DER: its logical device is "Control" on both endpoints
SCHEDULE = f"{LD}/ActPow_FSCH01"
STATE = f"{SCHEDULE}.SchdSt.stVal"
PRIORITY = 150                          # the dso has no band: the whole range is its

TOPOLOGY = """
[site]
name = "mmstlsbench"
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
mms_password = "{password}"

[[wan]]
name = "plain"
protocol = "mms"
port = {plain}
anonymous = "none"

[[wan]]
name = "tls"
protocol = "mms"
port = {tls}
tls = true
anonymous = "none"

[[der]]
name = "der1"
functions = ["ActPow"]
schedules = 2
"""

CIPHERS = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384", 0x1303: "TLS_CHACHA20_POLY1305_SHA256",
           0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
           0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305", 0xC023: "ECDHE-ECDSA-AES128-SHA256",
           0xC024: "ECDHE-ECDSA-AES256-SHA384"}
VERSIONS = {0x0301: "TLSv1.0", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
GROUPS = {0x001D: "X25519", 0x0017: "secp256r1", 0x0018: "secp384r1", 0x001E: "X448"}


def pki(folder: Path) -> None:
    for args in (("init", str(folder)), ("issue", str(folder), "site", "--site", "--ip", "127.0.0.1"),
                 ("issue", str(folder), "dso", "--party")):
        subprocess.run([sys.executable, "-m", "relevent", "pki", *args], check=True, capture_output=True, cwd=REPO)


@contextmanager
def quiet():
    """fds 1 and 2 to /dev/null (libiec61850's TLS debug lines), restored whatever happens."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _err(result) -> int:
    return result[1] if isinstance(result, tuple) else result


class Client:
    """One libiec61850 client connection: plain with dso's ACSE password, or TLS with dso's
    certificate (no password: over TLS the certificate is the credential)."""

    def __init__(self, port: int, folder: Path | None) -> None:
        self.port, self.cfg, self.con = port, None, None
        if folder is not None:
            self.cfg = iec.TLSConfiguration_create()
            iec.TLSConfiguration_setClientMode(self.cfg)
            assert iec.TLSConfiguration_addCACertificateFromFile(self.cfg, str(folder / "ca.crt"))
            assert iec.TLSConfiguration_setOwnCertificateFromFile(self.cfg, str(folder / "dso.crt"))
            assert iec.TLSConfiguration_setOwnKeyFromFile(self.cfg, str(folder / "dso.key"), None)
            iec.TLSConfiguration_setChainValidation(self.cfg, True)
            self.con = iec.IedConnection_createWithTlsSupport(self.cfg)
        else:
            self.con = iec.IedConnection_create()
            auth = iec.AcseAuthenticationParameter_create()
            iec.AcseAuthenticationParameter_setAuthMechanism(auth, iec.ACSE_AUTH_PASSWORD)
            iec.AcseAuthenticationParameter_setPassword(auth, PASSWORD)
            params = iec.MmsConnection_getIsoConnectionParameters(iec.IedConnection_getMmsConnection(self.con))
            iec.IsoConnectionParameters_setAcseAuthenticationParameter(params, auth)
        self.controls: dict[str, object] = {}

    def connect(self) -> float:
        """ms of IedConnection_connect; raises on an error."""
        t0 = time.perf_counter()
        err = _err(iec.IedConnection_connect(self.con, "127.0.0.1", self.port))
        took = (time.perf_counter() - t0) * 1000
        if err != iec.IED_ERROR_OK:
            raise ConnectionError(f"connect to {self.port}: error {err}")
        return took

    def read_state(self) -> tuple[int, float]:
        t0 = time.perf_counter()
        value, err = iec.IedConnection_readInt32Value(self.con, STATE, iec.IEC61850_FC_ST)
        took = (time.perf_counter() - t0) * 1000
        if err != iec.IED_ERROR_OK:
            raise IOError(f"read {STATE} on {self.port}: error {err}")
        return value, took

    def write_schedule(self, value: float) -> float:
        """ms of the five writes of a schedule starting 60 s ahead."""
        start = iec.MmsValue_newUtcTimeByMsTime(now_ms() + 60_000)
        t0 = time.perf_counter()
        errs = [_err(iec.IedConnection_writeInt32Value(self.con, f"{SCHEDULE}.{attr}.setVal", iec.IEC61850_FC_SP, v))
                for attr, v in (("NumEntr", 1), ("SchdIntv", 3600), ("SchdPrio", PRIORITY))]
        errs.append(_err(iec.IedConnection_writeFloatValue(self.con, f"{SCHEDULE}.ValASG001.setMag.f",
                                                           iec.IEC61850_FC_SP, value)))
        errs.append(_err(iec.IedConnection_writeObject(self.con, f"{SCHEDULE}.StrTm01.setTm", iec.IEC61850_FC_SP,
                                                       start)))
        took = (time.perf_counter() - t0) * 1000
        iec.MmsValue_delete(start)
        if any(e != iec.IED_ERROR_OK for e in errs):
            raise IOError(f"schedule write on {self.port}: errors {errs}")
        return took

    def operate(self, do: str) -> float:
        """ms of one ControlObjectClient_operate of `do` (EnaReq, DsaReq) with true."""
        ctl = self.controls.get(do)
        if ctl is None:
            ctl = self.controls[do] = iec.ControlObjectClient_create(f"{SCHEDULE}.{do}", self.con)
            if ctl is None:
                raise IOError(f"no control object {SCHEDULE}.{do} on {self.port}")
        value = iec.MmsValue_newBoolean(True)
        t0 = time.perf_counter()
        ok = iec.ControlObjectClient_operate(ctl, value, 0)
        took = (time.perf_counter() - t0) * 1000
        iec.MmsValue_delete(value)
        if not ok:
            raise IOError(f"{do} on {self.port} refused: addCause "
                          f"{iec.ControlObjectClient_getLastApplError(ctl).addCause}")
        return took

    def close(self) -> None:
        for ctl in self.controls.values():
            iec.ControlObjectClient_destroy(ctl)
        self.controls = {}
        if self.con is not None:
            iec.IedConnection_close(self.con)
            iec.IedConnection_destroy(self.con)
            self.con = None
        if self.cfg is not None:
            iec.TLSConfiguration_destroy(self.cfg)
            self.cfg = None


def one_connection(port: int, folder: Path | None, failures: list[str] | None = None,
                   attempts: int = 20) -> tuple[float, float]:
    """(connect, first read) in ms, on a new connection closed afterwards.  A failed connect
    or first read (libiec61850's client can lose a new connection's first request:
    docs/runtime-notes.md) is appended to `failures` and the connection made again."""
    for _ in range(attempts):
        client = Client(port, folder)
        try:
            connect = client.connect()
            _, read = client.read_state()
            return connect, read
        except (ConnectionError, IOError) as exc:
            if failures is not None:
                failures.append(str(exc))
            time.sleep(0.05)
        finally:
            client.close()
    raise ConnectionError(f"no connection to {port} after {attempts} attempts: {failures[-3:] if failures else ''}")


def kept_connection(port: int, folder: Path | None, failures: list[str]) -> Client:
    """A connection confirmed by a read, to keep open."""
    for _ in range(20):
        client = Client(port, folder)
        try:
            client.connect()
            client.read_state()
            return client
        except (ConnectionError, IOError) as exc:
            failures.append(str(exc))
            client.close()
            time.sleep(0.05)
    raise ConnectionError(f"no connection to {port}: {failures[-3:]}")


def one_cycle(client: Client, value: float, states: list[int] | None = None) -> tuple[float, float, float]:
    """(write schedule, EnaReq, DsaReq) in ms; with `states`, SchdSt.stVal after the enable
    and after the disable are appended to it (reads outside the timings)."""
    write = client.write_schedule(value)
    enable = client.operate("EnaReq")
    if states is not None:
        states.append(client.read_state()[0])
    disable = client.operate("DsaReq")
    if states is not None:
        states.append(client.read_state()[0])
    return write, enable, disable


# -- the TLS version and cipher the libiec61850 client negotiates --------------------------------------
def server_hello(data: bytes) -> str:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384 X25519' from the first server bytes of a handshake."""
    if len(data) < 9 or data[0] != 0x16 or data[5] != 0x02:
        return f"no ServerHello ({data[:8].hex()})"
    body = data[9:]
    version = int.from_bytes(body[0:2], "big")
    at = 2 + 32
    at += 1 + body[at]                                   # session id
    cipher = int.from_bytes(body[at:at + 2], "big")
    at += 2 + 1                                          # cipher suite, compression
    group = None
    if at + 2 <= len(body):
        end = at + 2 + int.from_bytes(body[at:at + 2], "big")
        at += 2
        while at + 4 <= end:
            kind, size = int.from_bytes(body[at:at + 2], "big"), int.from_bytes(body[at + 2:at + 4], "big")
            ext = body[at + 4:at + 4 + size]
            if kind == 0x002B and size == 2:             # supported_versions: the version chosen
                version = int.from_bytes(ext, "big")
            elif kind == 0x0033 and size >= 2:           # key_share: the group
                group = int.from_bytes(ext[:2], "big")
            at += 4 + size
    out = f"{VERSIONS.get(version, hex(version))} {CIPHERS.get(cipher, f'0x{cipher:04x}')}"
    return out + (f" {GROUPS.get(group, hex(group))}" if group is not None else "")


# A relay of one connection, in its own process: pyiec61850's calls keep the GIL while
# libiec61850's connection thread does the handshake, so a relay thread in this process
# would never run (a deadlock, the client's thread spinning on its socket).
RELAY = r"""
import socket, sys, threading
upstream = int(sys.argv[1])
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
listener.settimeout(30)
down, _ = listener.accept()
up = socket.create_connection(("127.0.0.1", upstream), timeout=30)
first = []
def pump(src, dst, keep):
    try:
        while True:
            chunk = src.recv(65536)
            if not chunk:
                break
            if keep and not first:
                first.append(chunk)
            dst.sendall(chunk)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
back = threading.Thread(target=pump, args=(up, down, True), daemon=True)
back.start()
pump(down, up, False)
back.join(5)
print(first[0].hex() if first else "", flush=True)
"""


def negotiated(port: int, folder: Path) -> str:
    """Relay one libiec61850 TLS connection through a loopback port and read the ServerHello."""
    relay = subprocess.Popen([sys.executable, "-c", RELAY, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        local = int(relay.stdout.readline())
        try:
            one_connection(local, folder, attempts=1)
        except ConnectionError:
            pass     # the handshake is what counts here
        out, _ = relay.communicate(timeout=30)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
    return server_hello(bytes.fromhex(out.strip())) if out.strip() else "unknown (nothing seen)"


# -- figures ------------------------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def figures(values: list[float]) -> dict:
    return {"p50": round(pct(values, 50), 3), "p99": round(pct(values, 99), 3),
            "mean": round(statistics.mean(values), 3), "max": round(max(values), 3), "n": len(values)}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


MEASURES = (("connect", "connect (TCP+TLS+association)"), ("first_read", "first read after connect"),
            ("connect_and_read", "connect + first read"), ("write_schedule", "write schedule (5 writes)"),
            ("enable", "EnaReq operate"), ("disable", "DsaReq operate"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=50, help="new connections per protocol")
    ap.add_argument("--operates", type=int, default=50, help="write+enable+disable cycles per protocol")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured rounds of each first")
    ap.add_argument("--json", help="write the raw figures and the summary here")
    args = ap.parse_args()
    load_start = load()
    raw: dict[str, dict[str, list[float]]] = {p: {m: [] for m, _ in MEASURES} for p in ("plain", "tls")}
    states: dict[str, list[int]] = {"plain": [], "tls": []}
    failures: dict[str, list[str]] = {"plain": [], "tls": []}          # measured connections
    warmup_failures: dict[str, list[str]] = {"plain": [], "tls": []}   # the others
    with tempfile.TemporaryDirectory(prefix="mms-tls-bench-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "pki"
        pki(folder)
        ports = {"plain": free_port(), "tls": free_port()}
        path = tmp / "site.toml"
        path.write_text(TOPOLOGY.format(state=tmp / "state", admin=free_port(), pki=folder, password=PASSWORD,
                                        **ports))
        site = Site(path, tmp / "state")
        kept: dict[str, Client] = {}
        try:
            site.start(timeout=60)
            with quiet():
                sides = {"plain": (ports["plain"], None), "tls": (ports["tls"], folder)}
                for _ in range(args.warmup):
                    for name, (port, f) in sides.items():
                        one_connection(port, f, warmup_failures[name])
                for _ in range(args.connections):
                    for name, (port, f) in sides.items():
                        connect, read = one_connection(port, f, failures[name])
                        raw[name]["connect"].append(connect)
                        raw[name]["first_read"].append(read)
                        raw[name]["connect_and_read"].append(connect + read)
                for name, (port, f) in sides.items():
                    kept[name] = kept_connection(port, f, warmup_failures[name])
                for i in range(args.warmup + args.operates):
                    for name, client in kept.items():
                        # the first (unmeasured) cycle checks: ready (3) after the enable, not ready (1) after
                        write, enable, disable = one_cycle(client, 1000.0 + i, states[name] if i == 0 else None)
                        if i >= args.warmup:
                            raw[name]["write_schedule"].append(write)
                            raw[name]["enable"].append(enable)
                            raw[name]["disable"].append(disable)
                for client in kept.values():
                    client.close()
                kept = {}
                hello = negotiated(ports["tls"], folder)
            try:
                node = site.node("tls")["detail"].get("tls", {})
            except KeyError:
                node = {}
        finally:
            for client in kept.values():
                client.close()
            site.stop()
            site.kill_everything()
    load_end = load()
    summary: dict[str, dict] = {}
    for m, _ in MEASURES:
        plain, tls = figures(raw["plain"][m]), figures(raw["tls"][m])
        summary[m] = {"plain": plain, "tls": tls, "ratio_p50": round(tls["p50"] / plain["p50"], 2) if plain["p50"] else None}
    result = {"connections": args.connections, "operates": args.operates, "warmup": args.warmup, "tls": hello,
              "load_start": load_start, "load_end": load_end, "states_after_enable_disable": states,
              "failed_attempts": failures, "failed_attempts_unmeasured": warmup_failures,
              "server_tls": {k: node.get(k) for k in ("min_version", "handshakes_refused", "errors") if k in node},
              "summary": summary, "raw_ms": raw}
    print(f"{args.connections} connections and {args.operates} write/enable/disable cycles per protocol, one at a "
          f"time, plain and TLS alternating; libiec61850 client; TLS: {hello}, ECDSA P-256 certificates both ways")
    print(f"load average (1/5/15 min): start {load_start}, end {load_end}")
    print(f"{'':<32} {'plain p50':>10} {'p99':>8} {'TLS p50':>10} {'p99':>8} {'TLS/plain p50':>14}")
    for m, label in MEASURES:
        s = summary[m]
        print(f"{label:<32} {s['plain']['p50']:>10.2f} {s['plain']['p99']:>8.2f} {s['tls']['p50']:>10.2f} "
              f"{s['tls']['p99']:>8.2f} {s['ratio_p50']:>14.2f}")
    print("(ms; connect + first read: p50/p99 of the per-connection sums)")
    print(f"failed connection attempts (retried, not in the figures): plain {len(failures['plain'])}, "
          f"TLS {len(failures['tls'])} of {args.connections} measured; unmeasured ones: plain "
          f"{len(warmup_failures['plain'])}, TLS {len(warmup_failures['tls'])}")
    for name in ("plain", "tls"):
        for reason in sorted(set(failures[name] + warmup_failures[name])):
            print(f"  {name}: {reason}")
    print(f"SchdSt.stVal after the enable and the disable: plain {states['plain']}, TLS {states['tls']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
