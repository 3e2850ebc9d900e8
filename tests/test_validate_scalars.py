"""The two scalar validators every config and public function uses: ``_validate.integer`` and ``_validate.number``.

Each rejection is a ``ValueError`` whose message names the argument and shows what was seen;
each accepted value passes through unchanged (``number`` returns it as a float).
"""

from __future__ import annotations

import math
import re

import pytest

from rlcourse import _validate as V

INF, NAN = math.inf, math.nan

# (value, keyword arguments, the whole message) -- the argument is always called "steps"
INTEGER_REFUSED = [
    (True, {}, "steps must be a positive integer, got True"),
    (False, {"minimum": 0}, "steps must be a non-negative integer, got False"),
    (2.0, {}, "steps must be a positive integer, got 2.0"),
    ("3", {}, "steps must be a positive integer, got '3'"),
    (0, {}, "steps must be a positive integer, got 0"),
    (-1, {"minimum": 0}, "steps must be a non-negative integer, got -1"),
    (1, {"minimum": 2}, "steps must be an integer >= 2, got 1"),
    (None, {}, "steps must be a positive integer, got None"),
    (0, {"none_ok": True}, "steps must be a positive integer or None, got 0"),
]
INTEGER_ACCEPTED = [
    (1, {}), (10**30, {}), (0, {"minimum": 0}), (2, {"minimum": 2}), (-5, {"minimum": -(2**62)}),
]

NUMBER_REFUSED = [
    (True, {}, "lr must be a finite number, got True"),
    ("0.1", {}, "lr must be a finite number, got '0.1'"),
    (None, {}, "lr must be a finite number, got None"),
    (NAN, {}, "lr must be a finite number, got nan"),
    (INF, {}, "lr must be a finite number, got inf"),
    (-INF, {"minimum": None}, "lr must be a finite number, got -inf"),
    (NAN, {"allow_inf": True}, "lr must be a number (not NaN), got nan"),
    (NAN, {"none_ok": True}, "lr must be a finite number or None, got nan"),
    (0.0, {}, "lr must be > 0.0, got 0.0"),
    (-0.5, {"strict": False}, "lr must be >= 0.0, got -0.5"),
    (-INF, {"allow_inf": True}, "lr must be > 0.0, got -inf"),
    (1.0, {"minimum": None, "maximum": 1.0}, "lr must be < 1.0, got 1.0"),
    (1.5, {"minimum": None, "maximum": 1.0, "strict": False}, "lr must be <= 1.0, got 1.5"),
    (1.0, {"maximum": 1.0}, "lr must lie in (0.0, 1.0), got 1.0"),
    (0.0, {"maximum": 1.0}, "lr must lie in (0.0, 1.0), got 0.0"),
    (1.5, {"maximum": 1.0, "strict": False}, "lr must lie in [0.0, 1.0], got 1.5"),
    (-0.1, {"maximum": 1.0, "strict": False}, "lr must lie in [0.0, 1.0], got -0.1"),
]
NUMBER_ACCEPTED = [
    (1e-4, {}), (3, {}), (0.0, {"strict": False}), (-2.5, {"minimum": None}),
    (0.0, {"maximum": 1.0, "strict": False}), (1.0, {"maximum": 1.0, "strict": False}),
    (0.999, {"maximum": 1.0}), (INF, {"allow_inf": True}), (-INF, {"minimum": None, "allow_inf": True}),
]


# (validator, the argument's name, the type an accepted value comes back as)
CHECKS = {"integer": (V.integer, "steps", int), "number": (V.number, "lr", float)}
REFUSED = [("integer", *case) for case in INTEGER_REFUSED] + [("number", *case) for case in NUMBER_REFUSED]
ACCEPTED = [("integer", *case) for case in INTEGER_ACCEPTED] + [("number", *case) for case in NUMBER_ACCEPTED]


@pytest.mark.parametrize("check, value, kw, message", REFUSED)
def test_a_bad_value_is_refused_naming_the_argument_and_the_value(check, value, kw, message):
    validate, name, _ = CHECKS[check]
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        validate(name, value, **kw)


@pytest.mark.parametrize("check, value, kw", ACCEPTED)
def test_a_good_value_passes_through_unchanged_as_an_int_or_a_float(check, value, kw):
    validate, name, kind = CHECKS[check]
    out = validate(name, value, **kw)
    assert out == value and type(out) is kind


@pytest.mark.parametrize("check", list(CHECKS))
def test_none_passes_only_when_allowed(check):
    validate, name, _ = CHECKS[check]
    assert validate(name, None, none_ok=True) is None
    with pytest.raises(ValueError, match=f"^{name} must be a (positive integer|finite number), got None$"):
        validate(name, None)


def _naive_integer(name, value, minimum=1, *, none_ok=False):
    """Wrong: ``isinstance(True, int)`` holds and ``int(2.5)`` truncates, so a bool or a float slips through."""
    if value is None and none_ok:
        return None
    if int(value) < minimum:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _naive_number(name, value, minimum=0.0, maximum=None, *, strict=True, none_ok=False, allow_inf=False):
    """Wrong: comparisons with NaN are all False, so NaN passes every range check; inf is never looked at."""
    if value is None and none_ok:
        return None
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be > {minimum}, got {value!r}")
    if maximum is not None and (value >= maximum if strict else value > maximum):
        raise ValueError(f"{name} must be < {maximum}, got {value!r}")
    return float(value)


@pytest.mark.parametrize("wrong, table", [(_naive_integer, INTEGER_REFUSED), (_naive_number, NUMBER_REFUSED)])
def test_negative_control_the_refusal_tables_catch_a_naive_validator(wrong, table):
    """The tables above have teeth: a plausible validator without the bool/float/NaN/inf checks passes some of them."""
    slipped = []
    for value, kw, _ in table:
        try:
            wrong("x", value, **kw)
        except (ValueError, TypeError):
            continue
        slipped.append(value)
    assert slipped, "the naive validator refused every bad value: the table does not test what it claims"
    assert any(isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v)) or v == 2.0 for v in slipped)


# -- the wrappers and the re-export all defer to the one integer / number ----------------------

def test_positive_is_number_above_zero_and_keeps_infinity_unless_refused():
    assert V.positive("clip_range", INF) == INF  # "no clipping"
    assert V.positive("beta", 0.0, allow_zero=True) == 0.0
    for bad, kw in [(0.0, {}), (-1.0, {"allow_zero": True}), (INF, {"allow_inf": False}), (NAN, {}), (True, {})]:
        with pytest.raises(ValueError) as got:
            V.positive("beta", bad, **kw)
        with pytest.raises(ValueError) as same:
            V.number("beta", bad, 0.0, strict=not kw.get("allow_zero", False), allow_inf=kw.get("allow_inf", True))
        assert str(got.value) == str(same.value) and str(got.value).startswith("beta must ")


def test_in_range_is_number_with_both_bounds_closed_or_open():
    assert V.in_range("gamma", 1.0, 0.0, 1.0) == 1.0 and V.in_range("gamma", 0, 0.0, 1.0) == 0.0
    with pytest.raises(ValueError, match=re.escape("eps must lie in (0.0, 1.0), got 1.0")):
        V.in_range("eps", 1.0, 0.0, 1.0, closed=False)
    with pytest.raises(ValueError, match=re.escape("gamma must lie in [0.0, 1.0], got -0.5")):
        V.in_range("gamma", -0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match=re.escape("gamma must be a finite number, got inf")):
        V.in_range("gamma", INF, 0.0, 1.0)
    with pytest.raises(ValueError, match=re.escape("gamma must be a finite number, got nan")):
        V.in_range("gamma", NAN, 0.0, 1.0)


def test_group_size_uses_the_integer_check_then_divides_the_batch():
    assert V.group_size("group_size", 4, 8) == 4
    with pytest.raises(ValueError, match=re.escape("group_size must be an integer >= 2, got 1")):
        V.group_size("group_size", 1, 8)
    with pytest.raises(ValueError, match=re.escape("group_size must be an integer >= 2, got 2.0")):
        V.group_size("group_size", 2.0, 8)
    with pytest.raises(ValueError, match="group_size=3 does not divide the batch size 8"):
        V.group_size("group_size", 3, 8)


def test_train_common_reexports_the_same_two_validators():
    from rlcourse.train import common

    assert common.integer is V.integer and common.number is V.number


# -- call sites that checked by hand before: a bool count slipped through ``isinstance(v, int)`` -------

def _count_calls():
    import torch

    from rlcourse.derivations.gae import n_step_advantages
    from rlcourse.lm.task import make_preference_pairs
    from rlcourse.losses import AdaptiveKLController
    from rlcourse.toymdp import ToyMDP
    from rlcourse.train.grpo import overlong_penalty

    mdp = ToyMDP(3, 2)
    r, m = torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    pairs = dict(prompts=["p"] * 2, completions=["1", "2"], answers=["1", "1"], group_size=2)
    kl = AdaptiveKLController(0.1, 6.0)
    return {  # case -> (argument name, call with a bool, the same call with an int)
        "ToyMDP:horizon": ("horizon", lambda: ToyMDP(3, True), lambda: ToyMDP(3, 1)),
        "ToyMDP.sample:n": ("n", lambda: mdp.sample(mdp.init_params(), True),
                            lambda: mdp.sample(mdp.init_params(), 1)),
        "n_step_advantages:n": ("n", lambda: n_step_advantages(r, r, m, 1.0, True),
                                lambda: n_step_advantages(r, r, m, 1.0, 1)),
        "make_preference_pairs:max_pairs_per_group": (
            "max_pairs_per_group", lambda: make_preference_pairs(**pairs, max_pairs_per_group=True),
            lambda: make_preference_pairs(**pairs, max_pairs_per_group=1)),
        "overlong_penalty:max_length": ("max_length", lambda: overlong_penalty(torch.tensor([3]), True, 0),
                                        lambda: overlong_penalty(torch.tensor([3]), 1, 0)),
        "AdaptiveKLController.update:n_steps": ("n_steps", lambda: kl.update(1.0, True), lambda: kl.update(1.0, 1)),
        "AdaptiveKLController.update:kl": ("kl", lambda: kl.update(True, 1), lambda: kl.update(1.0, 1)),
    }


@pytest.mark.parametrize("case", list(_count_calls()))
def test_a_bool_count_is_refused_by_name_where_an_int_is_accepted(case):
    name, bad, good = _count_calls()[case]
    good()  # negative control: the same call with an int goes through, so the refusal is the bool's
    with pytest.raises(ValueError, match=f"^{name} must be a (positive integer|finite number)"):
        bad()
