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
                                       ({"prompts_per_step": 0}, "prompts_per_step"), ({"steps": -2}, "steps"),
                                       ({"reward_offset": float("nan")}, "reward_offset"),
                                       ({"reward_offset": "1"}, "reward_offset"), ({"optimizer": "adam"}, "optimizer"),
                                       ({"baseline": "batch_mean", "group_size": 1, "prompts_per_step": 1},
                                        "batch_mean")])
def test_bad_config_is_rejected_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        ReinforceConfig(**kw)


def test_batch_mean_advantages_are_the_reward_minus_the_mean_of_the_whole_batch():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    adv = reinforce_advantages(r, "batch_mean", 4)
    assert torch.allclose(adv, r - r.mean(), atol=1e-15)
    # negative control: the group mean (a baseline per prompt) is a different vector on these rewards
    group = reinforce_advantages(r, "mean", 4)
    assert (group - adv).abs().max() > 0.1
    # the batch mean does not depend on how the rows are grouped
    assert torch.equal(reinforce_advantages(r, "batch_mean", 2), adv)


@pytest.mark.parametrize("c", [1.0, -0.5, 3.0])
def test_a_reward_offset_cancels_in_rloo_and_the_group_mean_but_not_without_a_baseline(c):
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 3, (24,), generator=g).double() / 2 - 0.5  # rewards in {-0.5, 0, 0.5}
    for baseline in ("rloo", "mean", "batch_mean"):
        assert torch.allclose(reinforce_advantages(r + c, baseline, 4), reinforce_advantages(r, baseline, 4),
                              rtol=0, atol=1e-12), baseline
    # negative control: with no baseline the offset goes straight into every advantage
    plain, shifted = reinforce_advantages(r, "none", 4), reinforce_advantages(r + c, "none", 4)
    assert torch.allclose(shifted - plain, torch.full_like(r, c))


def test_reward_offset_moves_the_advantages_by_c_without_a_baseline_and_not_with_rloo(start, monkeypatch):
    """The trainer applies ``reward_offset`` to the rewards its advantages are computed from (seen by spying
    on ``reinforce_advantages``); the logged reward stays the task's."""
    seen = []
    real = reinforce_mod.reinforce_advantages

    def spy(rewards, baseline, group_size):
        seen.append(rewards.clone())
        return real(rewards, baseline, group_size)

    monkeypatch.setattr(reinforce_mod, "reinforce_advantages", spy)
    hist = {}
    for c in (0.0, 1.0):
        res = train_reinforce(tiny(baseline="none", steps=1, reward_offset=c), *fresh(start), task=TASK, progress=False)
        hist[c] = res.history[0]
    assert torch.allclose(seen[1] - seen[0], torch.ones_like(seen[0]))  # same batch (same seed), shifted by c
    assert hist[1.0]["reward_mean"] == pytest.approx(hist[0.0]["reward_mean"])  # logged: the task's reward
    assert hist[1.0]["advantage_abs_mean"] > hist[0.0]["advantage_abs_mean"] + 0.5


def test_optimizer_option_builds_sgd_or_adamw():
    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = reinforce_mod.reinforce_optimizer(ReinforceConfig(optimizer="sgd", lr=0.1), params)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["lr"] == 0.1 and sgd.param_groups[0]["momentum"] == 0
    adam = reinforce_mod.reinforce_optimizer(ReinforceConfig(lr=0.1), params)
    assert type(adam) is torch.optim.AdamW and not isinstance(adam, torch.optim.SGD)  # the default is not SGD


def test_an_sgd_step_is_minus_lr_times_the_gradient_and_rloo_steps_g_over_g_minus_1_further(start, monkeypatch):
    """Under plain SGD the first step is exactly -lr x gradient, so RLOO's step is G/(G-1) times the group
    mean's (same batch); under AdamW the two first steps are equal (Adam's first step is lr x sign)."""
    G = 4

    def first_step(baseline, optimizer):
        model, tok = fresh(start)
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
        cfg = tiny(baseline=baseline, steps=1, group_size=G, optimizer=optimizer, lr=1e-3, grad_clip=None)
        res = train_reinforce(cfg, model, tok, task=TASK, progress=False)
        after = torch.cat([p.detach().reshape(-1) for p in res.model.parameters()])
        return after - before, res.history[0]["grad_norm"]

    d_mean, g_mean = first_step("mean", "sgd")
    d_rloo, g_rloo = first_step("rloo", "sgd")
    # (float32 parameters: adding a 1e-5 step to weights of order 0.1 rounds it at about 1e-3 relative)
    assert float(d_mean.norm()) == pytest.approx(1e-3 * g_mean, rel=3e-3)  # SGD: |step| = lr |gradient|
    assert float(g_rloo) == pytest.approx(g_mean * G / (G - 1), rel=1e-5)
    assert (d_rloo - d_mean * G / (G - 1)).norm() < 3e-3 * d_rloo.norm()
    a_mean, _ = first_step("mean", "adamw")
    a_rloo, _ = first_step("rloo", "adamw")
    assert (a_rloo - a_mean).norm() < 3e-3 * a_mean.norm()  # Adam: the constant factor is gone
    # negative control: SGD's two steps are not equal (the check above could tell them apart)
    assert (d_rloo - d_mean).norm() > 0.2 * d_mean.norm()


def test_new_options_at_their_defaults_leave_the_recorded_config_as_before():
    """``reward_offset`` and ``optimizer`` came after REINFORCE run directories existed: at their defaults they
    are not recorded (an older run still resumes); set, they are (a run with another offset is refused)."""
    from rlcourse.train.common import config_dict

    plain = config_dict(ReinforceConfig())
    assert "reward_offset" not in plain and "optimizer" not in plain
    changed = config_dict(ReinforceConfig(reward_offset=1.0, optimizer="sgd"))
    assert changed["reward_offset"] == 1.0 and changed["optimizer"] == "sgd"
