"""HTTP/JSON WAN endpoint: enable -> DER command latency, and requests per second with
many concurrent clients.

    .venv/bin/python bench/http_bench.py --enables 50 --clients 50 --seconds 10 --json bench/results-http.json
    .venv/bin/python bench/http_bench.py --tls --enables 50 --seconds 0      # HTTPS, a party's certificate

The site (tests/lanctl.py's topology plus an HTTP endpoint) runs in its own processes; a
real Mosquitto carries the battery's pivot commands, and a gmqtt subscriber in this
process timestamps them.

* enable -> command: PUT a one-entry schedule (a distinct value, starting 250 ms later),
  wait for its start, then POST /enable; the enable makes it Running at once and the
  controller's output reaches the DER, the LAN endpoint and the broker.  Latency = the
  subscriber's receive time minus the time the POST was sent.
* throughput: `--clients` concurrent connections GET a controller for `--seconds`:
  with wrk (Debian's package, a C load generator: `--load wrk`, the default when it is
  installed) or with httpx clients on one asyncio loop in this process (`--load httpx`,
  whose own CPU then competes with the site's on a 2-core machine); requests per second
  and latency percentiles.  `--seconds 0`: none.

--tls: the HTTP endpoint serves HTTPS with `client_cert = "require"` (the site's PKI made with
`relevent pki` in a temporary folder, tests/sitectl.py make_pki), and the clients (httpx)
present the certificate of the party `aggregator` (`cert_cn`, every right); one keep-alive
connection for the enables, as in plain.  The MQTT LAN part stays plain (loopback broker).
wrk presents no client certificate: with --tls the throughput runs only with `--load httpx`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lanctl import Blackhole, Mosquitto, MqttWatcher, lan_topology  # noqa: E402
from sitectl import Site, free_port, make_pki  # noqa: E402
from switch_bench import summary  # noqa: E402

from relevent.clock import now_ms  # noqa: E402


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


TLS_SITE = """
[tls]
cert = "{pki}/site.crt"
key = "{pki}/site.key"
ca = "{pki}/ca.crt"
crl = ["{pki}/crl.pem"]

[[party]]
name = "aggregator"
cert_cn = "aggregator"
"""


def client_context(pki: Path) -> ssl.SSLContext:
    """Trusts the site's CA and presents the party aggregator's certificate."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "aggregator.crt"), str(pki / "aggregator.key"))
    return ctx


def enable_to_command(api: str, watcher: MqttWatcher, count: int, verify: ssl.SSLContext | bool = True
                      ) -> tuple[list, list]:
    latencies, answers = [], []
    client = httpx.Client(timeout=10, verify=verify)
    sched = f"{api}/ders/bat1/ActPow/schedules/1"
    for i in range(count):
        value = -1000.0 - 13 * i
        client.post(f"{sched}/disable").raise_for_status()
        start = now_ms() + 250
        r = client.put(sched, json={"values": [value], "interval_s": 3600, "priority": 30, "start": iso(start)})
        r.raise_for_status()
        time.sleep(max(0.0, (start + 20 - now_ms()) / 1000))
        sent = time.time_ns()
        client.post(f"{sched}/enable").raise_for_status()
        answers.append((time.time_ns() - sent) / 1e6)
        deadline = time.monotonic() + 5.0
        while not (got := [t for t, v in watcher.commands("bat1.ActPow") if v == value and t >= sent]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no command {value} within 5 s of the enable")
            time.sleep(0.001)
        latencies.append((got[0] - sent) / 1e6)
    client.close()
    return latencies, answers


async def throughput(api: str, clients: int, seconds: float, verify: ssl.SSLContext | bool = True) -> dict:
    urls = [f"{api}/ders/bat1/ActPow", f"{api}/ders/bat1/ActPow/schedules/1"]
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def one(client: httpx.AsyncClient, k: int) -> None:
        nonlocal errors
        i = k
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            r = await client.get(urls[i % 2])
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += r.status_code != 200
            i += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=10, limits=limits, verify=verify) as client:
        began = time.monotonic()
        await asyncio.gather(*(one(client, k) for k in range(clients)))
        elapsed = time.monotonic() - began
    return {"tool": "httpx", "clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies), "errors": errors,
            "requests_per_s": round(len(latencies) / elapsed, 1), "latency_ms": summary(latencies)}


def throughput_wrk(api: str, clients: int, seconds: float) -> dict:
    url = f"{api}/ders/bat1/ActPow"
    out = subprocess.run(["wrk", "-t", "2", "-c", str(clients), "-d", f"{int(seconds)}s", "--latency", url],
                         capture_output=True, text=True, check=True, timeout=seconds + 30).stdout

    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    pcts = {p: ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"tool": "wrk", "clients": clients, "seconds": seconds, "url": url,
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "errors": int(non2xx.group(1)) if non2xx else 0,
            "latency_ms": {"p50_ms": pcts["50"], "p99_ms": pcts["99"]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--enables", type=int, default=50)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--load", choices=("wrk", "httpx"), default="wrk" if shutil.which("wrk") else "httpx")
    ap.add_argument("--tls", action="store_true",
                    help="HTTPS with client_cert = \"require\"; the clients present a party's certificate")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        tmp = Path(tmp)
        ports = {k: free_port() for k in ("admin", "mms", "mqtt", "modbus", "http")}
        broker = Mosquitto(ports["mqtt"], tmp).start()
        hole = Blackhole()
        topo = tmp / "site.toml"
        http = f'\n[[wan]]\nname = "http"\nprotocol = "http"\nport = {ports["http"]}\n'
        verify: ssl.SSLContext | bool = True
        if args.tls:
            pki = make_pki(tmp / "pki", ("site", "site"), ("aggregator", "party"))
            http += 'tls = true\nclient_cert = "require"\nanonymous = "none"\n' + TLS_SITE.format(pki=pki)
            verify = client_context(pki)
        text = lan_topology(tmp / "state", ports["admin"], ports["mms"], ports["mqtt"], ports["modbus"],
                            hole.port, tmp / "writes.jsonl").replace('log_level = "INFO"', "")
        if args.tls:   # with a [[party]], the (unused) MMS endpoint's anonymous clients need one too: none
            text = text.replace(f'port = {ports["mms"]}\n', f'port = {ports["mms"]}\nanonymous = "none"\n', 1)
        topo.write_text(text + http)
        site = Site(topo, tmp / "state")
        api = f"{'https' if args.tls else 'http'}://127.0.0.1:{ports['http']}/api/v1"
        try:   # a site that does not start must not leave the broker behind
            site.start(timeout=60)
            watcher = MqttWatcher(ports["mqtt"], ["fledge/south-command"])
            latencies, answers = enable_to_command(api, watcher, args.enables, verify)
            watcher.close()
            if args.seconds <= 0:
                load = {"skipped": "--seconds 0"}
            elif args.load == "wrk" and args.tls:
                load = {"skipped": "wrk presents no client certificate: --load httpx"}
            elif args.load == "wrk":
                load = throughput_wrk(api, args.clients, args.seconds)
            else:
                load = asyncio.run(throughput(api, args.clients, args.seconds, verify))
        finally:
            site.stop()
            site.kill_everything()
            broker.stop()
            hole.close()
    result = {"enables": args.enables, "http": "https, client certificate (party aggregator)" if args.tls else "plain",
              "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
              "enable_to_mqtt_command_ms": summary(latencies),
              "enable_answer_ms": summary(answers), "throughput": load}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
