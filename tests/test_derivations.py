"""Every registered derivation passes its checks, and every negative control is rejected."""

import json

import pytest

from rlcourse import cli, derivations
from rlcourse.derivations.base import KINDS, Check, derivation, REGISTRY

registry = derivations.load_all()


def test_all_sixteen_derivations_are_registered():
    assert list(registry) == [
        "log_derivative_trick", "eglp", "reward_to_go", "baseline", "performance_difference",
        "importance_ratios", "gae", "ppo_clip", "ppo_penalty", "kl_estimators", "rlhf_gradient",
        "grpo_advantage", "dynamic_sampling", "bradley_terry", "kl_optimum", "dpo",
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
    @derivation("always_wrong_for_test", "a failing check", seeds="-")
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
