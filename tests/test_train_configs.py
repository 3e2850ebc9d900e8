"""Every trainer config rejects bad shared fields with an error naming the field (``validate_common``)."""

from __future__ import annotations

import dataclasses

import pytest

from rlcourse.train.dpo import DPOConfig
from rlcourse.train.grpo import GRPOConfig
from rlcourse.train.ppo import PPOConfig
from rlcourse.train.reinforce import ReinforceConfig
from rlcourse.train.reward_model import RewardModelConfig
from rlcourse.train.sft import SFTConfig

CONFIGS = [SFTConfig, RewardModelConfig, ReinforceConfig, PPOConfig, GRPOConfig, DPOConfig]
BAD = [("steps", -1), ("steps", 2.5), ("lr", 0.0), ("lr", float("nan")), ("seed", "0"), ("checkpoint_every", 0),
       ("eval_n", 0), ("eval_n", True), ("eval_every", -1), ("grad_clip", 0.0), ("grad_clip", -1.0),
       ("max_new_tokens", 0), ("max_pairs_per_group", 0), ("threads", 0), ("threads", 1.5)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("field, value", BAD, ids=lambda v: repr(v))
def test_bad_shared_field_is_rejected_naming_it(config, field, value):
    if field not in {f.name for f in dataclasses.fields(config)}:
        pytest.skip(f"{config.__name__} has no field {field}")
    with pytest.raises(ValueError, match=field):
        config(**{field: value})


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_are_valid_and_none_is_allowed_where_documented(config):
    names = {f.name for f in dataclasses.fields(config)}
    config()
    for field in ("max_new_tokens", "max_pairs_per_group", "threads"):
        if field in names:
            config(**{field: None})
