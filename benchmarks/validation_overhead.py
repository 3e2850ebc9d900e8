"""Validation overhead of the public GRPO loss: validation time / arithmetic time, median of repeats.

Public core functions validate their arguments once and then run unchecked private arithmetic;
this prints how much the validation costs relative to the arithmetic on a GRPO-sized batch
(default 64 completions x 512 tokens, float32, KL term on, as a TRL-style GRPO step computes it).
Target: validation alone <= 0.20 of the arithmetic. The end-to-end difference of a checked and an
unchecked call is printed too; it is larger than the validation alone by about half as much again. The
third line shows where that gap comes from: the validation followed by the unchecked arithmetic, timed as one
call, costs what the checked call costs, so the public wrapper does no work beyond its validation; the
validation simply costs more back to back with the arithmetic than in a loop of its own (the two
compete for the caches and the allocator). Times are the CPU time of this thread (``time.thread_time``;
torch runs on one thread here), so that other processes on a shared machine do not inflate one side of
the ratio.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/validation_overhead.py [--rows 64] [--tokens 512]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rlcourse.logprobs import _check_agg_kwargs
from rlcourse.losses import _advantages, _check_grpo, _grpo_loss, _resolve_agg, grpo_loss
from rlcourse.threads import set_cpu_threads


def timed(fn, repeats: int, inner: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(inner):
            fn()
        times.append((time.thread_time() - t0) / inner)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--inner", type=int, default=20)
    args = ap.parse_args()
    set_cpu_threads(1)
    g = torch.Generator().manual_seed(0)
    B, T = args.rows, args.tokens
    logp = -torch.rand(B, T, generator=g) * 3 - 1e-3
    logp_old = (logp + 0.1 * torch.randn(B, T, generator=g)).clamp(max=-1e-3)
    logp_ref = (logp + 0.1 * torch.randn(B, T, generator=g)).clamp(max=-1e-3)
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    adv = torch.randn(B, generator=g)
    kw = dict(eps_low=0.2, eps_high=0.28, beta=0.04, logp_ref=logp_ref, aggregation="token-mean")

    def checked():
        return grpo_loss(logp, logp_old, adv, mask, **kw)

    level, low, high, beta, delta, clamp = _check_grpo(logp, logp_old, mask, 0.2, 0.28, "token", 0.04, logp_ref,
                                                       "k3", None, None)
    adv2 = adv.reshape(B, 1)

    def unchecked():
        # the aggregation's normaliser (the batch's token count, one host sync) is part of the arithmetic
        agg = _check_agg_kwargs(mask, "token-mean", None, None, None)
        return _grpo_loss(logp, logp_old, adv2, mask, low, high, level, beta, logp_ref, "k3", delta, False, clamp, agg)

    def validation_only():
        _check_grpo(logp, logp_old, mask, 0.2, 0.28, "token", 0.04, logp_ref, "k3", None, None, advantages=adv)
        _resolve_agg("token-mean", mask, {})
        _advantages(adv, logp, "logp")

    def validation_then_math():
        validation_only()
        return unchecked()

    assert torch.equal(checked()[0], unchecked()[0])
    for _ in range(5):
        checked(), unchecked(), validation_then_math()
    # interleave them so that load from other processes hits them alike; medians over repeats
    runs = [(timed(checked, 1, args.inner), timed(unchecked, 1, args.inner), timed(validation_only, 1, args.inner),
             timed(validation_then_math, 1, args.inner)) for _ in range(args.repeats)]
    t_checked = statistics.median(c for c, _, _, _ in runs)
    t_math = statistics.median(u for _, u, _, _ in runs)
    t_valid = statistics.median(v for _, _, v, _ in runs)
    cost = statistics.median(v / u for _, u, v, _ in runs)
    ratio = statistics.median((c - u) / u for c, u, _, _ in runs)
    both = statistics.median(b / c for c, _, _, b in runs)
    print(f"grpo_loss on ({B}, {T}) float32, KL on: checked {t_checked * 1e3:.3f} ms, "
          f"unchecked math {t_math * 1e3:.3f} ms, validation alone {t_valid * 1e3:.3f} ms")
    print(f"validation cost = validation alone / math = {cost:.3f}  (median of {args.repeats} interleaved repeats; "
          f"target <= 0.20)")
    print(f"end to end (checked - unchecked) / unchecked = {ratio:.3f}  (the validation back to back with the math)")
    print(f"validation then unchecked math, timed as one call / checked call = {both:.3f}  (1: the wrapper adds "
          f"nothing beyond the validation; see the module doc)")

if __name__ == "__main__":
    main()
