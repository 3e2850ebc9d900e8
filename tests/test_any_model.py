"""Any local Hugging Face causal LM in the course's own trainers (``rlcourse train ALGO --model DIR``).

A tiny ``Qwen2ForCausalLM`` (another family than the course's Llama) and a byte-level BPE tokenizer
trained here with ``tokenizers`` on the task's text, with special tokens and a Jinja chat template,
are saved with ``save_pretrained`` (safetensors) and trained through the command line. Nothing is
downloaded, no remote code is run.

The model's weights are random except for one construction that makes its samples informative:
every input embedding carries the same large component along one direction, the final norm keeps
only that direction, and the (untied) LM head reads it with weight 1 for the digits and the eos
token, 0 for the others. So it writes short digit strings that sometimes stop: the rewards of a
group differ (some well formed, some truncated), and GRPO has a non-zero gradient at step 1 —
by construction, not by what a trained model happens to sample.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings

import pytest
import torch
from safetensors.torch import load_file

from rlcourse import cli
from rlcourse.experiments import registry
from rlcourse.lm import ALPHABET, build_tokenizer, default_task, encode_prompts, load_model
from rlcourse.lm.model import check_model_dir
from rlcourse.lm.tokenizer import check_text, load_tokenizer

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]


def task_corpus() -> list[str]:
    """The task's text: problems with their answers, a few words, and every character of the alphabet."""
    return [str(p) for p in default_task().sample(2000, "train", seed=1)] + ["what is", "the answer is", ALPHABET] * 20


def bpe_tokenizer(byte_level: bool = True, corpus=None, chat_template: str | None = TEMPLATE):
    """A BPE tokenizer trained locally on ``corpus`` (byte-level: no character is ever unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    if byte_level:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
        tk.decoder = decoders.Fuse()
        trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=SPECIALS)
    tk.train_from_iterator(corpus or task_corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token="<unk>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = chat_template
    return tok


def tiny_qwen2(tok) -> torch.nn.Module:
    """A random 2-layer Qwen2 (hidden 32) whose samples are digits and eos (see the module docstring)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    wanted = [tok.convert_tokens_to_ids(d) for d in "0123456789"] + [tok.eos_token_id]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] += 4.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[wanted, 0] = 1.0
    return model


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen2")
    tok = bpe_tokenizer()
    tiny_qwen2(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _weights_changed(model_dir, run_dir) -> bool:
    before, after = load_file(os.path.join(model_dir, "model.safetensors")), load_file(run_dir / "final" / "model.safetensors")
    assert before.keys() == after.keys()
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "no-chat-template"])
def test_grpo_trains_a_local_qwen2_through_the_command_line(qwen_dir, tmp_path, chat, capsys):
    out = tmp_path / "run"
    argv = ["train", "grpo", "--model", str(qwen_dir), "--steps", "2", "--out", str(out), "--device", "cpu",
            "--quiet"] + ([] if chat else ["--no-chat-template"])
    assert cli.main(argv) == 0, capsys.readouterr().err
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [0, 1]
    assert all(math.isfinite(row["loss"]) for row in history)
    assert any(row["reward_std"] > 0 for row in history), "the construction makes rewards differ in a group"
    assert _weights_changed(qwen_dir, out)
    config = json.loads((out / "config.json").read_text())
    assert config["model_dir"] == os.path.abspath(qwen_dir)
    assert config.get("chat_template", True) is chat
    assert "run directory" in capsys.readouterr().out
    # the trained model is saved with its own tokenizer (without the template when it was not used)
    _, tok = load_model(out / "final", device="cpu")
    assert len(tok) == len(load_tokenizer(qwen_dir)) and bool(tok.chat_template) is chat


def test_the_chat_template_is_applied_to_prompts_and_can_be_turned_off(qwen_dir):
    _, tok = load_model(qwen_dir, device="cpu")
    ids, att = encode_prompts(tok, ["12+7=", "3+4="])
    texts = [tok.decode(row[m.bool()]) for row, m in zip(ids, att)]
    assert texts == ["<|im_start|>user\n12+7=<|im_end|>\n<|im_start|>assistant\n",
                     "<|im_start|>user\n3+4=<|im_end|>\n<|im_start|>assistant\n"]
    assert ids[1, 0] == tok.pad_token_id and att[1, 0] == 0 and bool(att[:, -1].all()), "left padding"
    # the markers are the tokenizer's special tokens, encoded once each (not re-split into characters)
    assert int((ids[0] == tok.convert_tokens_to_ids("<|im_start|>")).sum()) == 2
    _, raw = load_model(qwen_dir, device="cpu", chat_template=False)
    ids_raw, att_raw = encode_prompts(raw, ["12+7="])
    assert raw.decode(ids_raw[0][att_raw[0].bool()]) == "12+7="  # control: no markers without the template


def test_the_course_tokenizer_gives_the_same_prompt_ids_as_before():
    tok = build_tokenizer()
    ids, att = encode_prompts(tok, ["12+7=", "3+4="])
    char = {c: 4 + i for i, c in enumerate(ALPHABET)}  # <pad> <bos> <eos> <unk>, then the alphabet
    expected = [[1] + [char[c] for c in "12+7="], [0, 1] + [char[c] for c in "3+4="]]
    assert ids.tolist() == expected and att.tolist() == [[1] * 6, [0] + [1] * 5]
    before = tok(["12+7=", "3+4="], padding=True, padding_side="left", return_tensors="pt")  # the former code
    assert torch.equal(ids, before["input_ids"]) and torch.equal(att, before["attention_mask"])


def test_a_tokenizer_that_maps_task_characters_to_unk_is_refused_by_name():
    digits_only = bpe_tokenizer(byte_level=False, corpus=["0123456789 = 12 345"] * 10)
    with pytest.raises(ValueError, match=r"prompts\[0\] = '12\+7='.*\['\+'\].*unknown token '<unk>'"):
        encode_prompts(digits_only, ["12+7="])
    assert check_text(bpe_tokenizer(byte_level=False), ["12+7="], "prompts") == ["12+7="]  # control: trained on '+'


def test_a_tokenizer_without_a_pad_token_pads_with_eos_and_says_so(tmp_path):
    tok = bpe_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no pad token.*<\\|im_end\\|>"):
        loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token_id == loaded.eos_token_id and loaded.padding_side == "left"
    bpe_tokenizer().save_pretrained(tmp_path / "with_pad")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # control: a tokenizer with a pad token loads silently, its pad kept
        assert load_tokenizer(tmp_path / "with_pad").pad_token == "<|endoftext|>"


def _copy_without(src, dst, *, drop=(), add=None):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    for name, content in (add or {}).items():
        path = dst / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return dst


@pytest.mark.parametrize("case", ["missing", "no-config", "bin-only", "no-tokenizer", "remote-code", "not-causal"])
def test_a_bad_model_directory_is_refused_naming_the_path_and_the_problem(qwen_dir, tmp_path, case, capsys):
    bad = tmp_path / case
    if case == "no-config":
        _copy_without(qwen_dir, bad, drop=["config.json"])
    elif case == "bin-only":
        _copy_without(qwen_dir, bad, drop=["*.safetensors"], add={"pytorch_model.bin": b"\x80pickle"})
    elif case == "no-tokenizer":
        _copy_without(qwen_dir, bad, drop=["tokenizer*", "chat_template*"])
    elif case in ("remote-code", "not-causal"):
        config = json.loads((qwen_dir / "config.json").read_text())
        config.update({"model_type": "my_model", "auto_map": {"AutoModelForCausalLM": "modeling_my.MyLM"}}
                      if case == "remote-code" else {"model_type": "clip"})
        _copy_without(qwen_dir, bad, drop=["config.json"], add={"config.json": json.dumps(config)})
    why = {"missing": "does not exist|nor an existing local directory", "no-config": "has no config.json", "bin-only": r"only pickled weights",
           "no-tokenizer": "has no tokenizer", "remote-code": "declares its own code.*never run",
           "not-causal": "no causal-LM class"}[case]
    out = tmp_path / "run"
    assert cli.main(["train", "grpo", "--model", str(bad), "--steps", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and re.search(why, err), err
    assert not (out / "config.json").exists(), "nothing is written for a refused model"
    with pytest.raises(ValueError, match=why):
        load_model(bad, device="cpu")
    assert check_model_dir(qwen_dir) == str(qwen_dir)  # control: the good directory passes


def test_model_options_that_do_not_fit_are_refused(qwen_dir, capsys):
    assert cli.main(["train", "grpo", "--model", str(qwen_dir), "--preset", "small", "--steps", "1"]) == 2
    assert "--preset and --model" in capsys.readouterr().err
    assert cli.main(["train", "grpo", "--no-chat-template", "--steps", "1"]) == 2
    assert "--no-chat-template applies with --model only" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm", ["sft", "reinforce", "ppo", "dpo", "rm"])
def test_the_other_trainers_take_a_local_model(qwen_dir, tmp_path, algorithm):
    """One step of each (a small evaluation and data set), through the registry the command line calls."""
    small = {"sft": {"batch_size": 8, "warmup_steps": 1}, "reinforce": {"prompts_per_step": 4},
             "ppo": {"prompts_per_step": 4}, "dpo": {"n_prompts": 16, "batch_size": 8, "warmup_steps": 1},
             "rm": {"n_prompts": 16, "eval_prompts": 8, "batch_size": 8, "warmup_steps": 1, "sft_coef": 0.0}}
    out = tmp_path / algorithm
    res = registry.run(algorithm, progress=False, model_dir=str(qwen_dir), steps=1, out=str(out), device="cpu",
                       eval_n=8, **small[algorithm])
    assert len(res.history) == 1 and math.isfinite(res.history[0]["pg_loss" if algorithm == "ppo" else "loss"])
    assert json.loads((out / "config.json").read_text())["model_dir"] == os.path.abspath(qwen_dir)
    if algorithm != "rm":  # the policy itself (the reward model is a new network on a copy of its backbone)
        assert type(res.model).__name__ == "Qwen2ForCausalLM" and _weights_changed(qwen_dir, out)


def test_a_reward_model_with_an_lm_loss_needs_tied_embeddings(qwen_dir, tmp_path):
    with pytest.raises(ValueError, match="untied input/output embeddings.*sft_coef=0"):
        registry.run("rm", progress=False, model_dir=str(qwen_dir), steps=1, out=str(tmp_path / "rm"), device="cpu")


def test_the_reward_judges_byte_level_text_without_crashing():
    """A byte-level tokenizer can write control characters that Python's ``\\s`` calls spaces but ``int()``
    refuses ("159\\x1d"): such a completion is malformed (graded by math-verify), not an exception."""
    from rlcourse.lm import reward

    assert reward("159\x1d", "159") == 0.5 and reward("\x1d", "159") == -0.5
    assert reward(" 159\n", "159") == 1.0  # control: ASCII spaces around the integer stay well formed
