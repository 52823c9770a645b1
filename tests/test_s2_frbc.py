"""S2 FRBC (fill rate based control): the site as the CEM of an RM that offers FRBC but not
PEBC (docs/s2.md, "FRBC").

* The choice (relevent/protocols/s2/frbc.py), pure: per actuator the operation mode and
  factor that draw the most within the DER's limit (or closest to an ActPow request),
  checked against a brute-force enumeration over modes x a fine grid of factors; every
  instruction re-parsed by s2-python and validated by its models generated from the S2
  JSON schema.
* A real site (test_s2's topology and fixtures) and s2-python's own RM side offering FRBC
  only: one actuator with the modes off 0 W, half 3 kW, full 6 kW.
"""
from __future__ import annotations

import itertools
import json
import math
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from s2python.common import (
    Commodity, CommodityQuantity, ControlType, NumberRange, PowerRange, ReceptionStatusValues, Transition,
)
from s2python.connection.async_.control_type.class_based import FRBCControlType
from s2python.frbc import (
    FRBCActuatorDescription, FRBCActuatorStatus, FRBCInstruction, FRBCOperationMode, FRBCOperationModeElement,
    FRBCStorageDescription, FRBCStorageStatus, FRBCSystemDescription,
)
from s2python.generated import gen_s2
from s2python.s2_parser import S2Parser

from relevent.protocols.s2 import frbc as F
from relevent.protocols.s2 import mapping as M
from test_s2 import NOW, RID, SYM, TestRm, device, http, ids, schedule, site  # noqa: F401 - site, http: fixtures

L1 = CommodityQuantity.ELECTRIC_POWER_L1
TOL_W = F.EPS_W    # W: totals this close are equal, as the choice counts them


# -- an FRBC system description -----------------------------------------------------------------------------------
def element(w0: float, w1: float, fill=(0.0, 1.0), quantity=SYM) -> FRBCOperationModeElement:
    return FRBCOperationModeElement(
        fill_level_range=NumberRange(start_of_range=fill[0], end_of_range=fill[1]),
        fill_rate=NumberRange(start_of_range=0.0, end_of_range=0.001),
        power_ranges=[PowerRange(start_of_range=w0, end_of_range=w1, commodity_quantity=quantity)])


def mode(label: str, *elements, abnormal: bool = False, n: int | None = None) -> FRBCOperationMode:
    return FRBCOperationMode(id=uuid.UUID(int=n) if n else uuid.uuid4(), diagnostic_label=label,
                             elements=list(elements), abnormal_condition_only=abnormal)


def actuator(*modes, transitions=None, n: int | None = None) -> FRBCActuatorDescription:
    """Every mode reachable from every other one, unless `transitions` [(from, to)] says."""
    pairs = transitions if transitions is not None else [(a, b) for a in modes for b in modes if a is not b]
    return FRBCActuatorDescription(
        id=uuid.UUID(int=n) if n else uuid.uuid4(), diagnostic_label="compressor",
        supported_commodities=[Commodity.ELECTRICITY], operation_modes=list(modes), timers=[],
        transitions=[Transition(id=uuid.uuid4(), from_=a.id, to=b.id, start_timers=[], blocking_timers=[],
                                abnormal_condition_only=False) for a, b in pairs])


def system(*actuators) -> FRBCSystemDescription:
    return FRBCSystemDescription(
        message_id=uuid.uuid4(), valid_from=M.from_ms(NOW), actuators=list(actuators),
        storage=FRBCStorageDescription(diagnostic_label="buffer", fill_level_label="%", provides_leakage_behaviour=False,
                                       provides_fill_level_target_profile=False, provides_usage_forecast=False,
                                       fill_level_range=NumberRange(start_of_range=0.0, end_of_range=1.0)))


OFF, HALF, FULL = (mode("off", element(0.0, 0.0), n=1), mode("half", element(3000.0, 3000.0), n=2),
                   mode("full", element(6000.0, 6000.0), n=3))
HEAT_PUMP = system(actuator(OFF, HALF, FULL, n=10))


def chosen(plan: F.Plan) -> list[tuple[str, float]]:
    return [(s.mode, round(s.factor, 9)) for s in plan.settings]


# -- the choice --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit, requested, expected, power", [
    (9000.0, None, "full", 6000.0),     # the rating: the most the modes draw
    (4200.0, None, "half", 3000.0),     # §14a: the most within 4.2 kW
    (0.0, None, "off", 0.0),            # blocked
    (9000.0, 2000.0, "half", 3000.0),   # ActPow 2 kW: 3 kW is closer than 0 W
    (9000.0, 1000.0, "off", 0.0),
])
def test_the_mode_drawing_the_most_within_the_limit_or_closest_to_the_request_is_chosen(limit, requested, expected,
                                                                                        power):
    plan = F.choose(HEAT_PUMP, 0.5, {}, limit, requested)
    assert [s.mode for s in plan.settings] == [expected] and plan.power_w == power


def test_a_mode_with_a_power_range_gets_the_factor_that_draws_the_limit():
    variable = system(actuator(OFF, mode("full", element(3000.0, 6000.0)), n=10))
    plan = F.choose(variable, 0.5, {}, 4200.0)
    assert chosen(plan) == [("full", 0.4)] and math.isclose(plan.power_w, 4200.0)


def test_on_ties_the_active_mode_stays():
    eco, normal = mode("eco", element(3000.0, 3000.0)), mode("normal", element(3000.0, 3000.0))
    two = system(actuator(OFF, eco, normal, n=10))
    for active in (eco, normal):
        plan = F.choose(two, 0.5, {str(uuid.UUID(int=10)): (str(active.id), 0.7)}, 4200.0)
        assert chosen(plan) == [(active.diagnostic_label, 0.7)] and not plan.settings[0].switch


def test_the_element_holding_the_present_fill_level_gives_the_power_and_the_nearest_one_outside_them():
    # A tank nearly full: the full mode draws less (the compressor modulates down).
    full = mode("full", element(6000.0, 6000.0, (0.0, 0.8)), element(4000.0, 4000.0, (0.8, 1.0)))
    tank = system(actuator(OFF, HALF, full, n=10))
    assert [s.mode for s in F.choose(tank, 0.5, {}, 4200.0).settings] == ["half"]
    assert [s.mode for s in F.choose(tank, 0.9, {}, 4200.0).settings] == ["full"]
    assert [s.mode for s in F.choose(tank, 1.7, {}, 4200.0).settings] == ["full"]     # above: the last element
    assert [s.mode for s in F.choose(tank, -0.2, {}, 4200.0).settings] == ["half"]    # below: the first


def test_a_per_phase_symmetric_value_is_a_third_of_the_device_and_a_phase_is_as_given():
    per_phase = system(actuator(OFF, mode("full", element(2000.0, 2000.0)), n=10))
    assert F.choose(per_phase, 0.5, {}, 4200.0).power_w == 2000.0
    assert F.choose(per_phase, 0.5, {}, 4200.0, symmetric="per_phase").power_w == 0.0
    assert F.choose(per_phase, 0.5, {}, 9000.0, symmetric="per_phase").power_w == 6000.0
    single = system(actuator(OFF, mode("on", element(2300.0, 2300.0, quantity=L1)), n=10))
    assert F.choose(single, 0.5, {}, 4200.0).power_w == 2300.0


def test_only_modes_reachable_from_the_active_one_outside_an_abnormal_condition_are_used():
    boost = mode("boost", element(4000.0, 4000.0), abnormal=True)
    act = actuator(OFF, HALF, FULL, boost, transitions=[(OFF, HALF), (HALF, FULL), (FULL, HALF), (HALF, OFF)],
                   n=10)
    tank = system(act)
    aid = str(act.id)
    assert [s.mode for s in F.choose(tank, 0.5, {aid: (str(OFF.id), 0.0)}, 9000.0).settings] == ["half"]
    assert [s.mode for s in F.choose(tank, 0.5, {aid: (str(HALF.id), 1.0)}, 9000.0).settings] == ["full"]
    assert [s.mode for s in F.choose(tank, 0.5, {}, 4200.0).settings] == ["half"]      # not the abnormal boost
    # From full, off is not reachable: a block is refused, not bent.
    with pytest.raises(M.S2MappingError, match=r"no operation mode stays within 0 W at fill level 0.5: the least "
                                               r"the actuators draw is 3000 W \(actuator .* mode 'half'\)"):
        F.choose(tank, 0.5, {aid: (str(FULL.id), 1.0)}, 0.0)


def test_no_mode_within_the_limit_is_refused_with_the_reason():
    always_on = system(actuator(HALF, FULL, n=10))
    with pytest.raises(M.S2MappingError, match="no operation mode stays within 0 W"):
        F.choose(always_on, 0.5, {}, 0.0)
    with pytest.raises(M.S2MappingError, match="limit nan W"):
        F.choose(HEAT_PUMP, 0.5, {}, float("nan"))
    with pytest.raises(M.S2MappingError, match="present_fill_level"):
        F.choose(HEAT_PUMP, float("inf"), {}, 4200.0)


def test_two_actuators_share_the_limit():
    second = system(actuator(OFF, HALF, FULL, n=10), actuator(mode("off", element(0.0, 0.0)),
                                                              mode("on", element(1000.0, 2000.0)), n=11))
    plan = F.choose(second, 0.5, {}, 4200.0)
    assert math.isclose(plan.power_w, 4200.0) and [s.mode for s in plan.settings] == ["half", "on"]
    assert chosen(plan)[1] == ("on", 0.2)


def test_the_instruction_validates_with_s2_pythons_parser_and_the_models_generated_from_the_s2_schema():
    plan = F.choose(HEAT_PUMP, 0.5, {}, 4200.0)
    [message] = F.instructions(plan, NOW, ids())
    text = message.to_json()
    parsed = S2Parser.parse_as_any_message(text)
    assert isinstance(parsed, FRBCInstruction)
    gen_s2.FRBCInstruction.model_validate_json(text)
    data = json.loads(text)
    assert data["message_type"] == "FRBC.Instruction"
    assert (data["actuator_id"], data["operation_mode"], data["operation_mode_factor"], data["abnormal_condition"]) == (
        str(uuid.UUID(int=10)), str(HALF.id), 1.0, False)
    assert data["execution_time"].startswith("2030-03-17T17:46:40.123")


# -- against brute force -----------------------------------------------------------------------------------------
watts = st.floats(min_value=-2000.0, max_value=10_000.0, allow_nan=False)
power_range = st.tuples(watts, watts).map(lambda r: tuple(sorted(r)))    # s2-python: start <= end
modes = st.lists(power_range, min_size=1, max_size=4)


def described(spec: list) -> tuple[FRBCSystemDescription, list]:
    acts = [actuator(*[mode(f"m{i}", element(w0, w1)) for i, (w0, w1) in enumerate(ms)]) for ms in spec]
    return system(*acts), acts


def brute(spec: list, target: float, limit: float, steps: int) -> float | None:
    """The least |target - P| over modes x factors on a grid, P within the limit (to TOL_W,
    as frbc.EPS_W); None: none."""
    best = None
    grid = [i / steps for i in range(steps + 1)]
    for combo in itertools.product(*spec):
        for factors in itertools.product(grid, repeat=len(combo)):
            p = sum(w0 + f * (w1 - w0) for (w0, w1), f in zip(combo, factors))
            if p <= limit + TOL_W and (best is None or abs(target - p) < best):
                best = abs(target - p)
    return best


def check(spec: list, limit: float, requested: float | None, active_index: int | None, steps: int) -> None:
    tank, acts = described(spec)
    active = {} if active_index is None else {
        str(acts[0].id): (str(acts[0].operation_modes[active_index % len(spec[0])].id), 0.5)}
    target = limit if requested is None else min(requested, limit)
    best = brute(spec, target, limit, steps)
    if best is None:
        with pytest.raises(M.S2MappingError, match="no operation mode stays within"):
            F.choose(tank, 0.5, active, limit, requested)
        return
    plan = F.choose(tank, 0.5, active, limit, requested)
    assert plan.power_w <= limit + TOL_W
    assert all(0.0 <= s.factor <= 1.0 for s in plan.settings)
    distance = abs(target - plan.power_w)
    assert distance <= best + TOL_W        # never worse than any point of the grid
    span = sum(max(abs(w1 - w0) for w0, w1 in ms) for ms in spec)
    assert distance >= best - span / steps - TOL_W    # and the grid, fine enough, finds it
    for message in F.instructions(plan, NOW):
        assert isinstance(S2Parser.parse_as_any_message(message.to_json()), FRBCInstruction)
        gen_s2.FRBCInstruction.model_validate_json(message.to_json())


@settings(max_examples=150, deadline=None)
@given(modes, st.floats(min_value=0.0, max_value=12_000.0), st.none() | st.floats(min_value=0.0, max_value=12_000.0),
       st.none() | st.integers(min_value=0, max_value=3))
def test_one_actuator_draws_what_brute_force_over_modes_and_a_fine_factor_grid_finds_best(spec, limit, requested,
                                                                                         active):
    check([spec], limit, requested, active, steps=2000)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(power_range, min_size=1, max_size=3), min_size=2, max_size=2),
       st.floats(min_value=0.0, max_value=12_000.0), st.none() | st.floats(min_value=0.0, max_value=12_000.0))
def test_two_actuators_draw_at_least_as_well_as_brute_force_finds(spec, limit, requested):
    check(spec, limit, requested, None, steps=40)


@settings(max_examples=100, deadline=None)
@given(modes, st.floats(min_value=0.0, max_value=12_000.0), st.integers(min_value=0, max_value=3))
def test_the_active_mode_stays_when_it_does_as_well(spec, limit, active_index):
    tank, acts = described([spec])
    active = acts[0].operation_modes[active_index % len(spec)]
    try:
        plan = F.choose(tank, 0.5, {str(acts[0].id): (str(active.id), 0.5)}, limit)
    except M.S2MappingError:
        return
    w0, w1 = spec[active_index % len(spec)]
    if min(w0, w1) <= limit:
        staying = min(max(w0, w1), limit)
        if abs(limit - staying) <= abs(limit - plan.power_w) + TOL_W:
            assert plan.settings[0].mode_id == str(active.id)


def test_the_cem_selects_pebc_before_frbc_and_frbc_when_pebc_is_not_offered():
    assert M.choose_control_type([ControlType.FILL_RATE_BASED_CONTROL, ControlType.POWER_ENVELOPE_BASED_CONTROL]) \
        == ControlType.POWER_ENVELOPE_BASED_CONTROL
    assert M.choose_control_type([ControlType.NO_SELECTION, ControlType.FILL_RATE_BASED_CONTROL]) \
        == ControlType.FILL_RATE_BASED_CONTROL
    assert M.choose_control_type([ControlType.OPERATION_MODE_BASED_CONTROL, ControlType.NO_SELECTION]) is None


# -- a running site and s2-python's RM offering FRBC only -----------------------------------------------------------
class _FrbcSide(FRBCControlType):
    """FRBC on the RM's side: on activation the system description, the fill level (half
    full) and the active mode (off); every instruction recorded, answered OK, and followed
    by the actuator's new status."""

    def __init__(self, owner: "FrbcRm") -> None:
        self.owner = owner

    async def activate(self, connection) -> None:
        self.owner.activated.set()
        await connection.send_msg_and_await_reception_status(HEAT_PUMP.model_copy(
            update={"message_id": uuid.uuid4(), "valid_from": datetime.now(timezone.utc)}))
        await connection.send_msg_and_await_reception_status(
            FRBCStorageStatus(message_id=uuid.uuid4(), present_fill_level=0.5))
        await self.status(connection, OFF.id, 0.0)

    async def status(self, connection, mode_id, factor: float) -> None:
        rs = await connection.send_msg_and_await_reception_status(FRBCActuatorStatus(
            message_id=uuid.uuid4(), actuator_id=uuid.UUID(int=10), active_operation_mode_id=mode_id,
            operation_mode_factor=factor), raise_on_error=False)
        self.owner.answers.append(rs)

    async def deactivate(self, connection) -> None:
        pass

    async def handle_instruction(self, connection, msg, send_okay) -> None:
        self.owner.record(msg)
        await send_okay()
        await self.status(connection, msg.operation_mode, msg.operation_mode_factor)


class FrbcRm(TestRm):
    __test__ = False

    def __init__(self, port: int, rid: str, **kw) -> None:
        super().__init__(port, rid, pebc=False, control=lambda rm: [_FrbcSide(rm)], **kw)
        self.answers: list = []


MODE = {str(OFF.id): "off", str(HALF.id): "half", str(FULL.id): "full"}


def mode_of(instruction: FRBCInstruction) -> str:
    return MODE[str(instruction.operation_mode)]


def test_an_rm_offering_only_frbc_gets_frbc_and_the_ders_command_as_the_mode_drawing_the_most_within_it(site, http):  # noqa: F811 - the fixtures
    rm = FrbcRm(site.ports["s2"], RID["hp1"]).connect()
    try:
        assert rm.activated.wait(15), rm.frames
        select = next(f for f in rm.frames if f["message_type"] == "SelectControlType")
        assert select["control_type"] == "FILL_RATE_BASED_CONTROL"
        # The reserve's command (no MaxPow: the 9 kW rating) -> full.
        _, first = rm.wait_instruction()
        assert (mode_of(first), first.operation_mode_factor, first.abnormal_condition) == ("full", 1.0, False)
        assert first.actuator_id == uuid.UUID(int=10)
        node = site.wait_for("s2", lambda n: n["detail"]["devices"]["hp1"]["instruction_status"] == "OK"
                             and n["detail"]["devices"]["hp1"]["control_type"] is not None, timeout=10)
        dev = node["detail"]["devices"]["hp1"]
        assert dev["control_type"] == "FILL_RATE_BASED_CONTROL"
        assert node["detail"]["control_types"] == ["POWER_ENVELOPE_BASED_CONTROL", "FILL_RATE_BASED_CONTROL"]
        assert dev["frbc"]["fill_level"] == 0.5
        assert dev["frbc"]["system_description"]["actuators"][0]["modes"] == MODE
        # §14a: a MaxPow schedule of 4.2 kW written over HTTP -> half (3 kW), the RM's OK in force.
        schedule(http, "hp1", [4200.0])
        _, half = rm.wait_instruction(lambda i: mode_of(i) == "half")
        node = site.wait_for("s2", lambda n: (n["detail"]["devices"]["hp1"]["instruction"] or {}).get("limit_w")
                             == 4200.0 and n["detail"]["devices"]["hp1"]["instruction_status"] == "OK", timeout=10)
        dev = node["detail"]["devices"]["hp1"]
        assert dev["instruction"]["instruction_id"] == str(half.id)
        assert dev["instruction"]["frbc"][0]["mode"] == "half" and dev["instruction"]["power_w"] == 3000.0
        assert dev["instruction"]["kind"] == "FRBC.Instruction" and dev["instruction"]["fill_level"] == 0.5
        node = site.wait_for("s2", lambda n: (n["detail"]["devices"]["hp1"]["frbc"]["actuator_status"].get(
            str(uuid.UUID(int=10))) or {}).get("operation_mode") == str(HALF.id), timeout=10)
        # A block (OnOff off) -> off.
        schedule(http, "hp1", [False], kind="OnOff")
        rm.wait_instruction(lambda i: mode_of(i) == "off")
        node = site.wait_for("s2", lambda n: (n["detail"]["devices"]["hp1"]["instruction"] or {}).get("limit_w")
                             == 0.0 and n["detail"]["devices"]["hp1"]["instruction_status"] == "OK", timeout=10)
        assert node["detail"]["devices"]["hp1"]["rejections"] == 0
        statuses = [f["status"] for f in rm.frames if f["message_type"] == "ReceptionStatus"]
        assert statuses and set(statuses) == {"OK"}, rm.frames
        measured = site.node("hp1")["detail"].get("measured") or {}
        assert measured == {} or measured.get("quality") != "questionable"
    finally:
        rm.close()
    # Back again: the current instruction (blocked: off) once the description and fill level are in.
    rm = FrbcRm(site.ports["s2"], RID["hp1"], path="/s2").connect()
    try:
        _, again = rm.wait_instruction()
        assert mode_of(again) == "off"
        site.wait_for("s2", lambda n: device_ok(n, "hp1", connects=2), timeout=10)
    finally:
        rm.close()


def device_ok(node: dict, der: str, connects: int) -> bool:
    dev = node["detail"]["devices"][der]
    return dev["connects"] == connects and dev["instruction_status"] == "OK"


def test_frbc_messages_from_an_rm_under_pebc_are_invalid_content(site):  # noqa: F811 - the fixture
    rm = TestRm(site.ports["s2"], RID["hp2"]).connect()
    try:
        rm.wait_instruction()
        rs = rm.run(rm.connection.send_msg_and_await_reception_status(
            FRBCStorageStatus(message_id=uuid.uuid4(), present_fill_level=0.5), raise_on_error=False))
        assert rs.status == ReceptionStatusValues.INVALID_CONTENT
        assert "FRBC is not the selected control type" in rs.diagnostic_label
        assert device(site, "hp2")["frbc"] is None
    finally:
        rm.close()
