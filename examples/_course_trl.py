"""The course's GRPO experiment expressed in TRL's terms: its prompts, its reward, its hyper-parameters.

Shared by ``examples/trl_grpo.py`` (TRL under accelerate, one or many processes) and
``benchmarks/grpo_vs_trl.py`` (TRL against the course's trainer on one CPU), so the two say
the same thing once. Only public functions of ``rlcourse`` are called.

The mapping, field by field, from :class:`rlcourse.train.grpo.GRPOConfig` (defaults) to TRL's
``GRPOConfig``:

=======================  ==================================  ======================================
course                   TRL                                 value
=======================  ==================================  ======================================
``prompts_per_step`` B   global batch / ``num_generations``  16 prompts per optimizer step
``group_size`` G         ``num_generations``                 8
rows per step            ``per_device_train_batch_size`` x   B * G = 128 (per device: 128 / world)
                         ``num_processes``
``lr``                   ``learning_rate``, constant         1e-4
AdamW betas              ``adam_beta1`` / ``adam_beta2``     (0.9, 0.99), no weight decay
``grad_clip``            ``max_grad_norm``                   1.0
``max_new_tokens``       ``max_completion_length``           longest answer + 2
``temperature``          ``temperature``, top_p 1, top_k 0   1.0
``eps_low``/``eps_high``  ``epsilon``/``epsilon_high``        0.2 / 0.2
``beta``                 ``beta``                            0 (no reference model is loaded)
``num_iterations``       ``num_iterations``,                 1 (on-policy: ratio exactly 1)
                         ``steps_per_generation``
variant ``grpo``         ``loss_type="grpo"``,               seq-mean-token-mean; group z-score
                         ``scale_rewards="group"``
=======================  ==================================  ======================================
"""

from __future__ import annotations

#: The course's GRPO defaults (``rlcourse.train.grpo.GRPOConfig()``), as used by the benchmark.
COURSE_DEFAULTS = {"prompts": 16, "group": 8, "lr": 1e-4, "eps": 0.2, "beta": 0.0, "loss_type": "grpo"}


def course_dataset(task, steps: int, prompts: int, seed: int):
    """A ``datasets.Dataset`` of the course's training prompts in the course's order.

    Step ``s`` of the course's trainer uses ``problems_for_step(task, prompts, seed, s * 64)``
    (round 0 of step ``s``); the rows here are those problems, step after step, so TRL reading
    them without shuffling sees exactly the prompts the course's trainer sees. Columns:
    ``prompt`` (the text the model continues) and ``answer`` (passed to the reward function).
    """
    from datasets import Dataset

    from rlcourse.train.common import problems_for_step

    if steps < 1 or prompts < 1:
        raise ValueError(f"steps and prompts must be positive, got steps={steps!r}, prompts={prompts!r}")
    problems = [p for s in range(steps) for p in problems_for_step(task, prompts, seed, s * 64)]
    return Dataset.from_dict({"prompt": [p.prompt for p in problems], "answer": [p.answer for p in problems]})


def course_reward(tokenizer, task=None):
    """The course's rule-based reward (:func:`rlcourse.lm.reward`, or ``task.reward`` when a task with its own
    reward is given, e.g. the chain task) as a TRL reward function.

    TRL calls it with the decoded completions, their token ids and every dataset column as a
    keyword (here ``answer``). A completion counts as finished when it emitted ``<eos>``, as in
    the course's rollouts.
    """
    from rlcourse.lm import reward

    if task is not None and callable(getattr(task, "reward", None)):
        reward = task.reward
    eos = tokenizer.eos_token_id

    def rule_reward(prompts, completions, completion_ids, answer, **kwargs):
        return [reward(c, a, finished=eos in ids) for c, ids, a in zip(completions, completion_ids, answer)]

    return rule_reward


def course_grpo_config(output_dir: str, *, steps: int, prompts: int, group: int, lr: float, max_new_tokens: int,
                       seed: int, world_size: int = 1, loss_type: str = "grpo", beta: float = 0.0,
                       epsilon: float = 0.2, **overrides):
    """TRL's ``GRPOConfig`` for the course's experiment (see the module table), for ``world_size`` processes.

    The global batch is ``prompts * group`` rows per optimizer step whatever the number of
    processes: each process gets ``prompts * group / world_size`` rows (an error if that is
    not an integer). ``overrides`` are passed to ``GRPOConfig`` last (e.g. ``use_vllm=True``).
    """
    from trl import GRPOConfig

    rows = prompts * group
    if world_size < 1 or rows % world_size:
        raise ValueError(f"prompts * group = {rows} rows must split evenly over world_size={world_size} processes")
    kwargs = dict(
        output_dir=output_dir, max_steps=steps, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
        per_device_train_batch_size=rows // world_size, num_generations=group,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        loss_type=loss_type, scale_rewards="group", epsilon=epsilon, beta=beta,
        adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0,
        gradient_checkpointing=False, bf16=False, fp16=False, seed=seed, data_seed=seed,
        shuffle_dataset=False, report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
        log_completions=False, dataloader_num_workers=0, push_to_hub=False,
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)
