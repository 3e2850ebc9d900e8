"""Figures of the course, made by package functions so that notebooks and ``figures/`` agree.

Each module here defines plain functions that take data and return a matplotlib ``Figure``
(notebooks call them and show the result), plus *figure builders* registered with
:func:`figure`: zero-argument functions that compute their own data and return a ``Figure``.
``rlcourse figures`` runs every builder and saves ``figures/<name>.png``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt

BUILDERS: dict[str, Callable[[], "plt.Figure"]] = {}
DPI = 90


def figure(name: str):
    """Register a zero-argument figure builder under ``name`` (the PNG's file name)."""

    def wrap(fn):
        if name in BUILDERS:
            raise ValueError(f"figure {name!r} registered twice")
        BUILDERS[name] = fn
        return fn

    return wrap


def figures_dir() -> Path:
    """Where figures go: ``$RLCOURSE_FIGURES``, else the repository's ``figures/`` (found from
    this file when the package is installed in development mode), else ``./figures``."""
    env = os.environ.get("RLCOURSE_FIGURES")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists():
        return repo / "figures"
    return Path("figures")


def save(fig: "plt.Figure", name: str, directory: str | Path | None = None) -> Path:
    """Save ``fig`` as ``<directory>/<name>.png`` (small: DPI 90) and return the path.

    ``directory`` defaults to :func:`figures_dir`. The PNG carries no run-dependent metadata (no
    "Software" version stamp), so regenerating an unchanged figure rewrites the same bytes."""
    path = Path(directory or figures_dir()) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return path


def load_all() -> dict[str, Callable]:
    """Import every module of this package (which registers its builders)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return dict(BUILDERS)


def build(only: list[str] | None = None, directory: str | Path | None = None) -> list[Path]:
    """Run the registered builders (all, or those named in ``only``) and save their PNGs."""
    builders = load_all()
    names = list(builders) if not only else list(only)
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise ValueError(f"only: unknown figure(s) {unknown}; known: {list(builders)}")
    paths = []
    for n in names:
        fig = builders[n]()
        paths.append(save(fig, n, directory))
        plt.close(fig)
    return paths
