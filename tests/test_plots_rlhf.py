"""Figures of notebooks 07, 08 and 10 (rlcourse.plots.rlhf): plot functions on small synthetic data,
the cheap builders, and properties of the exact data functions. No model is trained here: the
experiment builders (reward model, PPO, DPO/GRPO) are only checked to be registered."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rlcourse import derivations  # noqa: E402

derivations.load_all()  # register the derivations in course order before the plot module imports some

from rlcourse.derivations import kl_estimators as kle  # noqa: E402
from rlcourse.kl import kl_categorical  # noqa: E402
from rlcourse.plots import BUILDERS, load_all  # noqa: E402
from rlcourse.experiments import cache  # noqa: E402
from rlcourse.experiments import rlhf as X  # noqa: E402
from rlcourse.plots import rlhf  # noqa: E402

# cheap builders (toy MDP / tensors only) -> number of axes (twin axes included)
CHEAP = {"07_bradley_terry": 3, "08_kl_estimators": 2, "10_kl_optimum": 2, "10_dpo_ipo": 2}
# builders that train models: registered, but not run in the tests
HEAVY = {"07_reward_model", "08_overoptimization", "08_kl_placement", "10_dpo_vs_rl", "10_dpo_displacement"}


def test_every_figure_of_notebooks_07_08_10_is_registered():
    load_all()
    ours = {n for n in BUILDERS if n[:3] in ("07_", "08_", "10_")}
    assert ours == set(CHEAP) | HEAVY


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_cheap_builders_return_a_small_figure(name):
    load_all()
    fig = BUILDERS[name]()
    try:
        assert isinstance(fig, plt.Figure)
        assert len(fig.axes) == CHEAP[name]
        w, h = fig.get_size_inches()
        assert w <= 10 and h <= 4
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- 07: rule reward, BT

def test_rule_reward_rows_match_the_documented_reward_table():
    rows = {(r["completion"], r["finished"]): r for r in rlhf.rule_reward_rows()}
    assert rows[("19", True)]["reward"] == 1.0
    assert rows[("18", True)]["reward"] == 0.0
    assert rows[("19", False)]["reward"] == 0.5, "right digits but no <eos>: format penalty"
    # the parser exploits the notebook discusses: math-verify accepts them, the format term halves them
    for c in ("12+7", "18 or 19"):
        assert rows[(c, True)]["math_verify"] and rows[(c, True)]["reward"] == 0.5
    assert rows[("19 or 18", True)]["reward"] == -0.5
    # false negatives
    assert not rows[("+19", True)]["math_verify"] and not rows[("nineteen", True)]["math_verify"]
    for r in rows.values():
        assert r["reward"] == (1.0 if r["correct"] else 0.0) - (0.0 if r["well_formed"] else 0.5)


def test_bt_recovery_finds_the_centred_rewards_and_not_the_planted_ones():
    d = rlhf.bt_recovery(n_samples=2000, seed=1)
    assert np.allclose(d["infinite"], d["centred"], atol=1e-8)
    assert abs(d["infinite"].mean()) < 1e-8
    assert np.abs(d["infinite"] - d["planted"]).max() > 0.4, "the planted mean (0.48) is not identified"
    assert np.all(np.abs(d["sampled"] - d["centred"]) <= 4 * d["se"])
    assert np.allclose(d["log_odds"], d["grid"], atol=1e-10), "log-odds = reward difference"


def test_plot_bradley_terry_on_synthetic_data():
    g = np.linspace(-2, 2, 5)
    fig = rlhf.plot_bradley_terry({"grid": g, "log_odds": g, "planted": np.array([1.0, 0.0, 2.0]),
                                   "centred": np.array([0.0, -1.0, 1.0]), "infinite": np.array([0.0, -1.0, 1.0]),
                                   "sampled": np.array([0.1, -0.9, 0.8]), "se": np.array([0.1, 0.1, 0.1]),
                                   "n_samples": 10})
    assert len(fig.axes) == 3
    plt.close(fig)


def test_plot_reward_model_on_synthetic_data():
    history = [{"step": i, "loss": math.log(2) - 0.001 * i, "accuracy": 0.5 + 0.002 * i} for i in range(50)]
    history[24]["held_out_pair_accuracy"] = 0.55
    history[49]["held_out_pair_accuracy"] = 0.6
    rng = np.random.default_rng(0)
    scores = {"centred": {"correct": rng.normal(1, 1, 40).tolist(), "wrong": rng.normal(-1, 1, 60).tolist(),
                          "malformed": [3.0]}, "auc_within": 0.8}  # score_by_kind's lists
    fig = rlhf.plot_reward_model({"a": history, "b": history[:30]}, scores)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].lines) >= 4, "batch and held-out curves per reward model"
    plt.close(fig)


def test_pair_groups_and_accuracy_by_group():
    pairs = [{"prompt": "1+1=", "chosen": "2", "rejected": "3", "answer": "2"},     # correct vs answer + 1
             {"prompt": "1+1=", "chosen": "2", "rejected": "1", "answer": "2"},     # correct vs wrong
             {"prompt": "5+5=", "chosen": "11", "rejected": "14", "answer": "10"}]  # closer vs farther
    groups = X.pair_groups(pairs)
    assert groups["all"] == [0, 1, 2]
    assert groups["correct_vs_plus_one"] == [0]
    assert groups["correct_vs_wrong"] == [0, 1] and groups["closer_vs_farther"] == [2]
    acc = X.pair_accuracy_by_group(torch.tensor([1.0, 0.0, -2.0]), groups)
    assert acc["all"] == pytest.approx(0.5)           # 1 + 1/2 (tie) + 0
    assert acc["correct_vs_wrong"] == pytest.approx(0.75)
    assert acc["closer_vs_farther"] == 0.0


# ----------------------------------------------------------------------------- 08: KL estimators

@pytest.fixture(scope="module")
def kl_course():
    return kle.problem()


def test_kl_estimator_curves_k3_is_nonnegative_and_k1_changes_sign():
    c = rlhf.kl_estimator_curves()
    assert np.all(c["k3"] >= 0) and np.all(c["k2"] >= 0)
    assert c["k1"].min() < 0 < c["k1"].max()
    one = np.argmin(np.abs(c["ratio"] - 1))
    assert abs(c["k1"][one]) < 0.05 and c["k3"][one] < 1e-3


def test_kl_estimator_table_k1_k3_unbiased_k2_biased(kl_course):
    t = rlhf.kl_estimator_table(*kl_course)
    assert abs(t["bias"]["k1"]) < 1e-12 and abs(t["bias"]["k3"]) < 1e-12
    assert abs(t["bias"]["k2"]) > 1e-3
    assert t["negative_mass"]["k3"] == 0.0 and t["negative_mass"]["k1"] > 0
    assert abs(t["p"].sum() - 1) < 1e-12


def test_kl_gradient_directions_match_the_derivation(kl_course):
    rows = {r["estimator"]: r for r in rlhf.kl_gradient_directions(*kl_course)}
    assert rows["k1"]["norm"] < 1e-12 and math.isnan(rows["k1"]["cos_forward"])
    assert rows["k2"]["err_forward"] < 1e-10 and rows["k2"]["cos_forward"] == pytest.approx(1.0)
    assert rows["k3"]["err_reverse"] < 1e-10 and rows["k3"]["cos_reverse"] == pytest.approx(1.0)
    assert rows["k3"]["err_forward"] > 1e-3, "k3's gradient is not that of KL(pi||ref)"


def test_per_prefix_kl_stats_are_unbiased_for_the_full_vocabulary_kl(kl_course):
    mdp, theta, theta_ref = kl_course
    rows = rlhf.per_prefix_kl_stats(mdp, theta, theta_ref)
    assert len(rows) == mdp.num_states and rows[0]["prefix"] == "(empty)"
    full = kl_categorical(mdp.policy_logprobs(theta), mdp.policy_logprobs(theta_ref))
    for r, f in zip(rows, full.tolist()):
        assert r["full_kl"] == pytest.approx(f, abs=1e-12)
        assert r["k1_mean"] == pytest.approx(f, abs=1e-12) and r["k3_mean"] == pytest.approx(f, abs=1e-12)
        assert r["k1_std"] >= 0 and r["k3_std"] >= 0


def test_plot_kl_estimators_on_synthetic_data():
    table = {"p": np.array([0.5, 0.5]), "values": {"k1": np.array([-0.5, 0.9]), "k2": np.array([0.1, 0.4]),
                                                   "k3": np.array([0.1, 0.5])},
             "mean": {"k1": 0.2, "k2": 0.25, "k3": 0.3}, "kl": 0.2}
    fig = rlhf.plot_kl_estimators(rlhf.kl_estimator_curves(np.array([0.5, 1.0, 2.0])), table)
    assert len(fig.axes) == 2
    plt.close(fig)


# ----------------------------------------------------------------------------- 10: optimum, DPO/IPO

def test_kl_optimum_table_interpolates_between_greedy_and_reference():
    t = rlhf.kl_optimum_table(betas=(0.01, 0.5, 100.0))
    assert np.all(np.diff(t["reward"]) <= 0), "sorted by reward"
    for p in t["optimum"].values():
        assert abs(p.sum() - 1) < 1e-12
    assert t["optimum"][0.01][0] > 0.99, "small beta: all mass on the best response"
    assert np.allclose(t["optimum"][100.0], t["ref"], atol=0.05), "large beta: back to the reference"
    for b, j in t["objective"].items():
        assert j == pytest.approx(b * t["log_z"][b], abs=1e-10), "J(pi*) = beta log Z"


def test_dpo_ipo_curves_match_their_closed_forms():
    beta = 0.5
    h = np.array([-2.0, 0.0, 1.0, 3.0])
    c = rlhf.dpo_ipo_curves(beta=beta, h=h)
    assert np.allclose(c["dpo"], np.log1p(np.exp(-beta * h)), atol=1e-12)
    assert np.allclose(c["dpo_grad"], -beta / (1 + np.exp(beta * h)), atol=1e-12)
    assert np.allclose(c["ipo"], (h - 1 / (2 * beta)) ** 2, atol=1e-12)
    assert np.allclose(c["ipo_grad"], 2 * (h - 1 / (2 * beta)), atol=1e-12)
    assert c["dpo"][1] == pytest.approx(math.log(2))


def test_textbook_reward_model_is_a_valid_config_with_its_own_cache_dir():
    from rlcourse.train.reward_model import RewardModelConfig

    cfg = cache.rm_config("tiny", 0, **cache.TEXTBOOK_RM)
    assert isinstance(cfg, RewardModelConfig) and cfg.sft_coef == 0 and cfg.extra_layers == 0
    assert cache.reward_model_start_dir("tiny", 0, cfg) != cache.reward_model_start_dir("tiny", 0)


def test_reward_model_cache_dir_depends_on_the_config():
    a = cache.reward_model_start_dir("tiny", 0)
    b = cache.reward_model_start_dir("tiny", 0, cache.rm_config("tiny", 0, n_prompts=123))
    c = cache.reward_model_start_dir("tiny", 1)
    assert len({a, b, c}) == 3
    assert a == cache.reward_model_start_dir("tiny", 0), "deterministic"
    assert a.name.startswith("rm-tiny-seed0-")


def test_rlhf_experiment_config_is_hashable_and_takes_the_preset_from_the_environment(monkeypatch):
    monkeypatch.setenv("RLCOURSE_PRESET", "small")
    assert X.RewardModelsConfig().preset == "small"
    assert X.RewardModelsConfig("tiny").preset == "tiny"
    assert hash(X.RewardModelsConfig("tiny")) == hash(X.RewardModelsConfig("tiny"))
    with pytest.raises(TypeError, match="cfg must be one of"):
        X.run({"steps": 5})


# ----------------------------------------------------------------------------- 08: the runner's experiments

def _fake_result(name, arms, rows_of, config):
    from rlcourse.experiments.summary import summarize

    rows = [r for seed in range(3) for arm in arms for r in rows_of(arm, seed)]
    return {"name": name, "config": config, "seeds": [0, 1, 2], "curves": rows, "summary": summarize(rows)}


def test_plot_overoptimization_draws_a_synthetic_result_and_refuses_another_experiments():
    cfg = {"betas": [0.1, 1.0], "reward_models": ["weak", "strong"], "budget": {"steps": 4}}
    arms = [f"{rm}_beta{b:g}" for rm in cfg["reward_models"] for b in cfg["betas"]] + ["bon_weak", "bon_strong"]

    def rows_of(arm, seed):
        return [{"arm": arm, "seed": seed, "step": s, "gold": 0.5 - 0.01 * s * s + 0.01 * seed, "score": 0.1 * s,
                 "kl": 0.2 * s, "sqrt_kl": math.sqrt(0.2 * s)} for s in (0, 2, 4)]

    fig = rlhf.plot_overoptimization(_fake_result("overoptimization", arms, rows_of, cfg))
    try:
        assert len(fig.axes) == 4
        assert all(len(ax.lines) + len(ax.containers) > 0 for ax in fig.axes)
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="overoptimization"):
        rlhf.plot_overoptimization(_fake_result("kl_placement", arms, rows_of, cfg))


def test_plot_kl_placement_draws_a_synthetic_result_and_refuses_another_experiments():
    cfg = {"arms": ["reward_k1", "loss_k3", "seq_k2"], "beta": 0.5, "budget": {"steps": 4}}

    def rows_of(arm, seed):
        return [{"arm": arm, "seed": seed, "step": s, "kl": 0.1 * s + 0.01 * seed, "sqrt_kl": 0.0, "gold": 0.4,
                 "accuracy": 0.4} for s in (0, 2, 4)]

    fig = rlhf.plot_kl_placement(_fake_result("kl_placement", cfg["arms"], rows_of, cfg))
    try:
        assert len(fig.axes) == 3 and len(fig.axes[0].lines) == 3 and len(fig.axes[2].patches) == 3
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="kl_placement"):
        rlhf.plot_kl_placement(_fake_result("overoptimization", cfg["arms"], rows_of, cfg))
