"""Command line: ``rlcourse verify | train | figures | exercises | check``.

``rlcourse verify`` runs every derivation check and prints a table (or JSON with ``--json``);
it exits with status 1 if any check fails. ``rlcourse train ALGO`` trains one algorithm of the
course on the small LM (from the cached SFT start) and prints held-out accuracy before and
after. ``rlcourse figures`` regenerates the course's
figures into ``figures/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _fmt(x) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list):
        head = ", ".join(f"{v:.4g}" for v in x[:3])
        return f"[{head}{', …' if len(x) > 3 else ''}] ({len(x)})"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def cmd_verify(args) -> int:
    from rlcourse import derivations

    t0 = time.perf_counter()
    try:
        results = derivations.run(args.only)
    except ValueError as e:
        print(f"rlcourse verify: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    rows = [c for _, checks, _ in results for c in checks]
    failed = [c for c in rows if not c.passed]
    if args.json:
        keys = ("derivation", "check", "kind", "expected", "observed", "tolerance", "passed")
        print(json.dumps([{k: getattr(c, k) for k in keys} | {"error": c.error, "detail": c.detail}
                          for c in rows], indent=1))
        return 1 if failed else 0

    header = f"{'derivation':<24} {'seeds':<16} {'kind':<16} {'check':<52} {'expected':<26} {'observed':<26} {'tolerance':<10} status"
    print(header)
    print("-" * len(header))
    for d, checks, secs in results:
        for c in checks:
            tol = c.tolerance if isinstance(c.tolerance, str) else f"{c.tolerance:.2g}"
            status = "ok" if c.passed else "FAIL"
            if c.kind == "negative_control":
                status = "rejected" if c.passed else "FAIL (accepted)"
            print(f"{d.name:<24} {_cut(d.seeds, 16):<16} {c.kind:<16} {_cut(c.check, 52):<52} "
                  f"{_cut(_fmt(c.expected), 26):<26} {_cut(_fmt(c.observed), 26):<26} {tol:<10} {status}")
    kinds = {k: sum(c.kind == k for c in rows) for k in ("exact", "monte_carlo", "negative_control", "symbolic")}
    print("-" * len(header))
    print(f"{len(results)} derivations, {len(rows)} checks ({', '.join(f'{v} {k}' for k, v in kinds.items())}); "
          f"{len(rows) - len(failed)} passed, {len(failed)} failed; {elapsed:.1f} s")
    for c in failed:
        print(f"FAILED {c.derivation}: {c.check} (error {c.error}, tolerance {c.tolerance}) {c.detail}")
    return 1 if failed else 0


def cmd_train(args) -> int:
    from rlcourse.train import registry

    options = {"preset": args.preset, "seed": args.seed, "steps": args.steps, "out": args.out,
               "device": args.device}
    if args.variant is not None:
        if args.algorithm != "grpo":
            print("rlcourse train: --variant applies to grpo only", file=sys.stderr)
            return 2
        options["variant"] = args.variant
    if args.baseline is not None:
        if args.algorithm != "reinforce":
            print("rlcourse train: --baseline applies to reinforce only", file=sys.stderr)
            return 2
        options["baseline"] = args.baseline
    try:
        result = registry.run(args.algorithm, progress=not args.quiet, **options)
    except ValueError as e:
        print(f"rlcourse train: {e}", file=sys.stderr)
        return 2
    key = registry.headline(args.algorithm)
    name = "held-out pair accuracy" if key == "pair_accuracy" else "held-out accuracy (greedy)"
    before, after = result.before.get(key), result.after.get(key)
    if before is not None:
        print(f"{args.algorithm}: {name} before {before:.1%}")
    print(f"{args.algorithm}: {name} after  {after:.1%}  ({result.seconds:.1f} s of training)")
    for k in sorted(result.after):
        if k != key and isinstance(result.after[k], (int, float)):
            print(f"  {k}: {result.before.get(k, float('nan')):.4g} -> {result.after[k]:.4g}")
    if result.out is not None:
        print(f"run directory: {result.out}")
    return 0


def cmd_figures(args) -> int:
    from rlcourse import plots

    if args.list:
        for name in plots.load_all():
            print(name)
        return 0
    t0 = time.perf_counter()
    try:
        paths = plots.build(args.only, args.out)
    except ValueError as e:
        print(f"rlcourse figures: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    print(f"{len(paths)} figures in {time.perf_counter() - t0:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlcourse", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="run every derivation check")
    v.add_argument("--only", action="append", metavar="NAME", help="run only this derivation (repeatable)")
    v.add_argument("--json", action="store_true", help="print a JSON list of checks")
    v.set_defaults(func=cmd_verify)
    t = sub.add_parser("train", help="train one algorithm on the small LM")
    t.add_argument("algorithm", choices=["sft", "rm", "reinforce", "ppo", "grpo", "dpo"])
    t.add_argument("--preset", choices=["tiny", "small"], default=None, help="model preset (default tiny)")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the course recipe)")
    t.add_argument("--out", default=None, help="run directory: config, history, checkpoints; resumes if present")
    t.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    t.add_argument("--variant", default=None, choices=["grpo", "dr_grpo", "dapo", "gspo"], help="grpo variant")
    t.add_argument("--baseline", default=None, choices=["none", "mean", "rloo"], help="reinforce baseline")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    f = sub.add_parser("figures", help="regenerate the course's figures (PNG) into figures/")
    f.add_argument("--only", action="append", metavar="NAME", help="build only this figure (repeatable)")
    f.add_argument("--out", default=None, help="output directory (default: the repository's figures/)")
    f.add_argument("--list", action="store_true", help="list the figure names and exit")
    f.set_defaults(func=cmd_figures)
    from rlcourse.exercises.cli import add_subcommands as add_exercise_commands

    add_exercise_commands(sub)  # exercises list|build|selftest, check NOTEBOOK|ID
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
