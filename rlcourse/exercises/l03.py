"""Lab 03 — variance reduction: reward-to-go, baselines, the optimal constant baseline."""

from __future__ import annotations

import torch

from rlcourse import advantages as ADV
from rlcourse.exercises.grading import DTYPE, agrees, compare, for_cases, gen, rand_mask, randn, value_close
from rlcourse.exercises.registry import register
from rlcourse.toymdp import ToyMDP

# --------------------------------------------------------------------------- 03.reward_to_go


def reward_to_go(rewards, mask, gamma=1.0):
    """Reward-to-go G_t = r_t + gamma G_{t+1} over the counted tokens

    reward_to_go(rewards (B,T), mask (B,T) 0/1, gamma=1.0) -> (B,T), 0 where mask is 0
    """
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t].bool()
        running = torch.where(m, rewards[:, t] + gamma * running, running)
        out[:, t] = torch.where(m, running, torch.zeros_like(running))
    return out


def _rtg_cases(seed):
    out = []
    for k, (B, T, kind, gamma) in enumerate([(1, 1, "right", 1.0), (1, 3, "right", 1.0), (3, 4, "right", 0.9),
                                             (4, 6, "left", 0.8), (4, 7, "holes", 0.7), (2, 5, "holes", 0.0)]):
        g = gen(seed, k)
        out.append({"rewards": randn(g, B, T), "mask": rand_mask(g, B, T, kind), "gamma": gamma})
    return out


def _rtg_first_is_return(fn, case):
    return compare(fn(**case).gather(1, case["mask"].argmax(1, keepdim=True)).squeeze(1),
                   ADV.trajectory_return(**case), 1e-10, 1e-8, "reward-to-go at the first counted token")


def _rtg_variant_position_discount(rewards, mask, gamma=1.0):
    T = rewards.shape[1]
    pos = torch.arange(T, dtype=rewards.dtype)
    w = torch.where(pos[None, :] >= pos[:, None], gamma ** (pos[None, :] - pos[:, None]).clamp(min=0),
                    torch.zeros(T, T, dtype=rewards.dtype))
    return ((rewards * mask) @ w.T) * mask


register(
    reward_to_go, 2, "medium",
    [agrees("agrees with rlcourse.advantages.reward_to_go (incl. 1x1, prompts on the left, holes, gamma 0)",
            _rtg_cases, ADV.reward_to_go, 1e-10, 1e-8),
     for_cases("at the first counted token it equals the whole return",
               lambda seed: [(f"case {i}", c) for i, c in enumerate(_rtg_cases(seed))], _rtg_first_is_return)],
    {"off_by_one_excludes_current_reward": lambda rewards, mask, gamma=1.0:
         reward_to_go(rewards, mask, gamma) - rewards * mask,
     "mask_not_applied": lambda rewards, mask, gamma=1.0: reward_to_go(rewards, torch.ones_like(mask), gamma),
     "discount_by_position_not_by_step": _rtg_variant_position_discount,
     "gamma_ignored": lambda rewards, mask, gamma=1.0: reward_to_go(rewards, mask, 1.0)},
)

# --------------------------------------------------------------------------- 03.advantage_weights


def advantage_weights(rewards, mask, values):
    """Reward-to-go minus a state-value baseline: the weights of grad log pi

    advantage_weights(rewards (B,T), mask (B,T), values (B,T) = V(s_t)) -> (B,T), 0 where mask is 0
    """
    return (reward_to_go(rewards, mask) - values) * mask


def _toy_cases(seed):
    out = []
    for k, (V, H, baseline) in enumerate([(2, 1, "true V"), (3, 2, "true V"), (3, 3, "true V"),
                                          (3, 3, "random b(s)"), (4, 3, "random b(s)")]):
        mdp = ToyMDP.random(V, H, seed=seed * 17 + k)
        theta = mdp.init_params(seed=seed * 17 + k + 1)
        b = mdp.state_values(theta) if baseline == "true V" else randn(gen(seed, k), mdp.num_states)
        out.append((f"ToyMDP.random(vocab_size={V}, horizon={H}), baseline = {baseline}", (mdp, theta, b)))
    return out


def _unbiased(fn, case):
    mdp, theta, b = case
    seq = mdp.sequences
    values = b[seq.states] * seq.mask
    w = fn(seq.token_rewards.clone(), seq.mask.clone(), values)
    est = torch.einsum("nh,nhsv->nsv", torch.as_tensor(w, dtype=DTYPE), mdp.token_scores(theta))
    expected = (mdp.probabilities(theta)[:, None, None] * est).sum(0)
    return compare(expected, mdp.exact_gradient(theta), 1e-10, 1e-8, "E[sum_t w_t grad log pi(a_t|s_t)]")


def _adv_cases(seed):
    out = []
    for k, (B, T) in enumerate([(1, 1), (2, 3), (4, 5)]):
        g = gen(seed, 40 + k)
        out.append({"rewards": randn(g, B, T), "mask": rand_mask(g, B, T, "right"), "values": randn(g, B, T)})
    return out


register(
    advantage_weights, 2, "medium",
    [for_cases("unbiased: E[sum_t w_t grad log pi] = grad J exactly, for V and for any b(s)", _toy_cases,
               _unbiased),
     agrees("equals (reward_to_go - values) on counted tokens, 0 elsewhere", _adv_cases,
            lambda rewards, mask, values: (ADV.reward_to_go(rewards, mask) - values) * mask)],
    {"next_state_value_baseline": lambda rewards, mask, values:
         (reward_to_go(rewards, mask) - torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)) * mask,
     "baseline_not_masked": lambda rewards, mask, values: reward_to_go(rewards, mask) - values,
     "whole_return_minus_value": lambda rewards, mask, values:
         ((rewards * mask).sum(-1, keepdim=True) - values) * mask},
)

# --------------------------------------------------------------------------- 03.optimal_baseline


def optimal_baseline(probs, returns, score_sq):
    """The optimal constant baseline b* = E[R |grad log P|^2] / E[|grad log P|^2]

    optimal_baseline(probs (N,), returns (N,), score_sq (N,) = |grad log P(tau)|^2) -> scalar
    """
    return (probs * returns * score_sq).sum() / (probs * score_sq).sum()


def _variance(mdp, theta, b):
    """Exact total variance (trace of the covariance) of the one-sample estimator (R - b) grad log P."""
    P, R, S = mdp.probabilities(theta), mdp.returns(), mdp.score(theta)
    g = (R - b)[:, None, None] * S
    mean = (P[:, None, None] * g).sum(0)
    return float((P[:, None, None] * (g - mean) ** 2).sum())


def _minimises(fn, case):
    mdp, theta, _ = case
    P, R, S = mdp.probabilities(theta), mdp.returns(), mdp.score(theta)
    b = float(fn(P.clone(), R.clone(), (S ** 2).sum((1, 2))))
    v = _variance(mdp, theta, b)
    for delta in (1e-3, -1e-3):
        if _variance(mdp, theta, b + delta) < v - 1e-13:
            return (f"b = {b:.6g} has variance {v:.8g} but b {'+' if delta > 0 else '-'} 1e-3 has "
                    f"{_variance(mdp, theta, b + delta):.8g}: not the minimiser")
    return None


register(
    optimal_baseline, 2, "medium",
    [for_cases("minimises the exact variance of (R - b) grad log P on the toy MDP", _toy_cases, _minimises)],
    {"mean_return": lambda probs, returns, score_sq: (probs * returns).sum(),
     "unweighted_by_probability": lambda probs, returns, score_sq: (returns * score_sq).sum() / score_sq.sum(),
     "plain_average_of_returns": lambda probs, returns, score_sq: returns.mean()},
)

# --------------------------------------------------------------------------- 03.bstar_bernoulli (prediction)


def bstar_bernoulli():
    # score of a: (1 - p) for a = 1, -p for a = 0; b* = p R1 (1-p)^2 / (p (1-p)^2 + (1-p) p^2) = R1 (1 - p) = 0.2
    """Predict: b* for a Bernoulli policy p = sigmoid(theta) = 0.8, R(1) = 1, R(0) = 0

    bstar_bernoulli() -> float
    """
    return 0.2


def _bstar_truth():
    theta = torch.tensor(torch.logit(torch.tensor(0.8, dtype=DTYPE)).item(), dtype=DTYPE, requires_grad=True)
    probs = torch.stack([1 - torch.sigmoid(theta), torch.sigmoid(theta)])   # a = 0, a = 1
    rewards = torch.tensor([0.0, 1.0], dtype=DTYPE)
    scores = torch.stack([torch.autograd.grad(torch.log(probs[a]), theta, retain_graph=True)[0] for a in (0, 1)])
    p = probs.detach()
    return float((p * rewards * scores ** 2).sum() / (p * scores ** 2).sum())


register(
    bstar_bernoulli, 1, "medium",
    [value_close("equals b* computed with autograd's score", _bstar_truth, 0.005,
                 "b* weights each reward by the squared score, not by its probability alone")],
    {"mean_reward": lambda: 0.8, "half": lambda: 0.5},
    kind="prediction",
)
