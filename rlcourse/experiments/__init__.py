"""Every experiment of the notebooks: a configuration in, plain data out (histories, evaluations,
tables; no models), memoised per process (:mod:`rlcourse.experiments.memo`).

=========================  ===================================================================
module                     what
=========================  ===================================================================
``cache``                  the one cache of trained starts: the SFT start and the reward models
``registry``               the trainers by name, with their recipes (``rlcourse train``)
``toy``                    notebook 02 (exact gradient ascent and REINFORCE on the toy MDP)
``lm_rl``                  notebook 04 (REINFORCE baselines, gradient noise, pass@k) and 09 (GRPO variants)
``rlhf``                   notebooks 07 (reward models and judges), 08 (reward hacking), 10 (DPO vs PPO vs GRPO)
``memo``, ``settings``     the memoisation, and the preset (``$RLCOURSE_PRESET``)
=========================  ===================================================================

An LM experiment is a function of a frozen config dataclass; each module's ``run(cfg)`` runs any of
its experiments, e.g. ``lm_rl.run(lm_rl.GRPOVariantsConfig(steps=10))``. The figures of
:mod:`rlcourse.plots` draw these results: a figure builder is ``plot(experiment(cfg))``.

The names below are imported when first used, so that ``rlcourse.experiments.toy`` does not load
the trainers and transformers.
"""

from __future__ import annotations

import importlib

_NAMES = {"cache_dir": "cache", "sft_start": "cache", "sft_start_dir": "cache", "sft_start_info": "cache",
          "reward_model_start": "cache", "rm_config": "cache", "RM_CONFIG": "cache", "TEXTBOOK_RM": "cache",
          "clear_memo": "memo", "preset": "settings"}

__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"rlcourse.experiments.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'rlcourse.experiments' has no attribute {name!r}")
