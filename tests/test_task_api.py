"""The trainers take any task object: rewards, evaluation, demonstrations and the cache key come from the task.

No trainer is patched here: a :class:`~rlcourse.lm.chain_task.ChainTask` goes through ``train_sft`` and
``train_grpo`` as it is, and a recording subclass shows that the rewards GRPO trains on are the chain
task's (which the arithmetic reward misjudges).
"""

from __future__ import annotations

import dataclasses

import torch

import rlcourse.train.sft as sft
from rlcourse.experiments import cache
from rlcourse.lm import ArithmeticTask, batch_rewards, make_preference_pairs
from rlcourse.lm.chain_task import ChainTask
from rlcourse.train.common import sample_groups
from rlcourse.train.grpo import GRPOConfig, train_grpo
from rlcourse.train.sft import SFTConfig, train_sft

SMALL_CHAIN = ChainTask(min_terms=2, max_terms=3, digits=1, slip="once", skip_fraction=0.5)
CALLS: list = []


@dataclasses.dataclass(frozen=True)
class RecordingChain(ChainTask):
    """A chain task that records the rewards it hands out (instrumentation, not a patch of a trainer)."""

    def batch_rewards(self, completions, answers, finished=None):
        r = super().batch_rewards(completions, answers, finished)
        CALLS.append((list(completions), list(answers), r.clone()))
        return r


def test_a_right_chain_answer_is_misjudged_by_the_arithmetic_reward_but_not_by_the_chain_task():
    # the property the GRPO test below relies on: the two rewards disagree on chain completions
    assert SMALL_CHAIN.batch_rewards(["3,7;7"], ["7"]).tolist() == [1.0]
    assert batch_rewards(["3,7;7"], ["7"]).tolist() != [1.0]


def test_arithmetic_task_methods_give_the_module_functions_results():
    task = ArithmeticTask()
    comps, answers = ["19", " 19 ", "18", "19abc", "1 9", "abc"], ["19"] * 6
    fin = [True, True, True, True, True, False]
    assert torch.equal(task.batch_rewards(comps, answers, fin), batch_rewards(comps, answers, fin))
    from rlcourse.lm import sft_examples
    assert task.sft_examples(50, wrong_fraction=0.4, seed=3) == sft_examples(50, wrong_fraction=0.4, seed=3, task=task)


def test_sft_demonstrations_come_from_the_task_and_follow_its_demonstration_fields():
    cfg = SFTConfig(preset="tiny", steps=4, clean_steps=0, wrong_fraction=0.5, batch_size=32)
    demos = sft.demonstrations(cfg, SMALL_CHAIN, 1)
    assert demos == SMALL_CHAIN.sft_examples(32, wrong_fraction=0.5, seed=1, offsets=cfg.offsets)
    assert all(";" in d["completion"] for d in demos)  # chain completions, not bare integers
    no_skip = dataclasses.replace(SMALL_CHAIN, skip_fraction=0.0)
    assert sft.demonstrations(cfg, no_skip, 1) != demos  # the task's skip_fraction reaches the trainer


def test_train_sft_and_train_grpo_run_on_the_chain_task_with_the_chain_reward():
    task = RecordingChain(min_terms=2, max_terms=3, digits=1)
    res = train_sft(SFTConfig(preset="tiny", steps=2, batch_size=16, warmup_steps=1, eval_n=8), task=task,
                    progress=False)
    assert set(res.after) >= {"accuracy", "pass@1", "pass@8"}
    CALLS.clear()
    out = train_grpo(GRPOConfig(preset="tiny", steps=2, group_size=4, prompts_per_step=4, eval_n=8),
                     res.model, res.tokenizer, task=task, progress=False)
    assert len(out.history) == 2
    sampled = [c for c in CALLS if len(c[0]) == 16]  # the training batches (4 prompts x 4 samples)
    assert len(sampled) >= 2
    for row, (_, _, r) in zip(out.history, sampled):
        assert abs(row["reward_mean"] - float(r.mean())) < 1e-6  # GRPO trained on the chain task's rewards
    # the evaluation judged with the chain reward too, and gave room for the longest chain (max_answer_chars + 2)
    held = [c for c in CALLS if len(c[0]) == 8]
    assert held, "the held-out evaluation did not use the task's reward"


def test_sample_groups_rewards_are_the_tasks_rewards_of_what_was_sampled():
    from rlcourse.lm import build_tokenizer
    model, tok = train_sft(SFTConfig(preset="tiny", steps=1, batch_size=8, warmup_steps=0, eval_n=4),
                           task=SMALL_CHAIN, progress=False).model, build_tokenizer()
    problems, ro, r = sample_groups(model, tok, SMALL_CHAIN, n_prompts=3, group_size=2, max_new_tokens=9,
                                    temperature=1.0, seed=0, step=0)
    answers = [p.answer for p in problems for _ in range(2)]
    assert torch.equal(r, SMALL_CHAIN.batch_rewards(ro.completions, answers, ro.finished))


def test_make_preference_pairs_uses_the_given_oracle():
    comps = ["3,7;7", "7"]  # right chain vs bare answer (malformed for the chain task)
    pairs = make_preference_pairs(["3+4="] * 2, comps, ["7", "7"], group_size=2, preference=SMALL_CHAIN.preference)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("3,7;7", "7")]
    default = make_preference_pairs(["3+4="] * 2, comps, ["7", "7"], group_size=2)  # the arithmetic oracle
    assert [(p["chosen"], p["rejected"]) for p in default] == [("7", "3,7;7")]


def test_cache_key_of_the_arithmetic_start_is_unchanged_and_chain_keys_cover_the_task_class_and_fields():
    cfg = SFTConfig(preset="tiny", seed=0)
    task = ArithmeticTask()
    old_formula = cache.recipe_hash(cfg, {"task": dataclasses.asdict(task), "version": cache.RECIPE_VERSION})
    assert cache.config_hash(cfg, task) == old_formula
    chain = cache.CHAIN_TASK
    keys = {cache.config_hash(cfg, chain), cache.config_hash(cfg, dataclasses.replace(chain, slip="carry")),
            cache.config_hash(cfg, dataclasses.replace(chain, confused_fraction=0.2)),
            cache.config_hash(cfg, dataclasses.replace(chain, skip_fraction=0.1))}
    assert len(keys) == 4
    assert cache.task_key(chain)["class"].endswith("ChainTask")
