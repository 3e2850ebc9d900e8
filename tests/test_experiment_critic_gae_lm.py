"""``critic_gae_lm`` (notebook 05): the quick run's rows, the config's refusals, and the measurement — GAE(λ)
against a Monte Carlo reference with its noise subtracted — on hand-built inputs, with wrong GAEs rejected."""

from __future__ import annotations

import pytest
import torch
from conftest import MINI_TASK

from rlcourse.experiments import critic_gae_lm as M
from rlcourse.experiments import runner
from rlcourse.experiments.budget import Evaluation
from rlcourse.experiments.critic_gae_lm import CriticGAELMConfig, advantage_errors, critic_error, end_rewards
from rlcourse.lm import generate


# -- the quick run ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The quick config over 2 seeds with its own cache (the quick chain SFT start)."""
    root = tmp_path_factory.mktemp("critic_gae_lm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLCOURSE_CACHE", str(root / "cache"))
        res = runner.run("critic_gae_lm", seeds=2, quick=True, out=root / "run", progress=False)
    return res


def test_critic_gae_lm_quick_run_has_every_arm_and_seed_at_every_measurement(quick_run):
    cfg = CriticGAELMConfig().quick()
    rows = quick_run["curves"]
    every = cfg.evaluation.every
    steps = [0] + list(range(every, cfg.steps + 1, every))
    arms = {f"lam={lam:.2f}" for lam in cfg.lambdas}
    assert {r["arm"] for r in rows} == arms | {"critic"}
    for seed in (0, 1):
        for arm in arms:
            curve = [r for r in rows if r["arm"] == arm and r["seed"] == seed]
            assert [r["step"] for r in curve] == steps
            assert all(set(r) == {"arm", "seed", "step", "adv_mse", "adv_mse_raw"} for r in curve)
            assert all(r["adv_mse_raw"] >= 0 for r in curve)
        critic = [r for r in rows if r["arm"] == "critic" and r["seed"] == seed]
        assert [r["step"] for r in critic] == steps
        for r in critic:
            assert r["best_lambda"] in cfg.lambdas and r["critic_rmse"] >= 0 and r["ref_noise"] >= 0
            assert r["const_rmse"] >= 0 and r["critic_rmse_raw"] >= r["critic_rmse"]
            # the corrected error is the raw one minus the same noise for every λ
            lam_rows = [x for x in rows if x["seed"] == seed and x["step"] == r["step"] and x["arm"] in arms]
            assert all(x["adv_mse_raw"] - x["adv_mse"] == pytest.approx(r["ref_noise"]) for x in lam_rows)
            assert r["best_lambda"] == float(min(lam_rows, key=lambda x: x["adv_mse"])["arm"][4:])
        assert "value_loss" not in critic[0] and all(r["value_loss"] > 0 for r in critic[1:])
        # the critic starts at 0 (PPO's zero head): its raw error is the RMS of the MC values
        assert critic[0]["critic_rmse_raw"] > 0


def test_plot_critic_gae_draws_the_lm_result_and_refuses_another_experiments(quick_run):
    import matplotlib.pyplot as plt

    from rlcourse.plots.experiments import plot_critic_gae

    fig = plot_critic_gae(quick_run)
    assert len(fig.axes) == 4 and "chain-task" in fig._suptitle.get_text()
    assert len(fig.axes[0].lines) == len(CriticGAELMConfig().quick().lambdas)
    plt.close(fig)
    with pytest.raises(ValueError, match="critic_gae"):
        plot_critic_gae({**quick_run, "name": "ppo_toy"})


# -- the config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, match", [
    ("lambdas", (0.5, 1.2), "lambdas"), ("lambdas", (), "lambdas"), ("critic_lambda", -0.1, "critic_lambda"),
    ("mc_samples", 1, "mc_samples"), ("steps", 0, "steps"), ("critic_lr", 0.0, "critic_lr"),
    ("value_clip", -0.2, "value_clip"), ("temperature", float("nan"), "temperature"),
    ("evaluation", Evaluation(every=700, prompts=64, samples=1), "evaluation.every"),
    ("evaluation", Evaluation(every=40, prompts=64), "evaluation.samples"),
    ("evaluation", {"every": 40}, "evaluation")])
def test_critic_gae_lm_config_refuses_bad_fields_by_name(field, value, match):
    with pytest.raises(ValueError, match=match):
        CriticGAELMConfig(**{field: value})


# -- the measurement on hand-built inputs ---------------------------------------------------------

def _hand_errors(critic, rewards, v_mc, var, lengths, lam, gamma):
    """The per-token MSE by the closed form A_t = Σ_l (γλ)^l δ_{t+l}, written out with loops."""
    sq, noise, n = 0.0, 0.0, 0
    for i, T in enumerate(lengths):
        def nxt(v, t):
            return v[i][t + 1] if t + 1 < T else 0.0
        deltas = [rewards[i][t] + gamma * nxt(critic, t) - critic[i][t] for t in range(T)]
        for t in range(T):
            adv = sum((gamma * lam) ** (u - t) * deltas[u] for u in range(t, T))
            ref = rewards[i][t] + gamma * nxt(v_mc, t) - v_mc[i][t]
            sq += (adv - ref) ** 2
            noise += var[i][t] + gamma ** 2 * nxt(var, t)
            n += 1
    return sq / n, noise / n


def _hand_case():
    lengths = [3, 2]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float32)
    rewards = end_rewards(torch.tensor([1.0, 0.0]), mask)
    v_mc = torch.tensor([[0.5, 0.75, 0.25], [0.5, 0.25, 0.0]])
    var = torch.tensor([[0.01, 0.02, 0.03], [0.04, 0.05, 0.0]])
    critic = torch.tensor([[0.3, 0.6, 0.9], [0.2, 0.1, 0.0]])
    return lengths, mask, rewards, v_mc, var, critic


def test_end_rewards_put_the_score_on_each_rows_last_token():
    _, mask, rewards, *_ = _hand_case()
    assert torch.equal(rewards, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    r = end_rewards(torch.tensor([0.5, 2.0]), mask)
    assert torch.equal(r, torch.tensor([[0.0, 0.0, 0.5], [0.0, 2.0, 0.0]]))


def _matches_hand(gamma, lambdas=(0.0, 0.5, 1.0)):
    lengths, mask, rewards, v_mc, var, critic = _hand_case()
    ref = {"rewards": rewards, "values": v_mc * mask, "value_var": var * mask}
    got = advantage_errors(critic * mask, ref, mask, lambdas, gamma=gamma)
    ok = True
    for lam, raw, corr in zip(lambdas, got["raw"], got["corrected"]):
        want, noise = _hand_errors(critic.tolist(), rewards.tolist(), v_mc.tolist(), var.tolist(), lengths, lam,
                                   gamma)
        ok &= raw == pytest.approx(want, abs=1e-6) and corr == pytest.approx(want - noise, abs=1e-6)
        ok &= got["noise"] == pytest.approx(noise, abs=1e-7)
    return ok


def test_advantage_errors_equal_the_closed_form_by_hand():
    assert _matches_hand(gamma=1.0) and _matches_hand(gamma=0.9)


def _gae_gamma_lam_swapped(rewards, values, mask, gamma=1.0, lam=0.95):
    from rlcourse.advantages import gae

    return gae(rewards, values, mask, gamma=lam, lam=gamma)


def _gae_off_by_one(rewards, values, mask, gamma=1.0, lam=0.95):
    """A_t = δ_t + γλ δ_{t+1} + ... started one token late (A_t from δ_{t+1} on, the last token's own δ)."""
    from rlcourse.advantages import gae

    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    shifted = torch.zeros_like(adv)
    shifted[:, :-1] = adv[:, 1:]
    last = mask.sum(-1).long() - 1
    rows = torch.arange(adv.shape[0])
    shifted[rows, last] = adv[rows, last]
    return shifted * mask, ret


@pytest.mark.parametrize("wrong", [_gae_gamma_lam_swapped, _gae_off_by_one])
def test_a_wrong_gae_in_the_measurement_is_rejected_by_the_hand_check(monkeypatch, wrong):
    """Negative control: the hand check fails when the measurement's GAE swaps γ and λ or is off by one token."""
    monkeypatch.setattr(M, "gae", wrong)
    assert not _matches_hand(gamma=0.9, lambdas=(0.5,))


def _synthetic_reference(n=3000, T=6, k=8, seed=0):
    """True values V(s_t) of right-padded responses, the terminal reward drawn from V(s_{T-1}), and MC
    estimates from k independent Bernoulli draws per state (the variance of the mean estimated unbiasedly)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    v_true = (0.1 + 0.8 * torch.rand(n, T, generator=g)) * mask
    last = lengths - 1
    rows = torch.arange(n)
    score = torch.bernoulli(v_true[rows, last], generator=g)
    draws = torch.bernoulli(v_true[:, :, None].expand(n, T, k).contiguous(), generator=g)
    ref = {"rewards": end_rewards(score, mask), "values": draws.mean(-1) * mask,
           "value_var": draws.var(-1, unbiased=True) / k * mask}
    return mask, v_true, ref


def test_with_the_true_values_as_critic_lambda0_error_is_only_the_reference_noise():
    """Critic = V^π exactly: GAE(0) is the true advantage, so its raw error against the MC reference is the
    reference's noise (estimated by ν) and the corrected error is 0 up to sampling; λ = 1 keeps the return's
    noise. The critic's corrected RMSE is near 0 while its raw RMSE is the MC estimate's own spread."""
    mask, v_true, ref = _synthetic_reference()
    err = advantage_errors(v_true, ref, mask, (0.0, 1.0))
    raw0, raw1 = err["raw"]
    assert err["noise"] > 0.01
    assert raw0 == pytest.approx(err["noise"], rel=0.05)
    assert abs(err["corrected"][0]) < 0.05 * err["noise"]
    assert err["corrected"][1] > 10 * abs(err["corrected"][0])  # the return's own noise at λ = 1
    ce = critic_error(v_true, ref, mask)
    assert ce["rmse_raw"] == pytest.approx(ce["noise"] ** 0.5, rel=0.05)
    assert ce["rmse"] < 0.3 * ce["rmse_raw"]
    # a critic off by 0.2 everywhere has a corrected RMSE near 0.2 (the noise removed, not the error)
    assert critic_error((v_true + 0.2) * mask, ref, mask)["rmse"] == pytest.approx(0.2, abs=0.01)
    # the best constant critic's error is the spread of the true values (about 0.8 / sqrt(12) here)
    spread = float((((v_true - (v_true * mask).sum() / mask.sum()) * mask) ** 2).sum() / mask.sum()) ** 0.5
    assert ce["const_rmse"] == pytest.approx(spread, rel=0.05)


# -- the Monte Carlo reference on the miniature model ----------------------------------------------

def test_mc_reference_gives_bernoulli_means_and_their_variance_on_the_response_tokens(start):
    model, tok = start
    problems = MINI_TASK.sample(6, "train", seed=3)
    ro = generate(model, tok, [p.prompt for p in problems], 1, 6, generator=torch.Generator().manual_seed(0))
    answers = [p.answer for p in problems]
    k = 5
    ref = M.mc_reference(model, tok, MINI_TASK, ro, answers, k, 6, 1.0, torch.Generator().manual_seed(1))
    mask = ro.response_mask
    assert ref["values"].shape == mask.shape
    off = ~mask.bool()
    assert torch.all(ref["values"][off] == 0) and torch.all(ref["value_var"][off] == 0)
    p = ref["values"][mask.bool()]
    # rewards are 0/1: each value is a multiple of 1/k and its variance of the mean is p(1-p)/(k-1)
    assert torch.allclose(p * k, (p * k).round(), atol=1e-5)
    assert torch.allclose(ref["value_var"][mask.bool()], p * (1 - p) / (k - 1), atol=1e-6)
    scores = MINI_TASK.batch_rewards(ro.completions, answers, ro.finished)
    assert torch.equal(ref["rewards"], end_rewards(scores, mask))
    # the same generator seed gives the same reference
    again = M.mc_reference(model, tok, MINI_TASK, ro, answers, k, 6, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(again["values"], ref["values"])
    with pytest.raises(ValueError, match="k"):
        M.mc_reference(model, tok, MINI_TASK, ro, answers, 1, 6, 1.0, torch.Generator().manual_seed(1))
