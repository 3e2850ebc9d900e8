"""Lab notebooks: build student and solution versions from one source, execute a notebook and grade it.

Source notebooks (``labs/source/NN_<topic>.ipynb``) keep each solution between nbgrader's
markers ``### BEGIN SOLUTION`` / ``### END SOLUTION`` in cells whose metadata marks them as
solution cells, so an instructor can also import them into nbgrader. :func:`clear_solutions`
does what nbgrader's ``ClearSolutions`` + ``ClearOutput`` do: each marked region becomes
``# YOUR CODE HERE`` / ``raise NotImplementedError()`` at the region's indentation, and every
output is cleared. :func:`build` writes ``student/`` and ``solutions/`` and is deterministic.

:func:`grade_notebook` executes a notebook offline (nbclient, a kernel running this very
Python), with ``RLCOURSE_CHECK_RESULTS`` pointing at a file to which every ``check(...)`` cell
appends its result, and returns one row per exercise of the notebook.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from pathlib import Path

import nbformat

from rlcourse.exercises import RESULTS_ENV, SEED_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = REPO_ROOT / "labs" / "source"
STUDENT_DIR = REPO_ROOT / "labs" / "student"

BEGIN, END = "BEGIN SOLUTION", "END SOLUTION"
CODE_STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
TEXT_STUB = ["YOUR ANSWER HERE"]
CHECK_CALL = re.compile(r"""check\(\s*["'](\d\d\.[A-Za-z0-9_]+)["']""")


def _is_solution(cell) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution", False))


def _clear_region(source: str, stub: list[str]) -> tuple[str, bool]:
    out, inside, replaced = [], False, False
    for line in source.split("\n"):
        if BEGIN in line:
            if inside:
                raise ValueError("nested '### BEGIN SOLUTION' markers")
            inside = replaced = True
            indent = re.match(r"\s*", line).group(0)
            out.extend(indent + s for s in stub)
        elif END in line:
            if not inside:
                raise ValueError("'### END SOLUTION' without a matching BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("'### BEGIN SOLUTION' without a matching END")
    return "\n".join(out), replaced


def clear_outputs(nb):
    """A copy of ``nb`` with every output and execution count removed."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("celltoolbar", None)
    return nb


def clear_solutions(nb):
    """The student version of a source notebook (nbgrader's ClearSolutions, then ClearOutput)."""
    nb = clear_outputs(nb)
    for cell in nb.cells:
        stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
        cell.source, replaced = _clear_region(cell.source, stub)
        if replaced and not _is_solution(cell):
            raise ValueError(f"cell {cell.get('id', '?')} has a solution region but no nbgrader solution metadata")
        if _is_solution(cell) and not replaced:
            cell.source = "\n".join(stub)
    return nb


def dumps(nb) -> str:
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def sources(source_dir: Path | None = None) -> list[Path]:
    d = Path(source_dir) if source_dir else SOURCE_DIR
    paths = sorted(d.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise ValueError(f"no lab notebooks (NN_<topic>.ipynb) in {d}")
    return paths


def build(out: Path | str, source_dir: Path | str | None = None) -> list[Path]:
    """Write ``out/student/*.ipynb`` and ``out/solutions/*.ipynb``; return the paths written."""
    out = Path(out)
    written = []
    for path in sources(source_dir):
        nb = nbformat.read(path, as_version=4)
        for sub, version in (("student", clear_solutions(nb)), ("solutions", clear_outputs(nb))):
            target = out / sub / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(dumps(version), encoding="utf-8")
            written.append(target)
    return written


def exercise_ids(nb) -> list[str]:
    """The exercise ids checked by the ``check("NN.name", ...)`` calls of a notebook, in order."""
    ids = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for m in CHECK_CALL.finditer(cell.source):
                if m.group(1) not in ids:
                    ids.append(m.group(1))
    return ids


def exercise_ids_of(cell) -> list[str]:
    return [m.group(1) for m in CHECK_CALL.finditer(cell.source)]


def _first_error(cell) -> str | None:
    for o in cell.get("outputs", []):
        if o.get("output_type") == "error":
            return f"{o.get('ename')}: {o.get('evalue')}"
    return None


def grade_notebook(path: Path | str, seed: int = 0, timeout: int = 600) -> list[dict]:
    """Execute the notebook at ``path`` and return one row per exercise
    ``{id, passed, points, max_points, status, failures}``; never raises for errors inside the notebook."""
    from jupyter_client import KernelManager
    from nbclient import NotebookClient

    from rlcourse.exercises.registry import get

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {str(path)!r} does not exist")
    nb = nbformat.read(path, as_version=4)
    ids = exercise_ids(nb)
    with tempfile.TemporaryDirectory() as tmp:
        results_file = Path(tmp) / "results.jsonl"
        env = dict(os.environ)
        env[RESULTS_ENV] = str(results_file)
        env[SEED_ENV] = str(int(seed))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.setdefault("MPLBACKEND", "Agg")
        # IPC transport: no TCP port, and no "running over TCP without encryption" warning
        km = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(tmp) / "kernel"))
        client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        kernel_error = None
        try:
            client.execute(env=env)
        except Exception as e:  # a dead kernel or a cell timeout: grade what was recorded
            kernel_error = f"the notebook stopped: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1][:200]}"
        recorded = {}
        if results_file.exists():
            for line in results_file.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                recorded[row["id"]] = row
    first_error = next((e for e in map(_first_error, nb.cells) if e), None)
    rows = []
    for ex_id in ids:
        if ex_id in recorded:
            rows.append(recorded[ex_id])
            continue
        check_cell = next(c for c in nb.cells if c.cell_type == "code" and ex_id in exercise_ids_of(c))
        why = _first_error(check_cell) or kernel_error or first_error or "its check cell did not run"
        try:
            points = get(ex_id).points
        except ValueError:
            points = 0
        rows.append({"id": ex_id, "passed": False, "points": 0, "max_points": points, "status": "not run",
                     "failures": [{"property": "not run", "input": "", "detail": why}]})
    return rows
