"""Tests for ttt_helpers.tabpfn.pretrain.real: the pool of real tables apart from the benchmark, and its tasks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ttt_helpers.tabpfn import benchmark as td
from ttt_helpers.tabpfn import pretrain as pt
from ttt_helpers.tabpfn import pretrain_eval as pe
from ttt_helpers.tabpfn.pretrain import real


def _frame(n, seed, cols=("a", "b", "c")):
    g = np.random.default_rng(seed)
    return pd.DataFrame({c: g.normal(size=n) * 10 for c in cols})


def test_find_overlaps_finds_copies_subsets_and_renamed_copies_but_not_common_integer_columns():
    prot = _frame(500, 0)
    prot["age"] = np.random.default_rng(1).integers(18, 80, 500)
    protected = {"bench": prot}
    unrelated = _frame(300, 2)
    unrelated["age"] = np.random.default_rng(3).integers(18, 80, 300)  # the same ages, by chance
    codes = [f"r{i}" for i in range(500)]
    by_rows = prot[["age"]].assign(code=codes).iloc[:300].assign(w=np.arange(300.0))  # shares rows on (age, code)
    frames = {
        "copy": prot.copy(),  # same rows and columns under another name
        "subset": prot.iloc[:200].copy(),  # part of the rows
        "renamed": prot.rename(columns={"a": "x", "b": "y", "c": "z"}).iloc[50:300],  # other names, same values
        "by_rows": by_rows,
        "unrelated": unrelated,
    }
    protected["bench"] = prot.assign(code=codes)
    out = real.find_overlaps(frames, protected)
    assert out == {"copy": "bench", "subset": "bench", "renamed": "bench", "by_rows": "bench"}


def test_real_pool_leaves_out_benchmark_and_development_tables_and_their_copies():
    items = ("Ecdat/Car", "car/Mroz", "Ecdat/Mroz", "plm/Males", "MASS/Cars93", "Ecdat/Doctor", "Ecdat/Cigarette")
    tables, excluded = real.real_pool(items=items)
    assert excluded["Ecdat/Car"] == excluded["car/Mroz"] == real.PROTECTED_ITEM
    assert excluded["Ecdat/Mroz"] == "mroz_work" and excluded["plm/Males"] == "males_industry"  # copies
    assert "MASS/Cars93" not in excluded  # 93 rows: not a candidate at all
    kept = {name for name, _, _ in tables}
    assert kept == {"Ecdat/Doctor", "Ecdat/Cigarette"}
    assert kept.isdisjoint(s.item for s in (*td.SPECS, *pe.DEV_SPECS, *pe.WIDE_DEV_SPECS))
    for _, X, cat in tables:
        assert X.dtype == np.float32 and X.shape[0] >= real.MIN_ROWS and X.shape[1] == len(cat) >= real.MIN_COLUMNS


def _pool():
    g = np.random.default_rng(0)
    n = 400
    num = g.lognormal(0, 3, n)  # heavy tails
    num[::17] = np.nan
    X = np.column_stack([num, g.integers(0, 3, n), g.normal(size=n), (g.random(n) < 0.2)]).astype(np.float32)
    small = g.normal(size=(250, 5)).astype(np.float32)
    return ((("t1", X, np.array([False, True, False, False])), ("t2", small, np.zeros(5, bool))), {})


def test_real_tables_batches_have_the_prior_format():
    pool = _pool()
    common = dict(batch_size=6, max_features=4, max_classes=5, min_seq_len=100, max_seq_len=300)
    np.random.seed(0)
    X, y, d, seq_lens, train_sizes = real.RealTables(pool, **common).get_batch()
    B, T, H = X.shape
    assert (B, H) == (6, 4) and T <= 250 and y.shape == (B, T)
    assert torch.all(seq_lens == T) and 2 <= int(train_sizes[0]) <= T - 1
    for b in range(B):
        labels = y[b].long()
        assert labels.min() == 0 and labels.max() < 5
        assert set(labels.unique().tolist()) == set(range(int(labels.max()) + 1))  # dense 0..K-1
        assert 1 <= int(d[b]) <= 4 and torch.all(X[b, :, int(d[b]):] == 0)
        assert not torch.isnan(y[b]).any()
    np.random.seed(0)
    again = real.RealTables(pool, **common).get_batch()
    assert torch.equal(again[1], y) and torch.allclose(again[0], X, equal_nan=True)


def test_real_tables_squash_heavy_tails_when_asked():
    pool = ((("t1", _pool()[0][0][1][:, [0, 2]], np.zeros(2, bool)),), {})
    common = dict(batch_size=8, max_features=1, max_classes=3, min_seq_len=300, max_seq_len=300)
    np.random.seed(1)
    raw = real.RealTables(pool, squash_share=0.0, **common).get_batch()[0]
    np.random.seed(1)
    squashed = real.RealTables(pool, squash_share=1.0, **common).get_batch()[0]
    assert np.nanmax(raw.abs().numpy()) > 1e3  # the lognormal column
    assert np.nanmax(squashed.abs().numpy()) < 10  # soft-clipped


def test_target_from_a_column():
    np.random.seed(0)
    col = np.arange(100, dtype=np.float32)
    y = real._target(col, False, 4)  # numeric, many values: K equal-frequency classes, K in 2..4
    k = y.max() + 1
    assert 2 <= k <= 4 and np.ptp(np.bincount(y)) <= 1
    assert np.all(np.diff(y) >= 0)  # by rank
    cat = np.array([0, 0, 0, 1, 1, 2, 3, 4, np.nan], dtype=np.float32)
    y = real._target(cat, True, 3)  # two most frequent levels kept, the rest lumped
    assert y.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, -1]
    assert real._target(np.ones(5, np.float32), False, 3) is None


def test_make_prior_real_uses_the_pool(monkeypatch):
    monkeypatch.setattr(real, "real_pool", _pool)
    stage = dict(start=0.0, min_rows=100, max_rows=200, max_features=3, max_classes=4, batch=2, reuse=1)
    prior = pt.make_prior(stage, "real")
    assert isinstance(prior, pt.RealTables) and [t[0] for t in prior.tables] == ["t1", "t2"]
    assert pt.PretrainConfig(prior="real|graph_scm").prior == "real|graph_scm"
    with pytest.raises(ValueError, match="empty"):
        real.RealTables(((), {}), batch_size=1, max_features=1, max_classes=2, min_seq_len=2, max_seq_len=4)


def test_real_pool_script_records_the_pool_with_its_provenance(tmp_path, monkeypatch):
    import json

    from script_modules import load_script

    script = load_script("real_pool")
    excluded = {"plm/Males": "males_industry", "Ecdat/Car": real.PROTECTED_ITEM}
    monkeypatch.setattr(script.real, "real_pool", lambda min_rows: (_pool()[0], excluded))
    assert script.main(["--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "real_pool.json").read_text())
    assert [t["item"] for t in record["pool"]] == ["t1", "t2"] and record["excluded"] == excluded
    assert record["pool"][0] == {"item": "t1", "rows": 400, "columns": 4, "categorical": 1}
    prov = json.loads((tmp_path / "real_pool.provenance.json").read_text())
    assert prov["results"] == {"tables": 2, "rows_total": 650, "excluded_items": 1, "excluded_copies": 1}
    assert "real_pool.json" in prov["files"]


def test_pool_cache_round_trip_and_real_pool_reads_it(tmp_path, monkeypatch):
    pool = (_pool()[0], {"plm/Males": "males_industry", "Ecdat/Car": real.PROTECTED_ITEM})
    calls = []

    def fake_pool(min_rows=real.MIN_ROWS, items=None):
        calls.append(min_rows)
        return pool

    monkeypatch.setattr(real, "real_pool", fake_pool)
    path = real.write_pool_cache(tmp_path / "pool", min_rows=250)  # no ".npz" appended
    assert path == tmp_path / "pool" and path.exists() and calls == [250]
    (tables, excluded), min_rows = real.read_pool_cache(path)
    assert min_rows == 250 and excluded == pool[1] and [t[0] for t in tables] == [t[0] for t in pool[0]]
    for (_, X, cat), (_, X0, cat0) in zip(tables, pool[0]):
        assert X.dtype == np.float32 and np.array_equal(X, X0, equal_nan=True) and np.array_equal(cat, cat0)
    monkeypatch.undo()  # the real real_pool from here on
    monkeypatch.setenv(real.POOL_CACHE_ENV, str(path))
    real.real_pool.cache_clear()
    try:
        got, _excluded = real.real_pool(250)
        assert [t[0] for t in got] == [t[0] for t in pool[0]] and np.array_equal(got[0][1], pool[0][0][1],
                                                                                   equal_nan=True)
        with pytest.raises(ValueError, match="min_rows=250"):
            real.real_pool(200)
    finally:
        real.real_pool.cache_clear()
