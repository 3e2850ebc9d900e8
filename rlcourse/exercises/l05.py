"""Lab 05 — value functions and GAE: TD residuals, GAE, KL-shaped per-token rewards."""

from __future__ import annotations

import torch

from rlcourse import advantages as ADV
from rlcourse.exercises.grading import agrees, compare, for_cases, gen, rand_mask, randn
from rlcourse.exercises.registry import register

# --------------------------------------------------------------------------- 05.td_residuals


def td_residuals(rewards, values, mask, gamma=1.0):
    """TD residuals delta_t = r_t + gamma V(s_{t+1}) - V(s_t), V = 0 after the end

    td_residuals(rewards (B,T), values (B,T), mask (B,T), gamma=1.0) -> (B,T)
    """
    out = torch.zeros_like(rewards)
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t].bool()
        out[:, t] = torch.where(m, rewards[:, t] + gamma * next_value - values[:, t], torch.zeros_like(next_value))
        next_value = torch.where(m, values[:, t], next_value)
    return out


def _cases(seed, lam=None):
    out = []
    for k, (B, T, kind, gamma) in enumerate([(1, 1, "right", 1.0), (2, 3, "right", 1.0), (3, 5, "right", 0.9),
                                             (4, 6, "left", 0.95), (4, 6, "holes", 0.8)]):
        g = gen(seed, k)
        c = {"rewards": randn(g, B, T), "values": randn(g, B, T), "mask": rand_mask(g, B, T, kind), "gamma": gamma}
        if lam is not None:
            c["lam"] = lam[k % len(lam)]
        out.append(c)
    return out


def _telescopes(fn, case):
    d = fn(**case)
    m, gamma = case["mask"], case["gamma"]
    step = (m.cumsum(-1) - 1).clamp(min=0)
    lhs = (d * m * gamma ** step).sum(-1)
    first = m.argmax(1, keepdim=True)
    rhs = ADV.trajectory_return(case["rewards"], m, gamma) - case["values"].gather(1, first).squeeze(1)
    return compare(lhs, rhs, 1e-10, 1e-8, "sum_t gamma^t delta_t")


def _v_next_raw(rewards, values, mask, gamma=1.0):
    nxt = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)
    return (rewards + gamma * nxt - values) * mask


register(
    td_residuals, 2, "medium",
    [agrees("agrees with rlcourse.advantages.td_residuals (incl. 1x1, prompts, holes)", _cases,
            ADV.td_residuals, 1e-10, 1e-8),
     for_cases("telescopes: sum_t gamma^t delta_t = R(tau) - V(s_0)",
               lambda seed: [(f"case {i}", c) for i, c in enumerate(_cases(seed))], _telescopes)],
    {"next_position_not_next_counted_token": _v_next_raw,
     "sign_swapped": lambda rewards, values, mask, gamma=1.0: -td_residuals(rewards, values, mask, gamma),
     "gamma_ignored": lambda rewards, values, mask, gamma=1.0: td_residuals(rewards, values, mask, 1.0)},
)

# --------------------------------------------------------------------------- 05.gae


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalized advantage estimation by backward recursion

    gae(rewards (B,T), values (B,T), mask (B,T), gamma=1.0, lam=0.95) -> advantages (B,T)
    """
    deltas = td_residuals(rewards, values, mask, gamma)
    out = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[:, 0])
    for t in reversed(range(deltas.shape[1])):
        m = mask[:, t].bool()
        running = torch.where(m, deltas[:, t] + gamma * lam * running, running)
        out[:, t] = torch.where(m, running, torch.zeros_like(running))
    return out


def _limits(fn, case):
    c0 = dict(case, lam=0.0)
    msg = compare(fn(**c0), ADV.td_residuals(case["rewards"], case["values"], case["mask"], case["gamma"]),
                  1e-10, 1e-8, "GAE at lambda = 0")
    if msg:
        return msg + " (lambda = 0 must give the TD residuals)"
    c1 = dict(case, lam=1.0)
    g_minus_v = (ADV.reward_to_go(case["rewards"], case["mask"], case["gamma"]) - case["values"]) * case["mask"]
    msg = compare(fn(**c1), g_minus_v, 1e-10, 1e-8, "GAE at lambda = 1")
    return msg + " (lambda = 1 must give G_t - V(s_t))" if msg else None


def _gae_variant(mult):
    def wrong(rewards, values, mask, gamma=1.0, lam=0.95):
        deltas = td_residuals(rewards, values, mask, gamma)
        out, running = torch.zeros_like(deltas), torch.zeros_like(deltas[:, 0])
        for t in reversed(range(deltas.shape[1])):
            m = mask[:, t].bool()
            running = torch.where(m, deltas[:, t] + mult(gamma, lam) * running, running)
            out[:, t] = torch.where(m, running, torch.zeros_like(running))
        return out
    return wrong


register(
    gae, 3, "medium",
    [agrees("agrees with rlcourse.advantages.gae (incl. 1x1, prompts, holes, lambda in {0.5, 0.9, 0.95})",
            lambda seed: _cases(seed, lam=[0.5, 0.9, 0.95]),
            lambda **c: ADV.gae(**c)[0], 1e-10, 1e-8),
     for_cases("lambda = 0 gives delta_t; lambda = 1 gives G_t - V(s_t)",
               lambda seed: [(f"case {i}", c) for i, c in enumerate(_cases(seed, lam=[0.5]))], _limits)],
    {"lambda_without_gamma": _gae_variant(lambda gamma, lam: lam),
     "gamma_without_lambda": _gae_variant(lambda gamma, lam: gamma),
     "padding_not_skipped": lambda rewards, values, mask, gamma=1.0, lam=0.95:
         gae(rewards, values, torch.ones_like(mask), gamma, lam) * mask},
)

# --------------------------------------------------------------------------- 05.kl_shaped_rewards


def kl_shaped_rewards(scores, logp, logp_ref, mask, beta):
    """Per-token rewards: -beta (log pi - log pi_ref) on each token, the score on the last

    kl_shaped_rewards(scores (B,), logp (B,T), logp_ref (B,T), mask (B,T), beta) -> (B,T)
    """
    m = mask.to(logp.dtype)
    rewards = -beta * (logp - logp_ref) * m
    T = mask.shape[1]
    last = (torch.arange(T) * mask.bool()).argmax(-1)  # index of the last counted token of each row
    rewards[torch.arange(mask.shape[0]), last] += scores
    return rewards


def _shaped_cases(seed):
    out = []
    for k, (B, T, kind, beta) in enumerate([(1, 1, "right", 0.1), (2, 3, "right", 0.0), (3, 5, "right", 0.2),
                                            (3, 6, "left", 0.05)]):
        g = gen(seed, k)
        out.append((f"B={B}, T={T}, {kind} padding, beta={beta}",
                    {"scores": randn(g, B), "logp": -randn(g, B, T).abs(), "logp_ref": -randn(g, B, T).abs(),
                     "mask": rand_mask(g, B, T, kind), "beta": beta}))
    return out


def _sum_identity(fn, c):
    r = fn(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in c.items()})
    m = c["mask"]
    msg = compare(r * (1 - m), torch.zeros_like(m), 0, 0, "rewards at masked-out positions")
    if msg:
        return msg
    expected = c["scores"] - c["beta"] * ((c["logp"] - c["logp_ref"]) * m).sum(-1)
    return compare(r.sum(-1), expected, 1e-10, 1e-8, "sum_t r_t (must be score - beta sum_t (logp - logp_ref))")


def _score_on_last(fn, c):
    c = dict(c, beta=0.0)
    r = fn(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in c.items()})
    m = c["mask"]
    last = (torch.arange(m.shape[1]) * m.bool()).argmax(-1)
    expected = torch.zeros_like(m)
    expected[torch.arange(m.shape[0]), last] = c["scores"]
    return compare(r, expected, 1e-12, 0, "rewards with beta = 0 (the score belongs on the last counted token)")


def _score_at_last_position(scores, logp, logp_ref, mask, beta):
    r = -beta * (logp - logp_ref) * mask
    r[:, -1] += scores
    return r


register(
    kl_shaped_rewards, 2, "medium",
    [for_cases("sum over tokens = score - beta * sum of log-ratios; 0 off the mask", _shaped_cases, _sum_identity),
     for_cases("with beta = 0: the score sits on the last counted token only", _shaped_cases, _score_on_last)],
    {"kl_direction_swapped": lambda scores, logp, logp_ref, mask, beta:
         kl_shaped_rewards(scores, logp_ref, logp, mask, beta),
     "score_at_last_position_not_last_token": _score_at_last_position,
     "score_on_every_token": lambda scores, logp, logp_ref, mask, beta:
         (-beta * (logp - logp_ref) + scores[:, None]) * mask},
)
