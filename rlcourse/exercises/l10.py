"""Lab 10 — DPO: the KL-regularised optimum, the implicit reward, the DPO loss, a margin to predict."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlcourse import preference as PR
from rlcourse.exercises.grading import DTYPE, agrees, compare, for_cases, gen, log_softmax_rows, randn, value_close
from rlcourse.exercises.registry import register

# --------------------------------------------------------------------------- 10.kl_optimum


def kl_optimum(ref_logprobs, rewards, beta):
    """The maximiser of E[r] - beta KL(pi || ref): pi* proportional to ref exp(r / beta)

    kl_optimum(ref_logprobs (..., V), rewards (..., V), beta) -> log pi* (..., V)
    """
    return torch.log_softmax(ref_logprobs + rewards / beta, dim=-1)


def _opt_cases(seed):
    return [{"ref_logprobs": log_softmax_rows(gen(seed, k), *s), "rewards": randn(gen(seed, 300 + k), *s), "beta": b}
            for k, (s, b) in enumerate([((2,), 1.0), ((5,), 0.1), ((3, 4), 2.0)])]


def _maximises(fn, case):
    c = case
    logp = torch.as_tensor(fn(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in c.items()}),
                           dtype=DTYPE)
    if not torch.allclose(torch.logsumexp(logp, -1), torch.zeros(logp.shape[:-1], dtype=DTYPE), atol=1e-9):
        return "not normalised: logsumexp of your log-probs is not 0"
    best = PR.kl_regularized_objective(logp, c["ref_logprobs"], c["rewards"], c["beta"])
    g = gen(0, 310)
    for i in range(20):
        other = torch.log_softmax(logp + randn(g, *logp.shape, scale=0.3), -1)
        val = PR.kl_regularized_objective(other, c["ref_logprobs"], c["rewards"], c["beta"])
        if bool((val > best + 1e-12).any()):
            return (f"a perturbed policy has a higher E[r] - beta KL ({float(val.max()):.6g} > {float(best.max()):.6g}):"
                    " yours is not the maximiser")
    return None


def _described(seed):
    return [(f"ref of shape {tuple(c['ref_logprobs'].shape)}, beta={c['beta']}", c) for c in _opt_cases(seed)]


register(
    kl_optimum, 2, "medium",
    [for_cases("normalised, and no perturbation does better on E[r] - beta KL", _described, _maximises),
     agrees("agrees with rlcourse.preference.kl_regularized_optimum", _opt_cases, PR.kl_regularized_optimum,
            1e-10, 1e-8)],
    {"beta_multiplies_reward": lambda ref_logprobs, rewards, beta: torch.log_softmax(ref_logprobs + beta * rewards, -1),
     "not_normalised": lambda ref_logprobs, rewards, beta: ref_logprobs + rewards / beta,
     "reference_ignored": lambda ref_logprobs, rewards, beta: torch.log_softmax(rewards / beta, -1)},
)

# --------------------------------------------------------------------------- 10.implicit_reward


def implicit_reward(logp, logp_ref, beta):
    """DPO's implicit reward beta (log pi - log pi_ref)

    implicit_reward(logp (B,), logp_ref (B,), beta) -> (B,)
    """
    return beta * (logp - logp_ref)


def _recover_cases(seed):
    return [(f"pi* of {V} responses, beta={b}", (log_softmax_rows(gen(seed, 320 + V), V), randn(gen(seed, 330 + V), V), b))
            for V, b in ((2, 1.0), (4, 0.1), (6, 0.5))]


def _recovers_reward(fn, case):
    ref, r, beta = case
    pistar = PR.kl_regularized_optimum(ref, r, beta)
    ir = torch.as_tensor(fn(pistar.clone(), ref.clone(), beta), dtype=DTYPE)
    log_z = torch.logsumexp(ref + r / beta, -1)
    return compare(ir, r - beta * log_z, 1e-10, 1e-8, "implicit reward of pi* (must be r - beta log Z)")


register(
    implicit_reward, 1, "easy",
    [for_cases("applied to pi*, gives the true reward up to -beta log Z", _recover_cases, _recovers_reward),
     agrees("agrees with rlcourse.preference.implicit_reward",
            lambda seed: [{"logp": -randn(gen(seed, 340), 3).abs(), "logp_ref": -randn(gen(seed, 341), 3).abs(),
                           "beta": 0.1}], PR.implicit_reward, 1e-12, 1e-9)],
    {"missing_beta": lambda logp, logp_ref, beta: logp - logp_ref,
     "sign_swapped": lambda logp, logp_ref, beta: beta * (logp_ref - logp),
     "divided_by_beta": lambda logp, logp_ref, beta: (logp - logp_ref) / beta},
)

# --------------------------------------------------------------------------- 10.dpo_loss


def dpo_loss(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp, beta=0.1):
    """The DPO loss (sigmoid), numerically stable

    dpo_loss(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp (B,), beta=0.1) -> scalar
    """
    h = (policy_chosen_logp - ref_chosen_logp) - (policy_rejected_logp - ref_rejected_logp)
    return -F.logsigmoid(beta * h).mean()


def _dpo_cases(seed):
    out = []
    for k, (B, beta, scale) in enumerate([(1, 0.1, 1.0), (4, 0.5, 1.0), (8, 0.1, 5.0)]):
        g = gen(seed, 350 + k)
        out.append({n: -randn(g, B, scale=scale).abs() * 10 for n in
                    ("policy_chosen_logp", "policy_rejected_logp", "ref_chosen_logp", "ref_rejected_logp")}
                   | {"beta": beta})
    big = torch.tensor([-1.0, -5000.0], dtype=DTYPE)
    out.append({"policy_chosen_logp": big.flip(0), "policy_rejected_logp": big, "ref_chosen_logp": big,
                "ref_rejected_logp": big.flip(0), "beta": 1.0})
    return out


def _at_reference(fn, case):
    pc = case["policy_chosen_logp"]
    loss = fn(pc.clone(), case["policy_rejected_logp"].clone(), pc.clone(), case["policy_rejected_logp"].clone(),
              case["beta"])
    return compare(loss, torch.tensor(math.log(2), dtype=DTYPE), 1e-12, 1e-10, "loss when the policy is the reference")


def _dpo_grad(fn, case):
    pc = case["policy_chosen_logp"].clone().requires_grad_(True)
    fn(pc, case["policy_rejected_logp"], case["ref_chosen_logp"], case["ref_rejected_logp"], case["beta"]).backward()
    h = (case["policy_chosen_logp"] - case["ref_chosen_logp"]) - (case["policy_rejected_logp"] - case["ref_rejected_logp"])
    expected = -case["beta"] * torch.sigmoid(-case["beta"] * h) / h.numel()
    return compare(pc.grad, expected, 1e-12, 1e-9, "d loss / d log pi(chosen)")


def _dpo_described(seed):
    return [(f"B={c['policy_chosen_logp'].numel()}, beta={c['beta']}" +
             (", margins of -1e4" if c['beta'] == 1.0 else ""), c) for c in _dpo_cases(seed)]


register(
    dpo_loss, 3, "medium",
    [agrees("agrees with rlcourse.preference.dpo_loss (incl. B=1, margins of -1e4)", _dpo_cases,
            lambda **c: PR.dpo_loss(**c)[0], 1e-10, 1e-8),
     for_cases("equals log 2 when the policy is the reference", _dpo_described, _at_reference),
     for_cases("gradient: d loss / d log pi(y_w) = -beta sigmoid(-beta h) / B", _dpo_described, _dpo_grad)],
    {"reference_ignored": lambda policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp,
         beta=0.1: -F.logsigmoid(beta * (policy_chosen_logp - policy_rejected_logp)).mean(),
     "beta_outside_the_log_sigmoid": lambda policy_chosen_logp, policy_rejected_logp, ref_chosen_logp,
         ref_rejected_logp, beta=0.1: beta * dpo_loss(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp,
                                                      ref_rejected_logp, 1.0),
     "naive_log_of_sigmoid": lambda policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp,
         beta=0.1: -torch.log(torch.sigmoid(beta * ((policy_chosen_logp - ref_chosen_logp)
                                                    - (policy_rejected_logp - ref_rejected_logp)))).mean(),
     "chosen_and_rejected_swapped": lambda policy_chosen_logp, policy_rejected_logp, ref_chosen_logp,
         ref_rejected_logp, beta=0.1: dpo_loss(policy_rejected_logp, policy_chosen_logp, ref_rejected_logp,
                                               ref_chosen_logp, beta)},
)

# --------------------------------------------------------------------------- 10.reward_margin (prediction)

MARGIN_INPUTS = {"beta": 0.1, "policy_chosen": -10.0, "ref_chosen": -12.0, "policy_rejected": -15.0,
                 "ref_rejected": -14.0}


def reward_margin():
    # beta [(-10 + 12) - (-15 + 14)] = 0.1 * (2 + 1)
    """Predict: the implicit reward margin for beta 0.1, log-probs chosen -10 (ref -12), rejected -15 (ref -14)

    reward_margin() -> float
    """
    return 0.3


def _margin_truth():
    c = MARGIN_INPUTS
    ir = PR.implicit_reward(torch.tensor([c["policy_chosen"], c["policy_rejected"]], dtype=DTYPE),
                            torch.tensor([c["ref_chosen"], c["ref_rejected"]], dtype=DTYPE), c["beta"])
    return float(ir[0] - ir[1])


register(
    reward_margin, 1, "easy",
    [value_close("equals the difference of rlcourse.preference.implicit_reward", _margin_truth, 0.005,
                 "each response's reward is measured relative to the reference")],
    {"reference_ignored": lambda: 0.5, "beta_forgotten": lambda: 3.0},
    kind="prediction",
)
