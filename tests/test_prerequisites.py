"""The prerequisites self-check (notebook 00): each check accepts a correct answer and rejects a
plausible wrong one with a message that says what was expected and where to look."""

import pytest
import torch
import torch.nn.functional as F

from rlcourse import prereq


# ---- correct answers (the ones committed in notebook 00) -----------------------------------

def softmax_ok(z):
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def jacobian_ok(z):
    p = torch.softmax(z, dim=-1)
    return torch.diag(p) - torch.outer(p, p)


def logsumexp_ok(x):
    m = x.max(dim=-1, keepdim=True).values
    return (m + torch.log(torch.exp(x - m).sum(dim=-1, keepdim=True))).squeeze(-1)


def kl_ok(p, q):
    return torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum()


def score_ok(p):
    return 0.0, p * (1 - p)


def grad_ok(x):
    x = x.clone().requires_grad_(True)
    f = (x ** 2 * torch.log1p(torch.exp(x))).sum()
    return torch.autograd.grad(f, x)[0]


def masked_mean_ok(x, m):
    return (x * m).sum() / m.sum()


def weighted_ok(logp, adv):
    return adv[:, None] * logp


def attention_ok(q, k, v):
    t, d = q.shape
    s = q @ k.T / d ** 0.5
    s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def nll_ok(logits, y):
    return -torch.log_softmax(logits, dim=-1).gather(-1, y[:, None]).squeeze(-1).mean()


def make_model_ok():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def next_logprobs_ok(logits, ids):
    return torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def sample_ok(logits, n, generator):
    return torch.multinomial(torch.softmax(logits, dim=-1), n, replacement=True, generator=generator)


# ---- plausible wrong answers ----------------------------------------------------------------

def make_model_bidirectional():
    """A model that is not causal: the same Llama with its causal mask replaced by all-ones."""
    model = make_model_ok()
    forward = model.forward

    def full_attention(input_ids=None, **kw):
        b, t = input_ids.shape
        mask = torch.zeros(b, 1, t, t)  # additive 4-D mask: every position sees every position
        return forward(input_ids=input_ids, attention_mask=mask, **kw)

    model.forward = full_attention
    return model


def make_model_big_vocab():
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4))


CASES = [
    # (check, correct answer, wrong answer, why the wrong one is plausible)
    (prereq.check_softmax, softmax_ok, lambda z: torch.exp(z) / torch.exp(z).sum(-1, keepdim=True),
     "naive exp overflows at 1000"),
    (prereq.check_softmax, softmax_ok, lambda z: torch.exp(z) / torch.exp(z).sum(),
     "normalised over the whole tensor, not the last axis"),
    (prereq.check_softmax_jacobian, jacobian_ok,
     lambda z: torch.diag(torch.softmax(z, -1)), "diagonal only"),
    (prereq.check_logsumexp, logsumexp_ok, lambda x: torch.log(torch.exp(x).sum(-1)), "naive, overflows"),
    (prereq.check_kl, kl_ok, lambda p, q: (q * (torch.log(q) - torch.log(p))).sum(), "reversed KL(q‖p)"),
    (prereq.check_kl, kl_ok, lambda p, q: (p * (torch.log(p) - torch.log(q))).sum(), "0·log 0 gives NaN"),
    (prereq.check_bernoulli_score, score_ok, lambda p: (p, p * (1 - p)), "mean of a, not of the score"),
    (prereq.check_bernoulli_score, score_ok, lambda p: (0.0, p), "variance of the wrong quantity"),
    (prereq.check_autograd, grad_ok, lambda x: 2 * x * F.softplus(x), "product rule: second term forgotten"),
    (prereq.check_masked_mean, masked_mean_ok, lambda x, m: (x * m).mean(), "divides by B·T"),
    (prereq.check_broadcasting, weighted_ok, lambda logp, adv: adv * logp, "broadcast along T when B == T"),
    (prereq.check_causal_attention, attention_ok,
     lambda q, k, v: torch.softmax((q @ k.T / q.shape[1] ** 0.5) * torch.tril(torch.ones(q.shape[0], q.shape[0],
                                                                                         dtype=q.dtype)), -1) @ v,
     "multiplicative 0/1 mask before the softmax"),
    (prereq.check_causal_attention, attention_ok,
     lambda q, k, v: torch.softmax(q @ k.T / q.shape[1] ** 0.5, -1) @ v, "no mask"),
    (prereq.check_cross_entropy, nll_ok,
     lambda logits, y: -torch.softmax(logits, -1).gather(-1, y[:, None]).mean(), "−p instead of −log p"),
    (prereq.check_llama_forward, make_model_ok, make_model_bidirectional, "bidirectional attention"),
    (prereq.check_llama_forward, make_model_ok, make_model_big_vocab, "wrong vocabulary size"),
    (prereq.check_next_token_logprobs, next_logprobs_ok,
     lambda logits, ids: torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)[:, 1:],
     "logits and labels not shifted (position t scored against its own token)"),
    (prereq.check_sampling, sample_ok,
     lambda logits, n, g: torch.full((n,), int(logits.argmax())), "greedy: argmax"),
    (prereq.check_sampling, sample_ok,
     lambda logits, n, g: torch.multinomial(torch.softmax(logits, -1), n, replacement=True),
     "ignores the generator (global RNG)"),
    (prereq.check_sampling, sample_ok,
     lambda logits, n, g: torch.multinomial(torch.softmax(-logits, -1), n, replacement=True, generator=g),
     "samples from softmax(−logits)"),
]


@pytest.mark.parametrize("check,good,bad,why", CASES, ids=[c[3] for c in CASES])
def test_check_accepts_correct_answer_and_rejects_plausible_wrong_one(check, good, bad, why):
    ok = check(good)
    assert ok.passed, str(ok)
    assert str(ok).startswith("PASS")
    wrong = check(bad)
    assert not wrong.passed, f"{check.__name__} accepted a wrong answer ({why})"
    text = str(wrong)
    assert text.startswith("FAIL") and "expected:" in text and "got:" in text
    assert "review:" in text and prereq.POINTERS[wrong.name] in text


def test_every_item_has_a_check_and_a_negative_control():
    checked = {c[0].__name__.removeprefix("check_") for c in CASES}
    assert checked == set(prereq.ITEMS)
    assert len(prereq.ITEMS) >= 12


def test_an_exception_in_the_answer_is_reported_as_a_failure_not_raised():
    def broken(z):
        raise RuntimeError("shape mismatch in my code")

    r = prereq.check_softmax(broken)
    assert not r.passed and "RuntimeError" in r.observed and "shape mismatch in my code" in r.observed


def test_an_answer_that_is_not_a_function_is_a_failure_naming_its_type():
    r = prereq.check_kl(0.3)
    assert not r.passed and "float" in r.observed


def test_a_wrong_shape_is_reported_with_both_shapes():
    r = prereq.check_next_token_logprobs(lambda logits, ids: torch.log_softmax(logits, -1).gather(
        -1, ids[..., None]).squeeze(-1))
    assert not r.passed and "(2, 4)" in r.expected and "(2, 5)" in r.observed


def test_summary_counts_passes_and_failures():
    results = [prereq.check_softmax(softmax_ok), prereq.check_kl(lambda p, q: torch.tensor(0.0))]
    s = prereq.summary(results)
    assert "PASS  softmax" in s and "FAIL  kl" in s and "1/2 passed" in s
