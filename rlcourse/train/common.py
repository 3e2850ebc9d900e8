"""What every trainer shares: a run directory with checkpoints that resume, a metrics history,
a per-step random generator, a progress bar, and a clear error on a non-finite loss.

Resuming reproduces the uninterrupted run exactly because every source of randomness in a
step is drawn from :func:`step_generator` (seeded by ``(seed, step)``), never from a global
stream that would have to be saved and restored.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import torch

from rlcourse import _validate as V


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss (or a metric it depends on) is NaN or infinite."""


def check_finite(value: torch.Tensor | float, *, name: str, step: int) -> None:
    """Stop training with a clear message if ``value`` is NaN or infinite."""
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        raise NonFiniteLossError(
            f"{name} is {v} at step {step}: training stopped. Lower the learning rate, check the "
            f"rewards and advantages for NaN/inf, or resume from the last checkpoint."
        )


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The random generator of one training step: a function of (seed, step) only."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
    return g


def progress(total: int, desc: str, enabled: bool = True):
    """A tqdm progress bar (notebook-aware), redrawn at most every ``mininterval`` seconds.

    Outside a terminal (a Jupyter kernel, a CI log) every redraw is a message of its own: a
    Jupyter kernel sends each one over its IOPub socket, which silently drops messages beyond its
    high-water mark (1000) while nobody reads them, as during ``nbval``'s execution of a cell; the
    "cell finished" message can be among those lost. So the bar redraws at most once a second
    there (and callers set postfixes with ``refresh=False``).
    """
    import sys

    from tqdm.auto import tqdm

    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True,
                mininterval=0.1 if interactive else 1.0)


#: Optional fields that several trainer configs share, and what each must be.
_POSITIVE_INT_OR_NONE = ("max_new_tokens", "max_pairs_per_group", "threads")
_POSITIVE_INT = ("eval_n", "checkpoint_every")
_NON_NEGATIVE_INT = ("eval_every",)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class RunConfig:
    """The fields every trainer config shares (each trainer's config derives from this one).

    Attributes:
        grad_clip: max gradient norm (None: no clipping).
        out: run directory (``config.json``, ``history.jsonl``, ``checkpoint.pt``, ``final/``), or None.
        device: None -> :func:`rlcourse.lm.pick_device` (cuda, then mps, then cpu).
        checkpoint_every: steps between checkpoints (when ``out`` is set); one is also saved after the last step.
        eval_every: if > 0, a held-out evaluation every this many steps, in the history.
        threads: torch intra-op threads while training (None: torch's setting); see :func:`uses_cpu_threads`.
    """

    grad_clip: float | None = 1.0
    out: str | None = None
    device: str | None = None
    checkpoint_every: int = 50
    eval_every: int = 0
    threads: int | None = None


def validate_common(cfg) -> None:
    """Checks shared by every trainer config: steps, learning rate, seed, and, where the config has
    them, ``max_new_tokens`` / ``max_pairs_per_group`` / ``threads`` (a positive integer or None),
    ``eval_n`` / ``checkpoint_every`` (positive integers), ``eval_every`` (>= 0) and
    ``grad_clip`` (> 0 or None). Raises ``ValueError`` naming the field."""
    if not _is_int(cfg.steps) or cfg.steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {cfg.steps!r}")
    V.positive("lr", cfg.lr)
    if not _is_int(cfg.seed):
        raise ValueError(f"seed must be an integer, got {cfg.seed!r}")
    for name in _POSITIVE_INT_OR_NONE:
        v = getattr(cfg, name, None)
        if v is not None and (not _is_int(v) or v < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
    for name in _POSITIVE_INT:
        v = getattr(cfg, name, 1)
        if not _is_int(v) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    for name in _NON_NEGATIVE_INT:
        v = getattr(cfg, name, 0)
        if not _is_int(v) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if getattr(cfg, "grad_clip", None) is not None:
        V.positive("grad_clip", cfg.grad_clip)


def due(step: int, every: int) -> bool:
    """Whether something done every ``every`` steps (0: never) is due after step ``step`` (0-based)."""
    return every > 0 and (step + 1) % every == 0


class RunDir:
    """A run directory: ``config.json``, ``history.jsonl``, ``checkpoint.pt`` and ``final/``.

    ``checkpoint.pt`` holds the step, the state of every module and optimizer, and the history
    so far; :meth:`load` returns it so a trainer can continue from the next step.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def write_config(self, cfg) -> None:
        if self.enabled:
            data = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
            (self.path / "config.json").write_text(json.dumps(data, indent=2, default=str))

    def write_history(self, history: list[dict[str, Any]]) -> None:
        if self.enabled:
            with open(self.path / "history.jsonl", "w") as f:
                for row in history:
                    f.write(json.dumps(row) + "\n")

    def save(self, step: int, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             history: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
        """Save a checkpoint atomically (write then rename), so an interrupted save loses nothing."""
        if not self.enabled:
            return
        state = {
            "step": step,
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "history": history,
            "extra": extra or {},
        }
        tmp = self.path / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path / "checkpoint.pt")
        self.write_history(history)

    def end_step(self, step: int, row: dict[str, Any], history: list[dict[str, Any]], cfg, *, bar, callback,
                 modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                 extra: dict[str, Any], postfix: dict[str, str]) -> None:
        """The end of every trainer's step: append ``row`` to ``history``, call ``callback(row)``, advance
        the progress bar, and checkpoint every ``cfg.checkpoint_every`` steps and after the last."""
        history.append(row)
        if callback is not None:
            callback(row)
        bar.update(1)
        bar.set_postfix(postfix, refresh=False)
        if due(step, cfg.checkpoint_every) or step + 1 == cfg.steps:
            self.save(step + 1, modules, optimizers, history, extra)

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, or None if there is none."""
        if not self.enabled or not (self.path / "checkpoint.pt").exists():
            return None
        return torch.load(self.path / "checkpoint.pt", map_location="cpu", weights_only=False)

    def restore(self, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]):
        """Load the last checkpoint into ``modules`` and ``optimizers``.

        Returns ``(start_step, history, extra)``: ``(0, [], {})`` when there is no checkpoint.
        """
        state = self.load()
        if state is None:
            return 0, [], {}
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        return int(state["step"]), list(state["history"]), dict(state["extra"])


# -- what every trainer returns, and how every trainer is evaluated ---------------------------

@dataclass
class TrainResult:
    """What a trainer returns.

    Attributes:
        model, tokenizer: the trained policy (or reward model) and its tokenizer.
        history: one dict of floats per step (``"step"`` plus the metrics named like the paper).
        before, after: :func:`evaluate_policy` (or the trainer's own evaluation) before and after.
        seconds: training time, evaluation excluded.
        out: the run directory, or None.
        extra: anything else the trainer wants to hand back (e.g. the reference model).
    """

    model: Any
    tokenizer: Any
    history: list = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    seconds: float = 0.0
    out: Path | None = None
    extra: dict = field(default_factory=dict)


#: Size of the held-out evaluation set and samples per problem used by every trainer.
EVAL_N = 500
EVAL_SAMPLES = 8


def evaluate_policy(model, tokenizer, task, n_eval: int = EVAL_N, seed: int = 0, *, n_samples: int = EVAL_SAMPLES,
                    ks=(1, 8), temperature: float = 1.0, batch_size: int = 512) -> dict:
    """Held-out evaluation shared by every trainer (same problems for everyone).

    Returns ``{"accuracy": greedy accuracy, "pass@1": sampled accuracy at ``temperature``,
    "pass@8": unbiased pass@8 from ``n_samples`` samples, "mean_reward": mean sampled reward}``
    on ``task.held_out(n_eval, seed)``. The policy's train/eval mode is left as it was.

    Cost on the 2-core CPU (tiny preset, trained model): about 5 s for 500 problems x 8 samples.
    Generation batches above ~512 rows were measured to slow down sharply on this CPU, hence
    ``batch_size=512``.
    """
    from rlcourse.lm import evaluate

    if not isinstance(n_eval, int) or n_eval < 1:
        raise ValueError(f"n_eval must be a positive integer, got {n_eval!r}")
    problems = task.held_out(n_eval, seed=seed)
    return evaluate(model, tokenizer, problems, ks=tuple(ks), n=n_samples, temperature=temperature,
                    batch_size=batch_size, seed=seed)


def problems_for_step(task, n: int, seed: int, step: int):
    """The ``n`` training-split problems of step ``step``: a function of ``(seed, step)`` only."""
    return task.sample(n, "train", seed=int(seed) * 1_000_003 + int(step))


def sample_groups(model, tokenizer, task, *, n_prompts: int, group_size: int, max_new_tokens: int,
                  temperature: float, seed: int, step: int, round_: int = 0):
    """One batch of on-policy samples: ``n_prompts`` problems x ``group_size`` completions, and their rewards.

    Problems and sampling randomness are functions of ``(seed, step, round_)`` (``round_`` > 0
    for the extra rounds of DAPO's dynamic sampling), so a resumed run draws the same batch.

    Returns:
        ``(problems, rollout, rewards)`` with ``rewards`` a float tensor ``(n_prompts * group_size,)``
        on the model's device (rule-based :func:`rlcourse.lm.reward`).
    """
    from rlcourse.lm import batch_rewards, generate

    device = next(model.parameters()).device
    sub = int(step) * 64 + int(round_)  # rounds of one step never collide with other steps
    problems = problems_for_step(task, n_prompts, seed, sub)
    gen = step_generator(seed, sub, device)
    ro = generate(model, tokenizer, [p.prompt for p in problems], group_size, max_new_tokens, temperature,
                  generator=gen)
    answers = [p.answer for p in problems for _ in range(group_size)]
    rewards = batch_rewards(ro.completions, answers, ro.finished).to(device)
    return problems, ro, rewards


def default_max_new_tokens(task) -> int:
    """Room for the longest answer, ``<eos>`` and one extra token (a sign or a slip)."""
    return task.max_answer_chars + 2


def held_out_accuracy(model, tokenizer, task, n_eval: int = EVAL_N, seed: int = 0) -> float:
    """Greedy accuracy on the same held-out problems as :func:`evaluate_policy` (no sampling: cheap)."""
    from rlcourse.lm import accuracy

    return accuracy(model, tokenizer, task.held_out(n_eval, seed=seed), batch_size=512)


def uses_cpu_threads(train):
    """Decorate a trainer ``train(cfg, ...)`` to run with ``cfg.threads`` torch intra-op threads (restored after).

    Why: the course's tiny model does many small operations. On the idle 2-core baseline
    machine two threads are faster (an SFT step: 0.068 s against 0.109 s for one; the default
    REINFORCE run: 16.5 s against 25.4 s), so every trainer's default is ``None`` (torch's
    setting). But when another process competes for the cores (parallel experiments), two
    threads spin-wait on each other and a step took 0.6-5 s in our measurements, while one
    thread stayed near 0.1-0.2 s: pass ``threads=1`` there. Only CPU work is affected.
    """

    @functools.wraps(train)
    def run(cfg=None, *args, **kwargs):
        n = getattr(cfg, "threads", None)
        if n is None:
            return train(cfg, *args, **kwargs)
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return train(cfg, *args, **kwargs)
        finally:
            torch.set_num_threads(old)

    return run


def start_policy(cfg, model=None, tokenizer=None, task=None, *, progress: bool = True):
    """``(model, tokenizer, task, device)``: what a trainer starts from, on its device, seeds set.

    ``model=None`` loads the course's cached SFT start for ``(cfg.preset, cfg.seed)``
    (:func:`rlcourse.train.sft.sft_start`, trained on first use); a given ``model`` needs its
    ``tokenizer``. ``task=None`` is the course's default task. The device is ``cfg.device`` when
    set, else the model's own.
    """
    from rlcourse.lm import pick_device
    from rlcourse.train.sft import default_task, sft_start

    task = task or default_task()
    if model is None:
        model, tokenizer = sft_start(cfg.preset, cfg.seed, cfg.device, progress=progress)
    elif tokenizer is None:
        raise ValueError("tokenizer is required when model is given")
    device = pick_device(cfg.device) if cfg.device is not None else next(model.parameters()).device
    model.to(device)
    set_seed(cfg.seed)
    return model, tokenizer, task, device
