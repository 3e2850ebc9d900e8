"""A Bradley–Terry reward model: the LM backbone plus a scalar head, trained on oracle preference pairs.

The reward model reads a whole sequence ``prompt + completion + <eos>`` with the transformer of a
causal LM (its ``LlamaModel``, without the LM head) and maps the hidden state of the *last
non-pad token* — the end of the response — to one number :math:`r_\\phi(x, y)` with a linear
head. It is trained on pairs (chosen :math:`y_w`, rejected :math:`y_l`) by maximum likelihood
under the Bradley–Terry model (Ke Wei's lecture slides; InstructGPT, Ouyang et al. 2022):

.. math::

    P(y_w \\succ y_l \\mid x) = \\sigma\\big(r_\\phi(x, y_w) - r_\\phi(x, y_l)\\big), \\qquad
    L(\\phi) = -\\frac1B \\sum_i \\log\\sigma\\big(r_\\phi(x_i, y_{w,i}) - r_\\phi(x_i, y_{l,i})\\big)

(:func:`rlcourse.preference.bradley_terry_loss`). The pairs come from the course's oracle: ``G``
completions per prompt are sampled from the SFT policy and every distinct pair is labelled by
:func:`rlcourse.lm.make_preference_pairs` (higher rule reward wins; on a tie, the integer
closer to the answer). Held-out pairs come from held-out prompts only; the figure that
matters is the **held-out pairwise accuracy**, the share of held-out pairs the model orders
like the oracle.

**Why the course's recipe adds two layers and a language-modelling term.** To tell ``138`` from
``139`` after ``55+83=``, the reward model has to *compute* the sum. The SFT start can (it
samples the right answer often), but its features point at its own favourite answer, which
by construction is the wrong one (answer + 1), and a linear probe on its hidden states cannot
tell right from wrong (68% = the base rate). Measured on the 2-core CPU with the course's SFT
start, the held-out pair accuracy after 300-800 steps was:

==========================================================  ==============
reward model                                                held-out pairs
==========================================================  ==============
backbone + head (the textbook recipe)                       58-61%
+ 2 extra layers                                            54% (500 steps)
+ 2 extra layers + LM loss on the chosen responses          90-93%
==========================================================  ==============

The two remedies, both in the literature: ``sft_coef`` adds the negative log-likelihood of the
*chosen* responses (mostly right answers) under the backbone's own LM head — the "generalizable
reward model" regulariser of Yang et al. 2024 — which keeps the backbone computing answers
instead of forgetting how; ``extra_layers`` stacks identity-initialised copies of the last
layer on top (block expansion, Wu et al. 2024), giving the model depth *after* the position
where its prediction of a digit is formed, to compare that prediction with the digit written.
Set ``extra_layers=0, sft_coef=0`` for the textbook reward model.

Two more details worth knowing:

* the head starts at zero, so every score is 0 at the start and the loss is exactly
  :math:`\\log 2` (the BT model is maximally unsure);
* a BT reward is defined up to a constant (only differences enter the likelihood). After
  training, the head's bias is shifted so that the mean score of the training responses is 0
  (reward normalisation, as in Ziegler et al. 2019); PPO then sees rewards centred on 0.

The model, :class:`rlcourse.lm.RewardModel`, lives in :mod:`rlcourse.lm.reward_model` (PPO uses the
same class as its critic); the pairs and their accuracy in :mod:`rlcourse.lm.pairs`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from rlcourse._validate import integer, number
from rlcourse.lm import default_max_new_tokens
from rlcourse.lm.pairs import encode_pairs, oracle_pairs, pair_accuracy
from rlcourse.lm.reward_model import RewardModel, chosen_nll
from rlcourse.preference import bradley_terry_loss
from rlcourse.train.common import (PairConfig, Run, TrainResult, check_finite, due, lr_at, optimizer_step, set_lr,
                                   start_policy, step_generator)


@dataclass
class RewardModelConfig(PairConfig):
    """Configuration of :func:`train_reward_model`.

    Attributes:
        preset, seed: the SFT start to sample from and to initialise the backbone with; seed of everything.
        steps, lr, batch_size: AdamW steps, peak learning rate (linear warmup over ``warmup_steps``,
            cosine decay to ``lr * min_lr_ratio``), pairs per step.
        n_prompts, group_size, temperature, max_new_tokens, max_pairs_per_group: the training pairs:
            ``group_size`` samples of each of ``n_prompts`` training problems, labelled by the oracle.
        eval_prompts: held-out problems whose sampled pairs measure the held-out pairwise accuracy.
        margin: Bradley–Terry margin (0: the plain BT loss).
        normalize: shift the head's bias so that the training responses score 0 on average.
        weight_decay: AdamW's.
        eval_every (of :class:`~rlcourse.train.common.RunConfig`): here, held-out *pair* accuracy.
        (and the shared fields of :class:`~rlcourse.train.common.PairConfig`)
    """

    steps: int = 800
    lr: float = 1e-3
    batch_size: int = 128
    warmup_steps: int = 20
    n_prompts: int = 6000
    eval_prompts: int = 300
    extra_layers: int = 2
    sft_coef: float = 1.0
    margin: float = 0.0
    normalize: bool = True
    weight_decay: float = 0.0
    checkpoint_every: int = 100

    def __post_init__(self):
        super().__post_init__()
        integer("eval_prompts", self.eval_prompts)
        integer("extra_layers", self.extra_layers, 0)
        number("sft_coef", self.sft_coef, strict=False)
        number("margin", self.margin, None)
        number("weight_decay", self.weight_decay, strict=False)


def make_pair_data(cfg: RewardModelConfig, model, tokenizer, task, run=None) -> dict:
    """Training and held-out pairs for ``cfg`` (read from ``run``'s ``pairs.json`` when resuming, else sampled).

    Training pairs come from ``cfg.n_prompts`` distinct training problems, held-out pairs from
    ``cfg.eval_prompts`` distinct held-out problems; both sampled from ``model`` at ``cfg.temperature``.
    """
    path = run.path / "pairs.json" if run is not None and run.path is not None else None
    if path is not None and path.exists():
        return json.loads(path.read_text())
    max_new = cfg.max_new_tokens or default_max_new_tokens(task)
    kw = dict(group_size=cfg.group_size, temperature=cfg.temperature, max_new_tokens=max_new,
              max_pairs_per_group=cfg.max_pairs_per_group, task=task)
    train = oracle_pairs(model, tokenizer, task.sample(cfg.n_prompts, "train", seed=cfg.seed, unique=True),
                         seed=cfg.seed, **kw)
    held = oracle_pairs(model, tokenizer, task.held_out(cfg.eval_prompts, seed=cfg.seed), seed=cfg.seed + 1, **kw)
    if not train or not held:
        raise ValueError(f"the oracle labelled {len(train)} training and {len(held)} held-out pairs: the policy's "
                         "samples are all identical or unfinished; raise temperature or group_size")
    data = {"train": train, "held_out": held}
    if path is not None:
        path.write_text(json.dumps(data))
    return data


def train_reward_model(cfg: RewardModelConfig | None = None, model=None, tokenizer=None, *, task=None,
                       pairs: dict | None = None, progress: bool = True, callback=None) -> TrainResult:
    """Train a Bradley–Terry reward model on oracle pairs sampled from ``model`` (the SFT start).

    Args:
        cfg: the configuration (default :class:`RewardModelConfig`).
        model, tokenizer: the policy whose samples are labelled, and whose backbone initialises
            the reward model (not modified); :func:`rlcourse.experiments.sft_start` gives the course's.
        task: the task (default :func:`rlcourse.lm.default_task`).
        pairs: ``{"train": [...], "held_out": [...]}`` to use instead of sampling (see :func:`make_pair_data`).
        progress: show a tqdm bar. callback: called with each history row.

    Returns:
        A :class:`TrainResult` whose ``model`` is the :class:`RewardModel`; ``before`` / ``after``
        hold the held-out ``pair_accuracy`` (and per kind, and the train pairs' accuracy);
        ``extra`` holds ``n_train_pairs``, ``n_held_out_pairs``, ``score_mean`` / ``score_std``
        of the training responses, and ``pairs_seconds`` (sampling and labelling time).
        History rows: ``step``, ``loss``, ``accuracy`` (the batch's pairs), ``margin``, ``lr``,
        ``grad_norm`` and ``held_out_pair_accuracy`` every ``eval_every`` steps.
        Writes ``config.json``, ``pairs.json``, ``history.jsonl``, ``checkpoint.pt``, ``result.json``
        and ``final/`` (:meth:`RewardModel.save`) to ``cfg.out`` if given, and resumes from its checkpoint.
    """
    cfg = cfg or RewardModelConfig()
    model, tokenizer, task, device = start_policy(cfg, model, tokenizer, task)
    rm = RewardModel.from_causal_lm(model, tokenizer, cfg.extra_layers).to(device)
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    run = Run("rm", cfg, {"reward_model": rm}, {"opt": opt}, progress=progress, callback=callback,
              desc="reward model")

    with run:
        # 1. the pairs: sampled from the policy and labelled by the oracle (saved with the run)
        t_pairs = time.perf_counter()
        data = pairs if pairs is not None else make_pair_data(cfg, model, tokenizer, task, run)
        pairs_seconds = time.perf_counter() - t_pairs
        train_pairs, held_pairs = data["train"], data["held_out"]
        if not train_pairs or not held_pairs:
            raise ValueError("pairs must hold non-empty 'train' and 'held_out' lists")
        before = run.remember("before", lambda: pair_accuracy(rm, tokenizer, held_pairs, task=task))
        rm.train()
        for step in run.steps():
            t0 = time.perf_counter()
            # 2. this step's learning rate and batch of pairs
            lr = set_lr(opt, lr_at(cfg, step))
            idx = torch.randperm(len(train_pairs), generator=step_generator(cfg.seed, step))[:cfg.batch_size]
            batch = [train_pairs[i] for i in idx.tolist()]
            b = encode_pairs(tokenizer, batch, device)
            # 3. Bradley-Terry loss on the scores (+ the NLL of the chosen responses: GRM), one AdamW step
            r, h = rm(b.input_ids, b.attention_mask, return_hidden=True)
            r_chosen, r_rejected = r[:len(batch)], r[len(batch):]
            bt_loss = bradley_terry_loss(r_chosen, r_rejected, cfg.margin)
            loss = bt_loss
            if cfg.sft_coef > 0:
                nll = chosen_nll(rm, h[:len(batch)], b.input_ids[:len(batch)], b.response_mask[:len(batch)])
                loss = loss + cfg.sft_coef * nll
            check_finite(loss, name="reward model loss", step=step)
            grad_norm = optimizer_step(rm, opt, loss, cfg.grad_clip, step=step)
            d = (r_chosen - r_rejected).detach()
            row = {"step": step, "loss": loss.item(), "bt_loss": bt_loss.item(),
                   "accuracy": float(((d > 0).float() + 0.5 * (d == 0).float()).mean()),
                   "margin": float(d.mean()), "lr": lr, "grad_norm": grad_norm.item(),
                   "step_seconds": time.perf_counter() - t0}
            if cfg.sft_coef > 0:
                row["sft_loss"] = nll.item()
            if due(step, cfg.eval_every):
                row["held_out_pair_accuracy"] = pair_accuracy(rm, tokenizer, held_pairs, task=task)["pair_accuracy"]
            run.log(step, row, {"loss": f"{row['loss']:.3f}", "acc": f"{row['accuracy']:.2f}"})
        # 4. centre the scores, and measure
        score_mean, score_std = normalize_scores(rm, tokenizer, train_pairs, shift=cfg.normalize)
        after = pair_accuracy(rm, tokenizer, held_pairs, task=task)
        after["train_pair_accuracy"] = pair_accuracy(rm, tokenizer, train_pairs, task=task)["pair_accuracy"]
    extra = {"n_train_pairs": len(train_pairs), "n_held_out_pairs": len(held_pairs), "score_mean": score_mean,
             "score_std": score_std, "pairs_seconds": pairs_seconds}
    run.finish(rm.save, {"before": before, "after": after, "seconds": run.seconds, **extra})
    return TrainResult(rm, tokenizer, run.history, before, after, run.seconds, run.path, extra)


@torch.no_grad()
def normalize_scores(rm: RewardModel, tokenizer, pairs: Sequence[dict], shift: bool = True) -> tuple[float, float]:
    """Mean and std of the scores of the distinct responses in ``pairs``; ``shift`` subtracts the mean from the bias.

    Differences of scores (all the BT likelihood sees) are unchanged.
    """
    if rm.tokenizer is None:
        rm.tokenizer = tokenizer
    seen = sorted({(p["prompt"], c) for p in pairs for c in (p["chosen"], p["rejected"])})
    s = rm.score([x for x, _ in seen], [y for _, y in seen])
    mean, std = float(s.mean()), float(s.std()) if s.numel() > 1 else 0.0
    if shift:
        rm.head.bias -= mean
    return mean, std


__all__ = ["RewardModelConfig", "train_reward_model", "make_pair_data", "normalize_scores"]
