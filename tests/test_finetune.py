"""Tests for ttt_helpers.tabpfn.finetune (the TTT loop and the recipe search), on a tiny random checkpoint."""

import json

import numpy as np
import pytest

import torch  # a hard dependency: fail, never skip, if it is missing
import tabpfn  # a hard dependency: fail, never skip, if it is missing

from script_modules import load_script  # noqa: E402
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
    with pytest.raises(ValueError, match="noise_z"):
        ft.RecipeSearch(noise_z=-1.0)
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
    # every trace row: step, acc, loss, admissible, and the paired gain and its standard error per validation size
    for r in info["runs"]:
        for step, acc, loss, ok, gains, ses in r["trace"]:
            assert len(gains) == len(ses) == 2 and all(se >= 0 for se in ses)
            allow = [min(search.tolerance + search.noise_z * se, search.max_allowance) for se in ses]
            assert ok == all(g >= -a - 1e-12 for g, a in zip(gains, allow))
    assert "correct" not in info["zero_shot"] and "correct" not in info["best"]
    json.dumps({k: info[k] for k in ("zero_shot", "best", "runs")})  # the per-query arrays stay inside
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
    assert info["rules"] == {"zero_shot": "present", "ttt": "open"}
    zero = info["zero_shot"]  # the zero-shot weights are scored with tabpfn's rule, the checkpoints without it
    assert zero["rule"] == "present" and zero["acc_by_size"] == zero["present_acc_by_size"]
    assert info["best"] is None or info["best"]["rule"] == "open"
    w1 = ft.snapshot_state(clf)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def admissible(score, zero, tolerance, noise_z=0.0):
    """The search's admissibility test (no cap) of a checkpoint's score against the zero-shot weights'."""
    search = ft.RecipeSearch(tolerance=tolerance, noise_z=noise_z, max_allowance=None)
    return search.admits(*ft.paired_gains(score, zero))


def test_a_checkpoint_below_the_zero_shot_weights_at_one_size_is_not_admissible():
    zero = {"acc": 0.6, "loss": 1.0, "sizes": [2, 512], "acc_by_size": [0.4, 0.8]}
    collapse = {"acc": 0.75, "loss": 0.6, "sizes": [2, 512], "acc_by_size": [0.75, 0.75]}  # majority voting
    better = {"acc": 0.65, "loss": 0.9, "sizes": [2, 512], "acc_by_size": [0.5, 0.79]}
    assert not admissible(collapse, zero, 0.02) and admissible(better, zero, 0.02)
    assert ft._better(collapse, better) and ft._better(better, None)


def _score(correct_by_episode, requested):
    """A score of score_episodes(..., per_query=True) built from per-query correctness."""
    c = [np.asarray(a, dtype=bool) for a in correct_by_episode]
    req = np.asarray(requested)
    sizes = sorted(set(requested))
    acc = np.array([a.mean() for a in c])
    return {"acc": float(acc.mean()), "loss": 1.0, "sizes": sizes,
            "acc_by_size": [float(acc[req == s].mean()) for s in sizes], "correct": c, "requested": list(requested)}


def test_paired_gains_average_the_repeats_per_query():
    zero = _score([[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]], [2, 2, 8])
    ttt = _score([[1, 1, 0, 1], [1, 1, 1, 0], [1, 1, 1, 0]], [2, 2, 8])
    gains, ses = ft.paired_gains(ttt, zero)
    # size 2: per-query differences averaged over the two repeats: (0, 0.5, 0.5, 0); size 8: (1, 1, 1, 0)
    assert gains == pytest.approx([0.25, 0.75])
    assert ses == pytest.approx([np.std([0, 0.5, 0.5, 0], ddof=1) / 2, np.std([1, 1, 1, 0], ddof=1) / 2])
    # without per-query data: differences of acc_by_size, no standard error
    strip = lambda s: {k: v for k, v in s.items() if k not in ("correct", "requested")}  # noqa: E731
    assert ft.paired_gains(strip(ttt), strip(zero)) == (pytest.approx([0.25, 0.75]), [0.0, 0.0])


def test_admissibility_is_a_test_against_the_noise_of_the_validation_slice():
    """A checkpoint exactly as good as the zero-shot weights, scored on 200 validation queries at 5 sizes (the
    search's slice): the bare 0.02 margin rejects it most of the time (the paired standard error per size is about
    0.05 here), which is why the search kept the zero-shot weights on tables where TTT gains 0.1 to 0.3 at most
    sizes; the noise-aware test (noise_z 1.28) rarely does, and it still rejects a real drop."""
    rng = np.random.default_rng(0)
    sizes, q = [2, 8, 32, 128, 512], 200
    req = sizes
    old = new = 0
    for _ in range(300):
        zero = _score(rng.uniform(size=(5, q)) < 0.5, req)
        same = _score(rng.uniform(size=(5, q)) < 0.5, req)
        old += not admissible(same, zero, 0.02, 0.0)
        new += not admissible(same, zero, 0.02, 1.28)
    assert old / 300 > 0.7 and new / 300 < 0.3
    # a drop of 0.25 at the largest size (a quarter of the queries flip from right to wrong) is rejected
    z = np.ones((5, q), dtype=bool)
    drop = z.copy()
    drop[4, : q // 4] = False
    assert not admissible(_score(drop, req), _score(z, req), 0.02, 1.28)
    # a fixed margin with no per-query data is the old rule
    plain = lambda s: {k: v for k, v in s.items() if k not in ("correct", "requested")}  # noqa: E731
    a, b = _score(drop, req), _score(z, req)
    a["acc_by_size"][4] = b["acc_by_size"][4] - 0.03
    assert not admissible(plain(a), plain(b), 0.02, 1.28) and admissible(plain(a), plain(b), 0.04, 0.0)


def test_early_stopping_stops_after_patience(template):
    X, _ = _toy()
    y = np.random.default_rng(5).integers(0, 2, len(X))
    clf = prepare_classifier(template)
    search = ft.RecipeSearch(lrs=(1e-9,), max_steps=40, eval_every=2, patience=2, validation_sizes=(4,),
                             validation_repeats=1, n_query=16, max_context=16)
    info = ft.select_recipe(clf, X[:200], y[:200], 2, search, 0)
    # lr 1e-9 changes nothing: the first score is the best, two more without improvement stop the run
    assert info["runs"][0]["steps_run"] == 6 and [t[0] for t in info["runs"][0]["trace"]] == [2, 4, 6]


def test_the_estimator_and_the_command_line_share_the_search_defaults():
    """One recipe search behind every entry point: the estimator's, the command line's and the Figure-3
    experiment's defaults are RecipeSearch's (200 steps, patience 3, the noise-aware admissibility test with its
    allowance capped at 0.05), except the estimator's learning-rate grid, which is its own (1e-4 and 3e-4, chosen
    in its regime: its docstring and data/results/check_ttt_estimator_*fallback.json)."""
    from ttt_helpers.tabpfn.classifier import TTTTabPFNClassifier
    from ttt_helpers.tabpfn.cli import _recipe, build_parser
    from ttt_helpers.tabpfn.fit_plan import ttt_recipe

    d = ft.RecipeSearch()
    assert (d.max_steps, d.patience, d.noise_z, d.max_allowance) == (200, 3, 1.28, 0.05)
    est = ttt_recipe(TTTTabPFNClassifier().get_params())[0]
    cli = _recipe(build_parser().parse_args(["t.csv", "--target", "y"]))
    fields = ("lrs", "max_steps", "eval_every", "patience", "noise_z", "tolerance", "max_allowance", "max_context")
    for r, own in ((est, {"lrs"}), (cli, set())):
        assert isinstance(r, ft.RecipeSearch)
        assert [getattr(r, k) for k in fields if k not in own] == [getattr(d, k) for k in fields if k not in own]
    assert est.lrs == (1e-4, 3e-4) and d.lrs == cli.lrs == (3e-4, 1e-3)
    # the Figure-3 experiment's search flags default to the same values (its max_context is its own)
    exp = _experiment_script()
    args = exp.build_parser().parse_args([])
    r = exp._configs(args)["selected"]
    same = [k for k in fields if k != "max_context"] + ["validation_sizes", "validation_repeats"]
    assert [getattr(r, k) for k in same] == [getattr(d, k) for k in same]
    assert exp.build_parser().parse_args(["--max-allowance", "none"]).max_allowance is None
    assert exp.build_parser().parse_args(["--max-allowance", "0.07"]).max_allowance == 0.07


def _experiment_script():
    """scripts/tabpfn_experiment.py as a module."""
    return load_script("tabpfn_experiment")


def test_the_cap_bounds_the_noise_allowance_on_small_slices_only():
    """max_allowance caps tolerance + noise_z * se: with the se of a 40-row slice (0.08) the uncapped test lets
    a checkpoint lose 0.12, the capped one at most 0.04; with the se of a 200-row slice (0.01 here, below the cap)
    the two tests agree."""
    big_se, small_se = [0.08, 0.08], [0.01, 0.01]
    assert ft._allowance(0.08, 0.02, 1.28) == pytest.approx(0.1224)
    assert ft._allowance(0.08, 0.02, 1.28, 0.04) == pytest.approx(0.04)
    assert ft._allowance(0.01, 0.02, 1.28, 0.04) == pytest.approx(0.0328)
    loss_010 = [0.05, -0.10]
    assert ft._within(loss_010, big_se, 0.02, 1.28) and not ft._within(loss_010, big_se, 0.02, 1.28, 0.04)
    loss_003 = [0.05, -0.03]
    assert ft._within(loss_003, small_se, 0.02, 1.28) and ft._within(loss_003, small_se, 0.02, 1.28, 0.04)
    assert not ft._within([0.05, -0.035], small_se, 0.02, 1.28, 0.04)  # beyond 0.0328 at se 0.01
    assert ft._within([0.05, -0.039], big_se, 0.02, 1.28, 0.04)  # just inside the cap
    s = ft.RecipeSearch(tolerance=0.02, noise_z=1.28, max_allowance=0.04)
    assert s.admits(loss_003, small_se) and not s.admits(loss_010, big_se)
    assert s.to_dict()["max_allowance"] == 0.04
    with pytest.raises(ValueError, match="max_allowance"):
        ft.RecipeSearch(max_allowance=-0.1)
    with pytest.raises(ValueError, match="at least tolerance"):
        ft.RecipeSearch(tolerance=0.05, max_allowance=0.03)
    assert ft.RecipeSearch(max_allowance=None).max_allowance is None


def test_searches_that_differ_only_in_stopping_share_their_runs_and_give_the_same_results(template):
    """select_recipes on several searches gives, for each, what select_recipe gives for it alone (traces,
    steps run, chosen checkpoint and its weights), from one set of training runs."""
    X, y = _toy()
    common = dict(lrs=(1e-3, 3e-3), eval_every=4, validation_sizes=(4, 16), validation_repeats=1, n_query=64,
                  max_context=64)
    searches = {"short": ft.RecipeSearch(max_steps=8, patience=1, noise_z=0.0, **common),
                "long": ft.RecipeSearch(max_steps=16, patience=2, noise_z=1.28, **common),
                "capped": ft.RecipeSearch(max_steps=16, patience=2, noise_z=1.28, max_allowance=0.02, **common)}
    clf = prepare_classifier(template)
    w0 = ft.snapshot_state(clf)
    chosen = {}
    together = ft.select_recipes(clf, X[:400], y[:400], 4, searches, 0, states=chosen)
    for lab, srch in searches.items():
        ft.load_state(clf, w0)
        alone = ft.select_recipe(clf, X[:400], y[:400], 4, srch, 0)
        t = together[lab]
        assert t["shared_with"] == list(searches)
        assert t["selected"] == alone["selected"] and t["best"] == alone["best"]
        assert [r["steps_run"] for r in t["runs"]] == [r["steps_run"] for r in alone["runs"]]
        assert [r["trace"] for r in t["runs"]] == [r["trace"] for r in alone["runs"]]
        w = ft.snapshot_state(clf)
        assert all(torch.equal(w[k], chosen[lab][k]) for k in w)
    assert max(r["steps_run"] for r in together["short"]["runs"]) <= 8
    with pytest.raises(ValueError, match="differ in"):
        ft.select_recipes(clf, X[:400], y[:400], 4, {"a": searches["short"],
                                                    "b": ft.RecipeSearch(lrs=(1e-3,), **{k: v for k, v in common.items() if k != "lrs"})}, 0)


@pytest.mark.parametrize("n_rows, expected", [(500, [2, 8, 32, 128, 400]), (1000, [2, 8, 32, 128, 512, 800])])
def test_default_validation_sizes_reach_the_whole_training_part_of_the_ttt_rows(template, n_rows, expected):
    """The default's last validation size (1,024) is capped at the training part of the TTT rows: all 800 of 1,000
    TTT rows, while a TTT set of at most 640 rows validates at the sizes it had before (here 400 = 500 - 100)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n_rows, 4))
    y = (X[:, 0] > 0).astype(int)
    search = ft.RecipeSearch(lrs=(1e-9,), max_steps=1, eval_every=1, n_query=16, max_context=32)
    assert search.validation_sizes == (2, 8, 32, 128, 512, 1024)
    info = ft.select_recipe(prepare_classifier(template), X, y, 2, search, 0)
    assert info["validation_sizes"] == expected and info["n_validation"] == n_rows // 5


def test_check_search_defaults_long_family_compares_the_grid_and_the_longest_validation_context():
    script = load_script("check_search_defaults")
    r = script._recipes(128, None, 1000, "long")
    assert list(r) == [lab for lab in script.LONG_LABELS if lab != "none"]
    assert r["cur"].lrs == r["vlong"].lrs == (3e-4, 1e-3) and r["low"].lrs == r["low_vlong"].lrs == (1e-4, 3e-4)
    assert r["cur"].validation_sizes == r["low"].validation_sizes == (2, 8, 32, 128, 512)
    assert r["vlong"].validation_sizes == r["low_vlong"].validation_sizes == (2, 8, 32, 128, 512, 800)
    assert r["cur"].max_context is None and r["cur"].validation_repeats == 2 and r["cur"].max_allowance == 0.05
    # they differ in what they train or score on, so none shares its runs with another
    assert len({repr(s.training_fields()) for s in r.values()}) == 4
    assert set(script._recipes(64, 128, 500)) == set(script.LABELS) - {"none"}
    assert list(script._recipes(128, 256, 500, "long")) == ["cur", "low"]  # 400 training rows: vlong would be cur


def test_check_search_defaults_estimator_family_is_the_estimators_own_search():
    """``--family estimator`` runs the search the estimator's defaults build (so it follows them) on its old grid
    and on its current one (the lower), nothing else changed."""
    import dataclasses

    from ttt_helpers.tabpfn.classifier import TTTTabPFNClassifier
    from ttt_helpers.tabpfn.fit_plan import ttt_recipe

    script = load_script("check_search_defaults")
    r = script._recipes(64, 128, 500, "estimator")
    assert list(r) == [lab for lab in script.ESTIMATOR_LABELS if lab != "none"]
    est, _ = ttt_recipe(TTTTabPFNClassifier().get_params(deep=False))
    assert r["est_low"] == est and est.lrs == (1e-4, 3e-4) and est.n_query == 128 and est.max_context == 256
    assert r["est"].lrs == (3e-4, 1e-3) and dataclasses.replace(r["est"], lrs=est.lrs) == est
    assert set(script.GUARDED["estimator"]) == set(r) and script.REFERENCE["estimator"] == "est"


def test_head_lr_mult_trains_the_output_head_faster_than_the_body(template):
    """``head_lr_mult`` puts the output head (``HEAD_PREFIXES``) in its own optimiser group: with SGD and no
    momentum a step moves each parameter by ``lr * grad``, so at multiplier 10 the head moves 10 times as far as at
    multiplier 1 on the same episode, and the body exactly as far. Multiplier 1 keeps the single group of the plain
    recipe."""
    X, y = _toy()
    clf = prepare_classifier(template)
    model = clf.models_[0]
    assert len(ft.param_groups(model, 1e-3)) == 1
    body, head = ft.param_groups(model, 1e-3, 10.0)
    assert head["lr"] == pytest.approx(1e-2) and body["lr"] == 1e-3
    assert len(body["params"]) + len(head["params"]) == len(list(model.parameters())) and head["params"]
    w0 = ft.snapshot_state(clf)
    moved = {}
    for mult in (1.0, 10.0):
        ft.load_state(clf, w0)
        cfg = ft.TTTConfig(optimizer="sgd", steps=1, lr=1e-3, momentum=0.0, n_query=32, grad_clip=0.0,
                           head_lr_mult=mult)
        ft.ttt_finetune(clf, X[:300], y[:300], 4, cfg, 5)
        w = ft.snapshot_state(clf)
        moved[mult] = {k: (w[k] - w0[k]).abs().sum().item() for k in w0}
    head_keys = [k for k in w0 if k.startswith(ft.HEAD_PREFIXES)]
    body_keys = [k for k in w0 if k not in head_keys and moved[1.0][k] > 0]
    assert head_keys and body_keys
    for k in head_keys:
        assert moved[10.0][k] == pytest.approx(10 * moved[1.0][k], rel=1e-3)
    for k in body_keys:
        assert moved[10.0][k] == pytest.approx(moved[1.0][k], rel=1e-4)
    with pytest.raises(ValueError, match="head_lr_mult"):
        ft.TTTConfig(head_lr_mult=0)
    with pytest.raises(ValueError, match="output-head"):
        ft.param_groups(torch.nn.Linear(2, 2), 1e-3, 10.0)
    assert ft.RecipeSearch(head_lr_mult=30).config(1e-4).head_lr_mult == 30


def _search_record(selected, last_gain, last_se=0.01):
    trace = [[20, 0.5, 1.0, True, [0.05, 0.01, -0.02], [0.02, 0.01, 0.01]],
             [40, 0.6, 0.9, True, [0.06, 0.02, last_gain], [0.02, 0.01, last_se]]]
    return {"selected": selected, "validation_sizes": [2, 32, 800],
            "runs": [{"lr": 1e-3, "trace": [[20, 0.4, 1.0, True, [0.0] * 3, [0.0] * 3]]}, {"lr": 3e-4, "trace": trace}]}


def test_adapted_weights_beyond_the_longest_validated_context_only_with_a_gain_there():
    rec = _search_record({"lr": 3e-4, "steps": 40}, last_gain=-0.01)
    sizes, gains, ses = ft.chosen_validation_gains(rec)
    assert sizes.tolist() == [2, 32, 800] and gains.tolist() == [0.06, 0.02, -0.01] and ses[-1] == 0.01
    assert ft.adapted_at(rec, 2) and ft.adapted_at(rec, 800)  # validated sizes and below: the guard covered them
    assert not ft.adapted_at(rec, 801) and not ft.adapted_at(rec, 1000)  # beyond, with a loss at 800
    up = _search_record({"lr": 3e-4, "steps": 40}, last_gain=0.015)
    assert ft.adapted_at(up, 1000) and not ft.adapted_at(up, 1000, z=2.0)  # 0.015 is 1.5 se
    # the trace entry of the chosen step, not another
    assert ft.chosen_validation_gains(_search_record({"lr": 3e-4, "steps": 20}, 0.5))[1].tolist() == [0.05, 0.01, -0.02]
    kept = _search_record(None, last_gain=0.1)
    assert ft.chosen_validation_gains(kept) is None and not ft.adapted_at(kept, 2)
    with pytest.raises(ValueError, match="no trace entry"):
        ft.chosen_validation_gains(_search_record({"lr": 3e-4, "steps": 60}, 0.0))
