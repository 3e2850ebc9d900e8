"""PPO: the KL-shaped reward, the exact ratio 1, improvement on an easy reward, resuming, and bad input."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_resume_reproduces
from rlcourse.lm import ArithmeticTask, build_model, build_tokenizer
from rlcourse.train import ppo as ppo_module
from rlcourse.train.common import NonFiniteLossError
from rlcourse.train.ppo import PPOConfig, kl_shaped_rewards, train_ppo
from rlcourse.lm import RewardModel

TASK = ArithmeticTask(digits=2, ops="+-")


@pytest.fixture(scope="module")
def lm():
    tok = build_tokenizer()
    return build_model("tiny", len(tok), seed=0, tokenizer=tok), tok


def fresh(lm):
    model, tok = lm
    return build_model("tiny", len(tok), seed=0, tokenizer=tok), tok


def small_cfg(**kw) -> PPOConfig:
    base = dict(steps=2, prompts_per_step=8, group_size=2, ppo_epochs=2, minibatches=2, max_new_tokens=4,
                eval_n=4, checkpoint_every=1)
    base.update(kw)
    return PPOConfig(**base)


def starts_with_digit(prompts, completions, answers, finished):
    """An easy reward: 1 for a completion whose first character is a digit (about 10 in 53 for an untrained model)."""
    return torch.tensor([1.0 if c[:1].isdigit() else 0.0 for c in completions])


def test_kl_shaped_reward_puts_the_score_on_the_last_token():
    scores = torch.tensor([1.0, -2.0])
    logp_old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]])
    logp_ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.4, -0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    r, kl = kl_shaped_rewards(scores, logp_old, logp_ref, mask, beta=0.1)
    assert torch.allclose(kl, (logp_old - logp_ref) * mask)
    assert torch.allclose(r, torch.tensor([[-0.05, 0.1, 1.0], [-0.01, 0.05 - 2.0, 0.0]]))
    # the return from the first token: score - beta * (sequence log-ratio), as in the KL-regularised objective of Ke Wei's lecture slides
    assert torch.allclose(r.sum(-1), scores - 0.1 * kl.sum(-1))
    with pytest.raises(ValueError, match="beta"):
        kl_shaped_rewards(scores, logp_old, logp_ref, mask, beta=-1.0)


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_ratio_is_exactly_one_before_the_first_update(lm, monkeypatch, critic):
    calls = []
    real = ppo_module.ppo_clip_loss

    def spy(logp, logp_old, *a, **kw):
        calls.append((logp.detach().clone(), logp_old.clone()))
        return real(logp, logp_old, *a, **kw)

    monkeypatch.setattr(ppo_module, "ppo_clip_loss", spy)
    model, tok = fresh(lm)
    train_ppo(small_cfg(steps=1, lr=1e-3, critic=critic), model, tok, task=TASK, progress=False)
    logp, logp_old = calls[0]  # epoch 0, minibatch 0: nothing updated yet
    assert torch.equal(logp, logp_old)
    assert torch.equal(torch.exp(logp - logp_old), torch.ones_like(logp))
    assert not torch.equal(*calls[1])  # after one update the policy has moved


def test_surrogate_and_easy_reward_improve(lm, monkeypatch):
    losses = []
    real = ppo_module.ppo_clip_loss

    def spy(*a, **kw):
        loss, stats = real(*a, **kw)
        losses.append(loss.item())
        return loss, stats

    monkeypatch.setattr(ppo_module, "ppo_clip_loss", spy)
    model, tok = fresh(lm)
    cfg = small_cfg(steps=1, ppo_epochs=4, minibatches=1, prompts_per_step=16, reward="model", lr=1e-3,
                    init_kl_coef=0.0, adaptive_kl=False)
    train_ppo(cfg, model, tok, task=TASK, reward_model=starts_with_digit, progress=False)
    # one batch, four epochs: the clipped surrogate loss falls from its value at ratio 1 (= -mean(A) = 0)
    assert losses[0] == pytest.approx(0.0, abs=1e-6) and losses[-1] < losses[0] - 0.01

    monkeypatch.setattr(ppo_module, "ppo_clip_loss", real)
    model, tok = fresh(lm)
    cfg = small_cfg(steps=8, ppo_epochs=2, minibatches=2, prompts_per_step=16, reward="model", lr=3e-3,
                    init_kl_coef=0.0, adaptive_kl=False, max_new_tokens=2)
    res = train_ppo(cfg, model, tok, task=TASK, reward_model=starts_with_digit, progress=False)
    scores = [r["score_mean"] for r in res.history]
    assert sum(scores[-2:]) / 2 > sum(scores[:2]) / 2 + 0.2
    assert {"reward_mean", "score_mean", "kl", "beta", "approx_kl", "clipfrac", "value_loss", "entropy",
            "accuracy"} <= set(res.history[0])


def test_learned_reward_model_and_adaptive_beta(lm):
    model, tok = fresh(lm)
    rm = RewardModel.from_causal_lm(model, tok)
    torch.nn.init.normal_(rm.head.weight, std=0.1)
    cfg = small_cfg(steps=2, reward="model", init_kl_coef=0.1, kl_target=1e-6, kl_horizon=10, lr=1e-3)
    res = train_ppo(cfg, model, tok, task=TASK, reward_model=rm, progress=False)
    h = res.history
    assert h[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference at the first rollout
    assert h[0]["next_beta"] < h[0]["beta"]  # KL 0 is below the target: beta shrinks
    assert h[1]["kl"] > 0 and h[1]["next_beta"] > h[1]["beta"]  # KL above the (tiny) target: beta grows
    with pytest.raises(ValueError, match="reward='model'"):
        train_ppo(small_cfg(steps=1), model, tok, task=TASK, reward_model=rm, progress=False)


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_resume_reproduces_the_uninterrupted_run(lm, tmp_path, critic):
    full, resumed = assert_resume_reproduces(
        lambda out, cb: train_ppo(small_cfg(steps=3, critic=critic, out=out), *fresh(lm), task=TASK, progress=False,
                                  callback=cb), tmp_path, crash_after=1)
    for (name, p), q in zip(full.extra["critic"].state_dict().items(), resumed.extra["critic"].state_dict().values()):
        assert torch.equal(p, q), name


def test_non_finite_reward_stops_training(lm):
    model, tok = fresh(lm)
    nan_reward = lambda prompts, completions, answers, finished: torch.full((len(completions),), float("nan"))
    with pytest.raises(NonFiniteLossError, match="scores"):
        train_ppo(small_cfg(steps=1, reward="model"), model, tok, task=TASK, reward_model=nan_reward, progress=False)


@pytest.mark.parametrize("field, value", [("init_kl_coef", -0.1), ("eps", 0.0), ("eps", 1.0), ("eps", 1.5),
                                          ("gamma", 1.5), ("gamma", -0.1), ("lam", 1.01), ("lam", -0.5),
                                          ("reward", "oracle"), ("vf_coef", -1.0), ("entropy_coef", -0.1),
                                          ("value_clip", 0.0), ("ppo_epochs", 0), ("minibatches", 0),
                                          ("kl_target", 0.0), ("lr", 0.0), ("critic_lr", -1e-4),
                                          ("critic", "none")])
def test_bad_config_values_are_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PPOConfig(**{field: value})
