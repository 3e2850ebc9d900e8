r"""``method_comparison`` (notebook 10): DPO offline, DPO online, PPO and GRPO on one budget of samples.

Every arm trains a fresh copy of the same cached SFT start (:func:`rlcourse.experiments.cache.sft_start`,
the arithmetic task of notebooks 04–08: 2-digit ``+``/``-``, greedy accuracy about 0.26) with the
course's trainer, and every arm **draws the same number of samples** from a policy (``samples``):

* ``dpo_offline`` — :func:`rlcourse.train.dpo.train_dpo` on oracle pairs sampled once from the SFT
  start: ``samples / dpo.group_size`` training problems × ``dpo.group_size`` completions, every distinct
  pair labelled by the rule oracle (:func:`rlcourse.lm.pairs.oracle_pairs`), then ``dpo.steps`` updates;
* ``dpo_online`` — the same trainer with ``dpo.rounds`` rounds (iterative DPO): before each of the
  ``dpo.rounds`` equal parts of the ``dpo.steps`` updates, fresh pairs are sampled from the *current*
  policy, ``samples / dpo.rounds`` completions each time; the reference stays the SFT start;
* ``ppo`` — :func:`rlcourse.train.ppo.train_ppo` with the rule reward, ``ppo.prompts_per_step ×
  ppo.group_size`` samples per step (its other fields: the trainer's defaults: critic, adaptive KL,
  2 epochs × 2 minibatches);
* ``grpo`` — :func:`rlcourse.train.grpo.train_grpo` with ``grpo.prompts_per_step × grpo.group_size``
  samples per step, one update per batch, no reference (β = 0).

Rows: one at the start and ``evals`` more, evenly spaced over each arm's updates::

    {"arm", "seed", "step", "samples", "updates", "seconds", "accuracy", "logp_chosen", "logp_rejected",
     "p_correct", "p_last_digit", "p_other_digit", "p_elsewhere"}

* ``step``: the trainer's steps done (DPO: updates; PPO and GRPO: sampled batches);
* ``samples``: completions drawn from a policy so far (DPO offline: all of them before its first update);
  ``updates``: optimizer steps of the policy so far (PPO: ``ppo_epochs × minibatches`` per batch);
  ``seconds``: wall seconds inside the trainer so far, sampling included, this experiment's own
  evaluations excluded (one core; they depend on the machine and its load);
* ``accuracy``: greedy accuracy on ``eval_n`` held-out problems (:func:`rlcourse.lm.held_out_accuracy`);
* ``logp_chosen`` / ``logp_rejected``: mean sequence log-probability (``<eos>`` included) of the chosen and
  of the rejected responses of a **fixed** set of held-out pairs (:func:`probe`: sampled once from the SFT
  start on held-out problems, labelled by the same oracle, the same for every arm and seed);
* ``p_correct``, ``p_last_digit``, ``p_other_digit``, ``p_elsewhere``: where the policy's probability goes on
  the first ``mass_n`` held-out problems, computed exactly (:func:`neighbour_mass`): the correct answer, the
  answers that differ from it in the last digit only (where the oracle's rejected near misses lie), in one
  earlier digit only, and everything else.

The seed is the trainers' (problems, samples, pairs, minibatches); the start is the same for every seed.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import torch

from rlcourse._validate import integer, number
from rlcourse.experiments.budget import Batch, check_part
from rlcourse.experiments.cache import sft_start
from rlcourse.experiments.rlhf import completion_logprobs
from rlcourse.experiments.runner import check_arms, evaluated_training, experiment, over_arms
from rlcourse.lm import default_max_new_tokens, default_task, held_out_accuracy
from rlcourse.lm.pairs import oracle_pairs, pair_logprobs
from rlcourse.train.dpo import DPOConfig, train_dpo
from rlcourse.train.grpo import GRPOConfig, train_grpo
from rlcourse.train.ppo import PPOConfig, train_ppo

__all__ = ["ARMS", "MASSES", "DPOArms", "MethodComparisonConfig", "neighbours", "neighbour_mass", "probe", "measure",
           "arm_plan", "run_arm", "run_seed"]

#: The arms, in the order they run and are drawn.
ARMS = ("dpo_offline", "dpo_online", "ppo", "grpo")

#: Held-out problems of the trainers' own before/after evaluation, which this experiment does not use
#: (it evaluates the policy itself, at every evaluation point): kept tiny so that it costs nothing.
TRAINER_EVAL_N = 8
#: Sampling seed of the fixed held-out pairs (:func:`probe`): the same pairs for every arm and seed.
PROBE_SEED = 20241011


@dataclass(frozen=True)
class DPOArms:
    """The DPO arms' settings: β, the learning rate, ``steps`` updates of ``batch_size`` pairs, ``group_size``
    samples of each problem (every distinct pair labelled), and DPO online's ``rounds`` (``steps`` and the samples
    split evenly between them; DPO offline has one round)."""

    beta: float
    lr: float
    steps: int
    batch_size: int
    group_size: int
    rounds: int

    def __post_init__(self):
        number("beta", self.beta)
        number("lr", self.lr)
        for name in ("steps", "batch_size", "rounds"):
            integer(name, getattr(self, name))
        integer("group_size", self.group_size, 2)  # a pair
        if self.steps % self.rounds:
            raise ValueError(f"steps={self.steps} is not a multiple of rounds={self.rounds}")


@dataclass(frozen=True)
class MethodComparisonConfig:
    """The shared sample budget, each arm's batch shape, the evaluation, and the SFT start.

    Derived: DPO offline samples ``samples / dpo.group_size`` problems once; DPO online samples
    ``samples / (dpo.group_size * dpo.rounds)`` problems per round; PPO and GRPO take
    ``samples / (prompts_per_step * group_size)`` steps of their :class:`~rlcourse.experiments.budget.Batch`.
    Each count must divide exactly (a ``ValueError`` names the field otherwise), and each arm's steps must be a
    multiple of ``evals``.
    """

    arms: tuple = ARMS
    preset: str = "tiny"
    sft_seed: int = 0
    samples: int = 1536
    dpo: DPOArms = DPOArms(beta=0.5, lr=1e-4, steps=48, batch_size=64, group_size=8, rounds=6)
    ppo: Batch = Batch(prompts_per_step=32, group_size=2)
    grpo: Batch = Batch(prompts_per_step=8, group_size=8)
    evals: int = 12
    eval_n: int = 500
    mass_n: int = 100
    pairs_n: int = 200
    threads: int = 1

    def __post_init__(self):
        check_arms(self, "arms", ARMS)
        for name in ("samples", "evals", "eval_n", "mass_n", "pairs_n", "threads"):
            integer(name, getattr(self, name))
        check_part(self, "dpo", DPOArms)
        check_part(self, "ppo", Batch)
        check_part(self, "grpo", Batch)
        integer("grpo.group_size", self.grpo.group_size, 2)  # a group
        per = {"dpo.group_size": self.dpo.group_size,
               "dpo.group_size * dpo.rounds": self.dpo.group_size * self.dpo.rounds,
               "ppo.prompts_per_step * ppo.group_size": self.ppo.samples,
               "grpo.prompts_per_step * grpo.group_size": self.grpo.samples}
        for what, n in per.items():
            if self.samples % n:
                raise ValueError(f"samples={self.samples} is not a multiple of {what} = {n}: the arms would not "
                                 "draw the same number of samples")
        for arm in self.arms:
            steps = self.steps(arm)
            if steps % self.evals:
                raise ValueError(f"evals={self.evals} does not divide the {steps} steps of arm {arm!r}: the "
                                 "evaluations would not be evenly spaced")

    def steps(self, arm: str) -> int:
        """The trainer steps of ``arm`` (DPO: updates; PPO, GRPO: sampled batches)."""
        if arm.startswith("dpo"):
            return self.dpo.steps
        if arm == "ppo":
            return self.samples // self.ppo.samples
        if arm == "grpo":
            return self.samples // self.grpo.samples
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")

    def quick(self) -> "MethodComparisonConfig":
        """Seconds-long (tests, CI): 64 samples per arm, 2 evaluations, a few held-out problems."""
        return replace(self, samples=64, evals=2, eval_n=16, mass_n=8, pairs_n=16,
                       dpo=replace(self.dpo, steps=4, batch_size=16, rounds=2),
                       ppo=replace(self.ppo, prompts_per_step=16), grpo=replace(self.grpo, prompts_per_step=4))


# -- the measurements -------------------------------------------------------------------------------

def neighbours(answer) -> dict[str, list[str]]:
    """The well-formed wrong answers one character away from ``answer``: the same number of digits, exactly one
    digit changed, no leading zero. ``{"last": the last digit changed (9 answers), "other": one earlier digit
    changed (8 for the leading digit, 9 for each digit between)}``; for ``50``: ``{"last": ["51", ..., "59"],
    "other": ["10", "20", "30", "40", "60", "70", "80", "90"]}``."""
    a = str(answer).strip()
    if not a.isdigit() or a != str(int(a)):
        raise ValueError(f"answer must be a non-negative integer written without sign or leading zero, got {answer!r}")
    out = {"last": [], "other": []}
    for i, ch in enumerate(a):
        for d in "0123456789":
            if d != ch and not (i == 0 and d == "0" and len(a) > 1):
                out["last" if i == len(a) - 1 else "other"].append(a[:i] + d + a[i + 1:])
    return out


#: The answer-mass metrics of :func:`neighbour_mass`, which sum to 1 on every problem.
MASSES = ("p_correct", "p_last_digit", "p_other_digit", "p_elsewhere")


@torch.no_grad()
def neighbour_mass(model, tokenizer, problems) -> dict:
    r"""Where the policy's probability goes, exactly: the correct answer, the answers one digit away.

    For a problem :math:`x` with answer :math:`a`, each candidate completion ``c + <eos>`` is scored by its
    sequence probability :math:`\pi(c\,\langle\text{eos}\rangle \mid x) = \prod_t \pi(c_t \mid x, c_{<t})\,
    \pi(\langle\text{eos}\rangle \mid x, c)` (:func:`rlcourse.experiments.rlhf.completion_logprobs`):

    * ``p_correct`` :math:`= \pi(a\,\langle\text{eos}\rangle \mid x)`;
    * ``p_last_digit``: the sum over the 9 answers that differ from :math:`a` in the last digit only
      (:func:`neighbours`: where the rule oracle's rejected near misses, "answer + 1", mostly lie);
    * ``p_other_digit``: the sum over the answers that differ from :math:`a` in one earlier digit only
      (a wrong tens or hundreds digit: ``40`` or ``60`` for ``50``);
    * ``p_elsewhere`` :math:`= 1 -` the three above: every other response (two or more digits wrong, another
      length, malformed text). The candidates are distinct complete responses, so the four are >= 0 and sum to 1.

    Returns the means over ``problems``.
    """
    problems = list(problems)
    if not problems:
        raise ValueError("problems is empty")
    prompts, completions, spans = [], [], []
    for p in problems:
        near = neighbours(p.answer)
        cands = [p.answer] + near["last"] + near["other"]
        spans.append((len(completions), 1 + len(near["last"]), len(cands)))
        prompts += [p.prompt] * len(cands)
        completions += cands
    was_training = model.training
    model.eval()
    prob = torch.cat([completion_logprobs(model, tokenizer, prompts[s:s + 2048], completions[s:s + 2048])
                      for s in range(0, len(prompts), 2048)]).double().exp()
    model.train(was_training)
    sums = torch.tensor([[float(prob[s]), float(prob[s + 1:s + m].sum()), float(prob[s + m:s + n].sum())]
                         for s, m, n in spans], dtype=torch.float64)
    mean = sums.mean(0)
    return {"p_correct": float(mean[0]), "p_last_digit": float(mean[1]), "p_other_digit": float(mean[2]),
            "p_elsewhere": float(1.0 - sums.sum(-1).mean())}


def probe(cfg: MethodComparisonConfig, model, tokenizer, task=None) -> dict:
    """The fixed held-out measurement set of ``cfg``: ``{"pairs", "problems"}``.

    ``pairs``: oracle pairs from 8 samples of ``model`` (the SFT start) on each of the first ``pairs_n``
    held-out problems, at most one pair per problem (seeded by :data:`PROBE_SEED`: the same pairs for
    every arm and seed); ``problems``: the first ``mass_n`` held-out problems (:func:`neighbour_mass`).
    """
    task = task or default_task()
    pairs = oracle_pairs(model, tokenizer, task.held_out(cfg.pairs_n), group_size=8, temperature=1.0,
                         max_new_tokens=default_max_new_tokens(task), seed=PROBE_SEED, max_pairs_per_group=1, task=task)
    if not pairs:
        raise ValueError(f"the oracle labelled no held-out pair among pairs_n={cfg.pairs_n} problems")
    return {"pairs": pairs, "problems": task.held_out(cfg.mass_n)}


def measure(cfg: MethodComparisonConfig, model, tokenizer, task, fixed: dict) -> dict:
    """The metrics of one evaluation point (module doc): accuracy, the pairs' log-probs, the answer masses."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        lc, lr = pair_logprobs(model, tokenizer, fixed["pairs"], device)
    out = {"accuracy": held_out_accuracy(model, tokenizer, task, cfg.eval_n),
           "logp_chosen": float(lc.mean()), "logp_rejected": float(lr.mean()),
           **neighbour_mass(model, tokenizer, fixed["problems"])}
    model.train(was_training)
    return out


# -- the arms ---------------------------------------------------------------------------------------

def arm_plan(cfg: MethodComparisonConfig, arm: str, seed: int) -> dict:
    """``{"train", "config", "samples_after", "updates_after"}`` of ``arm``: the trainer, its config, and
    the samples drawn and the updates made after ``n`` trainer steps (functions of ``n``)."""
    common = dict(preset=cfg.preset, seed=seed, steps=cfg.steps(arm), eval_n=TRAINER_EVAL_N, threads=cfg.threads)
    if arm in ("dpo_offline", "dpo_online"):
        rounds = cfg.dpo.rounds if arm == "dpo_online" else 1
        per_round = cfg.samples // rounds
        dcfg = DPOConfig(beta=cfg.dpo.beta, lr=cfg.dpo.lr, batch_size=cfg.dpo.batch_size,
                         group_size=cfg.dpo.group_size, n_prompts=per_round // cfg.dpo.group_size, rounds=rounds,
                         **common)
        steps_per_round = cfg.dpo.steps // rounds
        return {"train": train_dpo, "config": dcfg,
                "samples_after": lambda n: 0 if n == 0 else per_round * ((n - 1) // steps_per_round + 1),
                "updates_after": lambda n: n}
    if arm == "ppo":
        pcfg = PPOConfig(reward="rule", **cfg.ppo.trainer_fields(), **common)
        per_step = cfg.ppo.samples
        return {"train": train_ppo, "config": pcfg, "samples_after": lambda n: per_step * n,
                "updates_after": lambda n: n * pcfg.ppo_epochs * pcfg.minibatches}
    if arm == "grpo":
        gcfg = GRPOConfig(variant="grpo", distinct_rows=True, **cfg.grpo.trainer_fields(), **common)
        per_step = cfg.grpo.samples
        return {"train": train_grpo, "config": gcfg, "samples_after": lambda n: per_step * n,
                "updates_after": lambda n: n * gcfg.num_iterations}
    raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")


def run_arm(cfg: MethodComparisonConfig, arm: str, seed: int, model, tokenizer, task, fixed: dict,
            tick=None) -> list[dict]:
    """One arm from a copy of ``model``: its trainer, with an evaluation at the start and every
    ``steps / evals`` steps (module doc); the seconds exclude the evaluations."""
    plan = arm_plan(cfg, arm, seed)
    policy = copy.deepcopy(model)
    every = cfg.steps(arm) // cfg.evals

    def row(n: int, seconds: float) -> dict:
        return {"arm": arm, "seed": seed, "step": n, "samples": plan["samples_after"](n),
                "updates": plan["updates_after"](n), "seconds": round(seconds, 3)}

    clock = {"start": time.perf_counter(), "evaluating": 0.0}

    def evaluate(n: int, window) -> dict:
        now = time.perf_counter()
        seconds = 0.0 if n == 0 else now - clock["start"] - clock["evaluating"]
        out = {**row(n, seconds), **measure(cfg, policy, tokenizer, task, fixed)}
        clock["evaluating"] += time.perf_counter() - now
        return out

    return evaluated_training(
        lambda cb: plan["train"](plan["config"], policy, tokenizer, task=task, progress=False, callback=cb),
        evaluate, every, tick)


@experiment("method_comparison", notebook="10", config=MethodComparisonConfig)
def run_seed(cfg: MethodComparisonConfig, seed: int, progress) -> list[dict]:
    """DPO offline vs DPO online (iterative) vs PPO vs GRPO from one SFT start, the same number of samples each: greedy
    accuracy against samples, updates and seconds; DPO's chosen / rejected log-probs and the mass on neighbouring
    answers"""
    task = default_task()
    model, tokenizer = sft_start(cfg.preset, cfg.sft_seed, progress=False)
    model.eval()
    fixed = probe(cfg, model, tokenizer, task)
    return over_arms(cfg.arms, sum(cfg.steps(a) for a in cfg.arms), progress,
                     lambda arm, tick: run_arm(cfg, arm, seed, model, tokenizer, task, fixed, tick))
