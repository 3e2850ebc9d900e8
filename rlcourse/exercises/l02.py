"""Lab 02 — the policy gradient: the surrogate loss, the softmax score, Monte Carlo error."""

from __future__ import annotations

import math

import torch

from rlcourse.exercises.grading import compare, for_cases, gen, randn, value_close
from rlcourse.exercises.registry import register
from rlcourse.toymdp import ToyMDP, course_problem

# --------------------------------------------------------------------------- 02.surrogate_loss


def surrogate_loss(seq_logp, returns):
    """The REINFORCE surrogate loss: its gradient is the policy-gradient estimate

    surrogate_loss(seq_logp (n,), returns (n,)) -> scalar loss (minimised)
    """
    return -(returns.detach() * seq_logp).mean()


def _mdp_cases(seed):
    out = []
    for k, (V, H, n) in enumerate([(2, 1, 1), (3, 2, 2), (3, 3, 7), (4, 3, 16)]):
        mdp = ToyMDP.random(V, H, seed=seed * 31 + k)
        theta = mdp.init_params(seed=seed * 31 + k + 1)
        idx = mdp.sample(theta, n, seed=seed + k)
        out.append((f"{n} sequence(s) sampled from ToyMDP.random(vocab_size={V}, horizon={H})", (mdp, theta, idx)))
    return out


def _grad_is_pg_estimate(fn, case):
    mdp, theta, idx = case
    th = theta.clone().requires_grad_(True)
    loss = fn(mdp.sequence_logprobs(th)[idx], mdp.returns()[idx])
    (grad,) = torch.autograd.grad(loss, th)
    expected = -(mdp.returns()[idx, None, None] * mdp.score(theta)[idx]).mean(0)
    return compare(grad, expected, 1e-10, 1e-8, "gradient of your loss w.r.t. theta")


def _expected_grad_is_minus_grad_j(fn, case):
    mdp, theta, _ = case
    th = theta.clone().requires_grad_(True)
    logp, R, P = mdp.sequence_logprobs(th), mdp.returns(), mdp.probabilities(theta).detach()
    expected_grad = torch.zeros_like(theta)
    for n in range(mdp.num_sequences):  # one-sample estimator, weighted by its exact probability
        (g,) = torch.autograd.grad(fn(logp[n:n + 1], R[n:n + 1]), th, retain_graph=True)
        expected_grad += P[n] * g
    return compare(expected_grad, -mdp.exact_gradient(theta), 1e-10, 1e-8,
                   "E[gradient of your one-sample loss] (enumeration)")


register(
    surrogate_loss, 2, "easy",
    [for_cases("gradient = -(1/n) sum R(tau) grad log P(tau) on sampled sequences (exact)", _mdp_cases,
               _grad_is_pg_estimate),
     for_cases("expected gradient = -grad J (enumeration of every sequence)", _mdp_cases,
               _expected_grad_is_minus_grad_j)],
    {"sign_flipped": lambda seq_logp, returns: (returns * seq_logp).mean(),
     "sum_not_mean": lambda seq_logp, returns: -(returns * seq_logp).sum(),
     "probability_not_log_probability": lambda seq_logp, returns: -(returns * seq_logp.exp()).mean()},
)

# --------------------------------------------------------------------------- 02.softmax_score


def softmax_score(theta_row, a, temperature=1.0):
    """The score of a softmax policy, by hand: grad log softmax(theta / T)[a]

    softmax_score(theta_row (V,), a: int, temperature=1.0) -> (V,)
    """
    pi = torch.softmax(theta_row / temperature, dim=-1)
    return (torch.nn.functional.one_hot(torch.tensor(a), theta_row.shape[-1]).to(pi.dtype) - pi) / temperature


def _score_cases(seed):
    return [(f"theta_row of size {V}, a={a}, temperature {t}", (randn(gen(seed, k), V), a, t))
            for k, (V, a, t) in enumerate([(2, 0, 1.0), (3, 2, 1.0), (4, 1, 0.5), (6, 5, 2.5)])]


def _score_is_autograd(fn, case):
    theta, a, t = case
    th = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.log_softmax(th / t, -1)[a], th)
    return compare(fn(theta.clone(), a, t), g, 1e-10, 1e-8, "score")


def _eglp(fn, case):
    theta, _, t = case
    pi = torch.softmax(theta / t, -1)
    mean = sum(pi[b] * fn(theta.clone(), b, t) for b in range(theta.shape[0]))
    return compare(mean, torch.zeros_like(theta), 1e-10, 0, "sum_a pi(a) score(a)")


register(
    softmax_score, 2, "easy",
    [for_cases("equals autograd's gradient of log softmax(theta / T)[a]", _score_cases, _score_is_autograd),
     for_cases("EGLP: its expectation under pi is 0", _score_cases, _eglp)],
    {"sign_swapped": lambda theta_row, a, temperature=1.0: -softmax_score(theta_row, a, temperature),
     "missing_1_over_T": lambda theta_row, a, temperature=1.0: softmax_score(theta_row, a, temperature) * temperature,
     "logits_instead_of_probs": lambda theta_row, a, temperature=1.0:
         torch.nn.functional.one_hot(torch.tensor(a), theta_row.shape[-1]).to(theta_row.dtype) - theta_row},
)

# --------------------------------------------------------------------------- 02.mc_error_halving (prediction)


def mc_error_halving():
    # the standard error of a mean of n i.i.d. samples is sigma / sqrt(n): halving n multiplies it by sqrt(2)
    """Predict: halve the number of samples; by what factor does the gradient error grow?

    mc_error_halving() -> float
    """
    return 1.4142


def _halving_truth():
    mdp, theta = course_problem()
    P, R, S = mdp.probabilities(theta), mdp.returns(), mdp.score(theta)
    g = R[:, None, None] * S                                    # one-sample estimates
    total_var = float((P[:, None, None] * (g - (P[:, None, None] * g).sum(0)) ** 2).sum())
    se = {n: math.sqrt(total_var / n) for n in (1000, 500)}      # exact standard error of the n-sample mean
    return se[500] / se[1000]


register(
    mc_error_halving, 1, "easy",
    [value_close("equals the ratio of exact standard errors at n = 500 and n = 1000 (toy MDP)", _halving_truth,
                 0.01, "the variance of a mean of n samples is sigma^2 / n")],
    {"doubles": lambda: 2.0, "unchanged": lambda: 1.0},
    kind="prediction",
)
