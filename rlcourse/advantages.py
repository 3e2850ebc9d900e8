r"""Returns, reward-to-go, TD residuals, GAE, and the group baselines of GRPO, Dr. GRPO and RLOO.

Per-token tensors are ``(B, T)`` with a 0/1 mask. The time steps of a trajectory are the
*counted* tokens of its row, in order: masked-out positions (a prompt on the left, padding on
the right, or a hole in the middle) are not steps, and the discount :math:`\gamma^k` counts
steps, not positions. After the last counted token the episode is over: the return and the
value there are 0. Every per-token result is 0 at masked-out positions.

Sequence-level rewards for GRPO-style methods are ``(B,)`` with groups of ``G`` consecutive
rows sampled from the same prompt.
"""

from __future__ import annotations

import torch

from rlcourse import _validate as check
from rlcourse.logprobs import masked_whiten

whiten = masked_whiten  # the same function, under the name used for advantages


def _per_token(rewards: torch.Tensor, mask: torch.Tensor, gamma: float, values: torch.Tensor | None = None) -> None:
    """Shared checks: float (B, T) rewards (and values) of one shape, a 0/1 mask, gamma in [0, 1]."""
    check.tensor("rewards", rewards, ndim=2)
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got dtype {rewards.dtype}")
    if values is not None:
        check.tensor("values", values, ndim=2)
        check.same_shape(rewards=rewards, values=values)
    check.mask("mask", mask, like=rewards, like_name="rewards")
    check.in_range("gamma", gamma, 0.0, 1.0)
    if rewards.shape[1] == 0:
        raise ValueError(f"rewards has no time steps (shape {tuple(rewards.shape)}): T must be >= 1")


def _per_sequence(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Shared checks for group baselines; returns rewards viewed as (B / G, G)."""
    check.tensor("rewards", rewards, ndim=1)
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got dtype {rewards.dtype}")
    check.group_size("group_size", group_size, rewards.shape[0])
    return rewards.view(-1, group_size)


def _constant_groups(grouped: torch.Tensor) -> torch.Tensor:
    """(B/G, 1) True where every reward of the group is equal.

    Such a group carries no learning signal; its advantage is set to exactly 0, since
    floating-point rounding of the mean would otherwise leave values of order 1e-17 (or, after
    dividing by a std of the same order, of order 1).
    """
    return (grouped == grouped[:, :1]).all(dim=1, keepdim=True)


# --------------------------------------------------------------------------- returns


def trajectory_return(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    r"""Discounted return of each whole trajectory.

    .. math::

        R(\tau_i) = \sum_{k=0}^{L_i - 1} \gamma^{k} r_{i,k}

    where :math:`k` numbers the counted tokens of row :math:`i` (the first counted token is
    :math:`k = 0`) and :math:`L_i` is their number.

    Args:
        rewards: (B, T) per-token rewards.
        mask: (B, T) 0/1 mask of counted tokens.
        gamma: discount :math:`\gamma \in [0, 1]`.

    Returns:
        (B,) returns.
    """
    _per_token(rewards, mask, gamma)
    m = mask.to(rewards.dtype)
    step = (m.cumsum(-1) - 1).clamp(min=0)  # k, the index of each counted token in its row
    discount = torch.full_like(rewards, gamma) ** step
    return (m * discount * rewards).sum(-1)


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    r"""Discounted reward-to-go at every counted token (backward recursion).

    .. math::

        G_t = \sum_{t' \ge t} \gamma^{t' - t} r_{t'} \quad\Longleftrightarrow\quad
        G_t = r_t + \gamma\, G_{t+1}, \qquad G_{\text{after the last token}} = 0

    with :math:`t, t'` running over counted tokens only.

    Args:
        rewards: (B, T) per-token rewards.
        mask: (B, T) 0/1 mask of counted tokens.
        gamma: discount :math:`\gamma \in [0, 1]`.

    Returns:
        (B, T) reward-to-go, 0 where ``mask`` is 0.
    """
    _per_token(rewards, mask, gamma)
    counted = mask.bool()
    running = torch.zeros_like(rewards[:, 0])
    out = []
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(counted[:, t], rewards[:, t] + gamma * running, running)
        out.append(torch.where(counted[:, t], running, torch.zeros_like(running)))
    return torch.stack(out[::-1], dim=1)


# --------------------------------------------------------------------------- TD and GAE


def td_residuals(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    r"""One-step temporal-difference residuals.

    .. math::

        \delta_t = r_t + \gamma V(s_{t+1}) - V(s_t), \qquad V(s_{\text{after the last token}}) = 0

    where :math:`t+1` is the next counted token of the row.

    Args:
        rewards: (B, T) per-token rewards.
        values: (B, T) value estimates :math:`V(s_t)`.
        mask: (B, T) 0/1 mask of counted tokens.
        gamma: discount :math:`\gamma \in [0, 1]`.

    Returns:
        (B, T) residuals, 0 where ``mask`` is 0.
    """
    _per_token(rewards, mask, gamma, values)
    counted = mask.bool()
    next_value = torch.zeros_like(values[:, 0])  # terminal: V = 0 after the last counted token
    out = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        out.append(torch.where(counted[:, t], delta, torch.zeros_like(delta)))
        next_value = torch.where(counted[:, t], values[:, t], next_value)
    return torch.stack(out[::-1], dim=1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Generalized advantage estimation by backward recursion (Schulman et al. 2016).

    .. math::

        \hat{A}_t = \delta_t + \gamma\lambda\, \hat{A}_{t+1}, \qquad \hat{A}_{\text{after the last token}} = 0,
        \qquad \hat{R}_t = \hat{A}_t + V(s_t)

    :math:`\lambda = 0` gives the TD residual :math:`\delta_t`; :math:`\lambda = 1` gives
    :math:`G_t - V(s_t)` (reward-to-go minus the value). :math:`\hat{R}_t` is the critic's target.

    Args:
        rewards: (B, T) per-token rewards.
        values: (B, T) value estimates.
        mask: (B, T) 0/1 mask of counted tokens (right padding, a prompt on the left, or both).
        gamma: discount :math:`\gamma \in [0, 1]`.
        lam: :math:`\lambda \in [0, 1]`.

    Returns:
        ``(advantages, returns)``, both (B, T) and 0 where ``mask`` is 0.
    """
    check.in_range("lam", lam, 0.0, 1.0)
    deltas = td_residuals(rewards, values, mask, gamma)
    counted = mask.bool()
    running = torch.zeros_like(deltas[:, 0])
    out = []
    for t in reversed(range(deltas.shape[1])):
        running = torch.where(counted[:, t], deltas[:, t] + gamma * lam * running, running)
        out.append(torch.where(counted[:, t], running, torch.zeros_like(running)))
    advantages = torch.stack(out[::-1], dim=1)
    returns = (advantages + values) * mask.to(values.dtype)
    return advantages, returns


def gae_closed_form(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                    lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Generalized advantage estimation as an explicit discounted sum of TD residuals.

    .. math::

        \hat{A}_t = \sum_{l \ge 0} (\gamma\lambda)^{l}\, \delta_{t+l}

    Computed as a (B, T, T) matrix of weights :math:`(\gamma\lambda)^{k' - k}` between counted
    steps :math:`k \le k'`, so it costs :math:`O(BT^2)`: an independent check of :func:`gae`,
    not a replacement for it. Same arguments and returns as :func:`gae`.
    """
    check.in_range("lam", lam, 0.0, 1.0)
    deltas = td_residuals(rewards, values, mask, gamma)
    m = mask.to(deltas.dtype)
    step = m.cumsum(-1)                                   # k (+1) of each counted token
    lag = step[:, None, :] - step[:, :, None]             # lag[b, t, s] = k_s - k_t
    counted_pair = m[:, :, None] * m[:, None, :]
    weight = torch.where((lag >= 0) & (counted_pair > 0),
                         torch.full_like(lag, gamma * lam) ** lag.clamp(min=0),
                         torch.zeros_like(lag))
    advantages = torch.einsum("bts,bs->bt", weight, deltas)
    returns = (advantages + values) * m
    return advantages, returns


# --------------------------------------------------------------------------- group baselines


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    r"""GRPO advantages: each reward standardised within its group (Shao et al. 2024).

    .. math::

        \hat{A}_i = \frac{r_i - \operatorname{mean}(r_{g(i)})}{\operatorname{std}(r_{g(i)}) + \epsilon}

    with :math:`\operatorname{std}` the unbiased standard deviation (divide by :math:`G - 1`)
    and :math:`\epsilon` outside the square root, as in TRL. ``scale=False`` keeps only the
    centring (Dr. GRPO's choice). A group of equal rewards gets exactly 0.

    Args:
        rewards: (B,) sequence rewards, groups of ``group_size`` consecutive rows.
        group_size: :math:`G \ge 2`, dividing B.
        eps: :math:`\epsilon \ge 0`.
        scale: divide by the group std.

    Returns:
        (B,) advantages.
    """
    grouped = _per_sequence(rewards, group_size)
    check.positive("eps", eps, allow_zero=True)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    centred = torch.where(_constant_groups(grouped), torch.zeros_like(centred), centred)
    return centred.reshape(-1)


def dr_grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    r"""Dr. GRPO advantages: each reward minus its group mean, no std division (Liu et al. 2025).

    .. math::

        \hat{A}_i = r_i - \frac{1}{G}\sum_{j \in g(i)} r_j

    Args:
        rewards: (B,) sequence rewards, groups of ``group_size`` consecutive rows.
        group_size: :math:`G \ge 2`, dividing B.

    Returns:
        (B,) advantages; exactly 0 for a group of equal rewards.
    """
    return grpo_advantages(rewards, group_size, scale=False)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    r"""RLOO advantages: each reward minus the mean of the *other* rewards of its group.

    .. math::

        \hat{A}_i = r_i - \frac{1}{G - 1}\sum_{j \in g(i),\, j \ne i} r_j = \frac{G}{G - 1}\big(r_i - \bar{r}_{g(i)}\big)

    The baseline does not depend on :math:`r_i`'s own sample, so the gradient estimate is
    unbiased (Kool et al. 2019; Ahmadian et al. 2024).

    Args:
        rewards: (B,) sequence rewards, groups of ``group_size`` consecutive rows.
        group_size: :math:`G \ge 2`, dividing B.

    Returns:
        (B,) advantages; exactly 0 for a group of equal rewards.
    """
    grouped = _per_sequence(rewards, group_size)
    leave_one_out_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    advantages = grouped - leave_one_out_mean
    advantages = torch.where(_constant_groups(grouped), torch.zeros_like(advantages), advantages)
    return advantages.reshape(-1)


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                            eps: float = 1e-8) -> torch.Tensor:
    r"""REINFORCE++ advantages: reward-to-go whitened over the whole batch (Hu 2025).

    .. math::

        \hat{A}_{i,t} = \frac{G_{i,t} - \operatorname{mean}_m(G)}{\sqrt{\operatorname{var}_m(G) + \epsilon}}

    with the masked mean and unbiased variance over every counted token of the batch (see
    :func:`rlcourse.logprobs.masked_whiten`); the baseline is global, not per prompt.

    Args:
        rewards: (B, T) per-token rewards (typically the sequence reward on the last token,
            minus a per-token KL penalty).
        mask: (B, T) 0/1 mask counting at least 2 tokens.
        gamma: discount :math:`\gamma \in [0, 1]`.
        eps: :math:`\epsilon \ge 0`.

    Returns:
        (B, T) advantages, 0 where ``mask`` is 0.
    """
    returns = reward_to_go(rewards, mask, gamma)
    return masked_whiten(returns, mask, shift_mean=True, eps=eps)


#: Group normalisers by name (:func:`group_advantages`). TRL 1.16 ``scale_rewards``:
#: "group" = ``zscore`` (its eps is 1e-4), "none" = ``mean``.
GROUP_NORMALIZERS = ("zscore", "mean", "std", "maxrl", "none", "rloo")

#: Default eps of :func:`group_advantages`, per normaliser. TRL 1.16's GRPOTrainer uses
#: ``(r - mean) / (std + 1e-4)``; the course uses 1e-6 (as :func:`grpo_advantages` always did;
#: pass ``eps=1e-4`` to reproduce TRL). MaxRL's eps guards a group mean of 0.
GROUP_EPS = {"zscore": 1e-6, "std": 1e-6, "maxrl": 1e-6}


def group_advantages(rewards: torch.Tensor, group_size: int, normalizer: str = "zscore",
                     eps: float | None = None) -> torch.Tensor:
    r"""Group-relative advantages of GRPO-style methods, the normaliser chosen by name.

    With :math:`\bar r_g` and :math:`\sigma_g` the mean and the unbiased std of the group of
    :math:`r_i` (G consecutive rows):

    .. math::

        \hat{A}_i = \begin{cases}
            (r_i - \bar r_g) / (\sigma_g + \epsilon)  & \text{zscore (GRPO, Shao et al. 2024; TRL scale\_rewards="group")} \\
            r_i - \bar r_g                            & \text{mean (Dr. GRPO, Liu et al. 2025; TRL scale\_rewards="none")} \\
            r_i / (\sigma_g + \epsilon)               & \text{std (scale only, no centring)} \\
            (r_i - \bar r_g) / (\bar r_g + \epsilon)  & \text{maxrl (divide by the group mean + eps)} \\
            r_i                                       & \text{none (the raw reward)} \\
            \frac{G}{G-1}(r_i - \bar r_g)             & \text{rloo (Kool et al. 2019; Ahmadian et al. 2024)}
        \end{cases}

    :math:`\epsilon` sits outside the square root (as in TRL). A group of equal rewards gets
    exactly 0 for every normaliser that centres (zscore, mean, maxrl, rloo).

    Args:
        rewards: (B,) sequence rewards, groups of ``group_size`` consecutive rows.
        group_size: :math:`G \ge 2`, dividing B.
        normalizer: one of :data:`GROUP_NORMALIZERS`.
        eps: :math:`\epsilon \ge 0`; default :data:`GROUP_EPS` (1e-6; TRL uses 1e-4).

    Returns:
        (B,) advantages.
    """
    check.choice("normalizer", normalizer, GROUP_NORMALIZERS)
    grouped = _per_sequence(rewards, group_size)
    if eps is None:
        eps = GROUP_EPS.get(normalizer, 0.0)
    eps = check.positive("eps", eps, allow_zero=True, allow_inf=False)
    if normalizer == "none":
        return rewards.clone()
    if normalizer == "rloo":
        return rloo_advantages(rewards, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    if normalizer == "std":
        return (grouped / (grouped.std(dim=1, keepdim=True) + eps)).reshape(-1)
    centred = grouped - mean
    if normalizer == "zscore":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif normalizer == "maxrl":
        denom = mean + eps
        if bool((denom == 0).any()):
            raise ValueError("maxrl: a group mean + eps is 0 (rewards averaging to -eps); "
                             "maxrl expects non-negative rewards")
        centred = centred / denom
    centred = torch.where(_constant_groups(grouped), torch.zeros_like(centred), centred)
    return centred.reshape(-1)
