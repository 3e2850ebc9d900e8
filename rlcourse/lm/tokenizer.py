"""A character-level tokenizer for the course's small LM, built locally with ``tokenizers``.

Every character of a fixed alphabet is one token; three special tokens frame a sequence::

    "12+7="  ->  <bos> 1 2 + 7 =          (the model then writes "19" and <eos>)

The tokenizer is a ``tokenizers.Tokenizer`` (a ``WordLevel`` model over single characters,
a pre-tokenizer that splits the text into characters, a ``Fuse`` decoder that joins them
back without spaces, and a post-processor that prepends ``<bos>``) wrapped as a transformers
``PreTrainedTokenizerFast``, so it is saved and loaded with ``save_pretrained`` /
``from_pretrained`` like any Hugging Face tokenizer. Padding is on the left, as generation
needs: every prompt of a batch then ends at the same column.

Unknown characters. Inside the Hugging Face object an unknown character becomes ``<unk>``
(so that other tools, e.g. TRL, never crash on it), but every function of this package that
encodes text calls :func:`check_text` first, which raises ``ValueError`` naming the
characters that are not in the alphabet. Nothing is silently replaced on our own paths.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .quiet import quiet_transformers

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
#: Digits, the arithmetic operators, punctuation, space and lower-case letters.
ALPHABET = "0123456789+-*/=()?.,:; " + "abcdefghijklmnopqrstuvwxyz"


def build_tokenizer(alphabet: str = ALPHABET) -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer (ids: ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<unk>``=3).

    Args:
        alphabet: the characters that get a token each, in id order after the specials.

    Returns:
        A ``PreTrainedTokenizerFast`` with left padding that prepends ``<bos>`` to each text.
    """
    if not isinstance(alphabet, str) or not alphabet:
        raise ValueError(f"alphabet must be a non-empty string, got {alphabet!r}")
    if len(set(alphabet)) != len(alphabet):
        dup = sorted({c for c in alphabet if alphabet.count(c) > 1})
        raise ValueError(f"alphabet has repeated characters {dup}")
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + list(alphabet))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one char each
    tok.decoder = decoders.Fuse()  # join characters back without separators
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | os.PathLike) -> None:
    """Write the tokenizer to a local directory (``tokenizer.json`` + config)."""
    tokenizer.save_pretrained(str(directory))


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory only (never the network); left padding is enforced."""
    directory = str(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"directory {directory!r} does not exist (tokenizers are only loaded from local directories)")
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    tok.padding_side = "left"
    if tok.eos_token is None:
        raise ValueError(f"the tokenizer in {directory!r} has no eos token: rollouts stop at it and padding needs "
                         "it; set eos_token in its tokenizer_config.json")
    if tok.pad_token is None:  # many causal LMs ship without one; batches need it
        tok.pad_token = tok.eos_token
        warnings.warn(f"the tokenizer in {directory!r} has no pad token: its eos token {tok.eos_token!r} is used "
                      "as pad (padding is masked out, so this changes no result)", stacklevel=2)
    return tok


def _alphabet(tokenizer: PreTrainedTokenizerBase) -> tuple[set[str], list[str]] | None:
    """(single-character tokens, special tokens) for a character-level tokenizer, else None."""
    specials = list(tokenizer.all_special_tokens)
    chars = set(tokenizer.get_vocab()) - set(specials)
    return (chars, specials) if all(len(t) == 1 for t in chars) else None


def unknown_characters(tokenizer: PreTrainedTokenizerBase, text: str, _alpha=None) -> list[str]:
    """The characters of ``text`` that ``tokenizer`` would map to its unknown token (sorted).

    Written-out special tokens (e.g. ``"<pad>"``) count as known: they encode as themselves.
    For a tokenizer that is not character level (BPE, ...), its written-out special tokens removed
    likewise: the characters that encode to its unknown
    token on their own when the encoding of ``text`` holds it (``[unk_token]`` if none does alone).
    """
    if tokenizer.unk_token_id is None:
        return []
    alpha = _alpha if _alpha is not None else _alphabet(tokenizer)
    if alpha is not None:
        chars, specials = alpha
        if "<" in text:
            for special in specials:
                text = text.replace(special, "")
        return sorted(set(text) - chars)
    for special in tokenizer.all_special_tokens:  # a sampled special token, written out (e.g. by a rollout)
        text = text.replace(special, "")
    unk = tokenizer.unk_token_id
    if unk not in tokenizer(text, add_special_tokens=False)["input_ids"]:
        return []
    chars = sorted(c for c in set(text) if unk in tokenizer(c, add_special_tokens=False)["input_ids"])
    return chars or [tokenizer.unk_token]


def check_text(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], name: str = "texts") -> list[str]:
    """Check that ``texts`` is a non-empty list of strings the tokenizer encodes without ``<unk>``.

    Raises ``ValueError`` naming ``name`` and the offending characters.
    """
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a list of strings, got a single string {texts!r}")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{name} is empty: give at least one string")
    alpha = _alphabet(tokenizer) if tokenizer.unk_token_id is not None else None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] must be a string, got {type(t).__name__}")
        bad = unknown_characters(tokenizer, t, alpha)
        if bad:
            raise ValueError(f"{name}[{i}] = {t!r} contains characters outside the tokenizer's alphabet: {bad} "
                             f"(they would become its unknown token {tokenizer.unk_token!r}: a model cannot read or "
                             "write them)")
    return texts
