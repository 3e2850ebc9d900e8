"""The silent-bug lab: every detector fires on its bug and stays silent on clean code (and on the other
bugs); the trainers route every step a bug corrupts through the hook; bad bug names fail clearly.

Everything here is synthetic (lookup-table "models", the toy MDP, hand-built batches), except the
wiring test, which runs one step of each trainer on an untrained tiny model.
"""

from __future__ import annotations

import json

import pytest
import torch

from rlcourse.train import bugs
from rlcourse.train.grpo import GRPOConfig, grpo_update

NAMES = sorted(bugs.BUGS)


def test_the_lab_has_at_least_six_bugs_each_with_a_known_step_a_detector_and_a_trainer():
    assert len(bugs.BUGS) >= 6
    assert set(bugs.DETECTORS) == set(bugs.BUGS)
    for b in bugs.BUGS.values():
        assert b.step in bugs.STEPS
        assert b.trainers and set(b.trainers) <= {"grpo", "reinforce", "ppo"}
        assert b.hint and b.category and b.what


@pytest.mark.parametrize("name", NAMES)
def test_detector_fires_on_its_bug(name):
    finding = bugs.DETECTORS[name](bugs.Hooks(name))
    assert finding.fired, str(finding)


@pytest.mark.parametrize("name", NAMES)
def test_detector_is_silent_on_clean_code(name):
    finding = bugs.DETECTORS[name](bugs.Hooks())
    assert not finding.fired, str(finding)


def test_each_detector_fires_on_its_own_bug_only():
    """The detection matrix is diagonal, so the lab's mystery bug is named by exactly one detector."""
    matrix = bugs.detection_matrix()
    assert matrix == {"clean": [], **{n: [n] for n in bugs.BUGS}}


def test_clean_hooks_return_their_inputs_unchanged():
    hook = bugs.hooks(None)
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    assert hook.loss_mask(x, attention_mask=y) is x
    assert hook.advantages(x, rewards=y, group_size=3, mask=y) is x
    assert hook.old_logprobs(x, logp=y, mask=y) is x
    assert hook.kl_arguments(x, y) == (x, y)
    assert hook.logprobs(bugs.sequence_logprobs) is bugs.sequence_logprobs


def test_a_bug_changes_only_its_own_step():
    """Negative control of the one-place rule: advantage_sign leaves the mask, log-probs and KL arguments alone."""
    hook = bugs.hooks("advantage_sign")
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    assert hook.loss_mask(x, attention_mask=y) is x and hook.kl_arguments(x, y) == (x, y)
    assert torch.equal(hook.advantages(x), -x)


def test_unknown_bug_is_rejected_listing_the_known_ones():
    with pytest.raises(ValueError, match="advantage_sign") as e:
        bugs.check("sign_flip", "grpo")
    assert "'sign_flip'" in str(e.value)
    with pytest.raises(ValueError, match="bug must be one of"):
        GRPOConfig(bug="nonsense")


def test_bug_of_another_trainer_is_rejected_listing_those_that_apply():
    with pytest.raises(ValueError, match="does not apply to grpo") as e:
        GRPOConfig(bug="kl_direction")
    assert "advantage_sign" in str(e.value) and "off_by_one" in str(e.value)
    from rlcourse.train.ppo import PPOConfig
    from rlcourse.train.reinforce import ReinforceConfig

    with pytest.raises(ValueError, match="does not apply to ppo"):
        PPOConfig(bug="off_by_one")
    with pytest.raises(ValueError, match="does not apply to reinforce"):
        ReinforceConfig(bug="old_logprobs_recomputed")
    assert GRPOConfig(bug="advantage_sign").bug == "advantage_sign"
    assert bugs.for_trainer("sft") == []


def test_cli_lists_the_bugs_as_json_and_refuses_bad_names(capsys):
    from rlcourse.cli import main

    assert main(["bugs", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(bugs.BUGS)
    assert all(r["category"] and r["hint"] for r in rows)
    assert main(["bugs", "list"]) == 0
    assert "advantage_sign" in capsys.readouterr().out
    assert main(["train", "grpo", "--bug", "nonsense", "--steps", "0"]) == 2
    assert "bug must be one of" in capsys.readouterr().err
    assert main(["train", "sft", "--bug", "advantage_sign"]) == 2
    err = capsys.readouterr().err
    assert "does not apply to sft" in err and "none" in err
    assert main(["train", "ppo", "--bug", "off_by_one"]) == 2
    assert "kl_direction" in capsys.readouterr().err


def test_cli_detect_reports_a_diagonal_matrix(capsys):
    from rlcourse.cli import main

    assert main(["bugs", "detect"]) == 0
    assert "fires on its own bug only" in capsys.readouterr().out


def test_mystery_bug_is_hidden_and_the_check_accepts_only_its_name():
    hook = bugs.mystery(3)
    assert "hidden" in repr(hook)
    fired = [f.bug for f in bugs.diagnose(hook) if f.fired]
    assert len(fired) == 1
    assert "correct" in bugs.check_guess(3, fired[0])
    wrong = next(n for n in bugs.BUGS if n != fired[0])
    with pytest.raises(AssertionError, match="not the mystery bug"):
        bugs.check_guess(3, wrong)
    assert {bugs._mystery_name(s) for s in range(40)} == set(bugs.BUGS)  # every bug can be the mystery


# -- injected into the real GRPO update (a lookup-table model: no training needed) ---------------------

def grpo_step(bug, rewards=(1.0, 0.0, 0.0), **cfg):
    torch.manual_seed(0)
    b = bugs.synthetic_batch()
    model = bugs.TableLM(torch.randn(3, 9, b["V"], generator=torch.Generator().manual_seed(0)))
    before = model.table.detach().clone()
    cfg = GRPOConfig(group_size=3, prompts_per_step=1, lr=0.05, bug=bug, **cfg)
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "response_mask")} | {"rewards": torch.tensor(rewards)}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    stats = grpo_update(model, opt, batch, cfg, None, 4, 0)
    logp = bugs.sequence_logprobs(model, b["input_ids"], b["attention_mask"], b["response_mask"]).detach()
    logp0 = bugs.sequence_logprobs(bugs.TableLM(before), b["input_ids"], b["attention_mask"], b["response_mask"])
    return stats, (logp - logp0.detach()).sum(-1), (model.table.detach() - before), b


def test_grpo_with_advantage_sign_lowers_the_rewarded_completion():
    _, clean, _, _ = grpo_step(None)
    _, bugged, _, _ = grpo_step("advantage_sign")
    assert clean[0] > 0 > bugged[0]


def test_grpo_with_prompt_in_mask_moves_the_logits_of_prompt_tokens():
    _, _, clean, b = grpo_step(None)
    _, _, bugged, _ = grpo_step("prompt_in_mask")
    P = b["P"]
    assert float(clean[:, : P - 1].abs().max()) == 0.0
    assert float(bugged[:, : P - 1].abs().max()) > 0.0


def test_grpo_with_recomputed_old_logprobs_never_clips():
    clean, _, _, _ = grpo_step(None, num_iterations=3, eps_low=0.01)
    bugged, _, _, _ = grpo_step("old_logprobs_recomputed", num_iterations=3, eps_low=0.01)
    assert clean["ratio_mean_last"] != 1.0 and clean["clipfrac_last"] > 0
    assert bugged["ratio_mean_last"] == 1.0 and bugged["clipfrac_last"] == 0.0


def test_grpo_with_unguarded_std_gives_a_constant_group_advantages():
    r = (0.9, 0.9, 0.9)  # a real-valued score whose float32 group mean is off by one ulp
    clean, _, _, _ = grpo_step(None, rewards=r)
    bugged, _, _, _ = grpo_step("constant_group_std", rewards=r)
    assert clean["advantage_abs_mean"] == 0.0 and bugged["advantage_abs_mean"] > 0.1


# -- the wiring: each trainer calls every step that one of its bugs corrupts --------------------------

@pytest.mark.parametrize("trainer", ["grpo", "reinforce", "ppo"])
def test_trainer_routes_every_step_its_bugs_corrupt_through_the_hook(trainer, monkeypatch):
    from rlcourse.lm import ArithmeticTask, build_model, build_tokenizer

    called = set()
    for step in bugs.STEPS:
        original = getattr(bugs.Hooks, step)

        def record(self, *a, _step=step, _f=original, **k):
            called.add(_step)
            return _f(self, *a, **k)

        monkeypatch.setattr(bugs.Hooks, step, record)
    tok = build_tokenizer()
    model = build_model("tiny", len(tok), seed=0, tokenizer=tok)
    task = ArithmeticTask(digits=1, ops="+")
    common = dict(steps=1, eval_n=2, max_new_tokens=3, prompts_per_step=2, group_size=2, device="cpu")
    if trainer == "grpo":
        from rlcourse.train.grpo import train_grpo as train
        cfg = GRPOConfig(**common)
    elif trainer == "reinforce":
        from rlcourse.train.reinforce import ReinforceConfig, train_reinforce as train
        cfg = ReinforceConfig(**common)
    else:
        from rlcourse.train.ppo import PPOConfig, train_ppo as train
        cfg = PPOConfig(**common, minibatches=1, ppo_epochs=1)
    train(cfg, model, tok, task=task, progress=False)
    needed = {bugs.BUGS[n].step for n in bugs.for_trainer(trainer)}
    assert needed <= called, f"{trainer} never calls {needed - called}"
