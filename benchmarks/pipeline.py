"""The whole chain on the tiny preset: SFT -> reward model -> REINFORCE -> PPO -> GRPO -> DPO.

Prints, per algorithm, held-out accuracy before and after (pairwise accuracy on held-out
pairs for the reward model) and the training seconds (evaluation excluded). The SFT start is
the cached one (``sft_start``): its figures are those recorded when it was trained.

    python benchmarks/pipeline.py                 # table
    python benchmarks/pipeline.py --json          # [{"algorithm", "accuracy_before", "accuracy_after", "train_seconds"}]
    python benchmarks/pipeline.py --only grpo ppo

Targets (issue 3): SFT start in [20%, 60%]; GRPO >= 95% within 5 minutes; PPO >= 90%;
REINFORCE with a baseline >= 85%; DPO >= 15 points above its start; reward model >= 90%.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from rlcourse.experiments import registry
from rlcourse.experiments import sft_start, sft_start_info

ORDER = ("sft", "rm", "reinforce", "ppo", "grpo", "dpo")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default=os.environ.get("RLCOURSE_PRESET", "tiny"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=ORDER, default=list(ORDER))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    rows = []
    t0 = time.perf_counter()
    sft_start(args.preset, args.seed, progress=not args.json)  # trains once, then cached
    for name in args.only:
        if name == "sft":
            info = sft_start_info(args.preset, args.seed)
            rows.append({"algorithm": "sft", "accuracy_before": info["before"].get("accuracy"),
                         "accuracy_after": info["after"]["accuracy"], "train_seconds": info["seconds"],
                         "pass@1_after": info["after"].get("pass@1"), "pass@8_after": info["after"].get("pass@8")})
            continue
        res = registry.run(name, preset=args.preset, seed=args.seed, progress=not args.json)
        key = registry.headline(name)
        row = {"algorithm": name, "accuracy_before": res.before.get(key), "accuracy_after": res.after.get(key),
               "train_seconds": round(res.seconds, 2)}
        for k in ("pass@1", "pass@8"):  # RL turns pass@k into pass@1: both, before and after
            if k in res.after:
                row[f"{k}_before"], row[f"{k}_after"] = res.before.get(k), res.after[k]
        rows.append(row)
        if not args.json:
            print(f"{name}: {row}", file=sys.stderr, flush=True)

    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    def pct(r, key):
        return "-" if r.get(key) is None else f"{r[key]:.1%}"

    print(f"{'algorithm':<10} {'before':>8} {'after':>8} {'pass@1':>17} {'pass@8':>17} {'train s':>9}")
    for r in rows:
        p1 = f"{pct(r, 'pass@1_before')} -> {pct(r, 'pass@1_after')}"
        p8 = f"{pct(r, 'pass@8_before')} -> {pct(r, 'pass@8_after')}"
        print(f"{r['algorithm']:<10} {pct(r, 'accuracy_before'):>8} {pct(r, 'accuracy_after'):>8} {p1:>17} {p8:>17} "
              f"{r['train_seconds']:>9.1f}")
    print(f"(rm: held-out pairwise accuracy; others: held-out greedy accuracy; total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
