"""Our GRPO against TRL's ``GRPOTrainer`` on the identical model, task and hyper-parameters (CPU).

    python benchmarks/grpo_vs_trl.py [--task arithmetic|chain] [--steps 60] [--prompts 16] [--group 8] [--lr 1e-4]
                                     [--repeats 2] [--seeds 1] [--json]

``--task arithmetic`` (the default, the original benchmark): 2-operand addition, 1-3-token answers, from
``sft_start("tiny", seed)``. ``--task chain``: the chain task of notebook 09 (:data:`rlcourse.experiments.cache.
CHAIN_TASK`: running sums then the answer, 4-18 tokens) from its SFT start (``chain_sft_start``, the start of the
``grpo_variants`` experiment), with the task's own reward on both sides. Besides the step time, both report
steps/s and samples/s (``prompts x group`` completions per step).

Measured on the chain task (2026-11-30; 2-core CPU, one thread, load average about 6 from other jobs;
``--task chain --steps 30 --repeats 2 --eval-n 300``): ours 380 ms per step (2.63 steps/s, 337 samples/s),
TRL 1047 ms (0.96 steps/s, 122 samples/s), ratio 0.36; details in ``benchmarks/chain_task_calibration.md``.

Both start from the same SFT model (trained once and cached), see
the same prompts in the same order (TRL reads them from a ``datasets.Dataset`` without
shuffling), sample ``--group`` completions per prompt at temperature 1 with at most
``max_new_tokens`` tokens, score them with the same rule-based reward, use the GRPO loss
(``loss_type="grpo"``, group-std scaling, eps 0.2, beta 0), and take one AdamW step (constant
learning rate, betas (0.9, 0.99), no weight decay, gradient norm clipped at 1) per generation
batch. Step time is measured per optimizer step, evaluation excluded; the figure reported is
the median. Held-out greedy accuracy is measured on the same 500 problems after the same
number of steps; ``--seeds K`` trains K seeds (other prompts, other samples) from the same start
and reports the mean accuracy of each, since one seed's difference of a few problems is noise.

Where the time goes (``--profile`` prints a cProfile of 3 steps of each). Both do one generation
and one forward/backward per step (TRL skips its old-policy pass when, as here, there is one
optimizer step per generation batch). The differences:

* sampling: ours is a KV-cached loop that prefills each prompt once per group and drops finished
  rows; TRL calls ``model.generate`` on the G-times repeated prompts (about 3x the time here);
* learning: ours runs the forward/backward only on the *distinct* completions whose advantage is
  non-zero, each weighted by its number of copies (``rlcourse.train.distinct_rows``:
  exact, the loss and gradient are those of the full batch); a peaked policy samples few
  distinct answers per prompt, and solved groups have zero advantage, so this shrinks from
  about 1/3 of the rows at the SFT start to a few rows once most groups are solved. TRL runs all
  rows and also computes every token's entropy;
* TRL adds the bookkeeping of a general trainer (accelerate, dataloader, metric gathering).

Timing on a shared machine: runs go in ABBA order (ours, TRL, TRL, ours) and the step times of
both runs are pooled, so that a burst of load from other processes falls on both alike. One
intra-op thread (``--threads 1``) is the default: with two threads on a 2-core machine that
other processes also use, every step was measured 10-30x slower.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from rlcourse.threads import set_cpu_threads

# the TRL side of the experiment is shared with examples/trl_grpo.py
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))


def _our_run(model, tok, task, args, max_new):
    from rlcourse.train.grpo import GRPOConfig, train_grpo

    cfg = GRPOConfig(variant="grpo", steps=args.steps, lr=args.lr, group_size=args.group,
                     prompts_per_step=args.prompts, max_new_tokens=max_new, temperature=1.0, eps_low=0.2,
                     beta=0.0, seed=args.seed, device="cpu", eval_n=args.eval_n, grad_clip=1.0, distinct_rows=True)
    res = train_grpo(cfg, model, tok, task=task, progress=False)
    return res.model, [r["step_seconds"] for r in res.history]


def _trl_run(model, tok, task, args, max_new):
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    # the course's prompts in the course's order, its reward and its hyper-parameters, as TRL sees them
    from _course_trl import course_dataset, course_grpo_config, course_reward

    data = course_dataset(task, args.steps, args.prompts, args.seed)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args_, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    out = tempfile.mkdtemp(prefix="grpo_vs_trl_")
    cfg = course_grpo_config(out, steps=args.steps, prompts=args.prompts, group=args.group, lr=args.lr,
                             max_new_tokens=max_new, seed=args.seed, use_cpu=True)
    timer = StepTimer()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):  # TRL prints its metrics
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=course_reward(tok, task), args=cfg, train_dataset=data,
                              processing_class=tok, callbacks=[timer])
        trainer.train()
    return trainer.model, timer.times


def _profile(fn, *a):
    prof = cProfile.Profile()
    prof.enable()
    fn(*a)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
    return s.getvalue()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("arithmetic", "chain"), default="arithmetic",
                    help="arithmetic: 2-operand addition (default); chain: notebook 09's chain task and its SFT start")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps (= generation batches) for each")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-n", type=int, default=500, help="held-out problems for the accuracy")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both (1: robust on a shared 2-core CPU)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, in ABBA order (step times pooled)")
    ap.add_argument("--seeds", type=int, default=1,
                    help="training seeds from the same start; the accuracies reported are their means")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of 3 steps of each and exit")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    set_cpu_threads(a.threads)

    from rlcourse.lm import default_max_new_tokens, default_task, held_out_accuracy
    from rlcourse.experiments import sft_start

    if a.task == "chain":
        from rlcourse.experiments.cache import CHAIN_TASK, chain_sft_start
        from rlcourse.experiments.grpo_chain import GRPOChainConfig

        task = CHAIN_TASK
        model, tok = chain_sft_start("tiny", a.seed, "cpu", progress=not a.json,
                                     cfg=GRPOChainConfig(sft_seed=a.seed).sft_config())
    else:
        task = default_task()
        model, tok = sft_start("tiny", a.seed, "cpu", progress=not a.json)
    max_new = default_max_new_tokens(task)
    if a.profile:
        a.steps = 3
        print("== ours ==\n" + _profile(_our_run, copy.deepcopy(model), tok, task, a, max_new))
        print("== TRL ==\n" + _profile(_trl_run, copy.deepcopy(model), tok, task, a, max_new))
        return 0

    start_acc = held_out_accuracy(model, tok, task, a.eval_n)
    # Training seeds a.seed, a.seed + 1, ... from the same start (they change the prompts and the
    # samples). ABBA order (ours, TRL, TRL, ours, ...): a burst of load from other processes falls on
    # both alike. The first seed runs ``repeats`` times for the step times; every run's steps are pooled.
    ours_times, trl_times = [], []
    acc = {"ours": [], "trl": []}
    for i in range(a.seeds):
        seed_args = argparse.Namespace(**{**vars(a), "seed": a.seed + i})
        for r in range(a.repeats if i == 0 else 1):
            order = ("ours", "trl") if (r + i) % 2 == 0 else ("trl", "ours")
            for who in order:
                run = _our_run if who == "ours" else _trl_run
                trained, times = run(copy.deepcopy(model), tok, task, seed_args, max_new)
                (ours_times if who == "ours" else trl_times).extend(times)
                if r == 0:  # runs are seeded: a repeat trains the same model
                    acc[who].append(held_out_accuracy(trained, tok, task, a.eval_n))
    ours_step, trl_step = statistics.median(ours_times), statistics.median(trl_times)
    samples = a.prompts * a.group
    res = {
        "task": a.task, "steps": a.steps, "prompts_per_step": a.prompts, "group_size": a.group, "max_new_tokens": max_new,
        "lr": a.lr, "threads": a.threads, "repeats": a.repeats, "seeds": a.seeds, "start_accuracy": start_acc,
        "ours_step_seconds": ours_step, "trl_step_seconds": trl_step, "ratio": ours_step / trl_step,
        "ours_accuracy": statistics.fmean(acc["ours"]), "trl_accuracy": statistics.fmean(acc["trl"]),
        "ours_accuracies": acc["ours"], "trl_accuracies": acc["trl"],
        "ours_mean_step_seconds": statistics.fmean(ours_times), "trl_mean_step_seconds": statistics.fmean(trl_times),
        "ours_steps_per_s": 1 / ours_step, "trl_steps_per_s": 1 / trl_step,
        "ours_samples_per_s": samples / ours_step, "trl_samples_per_s": samples / trl_step,
    }
    if a.json:
        print(json.dumps(res))
    else:
        print(f"task {a.task}, start: held-out greedy accuracy {start_acc:.3f} ({a.eval_n} problems); {a.steps} steps "
              f"of {a.prompts} prompts x {a.group} completions (max {max_new} new tokens), lr {a.lr}, "
              f"{a.threads} thread(s)")
        print(f"ours: median step {ours_step * 1000:.0f} ms = {res['ours_steps_per_s']:.2f} steps/s, "
              f"{res['ours_samples_per_s']:.0f} samples/s; accuracy after {res['ours_accuracy']:.3f}"
              f" (per seed: {', '.join(f'{x:.3f}' for x in acc['ours'])})")
        print(f"TRL : median step {trl_step * 1000:.0f} ms = {res['trl_steps_per_s']:.2f} steps/s, "
              f"{res['trl_samples_per_s']:.0f} samples/s; accuracy after {res['trl_accuracy']:.3f}"
              f" (per seed: {', '.join(f'{x:.3f}' for x in acc['trl'])})")
        print(f"ratio (ours / TRL): {res['ratio']:.3f}  (target <= 0.5 at equal or better accuracy); "
              f"mean step {res['ours_mean_step_seconds'] * 1000:.0f} vs {res['trl_mean_step_seconds'] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
