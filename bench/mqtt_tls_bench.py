"""MQTT over TLS against plain MQTT, from the site's side: the time of a new connection to
the broker (TCP, the TLS handshake with the site's client certificate, CONNECT/CONNACK),
p50/p99 over `--connections` connections each.

    .venv/bin/python bench/mqtt_tls_bench.py --connections 50 --json bench/results-mqtt-tls.json

Two Mosquitto brokers on loopback: one plain listener, one TLS listener that requires a
client certificate of the site CA (`require_certificate`, `use_identity_as_username`, a CRL,
TLS 1.2 at least: tests/test_tls_mqtt.py's TlsMosquitto).  The PKI is made with `relevent
pki`.  The client is gmqtt, as the site's MQTT links use it, with the SSL context the site
policy makes (`SiteTls.client_context`: the broker verified against the CA, its address
checked, the site's certificate offered), made once as a link keeps it.  A third broker is
the TLS one with `set_tcp_nodelay true`: without it, Mosquitto's CONNACK over TLS waits
about 40 ms for Nagle's algorithm (the TLS handshake itself takes 2-3 ms).  The three
alternate so all see the same machine.  Reported: connect -> CONNACK, in ms.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gmqtt import Client  # noqa: E402
from gmqtt.mqtt.constants import MQTTv311  # noqa: E402

from lanctl import MOSQUITTO  # noqa: E402
from sitectl import free_port, make_pki  # noqa: E402
from test_tls_mqtt import TlsMosquitto  # noqa: E402

from relevent.security.tls import SiteTls  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def connect_ms(port: int, ssl_context) -> float:
    client = Client(f"bench-{time.monotonic_ns()}")
    began = time.perf_counter()
    await client.connect("127.0.0.1", port, ssl=ssl_context or False, version=MQTTv311, keepalive=30)
    took = (time.perf_counter() - began) * 1000
    await client.disconnect()
    return took


async def measure(n: int, ports: dict[str, int], ctx) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in ports}
    for _ in range(n + 2):   # the first two rounds warm up, unmeasured
        for name, port in ports.items():
            out[name].append(await connect_ms(port, None if name == "plain" else ctx))
    return {k: v[2:] for k, v in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--json", help="write the raw figures and the summary here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mqtt-tls-bench-") as folder:
        tmp = Path(folder)
        ca = make_pki(tmp / "pki", ("broker", "site"), ("site1", "site"))
        tls_port, nodelay_port, plain_port = free_port(), free_port(), free_port()
        broker = TlsMosquitto(tls_port, tmp, ca, nodelay=False).start()
        (tmp / "nodelay").mkdir()
        fast = TlsMosquitto(nodelay_port, tmp / "nodelay", ca).start()
        conf = tmp / "plain.conf"
        conf.write_text(f"listener {plain_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        plain = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            time.sleep(0.5)
            ctx = SiteTls({"cert": str(ca / "site1.crt"), "key": str(ca / "site1.key"), "ca": str(ca / "ca.crt"),
                           "crl": [str(ca / "crl.pem")]}).client_context()
            load = [os.getloadavg()]
            raw = asyncio.run(measure(args.connections, {"plain": plain_port, "tls": tls_port,
                                                          "tls, set_tcp_nodelay": nodelay_port}, ctx))
            load.append(os.getloadavg())
        finally:
            broker.stop()
            fast.stop()
            plain.terminate()
            plain.wait(5)
    summary = {k: {"p50": round(statistics.median(v), 2), "p99": round(percentile(v, 99), 2)} for k, v in raw.items()}
    print(f"{args.connections} connections each; load average {load[0][0]:.2f} -> {load[1][0]:.2f}")
    for k, s in summary.items():
        print(f"{k}: connect -> CONNACK p50 {s['p50']} ms, p99 {s['p99']} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "raw": raw, "load": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
