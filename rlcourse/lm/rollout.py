"""Rollouts: G sampled completions per prompt, their masks and their per-token log-probs.

Layout of every batch of sequences in the course (rollouts, SFT data, preference pairs)::

    input_ids       <pad> <pad> <bos> 1 2 + 7 = | 1 9 <eos> <pad>        (N, P + T)
    attention_mask    0     0     1   1 1 1 1 1 | 1 1   1     0
    response_mask                               | 1 1   1     0          (N, T)
                    '---- prompt, left-padded ----'  '- response, right-padded -'

The response mask counts the sampled tokens up to and including ``<eos>``; prompt, padding
and anything after ``<eos>`` are never counted. Positions come from the attention mask
(:func:`position_ids_from_mask`), so left padding does not shift the rotary positions.

Log-probs are those of the sampled token under ``softmax(logits / temperature)``, both while
sampling (:func:`generate`) and when recomputed by one forward pass
(:func:`sequence_logprobs`): the two agree to float32 round-off, so the importance ratio is
exactly 1 before the first update.

The sampling loop is a plain loop over ``model(...)`` with a KV cache that returns the
log-probs as it goes. Two savings over ``model.generate``: the prompt is prefilled once per
group and its cache copied G times, and rows that have finished are dropped from the batch
(once a quarter of it has finished). ``benchmarks/lm_speed.py`` measures both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch

from .. import _validate as V
from ..logprobs import token_logprobs
from .batching import chat_prompts, prompt_batch
from .task import Problem, batch_rewards, finished_flags
from .tokenizer import check_text


@dataclass
class SequenceBatch:
    """Prompts (left-padded to ``P``) followed by responses (right-padded to ``T``)."""

    input_ids: torch.Tensor       # (N, P + T) long
    attention_mask: torch.Tensor  # (N, P + T) long, 0 on padding (left of the prompt, after <eos>)
    response_mask: torch.Tensor   # (N, T) float 0/1, 1 = counted response token
    prompt_length: int            # P

    @property
    def response_ids(self) -> torch.Tensor:
        """The response tokens ``(N, T)`` (padding where ``response_mask`` is 0)."""
        return self.input_ids[:, self.prompt_length:]

    @property
    def response_lengths(self) -> torch.Tensor:
        """Number of counted response tokens per row ``(N,)``."""
        return self.response_mask.sum(-1)

    def to(self, device):
        """A copy with every tensor moved to ``device``."""
        return replace(self, **{f.name: getattr(self, f.name).to(device)
                                for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)})


@dataclass
class Rollout(SequenceBatch):
    """G completions per prompt (rows ``g*G .. g*G+G-1`` share prompt ``g``) and how they were sampled."""

    logprobs: torch.Tensor        # (N, T) float32 sampling log-probs, 0 where response_mask is 0
    finished: torch.Tensor        # (N,) bool: emitted <eos> within max_new_tokens
    prompts: list                 # N strings, each prompt repeated G times
    completions: list             # N strings: the response decoded, without <eos>
    group_size: int
    temperature: float


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions ``cumsum(mask) - 1`` clamped at 0: the first real token is at position 0 on every row."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


def encode_prompts(tokenizer, prompts: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise ``prompts`` (left padding) -> ``(input_ids, attention_mask)``.

    A tokenizer with a chat template (a Hugging Face model's own, see :func:`rlcourse.lm.load_model`)
    gets each prompt as a user turn followed by the assistant's generation prompt
    (:func:`rlcourse.lm.batching.chat_prompts`, encoded without adding special tokens again);
    one without (the course's) gets the raw text with its own special tokens (``<bos>`` prepended).

    Raises ``ValueError`` for an empty list or characters the tokenizer maps to its unknown token.
    """
    prompts = check_text(tokenizer, prompts, "prompts")
    if getattr(tokenizer, "chat_template", None):
        ids, att = prompt_batch(tokenizer, chat_prompts(tokenizer, prompts))
    else:
        enc = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
        ids, att = enc["input_ids"], enc["attention_mask"]
    return (ids.to(device), att.to(device)) if device is not None else (ids, att)


def encode_completions(tokenizer, prompts: Sequence[str], completions: Sequence[str],
                       finished: Sequence[bool] | torch.Tensor | None = None, device=None) -> SequenceBatch:
    """Build a :class:`SequenceBatch` from text: prompts left-padded, ``completion + <eos>`` right-padded.

    Used for SFT demonstrations and preference pairs, in exactly the layout of a rollout.
    ``finished[i] = False`` leaves ``<eos>`` off row ``i`` (a truncated sample).
    """
    prompts = check_text(tokenizer, prompts, "prompts")
    completions = check_text(tokenizer, completions, "completions") if completions else []
    if len(completions) != len(prompts):
        raise ValueError(f"prompts has {len(prompts)} entries but completions has {len(completions)}")
    finished = finished_flags(finished, len(prompts), "prompts")
    p_ids, p_att = encode_prompts(tokenizer, prompts)
    resp = [tokenizer(c, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if f else [])
            for c, f in zip(completions, finished)]
    T = max(1, max(len(r) for r in resp))
    r_ids = torch.full((len(resp), T), tokenizer.pad_token_id, dtype=torch.long)
    r_mask = torch.zeros(len(resp), T)
    for i, r in enumerate(resp):
        r_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        r_mask[i, :len(r)] = 1.0
    batch = SequenceBatch(torch.cat([p_ids, r_ids], 1), torch.cat([p_att, r_mask.long()], 1), r_mask, p_ids.shape[1])
    return batch.to(device) if device is not None else batch


def _check_common(group_size, max_new_tokens, temperature):
    V.integer("group_size", group_size)
    V.integer("max_new_tokens", max_new_tokens)
    V.positive("temperature", temperature)


def _cache_kwarg(model) -> str:
    """The name under which this model's ``forward`` takes a KV cache: ``cache`` since
    transformers 5.2x (``past_key_values`` is deprecated there, and warns), ``past_key_values``
    before. Read from the first ``forward`` in the class hierarchy that names either (a subclass
    whose ``forward(*args, **kwargs)`` only wraps its parent's is looked through)."""
    import inspect

    for cls in type(model).__mro__:
        fwd = cls.__dict__.get("forward")
        if fwd is None:
            continue
        params = inspect.signature(fwd).parameters
        for name in ("cache", "past_key_values"):
            if name in params:
                return name
    return "past_key_values"


def _cache_of(out):
    """The KV cache a forward pass returned, read without the deprecated ``past_key_values`` name."""
    return out["cache"] if "cache" in out else out.past_key_values


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], group_size: int = 1, max_new_tokens: int = 8,
             temperature: float = 1.0, *, generator: torch.Generator | None = None, seed: int | None = None,
             greedy: bool = False) -> Rollout:
    """Sample ``group_size`` completions of each prompt with a KV cache; stop when every row has emitted ``<eos>``.

    At each step :math:`y_t \\sim \\pi_\\theta(\\cdot \\mid x, y_{<t}) = \\mathrm{softmax}(z_t / \\tau)`
    and the rollout keeps :math:`\\log \\pi_\\theta(y_t \\mid x, y_{<t})` for the token drawn.

    Args:
        prompts: B prompt strings; the batch has ``N = B * group_size`` rows, groups consecutive.
        group_size: G >= 1 completions per prompt.
        max_new_tokens: length limit; a row without ``<eos>`` by then is ``finished = False``.
        temperature: tau > 0; the log-probs are those of ``logits / tau``.
        generator / seed: randomness of the draws (a ``torch.Generator`` on the model's device,
            or a seed for a new one; neither -> torch's global generator).
        greedy: take the arg-max token instead of sampling (log-probs still under ``logits / tau``).

    Returns:
        A :class:`Rollout`; its ``T`` is the number of steps taken (<= ``max_new_tokens``).

    The prompt of a group is prefilled once and its KV cache copied ``G`` times; finished rows
    leave the batch. Neither changes what is sampled or its log-probs (up to float round-off).
    """
    _check_common(group_size, max_new_tokens, temperature)
    device = _model_device(model)
    prompt_list = list(prompts) if not isinstance(prompts, str) else prompts
    ids_b, att_b = encode_prompts(tokenizer, prompt_list, device)  # checks the prompts
    ids, att = ids_b.repeat_interleave(group_size, 0), att_b.repeat_interleave(group_size, 0)
    N, P = ids.shape
    longest = int(att_b.sum(-1).max())
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and longest + max_new_tokens > max_pos:
        raise ValueError(f"max_new_tokens={max_new_tokens} plus the longest prompt ({longest} tokens) "
                         f"exceeds the model's max_position_embeddings={max_pos}")
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None or pad is None:
        raise ValueError(f"tokenizer must define eos and pad tokens (eos id {eos}, pad id {pad})")

    resp = torch.full((N, max_new_tokens), pad, dtype=torch.long, device=device)
    logprobs = torch.zeros(N, max_new_tokens, device=device)
    rmask = torch.zeros(N, max_new_tokens, device=device)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    was_training = model.training
    cache_kw = _cache_kwarg(model)
    model.eval()
    try:
        # Prefill once per prompt, then copy the KV cache G times: the G members of a group
        # share their prompt, so this saves (G-1)/G of the prompt's compute.
        pos_b = position_ids_from_mask(att_b)
        out = model(input_ids=ids_b, attention_mask=att_b, position_ids=pos_b, use_cache=True, logits_to_keep=1)
        cache, logits = _cache_of(out), out.logits[:, -1]
        if group_size > 1:
            if hasattr(cache, "batch_repeat_interleave"):
                cache.batch_repeat_interleave(group_size)
                logits = logits.repeat_interleave(group_size, 0)
            else:  # a cache type without batch operations: prefill every row
                out = model(input_ids=ids, attention_mask=att, position_ids=position_ids_from_mask(att),
                            use_cache=True, logits_to_keep=1)
                cache, logits = _cache_of(out), out.logits[:, -1]
        active = torch.arange(N, device=device)  # rows still in the batch fed to the model
        step_att = att
        next_pos = pos_b[:, -1:].repeat_interleave(group_size, 0) + 1
        steps = 0
        for t in range(max_new_tokens):
            steps = t + 1
            z = logits.float()
            if greedy:
                tok = z.argmax(-1)
            else:
                probs = torch.softmax(z / temperature, -1)
                tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            live = ~done[active]  # rows of the batch that have not emitted <eos> yet
            tok = torch.where(live, tok, torch.full_like(tok, pad))
            lp = token_logprobs(z[:, None, :], tok[:, None], temperature)[:, 0]
            rows = active[live]
            resp[rows, t] = tok[live]
            logprobs[rows, t] = lp[live]
            rmask[rows, t] = 1.0
            done[rows] |= tok[live] == eos
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            keep = ~done[active]
            if int(keep.sum()) <= 0.75 * active.numel() and hasattr(cache, "batch_select_indices"):
                # a quarter of the batch has finished: drop those rows from the batch and the cache
                idx = keep.nonzero().squeeze(-1)
                cache.batch_select_indices(idx)
                active, tok, step_att, next_pos = active[idx], tok[idx], step_att[idx], next_pos[idx]
            step_att = torch.cat([step_att, step_att.new_ones(active.numel(), 1)], 1)
            out = model(input_ids=tok[:, None], attention_mask=step_att, position_ids=next_pos,
                        use_cache=True, **{cache_kw: cache})
            cache, logits = _cache_of(out), out.logits[:, -1]
            next_pos = next_pos + 1
    finally:
        model.train(was_training)

    resp, logprobs, rmask = resp[:, :steps], logprobs[:, :steps], rmask[:, :steps]
    finished = done
    # Decode the counted tokens except <eos>; a special token sampled mid-response (e.g. <pad>, or a
    # chat marker of a Hugging Face model) stays visible in the text, so that the reward sees it (the
    # answer is then malformed) and re-encoding gives it back. With the course's character tokenizer
    # re-encoding gives the same ids; a BPE tokenizer may merge the decoded text differently.
    completions = [tokenizer.decode(row[:m - 1] if f else row[:m], skip_special_tokens=False)
                   for row, m, f in zip(resp.tolist(), rmask.sum(-1).long().tolist(), finished.tolist())]
    return Rollout(
        input_ids=torch.cat([ids, resp], 1),
        attention_mask=torch.cat([att, rmask.long()], 1),
        response_mask=rmask,
        prompt_length=P,
        logprobs=logprobs,
        finished=finished,
        prompts=[p for p in prompt_list for _ in range(group_size)],
        completions=completions,
        group_size=group_size,
        temperature=float(temperature),
    )


def response_logprobs_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor,
                                  temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of the response tokens from the logits of the whole sequence.

    .. math::  \\ell_{i,t} = m_{i,t}\\,\\log \\mathrm{softmax}(z_{i,P+t-1} / \\tau)[y_{i,P+t}]

    Logits at position ``j`` predict token ``j + 1``, so the response's ``T`` tokens are scored
    by the ``T`` logits just before them. ``logits`` may cover the whole sequence ``(N, P+T, V)``
    or only its last ``T + 1`` positions. Entries with ``response_mask = 0`` are exactly 0
    (selected with ``torch.where``: neither their value nor their gradient reaches a loss).
    """
    V.tensor("logits", logits, ndim=3, finite=False)
    V.tensor("input_ids", input_ids, ndim=2)
    V.mask("response_mask", response_mask)
    N, L = input_ids.shape
    if response_mask.dim() != 2 or response_mask.shape[0] != N:
        raise ValueError(f"response_mask has shape {tuple(response_mask.shape)} but input_ids has shape {(N, L)}")
    T = response_mask.shape[1]
    if logits.shape[0] != N or logits.shape[1] < T + 1 or logits.shape[1] > L:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected (N={N}, between T+1={T + 1} and "
                         f"{L} positions, V) for input_ids {(N, L)} and response_mask {(N, T)}")
    z = logits[:, -(T + 1):-1]
    lp = token_logprobs(z.float(), input_ids[:, -T:], temperature)
    return torch.where(response_mask.bool(), lp, torch.zeros_like(lp))


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                      temperature: float = 1.0, *, return_logits: bool = False):
    """Per-token log-probs ``(N, T)`` of the response tokens under ``model``, in one forward pass.

    .. math::  \\log \\pi_\\theta(y_t \\mid x, y_{<t}) = \\log \\mathrm{softmax}(z_t / \\tau)[y_t]

    Used for the policy (with gradient), the old policy and the reference (call it under
    ``torch.no_grad()``). Positions come from ``attention_mask``; entries where
    ``response_mask`` is 0 are 0. Equals the sampling log-probs of :func:`generate` to float32
    round-off (about 1e-6).

    ``return_logits=True`` returns ``(logp (N, T), logits (N, T, V))``: the raw logits that
    predict each response token (for an entropy), from the same forward pass.
    """
    V.tensor("input_ids", input_ids, ndim=2)
    V.mask("attention_mask", attention_mask, like=input_ids, like_name="input_ids")
    V.mask("response_mask", response_mask)
    V.positive("temperature", temperature)
    if response_mask.dim() != 2 or response_mask.shape[0] != input_ids.shape[0] \
            or response_mask.shape[1] >= input_ids.shape[1]:
        raise ValueError(f"response_mask has shape {tuple(response_mask.shape)}; expected (N, T) with "
                         f"T < sequence length for input_ids of shape {tuple(input_ids.shape)}")
    T = response_mask.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False, logits_to_keep=T + 1)
    logp = response_logprobs_from_logits(out.logits, input_ids, response_mask, temperature)
    return (logp, out.logits[:, :-1]) if return_logits else logp


# -- evaluation -----------------------------------------------------------------------------
def pass_at_k_estimator(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct among ``n`` samples (Chen et al. 2021, "Evaluating LLMs trained on code").

    .. math::  \\widehat{\\text{pass@}k} = 1 - \\binom{n-c}{k} \\Big/ \\binom{n}{k}
               = 1 - \\prod_{i=n-c+1}^{n} \\left(1 - \\frac{k}{i}\\right)

    (the product form avoids huge binomials).
    """
    for name, v in (("n", n), ("c", c), ("k", k)):
        V.integer(name, v, 0)
    if k < 1 or k > n:
        raise ValueError(f"k must lie in [1, n={n}], got {k}")
    if c > n:
        raise ValueError(f"c={c} correct samples cannot exceed n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _check_problems(problems) -> list[Problem]:
    problems = list(problems) if not isinstance(problems, (str, bytes)) else None
    if not problems:
        raise ValueError("problems must be a non-empty list of Problem (with .prompt and .answer)")
    for i, p in enumerate(problems):
        if not hasattr(p, "prompt") or not hasattr(p, "answer"):
            raise ValueError(f"problems[{i}] has no .prompt/.answer: {p!r}")
    return problems


def _solved_counts(model, tokenizer, problems, n, temperature, max_new_tokens, batch_size, seed, greedy, task=None):
    """Per problem, how many of ``n`` samples earn reward 1 (``task.batch_rewards``; no task: the arithmetic
    reward), and every reward. Room: ``max_new_tokens``, by default the task's longest completion + 2
    (``<eos>`` and one spare; no task: the longest answer among ``problems`` + 2)."""
    if task is not None and not callable(getattr(task, "batch_rewards", None)):
        raise ValueError(f"task must have a batch_rewards method (a task object), got {type(task).__name__}")
    if max_new_tokens is None:
        max_new_tokens = (task.max_answer_chars if task is not None else max(len(str(p.answer)) for p in problems)) + 2
    rewards_of = task.batch_rewards if task is not None else batch_rewards
    V.integer("batch_size", batch_size)
    gen = torch.Generator(device=_model_device(model)).manual_seed(seed)
    per_chunk = max(1, batch_size // n)
    counts, rewards = [], []
    for s in range(0, len(problems), per_chunk):
        chunk = problems[s:s + per_chunk]
        ro = generate(model, tokenizer, [p.prompt for p in chunk], n, max_new_tokens, temperature,
                      generator=gen, greedy=greedy)
        r = rewards_of(ro.completions, [p.answer for p in chunk for _ in range(n)], ro.finished)
        rewards.append(r)
        counts.extend((r.view(len(chunk), n) == 1.0).sum(-1).tolist())
    return counts, torch.cat(rewards)


def accuracy(model, tokenizer, problems: Sequence[Problem], *, max_new_tokens: int | None = None,
             batch_size: int = 256, task=None) -> float:
    """Greedy accuracy: the share of problems whose arg-max completion earns reward 1 (correct and well formed).

    ``task``: whose reward judges the completions and whose ``max_answer_chars + 2`` sizes them
    (None: the arithmetic reward, and the longest answer among ``problems`` + 2).
    """
    problems = _check_problems(problems)
    counts, _ = _solved_counts(model, tokenizer, problems, 1, 1.0, max_new_tokens, batch_size, 0, True, task)
    return sum(counts) / len(problems)


def pass_at_k(model, tokenizer, problems: Sequence[Problem], k: int = 1, *, n: int | None = None,
              temperature: float = 1.0, max_new_tokens: int | None = None, batch_size: int = 256,
              seed: int = 0, task=None) -> float:
    """Mean unbiased pass@k over ``problems`` from ``n >= k`` samples each (default ``n = k``).

    A sample passes when its reward is 1 (correct and well formed). pass@1 with ``n`` samples
    is the sampled accuracy at ``temperature``. ``task``: as in :func:`accuracy`.
    """
    problems = _check_problems(problems)
    n = k if n is None else n
    V.integer("k", k)
    V.integer("n", n, k)  # at least k samples to choose k from
    counts, _ = _solved_counts(model, tokenizer, problems, n, temperature, max_new_tokens, batch_size, seed, False,
                               task)
    return sum(pass_at_k_estimator(n, c, k) for c in counts) / len(problems)


def evaluate(model, tokenizer, problems: Sequence[Problem], ks: Sequence[int] = (1, 8), *, n: int = 16,
             temperature: float = 1.0, max_new_tokens: int | None = None, batch_size: int = 256,
             seed: int = 0, task=None) -> dict:
    """Greedy accuracy, pass@k for each k in ``ks`` (one set of ``n`` samples), and the mean sampled reward.

    ``task``: as in :func:`accuracy`."""
    problems = _check_problems(problems)
    if not ks or any(not isinstance(k, int) or not 1 <= k <= n for k in ks):
        raise ValueError(f"ks must be integers in [1, n={n}], got {ks!r}")
    counts, r = _solved_counts(model, tokenizer, problems, n, temperature, max_new_tokens, batch_size, seed, False,
                               task)
    result = {"accuracy": accuracy(model, tokenizer, problems, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   task=task)}
    for k in ks:
        result[f"pass@{k}"] = sum(pass_at_k_estimator(n, c, k) for c in counts) / len(problems)
    result["mean_reward"] = float(r.mean())
    return result


__all__ = [
    "SequenceBatch", "Rollout", "position_ids_from_mask", "encode_prompts", "encode_completions", "generate",
    "response_logprobs_from_logits", "sequence_logprobs", "pass_at_k_estimator", "accuracy", "pass_at_k",
    "evaluate",
]
