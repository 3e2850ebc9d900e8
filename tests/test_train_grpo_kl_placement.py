"""GRPO's kl_placement option: the KL as a reward penalty (k1 summed, subtracted before the advantage) and the
sequence-level estimator in the loss. Synthetic log-probs and hand-built batches only; the exact gradient facts are
checked on the enumerable toy MDP against the derivation ``kl_estimators``; each has a negative control."""

from __future__ import annotations

import copy

import pytest
import torch

from rlcourse.advantages import dr_grpo_advantages
from rlcourse.derivations.kl_estimators import kl_gradient, token_k3_loss_gradient
from rlcourse.kl import kl_k1, kl_k2, kl_k3
from rlcourse.lm import build_model, build_tokenizer, encode_completions, sequence_logprobs
from rlcourse.logprobs import agg_loss
from rlcourse.losses import grpo_loss
from rlcourse.toymdp import ToyMDP
from rlcourse.train.grpo import GRPOConfig, grpo_update, kl_penalised_rewards, sequence_kl_per_token
from rlcourse.train.ppo import kl_shaped_rewards


def logps(seed, shape=(4, 5)):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(shape, generator=g, dtype=torch.float64) * 3


MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float64)


# -- kl_penalised_rewards ---------------------------------------------------------------------------

def test_kl_penalised_rewards_subtract_beta_times_the_masked_k1_sum():
    r, lp, lq = torch.tensor([1.0, 0.0, 1.0, -0.5], dtype=torch.float64), logps(0), logps(1)
    out = kl_penalised_rewards(r, lp, lq, MASK, beta=0.3, estimator="k1")
    assert torch.allclose(out, r - 0.3 * (kl_k1(lp, lq) * MASK).sum(-1), atol=1e-12)
    with_k3 = kl_penalised_rewards(r, lp, lq, MASK, beta=0.3, estimator="k3")
    assert torch.allclose(with_k3, r - 0.3 * (kl_k3(lp, lq) * MASK).sum(-1), atol=1e-12)


def test_kl_penalised_rewards_with_k1_equal_ppo_shaped_rewards_summed():
    """The return from the first token of PPO-RLHF's shaped per-token reward (a cross-check with the PPO trainer)."""
    r, lp, lq = torch.tensor([1.0, 0.0, 1.0, -0.5], dtype=torch.float64), logps(2), logps(3)
    shaped, _ = kl_shaped_rewards(r, lp, lq, MASK, 0.7)
    assert torch.allclose(kl_penalised_rewards(r, lp, lq, MASK, 0.7, "k1"), shaped.sum(-1), atol=1e-12)


def test_kl_penalised_rewards_ignore_padding_and_negative_control_unmasked_sum_differs():
    r, lp, lq = torch.zeros(4, dtype=torch.float64), logps(4), logps(5)
    out = kl_penalised_rewards(r, lp, lq, MASK, 1.0)
    lp2 = torch.where(MASK.bool(), lp, lp - 5.0)  # change only the padding
    assert torch.equal(out, kl_penalised_rewards(r, lp2, lq, MASK, 1.0))
    unmasked = r - kl_k1(lp, lq).sum(-1)  # a plausible wrong version: padding counted
    assert (unmasked - out).abs().max() > 1e-3


def test_kl_penalised_rewards_refuse_bad_input_by_name():
    r, lp, lq = torch.zeros(4), logps(6).float(), logps(7).float()
    with pytest.raises(ValueError, match="rewards"):
        kl_penalised_rewards(torch.zeros(3), lp, lq, MASK.float(), 0.1)
    with pytest.raises(ValueError, match="beta"):
        kl_penalised_rewards(r, lp, lq, MASK.float(), -0.1)
    with pytest.raises(ValueError, match="mask"):
        kl_penalised_rewards(r, lp, lq, MASK.float()[:, :3], 0.1)
    with pytest.raises(ValueError, match="estimator"):
        kl_penalised_rewards(r, lp, lq, MASK.float(), 0.1, "k4")


# -- sequence_kl_per_token --------------------------------------------------------------------------

def test_sequence_kl_per_token_rows_sum_to_k2_of_the_sequence_log_ratio():
    lp, lq = logps(8), logps(9)
    per_token = sequence_kl_per_token(lp, lq, MASK, "k2")
    expected = kl_k2((lp * MASK).sum(-1), (lq * MASK).sum(-1))
    assert torch.allclose(per_token.sum(-1), expected, atol=1e-12)
    assert torch.equal(per_token * (1 - MASK), torch.zeros_like(per_token))
    # negative control: the per-token k2 summed is not the sequence k2
    assert (((kl_k2(lp, lq) * MASK).sum(-1)) - expected).abs().max() > 1e-2


def test_sequence_kl_per_token_refuses_an_empty_row():
    mask = MASK.clone()
    mask[2] = 0
    with pytest.raises(ValueError, match="mask"):
        sequence_kl_per_token(logps(10), logps(11), mask)


@pytest.fixture(scope="module")
def toy():
    mdp = ToyMDP.random(vocab_size=3, horizon=3, seed=3)
    return mdp, mdp.init_params(seed=4), mdp.init_params(seed=5)


def _expected_loss_gradient(mdp, theta, theta_ref, per_token_fn):
    """grad of sum_tau sg[P(tau)] sum_t loss_t(theta) over the enumerated sequences of the toy MDP."""
    th = theta.detach().clone().requires_grad_(True)
    mask = mdp.sequences.mask.to(th.dtype)
    loss = per_token_fn(mdp.token_logprobs(th), mdp.token_logprobs(theta_ref).detach(), mask).sum(-1)
    (g,) = torch.autograd.grad((mdp.probabilities(theta.detach()) * loss).sum(), th)
    return g


def test_sequence_k2_loss_has_the_gradient_of_the_sequence_kl(toy):
    """The derivation's fact, through the trainer's function: E_sg[P][grad seq-k2] = grad KL(P || P_ref)."""
    mdp, theta, theta_ref = toy
    g = _expected_loss_gradient(mdp, theta, theta_ref, lambda lp, lq, m: sequence_kl_per_token(lp, lq, m, "k2"))
    assert torch.allclose(g, kl_gradient(mdp, theta, theta_ref), atol=1e-10)


def test_negative_control_per_token_k2_and_k3_losses_do_not_have_the_sequence_kl_gradient(toy):
    mdp, theta, theta_ref = toy
    truth = kl_gradient(mdp, theta, theta_ref)
    g_k2 = _expected_loss_gradient(mdp, theta, theta_ref, lambda lp, lq, m: kl_k2(lp, lq) * m)
    assert (g_k2 - truth).abs().max() > 1e-3
    assert (token_k3_loss_gradient(mdp, theta, theta_ref, "k3") - truth).abs().max() > 1e-3


# -- the trainer -------------------------------------------------------------------------------------

def test_config_refuses_unknown_placement_and_a_placement_without_beta():
    with pytest.raises(ValueError, match="kl_placement"):
        GRPOConfig(beta=0.1, kl_placement="advantage")
    with pytest.raises(ValueError, match="kl_placement='reward' needs beta > 0"):
        GRPOConfig(kl_placement="reward")
    assert GRPOConfig(beta=0.1, kl_placement="sequence_loss").kl_placement == "sequence_loss"


@pytest.fixture(scope="module")
def models():
    """A fresh tiny model (fixed weights) and a reference that differs from it (its weights perturbed)."""
    tok = build_tokenizer()
    model = build_model("tiny", len(tok), seed=0, tokenizer=tok)
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model, ref.eval().requires_grad_(False), tok


def batch_of(tok):
    prompts = ["1+2=", "1+2=", "1+2=", "1+2=", "3+4=", "3+4=", "3+4=", "3+4="]
    completions = ["3", "4", "13", "x", "7", "7", "8", "77"]
    enc = encode_completions(tok, prompts, completions)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "response_mask": enc.response_mask,
            "rewards": torch.tensor([1.0, 0, 0, -1, 1, 1, 0, 0])}


def _step(model, batch, cfg, ref):
    m = copy.deepcopy(model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    row = grpo_update(m, opt, batch, cfg, ref, int(batch["response_mask"].shape[1]), 0)
    return m, row


def _dr_grpo(**kw) -> GRPOConfig:
    """The config of these update tests: Dr. GRPO on the batch of ``batch_of`` (2 prompts x 4 samples)."""
    return GRPOConfig(variant="dr_grpo", group_size=4, prompts_per_step=2, **kw)


def _same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_reward_placement_updates_like_beta_zero_on_the_penalised_rewards(models):
    model, ref, tok = models
    batch = batch_of(tok)
    cfg = _dr_grpo(beta=0.5, kl_placement="reward", kl_estimator="k1")
    updated, _ = _step(model, batch, cfg, ref)
    ids, att, mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    with torch.no_grad():
        shifted = kl_penalised_rewards(batch["rewards"], sequence_logprobs(model, ids, att, mask),
                                       sequence_logprobs(ref, ids, att, mask), mask, 0.5, "k1")
    plain = _dr_grpo(beta=0.0)
    same, _ = _step(model, batch | {"rewards": shifted}, plain, None)
    assert _same(updated, same)
    unshifted, _ = _step(model, batch, plain, None)  # negative control: the penalty changes the update
    assert not _same(updated, unshifted)


def test_sequence_loss_placement_adds_beta_times_the_aggregated_sequence_k2(models):
    model, ref, tok = models
    batch = batch_of(tok)
    cfg = _dr_grpo(beta=0.5, kl_placement="sequence_loss", kl_estimator="k2")
    _, row = _step(model, batch, cfg, ref)
    ids, att, mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    L = int(mask.shape[1])
    with torch.no_grad():
        lp, lq = sequence_logprobs(model, ids, att, mask), sequence_logprobs(ref, ids, att, mask)
        adv = dr_grpo_advantages(batch["rewards"], 4)
        pg, _ = grpo_loss(lp, lp, adv, mask, aggregation="constant", max_completion_length=L)
        seq = agg_loss(sequence_kl_per_token(lp, lq, mask, "k2"), mask, "constant", constant=L)
        tok_k2, _ = grpo_loss(lp, lp, adv, mask, aggregation="constant", max_completion_length=L, beta=0.5,
                              logp_ref=lq, kl_estimator="k2")
    assert row["loss"] == pytest.approx(float(pg + 0.5 * seq), abs=1e-6)
    assert abs(row["loss"] - float(tok_k2)) > 1e-4  # negative control: not the per-token k2 loss
