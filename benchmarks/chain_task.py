"""Calibration of the chain task (``rlcourse.lm.chain_task``): an SFT start, then GRPO from it, on the CPU.

Trains the SFT start once (the SFT trainer with the chain task's demonstrations; cached under
``$RLCOURSE_CACHE`` or ``~/.cache/rlcourse``), then K GRPO runs from that same start (seeds
0..K-1 of the GRPO sampling), and prints greedy held-out accuracy at every evaluation: the mean
and the range over seeds, with the length and entropy of the sampled batches and the greedy
length of correct and of incorrect answers. Numbers and the calibration log:
``benchmarks/chain_task_calibration.md``. Measured there (3 seeds, shared 2-core CPU): start
0.554, 0.576 at step 40 of 200, 0.734 (0.722-0.750) at the end; SFT 399 s, GRPO 85-118 s a run.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/chain_task.py [--seeds K] [--json] [--variant V] [--save F]

The trainers take the task object: its rewards, its demonstrations (``slip``, ``confused_fraction``,
``skip_fraction`` are fields of the task) and its completion length. The SFT start is the one of
the experiments' cache (:func:`rlcourse.experiments.cache.chain_sft_start`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

from rlcourse.experiments.cache import CHAIN_SFT, CHAIN_TASK, chain_sft_config, chain_sft_start, sft_start_info
from rlcourse.lm.chain_task import parse_steps
from rlcourse.threads import set_cpu_threads

#: The calibrated task and SFT start (defined once, in the experiments' cache).
TASK = CHAIN_TASK
SFT = CHAIN_SFT
#: The GRPO run from it (the trainer's defaults otherwise: variant grpo, G=8, 16 prompts, lr 1e-4).
GRPO = dict(steps=200, lr=1e-4, group_size=8, prompts_per_step=16, eval_every=20, eval_n=500, threads=1,
            checkpoint_every=10_000)


def train_start(task=TASK, sft_overrides: dict | None = None, seed: int = 0, callback=None):
    """An SFT start, not cached (a ``TrainResult``; ``after`` is the held-out evaluation): for recalibrating.
    The demonstrator's errors are the task's fields, e.g. ``dataclasses.replace(TASK, skip_fraction=0.2)``."""
    from rlcourse.train.sft import train_sft

    cfg = chain_sft_config(seed=seed, **(sft_overrides or {}))
    return train_sft(cfg, task=task, progress=False, callback=callback)


def cached_start(task=TASK):
    """The calibrated start from the experiments' cache (trained on first use), with its held-out figures."""
    import types

    model, tokenizer = chain_sft_start(task=task, progress=False)
    info = sft_start_info(cfg=chain_sft_config(), task=task)
    return types.SimpleNamespace(model=model, tokenizer=tokenizer, after=info["after"], seconds=info["seconds"])


def length_stats(model, tokenizer, task, n: int = 200, seed: int = 0) -> dict:
    """Greedy responses on ``n`` held-out problems: mean length (tokens, ``<eos>`` included) of the correct
    and of the incorrect ones, and the share of correct answers whose steps are wrong or skipped."""
    from rlcourse.lm import generate

    problems = task.held_out(n, seed=seed)
    ro = generate(model, tokenizer, [p.prompt for p in problems], 1, task.max_answer_chars + 2, greedy=True)
    r = task.batch_rewards(ro.completions, [p.answer for p in problems], ro.finished)
    lengths = ro.response_mask.sum(-1)
    ok = r == 1.0
    bad_steps = sum(1 for p, c, o in zip(problems, ro.completions, ok.tolist())
                    if o and tuple(parse_steps(c) or ()) != p.steps)
    mean = (lambda x: float(x.mean()) if x.numel() else float("nan"))
    return {"length_correct": mean(lengths[ok]), "length_incorrect": mean(lengths[~ok]),
            "correct_with_wrong_steps": bad_steps / max(1, int(ok.sum()))}


def run_grpo(model, tokenizer, task=TASK, seed: int = 0, variant: str = "grpo", overrides: dict | None = None):
    """One GRPO run from a copy of ``model``; returns ``(TrainResult, history rows with eval_accuracy)``."""
    import copy

    from rlcourse.train.grpo import GRPOConfig, train_grpo

    cfg = GRPOConfig(variant=variant, seed=seed, **(GRPO | (overrides or {})))
    policy = copy.deepcopy(model)  # train_grpo trains this object in place

    def lengths_at_evaluations(row):  # greedy lengths of correct / incorrect answers, at each evaluation
        if "eval_accuracy" in row:
            row.update(length_stats(policy, tokenizer, task))

    return train_grpo(cfg, policy, tokenizer, task=task, progress=False, callback=lengths_at_evaluations)


def summarise(runs: list[list[dict]], every: int) -> list[dict]:
    """Per evaluation: mean / min / max greedy accuracy over seeds; over the batches since the previous
    evaluation, the mean sampled length, entropy and sampled accuracy; and the mean greedy length of
    correct and of incorrect answers at the evaluation."""
    rows = []
    steps = [r["step"] for r in runs[0] if "eval_accuracy" in r]
    for s in steps:
        at = [next(r for r in h if r["step"] == s) for h in runs]
        accs = [r["eval_accuracy"] for r in at]
        window = [r for h in runs for r in h if s - every < r["step"] <= s]
        rows.append({"step": s + 1, "acc_mean": statistics.mean(accs), "acc_min": min(accs), "acc_max": max(accs),
                     "length": statistics.mean(r.get("completion_length", float("nan")) for r in window),
                     "entropy": statistics.mean(r["entropy"] for r in window),
                     "sample_acc": statistics.mean(r["accuracy"] for r in window),
                     "length_correct": statistics.mean(r.get("length_correct", float("nan")) for r in at),
                     "length_incorrect": statistics.mean(r.get("length_incorrect", float("nan")) for r in at)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="GRPO seeds from the same start (default 3)")
    ap.add_argument("--variant", default="grpo", help="GRPO variant (grpo, dr_grpo, dapo, gspo)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--save", help="also write the JSON object to this file")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    set_cpu_threads(1)

    t0 = time.perf_counter()
    start = cached_start()
    sft_seconds = start.seconds
    start_acc = start.after["accuracy"]
    lengths0 = length_stats(start.model, start.tokenizer, TASK)
    print(f"SFT start: greedy {start_acc:.3f}, pass@1 {start.after['pass@1']:.3f}, pass@8 {start.after['pass@8']:.3f} "
          f"({sft_seconds:.0f} s)", file=sys.stderr)

    histories, finals, seconds, lens = [], [], [], []
    for seed in range(args.seeds):
        t1 = time.perf_counter()
        res = run_grpo(start.model, start.tokenizer, seed=seed, variant=args.variant)
        seconds.append(time.perf_counter() - t1)
        histories.append(res.history)
        finals.append(res.after)
        lens.append(length_stats(res.model, res.tokenizer, TASK))
        print(f"GRPO seed {seed}: final greedy {res.after['accuracy']:.3f} ({seconds[-1]:.0f} s)", file=sys.stderr)
    table = summarise(histories, GRPO["eval_every"])
    n_steps = GRPO["steps"]
    fifth = min(table, key=lambda r: abs(r["step"] - 0.2 * n_steps))
    result = {"task": dataclasses.asdict(TASK), "sft": SFT, "grpo": GRPO | {"variant": args.variant},
              "start": start.after | lengths0, "sft_seconds": sft_seconds, "grpo_seconds": seconds,
              "evaluations": table, "finals": finals, "final_lengths": lens,
              "checks": {"start_in_[0.2,0.6]": 0.2 <= start_acc <= 0.6,
                         "acc_at_20pct_below_0.85": fifth["acc_mean"] < 0.85,
                         "final_ge_start_plus_0.1": table[-1]["acc_mean"] >= start_acc + 0.1,
                         "evaluations_ge_10": len(table) >= 10}}
    if args.save:
        with open(args.save, "w") as f:
            json.dump(result, f, indent=1)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"SFT start: greedy accuracy {start_acc:.3f} (pass@1 {start.after['pass@1']:.3f}, "
          f"pass@8 {start.after['pass@8']:.3f}); length correct {lengths0['length_correct']:.2f} / incorrect "
          f"{lengths0['length_incorrect']:.2f}; trained in {sft_seconds:.0f} s")
    print(f"GRPO ({args.variant}, {args.seeds} seeds, {n_steps} steps): "
          f"{statistics.mean(seconds):.0f} s per run (range {min(seconds):.0f}-{max(seconds):.0f})")
    print(f"{'step':>5} {'acc mean':>9} {'[min, max]':>15} {'sample acc':>10} {'length':>7} {'entropy':>8} "
          f"{'len ok':>7} {'len bad':>7}")
    for r in table:
        print(f"{r['step']:>5} {r['acc_mean']:>9.3f} [{r['acc_min']:.3f}, {r['acc_max']:.3f}] "
              f"{r['sample_acc']:>10.3f} {r['length']:>7.2f} {r['entropy']:>8.3f} "
              f"{r['length_correct']:>7.2f} {r['length_incorrect']:>7.2f}")
    for k, v in result["checks"].items():
        print(f"  {k}: {'yes' if v else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
