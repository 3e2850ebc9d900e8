"""DPO and IPO on oracle preference pairs, with the reference log-probs computed once.

Direct Preference Optimization (Rafailov et al. 2023) skips the reward model and the RL loop.
The KL-regularised optimum :math:`\\pi^*(y \\mid x) \\propto \\pi_{\\text{ref}}(y \\mid x)\\,e^{r(x, y)/\\beta}`
expresses the reward through the policy, :math:`r = \\beta \\log\\frac{\\pi^*}{\\pi_{\\text{ref}}} + \\beta\\log Z(x)`;
inside the Bradley–Terry likelihood :math:`\\log Z(x)` cancels, and maximising the likelihood of
the preferences over :math:`\\pi_\\theta` gives (Ke Wei's lecture slides)

.. math::

    L_{\\text{DPO}}(\\theta) = -\\mathbb{E}_{(x, y_w, y_l)}\\Big[\\log\\sigma\\Big(
        \\beta\\log\\frac{\\pi_\\theta(y_w \\mid x)}{\\pi_{\\text{ref}}(y_w \\mid x)}
      - \\beta\\log\\frac{\\pi_\\theta(y_l \\mid x)}{\\pi_{\\text{ref}}(y_l \\mid x)}\\Big)\\Big]

and IPO (Azar et al. 2023) replaces :math:`-\\log\\sigma(\\beta h)` by :math:`(h - \\frac{1}{2\\beta})^2`
(both :func:`rlcourse.preference.dpo_loss`). At the start :math:`\\pi_\\theta = \\pi_{\\text{ref}}`,
:math:`h = 0` and the DPO loss is exactly :math:`\\log 2`.

The data is offline: ``group_size`` completions of each of ``n_prompts`` training problems are
sampled once from the SFT start and labelled by the oracle
(:func:`rlcourse.lm.oracle_pairs`); the reference (the SFT start itself) scores every
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
from rlcourse._validate import integer, number
from rlcourse.lm import default_max_new_tokens, evaluate_policy, held_out_accuracy, save_model
from rlcourse.lm.pairs import oracle_pairs, pair_logprobs
from rlcourse.preference import dpo_loss
from rlcourse.train.common import (PairConfig, Run, TrainResult, check_finite, due, lr_at, optimizer_step, set_lr,
                                   start_policy, step_generator)

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class DPOConfig(PairConfig):
    """Configuration of :func:`train_dpo`.

    Attributes:
        loss_type: ``"sigmoid"`` (DPO) or ``"ipo"`` (IPO; log-probs averaged over the tokens, as in TRL).
        beta: > 0, the strength of the implicit KL regularisation. The default 0.5 is larger than
            TRL's 0.1: at beta = 0.1 the rejected "answer + 1" is pushed down so hard that the mass
            lands on "answer - 1". How many points each beta gains depends on the start and the
            budget, so no single figure is quoted here: README's table (beta = 0.5, this config's
            defaults, one start) and notebook 10 (the ``method_comparison`` experiment: beta = 0.5,
            pairs from 1,536 samples, 48 steps, three seeds, with its peak and its end) each say which
            start, data and steps produced their numbers.
        label_smoothing: conservative DPO's :math:`\\varepsilon \\in [0, 0.5)` (sigmoid only).
        rpo_alpha: weight of the negative log-likelihood of the chosen responses added to the loss
            (RPO, Pang et al. 2024; TRL's ``rpo_alpha``); 0: plain DPO / IPO.
        preset, seed, steps, lr, batch_size: SFT start, seed of everything, AdamW steps, peak
            learning rate (linear warmup over ``warmup_steps``, cosine decay to ``lr * min_lr_ratio``),
            pairs per step.
        n_prompts, group_size, temperature, max_new_tokens, max_pairs_per_group: the pairs: ``group_size``
            samples of each of ``n_prompts`` distinct training problems, labelled by the oracle.
        rounds: 1 = offline DPO; > 1 = iterative DPO with fresh pairs from the current policy each round.
        (and the shared fields of :class:`~rlcourse.train.common.PairConfig`)
    """

    loss_type: str = "sigmoid"
    beta: float = 0.5
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 64
    warmup_steps: int = 10
    n_prompts: int = 2000
    rounds: int = 1

    def __post_init__(self):
        super().__post_init__()
        V.choice("loss_type", self.loss_type, LOSS_TYPES)
        number("beta", self.beta)
        if number("label_smoothing", self.label_smoothing, strict=False) >= 0.5:
            raise ValueError(f"label_smoothing must lie in [0, 0.5), got {self.label_smoothing!r}")
        number("rpo_alpha", self.rpo_alpha, strict=False)
        if self.label_smoothing and self.loss_type == "ipo":
            raise ValueError("label_smoothing has no meaning for loss_type='ipo'; set it to 0")
        integer("rounds", self.rounds)


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
                         max_new_tokens=max_new, seed=seed, max_pairs_per_group=cfg.max_pairs_per_group,
                         task=task)
    if not pairs:
        raise ValueError(f"round {round_}: the oracle labelled no pair (every group's samples were identical or "
                         "unfinished); raise temperature or group_size")
    return pairs


def train_dpo(cfg: DPOConfig | None = None, model=None, tokenizer=None, *, task=None, pairs: list | None = None,
              progress: bool = True, callback=None) -> TrainResult:
    """Train ``model`` (the SFT start) with DPO or IPO on oracle pairs; see the module docstring.

    Args:
        cfg: the configuration (default :class:`DPOConfig`).
        model, tokenizer: the policy; its initial state is the reference.
        task: the task (default :func:`rlcourse.lm.default_task`).
        pairs: pairs ``{"prompt", "chosen", "rejected", ...}`` to use for the first round instead of sampling.
        progress: show a tqdm bar. callback: called with each history row.

    Returns:
        A :class:`TrainResult` (``before`` / ``after``: :func:`rlcourse.lm.evaluate_policy`);
        ``extra`` holds ``n_pairs`` (per round) and ``pairs_seconds``. Writes ``config.json``,
        ``pairs.json`` (with the reference log-probs), ``history.jsonl``, ``checkpoint.pt`` and
        ``final/`` to ``cfg.out`` if given, and resumes from its checkpoint.
    """
    cfg = cfg or DPOConfig()
    model, tokenizer, task, device = start_policy(cfg, model, tokenizer, task)
    average = cfg.loss_type == "ipo"
    # The reference is the starting policy. It is only needed to score pairs: once for offline
    # DPO (then dropped), and at each new round for iterative DPO.
    ref = copy.deepcopy(model).eval() if cfg.rounds > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    run = Run("dpo", cfg, {"model": model}, {"opt": opt}, progress=progress, callback=callback,
              desc=f"dpo[{cfg.loss_type}]")
    pairs_path = run.path / "pairs.json" if run.path is not None else None
    rounds_data: dict[int, list] = {}
    if pairs_path is not None and pairs_path.exists():
        rounds_data = {int(k): v for k, v in json.loads(pairs_path.read_text()).items()}

    def scored_pairs(round_: int, raw=None) -> list:
        """The pairs of a round, scored once by the reference (and saved with the run)."""
        if round_ not in rounds_data:
            t0 = time.perf_counter()
            raw = raw if raw is not None else sample_pairs(cfg, model, tokenizer, task, round_)
            rounds_data[round_] = add_reference_logprobs(ref, tokenizer, raw, device, average=average)
            run.state["pairs_seconds"] = run.state.get("pairs_seconds", 0.0) + time.perf_counter() - t0
            if pairs_path is not None:
                pairs_path.write_text(json.dumps(rounds_data))
        return rounds_data[round_]

    with run:
        before = run.remember("before", lambda: evaluate_policy(model, tokenizer, task, cfg.eval_n))
        if run.start == 0:  # the offline data: scored by the reference = the policy now
            scored_pairs(0, pairs)
        steps_per_round = math.ceil(cfg.steps / cfg.rounds) if cfg.steps else 1
        for step in run.steps():
            t0 = time.perf_counter()
            # 1. this round's pairs (iterative DPO: fresh pairs from the current policy), this step's batch
            round_ = step // steps_per_round
            data = scored_pairs(round_)
            model.train()
            lr = set_lr(opt, lr_at(cfg, step))
            idx = torch.randperm(len(data), generator=step_generator(cfg.seed, step))[:cfg.batch_size]
            batch = [data[i] for i in idx.tolist()]
            # 2. the policy's log-probs of chosen and rejected; the reference's were stored with the pairs
            pc, pr, (len_c, _) = pair_logprobs(model, tokenizer, batch, device, average=average, return_lengths=True)
            rc = torch.tensor([p["ref_chosen"] for p in batch], device=device)
            rr = torch.tensor([p["ref_rejected"] for p in batch], device=device)
            # 3. the DPO / IPO loss (+ RPO's NLL of the chosen responses), one AdamW step
            pref_loss, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.loss_type,
                                                                   cfg.label_smoothing)
            loss = pref_loss
            if cfg.rpo_alpha:
                nll = -(pc * len_c).sum() / len_c.sum() if average else -pc.sum() / len_c.sum()
                loss = loss + cfg.rpo_alpha * nll
            check_finite(loss, name="dpo loss", step=step)
            grad_norm = optimizer_step(model, opt, loss, cfg.grad_clip, step=step)
            row = {"step": step, "loss": loss.item(), "pref_loss": pref_loss.item(),
                   "reward_accuracy": float((chosen_rewards > rejected_rewards).float().mean()),
                   "margin": float((chosen_rewards - rejected_rewards).mean()),
                   "chosen_reward": float(chosen_rewards.mean()), "rejected_reward": float(rejected_rewards.mean()),
                   "logp_chosen": float(pc.detach().mean()), "logp_rejected": float(pr.detach().mean()),
                   "round": float(round_), "lr": lr, "grad_norm": grad_norm.item(),
                   "step_seconds": time.perf_counter() - t0}
            if due(step, cfg.eval_every):
                row["eval_accuracy"] = held_out_accuracy(model, tokenizer, task, cfg.eval_n)
            run.log(step, row, {"loss": f"{row['loss']:.3f}", "acc": f"{row['reward_accuracy']:.2f}"})
        after = evaluate_policy(model, tokenizer, task, cfg.eval_n)
    run.finish(lambda path: save_model(model, tokenizer, path))
    return TrainResult(model, tokenizer, run.history, before, after, run.seconds, run.path,
                       {"n_pairs": [len(rounds_data[k]) for k in sorted(rounds_data)],
                        "pairs_seconds": float(run.state.get("pairs_seconds", 0.0))})


__all__ = ["DPOConfig", "train_dpo", "add_reference_logprobs", "sample_pairs", "LOSS_TYPES"]
