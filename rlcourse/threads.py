"""The course's one mechanism for CPU threads: :func:`cpu_threads` around a block (also
``rlcourse.lm.cpu_threads``), and :func:`set_cpu_threads`, its form for the rest of a process (a notebook's
first cell, a script's ``main``).

Core: torch only, so that the toy-MDP code can use it without loading the language-model stack.
"""

from __future__ import annotations

import contextlib

import torch

from rlcourse._validate import integer

__all__ = ["cpu_threads", "set_cpu_threads"]


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (None: leave torch's setting), restored after.

    The course's one mechanism for CPU threads: trainer configs have a ``threads`` field that
    the trainers pass here, the tests run under ``cpu_threads(1)`` (``tests/conftest.py``), and the
    toy-MDP loops use it as a decorator; notebooks and scripts call :func:`set_cpu_threads` once.

    Why it matters: the tiny model does many small operations. On an idle 2-core CPU two
    threads are faster (an SFT step: 0.068 s against 0.109 s for one), but when other processes
    compete for the cores two threads spin-wait on each other (0.6-5 s a step measured, against
    0.1-0.2 s for one thread). Only CPU work is affected.
    """
    integer("threads", n, none_ok=True)
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    set_cpu_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def set_cpu_threads(n: int) -> None:
    """Use ``n`` torch intra-op threads from now on, for the rest of the process.

    The form of :func:`cpu_threads` for a notebook's first cell or a script's ``main``, where no block
    encloses the work. (``cpu_threads(n).__enter__()`` on a temporary does not do this: the temporary is
    collected at once, and collecting it runs the restore.)"""
    integer("threads", n)
    torch.set_num_threads(n)
