"""The scalar-head model: a causal LM's transformer plus a linear head ``hidden -> 1``.

It serves twice (so it lives here, below the trainers): as the Bradley–Terry **reward model**
(:mod:`rlcourse.train.reward_model` trains it; the score is read at the last non-pad token), and
as PPO's **critic** (:meth:`RewardModel.values` reads the head at every response position:
the value :math:`V(s_t)` of the state before token ``t``).

Saved as a Hugging Face directory: the backbone with ``save_pretrained`` (``config.json`` +
``model.safetensors``), the head in ``head.safetensors``, and the tokenizer; loaded with
:meth:`RewardModel.load` (local files only, safetensors only, no remote code).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from rlcourse import _validate as V
from rlcourse.lm.model import pick_device
from rlcourse.lm.quiet import quiet_transformers
from rlcourse.lm.rollout import encode_completions, position_ids_from_mask, response_logprobs_from_logits
from rlcourse.lm.task import finished_flags
from rlcourse.logprobs import masked_mean

HEAD_FILE = "head.safetensors"
META_FILE = "reward_model.json"


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
            finished = finished_flags(finished, len(prompts), "prompts")
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
        with quiet_transformers():
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

        from rlcourse.lm.tokenizer import load_tokenizer

        directory = Path(directory)
        if not (directory / HEAD_FILE).exists():
            raise ValueError(f"directory {str(directory)!r} holds no {HEAD_FILE}: not a saved RewardModel")
        with quiet_transformers():
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
    T = response_mask.shape[1]
    logits = rm.lm_logits(hidden[:, -(T + 1):])
    logp = response_logprobs_from_logits(logits, input_ids, response_mask)
    return -masked_mean(logp, response_mask)


def rule_reward(prompts, completions, answers, finished=None) -> torch.Tensor:
    """The task's rule-based reward with the signature of :meth:`RewardModel.as_reward_fn` (prompts unused)."""
    from rlcourse.lm.task import batch_rewards

    return batch_rewards(completions, answers, finished)



__all__ = ["RewardModel", "expand_layers", "chosen_nll", "rule_reward", "HEAD_FILE", "META_FILE"]
