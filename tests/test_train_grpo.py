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


#: The scripted rounds of the dynamic-sampling test: per round, 4 groups of G = 4 completions and their rule
#: rewards. Round 0 keeps groups 1 and 3 (groups 0 and 2 are all equal); round 1 fills the batch with its
#: groups 1 and 2 and stops (its group 3 is never needed; a round 2 would be an error).
SCRIPTED_ROUNDS = [
    ([["5", "5", "5", "5"], ["7", "6", "6", "6"], ["1", "2", "3", "4"], ["8", "9", "9", "8"]],
     [[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]]),
    ([["2", "2", "2", "2"], ["0", "0", "3", "0"], ["4", "1", "4", "1"], ["6", "6", "5", "6"]],
     [[1, 1, 1, 1], [0, 0, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1]]),
]


def scripted_sample_groups(tok, calls, rounds=SCRIPTED_ROUNDS):
    """A stand-in for :func:`rlcourse.train.common.sample_groups` that returns ``rounds`` (default
    :data:`SCRIPTED_ROUNDS`) and records the rounds asked for: no model samples anything."""
    from rlcourse.lm import Rollout

    def sample(model, tokenizer, task, *, n_prompts, group_size, max_new_tokens, temperature, seed, step, round_=0):
        calls.append(round_)
        completions, rewards = rounds[round_]
        problems = TASK.sample(n_prompts, "train", seed=100 + round_, unique=True)
        prompts = [p.prompt for p in problems for _ in range(group_size)]
        flat = [c for g in completions for c in g]
        enc = encode_completions(tok, prompts, flat)
        ro = Rollout(enc.input_ids, enc.attention_mask, enc.response_mask, enc.prompt_length,
                     logprobs=-0.5 * enc.response_mask, finished=torch.ones(len(flat), dtype=torch.bool),
                     prompts=prompts, completions=flat, group_size=group_size, temperature=temperature)
        return problems, ro, torch.tensor([float(r) for g in rewards for r in g])

    return sample


def test_dynamic_sampling_keeps_only_groups_with_varied_rewards(monkeypatch):
    tok = build_tokenizer()
    calls = []
    monkeypatch.setattr(grpo_mod, "sample_groups", scripted_sample_groups(tok, calls))
    cfg = tiny(variant="dapo", prompts_per_step=4, group_size=4, max_sampling_rounds=3, overlong_buffer=0)
    batch = collect_batch(None, tok, TASK, cfg, 0, max_new_tokens=4)
    assert calls == [0, 1] and batch["rounds"] == 2  # stopped as soon as 4 groups were kept
    assert batch["groups"] == 4 and batch["frac_zero_std"] == 3 / 8  # 3 of the 8 sampled groups were all equal
    assert batch["sampled_rewards"].numel() == 32 and batch["entropy"] == pytest.approx(0.5)
    grouped = batch["rewards"].view(-1, 4)
    assert bool((grouped.std(-1) > 0).all())
    kept = [(0, 1), (0, 3), (1, 1), (1, 2)]  # (round, group), in sampling order
    assert grouped.tolist() == [[float(r) for r in SCRIPTED_ROUNDS[k][1][g]] for k, g in kept]
    # the kept rows are re-encoded into one batch in the rollout layout: the same tokens as encoding them directly
    prompts = [p.prompt for k, g in kept for p in [TASK.sample(4, "train", seed=100 + k, unique=True)[g]] * 4]
    enc = encode_completions(tok, prompts, [c for k, g in kept for c in SCRIPTED_ROUNDS[k][0][g]])
    assert torch.equal(batch["input_ids"], enc.input_ids) and torch.equal(batch["response_mask"], enc.response_mask)

    # negative control: without dynamic sampling the same first round is the batch, all-equal groups included
    calls.clear()
    plain = collect_batch(None, tok, TASK, dataclasses.replace(cfg, dynamic_sampling=False), 0, max_new_tokens=4)
    assert calls == [0] and plain["groups"] == 4 and not bool((plain["rewards"].view(-1, 4).std(-1) > 0).all())


def test_dynamic_sampling_judges_groups_by_the_shaped_reward(monkeypatch):
    """A group whose rule rewards are all equal varies once DAPO's overlong shaping penalises one of its
    completions: it carries signal and is kept."""
    tok = build_tokenizer()
    completions, rewards = SCRIPTED_ROUNDS[0]
    long_one = [completions[0], completions[1], ["12", "2", "3", "4"], completions[3]]  # group 2: rewards 0, 0, 0, 0
    monkeypatch.setattr(grpo_mod, "sample_groups", scripted_sample_groups(tok, [], [(long_one, rewards)]))
    cfg = tiny(variant="dapo", prompts_per_step=4, group_size=4, max_sampling_rounds=1, overlong_buffer=1)
    # max_new_tokens = 3, buffer 1: "12" + <eos> (3 tokens) is penalised by -1, the 2-token completions are not
    batch = collect_batch(None, tok, TASK, cfg, 0, max_new_tokens=3)
    assert batch["groups"] == 3 and batch["frac_zero_std"] == 1 / 4  # only group 0 (all 1) is dropped
    assert batch["rewards"].view(-1, 4)[1].tolist() == [-1.0, 0.0, 0.0, 0.0]
    assert batch["sampled_rewards"][8:12].tolist() == [0.0, 0.0, 0.0, 0.0]  # the rule rewards, unshaped


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
