"""Settings for every test run, the notebooks' included (this file sits above tests/ and notebooks/).

* A test run writes nothing into the repository: figures that the notebooks (and the plot tests)
  save go to a temporary directory unless ``RLCOURSE_FIGURES`` is already set. ``rlcourse figures``
  is what regenerates the committed ``figures/``. Notebook kernels inherit this environment.
* The unit suite can run without the notebook plugin (``python -m pytest tests -p no:nbval``):
  ``pyproject.toml`` adds ``--nbval-lax`` for the full test command, so when nbval is disabled that
  option is registered here as a no-op.
* The notebooks run their LM experiments in the quick config (``RLCOURSE_QUICK=1``, see
  :func:`rlcourse.experiments.settings.quick`) unless ``RLCOURSE_QUICK`` is already set; the committed
  notebooks show the full runs.
"""

from __future__ import annotations

import os
import tempfile


def pytest_addoption(parser):
    try:
        parser.addoption("--nbval-lax", action="store_true", help="(nbval is not loaded: no effect)")
    except ValueError:  # nbval is loaded and owns the option
        pass


def pytest_configure(config):
    os.environ.setdefault("RLCOURSE_QUICK", "1")
    if not os.environ.get("RLCOURSE_FIGURES"):
        os.environ["RLCOURSE_FIGURES"] = tempfile.mkdtemp(prefix="rlcourse-test-figures-")
