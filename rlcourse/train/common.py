"""What every trainer shares: the shared config fields, the run (history, progress, checkpoints
that resume, refusal of a different config), a per-step random generator, and a clear error on
a non-finite loss.

A trainer reads::

    run = Run("grpo", cfg, modules={"model": model}, optimizers={"opt": opt}, progress=..., callback=...)
    with run:                                   # cfg.threads; Ctrl-C -> TrainingInterrupted(step, resume step)
        before = run.remember("before", lambda: evaluate_policy(...))   # restored when resuming
        for step in run.steps():                # from the checkpoint's step to cfg.steps
            ...                                 # the algorithm
            run.log(step, row)                  # history, callback, progress bar, checkpoint when due
        after = evaluate_policy(...)
    run.finish(save=lambda path: save_model(model, tokenizer, path))

Resuming reproduces the uninterrupted run exactly because every source of randomness in a
step is drawn from :func:`step_generator` (seeded by ``(seed, step)``), never from a global
stream that would have to be saved and restored.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from rlcourse._validate import integer, number  # noqa: F401  (re-exported: experiments/ still import them from here)
from rlcourse.lm.evaluation import EVAL_N
from rlcourse.threads import cpu_threads

# -- checks ------------------------------------------------------------------------------------


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


# -- the shared config fields ------------------------------------------------------------------

def check_out(out) -> str | None:
    """``out`` as a string path, or None; a clear error for ``''``, a non-path, or an existing file."""
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise ValueError(f"out must be a directory path (str or os.PathLike) or None, got {out!r}")
    out = os.fspath(out)
    if not out.strip():
        raise ValueError("out must be a directory path or None, got an empty string (it would write into the "
                         "current directory); give a new directory such as runs/grpo")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out={out!r} is an existing file, not a directory; give a directory path")
    return out


@dataclass
class RunConfig:
    """The fields every trainer config shares (each trainer's config derives from this one and
    overrides the defaults of ``steps`` and ``lr``). Validated once, here.

    Attributes:
        preset: model preset of the start (``"tiny"`` / ``"small"``).
        seed: seeds the data and every sampling step.
        steps: optimizer steps (or generation batches).
        lr: the (peak) AdamW learning rate, finite and > 0.
        grad_clip: max gradient norm (None: no clipping).
        out: run directory (``config.json``, ``history.jsonl``, ``checkpoint.pt``, ``final/``), or None.
        device: None -> :func:`rlcourse.lm.pick_device` (cuda, then mps, then cpu).
        checkpoint_every: steps between checkpoints (when ``out`` is set); one is also saved after the last step.
        eval_every: if > 0, a held-out evaluation every this many steps, in the history.
        eval_n: held-out problems for the before/after evaluation.
        threads: torch intra-op threads while training (None: torch's setting); see :func:`rlcourse.lm.cpu_threads`.
        model_dir: a local Hugging Face causal LM to start from instead of the course's start (recorded as
            an absolute path; loaded by the command line, :func:`rlcourse.experiments.registry.run`).
        chat_template: prompt ``model_dir``'s model through its tokenizer's chat template, if it has one.
    """

    preset: str = "tiny"
    seed: int = 0
    steps: int = 100
    lr: float = 1e-4
    grad_clip: float | None = 1.0
    out: str | None = None
    device: str | None = None
    checkpoint_every: int = 50
    eval_every: int = 0
    eval_n: int = EVAL_N
    threads: int | None = None
    model_dir: str | None = None
    chat_template: bool = True

    def __post_init__(self):
        from rlcourse.lm.model import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")
        integer("seed", self.seed, minimum=-(2**62))
        integer("steps", self.steps, 0)
        number("lr", self.lr)
        number("grad_clip", self.grad_clip, none_ok=True)
        self.out = check_out(self.out)
        integer("checkpoint_every", self.checkpoint_every)
        integer("eval_every", self.eval_every, 0)
        integer("eval_n", self.eval_n)
        integer("threads", self.threads, none_ok=True)
        if self.model_dir is not None:
            if not isinstance(self.model_dir, (str, os.PathLike)) or not os.fspath(self.model_dir).strip():
                raise ValueError(f"model_dir must be a directory path or None, got {self.model_dir!r}")
            self.model_dir = os.path.abspath(os.fspath(self.model_dir))
        if not isinstance(self.chat_template, bool):
            raise ValueError(f"chat_template must be True or False, got {self.chat_template!r}")


# Each trainer's config derives from the ones below whose fields it uses, and sets its own defaults:
#   SFTConfig(ScheduleConfig); ReinforceConfig, GRPOConfig, PPOConfig(OnPolicyConfig);
#   RewardModelConfig, DPOConfig(PairConfig) = ScheduleConfig + SamplingConfig + the pairs' fields.


@dataclass
class SamplingConfig(RunConfig):
    """:class:`RunConfig` plus how completions are sampled from the policy.

    Attributes:
        group_size: completions per prompt (>= 1; a trainer that compares them asks for more).
        max_new_tokens: completion length limit (None: the task's longest answer + 2).
        temperature: sampling temperature, finite and > 0 (log-probs are those of logits / temperature).
    """

    group_size: int = 8
    max_new_tokens: int | None = None
    temperature: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        integer("group_size", self.group_size)
        integer("max_new_tokens", self.max_new_tokens, none_ok=True)
        number("temperature", self.temperature)


@dataclass
class OnPolicyConfig(SamplingConfig):
    """:class:`SamplingConfig` plus the batch of an on-policy step (REINFORCE, PPO, GRPO).

    Attributes:
        prompts_per_step: fresh training problems per step (rows = ``prompts_per_step * group_size``).
    """

    prompts_per_step: int = 16

    def __post_init__(self):
        super().__post_init__()
        integer("prompts_per_step", self.prompts_per_step)


@dataclass
class ScheduleConfig(RunConfig):
    """:class:`RunConfig` plus minibatches and a learning-rate schedule (SFT, reward model, DPO).

    Each trainer's config derives from this one and sets its own defaults.

    Attributes:
        batch_size: examples (or pairs) per optimizer step.
        warmup_steps: steps of linear warmup to ``lr``; then a cosine decay to ``lr * min_lr_ratio``
            (:func:`lr_at`).
        min_lr_ratio: the final learning rate as a share of ``lr``, in [0, 1].
    """

    batch_size: int = 64
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        integer("batch_size", self.batch_size)
        integer("warmup_steps", self.warmup_steps, 0)
        number("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0, strict=False)


@dataclass
class PairConfig(ScheduleConfig, SamplingConfig):
    """:class:`ScheduleConfig` and :class:`SamplingConfig` plus how the oracle's preference pairs are
    drawn (reward model, DPO): ``group_size`` (>= 2) samples of each of ``n_prompts`` distinct training
    problems, every distinct pair labelled by the oracle (:func:`rlcourse.lm.oracle_pairs`).

    Attributes:
        n_prompts: distinct training problems.
        max_pairs_per_group: keep at most this many pairs of each problem (None: all).
    """

    n_prompts: int = 2000
    max_pairs_per_group: int | None = None

    def __post_init__(self):
        super().__post_init__()
        integer("group_size", self.group_size, 2)  # a pair needs two samples
        integer("n_prompts", self.n_prompts)
        integer("max_pairs_per_group", self.max_pairs_per_group, none_ok=True)


def lr_at(cfg, step: int) -> float:
    """Linear warmup to ``cfg.lr`` over ``cfg.warmup_steps``, then cosine decay to ``cfg.lr * cfg.min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> float:
    """Set the learning rate of every parameter group of ``opt``; returns ``lr``."""
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float | None,
                   *, step: int) -> torch.Tensor:
    """One optimizer step on ``loss``: clear the gradients, backpropagate, clip the gradient norm of
    ``model``'s parameters at ``grad_clip`` (None: no clipping), check it is finite, step.

    Returns the gradient norm before clipping (raises :class:`NonFiniteLossError` if it is NaN or infinite).
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    check_finite(grad_norm, name="gradient norm", step=step)
    opt.step()
    return grad_norm


def due(step: int, every: int) -> bool:
    """Whether something done every ``every`` steps (0: never) is due after step ``step`` (0-based)."""
    return every > 0 and (step + 1) % every == 0


# -- the run directory ---------------------------------------------------------------------------

#: Fields that may differ when a run is resumed: where and how it runs, not what it computes.
RESUMABLE_CHANGES = ("out", "device", "threads", "checkpoint_every")


#: Fields recorded only when they differ from these defaults: they came after runs and cached starts
#: existed, so a config that does not set them is the same config as before (resume, cache keys).
SET_ONLY_FIELDS = {"model_dir": None, "chat_template": True, "reward_offset": 0.0, "optimizer": "adamw"}


def config_dict(cfg) -> dict:
    """``asdict(cfg)`` without the :data:`SET_ONLY_FIELDS` left at their defaults."""
    return {k: v for k, v in asdict(cfg).items() if not (k in SET_ONLY_FIELDS and v == SET_ONLY_FIELDS[k])}


def _config_record(name: str, cfg) -> dict:
    return json.loads(json.dumps({"algorithm": name, **config_dict(cfg)}, default=str))


def config_diff(old: dict, new: dict, ignore=()) -> list[str]:
    """The keys whose values differ between two config records (a key absent from one side differs), sorted;
    keys in ``ignore`` are skipped."""
    return [k for k in sorted(set(old) | set(new)) if k not in ignore and old.get(k, "(absent)") != new.get(k, "(absent)")]


def describe_config_diff(old: dict, new: dict, keys) -> str:
    """``"k: <old> there, <new> now, ..."`` for the differing ``keys`` (as :func:`config_diff` lists them)."""
    return ", ".join(f"{k}: {old.get(k, '(absent)')!r} there, {new.get(k, '(absent)')!r} now" for k in keys)


class RunDir:
    """A run directory: ``config.json``, ``history.jsonl``, ``checkpoint.pt`` and ``final/``.

    ``checkpoint.pt`` holds the step, the state of every module and optimizer, and the history
    so far; :meth:`load` returns it so a trainer can continue from the next step.
    """

    def __init__(self, path: str | os.PathLike | None):
        path = check_out(path)
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(f"out={str(self.path)!r}: cannot create the run directory ({e.strerror})") from e
            if not os.access(self.path, os.W_OK | os.X_OK):
                raise ValueError(f"out={str(self.path)!r} is not writable; give a directory you can write to")

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def check_config(self, name: str, cfg) -> None:
        """Refuse to resume a run made with another algorithm or config; else write ``config.json``.

        Raises ``ValueError`` naming the fields that differ (``config.json`` is left as it was).
        """
        if not self.enabled:
            return
        path = self.path / "config.json"
        new = _config_record(name, cfg)
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{path} cannot be read ({e}); delete the run directory {str(self.path)!r} to "
                                 "start fresh") from e
            diff = [k for k in config_diff(old, new, RESUMABLE_CHANGES) if not (k == "algorithm" and k not in old)]
            if diff:
                seen = describe_config_diff(old, new, diff)
                raise ValueError(f"run directory {str(self.path)!r} holds a {old.get('algorithm', 'different')} run "
                                 f"whose config differs ({seen}). To resume it, repeat its options; to start "
                                 "fresh, pass a new --out (out=) or delete that directory.")
        path.write_text(json.dumps(new, indent=2))

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

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, or None if there is none; ``ValueError`` naming the file if it is damaged."""
        if not self.enabled or not (self.path / "checkpoint.pt").exists():
            return None
        path = self.path / "checkpoint.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or not {"step", "modules", "optimizers"} <= set(state):
                raise ValueError("not a checkpoint of this course")
        except Exception as e:  # truncated, empty, random bytes, another program's file
            raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {str(e)[:120]}). "
                             f"Delete it to restart from step 0 (or delete {str(self.path)!r} to start fresh)") from e
        return state

    def restore(self, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]):
        """Load the last checkpoint into ``modules`` and ``optimizers``.

        Returns ``(start_step, history, extra)``: ``(0, [], {})`` when there is no checkpoint.
        """
        state = self.load()
        if state is None:
            return 0, [], {}
        try:
            for k, m in modules.items():
                m.load_state_dict(state["modules"][k])
            for k, o in optimizers.items():
                o.load_state_dict(state["optimizers"][k])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(f"checkpoint {str(self.path / 'checkpoint.pt')!r} does not fit this run "
                             f"({type(e).__name__}: {str(e)[:120]}); delete {str(self.path)!r} or pass a new --out"
                             ) from e
        return int(state["step"]), list(state["history"]), dict(state.get("extra", {}))


# -- the run -----------------------------------------------------------------------------------

class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: which step was running, and the step a rerun resumes from."""

    def __init__(self, step: int, resume_step: int, out: Path | None):
        self.step, self.resume_step, self.out = step, resume_step, out
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.out is None:
            return f"interrupted at step {self.step} (no run directory: pass --out DIR to keep checkpoints)"
        return f"interrupted at step {self.step}; run the same command to resume from step {self.resume_step}"


class Run:
    """One training run: restores from ``cfg.out``, logs rows, checkpoints when due, finishes.

    Args:
        name: the algorithm (recorded in ``config.json``: a run of another algorithm is refused).
        cfg: the trainer's config (a :class:`RunConfig`).
        modules, optimizers: what a checkpoint holds (restored here when resuming).
        progress: show a progress bar described by ``desc``. callback: called as ``callback(row)``.

    Attributes:
        start, history: the step to start from and the rows so far (restored).
        state: a dict saved with every checkpoint (e.g. ``"before"``, a KL coefficient).
        seconds: training seconds so far (the sum of the rows' ``step_seconds``).
    """

    def __init__(self, name: str, cfg, modules: dict, optimizers: dict, *, progress: bool = True,
                 callback: Callable | None = None, desc: str | None = None):
        self.name, self.cfg, self.modules, self.optimizers, self.callback = name, cfg, modules, optimizers, callback
        self.dir = RunDir(cfg.out)
        self.dir.check_config(name, cfg)
        self.start, self.history, self.state = self.dir.restore(modules, optimizers)
        self.seconds = float(self.state.get("seconds", 0.0))
        self.step = self.saved_step = self.start
        self._threads = cpu_threads(cfg.threads)
        self._bar_args = (cfg.steps, desc or name, progress)
        self.bar = None

    @property
    def path(self) -> Path | None:
        return self.dir.path

    def __enter__(self):
        self._threads.__enter__()
        self.bar = progress(*self._bar_args)
        self.bar.update(self.start)
        return self

    def __exit__(self, exc_type, exc, tb):
        self.bar.close()
        self._threads.__exit__(exc_type, exc, tb)
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) \
                and not isinstance(exc, TrainingInterrupted):
            raise TrainingInterrupted(self.step, self.saved_step, self.path) from None
        return False

    def remember(self, key: str, compute: Callable[[], Any]):
        """``state[key]``, computed by ``compute()`` on the first run and restored when resuming."""
        if key not in self.state:
            self.state[key] = compute()
        return self.state[key]

    def steps(self):
        """The steps still to run: from the checkpoint's step to ``cfg.steps``."""
        for step in range(self.start, self.cfg.steps):
            self.step = step
            yield step

    def log(self, step: int, row: dict, postfix: dict | None = None) -> None:
        """The end of a step: append ``row``, call the callback, advance the bar, checkpoint when due."""
        self.history.append(row)
        self.seconds += float(row.get("step_seconds", 0.0))
        if self.callback is not None:
            self.callback(row)
        self.bar.update(1)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        if due(step, self.cfg.checkpoint_every) or step + 1 == self.cfg.steps:
            self.state["seconds"] = self.seconds
            self.dir.save(step + 1, self.modules, self.optimizers, self.history, self.state)
            self.saved_step = step + 1

    def finish(self, save: Callable[[Path], Any] | None = None, result: dict | None = None) -> Path | None:
        """Write the history, ``final/`` (``save(path)``) and ``result.json``; returns the run directory."""
        if self.dir.enabled:
            self.dir.write_history(self.history)
            if save is not None:
                save(self.path / "final")
            if result is not None:
                (self.path / "result.json").write_text(json.dumps(result, indent=2, default=str))
        return self.path


# -- what every trainer returns, and where it starts ---------------------------------------------

@dataclass
class TrainResult:
    """What a trainer returns.

    Attributes:
        model, tokenizer: the trained policy (or reward model) and its tokenizer.
        history: one dict of floats per step (``"step"`` plus the metrics named like the paper).
        before, after: :func:`rlcourse.lm.evaluate_policy` (or the trainer's own evaluation) before and after.
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


def start_policy(cfg, model, tokenizer, task=None):
    """``(model, tokenizer, task, device)``: what a trainer starts from, on its device, seeds set.

    A trainer needs a ``model`` and its ``tokenizer`` (the course's SFT start is
    :func:`rlcourse.experiments.sft_start`); ``task=None`` is :func:`rlcourse.lm.default_task`.
    The device is ``cfg.device`` when set, else the model's own.
    """
    from rlcourse.lm import default_task, pick_device

    if model is None or tokenizer is None:
        raise ValueError("model and tokenizer are required: the course's SFT start is "
                         "rlcourse.experiments.sft_start(preset, seed)")
    task = task or default_task()
    device = pick_device(cfg.device) if cfg.device is not None else next(model.parameters()).device
    model = model.to(device)
    set_seed(cfg.seed)
    return model, tokenizer, task, device


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
        on the model's device (the task's rule-based reward, ``task.batch_rewards``).
    """
    from rlcourse.lm import generate

    device = next(model.parameters()).device
    sub = int(step) * 64 + int(round_)  # rounds of one step never collide with other steps
    problems = problems_for_step(task, n_prompts, seed, sub)
    gen = step_generator(seed, sub, device)
    ro = generate(model, tokenizer, [p.prompt for p in problems], group_size, max_new_tokens, temperature,
                  generator=gen)
    answers = [p.answer for p in problems for _ in range(group_size)]
    rewards = task.batch_rewards(ro.completions, answers, ro.finished).to(device)
    return problems, ro, rewards


def config_fields(cls) -> list[str]:
    """The field names of a config dataclass (for the command line's option checks)."""
    return [f.name for f in fields(cls)]
