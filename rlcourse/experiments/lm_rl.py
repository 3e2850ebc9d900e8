r"""The experiments of notebooks 04 (REINFORCE on the small LM) and 09 (GRPO and its variants).

Every number comes from the course's trainers, run from the cached SFT start
(:func:`rlcourse.experiments.sft_start`): :func:`rlcourse.train.reinforce.train_reinforce` with
``baseline`` in ``{"none", "mean", "rloo"}`` and :func:`rlcourse.train.grpo.train_grpo` with
``variant`` in ``{"grpo", "dr_grpo", "dapo", "gspo"}``; the gradient-noise measurement uses the
same package functions a trainer step uses (:func:`rlcourse.train.common.sample_groups`,
:func:`rlcourse.train.reinforce.reinforce_advantages`, :func:`rlcourse.losses.policy_gradient_loss`).
Each experiment returns plain data (histories and evaluations, no models: ``json.dumps`` takes
it) and is memoised per process and arguments (:mod:`rlcourse.experiments.memo`); the figures
are drawn by :mod:`rlcourse.plots.lm_rl`.

Speed: the tiny model's tensors are small, and on a busy 2-core CPU several intra-op threads
cost far more than they save (a REINFORCE step was measured 20x slower with 2 threads than
with 1 on a loaded machine). The experiments therefore run under
:func:`rlcourse.lm.cpu_threads` ``(1)`` and restore the caller's setting.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch

from rlcourse.experiments.cache import sft_start
from rlcourse.experiments.memo import clear_memo, memoised
from rlcourse.lm import cpu_threads, default_max_new_tokens, default_task, evaluate, sequence_logprobs
from rlcourse.losses import policy_gradient_loss
from rlcourse.train.common import sample_groups
from rlcourse.train.grpo import GRPOConfig, train_grpo
from rlcourse.train.reinforce import ReinforceConfig, reinforce_advantages, train_reinforce

__all__ = ["REINFORCE_SETTINGS", "GRPO_SETTINGS", "PASS_KS", "clear_memo", "pass_at_k_curve", "run_summary",
           "reinforce_baselines_experiment", "gradient_noise_experiment", "grpo_variants_experiment"]


#: The budget of notebook 04: every baseline gets the same steps, prompts and samples.
REINFORCE_SETTINGS = dict(steps=60, lr=1e-4, prompts_per_step=16, group_size=8, eval_n=200, eval_every=10)
#: The budget of notebook 09: every variant gets the same steps, prompts, samples per prompt and
#: optimizer steps per batch (``num_iterations = 2``: the second step is off-policy, so the
#: ratios, the clipping and GSPO's sequence ratio actually act).
GRPO_SETTINGS = dict(steps=40, lr=1e-4, prompts_per_step=16, group_size=8, num_iterations=2, eval_n=200,
                     eval_every=10)
#: The k of the pass@k curves (one set of max(PASS_KS) samples per problem).
PASS_KS = (1, 2, 4, 8)


def _start(preset: str, seed: int, model, tokenizer, progress: bool):
    """A fresh copy of the starting policy: the given model, or the cached SFT start."""
    if model is not None:
        if tokenizer is None:
            raise ValueError("tokenizer is required when model is given")
        return copy.deepcopy(model), tokenizer
    return sft_start(preset, seed, progress=progress)


def pass_at_k_curve(model, tokenizer, task, n_eval: int, ks: Sequence[int] = PASS_KS, seed: int = 0) -> dict:
    """Held-out greedy accuracy and unbiased pass@k for every k in ``ks`` (one set of ``max(ks)``
    samples per problem, :func:`rlcourse.lm.evaluate`), on the same problems as the trainers' evaluation."""
    ks = tuple(int(k) for k in ks)
    out = evaluate(model, tokenizer, task.held_out(n_eval, seed=seed), ks=ks, n=max(ks), seed=seed, batch_size=512)
    return {"accuracy": out["accuracy"], "mean_reward": out["mean_reward"],
            "pass_at_k": {k: out[f"pass@{k}"] for k in ks}}


def run_summary(result, **extra) -> dict:
    """The plain data of a :class:`~rlcourse.train.common.TrainResult` (no model): history, evaluations, seconds."""
    return {"history": [dict(r) for r in result.history], "before": dict(result.before), "after": dict(result.after),
            "seconds": float(result.seconds), **extra}


@memoised
def reinforce_baselines_experiment(preset: str = "tiny", steps: int = REINFORCE_SETTINGS["steps"], seed: int = 0, *,
                                   baselines: Sequence[str] = ("none", "mean", "rloo"),
                                   lr: float = REINFORCE_SETTINGS["lr"],
                                   prompts_per_step: int = REINFORCE_SETTINGS["prompts_per_step"],
                                   group_size: int = REINFORCE_SETTINGS["group_size"],
                                   eval_n: int = REINFORCE_SETTINGS["eval_n"],
                                   eval_every: int = REINFORCE_SETTINGS["eval_every"],
                                   ks: Sequence[int] = PASS_KS, model=None, tokenizer=None, task=None,
                                   progress: bool = False) -> dict:
    """REINFORCE from the same start, with the same seed and budget, for each baseline.

    Every run calls :func:`rlcourse.train.reinforce.train_reinforce` on a fresh copy of the start
    (``model``/``tokenizer`` if given, else the cached SFT start of ``preset``); with the same
    ``seed`` every run sees the same training problems at every step.

    Returns:
        ``{"config": {...}, "start": pass@k curve of the start, "runs": {baseline: run}}`` where a
        run is :func:`run_summary` plus ``"pass_at_k"``: the pass@k curve after training.
    """

    task = task or default_task()
    config = dict(preset=preset, steps=steps, seed=seed, lr=lr, prompts_per_step=prompts_per_step,
                  group_size=group_size, eval_n=eval_n, eval_every=eval_every)
    out = {"config": config, "runs": {}}
    with cpu_threads(1):
        m0, tok = _start(preset, seed, model, tokenizer, progress)
        out["start"] = pass_at_k_curve(m0, tok, task, eval_n, ks, seed=seed)
        for b in baselines:
            m, tok = _start(preset, seed, model, tokenizer, progress)
            cfg = ReinforceConfig(baseline=b, preset=preset, seed=seed, steps=steps, lr=lr, group_size=group_size,
                                  prompts_per_step=prompts_per_step, eval_n=eval_n, eval_every=eval_every)
            res = train_reinforce(cfg, m, tok, task=task, progress=progress)
            out["runs"][b] = run_summary(res, pass_at_k=pass_at_k_curve(res.model, tok, task, eval_n, ks,
                                                                         seed=seed)["pass_at_k"],
                                         samples=len(res.history) * prompts_per_step * group_size)
    return out


@memoised
def gradient_noise_experiment(preset: str = "tiny", seed: int = 0, *, n_batches: int = 16,
                              prompts_per_step: int = REINFORCE_SETTINGS["prompts_per_step"],
                              group_size: int = REINFORCE_SETTINGS["group_size"],
                              shifts: Sequence[float] = (0.0, 1.0), baselines: Sequence[str] = ("none", "mean", "rloo"),
                              temperature: float = 1.0, model=None, tokenizer=None, task=None,
                              progress: bool = False) -> dict:
    r"""The noise of the REINFORCE gradient at the start, for each baseline and reward shift ``c``.

    Draws ``n_batches`` batches exactly as a training step does (``prompts_per_step`` x
    ``group_size`` samples, :func:`rlcourse.train.common.sample_groups`), and on the *same*
    samples computes the gradient :math:`\hat g` of the REINFORCE surrogate
    (:func:`rlcourse.losses.policy_gradient_loss`, ``seq_mean_token_sum``) with the advantages
    of :func:`rlcourse.train.reinforce.reinforce_advantages` for rewards :math:`r + c`. From the
    batches, with :math:`\bar g` their mean:

    * ``trace_cov``: :math:`\operatorname{tr}\operatorname{Cov}[\hat g]`, unbiased
      :math:`\frac{1}{n-1}\sum_k \lVert \hat g_k - \bar g \rVert^2`;
    * ``signal``: :math:`\lVert \mathbb{E}\hat g \rVert^2`, unbiased :math:`\lVert \bar g\rVert^2 - \operatorname{tr}\operatorname{Cov}/n`;
    * ``noise_to_signal``: ``trace_cov / signal`` — the number of batches whose average has a
      relative RMS error of 100 %; divide by 100 for 10 %. It does not depend on the scale of
      :math:`\hat g` (so a baseline that only rescales the gradient does not change it).

    Also ``mean_vs_rloo``: the largest relative difference, over batches, between the group-mean
    gradient and :math:`\frac{G-1}{G}` times the RLOO gradient (0 up to float32 rounding: the two
    advantages are proportional on every group), and ``reward_mean`` of the samples.
    """

    if not isinstance(n_batches, int) or n_batches < 2:
        raise ValueError(f"n_batches must be an integer >= 2, got {n_batches!r}")
    task = task or default_task()
    shifts = [float(c) for c in shifts]
    with cpu_threads(1):
        m, tok = _start(preset, seed, model, tokenizer, progress)
        params = [p for p in m.parameters() if p.requires_grad]
        total = {(b, c): 0.0 for b in baselines for c in shifts}
        sq = {(b, c): 0.0 for b in baselines for c in shifts}
        worst, rewards = 0.0, []
        for k in range(n_batches):
            _, ro, r = sample_groups(m, tok, task, n_prompts=prompts_per_step, group_size=group_size,
                                     max_new_tokens=default_max_new_tokens(task), temperature=temperature,
                                     seed=seed, step=k)
            rewards.append(r.float().mean().item())
            logp = sequence_logprobs(m, ro.input_ids, ro.attention_mask, ro.response_mask, temperature)
            grads = {}
            for b in baselines:
                for c in shifts:
                    adv = reinforce_advantages(r + c, b, group_size)
                    loss = policy_gradient_loss(logp, adv, ro.response_mask, "seq_mean_token_sum")
                    g = torch.autograd.grad(-loss, params, retain_graph=True)  # the ascent direction
                    g = torch.cat([x.reshape(-1) for x in g]).double()
                    grads[(b, c)] = g
                    total[(b, c)] = total[(b, c)] + g
                    sq[(b, c)] += float(g @ g)
            if "mean" in baselines and "rloo" in baselines:
                for c in shifts:
                    gm, gr = grads[("mean", c)], grads[("rloo", c)]
                    scale = float(gr.norm()) or 1.0
                    worst = max(worst, float((gm - (group_size - 1) / group_size * gr).norm()) / scale)
    n = n_batches
    stats = {}
    for b in baselines:
        stats[b] = {}
        for c in shifts:
            mean = total[(b, c)] / n
            tr = (sq[(b, c)] - n * float(mean @ mean)) / (n - 1)
            signal = float(mean @ mean) - tr / n
            stats[b][c] = {"trace_cov": tr, "signal": signal,
                           "noise_to_signal": tr / signal if signal > 0 else math.inf}
    out = {"config": dict(preset=preset, seed=seed, n_batches=n, prompts_per_step=prompts_per_step,
                          group_size=group_size, temperature=temperature),
           "shifts": shifts, "stats": stats, "mean_vs_rloo": worst, "reward_mean": float(np.mean(rewards))}
    return out


@memoised
def grpo_variants_experiment(preset: str = "tiny", steps: int = GRPO_SETTINGS["steps"], seed: int = 0, *,
                             variants: Sequence[str] = ("grpo", "dr_grpo", "dapo", "gspo"),
                             lr: float = GRPO_SETTINGS["lr"],
                             prompts_per_step: int = GRPO_SETTINGS["prompts_per_step"],
                             group_size: int = GRPO_SETTINGS["group_size"],
                             num_iterations: int = GRPO_SETTINGS["num_iterations"],
                             eval_n: int = GRPO_SETTINGS["eval_n"], eval_every: int = GRPO_SETTINGS["eval_every"],
                             ks: Sequence[int] = PASS_KS, model=None, tokenizer=None, task=None,
                             progress: bool = False) -> dict:
    """GRPO, Dr. GRPO, DAPO and GSPO from the same start, with the same seed and budget.

    Every run calls :func:`rlcourse.train.grpo.train_grpo` (each variant with its own defaults:
    advantage, aggregation, clip range, DAPO's dynamic sampling and overlong shaping) on a fresh
    copy of the start, with the same steps, prompts per step, G, learning rate and
    ``num_iterations``. DAPO's dynamic sampling may generate more than one round per step: the
    number of completions each run generated is reported as ``"samples"``.

    Returns:
        ``{"config": {...}, "start": pass@k curve of the start, "runs": {variant: run}}`` where a run
        is :func:`run_summary` plus ``"pass_at_k"`` (after training) and ``"samples"``.
    """

    task = task or default_task()
    config = dict(preset=preset, steps=steps, seed=seed, lr=lr, prompts_per_step=prompts_per_step,
                  group_size=group_size, num_iterations=num_iterations, eval_n=eval_n, eval_every=eval_every)
    out = {"config": config, "runs": {}}
    with cpu_threads(1):
        m0, tok = _start(preset, seed, model, tokenizer, progress)
        out["start"] = pass_at_k_curve(m0, tok, task, eval_n, ks, seed=seed)
        for v in variants:
            m, tok = _start(preset, seed, model, tokenizer, progress)
            cfg = GRPOConfig(variant=v, preset=preset, seed=seed, steps=steps, lr=lr, group_size=group_size,
                             prompts_per_step=prompts_per_step, num_iterations=num_iterations, eval_n=eval_n,
                             eval_every=eval_every, distinct_rows=True)  # exact, and faster (notebook 09)
            res = train_grpo(cfg, m, tok, task=task, progress=progress)
            rounds = sum(float(r.get("sampling_rounds", 1.0)) for r in res.history)
            out["runs"][v] = run_summary(
                res, pass_at_k=pass_at_k_curve(res.model, tok, task, eval_n, ks, seed=seed)["pass_at_k"],
                samples=int(round(rounds * prompts_per_step * group_size)))
    return out


