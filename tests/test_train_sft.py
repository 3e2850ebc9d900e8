"""SFT trainer: the loss goes down, a resumed run equals the uninterrupted one, the cache trains once.

Tiny configurations only (a few steps on 1-digit addition), so the file runs in seconds and
never depends on a warm cache: ``RLCOURSE_CACHE`` points at a temporary directory.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import MINI_TASK as TASK
from conftest import assert_resume_reproduces
from rlcourse.lm import ArithmeticTask
import rlcourse.train.sft as sft
from rlcourse.experiments import cache
from rlcourse.experiments.cache import cache_dir, sft_start
from rlcourse.lm import default_task, evaluate_policy
from rlcourse.train.common import NonFiniteLossError, TrainResult, lr_at
from rlcourse.train.sft import SFTConfig, train_sft

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> SFTConfig:
    base = dict(steps=12, batch_size=16, lr=3e-3, warmup_steps=2, wrong_fraction=0.0, eval_n=4, device="cpu")
    return SFTConfig(**(base | kw))


def test_sft_loss_decreases_over_a_few_steps():
    res = train_sft(tiny(steps=30), task=TASK, progress=False)
    assert isinstance(res, TrainResult)
    losses = [r["loss"] for r in res.history]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert set(res.after) == {"accuracy", "pass@1", "pass@8", "mean_reward"}
    assert res.seconds > 0


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    # the checkpoint of step 3 (rows 0..2) exists when step 3 crashes; that step is lost and redone
    assert_resume_reproduces(lambda out, cb: train_sft(tiny(steps=6, checkpoint_every=3, out=out), task=TASK,
                                                       progress=False, callback=cb), tmp_path, crash_after=3)
    out = tmp_path / "resumed"
    assert json.loads((out / "config.json").read_text())["steps"] == 6
    assert (out / "final" / "model.safetensors").exists() and (out / "history.jsonl").exists()


def test_non_finite_loss_stops_training(monkeypatch):
    real = sft.sft_loss
    monkeypatch.setattr(sft, "sft_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(NonFiniteLossError, match="sft loss is nan at step 0"):
        train_sft(tiny(steps=2), task=TASK, progress=False)


@pytest.mark.parametrize("field, value", [("lr", -1.0), ("lr", 0.0), ("steps", -1), ("batch_size", 0),
                                          ("wrong_fraction", 1.5), ("offsets", (0,)), ("min_lr_ratio", 2.0),
                                          ("warmup_steps", -3), ("checkpoint_every", 0), ("eval_n", 0)])
def test_bad_config_is_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SFTConfig(**{field: value})


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = SFTConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 10) == pytest.approx(1e-3)
    assert lr_at(cfg, 55) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(cfg, 100) == pytest.approx(1e-4)
    lrs = [lr_at(cfg, s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_demonstrations_mix_wrong_answers_after_the_clean_phase():
    cfg = tiny(batch_size=400, wrong_fraction=0.6, offsets=(1,), clean_steps=2)
    clean = sft.demonstrations(cfg, TASK, 1)
    mixed = sft.demonstrations(cfg, TASK, 2)
    assert all(e["correct"] for e in clean)
    wrong = [e for e in mixed if not e["correct"]]
    assert 0.5 < len(wrong) / len(mixed) < 0.7
    assert all(int(e["completion"]) == int(e["answer"]) + 1 for e in wrong)  # a systematic error
    assert sft.demonstrations(cfg, TASK, 2) == mixed  # a function of (seed, step)


def test_sft_start_trains_once_then_loads_a_fresh_copy(monkeypatch):
    cfg = tiny(steps=3)
    m1, tok = sft_start("tiny", 0, "cpu", progress=False, cfg=cfg, task=TASK)
    cached = list(cache_dir().glob("sft-tiny-seed0-*"))
    assert len(cached) == 1 and (cached[0] / "final" / "model.safetensors").exists()
    assert not list(cache_dir().glob(".*tmp*"))  # the temporary directory was renamed into place

    def must_not_train(*a, **k):
        raise AssertionError("the cached start was retrained")

    monkeypatch.setattr(cache, "train_sft", must_not_train)
    m2, _ = sft_start("tiny", 0, "cpu", progress=False, cfg=cfg, task=TASK)
    assert m1 is not m2
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    with torch.no_grad():
        next(m2.parameters()).add_(1.0)  # a caller training its copy does not touch the cache
    m3, _ = sft_start("tiny", 0, "cpu", progress=False, cfg=cfg, task=TASK)
    assert torch.equal(next(m1.parameters()), next(m3.parameters()))
    # a different recipe is a different cache entry
    assert cache.sft_start_dir("tiny", 0, tiny(steps=4), TASK) != cached[0]


def test_default_task_and_shared_evaluation():
    task = default_task()
    assert isinstance(task, ArithmeticTask)
    model, tok = sft_start("tiny", 0, "cpu", progress=False, cfg=tiny(steps=2), task=TASK)
    ev = evaluate_policy(model, tok, TASK, n_eval=4, n_samples=8)
    assert set(ev) == {"accuracy", "pass@1", "pass@8", "mean_reward"}
    assert 0 <= ev["pass@1"] <= ev["pass@8"] <= 1


def test_progress_bar_redraws_rarely_outside_a_terminal(monkeypatch):
    """In a Jupyter kernel every redraw is an IOPub message; thousands of them get dropped (nbval then
    never sees the cell finish). Outside a terminal the bar redraws at most once a second."""
    import io
    import time

    from rlcourse.train.common import progress

    def redraws(bar, fake):
        clock = [time.time()]
        bar._time = lambda: clock[0]  # a step takes 0.05 s on this clock: 2000 steps = 100 s
        for i in range(2000):
            clock[0] += 0.05
            bar.update(1)
            bar.set_postfix(loss=f"{i:.3f}", refresh=False)
        bar.close()
        return fake.getvalue().count("\r")

    fake = io.StringIO()
    monkeypatch.setattr("sys.stderr", fake)
    bar = progress(2000, "sft")
    assert bar.mininterval == 1.0
    assert redraws(bar, fake) <= 110
    # negative control: tqdm's default interval (a terminal's) redraws about ten times as often
    from tqdm.auto import tqdm

    fake = io.StringIO()
    assert redraws(tqdm(total=2000, file=fake, mininterval=0.1), fake) > 500


def test_threads_are_set_for_the_run_and_restored(monkeypatch):
    seen = []
    real = sft.sft_loss

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(sft, "sft_loss", spy)
    torch.set_num_threads(2)  # (the module's one_thread fixture restores its own setting afterwards)
    train_sft(tiny(steps=2, threads=1), task=TASK, progress=False)
    assert seen == [1, 1] and torch.get_num_threads() == 2
    seen.clear()
    train_sft(tiny(steps=1, threads=None), task=TASK, progress=False)  # None: torch's setting, untouched
    assert seen == [2]


def test_eval_every_adds_the_held_out_accuracy_to_the_history():
    res = train_sft(tiny(steps=4, eval_every=2), task=TASK, progress=False)
    assert [("eval_accuracy" in r) for r in res.history] == [False, True, False, True]
    assert 0.0 <= res.history[-1]["eval_accuracy"] <= 1.0
