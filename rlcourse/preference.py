"""Preferences: Bradley-Terry reward models, the KL-regularised optimum, and the DPO family of losses.

The chain of the course: a Bradley-Terry model turns a reward difference into a
preference probability; the KL-regularised objective E_pi[r] - beta KL(pi || ref) has the
closed-form maximiser pi* proportional to pi_ref exp(r / beta); inverting it expresses the reward
through pi* ("implicit reward", log Z cancels inside Bradley-Terry), which gives DPO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlcourse import _validate as V
from rlcourse.kl import _check_normalised, kl_categorical

__all__ = [
    "bradley_terry_probability",
    "bradley_terry_loss",
    "implicit_reward",
    "DPO_LOSS_TYPES",
    "dpo_loss",
    "kl_regularized_optimum",
    "kl_regularized_objective",
]

#: Loss types accepted by :func:`dpo_loss`.
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def _pair(name_a: str, a, name_b: str, b) -> None:
    V.tensor(name_a, a)
    V.tensor(name_b, b)
    V.same_shape(**{name_a: a, name_b: b})


def bradley_terry_probability(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    r"""Bradley-Terry probability that the chosen response is preferred (Bradley & Terry 1952).

    .. math::

        P(y_w \succ y_l) = \frac{e^{r_w}}{e^{r_w} + e^{r_l}} = \sigma(r_w - r_l)

    Args:
        r_chosen, r_rejected: rewards of the two responses, same shape.

    Returns:
        probabilities, same shape.
    """
    _pair("r_chosen", r_chosen, "r_rejected", r_rejected)
    return torch.sigmoid(r_chosen - r_rejected)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin=0.0) -> torch.Tensor:
    r"""Reward-model loss: the Bradley-Terry negative log-likelihood, with an optional margin.

    As in InstructGPT (Ouyang et al. 2022); the margin is Llama 2's (Touvron et al. 2023).

    .. math::

        L = -\frac1B\sum_i \log\sigma\big(r_w^{(i)} - r_l^{(i)} - m^{(i)}\big)

    Args:
        r_chosen, r_rejected: (B,) rewards.
        margin: a number or a tensor of the shape of ``r_chosen``.

    Returns:
        scalar loss.
    """
    _pair("r_chosen", r_chosen, "r_rejected", r_rejected)
    V.nonempty("r_chosen", r_chosen)
    if isinstance(margin, torch.Tensor):
        V.tensor("margin", margin)
        V.same_shape(r_chosen=r_chosen, margin=margin)
    elif not V._is_number(margin) or margin != margin or abs(margin) == float("inf"):
        raise ValueError(f"margin must be a finite number or a tensor, got {margin!r}")
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def implicit_reward(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    r"""DPO's implicit reward of a response (Rafailov et al. 2023), up to the prompt-only term beta log Z(x).

    .. math::

        \hat r(x, y) = \beta\,\big(\log\pi_\theta(y \mid x) - \log\pi_{\text{ref}}(y \mid x)\big)

    Args:
        logp, logp_ref: (B,) sequence log-probs under the policy and the reference.
        beta: > 0.

    Returns:
        (B,) rewards.
    """
    _pair("logp", logp, "logp_ref", logp_ref)
    beta = V.positive("beta", beta, allow_inf=False)
    return beta * (logp - logp_ref)


def dpo_loss(policy_chosen_logp: torch.Tensor, policy_rejected_logp: torch.Tensor,
             ref_chosen_logp: torch.Tensor, ref_rejected_logp: torch.Tensor, beta: float = 0.1,
             loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""DPO-family preference loss on sequence log-probs (formulas of TRL's ``DPOTrainer``).

    With the log-ratio margin

    .. math::

        h = \big(\log\pi_\theta(y_w) - \log\pi_{\text{ref}}(y_w)\big)
          - \big(\log\pi_\theta(y_l) - \log\pi_{\text{ref}}(y_l)\big)

    the per-pair losses, averaged over the batch, are

    * ``"sigmoid"`` (DPO, Rafailov et al. 2023; conservative DPO with label smoothing
      :math:`\varepsilon`, Mitchell 2023):
      :math:`-(1-\varepsilon)\log\sigma(\beta h) - \varepsilon\log\sigma(-\beta h)`;
    * ``"ipo"`` (Azar et al. 2023): :math:`\big(h - \tfrac{1}{2\beta}\big)^2`;
    * ``"hinge"`` (SLiC, Zhao et al. 2023): :math:`\max(0, 1 - \beta h)`;
    * ``"robust"`` (rDPO, Chowdhury et al. 2024):
      :math:`\big(-(1-\varepsilon)\log\sigma(\beta h) + \varepsilon\log\sigma(-\beta h)\big)/(1-2\varepsilon)`.

    Notes on TRL 1.16: its ``"sigmoid"`` ignores ``label_smoothing`` (equal here at
    :math:`\varepsilon = 0`); its ``"ipo"`` divides each response's log-ratio by its
    number of tokens, so pass per-token-averaged log-probs to reproduce it. Label
    smoothing is rejected for ``"ipo"`` and ``"hinge"``, which have none.

    Args:
        policy_chosen_logp, policy_rejected_logp: (B,) sequence log-probs under the policy.
        ref_chosen_logp, ref_rejected_logp: (B,) the same under the frozen reference.
        beta: > 0.
        loss_type: one of ``DPO_LOSS_TYPES``.
        label_smoothing: :math:`\varepsilon \in [0, 0.5)` (sigmoid and robust only).

    Returns:
        (loss, chosen_rewards, rejected_rewards): scalar loss and the detached implicit
        rewards :math:`\beta(\log\pi_\theta - \log\pi_{\text{ref}})` of each response, (B,).
    """
    names = {"policy_chosen_logp": policy_chosen_logp, "policy_rejected_logp": policy_rejected_logp,
             "ref_chosen_logp": ref_chosen_logp, "ref_rejected_logp": ref_rejected_logp}
    for name, x in names.items():
        V.tensor(name, x, ndim=1)
    V.same_shape(**names)
    V.nonempty("policy_chosen_logp", policy_chosen_logp)
    beta = V.positive("beta", beta, allow_inf=False)
    V.choice("loss_type", loss_type, DPO_LOSS_TYPES)
    if not V._is_number(label_smoothing) or not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing!r}")
    if label_smoothing != 0.0 and loss_type in ("ipo", "hinge"):
        raise ValueError(f"label_smoothing={label_smoothing} has no meaning for loss_type={loss_type!r}")

    chosen_logratio = policy_chosen_logp - ref_chosen_logp
    rejected_logratio = policy_rejected_logp - ref_rejected_logp
    h = chosen_logratio - rejected_logratio
    eps = float(label_smoothing)
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # robust
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    return losses.mean(), (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()


def kl_regularized_optimum(ref_logprobs: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    r"""Log-probs of the maximiser of the KL-regularised objective (Ziegler et al. 2019; Rafailov et al. 2023, Eq. 4).

    .. math::

        \pi^*(y) = \frac{1}{Z}\,\pi_{\text{ref}}(y)\,e^{r(y)/\beta},\qquad
        Z = \sum_{y} \pi_{\text{ref}}(y)\,e^{r(y)/\beta}

    computed as ``log_softmax(log pi_ref + r / beta)`` over the last dimension.

    Args:
        ref_logprobs: (..., V) or (N,) normalised reference log-probs (full support).
        rewards: same shape.
        beta: > 0.

    Returns:
        log-probs of pi*, same shape, normalised along the last dimension.
    """
    _check_normalised("ref_logprobs", ref_logprobs)
    V.tensor("rewards", rewards)
    V.same_shape(ref_logprobs=ref_logprobs, rewards=rewards)
    beta = V.positive("beta", beta, allow_inf=False)
    return torch.log_softmax(ref_logprobs + rewards / beta, dim=-1)


def kl_regularized_objective(logp: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor,
                             beta: float) -> torch.Tensor:
    r"""The KL-regularised RLHF objective, exactly over a categorical (to be maximised).

    .. math::

        J(\pi) = \mathbb{E}_{y\sim\pi}[r(y)] - \beta\,\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})
               = \sum_y \pi(y)\,r(y) - \beta \sum_y \pi(y)\big(\log\pi(y) - \log\pi_{\text{ref}}(y)\big)

    Args:
        logp, ref_logp: (..., V) normalised log-probs of the policy and the reference.
        rewards: (..., V) reward of each outcome.
        beta: >= 0.

    Returns:
        (...) the objective.
    """
    _check_normalised("logp", logp)
    _check_normalised("ref_logp", ref_logp)
    V.tensor("rewards", rewards)
    V.same_shape(logp=logp, ref_logp=ref_logp, rewards=rewards)
    beta = V.positive("beta", beta, allow_zero=True)
    return (logp.exp() * rewards).sum(-1) - beta * kl_categorical(logp, ref_logp)
