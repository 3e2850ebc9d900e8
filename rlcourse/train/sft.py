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

:func:`sft_start` caches the result under :func:`cache_dir` (``$RLCOURSE_CACHE`` or
``~/.cache/rlcourse``), keyed by a hash of the configuration and the task, so notebooks and
benchmarks train it once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlcourse.lm import (ArithmeticTask, build_tokenizer, encode_completions, load_model, pick_device, save_model,
                         sequence_logprobs, sft_examples)
from rlcourse.lm.model import build_model
from rlcourse.logprobs import aggregate
from rlcourse.train.common import (EVAL_N, RunConfig, RunDir, TrainResult, check_finite, due, evaluate_policy,
                                   held_out_accuracy, set_seed, uses_cpu_threads, validate_common)
from rlcourse.train.common import progress as progress_bar

#: Bump when the recipe changes in a way the config hash would not see (invalidates the cache).
RECIPE_VERSION = 2


def default_task() -> ArithmeticTask:
    """The course's task, used by every trainer: 2-digit addition and subtraction, answers >= 0."""
    return ArithmeticTask(digits=2, ops="+-")


def cache_dir() -> Path:
    """Where trained SFT starts are cached: ``$RLCOURSE_CACHE`` or ``~/.cache/rlcourse``."""
    return Path(os.environ.get("RLCOURSE_CACHE") or Path.home() / ".cache" / "rlcourse")


@dataclass
class SFTConfig(RunConfig):
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
        eval_n: held-out problems for the before/after evaluation.
        eval_before: evaluate the untrained model too (it scores 0; skipping saves time).
        (and the run fields of :class:`~rlcourse.train.common.RunConfig`: ``grad_clip``, ``out``,
        ``device``, ``checkpoint_every``, ``eval_every``, ``threads``)
    """

    preset: str = "tiny"
    seed: int = 0
    steps: int = 2000
    lr: float = 2e-3
    batch_size: int = 128
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.98)
    wrong_fraction: float = 0.55
    offsets: tuple = (1,)
    clean_steps: int = 0
    checkpoint_every: int = 500
    eval_n: int = EVAL_N
    eval_before: bool = False

    def __post_init__(self):
        validate_common(self)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        if not isinstance(self.clean_steps, int) or self.clean_steps < 0:
            raise ValueError(f"clean_steps must be a non-negative integer, got {self.clean_steps!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if not isinstance(self.wrong_fraction, (int, float)) or not 0 <= self.wrong_fraction <= 1:
            raise ValueError(f"wrong_fraction must lie in [0, 1], got {self.wrong_fraction!r}")
        self.offsets = tuple(self.offsets)
        if not self.offsets or any(not isinstance(d, int) or d == 0 for d in self.offsets):
            raise ValueError(f"offsets must be non-zero integers, got {self.offsets!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        self.betas = tuple(self.betas)


def lr_at(cfg: SFTConfig, step: int) -> float:
    """Linear warmup to ``cfg.lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress_ = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress_)))


def demonstrations(cfg: SFTConfig, task: ArithmeticTask, step: int) -> list[dict]:
    """The batch of step ``step``: a function of ``(seed, step)`` only (so a resumed run sees the same data)."""
    wrong = 0.0 if step < cfg.clean_steps else cfg.wrong_fraction
    return sft_examples(cfg.batch_size, wrong_fraction=wrong, seed=cfg.seed * 1_000_003 + step, task=task,
                        offsets=cfg.offsets)


def sft_loss(model, tokenizer, examples: list[dict], device) -> torch.Tensor:
    """Token-mean negative log-likelihood of ``completion + <eos>`` given the prompt."""
    batch = encode_completions(tokenizer, [e["prompt"] for e in examples], [e["completion"] for e in examples],
                               device=device)
    logp = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    return aggregate(-logp, batch.response_mask, "token_mean")


@uses_cpu_threads
def train_sft(cfg: SFTConfig | None = None, *, task: ArithmeticTask | None = None, progress: bool = True,
              callback=None) -> TrainResult:
    """Train the SFT start from scratch (or resume it from ``cfg.out``); see the module docstring.

    Args:
        cfg: the configuration (default :class:`SFTConfig`).
        task: the task (default :func:`default_task`).
        progress: show a tqdm bar.
        callback: called as ``callback(row)`` with each history row.

    Returns:
        A :class:`TrainResult`; ``after`` is :func:`evaluate_policy` on the held-out split.
    """
    cfg = cfg or SFTConfig()
    task = task or default_task()
    device = pick_device(cfg.device)
    set_seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = build_model(cfg.preset, len(tokenizer), cfg.seed, tokenizer=tokenizer).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    run = RunDir(cfg.out)
    run.write_config(cfg)
    start, history, extra = run.restore({"model": model}, {"opt": opt})
    before = extra.get("before") or (evaluate_policy(model, tokenizer, task, cfg.eval_n) if cfg.eval_before
                                     else {})
    seconds = float(extra.get("seconds", 0.0))

    model.train()
    bar = progress_bar(cfg.steps, "sft", progress)
    bar.update(start)
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = sft_loss(model, tokenizer, demonstrations(cfg, task, step), device)
        check_finite(loss, name="sft loss", step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        opt.step()
        row = {"step": step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item()}
        if due(step, cfg.eval_every):
            row["eval_accuracy"] = held_out_accuracy(model, tokenizer, task, cfg.eval_n)
        run.end_step(step, row, history, cfg, bar=bar, callback=callback, modules={"model": model},
                     optimizers={"opt": opt}, extra={"before": before, "seconds": seconds + time.perf_counter() - t0},
                     postfix={"loss": f"{row['loss']:.3f}"})
    bar.close()
    seconds += time.perf_counter() - t0

    after = evaluate_policy(model, tokenizer, task, cfg.eval_n)
    if run.enabled:
        run.write_history(history)
        save_model(model, tokenizer, run.path / "final")
        (run.path / "result.json").write_text(json.dumps({"before": before, "after": after, "seconds": seconds},
                                                         indent=2))
    return TrainResult(model, tokenizer, history, before, after, seconds, run.path, {"task": task})


# -- the cached start ------------------------------------------------------------------------

def config_hash(cfg: SFTConfig, task: ArithmeticTask) -> str:
    """A short hash of everything that determines the trained weights (not ``out``/``device``/eval)."""
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("out", "device", "checkpoint_every", "eval_n",
                                                               "eval_before", "eval_every", "threads")}
    blob = json.dumps({"cfg": keep, "task": asdict(task), "version": RECIPE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def sft_start_dir(preset: str = "tiny", seed: int = 0, cfg: SFTConfig | None = None,
                  task: ArithmeticTask | None = None) -> Path:
    """The cache directory of the SFT start for ``(preset, seed)`` (it may not exist yet)."""
    cfg = cfg or SFTConfig(preset=preset, seed=seed)
    task = task or default_task()
    return cache_dir() / f"sft-{cfg.preset}-seed{cfg.seed}-{config_hash(cfg, task)}"


def sft_start(preset: str = "tiny", seed: int = 0, device=None, *, progress: bool = True,
              cfg: SFTConfig | None = None, task: ArithmeticTask | None = None):
    """The course's SFT start ``(model, tokenizer)``: trained once, cached, then loaded.

    Cached under ``cache_dir() / f"sft-{preset}-seed{seed}-{config_hash}"``; training writes
    into a private temporary directory that is renamed into place when complete, under a file
    lock, so concurrent callers train once and never see a half-written start. Every call returns a fresh copy
    (callers may train it). ``cfg`` overrides the recipe (e.g. fewer steps in tests).
    Its before/after figures are in ``result.json`` of that directory (:func:`sft_start_info`).
    """
    cfg = dataclasses.replace(cfg, preset=preset, seed=seed) if cfg is not None else SFTConfig(preset=preset,
                                                                                                 seed=seed)
    task = task or default_task()
    final = sft_start_dir(preset, seed, cfg, task)
    if not (final / "final" / "model.safetensors").exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        with _lock(final.parent / f".{final.name}.lock"):  # a concurrent caller waits, then loads
            if not (final / "final" / "model.safetensors").exists():
                tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
                try:
                    train_sft(dataclasses.replace(cfg, out=str(tmp), device=device), task=task, progress=progress)
                    shutil.rmtree(final, ignore_errors=True)  # a leftover without final/ (interrupted run)
                    os.rename(tmp, final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    model, tokenizer = load_model(final / "final", device)
    return model, tokenizer


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive file lock (POSIX ``flock``); a no-op where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent first calls may both train; the rename keeps one
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sft_start_info(preset: str = "tiny", seed: int = 0) -> dict | None:
    """The cached start's ``{"before", "after", "seconds"}`` (None if it has not been trained)."""
    path = sft_start_dir(preset, seed) / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


__all__ = ["SFTConfig", "train_sft", "sft_start", "sft_start_dir", "sft_start_info", "default_task", "cache_dir",
           "config_hash", "lr_at", "sft_loss", "RECIPE_VERSION"]
