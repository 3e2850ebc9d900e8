"""The package's layout holds: imports point down the layers (core -> derivations -> lm -> train -> experiments ->
plots -> cli), no module import circle (lazy imports inside functions included), no trainer imports another
trainer, and nothing in plots imports the trainers. Read from the source with ast: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rlcourse"

#: The layers, lowest first; a module may import its own layer and the layers below it. ``core``: the top-level
#: modules (toymdp, logprobs, losses, ...). Exercises sit on the core (the labs use the core's functions);
#: the command line and the site sit on top.
LAYERS = ("core", "derivations", "exercises", "lm", "train", "experiments", "plots", "top")
TOP = {"cli", "site", "prereq", "__main__"}
#: Modules of rlcourse.train that every trainer may use; the others are trainers.
TRAIN_SHARED = {"rlcourse.train", "rlcourse.train.common", "rlcourse.train.bugs", "rlcourse.train.distinct_rows"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: the rlcourse modules it imports}``, every import statement counted (also inside functions)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        targets: set[str] = set()
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names = [f"{module}.{a.name}" for a in node.names]
                # "from pkg import submodule" imports the submodule; "from module import name", the module
                targets |= {resolve(n) if n in modules else resolve(module) for n in names}
            elif isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names if a.name.startswith("rlcourse")}
        graph[mod] = {t for t in targets if t and t != mod and t.startswith("rlcourse")}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"
    if parts[1] in LAYERS:
        return parts[1]
    return "top" if parts[1] in TOP else "core"


def upward_imports(graph) -> list[tuple[str, str]]:
    """The imports that point up the layers (the package's own ``rlcourse/__init__`` is the top)."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    return sorted((m, t) for m, ts in graph.items() for t in ts
                  if t != "rlcourse" and rank[layer(t)] > rank[layer(m)])


def cycles(graph) -> list[list[str]]:
    """Every import circle found by a depth-first search (each reported once, from where it was entered)."""
    found, state = [], {}

    def visit(u, stack):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if v == "rlcourse" or (u.startswith(v + ".") and v in graph):  # a module importing its package
                continue
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_imports_point_down_the_layers(graph):
    assert upward_imports(graph) == []


def test_no_import_circle(graph):
    assert cycles(graph) == []


def test_no_trainer_imports_another_trainer(graph):
    trainers = {m for m in graph if m.startswith("rlcourse.train.") and m not in TRAIN_SHARED}
    assert len(trainers) >= 6
    assert {m: sorted(graph[m] & trainers) for m in trainers if graph[m] & trainers} == {}


def test_plots_never_import_the_trainers(graph):
    assert {m: sorted(t for t in ts if t.startswith("rlcourse.train")) for m, ts in graph.items()
            if m.startswith("rlcourse.plots") and any(t.startswith("rlcourse.train") for t in ts)} == {}


def test_the_checks_catch_an_upward_import_and_a_circle():
    """Negative controls on made-up graphs: an lm module importing a trainer, and a two-module circle."""
    bad = {"rlcourse.lm.model": {"rlcourse.train.grpo"}, "rlcourse.train.grpo": {"rlcourse.lm.model"}}
    assert upward_imports(bad) == [("rlcourse.lm.model", "rlcourse.train.grpo")]
    assert cycles(bad) == [["rlcourse.lm.model", "rlcourse.train.grpo", "rlcourse.lm.model"]]
    assert upward_imports({"rlcourse.train.grpo": {"rlcourse.lm.model"}}) == []
    assert cycles({"rlcourse.a": {"rlcourse.b"}, "rlcourse.b": set()}) == []


def test_the_graph_sees_lazy_and_relative_imports(graph):
    """The graph is not empty-handed: a relative import and an import inside a function are both read."""
    assert "rlcourse.lm.quiet" in graph["rlcourse.lm.tokenizer"]            # from .quiet import ...
    assert "rlcourse.experiments.runner" in graph["rlcourse.plots.experiments"]  # inside saved_run
