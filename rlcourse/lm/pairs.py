"""Preference-pair data: oracle pairs sampled from a policy, their encoding, their log-probs, and pair accuracy.

Shared by the reward-model trainer, DPO and the experiments of notebooks 07 and 10. A pair is a
dict ``{"prompt", "chosen", "rejected", "answer"}``; the oracle is :func:`rlcourse.lm.make_preference_pairs`
(higher rule reward wins; on a tie, the integer closer to the answer).
"""

from __future__ import annotations

from typing import Sequence

import torch

from rlcourse.lm.rollout import encode_completions, generate, sequence_logprobs
from rlcourse.lm.task import make_preference_pairs, reward
from rlcourse.logprobs import masked_sum


def oracle_pairs(model, tokenizer, problems, *, group_size: int = 8, temperature: float = 1.0,
                 max_new_tokens: int = 5, seed: int = 0, batch_size: int = 512,
                 max_pairs_per_group: int | None = None, task=None) -> list[dict]:
    """Preference pairs from ``model``'s own samples: ``group_size`` completions per problem, labelled by the oracle
    (``task.preference``; no task: the arithmetic oracle :func:`rlcourse.lm.preference`).

    Sampling is reproducible from ``seed``; unfinished completions and ties are left out
    (:func:`rlcourse.lm.make_preference_pairs`). Returns ``{"prompt", "chosen", "rejected", "answer"}`` dicts.
    """
    problems = list(problems)
    if not problems:
        raise ValueError("problems is empty")
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(int(seed))
    per_chunk = max(1, batch_size // group_size)
    pairs = []
    for s in range(0, len(problems), per_chunk):
        chunk = problems[s:s + per_chunk]
        ro = generate(model, tokenizer, [p.prompt for p in chunk], group_size, max_new_tokens, temperature,
                      generator=gen)
        pairs += make_preference_pairs(ro.prompts, ro.completions, [p.answer for p in chunk for _ in range(group_size)],
                                       group_size=group_size, finished=ro.finished,
                                       max_pairs_per_group=max_pairs_per_group, seed=int(seed) + s,
                                       preference=None if task is None else task.preference)
    return pairs


def pair_kind(pair: dict, task=None) -> str:
    """``"correct_vs_wrong"`` if the chosen answer is right (``task.reward``; no task: the arithmetic reward),
    else ``"closer_vs_farther"`` (both wrong or malformed)."""
    r = reward(pair["chosen"], pair["answer"]) if task is None else task.reward(pair["chosen"], pair["answer"])
    return "correct_vs_wrong" if r == 1.0 else "closer_vs_farther"


def encode_pairs(tokenizer, pairs: Sequence[dict], device=None):
    """One batch of ``2B`` rows: the B chosen sequences, then the B rejected ones (completions end with ``<eos>``)."""
    prompts = [p["prompt"] for p in pairs]
    completions = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    return encode_completions(tokenizer, prompts + prompts, completions, device=device)


@torch.no_grad()
def pair_accuracy(rm, tokenizer, pairs: Sequence[dict], batch_size: int = 512, task=None) -> dict:
    """Share of ``pairs`` the reward model orders like the oracle (a tie counts 1/2), overall and per :func:`pair_kind`.

    Returns ``{"pair_accuracy", "pair_accuracy/<kind>", "margin"}`` (margin: mean of
    :math:`r(y_w) - r(y_l)`).
    """
    if not pairs:
        raise ValueError("pairs is empty")
    was_training = rm.training
    rm.eval()
    diffs = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        b = encode_pairs(tokenizer, chunk, rm.device)
        r = rm(b.input_ids, b.attention_mask)
        diffs.append((r[:len(chunk)] - r[len(chunk):]).cpu())
    rm.train(was_training)
    d = torch.cat(diffs)
    hit = (d > 0).float() + 0.5 * (d == 0).float()
    out = {"pair_accuracy": float(hit.mean()), "margin": float(d.mean())}
    kinds = [pair_kind(p, task) for p in pairs]
    for k in sorted(set(kinds)):
        idx = torch.tensor([i for i, kk in enumerate(kinds) if kk == k])
        out[f"pair_accuracy/{k}"] = float(hit[idx].mean())
    return out

def pair_logprobs(model, tokenizer, pairs, device, temperature: float = 1.0, *, average: bool = False,
                  return_lengths: bool = False):
    """Sequence log-probs ``(logp_chosen (B,), logp_rejected (B,))`` of the pairs' responses (``<eos>`` included).

    ``average=True`` divides each by its number of tokens (IPO as TRL computes it);
    ``return_lengths=True`` also returns the token counts ``(len_chosen (B,), len_rejected (B,))``.
    Carries the gradient when called with grad enabled.
    """
    b = encode_pairs(tokenizer, pairs, device)
    logp = sequence_logprobs(model, b.input_ids, b.attention_mask, b.response_mask, temperature)
    seq = masked_sum(logp, b.response_mask, dim=-1)
    lengths = b.response_mask.sum(-1)
    if average:
        seq = seq / lengths
    out = (seq[:len(pairs)], seq[len(pairs):])
    return out + ((lengths[:len(pairs)], lengths[len(pairs):]),) if return_lengths else out




__all__ = ["oracle_pairs", "pair_kind", "encode_pairs", "pair_accuracy", "pair_logprobs"]
