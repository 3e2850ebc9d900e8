"""The small-LM world of the course: tokenizer, model presets, the arithmetic task and its rewards, rollouts,
the scalar-head model (reward model and PPO critic), preference pairs, and held-out evaluation.

Typical use::

    from rlcourse.lm import load_model, ArithmeticTask, generate, batch_rewards, sequence_logprobs
    model, tok = load_model("tiny")                 # or a local directory with any HF causal LM
    task = ArithmeticTask(digits=2, ops="+-")
    problems = task.sample(8, "train", seed=0)
    ro = generate(model, tok, [p.prompt for p in problems], group_size=4, max_new_tokens=5, temperature=1.0, seed=0)
    r = batch_rewards(ro.completions, [p.answer for p in problems for _ in range(4)], ro.finished)
"""

from rlcourse.threads import cpu_threads

from .model import PRESETS, Preset, build_model, count_parameters, load_model, model_config, pick_device, save_model
from .quiet import quiet_transformers
from .rollout import (Rollout, SequenceBatch, accuracy, encode_completions, encode_prompts, evaluate, generate,
                      pass_at_k, pass_at_k_estimator, position_ids_from_mask, response_logprobs_from_logits,
                      sequence_logprobs)
from .task import (FORMAT_PENALTY, REWARD_CORRECT, REWARD_WRONG, ArithmeticTask, Problem, batch_rewards,
                   default_task, is_correct, is_well_formed, make_preference_pairs, math_verify_correct, preference, reward,
                   sft_examples)
from .evaluation import EVAL_N, EVAL_SAMPLES, default_max_new_tokens, evaluate_policy, held_out_accuracy
from .pairs import encode_pairs, oracle_pairs, pair_accuracy, pair_kind, pair_logprobs
from .reward_model import RewardModel
from .tokenizer import ALPHABET, SPECIAL_TOKENS, build_tokenizer, check_text, load_tokenizer, save_tokenizer

__all__ = [
    "PRESETS", "Preset", "build_model", "count_parameters", "load_model", "model_config", "pick_device", "save_model",
    "cpu_threads", "quiet_transformers", "default_task", "EVAL_N", "EVAL_SAMPLES", "default_max_new_tokens",
    "evaluate_policy", "held_out_accuracy", "encode_pairs", "oracle_pairs", "pair_accuracy", "pair_kind",
    "pair_logprobs", "RewardModel",
    "Rollout", "SequenceBatch", "accuracy", "encode_completions", "encode_prompts", "evaluate", "generate",
    "pass_at_k", "pass_at_k_estimator", "position_ids_from_mask", "response_logprobs_from_logits",
    "sequence_logprobs",
    "FORMAT_PENALTY", "REWARD_CORRECT", "REWARD_WRONG", "ArithmeticTask", "Problem", "batch_rewards", "is_correct",
    "is_well_formed", "make_preference_pairs", "math_verify_correct", "preference", "reward", "sft_examples",
    "ALPHABET", "SPECIAL_TOKENS", "build_tokenizer", "check_text", "load_tokenizer", "save_tokenizer",
]
