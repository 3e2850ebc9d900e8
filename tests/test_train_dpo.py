"""DPO / IPO: log 2 at the start, the loss falls, reference log-probs computed once, resuming, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_resume_reproduces
from rlcourse.lm import ArithmeticTask, build_model, build_tokenizer
from rlcourse.train import dpo as dpo_module
from rlcourse.train.common import NonFiniteLossError
from rlcourse.lm.pairs import pair_logprobs
from rlcourse.train.dpo import DPOConfig, add_reference_logprobs, train_dpo

TASK = ArithmeticTask(digits=2, ops="+-")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def fresh(tok):
    return build_model("tiny", len(tok), seed=0, tokenizer=tok)


def pairs_of(n: int, seed: int = 0) -> list[dict]:
    """Chosen: the right answer; rejected: the answer plus one (the SFT start's typical mistake)."""
    return [{"prompt": p.prompt, "chosen": p.answer, "rejected": str(int(p.answer) + 1), "answer": p.answer}
            for p in TASK.sample(n, "train", seed=seed)]


PAIRS = pairs_of(48)


def small_cfg(**kw) -> DPOConfig:
    base = dict(steps=10, lr=1e-3, batch_size=16, warmup_steps=0, min_lr_ratio=1.0, eval_n=4, checkpoint_every=1)
    base.update(kw)
    return DPOConfig(**base)


def test_loss_is_log2_when_policy_equals_reference_then_falls(tok):
    res = train_dpo(small_cfg(steps=12), fresh(tok), tok, task=TASK, pairs=PAIRS, progress=False)
    h = res.history
    assert h[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert h[0]["chosen_reward"] == 0.0 and h[0]["rejected_reward"] == 0.0 and h[0]["margin"] == 0.0
    assert sum(r["loss"] for r in h[-3:]) / 3 < math.log(2) - 0.05
    assert h[-1]["margin"] > 0 and h[-1]["reward_accuracy"] > 0.8
    assert res.extra["n_pairs"] == [len(PAIRS)]


def test_ipo_starts_at_its_target_gap_squared_and_falls(tok):
    beta = 0.5
    res = train_dpo(small_cfg(steps=12, loss_type="ipo", beta=beta), fresh(tok), tok, task=TASK, pairs=PAIRS,
                    progress=False)
    h = res.history
    assert h[0]["loss"] == pytest.approx((1 / (2 * beta)) ** 2, abs=1e-6)  # h = 0: (0 - 1/(2 beta))^2
    assert h[-1]["loss"] < h[0]["loss"] * 0.7


def test_rpo_adds_the_nll_of_the_chosen_responses(tok):
    model = fresh(tok)
    with torch.no_grad():
        c, _, (len_c, _) = pair_logprobs(model, tok, PAIRS, "cpu", return_lengths=True)
    res = train_dpo(small_cfg(steps=1, batch_size=len(PAIRS), rpo_alpha=0.5), model, tok, task=TASK, pairs=PAIRS,
                    progress=False)
    row = res.history[0]
    assert row["pref_loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert row["loss"] == pytest.approx(math.log(2) + 0.5 * float(-c.sum() / len_c.sum()), abs=1e-5)


def test_reference_logprobs_are_computed_once_and_match_the_start(tok, monkeypatch):
    model = fresh(tok)
    with torch.no_grad():
        c, r = pair_logprobs(model, tok, PAIRS[:5], "cpu")
    scored = add_reference_logprobs(model, tok, PAIRS[:5], "cpu")
    assert torch.allclose(torch.tensor([p["ref_chosen"] for p in scored]), c, atol=1e-5)
    assert torch.allclose(torch.tensor([p["ref_rejected"] for p in scored]), r, atol=1e-5)
    calls = []
    real = dpo_module.add_reference_logprobs
    monkeypatch.setattr(dpo_module, "add_reference_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    train_dpo(small_cfg(steps=3), model, tok, task=TASK, pairs=PAIRS, progress=False)
    assert len(calls) == 1  # offline DPO: once, before training


def test_resume_reproduces_the_uninterrupted_run(tok, tmp_path):
    assert_resume_reproduces(lambda out, cb: train_dpo(small_cfg(steps=4, out=out), fresh(tok), tok, task=TASK,
                                                       pairs=PAIRS, progress=False, callback=cb), tmp_path)


def test_iterative_dpo_samples_fresh_pairs_each_round(tok, monkeypatch):
    drawn = []

    def fake_sample_pairs(cfg, model, tokenizer, task, round_):
        drawn.append(round_)
        return pairs_of(32, seed=100 + round_)

    monkeypatch.setattr(dpo_module, "sample_pairs", fake_sample_pairs)
    res = train_dpo(small_cfg(steps=4, rounds=2), fresh(tok), tok, task=TASK, progress=False)
    assert drawn == [0, 1] and res.extra["n_pairs"] == [32, 32]
    assert [r["round"] for r in res.history] == [0.0, 0.0, 1.0, 1.0]


def test_non_finite_loss_stops_training(tok, monkeypatch):
    real = dpo_module.dpo_loss

    def nan_loss(*a, **k):
        loss, c, r = real(*a, **k)
        return loss * float("nan"), c, r

    monkeypatch.setattr(dpo_module, "dpo_loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match="dpo loss"):
        train_dpo(small_cfg(steps=2), fresh(tok), tok, task=TASK, pairs=PAIRS, progress=False)


@pytest.mark.parametrize("field, value", [("beta", -0.1), ("beta", 0.0), ("loss_type", "hinge"),
                                          ("loss_type", "kto"), ("label_smoothing", 0.5),
                                          ("label_smoothing", -0.1), ("lr", -1.0), ("steps", -3),
                                          ("batch_size", 0), ("group_size", 1), ("rounds", 0),
                                          ("rpo_alpha", -1.0)])
def test_bad_config_values_are_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DPOConfig(**{field: value})
