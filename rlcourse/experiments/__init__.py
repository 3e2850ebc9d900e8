"""Every experiment of the notebooks: a configuration in, plain data out (histories, evaluations,
tables; no models), memoised per process (:mod:`rlcourse.experiments.memo`).

=========================  ===================================================================
module                     what
=========================  ===================================================================
``cache``                  the one cache of trained starts: the SFT start and the reward models
``registry``               the trainers by name, with their recipes (``rlcourse train``)
``toy``                    notebook 02: exact gradient ascent and REINFORCE on the toy MDP
``lm_rl``                  notebook 04: the REINFORCE gradient's noise at the start, pass@k of a policy
``reinforce_baselines``    notebook 04: REINFORCE baselines, a reward offset, SGD vs AdamW on the chain task
``rlhf``                   notebook 07: reward models and judges (one seed)
``memo``, ``settings``     the memoisation, and the preset (``$RLCOURSE_PRESET``)
``runner``                 experiments by name over seeds, saved and resumed per seed (``rlcourse experiment``);
                           one evaluated-training loop; a config rebuilt from its record
``budget``                 what the LM experiments' configs share: the training budget and the evaluation
``summary``                means and Student-t intervals over seeds (the runner's ``summary``, the plots' bands)
``ppo_toy``                notebook 06: K epochs on one batch, vanilla PG vs PPO-clip vs PPO-penalty (toy MDP)
``critic_gae``             notebook 05: a critic on λ-returns and the best GAE λ as it learns (toy MDP)
``critic_gae_lm``          notebook 05: PPO's critic on the chain task's fixed SFT policy, GAE(λ) vs a Monte Carlo A
``grpo_chain``             notebook 09 (``grpo_variants``): GRPO, Dr. GRPO, DAPO, GSPO on the chain task
``overoptimization``       notebook 08: PPO against a weak and a strong reward model at fixed β, and best-of-N
``kl_placement``           notebook 08: where the KL term goes (reward, per-token loss k2/k3, sequence k2)
``method_comparison``      notebook 10: DPO offline / online vs PPO vs GRPO on one sample budget, and where DPO
                           moves the probability (held-out pairs' log-probs, exact mass on nearby answers)
=========================  ===================================================================

An LM experiment is a function of a frozen config dataclass; each module's ``run(cfg)`` runs any of
its experiments, e.g. ``lm_rl.run(lm_rl.GradientNoiseConfig(n_batches=4))``. The figures of
:mod:`rlcourse.plots` draw these results: a figure builder is ``plot(experiment(cfg))``.
"""

from rlcourse.experiments.memo import clear_memo
from rlcourse.experiments.settings import preset


def __getattr__(name):
    # The cache imports the LM (transformers: seconds); import it when one of its names is used, so that
    # `rlcourse experiment` and the toy-MDP experiments do not pay for it (PEP 562).
    if name in ("RM_CONFIG", "TEXTBOOK_RM", "cache_dir", "reward_model_start", "rm_config", "sft_start",
                "sft_start_dir", "sft_start_info"):
        from rlcourse.experiments import cache

        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["cache_dir", "sft_start", "sft_start_dir", "sft_start_info", "reward_model_start", "rm_config", "RM_CONFIG",
           "TEXTBOOK_RM", "clear_memo", "preset"]
