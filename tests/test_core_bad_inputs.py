"""Bad inputs to the core functions: each a clear ValueError naming the argument (or a correct result)."""

from __future__ import annotations

import math

import pytest
import torch

from rlcourse.advantages import gae, group_advantages, reward_to_go, trajectory_return
from rlcourse.kl import kl_categorical, kl_k1, kl_k3
from rlcourse.logprobs import agg_loss, masked_mean, masked_normalize
from rlcourse.losses import grpo_loss, policy_gradient_loss, ppo_clip_loss, sft_loss
from rlcourse.preference import bradley_terry_loss, dpo_loss

D = torch.float64
E = torch.empty(0, dtype=D)
LOGP = -torch.rand(2, 3, dtype=D) - 0.1
MASK = torch.ones(2, 3, dtype=D)

BAD = [
    ("policy_chosen_logp", lambda: dpo_loss(E, E, E, E)),
    ("r_chosen", lambda: bradley_terry_loss(E, E)),
    ("beta", lambda: dpo_loss(-torch.ones(2), -torch.ones(2), -torch.ones(2), -torch.ones(2), beta=math.inf)),
    ("rewards", lambda: gae(torch.zeros(2, 0), torch.zeros(2, 0), torch.zeros(2, 0))),
    ("rewards", lambda: reward_to_go(torch.zeros(2, 0), torch.zeros(2, 0))),
    ("logp", lambda: policy_gradient_loss(torch.zeros(2, 3, device="meta"), torch.ones(2), MASK)),
    ("x", lambda: masked_mean(torch.zeros(3, device="meta"), torch.ones(3))),
    ("gamma", lambda: trajectory_return(torch.zeros(1, 2), torch.ones(1, 2), gamma=True)),
    ("gamma", lambda: reward_to_go(torch.zeros(1, 2), torch.ones(1, 2), gamma=False)),
    ("logp", lambda: policy_gradient_loss(-LOGP, torch.ones(2), MASK)),
    ("logp_old", lambda: ppo_clip_loss(LOGP, torch.zeros(2, 3, dtype=torch.long), torch.ones(2), MASK)),
    ("logp_ref", lambda: kl_k3(LOGP, torch.ones(2, 3, dtype=D))),
    ("logp", lambda: kl_k1(torch.zeros(2, 3, dtype=torch.int64), LOGP)),
    ("logp", lambda: kl_categorical(torch.log_softmax(torch.randn(4), -1) + 0.5, torch.log_softmax(torch.randn(4), -1))),
    ("mode", lambda: agg_loss(LOGP, MASK, "mean")),
    ("constant", lambda: agg_loss(LOGP, MASK, "token-sum-norm")),
    ("constant", lambda: agg_loss(LOGP, MASK, "token-sum-norm", constant=0)),
    ("constant", lambda: agg_loss(LOGP, MASK, "seq-mean-token-sum-norm", constant=-4)),
    ("constant", lambda: masked_normalize(LOGP, MASK, math.inf)),
    ("advantages", lambda: grpo_loss(LOGP, LOGP, torch.ones(2, 2), MASK)),
    ("advantages", lambda: grpo_loss(LOGP, LOGP, torch.ones(3, 1), MASK)),
    ("normalizer", lambda: group_advantages(torch.ones(4), 2, "median")),
    ("empty", lambda: masked_mean(LOGP, MASK, empty="zero")),
    ("mask", lambda: masked_mean(LOGP, torch.zeros_like(MASK))),
    ("labels", lambda: sft_loss(torch.randn(1, 2, 5), torch.zeros(1, 2))),
    ("eps", lambda: group_advantages(torch.ones(4), 2, "zscore", eps=-1.0)),
]


@pytest.mark.parametrize("name,call", BAD, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD)])
def test_bad_core_input_raises_value_error_naming_the_argument(name, call):
    with pytest.raises(ValueError, match=name):
        call()


def test_unknown_mode_lists_the_valid_names():
    with pytest.raises(ValueError, match="token-mean.*seq-mean-token-sum-norm"):
        agg_loss(LOGP, MASK, "sequence")


def test_meta_tensor_error_is_raised_before_any_item_call():
    with pytest.raises(ValueError, match="meta-device"):
        masked_mean(torch.zeros(3, device="meta"), torch.ones(3))


def test_kl_categorical_accepts_a_valid_bf16_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(8, 1000, generator=g)
    lp = torch.log_softmax(logits.bfloat16(), -1)
    lq = torch.log_softmax((logits + torch.randn(8, 1000, generator=g)).bfloat16(), -1)
    kl = kl_categorical(lp, lq)
    exact = kl_categorical(torch.log_softmax(logits.double(), -1),
                           torch.log_softmax((logits + 0).double(), -1))  # 0: sanity of the float64 path
    assert kl.dtype == torch.bfloat16 and bool(torch.isfinite(kl).all()) and float(exact.abs().max()) < 1e-12


def test_kl_categorical_still_rejects_an_unnormalised_bf16_input():
    lp = torch.log_softmax(torch.randn(2, 50), -1).bfloat16() - 0.3
    with pytest.raises(ValueError, match="not normalised"):
        kl_categorical(lp, torch.log_softmax(torch.randn(2, 50), -1).bfloat16())


def test_masked_mean_empty_nan_gives_nan_only_for_the_empty_slice():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=D)
    m = torch.tensor([[1, 0], [1, 0]])
    out = masked_mean(x, m, dim=0, empty="nan")
    assert out[0] == 2.0 and math.isnan(float(out[1]))
    with pytest.raises(ValueError, match="empty='nan'"):
        masked_mean(x, m, dim=0)


def test_advantages_of_shape_b_by_1_equal_shape_b_and_get_no_gradient():
    adv = torch.randn(2, dtype=D, requires_grad=True)
    logp = LOGP.clone().requires_grad_(True)
    a = policy_gradient_loss(logp, adv, MASK)
    b = policy_gradient_loss(logp, adv[:, None], MASK)
    assert torch.equal(a, b)
    a.backward()
    assert adv.grad is None and logp.grad is not None
