r"""The experiment of notebook 07 (reward models), and the pieces notebook 10's experiment shares.

Each calls the trainers of :mod:`rlcourse.train` (never a private copy of a loss) on the
course's small LM, from the cached starts of :mod:`rlcourse.experiments.cache`, and returns plain
data (no models); each is memoised in the process (:mod:`rlcourse.experiments.memo`), so a
notebook that runs it and then calls the figure builder pays once. The figures are drawn by
:mod:`rlcourse.plots.rlhf`:

* :func:`reward_models` (07, :class:`RewardModelsConfig`): the course's and the textbook reward
  model, and three other judges, on held-out pairs; :func:`score_by_kind` of the policy's own samples;

Notebook 08's experiments are the runner experiments ``overoptimization`` and ``kl_placement``
(:mod:`rlcourse.experiments.overoptimization`, :mod:`rlcourse.experiments.kl_placement`), over seeds.
Notebook 10's comparison of DPO, PPO and GRPO is the runner experiment ``method_comparison``
(:mod:`rlcourse.experiments.method_comparison`), which uses :func:`completion_logprobs` from here.

:func:`run` runs any of them from its config; the notebooks call the keyword forms
(:func:`reward_model_experiment`). The preset
of a config is ``$RLCOURSE_PRESET`` (default ``"tiny"``) when it is built, as in the notebooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from rlcourse.experiments import settings
from rlcourse.experiments.cache import TEXTBOOK_RM, reward_model_start, rm_config, sft_start
from rlcourse.experiments.memo import memoised
from rlcourse.lm import (batch_rewards, default_max_new_tokens, default_task, encode_completions, generate,
                         sequence_logprobs)
from rlcourse.lm.pairs import encode_pairs, pair_kind, pair_logprobs
from rlcourse.lm.rollout import encode_prompts, position_ids_from_mask

__all__ = ["StartConfig", "RewardModelsConfig", "run", "reward_models", "score_by_kind", "pair_groups", "rm_margins",
           "likelihood_margins", "verdict_margins", "completion_logprobs", "pair_accuracy_by_group",
           "reward_model_experiment", "policy"]


def policy(preset: str, seed: int, progress: bool = False):
    """A fresh copy of the cached SFT start ``(model in eval mode, tokenizer)``."""

    model, tok = sft_start(preset, seed, progress=progress)
    return model.eval(), tok


@torch.no_grad()
def score_by_kind(rm, model, tokenizer, task=None, n_problems: int = 200, group_size: int = 8, seed: int = 1
                  ) -> dict:
    """Reward-model scores of the policy's own samples on held-out problems, split by what the rule says.

    ``group_size`` completions of each of ``n_problems`` held-out problems are sampled from ``model``
    (temperature 1) and scored by ``rm`` (unfinished ones as they are, without ``<eos>``). Kinds:
    ``"correct"`` (rule reward 1), ``"wrong"`` (a well-formed wrong answer, reward 0) and
    ``"malformed"`` (everything else).

    A Bradley–Terry reward is identified only up to a constant *per prompt*, so the scores are also
    given ``centred`` within each prompt's group (minus the group mean). Returns ``{"scores": {kind:
    list}, "centred": {kind: list}, "auc": P(a correct sample outscores a wrong one, any two
    prompts), "auc_within": the same for pairs of samples of the same prompt (ties 1/2),
    "count": {kind: n}}``.
    """

    task = task or default_task()
    problems = task.held_out(n_problems, seed=seed)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    ro = generate(model, tokenizer, [p.prompt for p in problems], group_size, default_max_new_tokens(task), 1.0,
                  generator=gen)
    rule = batch_rewards(ro.completions, [p.answer for p in problems for _ in range(group_size)], ro.finished)
    scores = rm.score(ro.to(rm.device)).cpu().double()
    centred = (scores.view(-1, group_size) - scores.view(-1, group_size).mean(-1, keepdim=True)).reshape(-1)
    kinds = np.where(rule.numpy() == 1.0, "correct", np.where(rule.numpy() == 0.0, "wrong", "malformed"))
    names = ("correct", "wrong", "malformed")

    def auc(c, w):
        if c.numel() == 0 or w.numel() == 0:
            return float("nan")
        return float(((c[:, None] > w[None, :]).double() + 0.5 * (c[:, None] == w[None, :]).double()).mean())

    is_c, is_w = torch.as_tensor(kinds == "correct"), torch.as_tensor(kinds == "wrong")
    hits, n = 0.0, 0
    for g in range(len(problems)):
        rows = slice(g * group_size, (g + 1) * group_size)
        c, w = scores[rows][is_c[rows]], scores[rows][is_w[rows]]
        if c.numel() and w.numel():
            hits += auc(c, w) * c.numel() * w.numel()
            n += c.numel() * w.numel()
    return {"scores": {k: scores.numpy()[kinds == k].tolist() for k in names},
            "centred": {k: centred.numpy()[kinds == k].tolist() for k in names},
            "auc": auc(scores[is_c], scores[is_w]), "auc_within": hits / n if n else float("nan"),
            "count": {k: int((kinds == k).sum()) for k in names}}


# -- judges: three ways to order a preference pair ----------------------------------------------

def pair_groups(pairs: Sequence[dict]) -> dict[str, list[int]]:
    """Indices of ``pairs`` by kind: ``"all"``, :func:`rlcourse.lm.pair_kind`'s two kinds, and
    ``"correct_vs_plus_one"``: the chosen answer is right and the rejected one is the answer plus one, the
    SFT start's systematic error (notebook 04)."""

    out = {"all": list(range(len(pairs)))}
    for i, p in enumerate(pairs):
        out.setdefault(pair_kind(p), []).append(i)
        rej = p["rejected"].strip()
        if p["chosen"].strip() == str(p["answer"]) and rej.lstrip("-").isdigit() and int(rej) == int(p["answer"]) + 1:
            out.setdefault("correct_vs_plus_one", []).append(i)
    return out


@torch.no_grad()
def rm_margins(rm, tokenizer, pairs: Sequence[dict], batch_size: int = 512) -> torch.Tensor:
    """Reward-model margins :math:`r_\\phi(x, y_w) - r_\\phi(x, y_l)` of ``pairs``, shape ``(N,)``."""

    out = []
    for s in range(0, len(pairs), batch_size):
        chunk = list(pairs[s:s + batch_size])
        b = encode_pairs(tokenizer, chunk, rm.device)
        r = rm(b.input_ids, b.attention_mask).cpu()
        out.append(r[:len(chunk)] - r[len(chunk):])
    return torch.cat(out)


@torch.no_grad()
def likelihood_margins(model, tokenizer, pairs: Sequence[dict], batch_size: int = 256) -> torch.Tensor:
    """The policy as its own judge: :math:`\\log\\pi(y_w \\mid x) - \\log\\pi(y_l \\mid x)` (``<eos>`` included), shape ``(N,)``.

    The closest a small LM that never saw a verdict format comes to a generative reward model:
    its "verdict" is its own probability of writing the response.
    """

    device = next(model.parameters()).device
    out = []
    for s in range(0, len(pairs), batch_size):
        lc, lr = pair_logprobs(model, tokenizer, list(pairs[s:s + batch_size]), device)
        out.append((lc - lr).cpu())
    return torch.cat(out)


@torch.no_grad()
def verdict_margins(model, tokenizer, pairs: Sequence[dict], question: str = "?", yes: str = "y", no: str = "n"
                    ) -> tuple[torch.Tensor, float]:
    """A zero-shot "LLM judge": append ``question`` to ``prompt + response`` and score the response by the
    next-token log-odds :math:`\\log P(\\text{yes}) - \\log P(\\text{no})`.

    Returns ``(margins (N,), mass)``: chosen-minus-rejected scores, and the mean probability the model
    puts on the two verdict tokens at all. Meaningful only for a model trained on such a format; the
    course's SFT model never saw one, and this measures that.
    """

    device = next(model.parameters()).device
    ids_yes, ids_no = tokenizer.convert_tokens_to_ids([yes, no])
    texts = [p["prompt"] + p["chosen"] + question for p in pairs] + [p["prompt"] + p["rejected"] + question for p in pairs]
    scores, mass = [], []
    for s in range(0, len(texts), 512):
        ids, att = encode_prompts(tokenizer, texts[s:s + 512], device)
        logits = model(input_ids=ids, attention_mask=att, position_ids=position_ids_from_mask(att),
                       use_cache=False).logits[:, -1].float()
        lp = torch.log_softmax(logits, -1)
        scores.append((lp[:, ids_yes] - lp[:, ids_no]).cpu())
        mass.append((lp[:, ids_yes].exp() + lp[:, ids_no].exp()).cpu())
    sc = torch.cat(scores)
    return sc[:len(pairs)] - sc[len(pairs):], float(torch.cat(mass).mean())


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
    """:math:`\\log\\pi(y \\mid x)` of each ``completion + <eos>`` under ``model``, shape ``(N,)``."""

    device = next(model.parameters()).device
    b = encode_completions(tokenizer, list(prompts), list(completions), device=device)
    return sequence_logprobs(model, b.input_ids, b.attention_mask, b.response_mask).sum(-1).cpu()


def pair_accuracy_by_group(margins: torch.Tensor, groups: dict[str, list[int]]) -> dict[str, float]:
    """Share of pairs with a positive margin (a tie counts 1/2), in each group."""
    hit = (margins > 0).double() + 0.5 * (margins == 0).double()
    return {g: float(hit[idx].mean()) if idx else float("nan") for g, idx in groups.items()}


@dataclass(frozen=True)
class StartConfig:
    """The SFT start of an experiment: ``(preset, seed)``; the preset defaults to ``$RLCOURSE_PRESET``."""

    preset: str = field(default_factory=settings.preset)
    seed: int = 0


@dataclass(frozen=True)
class RewardModelsConfig(StartConfig):
    """Notebook 07: the cached reward models of the start and the judges (see :func:`reward_models`)."""


@memoised
def reward_models(cfg: RewardModelsConfig) -> dict:
    """Notebook 07's experiment: the course's reward model and the textbook one (both cached), judged on the
    held-out pairs of the former.

    Returns ``info`` and ``textbook_info`` (:func:`reward_model_start` of :data:`RM_CONFIG` and of
    :data:`TEXTBOOK_RM`), ``scores`` (:func:`score_by_kind` with the course's reward model), ``groups``
    (sizes of :func:`pair_groups`), ``judges`` (judge -> group -> pair accuracy: the two BT reward models,
    the likelihood judge and the zero-shot verdict judge) and ``verdict_mass``. Memoised in the process.
    """
    preset, seed = cfg.preset, cfg.seed
    rm, info = reward_model_start(preset, seed, progress=False)
    rm0, info0 = reward_model_start(preset, seed, cfg=rm_config(preset, seed, **TEXTBOOK_RM), progress=False)
    model, tok = policy(preset, seed)
    held = info["pairs"]["held_out"]
    groups = pair_groups(held)
    verdict, mass = verdict_margins(model, tok, held)
    judges = {"BT reward model (course recipe)": pair_accuracy_by_group(rm_margins(rm, tok, held), groups),
              "BT reward model (textbook)": pair_accuracy_by_group(rm_margins(rm0, tok, held), groups),
              "likelihood judge: log π_SFT(y|x)": pair_accuracy_by_group(likelihood_margins(model, tok, held), groups),
              "verdict judge: log P(y)/P(n) after '?'": pair_accuracy_by_group(verdict, groups)}
    return {"info": info, "textbook_info": info0, "scores": score_by_kind(rm, model, tok),
            "groups": {g: len(v) for g, v in groups.items()}, "judges": judges, "verdict_mass": mass}


_EXPERIMENTS = {RewardModelsConfig: reward_models}


def run(cfg) -> dict:
    """Run the experiment that ``cfg`` configures (its type says which); memoised in the process."""
    if type(cfg) not in _EXPERIMENTS:
        raise TypeError(f"cfg must be one of {[c.__name__ for c in _EXPERIMENTS]}, got {type(cfg).__name__}")
    return _EXPERIMENTS[type(cfg)](cfg)


# -- the keyword forms the notebooks call ----------------------------------------------------------

def reward_model_experiment(preset: str | None = None, seed: int = 0) -> dict:
    """:func:`reward_models` of ``RewardModelsConfig(preset, seed)`` (preset None: ``$RLCOURSE_PRESET``)."""
    return reward_models(RewardModelsConfig(preset=preset or settings.preset(), seed=seed))
