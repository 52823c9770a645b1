"""A heat pump's command (relevent/devices/load.py): the §14a floor, the block, the
requested consumption, and the invariants whatever the outputs hold."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relevent.devices.load import GUARANTEED_MIN_W, LoadCommand, floor_w, load_command

ANY_NUMBER = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**9, 10**9)
RATED = st.floats(min_value=1.0, max_value=1e7, allow_nan=False, allow_infinity=False)
GUARANTEED = st.floats(min_value=-1e6, max_value=1e8, allow_nan=False) | st.just(math.inf)
OUTPUTS = st.fixed_dictionaries({}, optional={"OnOff": st.none() | st.booleans(), "MaxPow": st.none() | ANY_NUMBER,
                                              "ActPow": st.none() | ANY_NUMBER})


def test_a_dso_limit_below_the_guaranteed_minimum_is_raised_to_it():
    assert load_command({"MaxPow": 3000.0}, 9000.0) == LoadCommand(4200.0, False, None)
    assert load_command({"MaxPow": 6000.0}, 9000.0).limit_w == 6000.0
    assert load_command({"MaxPow": 0.0}, 9000.0, guaranteed_min_w=3700.0).limit_w == 3700.0
    assert GUARANTEED_MIN_W == 4200.0


def test_a_device_smaller_than_the_guarantee_is_not_limited_at_all():
    assert load_command({"MaxPow": 1000.0}, 3000.0).limit_w == 3000.0
    assert floor_w(3000.0) == 3000.0


def test_no_maxpow_is_the_rated_power_and_a_limit_above_it_is_the_rated_power():
    assert load_command({}, 9000.0).limit_w == 9000.0
    assert load_command({"MaxPow": None}, 9000.0).limit_w == 9000.0
    assert load_command({"MaxPow": 20000.0}, 9000.0).limit_w == 9000.0


def test_onoff_off_blocks_and_draws_nothing():
    assert load_command({"OnOff": False, "MaxPow": 6000.0, "ActPow": -5000.0}, 9000.0) == LoadCommand(0.0, True, 0.0)
    assert load_command({"OnOff": True}, 9000.0) == LoadCommand(9000.0, False, None)


def test_actpow_is_a_requested_consumption_of_its_magnitude_within_the_limit():
    assert load_command({"ActPow": -3000.0}, 9000.0).requested_w == 3000.0
    assert load_command({"ActPow": 3000.0}, 9000.0).requested_w == 3000.0
    assert load_command({"ActPow": -8000.0, "MaxPow": 5000.0}, 9000.0).requested_w == 5000.0
    assert load_command({"ActPow": None}, 9000.0).requested_w is None


def test_nan_is_the_safe_side_that_keeps_the_guarantee():
    assert load_command({"MaxPow": math.nan}, 9000.0).limit_w == 4200.0
    assert load_command({"ActPow": math.nan}, 9000.0).requested_w == 0.0
    assert load_command({"MaxPow": -5000.0}, 9000.0).limit_w == 4200.0


def test_bad_ratings_and_guarantees_are_refused():
    for rated in (0, -1.0, math.nan, math.inf, "9000", None):
        with pytest.raises(ValueError):
            load_command({}, rated)
    with pytest.raises(ValueError):
        load_command({}, 9000.0, guaranteed_min_w=math.nan)


@settings(max_examples=2000, deadline=None)
@given(OUTPUTS, RATED, GUARANTEED)
def test_invariants_hold_whatever_the_outputs(outputs, rated, guaranteed):
    cmd = load_command(outputs, rated, guaranteed)
    floor = max(0.0, min(guaranteed, rated))
    assert math.isfinite(cmd.limit_w)
    assert 0.0 <= cmd.limit_w <= rated
    assert cmd.blocked == (outputs.get("OnOff") is False)
    if cmd.blocked:
        assert cmd.limit_w == 0.0
    else:
        assert cmd.limit_w >= floor
    if outputs.get("ActPow") is None:
        assert cmd.requested_w is None
    else:
        assert math.isfinite(cmd.requested_w) and 0.0 <= cmd.requested_w <= cmd.limit_w
    # A DSO limit that is a finite number at or above the floor is applied as it is.
    max_pow = outputs.get("MaxPow")
    if not cmd.blocked and max_pow is not None and not math.isnan(max_pow) and floor <= max_pow <= rated:
        assert cmd.limit_w == float(max_pow)


@settings(max_examples=500, deadline=None)
@given(OUTPUTS, RATED, GUARANTEED, st.floats(min_value=0, max_value=1e7))
def test_a_lower_dso_limit_never_raises_the_device_limit(outputs, rated, guaranteed, lower):
    """Monotone: a DSO that lowers MaxPow never gets more consumption."""
    higher = dict(outputs, MaxPow=lower + 1000.0)
    lowered = dict(outputs, MaxPow=lower)
    assert load_command(lowered, rated, guaranteed).limit_w <= load_command(higher, rated, guaranteed).limit_w
