"""The trainers by name, for the command line and the benchmarks.

``run(name, preset=..., seed=..., steps=..., out=..., **options)`` builds the algorithm's
config (its defaults are the course's recipe), checks the run directory (a different config
there is refused before anything is trained), starts from the cached SFT policy
(:func:`rlcourse.experiments.cache.sft_start`) where the algorithm needs one, trains, and
returns the :class:`~rlcourse.train.common.TrainResult`.

``model_dir=DIR`` (``rlcourse train ALGO --model DIR``) starts from a local Hugging Face causal
LM instead, with its own tokenizer, prompted through its chat template unless
``chat_template=False`` (:func:`rlcourse.lm.load_model`); the directory is checked before
anything is written, and recorded in the run's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import importlib

# name -> (module, config class, train function, headline metric in before/after)
TRAINERS = {
    "sft": ("rlcourse.train.sft", "SFTConfig", "train_sft", "accuracy"),
    "rm": ("rlcourse.train.reward_model", "RewardModelConfig", "train_reward_model", "pair_accuracy"),
    "reinforce": ("rlcourse.train.reinforce", "ReinforceConfig", "train_reinforce", "accuracy"),
    "ppo": ("rlcourse.train.ppo", "PPOConfig", "train_ppo", "accuracy"),
    "grpo": ("rlcourse.train.grpo", "GRPOConfig", "train_grpo", "accuracy"),
    "dpo": ("rlcourse.train.dpo", "DPOConfig", "train_dpo", "accuracy"),
}


def config_class(name: str):
    if name not in TRAINERS:
        raise ValueError(f"algorithm must be one of {list(TRAINERS)}, got {name!r}")
    module, cls, _, _ = TRAINERS[name]
    return getattr(importlib.import_module(module), cls)


def make_config(name: str, **overrides):
    """The algorithm's config with ``overrides`` (``None`` values are ignored)."""
    cls = config_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in fields)
    if unknown:
        raise ValueError(f"{name} has no option(s) {unknown}; options: {sorted(fields)}")
    return cls(**{k: v for k, v in overrides.items() if v is not None})


def start(name: str, cfg, *, progress: bool = True):
    """``(model, tokenizer)`` to train: ``cfg.model_dir``'s model, else the course's cached SFT start."""
    from rlcourse.experiments.cache import sft_start
    from rlcourse.lm import load_model

    if cfg.model_dir is None:
        return sft_start(cfg.preset, cfg.seed, cfg.device, progress=progress)
    model, tokenizer = load_model(cfg.model_dir, cfg.device, chat_template=cfg.chat_template)
    if name == "rm" and cfg.sft_coef > 0 and not getattr(model.config, "tie_word_embeddings", False):
        raise ValueError(f"model_dir={cfg.model_dir!r} has untied input/output embeddings, but the reward model's "
                         f"auxiliary language-modelling loss (sft_coef={cfg.sft_coef}) reads its logits through "
                         "the tied ones; train it with sft_coef=0 (registry.run('rm', sft_coef=0.0, ...))")
    return model, tokenizer


def run(name: str, *, progress: bool = True, **overrides):
    """Train algorithm ``name`` with its default recipe and ``overrides``; returns a TrainResult."""
    from rlcourse.lm.model import check_model_dir
    from rlcourse.train.common import RunDir

    cfg = make_config(name, **overrides)
    if cfg.model_dir is not None:
        check_model_dir(cfg.model_dir)  # before config.json is written
    RunDir(cfg.out).check_config(name, cfg)  # before the start is loaded (or trained)
    module, _, fn, _ = TRAINERS[name]
    train = getattr(importlib.import_module(module), fn)
    if name == "sft":  # trains from scratch, or from cfg.model_dir (loaded by train_sft)
        return train(cfg, progress=progress)
    model, tokenizer = start(name, cfg, progress=progress)
    return train(cfg, model, tokenizer, progress=progress)


def headline(name: str) -> str:
    """The key of the headline metric in ``before`` / ``after`` (held-out accuracy, or pair accuracy)."""
    return TRAINERS[name][3]
