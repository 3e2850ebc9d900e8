r"""The experiments of notebook 02 on the toy MDP: exact gradient ascent and sampled REINFORCE.

Both maximise :math:`J(\theta)` of :class:`rlcourse.toymdp.ToyMDP` from the same start and
record the exact objective along the way (computed by enumeration), so that the figures of
:mod:`rlcourse.plots.policy_gradient` can compare the runs with each other and with
:math:`J^* = \max_\tau R(\tau)`.
"""

from __future__ import annotations

import numpy as np
import torch

from rlcourse.advantages import trajectory_return
from rlcourse.derivations import policy_gradient as pg
from rlcourse.losses import policy_gradient_loss
from rlcourse.threads import cpu_threads
from rlcourse.toymdp import ToyMDP

__all__ = ["gradient_ascent", "training_curves", "TRAIN_STEPS", "TRAIN_LR", "TRAIN_BATCHES", "TRAIN_SEEDS"]

#: Steps and learning rate of every run of notebook 02.
TRAIN_STEPS = 200
TRAIN_LR = 0.3
#: REINFORCE's batch sizes and seeds in :func:`training_curves`.
TRAIN_BATCHES = (1, 16)
TRAIN_SEEDS = (0, 1, 2, 3, 4)


@cpu_threads(1)
def gradient_ascent(mdp: ToyMDP, theta0: torch.Tensor, steps: int = TRAIN_STEPS, lr: float = TRAIN_LR,
                    batch_size: int | None = None, seed: int = 0) -> dict:
    r"""Maximise :math:`J` by gradient ascent, :math:`\theta \leftarrow \theta + \eta\, \hat g`.

    ``batch_size=None``: the exact gradient :math:`\nabla_\theta J` (enumeration).
    ``batch_size=B``: REINFORCE, :math:`\hat g = \frac1B \sum_i R(\tau_i) \nabla_\theta \log P_\theta(\tau_i)`
    with :math:`\tau_i` sampled from :math:`\pi_\theta`, obtained as minus the gradient of
    :func:`rlcourse.losses.policy_gradient_loss` (aggregation ``seq_mean_token_sum``,
    advantage :math:`R(\tau_i)` on every token).

    Runs with one intra-op thread (:func:`rlcourse.threads.cpu_threads`): the toy MDP's tensors have tens
    of entries, and with several threads each tiny op pays a synchronisation that costs far more
    than the op on a loaded 2-core machine.

    Returns a dict of numpy arrays over the ``steps + 1`` iterates:
    ``J`` (exact objective), ``surrogate_loss`` (exact value of
    :math:`-\sum_\tau \mathrm{sg}[P_\theta]\, R \log P_\theta`, whose gradient is :math:`-\nabla J`),
    ``batch_loss`` (REINFORCE only, the value of the minibatch loss that was differentiated,
    ``steps`` entries), and ``theta`` (final parameters, a tensor).
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None (exact gradient) or a positive integer, got {batch_size!r}")
    theta = theta0.detach().clone().to(torch.float64)
    seq = mdp.sequences
    R = trajectory_return(seq.token_rewards, seq.mask)
    J, surrogate, batch_loss = [], [], []
    for k in range(steps + 1):
        J.append(float(mdp.objective(theta)))
        surrogate.append(-pg.surrogate_gradient(mdp, theta)[0])
        if k == steps:
            break
        if batch_size is None:
            grad = mdp.exact_gradient(theta)
        else:
            idx = mdp.sample(theta, batch_size, seed=seed * 100_003 + k)
            th = theta.clone().requires_grad_(True)
            logp = mdp.token_logprobs(th)[idx]
            loss = policy_gradient_loss(logp, R[idx], seq.mask[idx], aggregation="seq_mean_token_sum")
            (neg_grad,) = torch.autograd.grad(loss, th)
            grad = -neg_grad
            batch_loss.append(float(loss.detach()))
        theta = theta + lr * grad
    return {"J": np.array(J), "surrogate_loss": np.array(surrogate), "batch_loss": np.array(batch_loss),
            "theta": theta}


def training_curves(mdp: ToyMDP, theta: torch.Tensor) -> dict[str, np.ndarray]:
    """J over training: exact gradient ascent, and REINFORCE with each batch size of :data:`TRAIN_BATCHES`
    over :data:`TRAIN_SEEDS` (arrays of shape (runs, steps + 1))."""
    curves = {"exact gradient ascent": gradient_ascent(mdp, theta)["J"][None]}
    for B in TRAIN_BATCHES:
        curves[f"REINFORCE, B = {B}"] = np.stack(
            [gradient_ascent(mdp, theta, batch_size=B, seed=s)["J"] for s in TRAIN_SEEDS])
    return curves
