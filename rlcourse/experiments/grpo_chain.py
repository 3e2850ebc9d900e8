"""``grpo_variants`` (notebook 09): GRPO, Dr. GRPO, DAPO and GSPO on the chain task, same budget, same start.

The chain task (:mod:`rlcourse.lm.chain_task`: multi-term sums written as running sums, then the
answer) has responses of 4 to 18 tokens and an SFT start that is right on about half of the
held-out problems (calibrated in ``benchmarks/chain_task_calibration.md``), so the variants'
differences in length handling, clipping and sequence-level ratios have room to show.

Every arm trains a fresh copy of the same cached SFT start
(:func:`rlcourse.experiments.cache.chain_sft_start`) with :func:`rlcourse.train.grpo.train_grpo`
for ``budget.steps`` steps of ``budget.prompts_per_step`` x ``budget.group_size`` samples and ``num_iterations``
updates per batch (each variant with its own defaults otherwise: advantage, aggregation, clip
range, DAPO's dynamic sampling and overlong shaping). The seed is GRPO's (sampling and problems);
the start is the same for every seed.

Rows (one per evaluation: the start, then every ``evaluation.every`` steps)::

    {"arm", "seed", "step", "accuracy", "length_correct", "length_incorrect", "entropy", "clipfrac"}

``accuracy``: greedy accuracy (reward exactly 1) on ``evaluation.prompts`` held-out problems; ``length_correct`` /
``length_incorrect``: mean greedy response length in tokens (``<eos>`` included) of the correct and
of the incorrect ones (None when there are none); ``entropy`` and ``clipfrac``: means over the
training steps since the previous evaluation (the sampling policy's per-token entropy estimate, and
the share of tokens clipped in the last update of each batch, where the ratio has moved away from 1;
with ``num_iterations=1``, the only update; None at the start).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from rlcourse._validate import integer
from rlcourse.experiments.budget import Budget, Evaluation, check_budget
from rlcourse.experiments.cache import CHAIN_TASK, QUICK_START, ChainStart
from rlcourse.experiments.runner import check_arms, evaluated_training, experiment, over_arms, window_mean
from rlcourse.lm import generate
from rlcourse.train.grpo import VARIANTS, GRPOConfig, train_grpo


@dataclass(frozen=True)
class GRPOChainConfig(ChainStart):
    """The budget every arm gets, the evaluation, and the SFT start (:class:`~rlcourse.experiments.cache.ChainStart`)."""

    variants: tuple = ("grpo", "dr_grpo", "dapo", "gspo")
    budget: Budget = Budget(steps=200, lr=1e-4, prompts_per_step=16, group_size=8)
    num_iterations: int = 2
    evaluation: Evaluation = Evaluation(every=20, prompts=300)
    threads: int = 1

    def __post_init__(self):
        check_arms(self, "variants", VARIANTS)
        check_budget(self, sampled=False, min_group_size=2)
        integer("num_iterations", self.num_iterations)
        integer("threads", self.threads)
        self.check_start()

    def quick(self) -> "GRPOChainConfig":
        """Seconds-long (tests, CI): a 30-step SFT start, 4 GRPO steps of 4 x 4 samples, 16 held-out problems."""
        return replace(self, budget=replace(self.budget, steps=4, prompts_per_step=4, group_size=4),
                       evaluation=Evaluation(every=2, prompts=16), **QUICK_START)


@torch.no_grad()
def greedy_eval(model, tokenizer, task, n: int, batch_size: int = 512) -> dict:
    """Greedy ``accuracy`` on ``task.held_out(n)`` and the mean response length (tokens, ``<eos>`` included) of the
    correct (``length_correct``) and of the incorrect (``length_incorrect``) responses; None where there are none."""
    problems = task.held_out(n)
    was_training = model.training
    model.eval()
    correct, lengths = [], []
    for s in range(0, len(problems), batch_size):
        chunk = problems[s:s + batch_size]
        ro = generate(model, tokenizer, [p.prompt for p in chunk], 1, task.max_answer_chars + 2, greedy=True)
        correct.append(task.batch_rewards(ro.completions, [p.answer for p in chunk], ro.finished) == 1.0)
        lengths.append(ro.response_mask.sum(-1).float().cpu())
    model.train(was_training)
    ok, length = torch.cat(correct).cpu(), torch.cat(lengths)

    def mean(x):
        return float(x.mean()) if x.numel() else None

    return {"accuracy": int(ok.sum()) / len(ok), "length_correct": mean(length[ok]),
            "length_incorrect": mean(length[~ok])}


def run_arm(cfg: GRPOChainConfig, variant: str, seed: int, model, tokenizer, tick=None) -> list[dict]:
    """One arm: ``train_grpo`` of ``variant`` from a copy of ``model``; the rows of its evaluations (module doc)."""
    task = CHAIN_TASK
    policy = copy.deepcopy(model)
    clip_key = "clipfrac_last" if cfg.num_iterations > 1 else "clipfrac"  # the first update's ratio is 1

    def evaluate(step, window):
        return {"arm": variant, "seed": seed, "step": step,
                **greedy_eval(policy, tokenizer, task, cfg.evaluation.prompts),
                "entropy": window_mean(window, "entropy"), "clipfrac": window_mean(window, clip_key)}

    gcfg = GRPOConfig(variant=variant, preset=cfg.preset, seed=seed, num_iterations=cfg.num_iterations,
                      eval_n=cfg.evaluation.prompts, threads=cfg.threads, distinct_rows=True,
                      **cfg.budget.trainer_fields())
    return evaluated_training(lambda cb: train_grpo(gcfg, policy, tokenizer, task=task, progress=False, callback=cb),
                              evaluate, cfg.evaluation.every, tick)


@experiment("grpo_variants", notebook="09", config=GRPOChainConfig)
def run_seed(cfg: GRPOChainConfig, seed: int, progress) -> list[dict]:
    """GRPO vs Dr. GRPO vs DAPO vs GSPO (2 updates per batch) on the chain task, same budget: greedy accuracy, length
    of correct / incorrect responses, entropy, clip fraction"""
    model, tokenizer = cfg.start()
    return over_arms(cfg.variants, cfg.budget.steps * len(cfg.variants), progress,
                     lambda variant, tick: run_arm(cfg, variant, seed, model, tokenizer, tick))


__all__ = ["GRPOChainConfig", "greedy_eval", "run_arm", "run_seed"]
