"""Settings for every test run, the notebooks' included (this file sits above tests/ and notebooks/).

A test run writes nothing into the repository: figures that the notebooks (and the plot tests)
save go to a temporary directory unless ``RLCOURSE_FIGURES`` is already set. ``rlcourse figures``
is what regenerates the committed ``figures/``. Notebook kernels inherit this environment.
"""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config):
    if not os.environ.get("RLCOURSE_FIGURES"):
        os.environ["RLCOURSE_FIGURES"] = tempfile.mkdtemp(prefix="rlcourse-test-figures-")
