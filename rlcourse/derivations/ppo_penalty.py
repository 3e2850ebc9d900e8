r"""PPO with a KL penalty, and the adaptive rule for its coefficient.

Statement. PPO-penalty (Schulman et al. 2017, Sec. 4) minimises, on data from
:math:`\pi_{\text{old}}`,

.. math::

    L(\theta) = \mathbb{E}_{\text{old}}\Big[\sum_t -\rho_t A_t + \beta\, \hat k_t\Big],
    \qquad \hat k_t = (\rho_t - 1) - \log \rho_t ,

where :math:`\hat k_t` (the k3 estimator, tokens from :math:`\pi_{\text{old}}`) has conditional mean
:math:`\mathrm{KL}(\pi_{\text{old}}(\cdot \mid s_t) \,\|\, \pi_\theta(\cdot \mid s_t))` because
:math:`\mathbb{E}_{\text{old}}[\rho_t \mid s_t] = 1`. Hence, exactly,

.. math::

    L(\theta) = -\mathbb{E}_{\text{old}}\Big[\sum_t \rho_t A_t\Big]
              + \beta \sum_s d_{\text{old}}(s)\, \mathrm{KL}\big(\pi_{\text{old}}(\cdot \mid s) \,\|\, \pi_\theta(\cdot \mid s)\big),

with :math:`d_{\text{old}}(s)` the probability of visiting :math:`s`. At :math:`\theta = \theta_{\text{old}}`
the KL term is at its minimum, so the penalty does not change the first step: the gradient
is the policy gradient's. The coefficient is adapted between updates (Ziegler et al. 2019):

.. math::

    e = \operatorname{clip}\Big(\frac{\mathrm{KL}}{\mathrm{KL}_{\text{target}}} - 1, -0.2, 0.2\Big),
    \qquad \beta \leftarrow \beta\,\big(1 + e\, n_{\text{steps}} / H\big):

:math:`\beta` goes up when the measured KL is above the target and down when it is below,
by a relative step of at most :math:`0.2\, n_{\text{steps}}/H`. If the policy's KL falls as
:math:`\beta` rises (modelled here as :math:`\mathrm{KL}(\beta) = c/\beta`), the fixed point
:math:`\beta^\star = c / \mathrm{KL}_{\text{target}}` is attracting: near it,
:math:`\beta/\beta^\star - 1` shrinks by the factor :math:`1 - n_{\text{steps}}/H` per update.

Checks:

* exact: with :math:`\mathrm{KL} = c/\beta`, :class:`rlcourse.losses.AdaptiveKLController` brings the
  KL to the target (1e-10, relative) from a :math:`\beta` 10x too small and from one 10x too large;
* exact: every move has the sign of :math:`\mathrm{KL} - \mathrm{KL}_{\text{target}}`;
* exact: every relative step is at most :math:`0.2\, n_{\text{steps}}/H`, and equals it when the KL is
  100x the target (and minus it when 100x below);
* exact (toy MDP, :math:`\theta \ne \theta_{\text{old}}`, :math:`A = A^{\text{old}}`): the expected
  :func:`rlcourse.losses.ppo_penalty_loss` equals the formula above, in value and in gradient;
* exact (toy MDP at :math:`\theta_{\text{old}}`): its gradient is :math:`-\nabla_\theta J`;
* negative control: the sign-reversed rule drives the KL away from the target;
* negative control: the formula with the KL in the other direction,
  :math:`\mathrm{KL}(\pi_\theta \,\|\, \pi_{\text{old}})`, does not match the loss.
"""

from __future__ import annotations

import torch

from rlcourse.derivations.base import Check, derivation, exact, inequality, negative_control
from rlcourse.kl import kl_categorical
from rlcourse.losses import AdaptiveKLController, ppo_penalty_loss
from rlcourse.ratios import token_ratio
from rlcourse.toymdp import ToyMDP, course_problem

NAME = "ppo_penalty"


class SignReversedKLController(AdaptiveKLController):
    r"""Wrong on purpose: :math:`\beta \leftarrow \beta (1 - e\, n_{\text{steps}}/H)` (lowers beta when the KL is too high)."""

    def update(self, kl, n_steps: int) -> float:
        e = min(max(float(kl) / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 - e * n_steps / self.horizon
        return self.beta


def simulate_adaptive_kl(controller: AdaptiveKLController, c: float, n_updates: int, n_steps: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Run the controller against a policy whose KL responds to beta as :math:`\mathrm{KL} = c / \beta`.

    Returns (betas, kls), both (n_updates + 1,): beta before each update and the KL it produced.
    """
    betas, kls = [controller.beta], [c / controller.beta]
    for _ in range(n_updates):
        controller.update(kls[-1], n_steps)
        betas.append(controller.beta)
        kls.append(c / controller.beta)
    return torch.tensor(betas, dtype=torch.float64), torch.tensor(kls, dtype=torch.float64)


def expected_penalty_loss(mdp: ToyMDP, theta: torch.Tensor, theta_old: torch.Tensor, beta: float) -> torch.Tensor:
    r""":math:`\sum_\tau P_{\text{old}}(\tau)\, L_{\text{pen}}(\tau)` with :func:`rlcourse.losses.ppo_penalty_loss`
    on each enumerated sequence (aggregation ``seq_mean_token_sum``: the per-sequence sum) and
    :math:`A = A^{\text{old}}(s_t, a_t)`."""
    seq = mdp.sequences
    adv = mdp.advantages(theta_old)[seq.states, seq.tokens] * seq.mask
    logp, logp_old = mdp.token_logprobs(theta), mdp.token_logprobs(theta_old)
    p_old = mdp.probabilities(theta_old)
    total = torch.zeros((), dtype=torch.float64)
    for n in range(mdp.num_sequences):
        row = slice(n, n + 1)
        loss, _ = ppo_penalty_loss(logp[row], logp_old[row], adv[row], seq.mask[row], beta,
                                   aggregation="seq_mean_token_sum")
        total = total + p_old[n] * loss
    return total


def penalty_formula(mdp: ToyMDP, theta: torch.Tensor, theta_old: torch.Tensor, beta: float,
                    kl_direction: str = "old||new") -> torch.Tensor:
    r""":math:`-\mathbb{E}_{\text{old}}[\sum_t \rho_t A_t] + \beta \sum_s d_{\text{old}}(s)\, \mathrm{KL}_s` with exact KLs.

    ``kl_direction="new||old"`` is the negative control (the wrong direction)."""
    seq = mdp.sequences
    adv = mdp.advantages(theta_old)[seq.states, seq.tokens] * seq.mask
    rho = token_ratio(mdp.token_logprobs(theta), mdp.token_logprobs(theta_old))
    surrogate = mdp.probabilities(theta_old) @ (rho * adv * seq.mask).sum(-1)
    lp, lp_old = mdp.policy_logprobs(theta), mdp.policy_logprobs(theta_old)
    kl = kl_categorical(lp_old, lp) if kl_direction == "old||new" else kl_categorical(lp, lp_old)
    return -surrogate + beta * (mdp.state_visitation(theta_old) @ kl)


def _value_and_grad(fn, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    th = theta.detach().clone().requires_grad_(True)
    value = fn(th)
    (g,) = torch.autograd.grad(value, th)
    return value.detach(), g


@derivation(NAME, "PPO penalty and the adaptive KL coefficient", source="unified-rl-llm")
def checks() -> list[Check]:
    target, c, horizon, n_steps, n_updates = 0.1, 0.05, 10000, 5000, 200  # beta* = c / target = 0.5
    out = []
    runs = {}
    for start in (0.05, 5.0):
        betas, kls = simulate_adaptive_kl(AdaptiveKLController(start, target, horizon), c, n_updates, n_steps)
        runs[start] = (betas, kls)
        out.append(exact(NAME, f"adaptive beta from {start}: KL / target -> 1", 1.0, kls[-1] / target,
                         detail=f"beta {start} -> {float(betas[-1]):.6f} (beta* = {c / target}), "
                                f"KL {float(kls[0]):.3f} -> {float(kls[-1]):.6f}, target {target}, {n_updates} updates"))

    betas = torch.cat([runs[s][0][:-1] for s in runs]), torch.cat([runs[s][0][1:] for s in runs])
    kls = torch.cat([runs[s][1][:-1] for s in runs])
    moving = (kls / target - 1.0).abs() > 1e-8  # away from the fixed point, where a move is visible in float64
    out.append(exact(NAME, "sign(beta_new - beta) == sign(KL - target) at every update",
                     torch.sign(kls - target)[moving], torch.sign(betas[1] - betas[0])[moving], tol=0.0,
                     detail=f"{int(moving.sum())} updates with |KL / target - 1| > 1e-8, both starts"))
    max_step = 0.2 * n_steps / horizon
    steps = (betas[1] / betas[0] - 1.0).abs()
    out.append(inequality(NAME, f"|beta_new / beta - 1| <= 0.2 n_steps / H = {max_step} (+1e-12)", max_step + 1e-12,
                          steps, above=False, detail=f"largest relative step {float(steps.max()):.6f}"))
    up = AdaptiveKLController(1.0, target, horizon).update(100 * target, n_steps)
    down = AdaptiveKLController(1.0, target, horizon).update(0.01 * target, n_steps)
    out.append(exact(NAME, "KL = 100 x target: relative step == +0.2 n_steps / H (clipped)", max_step, up - 1.0))
    out.append(exact(NAME, "KL = target / 100: relative step == -0.2 n_steps / H (clipped)", -max_step, down - 1.0))

    mdp, theta_old = course_problem()
    theta = theta_old + 0.5 * mdp.init_params(seed=2)
    beta = 0.7
    v_loss, g_loss = _value_and_grad(lambda th: expected_penalty_loss(mdp, th, theta_old, beta), theta)
    v_form, g_form = _value_and_grad(lambda th: penalty_formula(mdp, th, theta_old, beta), theta)
    out.append(exact(NAME, "toy MDP: E_old[ppo_penalty_loss] == -E_old[sum rho A] + beta sum_s d(s) KL(old||new)",
                     v_form, v_loss, detail=f"beta = {beta}, loss = {float(v_loss):.4f}"))
    out.append(exact(NAME, "toy MDP: grad of E_old[ppo_penalty_loss] == grad of the formula", g_form, g_loss))
    _, g_old = _value_and_grad(lambda th: expected_penalty_loss(mdp, th, theta_old, beta), theta_old)
    out.append(exact(NAME, "toy MDP at theta_old: grad of the penalty loss == -grad J (the KL term is flat)",
                     -mdp.exact_gradient(theta_old), g_old))

    bad_betas, bad_kls = simulate_adaptive_kl(SignReversedKLController(0.05, target, horizon), c, n_updates, n_steps)
    out.append(negative_control(
        exact(NAME, "sign-reversed rule from 0.05: KL / target -> 1", 1.0, bad_kls[-1] / target),
        detail=f"beta 0.05 -> {float(bad_betas[-1]):.2e}, KL -> {float(bad_kls[-1]):.2e}: diverges, must be rejected"))
    v_rev = penalty_formula(mdp, theta, theta_old, beta, kl_direction="new||old")
    out.append(negative_control(
        exact(NAME, "formula with KL(new||old) == E_old[ppo_penalty_loss]", v_rev, v_loss),
        detail="k3 on samples from old estimates KL(old||new), not KL(new||old)"))
    return out
