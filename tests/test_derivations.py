"""Every registered derivation passes its checks, and every negative control is rejected."""

import json

import pytest

from rlcourse import cli, derivations
from rlcourse.derivations.base import KINDS, Check, derivation, REGISTRY

registry = derivations.load_all()


def test_all_nineteen_derivations_are_registered_in_course_order():
    assert list(registry) == [
        "log_derivative_trick", "eglp", "reward_to_go", "baseline", "performance_difference",
        "importance_ratios", "gae", "ppo_clip", "ppo_penalty", "kl_estimators", "rlhf_gradient",
        "grpo_advantage", "dynamic_sampling", "bradley_terry", "kl_optimum", "dpo",
        "grpo_objective", "loss_aggregation", "self_test",
    ]


@pytest.mark.parametrize("name", list(registry))
def test_derivation_checks_pass_and_controls_are_rejected(name):
    checks = registry[name].run()
    kinds = {c.kind for c in checks}
    assert kinds <= set(KINDS)
    assert "exact" in kinds, "every derivation has an exact check"
    assert "negative_control" in kinds, "every derivation has a negative control"
    failed = [f"{c.kind}: {c.check} (error={c.error}, tol={c.tolerance}) {c.detail}" for c in checks if not c.passed]
    assert not failed, failed
    assert all(c.derivation == name for c in checks)


def test_symbolic_proofs_cover_the_required_identities():
    symbolic = {c.derivation for d in ("eglp", "bradley_terry", "dpo", "gae", "ppo_clip", "kl_estimators")
                for c in registry[d].run() if c.kind == "symbolic"}
    assert symbolic == {"eglp", "bradley_terry", "dpo", "gae", "ppo_clip", "kl_estimators"}


def test_verify_json_has_the_documented_schema(capsys):
    code = cli.main(["verify", "--only", "log_derivative_trick", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and rows
    for r in rows:
        assert {"derivation", "check", "kind", "expected", "observed", "tolerance", "passed"} <= set(r)
        assert r["kind"] in KINDS and r["passed"] is True


def test_verify_exits_nonzero_when_a_check_fails(capsys, monkeypatch):
    @derivation("always_wrong_for_test", "a failing check", source="")
    def broken():
        return [Check("always_wrong_for_test", "1 == 2", "exact", 1.0, 2.0, 1e-10, False, 1.0)]

    try:
        code = cli.main(["verify", "--only", "always_wrong_for_test"])
        assert code == 1
        assert "FAIL" in capsys.readouterr().out
    finally:
        REGISTRY.pop("always_wrong_for_test")


def test_verify_rejects_an_unknown_name(capsys):
    assert cli.main(["verify", "--only", "no_such_derivation"]) == 2
    assert "no_such_derivation" in capsys.readouterr().err


def test_a_derivation_that_raises_becomes_a_failed_json_row_and_the_others_still_run(capsys):
    @derivation("raises_for_test", "raises", source="")
    def broken():
        raise RuntimeError("boom")

    try:
        code = cli.main(["verify", "--only", "raises_for_test", "--only", "self_test", "--json"])
        rows = json.loads(capsys.readouterr().out)
        assert code == 1
        bad = [r for r in rows if r["derivation"] == "raises_for_test"]
        assert len(bad) == 1 and bad[0]["kind"] == "error" and not bad[0]["passed"] and "boom" in bad[0]["detail"]
        assert any(r["derivation"] == "self_test" for r in rows) and all(
            r["passed"] for r in rows if r["derivation"] == "self_test")
    finally:
        REGISTRY.pop("raises_for_test")


def test_verify_table_fits_100_columns_and_shows_every_check_name_whole(capsys):
    assert cli.main(["verify", "--only", "grpo_objective", "--only", "loss_aggregation"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    text = " ".join(line[6:].strip() for line in out.splitlines())  # wrapped names joined back
    for name in ("grpo_objective", "loss_aggregation"):
        for c in registry[name].run():
            assert all(word in text for word in c.check.split())


def test_check_names_are_unique_within_each_derivation():
    for name, d in registry.items():
        names = [c.check for c in d.run()]
        assert len(names) == len(set(names)), name


def test_json_names_each_derivations_sources_by_reference_key(capsys):
    from rlcourse.derivations.base import SOURCES

    assert cli.main(["verify", "--only", "gae", "--only", "dpo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    for r in rows:
        keys = [k.strip() for k in r["source"].split(",")]
        assert keys and all(k in SOURCES for k in keys)


def test_no_seed_file_labels_in_core_modules_or_derivations():
    import pathlib
    import re

    root = pathlib.Path(cli.__file__).parent
    files = list(root.glob("*.py")) + list((root / "derivations").glob("*.py"))
    bad = [f.name for f in files if re.search(r"seeds? ?0\d\d|seeds=", f.read_text())]
    assert not bad


# ----------------------------------------------------------------------------- the checker's own controls

def _self_test_controls(monkeypatch, module, attr, replacement):
    from rlcourse.derivations import self_test

    monkeypatch.setattr(self_test, attr, replacement)
    return {c.check: c.passed for c in self_test.checks() if c.kind == "negative_control"}


def test_self_test_catches_an_inflated_monte_carlo_standard_error(monkeypatch):
    from rlcourse.derivations import base

    inflated = lambda *a, **kw: base.monte_carlo(*a, **{**kw, "n_se": 12 * 4.0})  # noqa: E731
    controls = _self_test_controls(monkeypatch, None, "monte_carlo", inflated)
    assert controls["monte_carlo: estimator biased by 8 SE == 0"] is False


def test_self_test_catches_a_symbolic_check_that_compares_a_side_with_itself(monkeypatch):
    from rlcourse.derivations import base

    controls = _self_test_controls(monkeypatch, None, "symbolic",
                                   lambda d, c, lhs, rhs, detail="": base.symbolic(d, c, lhs, lhs, detail))
    assert controls["symbolic: (x + 1)^2 == x^2 + 1"] is False


def test_self_test_catches_expand_log_with_force(monkeypatch):
    import sympy

    from rlcourse.derivations import base

    def forced(d, c, lhs, rhs, detail=""):
        diff = sympy.simplify(sympy.expand_log(sympy.expand(lhs - rhs), force=True))
        return base.Check(d, c, "symbolic", str(rhs), str(lhs), "exact", diff == 0, None, detail)

    controls = _self_test_controls(monkeypatch, None, "symbolic", forced)
    assert controls["symbolic: log(x^2) == 2 log x, x real"] is False


def test_self_test_catches_an_exact_check_with_a_loose_tolerance_and_a_one_sided_inequality(monkeypatch):
    from rlcourse.derivations import base

    loose = lambda *a, **kw: base.exact(*a, **{**kw, "tol": 1e-3})  # noqa: E731
    assert _self_test_controls(monkeypatch, None, "exact", loose)["exact: 1/3 == 0.3333 (tol 1e-10)"] is False
    always = lambda d, c, bound, observed, **kw: base.inequality(d, c, -1e9, observed, **kw)  # noqa: E731
    assert _self_test_controls(monkeypatch, None, "inequality", always)["inequality: k1 >= 0 on log r in [-5, 5]"] \
        is False


@pytest.mark.parametrize("module, n_policies, horizon", [("grpo_advantage", 1, 3), ("rlhf_gradient", 2, 3),
                                                         ("dpo", 1, 2), ("kl_optimum", 1, 3), ("kl_estimators", 2, 3)])
def test_a_derivations_problem_is_what_its_checks_and_the_notebooks_share(module, n_policies, horizon):
    """The notebooks and figures that reproduce a derivation's numbers call its problem(): a toy MDP and its
    policies, the same on every call, and not the course's problem (their own seeds)."""
    import importlib

    import torch

    from rlcourse.toymdp import ToyMDP, course_problem

    problem = importlib.import_module(f"rlcourse.derivations.{module}").problem
    mdp, *policies = problem()
    again = problem()
    assert isinstance(mdp, ToyMDP) and mdp.horizon == horizon and len(policies) == n_policies
    assert all(p.shape == (mdp.num_states, mdp.vocab_size) for p in policies)
    assert all(torch.equal(a, b) for a, b in zip(policies, again[1:]))
    assert torch.equal(mdp.token_reward, again[0].token_reward)
    if horizon == 3:   # negative control: another seed than the course's problem
        assert not torch.equal(policies[0], course_problem()[1])
