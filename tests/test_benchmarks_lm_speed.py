"""``benchmarks/lm_speed.py``: it runs on the CPU (the GPU path is the same code), and its FLOP count is the model's.

No timing is asserted (tests never assert wall-clock times); the GPU figures are produced by
``python benchmarks/lm_speed.py --preset small --device cuda`` on a GPU machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import lm_speed  # noqa: E402

from rlcourse.lm import build_model, build_tokenizer, count_parameters  # noqa: E402
from rlcourse.threads import cpu_threads  # noqa: E402


def test_smoke_run_on_cpu_reports_throughput_and_mfu_against_the_given_peak():
    with cpu_threads(1):
        res = lm_speed.main(["--rows", "16", "--group", "4", "--new", "3", "--repeats", "1", "--json",
                             "--peak-tflops", "2.5"])
    assert res["dtype"] == "float32" and res["peak_tflops"] == 2.5
    for impl in ("sdpa", "eager"):
        r = res[impl]
        assert r["fwd_bwd_tok_per_s"] > 0 and r["loop_tok_per_s"] > 0
        assert r["fwd_bwd_mfu"] == pytest.approx(r["fwd_bwd_tflops"] / 2.5)
        assert r["loop_mfu"] == pytest.approx(r["loop_tflops"] / 2.5)


def test_linear_weights_are_every_parameter_but_the_norms_with_the_tied_head_counted_as_a_matmul():
    tok = build_tokenizer()
    model = build_model("tiny", len(tok), 0, tokenizer=tok)
    body, head = lm_speed.linear_weights(model)
    cfg = model.config
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    norms = (2 * L + 1) * d  # two RMSNorms per layer and the final one
    assert head == len(tok) * d
    # tied embeddings: the head's weights are the embedding's, counted once by count_parameters
    assert body + head == count_parameters(model) - norms


def test_fwd_bwd_flops_are_six_weights_per_token_when_attention_is_negligible():
    tok = build_tokenizer()
    model = build_model("tiny", len(tok), 0, tokenizer=tok)
    body, head = lm_speed.linear_weights(model)
    mask = torch.ones(3, 1, dtype=torch.long)  # one position: attention work 4*L*d*1
    flops = lm_speed.fwd_bwd_flops(model, mask, kept=1)
    attn = 3 * 4 * model.config.num_hidden_layers * model.config.hidden_size * 3
    assert flops == pytest.approx(6 * (body + head) * 3 + attn)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        lm_speed.main(["--device", "cuda"])
    with pytest.raises(ValueError, match="--peak-tflops"):
        lm_speed.main(["--peak-tflops", "0"])


def test_chain_task_option_samples_to_the_tasks_limit_and_times_the_grpo_update_against_its_floor():
    from rlcourse.experiments.cache import CHAIN_TASK
    from rlcourse.lm import default_max_new_tokens

    with cpu_threads(1):
        res = lm_speed.main(["--task", "chain", "--rows", "8", "--group", "4", "--repeats", "1", "--json"])
    assert res["task"] == "chain" and res["new_tokens"] == default_max_new_tokens(CHAIN_TASK)
    for impl in ("sdpa", "eager"):
        r = res[impl]
        # the floor of an update of 2 AdamW steps is 2 plain fwd+bwd passes over the same batch
        assert r["update_all_vs_floor"] == pytest.approx(r["update_all_s"] / (2 * r["fwd_bwd_s"]))
        assert r["update_distinct_vs_floor"] == pytest.approx(r["update_distinct_s"] / (2 * r["fwd_bwd_s"]))
        assert r["sampling_vs_fwd_bwd"] == pytest.approx(r["loop_tok_per_s"] / r["fwd_bwd_tok_per_s"])
        assert 0 < r["mean_response_tokens"] <= res["new_tokens"]


def test_grpo_update_seconds_leaves_the_timed_model_unchanged():
    from rlcourse.lm import generate

    tok = build_tokenizer()
    model = build_model("tiny", len(tok), 0, tokenizer=tok)
    ro = generate(model, tok, ["1+2=", "3+4="], 2, 3, 1.0, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = lm_speed.grpo_update_seconds(model, tok, ro, torch.tensor([1.0, 0.0, 0.0, 1.0]), 2,
                                           distinct_rows=False, max_new_tokens=3, device="cpu")
    assert seconds > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
