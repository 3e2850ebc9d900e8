"""The one cache of trained starts: the SFT start and the reward models, trained once, then loaded.

A start lives in ``cache_dir() / f"{kind}-{preset}-seed{seed}-{hash}"``, where the hash covers
the full recipe (every field of the trainer's config that shapes the weights, the task, and for
a reward model the SFT start it is trained from), so a change to any of them trains a new one.

How a start is built (:func:`build_once`):

* under an exclusive file lock, so concurrent callers (two notebooks, parallel tests) train once
  and the second one loads;
* into ``.<name>.partial``, a run directory with checkpoints: an interrupted build (Ctrl-C, a
  killed kernel) *resumes* from its last checkpoint on the next call instead of starting over;
* renamed into place only when complete (atomic), so nobody ever loads a half-written start;
* temporary directories left by older versions (``.<name>.tmp-*``) are removed.

Training a new start takes minutes, so one line says so on stderr (also when progress bars are off).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from rlcourse._validate import integer
from rlcourse.lm import ArithmeticTask, default_task, load_model
from rlcourse.lm.chain_task import ChainTask
from rlcourse.lm.reward_model import RewardModel
from rlcourse.train.common import config_dict
from rlcourse.train.reward_model import RewardModelConfig, train_reward_model
from rlcourse.train.sft import SFTConfig, train_sft

#: Bump when the SFT recipe changes in a way the config hash would not see (invalidates the cache).
RECIPE_VERSION = 2

#: Config fields that say where and how a run goes, not what it computes: left out of the keys.
RUN_ONLY_FIELDS = ("out", "device", "checkpoint_every", "eval_n", "eval_before", "eval_every", "threads")

#: Rough training time of a new start on an idle 2-core CPU (for the announcement line).
_MINUTES = {("sft", "tiny"): "2-6", ("rm", "tiny"): "1-3"}


def cache_dir() -> Path:
    """Where trained starts are cached: ``$RLCOURSE_CACHE`` or ``~/.cache/rlcourse`` (must be a directory)."""
    env = os.environ.get("RLCOURSE_CACHE")
    path = Path(env or Path.home() / ".cache" / "rlcourse")
    if path.exists() and not path.is_dir():
        raise ValueError(f"RLCOURSE_CACHE={str(path)!r} is a file, not a directory; point it at a directory "
                         "(or unset it to use ~/.cache/rlcourse)")
    return path


def recipe_hash(cfg, extra: dict) -> str:
    """A short hash of ``cfg`` (without :data:`RUN_ONLY_FIELDS`) and ``extra`` (the task, the start, a version)."""
    keep = {k: v for k, v in config_dict(cfg).items() if k not in RUN_ONLY_FIELDS}
    blob = json.dumps({"cfg": keep, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


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


def build_once(final: Path, build: Callable[[Path], None], done: Callable[[Path], bool], announce: str = "") -> Path:
    """Make sure ``final`` is complete (``done(final)``), calling ``build(work_dir)`` under the lock if not.

    ``build`` writes into a run directory that survives an interruption (it resumes from its
    checkpoint next time); the directory is renamed to ``final`` when ``build`` returns.
    """
    if done(final):
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the cache directory {str(final.parent)!r} ({e.strerror}); set "
                         "RLCOURSE_CACHE to a writable directory") from e
    with _lock(final.parent / f".{final.name}.lock"):  # a concurrent caller waits, then loads
        if done(final):
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by an interrupted build of old versions
            shutil.rmtree(stale, ignore_errors=True)
        work = final.parent / f".{final.name}.partial"
        if announce:
            resuming = " (resuming an interrupted build)" if (work / "checkpoint.pt").exists() else ""
            print(announce + resuming, file=sys.stderr, flush=True)
        build(work)
        shutil.rmtree(final, ignore_errors=True)  # a leftover without its final files
        os.rename(work, final)
    return final


def _announce(kind: str, what: str, preset: str, seed: int, final: Path) -> str:
    minutes = _MINUTES.get((kind, preset), "several")
    return (f"rlcourse: training the {what} for preset={preset}, seed={seed} (first use: about {minutes} minutes "
            f"on a 2-core CPU; cached in {final.parent})")


# -- the SFT start -------------------------------------------------------------------------------

def task_key(task) -> dict:
    """What a cache key says of ``task``: its fields, and for any task but :class:`~rlcourse.lm.ArithmeticTask`
    its class too (two tasks with the same fields are different tasks; the arithmetic keys stay as they were)."""
    if not dataclasses.is_dataclass(task) or isinstance(task, type):
        raise ValueError(f"task must be a task dataclass instance (ArithmeticTask, ChainTask...), got {task!r}")
    fields = dataclasses.asdict(task)
    if type(task) is ArithmeticTask:
        return fields
    return {"class": f"{type(task).__module__}.{type(task).__qualname__}", **fields}


def config_hash(cfg: SFTConfig, task) -> str:
    """A short hash of everything that determines the SFT start's weights (not ``out``/``device``/eval): the
    config, the task (:func:`task_key`: with a chain task, its demonstrator's ``slip``, ``confused_fraction``
    and ``skip_fraction`` too) and :data:`RECIPE_VERSION`."""
    return recipe_hash(cfg, {"task": task_key(task), "version": RECIPE_VERSION})


def sft_start_dir(preset: str = "tiny", seed: int = 0, cfg: SFTConfig | None = None, task=None) -> Path:
    """The cache directory of the SFT start for ``(preset, seed)`` (it may not exist yet)."""
    cfg = cfg or SFTConfig(preset=preset, seed=seed)
    task = task or default_task()
    return cache_dir() / f"sft-{cfg.preset}-seed{cfg.seed}-{config_hash(cfg, task)}"


def sft_start(preset: str = "tiny", seed: int = 0, device=None, *, progress: bool = True,
              cfg: SFTConfig | None = None, task=None):
    """The course's SFT start ``(model, tokenizer)``: trained once (:func:`rlcourse.train.sft.train_sft`), cached, loaded.

    Every call returns a fresh copy (callers may train it). ``cfg`` overrides the recipe (e.g.
    fewer steps in tests). Its before/after figures are in ``result.json`` (:func:`sft_start_info`).
    """
    cfg = dataclasses.replace(cfg, preset=preset, seed=seed) if cfg is not None else SFTConfig(preset=preset,
                                                                                                 seed=seed)
    task = task or default_task()
    final = sft_start_dir(preset, seed, cfg, task)

    def build(work: Path) -> None:
        train_sft(dataclasses.replace(cfg, out=str(work), device=device), task=task, progress=progress)

    build_once(final, build, lambda d: (d / "final" / "model.safetensors").exists(),
               _announce("sft", "SFT start", cfg.preset, cfg.seed, final))
    return load_model(final / "final", device)


def sft_start_info(preset: str = "tiny", seed: int = 0, cfg: SFTConfig | None = None, task=None) -> dict | None:
    """The cached start's ``{"before", "after", "seconds"}`` (None if it has not been trained)."""
    path = sft_start_dir(preset, seed, cfg, task) / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


# -- the SFT start of the chain task (notebook 09) --------------------------------------------------

#: The calibrated chain task (``benchmarks/chain_task_calibration.md``): 2 to 6 one-digit terms, ``+``,
#: running sums then the answer; the demonstrator writes 30 % of the (units, units) addition facts off by one.
CHAIN_TASK = ChainTask(min_terms=2, max_terms=6, digits=1, ops="+", slip="facts", confused_fraction=0.3,
                       skip_fraction=0.0)

#: The calibrated SFT recipe of the chain start (fields of :class:`~rlcourse.train.sft.SFTConfig`): 500 clean
#: steps, then 500 with the wrong facts written with probability 0.8. Measured (calibration run #12, shared
#: 2-core CPU): greedy 0.554, pass@1 0.477, pass@8 0.892 on 500 held-out problems; 186-399 s.
CHAIN_SFT = dict(steps=1000, clean_steps=500, lr=2e-3, batch_size=64, warmup_steps=100, wrong_fraction=0.8,
                 eval_n=500, threads=1)


def chain_sft_config(preset: str = "tiny", seed: int = 0, **changes) -> SFTConfig:
    """The :class:`~rlcourse.train.sft.SFTConfig` of :data:`CHAIN_SFT` with ``changes`` (e.g. fewer steps in tests)."""
    return SFTConfig(**{**CHAIN_SFT, **changes, "preset": preset, "seed": seed})


def chain_sft_start(preset: str = "tiny", seed: int = 0, device=None, *, progress: bool = True,
                    cfg: SFTConfig | None = None, task=None):
    """The chain task's SFT start ``(model, tokenizer)`` (:data:`CHAIN_SFT` on :data:`CHAIN_TASK`): trained once,
    cached by :func:`sft_start` (the one cache; the key covers the task's class and fields), then loaded.
    Its figures: :func:`sft_start_info` with the same ``cfg`` and ``task``."""
    cfg = cfg or chain_sft_config(preset, seed)
    return sft_start(preset, seed, device, progress=progress, cfg=cfg, task=task or CHAIN_TASK)


@dataclasses.dataclass(frozen=True)
class ChainStart:
    """The fields of an experiment config that choose its chain-task SFT start (:data:`CHAIN_SFT` with these step
    counts), validated by :meth:`check_start`; :meth:`sft_config` and :meth:`start` build and load it. The experiments
    on the chain task (``reinforce_baselines``, ``grpo_variants``) inherit it; their ``quick()`` configs use
    :data:`QUICK_START` (a 30-step start: seconds)."""

    preset: str = "tiny"
    sft_seed: int = 0
    sft_steps: int = CHAIN_SFT["steps"]
    sft_clean_steps: int = CHAIN_SFT["clean_steps"]
    sft_warmup_steps: int = CHAIN_SFT["warmup_steps"]

    def check_start(self) -> None:
        integer("sft_steps", self.sft_steps)
        for name in ("sft_seed", "sft_clean_steps", "sft_warmup_steps"):
            integer(name, getattr(self, name), 0)

    def sft_config(self) -> SFTConfig:
        """The start's config: :data:`CHAIN_SFT` with this config's step counts (held-out problems: at most the
        experiment's ``eval_n``)."""
        eval_n = min(CHAIN_SFT["eval_n"], getattr(self, "eval_n", CHAIN_SFT["eval_n"]))
        return chain_sft_config(self.preset, self.sft_seed, steps=self.sft_steps, clean_steps=self.sft_clean_steps,
                                warmup_steps=self.sft_warmup_steps, eval_n=eval_n)

    def start(self):
        """``(model, tokenizer)``: the start, trained once and cached (:func:`chain_sft_start`)."""
        return chain_sft_start(self.preset, self.sft_seed, progress=False, cfg=self.sft_config())


#: The start of the chain-task experiments' ``quick()`` configs (tests, CI).
QUICK_START = dict(sft_steps=30, sft_clean_steps=15, sft_warmup_steps=3)


# -- the reward models of notebooks 07 and 08 ----------------------------------------------------

#: The reward model of notebooks 07 and 08: a Bradley–Terry model on oracle pairs from the SFT start
#: (fields of :class:`rlcourse.train.reward_model.RewardModelConfig`). Every field that shapes the result is
#: pinned here, so that the experiments of notebooks 07 and 08 do not change when the trainer's defaults do:
#: 6000 training problems (about 8500 pairs), two identity-initialised extra layers and the GRM
#: language-model regulariser (``sft_coef``), 400 steps. Measured on an idle 2-core CPU: 72 s of
#: training (88 s with the pair sampling), held-out pair accuracy 0.932. Half the steps on 1500
#: problems reached 0.76, 400 steps on 3000 problems 0.87: data, more than steps, is what it lacks.
RM_CONFIG = dict(n_prompts=6000, steps=400, lr=1e-3, batch_size=128, eval_prompts=200, eval_every=25,
                 sft_coef=1.0, extra_layers=2)

#: The *textbook* reward model (scalar head only, no regulariser) on fewer pairs and steps: the changes
#: to :data:`RM_CONFIG`. It fits its training pairs and barely generalises; notebook 07 compares it with
#: the one above, and notebook 08 optimises against it to show reward hacking.
TEXTBOOK_RM = dict(n_prompts=400, steps=200, sft_coef=0.0, extra_layers=0)


def rm_config(preset: str = "tiny", seed: int = 0, **changes) -> RewardModelConfig:
    """The :class:`~rlcourse.train.reward_model.RewardModelConfig` of :data:`RM_CONFIG`, with ``changes`` applied
    (e.g. ``**TEXTBOOK_RM``); pass it as ``cfg`` to :func:`reward_model_start`."""
    return RewardModelConfig(**{**RM_CONFIG, **changes, "preset": preset, "seed": seed})


def reward_model_start_dir(preset: str = "tiny", seed: int = 0, cfg: RewardModelConfig | None = None) -> Path:
    """The cache directory of :func:`reward_model_start` (it may not exist yet).

    Keyed by a hash of the reward model's configuration, the task and the SFT start it is trained
    from, so that a change to any of them trains a new one.
    """
    cfg = cfg or rm_config(preset, seed)
    h = recipe_hash(cfg, {"task": dataclasses.asdict(default_task()), "sft": sft_start_dir(cfg.preset, cfg.seed).name})
    return cache_dir() / f"rm-{cfg.preset}-seed{cfg.seed}-{h}"


def reward_model_start(preset: str = "tiny", seed: int = 0, device=None, *, cfg: RewardModelConfig | None = None,
                       progress: bool = True):
    """The course's Bradley–Terry reward model: trained once from the SFT start, cached, then loaded.

    Returns:
        ``(reward_model, info)``: a fresh :class:`~rlcourse.lm.RewardModel` (in eval mode) and
        ``info`` with ``before`` / ``after`` (held-out pair accuracy, overall and per kind),
        ``seconds`` (training), ``extra`` (pair counts, score normalisation, pair sampling time),
        ``history`` (one row per step) and ``pairs`` (``{"train": [...], "held_out": [...]}``).
    """
    cfg = cfg or rm_config(preset, seed)
    final = reward_model_start_dir(cfg.preset, cfg.seed, cfg)

    def build(work: Path) -> None:
        model, tok = sft_start(cfg.preset, cfg.seed, device, progress=progress)
        res = train_reward_model(dataclasses.replace(cfg, out=str(work)), model, tok, progress=progress)
        (work / "result.json").write_text(json.dumps({"before": res.before, "after": res.after,
                                                      "seconds": res.seconds, "extra": res.extra}, indent=2))
        (work / "checkpoint.pt").unlink(missing_ok=True)  # the final model is enough for a cache

    build_once(final, build, lambda d: (d / "final" / "head.safetensors").exists() and (d / "result.json").exists(),
               _announce("rm", "reward model", cfg.preset, cfg.seed, final))
    rm = RewardModel.load(final / "final", device).eval()
    info = json.loads((final / "result.json").read_text())
    info["history"] = [json.loads(line) for line in (final / "history.jsonl").read_text().splitlines() if line]
    info["pairs"] = json.loads((final / "pairs.json").read_text())
    return rm, info


__all__ = ["cache_dir", "build_once", "recipe_hash", "RECIPE_VERSION", "RUN_ONLY_FIELDS", "config_hash", "task_key",
           "sft_start", "sft_start_dir", "sft_start_info", "CHAIN_TASK", "CHAIN_SFT", "chain_sft_config",
           "chain_sft_start", "RM_CONFIG", "TEXTBOOK_RM", "rm_config",
           "reward_model_start_dir", "reward_model_start"]
