"""``overoptimization`` (notebook 08): the quick run's rows for every arm and seed (with the starts replaced by a
seconds-long miniature, so that no test needs the checkpoint cache), bad configs refused by name, and the two
measurements the figure rests on, on hand-built inputs with negative controls: the exact sequence KL and
best-of-N with its analytic KL."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

import rlcourse.experiments.overoptimization as oo
from rlcourse.experiments import runner
from rlcourse.kl import kl_categorical
from rlcourse.lm import build_model, build_tokenizer, encode_completions
from rlcourse.lm.reward_model import RewardModel
from rlcourse.lm.rollout import position_ids_from_mask

KEYS = {"arm", "seed", "step", "rm", "beta", "gold", "accuracy", "score", "kl", "sqrt_kl"}


@pytest.fixture
def mini_starts(start, monkeypatch):
    """The conftest's seconds-long SFT model as the start, and reward models built from it (random heads)."""
    model, tok = start

    def fake_sft_start(preset, seed, device=None, progress=True, cfg=None, task=None):
        return copy.deepcopy(model), tok

    def fake_rm(preset, name):
        torch.manual_seed({"weak": 0, "strong": 1}[name])
        rm = RewardModel.from_causal_lm(copy.deepcopy(model), tok)
        with torch.no_grad():
            for p in rm.head.parameters():
                p.normal_(0, 0.5)
        return rm.eval(), {}

    monkeypatch.setattr(oo, "sft_start", fake_sft_start)
    monkeypatch.setattr(oo, "load_reward_model", fake_rm)
    return model, tok


def test_quick_run_gives_every_arm_and_seed_its_evaluations(mini_starts, tmp_path):
    cfg = oo.OveroptimizationConfig().quick()
    res = runner.run("overoptimization", seeds=2, quick=True, out=tmp_path / "run", progress=False)
    rows = res["curves"]
    assert all(set(r) == KEYS for r in rows)
    assert {r["arm"] for r in rows} == set(cfg.arms())
    every = cfg.evaluation.every
    ppo_steps = [0] + list(range(every, cfg.budget.steps + 1, every))
    bon_steps = [2 ** k for k in range(int(math.log2(cfg.bon_max)) + 1)]
    for arm in cfg.arms():
        for seed in (0, 1):
            c = [r for r in rows if r["arm"] == arm and r["seed"] == seed]
            assert [r["step"] for r in c] == (bon_steps if arm.startswith("bon_") else ppo_steps)
            assert all(0 <= r["accuracy"] <= 1 and r["kl"] >= 0 and r["sqrt_kl"] == pytest.approx(math.sqrt(r["kl"]))
                       for r in c)
            if arm.startswith("bon_"):
                assert [r["kl"] for r in c] == [oo.bon_kl(n) for n in bon_steps] and c[0]["beta"] is None
            else:
                assert c[0]["kl"] == 0.0  # the policy is the reference before the first update
                assert {r["beta"] for r in c} == {float(arm.split("_beta")[1])}
    again = runner.run("overoptimization", seeds=2, quick=True, out=tmp_path / "run", progress=False)
    assert again["curves"] == rows


def test_config_refuses_bad_fields_by_name():
    budget, evaluation = oo.OveroptimizationConfig().budget, oo.OveroptimizationConfig().evaluation
    for make, name in ((lambda: dict(betas=()), "betas"), (lambda: dict(betas=(0.1, -1.0)), "betas"),
                       (lambda: dict(betas=(0.1, 0.1)), "betas"),
                       (lambda: dict(reward_models=("weak", "gold")), "reward_models"),
                       (lambda: dict(budget=replace(budget, steps=0)), "steps"),
                       (lambda: dict(budget=replace(budget, steps=1)), "evaluation.every"),
                       (lambda: dict(bon_max=48), "bon_max"),
                       (lambda: dict(budget=replace(budget, lr=float("nan"))), "lr"),
                       (lambda: dict(evaluation=replace(evaluation, samples=True)), "samples"),
                       (lambda: dict(evaluation=replace(evaluation, samples=None)), "evaluation.samples")):
        with pytest.raises(ValueError, match=name):
            oo.OveroptimizationConfig(**make())


@pytest.fixture(scope="module")
def two_models():
    tok = build_tokenizer()
    return (build_model("tiny", len(tok), seed=0, tokenizer=tok), build_model("tiny", len(tok), seed=1, tokenizer=tok),
            tok)


def _batch(tok):
    return encode_completions(tok, ["1+2=", "13+4=", "5+5="], ["3", "17", "1x0"], finished=[True, True, False])


def test_sequence_kl_is_the_exact_per_token_kl_summed_over_the_response(two_models):
    p, q, tok = two_models
    b = _batch(tok)
    got = oo.sequence_kl(p, q, b.input_ids, b.attention_mask, b.response_mask)
    # by hand: one full forward pass each, the positions that predict each response token
    T = b.response_mask.shape[1]
    kw = dict(input_ids=b.input_ids, attention_mask=b.attention_mask,
              position_ids=position_ids_from_mask(b.attention_mask))
    with torch.no_grad():
        lp = torch.log_softmax(p(**kw).logits.double(), -1)[:, -(T + 1):-1]
        lq = torch.log_softmax(q(**kw).logits.double(), -1)[:, -(T + 1):-1]
    expected = (kl_categorical(lp, lq) * b.response_mask).sum(-1)
    assert torch.allclose(got, expected, atol=1e-9)
    assert bool((got > 0).all())
    assert torch.equal(oo.sequence_kl(p, copy.deepcopy(p), b.input_ids, b.attention_mask, b.response_mask),
                       torch.zeros(3, dtype=torch.float64))
    # negative controls: the positions off by one, and the reverse direction, give other numbers
    shifted = (kl_categorical(torch.log_softmax(p(**kw).logits.double(), -1)[:, -T:],
                              torch.log_softmax(q(**kw).logits.double(), -1)[:, -T:]) * b.response_mask).sum(-1)
    assert (shifted - got).abs().max() > 1e-3
    assert (oo.sequence_kl(q, p, b.input_ids, b.attention_mask, b.response_mask) - got).abs().max() > 1e-4


def test_bon_kl_is_log_n_minus_n_minus_one_over_n():
    assert oo.bon_kl(1) == 0.0
    assert oo.bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert oo.bon_kl(64) == pytest.approx(math.log(64) - 63 / 64)
    assert abs(oo.bon_kl(8) - math.log(8)) > 0.8  # negative control: the naive log N overstates it
    with pytest.raises(ValueError, match="n must be"):
        oo.bon_kl(0)


def test_best_of_n_keeps_the_best_scored_sample_of_each_block():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2], [1.0, 0.0, 0.3, 0.4]], dtype=torch.float64)
    gold = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    rows = oo.best_of_n_rows(scores, gold, [1, 2, 4])
    assert [r["step"] for r in rows] == [1, 2, 4]
    assert rows[0]["gold"] == pytest.approx(gold.mean().item())  # N = 1: every sample
    # N = 2: blocks (0.1, 0.9) -> gold 0, (0.5, 0.2) -> 1, (1.0, 0.0) -> 0, (0.3, 0.4) -> 1
    assert rows[1]["gold"] == pytest.approx(0.5) and rows[1]["score"] == pytest.approx((0.9 + 0.5 + 1.0 + 0.4) / 4)
    assert rows[2]["gold"] == pytest.approx(0.0) and rows[2]["kl"] == oo.bon_kl(4)
    # a perfect reward model raises the gold reward with N; negative control: an inverted one lowers it
    g = torch.bernoulli(torch.full((50, 16), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    up = [r["gold"] for r in oo.best_of_n_rows(g, g, [1, 2, 4, 8, 16])]
    down = [r["gold"] for r in oo.best_of_n_rows(-g, g, [1, 2, 4, 8, 16])]
    assert up == sorted(up) and up[-1] > up[0] + 0.3
    assert down == sorted(down, reverse=True) and down[-1] < down[0] - 0.3
    with pytest.raises(ValueError, match="dividing K=4"):
        oo.best_of_n_rows(scores, gold, [3])
    with pytest.raises(ValueError, match="same shape"):
        oo.best_of_n_rows(scores, gold[:, :2], [1])


def test_overoptimization_is_listed_for_notebook_08():
    assert runner.load_all()["overoptimization"].notebook == "08"
