"""The chain task (multi-term sums written as running sums): split, answers, reward table, SFT data, bad input.

Fast: no model is trained; every batch is built from text.
"""

import random

import pytest
import torch

from rlcourse.lm import ALPHABET, FORMAT_PENALTY
from rlcourse.lm import task as arithmetic
from rlcourse.lm.chain_task import ChainProblem, ChainTask, final_answer, format_solution, parse_steps, step_errors

TASK = ChainTask()                      # the calibrated task: 2-6 one-digit terms
TASK2 = ChainTask(digits=2, max_terms=5)  # two-digit terms, for the docstring's example
P = ChainProblem((12, 7, 30, 5), "+++")


# -- the split -------------------------------------------------------------------------------

def test_held_out_split_is_deterministic_and_disjoint_from_training():
    train = TASK.sample(3000, "train", seed=1)
    held = TASK.held_out(300)
    assert TASK.held_out(300) == held                      # same problems on every call
    assert ChainTask().held_out(300) == held               # and for an equal task
    assert not set(train) & set(held)
    assert all(TASK.is_held_out(p) for p in held) and not any(TASK.is_held_out(p) for p in train)
    assert len(set(held)) == len(held)


def test_held_out_fraction_is_close_to_the_requested_share():
    rng = random.Random(0)
    draws = [TASK._draw(rng) for _ in range(20000)]
    share = sum(TASK.is_held_out(p) for p in draws) / len(draws)
    assert abs(share - TASK.held_out_fraction) < 0.01


def test_split_depends_on_split_seed():
    held0 = set(ChainTask(split_seed=0).held_out(300))
    held1 = set(ChainTask(split_seed=1).held_out(300))
    assert len(held0 & held1) < 50  # a different key moves most problems (negative control of the key)


def test_order_of_terms_is_part_of_the_problem():
    # 7+3+12 and 12+7+3 have different running sums, so they are different problems
    a, b = ChainProblem((7, 3, 12), "++"), ChainProblem((12, 7, 3), "++")
    assert a.steps == (10, 22) and b.steps == (19, 22) and a.answer == b.answer
    assert a != b and a.prompt != b.prompt


# -- answers and steps -------------------------------------------------------------------------

def test_example_from_the_docstring():
    assert P.prompt == "12+7+30+5="
    assert P.steps == (19, 49, 54)
    assert P.solution == "19,49,54;54"
    assert P.answer == "54"
    assert str(P) == "12+7+30+5=19,49,54;54"


def test_running_sums_end_at_the_sum_of_the_terms_and_count_one_per_operation():
    for p in TASK.sample(500, seed=3):
        assert p.steps[-1] == sum(p.terms)
        assert int(p.answer) == sum(p.terms)
        assert len(p.steps) == len(p.terms) - 1
        assert all(b - a == t for a, b, t in zip((p.terms[0],) + p.steps, p.steps, p.terms[1:]))
        assert TASK.min_terms <= len(p.terms) <= TASK.max_terms
        assert all(0 <= t < 10**TASK.digits for t in p.terms)


def test_subtraction_gives_signed_running_results():
    task = ChainTask(ops="+-", max_terms=4)
    for p in task.sample(300, seed=2):
        acc = p.terms[0]
        for op, t in zip(p.ops, p.terms[1:]):
            acc = acc + t if op == "+" else acc - t
        assert p.steps[-1] == acc
    assert ChainProblem((3, 10), "-").solution == "-7;-7"


def test_every_text_stays_in_the_tokenizer_alphabet():
    for task in (TASK, TASK2, ChainTask(ops="+-")):
        for p in task.sample(300, seed=4):
            assert set(p.prompt + p.solution) <= set(ALPHABET)


def test_max_answer_chars_bounds_every_solution_and_is_reached():
    for task in (TASK, TASK2, ChainTask(ops="+-", max_terms=4), ChainTask(digits=2, ops="+-")):
        longest = max(len(p.solution) for p in task.sample(3000, seed=5))
        assert longest <= task.max_answer_chars
    assert len(TASK2.problem((99,) * 5).solution) == TASK2.max_answer_chars == 19
    assert len(TASK.problem((9,) * 6).solution) == TASK.max_answer_chars == 17


def test_response_length_varies_several_fold_across_problems():
    lengths = [len(p.solution) + 1 for p in TASK.sample(2000, seed=6)]  # + <eos>
    assert max(lengths) >= 3 * min(lengths)


def test_sample_is_reproducible_and_unique_on_request():
    assert TASK.sample(50, seed=7) == TASK.sample(50, seed=7)
    assert TASK.sample(50, seed=7) != TASK.sample(50, seed=8)
    tiny = ChainTask(min_terms=2, max_terms=2, digits=1)   # 100 problems, about 90 for training
    assert len(set(tiny.sample(80, unique=True))) == 80
    with pytest.raises(ValueError, match="n=100 is more than the train split"):
        tiny.sample(100, unique=True)


# -- the reward table ----------------------------------------------------------------------------

@pytest.mark.parametrize("completion, finished, expected", [
    ("19,49,54;54", True, 1.0),     # correct, every step right
    (" 19, 49 ,54; 54 ", True, 1.0),  # spaces around numbers are tolerated
    ("19,59,64;64", True, 0.0),     # a step slipped: the slip carried into a wrong answer
    ("19,59,64;54", True, 1.0),     # wrong steps, right answer: outcome reward (documented decision)
    ("49;54", True, 1.0),           # steps skipped, right answer
    ("19,49,49,54;54", True, 1.0),  # a step repeated (more than needed), right answer
    ("19,49,54;55", True, 0.0),     # wrong final answer
    ("54", True, 1.0 - FORMAT_PENALTY),  # no steps, no ';': malformed
    ("19,49,54;54", False, 1.0 - FORMAT_PENALTY),  # truncated
    ("19,49,54", True, -FORMAT_PENALTY),  # no final answer after ';'
    ("19,49;5x", True, -FORMAT_PENALTY),  # wrong and malformed
    ("", True, -FORMAT_PENALTY),          # empty
])
def test_reward_table(completion, finished, expected):
    assert TASK.reward(completion, P.answer, finished) == expected


def test_reward_without_format_term_is_correctness_only():
    task = ChainTask(format_penalty=0.0)
    assert task.reward("54", "54") == 1.0
    assert task.reward("19,49,54;54", "54", finished=False) == 1.0
    assert task.reward("19,49,54", "54") == 0.0


def test_final_answer_is_judged_by_the_arithmetic_tasks_is_correct():
    # the chain task's judgement is task.is_correct applied to the text after the last ';'
    for c in ["19,49,54;54", "1;2;54", "19,49;55", "54", "x;54.0", "3;-0"]:
        assert TASK.is_correct(c, "54") == arithmetic.is_correct(final_answer(c), "54")
    assert TASK.is_correct("19,49;54.0", "54")  # math-verify's path (not an integer literal)


def test_reward_of_a_correct_chain_is_the_arithmetic_reward_of_its_answer():
    for p in TASK.sample(100, seed=9):
        assert TASK.reward(p.solution, p.answer) == arithmetic.reward(p.answer, p.answer) == 1.0


def test_batch_rewards_match_reward_row_by_row():
    comps = ["19,49,54;54", "19,59,64;64", "54", "19,49,54;54"]
    fin = torch.tensor([True, True, True, False])
    r = TASK.batch_rewards(comps, ["54"] * 4, fin)
    assert r.dtype == torch.float32
    assert r.tolist() == [TASK.reward(c, "54", bool(f)) for c, f in zip(comps, fin)] == [1.0, 0.0, 0.5, 0.5]
    assert TASK.batch_rewards(comps[:1], ["54"]).tolist() == [1.0]  # finished defaults to True


def test_batch_rewards_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="answers has 1"):
        TASK.batch_rewards(["1;1", "2;2"], ["1"])
    with pytest.raises(ValueError, match="finished has 1"):
        TASK.batch_rewards(["1;1", "2;2"], ["1", "2"], [True])


def test_arithmetic_reward_would_misjudge_chains():
    # negative control: the arithmetic task's reward does not read the final answer of a chain
    assert arithmetic.reward(P.solution, P.answer) != 1.0
    assert TASK.reward(P.solution, P.answer) == 1.0


def test_step_errors_diagnostic():
    assert step_errors(P, "19,49,54;54") == {"well_formed": True, "n_steps": 3, "n_needed": 3, "steps_right": True}
    assert step_errors(P, "19,59,64;54")["steps_right"] is False
    assert step_errors(P, "49;54") == {"well_formed": True, "n_steps": 1, "n_needed": 3, "steps_right": False}
    assert step_errors(P, "54")["well_formed"] is False
    assert parse_steps("19,49;54") == [19, 49] and parse_steps("19,49") is None


def test_preference_prefers_higher_reward_then_closer_answer():
    a = P.answer
    assert TASK.preference("19,49,54;54", "19,59,64;64", a) == 1
    assert TASK.preference("19,59,64;64", "19,49,54;54", a) == -1
    assert TASK.preference("19,49,54;55", "19,59,64;64", a) == 1    # both wrong: 55 is closer
    assert TASK.preference("19,49,54;54", "49;54", a) == 0          # equal reward, same answer
    assert TASK.preference("19,49,54;54", "19,49,54;54", a, finished_b=False) == 1


# -- SFT examples ----------------------------------------------------------------------------------

def test_clean_demonstrations_are_the_solutions():
    ex = TASK.sft_examples(200, wrong_fraction=0.0, seed=1)
    probs = TASK.sample(200, "train", seed=1)
    assert [e["prompt"] for e in ex] == [p.prompt for p in probs]
    assert all(e["completion"] == p.solution and e["correct"] and e["answer"] == p.answer for e, p in zip(ex, probs))
    assert all(TASK.reward(e["completion"], e["answer"]) == 1.0 for e in ex)


def test_wrong_demonstrations_slip_once_and_carry_the_slip_through():
    ex = TASK.sft_examples(2000, wrong_fraction=0.5, seed=2, offsets=(10,), slip="once")
    probs = TASK.sample(2000, "train", seed=2)
    n_wrong = 0
    for e, p in zip(ex, probs):
        steps = parse_steps(e["completion"])
        assert steps is not None                          # always well formed
        assert int(final_answer(e["completion"])) == steps[-1]   # the answer is the last written step
        diff = [s - t for s, t in zip(steps, p.steps)]
        if e["correct"]:
            assert diff == [0] * len(diff)
        else:
            n_wrong += 1
            i = next(k for k, d in enumerate(diff) if d)
            assert diff[:i] == [0] * i and diff[i:] == [10] * (len(diff) - i)  # one slip, carried through
            assert TASK.reward(e["completion"], e["answer"]) == 0.0
    assert abs(n_wrong / 2000 - 0.5) < 0.05


def _carries(p):
    acc, out = p.terms[0], []
    for t in p.terms[1:]:
        out.append(acc % 10 + t % 10 >= 10)
        acc += t
    return out


def test_carry_slips_drop_carries_only_where_there_is_one_and_carry_through():
    task = ChainTask(digits=1, max_terms=6)
    n = 3000
    ex = task.sft_examples(n, wrong_fraction=0.6, seed=5, slip="carry")
    probs = task.sample(n, "train", seed=5)
    dropped = carries = 0
    for e, p in zip(ex, probs):
        steps = parse_steps(e["completion"])
        assert len(steps) == len(p.steps) and int(final_answer(e["completion"])) == steps[-1]
        prev = p.terms[0]  # each step adds the term to the *written* previous value (minus 10: a dropped carry)
        for t, s in zip(p.terms[1:], steps):
            carry = prev % 10 + t % 10 >= 10
            assert s in ((prev + t, prev + t - 10) if carry else (prev + t,))
            carries += carry
            dropped += s == prev + t - 10 and carry
            prev = s
        assert e["correct"] == (steps[-1] == p.steps[-1])
    assert abs(dropped / carries - 0.6) < 0.03
    no_carry = [e for e, p in zip(ex, probs) if not any(_carries(p))]
    assert no_carry and all(e["correct"] for e in no_carry)  # nothing to drop: always right


def test_fact_slips_are_off_by_one_at_confused_pairs_only():
    task = ChainTask(digits=1, max_terms=6)
    confused = task.confused_pairs(0.3)
    assert confused == task.confused_pairs(0.3)                          # fixed for the task
    assert confused != ChainTask(digits=1, max_terms=6, split_seed=1).confused_pairs(0.3)
    assert 15 <= len(confused) <= 45 and set(confused.values()) <= {-1, 1}
    assert task.confused_pairs(0.0) == {} and len(task.confused_pairs(1.0)) == 100
    ex = task.sft_examples(3000, wrong_fraction=0.6, seed=6, slip="facts")
    probs = task.sample(3000, "train", seed=6)
    met = slipped = 0
    for e, p in zip(ex, probs):
        steps = parse_steps(e["completion"])
        prev = p.terms[0]
        for t, s in zip(p.terms[1:], steps):
            d = confused.get((prev % 10, t % 10), 0)
            assert s in ((prev + t, prev + t + d) if d else (prev + t,))
            met += bool(d)
            slipped += bool(d) and s == prev + t + d
            prev = s
        assert e["correct"] == (steps[-1] == p.steps[-1])
    assert abs(slipped / met - 0.6) < 0.03


def test_skipped_steps_leave_out_one_running_sum_but_keep_the_answer():
    ex = TASK.sft_examples(1000, wrong_fraction=0.0, seed=3, skip_fraction=1.0)
    probs = TASK.sample(1000, "train", seed=3)
    for e, p in zip(ex, probs):
        steps = parse_steps(e["completion"])
        if len(p.steps) == 1:
            assert steps == list(p.steps)      # nothing to skip
        else:
            assert len(steps) == len(p.steps) - 1 and set(steps) <= set(p.steps) and steps[-1] == p.steps[-1]
        assert e["correct"] and TASK.reward(e["completion"], e["answer"]) == 1.0


def test_sft_examples_come_from_the_training_split_and_are_reproducible():
    ex = TASK.sft_examples(300, seed=4)
    assert ex == TASK.sft_examples(300, seed=4)
    held = {p.prompt for p in TASK.held_out(300)}
    assert not {e["prompt"] for e in ex} & held


# -- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"min_terms": 1}, "min_terms"),
    ({"min_terms": 2.0}, "min_terms"),
    ({"max_terms": 1}, "max_terms"),
    ({"min_terms": 4, "max_terms": 3}, "max_terms"),
    ({"digits": -1}, "digits"),
    ({"digits": 0}, "digits"),
    ({"ops": "*"}, "ops"),
    ({"ops": "+/"}, "ops"),
    ({"ops": ""}, "ops"),
    ({"ops": "++"}, "ops"),
    ({"held_out_fraction": 1.0}, "held_out_fraction"),
    ({"format_penalty": -0.5}, "format_penalty"),
])
def test_bad_task_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChainTask(**kwargs)


def test_bad_problem_and_call_arguments_are_named():
    with pytest.raises(ValueError, match="terms must hold between 2 and 6"):
        TASK.problem((5,))
    with pytest.raises(ValueError, match="terms must be integers in"):
        TASK.problem((5, -3))
    with pytest.raises(ValueError, match=r"terms must be integers in \[0, 10\)"):
        TASK.problem((5, 12))
    with pytest.raises(ValueError, match="ops must be"):
        TASK.problem((5, 3), "*")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        TASK.sample(0)
    with pytest.raises(ValueError, match="split must be"):
        TASK.sample(3, "test")
    with pytest.raises(ValueError, match="wrong_fraction"):
        TASK.sft_examples(3, wrong_fraction=1.5)
    with pytest.raises(ValueError, match="skip_fraction"):
        TASK.sft_examples(3, skip_fraction=-0.1)
    with pytest.raises(ValueError, match="offsets"):
        TASK.sft_examples(3, offsets=(0,))
    with pytest.raises(ValueError, match="slip must be"):
        TASK.sft_examples(3, slip="carries")
    with pytest.raises(ValueError, match="confused_fraction"):
        TASK.sft_examples(3, slip="facts", confused_fraction=2)
    with pytest.raises(ValueError, match="completion must be a string"):
        TASK.reward(54, "54")
    with pytest.raises(ValueError, match="steps must hold"):
        format_solution([])
