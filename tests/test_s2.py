"""S2 (EN 50491-12-2): the site as the CEM of smart devices' resource managers (docs/s2.md).

* The mapping (relevent/protocols/s2/mapping.py), pure: a load's command as PEBC power
  envelopes, measurements with the site's sign, the session's decisions; every message
  built checked again by s2-python's parser and by its models generated from the S2 JSON
  schema.
* A real site (`relevent run` in its own processes), schedules written over HTTP, and
  resource managers that are not the site's code: s2-python's own RM side (its websocket
  client medium, S2AsyncConnection, ResourceManagerHandler and PEBCControlType), each on
  its own asyncio loop in a thread of the test; and a bare websocket client for what
  s2-python's RM would never send.
"""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st
from s2python.common import (
    Commodity, CommodityQuantity, ControlType, Duration, EnergyManagementRole, Handshake, NumberRange,
    PowerMeasurement, PowerValue, ReceptionStatusValues, ResourceManagerDetails, Role, RoleType,
)
from s2python.connection.asset_details import AssetDetails
from s2python.connection.async_ import S2AsyncConnection
from s2python.connection.async_.control_type.class_based import (
    FRBCControlType, OMBCControlType, PEBCControlType, ResourceManagerHandler,
)
from s2python.connection.async_.medium.websocket import WebsocketClientMedium
from s2python.generated import gen_s2
from s2python.pebc import (
    PEBCAllowedLimitRange, PEBCInstruction, PEBCPowerConstraints, PEBCPowerEnvelopeConsequenceType,
    PEBCPowerEnvelopeLimitType,
)
from s2python.s2_parser import S2Parser

import relevent.topology  # noqa: F401 - loads the registry in its import order
from relevent.messages import DeviceCommand
from relevent.protocols.registry import PROTOCOLS
from relevent.protocols.s2 import mapping as M
from relevent.topology import TopologyError, parse_topology
from sitectl import Site, free_port, now_ms, running
from test_http_api import iso

NOW = 1_900_000_000_123   # ms; 2030-03-17T17:46:40.123Z
SYM = CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC
L1, L2, L3 = (CommodityQuantity.ELECTRIC_POWER_L1, CommodityQuantity.ELECTRIC_POWER_L2,
              CommodityQuantity.ELECTRIC_POWER_L3)
UPPER, LOWER = PEBCPowerEnvelopeLimitType.UPPER_LIMIT, PEBCPowerEnvelopeLimitType.LOWER_LIMIT
RATED = 9000.0


def ids():
    """Deterministic identifiers for the pure tests."""
    n = iter(range(1, 1000))
    return lambda: uuid.UUID(int=next(n))


def ranges(*spec, valid_until_ms=None) -> PEBCPowerConstraints:
    """PEBC.PowerConstraints of (quantity, limit type, start, end[, abnormal only])."""
    return PEBCPowerConstraints(
        message_id=uuid.uuid4(), id=uuid.uuid4(), valid_from=M.from_ms(NOW - 60_000),
        valid_until=M.from_ms(valid_until_ms) if valid_until_ms else None,
        consequence_type=PEBCPowerEnvelopeConsequenceType.DEFER,
        allowed_limit_ranges=[PEBCAllowedLimitRange(
            commodity_quantity=q, limit_type=t, range_boundary=NumberRange(start_of_range=a, end_of_range=b),
            abnormal_condition_only=bool(rest and rest[0])) for q, t, a, b, *rest in spec])


def load_ranges(quantity=SYM, upper=(0.0, RATED), lower=(0.0, 0.0)) -> PEBCPowerConstraints:
    return ranges((quantity, UPPER, *upper), (quantity, LOWER, *lower))


def command(outputs: dict, connected: bool = True) -> DeviceCommand:
    return DeviceCommand("hp1", 0.0, 0.0, connected, {k: (v, "FSCH01") for k, v in outputs.items()}, [], NOW, 7)


# -- the command -> the limit drawn ------------------------------------------------------------------------------
@pytest.mark.parametrize("outputs, connected, expected", [
    ({"MaxPow": 5000.0, "OnOff": True}, True, 5000.0),
    ({"MaxPow": 3000.0}, True, 4200.0),            # §14a: a DSO limit below 4.2 kW is raised to it
    ({"MaxPow": 20000.0}, True, RATED),
    ({"MaxPow": float("nan")}, True, 4200.0),       # NaN: the floor, the safest the guarantee allows
    ({}, True, RATED),                              # no MaxPow: the rating
    ({"MaxPow": 5000.0, "OnOff": False}, True, 0.0),   # blocked
    ({"MaxPow": 5000.0}, False, 0.0),               # disconnected
])
def test_a_loads_command_becomes_the_limit_it_may_draw_as_relevent_devices_load_reads_it(outputs, connected, expected):
    assert M.command_limit_w(command(outputs, connected), RATED) == expected


def test_a_load_rated_below_the_guaranteed_minimum_is_not_limited_above_zero_and_its_floor_follows_the_der():
    assert M.limit_w(True, {"MaxPow": (1000.0, None)}, 3000.0) == 3000.0
    assert M.limit_w(True, {"MaxPow": 1000.0}, RATED, guaranteed_min_w=0.0) == 1000.0


# -- the limit -> PEBC envelopes ---------------------------------------------------------------------------------
def test_the_limit_is_the_upper_limit_of_one_symmetric_envelope_with_lower_limit_zero():
    found = M.envelopes(5000.0, M.constraints_from(load_ranges()))
    assert found == [M.Envelope(SYM.value, 0.0, 5000.0, False)]


def test_a_per_phase_symmetric_value_is_a_third_of_the_limit():
    found = M.envelopes(6000.0, M.constraints_from(load_ranges()), symmetric="per_phase")
    assert found == [M.Envelope(SYM.value, 0.0, 2000.0, False)]


def test_per_phase_quantities_share_the_limit_so_the_total_stays_within_it():
    c = M.constraints_from(ranges(*[(q, t, 0.0, 3000.0 if t == UPPER else 0.0) for q in (L1, L2, L3)
                                    for t in (UPPER, LOWER)]))
    found = M.envelopes(4500.0, c)
    assert [(e.quantity, e.lower, e.upper) for e in found] == [(q.value, 0.0, 1500.0) for q in (L1, L2, L3)]
    assert sum(e.upper for e in found) == 4500.0


def test_a_limit_outside_the_rms_allowed_ranges_is_rounded_down_into_them_and_said_so():
    c = M.constraints_from(load_ranges(upper=(1000.0, 6000.0)))
    assert M.envelopes(0.0, c) == [M.Envelope(SYM.value, 0.0, 1000.0, True)]     # the RM cannot be blocked
    assert M.envelopes(8000.0, c) == [M.Envelope(SYM.value, 0.0, 6000.0, True)]
    # Several ranges: their union; in a gap, the greatest allowed value below (never above the site's limit).
    c = M.constraints_from(ranges((SYM, UPPER, 0.0, 0.0), (SYM, UPPER, 2000.0, 6000.0), (SYM, LOWER, 0.0, 0.0)))
    assert [M.envelopes(w, c)[0].upper for w in (0.0, 1900.0, 2000.0, 4500.0)] == [0.0, 0.0, 2000.0, 4500.0]
    # A lower limit that cannot be 0: the greatest allowed at or below it, else the least one.
    assert M.envelopes(5000.0, M.constraints_from(load_ranges(lower=(-500.0, -100.0))))[0].lower == -100.0
    assert M.envelopes(5000.0, M.constraints_from(load_ranges(lower=(100.0, 500.0))))[0].lower == 100.0


limits = st.floats(min_value=0.0, max_value=50_000.0)
bounds = st.tuples(st.floats(-20_000.0, 20_000.0), st.floats(0.0, 20_000.0)).map(lambda t: (t[0], t[0] + t[1]))


@settings(max_examples=300, deadline=None)
@given(limit=limits, upper=st.lists(bounds, min_size=1, max_size=4), lower=st.lists(bounds, min_size=1, max_size=3),
       symmetric=st.sampled_from(["total", "per_phase"]))
def test_every_envelope_is_within_the_rms_ranges_and_never_above_the_sites_limit_where_the_rm_allows_lower(
        limit, upper, lower, symmetric):
    c = M.constraints_from(ranges(*[(SYM, UPPER, a, b) for a, b in upper], *[(SYM, LOWER, a, b) for a, b in lower]))
    try:
        found = M.envelopes(limit, c, symmetric)
    except M.S2MappingError as exc:
        assert "above the upper limit" in str(exc)
        return
    target = limit / M.SYMMETRIC_MODES[symmetric]
    for e in found:
        assert math.isfinite(e.upper) and math.isfinite(e.lower) and e.lower <= e.upper
        assert any(a <= e.upper <= b for a, b in upper) and any(a <= e.lower <= b for a, b in lower)
        assert e.upper <= target or min(a for a, _ in upper) > target
        assert e.clamped == (not any(a <= target <= b for a, b in upper) or not any(a <= 0.0 <= b for a, b in lower))


def test_ranges_for_an_abnormal_condition_only_are_not_used():
    c = M.constraints_from(ranges((SYM, UPPER, 0.0, 9000.0), (SYM, LOWER, 0.0, 0.0),
                                  (SYM, UPPER, 0.0, 20000.0, True)))
    assert c.abnormal_only == 1 and M.envelopes(15000.0, c)[0].upper == 9000.0


@pytest.mark.parametrize("constraints, why", [
    (ranges((CommodityQuantity.HEAT_THERMAL_POWER, UPPER, 0.0, 9.0), (CommodityQuantity.HEAT_THERMAL_POWER, LOWER,
                                                                     0.0, 0.0)),
     "no upper and lower range for electric power"),
    (ranges((SYM, UPPER, 0.0, 9000.0, True), (SYM, LOWER, 0.0, 0.0, True)), "no upper and lower range"),
    (load_ranges(upper=(0.0, 1000.0), lower=(2000.0, 3000.0)), "lower limit 2000.0 W above the upper limit"),
])
def test_constraints_that_cannot_hold_a_load_envelope_are_refused_with_the_reason(constraints, why):
    with pytest.raises(M.S2MappingError, match=why):
        M.envelopes(5000.0, M.constraints_from(constraints))


@pytest.mark.parametrize("limit", [float("nan"), float("inf"), -1.0])
def test_a_limit_that_is_not_a_finite_number_of_watts_drawn_is_refused(limit):
    with pytest.raises(M.S2MappingError):
        M.envelopes(limit, M.constraints_from(load_ranges()))


def test_the_instruction_validates_with_s2_pythons_parser_and_the_models_generated_from_the_s2_schema():
    source = load_ranges()
    c = M.constraints_from(source)
    message = M.pebc_instruction(M.envelopes(5000.0, c), c, NOW, 900_000, new_id=ids())
    text = message.to_json()
    parsed = S2Parser.parse_as_any_message(text)
    assert isinstance(parsed, PEBCInstruction)
    gen_s2.PEBCInstruction.model_validate_json(text)   # the schema's model, without s2-python's wrappers
    data = json.loads(text)
    assert data == {
        "message_type": "PEBC.Instruction", "message_id": str(uuid.UUID(int=1)), "id": str(uuid.UUID(int=2)),
        "execution_time": "2030-03-17T17:46:40.123000Z", "abnormal_condition": False,
        "power_constraints_id": str(source.id),
        "power_envelopes": [{"id": str(uuid.UUID(int=3)), "commodity_quantity": "ELECTRIC.POWER.3_PHASE_SYMMETRIC",
                             "power_envelope_elements": [{"duration": 900_000, "upper_limit": 5000.0,
                                                          "lower_limit": 0.0}]}]}


def test_the_envelope_ends_with_the_constraints_and_expired_constraints_are_not_used():
    c = M.constraints_from(ranges((SYM, UPPER, 0.0, RATED), (SYM, LOWER, 0.0, 0.0), valid_until_ms=NOW + 60_000))
    message = M.pebc_instruction(M.envelopes(5000.0, c), c, NOW, 900_000)
    assert message.power_envelopes[0].power_envelope_elements[0].duration.root == 60_000
    with pytest.raises(M.S2MappingError, match="ended at"):
        M.pebc_instruction(M.envelopes(5000.0, c), c, NOW + 60_000, 900_000)


def test_the_session_messages_validate_and_say_what_the_cem_chose():
    for message in (M.handshake(), M.handshake_response(M.VERSIONS[0]), M.select_control_type(M.PEBC),
                    M.reception_status(uuid.uuid4(), ReceptionStatusValues.OK, "fine")):
        text = message.to_json()
        assert type(S2Parser.parse_as_any_message(text)) is type(message)
        getattr(gen_s2, type(message).__name__).model_validate_json(text)
    assert json.loads(M.handshake().to_json())["role"] == "CEM"
    assert json.loads(M.select_control_type(M.PEBC).to_json())["control_type"] == "POWER_ENVELOPE_BASED_CONTROL"
    assert json.loads(M.reception_status("not-a-uuid", ReceptionStatusValues.INVALID_DATA).to_json())[
        "subject_message_id"] == "00000000-0000-0000-0000-000000000000"


def test_the_cem_selects_a_version_it_speaks_and_pebc_when_offered():
    assert M.VERSIONS == ("0.0.2-beta",)
    assert M.select_version(["1.0.0", "0.0.2-beta"]) == "0.0.2-beta"
    assert M.select_version(["1.0.0"]) is None and M.select_version(None) is None
    assert M.choose_control_type([ControlType.FILL_RATE_BASED_CONTROL, ControlType.POWER_ENVELOPE_BASED_CONTROL]) \
        == ControlType.POWER_ENVELOPE_BASED_CONTROL
    assert M.choose_control_type([ControlType.FILL_RATE_BASED_CONTROL, ControlType.NO_SELECTION]) \
        == ControlType.FILL_RATE_BASED_CONTROL
    assert M.choose_control_type([ControlType.OPERATION_MODE_BASED_CONTROL, ControlType.NO_SELECTION]) is None


def test_a_resource_id_must_be_a_ders_and_the_paths():
    rid = uuid.UUID(int=42)
    known = {str(rid)}
    assert M.resource_problem(None, rid, known) is None
    assert M.resource_problem(str(rid).upper(), rid, known) is None        # a UUID in any case
    assert "not the resource id of the path" in M.resource_problem(str(uuid.UUID(int=7)), rid, known)
    assert "unknown resource id" in M.resource_problem(None, uuid.UUID(int=7), known)
    assert (M.path_resource_id("/s2/abc"), M.path_resource_id("/s2"), M.path_resource_id("/"),
            M.path_resource_id("/s2/a%20b?x=1")) == ("abc", None, None, "a b")


def measurement(*values) -> PowerMeasurement:
    return PowerMeasurement(message_id=uuid.uuid4(), measurement_timestamp=M.from_ms(NOW),
                            values=[PowerValue(commodity_quantity=q, value=v) for q, v in values])


def test_a_measurement_comes_with_the_sites_sign_negative_while_the_load_draws():
    assert M.measured_w(measurement((SYM, 2500.0))) == -2500.0
    assert M.measured_w(measurement((SYM, 800.0)), symmetric="per_phase") == -2400.0
    assert M.measured_w(measurement((L1, 1000.0), (L2, 1100.0), (L3, 900.0))) == -3000.0
    assert M.measured_w(measurement((SYM, -300.0))) == 300.0     # S2's production: the site's generation
    assert M.measured_w(measurement((CommodityQuantity.HEAT_THERMAL_POWER, 7000.0))) is None
    assert math.copysign(1.0, M.measured_w(measurement((SYM, 0.0)))) == 1.0   # no -0.0


# -- the topology --------------------------------------------------------------------------------------------------
def hp_topology(der_extra: str, lan_extra: str = "") -> str:
    return f"""
[site]
name = "t"
[[wan]]
name = "mms"
protocol = "mms"
port = 10102
[[der]]
name = "hp1"
functions = ["MaxPow", "OnOff"]
lan = "s2"
rated_power_w = 9000
{der_extra}
[[lan]]
name = "s2"
protocol = "s2"
port = 18765
{lan_extra}
"""


def test_relevent_check_wants_a_heat_pump_with_a_resource_id_on_an_s2_endpoint():
    rid = str(uuid.UUID(int=42))
    top = parse_topology(hp_topology(f'type = "heat_pump"\naddress = "{rid}"'))
    lan = top.data["lan"][0]
    assert (lan["address"], lan["port"], lan["envelope_s"], lan["symmetric_power"]) == ("127.0.0.1", 18765, 900.0,
                                                                                        "total")
    with pytest.raises(TopologyError) as err:
        parse_topology(hp_topology('type = "pv"\naddress = "hp-1"\nprofile = "sunspec"'))
    text = str(err.value)
    assert 'use type = "heat_pump"' in text and "a UUID" in text and "needs none" in text
    with pytest.raises(TopologyError, match="plain ws:// on 0.0.0.0:18765"):
        parse_topology(hp_topology(f'type = "heat_pump"\naddress = "{rid}"', 'address = "0.0.0.0"'))
    parse_topology(hp_topology(f'type = "heat_pump"\naddress = "{rid}"', 'address = "0.0.0.0"\ninsecure = true'))
    spec = PROTOCOLS["s2"]
    assert spec.role == "lan" and spec.listens and spec.keys["port"].default == 8765


# -- a running site ------------------------------------------------------------------------------------------------
RID = {der: str(uuid.uuid4()) for der in ("hp1", "hp2", "hp3", "hp4", "hp5", "hp6")}
FAST = ("hp6",)    # on the endpoint whose envelopes last 1.5 s


def topology(tmp: Path, ports: dict) -> str:
    def heat_pump(name: str) -> str:
        return f"""
[[der]]
name = "{name}"
type = "heat_pump"
functions = ["MaxPow", "OnOff"]
schedules = 2
lan = "{'s2fast' if name in FAST else 's2'}"
address = "{RID[name]}"
rated_power_w = {RATED}
reserve = {{ MaxPow = {RATED}, OnOff = true }}
"""
    return f"""
[site]
name = "s2{ports['admin']}"
state_dir = "{tmp / 'state'}"

[runtime]
admin_port = {ports['admin']}
allow_fault_injection = true

[supervision]
heartbeat_interval = 0.2
heartbeat_timeout = 2.0
backoff_initial = 0.05

[[wan]]
name = "http"
protocol = "http"
port = {ports['http']}
party = "aggregator"
{"".join(heat_pump(n) for n in RID)}
[[lan]]
name = "s2"
protocol = "s2"
port = {ports['s2']}
call_timeout_s = 2.0

[[lan]]
name = "s2fast"
protocol = "s2"
port = {ports['s2fast']}
envelope_s = 1.5
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s2")
    ports = {k: free_port() for k in ("admin", "http", "s2", "s2fast")}
    path = tmp / "s2.toml"
    path.write_text(topology(tmp, ports))
    s = Site(path, tmp / "state")
    s.ports, s.tmp = ports, tmp
    with running(s, leftovers=True):
        yield s


@pytest.fixture(scope="module")
def http(site):
    with httpx.Client(base_url=f"http://127.0.0.1:{site.ports['http']}", timeout=15) as client:
        yield client


def schedule(http, der: str, values: list, kind: str = "MaxPow", n: int = 1) -> int:
    """Write and enable a one-hour schedule of `values` on `der`, starting at the next second
    but one; returns its start (ms)."""
    start = (now_ms() // 1000 + 2) * 1000
    r = http.put(f"/api/v1/ders/{der}/{kind}/schedules/{n}",
                 json={"values": values, "interval_s": 3600, "priority": 20, "start": iso(start)})
    assert r.status_code == 200, r.text
    r = http.post(f"/api/v1/ders/{der}/{kind}/schedules/{n}/enable")
    assert r.status_code == 200, r.text
    return start


def device(site, der: str) -> dict:
    return site.node("s2")["detail"]["devices"][der]


# -- a resource manager made of s2-python's own RM side ------------------------------------------------------------
class _Medium(WebsocketClientMedium):
    """s2-python's websocket client, keeping every frame it received (the peer's view)."""

    def __init__(self, url: str, owner: "TestRm") -> None:
        super().__init__(url)
        self.owner = owner

    async def messages(self):
        async for raw in super().messages():
            self.owner.wire(json.loads(raw))
            yield raw


class _Pebc(PEBCControlType):
    """PEBC on the RM's side: on activation the power constraints, then every instruction
    recorded and answered OK (s2-python's send_okay)."""

    def __init__(self, owner: "TestRm") -> None:
        self.owner = owner

    async def activate(self, connection) -> None:
        self.owner.activated.set()
        if self.owner.constraints is not None:
            await connection.send_msg_and_await_reception_status(self.owner.constraints())

    async def deactivate(self, connection) -> None:
        pass

    async def handle_instruction(self, connection, msg, send_okay) -> None:
        self.owner.record(msg)
        await send_okay()


class _Frbc(FRBCControlType):
    async def activate(self, connection) -> None:
        pass

    async def deactivate(self, connection) -> None:
        pass

    async def handle_instruction(self, connection, msg, send_okay) -> None:
        await send_okay()


class _Ombc(OMBCControlType):
    async def activate(self, connection) -> None:
        pass

    async def deactivate(self, connection) -> None:
        pass

    async def handle_instruction(self, connection, msg, send_okay) -> None:
        await send_okay()


class _Handler(ResourceManagerHandler):
    def __init__(self, owner: "TestRm", **kw) -> None:
        super().__init__(**kw)
        self.owner = owner

    async def _on_handshake_response(self, connection, event, send_okay) -> None:
        self.owner.version = event.selected_protocol_version
        await super()._on_handshake_response(connection, event, send_okay)


class TestRm:
    """One resource manager on its own event loop thread; every method waits for its result."""
    __test__ = False

    def __init__(self, port: int, rid: str, path: str | None = None, pebc: bool = True,
                 upper: tuple = (0.0, RATED), control=None) -> None:
        """`control`: a function of this RM giving its control types (s2-python's), in place
        of PEBC (or, with pebc=False, a bare FRBC)."""
        self.url = f"ws://127.0.0.1:{port}" + (path if path is not None else f"/s2/{rid}")
        self.rid, self.pebc, self.upper, self.control = uuid.UUID(rid), pebc, upper, control
        self.instructions: list[tuple[float, PEBCInstruction]] = []
        self.frames: list[dict] = []
        self.version: str | None = None
        self.activated = threading.Event()
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.medium: _Medium | None = None
        self.connection: S2AsyncConnection | None = None
        self.task = None

    def constraints(self) -> PEBCPowerConstraints:
        return ranges((SYM, UPPER, *self.upper), (SYM, LOWER, 0.0, 0.0)).model_copy(
            update={"valid_from": datetime.now(timezone.utc)})

    def record(self, instruction: PEBCInstruction) -> None:
        with self.lock:
            self.instructions.append((time.time(), instruction))

    def wire(self, frame: dict) -> None:
        with self.lock:
            self.frames.append(frame)

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connect(self) -> "TestRm":
        details = AssetDetails(resource_id=self.rid, provides_forecast=False, provides_power_measurements=[SYM],
                               instruction_processing_delay=Duration(root=200),
                               roles=[Role(role=RoleType.ENERGY_CONSUMER, commodity=Commodity.ELECTRICITY)],
                               name="test heat pump", manufacturer="pytest", model="s2-python RM")
        control = self.control(self) if self.control else [_Pebc(self)] if self.pebc else [_Frbc()]

        async def go():
            self.medium = _Medium(self.url, self)
            await self.medium.connect()
            self.connection = S2AsyncConnection(self.medium, eventloop=self.loop)
            _Handler(self, control_types=control, asset_details=details).register_handlers(self.connection)
            self.task = asyncio.ensure_future(self.connection.run())
        self.run(go())
        return self

    def measure(self, w: float):
        """A PowerMeasurement of `w` W consumed; returns the CEM's ReceptionStatus."""
        return self.run(self.connection.send_msg_and_await_reception_status(
            measurement((SYM, w)).model_copy(update={"measurement_timestamp": datetime.now(timezone.utc)}),
            raise_on_error=False))

    def close(self) -> None:
        async def go():
            if self.connection is not None:
                await self.connection.stop()
            if self.medium is not None:
                await self.medium.disconnect()
            if self.task is not None:
                await asyncio.wait_for(self.task, 5)
        try:
            self.run(go())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    def wait_instruction(self, predicate=lambda i: True, timeout: float = 15.0, after: int = 0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [x for x in self.instructions[after:] if predicate(x[1])]
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no matching PEBC.Instruction in {timeout} s; got {self.instructions}")


def upper_of(instruction: PEBCInstruction) -> float:
    return instruction.power_envelopes[0].power_envelope_elements[0].upper_limit


def test_an_s2_python_rm_gets_the_handshake_its_details_answered_and_pebc_selected(site):
    rm = TestRm(site.ports["s2"], RID["hp1"]).connect()
    try:
        assert rm.activated.wait(15), rm.frames
        assert rm.version == "0.0.2-beta"
        kinds = [f["message_type"] for f in rm.frames]
        assert kinds[:3] == ["ReceptionStatus", "Handshake", "HandshakeResponse"], kinds
        assert rm.frames[1]["role"] == "CEM"
        select = next(f for f in rm.frames if f["message_type"] == "SelectControlType")
        assert select["control_type"] == "POWER_ENVELOPE_BASED_CONTROL"
        # Every message of the RM was answered OK: its Handshake, details and constraints.
        # s2-python's RM may send its constraints before its answer to SelectControlType (which
        # is when the endpoint records the control type): wait for both.
        node = site.wait_for("s2", lambda n: n["detail"]["devices"]["hp1"]["constraints"] is not None
                             and n["detail"]["devices"]["hp1"]["control_type"] is not None, timeout=10)
        statuses = [f["status"] for f in rm.frames if f["message_type"] == "ReceptionStatus"]
        assert statuses and set(statuses) == {"OK"}, rm.frames
        dev = node["detail"]["devices"]["hp1"]
        assert (dev["link"], dev["control_type"], dev["resource_id"]) == ("up", "POWER_ENVELOPE_BASED_CONTROL",
                                                                         RID["hp1"])
        assert dev["details"]["model"] == "s2-python RM" and dev["details"]["control_types"] == [
            "POWER_ENVELOPE_BASED_CONTROL"]
        assert dev["constraints"]["upper"] == {"ELECTRIC.POWER.3_PHASE_SYMMETRIC": [[0.0, RATED]]}
        # The reserve's command (no MaxPow schedule: the rating) as the first instruction.
        _, first = rm.wait_instruction()
        assert upper_of(first) == RATED and first.abnormal_condition is False
    finally:
        rm.close()


def test_a_maxpow_schedule_written_over_http_arrives_as_a_pebc_envelope_and_the_rms_ok_is_in_force(site, http):
    rm = TestRm(site.ports["s2"], RID["hp1"]).connect()
    try:
        rm.wait_instruction(lambda i: upper_of(i) == RATED)
        start = schedule(http, "hp1", [5000.0])
        arrived, instruction = rm.wait_instruction(lambda i: upper_of(i) == 5000.0)
        assert start / 1000 <= arrived < start / 1000 + 3.0        # at the boundary, not before
        envelope = instruction.power_envelopes[0]
        assert envelope.commodity_quantity == SYM
        element = envelope.power_envelope_elements[0]
        assert (element.lower_limit, element.upper_limit, element.duration.root) == (0.0, 5000.0, 900_000)
        node = site.wait_for("s2", lambda n: (n["detail"]["devices"]["hp1"]["instruction"] or {}).get("limit_w")
                             == 5000.0 and n["detail"]["devices"]["hp1"]["instruction_status"] == "OK", timeout=10)
        dev = node["detail"]["devices"]["hp1"]
        assert dev["instruction"]["instruction_id"] == str(instruction.id)
        assert dev["instruction"]["constraints_id"] == str(instruction.power_constraints_id)
        # §14a: 3 kW is raised to the guaranteed 4.2 kW; a block (OnOff off) is 0 W.
        schedule(http, "hp1", [3000.0])
        rm.wait_instruction(lambda i: upper_of(i) == 4200.0)
        schedule(http, "hp1", [False], kind="OnOff")
        rm.wait_instruction(lambda i: upper_of(i) == 0.0)
        schedule(http, "hp1", [True], kind="OnOff")
        rm.wait_instruction(lambda i: upper_of(i) == 4200.0, after=len(rm.instructions) - 1)
    finally:
        rm.close()


def test_a_power_measurement_is_the_ders_measured_power_in_relevent_status(site):
    rm = TestRm(site.ports["s2"], RID["hp2"]).connect()
    try:
        rm.wait_instruction()
        site.wait_for("s2", lambda n: n["detail"]["devices"]["hp2"]["instruction_status"] == "OK", timeout=10)
        status = rm.measure(2500.0)
        assert status.status == ReceptionStatusValues.OK
        node = site.wait_for("hp2", lambda n: (n["detail"].get("measured") or {}).get("w") == -2500.0, timeout=10)
        m = node["detail"]["measured"]
        assert (m["quality"], m["connected"]) == ("good", True)
        assert m["state"].startswith("PEBC envelope [0, 9000] W")
        assert device(site, "hp2")["meter_w"] == -2500.0
    finally:
        rm.close()


def test_an_rm_that_disconnects_goes_invalid_and_gets_the_current_instruction_again_when_it_reconnects(site, http):
    schedule(http, "hp3", [6000.0])
    site.wait_for("hp3", lambda n: (n["detail"].get("command") or {}).get("limit_w") == 6000.0, timeout=10)
    rm = TestRm(site.ports["s2"], RID["hp3"]).connect()
    rm.wait_instruction(lambda i: upper_of(i) == 6000.0)
    rm.measure(1000.0)
    site.wait_for("hp3", lambda n: (n["detail"].get("measured") or {}).get("w") == -1000.0, timeout=10)
    rm.close()
    node = site.wait_for("hp3", lambda n: (n["detail"].get("measured") or {}).get("quality") == "invalid", timeout=10)
    assert node["detail"]["measured"]["state"].startswith("resource manager offline")
    site.wait_for("s2", lambda n: n["detail"]["devices"]["hp3"]["link"] == "down")
    # Back at /s2 without the id in the path: known by its details, the same limit again.
    rm = TestRm(site.ports["s2"], RID["hp3"], path="/s2").connect()
    try:
        _, again = rm.wait_instruction(lambda i: upper_of(i) == 6000.0)
        node = site.wait_for("s2", lambda n: n["detail"]["devices"]["hp3"]["connects"] == 2
                             and n["detail"]["devices"]["hp3"]["instruction_status"] == "OK", timeout=10)
        assert node["detail"]["devices"]["hp3"]["instruction"]["instruction_id"] == str(again.id)
    finally:
        rm.close()


def test_an_unknown_resource_id_is_refused_with_the_reason_logged_and_counted(site):
    before = site.node("s2")["detail"]["refused"]
    stranger = str(uuid.uuid4())

    async def knock():
        async with websockets.connect(f"ws://127.0.0.1:{site.ports['s2']}/s2/{stranger}", open_timeout=5) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            return closed.value.rcvd
    rcvd = asyncio.run(knock())
    assert rcvd.code == 1008 and "unknown resource id" in rcvd.reason and stranger in rcvd.reason
    node = site.wait_for("s2", lambda n: n["detail"]["refused"] == before + 1)
    assert stranger in node["detail"]["last_refused"]
    assert f"refused resource id {stranger}" in site.log.read_text()


def test_an_rm_whose_details_name_an_unknown_resource_id_gets_a_permanent_error_and_is_closed(site):
    before = site.node("s2")["detail"]["refused"]
    stranger = str(uuid.uuid4())
    rm = TestRm(site.ports["s2"], stranger, path="/s2").connect()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not rm.task.done():
            time.sleep(0.05)
        assert rm.task.done(), "the CEM did not close the connection"
        assert not rm.activated.is_set()
        errors = [f for f in rm.frames if f["message_type"] == "ReceptionStatus" and f["status"] == "PERMANENT_ERROR"]
        assert errors and "unknown resource id" in errors[0]["diagnostic_label"]
        site.wait_for("s2", lambda n: n["detail"]["refused"] == before + 1)
    finally:
        rm.close()


def test_an_rm_without_pebc_or_frbc_is_measured_not_controlled_and_says_so(site):
    rm = TestRm(site.ports["s2"], RID["hp4"], control=lambda rm: [_Ombc()]).connect()
    try:
        node = site.wait_for("s2", lambda n: n["detail"]["devices"]["hp4"]["instruction_status"] == "not sent",
                             timeout=15)
        dev = node["detail"]["devices"]["hp4"]
        assert dev["control_type"] is None and "offers no PEBC or FRBC (OPERATION_MODE_BASED_CONTROL)" in \
            dev["control_detail"]
        assert not any(f["message_type"] == "SelectControlType" for f in rm.frames)
        rm.measure(700.0)
        node = site.wait_for("hp4", lambda n: (n["detail"].get("measured") or {}).get("w") == -700.0, timeout=10)
        assert node["detail"]["measured"]["quality"] == "questionable"
        assert "offers no PEBC or FRBC" in node["detail"]["measured"]["state"]
    finally:
        rm.close()


def test_a_message_that_is_not_s2_is_answered_invalid_and_the_session_goes_on(site):
    async def talk():
        async with websockets.connect(f"ws://127.0.0.1:{site.ports['s2']}/s2", open_timeout=5) as ws:
            await ws.send("not json")
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            bad = {"message_type": "Handshake", "message_id": str(uuid.uuid4()), "role": "RM",
                   "supported_protocol_versions": []}     # min_length 1
            await ws.send(json.dumps(bad))
            second = json.loads(await asyncio.wait_for(ws.recv(), 5))
            hello = {"message_type": "Handshake", "message_id": str(uuid.uuid4()), "role": "RM",
                     "supported_protocol_versions": ["0.0.2-beta"]}
            await ws.send(json.dumps(hello))
            rest = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(3)]
            return first, second, bad, hello, rest
    first, second, bad, hello, rest = asyncio.run(talk())
    assert (first["status"], first["subject_message_id"]) == ("INVALID_DATA", str(M.NIL_ID))
    assert (second["status"], second["subject_message_id"]) == ("INVALID_MESSAGE", bad["message_id"])
    assert "supported_protocol_versions" in second["diagnostic_label"]
    assert rest[0] == {"message_type": "ReceptionStatus", "subject_message_id": hello["message_id"], "status": "OK"}
    assert [r["message_type"] for r in rest[1:]] == ["Handshake", "HandshakeResponse"]


def test_an_accepted_envelope_is_refreshed_before_it_ends(site):
    rm = TestRm(site.ports["s2fast"], RID["hp6"]).connect()
    try:
        arrived, first = rm.wait_instruction()
        assert first.power_envelopes[0].power_envelope_elements[0].duration.root == 1500
        later, again = rm.wait_instruction(after=1, timeout=5)      # every envelope_s / 3
        assert 0.3 < later - arrived < 1.5 and again.id != first.id and upper_of(again) == upper_of(first)
        node = site.wait_for("s2fast", lambda n: n["detail"]["devices"]["hp6"]["instruction"]["why"] == "refresh")
        assert node["detail"]["devices"]["hp6"]["instruction_status"] == "OK"
    finally:
        rm.close()


# -- a bare websocket RM: what s2-python's RM would never do -----------------------------------------------------
class RawRm:
    """An RM speaking S2 frame by frame: messages built and parsed with s2-python's models,
    answers left out or given as the test says."""
    __test__ = False

    def __init__(self, ws, rid: str) -> None:
        self.ws, self.rid = ws, uuid.UUID(rid)

    async def send(self, message) -> None:
        await self.ws.send(message.to_json())

    async def recv(self, timeout: float = 10.0):
        return S2Parser.parse_as_any_message(await asyncio.wait_for(self.ws.recv(), timeout))

    async def expect(self, kind: str, timeout: float = 10.0):
        """The next message of `kind`, answering OK whatever else comes (ReceptionStatus aside)."""
        while True:
            message = await self.recv(timeout)
            if message.message_type == kind:
                return message
            if message.message_type != "ReceptionStatus":
                await self.ok(message)

    async def ok(self, message, status=ReceptionStatusValues.OK) -> None:
        await self.send(M.reception_status(message.message_id, status, "from the test"))

    async def start(self) -> None:
        """Handshake, details and PEBC's power constraints, each answered as S2 asks."""
        await self.send(Handshake(message_id=uuid.uuid4(), role=EnergyManagementRole.RM,
                                  supported_protocol_versions=["0.0.2-beta"]))
        await self.expect("HandshakeResponse")
        await self.send(ResourceManagerDetails(
            message_id=uuid.uuid4(), resource_id=self.rid, roles=[Role(role=RoleType.ENERGY_CONSUMER,
                                                                       commodity=Commodity.ELECTRICITY)],
            instruction_processing_delay=Duration(root=100), available_control_types=[M.PEBC],
            provides_forecast=False, provides_power_measurement_types=[SYM]))
        await self.ok(await self.expect("SelectControlType"))
        await self.send(load_ranges().model_copy(update={"valid_from": datetime.now(timezone.utc)}))


def test_an_instruction_the_rm_leaves_unanswered_is_retried_and_one_it_refuses_is_reported(site, http):
    async def talk():
        async with websockets.connect(f"ws://127.0.0.1:{site.ports['s2']}/s2/{RID['hp5']}", open_timeout=5) as ws:
            rm = RawRm(ws, RID["hp5"])
            await rm.start()
            first = await rm.expect("PEBC.Instruction")          # left unanswered
            t0 = time.monotonic()
            retry = await rm.expect("PEBC.Instruction", timeout=10)
            waited = time.monotonic() - t0
            # (reported when the first went unanswered: by now, or a moment later)
            node = await asyncio.to_thread(site.wait_for, "s2", lambda n: n["detail"]["devices"]["hp5"][
                "instruction_status"] == "timeout", 10)
            timeout_seen = node["detail"]["devices"]["hp5"]["instruction_detail"]
            await rm.ok(retry, ReceptionStatusValues.PERMANENT_ERROR)
            await rm.send(measurement((SYM, 3000.0)).model_copy(
                update={"measurement_timestamp": datetime.now(timezone.utc)}))
            questionable = await asyncio.to_thread(  # (the timeout above made it questionable already: wait for this one)
                site.wait_for, "hp5", lambda n: (n["detail"].get("measured") or {}).get("quality") == "questionable"
                and "PERMANENT_ERROR" in n["detail"]["measured"].get("state", ""), 10)
            # A new command: a new instruction, answered OK, and the measurement good again.
            await asyncio.to_thread(schedule, http, "hp5", [7000.0])
            while True:
                latest = await rm.expect("PEBC.Instruction", timeout=15)
                if upper_of(latest) == 7000.0:
                    break
                await rm.ok(latest)
            await rm.ok(latest)

            async def keep_answering():   # a repeat of the command (a later instruction) is answered too
                while True:
                    await rm.ok(await rm.expect("PEBC.Instruction", timeout=60))
            answering = asyncio.ensure_future(keep_answering())
            await rm.send(measurement((SYM, 6900.0)).model_copy(
                update={"measurement_timestamp": datetime.now(timezone.utc)}))
            good = await asyncio.to_thread(site.wait_for, "hp5", lambda n: (n["detail"].get("measured") or {})
                                           .get("w") == -6900.0 and n["detail"]["measured"].get("quality")
                                           == "good", 10)
            answering.cancel()
            return first, retry, waited, timeout_seen, questionable, good
    first, retry, waited, timeout_seen, questionable, good = asyncio.run(talk())
    assert retry.id != first.id and upper_of(retry) == upper_of(first) == RATED
    assert 1.5 < waited < 8.0 and timeout_seen == "no ReceptionStatus within 2.0 s"   # call_timeout_s, then again
    m = questionable["detail"]["measured"]
    assert m["w"] == -3000.0 and "PEBC instruction PERMANENT_ERROR" in m["state"] and "from the test" in m["state"]
    assert good["detail"]["measured"]["quality"] == "good"
    dev = device(site, "hp5")
    assert dev["rejections"] >= 1 and dev["errors"] >= 1 and dev["instruction_status"] == "OK"
