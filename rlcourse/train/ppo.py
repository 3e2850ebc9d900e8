"""PPO for language models (RLHF-style): actor, critic, frozen reference, KL-shaped per-token reward, GAE.

One step (Ziegler et al. 2019; Ouyang et al. 2022; the loop of TRL's ``PPOTrainer`` and of
CleanRL's ``ppo.py``)::

    prompts   x_1..x_B (fresh training problems), G completions each   -> rollout, N = B*G rows
    score     s_i = rule reward, or the learned reward model r_phi(x, y)
    no grad   log pi_old, log pi_ref, V_old(s_t) of every response token
    reward    r_t = -beta * (log pi_old - log pi_ref)_t  (+ s_i on the last token)  (Unified Persp.)
    GAE       delta_t = r_t + gamma V(s_{t+1}) - V(s_t),  A_t = delta_t + gamma lam A_{t+1},  R_t = A_t + V(s_t)
    whiten    A <- (A - mean) / std over the batch's tokens
    update    ppo_epochs x minibatches of AdamW steps on
              L = L_clip(actor) + vf_coef * L_V(critic, clipped) - entropy_coef * H
    beta      adaptive KL controller: beta moves toward the target KL (Ziegler et al. 2019)

The per-token reward is the formula of "A Unified Perspective on RL for LLMs": the reward model
speaks once, at the end of the response; every token pays :math:`\\beta \\log\\frac{\\pi_{\\text{old}}}{\\pi_{\\text{ref}}}`
(the k1 estimate of the KL to the reference, sampled from the policy):

.. math::

    r_t = \\begin{cases}
        -\\beta \\log\\frac{\\pi_{\\text{old}}(y_t \\mid s_t)}{\\pi_{\\text{ref}}(y_t \\mid s_t)} & t < T-1 \\\\
        s(x, y) - \\beta \\log\\frac{\\pi_{\\text{old}}(y_t \\mid s_t)}{\\pi_{\\text{ref}}(y_t \\mid s_t)} & t = T-1
    \\end{cases}

so the return from the first token is
:math:`s(x, y) - \\beta \\log\\frac{\\pi(y \\mid x)}{\\pi_{\\text{ref}}(y \\mid x)}`, a one-sample
estimate of the KL-regularised objective of Ke Wei's lecture slides ("Algorithmic and Theoretical Foundations of RL").

**The critic** (``critic="separate"``, the default) is a value model: a copy of the SFT start's
transformer with a scalar head (:class:`rlcourse.lm.RewardModel`, read at every
response position by :meth:`~rlcourse.lm.RewardModel.values`) and its own
optimizer; the policy's update is then exactly the PPO-clip update. ``critic="shared"`` puts the
value head on the policy's own last hidden states instead (one forward pass for both; the value
loss then also moves the policy's backbone, weighted by ``vf_coef``). Measured on the 2-core CPU
(tiny preset, the defaults otherwise), both reach the same held-out accuracy — 93-95% after
40-200 steps from an SFT start at 32% — and the separate critic explains more of the returns'
variance (up to 0.27 against about 0), so it is the default. Its head starts at 0: at the first
step :math:`V = 0` and the advantages are the (whitened) returns.

**Exact ratio 1.** The old log-probs are recomputed by the policy itself, without gradient,
on the very minibatches of the first epoch; so the first minibatch's forward pass reproduces
them bit for bit and the importance ratio is exactly 1 before the first update
(``tests/test_train_ppo.py`` checks it).

Metrics (named like TRL / CleanRL): ``reward_mean`` (the KL-shaped return per sequence,
:math:`s - \\beta\\,\\mathrm{KL}`), ``score_mean`` (the score alone), ``accuracy`` (share of samples
whose rule reward is 1, also when training on a learned reward: the true objective),
``kl`` (mean over sequences of :math:`\\sum_t \\log\\pi_{\\text{old}} - \\log\\pi_{\\text{ref}}`),
``beta`` (used for this step's rewards) and ``next_beta``; averaged over the step's
``ppo_epochs * minibatches`` updates: ``approx_kl`` (k3 of KL(old || new)), ``clipfrac``,
``ratio_mean``, ``pg_loss``, ``value_loss``, ``value_clipfrac``, ``entropy``, ``grad_norm``,
``critic_grad_norm``; and ``values_mean``, ``returns_mean``, ``advantages_mean`` (before
whitening), ``explained_variance`` of the returns by the old values, ``completion_length``,
``step_seconds`` and ``eval_accuracy`` (held-out greedy) every ``eval_every`` steps.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

import torch

from rlcourse import _validate as V
from rlcourse._validate import integer, number
from rlcourse.advantages import gae
from rlcourse.lm import (default_max_new_tokens, default_task, evaluate_policy, generate, held_out_accuracy,
                         save_model, sequence_logprobs)
from rlcourse.lm.reward_model import RewardModel
from rlcourse.lm.rollout import position_ids_from_mask, response_logprobs_from_logits
from rlcourse.logprobs import entropy_from_logits, masked_mean, masked_var, masked_whiten
from rlcourse.losses import AdaptiveKLController, FixedKLController, entropy_bonus, ppo_clip_loss, value_loss
from rlcourse.train import bugs
from rlcourse.train.common import (OnPolicyConfig, Run, TrainResult, check_finite, due, problems_for_step,
                                   start_policy, step_generator)

REWARDS = ("rule", "model")
CRITICS = ("separate", "shared")
#: Defaults of ``critic_lr`` and ``vf_coef`` for each critic: a separate value model learns at its own
#: rate (vf_coef only scales its gradient); a head on the policy's backbone must not pull it too hard.
CRITIC_DEFAULTS = {"separate": {"critic_lr": 3e-4, "vf_coef": 0.5}, "shared": {"critic_lr": 1e-3, "vf_coef": 0.1}}


@dataclass
class PPOConfig(OnPolicyConfig):
    """Configuration of :func:`train_ppo`.

    Attributes:
        reward: ``"rule"`` (the task's verifiable reward) or ``"model"`` (a learned
            :class:`~rlcourse.lm.RewardModel`: pass it to :func:`train_ppo`, or
            give ``reward_model_path``, a directory written by ``RewardModel.save``).
        reward_model_path: see ``reward``.
        missing_eos_penalty: subtracted from the score of a completion that did not stop
            (TRL's option; useful with a learned reward, which never saw truncated text). None: off.
        preset, seed, steps: SFT start preset, seed of everything, PPO iterations (rollouts).
        lr, critic_lr: AdamW learning rates of the actor and the critic (constant; critic_lr None:
            ``CRITIC_DEFAULTS[critic]``).
        critic: ``"separate"`` (a value model: a copy of the start's transformer + a scalar head) or
            ``"shared"`` (a scalar value head on the policy's own last hidden states).
        prompts_per_step, group_size: rows per rollout = prompts_per_step * group_size.
        max_new_tokens, temperature: sampling (None: the task's longest answer + 2).
        init_kl_coef: beta at the start, >= 0 (0: no KL shaping).
        adaptive_kl: adapt beta toward ``kl_target`` with horizon ``kl_horizon`` (Ziegler et al.
            2019); False: beta stays fixed.
        kl_target, kl_horizon: target KL per sequence (nats) and horizon (in samples) of the controller.
        gamma, lam: discount and GAE lambda, in [0, 1].
        eps: clip range of the ratio, in (0, 1).
        value_clip: clip range of the value update around the old values (None: unclipped).
        vf_coef: weight of the critic's loss (None: ``CRITIC_DEFAULTS[critic]``).
        entropy_coef: weight of the entropy bonus, >= 0.
        ppo_epochs, minibatches: passes over each rollout, minibatches per pass.
        whiten_advantages: normalise the advantages over the batch's tokens.
        bug: None, or a silent bug injected for the debugging lab (:mod:`rlcourse.train.bugs`).
        (and the shared fields of :class:`~rlcourse.train.common.OnPolicyConfig`)
    """

    reward: str = "rule"
    reward_model_path: str | None = None
    missing_eos_penalty: float | None = None
    steps: int = 120
    lr: float = 5e-5
    critic_lr: float | None = None
    critic: str = "separate"
    prompts_per_step: int = 64
    group_size: int = 2
    init_kl_coef: float = 0.02
    adaptive_kl: bool = True
    kl_target: float = 0.5
    kl_horizon: float = 10000
    gamma: float = 1.0
    lam: float = 0.95
    eps: float = 0.2
    value_clip: float | None = 0.2
    vf_coef: float | None = None
    entropy_coef: float = 0.0
    ppo_epochs: int = 2
    minibatches: int = 2
    whiten_advantages: bool = True
    bug: str | None = None

    def __post_init__(self):
        super().__post_init__()
        bugs.check(self.bug, "ppo")
        V.choice("reward", self.reward, REWARDS)
        number("missing_eos_penalty", self.missing_eos_penalty, strict=False, none_ok=True)
        V.choice("critic", self.critic, CRITICS)
        if self.critic_lr is None:
            self.critic_lr = CRITIC_DEFAULTS[self.critic]["critic_lr"]
        number("critic_lr", self.critic_lr)
        if self.vf_coef is None:
            self.vf_coef = CRITIC_DEFAULTS[self.critic]["vf_coef"]
        integer("ppo_epochs", self.ppo_epochs)
        integer("minibatches", self.minibatches)
        if self.prompts_per_step * self.group_size < self.minibatches:
            raise ValueError(f"minibatches={self.minibatches} is more than the rows per step "
                             f"(prompts_per_step * group_size = {self.prompts_per_step * self.group_size})")
        number("init_kl_coef", self.init_kl_coef, strict=False)
        if self.adaptive_kl and self.init_kl_coef == 0:
            raise ValueError("init_kl_coef must be > 0 with adaptive_kl=True (a zero beta cannot adapt)")
        number("kl_target", self.kl_target)
        number("kl_horizon", self.kl_horizon)
        number("gamma", self.gamma, 0.0, 1.0, strict=False)
        number("lam", self.lam, 0.0, 1.0, strict=False)
        V.in_range("eps", self.eps, 0.0, 1.0, closed=False)
        number("value_clip", self.value_clip, none_ok=True)
        number("vf_coef", self.vf_coef, strict=False)
        number("entropy_coef", self.entropy_coef, strict=False)


def kl_shaped_rewards(scores: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                      beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ("A Unified Perspective on RL for LLMs"): a KL penalty on every token, the score on the last.

    .. math::

        r_t = -\\beta\\,(\\log\\pi_{\\text{old}} - \\log\\pi_{\\text{ref}})_t + s\\,\\mathbb{1}[t = T-1]


    Args:
        scores: (N,) sequence scores.
        logp_old, logp_ref: (N, T) log-probs of the sampled tokens under the sampling policy and the reference.
        mask: (N, T) 0/1 response mask (right-padded; every row counts at least one token).
        beta: KL coefficient >= 0.

    Returns:
        ``(rewards (N, T), kl (N, T))`` with ``kl`` the per-token
        :math:`\\log\\pi_{\\text{old}} - \\log\\pi_{\\text{ref}}`; both 0 where ``mask`` is 0.
    """
    V.tensor("scores", scores, ndim=1)
    V.tensor("logp_old", logp_old, ndim=2)
    V.tensor("logp_ref", logp_ref, ndim=2)
    V.same_shape(logp_old=logp_old, logp_ref=logp_ref)
    V.mask("mask", mask, like=logp_old, like_name="logp_old")
    beta = V.positive("beta", beta, allow_zero=True)
    lengths = mask.sum(-1).long()
    if scores.shape[0] != mask.shape[0] or bool((lengths == 0).any()):
        raise ValueError(f"scores has shape {tuple(scores.shape)} and mask {tuple(mask.shape)}: need one score "
                         "per row and at least one counted token per row")
    m = mask.to(logp_old.dtype)
    kl = (logp_old - logp_ref) * m
    rewards = -beta * kl
    last = lengths - 1  # responses are right-padded: the last counted token
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards, kl


def actor_critic_forward(model, critic, input_ids, attention_mask, response_mask, temperature: float):
    """``(logp (N, T), logits (N, T, V), values (N, T))`` of the response tokens: the actor and the critic.

    ``critic`` is a :class:`~rlcourse.lm.RewardModel` (a separate value model,
    its own forward pass) or an ``nn.Linear(hidden, 1)`` value head read on the policy's last
    hidden states (one forward pass for both). ``values[:, t]`` is :math:`V(s_t)`, the value of
    the state whose logits give token ``t``; entries off the response mask are 0.
    """
    if isinstance(critic, RewardModel):
        logp, logits = sequence_logprobs(model, input_ids, attention_mask, response_mask, temperature,
                                         return_logits=True)
        return logp, logits, critic.values(input_ids, attention_mask, response_mask)
    T = response_mask.shape[1]
    h = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
    h = h[:, -(T + 1):]
    logits = model.get_output_embeddings()(h)
    logp = response_logprobs_from_logits(logits, input_ids, response_mask, temperature)
    v = critic(h[:, :-1]).squeeze(-1).float()
    return logp, logits[:, :-1], torch.where(response_mask.bool(), v, torch.zeros_like(v))


def load_reward(cfg: PPOConfig, reward_model, device):
    """What scores a rollout for ``cfg.reward``: None (the rule), a frozen :class:`RewardModel`, or a callable.

    ``reward_model`` may be a :class:`~rlcourse.lm.RewardModel` (scored on the
    rollout's token ids directly) or any reward function ``fn(prompts, completions, answers, finished) -> (N,)``
    such as :meth:`RewardModel.as_reward_fn` or :func:`~rlcourse.lm.reward_model.rule_reward`.
    """
    if cfg.reward == "rule":
        if reward_model is not None:
            raise ValueError("a reward_model was given but cfg.reward='rule'; set reward='model' to use it")
        return None
    if reward_model is None:
        if cfg.reward_model_path is None:
            raise ValueError("reward='model' needs a reward model: pass reward_model= or set reward_model_path")
        if not os.path.isdir(cfg.reward_model_path):
            raise ValueError(f"reward_model_path={cfg.reward_model_path!r} is not a directory")
        reward_model = RewardModel.load(cfg.reward_model_path, device)
    if isinstance(reward_model, RewardModel):
        reward_model = reward_model.to(device).eval()
        reward_model.requires_grad_(False)
    elif not callable(reward_model):
        raise ValueError(f"reward_model must be a RewardModel or a reward function, got {type(reward_model).__name__}")
    return reward_model


@torch.no_grad()
def rollout_scores(cfg: PPOConfig, ro, answers, reward_model, task=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, rule_rewards)``: the score PPO maximises, and the rule reward (always computed, for ``accuracy``).

    The rule reward is ``task.batch_rewards`` (default task: :func:`rlcourse.lm.default_task`).
    """
    device = ro.input_ids.device
    task = task or default_task()
    rule = task.batch_rewards(ro.completions, answers, ro.finished).to(device)
    if reward_model is None:
        scores = rule.clone()
    elif isinstance(reward_model, RewardModel):
        scores = reward_model(ro.input_ids, ro.attention_mask).to(device)
    else:
        scores = torch.as_tensor(reward_model(ro.prompts, ro.completions, answers, ro.finished),
                                 dtype=torch.float32).to(device)
        if scores.shape != rule.shape:
            raise ValueError(f"the reward function returned shape {tuple(scores.shape)}, expected {tuple(rule.shape)}")
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~ro.finished).to(scores.dtype)
    return scores, rule


def train_ppo(cfg: PPOConfig | None = None, model=None, tokenizer=None, *, task=None, reward_model=None,
              progress: bool = True, callback=None) -> TrainResult:
    """Train ``model`` (the SFT start) with PPO; see the module docstring.

    Args:
        cfg: the configuration (default :class:`PPOConfig`).
        model, tokenizer: the policy to train (it becomes the actor; a frozen copy is the reference).
        task: the task (default :func:`rlcourse.lm.default_task`).
        reward_model: for ``cfg.reward = "model"``: a :class:`~rlcourse.lm.RewardModel`
            or a reward function ``fn(prompts, completions, answers, finished) -> (N,)`` (see :func:`load_reward`).
        progress: show a tqdm bar. callback: called with each history row.

    Returns:
        A :class:`TrainResult` (``before`` / ``after``: :func:`rlcourse.lm.evaluate_policy`);
        ``extra`` holds the ``critic``, the ``reference`` and the final ``beta``. Writes
        ``config.json``, ``history.jsonl``, ``checkpoint.pt`` and ``final/`` (the policy) to
        ``cfg.out`` if given, and resumes from its checkpoint.
    """
    cfg = cfg or PPOConfig()
    model, tokenizer, task, device = start_policy(cfg, model, tokenizer, task)
    max_new = cfg.max_new_tokens or default_max_new_tokens(task)
    rm = load_reward(cfg, reward_model, device)

    # actor; critic (a copy of the start's transformer + a zero value head, or a zero value head on
    # the actor's own hidden states); frozen reference
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    if cfg.critic == "separate":
        critic = RewardModel.from_causal_lm(model, tokenizer).to(device)
    else:
        critic = torch.nn.Linear(model.config.hidden_size, 1).to(device)
        torch.nn.init.zeros_(critic.weight)
        torch.nn.init.zeros_(critic.bias)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, betas=(0.9, 0.99), weight_decay=0.0)
    kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.init_kl_coef))

    run = Run("ppo", cfg, {"policy": model, "critic": critic}, {"opt": opt, "critic_opt": critic_opt},
              progress=progress, callback=callback, desc=f"ppo[{cfg.reward}]")
    kl_ctl.beta = float(run.state.get("beta", kl_ctl.beta))
    N = cfg.prompts_per_step * cfg.group_size
    hook = bugs.hooks(cfg.bug)  # the identity unless cfg.bug injects a silent bug (the debugging lab)
    with run:
        before = run.remember("before", lambda: evaluate_policy(model, tokenizer, task, cfg.eval_n))
        for step in run.steps():
            t0 = time.perf_counter()
            g = step_generator(cfg.seed, step, device)
            # 1. rollout and score
            problems = problems_for_step(task, cfg.prompts_per_step, cfg.seed, step)
            ro = generate(model, tokenizer, [p.prompt for p in problems], cfg.group_size, max_new, cfg.temperature,
                          generator=g)
            answers = [p.answer for p in problems for _ in range(cfg.group_size)]
            ids, att, mask = ro.input_ids, ro.attention_mask, ro.response_mask
            scores, rule = rollout_scores(cfg, ro, answers, rm, task)
            check_finite(scores.sum(), name="scores (rewards)", step=step)

            # 2. old log-probs, reference log-probs and old values, on the minibatches of the first epoch
            perms = [torch.randperm(N, generator=g, device=device) for _ in range(cfg.ppo_epochs)]
            chunks = [perm.tensor_split(cfg.minibatches) for perm in perms]
            logp_old, logp_ref, values = (torch.zeros_like(mask) for _ in range(3))
            model.eval()
            critic.eval()
            with torch.no_grad():
                for idx in chunks[0]:
                    logp_old[idx], _, values[idx] = actor_critic_forward(model, critic, ids[idx], att[idx], mask[idx],
                                                                          cfg.temperature)
                    logp_ref[idx] = sequence_logprobs(ref, ids[idx], att[idx], mask[idx], cfg.temperature)

            # 3. KL-shaped per-token rewards (Unified Perspective on RL for LLMs), GAE, whitening
            beta = kl_ctl.value
            rewards, kl = kl_shaped_rewards(scores, *hook.kl_arguments(logp_old, logp_ref), mask, beta)
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            adv = masked_whiten(advantages, mask) if cfg.whiten_advantages else advantages
            adv = hook.advantages(adv, mask=mask)
            check_finite(adv.abs().sum(), name="advantages", step=step)

            # 4. ppo_epochs x minibatches of updates of the actor and the critic
            model.train()
            critic.train()
            stats_sum: dict[str, float] = {}
            n_updates = 0
            for epoch_chunks in chunks:
                for idx in epoch_chunks:
                    m = mask[idx]
                    logp, logits, v = actor_critic_forward(model, critic, ids[idx], att[idx], m, cfg.temperature)
                    old = hook.old_logprobs(logp_old[idx], logp=logp, mask=m)  # what the ratio divides by
                    pg_loss, stats = ppo_clip_loss(logp, old, adv[idx], m, eps_low=cfg.eps,
                                                   aggregation="token_mean")
                    entropy = entropy_from_logits(logits, cfg.temperature)
                    vf_loss = value_loss(v, values[idx], returns[idx], m, cfg.value_clip)
                    loss = pg_loss + cfg.vf_coef * vf_loss + entropy_bonus(entropy, m, cfg.entropy_coef)
                    check_finite(loss, name="ppo loss", step=step)
                    opt.zero_grad(set_to_none=True)
                    critic_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
                    critic_grad_norm = torch.nn.utils.clip_grad_norm_(critic.parameters(),
                                                                      cfg.grad_clip or float("inf"))
                    check_finite(grad_norm, name="gradient norm", step=step)
                    check_finite(critic_grad_norm, name="critic gradient norm", step=step)
                    opt.step()
                    critic_opt.step()
                    with torch.no_grad():
                        if cfg.value_clip is not None:
                            vclip = ((v - values[idx]).abs() > cfg.value_clip).float()
                            stats["value_clipfrac"] = float(masked_mean(vclip, m))
                        stats.update(pg_loss=pg_loss.item(), value_loss=vf_loss.item(),
                                     entropy=float(masked_mean(entropy.detach(), m)), grad_norm=grad_norm.item(),
                                     critic_grad_norm=critic_grad_norm.item())
                    for k, val in stats.items():
                        stats_sum[k] = stats_sum.get(k, 0.0) + float(val)
                    n_updates += 1

            # 5. the KL controller sees this batch's KL to the reference
            seq_kl = kl.sum(-1)
            new_beta = kl_ctl.update(float(seq_kl.mean()), N)
            with torch.no_grad():
                var_r = masked_var(returns, mask)
                explained = 1.0 - float(masked_var(returns - values, mask) / var_r) if float(var_r) > 0 else 0.0
            row = {"step": step, "reward_mean": float((scores - beta * seq_kl).mean()),
                   "score_mean": float(scores.mean()),
                   "accuracy": float((rule == 1.0).float().mean()), "rule_reward_mean": float(rule.mean()),
                   "kl": float(seq_kl.mean()), "beta": beta, "next_beta": new_beta,
                   **{k: v / n_updates for k, v in stats_sum.items()},
                   "values_mean": float(masked_mean(values, mask)), "returns_mean": float(masked_mean(returns, mask)),
                   "advantages_mean": float(masked_mean(advantages, mask)), "explained_variance": explained,
                   "completion_length": float(mask.sum(-1).mean()), "step_seconds": time.perf_counter() - t0}
            if due(step, cfg.eval_every):
                row["eval_accuracy"] = held_out_accuracy(model, tokenizer, task, cfg.eval_n)
            run.state["beta"] = kl_ctl.value
            run.log(step, row, {"acc": f"{row['accuracy']:.2f}", "kl": f"{row['kl']:.3f}"})
        after = evaluate_policy(model, tokenizer, task, cfg.eval_n)
    run.finish(lambda path: save_model(model, tokenizer, path))
    return TrainResult(model, tokenizer, run.history, before, after, run.seconds, run.path,
                       {"critic": critic, "reference": ref, "beta": kl_ctl.value})


__all__ = ["PPOConfig", "train_ppo", "kl_shaped_rewards", "rollout_scores", "load_reward", "actor_critic_forward",
           "REWARDS", "CRITICS", "CRITIC_DEFAULTS"]
