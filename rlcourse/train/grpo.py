"""GRPO and its variants (Dr. GRPO, DAPO, GSPO) on the course's small LM.

One step (``num_iterations = 1``, the default)::

    prompts  x_1..x_B  (B = prompts_per_step, fresh training problems)
    sample   G completions of each at temperature tau           -> rollout (one generation)
    reward   r_i = rule-based reward of completion i            -> (B*G,)
    advantage  A_i = (r_i - mean_g r) / (std_g r + eps)           grpo, dapo, gspo
               A_i =  r_i - mean_g r                              dr_grpo (no std division)
    forward  log pi_theta(y_t | ...) of the sampled tokens       (one forward pass, with gradient)
    loss     L = agg_{i,t} [ -min(w A, clip(w, 1-eps_low, 1+eps_high) A) + beta * k(ref) ]
    update   one AdamW step

with :math:`w_{i,t} = \\pi_\\theta(y_{i,t}) / \\pi_{\\text{old}}(y_{i,t})` per token (GRPO, Dr. GRPO,
DAPO) or the GSPO sequence ratio :math:`s_i = \\exp(\\frac{1}{|y_i|}\\sum_t \\log w_{i,t})`.
The loss is :func:`rlcourse.losses.grpo_loss` (equal to TRL's ``GRPOTrainer`` loss,
``tests/test_trl_grpo_parity.py``); the advantages are
:func:`rlcourse.advantages.grpo_advantages` / :func:`~rlcourse.advantages.dr_grpo_advantages`.

The old policy is the policy that sampled. With one optimizer step per generation batch it
*is* the current policy, so its log-probs are the current ones detached — taken from the
same forward pass, as TRL does — and the ratio is exactly 1 (the gradient of the clipped
objective is then the plain policy gradient). With ``num_iterations = mu > 1`` the same
batch is reused for mu steps; the old log-probs are those of the first pass.

An exact speed-up is opt-in (``distinct_rows=True``, beta = 0): the forward/backward then runs
once per *distinct* completion with A != 0 (:mod:`rlcourse.train.distinct_rows`); the loss and
its gradient are those of the full batch.

========  ===================  =====================  =========================================
variant   advantage            aggregation            other
========  ===================  =====================  =========================================
grpo      z-score in group     seq_mean_token_mean    (Shao et al. 2024)
dr_grpo   centred only         constant (B * L_max)   (Liu et al. 2025)
dapo      z-score in group     token_mean             eps_high > eps_low (clip-higher), dynamic
                                                      sampling, overlong shaping (Yu et al. 2025)
gspo      z-score in group     seq_mean_token_mean    sequence-level ratio, small eps (Zheng et al. 2025)
========  ===================  =====================  =========================================

DAPO's dynamic sampling drops groups whose G rewards are all equal (their advantages are 0
and they only dilute the batch) and samples more prompts, up to ``max_sampling_rounds``
rounds, to fill the batch. Its overlong shaping (:func:`overlong_penalty`) adds a soft
length penalty to the reward of completions that approach the length limit.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from rlcourse import _validate as V
from rlcourse._validate import integer, number
from rlcourse.advantages import dr_grpo_advantages, grpo_advantages
from rlcourse.kl import KL_ESTIMATORS, kl_estimate
from rlcourse.lm import default_max_new_tokens, evaluate_policy, held_out_accuracy, save_model, sequence_logprobs
from rlcourse.logprobs import agg_loss
from rlcourse.lm.rollout import encode_completions
from rlcourse.losses import grpo_loss
from rlcourse.train import bugs
from rlcourse.train.common import (OnPolicyConfig, Run, TrainResult, check_finite, due, optimizer_step, sample_groups,
                                   start_policy)
from rlcourse.train.distinct_rows import distinct_rows

VARIANTS = ("grpo", "dr_grpo", "dapo", "gspo")
#: Where the KL-to-reference term goes (``GRPOConfig.kl_placement``): see :func:`kl_penalised_rewards` and
#: :func:`sequence_kl_per_token`.
KL_PLACEMENTS = ("loss", "reward", "sequence_loss")

#: Aggregation of the per-token losses for each variant (see rlcourse.logprobs.aggregate).
AGGREGATION = {"grpo": "seq_mean_token_mean", "dr_grpo": "constant", "dapo": "token_mean",
               "gspo": "seq_mean_token_mean"}
#: Default (eps_low, eps_high) for each variant: DAPO's clip-higher, GSPO's sequence-level range.
EPS = {"grpo": (0.2, 0.2), "dr_grpo": (0.2, 0.2), "dapo": (0.2, 0.28), "gspo": (3e-4, 4e-4)}


@dataclass
class GRPOConfig(OnPolicyConfig):
    """Configuration of :func:`train_grpo`.

    Attributes:
        variant: ``"grpo"``, ``"dr_grpo"``, ``"dapo"`` or ``"gspo"`` (see the module table).
        preset, seed: model preset of the SFT start, and the seed of everything.
        steps: generation batches (= optimizer steps when ``num_iterations = 1``).
        lr: AdamW learning rate (constant).
        group_size: G >= 2 completions per prompt.
        prompts_per_step: prompts per generation batch (rows = prompts_per_step * G).
        max_new_tokens: completion length limit (None: the task's longest answer + 2).
        temperature: sampling temperature tau (log-probs are those of logits / tau).
        eps_low, eps_high: clip range; both None -> the variant's (``EPS``); eps_low alone -> symmetric.
        beta: KL-to-reference coefficient (0 = no reference model, as in DAPO and Dr. GRPO).
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (GRPO's choice).
        kl_placement: where the beta-weighted KL term goes (beta > 0): ``"loss"`` (default, GRPO's: the
            per-token estimate added to the per-token loss), ``"reward"`` (the per-token estimates summed
            along the response and subtracted from the reward before the group advantage, as PPO-RLHF's
            shaped reward summed, or verl's ``use_kl_in_reward``; :func:`kl_penalised_rewards`) or
            ``"sequence_loss"`` (the estimator applied once to the *sequence* log-ratio
            :math:`\\sum_t \\log\\pi/\\pi_{\\text{ref}}`, in the loss; :func:`sequence_kl_per_token`).
        num_iterations: optimizer steps per generation batch (mu in the GRPO paper).
        scale_advantages: divide by the group std; None -> the variant's choice (not dr_grpo).
        dynamic_sampling: drop zero-variance groups and resample; None -> ``variant == "dapo"``.
        max_sampling_rounds: generation rounds per step for dynamic sampling.
        overlong_buffer: DAPO's L_cache (tokens); None -> 1 for dapo, 0 (off) otherwise.
        distinct_rows: compute only the distinct completions with A != 0 (exact; beta = 0 only;
            :mod:`rlcourse.train.distinct_rows`).
        bug: None, or a silent bug injected for the debugging lab (:mod:`rlcourse.train.bugs`).
        (and the shared fields of :class:`~rlcourse.train.common.OnPolicyConfig`)
    """

    variant: str = "grpo"
    steps: int = 300
    lr: float = 1e-4
    eps_low: float | None = None
    eps_high: float | None = None
    beta: float = 0.0
    kl_estimator: str = "k3"
    kl_placement: str = "loss"
    num_iterations: int = 1
    scale_advantages: bool | None = None
    dynamic_sampling: bool | None = None
    max_sampling_rounds: int = 3
    overlong_buffer: int | None = None
    distinct_rows: bool = False
    bug: str | None = None

    def __post_init__(self):
        super().__post_init__()
        V.choice("variant", self.variant, VARIANTS)
        bugs.check(self.bug, "grpo")
        integer("group_size", self.group_size, 2)  # G completions per prompt
        if self.eps_low is None:  # the variant's range (eps_high too, if not given)
            self.eps_low = EPS[self.variant][0]
            self.eps_high = EPS[self.variant][1] if self.eps_high is None else self.eps_high
        elif self.eps_high is None:  # eps_low given alone: a symmetric range
            self.eps_high = self.eps_low
        V.in_range("eps_low", self.eps_low, 0.0, 1.0, closed=False)
        V.in_range("eps_high", self.eps_high, 0.0, 1.0, closed=False)
        number("beta", self.beta, strict=False)
        V.choice("kl_estimator", self.kl_estimator, list(KL_ESTIMATORS))
        V.choice("kl_placement", self.kl_placement, KL_PLACEMENTS)
        if self.kl_placement != "loss" and self.beta == 0:
            raise ValueError(f"kl_placement={self.kl_placement!r} needs beta > 0 (with beta = 0 there is no KL term)")
        integer("num_iterations", self.num_iterations)
        if self.scale_advantages is None:
            self.scale_advantages = self.variant != "dr_grpo"
        if self.dynamic_sampling is None:
            self.dynamic_sampling = self.variant == "dapo"
        integer("max_sampling_rounds", self.max_sampling_rounds)
        if self.overlong_buffer is None:
            self.overlong_buffer = 1 if self.variant == "dapo" else 0
        integer("overlong_buffer", self.overlong_buffer, 0)
        if self.distinct_rows and self.beta > 0:
            raise ValueError("distinct_rows=True needs beta=0 (every row carries a KL term otherwise)")

    @property
    def aggregation(self) -> str:
        return AGGREGATION[self.variant]

    @property
    def importance_level(self) -> str:
        return "sequence" if self.variant == "gspo" else "token"


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int) -> torch.Tensor:
    r"""DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward.

    .. math::

        R_{\text{length}}(y) = \begin{cases}
            0 & |y| \le L_{\max} - L_{\text{cache}} \\
            \frac{(L_{\max} - L_{\text{cache}}) - |y|}{L_{\text{cache}}}
                & L_{\max} - L_{\text{cache}} < |y| \le L_{\max} \\
            -1 & |y| > L_{\max}
        \end{cases}

    Args:
        lengths: (N,) completion lengths in tokens (``<eos>`` included).
        max_length: :math:`L_{\max}`.
        buffer: :math:`L_{\text{cache}} \ge 0`; 0 turns the shaping off (all zeros).
    """
    integer("max_length", max_length)
    if not isinstance(buffer, int) or not 0 <= buffer <= max_length:
        raise ValueError(f"buffer must be an integer in [0, max_length={max_length}], got {buffer!r}")
    lengths = lengths.float()
    if buffer == 0:
        return torch.zeros_like(lengths)
    soft = ((max_length - buffer) - lengths) / buffer
    return torch.where(lengths > max_length, torch.full_like(lengths, -1.0), soft.clamp(max=0.0))


def kl_penalised_rewards(rewards: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                         beta: float, estimator: str = "k1") -> torch.Tensor:
    r"""The KL as a reward penalty (``kl_placement="reward"``): each sequence's reward minus beta times its per-token
    KL estimates summed along the response,

    .. math::

        \tilde r_i = r_i - \beta \sum_t m_{i,t}\, \hat k_{i,t}, \qquad
        \hat k_{i,t} = k_{\text{estimator}}\big(\log\pi_{\text{ref}}(y_{i,t}) - \log\pi(y_{i,t})\big)

    (:func:`rlcourse.kl.kl_estimate`). With k1 this is the return from the first token of PPO-RLHF's shaped
    per-token reward ("A Unified Perspective on RL for LLMs"), the one-sample estimate of the KL-regularised
    objective; its policy gradient is that of the objective (the RLHF-gradient derivation).

    Args:
        rewards: (N,) sequence rewards. logp, logp_ref: (N, T) log-probs of the sampled tokens under the sampling
        policy and the reference (no gradient is taken). mask: (N, T) 0/1 response mask. beta: >= 0.
    """
    V.tensor("rewards", rewards, ndim=1)
    V.mask("mask", mask, like=logp, like_name="logp")
    beta = V.positive("beta", beta, allow_zero=True, allow_inf=False)
    if rewards.shape[0] != mask.shape[0]:
        raise ValueError(f"rewards has shape {tuple(rewards.shape)} and mask {tuple(mask.shape)}: need one reward "
                         "per row")
    k = kl_estimate(logp.detach(), logp_ref.detach(), estimator)
    return rewards - beta * (k * mask.to(k.dtype)).sum(-1).to(rewards.dtype)


def sequence_kl_per_token(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                          estimator: str = "k2") -> torch.Tensor:
    r"""A sequence-level KL estimate as a (N, T) per-token loss (``kl_placement="sequence_loss"``): the estimator
    applied to the sequence log-ratio, spread evenly over the response's tokens,

    .. math::

        \ell_{i,t} = \frac{m_{i,t}}{|y_i|}\, k_{\text{estimator}}\Big(\sum_s m_{i,s}
            (\log\pi_{\text{ref}}(y_{i,s}) - \log\pi_\theta(y_{i,s}))\Big),

    so that each row sums to the sequence estimate (with k2: :math:`\tfrac12(\sum_t \log\pi_\theta /
    \pi_{\text{ref}})^2`, whose expected gradient under :math:`\mathrm{sg}[P_\theta]` is
    :math:`\nabla\mathrm{KL}(P_\theta \| P_{\text{ref}})` of the whole sequence: the derivation
    ``kl_estimators``). The gradient flows through ``logp``.
    """
    V.mask("mask", mask, like=logp, like_name="logp")
    m = mask.to(logp.dtype)
    lengths = m.sum(-1, keepdim=True)
    if bool((lengths == 0).any()):
        raise ValueError(f"mask (shape {tuple(mask.shape)}) has a row with no response token")
    k = kl_estimate((logp * m).sum(-1, keepdim=True), (logp_ref * m).sum(-1, keepdim=True), estimator)
    return k * m / lengths


def _advantages(rewards: torch.Tensor, cfg: GRPOConfig) -> torch.Tensor:
    if cfg.scale_advantages:
        return grpo_advantages(rewards, cfg.group_size)
    return dr_grpo_advantages(rewards, cfg.group_size)


def collect_batch(model, tokenizer, task, cfg: GRPOConfig, step: int, max_new_tokens: int) -> dict:
    r"""Sample the step's groups and score them; with dynamic sampling keep only groups with varied rewards.

    Without dynamic sampling this is one generation of ``prompts_per_step * G`` rows. With it,
    groups whose G (shaped) rewards are all equal are dropped and further rounds of fresh
    prompts are sampled, up to ``max_sampling_rounds``, until ``prompts_per_step`` groups are kept
    (DAPO, Yu et al. 2025); the kept rows are re-encoded into one batch.

    Returns a dict with the batch (``input_ids``, ``attention_mask``, ``response_mask``, or None
    if no group was kept), ``rewards`` (task reward + overlong shaping, kept rows),
    ``sampled_rewards`` (task rewards of every sampled row), ``rounds``, ``groups`` (kept),
    ``frac_zero_std`` (share of sampled groups whose rewards were all equal) and ``entropy``: the
    per-token entropy of the sampling policy estimated by the mean of :math:`-\log\pi(y_t)`
    over every sampled token (unbiased, and free: the rollout kept the log-probs).
    """
    G, B = cfg.group_size, cfg.prompts_per_step
    kept_rows, sampled, n_groups, n_const, rollouts, neg_logp, n_tokens = [], [], 0, 0, [], 0.0, 0.0
    rounds = cfg.max_sampling_rounds if cfg.dynamic_sampling else 1
    for round_ in range(rounds):
        _, ro, r = sample_groups(model, tokenizer, task, n_prompts=B, group_size=G, max_new_tokens=max_new_tokens,
                                 temperature=cfg.temperature, seed=cfg.seed, step=step, round_=round_)
        shaped = r + overlong_penalty(ro.response_mask.sum(-1), max_new_tokens, cfg.overlong_buffer).to(r.device)
        constant = (shaped.view(B, G) == shaped.view(B, G)[:, :1]).all(-1)
        n_groups, n_const = n_groups + B, n_const + int(constant.sum())
        keep = [g for g in range(B) if not (cfg.dynamic_sampling and bool(constant[g]))][:B - len(kept_rows)]
        kept_rows += [(len(rollouts), g) for g in keep]
        rollouts.append((ro, shaped))
        sampled.append(r)
        neg_logp += float(-(ro.logprobs * ro.response_mask).sum())
        n_tokens += float(ro.response_mask.sum())
        if len(kept_rows) >= B:
            break
    out = {"sampled_rewards": torch.cat(sampled), "rounds": len(rollouts), "groups": len(kept_rows),
           "entropy": neg_logp / n_tokens,
           "frac_zero_std": n_const / n_groups, "input_ids": None, "attention_mask": None, "response_mask": None}
    if not kept_rows:
        return out
    if len(rollouts) == 1 and len(kept_rows) == B:  # the common case: the rollout is the batch
        ro, shaped = rollouts[0]
        out.update(input_ids=ro.input_ids, attention_mask=ro.attention_mask, response_mask=ro.response_mask,
                   rewards=shaped)
        return out
    rows = [(rollouts[k][0], rollouts[k][1], i) for k, g in kept_rows for i in range(g * G, (g + 1) * G)]
    enc = encode_completions(tokenizer, [ro.prompts[i] for ro, _, i in rows], [ro.completions[i] for ro, _, i in rows],
                             [bool(ro.finished[i]) for ro, _, i in rows], device=rollouts[0][1].device)
    out.update(input_ids=enc.input_ids, attention_mask=enc.attention_mask, response_mask=enc.response_mask,
               rewards=torch.stack([shaped[i] for _, shaped, i in rows]))
    return out


def grpo_update(model, opt, batch: dict, cfg: GRPOConfig, ref, max_new_tokens: int, step: int) -> dict:
    """The learning half of a step: advantages, then ``num_iterations`` optimizer steps on the batch.

    Returns the metrics of the first iteration (loss, clip statistics, gradient norm, ...), where
    the ratio is exactly 1 and nothing is clipped; with ``num_iterations > 1`` also the clip
    statistics of the last iteration, where the ratio has moved (``clipfrac_last``,
    ``approx_kl_last``, ``ratio_mean_last``, ...).
    """
    hook = bugs.hooks(cfg.bug)  # the identity unless cfg.bug injects a silent bug (the debugging lab)
    rewards = batch["rewards"]
    kl_in_loss = ref is not None and cfg.kl_placement == "loss"
    if ref is not None and cfg.kl_placement == "reward":  # 0. the KL as a reward penalty, before the advantage
        with torch.no_grad():
            b_ids, b_att, b_mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
            rewards = kl_penalised_rewards(
                rewards, sequence_logprobs(model, b_ids, b_att, b_mask, cfg.temperature),
                sequence_logprobs(ref, b_ids, b_att, b_mask, cfg.temperature), b_mask, cfg.beta, cfg.kl_estimator)
    # 1. group advantages (z-score, or centred only for Dr. GRPO)
    adv_all = hook.advantages(_advantages(rewards, cfg), rewards=rewards, group_size=cfg.group_size,
                              mask=batch["response_mask"])
    ids, att, adv = batch["input_ids"], batch["attention_mask"], adv_all
    mask = hook.loss_mask(batch["response_mask"], attention_mask=att)  # the tokens the loss counts
    logprobs = hook.logprobs(sequence_logprobs)  # the model's logits -> log-probs of the response tokens
    norms = {}
    if cfg.distinct_rows:  # opt-in, exact: only the distinct completions with A != 0
        ids, att, mask, adv, norms = distinct_rows(ids, att, mask, adv_all, cfg.group_size)
    # 2. the reference's log-probs (beta > 0)
    logp_ref = None
    if ref is not None:
        with torch.no_grad():
            logp_ref = logprobs(ref, ids, att, mask, cfg.temperature)
    model.train()
    logp_old, first = None, {}
    for it in range(cfg.num_iterations):
        # 3. log-probs with gradient; the old ones are those of the first pass (ratio 1 there)
        logp = logprobs(model, ids, att, mask, cfg.temperature)
        if logp_old is None:
            logp_old = logp.detach()
        logp_old = hook.old_logprobs(logp_old, logp=logp, mask=mask)
        # 4. the clipped loss of the variant, one AdamW step
        max_len = max_new_tokens if cfg.aggregation == "constant" else None
        loss, stats = grpo_loss(logp, logp_old, adv, mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                                importance_level=cfg.importance_level, aggregation=cfg.aggregation,
                                beta=cfg.beta if kl_in_loss else 0.0, logp_ref=logp_ref if kl_in_loss else None,
                                kl_estimator=cfg.kl_estimator, max_completion_length=max_len, **norms)
        if ref is not None and cfg.kl_placement == "sequence_loss":  # the same aggregation as the loss above
            seq_kl = sequence_kl_per_token(logp, logp_ref, mask, cfg.kl_estimator)
            loss = loss + cfg.beta * agg_loss(seq_kl, mask, cfg.aggregation, constant=max_len)
            stats["kl"] = float((seq_kl.detach() * mask).sum(-1).mean())
        check_finite(loss, name=f"{cfg.variant} loss", step=step)
        grad_norm = optimizer_step(model, opt, loss, cfg.grad_clip, step=step)
        if it == 0:
            first = {"loss": loss.item(), **stats, "grad_norm": grad_norm.item(),
                     "completion_length": float(batch["response_mask"].sum(-1).mean()),
                     "advantage_abs_mean": float(adv_all.abs().mean()), "rows_trained": float(ids.shape[0])}
    if cfg.num_iterations > 1:
        first |= {f"{k}_last": v for k, v in stats.items() if k.startswith(("clipfrac", "approx_kl", "ratio_"))}
    return first


def train_grpo(cfg: GRPOConfig | None = None, model=None, tokenizer=None, *, task=None, progress: bool = True,
               callback=None) -> TrainResult:
    """Train ``model`` (the SFT start) with GRPO or one of its variants.

    Evaluates before and after on the held-out split (:func:`rlcourse.lm.evaluate_policy`),
    writes ``config.json``, ``history.jsonl``, ``checkpoint.pt`` and ``final/`` to ``cfg.out`` if
    given, and resumes from its checkpoint. History rows: ``step``, ``reward_mean``,
    ``reward_std``, ``accuracy`` (share of samples with reward 1), ``loss``, ``clipfrac``,
    ``clipfrac_low``, ``clipfrac_high``, ``approx_kl``, ``ratio_mean`` (first iteration; with
    ``num_iterations > 1`` also the same with ``_last``: the last iteration), ``kl`` (beta > 0),
    ``entropy`` (see :func:`collect_batch`), ``completion_length``, ``frac_zero_std``,
    ``rows_trained`` (rows that went through the forward pass), ``grad_norm``, ``step_seconds``,
    and ``eval_accuracy`` every ``eval_every`` steps.
    """
    cfg = cfg or GRPOConfig()
    model, tokenizer, task, device = start_policy(cfg, model, tokenizer, task)
    max_new = cfg.max_new_tokens or default_max_new_tokens(task)
    ref = None
    if cfg.beta > 0:
        ref = copy.deepcopy(model).eval()
        ref.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    modules = {"model": model} | ({"ref": ref} if ref is not None else {})
    run = Run("grpo", cfg, modules, {"opt": opt}, progress=progress, callback=callback, desc=f"grpo[{cfg.variant}]")

    with run:
        before = run.remember("before", lambda: evaluate_policy(model, tokenizer, task, cfg.eval_n))
        for step in run.steps():
            t0 = time.perf_counter()
            # 1. sample G completions of each prompt, score them (DAPO: keep groups with varied rewards)
            batch = collect_batch(model, tokenizer, task, cfg, step, max_new)
            row = {"step": step, "reward_mean": float(batch["sampled_rewards"].mean()),
                   "reward_std": float(batch["sampled_rewards"].std()),
                   "accuracy": float((batch["sampled_rewards"] == 1.0).float().mean()),
                   "frac_zero_std": batch["frac_zero_std"], "sampling_rounds": float(batch["rounds"]),
                   "entropy": batch["entropy"]}
            # 2. advantages and the update (nothing to learn when no group had varied rewards)
            if batch["groups"] == 0:
                row["skipped"] = 1.0
            else:
                row.update(grpo_update(model, opt, batch, cfg, ref, max_new, step))
            row["step_seconds"] = time.perf_counter() - t0
            if due(step, cfg.eval_every):
                row["eval_accuracy"] = held_out_accuracy(model, tokenizer, task, cfg.eval_n)
            run.log(step, row, {"reward": f"{row['reward_mean']:.2f}"})
        after = evaluate_policy(model, tokenizer, task, cfg.eval_n)
    run.finish(lambda path: save_model(model, tokenizer, path))
    return TrainResult(model, tokenizer, run.history, before, after, run.seconds, run.path, {"reference": ref})


__all__ = ["GRPOConfig", "train_grpo", "grpo_update", "overlong_penalty", "collect_batch", "kl_penalised_rewards",
           "sequence_kl_per_token", "VARIANTS", "KL_PLACEMENTS", "AGGREGATION", "EPS"]
