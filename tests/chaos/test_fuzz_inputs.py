"""Bad input, fuzzed with hypothesis: pivot payloads, topology files and SCL files never
raise anything but their own clear error, and a Modbus device answering garbage or
exception replies only brings its own link down, with the reason."""
from __future__ import annotations

import asyncio
import json
import random
import time
from importlib import resources

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relevent.problems import ProblemsError
from relevent.protocols.mqtt import pivot
from relevent.scl.parser import SclError, parse_scl
from relevent.topology import TopologyError, parse_topology
from sitectl import REPO

JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)
PIVOT_KEYS = st.sampled_from(["PIVOT", "GTIM", "GTIS", "GTIC", "MvTyp", "SpsTyp", "ApcTyp", "mag", "f", "q", "t",
                              "stVal", "ctlVal", "Identifier", "Validity", "SecondSinceEpoch", "operation",
                              "parameters", "value", "name"])
PIVOTISH = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=6),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(PIVOT_KEYS, inner, max_size=4),
                        max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=200), JSON.map(lambda d: json.dumps(d).encode()),
                 PIVOTISH.map(lambda d: json.dumps(d).encode())))
def test_pivot_parsers_only_ever_raise_pivot_errors(payload):
    for parse in (pivot.parse_measurement, pivot.parse_command, pivot.parse_schedule):
        try:
            parse(payload)
        except pivot.PivotError as exc:
            assert str(exc)  # a reason, naming the field


DEMO = (REPO / "topologies" / "demo.toml").read_text()
NOISE = st.sampled_from(['"', "[", "]]", "{", "= =", "port = -1", "port = 99999", 'protocol = "x"', "name = 5",
                         "[[der]]", "[[lan]]", "[site]", "functions = [\"Volt\"]", "schedules = 0", "\\u0000",
                         "reserve = { X = 1 }", "local = [1]", "${NOPE", "address = []", "ÿ", ""])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 200), st.sampled_from(["replace", "insert", "delete"]), NOISE),
                min_size=1, max_size=4))
def test_topology_mutations_give_a_topology_or_a_topology_error(edits):
    lines = DEMO.splitlines()
    for where, how, text in edits:
        i = where % (len(lines) + 1)
        if how == "replace" and i < len(lines):
            lines[i] = text
        elif how == "insert":
            lines.insert(i, text)
        elif i < len(lines):
            del lines[i]
    try:
        parse_topology("\n".join(lines), "fuzz.toml", env={})
    except TopologyError as exc:
        assert all(p.file == "fuzz.toml" for p in exc.problems)


TEMPLATE = resources.files("relevent.scl").joinpath("templates/der-scheduler.cid").read_text()
SCL_NOISE = st.sampled_from(['type="Nope"', 'bType="INT99"', 'lnType=""', 'name=""', '<', '>', '</DA>',
                             'inst="0"', 'fc="ZZ"', '<DAI name="x"><Val>1</Val></DAI>', '&', '<LN0/>', ''])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 40), SCL_NOISE), min_size=1, max_size=3))
def test_scl_mutations_give_a_model_or_an_scl_error(tmp_path, edits):
    text = TEMPLATE
    for where, cut, noise in edits:
        i = where % len(text)
        text = text[:i] + noise + text[i + cut:]
    path = tmp_path / "fuzz.cid"
    path.write_text(text)
    try:
        parse_scl(path)
    except SclError as exc:
        assert isinstance(exc, ProblemsError) and str(exc)


def test_modbus_garbage_and_exception_replies_only_take_down_that_link():
    """A 'device' answers each request with random bytes, a truncated frame or a Modbus
    exception; the device task reports the link down with the reason, backs off and
    retries, and never raises out (which would crash the whole endpoint)."""
    from relevent.protocols.modbus.address import DeviceAddress
    from relevent.protocols.modbus.device import ModbusDevice

    rng = random.Random(3)
    replies = 0

    async def device(reader, writer):
        nonlocal replies
        try:
            while data := await reader.read(260):
                replies += 1
                kind = replies % 3
                if kind == 0:
                    writer.write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
                elif kind == 1:
                    writer.write(data[:7] + bytes([data[7] | 0x80, 0x02]))  # exception: illegal address
                else:
                    writer.write(data[:4] + b"\x00\x09" + data[6:8] + b"\x06\x01")  # truncated reply
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def scenario():
        events = []
        server = await asyncio.start_server(device, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        der = {"name": "pv9", "profile": "sunspec", "rated_power_w": 1000.0, "registers": {}}
        config = {"timeout": 0.2, "reversion_s": 30, "poll_period": 0.2, "backoff_max": 0.2}
        dev = ModbusDevice(der, DeviceAddress("127.0.0.1", port, 1), config, events.append)
        task = asyncio.create_task(dev.run())
        # 3 s of garbage and at least five links down (3 s alone may not hold five on a busy
        # box), the task running all along.
        started = time.monotonic()
        deadline = started + 30
        while (time.monotonic() < started + 3 or replies < 5
               or sum(1 for e in events if e.what == "link" and not e.up) < 5):
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, (replies, events)
            await asyncio.sleep(0.05)
        assert not task.done(), task.exception()  # still retrying, nothing escaped
        task.cancel()
        server.close()
        return events

    events = asyncio.run(scenario())
    downs = [e for e in events if e.what == "link" and not e.up]
    assert len(downs) >= 5 and replies >= 5
    assert all(e.text for e in downs)
    assert any("exception" in e.text.lower() or "SunS" in e.text for e in downs), {e.text for e in downs}
