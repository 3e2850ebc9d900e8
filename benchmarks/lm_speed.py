"""Speed of the small-LM substrate on this machine: sampling loop vs ``model.generate``, sdpa vs eager, math-verify.

    python benchmarks/lm_speed.py [--rows 256] [--new 6] [--repeats 7] [--json]

Times are the minimum over ``--repeats`` runs (the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import json
import time

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256, help="rows per batch (prompts x G)")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new", type=int, default=6, help="new tokens per row")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    tok = build_tokenizer()
    prompts = [p.prompt for p in ArithmeticTask().sample(a.rows // a.group, seed=1)]
    N, T = len(prompts) * a.group, a.new
    res = {"preset": a.preset, "rows": N, "new_tokens": T, "threads": torch.get_num_threads()}
    models = {}
    for impl in ("sdpa", "eager"):
        model_module.ATTN_IMPLEMENTATION = impl
        models[impl] = build_model(a.preset, len(tok), 0, tokenizer=tok).to(a.device)
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
    # interleaved rounds: a burst of load from another process hits every variant alike
    best = {key: float("inf") for key in jobs}
    for f in jobs.values():
        f()
    for _ in range(a.repeats):
        for key, f in jobs.items():
            t = time.perf_counter()
            f()
            best[key] = min(best[key], time.perf_counter() - t)
    for impl in models:
        r = {k: v for (i, k), v in best.items() if i == impl}
        n_tok = float(rollouts[impl].response_mask.sum())
        r["loop_tok_per_s"] = n_tok / r["loop_s"]
        r["generate_tok_per_s"] = n_tok / r["generate_s"]
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
        print(f"{a.preset} preset, {N} rows x {T} new tokens, {res['threads']} threads (best of {a.repeats})")
        for impl in ("sdpa", "eager"):
            r = res[impl]
            print(f"  {impl:5s}: our loop {r['loop_s'] * 1e3:7.1f} ms ({r['loop_tok_per_s']:8.0f} tok/s) | "
                  f"model.generate {r['generate_s'] * 1e3:7.1f} ms ({r['generate_tok_per_s']:8.0f} tok/s) | "
                  f"sequence_logprobs fwd+bwd {r['fwd_bwd_s'] * 1e3:6.1f} ms")
        print(f"  math-verify {res['math_verify_ms_per_call']:.3f} ms/call; "
              f"integer fast path {res['fast_path_ms_per_call'] * 1e3:.1f} us/call")
    return res


if __name__ == "__main__":
    main()
