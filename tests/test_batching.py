"""Tokenised batches for any Hugging Face tokenizer, tested with a BPE tokenizer trained here (no download)."""

from __future__ import annotations

import pytest
import torch

tokenizers = pytest.importorskip("tokenizers")
from transformers import PreTrainedTokenizerFast  # noqa: E402

from rlcourse.lm.batching import prompt_batch, prompt_response_batch, sft_batch  # noqa: E402
from rlcourse.losses import sft_loss  # noqa: E402

CORPUS = ["the cat sat on the mat", "what is 12 plus 30 ? 42", "the answer is 42", "cats and mats and hats",
          "twelve plus thirty is forty two"] * 20


@pytest.fixture(scope="module")
def bpe():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    from tokenizers import decoders
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


PROMPTS = ["what is 12 plus 30 ?", "the cat"]
OUTPUTS = [" 42", " sat on the mat"]


def test_bpe_merges_more_than_one_character_per_token(bpe):
    assert len(bpe(" the mat", add_special_tokens=False)["input_ids"]) < len(" the mat")


def test_sft_batch_shifts_by_one_and_masks_exactly_the_output_tokens(bpe):
    b = sft_batch(bpe, PROMPTS, OUTPUTS)
    for i, (p, o) in enumerate(zip(PROMPTS, OUTPUTS)):
        p_ids = bpe(p, add_special_tokens=False)["input_ids"]
        o_ids = bpe(o, add_special_tokens=False)["input_ids"] + [bpe.eos_token_id]
        full = p_ids + o_ids
        n = len(full)
        assert b.input_ids[i, : n - 1].tolist() == full[:-1]
        assert b.labels[i, : n - 1].tolist() == full[1:]
        # the labels under the mask are exactly the output tokens (and eos), in order
        assert b.labels[i][b.response_mask[i].bool()].tolist() == o_ids
        assert int(b.attention_mask[i].sum()) == min(n, b.input_ids.shape[1])  # real tokens of input_ids
        assert bool((b.labels[i, n - 1:] == bpe.pad_token_id).all())
    assert b.input_ids.shape == b.labels.shape == b.response_mask.shape


def test_prompt_and_output_are_tokenized_separately_not_merged_across_the_boundary(bpe):
    # "the cat" + " sat": separately tokenised ids, whatever the joint tokenisation would merge
    b = prompt_response_batch(bpe, PROMPTS, OUTPUTS)
    i = 1
    p = bpe(PROMPTS[i], add_special_tokens=False)["input_ids"]
    assert b.input_ids[i, : len(p)].tolist() == p
    assert int(b.prompt_lengths[i]) == len(p)
    assert b.response_mask[i, : len(p)].sum() == 0


def test_sft_loss_on_the_batch_equals_cross_entropy_on_the_output_tokens(bpe):
    b = sft_batch(bpe, PROMPTS, OUTPUTS)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*b.input_ids.shape, len(bpe), generator=g, dtype=torch.float64)
    labels = torch.where(b.response_mask.bool(), b.labels, torch.full_like(b.labels, -100))
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.allclose(sft_loss(logits, b.labels, b.response_mask), expected, atol=1e-12)
    assert torch.allclose(sft_loss(logits, labels), expected, atol=1e-12)  # mask from -100 labels


def test_prompt_batch_is_left_padded(bpe):
    ids, att = prompt_batch(bpe, PROMPTS)
    short = bpe(PROMPTS[1], add_special_tokens=False)["input_ids"]
    assert ids[1, -len(short):].tolist() == short
    assert att[1].tolist() == [0] * (ids.shape[1] - len(short)) + [1] * len(short)


@pytest.mark.parametrize("call,match", [
    (lambda t: sft_batch(t, ["a"], ["b", "c"]), "prompts has 1"),
    (lambda t: sft_batch(t, "what", " 42"), "prompts must be a list"),
    (lambda t: sft_batch(t, [""], [" 42"]), "prompts\\[0\\] tokenizes to no token"),
    (lambda t: prompt_response_batch(t, ["x"], [""]), "responses\\[0\\]"),
    (lambda t: sft_batch(t, [], []), "empty"),
    (lambda t: sft_batch(t, ["a", 3], ["b", "c"]), "prompts\\[1\\]"),
])
def test_bad_batches_raise_value_error_naming_the_argument(bpe, call, match):
    with pytest.raises(ValueError, match=match):
        call(bpe)
