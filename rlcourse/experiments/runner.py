r"""The experiment runner: every experiment of the notebooks by name, over seeds, saved and resumable.

An *experiment* is a function ``run_seed(cfg, seed, progress) -> list[dict]`` registered with
:func:`experiment`: given a frozen config dataclass (with a ``quick()`` method returning the
seconds-long variant CI runs) and one seed, it returns *tidy rows*
``{"arm", "seed", "step", <metric>: value, ...}`` and calls ``progress(done, total)`` as it goes.
:func:`run` runs seeds ``0 .. K-1`` and returns plain data::

    {"name", "notebook", "config", "seeds", "curves": [tidy rows], "summary": summarize(curves),
     "seconds": {seed: wall seconds, or None if loaded from disk}, "out": directory or None}

With ``out`` (``rlcourse experiment run``'s ``--out``, default ``runs/experiments/NAME``) the
directory holds ``config.json``, one ``seed_<s>.jsonl`` per finished seed (written atomically:
temporary file, then rename) and ``summary.json``. A seed whose file exists is loaded, not re-run;
a directory made with another config is refused (``ValueError`` naming the fields that differ;
``config.json`` is left as it was). The summary's interval is described in
:mod:`rlcourse.experiments.summary`.

Command line (:func:`add_subcommands`)::

    rlcourse experiment list [--json]
    rlcourse experiment run NAME [--seeds K] [--quick] [--out DIR] [--json] [--quiet]
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import os
import pkgutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlcourse.experiments.memo import memoised
from rlcourse.experiments.summary import INTERVAL, format_interval, summarize

__all__ = ["Experiment", "EXPERIMENTS", "experiment", "load_all", "get", "run", "for_notebook", "results_dir",
           "config_record", "config_from_record", "check_arms", "over_arms", "evaluated_training", "window_mean",
           "add_subcommands"]


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: its name, notebook, one-line description, config class and seed function."""

    name: str
    notebook: str
    description: str
    config: type
    run_seed: Callable

    def default_config(self, quick: bool = False):
        cfg = self.config()
        return cfg.quick() if quick else cfg


EXPERIMENTS: dict[str, Experiment] = {}

#: Modules of this package that hold no experiment (not imported by :func:`load_all`).
NOT_EXPERIMENTS = ("runner", "summary", "memo", "settings", "cache", "registry", "budget")


def experiment(name: str, *, notebook: str, config: type, description: str | None = None):
    """Register ``run_seed(cfg, seed, progress) -> list[dict]`` as the experiment ``name``.

    ``config`` must be a frozen dataclass whose every field has a default and which has a
    ``quick()`` method (the CI variant of the config). ``description`` (what ``rlcourse experiment list``
    prints) is the first paragraph of ``run_seed``'s docstring unless given."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier, got {name!r}")
    if not (dataclasses.is_dataclass(config) and isinstance(config, type) and config.__dataclass_params__.frozen):
        raise TypeError(f"config of experiment {name!r} must be a frozen dataclass, got {config!r}")
    if not callable(getattr(config, "quick", None)):
        raise TypeError(f"config {config.__name__} of experiment {name!r} needs a quick() method (the CI variant)")

    def wrap(fn):
        text = description or " ".join(inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].split())
        if not text:
            raise ValueError(f"experiment {name!r} needs a description: give one, or a docstring to run_seed")
        if name in EXPERIMENTS and EXPERIMENTS[name].run_seed.__module__ != fn.__module__:
            raise ValueError(f"experiment {name!r} registered twice ({EXPERIMENTS[name].run_seed.__module__} "
                             f"and {fn.__module__})")
        EXPERIMENTS[name] = Experiment(name, str(notebook), text, config, fn)
        return fn

    return wrap


def check_arms(cfg, field: str, allowed) -> tuple:
    """Store the config's sequence field ``field`` as a tuple (a frozen config stays hashable) and check that it
    names distinct members of ``allowed``, at least one; ``ValueError`` naming the field otherwise."""
    value = getattr(cfg, field)
    if isinstance(value, (list, tuple)):
        value = tuple(value)
        object.__setattr__(cfg, field, value)
    if not isinstance(value, tuple) or not value or any(a not in allowed for a in value) \
            or len(set(value)) != len(value):
        raise ValueError(f"{field} must be distinct names from {list(allowed)}, got {value!r}")
    return value


def over_arms(arms, total: int, progress, run_arm) -> list[dict]:
    """The rows of ``run_arm(arm, tick)`` for every arm, in order. ``run_arm`` calls ``tick()`` after each of its
    training steps, which reports ``progress(done, total)`` across all the arms of a seed."""
    done = [0]

    def tick():
        done[0] += 1
        progress(done[0], total)

    rows: list[dict] = []
    for arm in arms:
        rows += run_arm(arm, tick)
    return rows


def evaluated_training(train, evaluate, every: int, tick=None, record=None) -> list[dict]:
    """The rows of one arm's training run with evaluations: ``evaluate(0, [])`` before it, then
    ``evaluate(n, window)`` after every ``every``-th training step ``n``.

    ``train(callback)`` runs the trainer, which calls ``callback(history_row)`` after each step (the row has
    ``step``, counted from 0). ``window`` holds the history rows since the previous evaluation, each passed
    through ``record(row) -> row`` first if given (e.g. to add what the trainer does not log); ``tick()`` is
    called after each step (:func:`over_arms`'s progress)."""
    rows = [evaluate(0, [])]
    window: list[dict] = []

    def at_step(row):
        window.append(record(row) if record is not None else row)
        if tick is not None:
            tick()
        n = row["step"] + 1
        if n % every == 0:
            rows.append(evaluate(n, list(window)))
            window.clear()

    train(at_step)
    return rows


def window_mean(rows: list[dict], key: str):
    """The mean of ``key`` over ``rows`` (e.g. the training steps since the last evaluation); None if none has it."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def load_all() -> dict[str, Experiment]:
    """Import every experiment module of :mod:`rlcourse.experiments` (which registers its experiments)."""
    import rlcourse.experiments as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in NOT_EXPERIMENTS:
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    return dict(sorted(EXPERIMENTS.items(), key=lambda kv: (kv[1].notebook, kv[0])))


def get(name: str) -> Experiment:
    """The experiment ``name``; ``ValueError`` listing the known names if there is none."""
    known = load_all()
    if name not in known:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(known)}")
    return known[name]


def config_record(name: str, cfg) -> dict:
    """The config as JSON data (tuples become lists), with the experiment's name: what ``config.json`` holds."""
    return json.loads(json.dumps({"experiment": name, **dataclasses.asdict(cfg)}))


def config_from_record(name: str, record: dict):
    """The config object of experiment ``name`` whose :func:`config_record` is ``record`` (a result's
    ``"config"``, or a ``config.json``): nested parts are rebuilt as their dataclasses, lists as tuples."""
    exp = get(name)
    if record.get("experiment", name) != name:
        raise ValueError(f"record is the config of experiment {record['experiment']!r}, not {name!r}")
    return _from_data(exp.config, {k: v for k, v in record.items() if k != "experiment"})


def _from_data(cls, data: dict):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}")
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _from_data(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _check_seeds(seeds) -> int:
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1 (runs seeds 0 .. seeds-1), got {seeds!r}")
    return seeds


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_rows(name: str, seed: int, rows) -> list[dict]:
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"experiment {name!r} returned no rows for seed {seed} (got {type(rows).__name__})")
    for r in rows:
        if not isinstance(r, dict) or any(k not in r for k in ("arm", "seed", "step")):
            raise ValueError(f"experiment {name!r}: a row must have arm, seed and step, got {r!r:.200}")
        if r["seed"] != seed:
            raise ValueError(f"experiment {name!r}: a row of seed {seed} says seed {r['seed']}")
        bad = [k for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ValueError(f"experiment {name!r}, seed {seed}, arm {r['arm']!r}, step {r['step']}: "
                             f"non-finite {bad}")
    return rows


def _load_seed(path: Path, seed: int) -> list[dict]:
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not rows or any(not isinstance(r, dict) or r.get("seed") != seed for r in rows):
            raise ValueError(f"not the rows of seed {seed}")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}); delete it to re-run seed {seed}") from e
    return rows


class RunDirectory:
    """``config.json``, ``seed_<s>.jsonl``, ``summary.json`` of one experiment's runs."""

    def __init__(self, out, name: str, cfg):
        from rlcourse.train.common import check_out, config_diff, describe_config_diff

        self.path = Path(check_out(out))
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"out={str(self.path)!r}: cannot create the directory ({e.strerror})") from e
        new = config_record(name, cfg)
        path = self.path / "config.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{path} cannot be read ({e}); delete {str(self.path)!r} to start fresh") from e
            diff = config_diff(old, new)
            if diff:
                raise ValueError(f"{str(self.path)!r} holds results of a {old.get('experiment', 'different')} run "
                                 f"whose config differs ({describe_config_diff(old, new, diff)}); they are not "
                                 f"mixed. Pass a new --out (out=), or delete that directory to start fresh.")
        else:
            _write_atomic(path, json.dumps(new, indent=1))

    def seed_path(self, seed: int) -> Path:
        return self.path / f"seed_{seed}.jsonl"

    def saved_seconds(self) -> dict:
        """``{seed: wall seconds}`` recorded when each saved seed was computed (``seconds.json``; {} if none)."""
        try:
            return {int(k): v for k, v in json.loads((self.path / "seconds.json").read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def record_seconds(self, seed: int, seconds: float) -> None:
        saved = self.saved_seconds()
        saved[seed] = round(seconds, 1)
        _write_atomic(self.path / "seconds.json", json.dumps({str(k): v for k, v in sorted(saved.items())}))


def _progress_printer(name: str, seed: int, n_seeds: int, enabled: bool):
    """The ``progress(done, total)`` callback of one seed: a tqdm bar on stderr (if enabled)."""
    state: dict = {}

    def progress(done: int, total: int) -> None:
        if not enabled:
            return
        if "bar" not in state:
            from rlcourse.train.common import progress as bar

            state["bar"] = bar(total, f"{name} seed {seed + 1}/{n_seeds}")
        state["bar"].update(done - state["bar"].n)

    def close():
        if "bar" in state:
            state["bar"].close()

    return progress, close


def run(name: str, seeds: int = 3, *, quick: bool = False, config=None, out=None, progress: bool = True,
        log: Callable[[str], None] | None = None) -> dict:
    """Run the experiment ``name`` for seeds ``0 .. seeds-1`` and return its plain-data result (module doc).

    Args:
        name: a registered experiment (see :func:`load_all`).
        seeds: K >= 1.
        quick: use ``config().quick()`` (ignored when ``config`` is given).
        config: an instance of the experiment's config class (default: its defaults).
        out: directory to save into and resume from, or None (nothing saved; memoised in this process).
        progress: a progress bar per seed on stderr.
        log: called with one line per seed (default: print to stderr when ``progress``).
    """
    exp = get(name)
    _check_seeds(seeds)
    if config is None:
        config = exp.default_config(quick)
    elif not isinstance(config, exp.config):
        raise TypeError(f"config must be a {exp.config.__name__} for experiment {name!r}, "
                        f"got {type(config).__name__}")
    if out is None:
        return _run_memo(name, seeds, config, progress=progress, log=log)
    return _run(exp, seeds, config, out, progress, log)


@memoised
def _run_memo(name, seeds, config, progress=True, log=None):
    return _run(get(name), seeds, config, None, progress, log)


def _run(exp: Experiment, seeds: int, cfg, out, progress: bool, log) -> dict:
    if log is None:
        log = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
    directory = RunDirectory(out, exp.name, cfg) if out is not None else None
    curves, seconds = [], {}
    for seed in range(seeds):
        path = directory.seed_path(seed) if directory else None
        if path is not None and path.exists():
            rows = _load_seed(path, seed)
            seconds[seed] = None
            log(f"{exp.name} seed {seed + 1}/{seeds} (seed={seed}): loaded {len(rows)} rows from {path}")
        else:
            cb, close = _progress_printer(exp.name, seed, seeds, progress)
            t0 = time.perf_counter()
            try:
                rows = _check_rows(exp.name, seed, exp.run_seed(cfg, seed, cb))
            finally:
                close()
            seconds[seed] = time.perf_counter() - t0
            if path is not None:
                _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
                directory.record_seconds(seed, seconds[seed])
            log(f"{exp.name} seed {seed + 1}/{seeds} (seed={seed}): {len(rows)} rows in {seconds[seed]:.1f} s")
        curves.extend(rows)
    summary = summarize(curves)
    if directory:
        _write_atomic(directory.path / "summary.json", json.dumps(summary, indent=1))
    saved = directory.saved_seconds() if directory else {}
    computed = {s: (saved.get(s) if seconds[s] is None else seconds[s]) for s in seconds}
    return {"name": exp.name, "notebook": exp.notebook, "config": config_record(exp.name, cfg),
            "seeds": list(range(seeds)), "curves": curves, "summary": summary, "seconds": seconds,
            "computed_seconds": computed, "out": None if directory is None else str(directory.path)}


def results_dir(name: str, quick: bool = False) -> Path:
    """Where the notebooks keep an experiment's results: ``<cache>/experiments/NAME`` (``NAME_quick``), beside
    the cached trained starts (:func:`rlcourse.experiments.cache.cache_dir`)."""
    from rlcourse.experiments.cache import cache_dir

    return cache_dir() / "experiments" / (name + ("_quick" if quick else ""))


def for_notebook(name: str, seeds: int = 3, *, config=None, echo: bool = True) -> dict:
    """What a notebook calls: :func:`run` in the mode ``$RLCOURSE_QUICK`` selects (:func:`~rlcourse.experiments.
    settings.quick`), saved in and resumed from :func:`results_dir`, and one line saying which mode produced the
    results, where they are, and how long each seed took when it was computed.

    ``config`` replaces the experiment's default (full) config; in quick mode its ``quick()`` is used."""
    from rlcourse.experiments import settings

    quick = settings.quick()
    if config is not None and quick:
        config = config.quick()
    out = results_dir(name, quick)
    result = run(name, seeds, quick=quick, config=config, out=out, progress=False)
    if echo:
        took = ", ".join("?" if s is None else f"{s:.0f}" for s in result["computed_seconds"].values())
        loaded = [s for s, v in result["seconds"].items() if v is None]
        mode = ("QUICK mode (RLCOURSE_QUICK=1: the seconds-long config the test run uses; the numbers below are "
                "not the experiment's)" if quick else "full config (RLCOURSE_QUICK unset)")
        print(f"{name}: {mode}; {seeds} seeds, wall seconds per seed when computed: {took}"
              + (f"; seeds {loaded} loaded from {out}" if loaded else f"; saved in {out}"))
    return result


# ============================================================================ command line

def _seeds_arg(text: str) -> int:
    import argparse

    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {k}")
    return k


def default_out(name: str, quick: bool = False) -> str:
    """``runs/experiments/NAME`` (``NAME_quick`` for ``--quick``, so the two configs never meet in one directory)."""
    return os.path.join("runs", "experiments", name + ("_quick" if quick else ""))


def cmd_list(args) -> int:
    exps = load_all()
    if args.json:
        print(json.dumps([{"name": e.name, "notebook": e.notebook, "description": e.description}
                          for e in exps.values()], indent=1))
        return 0
    for e in exps.values():
        print(f"{e.name:<22} {e.notebook:<4} {e.description}")
    return 0


def cmd_run(args) -> int:
    out = args.out if args.out is not None else default_out(args.name, args.quick)
    try:
        result = run(args.name, args.seeds, quick=args.quick, out=out, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"rlcourse experiment: interrupted; finished seeds are saved in {out}; run the same command to "
              "resume", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as e:
        print(f"rlcourse experiment: {e}", file=sys.stderr)
        return 2
    if args.json:
        keys = ("name", "notebook", "config", "seeds", "curves", "summary", "seconds", "out")
        print(json.dumps({k: result[k] for k in keys}))
        return 0
    print(f"{result['name']} (notebook {result['notebook']}), seeds {result['seeds']}; {INTERVAL}")
    print("final value per arm:")
    for p in result["summary"]["final"]:
        print(f"  {p['arm']:<20} {p['metric']:<14} {format_interval(p, '.4g')}")
    print(f"saved in {result['out']} (config.json, seed_<s>.jsonl, summary.json)")
    return 0


def add_subcommands(sub) -> None:
    """Add ``experiment list`` and ``experiment run`` to the parser of ``rlcourse``."""
    e = sub.add_parser("experiment", help="the notebooks' experiments: list them, run one over seeds")
    esub = e.add_subparsers(dest="experiment_command", required=True)
    ls = esub.add_parser("list", help="every experiment: name, notebook, description")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.set_defaults(func=cmd_list)
    r = esub.add_parser("run", help="run an experiment over seeds 0..K-1; saves and resumes per seed")
    r.add_argument("name", metavar="NAME", help="an experiment (see 'rlcourse experiment list')")
    r.add_argument("--seeds", type=_seeds_arg, default=3, metavar="K", help="run seeds 0..K-1 (default 3)")
    r.add_argument("--quick", action="store_true", help="the seconds-long config CI uses")
    r.add_argument("--out", default=None, metavar="DIR",
                   help="directory of config.json, seed_<s>.jsonl, summary.json (default runs/experiments/NAME, or NAME_quick)")
    r.add_argument("--json", action="store_true",
                   help="print one JSON object: name, config, seeds, curves (tidy rows), summary")
    r.add_argument("--quiet", action="store_true", help="no progress on stderr")
    r.set_defaults(func=cmd_run)
