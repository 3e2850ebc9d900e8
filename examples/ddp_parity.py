"""Does TRL's GRPO loss give the same gradient on 2 DDP processes as on 1? Per ``loss_type``, measured.

    python examples/ddp_parity.py            # a table
    python examples/ddp_parity.py --json     # one JSON object

One fixed synthetic global batch (8 completions, lengths deliberately uneven: the rows of rank 0
are long, those of rank 1 short) and one tiny float64 policy. For each of TRL 1.16's loss types
``grpo``, ``bnpo``, ``dr_grpo``, ``dapo`` and ``luspo`` the loss is computed by TRL's own
``GRPOTrainer._compute_loss`` (called on a stand-in ``self``, as in ``tests/test_trl_grpo_parity.py``)
in three set-ups that see the same global batch:

* **1 process**: the whole batch at once;
* **DDP, 2 processes**: ``torch.distributed`` with the gloo backend, the policy wrapped in
  ``DistributedDataParallel``; each rank gets half the rows, and ``num_items_in_batch`` is the
  token count summed over the ranks, as TRL gathers it; DDP *averages* the two ranks' gradients;
* **gradient accumulation, 1 process**: the same two halves as two micro-batches of one optimizer
  step (``gradient_accumulation_steps = steps_per_generation = 2``), gradients summed.

and the maximum absolute difference of the loss and of the gradient against the 1-process run is
printed.

What to expect, and why (the prediction, computed independently with the course's
:func:`rlcourse.losses.grpo_loss` on each half with the normalisers a rank can know). Averaging
rank losses ``L_r`` gives :math:`\\bar L = \\frac1W\\sum_r L_r`; with W ranks of n rows each:

* ``grpo`` (mean over sequences of each sequence's token mean): :math:`L_r = \\frac1n\\sum_{i\\in r}\\ell_i`,
  so :math:`\\bar L = \\frac{1}{Wn}\\sum_i \\ell_i` — **equal**;
* ``dr_grpo`` (token sum / (rows x L_max)) and ``luspo`` (mean over sequences of token sums): the
  same argument — **equal**;
* ``dapo``: TRL divides each rank's token sum by the *global* token count / W, so
  :math:`\\bar L = \\frac1W\\sum_r \\frac{S_r}{N/W} = \\frac{S}{N}` — **equal**;
* ``bnpo`` (token mean over the rank's *own* tokens): :math:`\\bar L = \\frac1W\\sum_r S_r/N_r`, which is
  not :math:`S/N` unless every rank holds the same number of tokens — **differs**: each token on a
  rank with few tokens weighs more. That is the per-rank token-mean pitfall; ``dapo`` is its fix.

Gradient accumulation over micro-batches has exactly the same structure (TRL divides by the number
of accumulation steps where the ranks' gradients are averaged), so it shows the same pattern.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
#: loss types whose 2-process (and accumulated) loss and gradient must equal the 1-process ones
EQUAL_BY_CONSTRUCTION = ("grpo", "dr_grpo", "dapo", "luspo")
WORLD = 2
VOCAB, HIDDEN, PROMPT_LEN, L_MAX = 11, 6, 2, 8
EPS_LOW = EPS_HIGH = 0.2


# ----------------------------------------------------------------------------- the batch and the policy

def synthetic_batch(seed: int = 0, rows: int = 8, world: int = WORLD, even: bool = False) -> dict:
    """A fixed global batch; rank r gets rows ``[r*n, (r+1)*n)`` with ``n = rows / world``.

    Uneven by design (``even=False``): rank 0's completions are 6-8 tokens long, the others' 1-3, so
    the ranks hold very different token counts. ``even=True`` gives every row the same length.
    ``old_logps`` (the sampling policy) are the initial policy's log-probs moved by fixed offsets, so some ratios leave the
    clip range; ``advantages`` are fixed numbers, as TRL hands each rank its slice of them.
    """
    if rows % world:
        raise ValueError(f"rows={rows} must split evenly over world={world} ranks")
    g = torch.Generator().manual_seed(seed)
    n = rows // world
    if even:
        lengths = torch.full((rows,), L_MAX - 2)
    else:
        long = torch.randint(L_MAX - 2, L_MAX + 1, (n,), generator=g)
        short = torch.randint(1, 4, (rows - n,), generator=g)
        lengths = torch.cat([long, short])
    mask = (torch.arange(L_MAX)[None, :] < lengths[:, None]).long()
    batch = {
        "prompt_ids": torch.randint(0, VOCAB, (rows, PROMPT_LEN), generator=g),
        "completion_ids": torch.randint(0, VOCAB, (rows, L_MAX), generator=g) * mask,
        "completion_mask": mask,
        "advantages": torch.randn(rows, generator=g, dtype=torch.float64),
    }
    offset = 0.3 * torch.randn(rows, L_MAX, generator=g, dtype=torch.float64)
    with torch.no_grad():  # the sampling policy: the initial policy, moved by fixed offsets
        batch["old_logps"] = TinyPolicy(seed)(batch["prompt_ids"], batch["completion_ids"]) + offset
    return batch


def shard(batch: dict, rank: int, world: int) -> dict:
    n = batch["completion_mask"].shape[0] // world
    return {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}


class TinyPolicy(torch.nn.Module):
    """log pi(y_t | previous token, position t): an embedding, a tanh, a linear head (float64)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN, generator=g, dtype=torch.float64))
        self.pos = torch.nn.Parameter(0.5 * torch.randn(L_MAX, HIDDEN, generator=g, dtype=torch.float64))
        self.head = torch.nn.Parameter(torch.randn(HIDDEN, VOCAB, generator=g, dtype=torch.float64) / HIDDEN ** 0.5)

    def forward(self, prompt_ids, completion_ids):
        prev = torch.cat([prompt_ids[:, -1:], completion_ids[:, :-1]], dim=1)
        logits = torch.tanh(self.emb[prev] + self.pos[: prev.shape[1]]) @ self.head
        return torch.log_softmax(logits, -1).gather(-1, completion_ids[..., None])[..., 0]


def flat_grad(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


# ----------------------------------------------------------------------------- TRL's loss

def trl_loss(model, rows: dict, loss_type: str, *, num_processes: int,
             num_items_in_batch: torch.Tensor, accumulation_steps: int = 1) -> torch.Tensor:
    """TRL 1.16's ``GRPOTrainer._compute_loss`` (training mode) on ``rows``, the model giving the log-probs.

    ``num_processes`` and ``num_items_in_batch`` are what TRL's accelerator and generation step
    would provide; ``accumulation_steps`` sets both ``gradient_accumulation_steps`` and
    ``steps_per_generation`` (one generation batch split into that many micro-batches).
    """
    from trl.trainer.grpo_trainer import GRPOTrainer

    B, T = rows["completion_mask"].shape

    def logps_from_model(model_, input_ids, attention_mask, logits_to_keep, **kwargs):
        assert logits_to_keep == T
        logp = model_(rows["prompt_ids"], rows["completion_ids"])
        return logp, torch.zeros_like(logp), None

    identity = lambda x, **kw: x  # noqa: E731  metric gathers only; the loss does not use them
    stand_in = SimpleNamespace(
        _get_per_token_logps_and_entropies=logps_from_model, aux_loss_enabled=False, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level="token", beta=0.0, loss_type=loss_type,
        epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=accumulation_steps,
        max_completion_length=L_MAX,
        accelerator=SimpleNamespace(num_processes=num_processes, gather=identity, reduce=identity,
                                    gather_for_metrics=identity),
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=accumulation_steps),
        _entropy_bonus_enabled=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    inputs = {
        "prompt_ids": rows["prompt_ids"], "prompt_mask": torch.ones_like(rows["prompt_ids"]),
        "completion_ids": rows["completion_ids"], "completion_mask": rows["completion_mask"],
        "advantages": rows["advantages"], "old_per_token_logps": rows["old_logps"],
        "num_items_in_batch": num_items_in_batch,
    }
    return GRPOTrainer._compute_loss(stand_in, model, inputs)


def one_process(batch: dict, loss_type: str, seed: int = 0) -> tuple[float, torch.Tensor]:
    """Loss and gradient of the whole batch in one process."""
    model = TinyPolicy(seed)
    n_items = batch["completion_mask"].sum().to(torch.float64)
    loss = trl_loss(model, batch, loss_type, num_processes=1, num_items_in_batch=n_items)
    loss.backward()
    return loss.item(), flat_grad(model)


def accumulated(batch: dict, loss_type: str, world: int = WORLD, seed: int = 0) -> tuple[float, torch.Tensor]:
    """The same halves as ``world`` micro-batches of one optimizer step in one process (gradients summed)."""
    model = TinyPolicy(seed)
    n_items = batch["completion_mask"].sum().to(torch.float64)  # TRL counts the whole generation batch
    total = 0.0
    for r in range(world):
        loss = trl_loss(model, shard(batch, r, world), loss_type, num_processes=1, num_items_in_batch=n_items,
                        accumulation_steps=world)
        loss.backward()
        total += loss.item()
    return total, flat_grad(model)


def _rank(rank: int, world: int, init_file: str, out_file: str, seed: int, even: bool) -> None:
    """One DDP rank: its half of the batch, TRL's loss, backward (DDP averages the gradients over ranks)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from rlcourse.threads import set_cpu_threads

    set_cpu_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batch = synthetic_batch(seed, world=world, even=even)
        rows = shard(batch, rank, world)
        out = {}
        for loss_type in LOSS_TYPES:
            model = DDP(TinyPolicy(seed))
            n_items = rows["completion_mask"].sum().to(torch.float64)
            dist.all_reduce(n_items)  # TRL: accelerator.gather(mask.sum()).sum()
            loss = trl_loss(model, rows, loss_type, num_processes=world, num_items_in_batch=n_items)
            loss.backward()  # DDP: all-reduce of the gradients, divided by world
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            out[loss_type] = ((mean_loss / world).item(), flat_grad(model.module))
        if rank == 0:
            torch.save(out, out_file)
    finally:
        dist.destroy_process_group()


def ddp(seed: int = 0, world: int = WORLD, even: bool = False) -> dict:
    """``{loss_type: (mean loss over ranks, averaged gradient)}`` from ``world`` real gloo processes."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "out.pt")
        mp.spawn(_rank, args=(world, init_file, out_file, seed, even), nprocs=world, join=True)
        return torch.load(out_file)


# ----------------------------------------------------------------------------- the prediction (course math)

def predicted(batch: dict, loss_type: str, world: int = WORLD, seed: int = 0) -> tuple[float, torch.Tensor]:
    """What DDP should produce: the mean over ranks of the course's loss on each half, with the rank's normalisers.

    :func:`rlcourse.losses.grpo_loss` with the aggregation of ``loss_type``
    (``TRL_LOSS_TYPE_TO_AGGREGATION``); a rank knows its own rows and tokens, and — for ``dapo``
    only — the global token count, which TRL divides by the number of processes.
    """
    from rlcourse.losses import TRL_LOSS_TYPE_TO_AGGREGATION, grpo_loss

    model = TinyPolicy(seed)
    n_global = float(batch["completion_mask"].sum())
    total = 0.0
    for r in range(world):
        rows = shard(batch, r, world)
        extra = {"dr_grpo": {"max_completion_length": L_MAX}, "dapo": {"total_tokens": n_global}}
        loss, _ = grpo_loss(model(rows["prompt_ids"], rows["completion_ids"]), rows["old_logps"], rows["advantages"],
                            rows["completion_mask"], eps_low=EPS_LOW, eps_high=EPS_HIGH,
                            aggregation=TRL_LOSS_TYPE_TO_AGGREGATION[loss_type], **extra.get(loss_type, {}))
        if loss_type == "dapo":  # TRL divides by N / W: W times the course's micro-batch token mean S_r / N
            loss = world * loss
        (loss / world).backward()
        total += loss.item() / world
    return total, flat_grad(model)


def course_full_batch(batch: dict, loss_type: str, seed: int = 0) -> tuple[float, torch.Tensor]:
    """The course's loss of the whole batch in one process (what every set-up should equal)."""
    return predicted(batch, loss_type, world=1, seed=seed)


# ----------------------------------------------------------------------------- report

def parity_table(seed: int = 0, even: bool = False) -> list[dict]:
    """One row per loss_type: losses, max |grad difference| measured (DDP, accumulation) and predicted."""
    batch = synthetic_batch(seed, even=even)
    ranks = ddp(seed, even=even)
    tokens = [int(shard(batch, r, WORLD)["completion_mask"].sum()) for r in range(WORLD)]
    rows = []
    for loss_type in LOSS_TYPES:
        loss_1, grad_1 = one_process(batch, loss_type, seed)
        loss_d, grad_d = ranks[loss_type]
        loss_a, grad_a = accumulated(batch, loss_type, seed=seed)
        loss_p, grad_p = predicted(batch, loss_type, seed=seed)
        loss_c, grad_c = course_full_batch(batch, loss_type, seed)
        rows.append({
            "loss_type": loss_type, "tokens_per_rank": tokens,
            "loss_1proc": loss_1, "loss_ddp": loss_d, "loss_accum": loss_a,
            "loss_predicted": loss_p, "loss_course_full": loss_c,
            "grad_norm_1proc": float(grad_1.norm()),
            "max_abs_grad_1proc": float(grad_1.abs().max()),
            "max_abs_dgrad_ddp": float((grad_d - grad_1).abs().max()),
            "max_abs_dgrad_accum": float((grad_a - grad_1).abs().max()),
            "max_abs_dgrad_predicted": float((grad_p - grad_c).abs().max()),
            "max_abs_ddp_minus_prediction": float((grad_d - grad_p).abs().max()),
            "max_abs_trl_minus_course_1proc": float((grad_1 - grad_c).abs().max()),
        })
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--even", action="store_true", help="every completion the same length (the pitfall vanishes)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from rlcourse.threads import set_cpu_threads

    set_cpu_threads(1)
    rows = parity_table(a.seed, a.even)
    if a.json:
        print(json.dumps(rows))
        return 0
    print(f"global batch {synthetic_batch(a.seed)['completion_mask'].shape[0]} rows, tokens per rank "
          f"{rows[0]['tokens_per_rank']}; max |grad - grad(1 process)| (float64)")
    print(f"{'loss_type':9s} {'loss 1 proc':>12s} {'loss DDP':>12s} {'DDP':>9s} {'accum':>9s} "
          f"{'predicted':>9s} {'DDP-pred':>9s}")
    for r in rows:
        print(f"{r['loss_type']:9s} {r['loss_1proc']:12.6f} {r['loss_ddp']:12.6f} {r['max_abs_dgrad_ddp']:9.2e} "
              f"{r['max_abs_dgrad_accum']:9.2e} {r['max_abs_dgrad_predicted']:9.2e} "
              f"{r['max_abs_ddp_minus_prediction']:9.2e}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # rlcourse from the checkout
    sys.exit(main())
