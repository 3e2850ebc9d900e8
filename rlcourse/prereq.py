r"""Checks for the prerequisites self-check (``notebooks/00_prerequisites.ipynb``).

Each ``check_*`` function takes the student's answer (usually a function), runs it on fixed
inputs, compares the result with a reference computed by PyTorch itself (or by the package's
``masked_mean`` and ``token_logprobs``), and returns a :class:`Result`: ``passed``, what was expected and what was seen, and
a pointer to the material to review when it fails. A check never raises because of the
*answer*: an exception inside the student's function, a wrong type or a wrong shape is reported
as a failure with its message. Every check is shown to reject a plausible wrong answer in
``tests/test_prerequisites.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from rlcourse.logprobs import masked_mean, token_logprobs

__all__ = [
    "Result", "ITEMS", "summary",
    "check_softmax", "check_softmax_jacobian", "check_logsumexp", "check_kl",
    "check_bernoulli_score", "check_autograd", "check_masked_mean", "check_broadcasting",
    "check_causal_attention", "check_cross_entropy", "check_llama_forward",
    "check_next_token_logprobs", "check_sampling",
]

# Where to look when an item fails (course material first; REFERENCES.md entries by title).
POINTERS = {
    "softmax": "notebook 01 §3 (the softmax policy and its temperature); subtract max(z) before exp.",
    "softmax_jacobian": "d p_i / d z_j = p_i (δ_ij − p_j): write p = softmax(z) and differentiate "
                        "exp(z_i)/Σ exp(z_k); notebook 02 §4 (EGLP uses it).",
    "logsumexp": "log Σ exp(x_i) = m + log Σ exp(x_i − m) with m = max x; notebook 01 §3.",
    "kl": "KL(p‖q) = Σ p log(p/q), terms with p = 0 count 0; notebook 08 §3 and "
          "Schulman, \"Approximating KL Divergence\" (REFERENCES.md).",
    "bernoulli_score": "for a ~ Bernoulli(σ(θ)), d/dθ log P(a) = a − σ(θ); notebook 02 §4 (EGLP) "
                       "and notebook 03 §1 (variance).",
    "autograd": "torch.autograd.grad(f(x), x) with x.requires_grad_(); notebook 02 §2 "
                "(the log-derivative trick with autograd).",
    "masked_mean": "divide by the number of counted tokens, mask.sum(), not by B·T; "
                   "rlcourse.logprobs.masked_mean; notebook 04 §3.",
    "broadcasting": "a (B,) tensor times a (B, T) tensor broadcasts along the *last* axis; "
                    "write adv[:, None] (shape (B, 1)); PyTorch docs, \"Broadcasting semantics\".",
    "causal_attention": "add −inf above the diagonal before the softmax (masked_fill), never multiply "
                        "by a 0/1 mask; notebook 01 §4 and REFERENCES.md, \"Errors in the sources\" "
                        "(the attention slides of \"Algorithmic and Theoretical Foundations of RL\").",
    "cross_entropy": "cross-entropy of a target = −log softmax(logits)[target], averaged; use "
                     "log_softmax, not log(softmax); notebook 01 §2.",
    "llama_forward": "transformers' LlamaConfig / LlamaForCausalLM(config) build a random model "
                     "without any download; model(input_ids).logits has shape (B, T, vocab); "
                     "notebook 01 §2.",
    "next_token_logprobs": "logits at position t score the token at t + 1: use logits[:, :-1] with "
                           "input_ids[:, 1:]; notebook 01 §2 and rlcourse.logprobs.token_logprobs.",
    "sampling": "torch.multinomial(probs, n, replacement=True, generator=g) with a seeded "
                "torch.Generator; never argmax (that is greedy decoding); notebook 01 §3.",
}
ITEMS = tuple(POINTERS)


@dataclass
class Result:
    """The outcome of one check: what was expected, what was seen, and where to look."""

    name: str
    passed: bool
    expected: str
    observed: str
    pointer: str

    def __str__(self) -> str:
        if self.passed:
            return f"PASS  {self.name}: {self.observed}"
        return (f"FAIL  {self.name}\n      expected: {self.expected}\n      got:      {self.observed}\n"
                f"      review:   {self.pointer}")

    def _repr_pretty_(self, p, cycle) -> None:  # IPython display
        p.text(str(self))


def _fmt(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.numel() <= 6:
            return f"{[round(v, 5) for v in x.double().flatten().tolist()]} (shape {tuple(x.shape)})"
        return f"tensor of shape {tuple(x.shape)}, first values {[round(v, 4) for v in x.double().flatten()[:4].tolist()]}"
    if isinstance(x, float):
        return f"{x:.6g}"
    return repr(x)


def _result(name: str, failures: list[tuple[str, str]], ok_text: str) -> Result:
    if failures:
        expected, observed = failures[0]
        return Result(name, False, expected, observed, POINTERS[name])
    return Result(name, True, ok_text, ok_text, POINTERS[name])


def _run(name: str, fn: Callable, *args) -> tuple[Any, str | None]:
    """Call the student's function; an exception becomes a failure message, never a crash."""
    if not callable(fn):
        return None, f"a function, but the answer is {type(fn).__name__}"
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 — any error in the answer is reported, not raised
        return None, f"the function raised {type(exc).__name__}: {exc}"


def _compare(failures, label: str, got, want: torch.Tensor, atol: float = 1e-6) -> None:
    """Append a failure unless ``got`` is a tensor of ``want``'s shape and values."""
    if not isinstance(got, torch.Tensor):
        failures.append((f"{label}: a tensor {_fmt(want)}", f"{type(got).__name__} {got!r}"[:200]))
        return
    if tuple(got.shape) != tuple(want.shape):
        failures.append((f"{label}: shape {tuple(want.shape)}", f"shape {tuple(got.shape)}"))
        return
    got_d, want_d = got.detach().double(), want.detach().double()
    if not bool(torch.isfinite(got_d).all()):
        failures.append((f"{label}: {_fmt(want)}", f"non-finite values {_fmt(got)}"))
        return
    if not torch.allclose(got_d, want_d, atol=atol, rtol=1e-5):
        failures.append((f"{label}: {_fmt(want)}", _fmt(got)))


def _call_and_compare(name, failures, fn, args, want, label, atol=1e-6) -> None:
    got, err = _run(name, fn, *args)
    if err is not None:
        failures.append((label, err))
    else:
        _compare(failures, label, got, want, atol)


# --------------------------------------------------------------------------------------------
# 1. softmax, its Jacobian, log-sum-exp
# --------------------------------------------------------------------------------------------

_SOFTMAX_CASES = (
    torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
    torch.tensor([[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0]], dtype=torch.float64),
    torch.tensor([1000.0, 1001.0, 999.0], dtype=torch.float64),  # overflows a naive exp
    torch.tensor([-1000.0, -1001.0, -999.0], dtype=torch.float64),  # underflows to 0/0
)


def check_softmax(softmax: Callable[[torch.Tensor], torch.Tensor]) -> Result:
    """``softmax(z)`` over the last axis, including logits of size 1000 (numerical stability)."""
    failures: list[tuple[str, str]] = []
    for z in _SOFTMAX_CASES:
        _call_and_compare("softmax", failures, softmax, (z.clone(),), torch.softmax(z, dim=-1),
                          f"softmax({_fmt(z)})")
    return _result("softmax", failures, "matches torch.softmax, including logits of ±1000")


def check_softmax_jacobian(jacobian: Callable[[torch.Tensor], torch.Tensor]) -> Result:
    """``jacobian(z)``: the (V, V) matrix ∂softmax(z)_i / ∂z_j for a vector z."""
    failures: list[tuple[str, str]] = []
    for z in (torch.tensor([0.2, -1.0, 0.7], dtype=torch.float64),
              torch.tensor([2.0, 0.0, 0.0, -3.0], dtype=torch.float64)):
        want = torch.autograd.functional.jacobian(lambda u: torch.softmax(u, dim=-1), z)
        _call_and_compare("softmax_jacobian", failures, jacobian, (z.clone(),), want,
                          f"jacobian({_fmt(z)}) (from torch.autograd.functional.jacobian)", atol=1e-8)
    return _result("softmax_jacobian", failures, "equals diag(p) − p pᵀ (autograd)")


def check_logsumexp(logsumexp: Callable[[torch.Tensor], torch.Tensor]) -> Result:
    """``logsumexp(x)`` over the last axis, stable for large and very negative x."""
    failures: list[tuple[str, str]] = []
    for z in _SOFTMAX_CASES:
        _call_and_compare("logsumexp", failures, logsumexp, (z.clone(),), torch.logsumexp(z, dim=-1),
                          f"logsumexp({_fmt(z)})", atol=1e-8)
    return _result("logsumexp", failures, "matches torch.logsumexp, including inputs of ±1000")


# --------------------------------------------------------------------------------------------
# 2. probability: KL, the score of a Bernoulli policy
# --------------------------------------------------------------------------------------------

def check_kl(kl: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Result:
    """``kl(p, q)`` = KL(p‖q) for probability vectors (zeros in p allowed); the order matters."""
    failures: list[tuple[str, str]] = []
    cases = (
        (torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)),
        (torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64), torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)),
        (torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64), torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)),
    )
    for p, q in cases:
        want = F.kl_div(torch.log(q), p, reduction="sum")  # Σ p (log p − log q), 0 where p = 0
        _call_and_compare("kl", failures, kl, (p.clone(), q.clone()), want,
                          f"KL({_fmt(p)} ‖ {_fmt(q)})", atol=1e-8)
    return _result("kl", failures, "KL(p‖q) on three pairs, both orders, a zero in p")


def check_bernoulli_score(mean_var: Callable[[float], tuple[float, float]]) -> Result:
    """``mean_var(p)``: mean and variance of d/dθ log P(a), a ~ Bernoulli(p), p = σ(θ)."""
    failures: list[tuple[str, str]] = []
    for p in (0.1, 0.5, 0.8):
        got, err = _run("bernoulli_score", mean_var, p)
        want = (0.0, p * (1 - p))
        label = f"(mean, variance) of the score at p = {p}"
        if err is not None:
            failures.append((label, err))
            continue
        try:
            m, v = (float(got[0]), float(got[1]))
        except Exception:  # noqa: BLE001
            failures.append((f"{label}: a pair of numbers", repr(got)[:200]))
            continue
        if not (abs(m - want[0]) < 1e-9 and abs(v - want[1]) < 1e-9):
            failures.append((f"{label}: ({want[0]:.4g}, {want[1]:.4g})", f"({m:.4g}, {v:.4g})"))
    return _result("bernoulli_score", failures, "mean 0 (EGLP) and variance p(1 − p)")


# --------------------------------------------------------------------------------------------
# 3. autograd, masks, broadcasting
# --------------------------------------------------------------------------------------------

def _autograd_f(x: torch.Tensor) -> torch.Tensor:
    return (x ** 2 * F.softplus(x)).sum()


def check_autograd(grad_f: Callable[[torch.Tensor], torch.Tensor]) -> Result:
    """``grad_f(x)``: the gradient of f(x) = Σ x_i² log(1 + e^{x_i}), computed with autograd."""
    failures: list[tuple[str, str]] = []
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5], dtype=torch.float64)
    want = 2 * x * F.softplus(x) + x ** 2 * torch.sigmoid(x)
    _call_and_compare("autograd", failures, grad_f, (x.clone(),), want,
                      "∇f at x = [-2, -0.5, 0, 1.5]: 2x·softplus(x) + x²·σ(x)", atol=1e-8)
    return _result("autograd", failures, "autograd gradient equals 2x·softplus(x) + x²·σ(x)")


def check_masked_mean(mean_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Result:
    """``mean_fn(x, mask)``: the mean of x over the positions where mask == 1 (one number)."""
    failures: list[tuple[str, str]] = []
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]], dtype=torch.float64)
    m = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.float64)
    _call_and_compare("masked_mean", failures, mean_fn, (x.clone(), m.clone()), masked_mean(x, m),
                      "mean of the 4 counted values 2, 3, 30, 40")
    return _result("masked_mean", failures, "mean over counted tokens only (18.75)")


def check_broadcasting(weighted: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Result:
    """``weighted(logp, adv)``: logp (B, T) times one advantage per row, adv of shape (B,).

    Tested with B == T, where the wrong broadcast ``adv * logp`` runs silently.
    """
    failures: list[tuple[str, str]] = []
    logp = -torch.arange(1, 17, dtype=torch.float64).reshape(4, 4) / 10
    adv = torch.tensor([1.0, -1.0, 2.0, 0.0], dtype=torch.float64)
    _call_and_compare("broadcasting", failures, weighted, (logp.clone(), adv.clone()), adv[:, None] * logp,
                      "row i scaled by adv[i] (B = T = 4)")
    logp2 = -torch.arange(1, 7, dtype=torch.float64).reshape(2, 3) / 10
    adv2 = torch.tensor([3.0, -2.0], dtype=torch.float64)
    _call_and_compare("broadcasting", failures, weighted, (logp2.clone(), adv2.clone()), adv2[:, None] * logp2,
                      "row i scaled by adv[i] (B = 2, T = 3)")
    return _result("broadcasting", failures, "adv[:, None] * logp, also when B == T")


# --------------------------------------------------------------------------------------------
# 4. attention, cross-entropy, a transformer, next-token log-probs, sampling
# --------------------------------------------------------------------------------------------

def check_causal_attention(attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> Result:
    """``attention(q, k, v)``: single-head causal attention, q, k, v of shape (T, d)."""
    failures: list[tuple[str, str]] = []
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    want = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]
    _call_and_compare("causal_attention", failures, attention, (q.clone(), k.clone(), v.clone()), want,
                      "softmax(q kᵀ/√d with −inf above the diagonal) v (torch's scaled_dot_product_attention)",
                      atol=1e-8)
    return _result("causal_attention", failures, "matches scaled_dot_product_attention(is_causal=True)")


def check_cross_entropy(nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Result:
    """``nll(logits, targets)``: mean of −log softmax(logits)[target], without F.cross_entropy."""
    failures: list[tuple[str, str]] = []
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [-3.0, 4.0, 1.0]], dtype=torch.float64)
    targets = torch.tensor([0, 2, 2])
    _call_and_compare("cross_entropy", failures, nll, (logits.clone(), targets.clone()),
                      F.cross_entropy(logits, targets), "F.cross_entropy(logits, targets)", atol=1e-8)
    return _result("cross_entropy", failures, "equals F.cross_entropy = mean of −log p(target)")


def check_llama_forward(make_model: Callable[[], Any]) -> Result:
    """``make_model()``: a randomly initialised transformers LlamaForCausalLM, vocab 16, ≤ 1M params.

    Checks the logits' shape and that the model is causal: changing the last token leaves the
    logits of every earlier position unchanged.
    """
    failures: list[tuple[str, str]] = []
    model, err = _run("llama_forward", make_model)
    if err is not None:
        return _result("llama_forward", [("a LlamaForCausalLM", err)], "")
    from transformers import LlamaForCausalLM  # the field's own model class

    if not isinstance(model, LlamaForCausalLM):
        return _result("llama_forward", [("a transformers LlamaForCausalLM", type(model).__name__)], "")
    vocab = model.config.vocab_size
    n_params = sum(p.numel() for p in model.parameters())
    if vocab != 16:
        failures.append(("config.vocab_size == 16", str(vocab)))
    if n_params > 1_000_000:
        failures.append(("at most 1,000,000 parameters (a tiny config)", f"{n_params:,}"))
    if not failures:
        model.eval()
        ids = torch.tensor([[1, 5, 7, 2, 9], [3, 3, 8, 0, 4]])
        ids2 = ids.clone()
        ids2[:, -1] = (ids2[:, -1] + 1) % vocab
        with torch.no_grad():
            a = model(input_ids=ids).logits
            b = model(input_ids=ids2).logits
        if tuple(a.shape) != (2, 5, vocab):
            failures.append(("logits of shape (2, 5, 16)", f"shape {tuple(a.shape)}"))
        elif not torch.allclose(a[:, :-1], b[:, :-1], atol=1e-5):
            failures.append(("logits at positions 0..3 unchanged when token 4 changes (causal)",
                             f"max change {float((a[:, :-1] - b[:, :-1]).abs().max()):.3g}"))
    return _result("llama_forward", failures,
                   f"LlamaForCausalLM, {n_params:,} parameters, logits (B, T, 16), causal")


def check_next_token_logprobs(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Result:
    """``fn(logits, input_ids)``: (B, T−1) log-probs of tokens 1..T−1 given their prefixes."""
    failures: list[tuple[str, str]] = []
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    want = token_logprobs(logits[:, :-1], ids[:, 1:])
    _call_and_compare("next_token_logprobs", failures, fn, (logits.clone(), ids.clone()), want,
                      "log_softmax(logits[:, :-1]) gathered at input_ids[:, 1:], shape (2, 4)", atol=1e-8)
    return _result("next_token_logprobs", failures, "logits shifted by one against the labels")


def check_sampling(sample: Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]) -> Result:
    """``sample(logits, n, generator)``: n token ids drawn from softmax(logits) with ``generator``.

    Checks: reproducible with the same seed, different with another seed, and the frequencies
    within 5 standard errors of softmax(logits) over 20,000 draws.
    """
    failures: list[tuple[str, str]] = []
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    probs = torch.softmax(logits, dim=-1)
    draws = []
    for seed in (7, 7, 8):
        got, err = _run("sampling", sample, logits.clone(), 20_000, torch.Generator().manual_seed(seed))
        if err is not None:
            return _result("sampling", [("20,000 token ids", err)], "")
        if not isinstance(got, torch.Tensor) or got.numel() != 20_000 or got.is_floating_point():
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return _result("sampling", [("an integer tensor of 20,000 token ids", str(shape))], "")
        draws.append(got.flatten())
    if not torch.equal(draws[0], draws[1]):
        failures.append(("the same draws for two generators seeded 7 (use generator=...)", "different draws"))
    if torch.equal(draws[0], draws[2]):
        failures.append(("different draws for seeds 7 and 8", "identical draws"))
    freq = torch.bincount(draws[0], minlength=4)[:4].double() / 20_000
    se = torch.sqrt(probs.double() * (1 - probs.double()) / 20_000)
    if int(draws[0].min()) < 0 or int(draws[0].max()) > 3 or bool(((freq - probs.double()).abs() > 5 * se).any()):
        failures.append((f"frequencies ≈ softmax(logits) = {_fmt(probs)}", f"{_fmt(freq)}"))
    return _result("sampling", failures, "reproducible, seed-dependent, frequencies within 5 SE of softmax")


def summary(results: list[Result]) -> str:
    """One line per item and the count passed, for the last cell of the notebook."""
    lines = [("PASS  " if r.passed else "FAIL  ") + r.name for r in results]
    n_ok = sum(r.passed for r in results)
    lines.append(f"{n_ok}/{len(results)} passed" + ("" if n_ok == len(results) else
                 " — the review pointers above say what to read for each FAIL"))
    return "\n".join(lines)

