"""The labs' exercises: every reference passes its property grader, every registered wrong variant is
rejected, the student notebooks are generated from the sources (byte-identical, no solution leaks),
and `rlcourse check` grades a notebook by executing it, without a traceback for unfinished work."""

from __future__ import annotations

import json
import re
from collections import Counter

import nbformat
import pytest

from rlcourse import cli
from rlcourse.exercises import check, get, load_all, selftest
from rlcourse.exercises.grading import for_cases, run_properties
from rlcourse.exercises.notebooks import (SOURCE_DIR, STUDENT_DIR, build, clear_solutions, exercise_ids,
                                          grade_notebook, sources)

EXERCISES = load_all()
KERNEL = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
VARIANTS = [(i, v) for i, ex in EXERCISES.items() for v in sorted(ex.wrong)]


# --------------------------------------------------------------------------- the registry


def test_registry_has_at_least_30_exercises_and_3_per_lecture():
    per_lecture = Counter(ex.lecture for ex in EXERCISES.values())
    assert len(EXERCISES) >= 30
    assert sorted(per_lecture) == list(range(1, 11))
    assert min(per_lecture.values()) >= 3, per_lecture


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES))
def test_reference_solution_passes_its_grader(exercise_id):
    ex = EXERCISES[exercise_id]
    result = ex.grade(ex.reference, seed=0)
    assert result.passed, result.table()
    assert len(result.rows) == len(ex.properties) >= 1


@pytest.mark.parametrize("exercise_id,variant", VARIANTS)
def test_grader_rejects_registered_wrong_variant(exercise_id, variant):
    ex = EXERCISES[exercise_id]
    result = ex.grade(ex.wrong[variant], seed=0)
    assert result.status == "failed", result.table()
    failed = [r for r in result.rows if not r.passed]
    assert failed and all(r.detail for r in failed)


@pytest.mark.parametrize("seed", [1, 2024])
def test_selftest_is_green_under_other_seeds(seed):
    rows = selftest(seed=seed)
    assert all(r["reference_passed"] for r in rows), [r["id"] for r in rows if not r["reference_passed"]]
    assert all(not r["variants_accepted"] for r in rows), [(r["id"], r["variants_accepted"]) for r in rows
                                                           if r["variants_accepted"]]


def test_seed_changes_the_random_inputs_of_a_property():
    ex = get("01.masked_mean")
    inputs = {ex.grade(ex.wrong["mean_of_row_means"], seed=s).failures()[0]["input"] for s in (0, 1, 2)}
    assert len(inputs) == 3


def test_property_reports_the_smallest_failing_input():
    cases = lambda seed: [("size 1", 1), ("size 2", 2), ("size 3", 3)]  # noqa: E731
    prop = for_cases("n < 2", cases, lambda fn, n: None if fn(n) < 2 else f"got {fn(n)}")
    result = run_properties("00.toy", 1, [prop], lambda n: n, seed=0)
    assert result.status == "failed"
    assert result.rows[0].input == "size 2" and result.rows[0].detail == "got 2"


def test_unimplemented_function_is_reported_as_not_implemented(capsys):
    def reward_to_go(rewards, mask, gamma=1.0):
        raise NotImplementedError()

    result = check("03.reward_to_go", reward_to_go)
    out = capsys.readouterr().out
    assert result.status == "not implemented" and not result.passed
    assert "NOT IMPLEMENTED" in out and "Traceback" not in out


def test_unimplemented_prediction_is_reported_as_not_implemented():
    def bstar_bernoulli():
        raise NotImplementedError()

    assert check("03.bstar_bernoulli", bstar_bernoulli, quiet=True).status == "not implemented"


def test_exception_in_student_code_is_a_failed_property_naming_the_input():
    def masked_mean(x, mask):
        return x[mask.bool()].mean() if x.shape[1] < 3 else x.nonexistent

    result = check("01.masked_mean", masked_mean, quiet=True)
    fail = result.failures()[0]
    assert result.status == "failed"
    assert "raised AttributeError" in fail["detail"] and fail["input"]


def test_non_callable_candidate_is_an_error_not_a_crash():
    assert check("03.reward_to_go", 3.0, quiet=True).status == "error"


def test_check_appends_one_json_line_per_result(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    monkeypatch.setenv("RLCOURSE_CHECK_RESULTS", str(path))
    ex = get("09.grpo_advantages")
    check(ex.id, ex.reference, quiet=True)
    check(ex.id, ex.wrong["eps_inside_the_sqrt"], quiet=True)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False]
    assert rows[0]["points"] == ex.points and rows[1]["points"] == 0
    assert rows[1]["failures"][0]["property"].startswith("agrees with")


def test_unknown_exercise_id_lists_the_valid_ids():
    with pytest.raises(ValueError, match=r"unknown exercise id '99.nope'.*01\.entropy"):
        get("99.nope")


# --------------------------------------------------------------------------- building the notebooks


def test_every_lecture_has_one_lab_whose_checks_cover_its_exercises():
    labs = sources()
    assert [p.name[:2] for p in labs] == [f"{n:02d}" for n in range(1, 11)]
    checked = [i for p in labs for i in exercise_ids(nbformat.read(p, as_version=4))]
    assert sorted(checked) == sorted(EXERCISES)


def test_build_is_deterministic_and_committed_student_labs_are_up_to_date(tmp_path):
    build(tmp_path / "a")
    build(tmp_path / "b")
    for sub in ("student", "solutions"):
        a = sorted((tmp_path / "a" / sub).glob("*.ipynb"))
        assert len(a) == 10
        for p in a:
            assert p.read_bytes() == (tmp_path / "b" / sub / p.name).read_bytes(), p
    for p in sorted((tmp_path / "a" / "student").glob("*.ipynb")):
        committed = STUDENT_DIR / p.name
        assert committed.exists() and committed.read_bytes() == p.read_bytes(), \
            f"{committed} is out of date: run `rlcourse exercises build --out labs` and drop labs/solutions"


def _solution_lines(source: str) -> list[str]:
    lines, inside = [], False
    for line in source.split("\n"):
        if "BEGIN SOLUTION" in line:
            inside = True
        elif "END SOLUTION" in line:
            inside = False
        elif inside and line.strip():
            lines.append(line.strip())
    return lines


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.stem)
def test_no_solution_line_leaks_into_the_student_notebook(path):
    src = nbformat.read(path, as_version=4)
    student = clear_solutions(src)
    solution = {l for c in src.cells for l in _solution_lines(c.source)}
    outside = {l.strip() for c in src.cells for l in c.source.split("\n")} - solution
    shown = {l.strip() for c in student.cells for l in c.source.split("\n")}
    assert solution and not (solution & shown) - outside
    text = nbformat.writes(student)
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    n_solution_cells = sum(bool(c.metadata.get("nbgrader", {}).get("solution")) for c in src.cells)
    assert text.count("raise NotImplementedError()") == n_solution_cells
    assert all(c.get("outputs", []) == [] for c in student.cells)


def test_solution_cells_carry_nbgrader_metadata_and_hints_are_collapsible():
    for path in sources():
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            meta = cell.metadata["nbgrader"]
            assert meta["schema_version"] == 3 and re.fullmatch(r"[A-Za-z0-9_\-]+", meta["grade_id"])
            assert meta["solution"] == ("BEGIN SOLUTION" in cell.source)
        assert sum("<details><summary>Hint</summary>" in c.source for c in nb.cells) == len(exercise_ids(nb))


def test_student_version_equals_nbgrader_clear_solutions():
    pytest.importorskip("nbgrader")
    from nbgrader.preprocessors import ClearOutput, ClearSolutions

    src = nbformat.read(SOURCE_DIR / "03_variance_reduction.ipynb", as_version=4)
    theirs, _ = ClearSolutions().preprocess(nbformat.from_dict(json.loads(json.dumps(src))), {})
    theirs, _ = ClearOutput().preprocess(theirs, {})
    ours = clear_solutions(src)
    assert [c.source for c in ours.cells] == [c.source for c in theirs.cells]
    assert [c.get("outputs") for c in ours.cells] == [c.get("outputs") for c in theirs.cells]


def test_clear_solutions_refuses_unbalanced_markers_and_unmarked_regions():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1\n### BEGIN SOLUTION\ny = 2",
                                                                   metadata={"nbgrader": {"solution": True}})])
    with pytest.raises(ValueError, match="without a matching END"):
        clear_solutions(nb)
    nb.cells[0].source = "### BEGIN SOLUTION\ny = 2\n### END SOLUTION"
    nb.cells[0].metadata = {}
    with pytest.raises(ValueError, match="no nbgrader solution metadata"):
        clear_solutions(nb)


# --------------------------------------------------------------------------- the command line


def test_cli_exercises_list_json(capsys):
    assert cli.main(["exercises", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 30
    assert set(rows[0]) == {"id", "lecture", "title", "points", "difficulty", "kind"}


def test_cli_selftest_json_is_green(capsys):
    assert cli.main(["exercises", "selftest", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["reference_passed"] and r["variants_rejected"] == r["variants"] for r in rows)


def test_cli_check_id_grades_the_reference(capsys):
    assert cli.main(["check", "05.gae"]) == 0
    out = capsys.readouterr().out
    assert "05.gae: PASSED" in out and "lambda = 0 gives delta_t" in out


def test_cli_check_variant_json_rows(capsys):
    assert cli.main(["check", "05.gae", "--variant", "lambda_without_gamma", "--json"]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert set(row) >= {"id", "passed", "points", "failures"}
    assert row["passed"] is False and row["points"] == 0 and row["failures"]


@pytest.mark.parametrize("argv,message", [
    (["check", "99.nope"], "valid ids"),
    (["check", "05.gae", "--variant", "bogus"], "lambda_without_gamma"),
    (["check", "no_such_lab.ipynb"], "does not exist"),
    (["check", "labs/student/05_gae.ipynb", "--variant", "x"], "applies to an exercise id"),
    (["exercises", "build", "--out", "/tmp/x", "--source", "/nonexistent_dir"], "no lab notebooks"),
])
def test_cli_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_build_requires_out():
    with pytest.raises(SystemExit) as e:
        cli.main(["exercises", "build"])
    assert e.value.code == 2


# --------------------------------------------------------------------------- executing notebooks


def test_student_notebook_fails_check_cleanly_as_not_implemented(capsys):
    assert cli.main(["check", str(STUDENT_DIR / "04_reinforce.ipynb")]) == 1
    out = capsys.readouterr().out
    assert "Traceback" not in out
    assert out.count("not implemented") == 3 and "0/3 exercises passed" in out


def test_every_solution_notebook_passes_check(tmp_path):
    """All ten solution notebooks, executed in one kernel (one notebook, `%reset -f` between labs)."""
    cells = []
    for path in sources():
        cells.append(nbformat.v4.new_code_cell("%reset -f"))
        cells.extend(nbformat.read(path, as_version=4).cells)
    combined = nbformat.v4.new_notebook(cells=cells, metadata=KERNEL)
    path = tmp_path / "all_labs.ipynb"
    nbformat.write(combined, path)
    rows = grade_notebook(path)
    assert sorted(r["id"] for r in rows) == sorted(EXERCISES)
    assert all(r["passed"] for r in rows), [(r["id"], r["failures"]) for r in rows if not r["passed"]]


def test_notebook_with_a_broken_cell_reports_not_run_and_grades_the_rest(tmp_path):
    code = [
        "from rlcourse.exercises import check",
        "def masked_mean(x, mask)\n    return x.mean()",          # a syntax error
        'check("01.masked_mean", masked_mean);',
        "def entropy(logits, temperature=1.0):\n    raise NotImplementedError()",
        'check("01.entropy", entropy);',
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in code],
                                  metadata=KERNEL)
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    rows = {r["id"]: r for r in grade_notebook(path)}
    assert rows["01.masked_mean"]["status"] == "not run"
    assert "NameError" in rows["01.masked_mean"]["failures"][0]["detail"]
    assert rows["01.entropy"]["status"] == "not implemented"


def test_register_takes_the_id_title_and_signature_from_the_reference(monkeypatch):
    from rlcourse.exercises import registry

    monkeypatch.setattr(registry, "_REGISTRY", {})
    props = [for_cases("is 1", lambda seed: [("x", 1)], lambda fn, x: None if fn(x) == 1 else "not 1")]

    def double(x):
        """Twice x

        double(x: float) -> float
        """
        return 2 * x

    double.__module__ = "rlcourse.exercises.l99"
    ex = registry.register(double, 1, "easy", props, {"same": lambda x: x})
    assert (ex.id, ex.title, ex.signature, ex.lecture) == ("99.double", "Twice x", "double(x: float) -> float", 99)
    renamed = registry.register(double, 1, "easy", props, {"same": lambda x: x}, name="twice", signature="twice(x)")
    assert (renamed.id, renamed.signature) == ("99.twice", "twice(x)")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(double, 1, "easy", props, {"same": lambda x: x})

    def untitled(x):
        return x

    untitled.__module__ = "rlcourse.exercises.l99"
    with pytest.raises(ValueError, match="docstring must be a one-line title"):   # negative control: no docstring
        registry.register(untitled, 1, "easy", props, {"same": lambda x: x})
    with pytest.raises(ValueError, match="lecture module"):                          # not a lecture's function
        registry.register(len, 1, "easy", props, {"same": lambda x: x})
