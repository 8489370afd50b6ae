"""Tests for ttt_helpers.tabpfn.analysis (pure functions of protocol results; no model runs)."""

import math

import numpy as np
import pytest

from ttt_helpers.tabpfn import analysis as an


def test_context_needed_interpolates_in_log_n():
    sizes = [2, 4, 8, 16]
    acc = [0.2, 0.4, 0.6, 0.8]
    assert an.context_needed(sizes, acc, 0.2) == 2
    assert an.context_needed(sizes, acc, 0.6) == pytest.approx(8)
    assert an.context_needed(sizes, acc, 0.5) == pytest.approx(math.sqrt(4 * 8))
    assert math.isnan(an.context_needed(sizes, acc, 0.9))
    # a dip is ignored (running maximum)
    assert an.context_needed(sizes, [0.2, 0.5, 0.3, 0.8], 0.5) == pytest.approx(4)


def test_reduction_factor_of_a_shifted_curve_is_the_shift():
    sizes = np.array([2, 4, 8, 16, 32, 64, 128, 256])
    base = 0.1 * np.log2(sizes)  # accuracy linear in log n
    ttt = 0.1 * np.log2(sizes * 4)  # the same curve reached with 4 times fewer samples
    red = an.reduction_factors(sizes, base, ttt)
    ok = [f for f, b in zip(red["factor"], red["bound"]) if not b and np.isfinite(f)]
    assert ok and np.allclose(ok, 4.0)
    assert red["median_factor"] == pytest.approx(4.0)


def test_reduction_factor_ignores_levels_at_or_below_the_floor():
    """Majority-class voting must not produce a factor: levels at or below majority + margin are left out."""
    sizes = [2, 4, 8, 16]
    base = [0.30, 0.70, 0.76, 0.76]  # climbs only to the majority rate 0.76
    ttt = [0.76, 0.76, 0.76, 0.76]   # predicts the majority class everywhere
    assert an.reduction_factors(sizes, base, ttt)["targets"]  # without a floor: factors from nothing
    red = an.reduction_factors(sizes, base, ttt, floor=0.76 + an.MAJORITY_MARGIN)
    assert red["targets"] == [] and math.isnan(red["median_factor"]) and red["floor"] == pytest.approx(0.78)


def test_mean_curve_band_and_break_even():
    A = np.array([[0.2, 0.4], [0.4, 0.6]])
    m, lo, hi = an.mean_curve_with_band(A)
    assert np.allclose(m, [0.3, 0.5])
    assert np.allclose(hi - m, 1.96 * np.std([0.2, 0.4], ddof=1) / np.sqrt(2))
    assert an.break_even_queries(10.0, 0.03, 0.01) == pytest.approx(500.0)
    assert an.break_even_queries(10.0, 0.01, 0.02) == math.inf
    with pytest.raises(ValueError):
        an.break_even_queries(-1.0, 0.1, 0.0)


def _result(name="t", classes=2, none=(0.5, 0.6, 0.7, 0.8), ttt=(0.6, 0.7, 0.8, 0.85), top=None, majority=0.5):
    sizes = [2, 4, 8, 16]
    top = top or [0.6] * 4
    return {"name": name, "meta": {"rows": 2000, "classes": classes, "majority_fraction": majority},
            "context_sizes": sizes, "n_context_used": sizes, "n_rows_split": {"ttt": 1000, "pool": 800, "test": 200},
            "majority": majority, "n_query": 100,
            "acc": {"none": list(none), "ttt": list(ttt)},
            "acc_reps": {"none": [[a, a] for a in none], "ttt": [[a, a] for a in ttt]},
            "top_share": {"none": [0.6] * 4, "ttt": top},
            "ttt": {"ttt": {"selected": {"lr": 3e-4, "steps": 40}, "steps": 40, "seconds": 10.0}},
            "timing": {"forward_seconds": {"none": [0.1, 0.2, 0.4, 0.8], "ttt": [0.1, 0.2, 0.4, 0.8]}}}


def test_collapse_warning_names_the_sizes():
    r = _result(top=[0.97, 0.96, 0.5, 0.5])
    w = an.collapse_warnings(r)
    assert len(w) == 1 and w[0].startswith("ttt: at n = 2, 4") and "95%" in w[0]
    assert "every context size" in an.collapse_warnings(_result(top=[0.99] * 4))[0]
    assert an.collapse_warnings(_result()) == []


def test_absent_class_warning_where_tabpfns_rule_scores_higher():
    r = _result()
    assert an.absent_class_warnings(r) == []  # a result made before acc_present was recorded
    r["acc_present"] = {"none": [0.58, 0.61, 0.7, 0.8], "ttt": [0.6, 0.7, 0.8, 0.85]}
    r["absent_share"] = {"none": [0.3, 0.02, 0.0, 0.0], "ttt": [0.0] * 4}
    w = an.absent_class_warnings(r)
    assert len(w) == 1 and "n = 2: 30% of predictions, 0.500 -> 0.580" in w[0] and "n = 4" not in w[0]
    assert w[0] in an.table_summary(r)["warnings"]
    assert an.absent_class_warnings(r, gap=0.1) == []
    r["rules"] = {"none": "present", "ttt": "open"}  # a result whose no-TTT curve is read with tabpfn's rule
    assert an.absent_class_warnings(r) == []


def test_table_summary_break_even_only_where_the_factor_is_defined():
    s = an.table_summary(_result())
    be = s["break_even"]
    assert be is not None and be["target_acc"] == max(t for t, f in zip(s["reduction"]["targets"],
                                                                          s["reduction"]["factor"]) if np.isfinite(f))
    assert be["break_even_queries"] == pytest.approx(10.0 / (be["per_query_base"] - be["per_query_ttt"]))
    flat = an.table_summary(_result(none=(0.5, 0.5, 0.5, 0.5), ttt=(0.5, 0.5, 0.5, 0.5), majority=0.5))
    assert flat["break_even"] is None and any("no reduction factor" in w for w in flat["warnings"])


def test_tables_and_goals():
    rs = [_result("a", 10, none=(0.1, 0.12, 0.2, 0.3), ttt=(0.25, 0.3, 0.42, 0.45), majority=0.15),
          _result("b", 2), _result("c", 8, none=(0.15, 0.15, 0.2, 0.3), ttt=(0.3, 0.32, 0.4, 0.42), majority=0.2)]
    t = an.accuracy_table(rs, ["none", "ttt"], min_classes=8)
    assert t.index.name == "mean over 2 tables" and list(t.columns) == ["n = 2", "n = 4", "n = 8", "n = 16"]
    assert t.loc["none", "n = 2"] == pytest.approx(0.125)
    g = an.goal_table(rs, "ttt", min_classes=8, small=8)
    assert g["met"].iloc[0] and g["met"].iloc[2]
    assert "smallest ratio" in g["measured"].iloc[0]
    pg = an.paired_gains(rs, "ttt")
    assert pg["gains"].shape == (3, 4) and np.all(pg["mean"] > 0)
    red = an.reduction_table(an.summarise(rs))
    assert list(red.columns)[:2] == ["TTT", "accuracy level"]


def test_merge_labels_adds_curves_of_the_same_episodes():
    a, b = _result("t"), _result("t")
    b["acc"]["logistic_regression"] = [0.7] * 4
    b["acc_reps"]["logistic_regression"] = [[0.7, 0.7]] * 4
    m = an.merge_labels([a], [b], ["logistic_regression"])
    assert m[0]["acc"]["logistic_regression"] == [0.7] * 4 and "logistic_regression" not in a["acc"]
    b2 = {**b, "n_query": 50}
    with pytest.raises(ValueError, match="other episodes"):
        an.merge_labels([a], [b2], ["logistic_regression"])
    with pytest.raises(ValueError, match="missing"):
        an.merge_labels([a], [_result("u")], ["none"])


def test_merge_labels_renames_a_second_runs_curve():
    a, b = _result("t"), _result("t", ttt=(0.9, 0.8, 0.7, 0.6))
    m = an.merge_labels([a], [b], {"ttt": "short"})
    assert m[0]["acc"]["short"] == [0.9, 0.8, 0.7, 0.6] and m[0]["acc_reps"]["short"][2] == [0.7, 0.7]
    assert m[0]["acc"]["ttt"] == a["acc"]["ttt"] != b["acc"]["ttt"]  # the first run's own curve stays
    with pytest.raises(ValueError, match="already has a curve 'ttt'"):
        an.merge_labels([a], [b], ["ttt"])


def test_merge_labels_on_nested_dicts_brings_the_ttt_record():
    """table -> seed -> result, as check_search_defaults.py writes: merged key by key, each label's TTT record
    with its curve, so that guarded_label can read it."""
    a, b = _result("t"), _result("t", ttt=(0.9, 0.8, 0.7, 0.6))
    a["ttt"], b["ttt"] = {"ttt": {"selected": None}}, {"ttt": {"selected": {"lr": 1e-4, "steps": 20}}}
    m = an.merge_labels({"t": {0: a}}, {"t": {0: b, 1: b}}, {"ttt": "low"})
    assert list(m) == ["t"] and list(m["t"]) == [0]
    r = m["t"][0]
    assert r["acc"]["low"] == [0.9, 0.8, 0.7, 0.6] and r["ttt"]["low"] == b["ttt"]["ttt"]
    assert r["ttt"]["ttt"] == a["ttt"]["ttt"] and "low" not in a["ttt"]  # the inputs are left as they were
    with pytest.raises(ValueError, match="missing"):
        an.merge_labels({"t": {0: a}, "u": {0: a}}, {"t": {0: b}}, {"ttt": "low"})


def _run(results, **settings):
    return {"results": results, "skipped": [], "model": "toy model",
            "configs": {"selected": {"lrs": [3e-4, 1e-3], "max_steps": 60, "eval_every": 20, "patience": 2,
                                     "validation_sizes": [2, 8], "validation_fraction": 0.2}},
            "settings": {"n_query": 128, "max_test": 256, "reps": 2, **settings}}


def test_prediction_table_accuracy_and_top_class():
    y = np.array(["a", "a", "b", "c"])
    t = an.prediction_table({"good": y, "all a": np.array(["a"] * 4)}, y)
    assert t.loc["good", "test accuracy"] == 1.0 and t.loc["all a", "test accuracy"] == 0.5
    assert t.loc["all a", "most predicted"] == "a" and t.loc["all a", "its share"] == "100%"
    assert t.loc["good", "its share"] == "50%" and list(t.columns) == ["test accuracy", "most predicted", "its share"]
    with pytest.raises(ValueError, match="shape"):
        an.prediction_table({"short": y[:3]}, y)


def test_search_line_and_run_numbers():
    run = _run([_result("a"), _result("b")])
    assert an.search_line(run, "selected") == (
        "2 tables done, 0 skipped; search: AdamW, lr in [0.0003, 0.001], at most 60 steps per lr, a score every 20 "
        "steps, patience 2, validation contexts [2, 8]")
    n = an.run_numbers(run)
    assert n == {"model": "toy model", "validation-fraction": "20%", "lrs": "[0.0003, 0.001]", "max-steps": "60",
                 "n-query": "128", "max-test": "256", "reps": "2"}


def test_recipe_numbers_and_line():
    rs = [_result("a"), _result("b"), _result("c")]
    rs[1]["ttt"]["ttt"] = {**rs[1]["ttt"]["ttt"], "selected": None}
    rs[2]["ttt"]["ttt"] = {**rs[2]["ttt"]["ttt"], "selected": {"lr": 1e-3, "steps": 20}}
    recipes = an.recipe_table(rs, "ttt")
    assert an.recipe_numbers(recipes) == {"kept": 1, "n": 3, "steps-range": "20 to 40",
                                          "median-steps": "30"}
    assert an.recipe_line(recipes) == ("zero-shot weights kept on 1 of 3 tables; chosen learning rates: "
                                       "{0.0003: 1, 0.001: 1} | median chosen steps 30")


def test_gain_numbers_and_mean_curves():
    rs = [_result("a", none=(0.5, 0.6, 0.7, 0.8), ttt=(0.5, 0.7, 0.75, 0.79)),
          _result("b", none=(0.5, 0.6, 0.7, 0.8), ttt=(0.5, 0.7, 0.75, 0.79))]
    for r in rs:
        r["acc"]["logistic_regression"] = [0.55, 0.68, 0.76, 0.9]
        r["acc_reps"]["logistic_regression"] = [[a, a] for a in r["acc"]["logistic_regression"]]
    S = an.summarise(rs, labels=["ttt"])
    c = an.mean_curves(S)
    assert set(c) == {"none", "ttt", "logistic_regression"} and np.allclose(c["ttt"], [0.5, 0.7, 0.75, 0.79])
    assert an.gain_numbers(S, "ttt", between=(4, 8)) == {"gain-peak": "+0.100", "gain-peak-n": 4,
                                                         "gain-first": "+0.000", "gain-last": "-0.010",
                                                         "gap": "0.020", "lr-margin": "-0.010"}
    with pytest.raises(ValueError, match="no context size"):
        an.gain_numbers(S, "ttt", between=(100, 200))


def test_headline_and_paired_gain_lines():
    rs = [_result("a"), _result("b", none=(0.5, 0.6, 0.7, 0.8), ttt=(0.4, 0.7, 0.8, 0.85))]
    S = an.summarise(rs)
    lines = an.headline_lines(S, names={"ttt": "adapted"}, paper="0.2 -> 0.45")
    assert lines[0] == "near zero shot (n=2): no TTT 0.500 -> adapted 0.500   (paper: 0.2 -> 0.45)"
    assert lines[1] == "reduction factors only for levels above 0.500 + 0.02 (mean majority rate + margin)"
    red = S["reduction"]["ttt"]
    assert lines[2] == f"ttt: median reduction factor {red['median_factor']:.2f} over " \
                       f"{sum(np.isfinite(f) and not b for f, b in zip(red['factor'], red['bound']))} levels"
    g = an.paired_gain_lines(rs, "ttt", name="adapted model", count_at=(2, 16))
    assert g[0] == "gain of the adapted model over no TTT, mean over tables [95 % band]:"
    assert len(g) == 6 and g[1].startswith("  n =    2: +0.000 [")
    assert g[-1] == "tables where it helps / hurts at n=2: 1 / 1 | at n=16: 2 / 0"
    with pytest.raises(ValueError, match="not one of the context sizes"):
        an.paired_gain_lines(rs, "ttt", count_at=(3,))


def test_break_even_lines():
    import pandas as pd

    assert an.break_even_lines(pd.DataFrame()) == []
    rows = [{"device": "cuda", "TTT": "ttt", "accuracy level": a, "n without TTT": nb, "n with TTT": nt,
             "TTT seconds": 15.62, "break-even queries": q} for a, nb, nt, q in ((0.5, 32.0, 16.0, 1.9e6),
                                                                                  (0.556, 1000.0, 469.0, 4967071.0))]
    assert an.break_even_lines(pd.DataFrame(rows)) == [
        "cuda, ttt: to match the no-TTT accuracy 0.556 (reached at n=1000) TTT needs n=469.0; TTT (15.6 s) pays for "
        "itself after 4,967,071 queries"]


def test_search_comparison_means_and_paired_gains():
    """Per size: means over tables of the seed-averaged accuracies; paired gains against the reference with their
    standard error over tables; the "all" row averages over sizes."""
    def res(old, new):
        return {"acc": {"none": [0.1, 0.2], "old": old, "new": new}}

    results = {"a": {0: res([0.2, 0.4], [0.3, 0.4]), 1: res([0.4, 0.4], [0.5, 0.4])},
               "b": {0: res([0.2, 0.6], [0.2, 0.5])}}
    t = an.search_comparison(results, [2, 8])
    assert list(t.index) == [2, 8, "all"]
    assert np.isclose(t.loc[2, "old"], (0.3 + 0.2) / 2) and np.isclose(t.loc[2, "new"], (0.4 + 0.2) / 2)
    assert np.isclose(t.loc[2, "new - old"], 0.05) and np.isclose(t.loc[2, "se (new)"], np.std([0.1, 0.0], ddof=1) / np.sqrt(2))
    assert np.isclose(t.loc[8, "new - old"], -0.05) and np.isclose(t.loc["all", "new - old"], 0.0)
    assert "none - old" not in t.columns and np.isclose(t.loc[2, "none"], 0.1)


def _with_search(r, zero, runs, selected):
    r = dict(r)
    r["ttt"] = {"ttt": {"selected": selected, "validation_sizes": [2, 8],
                        "zero_shot": {"acc_by_size": list(zero)},
                        "runs": [{"lr": lr, "trace": [[step, 0.0, 0.0, True, list(g), [0.01, 0.01]] for step, g in rows]}
                                 for lr, rows in runs]}}
    return r


def test_validation_ceiling_takes_the_best_checkpoint_per_size_and_the_chosen_one():
    runs = [(3e-4, [(20, (0.05, -0.02)), (40, (0.01, 0.10))]), (1e-3, [(20, (0.08, -0.30))])]
    many = _with_search(_result(classes=10), (0.10, 0.20), runs, {"lr": 3e-4, "steps": 40})
    kept = _with_search(_result(classes=10), (0.30, 0.40), runs[:1], None)  # zero-shot kept: gains of 0
    few = _with_search(_result(classes=2), (0.5, 0.5), runs, {"lr": 1e-3, "steps": 20})  # not counted
    t = an.validation_ceiling([many, kept, few], "ttt")
    assert t.attrs["n_tables"] == 2 and list(t.index) == [2, 8]
    np.testing.assert_allclose(t["zero-shot"], [0.20, 0.30])
    np.testing.assert_allclose(t["chosen"], [(0.11 + 0.30) / 2, (0.30 + 0.40) / 2])
    # best per size: 2 rows -> +0.08 (lr 1e-3) on the first table, +0.05 on the second; 8 rows -> +0.10 and +0.10
    np.testing.assert_allclose(t["best per size (ceiling)"], [(0.18 + 0.35) / 2, (0.30 + 0.50) / 2])
    np.testing.assert_allclose(t["ceiling / zero-shot"], t["best per size (ceiling)"] / t["zero-shot"])
    with pytest.raises(ValueError, match="at least 12 classes"):
        an.validation_ceiling([many], "ttt", min_classes=12)


def test_fallback_quality_bar_checks_each_criterion():
    bench = {"n_estimators=1": {"mean_accuracy": {"tabpfn_fallback": 0.60, "hist_gradient_boosting": 0.58}},
             "n_estimators=auto": {"mean_accuracy": {"tabpfn_fallback": 0.60, "hist_gradient_boosting": 0.58}}}
    good = [_result(name=f"t{i}", none=(0.5, 0.6, 0.7, 0.8), majority=0.5) for i in range(3)]
    bar = an.fallback_quality_bar(bench, good)
    assert bar["met"].tolist() == [True, False, True, True]  # the ensemble is 2, not 3, points above HGB
    # one table far below its majority rate at n = 8 (100 queries: se 0.05 at 0.5, so -6 se)
    bad = good + [_result(name="imbalanced", none=(0.9, 0.9, 0.5, 0.9), majority=0.8)]
    bar = an.fallback_quality_bar(bench, bad)
    assert not bar["met"].iloc[2] and "imbalanced at n = 8" in bar["measured"].iloc[2]
    assert an.fallback_quality_bar(bench, bad, small=16)["met"].iloc[2]  # n >= 16 only
    # a mean curve that falls from n = 4 to 8 on every table fails the monotonicity criterion
    falling = [_result(name=f"f{i}", none=(0.6, 0.7, 0.5 + 0.01 * i, 0.8), majority=0.4) for i in range(3)]
    bar = an.fallback_quality_bar(bench, falling)
    assert not bar["met"].iloc[3] and "from n = 4 to 8" in bar["measured"].iloc[3]


def test_fallback_quality_bar_counts_the_spread_over_context_draws():
    bench = {k: {"mean_accuracy": {"tabpfn_fallback": 0.6, "hist_gradient_boosting": 0.58}}
             for k in ("n_estimators=1", "n_estimators=auto")}
    r = _result(name="noisy", none=(0.5, 0.5, 0.7, 0.8), majority=0.8)
    r["acc_reps"]["none"][2] = [0.5, 0.9]  # mean 0.7; the two context draws disagree
    # binomial se alone: sqrt(0.21 / 100) = 0.046 -> -2.2 se (fails); with the draws' spread: se 0.205 -> -0.5 se
    assert "(-0.5 se)" in an.fallback_quality_bar(bench, [r])["measured"].iloc[2]
    assert an.fallback_quality_bar(bench, [r])["met"].iloc[2]


def test_majority_margins_lists_every_table_and_size_from_the_most_negative():
    good = _result(name="good", none=(0.5, 0.6, 0.7, 0.8), majority=0.5)
    bad = _result(name="imbalanced", none=(0.9, 0.9, 0.5, 0.9), majority=0.8)
    m = an.majority_margins([good, bad])
    sizes = [n for n in good["context_sizes"] if n >= 8]
    assert len(m) == 2 * len(sizes) and set(m["n"]) == set(sizes)
    first = m.iloc[0]
    assert (first["table"], first["n"]) == ("imbalanced", 8)
    np.testing.assert_allclose(first["margin_se"], (0.5 - 0.8) / np.sqrt(0.25 / 100))  # -6 se
    assert m["margin_se"].is_monotonic_increasing
    assert len(an.majority_margins([good, bad], small=16)) == 2 * len([n for n in sizes if n >= 16])


def test_standard_error_is_the_sample_sd_over_root_n_and_the_band_uses_it():
    d = np.array([0.01, -0.02, 0.03, 0.00, 0.05])
    assert an.standard_error(d) == pytest.approx(np.std(d, ddof=1) / np.sqrt(5))
    import pandas as pd

    assert an.standard_error(pd.Series(d)) == pytest.approx(an.standard_error(d))  # what the appendix passes
    assert an.standard_error(d[:1]) == 0.0
    G = np.array([[0.1, 0.2], [0.3, 0.1], [0.2, 0.4]])
    m, lo, hi = an.mean_curve_with_band(G)
    np.testing.assert_allclose(hi - m, 1.96 * an.standard_error(G, axis=0))
    np.testing.assert_allclose(an.standard_error(G.T, axis=1), an.standard_error(G, axis=0))


def test_guarded_label_uses_the_pretrained_weights_beyond_the_longest_validated_context_after_a_loss_there():
    """Validated up to 4 rows: sizes 2 and 4 keep the TTT curve; 8 and 16 take 'none' after a validation loss at 4
    rows, the TTT curve after a gain. Nested dicts and lists keep their shape; nothing else changes."""
    def with_trace(gain_at_4):
        r = _result()
        r["ttt"]["ttt"].update(validation_sizes=[2, 4], runs=[{"lr": 3e-4, "trace": [
            [40, 0.6, 1.0, True, [0.05, gain_at_4], [0.01, 0.01]]]}])
        return r

    lost = an.guarded_label([with_trace(-0.02)], "ttt")[0]
    assert lost["acc"]["ttt (guarded)"] == [0.6, 0.7, 0.7, 0.8]
    assert lost["acc_reps"]["ttt (guarded)"] == [[0.6, 0.6], [0.7, 0.7], [0.7, 0.7], [0.8, 0.8]]
    assert lost["acc"]["ttt"] == [0.6, 0.7, 0.8, 0.85] and lost["acc"]["none"] == [0.5, 0.6, 0.7, 0.8]
    nested = an.guarded_label({"table": {0: with_trace(0.03)}}, "ttt", new="g")
    assert nested["table"][0]["acc"]["g"] == [0.6, 0.7, 0.8, 0.85]
    kept = with_trace(0.03)
    kept["ttt"]["ttt"]["selected"] = None
    assert an.guarded_label(kept, "ttt")["acc"]["ttt (guarded)"] == kept["acc"]["none"]
    with pytest.raises(ValueError, match="already has"):
        an.guarded_label(lost, "ttt")


def test_apply_guard_replaces_every_per_size_field_of_the_label_and_keeps_the_unguarded_ones():
    """The command line's report: the 'ttt' curve itself is guarded, in every per-size field, the same as
    guarded_label's curve; the unguarded fields are kept beside it; a second application is refused."""
    r = _result()
    r["ttt"]["ttt"].update(validation_sizes=[2, 4], runs=[{"lr": 3e-4, "trace": [
        [40, 0.6, 1.0, True, [0.05, -0.02], [0.01, 0.01]]]}])
    r["absent_share"] = {"none": [0.0] * 4, "ttt": [0.1, 0.2, 0.3, 0.4]}
    g = an.apply_guard(r, "ttt")
    assert g["guard"]["ttt"] == [True, True, False, False]
    assert g["acc"]["ttt"] == an.guarded_label(r, "ttt")["acc"]["ttt (guarded)"] == [0.6, 0.7, 0.7, 0.8]
    assert g["acc_reps"]["ttt"][2] == [0.7, 0.7] and g["top_share"]["ttt"] == [0.6] * 4
    assert g["absent_share"]["ttt"] == [0.1, 0.2, 0.0, 0.0]
    assert g["acc"]["ttt (unguarded)"] == r["acc"]["ttt"] == [0.6, 0.7, 0.8, 0.85]  # the input is left as it was
    assert g["absent_share"]["ttt (unguarded)"] == [0.1, 0.2, 0.3, 0.4] and "guard" not in r
    with pytest.raises(ValueError, match="guarded already"):
        an.apply_guard(g, "ttt")
