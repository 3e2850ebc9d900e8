r"""``overoptimization`` (notebook 08): the true reward against √KL when a policy optimises a learned reward.

Gao, Schulman & Hilton (2023), "Scaling Laws for Reward Model Overoptimization", plot the *gold*
(true) reward of a policy optimised against a *proxy* (learned) reward model against
:math:`d = \sqrt{\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})}`: the proxy score keeps rising, the gold
reward rises, peaks and turns down, and the better the reward model the later it turns. This
experiment draws that figure on the course's arithmetic task, where the gold reward is the
rule-based one (math-verify on the answer).

Arms, each from the same cached SFT start (:func:`rlcourse.experiments.cache.sft_start`) and against
one of the two cached Bradley–Terry reward models of notebook 07
(:func:`rlcourse.experiments.cache.reward_model_start`):

* ``"<rm>_beta<β>"``: PPO (:func:`rlcourse.train.ppo.train_ppo`, ``reward="model"``) with the KL
  penalty in the reward at a *fixed* β (``adaptive_kl=False``), for each β in ``betas``;
* ``"bon_<rm>"``: best-of-N on the same reward model from the SFT start, ``step = N``
  (1, 2, 4, ..., ``bon_max``), the reference curve, with the analytic
  :math:`\mathrm{KL}_{\text{BoN}} = \log N - (N-1)/N` — an upper bound on the true KL of best-of-N
  (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy"), exact when the
  N scores never tie.

``<rm>`` is ``"weak"`` (the textbook reward model, :data:`~rlcourse.experiments.cache.TEXTBOOK_RM`) or
``"strong"`` (the course's recipe, :data:`~rlcourse.experiments.cache.RM_CONFIG`).

**How the KL is measured.** At each evaluation the policy samples ``evaluation.samples`` responses to each
of ``evaluation.prompts`` held-out problems; for every response token the *exact* categorical
:math:`\mathrm{KL}(\pi(\cdot \mid s_t) \,\|\, \pi_{\text{ref}}(\cdot \mid s_t))` over the whole
vocabulary (:func:`rlcourse.kl.kl_categorical`) is summed along the response (:func:`sequence_kl`).
By the chain rule of the KL that sum is an unbiased estimate of the sequence-level
:math:`\mathrm{KL}(\pi(\cdot \mid x) \,\|\, \pi_{\text{ref}}(\cdot \mid x))`, and it has far less
variance than the sampled :math:`\sum_t \log\pi/\pi_{\text{ref}}` (k1) that PPO's reward uses.

Rows (one per evaluation)::

    {"arm", "seed", "step", "rm", "beta", "gold", "accuracy", "score", "kl", "sqrt_kl"}

``gold``: mean rule reward of the sampled responses (1 right, 0 wrong, below 0 malformed: the task's
reward); ``accuracy``: share of them that are right; ``score``: mean reward-model score of the same
responses; ``kl``: the mean of :func:`sequence_kl` (PPO arms) or the analytic best-of-N value (``beta``
is None there). The seed is PPO's and the evaluation's sampling seed; the start and the reward
models are the same for every seed (trained once, seed 0).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch

from rlcourse._validate import integer, number
from rlcourse.experiments.budget import Budget, Evaluation, check_budget
from rlcourse.experiments.cache import TEXTBOOK_RM, reward_model_start, rm_config, sft_start
from rlcourse.experiments.runner import check_arms, evaluated_training, experiment
from rlcourse.kl import kl_categorical
from rlcourse.lm import default_max_new_tokens, default_task, generate, sequence_logprobs
from rlcourse.train.ppo import PPOConfig, train_ppo

__all__ = ["OveroptimizationConfig", "REWARD_MODELS", "sequence_kl", "bon_kl", "best_of_n_rows", "policy_eval",
           "load_reward_model", "run_seed"]

#: The two reward models: the changes to :data:`~rlcourse.experiments.cache.RM_CONFIG` that define each.
REWARD_MODELS = {"weak": TEXTBOOK_RM, "strong": {}}


@torch.no_grad()
def sequence_kl(model, ref, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                temperature: float = 1.0) -> torch.Tensor:
    r"""Per response, :math:`\sum_t \mathrm{KL}\big(\pi(\cdot \mid s_t) \,\|\, \pi_{\text{ref}}(\cdot \mid s_t)\big)`
    over its tokens, shape ``(N,)``: the exact per-token categorical KL (:func:`rlcourse.kl.kl_categorical` of the
    two models' log-softmax at ``temperature``) summed along ``response_mask``.

    For responses sampled from ``model`` its mean is an unbiased estimate of the sequence KL (chain rule of the KL:
    :math:`\mathrm{KL}(\pi \| \pi_{\text{ref}}) = \mathbb{E}_{y \sim \pi} \sum_t \mathrm{KL}_t`)."""
    _, logits = sequence_logprobs(model, input_ids, attention_mask, response_mask, temperature, return_logits=True)
    _, logits_ref = sequence_logprobs(ref, input_ids, attention_mask, response_mask, temperature, return_logits=True)
    logp = torch.log_softmax(logits.double() / temperature, -1)
    logq = torch.log_softmax(logits_ref.double() / temperature, -1)
    return (kl_categorical(logp, logq) * response_mask.double()).sum(-1)


def bon_kl(n: int) -> float:
    r"""The analytic KL of best-of-``n`` to the base policy, :math:`\log n - (n-1)/n` (an upper bound on the true
    one; Beirami et al. 2024)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return math.log(n) - (n - 1) / n


def best_of_n_rows(scores: torch.Tensor, gold: torch.Tensor, ns) -> list[dict]:
    r"""Best-of-N from ``K`` samples per prompt: for each N in ``ns`` (each dividing K), the K samples of every prompt
    are cut into K/N disjoint blocks of N, the best-scored sample of each block is kept (first on ties), and the kept
    samples' mean ``gold``, ``accuracy`` (share of gold == 1) and ``score`` are returned with ``kl = bon_kl(N)``.

    Args:
        scores: (P, K) reward-model scores of K samples of each of P prompts.
        gold: (P, K) their true rewards.
        ns: increasing positive integers that divide K.
    """
    if not (isinstance(scores, torch.Tensor) and isinstance(gold, torch.Tensor)) or scores.dim() != 2 \
            or scores.shape != gold.shape:
        raise ValueError(f"scores and gold must be tensors of the same shape (P, K), got "
                         f"{getattr(scores, 'shape', scores)} and {getattr(gold, 'shape', gold)}")
    P, K = scores.shape
    rows = []
    for n in ns:
        if not isinstance(n, int) or n < 1 or K % n:
            raise ValueError(f"every N in ns must be a positive integer dividing K={K}, got {n!r}")
        s, g = scores.reshape(P, K // n, n), gold.reshape(P, K // n, n)
        best = s.argmax(-1, keepdim=True)
        kept_s, kept_g = s.gather(-1, best), g.gather(-1, best)
        rows.append({"step": n, "gold": float(kept_g.mean()), "accuracy": float((kept_g == 1.0).double().mean()),
                     "score": float(kept_s.mean()), "kl": bon_kl(n), "sqrt_kl": math.sqrt(bon_kl(n))})
    return rows


@dataclass(frozen=True)
class OveroptimizationConfig:
    """The β grid, the PPO budget of every arm, the evaluation and best-of-N (see the module docstring)."""

    betas: tuple = (0.03, 0.3, 3.0)
    reward_models: tuple = ("weak", "strong")
    preset: str = "tiny"
    budget: Budget = Budget(steps=20, lr=1e-4, prompts_per_step=32, group_size=2)
    evaluation: Evaluation = Evaluation(every=2, prompts=64, samples=4)
    bon_prompts: int = 64
    bon_max: int = 512
    threads: int = 1

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        if not self.betas or len(set(self.betas)) != len(self.betas):
            raise ValueError(f"betas must be distinct finite numbers > 0, got {self.betas!r}")
        for b in self.betas:
            number("betas", b)
        check_arms(self, "reward_models", tuple(sorted(REWARD_MODELS)))
        check_budget(self, sampled=True)
        for name in ("bon_prompts", "bon_max", "threads"):
            integer(name, getattr(self, name))
        if self.bon_max & (self.bon_max - 1):
            raise ValueError(f"bon_max must be a power of 2 (N = 1, 2, 4, ..., bon_max), got {self.bon_max}")

    def quick(self) -> "OveroptimizationConfig":
        """Seconds-long (tests, CI): every arm, 4 PPO steps of 8 samples, 8 x 2 evaluation samples, best-of-8."""
        return replace(self, budget=replace(self.budget, steps=4, prompts_per_step=4, group_size=2),
                       evaluation=Evaluation(every=2, prompts=8, samples=2), bon_prompts=8, bon_max=8)

    def arms(self) -> list[str]:
        return [f"{rm}_beta{b:g}" for rm in self.reward_models for b in self.betas] + \
            [f"bon_{rm}" for rm in self.reward_models]


def load_reward_model(preset: str, name: str):
    """The cached reward model ``name`` (``"weak"`` / ``"strong"``, :data:`REWARD_MODELS`) and its info."""
    return reward_model_start(preset, 0, cfg=rm_config(preset, 0, **REWARD_MODELS[name]), progress=False)


@torch.no_grad()
def policy_eval(model, ref, tokenizer, rm, task, problems, samples: int, seed: int) -> dict:
    """``gold``, ``accuracy``, ``score``, ``kl``, ``sqrt_kl`` of ``samples`` responses (temperature 1) to each of
    ``problems`` (see the module docstring); ``rm`` None: no ``score``."""
    was = model.training
    model.eval()
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    ro = generate(model, tokenizer, [p.prompt for p in problems], samples, default_max_new_tokens(task), 1.0,
                  generator=gen)
    gold = task.batch_rewards(ro.completions, [p.answer for p in problems for _ in range(samples)], ro.finished)
    kl = float(sequence_kl(model, ref, ro.input_ids, ro.attention_mask, ro.response_mask).mean())
    score = {} if rm is None else {"score": float(rm(ro.input_ids, ro.attention_mask).mean())}
    model.train(was)
    return {"gold": float(gold.double().mean()), "accuracy": float((gold == 1.0).double().mean()), **score,
            "kl": kl, "sqrt_kl": math.sqrt(max(kl, 0.0))}


@torch.no_grad()
def _best_of_n(cfg, rm, model, tokenizer, task, seed: int) -> list[dict]:
    problems = task.held_out(cfg.bon_prompts, seed=1000 + seed)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    scores, gold = [], []
    chunk = max(1, 4096 // cfg.bon_max)
    for s in range(0, len(problems), chunk):
        ps = problems[s:s + chunk]
        ro = generate(model, tokenizer, [p.prompt for p in ps], cfg.bon_max, default_max_new_tokens(task), 1.0,
                      generator=gen)
        gold.append(task.batch_rewards(ro.completions, [p.answer for p in ps for _ in range(cfg.bon_max)],
                                       ro.finished).double().view(len(ps), cfg.bon_max))
        scores.append(rm(ro.input_ids, ro.attention_mask).double().cpu().view(len(ps), cfg.bon_max))
    ns = [2 ** k for k in range(int(math.log2(cfg.bon_max)) + 1)]
    return best_of_n_rows(torch.cat(scores), torch.cat(gold), ns)


@experiment("overoptimization", notebook="08", config=OveroptimizationConfig)
def run_seed(cfg: OveroptimizationConfig, seed: int, progress) -> list[dict]:
    """PPO against the weak and the strong learned reward model at fixed beta values, and best-of-N on each: gold
    (rule) reward, reward-model score and exact KL(pi||ref) per evaluation"""
    task = default_task()
    start, tok = sft_start(cfg.preset, 0, progress=False)
    start.eval()
    problems = task.held_out(cfg.evaluation.prompts, seed=2000 + seed)
    total, done = len(cfg.reward_models) * (len(cfg.betas) * cfg.budget.steps + 1), [0]
    rows = []
    torch.manual_seed(seed)
    for rm_name in cfg.reward_models:
        rm, _ = load_reward_model(cfg.preset, rm_name)
        rm.requires_grad_(False)
        rows += [{"arm": f"bon_{rm_name}", "seed": seed, "rm": rm_name, "beta": None, **r}
                 for r in _best_of_n(cfg, rm, start, tok, task, seed)]
        done[0] += 1
        progress(done[0], total)
        for beta in cfg.betas:
            arm = f"{rm_name}_beta{beta:g}"
            policy = copy.deepcopy(start)
            head = {"arm": arm, "seed": seed, "rm": rm_name, "beta": float(beta)}

            def evaluate(step, window):
                return {**head, "step": step, **policy_eval(policy, start, tok, rm, task, problems,
                                                            cfg.evaluation.samples, seed=10_000 * seed + step)}

            def tick():
                done[0] += 1
                progress(done[0], total)

            pcfg = PPOConfig(reward="model", preset=cfg.preset, seed=seed, init_kl_coef=float(beta), adaptive_kl=False,
                             eval_n=8, threads=cfg.threads, **cfg.budget.trainer_fields())
            rows += evaluated_training(
                lambda cb: train_ppo(pcfg, policy, tok, task=task, reward_model=rm, progress=False, callback=cb),
                evaluate, cfg.evaluation.every, tick)
    return rows
