r"""Tokenised batches for any Hugging Face tokenizer: the SFT batch and the prompt/response batches.

Nothing here knows the course's character-level tokenizer: these helpers take any
``PreTrainedTokenizerBase`` (BPE, WordPiece, character level...), tokenise prompt and response
*separately* (so a response never merges with the end of its prompt into one token, and the
boundary between them is known exactly), concatenate the ids, and pad on the right.

The SFT batch follows the usual causal-LM shift. With ``full`` the padded
prompt + response ids of a row,

.. math::

    \texttt{input\_ids} = \texttt{full}[:, :-1],\qquad \texttt{labels} = \texttt{full}[:, 1:],

so ``labels[:, t]`` is the token that ``input_ids[:, :t+1]`` must predict, and
``response_mask[:, t] = 1`` exactly when ``labels[:, t]`` is a response token (not prompt, not
padding). The loss is then :func:`rlcourse.losses.sft_loss` (``logits`` of ``input_ids``,
``labels``, ``response_mask``). The course's own character check
(:func:`rlcourse.lm.tokenizer.check_text`) is not applied here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["SFTBatch", "PromptResponseBatch", "pad_token_id", "tokenize_texts", "sft_batch",
           "prompt_batch", "prompt_response_batch", "chat_prompts"]


@dataclass
class SFTBatch:
    """Right-padded SFT batch: ``input_ids``, ``labels``, ``response_mask``, ``attention_mask``, all (B, L - 1)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    response_mask: torch.Tensor
    attention_mask: torch.Tensor


@dataclass
class PromptResponseBatch:
    """Prompt + response rows, right-padded to (B, L).

    ``response_mask[i, t] = 1`` where token ``t`` of row ``i`` belongs to the response;
    ``prompt_lengths[i]`` is the number of prompt tokens of row ``i``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_lengths: torch.Tensor


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id; a clear error when it has neither."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError("tokenizer has neither a pad_token nor an eos_token: set tokenizer.pad_token first")


def _texts(name: str, texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{name} must be a list of strings, got {type(texts).__name__}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{name}[{bad[0]}] is not a string: {texts[bad[0]]!r}")
    return list(texts)


def tokenize_texts(tokenizer, texts: Sequence[str], *, name: str = "texts") -> list[list[int]]:
    """Token ids of each text, without special tokens (each text on its own)."""
    texts = _texts(name, texts)
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def _eos(tokenizer, add_eos: bool) -> list[int]:
    if not add_eos:
        return []
    if tokenizer.eos_token_id is None:
        raise ValueError("add_eos=True but the tokenizer has no eos_token")
    return [int(tokenizer.eos_token_id)]


def prompt_response_batch(tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                          add_eos: bool = False) -> PromptResponseBatch:
    """Prompt and response tokenised separately, concatenated, right-padded; the response positions marked.

    Args:
        tokenizer: any Hugging Face tokenizer.
        prompts, responses: lists of the same length.
        add_eos: append the eos token to every response (and count it as response).

    Returns:
        :class:`PromptResponseBatch`.
    """
    prompts, responses = _texts("prompts", prompts), _texts("responses", responses)
    if len(prompts) != len(responses):
        raise ValueError(f"prompts has {len(prompts)} entries but responses has {len(responses)}")
    if not prompts:
        raise ValueError("prompts is empty: nothing to batch")
    p_ids = tokenize_texts(tokenizer, prompts, name="prompts")
    eos = _eos(tokenizer, add_eos)
    r_ids = [ids + eos for ids in tokenize_texts(tokenizer, responses, name="responses")]
    empty = [i for i, r in enumerate(r_ids) if not r]
    if empty:
        raise ValueError(f"responses[{empty[0]}] tokenizes to no token: a response must have at least one")
    pad = pad_token_id(tokenizer)
    length = max(len(p) + len(r) for p, r in zip(p_ids, r_ids))
    B = len(prompts)
    input_ids = torch.full((B, length), pad, dtype=torch.long)
    attention = torch.zeros(B, length, dtype=torch.long)
    response = torch.zeros(B, length, dtype=torch.long)
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attention[i, :n] = 1
        response[i, len(p):n] = 1
    return PromptResponseBatch(input_ids, attention, response, torch.tensor([len(p) for p in p_ids]))


def sft_batch(tokenizer, prompts: Sequence[str], outputs: Sequence[str], *, add_eos: bool = True) -> SFTBatch:
    r"""Right-padded SFT batch: ``input_ids = full[:, :-1]``, ``labels = full[:, 1:]``, mask aligned with labels.

    .. math::

        \texttt{response\_mask}[i, t] = \mathbb{1}\big[\,P_i \le t + 1 < P_i + R_i\,\big]

    with :math:`P_i` and :math:`R_i` the prompt's and the output's numbers of tokens.

    Args:
        tokenizer: any Hugging Face tokenizer (pad id: its pad token, else its eos token).
        prompts, outputs: lists of the same length; every prompt must have at least one token
            (the first output token is predicted from it).
        add_eos: append eos to every output, so the model learns to stop (default True).

    Returns:
        :class:`SFTBatch` of (B, L - 1) tensors, L the longest prompt + output.
    """
    full = prompt_response_batch(tokenizer, prompts, outputs, add_eos=add_eos)
    if bool((full.prompt_lengths == 0).any()):
        i = int((full.prompt_lengths == 0).nonzero()[0])
        raise ValueError(f"prompts[{i}] tokenizes to no token: the first output token needs a context")
    return SFTBatch(input_ids=full.input_ids[:, :-1], labels=full.input_ids[:, 1:],
                    response_mask=full.response_mask[:, 1:], attention_mask=full.attention_mask[:, :-1])


def prompt_batch(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask (the layout generation wants), (B, P) each."""
    prompts = _texts("prompts", prompts)
    if not prompts:
        raise ValueError("prompts is empty: nothing to batch")
    ids = tokenize_texts(tokenizer, prompts, name="prompts")
    pad = pad_token_id(tokenizer)
    length = max(len(p) for p in ids)
    if length == 0:
        raise ValueError("every prompt tokenizes to no token")
    input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
    attention = torch.zeros(len(ids), length, dtype=torch.long)
    for i, p in enumerate(ids):
        if p:
            input_ids[i, length - len(p):] = torch.tensor(p, dtype=torch.long)
            attention[i, length - len(p):] = 1
    return input_ids, attention


def chat_prompts(tokenizer, prompts: Sequence[str]) -> list[str]:
    """Each prompt as the text of a one-message user turn through the tokenizer's chat template,
    ending where the assistant's answer starts (``add_generation_prompt=True``).

    The text holds the template's special tokens written out (e.g. ``<|im_start|>``); encode it
    without adding special tokens again (:func:`prompt_batch`). Raises ``ValueError`` if the
    tokenizer has no chat template.
    """
    prompts = _texts("prompts", prompts)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("tokenizer has no chat_template: encode the raw prompts instead")
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]
