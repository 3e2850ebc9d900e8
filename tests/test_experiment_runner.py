"""The experiment runner (`rlcourse experiment list|run`): registry, tidy rows over seeds, resume per seed,
refusal of a different config, bad input, and the summary's interval over seeds; the two toy-MDP experiments'
own properties; their plots."""

import json
import math
from dataclasses import dataclass, replace

import pytest

from rlcourse import cli
from rlcourse.experiments import runner
from rlcourse.experiments.summary import summarize, t_interval, t_quantile


# ---------------------------------------------------------------- a counting experiment (resume detection)

CALLS: list[int] = []


@dataclass(frozen=True)
class ProbeConfig:
    steps: int = 3
    scale: float = 1.0

    def quick(self):
        return replace(self, steps=2)


def _probe_seed(cfg, seed, progress):
    CALLS.append(seed)
    progress(1, 1)
    return [{"arm": arm, "seed": seed, "step": s, "x": cfg.scale * (10 * seed + s) + (arm == "b")}
            for arm in ("a", "b") for s in range(cfg.steps)]


@pytest.fixture
def probe():
    runner.experiment("probe_counter", notebook="--", description="counts its calls", config=ProbeConfig)(_probe_seed)
    CALLS.clear()
    yield "probe_counter"
    runner.EXPERIMENTS.pop("probe_counter", None)


def _run_json(capsys, *argv) -> dict:
    assert cli.main(["experiment", "run", *argv, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- list and run

def test_list_json_names_the_toy_experiments_with_notebook_and_description(capsys):
    assert cli.main(["experiment", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"ppo_toy", "critic_gae"} <= set(rows)
    assert rows["ppo_toy"]["notebook"] == "06" and rows["critic_gae"]["notebook"] == "05"
    assert all(r["description"] for r in rows.values())
    assert cli.main(["experiment", "list"]) == 0
    assert "ppo_toy" in capsys.readouterr().out


@pytest.mark.parametrize("name, metrics", [("ppo_toy", {"J", "kl", "clipfrac", "j_drop"}),
                                           ("critic_gae", {"adv_mse"})])
def test_quick_run_json_has_every_seed_and_arm_with_the_promised_keys(capsys, tmp_path, name, metrics):
    out = tmp_path / name
    res = _run_json(capsys, name, "--quick", "--seeds", "3", "--out", str(out))
    assert {"name", "config", "seeds", "curves", "summary"} <= set(res) and res["name"] == name
    assert res["seeds"] == [0, 1, 2]
    rows = res["curves"]
    arms = {r["arm"] for r in rows}
    for r in rows:
        assert {"arm", "seed", "step"} <= set(r)
    main_arms = {a for a in arms if a != "critic"}
    assert len(main_arms) >= 3
    for arm in main_arms:
        for seed in range(3):
            mine = [r for r in rows if r["arm"] == arm and r["seed"] == seed]
            assert mine and all(metrics <= set(r) for r in mine), (arm, seed)
    if name == "critic_gae":
        critic = [r for r in rows if r["arm"] == "critic"]
        assert {r["seed"] for r in critic} == {0, 1, 2}
        assert all({"critic_rmse", "best_lambda"} <= set(r) for r in critic)
    saved = sorted(p.name for p in out.iterdir())
    assert saved == ["config.json", "seconds.json", "seed_0.jsonl", "seed_1.jsonl", "seed_2.jsonl", "summary.json"]
    assert json.loads((out / "config.json").read_text()) == res["config"]
    assert json.loads((out / "summary.json").read_text()) == res["summary"]


def test_run_resumes_per_seed_and_does_not_rerun_finished_seeds(probe, tmp_path, monkeypatch):
    out = tmp_path / "probe"
    first = runner.run(probe, 2, out=out, progress=False)
    assert CALLS == [0, 1]
    second = runner.run(probe, 3, out=out, progress=False)
    assert CALLS == [0, 1, 2], "finished seeds 0 and 1 were run again"
    assert second["curves"][: len(first["curves"])] == first["curves"]
    assert second["seconds"][0] is None and second["seconds"][2] is not None
    # negative control: a runner that ignores the saved seeds is caught by the same counter
    monkeypatch.setattr(runner.RunDirectory, "seed_path", lambda self, seed: self.path / f"ignored_{seed}.jsonl")
    CALLS.clear()
    runner.run(probe, 3, out=out, progress=False)
    assert CALLS == [0, 1, 2]


def test_for_notebook_follows_rlcourse_quick_saves_in_the_cache_and_reports_the_computed_seconds(
        probe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLCOURSE_CACHE", str(tmp_path))
    monkeypatch.setenv("RLCOURSE_QUICK", "1")
    quick = runner.for_notebook(probe, seeds=2)
    assert quick["config"]["steps"] == ProbeConfig().quick().steps and CALLS == [0, 1]
    assert quick["out"] == str(tmp_path / "experiments" / f"{probe}_quick")
    assert "QUICK mode" in capsys.readouterr().out
    monkeypatch.setenv("RLCOURSE_QUICK", "0")
    full = runner.for_notebook(probe, seeds=2)
    assert full["config"]["steps"] == ProbeConfig().steps and CALLS == [0, 1, 0, 1]
    assert full["out"] == str(tmp_path / "experiments" / probe)
    CALLS.clear()
    again = runner.for_notebook(probe, seeds=2)
    line = capsys.readouterr().out.splitlines()[-1]
    assert CALLS == [] and "full config" in line and "loaded from" in line
    assert again["seconds"] == {0: None, 1: None}
    assert all(v is not None for v in again["computed_seconds"].values()), "the saved seconds were lost"
    assert again["curves"] == full["curves"]
    monkeypatch.setenv("RLCOURSE_QUICK", "yes")
    with pytest.raises(ValueError, match="RLCOURSE_QUICK"):
        runner.for_notebook(probe, seeds=2)


def test_a_changed_config_in_the_same_directory_is_refused_and_config_json_is_kept(probe, tmp_path, capsys):
    out = tmp_path / "probe"
    runner.run(probe, 1, out=out, progress=False)
    before = (out / "config.json").read_bytes()
    with pytest.raises(ValueError, match=r"scale: 1\.0 there, 2\.0 now"):
        runner.run(probe, 2, config=ProbeConfig(scale=2.0), out=out, progress=False)
    assert (out / "config.json").read_bytes() == before
    assert CALLS == [0] and not (out / "seed_1.jsonl").exists()
    # the command line: the quick config in a directory of the full one
    assert cli.main(["experiment", "run", probe, "--quick", "--seeds", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "steps: 3 there, 2 now" in err and "not mixed" in err
    assert (out / "config.json").read_bytes() == before


def test_unknown_experiment_lists_the_known_ones(capsys):
    assert cli.main(["experiment", "run", "no_such_experiment", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no_such_experiment" in err and "ppo_toy" in err and "critic_gae" in err
    with pytest.raises(ValueError, match="known: .*ppo_toy"):
        runner.run("no_such_experiment", 1, progress=False)


@pytest.mark.parametrize("seeds", ["0", "-2", "x", "1.5"])
def test_bad_seeds_on_the_command_line_are_clear_errors(capsys, seeds):
    with pytest.raises(SystemExit) as e:
        cli.main(["experiment", "run", "ppo_toy", "--seeds", seeds])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and "integer >= 1" in err and seeds in err


@pytest.mark.parametrize("seeds", [0, -1, 1.5, True, "3"])
def test_bad_seeds_in_python_are_value_errors(probe, seeds):
    with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
        runner.run(probe, seeds, progress=False)
    assert CALLS == []


def test_a_config_of_another_experiment_is_refused(probe):
    from rlcourse.experiments.ppo_toy import PPOToyConfig

    with pytest.raises(TypeError, match="ProbeConfig"):
        runner.run(probe, 1, config=PPOToyConfig(), progress=False)


def test_a_damaged_seed_file_is_named(probe, tmp_path):
    out = tmp_path / "probe"
    runner.run(probe, 1, out=out, progress=False)
    (out / "seed_0.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="seed_0.jsonl cannot be read"):
        runner.run(probe, 1, out=out, progress=False)


# ---------------------------------------------------------------- summary: intervals over seeds

def test_t_quantile_matches_the_student_t_table_and_not_the_normal():
    for df, t in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)]:
        assert t_quantile(0.95, df) == pytest.approx(t, abs=1e-4)
    assert t_quantile(0.99, 5) == pytest.approx(4.0321, abs=1e-4)
    assert abs(t_quantile(0.95, 2) - 1.959964) > 2  # negative control: the normal quantile is not it


def test_summary_interval_is_over_seeds_and_contains_the_mean(probe):
    res = runner.run(probe, 3, config=ProbeConfig(steps=3, scale=1.0), progress=False)
    by = {(p["arm"], p["step"], p["metric"]): p for p in res["summary"]["by_step"]}
    for step in range(3):
        x = [10.0 * seed + step for seed in range(3)]  # arm "a": one value per seed
        p = by[("a", step, "x")]
        assert p["n"] == 3 and p["mean"] == pytest.approx(sum(x) / 3)
        half = t_quantile(0.95, 2) * 10.0 / math.sqrt(3)  # the sample std over seeds of (s, 10+s, 20+s) is 10
        assert (p["lo"], p["hi"]) == pytest.approx((p["mean"] - half, p["mean"] + half))
        assert p["lo"] <= p["mean"] <= p["hi"]
        # negative control: reducing over the steps of one seed instead (seed 0: 0, 1, 2) gives another interval
        over_steps = t_interval([0.0, 1.0, 2.0])
        assert (over_steps["mean"], over_steps["hi"]) != pytest.approx((p["mean"], p["hi"]))
    final = {(p["arm"], p["metric"]): p for p in res["summary"]["final"]}
    assert final[("b", "x")]["mean"] == pytest.approx(10 + 2 + 1)  # last step 2, arm b's offset 1
    peak = {(p["arm"], p["metric"]): p for p in res["summary"]["peak"]}
    assert peak[("a", "x")]["mean"] == pytest.approx(12.0)


def test_summary_of_one_seed_has_no_interval_and_bad_values_are_refused():
    assert t_interval([2.0]) == {"n": 1, "mean": 2.0, "lo": None, "hi": None, "std": None}
    with pytest.raises(ValueError, match="finite"):
        t_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        t_interval([])
    with pytest.raises(ValueError, match="rows"):
        summarize([{"arm": "a", "step": 0, "x": 1.0}])


# ---------------------------------------------------------------- the experiments' own properties

@pytest.mark.parametrize("field, value, match", [
    ("ppo_toy:iterations", 0, "iterations must be a positive integer, got 0"),
    ("ppo_toy:problem", {"horizon": 3}, "problem must be a rlcourse.toymdp.ToyProblem"),
    ("ppo_toy:epochs", (1, 0), "epochs must be a positive integer, got 0"),
    ("ppo_toy:lr", float("inf"), "lr must be a finite number"),
    ("ppo_toy:eps", 0.0, "eps must be > 0"),
    ("ppo_toy:lam", 1.5, r"lam must lie in \[0.0, 1.0\]"),
    ("ppo_toy:optimizer", "rmsprop", "optimizer must be one of"),
    ("critic_gae:lambdas", (0.5, -0.1), r"lambdas must lie in \[0.0, 1.0\]"),
    ("critic_gae:eval_every", 2.0, "eval_every must be a positive integer"),
    ("critic_gae:lr", -1.0, "lr must be > 0"),
    ("critic_gae:critic_init", float("nan"), "critic_init must be a finite number"),
])
def test_toy_experiment_configs_refuse_a_bad_field_by_name(field, value, match):
    from rlcourse.experiments.critic_gae import CriticGAEConfig
    from rlcourse.experiments.ppo_toy import PPOToyConfig

    name, attr = field.split(":")
    config = {"ppo_toy": PPOToyConfig, "critic_gae": CriticGAEConfig}[name]
    config(**{attr: config.__dataclass_fields__[attr].default})  # the default is accepted
    with pytest.raises(ValueError, match=match):
        config(**{attr: value})


def test_ppo_toy_methods_agree_at_k1_and_differ_after_several_epochs():
    """At theta = theta_old every loss has the policy-gradient gradient, so one step per batch is the same
    update for every method; with K > 1 the clip and the penalty change the steps (negative control)."""
    from rlcourse.experiments.ppo_toy import PPOToyConfig

    cfg = PPOToyConfig(iterations=3, epochs=(1, 8))
    res = runner.run("ppo_toy", 1, config=cfg, progress=False)
    J = {(r["arm"], r["step"]): r["J"] for r in res["curves"]}
    for step in range(4):
        assert J[("clip K=1", step)] == pytest.approx(J[("vanilla K=1", step)], abs=1e-12)
        assert J[("penalty K=1", step)] == pytest.approx(J[("vanilla K=1", step)], abs=1e-12)
    assert abs(J[("clip K=8", 1)] - J[("vanilla K=8", 1)]) > 1e-3
    kl = {(r["arm"], r["step"]): r["kl"] for r in res["curves"]}
    assert kl[("vanilla K=8", 1)] > kl[("clip K=8", 1)] > 0


def test_critic_gae_td_advantage_is_exact_with_the_true_value_and_not_with_a_wrong_one():
    from rlcourse.experiments.critic_gae import CriticGAEConfig, advantage_errors

    mdp, theta = CriticGAEConfig().problem.build()
    v = mdp.state_values(theta)
    e0, e1 = advantage_errors(mdp, theta, v, [0.0, 1.0])
    assert e0 == pytest.approx(0.0, abs=1e-20) and e1 > 1e-3  # deterministic transitions: delta_t = A exactly
    assert advantage_errors(mdp, theta, v * 0, [0.0])[0] > 1e-3  # negative control: a wrong critic


# ---------------------------------------------------------------- plots draw results, and only theirs

def test_plots_draw_the_runs_and_refuse_another_experiments_result(capsys, tmp_path):
    import matplotlib.pyplot as plt

    from rlcourse.plots.experiments import plot_critic_gae, plot_ppo_toy

    ppo = runner.run("ppo_toy", 2, quick=True, progress=False)
    gae = runner.run("critic_gae", 2, quick=True, progress=False)
    for fig in (plot_ppo_toy(ppo), plot_critic_gae(gae)):
        assert len(fig.axes) >= 3
        plt.close(fig)
    with pytest.raises(ValueError, match="ppo_toy"):
        plot_ppo_toy(gae)


def test_interval_formats_the_row_of_the_asked_arm_metric_and_step():
    from rlcourse.experiments.summary import interval

    table = [{"arm": "a", "metric": "J", "step": 0, "mean": 0.5, "lo": 0.4, "hi": 0.6},
             {"arm": "a", "metric": "J", "step": 10, "mean": 0.9, "lo": 0.85, "hi": 0.95},
             {"arm": "b", "metric": "J", "step": 10, "mean": 0.1, "lo": None, "hi": None}]
    assert interval(table, "a", "J", 10) == "0.900 [0.850, 0.950]"
    assert interval(table, "a", "J", 0) == "0.500 [0.400, 0.600]"      # the step selects the row
    assert interval(table, "b", "J", 10, ".2f") == "0.10"              # one seed: no interval to show
    with pytest.raises(KeyError, match="arm='c'"):
        interval(table, "c", "J", 10)


def _fake_trainer(steps, **logged):
    """A trainer stand-in: calls ``callback`` after each of ``steps`` steps with a history row."""
    def train(callback):
        for step in range(steps):
            callback({"step": step, **{k: v(step) for k, v in logged.items()}})
    return train


def test_evaluated_training_evaluates_at_the_start_and_after_every_kth_step_with_that_window():
    ticks = []
    rows = runner.evaluated_training(_fake_trainer(7, loss=float),
                                     lambda n, window: {"step": n, "window": [r["loss"] for r in window]},
                                     every=3, tick=lambda: ticks.append(1))
    # the start, then after steps 3 and 6 (history steps 2 and 5); step 7 is not a multiple of 3
    assert rows == [{"step": 0, "window": []}, {"step": 3, "window": [0.0, 1.0, 2.0]},
                    {"step": 6, "window": [3.0, 4.0, 5.0]}]
    assert len(ticks) == 7
    # negative control: testing the history's own (0-based) step for a multiple of 3 (the off-by-one) evaluates
    # after history steps 0, 3, 6 with windows [0], [1, 2, 3], [4, 5, 6]; the rows above reject it
    off_by_one = [{"step": 0, "window": []}, {"step": 0, "window": [0.0]}, {"step": 3, "window": [1.0, 2.0, 3.0]},
                  {"step": 6, "window": [4.0, 5.0, 6.0]}]
    assert rows != off_by_one


def test_evaluated_training_passes_each_step_through_record_before_the_window():
    rows = runner.evaluated_training(_fake_trainer(4, loss=float),
                                     lambda n, window: {"step": n, "w": [r["double"] for r in window]},
                                     every=2, record=lambda row: {**row, "double": 2 * row["loss"]})
    assert rows == [{"step": 0, "w": []}, {"step": 2, "w": [0.0, 2.0]}, {"step": 4, "w": [4.0, 6.0]}]


def test_window_mean_skips_missing_values_and_is_none_for_an_empty_window():
    assert runner.window_mean([{"x": 1.0}, {"x": None}, {"x": 3.0}, {}], "x") == 2.0
    assert runner.window_mean([], "x") is None and runner.window_mean([{"y": 1.0}], "x") is None
    # negative control: a plain mean over every row (missing counted as 0) would say 1.0
    assert runner.window_mean([{"x": 1.0}, {"x": 3.0}, {"x": None}, {}], "x") != 1.0


def test_saved_run_figure_registers_a_builder_drawing_that_experiments_saved_run(monkeypatch):
    from rlcourse import plots
    from rlcourse.plots import experiments as pe

    monkeypatch.setattr(plots, "BUILDERS", dict(plots.BUILDERS))
    asked = []
    monkeypatch.setattr(pe, "saved_run", lambda name: asked.append(name) or {"name": name})

    def plot_fake(result):
        return ("figure of", result["name"])

    assert pe.saved_run_figure("99_fake", "ppo_toy")(plot_fake) is plot_fake   # the plot function is unchanged
    assert plots.BUILDERS["99_fake"]() == ("figure of", "ppo_toy") and asked == ["ppo_toy"]
    with pytest.raises(ValueError, match="99_fake"):   # a second registration of the name is refused
        pe.saved_run_figure("99_fake", "critic_gae")(plot_fake)


def test_config_from_record_rebuilds_every_experiments_default_and_quick_config():
    for name, exp in runner.load_all().items():
        for cfg in (exp.default_config(), exp.default_config(quick=True)):
            record = json.loads(json.dumps(runner.config_record(name, cfg)))   # as config.json holds it
            assert runner.config_from_record(name, record) == cfg, name
    # negative controls: another experiment's record, an unknown field
    record = runner.config_record("ppo_toy", runner.get("ppo_toy").default_config())
    with pytest.raises(ValueError, match="ppo_toy"):
        runner.config_from_record("critic_gae", record)
    with pytest.raises(ValueError, match="no field"):
        runner.config_from_record("ppo_toy", {**record, "horizon": 3})


def test_experiment_description_is_the_first_paragraph_of_run_seeds_docstring(monkeypatch):
    monkeypatch.setattr(runner, "EXPERIMENTS", {})

    def documented(cfg, seed, progress):
        """Counts its calls, on
        two lines.

        Details the list does not print."""

    def undocumented(cfg, seed, progress):
        return []

    runner.experiment("probe_doc", notebook="--", config=ProbeConfig)(documented)
    assert runner.EXPERIMENTS["probe_doc"].description == "Counts its calls, on two lines."
    runner.experiment("probe_given", notebook="--", config=ProbeConfig, description="given")(undocumented)
    assert runner.EXPERIMENTS["probe_given"].description == "given"
    with pytest.raises(ValueError, match="needs a description"):   # negative control: neither
        runner.experiment("probe_none", notebook="--", config=ProbeConfig)(undocumented)
