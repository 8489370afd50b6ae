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
