"""The Bradley–Terry reward model: its loss, its API (score, values, save/load), resuming, and bad input."""

from __future__ import annotations

import math
import types

import pytest
import torch

from conftest import assert_resume_reproduces
from rlcourse.lm import ArithmeticTask, build_model, build_tokenizer, encode_completions
from rlcourse.train import reward_model as rm_module
from rlcourse.train.common import NonFiniteLossError
from rlcourse.lm import RewardModel, oracle_pairs, pair_accuracy, pair_kind
from rlcourse.lm.reward_model import rule_reward
from rlcourse.train.reward_model import RewardModelConfig, make_pair_data, train_reward_model

TASK = ArithmeticTask(digits=2, ops="+-")


@pytest.fixture(scope="module")
def lm():
    tok = build_tokenizer()
    return build_model("tiny", len(tok), seed=0, tokenizer=tok), tok


def easy_pairs(n: int, seed: int, split: str = "train") -> list[dict]:
    """Chosen: the right answer; rejected: the right answer followed by a letter (malformed, reward 0.5)."""
    return [{"prompt": p.prompt, "chosen": p.answer, "rejected": p.answer + "a", "answer": p.answer}
            for p in TASK.sample(n, split, seed=seed)]


PAIRS = {"train": easy_pairs(64, 0), "held_out": easy_pairs(16, 1, "held_out")}


def small_cfg(**kw) -> RewardModelConfig:
    base = dict(steps=12, lr=1e-3, batch_size=16, warmup_steps=2, checkpoint_every=1, extra_layers=0, sft_coef=0.0)
    base.update(kw)
    return RewardModelConfig(**base)


def test_bt_loss_starts_at_log2_decreases_and_train_pair_accuracy_rises(lm):
    model, tok = lm
    res = train_reward_model(small_cfg(steps=15), model, tok, task=TASK, pairs=PAIRS, progress=False)
    losses = [r["loss"] for r in res.history]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-7)  # zero head: every score 0, P = 1/2
    assert sum(losses[-3:]) / 3 < losses[0] - 0.1
    assert res.before["pair_accuracy"] == 0.5  # all ties
    assert res.after["train_pair_accuracy"] > 0.9
    assert res.after["pair_accuracy"] > 0.9
    # the policy it was built from is untouched
    assert all(p.grad is None for p in model.parameters())


def test_auxiliary_language_modelling_loss_on_the_chosen_responses(lm):
    model, tok = lm
    res = train_reward_model(small_cfg(steps=6, extra_layers=1, sft_coef=1.0), model, tok, task=TASK, pairs=PAIRS,
                             progress=False)
    h = res.history
    assert h[0]["bt_loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert h[0]["loss"] == pytest.approx(h[0]["bt_loss"] + h[0]["sft_loss"], abs=1e-5)
    assert h[-1]["sft_loss"] < h[0]["sft_loss"]  # the backbone learns the chosen responses
    assert res.model.backbone.config.num_hidden_layers == model.config.num_hidden_layers + 1


def test_score_reads_the_last_non_pad_token_and_ignores_left_padding(lm):
    model, tok = lm
    rm = RewardModel.from_causal_lm(model, tok)
    torch.nn.init.normal_(rm.head.weight, std=0.1)
    prompts, completions = ["1+2=", "33-14="], ["3", "19"]
    together = rm.score(prompts, completions)
    alone = torch.cat([rm.score([p], [c]) for p, c in zip(prompts, completions)])
    assert torch.allclose(together, alone, atol=1e-5)
    b = encode_completions(tok, prompts, completions)
    h = rm.hidden_states(b.input_ids, b.attention_mask)
    last = b.attention_mask.shape[1] - 1 - b.attention_mask.flip(-1).argmax(-1)  # the <eos> of each row
    assert torch.equal(b.input_ids[torch.arange(2), last], torch.full((2,), tok.eos_token_id))
    assert torch.allclose(together, rm.head(h[torch.arange(2), last]).squeeze(-1), atol=1e-6)
    # values: V(s_t) is read where the logits for token t are read, and is 0 off the mask
    v = rm.values(b.input_ids, b.attention_mask, b.response_mask)
    T = b.response_mask.shape[1]
    expect = rm.head(h[:, -(T + 1):-1]).squeeze(-1) * b.response_mask
    assert torch.allclose(v, expect, atol=1e-6) and bool((v[b.response_mask == 0] == 0).all())
    # the drop-in reward function gives the same scores
    assert torch.allclose(rm.as_reward_fn()(prompts, completions, ["3", "19"], None), together)


def test_extra_layers_start_as_the_identity_and_save_load_round_trip(lm, tmp_path):
    model, tok = lm
    base, deep = RewardModel.from_causal_lm(model, tok), RewardModel.from_causal_lm(model, tok, extra_layers=2)
    b = encode_completions(tok, ["1+2=", "33-14="], ["3", "19"])
    assert deep.backbone.config.num_hidden_layers == base.backbone.config.num_hidden_layers + 2
    assert torch.equal(base.hidden_states(b.input_ids, b.attention_mask),
                       deep.hidden_states(b.input_ids, b.attention_mask))
    torch.nn.init.normal_(deep.head.weight, std=0.1)
    torch.nn.init.constant_(deep.head.bias, 0.3)
    for p in deep.backbone.layers[-1].parameters():
        torch.nn.init.normal_(p, std=0.02)
    deep.save(tmp_path / "rm")
    assert (tmp_path / "rm" / "model.safetensors").exists() and (tmp_path / "rm" / "head.safetensors").exists()
    loaded = RewardModel.load(tmp_path / "rm", "cpu")
    assert torch.allclose(loaded.score(["1+2=", "33-14="], ["3", "19"]), deep.score(["1+2=", "33-14="], ["3", "19"]),
                          atol=1e-6)
    with pytest.raises(ValueError, match="head.safetensors"):
        RewardModel.load(tmp_path, "cpu")


def digit_biased_model(tok):
    """An untrained model whose logits favour digits and ``<eos>``, so that its samples often finish."""
    from transformers import LlamaForCausalLM

    class Biased(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits + self.logit_bias
            return out

    model = build_model("tiny", len(tok), seed=0, tokenizer=tok)
    model.__class__ = Biased
    bias = torch.zeros(len(tok))
    bias[[tok.convert_tokens_to_ids(c) for c in "0123456789"] + [tok.eos_token_id]] = 3.0
    model.register_buffer("logit_bias", bias)
    return model


def test_oracle_pairs_prefer_the_higher_rule_reward(lm):
    _, tok = lm
    model = digit_biased_model(tok)
    probs = TASK.sample(6, "train", seed=3)
    pairs = oracle_pairs(model, tok, probs, group_size=16, temperature=1.0, max_new_tokens=4, seed=0)
    assert len(pairs) >= 5
    for p in pairs:
        r_c = rule_reward([p["prompt"]], [p["chosen"]], [p["answer"]])[0]
        r_r = rule_reward([p["prompt"]], [p["rejected"]], [p["answer"]])[0]
        assert r_c >= r_r and p["chosen"] != p["rejected"]
    fake = [{"prompt": "1+2=", "chosen": "3", "rejected": "4", "answer": "3"},
            {"prompt": "1+2=", "chosen": "4", "rejected": "7", "answer": "3"}]
    assert [pair_kind(p) for p in fake] == ["correct_vs_wrong", "closer_vs_farther"]


def test_held_out_pairs_come_from_held_out_prompts_only(lm, monkeypatch):
    model, tok = lm
    seen = {}

    def fake_oracle(model, tokenizer, problems, **kw):
        split = "held_out" if TASK.is_held_out(problems[0]) else "train"
        seen[split] = problems
        return [{"prompt": p.prompt, "chosen": p.answer, "rejected": p.answer + "1", "answer": p.answer}
                for p in problems]

    monkeypatch.setattr(rm_module, "oracle_pairs", fake_oracle)
    data = make_pair_data(small_cfg(n_prompts=20, eval_prompts=10), model, tok, TASK)
    assert len(data["train"]) == 20 and len(data["held_out"]) == 10
    assert not any(TASK.is_held_out(p) for p in seen["train"])
    assert all(TASK.is_held_out(p) for p in seen["held_out"])


def test_sampled_pairs_are_saved_with_the_run_and_read_back_when_resuming(lm, monkeypatch, tmp_path):
    model, tok = lm
    calls = []

    def fake_oracle(model, tokenizer, problems, **kw):
        calls.append(len(problems))
        return [{"prompt": p.prompt, "chosen": p.answer, "rejected": p.answer + "1", "answer": p.answer}
                for p in problems]

    monkeypatch.setattr(rm_module, "oracle_pairs", fake_oracle)
    run = types.SimpleNamespace(path=tmp_path)  # what make_pair_data reads of a Run
    cfg = small_cfg(n_prompts=20, eval_prompts=10)
    first = make_pair_data(cfg, model, tok, TASK, run)
    assert (tmp_path / "pairs.json").exists() and calls == [20, 10]
    assert make_pair_data(cfg, model, tok, TASK, run) == first
    assert calls == [20, 10]  # read back from pairs.json, not sampled again


def test_resume_reproduces_the_uninterrupted_run(lm, tmp_path):
    model, tok = lm
    assert_resume_reproduces(lambda out, cb: train_reward_model(small_cfg(steps=4, out=out), model, tok, task=TASK,
                                                                pairs=PAIRS, progress=False, callback=cb), tmp_path)
    assert (tmp_path / "resumed" / "final" / "head.safetensors").exists()


def test_non_finite_loss_stops_training(lm, monkeypatch):
    model, tok = lm
    monkeypatch.setattr(rm_module, "bradley_terry_loss", lambda rc, rr, margin=0.0: (rc - rr).mean() * float("nan"))
    with pytest.raises(NonFiniteLossError, match="reward model loss"):
        train_reward_model(small_cfg(steps=2), model, tok, task=TASK, pairs=PAIRS, progress=False)


@pytest.mark.parametrize("field, value", [("lr", -1.0), ("steps", -1), ("batch_size", 0), ("group_size", 1),
                                          ("temperature", 0.0), ("extra_layers", -1), ("margin", float("nan")),
                                          ("min_lr_ratio", 2.0), ("n_prompts", 0), ("grad_clip", -1.0)])
def test_bad_config_values_are_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RewardModelConfig(**{field: value})


def test_pair_accuracy_counts_ties_as_half(lm):
    model, tok = lm
    rm = RewardModel.from_causal_lm(model, tok)
    out = pair_accuracy(rm, tok, PAIRS["held_out"])
    assert out["pair_accuracy"] == 0.5 and out["margin"] == 0.0
