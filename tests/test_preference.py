"""Bradley-Terry, the KL-regularised optimum and the DPO family."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlcourse.kl import kl_categorical
from rlcourse.preference import (
    bradley_terry_loss,
    bradley_terry_probability,
    dpo_loss,
    implicit_reward,
    kl_regularized_objective,
    kl_regularized_optimum,
)

D = torch.float64


def _logps(seed=0, B=6):
    g = torch.Generator().manual_seed(seed)
    return [-torch.rand(B, generator=g, dtype=D) * 20 - 1 for _ in range(4)]


# ----------------------------------------------------------------------------- Bradley-Terry

def test_bradley_terry_probability_is_sigmoid_of_reward_difference():
    rc = torch.tensor([0.0, 1.0, -2.0, 5.0], dtype=D)
    rr = torch.tensor([0.0, 0.0, 1.0, 5.0], dtype=D)
    p = bradley_terry_probability(rc, rr)
    assert torch.allclose(p, torch.sigmoid(rc - rr))
    assert torch.allclose(p, rc.exp() / (rc.exp() + rr.exp()))
    assert torch.allclose(bradley_terry_probability(rc + 7.0, rr + 7.0), p)  # only differences matter
    assert torch.allclose(torch.logit(p), rc - rr)  # the log-odds are the reward difference


def test_bradley_terry_loss_is_mean_negative_log_probability_and_margin_shifts_it():
    rc = torch.tensor([2.0, 0.5, -1.0], dtype=D)
    rr = torch.tensor([1.0, 0.5, 0.0], dtype=D)
    loss = bradley_terry_loss(rc, rr)
    assert torch.allclose(loss, -bradley_terry_probability(rc, rr).log().mean())
    assert math.isclose(float(bradley_terry_loss(rc[1:2], rr[1:2])), math.log(2))
    margin = torch.tensor([1.0, 0.0, 0.5], dtype=D)
    assert torch.allclose(bradley_terry_loss(rc, rr, margin), -F.logsigmoid(rc - rr - margin).mean())
    assert torch.allclose(bradley_terry_loss(rc, rr, margin=1.0), bradley_terry_loss(rc - 1.0, rr))


# ----------------------------------------------------------------------------- DPO family

def test_implicit_reward_is_beta_times_log_ratio():
    logp, logp_ref = torch.tensor([-3.0, -1.0], dtype=D), torch.tensor([-2.0, -1.5], dtype=D)
    assert torch.allclose(implicit_reward(logp, logp_ref, 0.5), torch.tensor([-0.5, 0.25], dtype=D))


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
def test_dpo_loss_is_log_two_when_policy_equals_reference(beta):
    pc, pr, _, _ = _logps()
    loss, rc, rr = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=beta)
    assert math.isclose(float(loss), math.log(2), rel_tol=1e-12)
    assert torch.equal(rc, torch.zeros_like(rc)) and torch.equal(rr, torch.zeros_like(rr))


def test_dpo_sigmoid_is_bradley_terry_loss_on_implicit_rewards():
    pc, pr, fc, fr = _logps(seed=1)
    beta = 0.2
    loss, rc, rr = dpo_loss(pc, pr, fc, fr, beta=beta)
    assert torch.allclose(rc, implicit_reward(pc, fc, beta)) and torch.allclose(rr, implicit_reward(pr, fr, beta))
    assert torch.allclose(loss, bradley_terry_loss(rc, rr))


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr, fc, fr = _logps(seed=2)
    pc, pr = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
    dpo_loss(pc, pr, fc, fr, beta=0.1)[0].backward()
    assert bool((pc.grad < 0).all()) and bool((pr.grad > 0).all())  # descent raises chosen, lowers rejected


def test_ipo_and_hinge_formulas():
    pc, pr, fc, fr = _logps(seed=3)
    h = (pc - fc) - (pr - fr)
    beta = 0.25
    ipo, _, _ = dpo_loss(pc, pr, fc, fr, beta=beta, loss_type="ipo")
    assert torch.allclose(ipo, ((h - 1 / (2 * beta)) ** 2).mean())
    hinge, _, _ = dpo_loss(pc, pr, fc, fr, beta=beta, loss_type="hinge")
    assert torch.allclose(hinge, torch.clamp(1 - beta * h, min=0).mean())
    # at policy == reference: IPO = (1 / 2beta)^2, hinge = 1
    same = dpo_loss(pc, pr, pc, pr, beta=beta, loss_type="ipo")[0]
    assert math.isclose(float(same), (1 / (2 * beta)) ** 2)
    assert math.isclose(float(dpo_loss(pc, pr, pc, pr, beta=beta, loss_type="hinge")[0]), 1.0)


def test_ipo_minimum_is_at_margin_one_over_two_beta_and_hinge_is_flat_beyond_one_over_beta():
    beta = 0.5
    z = torch.zeros(1, dtype=D)
    for h, ipo_expected, hinge_expected in ((1.0, 0.0, 0.5), (2.0, 1.0, 0.0), (5.0, 16.0, 0.0)):
        pc = torch.tensor([h], dtype=D)
        assert math.isclose(float(dpo_loss(pc, z, z, z, beta=beta, loss_type="ipo")[0]), ipo_expected)
        assert math.isclose(float(dpo_loss(pc, z, z, z, beta=beta, loss_type="hinge")[0]), hinge_expected)


def test_label_smoothing_mixes_the_two_labels_and_moves_the_optimum_to_a_finite_margin():
    pc, pr, fc, fr = _logps(seed=4)
    beta, eps = 0.1, 0.1
    h = (pc - fc) - (pr - fr)
    loss, _, _ = dpo_loss(pc, pr, fc, fr, beta=beta, label_smoothing=eps)
    expected = (-(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)).mean()
    assert torch.allclose(loss, expected)
    # with smoothing the loss is minimised where sigma(beta h) = 1 - eps, i.e. h* = logit(1 - eps) / beta
    h_star = math.log((1 - eps) / eps) / beta
    x = torch.tensor([h_star], dtype=D, requires_grad=True)
    z = torch.zeros(1, dtype=D)
    dpo_loss(x, z, z, z, beta=beta, label_smoothing=eps)[0].backward()
    assert abs(float(x.grad)) < 1e-12
    # without smoothing the gradient never vanishes: the margin is pushed to infinity
    y = torch.tensor([h_star], dtype=D, requires_grad=True)
    dpo_loss(y, z, z, z, beta=beta)[0].backward()
    assert float(y.grad) < -1e-3


def test_robust_dpo_is_unbiased_under_label_flips():
    # flipping each label with probability eps, the expected robust loss is the clean DPO loss
    pc, pr, fc, fr = _logps(seed=5)
    beta, eps = 0.1, 0.2
    robust = lambda a, b, c, d: dpo_loss(a, b, c, d, beta=beta, loss_type="robust", label_smoothing=eps)[0]  # noqa
    expected_noisy = (1 - eps) * robust(pc, pr, fc, fr) + eps * robust(pr, pc, fr, fc)
    clean = dpo_loss(pc, pr, fc, fr, beta=beta)[0]
    assert torch.allclose(expected_noisy, clean, rtol=1e-12)
    assert torch.allclose(dpo_loss(pc, pr, fc, fr, beta=beta, loss_type="robust")[0], clean)


# ----------------------------------------------------------------------------- KL-regularised optimum

def _categorical(seed=0, shape=(3, 6)):
    g = torch.Generator().manual_seed(seed)
    ref = torch.log_softmax(torch.randn(*shape, generator=g, dtype=D), -1)
    r = torch.randn(*shape, generator=g, dtype=D)
    return ref, r


def test_kl_regularized_optimum_is_normalised_and_proportional_to_ref_times_exp_r_over_beta():
    ref, r = _categorical()
    beta = 0.7
    opt = kl_regularized_optimum(ref, r, beta)
    assert torch.allclose(torch.logsumexp(opt, -1), torch.zeros(3, dtype=D), atol=1e-12)
    unnorm = ref.exp() * (r / beta).exp()
    assert torch.allclose(opt.exp(), unnorm / unnorm.sum(-1, keepdim=True), rtol=1e-12)


def test_kl_regularized_optimum_maximises_the_objective_against_random_perturbations():
    ref, r = _categorical(seed=1)
    beta = 0.5
    opt = kl_regularized_optimum(ref, r, beta)
    best = kl_regularized_objective(opt, ref, r, beta)
    g = torch.Generator().manual_seed(2)
    for scale in (1e-3, 1e-1, 1.0, 5.0):
        for _ in range(50):
            other = torch.log_softmax(opt + scale * torch.randn(opt.shape, generator=g, dtype=D), -1)
            assert bool((kl_regularized_objective(other, ref, r, beta) <= best + 1e-12).all())
    # the maximum value is beta log Z, and the gap is exactly beta KL(pi || pi*)
    log_z = torch.logsumexp(ref + r / beta, -1)
    assert torch.allclose(best, beta * log_z, rtol=1e-12)
    other = torch.log_softmax(torch.randn(opt.shape, generator=g, dtype=D), -1)
    gap = best - kl_regularized_objective(other, ref, r, beta)
    assert torch.allclose(gap, beta * kl_categorical(other, opt), rtol=1e-10)


def test_kl_regularized_optimum_limits_ref_for_large_beta_and_argmax_for_small_beta():
    ref, r = _categorical(seed=3)
    assert torch.allclose(kl_regularized_optimum(ref, r, 1e6), ref, atol=1e-5)
    sharp = kl_regularized_optimum(ref, r, 1e-3).exp()
    assert torch.equal(sharp.argmax(-1), r.argmax(-1)) and bool((sharp.max(-1).values > 0.999).all())


def test_implicit_reward_of_optimum_recovers_reward_up_to_beta_log_z():
    ref, r = _categorical(seed=4, shape=(8,))
    beta = 0.3
    opt = kl_regularized_optimum(ref, r, beta)
    recovered = implicit_reward(opt, ref, beta)
    shift = recovered - r
    assert torch.allclose(shift, torch.full_like(shift, -beta * float(torch.logsumexp(ref + r / beta, -1))))
    # so Bradley-Terry probabilities computed from implicit rewards equal those from r (log Z cancels)
    i, j = torch.arange(8), torch.arange(8).roll(1)
    assert torch.allclose(bradley_terry_probability(recovered[i], recovered[j]), bradley_terry_probability(r[i], r[j]))


def test_objective_with_beta_zero_is_expected_reward():
    ref, r = _categorical(seed=5)
    logp = torch.log_softmax(torch.randn(3, 6, dtype=D), -1)
    assert torch.allclose(kl_regularized_objective(logp, ref, r, 0.0), (logp.exp() * r).sum(-1))


# ----------------------------------------------------------------------------- bad inputs

_PC, _PR, _FC, _FR = _logps()
_REF, _R = _categorical()
BAD_INPUTS = [
    ("beta", lambda: dpo_loss(_PC, _PR, _FC, _FR, beta=0.0)),
    ("beta", lambda: dpo_loss(_PC, _PR, _FC, _FR, beta=-0.1)),
    ("loss_type", lambda: dpo_loss(_PC, _PR, _FC, _FR, loss_type="kto")),
    ("label_smoothing", lambda: dpo_loss(_PC, _PR, _FC, _FR, label_smoothing=0.5)),
    ("label_smoothing", lambda: dpo_loss(_PC, _PR, _FC, _FR, loss_type="ipo", label_smoothing=0.1)),
    ("ref_rejected_logp", lambda: dpo_loss(_PC, _PR, _FC, _FR[:3])),
    ("policy_chosen_logp", lambda: dpo_loss(_PC[None, :], _PR, _FC, _FR)),
    ("ref_chosen_logp", lambda: dpo_loss(_PC, _PR, _FC.clone().fill_(float("nan")), _FR)),
    ("r_rejected", lambda: bradley_terry_probability(_PC, _PR[:2])),
    ("r_chosen", lambda: bradley_terry_loss(_PC.clone().fill_(float("inf")), _PR)),
    ("margin", lambda: bradley_terry_loss(_PC, _PR, margin=torch.ones(2, dtype=D))),
    ("margin", lambda: bradley_terry_loss(_PC, _PR, margin=float("nan"))),
    ("beta", lambda: implicit_reward(_PC, _FC, beta=0.0)),
    ("ref_logprobs", lambda: kl_regularized_optimum(_REF + 0.1, _R, 1.0)),
    ("rewards", lambda: kl_regularized_optimum(_REF, _R[:, :2], 1.0)),
    ("beta", lambda: kl_regularized_optimum(_REF, _R, -1.0)),
    ("rewards", lambda: kl_regularized_objective(_REF, _REF, _R.clone().fill_(float("nan")), 1.0)),
    ("ref_logp", lambda: kl_regularized_objective(_REF, _REF * 2, _R, 1.0)),
    ("beta", lambda: kl_regularized_objective(_REF, _REF, _R, -0.5)),
]


@pytest.mark.parametrize("name,call", BAD_INPUTS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_value_error_naming_the_argument(name, call):
    with pytest.raises(ValueError, match=name):
        call()
