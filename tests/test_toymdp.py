"""The toy MDP is the ground truth of the course: check it against independent computations."""

import pytest
import torch

from rlcourse.toymdp import ToyMDP, ToyProblem, course_problem


@pytest.fixture(scope="module")
def mdp():
    return ToyMDP.random(vocab_size=3, horizon=3, seed=0)


def test_enumeration_counts_every_sequence_once(mdp):
    # words = V-1 non-eos tokens; sequences: eos at step t < H, or H words
    w, H = mdp.vocab_size - 1, mdp.horizon
    expected = sum(w**t for t in range(H)) + w**H
    assert mdp.num_sequences == expected
    assert len(mdp.sequence_index) == expected


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_probabilities_sum_to_one(mdp, temperature):
    m = ToyMDP(mdp.vocab_size, mdp.horizon, mdp.token_reward, mdp.terminal_reward, temperature=temperature)
    p = m.probabilities(m.init_params(seed=3))
    assert torch.isclose(p.sum(), torch.tensor(1.0, dtype=p.dtype), atol=1e-12)


def test_root_value_equals_objective(mdp):
    theta = mdp.init_params(seed=1)
    for gamma in (1.0, 0.7, 0.0):
        assert torch.isclose(mdp.state_values(theta, gamma)[0], mdp.objective(theta, gamma), atol=1e-12)


def test_score_matches_autograd_of_sequence_logprob(mdp):
    theta = mdp.init_params(seed=2)
    n = 4
    th = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mdp.sequence_logprobs(th)[n], th)
    assert torch.allclose(mdp.score(theta)[n], g, atol=1e-12)
    assert torch.allclose(mdp.token_scores(theta).sum(1), mdp.score(theta), atol=1e-12)


def test_sampler_frequencies_match_exact_probabilities(mdp):
    theta = mdp.init_params(seed=1)
    n = 40000
    idx = mdp.sample(theta, n, seed=0)
    freq = torch.bincount(idx, minlength=mdp.num_sequences).double() / n
    p = mdp.probabilities(theta)
    se = (p * (1 - p) / n).sqrt()
    assert bool(((freq - p).abs() <= 5 * se + 1e-12).all())


def test_sampler_is_seeded(mdp):
    theta = mdp.init_params(seed=1)
    assert torch.equal(mdp.sample(theta, 50, seed=7), mdp.sample(theta, 50, seed=7))


def test_advantage_has_zero_mean_under_policy(mdp):
    theta = mdp.init_params(seed=1)
    pi = mdp.policy_logprobs(theta).exp()
    assert torch.allclose((pi * mdp.advantages(theta, 0.9)).sum(-1), torch.zeros(mdp.num_states, dtype=pi.dtype),
                          atol=1e-12)


def test_visitation_of_root_is_one(mdp):
    theta = mdp.init_params(seed=1)
    assert torch.isclose(mdp.state_visitation(theta)[0], torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("kwargs, arg", [
    (dict(vocab_size=1, horizon=3), "vocab_size"),
    (dict(vocab_size=3, horizon=0), "horizon"),
    (dict(vocab_size=3, horizon=2, temperature=0.0), "temperature"),
    (dict(vocab_size=3, horizon=2, token_reward=torch.zeros(2, 2)), "token_reward"),
])
def test_bad_construction_is_rejected(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        ToyMDP(**kwargs)


def test_bad_theta_and_sample_arguments_are_rejected(mdp):
    with pytest.raises(ValueError, match="theta"):
        mdp.objective(torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="theta"):
        mdp.objective(torch.full((mdp.num_states, mdp.vocab_size), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="gamma"):
        mdp.objective(mdp.init_params(), gamma=1.5)
    with pytest.raises(ValueError, match="n must"):
        mdp.sample(mdp.init_params(), 0)


def test_toy_problem_builds_the_mdp_and_policy_of_its_seeds_and_the_course_problem_is_its_defaults():
    mdp, theta = ToyProblem(vocab_size=4, horizon=2, mdp_seed=7, theta_seed=3).build()
    ref = ToyMDP.random(vocab_size=4, horizon=2, seed=7)
    assert (mdp.vocab_size, mdp.horizon) == (4, 2)
    assert torch.equal(mdp.token_reward, ref.token_reward) and torch.equal(mdp.terminal_reward, ref.terminal_reward)
    assert torch.equal(theta, ref.init_params(seed=3))
    course, course_theta = course_problem()
    assert (course.vocab_size, course.horizon, course.num_sequences, course_theta.numel()) == (3, 3, 15, 21)
    assert torch.equal(course_theta, ToyMDP.random(3, 3, seed=0).init_params(seed=1))
    # negative control: the policy seed matters (seed 0 would be another policy)
    assert not torch.equal(course_theta, ToyMDP.random(3, 3, seed=0).init_params(seed=0))


@pytest.mark.parametrize("field, value", [("vocab_size", 1), ("horizon", 0), ("mdp_seed", -1), ("theta_seed", 1.5),
                                          ("horizon", True)])
def test_toy_problem_refuses_a_bad_field_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        ToyProblem(**{field: value})
