r"""``kl_placement`` (notebook 08): where the KL-to-reference term goes, and the KL(π‖π_ref) each placement reaches.

Same start, same reward, same β, same trainer (:func:`rlcourse.train.grpo.train_grpo`, Dr. GRPO: centred group
advantages and the constant normaliser, so that β weighs each sequence's KL term exactly as it weighs its
advantage term in every arm); only the place of the KL term changes
(:attr:`rlcourse.train.grpo.GRPOConfig.kl_placement`):

=================  ===================================================================================
arm                KL term
=================  ===================================================================================
``reward_k1``      :math:`\beta \sum_t k_{1,t}` subtracted from the reward before the advantage (PPO-RLHF's
                   shaped reward, summed; :func:`~rlcourse.train.grpo.kl_penalised_rewards`)
``loss_k3``        :math:`\beta\, k_{3,t}` per token in the loss (GRPO's choice)
``loss_k2``        :math:`\beta\, k_{2,t}` per token in the loss
``seq_k2``         :math:`\beta \cdot \tfrac12 (\sum_t \log\pi_\theta/\pi_{\text{ref}})^2` once per sequence in the
                   loss (:func:`~rlcourse.train.grpo.sequence_kl_per_token`)
``loss_k1``        :math:`\beta\, k_{1,t}` per token in the loss: the negative control, whose expected gradient is
                   0 (the derivation ``kl_estimators``), so it should behave like ``no_kl``
``no_kl``          β = 0: how far the reward alone moves the policy
=================  ===================================================================================

What the derivation ``kl_estimators`` (``rlcourse verify``) establishes about their expected gradients, with the
samples not differentiated through: sequence-level k2 has the gradient of the sequence
:math:`\mathrm{KL}(P_\theta \| P_{\text{ref}})`; per-token k2 has the gradient of :math:`\sum_t \mathrm{KL}_t`
with the prefixes held fixed (not the sequence KL's: it ignores how the policy moves the prefixes it visits);
per-token k3 has the gradient of the *reverse* :math:`\mathrm{KL}(\pi_{\text{ref}} \| \pi)` at the visited
prefixes; per-token k1 in the loss has no gradient in expectation. KL in the reward (k1) gives, through the
policy gradient, the gradient of the KL-regularised objective itself (the derivation ``rlhf_gradient``).

The reward is the task's rule reward on the arithmetic task of notebooks 04-08 (1 right, 0 wrong, below 0
malformed), from the cached SFT start (:func:`rlcourse.experiments.cache.sft_start`): cheap, and the same one
every arm maximises.

Rows (one per evaluation: the start, then every ``evaluation.every`` steps)::

    {"arm", "seed", "step", "kl", "sqrt_kl", "gold", "accuracy"}

``kl``: the mean over ``evaluation.prompts`` x ``evaluation.samples`` sampled held-out responses of the exact per-token KL
summed along each (:func:`rlcourse.experiments.overoptimization.sequence_kl`: unbiased for the sequence KL);
``gold`` / ``accuracy``: the mean rule reward of those responses, and the share that are right.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

from rlcourse._validate import integer, number
from rlcourse.experiments.budget import Budget, Evaluation, check_budget
from rlcourse.experiments.cache import sft_start
from rlcourse.experiments.overoptimization import policy_eval
from rlcourse.experiments.runner import check_arms, evaluated_training, experiment, over_arms
from rlcourse.lm import default_task
from rlcourse.train.grpo import GRPOConfig, train_grpo

__all__ = ["KLPlacementConfig", "ARMS", "run_seed"]

#: arm -> the fields of :class:`~rlcourse.train.grpo.GRPOConfig` that make it (β comes from the config).
ARMS = {
    "reward_k1": dict(kl_placement="reward", kl_estimator="k1"),
    "loss_k3": dict(kl_placement="loss", kl_estimator="k3"),
    "loss_k2": dict(kl_placement="loss", kl_estimator="k2"),
    "seq_k2": dict(kl_placement="sequence_loss", kl_estimator="k2"),
    "loss_k1": dict(kl_placement="loss", kl_estimator="k1"),
    "no_kl": dict(beta=0.0),
}


@dataclass(frozen=True)
class KLPlacementConfig:
    """β, the GRPO budget of every arm and the evaluation (see the module docstring)."""

    arms: tuple = tuple(ARMS)
    beta: float = 0.5
    preset: str = "tiny"
    budget: Budget = Budget(steps=50, lr=2e-4, prompts_per_step=8, group_size=8)
    evaluation: Evaluation = Evaluation(every=5, prompts=48, samples=4)
    threads: int = 1

    def __post_init__(self):
        check_arms(self, "arms", ARMS)
        number("beta", self.beta)
        check_budget(self, sampled=True, min_group_size=2)
        integer("threads", self.threads)

    def quick(self) -> "KLPlacementConfig":
        """Seconds-long (tests, CI): every arm, 4 steps of 2 x 4 samples, 8 x 2 evaluation samples."""
        return replace(self, budget=replace(self.budget, steps=4, prompts_per_step=2, group_size=4),
                       evaluation=Evaluation(every=2, prompts=8, samples=2))


@experiment("kl_placement", notebook="08", config=KLPlacementConfig)
def run_seed(cfg: KLPlacementConfig, seed: int, progress) -> list[dict]:
    """KL in the reward (k1) vs k3 / k2 per token in the loss vs sequence-level k2 (and k1 in the loss, beta = 0), same
    beta, same start and rule reward (Dr. GRPO): exact KL(pi||ref) and reward"""
    task = default_task()
    start, tok = sft_start(cfg.preset, 0, progress=False)
    start.eval()
    problems = task.held_out(cfg.evaluation.prompts, seed=3000 + seed)

    def run_arm(arm, tick):
        policy = copy.deepcopy(start)

        def evaluate(step, window):
            r = policy_eval(policy, start, tok, None, task, problems, cfg.evaluation.samples,
                            seed=10_000 * seed + step)
            return {"arm": arm, "seed": seed, "step": step, "kl": r["kl"], "sqrt_kl": r["sqrt_kl"],
                    "gold": r["gold"], "accuracy": r["accuracy"]}

        fields = {"beta": float(cfg.beta), **ARMS[arm]}
        gcfg = GRPOConfig(variant="dr_grpo", preset=cfg.preset, seed=seed, eval_n=8, threads=cfg.threads,
                          **cfg.budget.trainer_fields(), **fields)
        return evaluated_training(lambda cb: train_grpo(gcfg, policy, tok, task=task, progress=False, callback=cb),
                                  evaluate, cfg.evaluation.every, tick)

    return over_arms(cfg.arms, len(cfg.arms) * cfg.budget.steps, progress, run_arm)
