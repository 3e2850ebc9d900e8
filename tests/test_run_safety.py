"""Run safety: a run directory refuses another config, Ctrl-C ends with one line, damaged checkpoints and bad
paths give clear errors, the cache resumes an interrupted build and cleans stale temporary directories.

Every case is a bad input or an interruption, pinned by a test (the command line through ``rlcourse.cli.main``).
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from conftest import MINI_TASK as TASK
from conftest import fresh
from rlcourse import cli
from rlcourse.experiments import cache
from rlcourse.lm import cpu_threads
from rlcourse.train.common import Run, RunDir, TrainingInterrupted
from rlcourse.train.dpo import DPOConfig
from rlcourse.train.grpo import GRPOConfig, train_grpo
from rlcourse.train.ppo import PPOConfig, train_ppo
from rlcourse.train.reinforce import ReinforceConfig, train_reinforce
from rlcourse.train.reward_model import RewardModelConfig
from rlcourse.train.sft import SFTConfig, train_sft

CONFIGS = [SFTConfig, RewardModelConfig, ReinforceConfig, PPOConfig, GRPOConfig, DPOConfig]


def grpo(**kw):
    return GRPOConfig(**({"steps": 2, "prompts_per_step": 2, "group_size": 2, "eval_n": 2, "device": "cpu",
                          "checkpoint_every": 1} | kw))


# -- bad config values ---------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("field,value,match", [
    ("lr", math.inf, "lr must be a finite number"),
    ("lr", math.nan, "lr must be a finite number"),
    ("out", "", "empty string"),
    ("out", 123, "out must be a directory path"),
    ("seed", 1.5, "seed must be"),
    ("steps", True, "steps must be"),
    ("threads", 0, "threads must be"),
    ("preset", "huge", "preset must be one of"),
    ("grad_clip", math.inf, "grad_clip must be a finite number"),
])
def test_every_config_rejects_bad_shared_fields(config, field, value, match):
    with pytest.raises(ValueError, match=match):
        config(**{field: value})


@pytest.mark.parametrize("config", [ReinforceConfig, PPOConfig, GRPOConfig, DPOConfig, RewardModelConfig])
def test_temperature_inf_is_refused(config):
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        config(temperature=math.inf)


def test_out_that_is_an_existing_file_is_refused(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="is an existing file"):
        GRPOConfig(out=str(f))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only directory")
def test_read_only_out_is_refused(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="not writable"):
            RunDir(str(d))
    finally:
        d.chmod(0o700)


def test_rlcourse_cache_pointing_at_a_file_is_refused(tmp_path, monkeypatch):
    f = tmp_path / "cachefile"
    f.write_text("x")
    monkeypatch.setenv("RLCOURSE_CACHE", str(f))
    with pytest.raises(ValueError, match="RLCOURSE_CACHE=.* is a file"):
        cache.cache_dir()


# -- a run directory records its config and refuses another ---------------------------------------

def test_resuming_with_a_different_config_is_refused_and_config_json_is_kept(start, tmp_path):
    out = str(tmp_path / "run")
    train_grpo(grpo(out=out), *fresh(start), task=TASK, progress=False)
    saved = (tmp_path / "run" / "config.json").read_text()
    assert json.loads(saved)["algorithm"] == "grpo"
    with pytest.raises(ValueError, match=r"differs \(.*variant: 'grpo' there, 'dapo' now.*new --out"):
        train_grpo(grpo(out=out, variant="dapo"), *fresh(start), task=TASK, progress=False)
    with pytest.raises(ValueError, match="seed"):
        train_grpo(grpo(out=out, seed=3), *fresh(start), task=TASK, progress=False)
    assert (tmp_path / "run" / "config.json").read_text() == saved  # never overwritten by a refused run


def test_another_algorithm_into_a_run_directory_is_a_clear_error(start, tmp_path):
    out = str(tmp_path / "run")
    train_grpo(grpo(out=out), *fresh(start), task=TASK, progress=False)
    with pytest.raises(ValueError, match="holds a grpo run"):
        train_ppo(PPOConfig(out=out, steps=1, prompts_per_step=2, group_size=2, eval_n=2, device="cpu"),
                  *fresh(start), task=TASK, progress=False)
    with pytest.raises(ValueError, match="algorithm: 'grpo' there, 'reinforce' now"):
        train_reinforce(ReinforceConfig(out=out, steps=1, prompts_per_step=2, group_size=2, eval_n=2),
                        *fresh(start), task=TASK, progress=False)


def test_resuming_with_only_device_or_threads_changed_is_allowed(start, tmp_path):
    out = str(tmp_path / "run")
    train_grpo(grpo(out=out, steps=1), *fresh(start), task=TASK, progress=False)
    res = train_grpo(grpo(out=out, steps=1, threads=1), *fresh(start), task=TASK, progress=False)
    assert len(res.history) == 1


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10, b"PK\x03\x04truncated"])
def test_a_damaged_checkpoint_names_the_file_and_what_to_do(start, tmp_path, content):
    out = tmp_path / "run"
    train_grpo(grpo(out=str(out), steps=1), *fresh(start), task=TASK, progress=False)
    (out / "checkpoint.pt").write_bytes(content)
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint\.pt.* cannot be read.*Delete it"):
        train_grpo(grpo(out=str(out), steps=1), *fresh(start), task=TASK, progress=False)


def test_a_truncated_checkpoint_names_the_file(start, tmp_path):
    out = tmp_path / "run"
    train_grpo(grpo(out=str(out), steps=1), *fresh(start), task=TASK, progress=False)
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="checkpoint.pt"):
        train_grpo(grpo(out=str(out), steps=1), *fresh(start), task=TASK, progress=False)


# -- Ctrl-C --------------------------------------------------------------------------------------

def test_ctrl_c_says_where_it_stopped_and_where_it_resumes(start, tmp_path):
    out = str(tmp_path / "run")

    def interrupt(row):
        if row["step"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as e:
        train_grpo(grpo(out=out, steps=3), *fresh(start), task=TASK, progress=False, callback=interrupt)
    assert e.value.message == "interrupted at step 1; run the same command to resume from step 1"
    seen = []
    train_grpo(grpo(out=out, steps=3), *fresh(start), task=TASK, progress=False, callback=lambda r: seen.append(r))
    assert [r["step"] for r in seen] == [1, 2]  # step 1 had not been checkpointed: it runs again


def test_run_restores_the_thread_setting_after_an_interruption(tmp_path):
    n = torch.get_num_threads()
    cfg = grpo(threads=2 if n != 2 else 3)
    run = Run("grpo", cfg, {}, {}, progress=False)
    with pytest.raises(TrainingInterrupted, match="no run directory"):
        with run:
            for _ in run.steps():
                assert torch.get_num_threads() == cfg.threads
                raise KeyboardInterrupt
    assert torch.get_num_threads() == n


def test_cli_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys):
    from rlcourse.experiments import registry

    def interrupted(*a, **k):
        raise TrainingInterrupted(7, 5, "runs/x")

    monkeypatch.setattr(registry, "run", interrupted)
    assert cli.main(["train", "grpo", "--quiet"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rlcourse train: interrupted at step 7; run the same command to resume from step 5"]


def test_cli_ctrl_c_before_the_first_step_exits_130_without_traceback(monkeypatch, capsys):
    from rlcourse.experiments import registry

    monkeypatch.setattr(registry, "run", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert cli.main(["train", "sft", "--quiet"]) == 130
    assert "Traceback" not in capsys.readouterr().err


# -- the command line ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv,match", [
    (["train", "grpo", "--out", ""], "empty string"),
    (["train", "grpo", "--steps", "-1"], "steps must be"),
    (["train", "sft", "--seed", "1", "--steps", "0", "--preset", "tiny", "--out", "{file}"], "existing file"),
])
def test_cli_bad_train_options_are_one_line_errors(argv, match, tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    argv = [a.replace("{file}", str(f)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlcourse train:") and match in err and "Traceback" not in err


def test_cli_train_into_a_run_of_another_algorithm_is_refused_before_training(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"algorithm": "grpo"}))
    from rlcourse.experiments import cache as c

    monkeypatch.setattr(c, "sft_start", lambda *a, **k: pytest.fail("must not load or train a start"))
    assert cli.main(["train", "ppo", "--out", str(out), "--quiet"]) == 2
    assert "holds a grpo run" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text()) == {"algorithm": "grpo"}


def test_cli_figures_out_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "f.png"
    f.write_text("x")
    assert cli.main(["figures", "--only", "10_dpo_ipo", "--out", str(f)]) == 2
    assert "--out must be a directory" in capsys.readouterr().err


# -- the cache -----------------------------------------------------------------------------------

def test_cache_announces_a_new_start_and_resumes_an_interrupted_build(monkeypatch, capsys):
    cfg = SFTConfig(steps=4, batch_size=8, warmup_steps=1, eval_n=2, checkpoint_every=2, device="cpu")
    final = cache.sft_start_dir("tiny", 0, cfg, TASK)
    stale = final.parent / f".{final.name}.tmp-deadbeef"
    stale.mkdir(parents=True)
    calls = []
    real = cache.train_sft

    def interrupted(c, **kw):
        calls.append(c.out)

        def stop(row):
            if row["step"] == 2:
                raise KeyboardInterrupt
        return real(c, callback=stop, **kw)

    monkeypatch.setattr(cache, "train_sft", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.sft_start("tiny", 0, "cpu", progress=False, cfg=cfg, task=TASK)
    assert not stale.exists(), "a stale temporary directory is removed"
    partial = final.parent / f".{final.name}.partial"
    assert (partial / "checkpoint.pt").exists(), "Ctrl-C keeps the work done"
    assert "rlcourse: training the SFT start for preset=tiny, seed=0" in capsys.readouterr().err

    seen = []
    monkeypatch.setattr(cache, "train_sft", lambda c, **kw: real(c, callback=lambda r: seen.append(r["step"]), **kw))
    model, tok = cache.sft_start("tiny", 0, "cpu", progress=False, cfg=cfg, task=TASK)
    assert seen == [2, 3], "the build resumed from its checkpoint (after step 2 of 4)"
    assert "resuming an interrupted build" in capsys.readouterr().err
    assert (final / "final" / "model.safetensors").exists() and not partial.exists()


def test_a_damaged_cached_start_names_the_directory(monkeypatch):
    cfg = SFTConfig(steps=1, batch_size=4, warmup_steps=1, eval_n=2, device="cpu")
    cache.sft_start("tiny", 0, "cpu", progress=False, cfg=cfg, task=TASK)
    final = cache.sft_start_dir("tiny", 0, cfg, TASK)
    (final / "final" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot be loaded.*delete the directory"):
        cache.sft_start("tiny", 0, "cpu", progress=False, cfg=cfg, task=TASK)


def test_cpu_threads_rejects_bad_values_and_restores():
    n = torch.get_num_threads()
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        with cpu_threads(0):
            pass
    with cpu_threads(None):
        assert torch.get_num_threads() == n


def test_set_cpu_threads_lasts_where_entering_a_temporary_cpu_threads_does_not():
    from rlcourse.threads import set_cpu_threads

    n = torch.get_num_threads()
    try:
        other = 2 if n == 1 else 1
        set_cpu_threads(other)
        assert torch.get_num_threads() == other   # lasts after the call
        set_cpu_threads(n)
        # negative control, the pitfall set_cpu_threads replaces: the temporary is collected at once, and
        # collecting it runs the restore
        cpu_threads(other).__enter__()
        assert torch.get_num_threads() == n
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            set_cpu_threads(0)
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            set_cpu_threads(None)
    finally:
        torch.set_num_threads(n)


def test_train_sft_writes_no_dependency_progress_bars(tmp_path, capfd):
    train_sft(SFTConfig(steps=1, batch_size=4, warmup_steps=1, eval_n=2, device="cpu", out=str(tmp_path / "s")),
              task=TASK, progress=False)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
