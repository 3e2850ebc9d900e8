"""``examples/ddp_parity.py``: TRL's GRPO loss on 2 DDP processes (gloo) against 1 process, per loss_type.

Measured: the gradient of TRL's ``_compute_loss`` on a fixed global batch with uneven token
counts per rank, in one process, in two real ``torch.distributed`` processes under
``DistributedDataParallel`` (gradients averaged), and as two accumulated micro-batches.
Predicted independently with the course's ``grpo_loss`` on each half, with the normalisers a
rank knows. The modes whose normaliser is global (or per sequence) must match to 1e-6; ``bnpo``
(a per-rank token mean) must differ, by the predicted amount.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import ddp_parity  # noqa: E402

from rlcourse.threads import cpu_threads  # noqa: E402

ATOL = 1e-6


@pytest.fixture(scope="module")
def table():
    with cpu_threads(1):
        return {r["loss_type"]: r for r in ddp_parity.parity_table(seed=0)}


def test_the_batch_puts_very_different_token_counts_on_the_two_ranks(table):
    t0, t1 = table["grpo"]["tokens_per_rank"]
    assert t0 >= 2 * t1  # otherwise the per-rank token mean could not show its bias


@pytest.mark.parametrize("loss_type", ddp_parity.EQUAL_BY_CONSTRUCTION)
def test_ddp_and_accumulation_equal_one_process(table, loss_type):
    r = table[loss_type]
    assert abs(r["loss_ddp"] - r["loss_1proc"]) < ATOL
    assert abs(r["loss_accum"] - r["loss_1proc"]) < ATOL
    assert r["max_abs_dgrad_ddp"] < ATOL
    assert r["max_abs_dgrad_accum"] < ATOL
    assert r["grad_norm_1proc"] > 1e-2  # a gradient that is there to compare


def test_bnpo_per_rank_token_mean_differs_by_the_predicted_amount(table):
    r = table["bnpo"]
    # it really differs (a naive "DDP equals one process" prediction is rejected)...
    assert r["max_abs_dgrad_ddp"] > 1e-3
    assert abs(r["loss_ddp"] - r["loss_1proc"]) > 1e-3
    # ...and exactly as predicted: mean over ranks of S_r / N_r, not S / N
    assert abs(r["max_abs_dgrad_predicted"] - r["max_abs_dgrad_ddp"]) < ATOL
    assert r["max_abs_ddp_minus_prediction"] < ATOL
    assert abs(r["loss_predicted"] - r["loss_ddp"]) < ATOL
    assert r["max_abs_dgrad_accum"] > 1e-3  # gradient accumulation has the same pitfall


def test_bnpo_loss_gap_equals_the_closed_form(table):
    """(1/W) sum_r S_r / N_r - S / N, with S_r the rank's masked token-loss sum, from the course's aggregate."""
    from rlcourse.losses import grpo_loss

    batch = ddp_parity.synthetic_batch(0)
    model = ddp_parity.TinyPolicy(0)
    with torch.no_grad():
        per_rank = []
        for rank in range(ddp_parity.WORLD):
            rows = ddp_parity.shard(batch, rank, ddp_parity.WORLD)
            n = float(rows["completion_mask"].sum())
            loss, _ = grpo_loss(model(rows["prompt_ids"], rows["completion_ids"]), rows["old_logps"],
                                rows["advantages"], rows["completion_mask"], aggregation="seq_mean_token_sum")
            s = loss.item() * rows["completion_mask"].shape[0]  # seq-mean of token sums x rows = S_r
            per_rank.append((s, n))
    gap = sum(s / n for s, n in per_rank) / len(per_rank) - sum(s for s, _ in per_rank) / sum(n for _, n in per_rank)
    r = table["bnpo"]
    assert abs((r["loss_ddp"] - r["loss_1proc"]) - gap) < ATOL


def test_trl_one_process_equals_the_course_loss(table):
    for r in table.values():
        assert r["max_abs_trl_minus_course_1proc"] < ATOL


def test_with_equal_token_counts_the_bnpo_gap_vanishes():
    """The cause is the uneven token counts: with every completion of one length the prediction equals one process."""
    batch = ddp_parity.synthetic_batch(0, even=True)
    _, grad_pred = ddp_parity.predicted(batch, "bnpo")
    _, grad_full = ddp_parity.course_full_batch(batch, "bnpo")
    assert (grad_pred - grad_full).abs().max() < 1e-12
    uneven = ddp_parity.synthetic_batch(0)
    _, grad_pred = ddp_parity.predicted(uneven, "bnpo")
    _, grad_full = ddp_parity.course_full_batch(uneven, "bnpo")
    assert (grad_pred - grad_full).abs().max() > 1e-3
