"""Supervised fine-tuning (SFT): the starting policy of every RL algorithm in the course.

The model is trained from scratch by maximum likelihood on demonstrations ``prompt -> answer``:

.. math::

    L_{\\text{SFT}}(\\theta) = -\\frac{1}{\\sum_{i,t} m_{i,t}} \\sum_{i,t} m_{i,t}\\,
        \\log \\pi_\\theta(y_{i,t} \\mid x_i, y_{i,<t})

(token mean over the answer's characters and ``<eos>``; the prompt is never counted).

The start is *deliberately imperfect in a way RL can fix*. A share ``wrong_fraction`` of the
demonstrations is off by a systematic amount (``offsets=(1,)``: the answer plus one). A model
that imitates this data well puts probability about ``1 - wrong_fraction`` on the right
answer and ``wrong_fraction`` on the answer plus one; with ``wrong_fraction > 0.5`` the
*most likely* answer is the wrong one. So greedy accuracy is low, a single sample is right
with probability ``1 - wrong_fraction`` (pass@1), and among 8 samples the right answer is
almost always present (pass@8 high). RL only has to move probability mass that is already
there — the lesson "RL turns pass@k into pass@1".

The model must first be *capable*: the mixture only helps if the model can compute the
answer. The recipe below (the defaults of :class:`SFTConfig`: 2000 steps of 128 examples, peak
learning rate 2e-3, ``wrong_fraction=0.55``) was tuned on the 2-core CPU. Measured there (tiny
preset, seed 0, 500 held-out problems): greedy accuracy 33.6%, pass@1 45.5%, pass@8 98.0%, in
140 s of training. With fewer steps (1200) the greedy answer was right only 5-10% of the time;
``benchmarks/pipeline.py`` re-measures the start with every algorithm.

:func:`rlcourse.experiments.sft_start` caches the result (``$RLCOURSE_CACHE`` or
``~/.cache/rlcourse``), keyed by a hash of the configuration and the task, so notebooks and
benchmarks train it once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rlcourse._validate import integer, number
from rlcourse.lm import (ArithmeticTask, build_tokenizer, default_task, encode_completions, evaluate_policy,
                         held_out_accuracy, load_model, pick_device, save_model, sequence_logprobs)
from rlcourse.lm.model import build_model
from rlcourse.logprobs import aggregate
from rlcourse.train.common import (Run, ScheduleConfig, TrainResult, check_finite, due, lr_at, optimizer_step, set_lr,
                                   set_seed)


@dataclass
class SFTConfig(ScheduleConfig):
    """Configuration of :func:`train_sft` (defaults: the course's SFT start).

    Attributes:
        preset: model preset (``"tiny"`` / ``"small"``).
        seed: seeds the initial weights and every batch.
        steps: optimizer steps.
        lr: peak learning rate (AdamW), reached after ``warmup_steps`` linear steps, then a
            cosine decay to ``lr * min_lr_ratio``.
        batch_size: demonstrations per step (fresh training-split problems every step).
        weight_decay, betas: AdamW.
        wrong_fraction: share of demonstrations whose answer is off by one of ``offsets``.
        offsets: the errors of the wrong demonstrations; ``(1,)`` = "answer plus one".
        clean_steps: the first ``clean_steps`` steps use only correct demonstrations
            (capability first), the rest use the ``wrong_fraction`` mixture.
        eval_before: evaluate the untrained model too (it scores 0; skipping saves time).
        (and the shared fields of :class:`~rlcourse.train.common.ScheduleConfig`)
    """

    steps: int = 2000
    lr: float = 2e-3
    batch_size: int = 128
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.98)
    wrong_fraction: float = 0.55
    offsets: tuple = (1,)
    clean_steps: int = 0
    checkpoint_every: int = 500
    eval_before: bool = False

    def __post_init__(self):
        super().__post_init__()
        integer("clean_steps", self.clean_steps, 0)
        number("wrong_fraction", self.wrong_fraction, 0.0, 1.0, strict=False)
        self.offsets = tuple(self.offsets)
        if not self.offsets or any(not isinstance(d, int) or d == 0 for d in self.offsets):
            raise ValueError(f"offsets must be non-zero integers, got {self.offsets!r}")
        number("weight_decay", self.weight_decay, strict=False)
        self.betas = tuple(self.betas)


def demonstrations(cfg: SFTConfig, task: ArithmeticTask, step: int) -> list[dict]:
    """The batch of step ``step``: a function of ``(seed, step)`` only (so a resumed run sees the same data)."""
    wrong = 0.0 if step < cfg.clean_steps else cfg.wrong_fraction
    return task.sft_examples(cfg.batch_size, wrong_fraction=wrong, seed=cfg.seed * 1_000_003 + step,
                             offsets=cfg.offsets)


def sft_loss(model, tokenizer, examples: list[dict], device) -> torch.Tensor:
    """Token-mean negative log-likelihood of ``completion + <eos>`` given the prompt."""
    batch = encode_completions(tokenizer, [e["prompt"] for e in examples], [e["completion"] for e in examples],
                               device=device)
    logp = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    return aggregate(-logp, batch.response_mask, "token_mean")


def train_sft(cfg: SFTConfig | None = None, *, task: ArithmeticTask | None = None, progress: bool = True,
              callback=None) -> TrainResult:
    """Train the SFT start from scratch (or resume it from ``cfg.out``); see the module docstring.

    With ``cfg.model_dir`` set, fine-tunes that local Hugging Face causal LM (its own tokenizer and
    chat template, :func:`rlcourse.lm.load_model`) on the same demonstrations instead.

    Args:
        cfg: the configuration (default :class:`SFTConfig`).
        task: the task (default :func:`rlcourse.lm.default_task`).
        progress: show a tqdm bar.
        callback: called as ``callback(row)`` with each history row.

    Returns:
        A :class:`TrainResult`; ``after`` is :func:`rlcourse.lm.evaluate_policy` on the held-out split.
    """
    cfg = cfg or SFTConfig()
    task = task or default_task()
    device = pick_device(cfg.device)
    set_seed(cfg.seed)
    if cfg.model_dir is not None:  # a local Hugging Face causal LM with its own tokenizer
        model, tokenizer = load_model(cfg.model_dir, device, chat_template=cfg.chat_template)
    else:
        tokenizer = build_tokenizer()
        model = build_model(cfg.preset, len(tokenizer), cfg.seed, tokenizer=tokenizer).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    run = Run("sft", cfg, {"model": model}, {"opt": opt}, progress=progress, callback=callback)

    with run:
        before = run.remember("before", lambda: evaluate_policy(model, tokenizer, task, cfg.eval_n)
                              if cfg.eval_before else {})
        model.train()
        for step in run.steps():
            t0 = time.perf_counter()
            # 1. the learning rate of this step (warmup, cosine)
            lr = set_lr(opt, lr_at(cfg, step))
            # 2. the NLL of this step's demonstrations, and one AdamW step
            loss = sft_loss(model, tokenizer, demonstrations(cfg, task, step), device)
            check_finite(loss, name="sft loss", step=step)
            grad_norm = optimizer_step(model, opt, loss, cfg.grad_clip, step=step)
            row = {"step": step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item(),
                   "step_seconds": time.perf_counter() - t0}
            if due(step, cfg.eval_every):
                row["eval_accuracy"] = held_out_accuracy(model, tokenizer, task, cfg.eval_n)
            run.log(step, row, {"loss": f"{row['loss']:.3f}"})
        after = evaluate_policy(model, tokenizer, task, cfg.eval_n)
    run.finish(lambda path: save_model(model, tokenizer, path),
               {"before": before, "after": after, "seconds": run.seconds})
    return TrainResult(model, tokenizer, run.history, before, after, run.seconds, run.path, {"task": task})


__all__ = ["SFTConfig", "train_sft", "sft_loss", "demonstrations"]
