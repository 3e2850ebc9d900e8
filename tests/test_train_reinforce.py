"""REINFORCE trainer (no baseline, mean baseline, RLOO): the advantages are the right ones, a step
improves the surrogate on its batch, training raises the reward, resume is exact, bad inputs fail.

The policy is a briefly trained model (SFT on 1-digit addition in which 60% of the answers are
"answer + 1"), so that rewards vary within groups; ``RLCOURSE_CACHE`` is a tmp dir.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import rlcourse.train.reinforce as reinforce_mod
from conftest import MINI_TASK as TASK
from conftest import assert_resume_reproduces, fresh
from rlcourse.lm import pass_at_k
from rlcourse.losses import policy_gradient_loss
from rlcourse.train.common import NonFiniteLossError, sample_groups
from rlcourse.lm import sequence_logprobs
from rlcourse.train.reinforce import BASELINES, ReinforceConfig, reinforce_advantages, train_reinforce

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ReinforceConfig:
    base = dict(steps=3, lr=3e-4, prompts_per_step=8, group_size=8, eval_n=4, device="cpu")
    return ReinforceConfig(**(base | kw))


def test_advantages_of_each_baseline():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    assert torch.equal(reinforce_advantages(r, "none", 4), r)
    assert torch.allclose(reinforce_advantages(r, "mean", 4), torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]))
    loo = reinforce_advantages(r, "rloo", 4)  # r_i minus the mean of the other three
    assert torch.allclose(loo, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0]))
    assert torch.allclose(loo, reinforce_advantages(r, "mean", 4) * 4 / 3)  # RLOO = G/(G-1) x mean baseline
    assert torch.allclose(reinforce_advantages(r, "mean", 1), r - r.mean())  # G = 1: the batch mean


@pytest.mark.parametrize("baseline", BASELINES)
def test_one_step_lowers_the_surrogate_on_its_own_batch(start, baseline):
    model, tok = fresh(start)
    cfg = tiny(baseline=baseline, steps=1, lr=1e-5)
    _, ro, rewards = sample_groups(model, tok, TASK, n_prompts=8, group_size=8,
                                   max_new_tokens=TASK.max_answer_chars + 2, temperature=1.0, seed=cfg.seed,
                                   step=0)  # the batch of step 0
    adv = reinforce_advantages(rewards, baseline, 8)

    def surrogate(m):
        with torch.no_grad():
            logp = sequence_logprobs(m, ro.input_ids, ro.attention_mask, ro.response_mask, 1.0)
            return float(policy_gradient_loss(logp, adv, ro.response_mask, cfg.aggregation))

    before = surrogate(model)
    res = train_reinforce(cfg, model, tok, task=TASK, progress=False)
    assert res.history[0]["loss"] == pytest.approx(before, abs=1e-6)
    assert surrogate(res.model) < before - 1e-5


@pytest.mark.parametrize("baseline", ["mean", "rloo"])
def test_reinforce_with_a_baseline_raises_the_reward(start, baseline):
    model, tok = fresh(start)
    problems = TASK.sample(40, "train", seed=123, unique=True)
    before = pass_at_k(model, tok, problems, 1, n=16, seed=1)
    res = train_reinforce(tiny(baseline=baseline, steps=20), model, tok, task=TASK, progress=False)
    after = pass_at_k(res.model, tok, problems, 1, n=16, seed=1)
    assert after > before + 0.1, (before, after)


def test_resume_reproduces_the_uninterrupted_run(start, tmp_path):
    cfg = tiny(steps=4, checkpoint_every=2)
    assert_resume_reproduces(lambda out, cb: train_reinforce(dataclasses.replace(cfg, out=out), *fresh(start),
                                                             task=TASK, progress=False, callback=cb), tmp_path)


def test_non_finite_loss_stops_training(start, monkeypatch):
    model, tok = fresh(start)
    real = reinforce_mod.policy_gradient_loss
    monkeypatch.setattr(reinforce_mod, "policy_gradient_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    with pytest.raises(NonFiniteLossError, match="reinforce loss is"):
        train_reinforce(tiny(steps=2), model, tok, task=TASK, progress=False)


@pytest.mark.parametrize("kw, field", [({"baseline": "critic"}, "baseline"), ({"baseline": "rloo", "group_size": 1},
                                                                             "group_size"),
                                       ({"group_size": 0}, "group_size"), ({"lr": -1.0}, "lr"),
                                       ({"temperature": -1.0}, "temperature"), ({"aggregation": "sum"}, "aggregation"),
                                       ({"prompts_per_step": 0}, "prompts_per_step"), ({"steps": -2}, "steps")])
def test_bad_config_is_rejected_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        ReinforceConfig(**kw)
