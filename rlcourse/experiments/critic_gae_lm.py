r"""Notebook 05: PPO's critic on the chain task, trained on λ-returns of a fixed policy, and which GAE λ is best.

The language-model half of :mod:`rlcourse.experiments.critic_gae`. The policy :math:`\pi` is the
chain task's SFT start (:func:`rlcourse.experiments.cache.chain_sft_start` on
:data:`~rlcourse.experiments.cache.CHAIN_TASK`: responses of 5-18 tokens, the rule reward 0/1 on the
last token only) and stays **fixed**. The critic is PPO's separate value model
(:class:`rlcourse.lm.RewardModel` built by ``RewardModel.from_causal_lm`` from the start, its head at
0, read by :meth:`~rlcourse.lm.RewardModel.values`, AdamW at PPO's default ``critic_lr``), trained by
:func:`rlcourse.losses.value_loss` on the λ-returns :math:`\hat R_t = \hat A_t + V_\phi(s_t)` of
:func:`rlcourse.advantages.gae` (``critic_lambda``, γ = 1, the per-token rewards of
:func:`rlcourse.train.ppo.kl_shaped_rewards` with β = 0), one fresh batch of ``batch_size`` sampled
responses per update (training problems).

**The reference.** No exact :math:`A^\pi` exists for an LM, so it is estimated without the critic, once
per seed: ``evaluation.prompts`` held-out problems, one sampled response each; for every prefix state
:math:`s_t` (prompt + the first :math:`t` response tokens, :math:`t < T`) ``mc_samples`` = K
continuations of the fixed policy give :math:`\hat V(s_t)`, the mean of their rewards, and
:math:`\hat\sigma^2_t / K`, the variance of that mean (:math:`\hat\sigma^2_t` the unbiased sample
variance). After the last token the value is the response's own reward, known exactly. Transitions
are deterministic and the reward comes at the end, so :math:`Q(s_t, a_t) = V(s_{t+1})` and the
reference advantage is the TD residual of the MC values,
:math:`A^{\mathrm{ref}}_t = r_t + \hat V(s_{t+1}) - \hat V(s_t)` (``gae`` with λ = 0 on :math:`\hat V`).
Its noise :math:`e_t = A^{\mathrm{ref}}_t - A^\pi(s_t, a_t)` has variance
:math:`\nu_t = \hat\sigma^2_t/K + \hat\sigma^2_{t+1}/K` (0 for the terminal value), estimated unbiasedly.

**Why the noise can be subtracted.** The GAE estimate :math:`\hat A^{\mathrm{GAE}(\lambda)}_t` is a
function of the evaluation response :math:`\tau` and of the critic :math:`\phi` only (trained on other
samples); the continuations are fresh draws given the prefixes of :math:`\tau` and never include
:math:`\tau`'s own suffix, so :math:`\mathbb E[e_t \mid \tau, \phi] = 0` and the cross term vanishes:

.. math::

    \mathbb E\big[(\hat A^{\mathrm{GAE}(\lambda)}_t - A^{\mathrm{ref}}_t)^2\big]
    = \mathbb E\big[(\hat A^{\mathrm{GAE}(\lambda)}_t - A^\pi_t)^2\big] + \mathbb E[\nu_t].

The noise adds the *same* constant to every λ (so it never changes which λ is best) and
:math:`\text{adv\_mse}(\lambda) = \text{raw MSE} - \bar\nu` is an unbiased estimate of the error against
:math:`A^\pi` (it may come out slightly negative when the true error is below the noise). This would
fail if the reference reused :math:`\tau`'s own return (correlated with the λ = 1 estimate
:math:`G_t - V_\phi(s_t)`) or if the critic were trained on the continuations. The same holds for the
critic: :math:`\mathbb E[(V_\phi - \hat V)^2] = (V_\phi - V^\pi)^2 + \hat\sigma^2/K`.

Rows (``step`` = critic updates done, 0 = the untrained critic; the schema of ``critic_gae``):

* arm ``lam=<λ>``: ``adv_mse`` (noise subtracted, per token, over the evaluation set's response
  tokens) and ``adv_mse_raw`` (against the noisy reference);
* arm ``critic``: ``critic_rmse`` (:math:`\sqrt{\max(0,\ \overline{(V_\phi - \hat V)^2} - \overline{\hat\sigma^2/K})}`
  over the prefix states of the evaluation responses: an estimate of :math:`\lVert V_\phi - V^\pi\rVert`
  under the policy's visitation), ``critic_rmse_raw``, ``const_rmse`` (the same for the best *constant*
  critic, the mean MC value: a critic at that level has learned the average outcome and nothing about the
  prefix), ``best_lambda`` (the grid's λ of least
  ``adv_mse``), ``ref_noise`` (:math:`\bar\nu`, the reference's per-token noise variance),
  ``value_noise`` (:math:`\overline{\hat\sigma^2/K}`), ``value_loss`` (the batch loss of the last update).

A seed fixes the evaluation responses, their continuations and the training batches; the policy and
the critic's starting weights are the same for every seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from rlcourse import _validate as V
from rlcourse.advantages import gae
from rlcourse.experiments.budget import Evaluation, check_part
from rlcourse.experiments.cache import CHAIN_TASK, QUICK_START, ChainStart
from rlcourse.experiments.critic_gae import check_lambdas, lam_arm
from rlcourse.experiments.runner import experiment
from rlcourse.lm import default_max_new_tokens, generate
from rlcourse.lm.reward_model import RewardModel
from rlcourse.lm.rollout import encode_prompts
from rlcourse.losses import value_loss
from rlcourse.threads import cpu_threads
from rlcourse.train.common import problems_for_step, step_generator
from rlcourse.train.ppo import CRITIC_DEFAULTS, kl_shaped_rewards

__all__ = ["CriticGAELMConfig", "run_seed", "mc_reference", "advantage_errors", "critic_error", "end_rewards"]


@dataclass(frozen=True)
class CriticGAELMConfig(ChainStart):
    """The ``critic_gae_lm`` experiment.

    Attributes:
        lambdas: the GAE λ grid whose advantage errors are measured.
        critic_lambda: λ of the critic's regression targets (1: Monte Carlo returns; < 1: bootstrapped).
        steps: critic updates.
        batch_size: sampled responses (one per training problem) per update.
        critic_lr: AdamW learning rate of the critic (PPO's default for a separate critic).
        value_clip: clip range of :func:`~rlcourse.losses.value_loss` around the batch's old values (None: off).
        evaluation: a measurement every ``evaluation.every`` updates (and after the last), on
            ``evaluation.prompts`` held-out problems, one sampled response each (``samples`` = 1).
        mc_samples: continuations K per prefix state of the reference (>= 2: its variance is estimated).
        temperature: sampling temperature of the fixed policy.
        preset, sft_seed, sft_steps, sft_clean_steps, sft_warmup_steps: the chain SFT start
            (:class:`~rlcourse.experiments.cache.ChainStart`).
        threads: torch threads while the seed runs.
    """

    lambdas: tuple[float, ...] = (0.0, 0.5, 0.9, 0.95, 1.0)
    critic_lambda: float = 1.0
    steps: int = 600
    batch_size: int = 64
    critic_lr: float = CRITIC_DEFAULTS["separate"]["critic_lr"]
    value_clip: float | None = None
    evaluation: Evaluation = Evaluation(every=40, prompts=64, samples=1)
    mc_samples: int = 32
    temperature: float = 1.0
    threads: int = 1

    def __post_init__(self):
        check_lambdas(self)
        for name in ("steps", "batch_size", "threads"):
            V.integer(name, getattr(self, name))
        V.integer("mc_samples", self.mc_samples, minimum=2)
        check_part(self, "evaluation", Evaluation)
        if self.evaluation.samples != 1:
            raise ValueError(f"evaluation.samples must be 1 (one sampled response per problem, whose prefixes the "
                             f"reference values), got {self.evaluation.samples!r}")
        self.evaluation.check_steps(self.steps)
        self.check_start()
        V.positive("critic_lr", self.critic_lr, allow_inf=False)
        V.positive("temperature", self.temperature, allow_inf=False)
        if self.value_clip is not None:
            V.positive("value_clip", self.value_clip, allow_inf=False)

    def quick(self) -> "CriticGAELMConfig":
        """Seconds-long (tests, CI): a 30-step SFT start, 4 updates of 8 responses, 4 evaluation prompts, K = 4."""
        return replace(self, steps=4, batch_size=8, evaluation=Evaluation(every=2, prompts=4, samples=1), mc_samples=4,
                       **QUICK_START)


def end_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards ``(N, T)``: the score on each row's last response token (PPO's rewards with β = 0)."""
    zeros = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return kl_shaped_rewards(scores.float(), zeros, zeros, mask, 0.0)[0]


@torch.no_grad()
def mc_reference(model, tokenizer, task, ro, answers, k: int, max_new_tokens: int, temperature: float,
                 generator: torch.Generator) -> dict:
    r"""Monte Carlo values of every prefix state of the responses of rollout ``ro`` (module docstring).

    Returns ``{"rewards": (N, T) end rewards of the responses, "values": (N, T)`` :math:`\hat V(s_t)`,
    ``"value_var": (N, T)`` :math:`\hat\sigma^2_t / K` ``}``, 0 off the response mask. State :math:`s_t`
    is the prompt and the first ``t`` response tokens; each of its ``k`` continuations may write up to
    ``max_new_tokens - t`` tokens, so a continued response has the evaluation response's length limit.
    """
    V.integer("k", k, minimum=2)
    mask = ro.response_mask
    N, T = mask.shape
    resp = ro.input_ids[:, -T:]
    lengths = mask.sum(-1).long().tolist()
    scores = task.batch_rewards(ro.completions, answers, ro.finished).float()
    values = torch.zeros(N, T)
    var = torch.zeros(N, T)
    for t in range(max(lengths)):
        rows = [i for i in range(N) if lengths[i] > t]
        prefixes = [tokenizer.decode(resp[i, :t].tolist(), skip_special_tokens=False) if t else "" for i in rows]
        prompts = [ro.prompts[i] + p for i, p in zip(rows, prefixes)]
        ids, att = encode_prompts(tokenizer, prompts)
        for j, i in enumerate(rows):  # the text round trip must give back the very prefix state
            want = torch.cat([ro.input_ids[i, :-T][ro.attention_mask[i, :-T].bool()], resp[i, :t]])
            if not torch.equal(ids[j][att[j].bool()], want.to(ids.device)):
                raise ValueError(f"prefix {t} of response {i} ({prompts[j]!r}) does not re-encode to its tokens")
        cont = generate(model, tokenizer, prompts, k, max_new_tokens - t, temperature, generator=generator)
        done = [prefixes[j // k] + c for j, c in enumerate(cont.completions)]
        r = task.batch_rewards(done, [answers[i] for i in rows for _ in range(k)], cont.finished).float()
        r = r.view(len(rows), k)
        values[rows, t] = r.mean(1)
        var[rows, t] = r.var(1, unbiased=True) / k
    return {"rewards": end_rewards(scores, mask), "values": values * mask, "value_var": var * mask}


def _reference(ref: dict, mask: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference advantage (TD residual of the MC values) and its per-token noise variance ν_t."""
    m = mask.to(torch.float32)
    a_ref, _ = gae(ref["rewards"], ref["values"], mask, gamma=gamma, lam=0.0)
    var = ref["value_var"] * m
    nxt = torch.zeros_like(var)
    nxt[:, :-1] = var[:, 1:] * m[:, 1:]  # right-padded rows: the next counted token, 0 after the last
    return a_ref, (var + gamma ** 2 * nxt) * m


def advantage_errors(critic_values: torch.Tensor, ref: dict, mask: torch.Tensor, lambdas,
                     gamma: float = 1.0) -> dict:
    """Per-token mean squared error of the GAE(λ) advantage with ``critic_values`` (N, T) against the MC reference.

    Returns ``{"raw": [one per λ], "corrected": [raw - noise], "noise": mean ν_t}`` (module docstring).
    """
    V.tensor("critic_values", critic_values, ndim=2)
    V.mask("mask", mask, like=critic_values, like_name="critic_values", nonempty=True)
    m = mask.to(torch.float32)
    tokens = float(m.sum())
    a_ref, nu = _reference(ref, mask, gamma)
    noise = float(nu.sum()) / tokens
    raw = []
    for lam in lambdas:
        adv, _ = gae(ref["rewards"], critic_values.detach().float() * m, mask, gamma=gamma, lam=float(lam))
        raw.append(float(((adv - a_ref) ** 2 * m).sum()) / tokens)
    return {"raw": raw, "corrected": [r - noise for r in raw], "noise": noise}


def critic_error(critic_values: torch.Tensor, ref: dict, mask: torch.Tensor) -> dict:
    """The critic's error against the MC values over the prefix states: ``{"rmse", "rmse_raw", "noise",
    "const_rmse"}`` (``const_rmse``: the same error of the best constant critic, the mean of the MC values).
    ``rmse`` and ``const_rmse`` have the reference's noise subtracted from the mean squared error first; where the
    noise estimate exceeds that error they are 0 (``rmse_raw`` and ``noise`` are reported as measured)."""
    m = mask.to(torch.float32)
    n = float(m.sum())
    raw = float(((critic_values.detach().float() - ref["values"]) ** 2 * m).sum()) / n
    noise = float((ref["value_var"] * m).sum()) / n
    mean = float((ref["values"] * m).sum()) / n
    const = float(((ref["values"] - mean) ** 2 * m).sum()) / n
    return {"rmse": max(raw - noise, 0.0) ** 0.5, "rmse_raw": raw ** 0.5, "noise": noise,
            "const_rmse": max(const - noise, 0.0) ** 0.5}


@experiment("critic_gae_lm", notebook="05", config=CriticGAELMConfig)
def run_seed(cfg: CriticGAELMConfig, seed: int, progress) -> list[dict]:
    """chain task, fixed SFT policy: PPO's critic trained on lambda-returns; error of GAE(lambda) vs a Monte Carlo
    advantage (noise subtracted) per lambda as the critic learns

    One seed: the reference, then the critic's training and, every ``evaluation.every`` updates, the errors."""
    with cpu_threads(cfg.threads):
        return _run(cfg, seed, progress)


def _run(cfg, seed, progress):
    task = CHAIN_TASK
    model, tokenizer = cfg.start()
    model.eval()
    model.requires_grad_(False)
    max_new = default_max_new_tokens(task)
    total = cfg.steps + 1

    # the evaluation set and its reference, once per seed
    problems = task.held_out(cfg.evaluation.prompts)
    g = step_generator(seed, 10**9)
    t0 = time.perf_counter()
    ev = generate(model, tokenizer, [p.prompt for p in problems], 1, max_new, cfg.temperature, generator=g)
    answers = [p.answer for p in problems]
    ref = mc_reference(model, tokenizer, task, ev, answers, cfg.mc_samples, max_new, cfg.temperature, g)
    ref_seconds = time.perf_counter() - t0
    progress(1, total)

    critic = RewardModel.from_causal_lm(model, tokenizer)
    opt = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, betas=(0.9, 0.99), weight_decay=0.0)
    rows, loss = [], float("nan")

    def measure(step):
        critic.eval()
        with torch.no_grad():
            v = critic.values(ev.input_ids, ev.attention_mask, ev.response_mask)
        critic.train()
        errs = advantage_errors(v, ref, ev.response_mask, cfg.lambdas)
        rows.extend({"arm": lam_arm(lam), "seed": seed, "step": step, "adv_mse": e, "adv_mse_raw": r}
                    for lam, e, r in zip(cfg.lambdas, errs["corrected"], errs["raw"]))
        best = min(range(len(cfg.lambdas)), key=errs["corrected"].__getitem__)
        ce = critic_error(v, ref, ev.response_mask)
        rows.append({"arm": "critic", "seed": seed, "step": step, "critic_rmse": ce["rmse"],
                     "critic_rmse_raw": ce["rmse_raw"], "const_rmse": ce["const_rmse"],
                     "best_lambda": float(cfg.lambdas[best]),
                     "ref_noise": errs["noise"], "value_noise": ce["noise"]}
                    | ({"ref_seconds": ref_seconds} if step == 0 else {"value_loss": loss}))

    measure(0)
    critic.train()
    for step in range(1, cfg.steps + 1):
        gs = step_generator(seed, step)
        batch = problems_for_step(task, cfg.batch_size, seed, step)
        ro = generate(model, tokenizer, [p.prompt for p in batch], 1, max_new, cfg.temperature, generator=gs)
        scores = task.batch_rewards(ro.completions, [p.answer for p in batch], ro.finished)
        mask = ro.response_mask
        values = critic.values(ro.input_ids, ro.attention_mask, mask)
        old = values.detach()
        _, returns = gae(end_rewards(scores, mask), old, mask, gamma=1.0, lam=cfg.critic_lambda)
        lv = value_loss(values, old, returns, mask, cfg.value_clip)
        opt.zero_grad(set_to_none=True)
        lv.backward()
        opt.step()
        loss = float(lv.detach())
        if step % cfg.evaluation.every == 0 or step == cfg.steps:
            measure(step)
        progress(step + 1, total)
    return rows
