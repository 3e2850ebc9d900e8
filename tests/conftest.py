"""Fixtures shared by the unit tests in ``tests/`` (the notebooks use the real checkpoint cache).

Test modules import ``MINI_TASK`` and ``fresh`` from here (``from conftest import ...``).
"""

from __future__ import annotations

import copy

import pytest
import torch

from rlcourse.lm import ArithmeticTask

#: 1-digit addition: a few SFT steps learn it, so trainer tests run in seconds.
MINI_TASK = ArithmeticTask(digits=1, ops="+", held_out_fraction=0.2)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """No test touches, or depends on, a warm checkpoint cache."""
    monkeypatch.setenv("RLCOURSE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session", autouse=True)
def single_threaded():
    """Every test runs with one intra-op thread (:func:`rlcourse.lm.cpu_threads`): a tiny model on a shared
    2-core CPU runs many times faster with one thread than with two when other processes compete for the
    cores (0.11 s against 3.4 s per SFT step, measured)."""
    from rlcourse.lm import cpu_threads

    with cpu_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Kept for modules that name it: the session already runs single-threaded."""
    yield


@pytest.fixture(scope="session")
def start():
    """The course's start in miniature, trained once per session on :data:`MINI_TASK`: 60% of the
    demonstrations say "answer + 1", so the right answer is sampled but often not the favourite."""
    from rlcourse.train.sft import SFTConfig, train_sft

    cfg = SFTConfig(steps=100, batch_size=64, lr=3e-3, warmup_steps=10, wrong_fraction=0.6, eval_n=4, device="cpu",
                    threads=1)
    res = train_sft(cfg, task=MINI_TASK, progress=False)
    return res.model, res.tokenizer


def fresh(start):
    """A copy of ``start``'s model (tests train it) and its tokenizer."""
    model, tok = start
    return copy.deepcopy(model), tok


class _Crash(Exception):
    pass


def assert_resume_reproduces(run, tmp_path, crash_after: int = 2):
    """A run interrupted after step ``crash_after`` and resumed from its checkpoint equals the uninterrupted run.

    ``run(out, callback)`` trains from a fresh start into run directory ``out`` (None: no directory)
    and returns its :class:`~rlcourse.train.common.TrainResult`. Compares the histories (all but the
    timings) and every tensor of the final models, and checks that the resumed run started after
    step 0 (a run that ignored its checkpoint would also reproduce the history); returns ``(full,
    resumed)`` for further checks. ``crash_after`` must be at or after the first checkpoint.
    """

    def crash(row):
        if row["step"] == crash_after:
            raise _Crash

    full = run(str(tmp_path / "full"), None)
    with pytest.raises(_Crash):
        run(str(tmp_path / "resumed"), crash)
    seen = []
    resumed = run(str(tmp_path / "resumed"), lambda row: seen.append(row["step"]))  # from a new start object
    # it continued from a checkpoint (a run that ignored it would redo every step, identically)
    assert seen and 0 < seen[0] <= crash_after, seen
    assert seen == [r["step"] for r in full.history][seen[0]:]

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "step_seconds"} for r in rows]

    assert strip(resumed.history) == strip(full.history)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    return full, resumed
