"""Command line: ``rlcourse verify | train | experiment | figures | exercises | check | site | slides | bugs``.

``rlcourse verify`` runs every derivation check and prints a table (or JSON with ``--json``);
it exits with status 1 if any check fails. ``rlcourse train ALGO`` trains one algorithm of the
course on the small LM (from the cached SFT start) and prints held-out accuracy before and
after. ``rlcourse figures`` regenerates the course's
figures into ``figures/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _fmt(x, width: int = 12) -> str:
    """A value in at most ``width`` characters: numbers to 4 significant digits, lists as [first, …](n)."""
    if isinstance(x, str):
        out = x
    elif isinstance(x, list):
        out = f"[{x[0]:.2g}…]({len(x)})" if x else "[]"
    elif isinstance(x, float):
        out = f"{x:.4g}"
    else:
        out = str(x)
    return out if len(out) <= width else out[: width - 1] + "…"


#: Short names of the check kinds in the table (the JSON keeps the full names).
KIND_ABBREV = {"exact": "exact", "monte_carlo": "MC", "negative_control": "neg", "symbolic": "sym",
               "inequality": "ineq", "error": "ERROR"}
TABLE_WIDTH = 100


def verify_table(results, elapsed: float) -> list[str]:
    """The verify report as lines of at most ``TABLE_WIDTH`` characters; check names wrap, never cut."""
    import textwrap

    check_w = 54
    lines = [f"{'kind':<5} {'check':<{check_w}} {'expected':<12} {'observed':<12} status",
             "-" * TABLE_WIDTH]
    rows = [c for _, checks, _ in results for c in checks]
    for d, checks, secs in results:
        head = f"{d.name} [{d.source or 'checker'}] {len(checks)} checks, {secs:.2f} s"
        lines.extend(textwrap.wrap(head, TABLE_WIDTH, subsequent_indent="    "))
        for c in checks:
            status = "ok" if c.passed else "FAIL"
            if c.kind == "negative_control":
                status = "rejected" if c.passed else "FAIL:accepted"
            name = textwrap.wrap(c.check, check_w) or [""]
            lines.append(f"{KIND_ABBREV.get(c.kind, c.kind):<5} {name[0]:<{check_w}} {_fmt(c.expected):<12} "
                         f"{_fmt(c.observed):<12} {status}")
            lines.extend(f"{'':<5} {more}" for more in name[1:])
    failed = [c for c in rows if not c.passed]
    kinds = {k: sum(c.kind == k for c in rows) for k in KIND_ABBREV}
    lines.append("-" * TABLE_WIDTH)
    summary = (f"{len(results)} derivations, {len(rows)} checks "
               f"({', '.join(f'{v} {k}' for k, v in kinds.items() if v)}); "
               f"{len(rows) - len(failed)} passed, {len(failed)} failed; {elapsed:.1f} s")
    lines.extend(textwrap.wrap(summary, TABLE_WIDTH))
    for c in failed:
        lines.extend(textwrap.wrap(f"FAILED {c.derivation}: {c.check} (error {c.error}, tolerance {c.tolerance}) "
                                   f"{c.detail}", TABLE_WIDTH, subsequent_indent="    "))
    return lines


def cmd_verify(args) -> int:
    from rlcourse import derivations

    t0 = time.perf_counter()
    try:
        results = derivations.run(args.only)
    except ValueError as e:
        print(f"rlcourse verify: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    rows = [(d, c) for d, checks, _ in results for c in checks]
    failed = [c for _, c in rows if not c.passed]
    if args.json:
        keys = ("derivation", "check", "kind", "expected", "observed", "tolerance", "passed")
        print(json.dumps([{k: getattr(c, k) for k in keys} | {"source": d.source, "error": c.error,
                                                               "detail": c.detail}
                          for d, c in rows], indent=1))
        return 1 if failed else 0
    print("\n".join(verify_table(results, elapsed)))
    return 1 if failed else 0


def cmd_train(args) -> int:
    from rlcourse.experiments import registry

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
    if args.bug is not None:  # the silent-bug lab: checked here so that sft, rm and dpo refuse it clearly
        from rlcourse.train import bugs
        try:
            options["bug"] = bugs.check(args.bug, args.algorithm)
        except ValueError as e:
            print(f"rlcourse train: {e}", file=sys.stderr)
            return 2
    if args.model is not None:
        if args.preset is not None:
            print("rlcourse train: --preset and --model exclude each other (--model names the model)", file=sys.stderr)
            return 2
        options["model_dir"] = args.model
        options["chat_template"] = not args.no_chat_template
    elif args.no_chat_template:
        print("rlcourse train: --no-chat-template applies with --model only (the course's tokenizer has no "
              "chat template)", file=sys.stderr)
        return 2
    from rlcourse.train.common import NonFiniteLossError, TrainingInterrupted

    try:
        result = registry.run(args.algorithm, progress=not args.quiet, **options)
    except TrainingInterrupted as e:  # Ctrl-C: one line, no traceback
        print(f"rlcourse train: {e.message}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the first step (e.g. while the SFT start trains: it resumes too)
        print("rlcourse train: interrupted before the first step; run the same command to resume",
              file=sys.stderr)
        return 130
    except (ValueError, NonFiniteLossError) as e:
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
    if args.out is not None and (not args.out.strip() or (os.path.exists(args.out) and not os.path.isdir(args.out))):
        print(f"rlcourse figures: --out must be a directory, got {args.out!r}", file=sys.stderr)
        return 2
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
    p = argparse.ArgumentParser(
        prog="rlcourse",
        description="rlcourse: reinforcement learning for LLMs, derived, checked numerically, and run on a "
                    "small LM trained from scratch. Run 'rlcourse COMMAND --help' for a command's options.")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="run every derivation check")
    v.add_argument("--only", action="append", metavar="NAME", help="run only this derivation (repeatable)")
    v.add_argument("--json", action="store_true", help="print a JSON list of checks")
    v.set_defaults(func=cmd_verify)
    t = sub.add_parser("train", help="train one algorithm on the small LM")
    t.add_argument("algorithm", choices=["sft", "rm", "reinforce", "ppo", "grpo", "dpo"],
                   help="sft (the SFT start), rm (Bradley-Terry reward model), reinforce, ppo, grpo or dpo")
    t.add_argument("--preset", choices=["tiny", "small"], default=None, help="model preset (default tiny)")
    t.add_argument("--seed", type=int, default=None,
                   help="training seed (default 0); the SFT start of a new seed is trained first (minutes)")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the course recipe)")
    t.add_argument("--out", default=None, help="run directory: config, history, checkpoints; resumes if present")
    t.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    t.add_argument("--variant", default=None, choices=["grpo", "dr_grpo", "dapo", "gspo"], help="grpo variant")
    t.add_argument("--baseline", default=None, choices=["none", "mean", "rloo"], help="reinforce baseline")
    t.add_argument("--bug", default=None, metavar="NAME",
                   help="inject a silent bug (debugging lab; 'rlcourse bugs list' names them and their trainers)")
    t.add_argument("--model", default=None, metavar="DIR",
                   help="start from a local Hugging Face causal LM (safetensors, its own tokenizer; no remote "
                        "code, no download) instead of the course's model; sft fine-tunes it")
    t.add_argument("--no-chat-template", action="store_true",
                   help="with --model: give the model the raw prompt, not its chat template's user turn")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    f = sub.add_parser("figures", help="regenerate the course's figures (PNG) into figures/")
    f.add_argument("--only", action="append", metavar="NAME", help="build only this figure (repeatable)")
    f.add_argument("--out", default=None, help="output directory (default: the repository's figures/)")
    f.add_argument("--list", action="store_true", help="list the figure names and exit")
    f.set_defaults(func=cmd_figures)
    from rlcourse import site
    from rlcourse.exercises.cli import add_subcommands as add_exercise_commands

    add_exercise_commands(sub)  # exercises list|build|selftest, check NOTEBOOK|ID
    site.add_subcommands(sub)
    from rlcourse.experiments.runner import add_subcommands as add_experiment_commands

    add_experiment_commands(sub)  # experiment list|run
    from rlcourse.train import bugs

    bugs.add_subcommands(sub)  # bugs list|detect (the debugging lab)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
