"""Tests of the small-LM substrate: tokenizer, model presets and loading, task and rewards, rollouts."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import itertools
import math
import random

import pytest
import torch

from rlcourse.lm import (
    PRESETS,
    ArithmeticTask,
    Problem,
    accuracy,
    batch_rewards,
    build_model,
    build_tokenizer,
    check_text,
    count_parameters,
    encode_completions,
    encode_prompts,
    evaluate,
    generate,
    is_correct,
    is_well_formed,
    load_model,
    load_tokenizer,
    make_preference_pairs,
    math_verify_correct,
    pass_at_k,
    pass_at_k_estimator,
    pick_device,
    preference,
    response_logprobs_from_logits,
    reward,
    save_model,
    sequence_logprobs,
    sft_examples,
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_model("tiny", len(tok), seed=0, tokenizer=tok).eval()


@pytest.fixture(scope="module")
def prompts():
    return ["12+7=", "3-1=", "45+54=", "9="]  # different lengths, so the batch is left-padded


# -- tokenizer --------------------------------------------------------------------------------
def test_tokenizer_round_trip_one_token_per_character(tok):
    text = "12+7=19 what is 3*4?"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)


def test_tokenizer_pads_on_the_left(tok):
    ids, att = encode_prompts(tok, ["1+1=", "12+13="])
    assert ids.shape == att.shape == (2, 7)
    assert att[0].tolist() == [0, 0, 1, 1, 1, 1, 1] and ids[0, :2].tolist() == [tok.pad_token_id] * 2
    assert ids[0, 2] == tok.bos_token_id


def test_tokenizer_save_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    tok2 = load_tokenizer(tmp_path)
    text = ["7*8=56", "100-1=99"]
    assert tok2(text, padding=True)["input_ids"] == tok(text, padding=True)["input_ids"]
    assert tok2.padding_side == "left" and tok2.get_vocab() == tok.get_vocab()


def test_unknown_characters_raise_value_error_naming_them(tok):
    with pytest.raises(ValueError, match=r"prompts\[1\].*'€'"):
        encode_prompts(tok, ["1+1=", "2€3="])
    with pytest.raises(ValueError, match="texts"):
        check_text(tok, ["ABC"])  # upper case is outside the alphabet
    assert check_text(tok, ["1<pad>2"]) == ["1<pad>2"]  # a written-out special token is a known token


# -- model --------------------------------------------------------------------------------------
def test_tiny_and_small_parameter_counts(tok):
    assert 0.5e6 <= count_parameters(build_model("tiny", len(tok))) <= 2e6
    with torch.device("meta"):  # no memory, no init time: just the shapes
        assert 10e6 <= count_parameters(build_model("small", len(tok))) <= 100e6


def test_build_model_is_reproducible_from_seed(tok):
    a, b, c = (build_model("tiny", len(tok), seed=s) for s in (3, 3, 4))
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_pick_device_prefers_accelerators_and_obeys_override():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device().type == expected
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="override"):
        pick_device("not-a-device")


def test_save_and_load_model_round_trip(model, tok, tmp_path):
    save_model(model, tok, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    m2, tok2 = load_model(tmp_path / "m", device="cpu")
    ids, att = encode_prompts(tok2, ["12+7="])
    with torch.no_grad():
        assert torch.allclose(model(ids, attention_mask=att).logits, m2(ids, attention_mask=att).logits, atol=1e-6)


def test_load_any_local_hf_causal_lm_directory(tok, tmp_path):
    """A GPT-2 (another architecture) saved locally loads, samples, and recomputes its log-probs."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=1, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    m, t = load_model(str(tmp_path / "gpt2"), device="cpu")
    assert type(m).__name__ == "GPT2LMHeadModel"
    ro = generate(m, t, ["1+2=", "30+4="], group_size=2, max_new_tokens=4, seed=0)
    with torch.no_grad():
        lp = sequence_logprobs(m, ro.input_ids, ro.attention_mask, ro.response_mask)
    assert torch.allclose(lp, ro.logprobs, atol=1e-5)


def test_load_model_rejects_unknown_preset_missing_path_and_non_safetensors(tmp_path):
    with pytest.raises(ValueError, match="path_or_preset"):
        load_model("huge")
    with pytest.raises(ValueError, match="path_or_preset"):
        load_model("some-org/some-model")  # looks like a hub id: must not be downloaded
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="safetensors"):
        load_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="preset"):
        build_model("medium")
    model, tok = load_model("tiny", device="cpu")
    assert set(PRESETS) == {"tiny", "small"} and model.config.vocab_size == len(tok)


# -- task and reward ----------------------------------------------------------------------------
@pytest.mark.parametrize("completion, finished, expected", [
    ("19", True, 1.0),      # correct
    (" 19 ", True, 1.0),    # surrounding spaces tolerated
    ("019", True, 1.0),     # the same integer
    ("18", True, 0.0),      # wrong, well formed
    ("-19", True, 0.0),
    ("19abc", True, 0.5),   # math-verify finds 19; malformed
    ("19", False, 0.5),     # did not stop
    ("1 9", True, -0.5),    # math-verify reads 9: wrong and malformed
    ("abc", True, -0.5),
    ("", True, -0.5),
    ("1<pad>9", True, -0.5),
])
def test_reward_cases(completion, finished, expected):
    assert reward(completion, "19", finished) == expected


def test_reward_of_negative_answers_and_batch_rewards():
    assert reward("-3", "-3") == 1.0 and reward("3", "-3") == 0.0
    r = batch_rewards(["19", "18", "x"], ["19", "19", 19], finished=torch.tensor([True, True, True]))
    assert r.dtype == torch.float32 and r.tolist() == [1.0, 0.0, -0.5]
    with pytest.raises(ValueError, match="answers"):
        batch_rewards(["1"], ["1", "2"])


def test_finished_flags_default_to_true_and_must_have_one_per_entry():
    from rlcourse.lm.task import finished_flags

    assert finished_flags(None, 3) == [True, True, True]
    assert finished_flags(torch.tensor([True, False]), 2) == [True, False]
    with pytest.raises(ValueError, match="finished has 1 entries but prompts has 2"):
        finished_flags([True], 2, "prompts")
    # every caller refuses a wrong length instead of zipping it short
    with pytest.raises(ValueError, match="finished has 1 entries but completions has 2"):
        batch_rewards(["1", "2"], ["1", "2"], finished=[True])


def test_integer_fast_path_agrees_with_math_verify():
    rng = random.Random(0)
    answers = [str(rng.randrange(-200, 2000)) for _ in range(40)]
    for ans in answers:
        a = int(ans)
        for c in {ans, str(a + 1), str(a - 10), f" {ans}", f"0{abs(a)}", str(-a), "0", "-0"}:
            assert is_correct(c, ans) == math_verify_correct(c, ans), (c, ans)
    assert is_well_formed(" 12 ") and not is_well_formed("12", finished=False) and not is_well_formed("1 2")


def test_train_and_held_out_splits_are_disjoint():
    task = ArithmeticTask(digits=2, ops="+-")
    train = set(task.sample(5000, "train", seed=1))
    held = set(task.held_out(300))
    assert not train & held
    assert all(not task.is_held_out(p) for p in train) and all(task.is_held_out(p) for p in held)
    flipped = {Problem(p.b, p.op, p.a) for p in held if p.op == "+"}  # commutative twins stay held out
    assert not train & flipped
    share = sum(task.is_held_out(Problem(a, "+", b)) for a in range(100) for b in range(100)) / 1e4
    assert abs(share - task.held_out_fraction) < 0.02
    assert task.sample(10, seed=5) == task.sample(10, seed=5) != task.sample(10, seed=6)
    assert ArithmeticTask(split_seed=1).held_out(50) != task.held_out(50)


def test_task_difficulty_and_bad_configuration():
    task = ArithmeticTask(digits=3, ops="*", allow_negative=True)
    p = task.sample(20, seed=0)
    assert all(x.op == "*" and x.a < 1000 and x.b < 1000 and int(x.answer) == x.a * x.b for x in p)
    assert all(int(x.answer) >= 0 for x in ArithmeticTask(ops="-").sample(200))
    assert ArithmeticTask(digits=2, ops="+-*").max_answer_chars == 4
    for kwargs, name in [({"digits": 0}, "digits"), ({"ops": "/"}, "ops"), ({"held_out_fraction": 1.0},
                                                                            "held_out_fraction")]:
        with pytest.raises(ValueError, match=name):
            ArithmeticTask(**kwargs)
    with pytest.raises(ValueError, match="split"):
        ArithmeticTask().sample(3, "test")


def test_sft_examples_are_wrong_by_a_small_amount_at_the_given_rate():
    task = ArithmeticTask()
    ex = sft_examples(2000, wrong_fraction=0.3, seed=0, task=task)
    wrong = [e for e in ex if not e["correct"]]
    assert abs(len(wrong) / len(ex) - 0.3) < 0.04
    assert all(e["completion"] == e["answer"] for e in ex if e["correct"])
    assert all(0 < abs(int(e["completion"]) - int(e["answer"])) <= 2 and int(e["completion"]) >= 0 for e in wrong)
    prompts = {e["prompt"] for e in ex}
    assert not prompts & {p.prompt for p in task.held_out(300)}
    assert all(e["completion"] == str(int(e["answer"]) + 1)
               for e in sft_examples(200, 1.0, offsets=(1,)))  # a systematic error
    with pytest.raises(ValueError, match="wrong_fraction"):
        sft_examples(3, wrong_fraction=1.5)


def test_preference_oracle_orders_by_reward_then_by_distance():
    assert preference("19", "18", "19") == 1          # correct beats wrong
    assert preference("x", "18", "19") == -1          # well formed beats malformed
    assert preference("18", "25", "19") == 1          # tie on reward: closer wins
    assert preference("18", "20", "19") == 0          # equal distance: discarded
    assert preference("18", "25", "19", tie_break="discard") == 0
    assert preference("19", "19", "19", finished_a=False) == -1  # stopping matters


def test_make_preference_pairs_from_groups():
    prompts = ["1+1="] * 4 + ["5+5="] * 4
    comps = ["2", "3", "x", "2", "10", "10", "10", "10"]
    pairs = make_preference_pairs(prompts, comps, ["2"] * 4 + ["10"] * 4, group_size=4)
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("2", "3"), ("2", "x"), ("3", "x")}
    assert all(p["prompt"] == "1+1=" for p in pairs)  # the second group has nothing to compare
    assert len(make_preference_pairs(prompts, comps, ["2"] * 4 + ["10"] * 4, group_size=4,
                                     max_pairs_per_group=1)) == 1
    with pytest.raises(ValueError, match="group_size"):
        make_preference_pairs(prompts, comps, ["2"] * 8, group_size=3)
    with pytest.raises(ValueError, match="same prompt"):
        make_preference_pairs(prompts, comps, ["2"] * 8, group_size=8)


# -- rollouts -------------------------------------------------------------------------------------
def _first_eos(row, eos):
    row = row.tolist()
    return row.index(eos) if eos in row else None


def test_rollout_masks_exclude_prompt_padding_and_everything_after_eos(model, tok, prompts):
    G, T = 4, 24
    ro = generate(model, tok, prompts, group_size=G, max_new_tokens=T, temperature=4.0, seed=1)  # eos often early
    N, P = len(prompts) * G, ro.prompt_length
    assert ro.input_ids.shape == ro.attention_mask.shape == (N, P + ro.response_mask.shape[1])
    assert ro.prompts == [p for p in prompts for _ in range(G)]
    prompt_ids, prompt_att = encode_prompts(tok, prompts)
    assert torch.equal(ro.input_ids[:, :P], prompt_ids.repeat_interleave(G, 0))
    assert torch.equal(ro.attention_mask[:, :P], prompt_att.repeat_interleave(G, 0))
    eos, n_early = tok.eos_token_id, 0
    for i in range(N):
        resp, m = ro.response_ids[i], ro.response_mask[i]
        k = _first_eos(resp, eos)
        length = k + 1 if k is not None else resp.numel()
        assert m.tolist() == [1.0] * length + [0.0] * (resp.numel() - length)
        assert bool(ro.finished[i]) == (k is not None)
        assert (resp[length:] == tok.pad_token_id).all()          # nothing after eos but padding
        assert (ro.logprobs[i][length:] == 0).all() and (ro.logprobs[i][:length] < 0).all()
        assert torch.equal(ro.attention_mask[i, P:], m.long())
        n_early += k is not None and length < resp.numel()
    assert n_early > 0  # the case that matters actually happened


def test_generate_is_reproducible_and_greedy_is_argmax(model, tok, prompts):
    a = generate(model, tok, prompts, 3, 5, 1.0, seed=7)
    b = generate(model, tok, prompts, 3, 5, 1.0, seed=7)
    assert torch.equal(a.input_ids, b.input_ids) and a.completions == b.completions
    g = generate(model, tok, prompts, 2, 5, 1.0, greedy=True)
    assert torch.equal(g.input_ids[0::2], g.input_ids[1::2])  # greedy: every member of a group is identical
    with torch.no_grad():
        logits = model(g.input_ids, attention_mask=g.attention_mask,
                       position_ids=(g.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    P = g.prompt_length
    pred = logits[:, P - 1:-1].argmax(-1)
    m = g.response_mask.bool()
    assert torch.equal(pred[m], g.response_ids[m])


@pytest.mark.parametrize("temperature, max_new_tokens", [(1.0, 8), (0.7, 8), (1.5, 8), (4.0, 40)])
def test_sampling_logprobs_equal_recomputed_logprobs_so_ratio_is_one(model, tok, prompts, temperature,
                                                                     max_new_tokens, monkeypatch):
    """(4.0, 40): many rows stop early, so finished rows leave the sampling batch on the way."""
    from transformers import DynamicCache

    dropped = []
    select = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices",
                        lambda self, idx: (dropped.append(len(idx)), select(self, idx))[1])
    ro = generate(model, tok, prompts, group_size=4, max_new_tokens=max_new_tokens, temperature=temperature,
                  seed=0)
    with torch.no_grad():
        lp = sequence_logprobs(model, ro.input_ids, ro.attention_mask, ro.response_mask, temperature)
    assert (lp - ro.logprobs).abs().max() < 1e-5
    ratio = torch.exp(lp - ro.logprobs)[ro.response_mask.bool()]
    assert (ratio - 1).abs().max() < 1e-5
    if max_new_tokens == 40:
        assert dropped, "the finished-rows path was not exercised"


def test_encode_completions_rebuilds_the_rollout_layout(model, tok, prompts):
    ro = generate(model, tok, prompts, group_size=2, max_new_tokens=6, temperature=3.0, seed=3)
    b = encode_completions(tok, ro.prompts, ro.completions, ro.finished)
    T = b.response_mask.shape[1]
    assert b.prompt_length == ro.prompt_length and torch.equal(b.input_ids[:, :b.prompt_length + T],
                                                                ro.input_ids[:, :b.prompt_length + T])
    assert torch.equal(b.response_mask, ro.response_mask[:, :T]) and ro.response_mask[:, T:].sum() == 0
    with torch.no_grad():
        lp = sequence_logprobs(model, b.input_ids, b.attention_mask, b.response_mask, 3.0)
    assert torch.allclose(lp, ro.logprobs[:, :T], atol=1e-5)


def test_changing_padded_tokens_changes_neither_logprobs_nor_gradient(tok, prompts):
    model = build_model("tiny", len(tok), seed=1, tokenizer=tok)
    ro = generate(model, tok, prompts, group_size=2, max_new_tokens=10, temperature=4.0, seed=2)
    assert (ro.attention_mask == 0).any() and (ro.response_mask == 0).any()

    def loss_and_grad(input_ids):
        model.zero_grad()
        lp = sequence_logprobs(model, input_ids, ro.attention_mask, ro.response_mask)
        loss = -(lp * ro.response_mask).sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss0, g0 = loss_and_grad(ro.input_ids)
    garbled = ro.input_ids.clone()
    pad_pos = ro.attention_mask == 0  # left padding of the prompts and everything after eos
    garbled[pad_pos] = torch.randint(4, len(tok), (int(pad_pos.sum()),))
    loss1, g1 = loss_and_grad(garbled)
    assert torch.allclose(loss0, loss1, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g0, g1))


def test_changing_logits_at_padded_positions_changes_neither_loss_nor_gradient():
    torch.manual_seed(0)
    N, P, T, V = 3, 4, 5, 7
    ids = torch.randint(0, V, (N, P + T))
    rmask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float32)
    logits = torch.randn(N, P + T, V, requires_grad=True)
    lp = response_logprobs_from_logits(logits, ids, rmask)
    loss = -(lp * rmask).sum()
    (g,) = torch.autograd.grad(loss, logits)
    # positions whose logits score a padded token, plus the whole prompt except its last position
    scored_pad = torch.zeros(N, P + T, dtype=torch.bool)
    scored_pad[:, P - 1:-1] = rmask == 0
    scored_pad[:, :P - 1] = True
    scored_pad[:, -1] = True
    assert (g[scored_pad] == 0).all()
    changed = (logits.detach() + 50.0 * torch.randn(N, P + T, V) * scored_pad[..., None]).requires_grad_()
    lp2 = response_logprobs_from_logits(changed, ids, rmask)
    loss2 = -(lp2 * rmask).sum()
    (g2,) = torch.autograd.grad(loss2, changed)
    assert torch.equal(loss, loss2) and torch.equal(g, g2)
    assert (lp2[rmask == 0] == 0).all()


# -- evaluation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_estimator_matches_brute_force_over_subsets(n):
    for c in range(n + 1):
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert math.isclose(pass_at_k_estimator(n, c, k), brute, abs_tol=1e-12)
    with pytest.raises(ValueError, match="k"):
        pass_at_k_estimator(4, 1, 5)
    assert pass_at_k_estimator(200, 1, 1) == pytest.approx(1 / 200)


def test_pass_at_k_accuracy_and_evaluate_on_a_model(model, tok):
    problems = ArithmeticTask().held_out(6)
    acc = accuracy(model, tok, problems)
    p1 = pass_at_k(model, tok, problems, k=1, n=4, seed=0)
    p4 = pass_at_k(model, tok, problems, k=4, n=4, seed=0)
    res = evaluate(model, tok, problems, ks=(1, 4), n=4, seed=0)
    assert res["pass@1"] == p1 and res["pass@4"] == p4 and res["accuracy"] == acc
    assert 0 <= p1 <= p4 <= 1 and -0.5 <= res["mean_reward"] <= 1


# -- bad inputs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    ({"group_size": 0}, "group_size"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 100}, "max_new_tokens"),  # past the tiny preset's 64 positions
    ({"prompts": []}, "prompts"),
    ({"prompts": "1+1="}, "prompts"),
])
def test_generate_rejects_bad_inputs_naming_the_argument(model, tok, kwargs, name):
    args = {"prompts": ["1+1="], "group_size": 2, "max_new_tokens": 4, "temperature": 1.0} | kwargs
    with pytest.raises(ValueError, match=name):
        generate(model, tok, **args)


def test_sequence_logprobs_and_evaluation_reject_bad_inputs(model, tok):
    ro = generate(model, tok, ["1+1="], 2, 3, seed=0)
    with pytest.raises(ValueError, match="temperature"):
        sequence_logprobs(model, ro.input_ids, ro.attention_mask, ro.response_mask, 0.0)
    with pytest.raises(ValueError, match="response_mask"):
        sequence_logprobs(model, ro.input_ids, ro.attention_mask, ro.response_mask * 0.5)
    with pytest.raises(ValueError, match="attention_mask"):
        sequence_logprobs(model, ro.input_ids, ro.attention_mask[:, 1:], ro.response_mask)
    with pytest.raises(ValueError, match="problems"):
        accuracy(model, tok, [])
    with pytest.raises(ValueError, match="n must"):
        pass_at_k(model, tok, ArithmeticTask().held_out(2), k=4, n=2)
