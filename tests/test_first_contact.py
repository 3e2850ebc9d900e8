"""What a new user meets first: the tested versions are pinned, no dependency warning leaks into the
course's output, and a test run writes nothing into the repository."""

from __future__ import annotations

import logging
import re
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in reqs}


def test_every_declared_dependency_but_torch_is_pinned_in_constraints():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        declared |= _requirement_names([r for r in extra if not r.startswith("rlcourse")])
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pinned[name.lower().replace("_", "-")] = version
    missing = sorted(declared - {"torch"} - set(pinned))
    assert not missing, f"declared in pyproject.toml but not pinned in constraints.txt: {missing}"
    assert "torch" not in pinned, "torch is installed separately (the CPU build), not through constraints.txt"


def test_sampling_emits_no_dependency_warning_or_log():
    """transformers 5.2x deprecated ``past_key_values``: the course passes its cache under the new
    name, so sampling prints nothing (a printed warning breaks nbval's checked outputs)."""
    from rlcourse.lm import build_model, build_tokenizer, generate

    tok = build_tokenizer()
    model = build_model("tiny", tokenizer=tok)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ro = generate(model, tok, ["1+2=", "30+4="], group_size=3, max_new_tokens=6, seed=0)
    finally:
        logger.removeHandler(handler)
    assert ro.response_mask.shape[0] == 6
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


def test_the_deprecated_cache_name_would_be_caught():
    """Negative control for the test above: passing the cache under the old name does warn."""
    from rlcourse.lm import build_model, build_tokenizer
    from rlcourse.lm.rollout import _cache_kwarg, _cache_of

    tok = build_tokenizer()
    model = build_model("tiny", tokenizer=tok)
    if _cache_kwarg(model) != "cache":
        pytest.skip("this transformers takes past_key_values: nothing deprecated to catch")
    ids = torch.tensor([tok.encode("1+2=")])
    out = model(input_ids=ids, use_cache=True)
    with pytest.warns(FutureWarning, match="past_key_values"):
        model(input_ids=ids[:, -1:], past_key_values=_cache_of(out), use_cache=True)


def test_saved_figure_is_byte_identical_and_unstamped(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlcourse.plots import save

    def draw(directory):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        path = save(fig, "x", directory)
        plt.close(fig)
        return path.read_bytes()

    a, b = draw(tmp_path / "a"), draw(tmp_path / "b")
    assert a == b
    assert b"Matplotlib version" not in a


def test_test_runs_send_figures_to_a_temporary_directory():
    """The root conftest points ``RLCOURSE_FIGURES`` away from the repository's figures/."""
    import os

    from rlcourse.plots import figures_dir

    assert os.environ.get("RLCOURSE_FIGURES")
    assert ROOT / "figures" not in [figures_dir().resolve(), *figures_dir().resolve().parents]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["verify", "--help"], ["figures", "--help"]])
def test_help_texts_are_plain_text(argv, capsys):
    """No reStructuredText markup (double backticks) in what ``--help`` prints, and every line fits
    an 80-column terminal as argparse wraps it."""
    from rlcourse.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out, out
    assert out.strip()
