"""The silent-bug lab: classic bugs of RL for LLMs, each injected at one step of a trainer, each with a detector.

A *silent* bug raises nothing and produces no NaN: the run trains, the loss moves, and the
policy learns the wrong thing, or less, or nothing. The only defence is a check that measures
the step the bug lives in. Here every bug is

* **injected in one place**: a trainer routes the steps a bug can corrupt through a hook object,
  :func:`hooks`, which returns its input unchanged when no bug is set. A trainer reads::

      hook = bugs.hooks(cfg.bug)                     # cfg.bug = None: every hook is the identity
      mask = hook.loss_mask(response_mask, attention_mask=att)          # which tokens count
      logprobs = hook.logprobs(sequence_logprobs)                       # logits -> label log-probs
      adv = hook.advantages(adv, rewards=r, group_size=G, mask=mask)    # the advantages
      logp_old = hook.old_logprobs(logp_old, logp=logp, mask=mask)      # what the ratio divides by
      kl_shaped_rewards(scores, *hook.kl_arguments(logp_old, logp_ref), mask, beta)  # KL's argument order

  and a bug replaces exactly one of these steps (:data:`BUGS`, ``Bug.step``);
* **detected cheaply**: a function of the hook object that runs in milliseconds on a synthetic
  batch, a lookup-table "language model" or the enumerable toy MDP (:mod:`rlcourse.toymdp`), and
  returns a :class:`Finding` — tested to fire on its bug and to stay silent on clean code
  (``tests/test_bugs.py``, every bug, both directions, and silent on the other bugs too).

``rlcourse bugs list`` prints the table, ``rlcourse train grpo --bug NAME`` trains with one,
``notebooks/12_debugging_lab.ipynb`` shows the symptoms, runs the detectors and poses a mystery bug.

Imports: core and :mod:`rlcourse.lm` only (the trainers import this module, never the reverse).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import torch

from rlcourse.advantages import grpo_advantages
from rlcourse.kl import kl_k1
from rlcourse.lm.rollout import position_ids_from_mask, sequence_logprobs
from rlcourse.logprobs import token_logprobs
from rlcourse.losses import grpo_loss, policy_gradient_loss
from rlcourse.toymdp import course_problem

#: The steps a bug can corrupt, each a method of :class:`Hooks`.
STEPS = {
    "loss_mask": "which tokens the loss counts (the (N, T) mask handed to the log-probs and the loss)",
    "logprobs": "the function that turns the model's logits into the log-probs of the response tokens",
    "advantages": "the advantages of the batch",
    "old_logprobs": "the log-probs the importance ratio divides by",
    "kl_arguments": "the (policy, reference) log-probs in the order the KL estimator takes them",
}


@dataclass(frozen=True)
class Bug:
    """A silent bug: the step it corrupts, how, and what it looks like.

    Attributes:
        name: the name given to ``--bug``.
        step: the :data:`STEPS` entry it replaces.
        category: the kind of symptom (``objective``, ``masking``, ``numerics``, ``alignment``,
            ``normalisation``, ``trust region``, ``regularisation``).
        hint: one line: what a student would see.
        what: the bug in one sentence (the wrong line of code).
        trainers: the trainers it can be injected into.
        inject: ``inject(value, **context) -> value``, the corrupted step.
    """

    name: str
    step: str
    category: str
    hint: str
    what: str
    trainers: tuple[str, ...]
    inject: Callable


# -- the corrupted steps ---------------------------------------------------------------------------

def _prompt_in_mask(mask, *, attention_mask, **_):
    # BUG: every real token after the first counts -- the prompt's tokens too, not only the response's
    return attention_mask[:, 1:].to(mask.dtype)


def _off_by_one_logprobs(model, input_ids, attention_mask, response_mask, temperature=1.0, *, return_logits=False):
    """:func:`rlcourse.lm.sequence_logprobs` with the classic off-by-one: each label read from its own position."""
    T = response_mask.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False, logits_to_keep=T)
    z = out.logits[:, -T:]  # BUG: the logits AT token t (they predict token t+1), not those before it
    lp = token_logprobs(z.float(), input_ids[:, -T:], temperature)
    lp = torch.where(response_mask.bool(), lp, torch.zeros_like(lp))
    return (lp, z) if return_logits else lp


def _unguarded_zscore(adv, *, rewards, group_size, **_):
    # BUG: (r - mean) / (std + 1e-8) with no constant-group guard: the round-off of a constant group's
    # mean (about 1e-8) divided by its std (about 1e-8) is an advantage of order 1 out of nothing
    g = rewards.reshape(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-8)).reshape(-1).to(adv.dtype)


def _double_length_norm(adv, *, mask, **_):
    # BUG: the advantage divided by |y| before an aggregation that divides by |y| again: weight 1/|y|^2
    return adv / mask.sum(-1).clamp(min=1).to(adv.dtype)


def _flipped_sign(adv, **_):
    # BUG: the advantage's sign flipped (baseline minus reward, or a loss maximised instead of minimised)
    return -adv


def _recomputed_old(logp_old, *, logp, **_):
    # BUG: the "old" log-probs recomputed under the current policy at every iteration: ratio == 1 always
    return logp.detach()


BUGS: dict[str, Bug] = {b.name: b for b in [
    Bug("kl_direction", "kl_arguments", "regularisation",
        "KL to the reference turns negative and keeps drifting; the 'penalty' pushes away from the reference",
        "the KL estimator gets (reference, policy) instead of (policy, reference): log(ref/pi) for log(pi/ref)",
        ("ppo",), lambda pair, **_: (pair[1], pair[0])),
    Bug("prompt_in_mask", "loss_mask", "masking",
        "the prompt's tokens are trained too: a diluted, length-biased gradient, and the prompt's likelihood drifts",
        "the loss mask is the attention mask (prompt + response) instead of the response mask",
        ("grpo", "reinforce"), _prompt_in_mask),
    Bug("constant_group_std", "advantages", "numerics",
        "a group of equal (real-valued) rewards gets advantages of order 1 from round-off: noise is trained",
        "GRPO's z-score (r - mean) / (std + 1e-8) with no guard for a group of equal rewards",
        ("grpo",), _unguarded_zscore),
    Bug("off_by_one", "logprobs", "alignment",
        "reward erratic, gradient norm several times the clean run's and spiky: the gradient is for the wrong labels",
        "each response token is scored by the logits at its own position instead of the position before it",
        ("grpo", "reinforce"), lambda fn, **_: _off_by_one_logprobs),
    Bug("double_length_norm", "advantages", "normalisation",
        "long answers barely learn, short ones dominate: per-token weight 1/|y|^2 instead of 1/|y|",
        "the advantage is divided by the response length before a per-sequence token mean",
        ("grpo",), _double_length_norm),
    Bug("old_logprobs_recomputed", "old_logprobs", "trust region",
        "clipfrac stays exactly 0 and ratio_mean exactly 1 with several updates per batch: no trust region",
        "the old log-probs are recomputed by the current policy at every update instead of kept from sampling",
        ("grpo", "ppo"), _recomputed_old),
    Bug("advantage_sign", "advantages", "objective",
        "reward goes DOWN steadily while everything else looks healthy",
        "the advantage's sign is flipped (baseline minus reward, or a loss maximised)",
        ("grpo", "reinforce", "ppo"), _flipped_sign),
]}


def get(name: str) -> Bug:
    """The bug called ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in BUGS:
        raise ValueError(f"bug must be one of {sorted(BUGS)}, got {name!r} (rlcourse bugs list)")
    return BUGS[name]


def for_trainer(trainer: str) -> list[str]:
    """The names of the bugs that can be injected into ``trainer``."""
    return sorted(n for n, b in BUGS.items() if trainer in b.trainers)


def check(name: str | None, trainer: str) -> str | None:
    """``name`` if it is None or a bug that applies to ``trainer``; else ``ValueError`` listing those that do."""
    if name is None:
        return None
    bug = get(name)
    if trainer not in bug.trainers:
        ok = for_trainer(trainer)
        raise ValueError(f"bug {name!r} does not apply to {trainer} (it corrupts the {bug.step} step of "
                         f"{', '.join(bug.trainers)}); the bugs that apply to {trainer}: {ok or 'none'}")
    return name


# -- the hooks ---------------------------------------------------------------------------------------

class Hooks:
    """The steps of a trainer a bug can corrupt; each method returns its input unchanged unless the bug is there."""

    def __init__(self, bug: str | None = None, *, hidden: bool = False):
        self.bug = None if bug is None else get(bug)
        self._hidden = hidden

    def __repr__(self) -> str:
        return "Hooks(bug=<hidden>)" if self._hidden else f"Hooks(bug={self.bug.name if self.bug else None!r})"

    def _step(self, step: str, value, **context):
        if self.bug is None or self.bug.step != step:
            return value
        return self.bug.inject(value, **context)

    def loss_mask(self, mask: torch.Tensor, *, attention_mask: torch.Tensor) -> torch.Tensor:
        """The (N, T) mask of the tokens the loss counts (clean: the response mask)."""
        return self._step("loss_mask", mask, attention_mask=attention_mask)

    def logprobs(self, fn: Callable) -> Callable:
        """The log-prob function (clean: ``fn``, e.g. :func:`rlcourse.lm.sequence_logprobs`)."""
        return self._step("logprobs", fn)

    def advantages(self, adv: torch.Tensor, *, rewards: torch.Tensor | None = None, group_size: int | None = None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
        """The advantages (clean: ``adv``); ``rewards``, ``group_size``, ``mask`` are what a bug may use."""
        return self._step("advantages", adv, rewards=rewards, group_size=group_size, mask=mask)

    def old_logprobs(self, logp_old: torch.Tensor, *, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What the importance ratio divides by (clean: ``logp_old``, kept from before the first update)."""
        return self._step("old_logprobs", logp_old, logp=logp, mask=mask)

    def kl_arguments(self, logp: torch.Tensor, logp_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logp, logp_ref)`` in the order the KL estimator takes them (clean: policy first)."""
        return self._step("kl_arguments", (logp, logp_ref))


def hooks(bug: str | None = None) -> Hooks:
    """The hooks of a run: the identity when ``bug`` is None, else ``bug`` injected at its step."""
    return Hooks(bug)


# -- the detectors -----------------------------------------------------------------------------------

@dataclass
class Finding:
    """What a detector measured: ``fired`` is True when the measurement is that of the bug."""

    bug: str
    fired: bool
    observed: float
    expected: str
    detail: str

    def __str__(self) -> str:
        return f"{'FIRED ' if self.fired else 'silent'} {self.bug:<24} observed {self.observed:.3g} ({self.detail})"


class TableLM(torch.nn.Module):
    """A "language model" whose logits are a free table ``(N, L, V)``: what a detector differentiates.

    It takes the Hugging Face calling convention of :func:`rlcourse.lm.sequence_logprobs`
    (``logits_to_keep``) and ignores its inputs, so the gradient reaching each position's logits
    says exactly which positions the loss used.
    """

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(logits.clone().float())

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0):
        return SimpleNamespace(logits=self.table[:, -logits_to_keep:] if logits_to_keep else self.table)


def synthetic_batch() -> dict:
    """3 rows: left-padded prompts (P = 5 positions), right-padded responses (T = 4), no token repeated in a row.

    Returns ``input_ids (3, 9)``, ``attention_mask``, ``response_mask (3, 4)`` and ``prompt_positions``:
    the logit positions that predict a prompt token (0 .. P-2).
    """
    P, T, V = 5, 4, 12
    ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8],
                        [0, 0, 3, 4, 9, 10, 11, 0, 0],
                        [0, 7, 8, 9, 10, 1, 2, 0, 0]])
    att = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1],
                        [0, 0, 1, 1, 1, 1, 1, 0, 0],
                        [0, 1, 1, 1, 1, 1, 1, 0, 0]])
    return {"input_ids": ids, "attention_mask": att, "response_mask": att[:, P:].float(), "P": P, "T": T, "V": V}


def detect_prompt_in_mask(hook: Hooks) -> Finding:
    """The loss's gradient at the logits that predict PROMPT tokens is exactly 0 on clean code."""
    b = synthetic_batch()
    model = TableLM(torch.randn(3, 9, b["V"], generator=torch.Generator().manual_seed(0)))
    mask = hook.loss_mask(b["response_mask"], attention_mask=b["attention_mask"])
    logp = hook.logprobs(sequence_logprobs)(model, b["input_ids"], b["attention_mask"], mask)
    policy_gradient_loss(logp, torch.ones(3), mask, "seq_mean_token_sum").backward()
    g = float(model.table.grad[:, : b["P"] - 1].abs().max())
    return Finding("prompt_in_mask", g > 0, g, "0", "largest |gradient| at the logits that predict prompt tokens")


def detect_off_by_one(hook: Hooks) -> Finding:
    """An oracle whose logits at position j put all mass on token j+1 gets log-prob ~ 0 on every label."""
    b = synthetic_batch()
    ids = b["input_ids"]
    oracle = torch.zeros(3, 9, b["V"])
    oracle[:, :-1].scatter_(-1, ids[:, 1:, None], 20.0)  # position j predicts token j+1, with certainty
    m = b["response_mask"]
    logp = hook.logprobs(sequence_logprobs)(TableLM(oracle), ids, b["attention_mask"], m)
    mean = float((logp.detach() * m).sum() / m.sum())
    return Finding("off_by_one", mean < -1.0, mean, "~0 (> -1)",
                   "mean log-prob of the labels under a perfect next-token oracle")


def detect_advantage_sign(hook: Hooks) -> Finding:
    """In a group where one sample alone is rewarded, that sample's advantage is positive."""
    r = torch.tensor([1.0, 0, 0, 0, 0, 1, 1, 1])
    mask = torch.ones(8, 3)
    adv = hook.advantages(grpo_advantages(r, 4), rewards=r, group_size=4, mask=mask)
    a = float(adv[0])
    return Finding("advantage_sign", not a > 0, a, "> 0", "advantage of the only rewarded sample of its group")


def detect_constant_group_std(hook: Hooks) -> Finding:
    """Groups of equal real-valued rewards (a reward model's scores, shaped rewards) get advantage exactly 0."""
    values = [0.1, 0.3, 0.7, 1 / 3, 2 / 3, 0.9, 0.2, 0.6, 1.1, -0.3]
    G = 6
    r = torch.tensor([v for v in values for _ in range(G)], dtype=torch.float32)
    adv = hook.advantages(grpo_advantages(r, G), rewards=r, group_size=G, mask=torch.ones(r.numel(), 3))
    worst = float(adv.abs().max()) if bool(torch.isfinite(adv).all()) else math.inf
    return Finding("constant_group_std", worst > 1e-3, worst, "0",
                   "largest |advantage| over groups whose rewards are all equal")


def detect_double_length_norm(hook: Hooks) -> Finding:
    """Under GRPO's per-sequence token mean the gradient of a token scales as 1/|y|: slope -1 in log-log."""
    lengths = torch.arange(1, 9)
    mask = (torch.arange(8)[None, :] < lengths[:, None]).float()
    r = torch.tensor([1.0, 0] * 4)
    adv = hook.advantages(grpo_advantages(r, 2), rewards=r, group_size=2, mask=mask)
    logp = (-torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) * mask).requires_grad_(True)
    loss, _ = grpo_loss(logp, logp.detach(), adv, mask, aggregation="seq_mean_token_mean")
    (g,) = torch.autograd.grad(loss, logp)
    y, x = g[:, 0].abs().log(), lengths.float().log()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return Finding("double_length_norm", slope < -1.5, slope, "-1",
                   "slope of log |per-token gradient| against log |y| (GRPO's token mean per sequence)")


def _moved_policy():
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(4, 5)
    mask[1, 3:] = 0
    logp_old = -torch.rand(4, 5, generator=gen) * mask - 0.5 * mask
    logp = logp_old + 0.3 * torch.randn(4, 5, generator=gen) * mask  # an update moved the policy
    return logp.clamp(max=0.0) * mask, logp_old, mask


def detect_old_logprobs_recomputed(hook: Hooks) -> Finding:
    """After an update moved the policy, the importance ratio is not 1 everywhere."""
    logp, logp_old, mask = _moved_policy()
    ratio = torch.exp(logp - hook.old_logprobs(logp_old, logp=logp, mask=mask))
    dev = float(((ratio - 1).abs() * mask).max())
    return Finding("old_logprobs_recomputed", dev < 1e-6, dev, "> 0",
                   "largest |ratio - 1| after an update that moved every log-prob")


def detect_kl_direction(hook: Hooks) -> Finding:
    """On the toy MDP the expected gradient of the KL penalty (a per-token reward, as in PPO) is grad KL(pi || ref).

    The penalty of a sequence is the sum of the k1 estimates of its tokens (what PPO's
    ``kl_shaped_rewards`` charges); its expected policy gradient :math:`E_\\pi[c(y)\\,\\nabla\\log\\pi(y)]`
    is computed exactly by enumeration and compared with the exact gradients of both KL directions.
    """
    mdp, theta = course_problem()
    theta.requires_grad_(True)
    ref = mdp.init_params(seed=2)
    lp, lp_ref = mdp.token_logprobs(theta), mdp.token_logprobs(ref)
    a, b = hook.kl_arguments(lp.detach(), lp_ref)
    penalty = (kl_k1(a, b) * mdp.sequences.mask).sum(-1)  # c(y), a reward: no gradient of its own
    (g,) = torch.autograd.grad((mdp.probabilities(theta) * penalty).sum(), theta)
    P, P_ref = mdp.probabilities(theta), mdp.probabilities(ref)
    (g_fwd,) = torch.autograd.grad((P * (P.log() - P_ref.log())).sum(), theta, retain_graph=True)
    (g_rev,) = torch.autograd.grad((P_ref * (P_ref.log() - P.log())).sum(), theta)
    rel = float((g - g_fwd).norm() / g_fwd.norm())
    match = min([("grad KL(pi||ref)", g_fwd), ("-grad KL(pi||ref): a KL bonus", -g_fwd), ("grad KL(ref||pi)", g_rev)],
                key=lambda kv: float((g - kv[1]).norm()))[0]
    return Finding("kl_direction", rel > 1e-6, rel, "0",
                   f"relative distance of E[penalty grad] from grad KL(pi||ref); closest to {match}")


#: One detector per bug (the same names as :data:`BUGS`).
DETECTORS: dict[str, Callable[[Hooks], Finding]] = {
    "kl_direction": detect_kl_direction,
    "prompt_in_mask": detect_prompt_in_mask,
    "constant_group_std": detect_constant_group_std,
    "off_by_one": detect_off_by_one,
    "double_length_norm": detect_double_length_norm,
    "old_logprobs_recomputed": detect_old_logprobs_recomputed,
    "advantage_sign": detect_advantage_sign,
}


def diagnose(hook: Hooks) -> list[Finding]:
    """Every detector run on ``hook`` (a clean :class:`Hooks` should fire none)."""
    return [DETECTORS[name](hook) for name in BUGS]


def detection_matrix() -> dict[str, list[str]]:
    """For clean code (key ``"clean"``) and for each bug: the detectors that fire (should be ``[]`` and ``[bug]``)."""
    out = {"clean": [f.bug for f in diagnose(Hooks()) if f.fired]}
    for name in BUGS:
        out[name] = [f.bug for f in diagnose(Hooks(name)) if f.fired]
    return out


# -- the mystery bug of the lab ----------------------------------------------------------------------

def _mystery_name(seed: int) -> str:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return sorted(BUGS)[random.Random(seed).randrange(len(BUGS))]


def mystery(seed: int) -> Hooks:
    """Hooks with one bug chosen by ``seed``, its name hidden: find it with the detectors."""
    return Hooks(_mystery_name(seed), hidden=True)


def check_guess(seed: int, guess: str) -> str:
    """A message if ``guess`` names the mystery bug of ``seed``; ``AssertionError`` if not."""
    get(guess)
    if guess != _mystery_name(seed):
        raise AssertionError(f"{guess!r} is not the mystery bug of seed {seed}: run every detector on mystery({seed}) "
                             f"and read which one fires")
    return f"correct: the mystery bug of seed {seed} is {guess} ({BUGS[guess].what})"


# -- the command line ------------------------------------------------------------------------------------

def rows() -> list[dict]:
    """The table of ``rlcourse bugs list``: name, symptom category, hint, step, trainers."""
    return [{"name": b.name, "category": b.category, "hint": b.hint, "step": b.step, "trainers": list(b.trainers),
             "bug": b.what} for b in BUGS.values()]


def cmd_bugs(args) -> int:
    import json
    import sys

    if args.action == "list":
        if args.json:
            print(json.dumps(rows(), indent=1))
            return 0
        for r in rows():
            print(f"{r['name']:<24} {r['category']:<15} {r['hint']}")
            print(f"{'':<24} {'':<15} step: {r['step']}; trainers: {', '.join(r['trainers'])}")
        print(f"{len(BUGS)} bugs; train with one: rlcourse train grpo --bug NAME")
        return 0
    matrix = detection_matrix()  # "detect"
    bad = {k: v for k, v in matrix.items() if v != ([] if k == "clean" else [k])}
    for k, v in matrix.items():
        print(f"{k:<24} fires: {', '.join(v) or '-'}")
    if bad:
        print(f"detectors are not specific: {bad}", file=sys.stderr)
        return 1
    print("every detector stays silent on clean code and fires on its own bug only")
    return 0


def add_subcommands(subparsers) -> None:
    """Add ``rlcourse bugs list [--json]`` and ``rlcourse bugs detect`` to the command line."""
    b = subparsers.add_parser("bugs", help="the silent-bug lab: list the injectable bugs, run their detectors")
    b.add_argument("action", choices=["list", "detect"],
                   help="list: the bugs (name, symptom category, hint); detect: every detector on clean code and "
                        "on each bug")
    b.add_argument("--json", action="store_true", help="list as JSON")
    b.set_defaults(func=cmd_bugs)


__all__ = ["BUGS", "STEPS", "DETECTORS", "Bug", "Hooks", "Finding", "TableLM", "hooks", "get", "check",
           "for_trainer", "diagnose", "detection_matrix", "mystery", "check_guess", "synthetic_batch", "rows"]
