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


def test_smoke_run_on_cpu_reports_throughput_and_mfu_against_the_given_peak():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = lm_speed.main(["--rows", "16", "--group", "4", "--new", "3", "--repeats", "1", "--json",
                             "--peak-tflops", "2.5"])
    finally:
        torch.set_num_threads(n)
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
