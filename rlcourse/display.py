"""Display helpers the notebooks share (so that no notebook redefines them)."""

from __future__ import annotations


def show(checks) -> None:
    """Print each derivation check: its kind, whether it passed, what was compared, the error and the tolerance.

    A negative control passes when its wrong claim is *rejected*; one that is accepted is reported as bad.
    """
    for c in checks:
        if c.kind == "negative_control":
            status = "rejected" if c.passed else "ACCEPTED (bad)"
        else:
            status = "ok" if c.passed else "FAIL"
        err = "" if c.error is None else (f"error {c.error:.1e}, " if isinstance(c.error, (int, float))
                                          else f"error {c.error}, ")
        print(f"{c.kind:<16} {status:<9} {c.check}  [{err}tol {c.tolerance}]")
        if c.detail:
            print(f"{'':<27}{c.detail}")


__all__ = ["show"]
