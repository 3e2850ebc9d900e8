"""DPO and IPO on oracle preference pairs, with the reference log-probs computed once.

Direct Preference Optimization (Rafailov et al. 2023) skips the reward model and the RL loop.
The KL-regularised optimum :math:`\\pi^*(y \\mid x) \\propto \\pi_{\\text{ref}}(y \\mid x)\\,e^{r(x, y)/\\beta}`
expresses the reward through the policy, :math:`r = \\beta \\log\\frac{\\pi^*}{\\pi_{\\text{ref}}} + \\beta\\log Z(x)`;
inside the Bradley–Terry likelihood :math:`\\log Z(x)` cancels, and maximising the likelihood of
the preferences over :math:`\\pi_\\theta` gives (seed 004)

.. math::

    L_{\\text{DPO}}(\\theta) = -\\mathbb{E}_{(x, y_w, y_l)}\\Big[\\log\\sigma\\Big(
        \\beta\\log\\frac{\\pi_\\theta(y_w \\mid x)}{\\pi_{\\text{ref}}(y_w \\mid x)}
      - \\beta\\log\\frac{\\pi_\\theta(y_l \\mid x)}{\\pi_{\\text{ref}}(y_l \\mid x)}\\Big)\\Big]

and IPO (Azar et al. 2023) replaces :math:`-\\log\\sigma(\\beta h)` by :math:`(h - \\frac{1}{2\\beta})^2`
(both :func:`rlcourse.preference.dpo_loss`). At the start :math:`\\pi_\\theta = \\pi_{\\text{ref}}`,
:math:`h = 0` and the DPO loss is exactly :math:`\\log 2`.

The data is offline: ``group_size`` completions of each of ``n_prompts`` training problems are
sampled once from the SFT start and labelled by the oracle
(:func:`rlcourse.train.reward_model.oracle_pairs`); the reference (the SFT start itself) scores every
chosen and rejected response once, before training, and those numbers are stored with the
pairs — no reference model is kept in memory during training.

``rounds > 1`` turns on *iterative (online) DPO*: the steps are split into ``rounds`` equal
parts, and before each part after the first, fresh pairs are sampled from the *current*
policy (reference unchanged: the SFT start, whose log-probs of the new pairs are computed
once when they are drawn). The default is the offline algorithm, ``rounds = 1``.

``rpo_alpha > 0`` adds the negative log-likelihood of the chosen responses (RPO, Pang et al.
2024, TRL's ``rpo_alpha``). Plain DPO lowers the log-probability of the chosen responses too
(only the *difference* to the rejected one is pushed up), so part of the probability mass
lands on other, wrong answers; the NLL term holds the chosen ones up.

Metrics (TRL's names without the ``rewards/`` prefix): ``loss`` (``pref_loss`` plus the RPO term),
``pref_loss`` (the DPO / IPO loss alone), ``reward_accuracy`` (share of
pairs whose implicit reward :math:`\\beta\\log\\frac{\\pi_\\theta}{\\pi_{\\text{ref}}}` ranks the chosen
response first), ``margin`` (mean chosen minus rejected implicit reward), ``chosen_reward``,
``rejected_reward``, ``logp_chosen``, ``logp_rejected`` (mean sequence log-probs under the policy),
and ``eval_accuracy`` every ``eval_every`` steps.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass

import torch

from rlcourse import _validate as V
from rlcourse.lm import save_model
from rlcourse.logprobs import masked_sum
from rlcourse.preference import dpo_loss
from rlcourse.train.common import (EVAL_N, RunConfig, RunDir, TrainResult, check_finite, default_max_new_tokens, due,
                                   evaluate_policy, held_out_accuracy, start_policy, step_generator, uses_cpu_threads,
                                   validate_common)
from rlcourse.train.common import progress as progress_bar
from rlcourse.train.grpo import policy_forward
from rlcourse.train.reward_model import encode_pairs, lr_at, oracle_pairs

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class DPOConfig(RunConfig):
    """Configuration of :func:`train_dpo`.

    Attributes:
        loss_type: ``"sigmoid"`` (DPO) or ``"ipo"`` (IPO; log-probs averaged over the tokens, as in TRL).
        beta: > 0, the strength of the implicit KL regularisation. The default 0.5 is larger than
            TRL's 0.1: measured on the course's SFT starts, beta = 0.1 pushes the rejected "answer + 1"
            down so hard that the mass lands on "answer - 1" (held-out accuracy +9 to +17 points),
            while beta = 0.5 stops earlier (+38 to +43 points; IPO with beta = 0.5: +45 to +56).
        label_smoothing: conservative DPO's :math:`\\varepsilon \\in [0, 0.5)` (sigmoid only).
        rpo_alpha: weight of the negative log-likelihood of the chosen responses added to the loss
            (RPO, Pang et al. 2024; TRL's ``rpo_alpha``); 0: plain DPO / IPO.
        preset, seed, steps, lr, batch_size: SFT start, seed of everything, AdamW steps, peak
            learning rate (linear warmup over ``warmup_steps``, cosine decay to ``lr * min_lr_ratio``),
            pairs per step.
        n_prompts, group_size, temperature, max_new_tokens, max_pairs_per_group: the pairs: ``group_size``
            samples of each of ``n_prompts`` distinct training problems, labelled by the oracle.
        rounds: 1 = offline DPO; > 1 = iterative DPO with fresh pairs from the current policy each round.
        eval_n: held-out problems for the before/after evaluation.
        (and the run fields of :class:`~rlcourse.train.common.RunConfig`: ``grad_clip``, ``out``,
        ``device``, ``checkpoint_every``, ``eval_every``, ``threads``)
    """

    loss_type: str = "sigmoid"
    beta: float = 0.5
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0
    preset: str = "tiny"
    seed: int = 0
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 64
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    n_prompts: int = 2000
    group_size: int = 8
    temperature: float = 1.0
    max_new_tokens: int | None = None
    max_pairs_per_group: int | None = None
    rounds: int = 1
    eval_n: int = EVAL_N

    def __post_init__(self):
        validate_common(self)
        V.choice("loss_type", self.loss_type, LOSS_TYPES)
        V.positive("beta", self.beta)
        if not isinstance(self.label_smoothing, (int, float)) or not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must lie in [0, 0.5), got {self.label_smoothing!r}")
        V.positive("rpo_alpha", self.rpo_alpha, allow_zero=True)
        if self.label_smoothing and self.loss_type == "ipo":
            raise ValueError("label_smoothing has no meaning for loss_type='ipo'; set it to 0")
        for name in ("batch_size", "n_prompts", "rounds"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"group_size must be an integer >= 2 (pairs need two samples), got {self.group_size!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        V.in_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        V.positive("temperature", self.temperature)


def pair_logprobs(model, tokenizer, pairs, device, temperature: float = 1.0, *, average: bool = False,
                  return_lengths: bool = False):
    """Sequence log-probs ``(logp_chosen (B,), logp_rejected (B,))`` of the pairs' responses (``<eos>`` included).

    ``average=True`` divides each by its number of tokens (IPO as TRL computes it);
    ``return_lengths=True`` also returns the token counts ``(len_chosen (B,), len_rejected (B,))``.
    Carries the gradient when called with grad enabled.
    """
    b = encode_pairs(tokenizer, pairs, device)
    logp, _ = policy_forward(model, b.input_ids, b.attention_mask, b.response_mask, temperature)
    seq = masked_sum(logp, b.response_mask, dim=-1)
    lengths = b.response_mask.sum(-1)
    if average:
        seq = seq / lengths
    out = (seq[:len(pairs)], seq[len(pairs):])
    return out + ((lengths[:len(pairs)], lengths[len(pairs):]),) if return_lengths else out


@torch.no_grad()
def add_reference_logprobs(ref, tokenizer, pairs, device, *, average: bool = False, batch_size: int = 256) -> list:
    """Copies of ``pairs`` with ``ref_chosen`` / ``ref_rejected``: the reference's sequence log-probs, computed once."""
    was_training = ref.training
    ref.eval()
    out = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        rc, rr = pair_logprobs(ref, tokenizer, chunk, device, average=average)
        out += [dict(p, ref_chosen=float(c), ref_rejected=float(r)) for p, c, r in zip(chunk, rc.tolist(), rr.tolist())]
    ref.train(was_training)
    return out


def sample_pairs(cfg: DPOConfig, model, tokenizer, task, round_: int) -> list:
    """The oracle pairs of round ``round_``: fresh training problems sampled from ``model``, seeded by (seed, round)."""
    max_new = cfg.max_new_tokens or default_max_new_tokens(task)
    seed = cfg.seed * 1_000_003 + 7919 * round_
    problems = task.sample(cfg.n_prompts, "train", seed=seed, unique=True)
    pairs = oracle_pairs(model, tokenizer, problems, group_size=cfg.group_size, temperature=cfg.temperature,
                         max_new_tokens=max_new, seed=seed, max_pairs_per_group=cfg.max_pairs_per_group)
    if not pairs:
        raise ValueError(f"round {round_}: the oracle labelled no pair (every group's samples were identical or "
                         "unfinished); raise temperature or group_size")
    return pairs


@uses_cpu_threads
def train_dpo(cfg: DPOConfig | None = None, model=None, tokenizer=None, *, task=None, pairs: list | None = None,
              progress: bool = True, callback=None) -> TrainResult:
    """Train ``model`` (default: the cached SFT start) with DPO or IPO on oracle pairs; see the module docstring.

    Args:
        cfg: the configuration (default :class:`DPOConfig`).
        model, tokenizer: the policy; its initial state is the reference.
        task: the task (default :func:`rlcourse.train.sft.default_task`).
        pairs: pairs ``{"prompt", "chosen", "rejected", ...}`` to use for the first round instead of sampling.
        progress: show a tqdm bar. callback: called with each history row.

    Returns:
        A :class:`TrainResult` (``before`` / ``after``: :func:`rlcourse.train.common.evaluate_policy`);
        ``extra`` holds ``n_pairs`` (per round) and ``pairs_seconds``. Writes ``config.json``,
        ``pairs.json`` (with the reference log-probs), ``history.jsonl``, ``checkpoint.pt`` and
        ``final/`` to ``cfg.out`` if given, and resumes from its checkpoint.
    """
    cfg = cfg or DPOConfig()
    model, tokenizer, task, device = start_policy(cfg, model, tokenizer, task, progress=progress)
    average = cfg.loss_type == "ipo"
    # The reference is the starting policy. It is only needed to score pairs: once for offline
    # DPO (then dropped), and at each new round for iterative DPO.
    ref = copy.deepcopy(model).eval() if cfg.rounds > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)

    run = RunDir(cfg.out)
    run.write_config(cfg)
    start, history, extra = run.restore({"model": model}, {"opt": opt})
    pairs_path = run.path / "pairs.json" if run.enabled else None
    rounds_data: dict[int, list] = {}
    if pairs_path is not None and pairs_path.exists():
        rounds_data = {int(k): v for k, v in json.loads(pairs_path.read_text()).items()}
    before = extra.get("before") or evaluate_policy(model, tokenizer, task, cfg.eval_n)
    seconds = float(extra.get("seconds", 0.0))
    pairs_seconds = float(extra.get("pairs_seconds", 0.0))
    if start == 0 and 0 not in rounds_data:  # the offline data: scored by the reference = the policy now
        t0 = time.perf_counter()
        raw = pairs if pairs is not None else sample_pairs(cfg, model, tokenizer, task, 0)
        rounds_data[0] = add_reference_logprobs(ref, tokenizer, raw, device, average=average)
        pairs_seconds += time.perf_counter() - t0
        if pairs_path is not None:
            pairs_path.write_text(json.dumps(rounds_data))

    steps_per_round = math.ceil(cfg.steps / cfg.rounds) if cfg.steps else 1
    model.train()
    bar = progress_bar(cfg.steps, f"dpo[{cfg.loss_type}]", progress)
    bar.update(start)
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        round_ = step // steps_per_round
        if round_ not in rounds_data:  # iterative DPO: fresh pairs from the current policy, scored by the reference
            raw = sample_pairs(cfg, model, tokenizer, task, round_)
            rounds_data[round_] = add_reference_logprobs(ref, tokenizer, raw, device, average=average)
            model.train()
            if pairs_path is not None:
                pairs_path.write_text(json.dumps(rounds_data))
        data = rounds_data[round_]
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        g = step_generator(cfg.seed, step)
        idx = torch.randperm(len(data), generator=g)[:cfg.batch_size].tolist()
        batch = [data[i] for i in idx]
        pc, pr, (len_c, _) = pair_logprobs(model, tokenizer, batch, device, average=average, return_lengths=True)
        rc = torch.tensor([p["ref_chosen"] for p in batch], device=device)
        rr = torch.tensor([p["ref_rejected"] for p in batch], device=device)
        loss, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.loss_type,
                                                          cfg.label_smoothing)
        pref_loss = loss
        if cfg.rpo_alpha:  # RPO: plus the NLL of the chosen responses (token mean)
            nll = -(pc * len_c).sum() / len_c.sum() if average else -pc.sum() / len_c.sum()
            loss = loss + cfg.rpo_alpha * nll
        check_finite(loss, name="dpo loss", step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        check_finite(grad_norm, name="gradient norm", step=step)
        opt.step()
        row = {"step": step, "loss": loss.item(), "pref_loss": pref_loss.item(),
               "reward_accuracy": float((chosen_rewards > rejected_rewards).float().mean()),
               "margin": float((chosen_rewards - rejected_rewards).mean()),
               "chosen_reward": float(chosen_rewards.mean()), "rejected_reward": float(rejected_rewards.mean()),
               "logp_chosen": float(pc.detach().mean()), "logp_rejected": float(pr.detach().mean()),
               "round": float(round_), "lr": lr, "grad_norm": grad_norm.item(),
               "step_seconds": time.perf_counter() - t0}
        seconds += row["step_seconds"]
        if due(step, cfg.eval_every):
            row["eval_accuracy"] = held_out_accuracy(model, tokenizer, task, cfg.eval_n)
        run.end_step(step, row, history, cfg, bar=bar, callback=callback, modules={"model": model},
                     optimizers={"opt": opt},
                     extra={"before": before, "seconds": seconds, "pairs_seconds": pairs_seconds},
                     postfix={"loss": f"{row['loss']:.3f}", "acc": f"{row['reward_accuracy']:.2f}"})
    bar.close()

    after = evaluate_policy(model, tokenizer, task, cfg.eval_n)
    if run.enabled:
        run.write_history(history)
        save_model(model, tokenizer, run.path / "final")
    return TrainResult(model, tokenizer, history, before, after, seconds, run.path,
                       {"n_pairs": [len(rounds_data[k]) for k in sorted(rounds_data)], "pairs_seconds": pairs_seconds})


__all__ = ["DPOConfig", "train_dpo", "pair_logprobs", "add_reference_logprobs", "sample_pairs", "LOSS_TYPES"]
