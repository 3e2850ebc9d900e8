"""Speed of the small-LM substrate on this machine: sampling loop vs ``model.generate``, sdpa vs eager, math-verify.

    python benchmarks/lm_speed.py [--rows 256] [--new 6] [--repeats 7] [--json]
    python benchmarks/lm_speed.py --task chain --start [--rows 128] [--group 8]   # notebook 09's chain task
    python benchmarks/lm_speed.py --preset small --device cuda [--rows 4096] [--peak-tflops 989]   # a GPU, bf16

Times are the minimum over ``--repeats`` runs (the least disturbed by other processes); on a GPU
every timed call ends with ``torch.cuda.synchronize()``. ``--dtype`` defaults to bf16 on CUDA and
float32 elsewhere.

Throughput and MFU (model FLOPs utilisation = achieved model FLOP/s / the device's peak):

* fwd+bwd (``sequence_logprobs`` with gradient, as the RL trainers run it): tokens/s over every
  processed position; FLOPs = 3 x forward, forward = 2 x (weights of every linear layer except the
  output head) per position + 2 x d x V per position the head runs on (``logits_to_keep``) +
  causal attention 4 x layers x d x (sum over rows of S(S+1)/2);
* sampling (the course's KV-cached loop, and ``model.generate``): generated tokens/s; FLOPs =
  2 x (weights of every linear layer, head included) per generated token (prefill and attention
  left out: a lower bound; sampling small batches is bound by memory and latency, not FLOPs).

The GRPO update (``--task chain``, or ``--update``): :func:`rlcourse.train.grpo.grpo_update` on the sampled batch
with the task's rewards, as the ``grpo_variants`` experiment runs it (``num_iterations`` = 2 AdamW steps per
batch), once on every row and once with ``distinct_rows`` (the experiment's setting: only the distinct completions
with a non-zero advantage go through the model). Its *floor* is ``num_iterations`` plain fwd+bwd passes over the
batch; ``update_vs_floor`` is the update's time over that floor (1 = no overhead beyond the model; below 1 with
distinct rows, which skips rows), and ``update_tok_per_s`` counts the batch's positions x ``num_iterations`` per
second, to compare with ``fwd_bwd_tok_per_s``. ``sampling_vs_fwd_bwd`` is the sampling loop's generated tokens/s over
the fwd+bwd tokens/s. ``--start`` loads the task's cached SFT start (chain: the start of ``grpo_variants``) so that
the rollouts have the lengths and rewards of training; without it the model is freshly initialised (its rewards
are all equal, so every advantage is 0 and the distinct-rows update skips every row).

Measured on the chain task (2026-11-30; 2-core CPU, one thread, load average about 6;
``--task chain --start --rows 128 --group 8 --repeats 5``, sdpa): fwd+bwd 7,305 tok/s; our sampling loop 7,596
generated tok/s (1.04 x), ``model.generate`` 4,252; GRPO update on every row 1.11 x its 2-pass floor, with
distinct rows 0.21 x (``benchmarks/chain_task_calibration.md``).

``--peak-tflops`` defaults to 989 on CUDA: the dense bf16 tensor-core peak of an H100 SXM and of an
H200 (NVIDIA's data sheets give 1979 *with* 2:4 sparsity; dense is half). Give your GPU's figure
otherwise (A100: 312). No default on a CPU (MFU is then left out unless a peak is given).
"""

from __future__ import annotations

import argparse
import json
import time

import copy

import torch

from rlcourse.lm import ArithmeticTask, build_model, build_tokenizer, encode_prompts, generate, sequence_logprobs
from rlcourse.lm import model as model_module
from rlcourse.lm.task import is_correct, math_verify_correct


def hf_generate(model, tok, prompts, G, T):
    ids, att = encode_prompts(tok, prompts)
    ids, att = ids.repeat_interleave(G, 0), att.repeat_interleave(G, 0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=T, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    logits = torch.stack(out.logits, 1).float()
    seq = out.sequences[:, ids.shape[1]:]
    return torch.log_softmax(logits, -1).gather(-1, seq[..., None])[..., 0]


def linear_weights(model) -> tuple[int, int]:
    """(weights of every nn.Linear except the output head, weights of the output head)."""
    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    return body, head.weight.numel()


def fwd_bwd_flops(model, attention_mask: torch.Tensor, kept: int) -> float:
    """Model FLOPs of one forward+backward of ``sequence_logprobs`` (see the module docstring)."""
    cfg = model.config
    body, head = linear_weights(model)
    rows, S = attention_mask.shape
    attn = 4 * cfg.num_hidden_layers * cfg.hidden_size * rows * S * (S + 1) / 2
    forward = 2 * body * rows * S + 2 * head * rows * kept + attn
    return 3 * forward


def grpo_update_seconds(model, tokenizer, rollout, rewards, group: int, *, distinct_rows: bool, iterations: int = 2,
                        max_new_tokens: int, device) -> float:
    """Wall seconds of one :func:`rlcourse.train.grpo.grpo_update` (``iterations`` AdamW steps) on a copy of
    ``model``, with the batch of ``rollout`` and ``rewards`` (the model itself is not changed)."""
    from rlcourse.train.grpo import GRPOConfig, grpo_update

    m = copy.deepcopy(model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
    rows = rollout.input_ids.shape[0]
    cfg = GRPOConfig(variant="grpo", group_size=group, prompts_per_step=rows // group, num_iterations=iterations,
                     distinct_rows=distinct_rows, device=str(device))
    batch = {"input_ids": rollout.input_ids, "attention_mask": rollout.attention_mask,
             "response_mask": rollout.response_mask, "rewards": rewards}
    sync(device)
    t = time.perf_counter()
    grpo_update(m, opt, batch, cfg, None, max_new_tokens, step=0)
    sync(device)
    return time.perf_counter() - t


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256, help="rows per batch (prompts x G)")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new", type=int, default=None,
                    help="new tokens per row (default: 6 for arithmetic, the task's limit for chain: 19)")
    ap.add_argument("--task", choices=("arithmetic", "chain"), default="arithmetic",
                    help="the prompts (and, for the update, the rewards): 2-operand addition, or notebook 09's chain task")
    ap.add_argument("--start", action="store_true",
                    help="load the task's cached SFT start (trained once if missing) instead of a fresh model")
    ap.add_argument("--update", action="store_true", help="also time the GRPO update (always on with --task chain)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="weights and activations (default: bfloat16 on cuda, float32 elsewhere)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device peak for MFU (default 989 on cuda: H100/H200 SXM dense bf16; none on cpu)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {a.device!r} asked for, but torch sees no CUDA device")
    dtype = getattr(torch, a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32"))
    peak = a.peak_tflops if a.peak_tflops is not None else (989.0 if a.device.startswith("cuda") else None)
    if peak is not None and not peak > 0:
        raise ValueError(f"--peak-tflops must be positive, got {a.peak_tflops!r}")
    if a.task == "chain":
        from rlcourse.experiments.cache import CHAIN_TASK as task
    else:
        task = ArithmeticTask()
    from rlcourse.lm import default_max_new_tokens

    if a.new is None:
        a.new = default_max_new_tokens(task) if a.task == "chain" else 6
    a.update = a.update or a.task == "chain"
    tok = build_tokenizer()
    problems = task.sample(a.rows // a.group, seed=1)
    prompts = [p.prompt for p in problems]
    N, T = len(prompts) * a.group, a.new
    res = {"task": a.task, "start": a.start, "preset": a.preset, "device": a.device,
           "dtype": str(dtype).replace("torch.", ""), "rows": N,
           "new_tokens": T, "threads": torch.get_num_threads(), "peak_tflops": peak}
    start_state = None
    if a.start:
        start_state = _start_state(a.task, a.preset)
    if a.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(torch.device(a.device))
    models = {}
    for impl in ("sdpa", "eager"):
        model_module.ATTN_IMPLEMENTATION = impl
        models[impl] = build_model(a.preset, len(tok), 0, tokenizer=tok)
        if start_state is not None:
            models[impl].load_state_dict(start_state)
        models[impl] = models[impl].to(device=a.device, dtype=dtype)
    model_module.ATTN_IMPLEMENTATION = "sdpa"
    rollouts = {impl: generate(m, tok, prompts, a.group, T, 1.0, seed=0) for impl, m in models.items()}

    def train_step(impl):
        m, ro = models[impl], rollouts[impl]
        m.train()
        lp = sequence_logprobs(m, ro.input_ids, ro.attention_mask, ro.response_mask)
        lp.sum().backward()

    jobs = {}
    for impl, m in models.items():
        jobs[(impl, "loop_s")] = lambda m=m: generate(m, tok, prompts, a.group, T, 1.0, seed=0)
        jobs[(impl, "generate_s")] = lambda m=m: hf_generate(m, tok, prompts, a.group, T)
        jobs[(impl, "fwd_bwd_s")] = lambda impl=impl: train_step(impl)
    if a.update:
        answers = [p.answer for p in problems for _ in range(a.group)]
        rewards = {impl: task.batch_rewards(ro.completions, answers, ro.finished).to(a.device)
                   for impl, ro in rollouts.items()}
        for impl, m in models.items():
            for key, distinct in (("update_all_s", False), ("update_distinct_s", True)):
                jobs[(impl, key)] = lambda m=m, impl=impl, distinct=distinct: grpo_update_seconds(
                    m, tok, rollouts[impl], rewards[impl], a.group, distinct_rows=distinct,
                    max_new_tokens=T, device=a.device)
    # interleaved rounds: a burst of load from another process hits every variant alike
    best = {key: float("inf") for key in jobs}
    for f in jobs.values():
        f()
    for _ in range(a.repeats):
        for key, f in jobs.items():
            sync(a.device)
            t = time.perf_counter()
            out = f()
            sync(a.device)
            # an update times itself (its model copy is not part of the update)
            best[key] = min(best[key], out if key[1].startswith("update") else time.perf_counter() - t)
    for impl in models:
        r = {k: v for (i, k), v in best.items() if i == impl}
        n_tok = float(rollouts[impl].response_mask.sum())
        r["loop_tok_per_s"] = n_tok / r["loop_s"]
        r["generate_tok_per_s"] = n_tok / r["generate_s"]
        ro = rollouts[impl]
        positions = float(ro.attention_mask.numel())
        r["fwd_bwd_tok_per_s"] = positions / r["fwd_bwd_s"]
        r["fwd_bwd_tflops"] = fwd_bwd_flops(models[impl], ro.attention_mask, ro.response_mask.shape[1] + 1) \
            / r["fwd_bwd_s"] / 1e12
        body, head = linear_weights(models[impl])
        r["loop_tflops"] = 2 * (body + head) * n_tok / r["loop_s"] / 1e12
        if peak is not None:
            r["fwd_bwd_mfu"] = r["fwd_bwd_tflops"] / peak
            r["loop_mfu"] = r["loop_tflops"] / peak
        r["generated_tokens"] = n_tok
        r["mean_response_tokens"] = n_tok / N
        r["sampling_vs_fwd_bwd"] = r["loop_tok_per_s"] / r["fwd_bwd_tok_per_s"]
        if a.update:
            r["reward_mean"] = float(rewards[impl].float().mean())
            for kind in ("all", "distinct"):
                r[f"update_{kind}_tok_per_s"] = 2 * positions / r[f"update_{kind}_s"]
                r[f"update_{kind}_vs_floor"] = r[f"update_{kind}_s"] / (2 * r["fwd_bwd_s"])
        res[impl] = r
    comps = [str(i) for i in range(-50, 150)] + ["19abc", " 19", "1 9", "x", "18+1"]
    t = time.perf_counter()
    for c in comps:
        math_verify_correct(c, "19")
    res["math_verify_ms_per_call"] = (time.perf_counter() - t) / len(comps) * 1e3
    ints = [str(i) for i in range(-50, 150)] * 10
    t = time.perf_counter()
    for c in ints:
        is_correct(c, "19")
    res["fast_path_ms_per_call"] = (time.perf_counter() - t) / len(ints) * 1e3
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{a.task} task{' (SFT start)' if a.start else ''}, "
              f"{a.preset} preset, {res['dtype']} on {res.get('gpu', a.device)}, {N} rows x {T} new tokens, "
              f"{res['threads']} threads (best of {a.repeats})")
        for impl in ("sdpa", "eager"):
            r = res[impl]
            print(f"  {impl:5s}: our loop {r['loop_s'] * 1e3:7.1f} ms ({r['loop_tok_per_s']:8.0f} tok/s) | "
                  f"model.generate {r['generate_s'] * 1e3:7.1f} ms ({r['generate_tok_per_s']:8.0f} tok/s) | "
                  f"sequence_logprobs fwd+bwd {r['fwd_bwd_s'] * 1e3:6.1f} ms")
            mfu = (f", MFU fwd+bwd {r['fwd_bwd_mfu']:.2%}, sampling {r['loop_mfu']:.3%} of {peak:g} TFLOP/s"
                   if peak is not None else "")
            print(f"         fwd+bwd {r['fwd_bwd_tok_per_s']:9.0f} tok/s ({r['fwd_bwd_tflops']:.3f} TFLOP/s), "
                  f"sampling {r['loop_tflops']:.4f} TFLOP/s{mfu}")
            print(f"         sampling {r['loop_tok_per_s'] / r['fwd_bwd_tok_per_s']:.3f} x the fwd+bwd tok/s "
                  f"({r['mean_response_tokens']:.1f} tokens per response)")
            if a.update:
                print(f"         GRPO update (2 AdamW steps, mean reward {r['reward_mean']:.2f}): all rows "
                      f"{r['update_all_s'] * 1e3:6.1f} ms ({r['update_all_tok_per_s']:8.0f} tok/s, "
                      f"{r['update_all_vs_floor']:.2f} x the 2 fwd+bwd floor) | distinct rows "
                      f"{r['update_distinct_s'] * 1e3:6.1f} ms ({r['update_distinct_tok_per_s']:8.0f} tok/s, "
                      f"{r['update_distinct_vs_floor']:.2f} x the floor)")
        print(f"  math-verify {res['math_verify_ms_per_call']:.3f} ms/call; "
              f"integer fast path {res['fast_path_ms_per_call'] * 1e3:.1f} us/call")
    return res


def _start_state(task: str, preset: str) -> dict:
    """The state dict of the task's cached SFT start (chain: the start of the ``grpo_variants`` experiment)."""
    if task == "chain":
        from rlcourse.experiments.cache import chain_sft_start
        from rlcourse.experiments.grpo_chain import GRPOChainConfig

        cfg = GRPOChainConfig(preset=preset)
        model, _ = chain_sft_start(preset, cfg.sft_seed, "cpu", progress=False, cfg=cfg.sft_config())
    else:
        from rlcourse.experiments.cache import sft_start

        model, _ = sft_start(preset, 0, "cpu", progress=False)
    return {k: v.float() for k, v in model.state_dict().items()}


if __name__ == "__main__":
    main()
