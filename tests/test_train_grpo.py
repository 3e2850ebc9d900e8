"""GRPO trainer (grpo, dr_grpo, dapo, gspo): it improves its objective and its reward, the ratio is
exactly 1 before the first update, a resumed run equals the uninterrupted one, bad inputs fail loudly.

The policy is a briefly trained model (60 SFT steps on 1-digit addition, a few seconds) so that
rewards vary within groups; nothing depends on a warm cache (``RLCOURSE_CACHE`` is a tmp dir).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import rlcourse.train.grpo as grpo_mod
from conftest import MINI_TASK as TASK
from conftest import assert_resume_reproduces, fresh
from rlcourse.lm import build_model, build_tokenizer, encode_completions, pass_at_k
from rlcourse.lm import sequence_logprobs as _seq_logprobs
from rlcourse.losses import grpo_loss
from rlcourse.train.common import NonFiniteLossError
from rlcourse.train.distinct_rows import distinct_rows, rows_that_matter, select_rows
from rlcourse.train.grpo import (AGGREGATION, VARIANTS, GRPOConfig, collect_batch, grpo_update, overlong_penalty,
                                 train_grpo)


def policy_forward(model, ids, att, mask, temperature):
    return _seq_logprobs(model, ids, att, mask, temperature, return_logits=True)


def synthetic_batch(tok, group_size: int = 4):
    """A batch built by hand (no sampling): 4 prompts x 4 completions whose rewards vary in groups 0, 2, 3
    and are all equal in group 1 (advantage 0), with repeated completions in groups 0, 1 and 3."""
    problems = TASK.sample(4, "train", seed=0, unique=True)
    completions = [["3", "3", "4", "5"], ["7", "7", "7", "7"], ["1", "2", "2", "x"], ["12", "12", "9", "12"]]
    rewards = [[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0], [0, 0, 1, 0]]
    prompts = [p.prompt for p in problems for _ in range(group_size)]
    enc = encode_completions(tok, prompts, [c for g in completions for c in g])
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "response_mask": enc.response_mask,
            "rewards": torch.tensor([float(r) for g in rewards for r in g])}


@pytest.fixture(scope="module")
def untrained():
    """A fresh tiny model with fixed initial weights (no training: nothing depends on what a model samples)."""
    tok = build_tokenizer()
    return build_model("tiny", len(tok), seed=0, tokenizer=tok), tok


def tiny(**kw) -> GRPOConfig:
    base = dict(steps=3, lr=3e-4, prompts_per_step=8, group_size=8, eval_n=4, device="cpu")
    return GRPOConfig(**(base | kw))


def batch_loss(model, batch, logp_old, cfg, max_new):
    logp, _ = policy_forward(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                             cfg.temperature)
    adv = grpo_mod._advantages(batch["rewards"], cfg)
    loss, _ = grpo_loss(logp, logp_old, adv, batch["response_mask"], eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                        importance_level=cfg.importance_level, aggregation=cfg.aggregation,
                        max_completion_length=max_new if cfg.aggregation == "constant" else None)
    return loss


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_step_lowers_the_loss_on_its_own_batch(untrained, variant):
    model, tok = fresh(untrained)
    cfg = tiny(variant=variant, steps=1, lr=1e-5, group_size=4)  # first order: a small step (GSPO's range: 4e-4)
    batch = synthetic_batch(tok)
    max_new = int(batch["response_mask"].shape[1])
    with torch.no_grad():
        logp_old, _ = policy_forward(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], 1.0)
        before = batch_loss(model, batch, logp_old, cfg, max_new)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    row = grpo_update(model, opt, batch, cfg, None, max_new, 0)
    assert row["loss"] == pytest.approx(float(before), abs=1e-6)
    with torch.no_grad():
        after = batch_loss(model, batch, logp_old, cfg, max_new)
    assert float(after) < float(before) - 1e-7


def test_grpo_raises_the_reward_on_the_training_problems(start):
    model, tok = fresh(start)
    problems = TASK.sample(40, "train", seed=123, unique=True)
    before = pass_at_k(model, tok, problems, 1, n=16, seed=1)
    res = train_grpo(tiny(steps=20), model, tok, task=TASK, progress=False)
    after = pass_at_k(res.model, tok, problems, 1, n=16, seed=1)
    assert after > before + 0.1, (before, after)
    rewards = [r["reward_mean"] for r in res.history]
    assert sum(rewards[-5:]) > sum(rewards[:5])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mu", [1, 2])
def test_ratio_is_exactly_one_before_the_first_update(start, variant, mu):
    model, tok = fresh(start)
    res = train_grpo(tiny(variant=variant, steps=1, num_iterations=mu), model, tok, task=TASK, progress=False)
    row = res.history[0]
    assert row["ratio_mean"] == 1.0
    assert row["clipfrac"] == 0.0 and row["approx_kl"] == 0.0


def test_second_iteration_reports_the_moved_ratio(start):
    model, tok = fresh(start)
    row = train_grpo(tiny(steps=1, num_iterations=2, lr=3e-3), model, tok, task=TASK, progress=False).history[0]
    assert row["ratio_mean"] == 1.0 and row["approx_kl"] == 0.0  # first iteration: the sampling policy
    assert row["approx_kl_last"] > 0.0 and row["ratio_mean_last"] != 1.0  # after one update on the batch
    model, tok = fresh(start)
    row = train_grpo(tiny(steps=1, num_iterations=1), model, tok, task=TASK, progress=False).history[0]
    assert "approx_kl_last" not in row


def test_kl_to_reference_is_zero_at_the_start_and_the_reference_is_frozen(start):
    model, tok = fresh(start)
    init = [p.detach().clone() for p in model.parameters()]
    res = train_grpo(tiny(steps=3, beta=0.1, kl_estimator="k3", lr=3e-3), model, tok, task=TASK, progress=False)
    assert res.history[0]["kl"] < 1e-9  # policy = reference (two forward passes: round-off only)
    assert res.history[-1]["kl"] > 0.0
    ref = res.extra["reference"]
    assert all(not p.requires_grad for p in ref.parameters())
    assert all(torch.equal(a, b) for a, b in zip(init, ref.parameters()))


def test_resume_reproduces_the_uninterrupted_run(start, tmp_path):
    cfg = tiny(variant="dapo", steps=4, checkpoint_every=2, beta=0.05)
    assert_resume_reproduces(lambda out, cb: train_grpo(dataclasses.replace(cfg, out=out), *fresh(start), task=TASK,
                                                        progress=False, callback=cb), tmp_path)


def test_non_finite_loss_stops_training(start, monkeypatch):
    model, tok = fresh(start)
    real = grpo_mod.grpo_loss

    def nan_loss(*a, **k):
        loss, stats = real(*a, **k)
        return loss * float("nan"), stats

    monkeypatch.setattr(grpo_mod, "grpo_loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match="grpo loss is nan at step 0"):
        train_grpo(tiny(steps=2), model, tok, task=TASK, progress=False)


@pytest.mark.parametrize("field, value", [("beta", -0.1), ("eps_low", 1.5), ("eps_low", 0.0), ("eps_high", 1.0),
                                          ("group_size", 1), ("variant", "ppo"), ("kl_estimator", "k4"),
                                          ("num_iterations", 0), ("temperature", 0.0), ("lr", -1e-3),
                                          ("prompts_per_step", 0), ("max_sampling_rounds", 0),
                                          ("overlong_buffer", -1)])
def test_bad_config_is_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GRPOConfig(**{field: value})


def test_variants_choose_aggregation_ratio_clip_and_sampling():
    assert GRPOConfig().aggregation == AGGREGATION["grpo"] == "seq_mean_token_mean"
    dr = GRPOConfig(variant="dr_grpo")
    assert dr.aggregation == "constant" and dr.scale_advantages is False
    dapo = GRPOConfig(variant="dapo")
    assert dapo.aggregation == "token_mean" and dapo.eps_high > dapo.eps_low and dapo.dynamic_sampling
    assert dapo.overlong_buffer > 0
    gspo = GRPOConfig(variant="gspo")
    assert gspo.importance_level == "sequence" and gspo.eps_low < 0.01
    assert GRPOConfig(eps_low=0.1).eps_high == 0.1


def test_dynamic_sampling_keeps_only_groups_with_varied_rewards(start):
    model, tok = fresh(start)
    cfg = tiny(variant="dapo", prompts_per_step=8, group_size=4, max_sampling_rounds=3)
    batch = collect_batch(model, tok, TASK, cfg, 0, TASK.max_answer_chars + 2)
    assert batch["frac_zero_std"] > 0  # some groups were all-equal and dropped
    assert 0 < batch["groups"] <= 8 and batch["rewards"].numel() == 4 * batch["groups"]
    grouped = batch["rewards"].view(-1, 4)
    assert bool((grouped.std(-1) > 0).all())
    # the re-encoded batch has the rollout layout: response mask counts 1..max_new tokens per row
    lengths = batch["response_mask"].sum(-1)
    assert bool((lengths >= 1).all()) and int(lengths.max()) <= TASK.max_answer_chars + 2


def test_overlong_penalty_is_zero_then_linear_then_minus_one():
    lengths = torch.tensor([1, 6, 7, 8, 10, 11])
    assert overlong_penalty(lengths, 10, 4).tolist() == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert overlong_penalty(lengths, 10, 0).tolist() == [0.0] * 6
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 10, 11)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mu_step", [0, 1])
def test_computing_only_distinct_rows_with_signal_changes_neither_loss_nor_gradient(untrained, variant, mu_step):
    """Rows with A = 0 are dropped and copies of a completion computed once (advantage x copies): on a
    synthetic batch where both savings occur by construction, the loss and the gradient are unchanged."""
    model, tok = fresh(untrained)
    cfg = tiny(variant=variant, dynamic_sampling=False, group_size=4)
    batch = synthetic_batch(tok)
    max_new = int(batch["response_mask"].shape[1])
    adv = grpo_mod._advantages(batch["rewards"], cfg)
    mask = batch["response_mask"]
    index, count = rows_that_matter(batch["input_ids"], mask, adv, cfg.group_size)
    assert index.tolist() == [0, 2, 3, 8, 9, 11, 12, 14] and count.tolist() == [2, 1, 1, 1, 2, 1, 3, 1]
    with torch.no_grad():  # mu_step = 1: a policy that has moved since sampling (ratios != 1, clipping)
        logp_old_full = policy_forward(model, batch["input_ids"], batch["attention_mask"], mask, 1.0)[0]
        if mu_step:
            g = torch.Generator().manual_seed(0)
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))

    def loss_and_grad(ids, att, m, a, logp_old, **norms):
        model.zero_grad()
        logp, _ = policy_forward(model, ids, att, m, 1.0)
        loss, _ = grpo_loss(logp, logp_old, a, m, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                            importance_level=cfg.importance_level, aggregation=cfg.aggregation,
                            max_completion_length=max_new if cfg.aggregation == "constant" else None, **norms)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    full = loss_and_grad(batch["input_ids"], batch["attention_mask"], mask, adv, logp_old_full)
    ids, att, m = select_rows(batch["input_ids"], batch["attention_mask"], mask, index)
    part = loss_and_grad(ids, att, m, adv[index] * count, logp_old_full[index, :m.shape[1]],
                         total_sequences=mask.shape[0], total_tokens=float(mask.sum()))
    assert torch.allclose(full[0], part[0], atol=1e-6), (full[0], part[0])
    for a, b in zip(full[1], part[1]):
        assert torch.allclose(a, b, atol=1e-6)
    # the helper the trainer calls returns the same rows
    ids2, _, _, adv2, norms = distinct_rows(batch["input_ids"], batch["attention_mask"], mask, adv, cfg.group_size)
    assert torch.equal(ids2, ids) and torch.equal(adv2, adv[index] * count)
    assert norms == {"total_sequences": 16, "total_tokens": float(mask.sum())}


def test_distinct_rows_option_trains_like_the_plain_batch(start):
    """The opt-in speed-up is exact: the trainer's first loss is the same with and without it (the gradient is
    checked on a synthetic batch above; Adam's first step amplifies rounding in near-zero gradients)."""
    a = train_grpo(tiny(steps=1, lr=1e-3), *fresh(start), task=TASK, progress=False)
    b = train_grpo(tiny(steps=1, lr=1e-3, distinct_rows=True), *fresh(start), task=TASK, progress=False)
    assert a.history[0]["loss"] == pytest.approx(b.history[0]["loss"], abs=1e-5)
    assert b.history[0]["rows_trained"] <= a.history[0]["rows_trained"] == 64


def test_distinct_rows_needs_beta_zero():
    with pytest.raises(ValueError, match="distinct_rows"):
        GRPOConfig(distinct_rows=True, beta=0.1)
