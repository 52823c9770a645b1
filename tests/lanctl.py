"""Real LAN peers for tests and benchmarks: a Mosquitto broker on loopback, an MQTT
watcher that timestamps what it receives, and a socket that accepts and never answers."""
from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path


MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Mosquitto:
    def __init__(self, port: int, workdir: Path, access: str = "allow_anonymous true\n") -> None:
        """`access`: the configuration lines saying who may connect and use what (default:
        anyone, everything; tests/test_broker_acl.py gives a password_file and an acl_file)."""
        self.port = port
        self.conf = workdir / f"mosquitto-{port}.conf"
        self.conf.write_text(f"listener {port} 127.0.0.1\n{access}persistence false\n")
        self.log = workdir / f"mosquitto-{port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None


class Blackhole:
    """A TCP port that accepts connections (into the backlog) and never answers: a device
    that hangs, the worst case for whoever waits on it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def read_write_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lan_topology(state_dir: Path, admin_port: int, mms_port: int, mqtt_port: int, modbus_port: int,
                 blackhole_port: int, write_log: Path, reversion_s: int = 30) -> str:
    """MMS in; pv1 (SunSpec simulator over Modbus), pv2 (a device that never answers, on the
    same Modbus endpoint) and bat1 (MQTT pivot device simulator) out."""
    return f"""[site]
name = "lan{admin_port}"
state_dir = "{state_dir}"

[runtime]
admin_port = {admin_port}
allow_fault_injection = true

[supervision]
# No LAN test injects a hang: a timeout that a loaded 2-core machine cannot break (0.4 s
# did: children killed as hung in a loop, the site not running after 30 s, beside a benchmark).
heartbeat_interval = 0.2
heartbeat_timeout = 2.0
backoff_initial = 0.05

[[wan]]
name = "mms"
protocol = "mms"
port = {mms_port}

[[der]]
name = "pv1"
functions = ["ActPow", "MaxPow", "OnOff"]
schedules = 2
lan = "modbus"
address = 1
profile = "sunspec"
rated_power_w = 10000
reserve = {{ ActPow = 10000.0, MaxPow = 10000.0, OnOff = true }}

[[der]]
name = "pv2"
functions = ["ActPow"]
schedules = 1
lan = "modbus"
address = "127.0.0.1:{blackhole_port}/1"
profile = "sunspec"
rated_power_w = 10000
reserve = {{ ActPow = 10000.0 }}

[[der]]
name = "bat1"
functions = ["ActPow", "OnOff"]
schedules = 2
lan = "mqtt"
profile = "pivot"
rated_power_w = 5000
reserve = {{ ActPow = 0.0, OnOff = true }}

[[lan]]
name = "modbus"
protocol = "modbus"
port = {modbus_port}
timeout = 0.5
poll_period = 0.5
reversion_s = {reversion_s}

[[lan]]
name = "mqtt"
protocol = "mqtt"
port = {mqtt_port}
reconnect_delay = 0.2
schedule_period = 1.0

[[simulator]]
name = "inverter"
protocol = "sunspec-inverter"
port = {modbus_port}
wmax = 10000.0
write_log = "{write_log}"

[[simulator]]
name = "battery"
protocol = "mqtt-device"
port = {mqtt_port}
der = "bat1"
rated_power_w = 5000.0
measure_period = 0.5
"""


def without_inverter_simulator(topology: str) -> str:
    """lan_topology() with the inverter simulator left out: the caller runs it outside the
    site, so that it outlives the site or goes down on its own."""
    start = topology.index('[[simulator]]\nname = "inverter"')
    return topology[:start] + topology[topology.index('[[simulator]]\nname = "battery"'):]


def without_simulators(topology: str) -> str:
    """lan_topology() with no simulator at all: the caller brings its own devices (pv1 is
    then whatever serves unit 1 on the Modbus endpoint's port; nothing publishes for bat1)."""
    return topology[:topology.index("[[simulator]]")]


class MosquittoSub:
    """Mosquitto's own `mosquitto_sub` (libmosquitto, not gmqtt, the library the product
    uses) as a witness: keeps (receive time ns, topic, JSON; {"raw": text} when not JSON).  Subscribed
    once a probe on a topic of its own, part of the same SUBSCRIBE, comes back (no sleep);
    mosquitto_sub subscribes again by itself after a reconnect."""

    def __init__(self, port: int, topics: list[str], timeout: float = 10.0) -> None:
        self.port, self.topics = port, topics
        self.messages: list[tuple[int, str, dict]] = []
        self.lock = threading.Lock()
        self._probe_topic, self._probe_seen = f"probe/{time.time_ns()}", threading.Event()
        command = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-V", "mqttv311",
                   "-F", "%U %t %p"]
        for topic in [*topics, self._probe_topic]:
            command += ["-t", topic]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self._probe_seen.is_set():
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"mosquitto_sub never subscribed to {topics} within {timeout} s")
            publish(port, [b"probe"], self._probe_topic)
            self._probe_seen.wait(0.3)

    def _read(self) -> None:
        for line in self.proc.stdout:
            stamp, _, rest = line.decode(errors="replace").rstrip("\n").partition(" ")
            topic, _, payload = rest.partition(" ")
            if topic == self._probe_topic:
                self._probe_seen.set()
                continue
            seconds, _, nanos = stamp.partition(".")
            t = int(seconds) * 1_000_000_000 + int(nanos.ljust(9, "0")[:9])
            try:
                doc = json.loads(payload)
            except ValueError:
                doc = {"raw": payload}
            with self.lock:
                self.messages.append((t, topic, doc))

    def publish(self, topic: str, payload: bytes) -> None:
        """With mosquitto_pub, QoS 1 (returns once the broker has it)."""
        publish(self.port, [payload], topic)

    def commands(self, identifier: str) -> list[tuple[int, float]]:
        """(receive ns, ctlVal) of the PivotCommands for `identifier`."""
        out = []
        with self.lock:
            for t, _topic, doc in self.messages:
                if doc.get("operation") != "PivotCommand":
                    continue
                gtic = doc["parameters"][0]["value"]["GTIC"]
                if gtic["Identifier"] == identifier:
                    body = gtic.get("ApcTyp") or gtic.get("SpcTyp")
                    out.append((t, body["ctlVal"]))
        return out

    def wait_for(self, predicate, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [m for m in self.messages if predicate(m)]
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no matching MQTT message within {timeout} s; got {len(self.messages)} others")


    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.thread.join(2)


# -- a local EMS played by Mosquitto's command-line clients ----------------------------------------
def publish(port: int, payloads: list[bytes], topic: str = "hedera-requests", user: tuple = ()) -> None:
    """mosquitto_pub, QoS 1, as broker `user` (name, password) if given; several payloads go
    back to back over one connection (-l: one per line)."""
    command = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1"]
    if user:
        command += ["-u", user[0], "-P", user[1]]
    if len(payloads) == 1:
        subprocess.run(command + ["-m", payloads[0]], check=True, timeout=10)
    else:
        assert all(b"\n" not in p for p in payloads)
        subprocess.run(command + ["-l"], input=b"\n".join(payloads) + b"\n", check=True, timeout=10)


def exchange(port: int, payloads: list[bytes], timeout: float = 20.0, replies_topic: str = "hedera-replies") -> list[dict]:
    """Publish `payloads` as a local EMS would (Mosquitto's own mosquitto_pub) and return the
    replies read by mosquitto_sub, one per payload, in arrival order.  No sleep: the
    subscriber is known to be subscribed once a probe it published comes back."""
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", replies_topic, "-q", "1"],
                           stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in sub.stdout], daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        probe = json.dumps({"probe": time.time_ns()})
        while True:  # subscribed once our own probe comes back
            assert time.monotonic() < deadline, "mosquitto_sub never subscribed"
            publish(port, [probe.encode()], replies_topic)
            try:
                if lines.get(timeout=0.5).strip() == probe:
                    break
            except queue.Empty:
                pass
        publish(port, payloads)
        replies = []
        while len(replies) < len(payloads):
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            doc = json.loads(line)
            if "probe" not in doc:
                replies.append(doc)
        return replies
    finally:
        sub.terminate()
        sub.wait(5)
