"""REINFORCE on the course's small LM, with no baseline, a mean baseline, or RLOO.

The policy-gradient theorem with the sequence reward :math:`R(x, y)` placed on the last token
(so the reward-to-go of every token of a completion is :math:`R`):

.. math::

    \\nabla_\\theta J = \\mathbb{E}\\Big[\\sum_t \\big(R(x, y) - b\\big)\\,
        \\nabla_\\theta \\log \\pi_\\theta(y_t \\mid x, y_{<t})\\Big]

estimated on ``prompts_per_step`` prompts x ``group_size`` samples, and followed by one AdamW (or SGD)
step on the surrogate loss :func:`rlcourse.losses.policy_gradient_loss`
:math:`L = -\\frac{1}{N}\\sum_i \\sum_t A_i \\log \\pi_\\theta(y_{i,t})` (``seq_mean_token_sum``: the
sum over the tokens of a completion, the mean over completions — exactly the estimator above).

Baselines (:func:`reinforce_advantages`):

* ``none``: :math:`A_i = R_i` — unbiased, the highest variance;
* ``mean``: :math:`A_i = R_i - \\bar R_{g(i)}`, the mean of the group of :math:`G` samples of the same
  prompt (the batch mean if :math:`G = 1`) — the sample's own reward is in its baseline, which
  scales the expected gradient by :math:`(G-1)/G`;
* ``batch_mean``: :math:`A_i = R_i - \\bar R`, the mean over the whole batch (every prompt's samples, ``N``
  rows) — its own reward is in it too, which scales the expected gradient by :math:`(N-1)/N`;
* ``rloo``: :math:`A_i = R_i - \\frac{1}{G-1}\\sum_{j \\ne i} R_j`, leave-one-out (Kool et al. 2019;
  Ahmadian et al. 2024) — unbiased, and equal to :math:`\\frac{G}{G-1}` times the mean-baseline advantage.

Two options for the experiments of notebook 04 (defaults: the plain algorithm):

* ``reward_offset`` :math:`c`: the advantages are computed from :math:`R_i + c` (the logged rewards stay the
  task's). It leaves the expected gradient unchanged (EGLP: :math:`\\mathbb{E}[c\\,\\nabla\\log P] = 0`)
  and, with no baseline, adds variance; every baseline above subtracts it exactly (up to float rounding);
* ``optimizer``: ``"adamw"`` (default) or ``"sgd"`` (plain SGD, no momentum): under SGD a constant factor
  on the advantages (RLOO vs the group mean) is a factor on the step, which AdamW's per-parameter
  normalisation removes.

(:func:`rlcourse.advantages.dr_grpo_advantages` and :func:`~rlcourse.advantages.rloo_advantages`;
``rlcourse verify`` checks the (G-1)/G factor and RLOO's unbiasedness.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rlcourse import _validate as V
from rlcourse._validate import integer, number
from rlcourse.advantages import dr_grpo_advantages, rloo_advantages
from rlcourse.lm import default_max_new_tokens, evaluate_policy, held_out_accuracy, save_model, sequence_logprobs
from rlcourse.logprobs import AGGREGATIONS, entropy_from_logits, masked_mean
from rlcourse.losses import policy_gradient_loss
from rlcourse.train import bugs
from rlcourse.train.common import (OnPolicyConfig, Run, TrainResult, check_finite, due, optimizer_step, sample_groups,
                                   start_policy)

BASELINES = ("none", "mean", "batch_mean", "rloo")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class ReinforceConfig(OnPolicyConfig):
    """Configuration of :func:`train_reinforce`.

    Attributes:
        baseline: ``"none"``, ``"mean"`` (group mean; the batch mean when ``group_size = 1``), ``"batch_mean"``
            (the mean over the whole batch) or ``"rloo"``.
        preset, seed, steps, lr: SFT start preset, seed of everything, optimizer steps, learning rate.
        reward_offset: a constant added to every reward before the advantages (0: none); finite.
        optimizer: ``"adamw"`` (betas 0.9, 0.99, no weight decay) or ``"sgd"`` (plain, no momentum).
        group_size: samples per prompt (RLOO needs >= 2).
        prompts_per_step: prompts per step (rows = prompts_per_step * group_size).
        max_new_tokens: completion length limit (None: the task's longest answer + 2).
        temperature: sampling temperature (log-probs are those of logits / temperature).
        aggregation: reduction of the per-token surrogate (default: the unbiased ``seq_mean_token_sum``).
        bug: None, or a silent bug injected for the debugging lab (:mod:`rlcourse.train.bugs`).
        (and the shared fields of :class:`~rlcourse.train.common.OnPolicyConfig`)
    """

    baseline: str = "rloo"
    steps: int = 200
    lr: float = 1e-4
    aggregation: str = "seq_mean_token_sum"
    bug: str | None = None
    reward_offset: float = 0.0
    optimizer: str = "adamw"

    def __post_init__(self):
        super().__post_init__()
        V.choice("baseline", self.baseline, BASELINES)
        bugs.check(self.bug, "reinforce")
        integer("group_size", self.group_size, 2 if self.baseline == "rloo" else 1)
        if self.baseline in ("mean", "batch_mean") and self.group_size * self.prompts_per_step < 2:
            raise ValueError(f"a {self.baseline} baseline needs at least 2 samples per step "
                             f"(group_size * prompts_per_step), got {self.group_size * self.prompts_per_step}")
        number("reward_offset", self.reward_offset, minimum=None)
        V.choice("optimizer", self.optimizer, OPTIMIZERS)
        V.choice("aggregation", self.aggregation, AGGREGATIONS)
        if self.aggregation == "constant":
            raise ValueError("aggregation='constant' needs L_max; use token_mean, seq_mean_token_mean or "
                             "seq_mean_token_sum")


def reinforce_advantages(rewards: torch.Tensor, baseline: str, group_size: int) -> torch.Tensor:
    """Per-sequence advantages ``(N,)`` for the chosen baseline (see the module table)."""
    V.choice("baseline", baseline, BASELINES)
    if baseline == "none":
        return rewards.clone()
    if baseline == "rloo":
        return rloo_advantages(rewards, group_size)
    if baseline == "batch_mean" or group_size == 1:  # the batch mean (no groups)
        return dr_grpo_advantages(rewards, rewards.numel())
    return dr_grpo_advantages(rewards, group_size)


def reinforce_optimizer(cfg: ReinforceConfig, params) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, at ``cfg.lr``: AdamW (betas 0.9, 0.99, no weight decay) or plain SGD."""
    V.choice("optimizer", cfg.optimizer, OPTIMIZERS)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.0)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)


def train_reinforce(cfg: ReinforceConfig | None = None, model=None, tokenizer=None, *, task=None,
                    progress: bool = True, callback=None) -> TrainResult:
    """Train ``model`` (the SFT start) with REINFORCE; see the module docstring.

    History rows: ``step``, ``reward_mean``, ``reward_std``, ``accuracy`` (share of samples with
    reward 1), ``loss``, ``advantage_abs_mean``, ``entropy``, ``completion_length``,
    ``grad_norm``, ``step_seconds``, and ``eval_accuracy`` every ``eval_every`` steps.
    """
    cfg = cfg or ReinforceConfig()
    model, tokenizer, task, device = start_policy(cfg, model, tokenizer, task)
    max_new = cfg.max_new_tokens or default_max_new_tokens(task)
    opt = reinforce_optimizer(cfg, model.parameters())
    hook = bugs.hooks(cfg.bug)  # the identity unless cfg.bug injects a silent bug (the debugging lab)
    run = Run("reinforce", cfg, {"model": model}, {"opt": opt}, progress=progress, callback=callback,
              desc=f"reinforce[{cfg.baseline}]")

    with run:
        before = run.remember("before", lambda: evaluate_policy(model, tokenizer, task, cfg.eval_n))
        for step in run.steps():
            t0 = time.perf_counter()
            # 1. sample group_size completions of each prompt, score them with the rule
            _, ro, rewards = sample_groups(model, tokenizer, task, n_prompts=cfg.prompts_per_step,
                                           group_size=cfg.group_size, max_new_tokens=max_new,
                                           temperature=cfg.temperature, seed=cfg.seed, step=step)
            # 2. advantages: the reward (plus cfg.reward_offset, 0 by default) minus the baseline
            shaped = rewards + cfg.reward_offset if cfg.reward_offset else rewards
            adv = hook.advantages(reinforce_advantages(shaped, cfg.baseline, cfg.group_size), rewards=shaped,
                                  group_size=cfg.group_size, mask=ro.response_mask)
            # 3. the surrogate loss sum_t A log pi(y_t), one optimizer step
            model.train()
            mask = hook.loss_mask(ro.response_mask, attention_mask=ro.attention_mask)  # the tokens the loss counts
            logp, logits = hook.logprobs(sequence_logprobs)(model, ro.input_ids, ro.attention_mask, mask,
                                                            cfg.temperature, return_logits=True)
            loss = policy_gradient_loss(logp, adv, mask, cfg.aggregation)
            check_finite(loss, name="reinforce loss", step=step)
            grad_norm = optimizer_step(model, opt, loss, cfg.grad_clip, step=step)
            with torch.no_grad():
                entropy = masked_mean(entropy_from_logits(logits.detach(), cfg.temperature), mask)
            row = {"step": step, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                   "accuracy": float((rewards == 1.0).float().mean()), "loss": loss.item(),
                   "advantage_abs_mean": float(adv.abs().mean()), "entropy": float(entropy),
                   "completion_length": float(ro.response_mask.sum(-1).mean()), "grad_norm": grad_norm.item(),
                   "step_seconds": time.perf_counter() - t0}
            if due(step, cfg.eval_every):
                row["eval_accuracy"] = held_out_accuracy(model, tokenizer, task, cfg.eval_n)
            run.log(step, row, {"reward": f"{row['reward_mean']:.2f}"})
        after = evaluate_policy(model, tokenizer, task, cfg.eval_n)
    run.finish(lambda path: save_model(model, tokenizer, path))
    return TrainResult(model, tokenizer, run.history, before, after, run.seconds, run.path, {})


__all__ = ["ReinforceConfig", "train_reinforce", "reinforce_advantages", "reinforce_optimizer", "BASELINES",
           "OPTIMIZERS"]
