"""``examples/trl_grpo.py``: the course's GRPO experiment on TRL's GRPOTrainer, run as 2 CPU processes by accelerate.

The run uses a small SFT start built here with the course's SFT trainer at a tiny configuration
(a few steps: the run must work, not learn), saved to a temporary directory and passed with
``--model``, so it does not depend on the course's cached start; ``RLCOURSE_CACHE`` points at a
temporary directory. Whether the weights move in 2 steps depends on what the model samples (a
group whose rewards are all equal has zero advantage), so the test asserts the run's structure,
not learning.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _accelerate_launch() -> list[str]:
    """``accelerate launch`` of this interpreter's environment."""
    exe = Path(sys.executable).with_name("accelerate")
    return [str(exe), "launch"] if exe.exists() else [sys.executable, "-m", "accelerate.commands.launch"]


def _free_port() -> int:
    """A TCP port nobody listens on now (the rendezvous of the two processes; parallel runs must not share one)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    from rlcourse.train.sft import SFTConfig, train_sft

    work = tmp_path_factory.mktemp("trl_grpo")
    train_sft(SFTConfig(steps=5, batch_size=16, warmup_steps=1, eval_n=1, threads=1, device="cpu",
                        out=str(work / "sft")), progress=False)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RLCOURSE_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [*_accelerate_launch(), "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(EXAMPLES / "trl_grpo.py"), "--model", str(work / "sft" / "final"), "--max-steps", "2",
           "--prompts", "4", "--group", "4", "--eval-n", "16", "--output-dir", str(work / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_process_run_prints_a_json_summary_as_its_last_line(two_process_run):
    last = two_process_run.stdout.strip().splitlines()[-1]
    summary = json.loads(last)
    assert summary["world_size"] == 2
    assert summary["distributed_type"] == "MULTI_CPU" and summary["backend"] == "gloo"
    assert summary["steps"] == 2 and len(summary["loss_per_step"]) == 2 and len(summary["reward"]) == 2
    assert summary["rows_per_step"] == 16 and summary["rows_per_process"] == 8  # the global batch is split
    assert math.isfinite(summary["loss"])
    for key in ("accuracy_before", "accuracy_after"):
        assert 0.0 <= summary[key] <= 1.0
    assert math.isfinite(summary["weight_change"]) and summary["weight_change"] >= 0
    assert summary["weights_equal_across_ranks"] is True  # DDP kept the two replicas identical


def test_summary_is_printed_once_by_the_main_process(two_process_run):
    lines = [ln for ln in two_process_run.stdout.splitlines() if ln.startswith('{"world_size"')]
    assert len(lines) == 1


def test_global_batch_that_does_not_split_over_the_processes_is_rejected():
    sys.path.insert(0, str(EXAMPLES))
    from _course_trl import course_grpo_config

    with pytest.raises(ValueError, match="world_size=2"):
        course_grpo_config("/tmp/unused", steps=1, prompts=3, group=3, lr=1e-4, max_new_tokens=4, seed=0,
                           world_size=2)
    cfg = course_grpo_config("/tmp/unused", steps=1, prompts=4, group=4, lr=1e-4, max_new_tokens=4, seed=0,
                             world_size=2, use_cpu=True)
    assert cfg.per_device_train_batch_size == 8 and cfg.num_generations == 4 and cfg.loss_type == "grpo"


def test_a_group_of_one_completion_is_rejected():
    sys.path.insert(0, str(EXAMPLES))
    import trl_grpo

    with pytest.raises(ValueError, match="--group"):
        trl_grpo.parse_args(["--group", "1"])


@pytest.mark.parametrize("name", ["multi_gpu_ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp2"])
def test_accelerate_configs_are_read_by_accelerate(name):
    """The multi-GPU configs are not run here (no GPU); accelerate's own config class must accept them."""
    import yaml
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig(**yaml.safe_load((EXAMPLES / "accelerate" / f"{name}.yaml").read_text()))
    assert cfg.num_processes == 8 and cfg.mixed_precision == "bf16" and not cfg.use_cpu
    expected = {"multi_gpu_ddp": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED",
                "fsdp2": "FSDP"}[name]
    assert str(cfg.distributed_type).endswith(expected)
    if name.startswith("deepspeed"):
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])
