"""The course's GRPO experiment on TRL's ``GRPOTrainer``, launched by accelerate on one or many processes.

    # 2 processes on the CPU (gloo backend): what CI runs
    accelerate launch --cpu --num_processes 2 examples/trl_grpo.py --max-steps 3 --output-dir /tmp/trl_grpo

    # one process, no launcher
    python examples/trl_grpo.py --max-steps 3

    # 8 GPUs with DeepSpeed ZeRO-2 (configs beside this file; see examples/README.md, not run here)
    accelerate launch --config_file examples/accelerate/deepspeed_zero2.yaml examples/trl_grpo.py --model DIR

Same task (2-digit addition and subtraction), same rule-based reward, same prompts in the same
order, same group size and hyper-parameters as the course's ``rlcourse.train.grpo`` defaults
(the mapping is in ``examples/_course_trl.py``). The global batch is ``--prompts x --group``
rows per optimizer step whatever the number of processes; each process generates and scores its
share, TRL gathers the rewards to normalise them within each group, and DDP averages the
gradients.

The model is the course's SFT start from the checkpoint cache (``rlcourse.train.sft.sft_start``:
trained once, about 2-5 minutes on a 2-core CPU, then loaded), or any local Hugging Face causal
LM directory given with ``--model DIR`` (safetensors, its own tokenizer; nothing is downloaded).
With ``--model``, prompts are still the course's arithmetic prompts.

The last line printed (by the main process) is a JSON summary: ``world_size``, ``steps``,
``loss`` (TRL's training loss averaged over the steps), ``reward`` (mean reward of the sampled
completions, per step), ``accuracy_before`` / ``accuracy_after`` (greedy accuracy on
``--eval-n`` held-out problems), ``seconds``, ``weight_change`` (L2 norm of the parameter
update) and ``weights_equal_across_ranks`` (every process ends with the same weights, as DDP must). With one optimizer step per generation batch
(``num_iterations=1``) and ``beta=0`` the GRPO loss *value* is the mean over sequences of the
advantage (ratio 1), which is about 0 whatever the model does: it is its gradient that learns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _course_trl beside this file

from _course_trl import COURSE_DEFAULTS, course_dataset, course_grpo_config, course_reward  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None,
                    help="local Hugging Face model directory (default: the course's cached SFT start)")
    ap.add_argument("--preset", default="tiny", help="preset of the cached SFT start when --model is not given")
    ap.add_argument("--max-steps", type=int, default=300, help="optimizer steps (= generation batches)")
    ap.add_argument("--prompts", type=int, default=COURSE_DEFAULTS["prompts"], help="prompts per step (global)")
    ap.add_argument("--group", type=int, default=COURSE_DEFAULTS["group"], help="completions per prompt (G)")
    ap.add_argument("--lr", type=float, default=COURSE_DEFAULTS["lr"])
    ap.add_argument("--loss-type", default=COURSE_DEFAULTS["loss_type"],
                    help="TRL loss_type: grpo, bnpo, dr_grpo, dapo, ...")
    ap.add_argument("--beta", type=float, default=COURSE_DEFAULTS["beta"], help="KL coefficient (0: no reference)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-n", type=int, default=200, help="held-out problems for the accuracy before/after")
    ap.add_argument("--output-dir", default=None, help="TRL's output directory (default: a temporary one)")
    ap.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPUs; match the accelerate config)")
    ap.add_argument("--use-vllm", action="store_true", help="generate with vLLM (GPU only; see examples/README.md)")
    ap.add_argument("--vllm-mode", default="colocate", choices=["colocate", "server"],
                    help="colocate: vLLM inside each training process; server: a `trl vllm-serve` process")
    ap.add_argument("--vllm-server-host", default="0.0.0.0", help="host of `trl vllm-serve` (server mode)")
    ap.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3,
                    help="share of each GPU's memory vLLM may take (colocate mode)")
    a = ap.parse_args(argv)
    for name in ("max_steps", "prompts", "group", "eval_n"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(a, name)!r}")
    if a.group < 2:
        raise ValueError(f"--group must be >= 2 (a group needs two completions to have a baseline), got {a.group}")
    return a


def _cpu_processes_asked_of_accelerate() -> int | None:
    """N when ``accelerate launch --cpu --num_processes N`` (N > 1) started this script as ONE process.

    accelerate forks several CPU processes only through ``mpirun`` (``--mpirun_hostfile``); without
    it its launcher starts a single process and merely sets ``MASTER_ADDR`` (huggingface/accelerate
    issue #2741, accelerate 1.15). N is read from the launcher's command line (our parent process).
    Returns None when this is not that situation (no launcher, torchrun, mpirun, a GPU launch).
    """
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes") or "MASTER_ADDR" not in env:
        return None
    if any(k in env for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")):
        return None  # a launcher already started the processes
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        parent = []
    for i, arg in enumerate(parent):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(parent) and parent[i + 1].isdigit():
                return int(parent[i + 1])
            if arg.startswith(flag + "="):
                return int(arg.split("=", 1)[1])
    raise RuntimeError(
        "accelerate launch --cpu asked for several processes but started one (it forks CPU processes only via "
        "mpirun), and the process count could not be read from its command line. Launch with "
        "`ACCELERATE_USE_CPU=1 torchrun --nproc-per-node N examples/trl_grpo.py ...` instead.")


def _relaunch_with_torchrun(n: int, argv) -> None:
    """Replace this process by ``torch.distributed.run`` (torchrun) starting ``n`` copies of this script."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
           "--master-addr", os.environ["MASTER_ADDR"], "--master-port", os.environ.get("MASTER_PORT", "29500"),
           str(Path(__file__).resolve()), *argv]
    print(f"[trl_grpo] accelerate started 1 CPU process for --num_processes {n}; relaunching with torchrun",
          file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


def load_start(a, device):
    """``(model, tokenizer)``: ``--model DIR`` or the course's cached SFT start."""
    if a.model is not None:
        from rlcourse.lm import load_model

        return load_model(a.model, device)
    from rlcourse.experiments import sft_start

    return sft_start(a.preset, a.seed, device, progress=False)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    n = _cpu_processes_asked_of_accelerate()
    if n is not None and n > 1:
        _relaunch_with_torchrun(n, argv)
    import torch
    from accelerate import PartialState
    from trl import GRPOTrainer

    from rlcourse.lm import default_max_new_tokens, held_out_accuracy
    from rlcourse.lm import default_task

    from accelerate.utils import parse_flag_from_env

    # What `accelerate launch` (or torchrun) set; one process without a launcher. On a machine
    # without a GPU the processes run on the CPU and talk through gloo.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    world = state.num_processes
    on_cpu = state.device.type == "cpu"
    task = default_task()
    output_dir = a.output_dir or os.path.join(os.environ.get("TMPDIR", "/tmp"), "rlcourse_trl_grpo")

    # The first process trains (or loads) the cached start; the others wait, then load it.
    with state.main_process_first():
        model, tok = load_start(a, "cpu")
    start_weights = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    max_new = default_max_new_tokens(task)
    acc_before = held_out_accuracy(model, tok, task, a.eval_n) if state.is_main_process else None

    cfg = course_grpo_config(
        output_dir, steps=a.max_steps, prompts=a.prompts, group=a.group, lr=a.lr, max_new_tokens=max_new,
        seed=a.seed, world_size=world, loss_type=a.loss_type, beta=a.beta, use_cpu=on_cpu,
        logging_strategy="steps", logging_steps=1, bf16=a.bf16,
        **({"use_vllm": True, "vllm_mode": a.vllm_mode, "vllm_server_host": a.vllm_server_host,
            "vllm_gpu_memory_utilization": a.vllm_gpu_memory_utilization} if a.use_vllm else {}),
    )
    data = course_dataset(task, a.max_steps, a.prompts, a.seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):  # TRL prints its metrics
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=course_reward(tok), args=cfg, train_dataset=data,
                              processing_class=tok)
        out = trainer.train()
    seconds = time.perf_counter() - t0
    logs = [r for r in trainer.state.log_history if "loss" in r]
    # DDP keeps one model: after the same averaged updates every rank must hold the same weights
    from accelerate.utils import gather_object

    weights = torch.cat([p.detach().reshape(-1).to("cpu") for p in trainer.model.parameters()])
    fingerprints = gather_object([(float(weights.sum()), float(weights.norm()))])
    if not state.is_main_process:
        return 0
    trained = trainer.model.to("cpu").eval()
    with torch.no_grad():
        acc_after = held_out_accuracy(trained, tok, task, a.eval_n)
    summary = {
        "world_size": world,
        "distributed_type": str(state.distributed_type).split(".")[-1],
        "backend": state.backend,
        "steps": int(trainer.state.global_step),
        "rows_per_step": a.prompts * a.group,
        "rows_per_process": a.prompts * a.group // world,
        "loss_type": a.loss_type,
        "loss": float(out.training_loss),
        "loss_per_step": [float(r["loss"]) for r in logs],
        "reward": [float(r["reward"]) for r in logs if "reward" in r],
        "eval_n": a.eval_n,
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "seconds": round(seconds, 2),
        "weight_change": float((weights - start_weights).norm()),
        "weights_equal_across_ranks": len(set(fingerprints)) == 1,
        "model": a.model or f"sft_start({a.preset!r}, {a.seed})",
    }
    if not math.isfinite(summary["loss"]):
        raise FloatingPointError(f"TRL's training loss is not finite: {summary['loss']!r}")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
