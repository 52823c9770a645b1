"""relevent.protocols.ocpp.profile, pure: a DER's command -> the SetChargingProfile payload
(units, bounds, NaN/inf, amperes), and meter values -> W with errors naming the field.
Payloads are checked against the OCPP JSON schemas the `ocpp` package ships."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ocpp.messages import Call, _validate_payload

import relevent.topology  # noqa: F401 - loads the registry in its import order
from relevent.messages import DeviceCommand
from relevent.protocols.ocpp import meter as M
from relevent.protocols.ocpp import profile as P
from relevent.protocols.registry import PROTOCOLS
from relevent.topology import TopologyError, parse_topology

START = 1_900_000_000_123   # ms; 2030-03-17T17:46:40.123Z


def validate(version: str, payload: dict) -> None:
    """Raises if the payload is not a valid SetChargingProfile request of `version`."""
    _validate_payload(Call("1", "SetChargingProfile", json.loads(json.dumps(payload, allow_nan=False))), version)


def limit_of(payload: dict) -> float:
    if "csChargingProfiles" in payload:
        return payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]
    return payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"]


# -- the charging limit --------------------------------------------------------------------------------------
def test_a_disconnected_command_allows_0_w_whatever_its_limit_and_set_point():
    assert P.charging_limit_w(False, 11000.0, -11000.0, True, 11000) == 0.0
    assert P.charging_limit_w(False, 11000.0, 11000.0, False, 11000) == 0.0


def test_without_actpow_the_limit_is_the_commands_limit():
    assert P.charging_limit_w(True, 4000.0, 4000.0, False, 11000) == 4000.0


def test_with_actpow_the_limit_is_the_smaller_of_the_limit_and_the_set_points_magnitude():
    assert P.charging_limit_w(True, 11000.0, -3680.0, True, 11000) == 3680.0   # charging set-point
    assert P.charging_limit_w(True, 2000.0, -3680.0, True, 11000) == 2000.0    # MaxPow below it
    assert P.charging_limit_w(True, 11000.0, 1500.0, True, 11000) == 1500.0    # the sign is ignored


@pytest.mark.parametrize("limit, setpoint, actpow, expected", [
    (math.nan, 5000.0, False, 0.0),        # NaN: the safe side
    (5000.0, math.nan, True, 0.0),
    (math.inf, 0.0, False, 11000.0),       # clamped to the rating
    (math.inf, -math.inf, True, 11000.0),
    (-math.inf, 0.0, False, 0.0),
    (-500.0, 0.0, False, 0.0),
    (25000.0, -25000.0, True, 11000.0),
    (None, None, True, 0.0),
])
def test_the_limit_is_finite_and_within_0_and_the_rating_whatever_the_command_holds(limit, setpoint, actpow, expected):
    assert P.charging_limit_w(True, limit, setpoint, actpow, 11000) == expected


@pytest.mark.parametrize("rated", [0, -1.0, math.nan, math.inf, None, "11000", True])
def test_a_charger_without_a_finite_positive_rating_is_refused(rated):
    with pytest.raises(ValueError, match="rated_power_w"):
        P.charging_limit_w(True, 1000.0, 1000.0, False, rated)


def test_a_device_command_with_an_actpow_output_uses_its_set_point_and_one_without_value_does_not():
    cmd = DeviceCommand("ev1", -3000.0, 7000.0, True, {"ActPow": (-3000.0, "FSCH01"), "MaxPow": (7000.0, None)},
                        ["ActPow"], START, 1)
    assert P.command_limit_w(cmd, 11000) == 3000.0
    cmd.outputs["ActPow"] = (None, None)      # no schedule in force: like no ActPow
    assert P.command_limit_w(cmd, 11000) == 7000.0
    cmd.outputs = {"MaxPow": (7000.0, None), "OnOff": (False, "FSCH02")}
    cmd.connected = False
    assert P.command_limit_w(cmd, 11000) == 0.0


# -- units ----------------------------------------------------------------------------------------------------
def test_watts_are_floored_to_a_tenth():
    assert P.rate_limit(3680.0, 11000, P.ProfileSettings()) == 3680.0
    assert P.rate_limit(1234.5678, 11000, P.ProfileSettings()) == 1234.5
    assert P.rate_limit(2.3, 11000, P.ProfileSettings()) == 2.3    # 2.3 * 10 is 22.999999999999996


@pytest.mark.parametrize("watts, phases, volts, amps", [
    (7360.0, 3, 230.0, 10.6),     # 10.667 A per phase, floored
    (3680.0, 1, 230.0, 16.0),
    (11000.0, 3, 230.0, 15.9),    # the rating: 15.94 A
    (4140.0, 3, 230.0, 6.0),
    (0.0, 3, 230.0, 0.0),
    (7200.0, 2, 240.0, 15.0),
])
def test_amperes_per_phase_are_watts_over_phases_times_voltage(watts, phases, volts, amps):
    settings_ = P.ProfileSettings(rate_unit="A", phases=phases, voltage_v=volts)
    assert P.rate_limit(watts, 11000, settings_) == amps


def test_a_rating_just_below_a_tenth_is_floored_below_it_not_rounded_up_to_it():
    assert P.rate_limit(2.0, 1.9999999999999432, P.ProfileSettings()) == 1.9   # found by hypothesis


def test_the_limit_in_amperes_never_exceeds_the_rating_in_amperes():
    s = P.ProfileSettings(rate_unit="A", phases=3, voltage_v=230.0)
    assert P.rate_limit(1e12, 11000, s) == P.rate_limit(11000, 11000, s) == 15.9


@pytest.mark.parametrize("kwargs, message", [
    ({"purpose": "TxProfile"}, "profile_purpose"),
    ({"rate_unit": "kW"}, "rate_unit"),
    ({"stack_level": -1}, "stack_level"),
    ({"stack_level": True}, "stack_level"),
    ({"phases": 4}, "phases"),
    ({"voltage_v": 0}, "voltage_v"),
    ({"voltage_v": math.nan}, "voltage_v"),
])
def test_settings_out_of_range_are_refused_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        P.ProfileSettings(**kwargs)


# -- the payloads ---------------------------------------------------------------------------------------------
def test_the_1_6_payload_is_a_charge_point_max_profile_on_connector_0_at_the_stack_level():
    payload = P.set_charging_profile("1.6", 3680.0, 11000, P.ProfileSettings(stack_level=5), START)
    assert payload == {"connectorId": 0, "csChargingProfiles": {
        "chargingProfileId": P.PROFILE_ID_BASE + 5, "stackLevel": 5, "chargingProfilePurpose": "ChargePointMaxProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "startSchedule": "2030-03-17T17:46:40Z", "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 3680.0, "numberPhases": 3}]}}}
    validate("1.6", payload)


def test_the_2_0_1_payload_is_a_charging_station_max_profile_on_evse_0():
    payload = P.set_charging_profile("2.0.1", 3680.0, 11000, P.ProfileSettings(stack_level=2), START)
    assert payload == {"evseId": 0, "chargingProfile": {
        "id": P.PROFILE_ID_BASE + 2, "stackLevel": 2, "chargingProfilePurpose": "ChargingStationMaxProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": [{
            "id": P.PROFILE_ID_BASE + 2, "startSchedule": "2030-03-17T17:46:40Z", "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 3680.0, "numberPhases": 3}]}]}}
    validate("2.0.1", payload)


@pytest.mark.parametrize("version", P.VERSIONS)
def test_a_tx_default_profile_in_amperes_keeps_its_purpose_name_in_both_versions(version):
    s = P.ProfileSettings(purpose="TxDefaultProfile", rate_unit="A", phases=1)
    payload = P.set_charging_profile(version, 3680.0, 11000, s, START)
    validate(version, payload)
    profile = payload.get("csChargingProfiles") or payload["chargingProfile"]
    schedule = profile["chargingSchedule"] if version == "1.6" else profile["chargingSchedule"][0]
    assert profile["chargingProfilePurpose"] == "TxDefaultProfile"
    assert schedule["chargingRateUnit"] == "A" and schedule["chargingSchedulePeriod"][0]["limit"] == 16.0


def test_the_schedule_starts_at_the_commands_second_so_it_is_in_force_at_once():
    assert P.iso_seconds(START) == "2030-03-17T17:46:40Z"
    assert P.iso_seconds(START - 123) == P.iso_seconds(START)
    assert P.iso_seconds(0) == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize("version, start", [("1.5", START), ("2.0", START), ("1.6", -1), ("1.6", 1.5e12),
                                            ("1.6", None), ("2.0.1", True)])
def test_an_unknown_version_or_a_start_that_is_no_ms_time_is_refused(version, start):
    with pytest.raises(ValueError):
        P.set_charging_profile(version, 1000.0, 11000, P.ProfileSettings(), start)


LIMITS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**9, 10**9), st.none())


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from(P.VERSIONS), connected=st.booleans(), limit=LIMITS, setpoint=LIMITS,
       actpow=st.booleans(), rated=st.floats(1.0, 1e7), unit=st.sampled_from(P.RATE_UNITS),
       phases=st.sampled_from((1, 2, 3)), volts=st.floats(50.0, 500.0), stack=st.integers(0, 1000),
       purpose=st.sampled_from(P.PURPOSES), start=st.integers(0, 4_102_444_800_000))
def test_any_command_gives_a_valid_payload_with_a_finite_limit_in_tenths_within_the_rating(
        version, connected, limit, setpoint, actpow, rated, unit, phases, volts, stack, purpose, start):
    s = P.ProfileSettings(purpose, stack, unit, phases, volts)
    watts = P.charging_limit_w(connected, limit, setpoint, actpow, rated)
    assert 0.0 <= watts <= rated and (connected or watts == 0.0)
    payload = P.set_charging_profile(version, watts, rated, s, start)
    validate(version, payload)   # also: JSON without NaN or Infinity
    sent = limit_of(payload)
    cap = rated if unit == "W" else rated / (phases * volts)
    assert math.isfinite(sent) and 0.0 <= sent <= cap
    assert Decimal(repr(sent)) % Decimal("0.1") == 0
    expected = watts if unit == "W" else watts / (phases * volts)
    assert expected - sent < 0.1 + 1e-6   # floored, by less than a tenth


# -- meter values -----------------------------------------------------------------------------------------------
def mv16(*samples, connector: int = 1) -> dict:
    return {"connectorId": connector, "meterValue": [{"timestamp": "2030-01-01T00:00:00Z", "sampledValue": list(samples)}]}


def mv201(*samples, evse: int = 1) -> dict:
    return {"evseId": evse, "meterValue": [{"timestamp": "2030-01-01T00:00:00Z", "sampledValue": list(samples)}]}


def test_a_1_6_power_import_in_kw_is_a_negative_number_of_watts():
    assert P.meter_values_power("1.6", mv16({"value": "7.36", "measurand": "Power.Active.Import", "unit": "kW"})) \
        == (1, -7360.0)


def test_a_1_6_power_import_without_a_unit_is_in_watts():
    assert P.meter_values_power("1.6", mv16({"value": "3680", "measurand": "Power.Active.Import"})) == (1, -3680.0)


def test_energy_only_meter_values_hold_no_power():
    assert P.meter_values_power("1.6", mv16({"value": "123456"}, {"value": "1.2", "measurand": "Current.Import",
                                                                  "unit": "A"})) == (1, None)


def test_per_phase_powers_are_summed_and_a_total_wins_over_them():
    phases = [{"value": 1000.0, "measurand": "Power.Active.Import", "phase": p} for p in ("L1", "L2", "L3")]
    assert P.meter_values_power("2.0.1", mv201(*phases)) == (1, -3000.0)
    total = {"value": 2900.0, "measurand": "Power.Active.Import"}
    assert P.meter_values_power("2.0.1", mv201(*phases, total)) == (1, -2900.0)


def test_export_counts_as_generation():
    assert P.sampled_power_w("1.6", mv16({"value": "0", "measurand": "Power.Active.Import"},
                                         {"value": "2.5", "measurand": "Power.Active.Export", "unit": "kW"})
                             ["meterValue"]) == 2500.0


def test_the_last_meter_value_with_power_counts():
    payload = {"connectorId": 0, "meterValue": [
        {"timestamp": "t1", "sampledValue": [{"value": "100", "measurand": "Power.Active.Import"}]},
        {"timestamp": "t2", "sampledValue": [{"value": "200", "measurand": "Power.Active.Import"}]},
        {"timestamp": "t3", "sampledValue": [{"value": "9"}]}]}
    assert P.meter_values_power("1.6", payload) == (0, -200.0)


def test_a_2_0_1_unit_of_measure_multiplier_scales_the_value():
    sample = {"value": 7.4, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W", "multiplier": 3}}
    assert P.meter_values_power("2.0.1", mv201(sample)) == (1, -7400.0)
    sample = {"value": 7.4, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "kW"}}
    assert P.meter_values_power("2.0.1", mv201(sample, evse=0)) == (0, -7400.0)


def test_no_power_drawn_reads_as_zero_not_negative_zero():
    w = P.meter_values_power("1.6", mv16({"value": "0", "measurand": "Power.Active.Import"}))[1]
    assert w == 0.0 and math.copysign(1.0, w) == 1.0


def test_a_transaction_event_gives_its_evse_and_power_or_none():
    assert P.transaction_event_power({"eventType": "Updated", "evse": {"id": 2}, "meterValue": mv201(
        {"value": 1000, "measurand": "Power.Active.Import"})["meterValue"]}) == (2, -1000.0)
    assert P.transaction_event_power({"eventType": "Started"}) == (None, None)


@pytest.mark.parametrize("version, payload, field", [
    ("1.6", mv16({"value": "lots", "measurand": "Power.Active.Import"}), "meterValue[0].sampledValue[0].value"),
    ("1.6", mv16({"value": "NaN", "measurand": "Power.Active.Import"}), "meterValue[0].sampledValue[0].value"),
    ("1.6", mv16({"value": "inf", "measurand": "Power.Active.Import"}), "meterValue[0].sampledValue[0].value"),
    ("1.6", mv16({"value": "1e308", "measurand": "Power.Active.Import", "unit": "kW"}),
     "meterValue[0].sampledValue[0].value"),
    ("1.6", mv16({"value": True, "measurand": "Power.Active.Import"}), "meterValue[0].sampledValue[0].value"),
    ("1.6", mv16({"measurand": "Power.Active.Import"}), "meterValue[0].sampledValue[0].value"),
    ("1.6", mv16({"value": "0"}, {"value": "7", "measurand": "Power.Active.Import", "unit": "kvar"}),
     "meterValue[0].sampledValue[1].unit"),
    ("1.6", mv16({"value": "ab12", "measurand": "Power.Active.Import", "format": "SignedData"}),
     "meterValue[0].sampledValue[0].format"),
    ("1.6", {"connectorId": 1, "meterValue": [{"timestamp": "t"}]}, "meterValue[0].sampledValue"),
    ("1.6", {"connectorId": 1, "meterValue": {"a": 1}}, "meterValue"),
    ("1.6", {"meterValue": []}, "connectorId"),
    ("1.6", {"connectorId": "1", "meterValue": []}, "connectorId"),
    ("2.0.1", mv201({"value": 1.0, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "Wh"}}),
     "meterValue[0].sampledValue[0].unitOfMeasure.unit"),
    ("2.0.1", mv201({"value": 1.0, "measurand": "Power.Active.Import", "unitOfMeasure": {"multiplier": 1.5}}),
     "meterValue[0].sampledValue[0].unitOfMeasure.multiplier"),
    ("2.0.1", mv201({"value": 1.0, "measurand": "Power.Active.Import", "unitOfMeasure": "W"}),
     "meterValue[0].sampledValue[0].unitOfMeasure"),
    ("2.0.1", {"meterValue": []}, "evseId"),
])
def test_a_meter_value_that_cannot_be_read_raises_naming_the_field(version, payload, field):
    with pytest.raises(P.OcppPayloadError) as err:
        P.meter_values_power(version, payload)
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_a_transaction_event_with_a_bad_evse_names_it():
    with pytest.raises(P.OcppPayloadError, match=r"^evse\.id:"):
        P.transaction_event_power({"eventType": "Started", "evse": {"id": -1}})
    with pytest.raises(P.OcppPayloadError, match=r"^evse:"):
        P.transaction_event_power({"eventType": "Started", "evse": 3})


@settings(max_examples=200, deadline=None)
@given(w=st.floats(0, 1e6, allow_nan=False), unit=st.sampled_from(("W", "kW")))
def test_any_finite_import_reads_back_as_minus_that_many_watts(w, unit):
    value = w / 1000 if unit == "kW" else w
    got = P.meter_values_power("1.6", mv16({"value": repr(value), "measurand": "Power.Active.Import",
                                            "unit": unit}))[1]
    assert got == pytest.approx(-w, rel=1e-9, abs=1e-9) and got <= 0.0


@settings(max_examples=200, deadline=None)
@given(payload=st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5) | st.integers(),
                            lambda children: st.lists(children, max_size=3)
                            | st.dictionaries(st.sampled_from(["value", "unit", "measurand", "phase", "sampledValue",
                                                               "meterValue", "connectorId", "unitOfMeasure"]),
                                              children, max_size=4), max_leaves=12))
def test_any_payload_gives_a_reading_or_an_ocpp_payload_error_never_anything_else(payload):
    for version in P.VERSIONS:
        try:
            out = P.meter_values_power(version, payload if isinstance(payload, dict) else {"meterValue": payload,
                                                                                            "connectorId": 1,
                                                                                            "evseId": 1})
        except P.OcppPayloadError:
            continue
        assert out[1] is None or math.isfinite(out[1])


# -- the topology check ----------------------------------------------------------------------------------------
def charger_topology(der_extra: str) -> str:
    return f"""
[site]
name = "t"
[[wan]]
name = "mms"
protocol = "mms"
port = 10102
[[der]]
name = "ev1"
functions = ["MaxPow"]
lan = "ocpp"
rated_power_w = 11000
{der_extra}
[[lan]]
name = "ocpp"
protocol = "ocpp"
port = 19000
"""


def test_relevent_check_wants_an_ev_charger_with_a_charge_point_id_on_an_ocpp_endpoint():
    parse_topology(charger_topology('type = "ev_charger"\naddress = "CP-1"'))
    with pytest.raises(TopologyError) as err:
        parse_topology(charger_topology('type = "pv"\naddress = ""'))
    text = str(err.value)
    assert "use type = \"ev_charger\"" in text and "charge point id" in text
    assert PROTOCOLS["ocpp"].check_der({"type": "ev_charger", "address": "a/b"}, {}) == [
        ("address", "'a/b': an OCPP charger's address is its charge point id, a non-empty string without '/' "
                    "or surrounding spaces")]
    assert PROTOCOLS["ocpp"].check_der({"type": "ev_charger", "address": 7}, {})[0][0] == "address"


def test_the_endpoints_keys_have_the_documented_defaults():
    keys = PROTOCOLS["ocpp"].keys
    assert {k: keys[k].default for k in ("port", "profile_purpose", "rate_unit", "phases", "voltage_v")} == {
        "port": 9000, "profile_purpose": "ChargePointMaxProfile", "rate_unit": "W", "phases": 3, "voltage_v": 230.0}
    assert PROTOCOLS["ocpp"].listens and PROTOCOLS["ocpp"].role == "lan"


# -- the simulator's charger model (pure: times passed in) ---------------------------------------------------
def test_the_simulated_ev_draws_the_lowest_limit_of_the_top_profiles_and_ramps_to_it():
    from relevent.simulators.ocpp_charger import ElectricVehicle, profile_limit_w
    ev = ElectricVehicle(7400.0, ramp_w_per_s=1000.0)
    ev.charging = True
    ev.update(0.0)
    assert ev.power(0.0) == 0.0 and ev.power(2.0) == 2000.0 and ev.power(60.0) == 7400.0   # what the EV wants
    ev.update(60.0)
    ev.profiles[("ChargePointMaxProfile", 0)] = 3000.0
    ev.profiles[("ChargePointMaxProfile", 3)] = 5000.0      # the higher stack level wins within a purpose
    ev.profiles[("TxDefaultProfile", 1)] = 4000.0           # and the lowest purpose wins across them
    ev.update(60.0)
    assert ev.limit_w() == 4000.0
    assert ev.power(61.0) == 6400.0 and ev.power(70.0) == 4000.0
    schedule = {"start_schedule": "2030-01-01T00:00:00Z", "charging_rate_unit": "A",
                "charging_schedule_period": [{"start_period": 0, "limit": 16, "number_phases": 1},
                                             {"start_period": 60, "limit": 10}]}
    t0 = 1893456000.0   # 2030-01-01T00:00:00Z
    assert profile_limit_w(schedule, 230.0, t0 + 30) == 16 * 230.0
    assert profile_limit_w(schedule, 230.0, t0 + 90) == 10 * 3 * 230.0   # numberPhases absent: 3


# -- power from energy register deltas (relevent.protocols.ocpp.meter) ----------------------------------------
def energy16(at: str, wh, unit: str | None = None, measurand: str | None = None, **extra) -> dict:
    """A 1.6 MeterValue (camelCase, as the endpoint hands it) with one energy register sample."""
    sample = {"value": str(wh), **extra}
    if unit is not None:
        sample["unit"] = unit
    if measurand is not None:
        sample["measurand"] = measurand
    return {"timestamp": at, "sampledValue": [sample]}


def energy201(at: str, value, unit: str = "Wh", multiplier: int | None = None) -> dict:
    uom = {"unit": unit} if multiplier is None else {"unit": unit, "multiplier": multiplier}
    return {"timestamp": at, "sampledValue": [{"value": value, "measurand": "Energy.Active.Import.Register",
                                               "unitOfMeasure": uom}]}


def feed(version: str, delta, *meter_values):
    """Each meter value as its own message, in order: the figures they give."""
    return [M.meter_figure(version, [mv], delta) for mv in meter_values]


def test_a_1_6_energy_register_20_wh_higher_after_10_s_is_minus_7200_w_and_the_first_reading_gives_nothing():
    delta = M.EnergyDelta()
    # No measurand: the default, Energy.Active.Import.Register; no unit: Wh.  20 Wh * 3600 / 10 s = 7200 W drawn.
    assert feed("1.6", delta, energy16("2030-01-01T00:00:00Z", 1000),
                energy16("2030-01-01T00:00:10Z", "1020.0")) == [None, (-7200.0, M.ENERGY_DELTA)]


def test_a_1_6_register_in_kwh_is_read_in_wh():
    delta = M.EnergyDelta()
    # 0.005 kWh = 5 Wh in 4.5 s: 5 * 3600 / 4.5 = 4000 W drawn.
    assert feed("1.6", delta, energy16("2030-01-01T00:00:00.000Z", "12.345", unit="kWh"),
                energy16("2030-01-01T00:00:04.500Z", "12.350", unit="kWh"))[1] == (-4000.0, M.ENERGY_DELTA)


@pytest.mark.parametrize("unit, multiplier, first, second", [
    ("Wh", 3, 12.345, 12.356),      # 10^3 Wh: 12345 -> 12356 Wh
    ("kWh", None, 12.345, 12.356),  # the same in kWh
    ("kWh", -1, 123.45, 123.56),    # 10^-1 kWh: 12.345 -> 12.356 kWh
])
def test_a_2_0_1_register_in_kwh_or_with_a_multiplier_rising_11_wh_in_30_s_is_minus_1320_w(
        unit, multiplier, first, second):
    delta = M.EnergyDelta()
    assert feed("2.0.1", delta, energy201("2030-01-01T00:00:00Z", first, unit, multiplier),
                energy201("2030-01-01T00:00:30Z", second, unit, multiplier))[1] == (-1320.0, M.ENERGY_DELTA)


def test_the_export_register_counts_as_generation_and_both_registers_give_export_minus_import():
    both = lambda at, imp, exp: {"timestamp": at, "sampledValue": [   # noqa: E731
        {"value": str(imp), "measurand": "Energy.Active.Import.Register"},
        {"value": str(exp), "measurand": "Energy.Active.Export.Register", "unit": "kWh"}]}
    delta = M.EnergyDelta()
    # +10 Wh import, +30 Wh export in 10 s: (30 - 10) * 3600 / 10 = +7200 W fed back.
    assert feed("1.6", delta, both("2030-01-01T00:00:00Z", 1000, 0.5),
                both("2030-01-01T00:00:10Z", 1010, 0.53))[1] == (7200.0, M.ENERGY_DELTA)
    delta = M.EnergyDelta()
    # Export only: 5 Wh in 9 s = +2000 W.
    assert feed("1.6", delta, energy16("2030-01-01T00:00:00Z", 40, measurand="Energy.Active.Export.Register"),
                energy16("2030-01-01T00:00:09Z", 45, measurand="Energy.Active.Export.Register"))[1] == (
        2000.0, M.ENERGY_DELTA)


def test_per_phase_registers_are_summed_when_there_is_no_total():
    def phases(at, wh):
        return {"timestamp": at, "sampledValue": [{"value": str(wh), "phase": p} for p in ("L1", "L2", "L3")]}
    delta = M.EnergyDelta()
    # 3 x 4 Wh = 12 Wh in 6 s: 7200 W drawn.
    assert feed("1.6", delta, phases("2030-01-01T00:00:00Z", 100), phases("2030-01-01T00:00:06Z", 104))[1] == (
        -7200.0, M.ENERGY_DELTA)


def test_a_register_that_goes_back_gives_nothing_and_the_next_reading_counts_from_the_reset():
    delta = M.EnergyDelta()
    assert feed("1.6", delta, energy16("2030-01-01T00:00:00Z", 1000), energy16("2030-01-01T00:00:10Z", 1020),
                energy16("2030-01-01T00:00:20Z", 3), energy16("2030-01-01T00:00:30Z", 23)) == [
        None, (-7200.0, M.ENERGY_DELTA), None, (-7200.0, M.ENERGY_DELTA)]   # 1020 -> 3: reset; 3 -> 23 in 10 s


def test_a_reset_is_named_as_such():
    delta = M.EnergyDelta()
    feed("1.6", delta, energy16("2030-01-01T00:00:00Z", 1020), energy16("2030-01-01T00:00:10Z", 3))
    assert delta.why == "the import register went back from 1020 to 3 Wh (meter reset or replaced)"


def test_timestamps_that_do_not_increase_give_nothing_and_move_the_baseline():
    delta = M.EnergyDelta()
    got = feed("1.6", delta,
               energy16("2030-01-01T00:00:10Z", 1000),
               energy16("2030-01-01T00:00:10Z", 1010),    # the same time: nothing
               energy16("2030-01-01T00:00:05Z", 1010),    # earlier: nothing; the baseline is now 00:00:05, 1010
               energy16("2030-01-01T00:00:15Z", 1030))    # 20 Wh in 10 s from it (not 20 Wh in 5 s from 00:00:10)
    assert got == [None, None, None, (-7200.0, M.ENERGY_DELTA)]


def test_the_charger_s_timestamps_count_with_their_offsets():
    delta = M.EnergyDelta()
    # 01:00:00+01:00 is 00:00:00Z; a time without an offset is UTC: 20 Wh in 10 s.
    assert feed("1.6", delta, energy16("2030-01-01T01:00:00+01:00", 1000),
                energy16("2030-01-01T00:00:10", 1020))[1] == (-7200.0, M.ENERGY_DELTA)


def test_readings_further_apart_than_the_bound_give_nothing_and_the_bound_itself_still_counts():
    assert M.MAX_GAP_S == 900.0
    delta = M.EnergyDelta()
    got = feed("1.6", delta,
               energy16("2030-01-01T00:00:00Z", 1000),
               energy16("2030-01-01T00:15:00Z", 1100),    # 900 s: 100 Wh * 3600 / 900 = 400 W
               energy16("2030-01-01T00:30:01Z", 1200),    # 901 s: an average of the past, not the present
               energy16("2030-01-01T00:30:11Z", 1220))    # 10 s after the moved baseline
    assert got == [None, (-400.0, M.ENERGY_DELTA), None, (-7200.0, M.ENERGY_DELTA)]
    assert delta.why == ""


def test_registers_that_change_between_readings_give_nothing():
    delta = M.EnergyDelta()
    both = {"timestamp": "2030-01-01T00:00:10Z", "sampledValue": [
        {"value": "1020"}, {"value": "5", "measurand": "Energy.Active.Export.Register"}]}
    assert feed("1.6", delta, energy16("2030-01-01T00:00:00Z", 1000), both) == [None, None]
    assert delta.why == "other registers than the last reading"


def test_a_power_sample_wins_over_the_derived_power_and_its_register_still_moves_the_baseline():
    delta = M.EnergyDelta()
    with_power = {"timestamp": "2030-01-01T00:00:10Z", "sampledValue": [
        {"value": "1020"}, {"value": "3680", "measurand": "Power.Active.Import"}]}
    assert feed("1.6", delta, energy16("2030-01-01T00:00:00Z", 1000), with_power,
                energy16("2030-01-01T00:00:20Z", 1030)) == [
        None, (-3680.0, M.POWER), (-3600.0, M.ENERGY_DELTA)]   # the delta would say -7200; then 10 Wh in 10 s


def test_a_signed_register_beside_a_power_sample_does_not_spoil_the_power():
    delta = M.EnergyDelta()
    signed = {"timestamp": "2030-01-01T00:00:10Z", "sampledValue": [
        {"value": "AB12CD", "format": "SignedData"}, {"value": "3.68", "measurand": "Power.Active.Import",
                                                      "unit": "kW"}]}
    assert M.meter_figure("1.6", [signed], delta) == (-3680.0, M.POWER)
    assert delta.last is None


def test_of_several_meter_values_in_one_message_the_last_figure_counts():
    delta = M.EnergyDelta()
    assert M.meter_figure("1.6", [energy16("2030-01-01T00:00:00Z", 1000), energy16("2030-01-01T00:00:10Z", 1020),
                                  energy16("2030-01-01T00:00:20Z", 1030)], delta) == (-3600.0, M.ENERGY_DELTA)
    assert M.meter_figure("1.6", [energy16("2030-01-01T00:00:30Z", 1040)], delta) == (-3600.0, M.ENERGY_DELTA)


def test_meter_values_with_no_energy_register_and_no_power_give_nothing_and_keep_the_baseline():
    delta = M.EnergyDelta()
    feed("1.6", delta, energy16("2030-01-01T00:00:00Z", 1000))
    current = {"timestamp": "later", "sampledValue": [{"value": "16", "measurand": "Current.Import", "unit": "A"}]}
    assert M.meter_figure("1.6", [current], delta) is None
    assert delta.last.import_wh == 1000.0


@pytest.mark.parametrize("version, meter_value, message", [
    ("1.6", {"sampledValue": [{"value": "1000"}]}, "meterValue[0].timestamp: missing"),
    ("1.6", energy16("yesterday", 1000), "meterValue[0].timestamp: 'yesterday' is not an ISO 8601 time"),
    ("1.6", energy16("2030-13-01T00:00:00Z", 1000),
     "meterValue[0].timestamp: '2030-13-01T00:00:00Z' is not an ISO 8601 time"),
    ("2.0.1", {**energy201("x", 1.0), "timestamp": 1893456000}, "meterValue[0].timestamp: expected an ISO 8601 "
                                                                "time, got 1893456000"),
    ("1.6", energy16("2030-01-01T00:00:00Z", 7, unit="varh"),
     "meterValue[0].sampledValue[0].unit: 'varh' is not an energy unit (Wh or kWh)"),
    ("1.6", energy16("2030-01-01T00:00:00Z", 7, unit="kW", measurand="Energy.Active.Import.Register"),
     "meterValue[0].sampledValue[0].unit: 'kW' is not an energy unit (Wh or kWh)"),
    ("2.0.1", energy201("2030-01-01T00:00:00Z", 7.0, unit="W"),
     "meterValue[0].sampledValue[0].unitOfMeasure.unit: 'W' is not an energy unit (Wh or kWh)"),
    ("2.0.1", energy201("2030-01-01T00:00:00Z", 7.0, multiplier=10),
     "meterValue[0].sampledValue[0].unitOfMeasure.multiplier: expected an integer -9..9, got 10"),
    ("1.6", energy16("2030-01-01T00:00:00Z", "lots"), "meterValue[0].sampledValue[0].value: expected a number, "
                                                     "got 'lots'"),
    ("1.6", energy16("2030-01-01T00:00:00Z", "nan"), "meterValue[0].sampledValue[0].value: expected a finite "
                                                    "number, got 'nan'"),
    ("1.6", energy16("2030-01-01T00:00:00Z", "1e306", unit="kWh"),
     "meterValue[0].sampledValue[0].value: '1e306' kWh is beyond any energy"),
    ("1.6", energy16("2030-01-01T00:00:00Z", "AB12", format="SignedData"),
     "meterValue[0].sampledValue[0].format: SignedData cannot be read as a number"),
])
def test_an_energy_only_meter_value_that_cannot_be_read_raises_naming_the_field(version, meter_value, message):
    with pytest.raises(P.OcppPayloadError) as err:
        M.meter_figure(version, [meter_value], M.EnergyDelta())
    assert str(err.value) == message


def test_a_message_with_a_bad_meter_value_changes_no_baseline():
    delta = M.EnergyDelta()
    feed("1.6", delta, energy16("2030-01-01T00:00:00Z", 1000))
    with pytest.raises(P.OcppPayloadError, match=r"^meterValue\[1\]\.timestamp: "):
        M.meter_figure("1.6", [energy16("2030-01-01T00:00:10Z", 1020), energy16("soon", 1030)], delta)
    assert delta.last.import_wh == 1000.0
    assert feed("1.6", delta, energy16("2030-01-01T00:00:10Z", 1020))[0] == (-7200.0, M.ENERGY_DELTA)


@settings(max_examples=200, deadline=None)
@given(wh=st.integers(0, 10**9), rise=st.integers(0, 10**5), ms=st.integers(1, 900_000))
def test_any_import_rise_within_the_bound_is_minus_that_rise_times_3600_over_the_seconds(wh, rise, ms):
    delta = M.EnergyDelta()
    t0 = 1_893_456_000_000
    first = energy16(P.iso_seconds(t0), wh)
    later = datetime.fromtimestamp((t0 + ms) / 1000, tz=timezone.utc).isoformat()   # a charger's ms
    w = feed("1.6", delta, first, energy16(later, wh + rise))[1][0]
    assert w <= 0.0 and w == pytest.approx(-rise * 3600 / (ms / 1000), rel=1e-12, abs=0.0005)   # to the mW


def test_the_simulated_charger_without_power_samples_reports_only_the_register_and_the_site_derives_its_power():
    from ocpp.charge_point import snake_to_camel_case
    from relevent.simulators.ocpp_charger import ElectricVehicle, meter_value
    assert PROTOCOLS["ocpp-charger"].keys["power_samples"].default is True
    ev = ElectricVehicle(7400.0, ramp_w_per_s=0.0)
    ev.charging = True
    ev.update(0.0)
    for i, version in enumerate(P.VERSIONS):
        delta = M.EnergyDelta()
        w0 = ev.meter(100.0 * (i + 1))
        first = meter_value(version, "2030-01-01T00:00:00.000Z", w0, ev.energy_wh, power_samples=False)
        w1 = ev.meter(100.0 * (i + 1) + 10)     # 7400 W for 10 s: 20.556 Wh
        second = meter_value(version, "2030-01-01T00:00:10.000Z", w1, ev.energy_wh, power_samples=False)
        assert [s["measurand"] for s in second["sampled_value"]] == ["Energy.Active.Import.Register"]
        assert M.meter_figure(version, snake_to_camel_case([first]), delta) is None
        w, source = M.meter_figure(version, snake_to_camel_case([second]), delta)
        assert source == M.ENERGY_DELTA and w == pytest.approx(-7400.0, abs=0.5)   # the register to the mWh
        assert meter_value(version, "t", w1, ev.energy_wh)["sampled_value"][0]["measurand"] == "Power.Active.Import"


@settings(max_examples=300, deadline=None)
@given(meter_values=st.lists(st.dictionaries(
    st.sampled_from(["timestamp", "sampledValue"]),
    st.one_of(st.none(), st.integers(), st.text(max_size=30), st.sampled_from(
        ["2030-01-01T00:00:00Z", "2030-01-01T00:00:10+23:59", "0001-01-01T00:00:00-23:59", "9999-12-31T23:59:59Z"]),
        st.lists(st.dictionaries(st.sampled_from(["value", "unit", "measurand", "phase", "format", "unitOfMeasure"]),
                                 st.one_of(st.none(), st.floats(), st.text(max_size=5), st.integers(),
                                           st.sampled_from(["Wh", "kWh", "Energy.Active.Export.Register", "L1",
                                                            "Power.Active.Import"]),
                                           st.fixed_dictionaries({"unit": st.sampled_from(["Wh", "kWh", "W"])})),
                                 max_size=4), max_size=3)), max_size=2), max_size=4))
def test_any_meter_values_give_a_finite_figure_nothing_or_an_ocpp_payload_error_never_anything_else(meter_values):
    for version in P.VERSIONS:
        delta = M.EnergyDelta(M.EnergyReading(datetime(2030, 1, 1, tzinfo=timezone.utc), 1000.0))
        try:
            figure = M.meter_figure(version, meter_values, delta)
        except P.OcppPayloadError:
            continue
        assert figure is None or (math.isfinite(figure[0]) and figure[1] in (M.POWER, M.ENERGY_DELTA))


def test_a_rise_beyond_any_power_gives_nothing():
    delta = M.EnergyDelta()
    assert feed("1.6", delta, energy16("2030-01-01T00:00:00Z", "-1e308"),
                energy16("2030-01-01T00:00:01Z", "1e308")) == [None, None]
    assert delta.why == "-inf Wh in 1 s is beyond any power"   # export - import
