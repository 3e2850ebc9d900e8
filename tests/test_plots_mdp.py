"""Figures and data functions of notebook 01 (the token-level MDP): each builder draws what it says,
and each data function has the property the notebook relies on. An untrained tiny model stands in for
the SFT start, so that these tests never train."""

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rlcourse import plots  # noqa: E402
from rlcourse.lm import load_model, reward  # noqa: E402
from rlcourse.plots import mdp as M  # noqa: E402

NAMES = ["01_temperature", "01_attention", "01_topk_actions", "01_toy_sequences"]


@pytest.fixture(scope="module")
def lm():
    model, tok = load_model("tiny", device="cpu", seed=0)
    model.eval()
    return model, tok


@pytest.fixture
def untrained(monkeypatch, lm):
    """Builders that need the SFT start get the untrained model instead."""
    monkeypatch.setattr(M, "_trained_model", lambda: lm)
    return lm


# ----------------------------------------------------------------------------- builders

def test_every_figure_of_notebook_01_is_registered():
    assert set(NAMES) <= set(plots.BUILDERS)
    assert all(plots.BUILDERS[n].__module__ == M.__name__ for n in NAMES)


def test_temperature_figure_has_one_bar_per_token_and_temperature(untrained):
    fig = plots.BUILDERS["01_temperature"]()
    (ax,) = fig.axes
    top = 10
    assert len(ax.patches) == len(M.TEMPERATURES) * (top + 1)   # top tokens + "others"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"T = {T:g}" for T in M.TEMPERATURES]
    plt.close(fig)


def test_attention_figure_has_one_causal_heatmap_per_head(untrained):
    model, _ = untrained
    fig = plots.BUILDERS["01_attention"]()
    heads = [ax for ax in fig.axes if ax.get_images()]
    assert len(heads) == model.config.num_attention_heads
    img = heads[0].get_images()[0].get_array()
    assert np.ma.is_masked(img) and img.mask[0, 1] and not img.mask[1, 0]   # upper triangle hidden
    plt.close(fig)


def test_topk_figure_has_three_panels_with_k_bars_and_the_taken_token_highlighted(untrained):
    model, tok = untrained
    steps = M.topk_steps(model, tok, M.PROMPT, max_new_tokens=3)   # an untrained model never stops: 3 steps
    fig = M.plot_topk_steps(steps)
    assert len(fig.axes) == 3
    for ax, st in zip(fig.axes, steps):
        assert len(ax.patches) == M.TOP_K
        assert st["name"] in ax.get_title()
    plt.close(fig)
    fig = plots.BUILDERS["01_topk_actions"]()
    assert 1 <= len(fig.axes) <= 3
    plt.close(fig)


def test_toy_sequences_figure_has_one_bar_per_sequence_and_shows_j():
    fig = plots.BUILDERS["01_toy_sequences"]()
    (ax,) = fig.axes
    mdp, theta = M.outcome_mdp()
    assert len(ax.patches) == mdp.num_sequences
    assert f"{float(mdp.objective(theta)):.4f}" in ax.get_title()
    plt.close(fig)


# ----------------------------------------------------------------------------- data: the LM

def test_next_token_logits_are_those_of_the_last_position(lm):
    model, tok = lm
    z = M.next_token_logits(model, tok, "12+7=")
    ids = torch.tensor([tok.encode("12+7=")])
    with torch.no_grad():
        full = model(input_ids=ids).logits[0, -1]
    assert z.shape == (len(tok),)
    torch.testing.assert_close(z, full, atol=1e-5, rtol=0)


def test_attention_weights_are_causal_distributions_and_the_implementation_is_restored(lm):
    model, tok = lm
    before = model.config._attn_implementation
    tokens, w = M.attention_weights(model, tok, "12+7=19", layer=1)
    L = len("12+7=19") + 1
    assert tokens[0] == tok.bos_token and len(tokens) == L
    assert w.shape == (model.config.num_attention_heads, L, L)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert np.abs(np.triu(w, 1)).max() == 0.0                 # no weight on future tokens
    assert model.config._attn_implementation == before
    with pytest.raises(ValueError, match="layer"):
        M.attention_weights(model, tok, "1+1=", layer=99)


def test_greedy_steps_take_the_argmax_and_record_its_logprob(lm):
    model, tok = lm
    g = M.greedy_steps(model, tok, "12+7=", max_new_tokens=4, temperature=0.7)
    T = len(g["actions"])
    assert g["logits"].shape == (T, len(tok)) and g["logprobs"].shape == (T,)
    ids = tok.convert_tokens_to_ids(g["actions"])
    assert g["logits"].argmax(-1).tolist() == ids
    lp = torch.log_softmax(g["logits"] / 0.7, -1)[torch.arange(T), torch.tensor(ids)]
    torch.testing.assert_close(lp, g["logprobs"], atol=1e-5, rtol=0)
    assert g["states"][0] == tok.bos_token + "12+7="
    assert all(g["states"][t + 1] == g["states"][t] + g["actions"][t] for t in range(T - 1))


def test_topk_actions_are_ranked_and_consistent(lm):
    _, tok = lm
    z = torch.randn(len(tok), generator=torch.Generator().manual_seed(0))
    rows = M.topk_actions(z, tok, k=5, temperature=0.5)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    probs = [r["prob"] for r in rows]
    assert probs == sorted(probs, reverse=True)
    assert all(math.isclose(r["prob"], math.exp(r["logprob"]), rel_tol=1e-12) for r in rows)
    assert rows[0]["id"] == int(z.argmax())
    everything = M.topk_actions(z, tok, k=len(tok))
    assert math.isclose(sum(r["prob"] for r in everything), 1.0, abs_tol=1e-9)
    for bad in ({"k": 0}, {"k": len(tok) + 1}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            M.topk_actions(z, tok, **bad)
    with pytest.raises(ValueError, match="logits"):
        M.topk_actions(z[None], tok)


def test_topk_steps_pick_first_second_and_last(lm):
    model, tok = lm
    steps = M.topk_steps(model, tok, "12+7=", k=4, max_new_tokens=5)
    assert [s["name"] for s in steps] == ["first step", "second step", "last step"]
    assert [s["step"] for s in steps] == [0, 1, 4]
    assert all(len(s["rows"]) == 4 for s in steps)


# ----------------------------------------------------------------------------- data: the toy MDP

def test_outcome_mdp_pays_the_lm_reward_once_at_the_end():
    mdp, theta = M.outcome_mdp()
    rows = M.sequence_table(mdp, theta)
    assert len(rows) == mdp.num_sequences == 15
    seq = mdp.sequences
    for n, r in enumerate(rows):
        assert r["return"] == reward(r["text"], M.TOY_ANSWER, r["finished"])
        L = int(seq.lengths[n])
        assert torch.all(seq.token_rewards[n, :L - 1] == 0)        # outcome reward: nothing before the end
    by_text = {" ".join(r["tokens"]): r["return"] for r in rows}
    assert by_text["2 <eos>"] == 1.0 and by_text["1 <eos>"] == 0.0 and by_text["<eos>"] == -0.5
    assert by_text["2 2 2"] == -0.5                                  # cut off at the horizon


def test_sequence_probabilities_are_products_of_step_probabilities_and_sum_to_one():
    mdp, theta = M.outcome_mdp(temperature=0.7)
    rows = M.sequence_table(mdp, theta)
    for r in rows:
        assert math.isclose(r["prob"], math.prod(r["step_probs"]), rel_tol=1e-12)
    assert math.isclose(sum(r["prob"] for r in rows), 1.0, abs_tol=1e-12)
    J = sum(r["prob"] * r["return"] for r in rows)
    assert math.isclose(J, float(mdp.objective(theta)), abs_tol=1e-12)


def test_lower_temperature_concentrates_the_sequence_distribution():
    def entropy(T):
        mdp, theta = M.outcome_mdp(temperature=T)
        p = mdp.probabilities(theta)
        return float(-(p * p.log()).sum())

    assert entropy(0.25) < entropy(1.0) < entropy(4.0)


# ----------------------------------------------------------------------------- plot functions

def test_plot_functions_reject_bad_inputs():
    with pytest.raises(ValueError, match="labels"):
        M.plot_temperature(torch.zeros(5), ["a"] * 4)
    with pytest.raises(ValueError, match="weights"):
        M.plot_attention(np.zeros((2, 3, 4)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="steps"):
        M.plot_topk_steps([])
    with pytest.raises(ValueError, match="rows"):
        M.plot_sequence_probabilities([])


def test_temperature_bars_are_softmax_at_each_temperature():
    z = torch.tensor([2.0, 1.0, 0.0, -1.0])
    fig = M.plot_temperature(z, ["a", "b", "c", "d"], temperatures=(0.5, 2.0), top=4)
    (ax,) = fig.axes
    heights = np.array([p.get_height() for p in ax.patches]).reshape(2, 5)
    for i, T in enumerate((0.5, 2.0)):
        np.testing.assert_allclose(heights[i, :4], torch.softmax(z.double() / T, -1).numpy(), atol=1e-12)
        assert abs(heights[i, 4]) < 1e-12                     # nothing outside the top 4
    plt.close(fig)
