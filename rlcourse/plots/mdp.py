r"""Figures of notebook 01: text generation as a token-level MDP.

The language model is a policy. At step :math:`t` its state is the prefix
:math:`s_t = (x, y_{<t})`, its action the next token :math:`a_t = y_t`, drawn from

.. math::

    \pi_\theta(\cdot \mid s_t) = \mathrm{softmax}\big(z_\theta(s_t) / T\big),

the transition appends the token, :math:`s_{t+1} = s_t \oplus a_t` (deterministic), and the
reward is paid once, on the last token: :math:`r_t = 0` for :math:`t < |y| - 1` and
:math:`r_{|y|-1} = R(x, y)`, the rule-based reward of :mod:`rlcourse.lm.task`.

Three kinds of function, as in the other plot modules:

* *data* functions: a model (or logits, or a toy MDP) in, plain numbers out, no plotting:
  :func:`next_token_logits`, :func:`attention_weights`, :func:`greedy_steps`,
  :func:`topk_actions`, :func:`topk_steps`, :func:`outcome_mdp`, :func:`sequence_table`;
* *plot* functions (``plot_*``): data in, a matplotlib ``Figure`` out;
* *builders* registered with :func:`rlcourse.plots.figure` (``01_…``): no arguments, they
  compute their own data (the trained model comes from :func:`rlcourse.experiments.sft_start`,
  cached after its first training) and return the figure notebook 01 shows.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
import torch

from rlcourse.lm import Problem, position_ids_from_mask, reward
from rlcourse.lm.rollout import encode_prompts, generate
from rlcourse.plots import figure
from rlcourse.toymdp import ToyMDP

__all__ = [
    "next_token_logits", "attention_weights", "greedy_steps", "topk_actions", "topk_steps",
    "outcome_mdp", "sequence_table", "token_label",
    "plot_temperature", "plot_attention", "plot_topk_steps", "plot_sequence_probabilities",
    "PROBLEM", "PROMPT", "TEMPERATURES", "TOP_K",
]

#: The prompt of the notebook's LM experiments: a training-split problem with a 2-digit answer,
#: so that a generation has a first step, a second step and a last step (``<eos>``). Its two
#: operands are the same tokens at different positions (which only the rotary embedding tells apart).
PROBLEM = Problem(33, "+", 33)
PROMPT = PROBLEM.prompt  # "33+33=", answer "66"
TEMPERATURES = (0.5, 1.0, 2.0)
TOP_K = 8
ATTENTION_LAYER = 0

# The enumerable toy MDP of the notebook: the answer to "1+1=" written with the tokens "1", "2"
# and <eos>, at most 3 tokens, rewarded by the course's rule-based reward.
TOY_TOKENS = ("1", "2", "<eos>")
TOY_PROMPT = "1+1="
TOY_ANSWER = "2"
TOY_HORIZON = 3
TOY_THETA_SEED = 0


def token_label(token: str) -> str:
    """A printable name of a token: a space is shown as ``␣``; everything else as it is."""
    return "␣" if token == " " else token


def _trained_model():
    """The course's SFT start (trained once, then loaded from the cache)."""
    from rlcourse.experiments.cache import sft_start
    from rlcourse.experiments.settings import preset

    model, tok = sft_start(preset(), seed=0, progress=False)
    model.eval()
    return model, tok


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ============================================================================ data: the LM

@torch.no_grad()
def next_token_logits(model, tokenizer, text: str) -> torch.Tensor:
    """The logits :math:`z_\\theta(s)` (shape ``(V,)``, float32, on the CPU) of the next token after
    ``<bos> text``: the policy's raw scores in the state ``s = text``."""
    ids, att = encode_prompts(tokenizer, [text], _device(model))
    out = model(input_ids=ids, attention_mask=att, position_ids=position_ids_from_mask(att), use_cache=False)
    return out.logits[0, -1].float().cpu()


@torch.no_grad()
def attention_weights(model, tokenizer, text: str, layer: int = ATTENTION_LAYER) -> tuple[list[str], np.ndarray]:
    """The model's own causal attention probabilities in layer ``layer`` for ``<bos> text``.

    Runs one forward pass with transformers' ``"eager"`` attention (the only implementation that
    returns its probabilities) and restores the model's implementation afterwards.

    Returns:
        ``(tokens, weights)``: the ``L`` token strings and an array ``(heads, L, L)`` whose row
        ``i`` is the distribution of query ``i`` over keys ``0..i`` (zero above the diagonal).
    """
    if not isinstance(layer, int) or not 0 <= layer < model.config.num_hidden_layers:
        raise ValueError(f"layer must be an integer in [0, {model.config.num_hidden_layers}), got {layer!r}")
    ids, att = encode_prompts(tokenizer, [text], _device(model))
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model(input_ids=ids, attention_mask=att, position_ids=position_ids_from_mask(att), use_cache=False,
                    output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    return tokens, out.attentions[layer][0].float().cpu().numpy()


@torch.no_grad()
def greedy_steps(model, tokenizer, prompt: str, max_new_tokens: int = 8, temperature: float = 1.0) -> dict:
    """Generate greedily from ``prompt`` and return the policy at every step.

    Returns a dict with

    * ``prompt``, ``completion`` (without ``<eos>``), ``finished`` (emitted ``<eos>``);
    * ``actions``: the token strings chosen, ``<eos>`` included;
    * ``states``: the prefix before each action, as text (``<bos>`` written out);
    * ``logits``: ``(T, V)`` float32 logits of every step (from one forward pass over the whole
      sequence: causal attention makes position ``t`` see only the prefix ``s_t``);
    * ``logprobs``: ``(T,)`` :math:`\\log \\pi(a_t \\mid s_t)` under ``logits / temperature``,
      as recorded by :func:`rlcourse.lm.generate` while generating.
    """
    ro = generate(model, tokenizer, [prompt], max_new_tokens=max_new_tokens, temperature=temperature, greedy=True)
    T = int(ro.response_mask[0].sum())
    ids, att = ro.input_ids[:, :ro.prompt_length + T], ro.attention_mask[:, :ro.prompt_length + T]
    out = model(input_ids=ids, attention_mask=att, position_ids=position_ids_from_mask(att), use_cache=False)
    P = ro.prompt_length
    logits = out.logits[0, P - 1:P + T - 1].float().cpu()
    toks = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    states = ["".join(toks[:P + t]) for t in range(T)]  # one prompt: no padding
    return {
        "prompt": prompt,
        "completion": ro.completions[0],
        "finished": bool(ro.finished[0]),
        "actions": toks[P:P + T],
        "states": states,
        "logits": logits,
        "logprobs": ro.logprobs[0, :T].float().cpu(),
    }


def topk_actions(logits: torch.Tensor, tokenizer, k: int = TOP_K, temperature: float = 1.0) -> list[dict]:
    """The ``k`` most likely next tokens of ``softmax(logits / temperature)``.

    Returns ``k`` rows ``{"rank", "token", "id", "prob", "logprob"}``, rank 1 first.
    """
    if logits.dim() != 1:
        raise ValueError(f"logits must be one row of shape (V,), got shape {tuple(logits.shape)}")
    if not isinstance(k, int) or not 1 <= k <= logits.shape[0]:
        raise ValueError(f"k must be an integer in [1, {logits.shape[0]}], got {k!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    logp = torch.log_softmax(logits.double() / temperature, -1)
    top = torch.topk(logp, k)
    names = tokenizer.convert_ids_to_tokens(top.indices.tolist())
    return [{"rank": r + 1, "token": n, "id": int(i), "prob": float(lp.exp()), "logprob": float(lp)}
            for r, (n, i, lp) in enumerate(zip(names, top.indices, top.values))]


def topk_steps(model, tokenizer, prompt: str = PROMPT, k: int = TOP_K, temperature: float = 1.0,
               max_new_tokens: int = 8) -> list[dict]:
    """Top-``k`` action tables at the first, the second and the last step of a greedy generation.

    Each entry: ``{"step", "name", "state", "action", "rows"}`` (``rows`` from :func:`topk_actions`).
    A one-token generation has only a first (= last) step; a two-token one a first and a last.
    """
    g = greedy_steps(model, tokenizer, prompt, max_new_tokens, temperature)
    T = len(g["actions"])
    picks = [(0, "first step")] + ([(1, "second step")] if T > 2 else []) + ([(T - 1, "last step")] if T > 1 else [])
    return [{"step": t, "name": name, "state": g["states"][t], "action": g["actions"][t],
             "rows": topk_actions(g["logits"][t], tokenizer, k, temperature)} for t, name in picks]


# ============================================================================ data: the toy MDP

def outcome_mdp(temperature: float = 1.0, theta_seed: int = TOY_THETA_SEED) -> tuple[ToyMDP, torch.Tensor]:
    """The toy MDP of notebook 01 and its policy parameters.

    Tokens ``"1"``, ``"2"``, ``<eos>``; at most ``TOY_HORIZON`` tokens; the prompt ``"1+1="``.
    There is no per-token reward. The terminal reward of a sequence is the course's rule-based
    reward :func:`rlcourse.lm.reward` of its text (``<eos>`` = finished): 1 for ``"2"`` then
    ``<eos>``, 0 for another number that stops, -0.5 for anything malformed (empty, or cut off at
    the horizon without ``<eos>``), so the toy and the LM are rewarded by the same function.
    """
    probe = ToyMDP(len(TOY_TOKENS), TOY_HORIZON)
    terminal = torch.zeros(probe.num_states, probe.vocab_size, dtype=torch.float64)
    for s, prefix in enumerate(probe.state_prefixes):
        for a in range(probe.vocab_size):
            if probe.terminates[s, a]:
                finished = a == probe.eos
                text = "".join(TOY_TOKENS[t] for t in prefix + (() if finished else (a,)))
                terminal[s, a] = reward(text, TOY_ANSWER, finished)
    mdp = ToyMDP(len(TOY_TOKENS), TOY_HORIZON, terminal_reward=terminal, temperature=temperature)
    return mdp, mdp.init_params(seed=theta_seed)


def sequence_table(mdp: ToyMDP, theta: torch.Tensor) -> list[dict]:
    """Every sequence of ``mdp`` with its per-step probabilities, :math:`P(\\tau) = \\prod_t \\pi(a_t \\mid s_t)`
    and its return.

    Rows ``{"tokens", "text", "finished", "step_probs", "prob", "return"}`` in enumeration order
    (``tokens`` named with ``TOY_TOKENS`` when the MDP has their size, else ``mdp.token_names()``).
    """
    names = list(TOY_TOKENS) if mdp.vocab_size == len(TOY_TOKENS) else mdp.token_names()
    step = mdp.token_logprobs(theta).exp()
    prob, ret = mdp.probabilities(theta), mdp.returns()
    rows = []
    for n in range(mdp.num_sequences):
        L = int(mdp.sequences.lengths[n])
        toks = [names[a] for a in mdp.sequences.tokens[n, :L].tolist()]
        finished = int(mdp.sequences.tokens[n, L - 1]) == mdp.eos
        rows.append({"tokens": toks, "text": "".join(t for t in toks if t != names[mdp.eos]),
                     "finished": finished, "step_probs": [float(p) for p in step[n, :L]],
                     "prob": float(prob[n]), "return": float(ret[n])})
    return rows


# ============================================================================ plots

def plot_temperature(logits: torch.Tensor, labels: Sequence[str], temperatures: Sequence[float] = TEMPERATURES,
                     top: int = 10, state: str | None = None) -> plt.Figure:
    """Bars of :math:`\\mathrm{softmax}(z / T)` for each temperature, over the ``top`` tokens most likely at
    :math:`T = 1` (the rest of the vocabulary shown as one bar, "others")."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    if logits.dim() != 1 or len(labels) != logits.shape[0]:
        raise ValueError(f"logits must have shape (V,) with one label per token; got {tuple(logits.shape)} "
                         f"and {len(labels)} labels")
    order = torch.argsort(logits, descending=True)[:top].tolist()
    names = [token_label(labels[i]) for i in order] + ["others"]
    x = np.arange(len(names))
    w = 0.8 / len(temperatures)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for j, T in enumerate(temperatures):
        p = torch.softmax(logits / T, -1)
        vals = [float(p[i]) for i in order] + [float(1 - p[order].sum())]
        ax.bar(x + (j - (len(temperatures) - 1) / 2) * w, vals, w, label=f"T = {T:g}")
    ax.set_xticks(x, names)
    ax.set_ylabel(r"$\pi(a \mid s) = \mathrm{softmax}(z / T)_a$")
    ax.set_xlabel("next token a (sorted by logit)")
    where = f" in state '{state}'" if state else ""
    ax.set_title(f"temperature reshapes the next-token distribution{where}", fontsize=10)
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_attention(weights: np.ndarray, tokens: Sequence[str], layer: int = ATTENTION_LAYER) -> plt.Figure:
    """Heatmaps of causal attention probabilities, one panel per head (query rows, key columns)."""
    weights = np.asarray(weights)
    if weights.ndim != 3 or weights.shape[1] != weights.shape[2] or weights.shape[1] != len(tokens):
        raise ValueError(f"weights must have shape (heads, L, L) with L = len(tokens) = {len(tokens)}, "
                         f"got {weights.shape}")
    H, L = weights.shape[:2]
    names = [token_label(t) for t in tokens]
    fig, axes = plt.subplots(1, H, figsize=(min(10, 2.6 * H), 3.2), squeeze=False)
    future = np.triu(np.ones((L, L), dtype=bool), 1)
    for h, ax in enumerate(axes[0]):
        im = ax.imshow(np.ma.masked_where(future, weights[h]), cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(L), names, fontsize=6, rotation=90)
        ax.set_yticks(range(L), names if h == 0 else [""] * L, fontsize=6)
        ax.set_title(f"layer {layer}, head {h}", fontsize=8)
        ax.set_xlabel("key (attended to)", fontsize=7)
    axes[0][0].set_ylabel("query (position t)", fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="attention weight")
    return fig


def plot_topk_steps(steps: Sequence[dict]) -> plt.Figure:
    """Bars of the top-k next-token probabilities, one panel per step (output of :func:`topk_steps`);
    the token the generation took is highlighted."""
    steps = list(steps)
    if not steps:
        raise ValueError("steps is empty: give at least one step (see topk_steps)")
    fig, axes = plt.subplots(1, len(steps), figsize=(min(10, 3.4 * len(steps)), 3.4), squeeze=False)
    for ax, st in zip(axes[0], steps):
        rows = st["rows"]
        names = [token_label(r["token"]) for r in rows]
        probs = [r["prob"] for r in rows]
        colors = ["tab:orange" if r["token"] == st["action"] else "tab:blue" for r in rows]
        ax.bar(range(len(rows)), probs, color=colors)
        for i, p in enumerate(probs):
            ax.text(i, p, f"{p:.2f}" if p >= 0.005 else "", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(rows)), names, fontsize=7, rotation=90 if max(map(len, names)) > 2 else 0)
        ax.set_ylim(0, 1.1)
        ax.set_title(f"{st['name']} (t = {st['step']})\nstate: {st['state'].replace('<bos>', '')}", fontsize=8)
    axes[0][0].set_ylabel(r"$\pi(a_t \mid s_t)$")
    axes[0][0].legend(handles=[Patch(color="tab:orange", label="token taken"),
                               Patch(color="tab:blue", label="other tokens")], fontsize=7, loc="upper right")
    fig.suptitle("top-k action table of the SFT model: the next-token distribution at three steps", fontsize=9)
    fig.tight_layout()
    return fig


def plot_sequence_probabilities(rows: Sequence[dict], objective: float | None = None) -> plt.Figure:
    """:math:`P(\\tau)` of every sequence of the toy MDP (output of :func:`sequence_table`), coloured by
    its return; :math:`J = \\sum_\\tau P(\\tau) R(\\tau)` in the title when given."""
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: give the output of sequence_table")
    returns = sorted({r["return"] for r in rows})
    cmap = plt.get_cmap("RdYlGn")
    lo, hi = min(returns), max(returns)
    color = {R: cmap(0.5 if hi == lo else 0.1 + 0.8 * (R - lo) / (hi - lo)) for R in returns}
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.bar(range(len(rows)), [r["prob"] for r in rows], color=[color[r["return"]] for r in rows])
    ax.set_xticks(range(len(rows)), [" ".join(r["tokens"]) for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(r"$P(\tau) = \prod_t \pi(a_t \mid s_t)$")
    ax.legend(handles=[Patch(color=color[R], label=f"R = {R:+g}") for R in returns[::-1]], fontsize=8,
              title="outcome reward", title_fontsize=8)
    title = "every sequence of the toy MDP with its probability"
    if objective is not None:
        title += rf";  $J = \sum_\tau P(\tau) R(\tau) = {objective:.4f}$"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ============================================================================ builders

def _uncertain_state(model, tokenizer) -> str:
    """The state of the greedy generation of ``PROMPT`` whose next-token distribution has the largest entropy."""
    g = greedy_steps(model, tokenizer, PROMPT)
    logp = torch.log_softmax(g["logits"].double(), -1)
    t = int((-(logp.exp() * logp).sum(-1)).argmax())
    return g["states"][t].replace(tokenizer.bos_token, "")


@figure("01_temperature")
def build_temperature() -> plt.Figure:
    """softmax(z / T) of the SFT model at its most uncertain step of the greedy answer to PROMPT, T = 0.5, 1, 2."""
    model, tok = _trained_model()
    state = _uncertain_state(model, tok)
    labels = tok.convert_ids_to_tokens(list(range(len(tok))))
    return plot_temperature(next_token_logits(model, tok, state), labels, TEMPERATURES, state=state)


@figure("01_attention")
def build_attention() -> plt.Figure:
    """Causal attention weights of layer 0 of the SFT model on PROMPT and its greedy answer."""
    model, tok = _trained_model()
    g = greedy_steps(model, tok, PROMPT)
    tokens, w = attention_weights(model, tok, PROMPT + g["completion"])
    return plot_attention(w, tokens)


@figure("01_topk_actions")
def build_topk_actions() -> plt.Figure:
    """Top-k next-token probabilities of the SFT model at the first, second and last step of a greedy answer."""
    model, tok = _trained_model()
    return plot_topk_steps(topk_steps(model, tok, PROMPT))


@figure("01_toy_sequences")
def build_toy_sequences() -> plt.Figure:
    """P(tau) of every sequence of the notebook's toy MDP, coloured by its outcome reward."""
    mdp, theta = outcome_mdp()
    return plot_sequence_probabilities(sequence_table(mdp, theta), float(mdp.objective(theta)))
