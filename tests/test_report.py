"""Tests for the helpers of ttt_helpers.tabpfn.report that the book calls: what a recipe search chose, in words,
and running the command line in a subprocess."""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ttt_helpers.tabpfn import checkpoints as tm
from ttt_helpers.tabpfn.report import run_command_line, search_outcome, summary_lines

RECIPE = {"kind": "search", "lrs": [3e-4, 1e-3], "tolerance": 0.02}


def test_search_outcome_in_each_case():
    z = {"acc": 0.294}
    assert search_outcome({"selected": {"lr": 3e-4, "steps": 40}, "zero_shot": z, "best": {"acc": 0.341},
                           "recipe": RECIPE}) == "chose lr 0.0003 after 40 steps (validation accuracy 0.341, zero-shot 0.294)"
    assert search_outcome({"selected": None, "zero_shot": z, "best": {"acc": 0.29}, "recipe": RECIPE}) == (
        "kept the pretrained weights (best TTT 0.290 vs zero-shot 0.294)")
    assert search_outcome({"selected": None, "zero_shot": z, "best": None, "recipe": RECIPE}) == (
        "kept the pretrained weights (every TTT checkpoint fell more than 0.02 below them at some validation "
        "context size)")
    assert search_outcome({"selected": None, "zero_shot": z, "best": None, "recipe": {**RECIPE, "noise_z": 1.28}}) == (
        "kept the pretrained weights (every TTT checkpoint fell more than 0.02 + 1.28 standard errors below them at "
        "some validation context size)")
    capped = {**RECIPE, "noise_z": 1.28, "max_allowance": 0.05}
    assert search_outcome({"selected": None, "zero_shot": z, "best": None, "recipe": capped}) == (
        "kept the pretrained weights (every TTT checkpoint fell more than 0.02 + 1.28 standard errors, at most 0.05, "
        "below them at some validation context size)")


def test_run_command_line_returns_the_summary_and_the_report(tmp_path):
    tiny = str(tm.tiny_random_checkpoint(Path(tempfile.gettempdir()) / "ttt_helpers_tests" / "tiny_cli.ckpt"))
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x1": rng.normal(size=160), "x2": rng.normal(size=160), "label": np.arange(160) % 3})
    csv = tmp_path / "t.csv"
    df.to_csv(csv, index=False)
    stdout, report = run_command_line(csv, tmp_path / "out", "--target", "label", "--model", tiny, "--steps", 2,
                                      "--n-query", 16, "--context-sizes", "2,8", "--repeats", 1, "--max-test", 24,
                                      "--no-progress")
    assert stdout.splitlines()[:-1] == summary_lines(report)  # the last line names the files written
    assert (tmp_path / "out" / "accuracy_vs_context.png").exists()
    with pytest.raises(RuntimeError, match="unknown target column"):
        run_command_line(csv, tmp_path / "bad", "--target", "nope", "--model", tiny, "--no-progress")
