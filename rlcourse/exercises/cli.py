"""Command line of the labs: ``rlcourse exercises list|build|selftest`` and ``rlcourse check NOTEBOOK|ID``.

``rlcourse check NOTEBOOK.ipynb`` executes a student's notebook offline and grades each
exercise it checks; ``rlcourse check ID`` grades the registered reference solution of one
exercise (an instructor's sanity check), or, with ``--variant NAME``, one of its registered
wrong variants (to show what a student with that bug sees). Exit status: 0 if every graded
exercise passed, 1 if any failed (including "not implemented"), 2 on bad arguments.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _rows_table(rows: list[dict]) -> str:
    width = max([len(r["id"]) for r in rows] + [8])
    lines = [f"{'exercise':<{width}}  {'status':<16} points  first failing property (input)"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        fail = r["failures"][0] if r["failures"] else None
        extra = ""
        if fail and r["status"] != "not implemented":
            extra = fail["property"] if fail["property"] != r["status"] else fail["detail"]
            if fail.get("input"):
                extra += f" (on {fail['input']})"
        pts = f"{r['points']}/{r.get('max_points', r['points'])}"
        lines.append(f"{r['id']:<{width}}  {r['status']:<16} {pts:<6}  {extra}"[:240].rstrip())
    got, total = sum(r["points"] for r in rows), sum(r.get("max_points", r["points"]) for r in rows)
    n_ok = sum(r["passed"] for r in rows)
    lines.append("-" * len(lines[0]))
    lines.append(f"{n_ok}/{len(rows)} exercises passed, {got}/{total} points")
    return "\n".join(lines)


def cmd_list(args) -> int:
    from rlcourse.exercises import load_all

    exs = [e for e in load_all().values() if args.lecture is None or e.lecture == args.lecture]
    if args.json:
        print(json.dumps([{k: e.to_json()[k] for k in ("id", "lecture", "title", "points", "difficulty", "kind")}
                          for e in exs], indent=1))
        return 0
    print(f"{'id':<28} {'lecture':<7} {'points':<6} {'difficulty':<10} {'kind':<10} title")
    for e in exs:
        print(f"{e.id:<28} {e.lecture:<7} {e.points:<6} {e.difficulty:<10} {e.kind:<10} {e.title}")
    print(f"{len(exs)} exercises, {sum(e.points for e in exs)} points")
    return 0


def cmd_build(args) -> int:
    from rlcourse.exercises.notebooks import build

    try:
        paths = build(args.out, args.source)
    except (ValueError, OSError) as e:
        print(f"rlcourse exercises build: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


def cmd_selftest(args) -> int:
    from rlcourse.exercises import selftest

    t0 = time.perf_counter()
    rows = selftest(seed=args.seed)
    ok = [r["reference_passed"] and not r["variants_accepted"] for r in rows]
    if args.json:
        keys = ("id", "reference_passed", "variants", "variants_rejected", "variants_accepted", "reference_seconds")
        print(json.dumps([{k: r[k] for k in keys} for r in rows], indent=1))
        return 0 if all(ok) else 1
    print(f"{'exercise':<28} {'reference':<9} {'rejected':<8} {'secs':<5} wrong variants")
    for r, good in zip(rows, ok):
        ref = "passes" if r["reference_passed"] else "FAILS"
        rej = f"{len(r['variants_rejected'])}/{len(r['variants'])}"
        names = ", ".join(r["variants"]) if not r["variants_accepted"] else \
            "ACCEPTED: " + ", ".join(r["variants_accepted"])
        print(f"{r['id']:<28} {ref:<9} {rej:<8} {r['reference_seconds']:<5.2f} {names}")
        if not r["reference_passed"]:
            for f in r["reference_failures"]:
                print(f"    reference fails {f['property']}: {f['detail']} ({f['input']})")
    n_var = sum(len(r["variants"]) for r in rows)
    n_rej = sum(len(r["variants_rejected"]) for r in rows)
    slowest = max(rows, key=lambda r: r["reference_seconds"])
    print(f"{len(rows)} exercises: {sum(r['reference_passed'] for r in rows)} references pass, {n_rej}/{n_var} wrong "
          f"variants rejected; slowest grader {slowest['id']} {slowest['reference_seconds']:.2f} s; "
          f"{time.perf_counter() - t0:.1f} s in all (seed {args.seed})")
    return 0 if all(ok) else 1


def cmd_check(args) -> int:
    from rlcourse.exercises import get
    from rlcourse.exercises.notebooks import grade_notebook

    target = args.target
    is_notebook = target.endswith(".ipynb") or Path(target).exists()
    if args.variant is not None and is_notebook:
        print("rlcourse check: --variant applies to an exercise id, not to a notebook", file=sys.stderr)
        return 2
    try:
        if is_notebook:
            rows = grade_notebook(target, seed=args.seed)
            if not rows:
                print(f"rlcourse check: {target} has no check(\"NN.name\", ...) cell", file=sys.stderr)
                return 2
            results = None
        else:
            ex = get(target)
            if args.variant is None:
                candidate = ex.reference
            elif args.variant in ex.wrong:
                candidate = ex.wrong[args.variant]
            else:
                print(f"rlcourse check: {target} has no wrong variant {args.variant!r}; its variants: "
                      f"{', '.join(sorted(ex.wrong))}", file=sys.stderr)
                return 2
            results = [ex.grade(candidate, args.seed)]
            rows = [r.to_json() for r in results]
    except (ValueError, FileNotFoundError) as e:
        print(f"rlcourse check: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=1))
    elif results is not None:
        print(results[0].table())
    else:
        print(_rows_table(rows))
    return 0 if all(r["passed"] for r in rows) else 1


def add_subcommands(sub) -> None:
    """Add ``exercises`` (list, build, selftest) and ``check`` to the parser of ``rlcourse``."""
    e = sub.add_parser("exercises", help="the labs' exercises: list, build student/solution notebooks, selftest")
    esub = e.add_subparsers(dest="exercises_command", required=True)
    ls = esub.add_parser("list", help="list every exercise (id, lecture, title, points, difficulty)")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--lecture", type=int, default=None, help="only this lecture's exercises")
    ls.set_defaults(func=cmd_list)
    b = esub.add_parser("build", help="write OUT/student/*.ipynb and OUT/solutions/*.ipynb from the lab sources")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--source", default=None, help="source notebooks (default: the repository's labs/source)")
    b.set_defaults(func=cmd_build)
    s = esub.add_parser("selftest", help="every reference passes its grader, every wrong variant is rejected")
    s.add_argument("--json", action="store_true")
    s.add_argument("--seed", type=int, default=0, help="seed of the graders' random inputs")
    s.set_defaults(func=cmd_selftest)
    c = sub.add_parser("check", help="grade a lab notebook (executes it), or an exercise's reference by id")
    c.add_argument("target", metavar="NOTEBOOK|ID")
    c.add_argument("--json", action="store_true", help="print JSON rows {id, passed, points, failures}")
    c.add_argument("--seed", type=int, default=0, help="seed of the graders' random inputs (per-student variation)")
    c.add_argument("--variant", default=None, help="with an ID: grade this registered wrong variant instead")
    c.set_defaults(func=cmd_check)
