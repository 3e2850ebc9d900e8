"""A Bradley–Terry reward model: the LM backbone plus a scalar head, trained on oracle preference pairs.

The reward model reads a whole sequence ``prompt + completion + <eos>`` with the transformer of a
causal LM (its ``LlamaModel``, without the LM head) and maps the hidden state of the *last
non-pad token* — the end of the response — to one number :math:`r_\\phi(x, y)` with a linear
head. It is trained on pairs (chosen :math:`y_w`, rejected :math:`y_l`) by maximum likelihood
under the Bradley–Terry model (seed 004; InstructGPT, Ouyang et al. 2022):

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

The same class serves PPO as its critic: :meth:`RewardModel.values` applies the head at
every response position (the value :math:`V(s_t)` of the state before token ``t``) instead
of only at the end.

Saved as a Hugging Face directory: the backbone with ``save_pretrained`` (``config.json`` +
``model.safetensors``), the head in ``head.safetensors``, and the tokenizer; loaded with
:meth:`RewardModel.load` (local files only, safetensors only, no remote code).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from rlcourse import _validate as V
from rlcourse.lm import encode_completions, generate, make_preference_pairs, pick_device
from rlcourse.lm.rollout import position_ids_from_mask
from rlcourse.preference import bradley_terry_loss
from rlcourse.train.common import (RunConfig, RunDir, TrainResult, check_finite, default_max_new_tokens, due,
                                   start_policy, step_generator, uses_cpu_threads, validate_common)
from rlcourse.train.common import progress as progress_bar

HEAD_FILE = "head.safetensors"
META_FILE = "reward_model.json"


# -- the model ---------------------------------------------------------------------------------

class RewardModel(nn.Module):
    """A transformer backbone and a linear head ``hidden -> 1``; the score is read at the last non-pad token.

    Args:
        backbone: a Hugging Face base model (e.g. ``LlamaModel``) whose output has ``last_hidden_state``.
        tokenizer: the tokenizer of the backbone (used by :meth:`score`).
    """

    def __init__(self, backbone: nn.Module, tokenizer=None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)  # every score starts at 0: BT loss = log 2 exactly
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_causal_lm(cls, lm: nn.Module, tokenizer=None, extra_layers: int = 0) -> "RewardModel":
        """A reward model whose backbone is a *copy* of the transformer of causal LM ``lm`` (its LM head dropped).

        ``extra_layers > 0`` appends that many decoder layers on top, each a copy of the last one
        with its output projections (attention ``o_proj``, MLP ``down_proj``) set to zero, so that
        at the start every new layer is the identity and the backbone computes exactly what
        ``lm``'s does (block expansion, Wu et al. 2024, "LLaMA Pro"). See :class:`RewardModelConfig`
        for why the course's reward model uses them.
        """
        base = getattr(lm, "base_model", None)
        if base is None or base is lm:
            raise ValueError(f"lm must be a Hugging Face causal LM with a base model, got {type(lm).__name__}")
        if not isinstance(extra_layers, int) or extra_layers < 0:
            raise ValueError(f"extra_layers must be a non-negative integer, got {extra_layers!r}")
        backbone = copy.deepcopy(base)
        if extra_layers:
            expand_layers(backbone, extra_layers)
        rm = cls(backbone, tokenizer)
        return rm.to(next(lm.parameters()).device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``(N, L, H)``; positions from the attention mask (left padding does not shift them)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids_from_mask(attention_mask), use_cache=False)
        return out.last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, return_hidden: bool = False):
        """Scores ``(N,)``: :math:`r_\\phi(x, y) = w^\\top h_{\\text{last}} + b` at each row's last non-pad token.

        ``return_hidden=True`` returns ``(scores, hidden states (N, L, H))``.
        """
        V.tensor("input_ids", input_ids, ndim=2)
        V.mask("attention_mask", attention_mask, like=input_ids, like_name="input_ids")
        if bool((attention_mask.sum(-1) == 0).any()):
            raise ValueError("attention_mask has a row with no token to score")
        L = attention_mask.shape[1]
        last = L - 1 - attention_mask.long().flip(-1).argmax(-1)  # index of the last 1 of each row
        h = self.hidden_states(input_ids, attention_mask)
        h_last = h[torch.arange(h.shape[0], device=h.device), last]
        scores = self.head(h_last).squeeze(-1).float()
        return (scores, h) if return_hidden else scores

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from hidden states, through the (tied) input embeddings of the backbone.

        Only for the auxiliary language-modelling loss of :func:`train_reward_model`
        (``sft_coef``); needs a backbone whose LM head was tied to its embeddings.
        """
        if not getattr(self.backbone.config, "tie_word_embeddings", False):
            raise ValueError("lm_logits needs a backbone with tied input/output embeddings (tie_word_embeddings)")
        return nn.functional.linear(hidden, self.backbone.get_input_embeddings().weight)

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               response_mask: torch.Tensor) -> torch.Tensor:
        """Per-token values ``(N, T)`` of the response: :math:`V(s_t)`, read where the policy reads its logits.

        The state before response token ``t`` is the prefix ending at position ``P + t - 1``, the
        position whose logits predict token ``t``; entries where ``response_mask`` is 0 are 0.
        """
        V.mask("response_mask", response_mask)
        T = response_mask.shape[1]
        if response_mask.dim() != 2 or response_mask.shape[0] != input_ids.shape[0] or T >= input_ids.shape[1]:
            raise ValueError(f"response_mask has shape {tuple(response_mask.shape)}; expected (N, T) with "
                             f"T < sequence length for input_ids of shape {tuple(input_ids.shape)}")
        h = self.hidden_states(input_ids, attention_mask)[:, -(T + 1):-1]
        v = self.head(h).squeeze(-1).float()
        return torch.where(response_mask.bool(), v, torch.zeros_like(v))

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str] | None = None,
              finished: Sequence[bool] | torch.Tensor | None = None, *, batch_size: int = 512) -> torch.Tensor:
        """Scores ``(N,)`` of ``prompt + completion (+ <eos> where finished)`` texts, on the CPU, without gradient.

        ``prompts`` may also be a batch with ``input_ids`` / ``attention_mask`` (a rollout or a
        :class:`~rlcourse.lm.SequenceBatch`): it is then scored as it is.
        """
        was_training = self.training
        self.eval()
        try:
            if hasattr(prompts, "input_ids") and hasattr(prompts, "attention_mask"):
                return self(prompts.input_ids.to(self.device), prompts.attention_mask.to(self.device)).cpu()
            if self.tokenizer is None:
                raise ValueError("this RewardModel has no tokenizer: score token ids, or pass tokenizer= when "
                                 "building it")
            prompts = list(prompts)
            completions = list(completions) if completions is not None else None
            if completions is None or len(completions) != len(prompts):
                raise ValueError(f"completions must be a list with one entry per prompt ({len(prompts)}), "
                                 f"got {None if completions is None else len(completions)}")
            if finished is None:
                finished = [True] * len(prompts)
            elif isinstance(finished, torch.Tensor):
                finished = finished.tolist()
            out = []
            for s in range(0, len(prompts), batch_size):
                b = encode_completions(self.tokenizer, prompts[s:s + batch_size], completions[s:s + batch_size],
                                       finished[s:s + batch_size], device=self.device)
                out.append(self(b.input_ids, b.attention_mask).cpu())
            return torch.cat(out)
        finally:
            self.train(was_training)

    def as_reward_fn(self):
        """The model as a drop-in reward function ``fn(prompts, completions, answers=None, finished=None) -> (N,)``.

        The signature is that of :func:`rule_reward` (``answers`` is ignored: the learned model
        never sees the true answer), so PPO and GRPO can use either.
        """
        def reward_fn(prompts, completions, answers=None, finished=None) -> torch.Tensor:
            return self.score(prompts, completions, finished)

        reward_fn.reward_model = self
        return reward_fn

    # -- save / load --------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (backbone), ``head.safetensors`` and the tokenizer."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(directory / HEAD_FILE))
        (directory / META_FILE).write_text(json.dumps({"kind": "bradley_terry_reward_model",
                                                       "hidden_size": self.head.in_features}, indent=2))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, device=None) -> "RewardModel":
        """Load a reward model written by :meth:`save` (local files, safetensors only, no remote code)."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        from rlcourse.lm import load_tokenizer

        directory = Path(directory)
        if not (directory / HEAD_FILE).exists():
            raise ValueError(f"directory {str(directory)!r} holds no {HEAD_FILE}: not a saved RewardModel")
        backbone = AutoModel.from_pretrained(str(directory), local_files_only=True, use_safetensors=True,
                                             trust_remote_code=False)
        tok = load_tokenizer(directory) if (directory / "tokenizer.json").exists() else None
        rm = cls(backbone, tok)
        rm.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
        return rm.to(pick_device(device))


def expand_layers(backbone: nn.Module, n: int) -> nn.Module:
    """Append ``n`` identity-initialised decoder layers to a Llama-style backbone, in place (see ``from_causal_lm``)."""
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(f"backbone {type(backbone).__name__} has no .layers to expand")
    for _ in range(n):
        layer = copy.deepcopy(layers[-1])
        try:
            nn.init.zeros_(layer.self_attn.o_proj.weight)
            nn.init.zeros_(layer.mlp.down_proj.weight)
        except AttributeError as e:
            raise ValueError(f"cannot expand {type(layer).__name__}: expected self_attn.o_proj and "
                             "mlp.down_proj") from e
        if hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = len(layers)
        layers.append(layer)
    backbone.config.num_hidden_layers = len(layers)
    if getattr(backbone.config, "layer_types", None) is not None:
        backbone.config.layer_types = list(backbone.config.layer_types) + [backbone.config.layer_types[-1]] * n
    return backbone


def chosen_nll(rm: RewardModel, hidden: torch.Tensor, input_ids: torch.Tensor,
               response_mask: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood of the response tokens (``<eos>`` included) under the backbone's LM head.

    The auxiliary loss of a generalizable reward model (GRM, Yang et al. 2024): applied to the
    chosen responses, it keeps the backbone a language model of preferred text.
    """
    from rlcourse.lm.rollout import response_logprobs_from_logits
    from rlcourse.logprobs import masked_mean

    T = response_mask.shape[1]
    logits = rm.lm_logits(hidden[:, -(T + 1):])
    logp = response_logprobs_from_logits(logits, input_ids, response_mask)
    return -masked_mean(logp, response_mask)


def rule_reward(prompts, completions, answers, finished=None) -> torch.Tensor:
    """The task's rule-based reward with the signature of :meth:`RewardModel.as_reward_fn` (prompts unused)."""
    from rlcourse.lm import batch_rewards

    return batch_rewards(completions, answers, finished)


# -- oracle pairs ------------------------------------------------------------------------------

def oracle_pairs(model, tokenizer, problems, *, group_size: int = 8, temperature: float = 1.0,
                 max_new_tokens: int = 5, seed: int = 0, batch_size: int = 512,
                 max_pairs_per_group: int | None = None) -> list[dict]:
    """Preference pairs from ``model``'s own samples: ``group_size`` completions per problem, labelled by the oracle.

    Sampling is reproducible from ``seed``; unfinished completions and ties are left out
    (:func:`rlcourse.lm.make_preference_pairs`). Returns ``{"prompt", "chosen", "rejected", "answer"}`` dicts.
    """
    problems = list(problems)
    if not problems:
        raise ValueError("problems is empty")
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(int(seed))
    per_chunk = max(1, batch_size // group_size)
    pairs = []
    for s in range(0, len(problems), per_chunk):
        chunk = problems[s:s + per_chunk]
        ro = generate(model, tokenizer, [p.prompt for p in chunk], group_size, max_new_tokens, temperature,
                      generator=gen)
        pairs += make_preference_pairs(ro.prompts, ro.completions, [p.answer for p in chunk for _ in range(group_size)],
                                       group_size=group_size, finished=ro.finished,
                                       max_pairs_per_group=max_pairs_per_group, seed=int(seed) + s)
    return pairs


def pair_kind(pair: dict) -> str:
    """``"correct_vs_wrong"`` if the chosen answer is right, else ``"closer_vs_farther"`` (both wrong or malformed)."""
    from rlcourse.lm import reward

    return "correct_vs_wrong" if reward(pair["chosen"], pair["answer"]) == 1.0 else "closer_vs_farther"


def encode_pairs(tokenizer, pairs: Sequence[dict], device=None):
    """One batch of ``2B`` rows: the B chosen sequences, then the B rejected ones (completions end with ``<eos>``)."""
    prompts = [p["prompt"] for p in pairs]
    completions = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    return encode_completions(tokenizer, prompts + prompts, completions, device=device)


@torch.no_grad()
def pair_accuracy(rm: RewardModel, tokenizer, pairs: Sequence[dict], batch_size: int = 512) -> dict:
    """Share of ``pairs`` the reward model orders like the oracle (a tie counts 1/2), overall and per :func:`pair_kind`.

    Returns ``{"pair_accuracy", "pair_accuracy/<kind>", "margin"}`` (margin: mean of
    :math:`r(y_w) - r(y_l)`).
    """
    if not pairs:
        raise ValueError("pairs is empty")
    was_training = rm.training
    rm.eval()
    diffs = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        b = encode_pairs(tokenizer, chunk, rm.device)
        r = rm(b.input_ids, b.attention_mask)
        diffs.append((r[:len(chunk)] - r[len(chunk):]).cpu())
    rm.train(was_training)
    d = torch.cat(diffs)
    hit = (d > 0).float() + 0.5 * (d == 0).float()
    out = {"pair_accuracy": float(hit.mean()), "margin": float(d.mean())}
    kinds = [pair_kind(p) for p in pairs]
    for k in sorted(set(kinds)):
        idx = torch.tensor([i for i, kk in enumerate(kinds) if kk == k])
        out[f"pair_accuracy/{k}"] = float(hit[idx].mean())
    return out


# -- training ----------------------------------------------------------------------------------

@dataclass
class RewardModelConfig(RunConfig):
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
        (and the run fields of :class:`~rlcourse.train.common.RunConfig`: ``grad_clip``, ``out``,
        ``device``, ``checkpoint_every``, ``eval_every``, ``threads``)
    """

    preset: str = "tiny"
    seed: int = 0
    steps: int = 800
    lr: float = 1e-3
    batch_size: int = 128
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    n_prompts: int = 6000
    group_size: int = 8
    temperature: float = 1.0
    max_new_tokens: int | None = None
    max_pairs_per_group: int | None = None
    eval_prompts: int = 300
    extra_layers: int = 2
    sft_coef: float = 1.0
    margin: float = 0.0
    normalize: bool = True
    weight_decay: float = 0.0
    checkpoint_every: int = 100

    def __post_init__(self):
        validate_common(self)
        for name in ("batch_size", "n_prompts", "eval_prompts"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.extra_layers, int) or isinstance(self.extra_layers, bool) or self.extra_layers < 0:
            raise ValueError(f"extra_layers must be a non-negative integer, got {self.extra_layers!r}")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"group_size must be an integer >= 2 (pairs need two samples), got {self.group_size!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        V.in_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        V.positive("temperature", self.temperature)
        V.positive("sft_coef", self.sft_coef, allow_zero=True)
        if not isinstance(self.margin, (int, float)) or not math.isfinite(self.margin):
            raise ValueError(f"margin must be a finite number, got {self.margin!r}")
        V.positive("weight_decay", self.weight_decay, allow_zero=True)


def lr_at(cfg, step: int) -> float:
    """Linear warmup to ``cfg.lr`` over ``cfg.warmup_steps``, then cosine decay to ``cfg.lr * cfg.min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def make_pair_data(cfg: RewardModelConfig, model, tokenizer, task, run: RunDir | None = None) -> dict:
    """Training and held-out pairs for ``cfg`` (read from ``run``'s ``pairs.json`` when resuming, else sampled).

    Training pairs come from ``cfg.n_prompts`` distinct training problems, held-out pairs from
    ``cfg.eval_prompts`` distinct held-out problems; both sampled from ``model`` at ``cfg.temperature``.
    """
    path = run.path / "pairs.json" if run is not None and run.enabled else None
    if path is not None and path.exists():
        return json.loads(path.read_text())
    max_new = cfg.max_new_tokens or default_max_new_tokens(task)
    kw = dict(group_size=cfg.group_size, temperature=cfg.temperature, max_new_tokens=max_new,
              max_pairs_per_group=cfg.max_pairs_per_group)
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


@uses_cpu_threads
def train_reward_model(cfg: RewardModelConfig | None = None, model=None, tokenizer=None, *, task=None,
                       pairs: dict | None = None, progress: bool = True, callback=None) -> TrainResult:
    """Train a Bradley–Terry reward model on oracle pairs sampled from ``model`` (default: the SFT start).

    Args:
        cfg: the configuration (default :class:`RewardModelConfig`).
        model, tokenizer: the policy whose samples are labelled, and whose backbone initialises
            the reward model (not modified). Default: :func:`rlcourse.train.sft.sft_start`.
        task: the task (default :func:`rlcourse.train.sft.default_task`).
        pairs: ``{"train": [...], "held_out": [...]}`` to use instead of sampling (see :func:`make_pair_data`).
        progress: show a tqdm bar. callback: called with each history row.

    Returns:
        A :class:`TrainResult` whose ``model`` is the :class:`RewardModel`; ``before`` / ``after``
        hold the held-out ``pair_accuracy`` (and per kind, and the train pairs' accuracy);
        ``extra`` holds ``n_train_pairs``, ``n_held_out_pairs``, ``score_mean`` / ``score_std``
        of the training responses, and ``pairs_seconds`` (sampling and labelling time).
        History rows: ``step``, ``loss``, ``accuracy`` (the batch's pairs), ``margin``, ``lr``,
        ``grad_norm`` and ``held_out_pair_accuracy`` every ``eval_every`` steps.
        Writes ``config.json``, ``pairs.json``, ``history.jsonl``, ``checkpoint.pt`` and ``final/``
        (:meth:`RewardModel.save`) to ``cfg.out`` if given, and resumes from its checkpoint.
    """
    cfg = cfg or RewardModelConfig()
    model, tokenizer, task, device = start_policy(cfg, model, tokenizer, task, progress=progress)
    run = RunDir(cfg.out)
    run.write_config(cfg)

    t_pairs = time.perf_counter()
    data = pairs if pairs is not None else make_pair_data(cfg, model, tokenizer, task, run)
    pairs_seconds = time.perf_counter() - t_pairs
    train_pairs, held_pairs = data["train"], data["held_out"]
    if not train_pairs or not held_pairs:
        raise ValueError("pairs must hold non-empty 'train' and 'held_out' lists")

    rm = RewardModel.from_causal_lm(model, tokenizer, cfg.extra_layers).to(device)
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    start, history, extra = run.restore({"reward_model": rm}, {"opt": opt})
    before = extra.get("before") or pair_accuracy(rm, tokenizer, held_pairs)
    seconds = float(extra.get("seconds", 0.0))

    rm.train()
    bar = progress_bar(cfg.steps, "reward model", progress)
    bar.update(start)
    n = len(train_pairs)
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        g = step_generator(cfg.seed, step)
        idx = torch.randperm(n, generator=g)[:cfg.batch_size].tolist()
        batch = [train_pairs[i] for i in idx]
        b = encode_pairs(tokenizer, batch, device)
        r, h = rm(b.input_ids, b.attention_mask, return_hidden=True)
        r_chosen, r_rejected = r[:len(batch)], r[len(batch):]
        bt_loss = bradley_terry_loss(r_chosen, r_rejected, cfg.margin)
        loss = bt_loss
        if cfg.sft_coef > 0:  # GRM: keep the backbone a language model of the chosen responses
            nll = chosen_nll(rm, h[:len(batch)], b.input_ids[:len(batch)], b.response_mask[:len(batch)])
            loss = loss + cfg.sft_coef * nll
        check_finite(loss, name="reward model loss", step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(rm.parameters(), cfg.grad_clip or float("inf"))
        check_finite(grad_norm, name="gradient norm", step=step)
        opt.step()
        with torch.no_grad():
            d = (r_chosen - r_rejected).detach()
            row = {"step": step, "loss": loss.item(), "bt_loss": bt_loss.item(),
                   "accuracy": float(((d > 0).float() + 0.5 * (d == 0).float()).mean()),
                   "margin": float(d.mean()), "lr": lr, "grad_norm": grad_norm.item(),
                   "step_seconds": time.perf_counter() - t0}
        seconds += row["step_seconds"]
        if cfg.sft_coef > 0:
            row["sft_loss"] = nll.item()
        if due(step, cfg.eval_every):
            row["held_out_pair_accuracy"] = pair_accuracy(rm, tokenizer, held_pairs)["pair_accuracy"]
        run.end_step(step, row, history, cfg, bar=bar, callback=callback, modules={"reward_model": rm},
                     optimizers={"opt": opt}, extra={"before": before, "seconds": seconds},
                     postfix={"loss": f"{row['loss']:.3f}", "acc": f"{row['accuracy']:.2f}"})
    bar.close()

    score_mean, score_std = normalize_scores(rm, tokenizer, train_pairs, shift=cfg.normalize)
    after = pair_accuracy(rm, tokenizer, held_pairs)
    after["train_pair_accuracy"] = pair_accuracy(rm, tokenizer, train_pairs)["pair_accuracy"]
    extra_out = {"n_train_pairs": len(train_pairs), "n_held_out_pairs": len(held_pairs), "score_mean": score_mean,
                 "score_std": score_std, "pairs_seconds": pairs_seconds}
    if run.enabled:
        run.write_history(history)
        rm.save(run.path / "final")
        (run.path / "result.json").write_text(json.dumps({"before": before, "after": after, "seconds": seconds,
                                                         **extra_out}, indent=2))
    return TrainResult(rm, tokenizer, history, before, after, seconds, run.path, extra_out)


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


__all__ = ["RewardModel", "RewardModelConfig", "train_reward_model", "oracle_pairs", "pair_accuracy", "pair_kind",
           "encode_pairs", "make_pair_data", "normalize_scores", "rule_reward", "lr_at"]
