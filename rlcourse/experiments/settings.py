"""Settings the experiments and notebooks share: the model preset and the quick (CI) mode."""

from __future__ import annotations

import os


def preset() -> str:
    """The model preset of the LM experiments: ``$RLCOURSE_PRESET`` (default ``"tiny"``), as in the notebooks."""
    return os.environ.get("RLCOURSE_PRESET", "tiny")


def quick() -> bool:
    """Whether the notebooks run their LM experiments in the quick config: ``$RLCOURSE_QUICK``.

    ``"1"``: the seconds-long config of each experiment (``config.quick()``), what the test run (CI)
    executes; unset, empty or ``"0"``: the full config, whose results the committed notebooks show.
    The test run sets it to ``"1"`` (``conftest.py``) unless it is already set."""
    value = os.environ.get("RLCOURSE_QUICK", "")
    if value not in ("", "0", "1"):
        raise ValueError(f"RLCOURSE_QUICK must be '1' (quick config) or '0'/unset (full config), got {value!r}")
    return value == "1"


__all__ = ["preset", "quick"]
