r"""The GRPO objective on the toy MDP: the exact expected gradient of ``grpo_loss`` at θ_old.

Statement. Draw a group of :math:`G` sequences :math:`\tau_1..\tau_G \sim P_{\theta_{\text{old}}}`,
z-score their returns,

.. math::

    \hat A_i = \frac{R_i - \bar R}{\sigma + \epsilon},\qquad
    \sigma = \sqrt{\tfrac{1}{G-1}\textstyle\sum_j (R_j - \bar R)^2}\quad(\epsilon \text{ outside the root}),

and minimise GRPO's loss with the per-sequence token mean. At :math:`\theta = \theta_{\text{old}}`
every ratio is 1, no clip is active, and

.. math::

    -\nabla_\theta\, \mathbb{E}[L_{\text{GRPO}}] = \mathbb{E}\Big[\frac1G\sum_i \hat A_i\,
        \frac{1}{|\tau_i|}\nabla_\theta \log P_\theta(\tau_i)\Big].

Both sides are computed exactly by enumerating all :math:`N^G` ordered groups: the left side by
autograd through :func:`rlcourse.losses.grpo_loss` called on every group, the right side from
the score function of the toy MDP and an advantage formula written out here independently.

Checks: the z-score advantages of :func:`rlcourse.advantages.grpo_advantages` and of
:func:`rlcourse.advantages.group_advantages` against the independent formula on every group
(negative controls: the biased std, and eps inside the square root); the expected gradient
identity (negative control: the same identity without the 1/|τ| factor); the clip-higher and
dual-clip cells of the gradient truth table through ``grpo_loss`` (negative control: the
symmetric clip in the clip-higher cell).
"""

from __future__ import annotations

import math

import torch

from rlcourse.advantages import group_advantages, grpo_advantages
from rlcourse.derivations.base import Check, derivation, exact, negative_control
from rlcourse.derivations.grpo_advantage import all_groups
from rlcourse.losses import grpo_loss
from rlcourse.toymdp import ToyMDP

NAME = "grpo_objective"
EPS = 0.05  # large enough that "eps inside the root" differs visibly


def zscore_reference(R: torch.Tensor, eps: float = EPS, *, biased: bool = False, eps_inside: bool = False
                     ) -> torch.Tensor:
    """Independent z-score of each row of ``R`` (M, G), written with Python sums; 0 for a constant row."""
    out = torch.zeros_like(R)
    G = R.shape[1]
    for m in range(R.shape[0]):
        row = [float(v) for v in R[m]]
        mean = sum(row) / G
        ss = sum((v - mean) ** 2 for v in row)
        var = ss / (G if biased else G - 1)
        if all(v == row[0] for v in row):
            continue
        denom = math.sqrt(var + eps) if eps_inside else math.sqrt(var) + eps
        out[m] = torch.tensor([(v - mean) / denom for v in row], dtype=R.dtype)
    return out


def expected_grpo_gradient_by_loss(mdp: ToyMDP, theta: torch.Tensor, G: int, eps: float = EPS) -> torch.Tensor:
    """-grad of E_groups[grpo_loss] at theta = theta_old, by autograd through ``grpo_loss`` on every group."""
    th = theta.detach().clone().requires_grad_(True)
    seq = mdp.sequences
    groups = all_groups(mdp.num_sequences, G)
    weight = mdp.probabilities(theta.detach())[groups].prod(dim=1)
    R = mdp.returns()
    tok_logp = mdp.token_logprobs(th)
    total = torch.zeros((), dtype=torch.float64)
    for k in range(groups.shape[0]):
        idx = groups[k]
        logp = tok_logp[idx]
        mask = seq.mask[idx]
        adv = grpo_advantages(R[idx], G, eps=eps)
        loss, _ = grpo_loss(logp, logp.detach(), adv, mask, aggregation="seq-mean-token-mean")
        total = total + weight[k] * loss
    (g,) = torch.autograd.grad(total, th)
    return -g


def expected_grpo_gradient_by_formula(mdp: ToyMDP, theta: torch.Tensor, G: int, eps: float = EPS, *,
                                      per_token_mean: bool = True, **zscore_kwargs) -> torch.Tensor:
    r""":math:`\mathbb{E}[\frac1G\sum_i \hat A_i \frac{1}{|\tau_i|}\nabla\log P(\tau_i)]` from the score function."""
    groups = all_groups(mdp.num_sequences, G)
    weight = mdp.probabilities(theta.detach())[groups].prod(dim=1)
    adv = zscore_reference(mdp.returns()[groups], eps, **zscore_kwargs)
    lengths = mdp.sequences.lengths.to(torch.float64)
    scale = 1.0 / lengths[groups] if per_token_mean else torch.ones_like(adv)
    coef = torch.zeros(mdp.num_sequences, dtype=torch.float64).index_add_(
        0, groups.reshape(-1), (weight[:, None] * adv * scale).reshape(-1))
    return torch.einsum("n,nsa->sa", coef, mdp.score(theta)) / G


def clip_cell_gradient(ratio: float, advantage: float, **kw) -> float:
    """d grpo_loss / d log pi for one token with the given ratio and advantage."""
    logp_old = torch.tensor([[-3.0]], dtype=torch.float64)
    logp = (logp_old + math.log(ratio)).requires_grad_(True)
    loss, _ = grpo_loss(logp, logp_old, torch.tensor([advantage], dtype=torch.float64),
                        torch.ones(1, 1, dtype=torch.float64), aggregation="token-mean", **kw)
    (g,) = torch.autograd.grad(loss, logp)
    return float(g)


@derivation(NAME, "GRPO objective: exact expected gradient of grpo_loss at theta_old", source="rlhf-derivation, wei-rl-llm")
def checks() -> list[Check]:
    mdp = ToyMDP.random(vocab_size=3, horizon=2, seed=5)
    theta = mdp.init_params(seed=6)
    G = 3
    N = mdp.num_sequences
    groups = all_groups(N, G)
    R = mdp.returns()[groups]
    out = []

    ref = zscore_reference(R)
    out.append(exact(NAME, "grpo_advantages == independent z-score, every group (G=3)", ref,
                     grpo_advantages(R.reshape(-1), G, eps=EPS).reshape(R.shape),
                     detail=f"all {N}^{G} = {N ** G} groups; unbiased std, eps outside the root"))
    out.append(exact(NAME, "group_advantages('zscore') == independent z-score", ref,
                     group_advantages(R.reshape(-1), G, "zscore", eps=EPS).reshape(R.shape)))
    out.append(negative_control(exact(NAME, "z-score with the biased std (1/G) == grpo_advantages",
                                      zscore_reference(R, biased=True), ref),
                                detail="the std divides by G - 1 (torch's default, TRL's); must be rejected"))
    out.append(negative_control(exact(NAME, "z-score with eps inside the root == grpo_advantages",
                                      zscore_reference(R, eps_inside=True), ref),
                                detail="eps is added to the std, not to the variance; must be rejected"))

    by_loss = expected_grpo_gradient_by_loss(mdp, theta, G)
    out.append(exact(NAME, "-grad E[grpo_loss] == E[mean_i A_i grad log P / |tau_i|] (G=3)",
                     expected_grpo_gradient_by_formula(mdp, theta, G), by_loss,
                     detail="grpo_loss called on every enumerated group, weights P(group)"))
    out.append(negative_control(exact(NAME, "... without the 1/|tau_i| token mean",
                                      expected_grpo_gradient_by_formula(mdp, theta, G, per_token_mean=False),
                                      by_loss),
                                detail="seq-mean-token-mean divides each sequence by its length; must be rejected"))

    # clip-higher (DAPO): eps_low=0.2, eps_high=0.28; dual clip (TRL delta=3) for A < 0
    cells = [
        ("clip-higher: A>0, ratio 1.25 in (1.2, 1.28]: gradient -rA", 1.25, 1.0, {"eps_high": 0.28}, -1.25),
        ("clip-higher: A>0, ratio 1.30 > 1.28: gradient 0", 1.30, 1.0, {"eps_high": 0.28}, 0.0),
        ("dual clip: A<0, ratio 2 < delta=3: gradient -rA", 2.0, -1.0, {"delta": 3.0}, 2.0),
        ("dual clip: A<0, ratio 4 > delta=3: gradient 0", 4.0, -1.0, {"delta": 3.0}, 0.0),
        ("dual clip: A>0, ratio 4: clipped at 1.2, gradient 0", 4.0, 1.0, {"delta": 3.0}, 0.0),
    ]
    for label, r, a, kw, expected in cells:
        out.append(exact(NAME, label, expected, clip_cell_gradient(r, a, **kw), tol=1e-12))
    out.append(negative_control(exact(NAME, "symmetric clip (eps_high=eps_low=0.2) at ratio 1.25, A>0: -rA",
                                      -1.25, clip_cell_gradient(1.25, 1.0)),
                                detail="the symmetric clip zeroes this cell; must be rejected"))
    return out
