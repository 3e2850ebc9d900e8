r"""Self test of the checker: each kind of check accepts a true claim and rejects a wrong one.

A check that cannot fail proves nothing. Here each kind of check of
:mod:`rlcourse.derivations.base` is run on a claim known to be true (it must pass) and on a claim
known to be false (wrapped as a negative control, which passes only when the check rejects it):

* ``exact``: 1/4 + 1/8 = 3/8 in binary floating point; the wrong claim 1/3 = 0.3333 at tolerance 1e-10;
* ``monte_carlo``: the mean of 10,000 standard normal draws is 0 within 4 standard errors; a
  biased estimator (mean shifted by 8 standard errors) is rejected — inflating the standard error
  or the bound would let it through, so this control catches that;
* ``symbolic``: log(x^2) = 2 log x for a positive x is accepted and for a real x (where it fails at
  x < 0) rejected; (x + 1)^2 = x^2 + 1 rejected;
* ``inequality``: the k3 estimator is >= 0 on a grid of log-ratios; the same claim for k1 rejected.
"""

from __future__ import annotations

import sympy
import torch

from rlcourse.derivations.base import Check, derivation, exact, inequality, monte_carlo, negative_control, symbolic
from rlcourse.kl import kl_k1, kl_k3

NAME = "self_test"


@derivation(NAME, "Self test: every check kind rejects a wrong claim", source="")
def checks() -> list[Check]:
    out = [exact(NAME, "exact: 1/4 + 1/8 == 3/8", 3 / 8, 1 / 4 + 1 / 8),
           negative_control(exact(NAME, "exact: 1/3 == 0.3333 (tol 1e-10)", 1 / 3, 0.3333),
                            detail="differs by 3.3e-5; must be rejected")]

    n = 10000
    draws = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out.append(monte_carlo(NAME, "monte_carlo: mean of N(0,1) draws == 0", 0.0, draws))
    se = float(draws.std() / n ** 0.5)
    out.append(negative_control(monte_carlo(NAME, "monte_carlo: estimator biased by 8 SE == 0", 0.0,
                                            draws + 8 * se),
                                detail=f"bias = 8 standard errors ({8 * se:.3g}) > the 4-SE bound; must be rejected"))

    x_pos = sympy.Symbol("x", positive=True)
    x_real = sympy.Symbol("x", real=True)
    out.append(symbolic(NAME, "symbolic: log(x^2) == 2 log x, x > 0", sympy.log(x_pos ** 2), 2 * sympy.log(x_pos)))
    out.append(negative_control(symbolic(NAME, "symbolic: log(x^2) == 2 log x, x real", sympy.log(x_real ** 2),
                                         2 * sympy.log(x_real)),
                                detail="false at x = -1 (log 1 = 0 vs 2 log(-1) = 2 i pi); must be rejected"))
    out.append(negative_control(symbolic(NAME, "symbolic: (x + 1)^2 == x^2 + 1", (x_real + 1) ** 2, x_real ** 2 + 1),
                                detail="differs by 2x; must be rejected"))

    log_r = torch.linspace(-5, 5, 101, dtype=torch.float64)
    logp = torch.full_like(log_r, -6.0)
    out.append(inequality(NAME, "inequality: k3 >= 0 on log r in [-5, 5]", 0.0, kl_k3(logp, logp + log_r)))
    out.append(negative_control(inequality(NAME, "inequality: k1 >= 0 on log r in [-5, 5]", 0.0,
                                           kl_k1(logp, logp + log_r)),
                                detail="k1 = -log r is negative for r > 1; must be rejected"))
    return out
