r"""``reinforce_baselines`` (notebook 04): REINFORCE's baselines, a reward offset, and SGD against AdamW.

Every arm trains a fresh copy of the same cached SFT start of the chain task
(:func:`rlcourse.experiments.cache.chain_sft_start` on :data:`~rlcourse.experiments.cache.CHAIN_TASK`:
multi-term sums written as running sums; greedy accuracy about 0.55 at the start) with
:func:`rlcourse.train.reinforce.train_reinforce`, for ``budget.steps`` steps of ``budget.prompts_per_step`` x
``budget.group_size`` samples. The seed is REINFORCE's (the problems of every step and the sampling): for one
seed every arm sees the same problems at every step. No gradient clipping in any arm (``grad_clip=None``): clipping
would rescale every step to the same length and hide what the arms differ in.

The arms (:data:`ARMS`; :data:`ARM_LABELS` names them in figures and tables):

====================  ==========================================================================
``none``              no baseline, :math:`A_i = R_i`; AdamW
``batch_mean``        :math:`A_i = R_i - \bar R` over the whole batch (every prompt's samples); AdamW
``group_mean``        :math:`A_i = R_i - \bar R_{g(i)}`, the mean of the prompt's own group; AdamW
``rloo``              leave-one-out, :math:`A_i = R_i - \frac{1}{G-1}\sum_{j\ne i} R_j`; AdamW
``none_offset``       no baseline on :math:`R_i + c` (``offset``, default +1): the same expected gradient
                      (EGLP), more variance; AdamW
``rloo_offset``       RLOO on :math:`R_i + c`: the offset cancels in every advantage, so the run is
                      ``rloo``'s up to float rounding; AdamW
``sgd_group_mean``    group mean with plain SGD (``sgd_lr``)
``sgd_rloo``          RLOO with plain SGD: its advantages are :math:`\frac{G}{G-1}` times the group mean's on
                      every group, so its step is :math:`\frac{G}{G-1}` times as long (twice at the default
                      :math:`G = 2`); with AdamW (``group_mean`` vs ``rloo``) the per-parameter normalisation
                      removes the constant factor: nearly the same trajectory
====================  ==========================================================================

Every arm samples ``prompts_per_step`` x ``group_size`` completions per step.

Rows (one per evaluation: the start, then every ``evaluation.every`` steps)::

    {"arm", "seed", "step", "accuracy", "reward", "grad_norm", "update_norm", "advantage_abs",
     "pass_at_1", "pass_at_8"}

``accuracy``: greedy accuracy (reward exactly 1) on ``evaluation.prompts`` held-out problems
(:func:`rlcourse.lm.held_out_accuracy`). Means over the training steps since the previous
evaluation (None at the start): ``reward``, the task's mean sampled reward (without the offset);
``grad_norm``, the norm of the REINFORCE gradient :math:`\lVert\hat g\rVert` (for arms with the same expected
gradient, a larger mean :math:`\lVert\hat g\rVert^2 = \lVert\nabla J\rVert^2 + \operatorname{tr}\operatorname{Cov}\hat g`
is more variance); ``update_norm``, the length of the parameter change of one step,
:math:`\lVert\theta_{t+1} - \theta_t\rVert` (what the optimizer made of the gradient); ``advantage_abs``, the
mean :math:`|A_i|`. ``pass_at_1`` and ``pass_at_8`` (8 samples per held-out problem at temperature 1,
:func:`rlcourse.lm.evaluate_policy`): at the start and at the last step only (None elsewhere).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from rlcourse._validate import integer, number
from rlcourse.experiments.budget import Budget, Evaluation, check_budget
from rlcourse.experiments.cache import CHAIN_TASK, QUICK_START, ChainStart
from rlcourse.experiments.runner import check_arms, evaluated_training, experiment, over_arms, window_mean
from rlcourse.lm import held_out_accuracy
from rlcourse.train.reinforce import ReinforceConfig, train_reinforce

__all__ = ["ReinforceBaselinesConfig", "ARMS", "ARM_LABELS", "arm_config", "run_arm", "run_seed"]

#: arm -> (baseline of :func:`~rlcourse.train.reinforce.reinforce_advantages`, reward offset on?, optimizer).
ARMS = {
    "none": ("none", False, "adamw"),
    "batch_mean": ("batch_mean", False, "adamw"),
    "group_mean": ("mean", False, "adamw"),
    "rloo": ("rloo", False, "adamw"),
    "none_offset": ("none", True, "adamw"),
    "rloo_offset": ("rloo", True, "adamw"),
    "sgd_group_mean": ("mean", False, "sgd"),
    "sgd_rloo": ("rloo", False, "sgd"),
}

#: How figures and tables name the arms.
ARM_LABELS = {
    "none": "no baseline", "batch_mean": "batch-mean baseline", "group_mean": "group-mean baseline",
    "rloo": "RLOO", "none_offset": "no baseline, reward + c", "rloo_offset": "RLOO, reward + c",
    "sgd_group_mean": "SGD, group mean", "sgd_rloo": "SGD, RLOO",
}

KEYS = ("arm", "seed", "step", "accuracy", "reward", "grad_norm", "update_norm", "advantage_abs", "pass_at_1",
        "pass_at_8")


@dataclass(frozen=True)
class ReinforceBaselinesConfig(ChainStart):
    """The ``reinforce_baselines`` experiment (module doc).

    Attributes:
        arms: names from :data:`ARMS`, distinct.
        budget: REINFORCE steps of every arm, the AdamW learning rate, and the batch (``group_size`` >= 2:
            RLOO needs it).
        sgd_lr: plain SGD's learning rate (the ``sgd_*`` arms).
        offset: the constant ``c`` added to the rewards of the ``*_offset`` arms (finite, not 0).
        evaluation: greedy evaluation every ``evaluation.every`` steps, on ``evaluation.prompts`` held-out problems.
        preset, sft_seed, sft_steps, sft_clean_steps, sft_warmup_steps: the chain SFT start
            (:data:`~rlcourse.experiments.cache.CHAIN_SFT` with these step counts).
        threads: torch threads while training.
    """

    arms: tuple = tuple(ARMS)
    budget: Budget = Budget(steps=150, lr=5e-5, prompts_per_step=16, group_size=2)
    sgd_lr: float = 6e-4
    offset: float = 1.0
    evaluation: Evaluation = Evaluation(every=15, prompts=200)
    threads: int = 1

    def __post_init__(self):
        check_arms(self, "arms", ARMS)
        check_budget(self, sampled=False, min_group_size=2)
        integer("threads", self.threads)
        self.check_start()
        number("sgd_lr", self.sgd_lr)
        number("offset", self.offset, minimum=None)
        if self.offset == 0:
            raise ValueError("offset must not be 0 (the *_offset arms would be copies of the others)")

    def quick(self) -> "ReinforceBaselinesConfig":
        """Seconds-long (tests, CI): a 30-step SFT start, 4 steps of 4 x 2 samples, 16 held-out problems."""
        return replace(self, budget=replace(self.budget, steps=4, prompts_per_step=4, group_size=2),
                       evaluation=Evaluation(every=2, prompts=16), **QUICK_START)


def arm_config(cfg: ReinforceBaselinesConfig, arm: str, seed: int) -> ReinforceConfig:
    """The :class:`~rlcourse.train.reinforce.ReinforceConfig` of ``arm`` (module table) for ``seed``."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {list(ARMS)}, got {arm!r}")
    baseline, offset, optimizer = ARMS[arm]
    return ReinforceConfig(baseline=baseline, reward_offset=cfg.offset if offset else 0.0, optimizer=optimizer,
                           grad_clip=None, preset=cfg.preset, seed=seed, eval_n=cfg.evaluation.prompts,
                           threads=cfg.threads,
                           **{**cfg.budget.trainer_fields(), "lr": cfg.sgd_lr if optimizer == "sgd" else cfg.budget.lr})


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def run_arm(cfg: ReinforceBaselinesConfig, arm: str, seed: int, model, tokenizer, tick=None) -> list[dict]:
    """One arm: ``train_reinforce`` of :func:`arm_config` from a copy of ``model``; its evaluation rows."""
    task = CHAIN_TASK
    policy = copy.deepcopy(model)
    none = {k: None for k in KEYS[4:]}
    last = {"theta": _flat(policy)}

    def record(row):
        theta = _flat(policy)  # the callback runs after the optimizer step
        update_norm = float((theta - last["theta"]).norm())
        last["theta"] = theta
        return {**row, "update_norm": update_norm}

    def evaluate(step, window):
        row = {"arm": arm, "seed": seed, "step": step, **none,
               "accuracy": held_out_accuracy(policy, tokenizer, task, cfg.evaluation.prompts)}
        if step:
            row.update(reward=window_mean(window, "reward_mean"), grad_norm=window_mean(window, "grad_norm"),
                       update_norm=window_mean(window, "update_norm"),
                       advantage_abs=window_mean(window, "advantage_abs_mean"))
        return row

    done = {}

    def train(callback):
        done["result"] = train_reinforce(arm_config(cfg, arm, seed), policy, tokenizer, task=task, progress=False,
                                         callback=callback)

    rows = evaluated_training(train, evaluate, cfg.evaluation.every, tick, record)
    res = done["result"]
    rows[0]["pass_at_1"], rows[0]["pass_at_8"] = res.before["pass@1"], res.before["pass@8"]
    rows[-1]["pass_at_1"], rows[-1]["pass_at_8"] = res.after["pass@1"], res.after["pass@8"]
    return rows


@experiment("reinforce_baselines", notebook="04", config=ReinforceBaselinesConfig)
def run_seed(cfg: ReinforceBaselinesConfig, seed: int, progress) -> list[dict]:
    """REINFORCE on the chain task: no baseline / batch mean / group mean / RLOO, a reward offset c=+1 (none, RLOO),
    and SGD vs AdamW (group mean vs RLOO): greedy accuracy, reward, gradient and update norms"""
    model, tokenizer = cfg.start()
    return over_arms(cfg.arms, cfg.budget.steps * len(cfg.arms), progress,
                     lambda arm, tick: run_arm(cfg, arm, seed, model, tokenizer, tick))
