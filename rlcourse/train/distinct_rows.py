"""An exact speed-up of GRPO's update (opt-in: ``GRPOConfig(distinct_rows=True)``): compute only the rows that matter.

With beta = 0, a completion with advantage 0 (its group's rewards are all equal) contributes
nothing to the loss, and identical completions of one prompt contribute identical terms. So the
forward/backward can run once per *distinct* completion with A != 0, its advantage multiplied by
its number of copies, the loss keeping the full batch's normalisers. Exact because the clipped
objective is positively homogeneous in A; ``tests/test_train_grpo.py`` checks on a synthetic
batch that the loss and the gradient equal those of the full batch. A peaked policy samples
few distinct answers, so this removes most of the compute (``benchmarks/grpo_vs_trl.py``).
"""

from __future__ import annotations

import torch


def rows_that_matter(input_ids, response_mask, advantages, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The rows whose loss must be computed, and how many sampled rows each stands for (beta = 0 only).

    Two exact savings, both because the clipped objective is positively homogeneous in the
    advantage, :math:`\min(w\,cA, \mathrm{clip}(w)\,cA) = c\,\min(w A, \mathrm{clip}(w) A)` for c > 0:

    * a row with :math:`A = 0` (a group of equal rewards) contributes nothing: it is dropped;
    * identical completions of the same prompt have identical log-probs, rewards and
      advantages: one copy is kept and its advantage multiplied by the number of copies.

    With the full batch's normalisers passed to the loss (``total_sequences``, ``total_tokens``),
    the loss and its gradient equal those of the full batch (up to float summation order); a
    peaked policy samples few distinct answers, so this removes most of the forward/backward.

    Returns:
        ``(index, count)``: long tensors of the kept rows (first copy of each) and their multiplicity.
    """
    N, T = response_mask.shape
    resp = torch.where(response_mask.bool(), input_ids[:, -T:], torch.full_like(input_ids[:, -T:], -1))
    first: dict[tuple, int] = {}
    count: dict[int, int] = {}
    for i, (a, toks) in enumerate(zip(advantages.tolist(), resp.tolist())):
        if a == 0:
            continue
        j = first.setdefault((i // group_size, tuple(toks)), i)
        count[j] = count.get(j, 0) + 1
    index = torch.tensor(sorted(count), dtype=torch.long, device=input_ids.device)
    return index, torch.tensor([count[j] for j in sorted(count)], dtype=torch.long, device=input_ids.device)


def select_rows(input_ids, attention_mask, response_mask, index: torch.Tensor | None = None):
    """The rows ``index`` (None: all) of a batch, with all-padding columns trimmed at both ends.

    Positions come from the attention mask, so trimming leading padding changes no log-prob.
    Returns ``(input_ids, attention_mask, response_mask)``.
    """
    if index is not None:
        input_ids, attention_mask, response_mask = input_ids[index], attention_mask[index], response_mask[index]
    P = input_ids.shape[1] - response_mask.shape[1]
    first = int((attention_mask[:, :P].sum(0) > 0).nonzero()[0])  # first prompt column that is not all padding
    T = int(response_mask.sum(-1).max())  # last response column that counts
    return input_ids[:, first:P + T], attention_mask[:, first:P + T], response_mask[:, :T]


def distinct_rows(input_ids, attention_mask, response_mask, advantages, group_size: int):
    """The batch to compute instead of the full one: ``(input_ids, attention_mask, response_mask, advantages, norms)``.

    ``norms`` are the full batch's normalisers (``total_sequences``, ``total_tokens``) to pass to
    :func:`rlcourse.losses.grpo_loss`. When every advantage is 0 the full batch is returned (its
    loss and gradient are 0 anyway).
    """
    norms = {"total_sequences": response_mask.shape[0], "total_tokens": float(response_mask.sum())}
    index, count = rows_that_matter(input_ids, response_mask, advantages, group_size)
    if index.numel() == 0:
        return input_ids, attention_mask, response_mask, advantages, norms
    ids, att, mask = select_rows(input_ids, attention_mask, response_mask, index)
    return ids, att, mask, advantages[index] * count, norms


__all__ = ["rows_that_matter", "select_rows", "distinct_rows"]
