r"""An enumerable token-level MDP: the ground truth of the course.

Text generation is an MDP whose state is the prefix generated so far, whose action is the
next token, and whose transition is deterministic: appending the token. A sequence ends when
the policy emits ``<eos>`` or reaches the horizon :math:`H`. With a vocabulary of a few
tokens and a horizon of a few steps, every sequence can be listed with its exact
probability, so that

.. math::

    J(\theta) = \sum_{\tau} P_\theta(\tau)\, R(\tau), \qquad
    P_\theta(\tau) = \prod_{t} \pi_\theta(a_t \mid s_t)

and :math:`\nabla_\theta J` are computed exactly (autograd through the enumerated sum, in
float64). Every estimator in the course is measured against these exact values.

The policy is tabular softmax: one row of logits per non-terminal prefix,
:math:`\pi_\theta(\cdot \mid s) = \mathrm{softmax}(\theta_s / T)` with temperature ``T``.
Rewards are arbitrary: a per-token reward :math:`r(s, a)` and a terminal reward paid on the
transition that ends the sequence (which, since each sequence ends with a unique
``(state, action)`` pair, is an arbitrary function of the whole sequence).

Example::

    mdp = ToyMDP.random(vocab_size=3, horizon=3, seed=0)
    theta = mdp.init_params(seed=1)
    mdp.objective(theta)          # exact J(theta)
    mdp.exact_gradient(theta)     # exact grad J, shape (num_states, vocab_size)
    idx = mdp.sample(theta, 1000, seed=0)   # indices into mdp.sequences
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import torch

from rlcourse import _validate as V

DTYPE = torch.float64


@dataclass(frozen=True)
class Enumeration:
    """Every sequence of the MDP, padded to the horizon.

    Attributes (N sequences, horizon H):
        tokens: (N, H) long, the actions; 0 after the end.
        states: (N, H) long, index of the prefix before each action; 0 after the end.
        mask: (N, H) float64, 1 for real steps.
        lengths: (N,) long.
        token_rewards: (N, H) float64, r(s_t, a_t) plus the terminal reward on the last step.
    """

    tokens: torch.Tensor
    states: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    token_rewards: torch.Tensor


class ToyMDP:
    """A token-level MDP small enough to enumerate.

    Args:
        vocab_size: number of tokens, ``<eos>`` included (>= 2).
        horizon: maximum number of tokens in a sequence (>= 1).
        token_reward: (num_states, vocab_size) per-token reward r(s, a).
        terminal_reward: (num_states, vocab_size) reward paid when (s, a) ends the sequence
            (only entries for terminating transitions matter).
        eos: index of the end-of-sequence token (default: the last one).
        temperature: softmax temperature of the policy.
    """

    def __init__(self, vocab_size: int, horizon: int, token_reward: torch.Tensor | None = None,
                 terminal_reward: torch.Tensor | None = None, eos: int | None = None,
                 temperature: float = 1.0):
        V.integer("vocab_size", vocab_size, 2)
        V.integer("horizon", horizon)
        self.vocab_size = vocab_size
        self.horizon = horizon
        self.eos = vocab_size - 1 if eos is None else eos
        if not 0 <= self.eos < vocab_size:
            raise ValueError(f"eos must be a token index in [0, {vocab_size}), got {eos}")
        self.temperature = V.positive("temperature", temperature)

        # Non-terminal states: prefixes of length < horizon that contain no <eos>.
        words = [t for t in range(vocab_size) if t != self.eos]
        self.state_prefixes: list[tuple[int, ...]] = [
            p for length in range(horizon) for p in product(words, repeat=length)
        ]
        self.state_index = {p: i for i, p in enumerate(self.state_prefixes)}
        S = len(self.state_prefixes)
        self.num_states = S

        # next_state[s, a] = index of the prefix s+a, or -1 if (s, a) ends the sequence.
        nxt = torch.full((S, vocab_size), -1, dtype=torch.long)
        for i, p in enumerate(self.state_prefixes):
            for a in range(vocab_size):
                if a != self.eos and len(p) + 1 < horizon:
                    nxt[i, a] = self.state_index[p + (a,)]
        self.next_state = nxt
        self.terminates = nxt < 0

        zeros = torch.zeros(S, vocab_size, dtype=DTYPE)
        self.token_reward = self._check_reward("token_reward", token_reward, zeros)
        self.terminal_reward = self._check_reward("terminal_reward", terminal_reward, zeros)
        self.sequences = self._enumerate()
        self.sequence_index = {
            tuple(self.sequences.tokens[n, : self.sequences.lengths[n]].tolist()): n
            for n in range(self.num_sequences)
        }

    # ------------------------------------------------------------------ construction
    def _check_reward(self, name, r, default):
        if r is None:
            return default.clone()
        V.tensor(name, r, ndim=2)
        if tuple(r.shape) != (self.num_states, self.vocab_size):
            raise ValueError(f"{name} must have shape (num_states, vocab_size) = "
                             f"{(self.num_states, self.vocab_size)}, got {tuple(r.shape)}")
        return r.to(DTYPE)

    @classmethod
    def random(cls, vocab_size: int = 3, horizon: int = 3, seed: int = 0, temperature: float = 1.0,
               token_reward_scale: float = 0.5, terminal_reward_scale: float = 1.0) -> "ToyMDP":
        """An MDP with standard-normal rewards (scaled), drawn from a fixed seed."""
        probe = cls(vocab_size, horizon)
        g = torch.Generator().manual_seed(seed)
        shape = (probe.num_states, vocab_size)
        tok = token_reward_scale * torch.randn(shape, generator=g, dtype=DTYPE)
        term = terminal_reward_scale * torch.randn(shape, generator=g, dtype=DTYPE)
        term = torch.where(probe.terminates, term, torch.zeros_like(term))
        return cls(vocab_size, horizon, tok, term, temperature=temperature)

    def init_params(self, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
        """Random logits theta of shape (num_states, vocab_size), float64."""
        g = torch.Generator().manual_seed(seed)
        return scale * torch.randn(self.num_states, self.vocab_size, generator=g, dtype=DTYPE)

    def _enumerate(self) -> Enumeration:
        seqs: list[tuple[int, ...]] = []

        def extend(prefix):
            for a in range(self.vocab_size):
                s = prefix + (a,)
                if a == self.eos or len(s) == self.horizon:
                    seqs.append(s)
                else:
                    extend(s)

        extend(())
        N, H = len(seqs), self.horizon
        tokens = torch.zeros(N, H, dtype=torch.long)
        states = torch.zeros(N, H, dtype=torch.long)
        mask = torch.zeros(N, H, dtype=DTYPE)
        rewards = torch.zeros(N, H, dtype=DTYPE)
        for n, s in enumerate(seqs):
            for t, a in enumerate(s):
                st = self.state_index[s[:t]]
                tokens[n, t], states[n, t], mask[n, t] = a, st, 1.0
                rewards[n, t] = self.token_reward[st, a]
                if t == len(s) - 1:
                    rewards[n, t] += self.terminal_reward[st, a]
        lengths = mask.sum(1).long()
        return Enumeration(tokens, states, mask, lengths, rewards)

    @property
    def num_sequences(self) -> int:
        return self.sequences.tokens.shape[0]

    def token_names(self) -> list[str]:
        letters = "abcdefghijklmnopqrstuvwxyz"
        return [("<eos>" if a == self.eos else letters[a if a < self.eos else a - 1])
                for a in range(self.vocab_size)]

    def describe(self, n: int) -> str:
        """Human-readable text of sequence ``n``."""
        names = self.token_names()
        return " ".join(names[a] for a in self.sequences.tokens[n, : self.sequences.lengths[n]].tolist())

    # ------------------------------------------------------------------ the policy
    def _check_theta(self, theta):
        V.tensor("theta", theta, ndim=2)
        if tuple(theta.shape) != (self.num_states, self.vocab_size):
            raise ValueError(f"theta must have shape (num_states, vocab_size) = "
                             f"{(self.num_states, self.vocab_size)}, got {tuple(theta.shape)}")
        return theta

    def policy_logprobs(self, theta: torch.Tensor) -> torch.Tensor:
        r"""log pi_theta(a | s) = log softmax(theta_s / T), shape (num_states, vocab_size)."""
        self._check_theta(theta)
        return torch.log_softmax(theta / self.temperature, dim=-1)

    def token_logprobs(self, theta: torch.Tensor) -> torch.Tensor:
        r"""log pi_theta(a_t | s_t) along every enumerated sequence, (N, H), 0 after the end."""
        lp = self.policy_logprobs(theta)[self.sequences.states, self.sequences.tokens]
        return lp * self.sequences.mask

    def sequence_logprobs(self, theta: torch.Tensor) -> torch.Tensor:
        r"""log P_theta(tau) = sum_t log pi_theta(a_t | s_t), shape (N,)."""
        return self.token_logprobs(theta).sum(-1)

    def probabilities(self, theta: torch.Tensor) -> torch.Tensor:
        """P_theta(tau) for every sequence, shape (N,); sums to 1."""
        return self.sequence_logprobs(theta).exp()

    # ------------------------------------------------------------------ returns and J
    def discounts(self, gamma: float = 1.0) -> torch.Tensor:
        V.in_range("gamma", gamma, 0.0, 1.0)
        return gamma ** torch.arange(self.horizon, dtype=DTYPE)

    def returns(self, gamma: float = 1.0) -> torch.Tensor:
        r"""R(tau) = sum_t gamma^t r_t for every sequence, shape (N,)."""
        return (self.sequences.token_rewards * self.discounts(gamma)).sum(-1)

    def objective(self, theta: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
        r"""Exact J(theta) = sum_tau P_theta(tau) R(tau) (differentiable)."""
        return (self.probabilities(theta) * self.returns(gamma)).sum()

    def exact_gradient(self, theta: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
        r"""Exact grad_theta J(theta) by autograd through the enumeration."""
        th = theta.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.objective(th, gamma), th)
        return grad

    def score(self, theta: torch.Tensor) -> torch.Tensor:
        r"""grad_theta log P_theta(tau) for every sequence, shape (N, num_states, vocab_size).

        For a tabular softmax, d log pi(a|s) / d theta_{s,b} = ([a=b] - pi(b|s)) / T.
        """
        th = theta.detach()
        pi = self.policy_logprobs(th).exp()
        seq = self.sequences
        out = torch.zeros(self.num_sequences, self.num_states, self.vocab_size, dtype=DTYPE)
        for t in range(self.horizon):
            m = seq.mask[:, t]
            s, a = seq.states[:, t], seq.tokens[:, t]
            g = -pi[s] / self.temperature
            g[torch.arange(len(a)), a] += 1.0 / self.temperature
            out[torch.arange(len(s)), s] += g * m[:, None]
        return out

    def token_scores(self, theta: torch.Tensor) -> torch.Tensor:
        r"""grad_theta log pi_theta(a_t | s_t) per step, shape (N, H, num_states, vocab_size)."""
        th = theta.detach()
        pi = self.policy_logprobs(th).exp()
        seq = self.sequences
        N, H = seq.tokens.shape
        out = torch.zeros(N, H, self.num_states, self.vocab_size, dtype=DTYPE)
        rows = torch.arange(N)
        for t in range(H):
            s, a = seq.states[:, t], seq.tokens[:, t]
            g = -pi[s] / self.temperature
            g[rows, a] += 1.0 / self.temperature
            out[rows, t, s] = g * seq.mask[:, t, None]
        return out

    # ------------------------------------------------------------------ values
    def state_values(self, theta: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
        r"""V^pi(s) for every non-terminal state, by backward induction, shape (num_states,)."""
        return self._values(theta, gamma)[0]

    def q_values(self, theta: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
        r"""Q^pi(s, a) = r(s, a) + [terminal] R_term(s, a) + gamma [not terminal] V^pi(s'),
        shape (num_states, vocab_size)."""
        return self._values(theta, gamma)[1]

    def advantages(self, theta: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
        r"""A^pi(s, a) = Q^pi(s, a) - V^pi(s), shape (num_states, vocab_size)."""
        v, q = self._values(theta, gamma)
        return q - v[:, None]

    def _values(self, theta, gamma):
        pi = self.policy_logprobs(theta).exp()
        V.in_range("gamma", gamma, 0.0, 1.0)
        S = self.num_states
        v = torch.zeros(S, dtype=DTYPE)
        q = torch.zeros(S, self.vocab_size, dtype=DTYPE)
        # Longer prefixes first: their successors are already valued.
        for s in sorted(range(S), key=lambda i: -len(self.state_prefixes[i])):
            nxt = self.next_state[s]
            cont = torch.where(nxt >= 0, v[nxt.clamp(min=0)], torch.zeros_like(v[:1]).expand(self.vocab_size))
            q[s] = self.token_reward[s] + torch.where(self.terminates[s], self.terminal_reward[s], gamma * cont)
            v[s] = (pi[s] * q[s]).sum()
        return v, q

    def state_visitation(self, theta: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
        r"""Discounted visitation d(s) = sum_t gamma^t P(s_t = s), shape (num_states,)."""
        p = self.probabilities(theta)
        seq = self.sequences
        w = p[:, None] * seq.mask * self.discounts(gamma)
        return torch.zeros(self.num_states, dtype=DTYPE).index_add_(0, seq.states.flatten(), w.flatten())

    # ------------------------------------------------------------------ sampling
    def sample(self, theta: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
        """Sample ``n`` sequences token by token; returns their indices into ``sequences``."""
        V.integer("n", n)
        pi = self.policy_logprobs(theta.detach()).exp()
        g = torch.Generator().manual_seed(seed)
        state = torch.zeros(n, dtype=torch.long)  # the empty prefix is state 0
        done = torch.zeros(n, dtype=torch.bool)
        tokens = torch.zeros(n, self.horizon, dtype=torch.long)
        lengths = torch.zeros(n, dtype=torch.long)
        for t in range(self.horizon):
            a = torch.multinomial(pi[state], 1, generator=g).squeeze(1)
            tokens[:, t] = torch.where(done, tokens[:, t], a)
            lengths += (~done).long()
            ends = self.terminates[state, a]
            state = torch.where(done | ends, state, self.next_state[state, a].clamp(min=0))
            done = done | ends
        return torch.tensor([self.sequence_index[tuple(tokens[i, : lengths[i]].tolist())] for i in range(n)])


@dataclass(frozen=True)
class ToyProblem:
    """A random toy MDP and a starting policy, by their seeds: what the derivation checks, the toy figures and the
    toy experiments draw. The defaults are *the course's problem* (:func:`course_problem`): vocabulary
    ``{a, b, <eos>}``, horizon 3 (7 non-terminal prefixes, 15 sequences, 21 logits), MDP seed 0, policy seed 1."""

    vocab_size: int = 3
    horizon: int = 3
    mdp_seed: int = 0
    theta_seed: int = 1

    def __post_init__(self):
        V.integer("vocab_size", self.vocab_size, 2)
        V.integer("horizon", self.horizon)
        V.integer("mdp_seed", self.mdp_seed, 0)
        V.integer("theta_seed", self.theta_seed, 0)

    def build(self) -> tuple[ToyMDP, torch.Tensor]:
        """``(mdp, theta)``: :meth:`ToyMDP.random` with ``mdp_seed`` and :meth:`ToyMDP.init_params` with ``theta_seed``."""
        mdp = ToyMDP.random(vocab_size=self.vocab_size, horizon=self.horizon, seed=self.mdp_seed)
        return mdp, mdp.init_params(seed=self.theta_seed)


def course_problem() -> tuple[ToyMDP, torch.Tensor]:
    """``(mdp, theta)`` of the course's toy problem (:class:`ToyProblem`'s defaults), on which most derivations
    check their identities and the toy figures are drawn. A derivation that moves away from ``theta`` (a new
    policy, a reference) draws the direction with ``mdp.init_params(seed=2)`` and onwards."""
    return ToyProblem().build()
