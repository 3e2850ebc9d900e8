"""rlcourse: reinforcement learning for large language models, derived and checked numerically."""

__version__ = "0.1.0"
