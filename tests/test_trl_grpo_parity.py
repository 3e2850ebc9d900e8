"""Our GRPO and DPO losses equal TRL 1.16's, computed by TRL's own trainer code.

We call the real (unbound) ``GRPOTrainer._compute_loss`` and ``DPOTrainer._compute_loss`` with
a ``SimpleNamespace`` standing in for ``self``: it carries exactly the attributes these methods
read, and the model forward is stubbed to return fixed log-probs. The loss arithmetic that
runs is therefore TRL's, not a transcription of it. Values and gradients (w.r.t. the policy
log-probs) must agree to 1e-6 in float64.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")

from rlcourse.losses import TRL_LOSS_TYPE_TO_AGGREGATION, grpo_loss  # noqa: E402
from rlcourse.preference import dpo_loss  # noqa: E402

ATOL = 1e-6


# ----------------------------------------------------------------------------- GRPO

def _grpo_inputs(seed: int, B: int = 6, T: int = 7, P: int = 3):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.01
    logp_old = (logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=-1e-3)  # many ratios outside [0.8, 1.2]
    logp_ref = (logp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    advantages = torch.randn(B, generator=g, dtype=torch.float64)
    return logp, logp_old, logp_ref, mask, advantages, P


def _trl_grpo_loss(logp_leaf, logp_old, logp_ref, mask, advantages, P, *, loss_type, level, beta,
                   eps_low, eps_high, delta, bias_correction, max_completion_length, num_items_in_batch):
    B, T = mask.shape

    def fake_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        assert logits_to_keep == T
        return logp_leaf, torch.zeros_like(logp_leaf), None

    identity = lambda x, **kw: x  # noqa: E731  one process: gather/reduce are identities
    stand_in = SimpleNamespace(
        _get_per_token_logps_and_entropies=fake_logps_and_entropies,
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=False),  # eval mode: no gradient-accumulation rescaling
        current_gradient_accumulation_steps=1,
        max_completion_length=max_completion_length,
        accelerator=SimpleNamespace(num_processes=1, gather=identity, reduce=identity, gather_for_metrics=identity),
        args=SimpleNamespace(use_bias_correction_kl=bias_correction, delta=delta, steps_per_generation=1),
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    inputs = {
        "prompt_ids": torch.zeros(B, P, dtype=torch.long),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": logp_old,
        "ref_per_token_logps": logp_ref,
        "num_items_in_batch": torch.tensor(float(num_items_in_batch), dtype=torch.float64),
    }
    return trl_grpo.GRPOTrainer._compute_loss(stand_in, None, inputs)


# loss_type x importance_sampling_level x (beta, use_bias_correction_kl); the correction only acts when beta > 0
def _our_normalisers(loss_type, max_completion_length, num_items_in_batch):
    """The extra arguments of grpo_loss that TRL reads from its config / inputs for a given loss_type."""
    if loss_type == "dr_grpo":
        return {"max_completion_length": max_completion_length}
    if loss_type == "dapo":
        return {"total_tokens": num_items_in_batch}
    return {}


GRPO_CASES = list(itertools.product(
    ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"],
    ["token", "sequence"],
    [(0.0, False), (0.04, False), (0.04, True)],
))


@pytest.mark.parametrize("loss_type,level,beta_and_correction", GRPO_CASES)
def test_grpo_loss_and_gradient_equal_trl_compute_loss(loss_type, level, beta_and_correction):
    beta, bias_correction = beta_and_correction
    seed = GRPO_CASES.index((loss_type, level, beta_and_correction))
    logp, logp_old, logp_ref, mask, adv, P = _grpo_inputs(seed=seed)
    eps_low, eps_high, L_max = 0.2, 0.28, 9
    # "dapo" normalises by the token count of the whole generation batch (here: 3x this micro-batch's)
    num_items = 3 * int(mask.sum())

    theirs_leaf = logp.clone().requires_grad_(True)
    theirs = _trl_grpo_loss(theirs_leaf, logp_old, logp_ref, mask, adv, P, loss_type=loss_type, level=level,
                            beta=beta, eps_low=eps_low, eps_high=eps_high, delta=None,
                            bias_correction=bias_correction, max_completion_length=L_max,
                            num_items_in_batch=num_items)
    theirs.backward()

    ours_leaf = logp.clone().requires_grad_(True)
    ours, _ = grpo_loss(ours_leaf, logp_old, adv, mask, eps_low=eps_low, eps_high=eps_high,
                        importance_level=level, aggregation=TRL_LOSS_TYPE_TO_AGGREGATION[loss_type],
                        beta=beta, logp_ref=logp_ref if beta > 0 else None,
                        kl_importance_correction=bias_correction, **_our_normalisers(loss_type, L_max, num_items))
    ours.backward()

    assert theirs.item() != 0.0
    assert abs(ours.item() - theirs.item()) < ATOL, (ours.item(), theirs.item())
    assert torch.allclose(ours_leaf.grad, theirs_leaf.grad, atol=ATOL, rtol=0)


def test_grpo_parity_check_rejects_a_wrong_aggregation_and_a_missing_kl():
    """Negative control: the comparison above can fail (the loss types really differ on these inputs)."""
    logp, logp_old, logp_ref, mask, adv, P = _grpo_inputs(seed=11)
    common = dict(level="token", eps_low=0.2, eps_high=0.2, delta=None, bias_correction=False,
                  max_completion_length=9, num_items_in_batch=int(mask.sum()))
    theirs = _trl_grpo_loss(logp, logp_old, logp_ref, mask, adv, P, loss_type="grpo", beta=0.04, **common).item()
    wrong_agg, _ = grpo_loss(logp, logp_old, adv, mask, aggregation="token_mean", beta=0.04, logp_ref=logp_ref)
    no_kl, _ = grpo_loss(logp, logp_old, adv, mask, aggregation="seq_mean_token_mean")
    assert abs(wrong_agg.item() - theirs) > 1e-3
    assert abs(no_kl.item() - theirs) > 1e-3


@pytest.mark.parametrize("loss_type,level", [("grpo", "token"), ("dapo", "sequence"), ("bnpo", "token"),
                                             ("dr_grpo", "sequence")])
def test_grpo_two_sided_clip_delta_equals_trl(loss_type, level):
    logp, _, logp_ref, mask, _, P = _grpo_inputs(seed=7)
    g = torch.Generator().manual_seed(1)
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0, 1.5, -0.7], dtype=logp.dtype)
    # rows with A < 0 moved up by about e^0.6 = 1.8 > delta, so the two-sided bound is active
    shift = torch.tensor([0.0, 0.6, 0.0, 0.6, 0.0, 0.6], dtype=logp.dtype)[:, None]
    logp_old = (logp - shift + 0.5 * torch.randn(logp.shape, generator=g, dtype=logp.dtype)).clamp(max=-1e-3)
    delta = 1.5
    num_items = 2 * int(mask.sum())
    extra = _our_normalisers(loss_type, 9, num_items)
    theirs_leaf = logp.clone().requires_grad_(True)
    theirs = _trl_grpo_loss(theirs_leaf, logp_old, logp_ref, mask, adv, P, loss_type=loss_type, level=level,
                            beta=0.02, eps_low=0.2, eps_high=0.2, delta=delta, bias_correction=True,
                            max_completion_length=9, num_items_in_batch=num_items)
    theirs.backward()
    ours_leaf = logp.clone().requires_grad_(True)
    ours, _ = grpo_loss(ours_leaf, logp_old, adv, mask, importance_level=level,
                        aggregation=TRL_LOSS_TYPE_TO_AGGREGATION[loss_type], beta=0.02, logp_ref=logp_ref,
                        delta=delta, kl_importance_correction=True, **extra)
    ours.backward()
    lr = logp - logp_old
    ratio = lr.exp() if level == "token" else ((lr * mask).sum(-1) / mask.sum(-1)).exp()[:, None].expand_as(lr)
    assert bool(((ratio > delta) & (mask > 0) & (adv[:, None] < 0)).any()), "the test must exercise the delta bound"
    no_delta, _ = grpo_loss(logp, logp_old, adv, mask, importance_level=level,
                            aggregation=TRL_LOSS_TYPE_TO_AGGREGATION[loss_type], beta=0.02, logp_ref=logp_ref,
                            kl_importance_correction=True, **extra)
    assert abs(no_delta.item() - theirs.item()) > 1e-3  # ...and the bound changes the loss
    assert abs(ours.item() - theirs.item()) < ATOL
    assert torch.allclose(ours_leaf.grad, theirs_leaf.grad, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- DPO

def _trl_dpo_loss(pc_tok, pr_tok, ref_c, ref_r, comp_mask, *, loss_type, beta, label_smoothing):
    """TRL's DPOTrainer._compute_loss on a stand-in self; the model returns fixed per-token log-probs."""
    per_token = torch.cat([pc_tok, pr_tok], dim=0)  # batch is [chosen, rejected]
    n, T1 = comp_mask.shape

    def fake_model(**kwargs):
        assert kwargs["fused_lm_head"] is True
        zeros = torch.zeros(n, T1 - 1, dtype=per_token.dtype)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros(n, T1 - 1, dtype=torch.bool))

    identity = lambda x, **kw: x  # noqa: E731
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=False),
        accelerator=SimpleNamespace(device="cpu", gather=identity, gather_for_metrics=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
        use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": torch.zeros(n, T1, dtype=torch.long), "attention_mask": torch.ones(n, T1, dtype=torch.long),
              "completion_mask": comp_mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    return trl_dpo.DPOTrainer._compute_loss(stand_in, fake_model, inputs, return_outputs=False)


@pytest.mark.parametrize("loss_type,label_smoothing",
                         [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.0), ("robust", 0.2)])
def test_dpo_loss_and_gradient_equal_trl_compute_loss(loss_type, label_smoothing):
    g = torch.Generator().manual_seed(3)
    B, T, beta = 5, 6, 0.3
    comp_mask = torch.zeros(2 * B, T + 1, dtype=torch.long)  # column 0 is the prompt
    lengths = torch.randint(1, T + 1, (2 * B,), generator=g)
    for i, L in enumerate(lengths.tolist()):
        comp_mask[i, 1:1 + L] = 1
    tok = -torch.rand(2 * B, T, generator=g, dtype=torch.float64) * 2 * comp_mask[:, 1:]  # 0 off the completion
    ref = tok.sum(1) + torch.randn(2 * B, generator=g, dtype=torch.float64)
    ref_c, ref_r = ref[:B], ref[B:]

    leaf_t = tok.clone().requires_grad_(True)
    theirs = _trl_dpo_loss(leaf_t[:B], leaf_t[B:], ref_c, ref_r, comp_mask, loss_type=loss_type, beta=beta,
                           label_smoothing=label_smoothing)
    theirs.backward()

    leaf_o = tok.clone().requires_grad_(True)
    seq = leaf_o.sum(1)
    ref_seq = ref.clone()
    if loss_type == "ipo":  # TRL's IPO divides each log-ratio by the response length
        n_tok = comp_mask[:, 1:].sum(1).to(seq.dtype)
        seq, ref_seq = seq / n_tok, ref_seq / n_tok
    ours, chosen_rewards, rejected_rewards = dpo_loss(seq[:B], seq[B:], ref_seq[:B], ref_seq[B:], beta=beta,
                                                      loss_type=loss_type, label_smoothing=label_smoothing)
    ours.backward()

    assert abs(ours.item() - theirs.item()) < ATOL, (ours.item(), theirs.item())
    assert torch.allclose(leaf_o.grad, leaf_t.grad, atol=ATOL, rtol=0)
    if loss_type != "ipo":
        assert torch.allclose(chosen_rewards, beta * (tok[:B].sum(1) - ref_c))
        assert torch.allclose(rejected_rewards, beta * (tok[B:].sum(1) - ref_r))


# ----------------------------------------------------------------------------- per-token parity, verl names

@pytest.mark.parametrize("beta_and_correction", [(0.0, False), (0.04, True)])
def test_grpo_per_token_loss_and_gradient_equal_trl_read_through_one_token_masks(beta_and_correction):
    """TRL's "bnpo" loss under a mask with a single 1 at (i, t) is its per_token_loss[i, t]."""
    from rlcourse.losses import grpo_loss_per_token

    beta, correction = beta_and_correction
    logp, logp_old, logp_ref, mask, adv, P = _grpo_inputs(seed=21, B=3, T=4)
    ours_leaf = logp.clone().requires_grad_(True)
    ours = grpo_loss_per_token(ours_leaf, logp_old, adv, mask, eps_low=0.2, eps_high=0.28, beta=beta,
                               logp_ref=logp_ref if beta > 0 else None, kl_importance_correction=correction)
    for i in range(3):
        for t in range(4):
            one = torch.zeros_like(mask)
            one[i, t] = 1
            leaf = logp.clone().requires_grad_(True)
            theirs = _trl_grpo_loss(leaf, logp_old, logp_ref, one, adv, P, loss_type="bnpo", level="token", beta=beta,
                                    eps_low=0.2, eps_high=0.28, delta=None, bias_correction=correction,
                                    max_completion_length=4, num_items_in_batch=1)
            theirs.backward()
            (g,) = torch.autograd.grad(ours[i, t], ours_leaf, retain_graph=True)
            assert abs(float(ours[i, t]) - theirs.item()) < ATOL
            assert torch.allclose(g, leaf.grad, atol=ATOL, rtol=0)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"])
def test_verl_mode_names_reproduce_trl_loss_types(loss_type):
    from rlcourse.logprobs import TRL_LOSS_TYPE_TO_AGG_MODE

    logp, logp_old, logp_ref, mask, adv, P = _grpo_inputs(seed=31)
    num_items = 2 * int(mask.sum())
    theirs = _trl_grpo_loss(logp, logp_old, logp_ref, mask, adv, P, loss_type=loss_type, level="sequence"
                            if loss_type == "luspo" else "token", beta=0.0, eps_low=0.2, eps_high=0.2, delta=None,
                            bias_correction=False, max_completion_length=9, num_items_in_batch=num_items).item()
    ours, _ = grpo_loss(logp, logp_old, adv, mask, aggregation=TRL_LOSS_TYPE_TO_AGG_MODE[loss_type],
                        importance_level="sequence" if loss_type == "luspo" else "token",
                        **_our_normalisers(loss_type, 9, num_items))
    assert abs(ours.item() - theirs) < ATOL


def test_group_zscore_with_eps_1e4_equals_trls_group_scaling_with_its_nanstd():
    from trl.trainer.utils import nanstd

    from rlcourse.advantages import group_advantages

    g = torch.Generator().manual_seed(3)
    rewards = torch.randint(0, 3, (24,), generator=g).to(torch.float64)
    G = 4
    grouped = rewards.view(-1, G)
    mean = grouped.mean(1).repeat_interleave(G)
    std = nanstd(grouped, dim=1).repeat_interleave(G)
    trl = (rewards - mean) / (std + 1e-4)  # GRPOTrainer, scale_rewards="group"
    # TRL's nanstd (mean of squares x n/(n-1)) rounds differently from torch.std: ~2e-8 apart; target 1e-6
    assert torch.allclose(group_advantages(rewards, G, "zscore", eps=1e-4), trl, atol=ATOL, rtol=0)
    assert torch.allclose(group_advantages(rewards, G, "mean"), rewards - mean, atol=1e-12, rtol=0)  # "none"
