"""Lab 07 — reward models: the Bradley-Terry loss, fitting BT rewards, predicting a preference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlcourse.exercises.grading import DTYPE, agrees, compare, for_cases, gen, randn, value_close
from rlcourse.exercises.registry import register
from rlcourse.preference import bradley_terry_loss, bradley_terry_probability

# --------------------------------------------------------------------------- 07.bt_loss


def bt_loss(r_chosen, r_rejected):
    """The Bradley-Terry loss of a reward model (mean over pairs, numerically stable)

    bt_loss(r_chosen (B,), r_rejected (B,)) -> scalar
    """
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def _bt_cases(seed):
    out = []
    for k, (B, scale) in enumerate([(1, 1.0), (3, 1.0), (8, 3.0)]):
        g = gen(seed, k)
        out.append({"r_chosen": randn(g, B, scale=scale), "r_rejected": randn(g, B, scale=scale)})
    out.append({"r_chosen": torch.tensor([-500.0, 2.0], dtype=DTYPE), "r_rejected": torch.tensor([500.0, 1.0], dtype=DTYPE)})
    return out


def _bt_grad(fn, case):
    rc = case["r_chosen"].clone().requires_grad_(True)
    fn(rc, case["r_rejected"].clone()).backward()
    d = case["r_chosen"] - case["r_rejected"]
    return compare(rc.grad, -torch.sigmoid(-d) / d.numel(), 1e-12, 1e-9, "d loss / d r_chosen")


def _bt_shift(fn, case):
    c = 3.7
    return compare(fn(case["r_chosen"] + c, case["r_rejected"] + c), fn(case["r_chosen"], case["r_rejected"]),
                   1e-10, 1e-9, "loss after adding 3.7 to every reward")


def _described(seed):
    return [(f"r_chosen={c['r_chosen'].tolist()}, r_rejected={c['r_rejected'].tolist()}", c) for c in _bt_cases(seed)]


register(
    bt_loss, 2, "easy",
    [agrees("agrees with rlcourse.preference.bradley_terry_loss (incl. B=1, a margin of -1000)", _bt_cases,
            bradley_terry_loss, 1e-10, 1e-9),
     for_cases("gradient: d loss / d r_chosen = -sigmoid(r_rejected - r_chosen) / B", _described, _bt_grad),
     for_cases("adding a constant to every reward changes nothing", _described, _bt_shift)],
    {"naive_log_of_sigmoid": lambda r_chosen, r_rejected: -torch.log(torch.sigmoid(r_chosen - r_rejected)).mean(),
     "chosen_and_rejected_swapped": lambda r_chosen, r_rejected: bt_loss(r_rejected, r_chosen),
     "sum_not_mean": lambda r_chosen, r_rejected: -F.logsigmoid(r_chosen - r_rejected).sum()},
)

# --------------------------------------------------------------------------- 07.bt_fit


def bt_fit(wins):
    # Newton's method on the log-likelihood sum_ij wins[i, j] log sigmoid(r_i - r_j)
    """Fit Bradley-Terry rewards to a matrix of win counts (maximum likelihood)

    bt_fit(wins (K,K), wins[i, j] = times i beat j) -> (K,) rewards, summing to 0
    """
    n = wins + wins.T
    r = torch.zeros(wins.shape[0], dtype=wins.dtype)
    for _ in range(50):
        p = torch.sigmoid(r[:, None] - r[None, :])
        grad = (wins - n * p).sum(1)
        w = n * p * (1 - p)
        hess = w - torch.diag(w.sum(1))
        r = r - torch.linalg.pinv(hess) @ grad   # pinv: the direction (1, ..., 1) is not identified
    return r - r.mean()


def _log_likelihood(r, wins):
    return (wins * F.logsigmoid(r[:, None] - r[None, :])).sum()


def _planted_cases(seed):
    out = []
    for k, K in enumerate((2, 3, 5)):
        g = gen(seed, 80 + k)
        r = randn(g, K)
        expected_wins = 20 * torch.sigmoid(r[:, None] - r[None, :]) * (1 - torch.eye(K, dtype=DTYPE))
        out.append((f"expected win counts 20 sigmoid(r_i - r_j) for planted r = {[round(x, 3) for x in r.tolist()]}",
                    (expected_wins, r - r.mean())))
    return out


def _recovers(fn, case):
    wins, truth = case
    return compare(fn(wins.clone()), truth, 1e-5, 1e-5, "fitted rewards")


def _count_cases(seed):
    out = []
    for k, K in enumerate((2, 3, 4)):
        g = gen(seed, 90 + k)
        wins = torch.randint(1, 12, (K, K), generator=g).to(DTYPE) * (1 - torch.eye(K, dtype=DTYPE))
        out.append((f"win counts {wins.long().tolist()}", wins))
    return out


def _is_mle(fn, wins):
    r = torch.as_tensor(fn(wins.clone()), dtype=DTYPE).detach()
    if abs(float(r.sum())) > 1e-6:
        return f"rewards must sum to 0 (only differences are identified), got sum {float(r.sum()):.4g}"
    rr = r.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_log_likelihood(rr, wins), rr)
    if float(grad.abs().max()) > 1e-5:
        return f"the log-likelihood's gradient at your rewards is {grad.tolist()}: not the maximum"
    return None


register(
    bt_fit, 3, "hard",
    [for_cases("recovers planted rewards (centred) from expected win counts", _planted_cases, _recovers),
     for_cases("is the maximum-likelihood estimate (zero gradient, sum 0) on random counts", _count_cases, _is_mle)],
    {"log_win_ratio_heuristic": lambda wins: (lambda x: x - x.mean())(
         torch.log((wins + torch.eye(wins.shape[0], dtype=DTYPE)) / (wins.T + torch.eye(wins.shape[0], dtype=DTYPE)))
         .mean(1)),
     "not_centred": lambda wins: bt_fit(wins) + 1.0,
     "logit_of_overall_win_rate": lambda wins: (lambda x: x - x.mean())(
         torch.logit(wins.sum(1) / (wins.sum(1) + wins.sum(0))))},
)

# --------------------------------------------------------------------------- 07.preference_probability (prediction)


def preference_probability():
    # P(chosen > rejected) = sigmoid(2.0 - 0.5) = 1 / (1 + e^-1.5)
    """Predict: P(y_w > y_l) under Bradley-Terry for rewards 2.0 and 0.5

    preference_probability() -> float
    """
    return 1 / (1 + math.exp(-1.5))


register(
    preference_probability, 1, "easy",
    [value_close("equals rlcourse.preference.bradley_terry_probability(2.0, 0.5)",
                 lambda: float(bradley_terry_probability(torch.tensor(2.0), torch.tensor(0.5))), 0.005,
                 "BT compares exp(r), i.e. sigmoid of the difference, not the rewards themselves")],
    {"ratio_of_rewards": lambda: 2.0 / 2.5, "difference_itself": lambda: 1.5},
    kind="prediction",
)
