r"""The gradient-noise measurement of notebook 04, and the pass@k of a policy (on the arithmetic task).

:func:`gradient_noise` (config :class:`GradientNoiseConfig`; :func:`run` runs it) measures the noise of the
REINFORCE gradient at the cached SFT start (:func:`rlcourse.experiments.sft_start`) with the same package
functions a trainer step uses (:func:`rlcourse.train.common.sample_groups`,
:func:`rlcourse.train.reinforce.reinforce_advantages`, :func:`rlcourse.losses.policy_gradient_loss`), and
returns plain data (no models: ``json.dumps`` takes it), memoised per process and config
(:mod:`rlcourse.experiments.memo`); the notebook calls the keyword form ``gradient_noise_experiment(preset,
seed=0)``; :mod:`rlcourse.plots.lm_rl` draws it. Notebook 04's REINFORCE training runs, over seeds, are the
runner experiment ``reinforce_baselines`` (:mod:`rlcourse.experiments.reinforce_baselines`); notebook 09's are
``grpo_variants`` (:mod:`rlcourse.experiments.grpo_chain`).

Speed: the tiny model's tensors are small, and on a busy 2-core CPU several intra-op threads
cost far more than they save (a REINFORCE step was measured 20x slower with 2 threads than
with 1 on a loaded machine). The experiments therefore run under
:func:`rlcourse.lm.cpu_threads` ``(1)`` and restore the caller's setting.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from rlcourse.experiments.cache import sft_start
from rlcourse.experiments.memo import clear_memo, memoised
from rlcourse.lm import cpu_threads, default_max_new_tokens, default_task, evaluate, sequence_logprobs
from rlcourse.losses import policy_gradient_loss
from rlcourse.train.common import sample_groups
from rlcourse.train.reinforce import reinforce_advantages

__all__ = ["GradientNoiseConfig", "run", "gradient_noise", "PASS_KS", "clear_memo", "pass_at_k_curve",
           "gradient_noise_experiment"]

#: The k of the pass@k curves (one set of max(PASS_KS) samples per problem).
PASS_KS = (1, 2, 4, 8)


def _tuples(cfg, *names: str) -> None:
    """Store the sequence fields ``names`` of a frozen config as tuples (so that it is hashable: memoised)."""
    for name in names:
        object.__setattr__(cfg, name, tuple(getattr(cfg, name)))


@dataclass(frozen=True)
class GradientNoiseConfig:
    """Notebook 04: the noise of the REINFORCE gradient at the start (see :func:`gradient_noise`)."""

    preset: str = "tiny"
    seed: int = 0
    n_batches: int = 16
    prompts_per_step: int = 16
    group_size: int = 8
    shifts: tuple = (0.0, 1.0)
    baselines: tuple = ("none", "mean", "rloo")
    temperature: float = 1.0

    def __post_init__(self):
        if not isinstance(self.n_batches, int) or self.n_batches < 2:
            raise ValueError(f"n_batches must be an integer >= 2, got {self.n_batches!r}")
        _tuples(self, "baselines")
        object.__setattr__(self, "shifts", tuple(float(c) for c in self.shifts))


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


@memoised
def gradient_noise(cfg: GradientNoiseConfig, *, model=None, tokenizer=None, task=None, progress: bool = False) -> dict:
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
    task = task or default_task()
    baselines, shifts, G = cfg.baselines, cfg.shifts, cfg.group_size
    with cpu_threads(1):
        m, tok = _start(cfg.preset, cfg.seed, model, tokenizer, progress)
        params = [p for p in m.parameters() if p.requires_grad]
        total = {(b, c): 0.0 for b in baselines for c in shifts}
        sq = {(b, c): 0.0 for b in baselines for c in shifts}
        worst, rewards = 0.0, []
        for k in range(cfg.n_batches):
            _, ro, r = sample_groups(m, tok, task, n_prompts=cfg.prompts_per_step, group_size=G,
                                     max_new_tokens=default_max_new_tokens(task), temperature=cfg.temperature,
                                     seed=cfg.seed, step=k)
            rewards.append(r.float().mean().item())
            logp = sequence_logprobs(m, ro.input_ids, ro.attention_mask, ro.response_mask, cfg.temperature)
            grads = {}
            for b in baselines:
                for c in shifts:
                    adv = reinforce_advantages(r + c, b, G)
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
                    worst = max(worst, float((gm - (G - 1) / G * gr).norm()) / scale)
    n = cfg.n_batches
    stats = {}
    for b in baselines:
        stats[b] = {}
        for c in shifts:
            mean = total[(b, c)] / n
            tr = (sq[(b, c)] - n * float(mean @ mean)) / (n - 1)
            signal = float(mean @ mean) - tr / n
            stats[b][c] = {"trace_cov": tr, "signal": signal,
                           "noise_to_signal": tr / signal if signal > 0 else math.inf}
    return {"config": dataclasses.asdict(cfg), "shifts": list(shifts), "stats": stats, "mean_vs_rloo": worst,
            "reward_mean": float(np.mean(rewards))}


_EXPERIMENTS = {GradientNoiseConfig: gradient_noise}


def run(cfg, *, model=None, tokenizer=None, task=None, progress: bool = False) -> dict:
    """Run the experiment that ``cfg`` configures (its type says which); ``model``/``tokenizer``: the start
    to copy instead of the cached SFT start (then nothing is memoised), ``task``: instead of the default."""
    if type(cfg) not in _EXPERIMENTS:
        raise TypeError(f"cfg must be one of {[c.__name__ for c in _EXPERIMENTS]}, got {type(cfg).__name__}")
    return _EXPERIMENTS[type(cfg)](cfg, model=model, tokenizer=tokenizer, task=task, progress=progress)


# -- the keyword forms the notebooks call ----------------------------------------------------------

def gradient_noise_experiment(preset: str = "tiny", seed: int = 0, *, model=None, tokenizer=None, task=None,
                              progress: bool = False, **fields) -> dict:
    """:func:`gradient_noise` of ``GradientNoiseConfig(preset, seed, **fields)``."""
    return gradient_noise(GradientNoiseConfig(preset=preset, seed=seed, **fields), model=model, tokenizer=tokenizer,
                          task=task, progress=progress)

