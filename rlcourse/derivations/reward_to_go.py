r"""Reward-to-go: an action cannot be credited with rewards that came before it.

Statement. Write the return as past plus future rewards around each step :math:`t`,
:math:`R(\tau) = \sum_{t' < t} r_{t'} + G_t` with :math:`G_t = \sum_{t' \ge t} r_{t'}`. Then

.. math::

    \nabla_\theta J
      = \mathbb{E}\Big[\sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)\, R(\tau)\Big]
      = \underbrace{\mathbb{E}\Big[\sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)
            \sum_{t' < t} r_{t'}\Big]}_{=\,0}
      + \mathbb{E}\Big[\sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)\, G_t\Big].

The first term vanishes: the past rewards are fixed once :math:`s_t` is known (the prefix
contains them), so conditioning on :math:`s_t` leaves
:math:`\mathbb{E}_{a_t \sim \pi(\cdot \mid s_t)}[\nabla \log \pi(a_t \mid s_t)] = 0` (EGLP).
The reward-to-go estimator keeps the mean and drops a term that only adds noise. That the
variance goes *down* is not a theorem (the dropped term can be correlated with the kept
one); it is measured here, exactly, on the toy MDP.

The current reward :math:`r_t` must stay: it depends on :math:`a_t`, so the "future only"
weight :math:`\sum_{t' > t} r_{t'}` is biased whenever per-token rewards are nonzero.

Checks (toy MDP with per-token and terminal rewards, :math:`\gamma = 1`). The reference
:math:`G_t` and past sums are enumerated directly from each sequence's per-token rewards (a
plain loop over its steps), never from :func:`rlcourse.advantages.reward_to_go`:

* exact: :func:`rlcourse.advantages.reward_to_go` equals the enumerated :math:`G_t` on every
  sequence (:math:`\gamma = 1` and :math:`\gamma = 0.9`);
* exact: the past-reward term :math:`\sum_\tau P \sum_t \nabla\log\pi_t \sum_{t'<t} r_{t'}`, with the
  enumerated past sums, is 0 (per-token scores, 1e-10);
* exact: the reward-to-go estimator (weights from :func:`~rlcourse.advantages.reward_to_go`) has
  mean :math:`\nabla_\theta J`, as the full-return estimator does;
* exact: the trace of the covariance of the reward-to-go estimator is below that of the
  full-return estimator (both traces reported);
* Monte Carlo: the sample mean of the reward-to-go estimator is within 4 standard errors of
  :math:`\nabla_\theta J`;
* negative control: an off-by-one reward-to-go (the current reward dropped, :math:`\sum_{t'>t} r_{t'}`)
  is not the enumerated :math:`G_t`, and as an estimator weight it does not give :math:`\nabla_\theta J`;
* negative control: the past rewards alone (weight :math:`\sum_{t'<t} r_{t'}`) do not give
  :math:`\nabla_\theta J` (their mean is 0).

REINFORCE++ (Hu 2025) uses this reward-to-go (discounted, :math:`\gamma \le 1`) whitened over every
counted token of the batch, with :func:`rlcourse.logprobs.masked_whiten`:
:math:`\tilde x = m\,(x - \bar x_m)/\sqrt{\mathrm{var}_m(x) + \epsilon}` (unbiased variance, :math:`\epsilon`
inside the root, as in TRL's former PPO trainer and verl). Checks:

* exact: ``masked_whiten`` equals the whitening of the flat vector of counted entries (torch's
  ``mean``/``var``) on data of variance about :math:`10^{-8}`, where the placement of
  :math:`\epsilon = 10^{-8}` matters; negative control: :math:`\epsilon` outside the root,
  :math:`(x - \bar x)/(\mathrm{std} + \epsilon)`, is rejected;
* exact: padding filled with values of order :math:`10^6` does not change the result; negative
  control: whitening that includes the padding is rejected;
* exact: ``shift_mean=False`` adds the mean back at counted entries;
* exact: :func:`rlcourse.advantages.reinforce_pp_advantages` at :math:`\gamma = 0.9` equals the
  enumerated discounted :math:`G_t` whitened over the batch, on the toy MDP's sequences and on a
  synthetic batch with left prompts and right padding (steps are counted tokens); negative
  control: the same with :math:`\gamma` dropped (:math:`\gamma = 1`) is rejected.
"""

from __future__ import annotations

import torch

from rlcourse.advantages import reinforce_pp_advantages, reward_to_go, trajectory_return
from rlcourse.derivations.base import Check, derivation, exact, inequality, monte_carlo, negative_control
from rlcourse.logprobs import masked_whiten
from rlcourse.toymdp import ToyMDP, course_problem

NAME = "reward_to_go"


def per_token_estimates(mdp: ToyMDP, theta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""Per-sequence estimates :math:`\sum_t w_t(\tau)\, \nabla_\theta \log \pi_\theta(a_t \mid s_t)`,
    shape (N, S, V), for per-token weights ``weights`` (N, H) on every enumerated sequence."""
    return torch.einsum("nt,ntsa->nsa", weights, mdp.token_scores(theta))


def full_return_weights(mdp: ToyMDP) -> torch.Tensor:
    r""":math:`w_t = R(\tau)` at every counted step, (N, H)."""
    seq = mdp.sequences
    return trajectory_return(seq.token_rewards, seq.mask)[:, None] * seq.mask


def enumerated_sums(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Reference sums around each counted step, by a plain loop over each row's counted tokens:
    :math:`G_t = \sum_{t' \ge t} \gamma^{t'-t} r_{t'}`, the future-only :math:`\sum_{t' > t} \gamma^{t'-t} r_{t'}`
    and the past :math:`\sum_{t' < t} r_{t'}`, each (B, T) and 0 at masked-out positions.

    Independent of :func:`rlcourse.advantages.reward_to_go` (no recursion, no shared code): the
    reference it is checked against. The exponent counts steps (counted tokens), not positions."""
    B, T = rewards.shape
    togo, future, past = (torch.zeros(B, T, dtype=torch.float64) for _ in range(3))
    for i in range(B):
        steps = [t for t in range(T) if float(mask[i, t]) == 1.0]
        r = [float(rewards[i, t]) for t in steps]
        for k, t in enumerate(steps):
            togo[i, t] = sum(gamma ** (j - k) * r[j] for j in range(k, len(steps)))
            future[i, t] = sum(gamma ** (j - k) * r[j] for j in range(k + 1, len(steps)))
            past[i, t] = sum(r[:k])
    return togo, future, past


def reward_to_go_weights(mdp: ToyMDP) -> torch.Tensor:
    r""":math:`w_t = G_t = \sum_{t' \ge t} r_{t'}` from :func:`rlcourse.advantages.reward_to_go` (under test), (N, H)."""
    seq = mdp.sequences
    return reward_to_go(seq.token_rewards, seq.mask)


def past_reward_weights(mdp: ToyMDP) -> torch.Tensor:
    r""":math:`w_t = \sum_{t' < t} r_{t'}`, (N, H), enumerated: the boxed term of the derivation."""
    seq = mdp.sequences
    return enumerated_sums(seq.token_rewards, seq.mask)[2]


def future_only_weights(mdp: ToyMDP) -> torch.Tensor:
    r"""Wrong on purpose: :math:`w_t = \sum_{t' > t} r_{t'}` (the current reward dropped; an off-by-one reward-to-go), (N, H)."""
    seq = mdp.sequences
    return enumerated_sums(seq.token_rewards, seq.mask)[1]


def whiten_reference(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, eps_inside: bool = True,
                     shift_mean: bool = True) -> torch.Tensor:
    r"""Whitening from the flat vector of counted entries (torch ``mean`` and unbiased ``var``):
    :math:`(x - \bar x)/\sqrt{\mathrm{var} + \epsilon}`, or :math:`(x - \bar x)/(\mathrm{std} + \epsilon)` with
    ``eps_inside=False`` (wrong on purpose); 0 at masked-out entries."""
    keep = mask.bool()
    flat = x[keep]
    mean, var = flat.mean(), flat.var(unbiased=True)
    scale = (var + eps).sqrt() if eps_inside else var.sqrt() + eps
    out = torch.zeros_like(x)
    out[keep] = (flat - mean) / scale + (0.0 if shift_mean else mean)
    return out


def whitening_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 (6, 9) batch of small-variance values (std 1e-4, so that var ~ eps = 1e-8) and a mask
    with left prompts and right padding."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 1e-4 * torch.randn(6, 9, generator=g, dtype=torch.float64)
    mask = torch.zeros(6, 9, dtype=torch.float64)
    for i in range(6):
        start = i % 3
        mask[i, start:start + 3 + (i * 5) % 6] = 1.0
    return x, mask


def exact_mean(p: torch.Tensor, estimates: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathbb{E}[X] = \sum_\tau P(\tau) X(\tau)` for per-sequence estimates (N, ...)."""
    return torch.einsum("n,n...->...", p, estimates)


def exact_variance_trace(p: torch.Tensor, estimates: torch.Tensor) -> float:
    r"""Trace of the covariance, :math:`\sum_\tau P(\tau)\, \lVert X(\tau) - \mathbb{E}X \rVert^2`."""
    x = estimates.reshape(estimates.shape[0], -1)
    mu = p @ x
    return float(p @ ((x - mu) ** 2).sum(-1))


@derivation(NAME, "Reward-to-go", source="rlhf-derivation, unified-rl-llm")
def checks() -> list[Check]:
    mdp, theta = course_problem()
    truth = mdp.exact_gradient(theta)
    p = mdp.probabilities(theta).detach()

    seq = mdp.sequences
    togo, future_sum, _ = enumerated_sums(seq.token_rewards, seq.mask)
    out = [exact(NAME, "reward_to_go == enumerated G_t = sum_{t'>=t} r_t' on every sequence", togo,
                 reward_to_go_weights(mdp), detail=f"{mdp.num_sequences} sequences, per-token and terminal rewards"),
           negative_control(exact(NAME, "off-by-one reward-to-go sum_{t'>t} r_t' == enumerated G_t", togo, future_sum),
                            detail="the current reward dropped: must be rejected")]

    full = per_token_estimates(mdp, theta, full_return_weights(mdp))
    rtg = per_token_estimates(mdp, theta, reward_to_go_weights(mdp))
    past = per_token_estimates(mdp, theta, past_reward_weights(mdp))

    out.append(exact(NAME, "E[sum_t grad log pi_t * sum_{t'<t} r_t'] == 0 (the past-reward term)",
                     torch.zeros_like(truth), exact_mean(p, past),
                     detail=f"enumeration of {mdp.num_sequences} sequences, enumerated past sums, per-token scores"))
    out.append(exact(NAME, "E[sum_t grad log pi_t * G_t] == grad J", truth, exact_mean(p, rtg),
                     detail="reward-to-go estimator, exact mean by enumeration"))
    out.append(exact(NAME, "E[R(tau) sum_t grad log pi_t] == grad J", truth, exact_mean(p, full),
                     detail="full-return estimator, same mean"))

    v_full, v_rtg = exact_variance_trace(p, full), exact_variance_trace(p, rtg)
    out.append(inequality(NAME, "tr Var[full return] - tr Var[reward-to-go] >= 0", 0.0, v_full - v_rtg,
                          detail=f"exact traces: full return {v_full:.4f}, reward-to-go {v_rtg:.4f} "
                                 "(measured on this MDP, not a theorem)"))

    idx = mdp.sample(theta, 20000, seed=0)
    out.append(monte_carlo(NAME, "mean of sum_t grad log pi_t G_t (sampled) == grad J", truth.flatten(),
                           rtg[idx].reshape(len(idx), -1)))

    future = exact_mean(p, per_token_estimates(mdp, theta, future_only_weights(mdp)))
    wrong = [("E[sum_t grad log pi_t * sum_{t'>t} r_t'] (current reward dropped)", future,
              f"r_t depends on a_t, dropping it biases the gradient: max bias {float((future - truth).abs().max()):.3f}"),
             ("E[sum_t grad log pi_t * sum_{t'<t} r_t'] (past rewards only)", exact_mean(p, past),
              "the past-reward term has mean 0, not grad J: must be rejected")]
    out += [negative_control(exact(NAME, f"{label} == grad J", truth, value), detail=why) for label, value, why in wrong]
    return out + reinforce_pp_checks(mdp)


def reinforce_pp_checks(mdp: ToyMDP) -> list[Check]:
    """masked_whiten's conventions and REINFORCE++ advantages at gamma < 1 against enumerated references."""
    x, m = whitening_batch()
    ref = whiten_reference(x, m)
    var = float(x[m.bool()].var())
    out = [exact(NAME, "masked_whiten == (x - mean) / sqrt(var + eps) over the counted entries", ref,
                 masked_whiten(x, m, eps=1e-8),
                 detail=f"unbiased var = {var:.2e}, eps = 1e-8 inside the root; {int(m.sum())} counted of {m.numel()}")]
    out.append(negative_control(
        exact(NAME, "masked_whiten == (x - mean) / (std + eps) (eps outside the root)",
              whiten_reference(x, m, eps_inside=False), masked_whiten(x, m, eps=1e-8)),
        detail="with var ~ eps the two placements differ by a factor ~sqrt(2); must be rejected"))
    noise = 1e6 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    padded = torch.where(m.bool(), x, noise)
    out.append(exact(NAME, "masked_whiten ignores masked-out entries (padding ~1e6)", ref, masked_whiten(padded, m)))
    everything = masked_whiten(padded, torch.ones_like(m)) * m
    out.append(negative_control(
        exact(NAME, "whitening that includes the padding == masked_whiten reference", ref, everything),
        detail="statistics over padded positions: must be rejected"))
    out.append(exact(NAME, "masked_whiten(shift_mean=False) == whitened + mean at counted entries",
                     whiten_reference(x, m, shift_mean=False), masked_whiten(x, m, shift_mean=False)))

    from rlcourse.derivations.gae import random_batch

    gamma = 0.9
    batch_r, _, batch_m = random_batch(seed=3)
    seq = mdp.sequences
    for label, rewards, mask in (("toy MDP sequences", seq.token_rewards, seq.mask),
                                 ("batch with prompts and padding", batch_r, batch_m)):
        togo = enumerated_sums(rewards, mask, gamma)[0]
        expected = whiten_reference(togo, mask)
        out.append(exact(NAME, f"reward_to_go(gamma={gamma}) == enumerated G_t ({label})", togo,
                         reward_to_go(rewards, mask, gamma)))
        out.append(exact(NAME, f"REINFORCE++ advantages (gamma={gamma}) == whitened enumerated G_t ({label})",
                         expected, reinforce_pp_advantages(rewards, mask, gamma=gamma),
                         detail=f"{rewards.shape[0]} rows, {int(mask.sum())} counted tokens, global whitening"))
        out.append(negative_control(
            exact(NAME, f"REINFORCE++ with gamma dropped == whitened G_t at gamma={gamma} ({label})",
                  expected, reinforce_pp_advantages(rewards, mask, gamma=1.0)),
            detail="gamma = 1 in place of 0.9: must be rejected"))
    return out
