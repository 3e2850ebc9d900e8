"""Lab 01 — text generation as a token-level MDP: log-probs, entropy, masked means, counting states."""

from __future__ import annotations

import math

import torch

from rlcourse import logprobs as LP
from rlcourse.exercises.grading import DTYPE, agrees, compare, for_cases, gen, rand_mask, randn, value_close
from rlcourse.exercises.registry import register
from rlcourse.toymdp import ToyMDP

# --------------------------------------------------------------------------- 01.token_logprobs


def token_logprobs(logits, tokens, temperature=1.0):
    """Log-probability of each sampled token, with temperature

    token_logprobs(logits (B,T,V), tokens (B,T) long, temperature=1.0) -> (B,T)
    """
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _logprob_cases(seed):
    out = []
    for k, (B, T, V, temp, scale) in enumerate([(1, 1, 2, 1.0, 1.0), (2, 3, 4, 0.7, 1.0), (3, 5, 7, 2.0, 2.0),
                                                 (2, 4, 5, 1.0, 400.0)]):
        g = gen(seed, k)
        logits = randn(g, B, T, V, scale=scale)
        # with logits of size 400, take the least likely token: its probability underflows to 0
        tokens = logits.argmin(-1) if scale > 100 else torch.randint(0, V, (B, T), generator=g)
        out.append({"logits": logits, "tokens": tokens, "temperature": temp})
    return out


def _sums_to_one(fn, case):
    logits, temp = case
    V = logits.shape[-1]
    per_token = torch.stack([fn(logits, torch.full(logits.shape[:2], v), temp) for v in range(V)], -1)
    return compare(per_token.exp().sum(-1), torch.ones(logits.shape[:2]), 1e-9, 0, "sum over tokens of exp(log-prob)")


def _shift_invariant(fn, case):
    logits, temp = case
    tokens = torch.zeros(logits.shape[:2], dtype=torch.long)
    return compare(fn(logits + 3.0, tokens, temp), fn(logits, tokens, temp), 1e-9, 0,
                   "log-probs after adding 3 to every logit")


def _small_logits(seed):
    return [(f"logits of shape {(1, 1, V)}, temperature {t}", (randn(gen(seed, 10 + V), 1, 1, V), t))
            for V, t in ((2, 1.0), (3, 0.5), (5, 2.0))]


register(
    token_logprobs, 2, "easy",
    [agrees("agrees with rlcourse.logprobs.token_logprobs (incl. T=1, temperatures, logits of size 400)",
            _logprob_cases, LP.token_logprobs, atol=1e-8),
     for_cases("exp(log-probs) sums to 1 over the vocabulary", _small_logits, _sums_to_one),
     for_cases("adding a constant to every logit changes nothing", _small_logits, _shift_invariant)],
    {"no_temperature": lambda logits, tokens, temperature=1.0: token_logprobs(logits, tokens, 1.0),
     "temperature_after_log_softmax": lambda logits, tokens, temperature=1.0:
         token_logprobs(logits, tokens, 1.0) / temperature,
     "log_of_softmax": lambda logits, tokens, temperature=1.0:
         torch.log(torch.softmax(logits / temperature, -1)).gather(-1, tokens.unsqueeze(-1)).squeeze(-1),
     "softmax_over_positions": lambda logits, tokens, temperature=1.0:
         torch.log_softmax(logits / temperature, dim=1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)},
)

# --------------------------------------------------------------------------- 01.entropy


def entropy(logits, temperature=1.0):
    """Entropy of the softmax policy at a temperature

    entropy(logits (..., V), temperature=1.0) -> (...)
    """
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _entropy_cases(seed):
    shapes = [((2,), 1.0, 1.0), ((3, 5), 0.5, 1.0), ((2, 3, 6), 2.0, 1.0), ((2, 4), 1.0, 2000.0)]
    return [{"logits": randn(gen(seed, k), *s, scale=sc), "temperature": t} for k, (s, t, sc) in enumerate(shapes)]


def _uniform_cases(seed):
    return [(f"uniform logits over V={V}, temperature {t}", (V, t)) for V, t in ((2, 1.0), (5, 0.3), (11, 3.0))]


def _uniform_is_log_v(fn, case):
    V, t = case
    return compare(fn(torch.full((1, V), 0.7, dtype=DTYPE), t), torch.full((1,), math.log(V), dtype=DTYPE), 1e-9, 0, "entropy")


register(
    entropy, 2, "easy",
    [agrees("agrees with rlcourse.logprobs.entropy_from_logits (incl. one-hot-like logits of size 2000)",
            _entropy_cases, LP.entropy_from_logits, atol=1e-8),
     for_cases("uniform logits give log V (nats)", _uniform_cases, _uniform_is_log_v)],
    {"bits_not_nats": lambda logits, temperature=1.0: entropy(logits, temperature) / math.log(2),
     "no_temperature": lambda logits, temperature=1.0: entropy(logits, 1.0),
     "naive_log_of_softmax": lambda logits, temperature=1.0:
         -(torch.softmax(logits / temperature, -1) * torch.log(torch.softmax(logits / temperature, -1))).sum(-1),
     "missing_minus": lambda logits, temperature=1.0: -entropy(logits, temperature)},
)

# --------------------------------------------------------------------------- 01.masked_mean


def masked_mean(x, mask):
    """Mean over the response tokens only

    masked_mean(x (B,T), mask (B,T) 0/1) -> scalar
    """
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum()


def _masked_cases(seed):
    out = []
    for k, (B, T, kind) in enumerate([(1, 1, "right"), (1, 3, "right"), (3, 4, "right"), (4, 6, "left"),
                                      (5, 7, "holes")]):
        g = gen(seed, k)
        out.append({"x": randn(g, B, T), "mask": rand_mask(g, B, T, kind)})
    return out


def _ignores_masked(seed):
    out = []
    for k, (B, T) in enumerate([(1, 2), (3, 5)]):
        g = gen(seed, 20 + k)
        m = rand_mask(g, B, T, "right")
        m[0, -1] = 0.0
        out.append((f"x of shape {(B, T)}, mask {m.tolist()}", (randn(g, B, T), m)))
    return out


def _ignores(fn, case):
    x, m = case
    junk = x + (1 - m) * 1e6
    return compare(fn(junk, m), fn(x, m), 1e-9, 0, "the mean after changing masked-out entries to 1e6")


register(
    masked_mean, 1, "easy",
    [agrees("agrees with rlcourse.logprobs.masked_mean (incl. 1x1, prompt masks, holes)", _masked_cases,
            LP.masked_mean),
     for_cases("masked-out entries do not matter", _ignores_masked, _ignores)],
    {"mask_not_applied": lambda x, mask: x.mean(),
     "divides_by_numel": lambda x, mask: (x * mask).sum() / x.numel(),
     "mean_of_row_means": lambda x, mask: ((x * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()},
)

# --------------------------------------------------------------------------- 01.count_states (prediction)


def count_states():
    # non-terminal prefixes: no <eos>, length < H: 1 + 3 + 9; sequences: ending in <eos> (1+3+9) or at H (27)
    """Predict: how many states and sequences has a V=4 (with <eos>), H=3 MDP?

    count_states() -> {'states': int, 'sequences': int}
    """
    return {"states": 13, "sequences": 40}


def _count_truth():
    mdp = ToyMDP(4, 3)
    return {"states": mdp.num_states, "sequences": mdp.num_sequences}


register(
    count_states, 1, "easy",
    [value_close("equals the count of rlcourse.toymdp.ToyMDP(4, 3)", _count_truth, 0.5,
                 "a state is a prefix without <eos> shorter than H")],
    {"vocab_to_the_horizon": lambda: {"states": 64, "sequences": 64},
     "prefixes_with_eos": lambda: {"states": 21, "sequences": 40}},
    kind="prediction",
)

# --------------------------------------------------------------------------- 01.entropy_limits (prediction)

LIMIT_LOGITS = (2.0, 1.0, 0.0, -1.0, -3.0)


def entropy_limits():
    # T -> 0: all mass on the arg-max token, entropy 0; T -> inf: uniform over 5 tokens, entropy log 5
    """Predict: entropy of softmax(z/T) as T -> 0 and T -> inf, z = (2, 1, 0, -1, -3)

    entropy_limits() -> {'T->0': float, 'T->inf': float} (nats)
    """
    return {"T->0": 0.0, "T->inf": math.log(5)}


def _limits_truth():
    z = torch.tensor(LIMIT_LOGITS, dtype=DTYPE)
    return {"T->0": float(LP.entropy_from_logits(z, 1e-3)), "T->inf": float(LP.entropy_from_logits(z, 1e5))}


register(
    entropy_limits, 1, "easy",
    [value_close("equals the entropy at T = 1e-3 and T = 1e5 (rlcourse.logprobs.entropy_from_logits)",
                 _limits_truth, 0.01)],
    {"swapped_limits": lambda: {"T->0": math.log(5), "T->inf": 0.0},
     "log2_units": lambda: {"T->0": 0.0, "T->inf": math.log2(5)}},
    kind="prediction",
)
