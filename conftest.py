"""Lets the unit suite run without the notebook plugin: ``python -m pytest tests -p no:nbval``.

``pyproject.toml`` adds ``--nbval-lax`` for the full test command (unit tests and notebooks); when nbval
is disabled that option would be unknown, so it is registered here as a no-op.
"""


def pytest_addoption(parser):
    try:
        parser.addoption("--nbval-lax", action="store_true", help="(nbval is not loaded: no effect)")
    except ValueError:  # nbval is loaded and owns the option
        pass
