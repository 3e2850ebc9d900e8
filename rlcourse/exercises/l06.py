"""Lab 06 — from TRPO to PPO: the clip loss and its gradient mask, ratios, PPO's beta rule."""

from __future__ import annotations

import torch

from rlcourse import ratios as RA
from rlcourse.exercises.grading import DTYPE, agrees, compare, for_cases, gen, rand_mask, randn, value_close
from rlcourse.exercises.registry import register
from rlcourse.losses import clipped_surrogate, ppo_clip_loss
from rlcourse.toymdp import ToyMDP

# --------------------------------------------------------------------------- 06.ppo_clip_loss


def ppo_clip_loss_ex(logp, logp_old, advantages, mask, eps=0.2):
    """PPO-clip loss (token mean) and its gradient mask

    ppo_clip_loss(logp (B,T), logp_old (B,T), advantages (B,), mask (B,T), eps=0.2) -> scalar
    """
    ratio = torch.exp(logp - logp_old)
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)
    m = mask.to(logp.dtype)
    return (per_token * m).sum() / m.sum()


def _clip_cases(seed):
    out = []
    for k, (B, T, kind, eps, spread) in enumerate([(1, 1, "right", 0.2, 0.1), (2, 3, "right", 0.2, 0.5),
                                                   (4, 5, "left", 0.1, 0.5), (3, 6, "holes", 0.3, 1.0)]):
        g = gen(seed, k)
        logp_old = -randn(g, B, T).abs()
        # log-probs stay <= 0 (the package's functions refuse positive ones)
        out.append({"logp": (logp_old + randn(g, B, T, scale=spread)).clamp(max=0.0), "logp_old": logp_old,
                    "advantages": randn(g, B), "mask": rand_mask(g, B, T, kind), "eps": eps})
    return out


CELLS = {  # (sign of A, where the ratio is) -> ratio used in the truth table (eps = 0.2)
    ("A>0", "r<1-eps"): 0.5, ("A>0", "inside"): 1.1, ("A>0", "r>1+eps"): 1.5,
    ("A<0", "r<1-eps"): 0.5, ("A<0", "inside"): 0.9, ("A<0", "r>1+eps"): 1.5,
}


def _cell_cases(seed):
    return [(f"one token, A {'= +1' if s == 'A>0' else '= -1'}, ratio {r} (eps 0.2)", (s, where, r))
            for (s, where), r in CELLS.items()]


def _gradient_flows(loss_fn, sign, ratio):
    logp_old = torch.tensor([[-1.0]], dtype=DTYPE)
    logp = (logp_old + torch.log(torch.tensor(ratio, dtype=DTYPE))).clone().requires_grad_(True)
    adv = torch.tensor([1.0 if sign == "A>0" else -1.0], dtype=DTYPE)
    loss_fn(logp, logp_old, adv, torch.ones(1, 1, dtype=DTYPE)).backward()
    return logp.grad


def _truth_cell(fn, case):
    sign, where, ratio = case
    grad = _gradient_flows(lambda *a: fn(*a, eps=0.2), sign, ratio)
    if grad is None:
        return "no gradient reached logp"
    adv = 1.0 if sign == "A>0" else -1.0
    clipped = (sign == "A>0" and where == "r>1+eps") or (sign == "A<0" and where == "r<1-eps")
    expected = 0.0 if clipped else -ratio * adv
    if abs(float(grad) - expected) > 1e-10:
        return (f"d loss/d logp = {float(grad):.4g}, expected {expected:.4g} "
                f"({'the clip is active: no gradient' if clipped else 'the unclipped term: -ratio * A'})")
    return None


register(
    ppo_clip_loss_ex, 3, "medium",
    [agrees("agrees with rlcourse.losses.ppo_clip_loss (token_mean; incl. 1x1, prompts, holes)", _clip_cases,
            lambda logp, logp_old, advantages, mask, eps: ppo_clip_loss(logp, logp_old, advantages, mask,
                                                                        eps_low=eps)[0], 1e-10, 1e-8),
     for_cases("autograd truth table: 0 where the clip is active, -ratio*A elsewhere (6 cells)", _cell_cases,
               _truth_cell)],
    {"max_not_min": lambda logp, logp_old, advantages, mask, eps=0.2:
         (-torch.max(torch.exp(logp - logp_old) * advantages[:, None],
                     torch.clamp(torch.exp(logp - logp_old), 1 - eps, 1 + eps) * advantages[:, None]) * mask).sum()
         / mask.sum(),
     "clip_without_min": lambda logp, logp_old, advantages, mask, eps=0.2:
         (-torch.clamp(torch.exp(logp - logp_old), 1 - eps, 1 + eps) * advantages[:, None] * mask).sum() / mask.sum(),
     "no_clip": lambda logp, logp_old, advantages, mask, eps=0.2:
         (-torch.exp(logp - logp_old) * advantages[:, None] * mask).sum() / mask.sum(),
     "mask_not_applied": lambda logp, logp_old, advantages, mask, eps=0.2:
         ppo_clip_loss_ex(logp, logp_old, advantages, torch.ones_like(mask), eps)},
    name="ppo_clip_loss",
)

# --------------------------------------------------------------------------- 06.clip_truth_table (prediction)


def clip_truth_table():
    # 1: the gradient flows (-ratio * A), 0: the clip is active and the token's gradient is 0
    """Predict: in which of the six cells does PPO-clip pass a gradient?

    clip_truth_table() -> {'A>0, r<1-eps': 0 or 1, ...} (six cells)
    """
    return {"A>0, r<1-eps": 1, "A>0, inside": 1, "A>0, r>1+eps": 0,
            "A<0, r<1-eps": 0, "A<0, inside": 1, "A<0, r>1+eps": 1}


def _table_truth():
    def package_loss(logp, logp_old, adv, mask):
        return clipped_surrogate(torch.exp(logp - logp_old), adv, 0.2).sum()
    return {f"{s}, {w}": int(float(_gradient_flows(package_loss, s, r).abs()) > 0) for (s, w), r in CELLS.items()}


register(
    clip_truth_table, 2, "easy",
    [value_close("equals autograd through rlcourse.losses.clipped_surrogate in each cell", _table_truth, 0.1,
                 "the min keeps the pessimistic term; the clip only removes the gradient where it helps")],
    {"clip_blocks_both_sides": lambda: {"A>0, r<1-eps": 0, "A>0, inside": 1, "A>0, r>1+eps": 0,
                                        "A<0, r<1-eps": 0, "A<0, inside": 1, "A<0, r>1+eps": 0},
     "signs_swapped": lambda: {"A>0, r<1-eps": 0, "A>0, inside": 1, "A>0, r>1+eps": 1,
                               "A<0, r<1-eps": 1, "A<0, inside": 1, "A<0, r>1+eps": 0}},
    kind="prediction",
)

# --------------------------------------------------------------------------- 06.trajectory_ratio


def trajectory_ratio(logp, logp_old, mask):
    """The trajectory importance ratio: the product of token ratios

    trajectory_ratio(logp (B,T), logp_old (B,T), mask (B,T)) -> (B,)
    """
    return torch.exp(((logp - logp_old) * mask).sum(-1))


def _ratio_cases(seed):
    out = []
    for k, (B, T, kind) in enumerate([(1, 1, "right"), (2, 3, "right"), (3, 5, "left"), (4, 6, "holes")]):
        g = gen(seed, k)
        lp_old = -randn(g, B, T).abs()
        out.append({"logp": (lp_old + randn(g, B, T, scale=0.3)).clamp(max=0.0), "logp_old": lp_old,
                    "mask": rand_mask(g, B, T, kind)})
    return out


def _toy_ratio_cases(seed):
    out = []
    for k, (V, H) in enumerate([(2, 1), (3, 2), (3, 3)]):
        mdp = ToyMDP.random(V, H, seed=seed * 13 + k)
        out.append((f"every sequence of ToyMDP.random(vocab_size={V}, horizon={H})",
                    (mdp, mdp.init_params(seed=seed * 13 + k + 1), mdp.init_params(seed=seed * 13 + k + 2))))
    return out


def _importance_identity(fn, case):
    mdp, theta, theta_old = case
    seq = mdp.sequences
    w = fn(mdp.token_logprobs(theta), mdp.token_logprobs(theta_old), seq.mask.clone())
    msg = compare(w, mdp.probabilities(theta) / mdp.probabilities(theta_old), 1e-10, 1e-8,
                  "ratio of every sequence (must be P_theta(tau) / P_old(tau))")
    if msg:
        return msg
    lhs = (mdp.probabilities(theta_old) * torch.as_tensor(w, dtype=DTYPE) * mdp.returns()).sum()
    return compare(lhs, mdp.objective(theta), 1e-10, 1e-8, "E_old[ratio * R] (must be J(theta))")


register(
    trajectory_ratio, 2, "easy",
    [for_cases("equals P_theta(tau)/P_old(tau) and E_old[ratio R] = J(theta) on the toy MDP (exact)",
               _toy_ratio_cases, _importance_identity),
     agrees("agrees with rlcourse.ratios.trajectory_ratio (incl. prompts, holes)", _ratio_cases,
            lambda **c: RA.trajectory_ratio(**c, clamp=None), 1e-10, 1e-8)],
    {"geometric_mean_not_product": lambda logp, logp_old, mask:
         torch.exp(((logp - logp_old) * mask).sum(-1) / mask.sum(-1)),
     "sum_of_token_ratios": lambda logp, logp_old, mask: (torch.exp(logp - logp_old) * mask).sum(-1),
     "mask_not_applied": lambda logp, logp_old, mask: torch.exp((logp - logp_old).sum(-1))},
)

# --------------------------------------------------------------------------- 06.gspo_ratio


def gspo_ratio(logp, logp_old, mask):
    """GSPO's sequence ratio: the geometric mean of the token ratios

    gspo_ratio(logp (B,T), logp_old (B,T), mask (B,T)) -> (B,)
    """
    m = mask.to(logp.dtype)
    return torch.exp(((logp - logp_old) * m).sum(-1) / m.sum(-1))


def _repeat_invariance(fn, case):
    c = dict(case)
    once = fn(c["logp"], c["logp_old"], c["mask"])
    twice = fn(torch.cat([c["logp"]] * 2, 1), torch.cat([c["logp_old"]] * 2, 1), torch.cat([c["mask"]] * 2, 1))
    return compare(twice, once, 1e-10, 1e-8, "ratio after repeating every response twice")


register(
    gspo_ratio, 2, "easy",
    [agrees("agrees with rlcourse.ratios.sequence_ratio (incl. length 1, prompts, holes)", _ratio_cases,
            lambda **c: RA.sequence_ratio(**c, clamp=None), 1e-10, 1e-8),
     for_cases("length-normalised: repeating a response twice leaves it unchanged",
               lambda seed: [(f"case {i}", c) for i, c in enumerate(_ratio_cases(seed))], _repeat_invariance)],
    {"product_not_geometric_mean": lambda logp, logp_old, mask: trajectory_ratio(logp, logp_old, mask),
     "mean_of_token_ratios": lambda logp, logp_old, mask:
         (torch.exp(logp - logp_old) * mask).sum(-1) / mask.sum(-1),
     "mask_not_applied": lambda logp, logp_old, mask: torch.exp((logp - logp_old).mean(-1))},
)

# --------------------------------------------------------------------------- 06.halve_double_beta


def halve_double_beta(beta, kl, target):
    """PPO's original adaptive KL rule: halve or double beta (Schulman et al. 2017)

    halve_double_beta(beta, kl, target) -> new beta
    """
    if kl < target / 1.5:
        return beta / 2
    if kl > target * 1.5:
        return beta * 2
    return beta


def _rule_cases(seed):
    g = gen(seed, 70)
    beta, target = 0.05 + float(torch.rand(1, generator=g)), 0.01 + 0.1 * float(torch.rand(1, generator=g))
    return [(f"beta={beta:.4g}, kl={f:g} * target, target={target:.4g}", (beta, f * target, target, f))
            for f in (0.0, 0.5, 0.66, 0.7, 1.0, 1.4, 1.6, 3.0, 100.0)]


def _rule(fn, case):
    beta, kl, target, f = case
    expected = beta / 2 if f < 1 / 1.5 else beta * 2 if f > 1.5 else beta
    got = fn(beta, kl, target)
    if not isinstance(got, (int, float)) and not (isinstance(got, torch.Tensor) and got.numel() == 1):
        return f"must return a number, got {type(got).__name__}"
    if abs(float(got) - expected) > 1e-12 * max(1.0, expected):
        return f"new beta {float(got):.6g}, expected {expected:.6g} (PPO: halve below target/1.5, double above 1.5 target)"
    return None


def _converges(fn, case):
    c, target = case
    beta = 1e-3
    for _ in range(40):
        beta = float(fn(beta, c / beta, target))
    kl = c / beta
    if not target / 1.5 <= kl <= target * 1.5:
        return f"after 40 updates with KL = c / beta the KL is {kl:.4g}, outside [target/1.5, 1.5 target]"
    return None


register(
    halve_double_beta, 2, "easy",
    [for_cases("the rule, at every band edge (kl from 0 to 100 x target)", _rule_cases, _rule),
     for_cases("brings KL = c/beta into [target/1.5, 1.5 target] from a beta 1000x too small",
               lambda seed: [(f"c={c}, target={t}", (c, t)) for c, t in ((1.0, 0.01), (0.05, 0.02))], _converges)],
    {"direction_reversed": lambda beta, kl, target:
         beta * 2 if kl < target / 1.5 else beta / 2 if kl > target * 1.5 else beta,
     "no_tolerance_band": lambda beta, kl, target: beta / 2 if kl < target else beta * 2,
     "factor_1_5": lambda beta, kl, target:
         beta / 1.5 if kl < target / 1.5 else beta * 1.5 if kl > target * 1.5 else beta},
)
