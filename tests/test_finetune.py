"""Tests for ttt_helpers.tabpfn.finetune (the TTT loop and the recipe search), on a tiny random checkpoint."""

import numpy as np
import pytest

import torch  # a hard dependency: fail, never skip, if it is missing
import tabpfn  # a hard dependency: fail, never skip, if it is missing

from tabpfn_fixtures import template, tiny_ckpt  # noqa: E402,F401
from tabpfn_fixtures import toy_table as _toy  # noqa: E402
from ttt_helpers.tabpfn import finetune as ft  # noqa: E402
from ttt_helpers.tabpfn.episodes import episode_accuracy, make_eval_episodes, prepare_classifier  # noqa: E402
from ttt_helpers.tabpfn.protocol import split_rows  # noqa: E402


def test_ttt_is_seeded_changes_weights_and_learns(template):
    X, y = _toy()
    s = split_rows(len(y), 0)
    cfg = ft.TTTConfig(optimizer="adamw", steps=12, lr=3e-3, n_query=64, max_context=128)
    clf = prepare_classifier(template)
    ep = make_eval_episodes(clf, X, y, s["pool"], s["test"], [16], 2, 1, n_classes=4, max_test=128)
    w0 = ft.snapshot_state(clf)
    acc0 = np.mean([episode_accuracy(clf, e, 4) for e in ep])
    h = ft.ttt_finetune(clf, X[s["ttt"]], y[s["ttt"]], 4, cfg, 7)
    w1 = ft.snapshot_state(clf)
    acc1 = np.mean([episode_accuracy(clf, e, 4) for e in ep])
    assert len(h["losses"]) == 12 and all(2 <= n <= 128 for n in h["context_sizes"])
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    # the same seed gives the same weights
    ft.load_state(clf, w0)
    ft.ttt_finetune(clf, X[s["ttt"]], y[s["ttt"]], 4, cfg, 7)
    w2 = ft.snapshot_state(clf)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    # on this learnable task TTT improves the held-out accuracy of the random tiny model
    assert np.mean(h["losses"][-4:]) < np.mean(h["losses"][:4])
    assert acc1 > acc0 + 0.05


def test_sgd_momentum_runs_and_bad_config_raises(template):
    X, y = _toy()
    clf = prepare_classifier(template)
    h = ft.ttt_finetune(clf, X[:300], y[:300], 4, ft.TTTConfig(optimizer="sgd", steps=2, lr=1e-2, n_query=32), 0)
    assert len(h["losses"]) == 2 and all(np.isfinite(h["losses"]))
    with pytest.raises(ValueError, match="optimizer"):
        ft.TTTConfig(optimizer="adam")
    with pytest.raises(ValueError, match="steps"):
        ft.TTTConfig(steps=0)
    with pytest.raises(ValueError, match="labels"):
        ft.ttt_finetune(clf, X[:10], y[:10] + 4, 4, ft.TTTConfig(steps=1), 0)


def test_small_ttt_set_with_many_queries_still_has_contexts(template):
    """A TTT set smaller than n_query (a 300-row table with a third of its targets empty) is split at most half
    into queries, so every episode keeps a context of >= 2 rows (it used to fail with 'no TTT context with a
    non-constant feature')."""
    X, y = _toy()
    clf = prepare_classifier(template)
    h = ft.ttt_finetune(clf, X[:100], y[:100], 4, ft.TTTConfig(steps=3, lr=1e-3, n_query=128), 0)
    assert len(h["losses"]) == 3 and min(h["context_sizes"]) >= 2


def test_callback_stops_the_loop(template):
    X, y = _toy()
    clf = prepare_classifier(template)
    seen = []
    h = ft.ttt_finetune(clf, X[:300], y[:300], 4, ft.TTTConfig(steps=10, lr=1e-3, n_query=32),
                        0, callback=lambda step, losses: seen.append(step) or step == 3)
    assert seen == [1, 2, 3] and len(h["losses"]) == 3


def test_recipe_search_validates_its_settings():
    with pytest.raises(ValueError, match="lrs"):
        ft.RecipeSearch(lrs=())
    with pytest.raises(ValueError, match="validation_fraction"):
        ft.RecipeSearch(validation_fraction=1.0)
    with pytest.raises(ValueError, match="validation_sizes"):
        ft.RecipeSearch(validation_sizes=(1, 8))
    s = ft.RecipeSearch(lrs=3e-4, max_steps=30)
    assert s.lrs == (3e-4,) and s.config(3e-4).steps == 30 and s.to_dict()["lrs"] == [3e-4]


def test_select_recipe_learns_where_ttt_helps(template):
    X, y = _toy()
    clf = prepare_classifier(template)
    w0 = ft.snapshot_state(clf)
    search = ft.RecipeSearch(lrs=(1e-3, 3e-3), max_steps=12, eval_every=4, patience=2, validation_sizes=(4, 16),
                             validation_repeats=1, n_query=64, max_context=64)
    info = ft.select_recipe(clf, X[:400], y[:400], 4, search, 0)
    assert info["selected"] is not None and info["selected"]["lr"] in (1e-3, 3e-3)
    assert info["best"]["acc"] >= info["zero_shot"]["acc"] + search.min_improvement
    assert info["n_validation"] == 80 and info["n_train"] == 320
    assert [r["lr"] for r in info["runs"]] == [1e-3, 3e-3] and all(r["trace"] for r in info["runs"])
    assert info["seconds"] >= info["ttt_seconds"] > 0 and info["validation_seconds"] > 0
    w1 = ft.snapshot_state(clf)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # the chosen TTT weights are loaded


def test_select_recipe_keeps_the_zero_shot_weights_when_ttt_does_not_help(template):
    """Labels that no feature predicts: TTT cannot beat the zero-shot weights on held-out rows by the margin
    (the tiny model's outputs are near chance), so the pretrained weights stay."""
    X, _ = _toy()
    y = np.random.default_rng(5).integers(0, 2, len(X))
    clf = prepare_classifier(template)
    w0 = ft.snapshot_state(clf)
    search = ft.RecipeSearch(lrs=(1e-7,), max_steps=4, eval_every=2, validation_sizes=(4, 16), validation_repeats=1,
                             n_query=32, max_context=32, min_improvement=0.05)
    info = ft.select_recipe(clf, X[:300], y[:300], 2, search, 0)
    assert info["selected"] is None and info["losses"] == []
    w1 = ft.snapshot_state(clf)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_a_checkpoint_below_the_zero_shot_weights_at_one_size_is_not_admissible():
    zero = {"acc": 0.6, "loss": 1.0, "sizes": [2, 512], "acc_by_size": [0.4, 0.8]}
    collapse = {"acc": 0.75, "loss": 0.6, "sizes": [2, 512], "acc_by_size": [0.75, 0.75]}  # majority voting
    better = {"acc": 0.65, "loss": 0.9, "sizes": [2, 512], "acc_by_size": [0.5, 0.79]}
    assert not ft._admissible(collapse, zero, 0.02) and ft._admissible(better, zero, 0.02)
    assert ft._better(collapse, better) and ft._better(better, None)


def test_early_stopping_stops_after_patience(template):
    X, _ = _toy()
    y = np.random.default_rng(5).integers(0, 2, len(X))
    clf = prepare_classifier(template)
    search = ft.RecipeSearch(lrs=(1e-9,), max_steps=40, eval_every=2, patience=2, validation_sizes=(4,),
                             validation_repeats=1, n_query=16, max_context=16)
    info = ft.select_recipe(clf, X[:200], y[:200], 2, search, 0)
    # lr 1e-9 changes nothing: the first score is the best, two more without improvement stop the run
    assert info["runs"][0]["steps_run"] == 6 and [t[0] for t in info["runs"][0]["trace"]] == [2, 4, 6]
