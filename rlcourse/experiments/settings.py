"""Settings the experiments and notebooks share."""

from __future__ import annotations

import os


def preset() -> str:
    """The model preset of the LM experiments: ``$RLCOURSE_PRESET`` (default ``"tiny"``), as in the notebooks."""
    return os.environ.get("RLCOURSE_PRESET", "tiny")


__all__ = ["preset"]
