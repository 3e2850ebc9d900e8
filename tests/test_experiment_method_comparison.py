"""``method_comparison`` (notebook 10): rows of the quick run, the matched sample budget counted at the
sampler, the exact neighbouring-answer mass against a token-by-token computation, and bad configs."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from conftest import MINI_TASK, fresh
from rlcourse.experiments import runner
from rlcourse.experiments import method_comparison as M
from rlcourse.experiments.method_comparison import MethodComparisonConfig
from rlcourse.lm import Problem, build_model, build_tokenizer

KEYS = {"arm", "seed", "step", "samples", "updates", "seconds", "accuracy", "logp_chosen", "logp_rejected",
        "p_correct", "p_last_digit", "p_other_digit", "p_elsewhere"}


@pytest.fixture(scope="module")
def quick(start, tmp_path_factory):
    """The quick run (2 seeds) on the miniature start and task of conftest, saved in a temporary directory
    (the course's cached start would be trained from scratch in the test's private cache: minutes). What
    these tests check is the bookkeeping and the drawing, not what the model learns."""
    out = tmp_path_factory.mktemp("method_comparison") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M, "sft_start", lambda preset, seed, progress=False: fresh(start))
        mp.setattr(M, "default_task", lambda: MINI_TASK)
        res = runner.run("method_comparison", seeds=2, quick=True, out=out, progress=False)
    return res, out


def test_quick_run_gives_every_arm_and_seed_evenly_spaced_evaluations_on_the_same_sample_budget(quick):
    cfg = MethodComparisonConfig().quick()
    res, out = quick
    rows = res["curves"]
    assert all(set(r) == KEYS for r in rows)
    assert {r["arm"] for r in rows} == set(M.ARMS) and {r["seed"] for r in rows} == {0, 1}
    for arm in M.ARMS:
        every = cfg.steps(arm) // cfg.evals
        for seed in (0, 1):
            curve = [r for r in rows if r["arm"] == arm and r["seed"] == seed]
            assert [r["step"] for r in curve] == [k * every for k in range(cfg.evals + 1)]
            assert curve[0]["samples"] == curve[0]["updates"] == curve[0]["seconds"] == 0
            assert curve[-1]["samples"] == cfg.samples, "every arm draws the same number of samples"
            for key in ("samples", "updates", "seconds"):
                assert all(a[key] <= b[key] for a, b in zip(curve, curve[1:])), f"{key} is cumulative"
            assert all(0 <= r["accuracy"] <= 1 and r["logp_chosen"] <= 0 and r["logp_rejected"] <= 0
                       and min(r[k] for k in M.MASSES) >= -1e-9 and abs(sum(r[k] for k in M.MASSES) - 1) < 1e-9
                       for r in curve)
    # the start and the fixed held-out pairs are shared: every arm and seed measures the same model at step 0
    starts = {tuple(r[k] for k in ("accuracy", "logp_chosen", "logp_rejected") + M.MASSES)
              for r in rows if r["step"] == 0}
    assert len(starts) == 1
    # offline DPO has drawn all its samples before its first update; online DPO draws them round by round
    off = [r["samples"] for r in rows if r["arm"] == "dpo_offline" and r["seed"] == 0]
    on = [r["samples"] for r in rows if r["arm"] == "dpo_online" and r["seed"] == 0]
    assert off[1:] == [cfg.samples] * cfg.evals and on[1] < cfg.samples
    again = runner.run("method_comparison", seeds=2, quick=True, out=out, progress=False)
    assert again["curves"] == rows and set(again["seconds"].values()) == {None}


@pytest.mark.parametrize("plot, n_axes", [("plot_method_comparison", 3), ("plot_dpo_displacement", 4)])
def test_the_figures_draw_the_quick_result_and_refuse_another_experiments(quick, plot, n_axes):
    import matplotlib.pyplot as plt

    from rlcourse.plots import rlhf as figs

    res, _ = quick
    fig = getattr(figs, plot)(res)
    assert len(fig.axes) == n_axes
    assert all(ax.lines or ax.collections for ax in fig.axes), "every panel draws something"
    plt.close(fig)
    other = dict(res, name="grpo_variants")
    with pytest.raises(ValueError, match="method_comparison"):
        getattr(figs, plot)(other)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.mark.parametrize("arm", M.ARMS)
def test_the_samples_a_row_reports_are_the_completions_the_trainer_generated(arm, start, monkeypatch):
    """Counted at the sampler (every generate the trainers call), against the plan's ``samples_after``."""
    import rlcourse.lm as lm
    import rlcourse.lm.pairs as pairs
    import rlcourse.train.ppo as ppo

    base = MethodComparisonConfig()
    cfg = MethodComparisonConfig(samples=64, evals=2, eval_n=4, mass_n=2, pairs_n=8,
                                 dpo=replace(base.dpo, steps=4, batch_size=8, rounds=2),
                                 ppo=replace(base.ppo, prompts_per_step=16), grpo=replace(base.grpo, prompts_per_step=4))
    task = MINI_TASK
    model, tok = fresh(start)
    fixed = M.probe(cfg, model, tok, task)  # before counting: the probe's samples are not training samples
    counts: list[int] = []

    def counting(real):
        def generate(model, tokenizer, prompts, group_size, *a, **k):
            counts.append(len(prompts) * group_size)
            return real(model, tokenizer, prompts, group_size, *a, **k)
        return generate

    for module in (lm, pairs, ppo):
        monkeypatch.setattr(module, "generate", counting(module.generate))
    rows = M.run_arm(cfg, arm, 0, model, tok, task, fixed)
    assert rows[-1]["samples"] == sum(counts) == cfg.samples
    # negative control: an accounting that forgets the group (counts prompts, not completions) is caught
    group = {"dpo_offline": cfg.dpo.group_size, "dpo_online": cfg.dpo.group_size, "ppo": cfg.ppo.group_size,
             "grpo": cfg.grpo.group_size}[arm]
    assert sum(counts) // group != rows[-1]["samples"]


def _mass_token_by_token(model, tok, problem, completions) -> float:
    """Independent computation: one forward pass per prefix (the prompt with its ``<bos>``, no padding), the
    product of the next-token probabilities of the completion's characters and of ``<eos>``."""
    total = 0.0
    for c in completions:
        ids = tok(problem.prompt)["input_ids"]
        logp = 0.0
        for t in tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
            logp += float(torch.log_softmax(logits, -1)[t])
            ids = ids + [t]
        total += math.exp(logp)
    return total


def test_neighbours_are_the_answers_one_digit_away():
    assert M.neighbours("50") == {"last": [f"5{d}" for d in "123456789"],
                                  "other": ["10", "20", "30", "40", "60", "70", "80", "90"]}
    assert M.neighbours(7) == {"last": ["0", "1", "2", "3", "4", "5", "6", "8", "9"], "other": []}
    n = M.neighbours("105")
    assert len(n["last"]) == 9 and len(n["other"]) == 8 + 9 and "5" not in n["other"] and "005" not in n["other"]
    assert all(sum(x != y for x, y in zip(c, "105")) == 1 and len(c) == 3 for c in n["last"] + n["other"])
    for bad in ("-3", "07", "x", " "):
        with pytest.raises(ValueError, match="answer"):
            M.neighbours(bad)


def test_neighbour_mass_is_the_exact_probability_of_the_complete_answers_one_digit_away(tok):
    model = build_model("tiny", len(tok), seed=3, tokenizer=tok).eval()
    problems = [Problem(12, "+", 7), Problem(40, "-", 38), Problem(5, "+", 5)]
    got = M.neighbour_mass(model, tok, problems)
    correct = [_mass_token_by_token(model, tok, p, [p.answer]) for p in problems]
    last = [_mass_token_by_token(model, tok, p, M.neighbours(p.answer)["last"]) for p in problems]
    other = [_mass_token_by_token(model, tok, p, M.neighbours(p.answer)["other"]) for p in problems]
    assert got["p_correct"] == pytest.approx(sum(correct) / 3, rel=1e-4)
    assert got["p_last_digit"] == pytest.approx(sum(last) / 3, rel=1e-4)
    assert got["p_other_digit"] == pytest.approx(sum(other) / 3, rel=1e-4)
    assert sum(got[k] for k in M.MASSES) == pytest.approx(1.0, abs=1e-12) and min(got.values()) >= 0
    # negative controls, each rejected by the same comparison: the answers without <eos> (prefix
    # probabilities, not complete responses); the correct answer counted among its neighbours
    def no_eos(p, cs):
        out = 0.0
        for c in cs:
            ids = tok(p.prompt)["input_ids"]
            lp = 0.0
            for t in tok(c, add_special_tokens=False)["input_ids"]:
                with torch.no_grad():
                    lp += float(torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)[t])
                ids = ids + [t]
            out += math.exp(lp)
        return out

    wrong_no_eos = sum(no_eos(p, M.neighbours(p.answer)["last"]) for p in problems) / 3
    wrong_with_correct = (sum(last) + sum(correct)) / 3
    for wrong in (wrong_no_eos, wrong_with_correct):
        assert wrong != pytest.approx(got["p_last_digit"], rel=1e-4)


def test_neighbour_mass_leaves_the_mode_and_refuses_empty_input(tok):
    model = build_model("tiny", len(tok), seed=1, tokenizer=tok)
    got = M.neighbour_mass(model, tok, [Problem(3, "+", 4)])
    assert set(got) == set(M.MASSES)
    assert model.training, "the model's mode is left as it was"
    with pytest.raises(ValueError, match="problems"):
        M.neighbour_mass(model, tok, [])


_DPO, _GRPO = MethodComparisonConfig().dpo, MethodComparisonConfig().grpo


@pytest.mark.parametrize("changes, field", [
    (lambda: dict(samples=1000), "samples"),                 # not a multiple of the batch shapes
    (lambda: dict(evals=5), "evals"),                        # does not divide the steps
    (lambda: dict(arms=("dpo_offline", "sft")), "arms"),
    (lambda: dict(arms=("ppo", "ppo")), "arms"),
    (lambda: dict(dpo=replace(_DPO, beta=0.0)), "beta"),
    (lambda: dict(dpo=replace(_DPO, lr=float("inf"))), "lr"),
    (lambda: dict(dpo=replace(_DPO, group_size=1)), "group_size"),
    (lambda: dict(dpo=replace(_DPO, steps=50)), "steps=50 is not a multiple of rounds"),
    (lambda: dict(grpo=replace(_GRPO, group_size=1)), "grpo.group_size"),
    (lambda: dict(ppo={"prompts_per_step": 32, "group_size": 2}), "ppo"),
    (lambda: dict(eval_n=0), "eval_n"),
    (lambda: dict(mass_n=True), "mass_n"),
])
def test_config_refuses_bad_fields_by_name(changes, field):
    with pytest.raises(ValueError, match=field):
        MethodComparisonConfig(**changes())


def test_default_and_quick_configs_match_the_budget_and_are_listed_for_notebook_10():
    for cfg in (MethodComparisonConfig(), MethodComparisonConfig().quick()):
        for arm in cfg.arms:
            plan = M.arm_plan(cfg, arm, 0)
            assert plan["samples_after"](cfg.steps(arm)) == cfg.samples
    exps = runner.load_all()
    assert exps["method_comparison"].notebook == "10" and exps["method_comparison"].config is MethodComparisonConfig
