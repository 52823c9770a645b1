"""OCPP security profiles against plain OCPP: the time of a charger's connection (TCP, TLS
on profiles 2 and 3, the websocket upgrade with its checks) and of its first
BootNotification round trip, p50/p99 per profile.

    .venv/bin/python bench/ocpp_tls_bench.py --connections 50 --json bench/results-ocpp-tls.json

A site (its own processes) serves three OCPP endpoints on loopback, one charger DER each:
profile 0 (`ws://`, the charge point id only), profile 2 (`wss://`, HTTP Basic auth with
the charger's password) and profile 3 (`wss://`, a client certificate naming the charge
point id, a CRL).  The PKI is made with `relevent pki` in a temporary folder.  The charger
is tests/test_ocpp_tls.py's RawCharger (the `websockets` client speaking OCPP 1.6J frames
itself), one connection at a time, the three profiles in turn so they see the same
machine; its SSL context is made once per profile, as a charger keeps it.  Reported:
connect (until the websocket is open) and connect + BootNotification answered, in ms.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sitectl import Site, free_port, make_pki, running  # noqa: E402
from test_ocpp_tls import PASSWORD, RawCharger, charger  # noqa: E402

from relevent.security import pki  # noqa: E402

TOPOLOGY = """
[site]
name = "ocpptlsbench"
state_dir = "{state}"

[runtime]
admin_port = {admin}

[tls]
cert = "{pki}/site.crt"
key = "{pki}/site.key"
ca = "{pki}/ca.crt"
crl = ["{pki}/crl.pem"]
{ders}
[[lan]]
name = "p0"
protocol = "ocpp"
port = {p0}

[[lan]]
name = "p2"
protocol = "ocpp"
port = {p2}
security_profile = 2
password_files = {{ ev2 = "{tmp}/cp2.pw" }}

[[lan]]
name = "p3"
protocol = "ocpp"
port = {p3}
security_profile = 3
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50, help="connections per profile")
    parser.add_argument("--json", help="write the raw figures and the summary here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocpp-tls-bench-") as folder:
        tmp = Path(folder)
        ca = make_pki(tmp / "pki", ("site", "site"))
        pki.issue(ca, "CP3", "device")
        (tmp / "cp2.pw").write_text(PASSWORD + "\n")
        os.chmod(tmp / "cp2.pw", 0o600)
        ports = {k: free_port() for k in ("admin", "p0", "p2", "p3")}
        ders = "".join([charger("ev0", "CP0", "p0"), charger("ev2", "CP2", "p2"), charger("ev3", "CP3", "p3")])
        path = tmp / "site.toml"
        path.write_text(TOPOLOGY.format(state=tmp / "state", pki=ca, tmp=tmp, ders=ders, **ports))
        server_ctx = ssl.create_default_context(cafile=str(ca / "ca.crt"))
        client3 = ssl.create_default_context(cafile=str(ca / "ca.crt"))
        client3.load_cert_chain(str(ca / "CP3.crt"), str(ca / "CP3.key"))
        auth = {"Authorization": "Basic " + base64.b64encode(f"CP2:{PASSWORD}".encode()).decode()}
        profiles = {0: dict(port=ports["p0"], cp_id="CP0", scheme="ws"),
                    2: dict(port=ports["p2"], cp_id="CP2", ctx=server_ctx, headers=auth),
                    3: dict(port=ports["p3"], cp_id="CP3", ctx=client3)}
        raw: dict[int, dict[str, list[float]]] = {p: {"connect": [], "boot": []} for p in profiles}
        load = [os.getloadavg()]
        with running(Site(path, tmp / "state"), timeout=60):
            for _ in range(args.connections + 2):   # the first two rounds warm up, unmeasured
                for profile, kw in profiles.items():
                    cp = RawCharger(**kw)
                    try:
                        began = time.perf_counter()
                        cp.connect()
                        opened = time.perf_counter()
                        cp.boot()
                        booted = time.perf_counter()
                    finally:
                        cp.close()
                    raw[profile]["connect"].append((opened - began) * 1000)
                    raw[profile]["boot"].append((booted - began) * 1000)
        load.append(os.getloadavg())
    summary = {}
    for profile, series in raw.items():
        summary[profile] = {what: {"p50": round(statistics.median(v[2:]), 2), "p99": round(percentile(v[2:], 99), 2)}
                            for what, v in series.items()}
    print(f"{args.connections} connections per profile; load average {load[0][0]:.2f} -> {load[1][0]:.2f}")
    print("| profile | connect p50 / p99 ms | connect + BootNotification p50 / p99 ms |")
    print("|---|---|---|")
    for profile, s in summary.items():
        print(f"| {profile} | {s['connect']['p50']} / {s['connect']['p99']} | {s['boot']['p50']} / {s['boot']['p99']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "raw": raw, "load": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
