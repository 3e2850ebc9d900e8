"""Held-out evaluation shared by every trainer and experiment: the same problems for everyone.

:func:`evaluate_policy` gives greedy accuracy, sampled pass@1 and pass@8 and the mean reward
(:func:`rlcourse.lm.evaluate` on ``task.held_out(n_eval, seed)``, judged by the task's reward and given
``task.max_answer_chars + 2`` new tokens); :func:`held_out_accuracy` the
greedy accuracy alone (cheap, for curves during training).
"""

from __future__ import annotations

from rlcourse._validate import integer
from rlcourse.lm.rollout import accuracy, evaluate

#: Size of the held-out evaluation set and samples per problem used by every trainer.
EVAL_N = 500
EVAL_SAMPLES = 8


def evaluate_policy(model, tokenizer, task, n_eval: int = EVAL_N, seed: int = 0, *, n_samples: int = EVAL_SAMPLES,
                    ks=(1, 8), temperature: float = 1.0, batch_size: int = 512) -> dict:
    """Held-out evaluation shared by every trainer (same problems for everyone).

    Returns ``{"accuracy": greedy accuracy, "pass@1": sampled accuracy at ``temperature``,
    "pass@8": unbiased pass@8 from ``n_samples`` samples, "mean_reward": mean sampled reward}``
    on ``task.held_out(n_eval, seed)``. The policy's train/eval mode is left as it was.

    Cost on the 2-core CPU (tiny preset, trained model): about 5 s for 500 problems x 8 samples.
    Generation batches above ~512 rows were measured to slow down sharply on this CPU, hence
    ``batch_size=512``.
    """
    integer("n_eval", n_eval)
    problems = task.held_out(n_eval, seed=seed)
    return evaluate(model, tokenizer, problems, ks=tuple(ks), n=n_samples, temperature=temperature,
                    batch_size=batch_size, seed=seed, task=task)


def held_out_accuracy(model, tokenizer, task, n_eval: int = EVAL_N, seed: int = 0) -> float:
    """Greedy accuracy on the same held-out problems as :func:`evaluate_policy` (no sampling: cheap)."""
    return accuracy(model, tokenizer, task.held_out(n_eval, seed=seed), batch_size=512, task=task)


def default_max_new_tokens(task) -> int:
    """Room for the longest answer, ``<eos>`` and one extra token (a sign or a slip)."""
    return task.max_answer_chars + 2


__all__ = ["EVAL_N", "EVAL_SAMPLES", "evaluate_policy", "held_out_accuracy", "default_max_new_tokens"]
