"""Quiet Hugging Face: :func:`quiet_transformers` silences transformers' progress bars and warnings for a block."""

from __future__ import annotations

import contextlib
import warnings

__all__ = ["quiet_transformers"]


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' progress bars ("Loading weights", "Writing model shards") and warnings
    for the block, restoring its settings after: the course's own output stays readable, and
    nothing is changed globally in the user's process."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
