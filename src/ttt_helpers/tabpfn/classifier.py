"""A scikit-learn classifier that test-time trains TabPFN on part of your table: :class:`TTTTabPFNClassifier`.

``fit(X, y)`` splits the labelled rows in two (seeded):

* ``ttt_size`` rows are spent on **test-time training**: the TabPFN weights take ``steps`` optimiser steps, each
  on one context/query episode drawn from these rows (``ttt_helpers.tabpfn.ttt.ttt_finetune``, the paper's
  protocol; AdamW or SGD with momentum);
* of the other rows, ``context_size`` are kept as the **context** that every prediction conditions on.

``predict_proba(X)`` is then one TabPFN forward pass per batch of query rows, with the adapted weights and the
kept context, through the same ``tabpfn`` fine-tuning path that training used
(``tabpfn_ttt.make_episode`` / ``episode_logits``, labels in the table's global label space).
``ttt_size=0`` (or ``steps=0``) gives the same predictor without TTT: the baseline to compare with.

Which weights are adapted is recorded in ``model_description_``: the official TabPFN v2 classifier checkpoint
if the machine has it, else the book's own fallback (``data/models/tabpfn_fallback.ckpt``), or any checkpoint
file you name. Nothing is ever downloaded.

Inputs: a NumPy array or a pandas DataFrame. Columns of dtype ``object``, ``string``, ``category`` (or named in
``categorical_features``) are categorical: their categories are learned in ``fit`` and coded ``0..K-1``
(unseen categories at predict time and missing values become ``NaN``), and TabPFN is told they are categorical.
Booleans become 0/1. Missing values (``NaN``, ``None``, ``pd.NA``) are allowed in features, not in the target;
infinite values are rejected.

This module is the adapter between tables and the array-based functions of :mod:`ttt_helpers.tabpfn.ttt`
(which it imports, never copies): the table encoder (:class:`TableEncoder`), the row split of ``fit`` and the
batched prediction.
"""

from __future__ import annotations

import numbers
import time
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

__all__ = [
    "MAX_CLASSES",
    "TableEncoder",
    "resolve_model",
    "class_count_error",
    "check_target",
    "TTTTabPFNClassifier",
]

#: TabPFN v2 predicts at most 10 classes (its decoder has 10 outputs).
MAX_CLASSES = 10

_SAVE_KEY = "ttt_tabpfn_estimator"
_SAVE_FORMAT = 1


# ----------------------------------------------------------------------------------------------------------
# Tables -> float matrices


def _is_dataframe(X) -> bool:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency of the tabular extra
        return False
    return isinstance(X, pd.DataFrame)


def _is_sparse(X) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover
        return False
    return sp.issparse(X)


def _is_missing(values) -> np.ndarray:
    import pandas as pd

    return np.asarray(pd.isna(values), dtype=bool)


class TableEncoder:
    """Turns a table (DataFrame or array) into a float matrix with ``NaN`` for missing values.

    Parameters
    ----------
    categorical_features : "auto", None or list of int/str
        ``"auto"``: columns of dtype object/string/category (and, in an object array, columns that are not all
        numbers) are categorical. A list names further categorical columns by position or by name (their values
        are coded as categories even if numeric). ``None``: only non-numeric columns are categorical.

    Attributes
    ----------
    n_features_in_ : int
    feature_names_in_ : ndarray of str or None (set when fitted on a DataFrame with string column names)
    kinds_ : list of {"numeric", "bool", "categorical"}
    categories_ : dict column index -> list of str (the categories, code = position)
    categorical_indices_ : list of int
    """

    def __init__(self, categorical_features="auto"):
        self.categorical_features = categorical_features

    # -- helpers ------------------------------------------------------------------------------------------
    @staticmethod
    def _to_frame(X, what: str):
        """A DataFrame view of X, and whether X was a DataFrame; rejects sparse, 1-d, 3-d, empty, complex."""
        import pandas as pd

        if _is_sparse(X):
            raise TypeError(f"{what}: sparse input is not supported; pass a dense array (e.g. X.toarray())")
        if _is_dataframe(X):
            frame = X
        else:
            arr = np.asarray(X) if not isinstance(X, np.ndarray) else X
            if arr.ndim != 2:
                raise ValueError(
                    f"{what}: expected 2D array (rows x columns), got {arr.ndim}D array instead with shape "
                    f"{arr.shape}; Reshape your data with array.reshape(-1, 1) if it has a single feature, or "
                    "array.reshape(1, -1) if it is a single sample")
            if np.iscomplexobj(arr):
                raise ValueError(f"{what}: Complex data not supported; got dtype {arr.dtype}")
            frame = pd.DataFrame(arr)
        if frame.shape[1] == 0:
            raise ValueError(f"{what}: found array with 0 feature(s) (shape={frame.shape}) while a minimum of 1 is "
                             "required.")
        if frame.shape[0] == 0:
            raise ValueError(f"{what}: found array with 0 sample(s) (shape={frame.shape}) while a minimum of 1 is "
                             "required.")
        return frame

    @staticmethod
    def _column_kind(col) -> str:
        import pandas as pd

        if pd.api.types.is_bool_dtype(col):
            return "bool"
        if isinstance(col.dtype, pd.CategoricalDtype):
            return "categorical"
        if pd.api.types.is_complex_dtype(col):
            raise ValueError(f"column {col.name!r}: complex data not supported; got dtype {col.dtype}")
        if pd.api.types.is_datetime64_any_dtype(col) or pd.api.types.is_timedelta64_dtype(col):
            raise ValueError(f"column {col.name!r} has dtype {col.dtype}; convert dates/durations to numbers "
                             "(e.g. days since a reference date) before fitting")
        if pd.api.types.is_numeric_dtype(col):
            return "numeric"
        # object / string: numeric if every non-missing value is a real number
        values = col[~_is_missing(col.to_numpy(dtype=object))]
        if len(values) and all(isinstance(v, (numbers.Real, np.number)) and not isinstance(v, (bool, np.bool_))
                               for v in values):
            return "numeric"
        return "categorical"

    def _resolve_forced(self, frame) -> set:
        cf = self.categorical_features
        if cf is None or (isinstance(cf, str) and cf == "auto"):
            return set()
        if isinstance(cf, str) or not hasattr(cf, "__iter__"):
            raise ValueError(f"categorical_features must be 'auto', None or a list of column indices/names, got "
                             f"{cf!r}")
        forced = set()
        names = list(frame.columns)
        for c in cf:
            if isinstance(c, (numbers.Integral, np.integer)) and not isinstance(c, bool):
                if not 0 <= int(c) < len(names):
                    raise ValueError(f"categorical_features index {c} is out of range for {len(names)} columns")
                forced.add(int(c))
            elif c in names:
                forced.add(names.index(c))
            else:
                raise ValueError(f"categorical_features names column {c!r}, which is not among the columns {names}")
        return forced

    # -- API ----------------------------------------------------------------------------------------------
    def fit(self, X) -> "TableEncoder":
        """Learn the columns' kinds and the categories of the categorical columns."""
        frame = self._to_frame(X, "X")
        forced = self._resolve_forced(frame)
        kinds, categories = [], {}
        for j, c in enumerate(frame.columns):
            col = frame[c]
            kind = "categorical" if j in forced else self._column_kind(col)
            kinds.append(kind)
            if kind == "categorical":
                categories[j] = self._categories_of(col)
        self.kinds_ = kinds
        self.categories_ = categories
        self.categorical_indices_ = sorted(categories)
        self.n_features_in_ = int(frame.shape[1])
        names = list(frame.columns)
        if _is_dataframe(X) and all(isinstance(n, str) for n in names):
            self.feature_names_in_ = np.asarray(names, dtype=object)
        else:
            self.feature_names_in_ = None
        return self

    @staticmethod
    def _categories_of(col) -> list[str]:
        import pandas as pd

        if isinstance(col.dtype, pd.CategoricalDtype):
            return [str(v) for v in col.cat.categories]
        values = col.to_numpy(dtype=object)
        values = values[~_is_missing(values)]
        return sorted({str(v) for v in values})

    def _align(self, X, what: str):
        frame = self._to_frame(X, what)
        name = "TTTTabPFNClassifier"
        if frame.shape[1] != self.n_features_in_:
            raise ValueError(f"{what} has {frame.shape[1]} features, but {name} is expecting {self.n_features_in_} "
                             "features as input.")
        if self.feature_names_in_ is not None and _is_dataframe(X):
            given = [str(c) for c in frame.columns]
            expected = list(self.feature_names_in_)
            if set(given) != set(expected):
                missing = sorted(set(expected) - set(given))
                unexpected = sorted(set(given) - set(expected))
                raise ValueError("The feature names should match those that were passed during fit. "
                                 f"Missing: {missing}; unexpected: {unexpected}")
            frame = frame[expected]
        return frame

    def transform(self, X, what: str = "X") -> np.ndarray:
        """The float64 matrix ``(n, d)`` of X: codes for categories, ``NaN`` for missing or unseen values.

        Raises ``ValueError`` on a wrong number of columns, other column names, infinite values, or text in a
        column that was numeric at fit time.
        """
        import pandas as pd

        frame = self._align(X, what)
        out = np.empty(frame.shape, dtype=np.float64)
        for j, c in enumerate(frame.columns):
            col = frame[c]
            kind = self.kinds_[j]
            if kind == "categorical":
                lut = {v: float(i) for i, v in enumerate(self.categories_[j])}
                values = col.to_numpy(dtype=object)
                miss = _is_missing(values)
                out[:, j] = [np.nan if m else lut.get(str(v), np.nan) for v, m in zip(values, miss)]
                continue
            if pd.api.types.is_bool_dtype(col):
                out[:, j] = col.astype(float).to_numpy()
                continue
            try:
                vals = pd.to_numeric(col, errors="raise")
                vals = np.asarray(vals.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{what}: column {c!r} was numeric at fit time but holds non-numeric values "
                                 f"({exc}); pass categorical_features to treat it as categorical") from None
            if np.isinf(vals).any():
                bad = int(np.isinf(vals).sum())
                raise ValueError(f"{what}: column {c!r} contains {bad} infinite value(s); only finite numbers and "
                                 "NaN (missing) are allowed in features")
            out[:, j] = vals
        return out

    def fit_transform(self, X) -> np.ndarray:
        return self.fit(X).transform(X)

    def to_state(self) -> dict:
        """A dict of plain Python values (for saving)."""
        return {"categorical_features": (self.categorical_features if self.categorical_features in ("auto", None)
                                         else list(self.categorical_features)),
                "kinds": list(self.kinds_), "categories": {str(k): list(v) for k, v in self.categories_.items()},
                "n_features_in": self.n_features_in_,
                "feature_names_in": None if self.feature_names_in_ is None else list(self.feature_names_in_)}

    @classmethod
    def from_state(cls, state: dict) -> "TableEncoder":
        enc = cls(state["categorical_features"])
        enc.kinds_ = list(state["kinds"])
        enc.categories_ = {int(k): list(v) for k, v in state["categories"].items()}
        enc.categorical_indices_ = sorted(enc.categories_)
        enc.n_features_in_ = int(state["n_features_in"])
        names = state["feature_names_in"]
        enc.feature_names_in_ = None if names is None else np.asarray(names, dtype=object)
        return enc


# ----------------------------------------------------------------------------------------------------------
# Targets


def class_count_error(n_classes: int, counts=None, max_classes: int = MAX_CLASSES) -> str:
    """The message for a target with more classes than TabPFN can predict, with the options."""
    top = ""
    if counts is not None:
        shown = ", ".join(f"{k!s}: {v}" for k, v in list(counts.items())[:12])
        top = f" (class counts, most frequent first: {shown}{', ...' if len(counts) > 12 else ''})"
    return (f"the target has {n_classes} classes{top}, but TabPFN v2 predicts at most {max_classes}. Options: "
            f"(1) keep the {max_classes} most frequent classes and drop the other rows (what the paper does; the "
            f"command line's --keep-top-classes {max_classes}); (2) merge rare classes into one 'other' class; "
            "(3) for a numeric target, bin it into at most 10 quantile classes (pandas.qcut(y, 10, labels=False)); "
            "(4) for many classes, use a one-vs-rest or hierarchical scheme around this estimator")


def check_target(y, n_rows: int | None = None, max_classes: int = MAX_CLASSES):
    """Validate a classification target; return ``(classes, y_encoded)`` with ``y_encoded`` in ``0..C-1``.

    Raises ``ValueError`` for: not 1-d, wrong length, missing values, continuous values, one class,
    more than ``max_classes`` classes.
    """
    import pandas as pd
    from sklearn.utils.multiclass import check_classification_targets

    if y is None:
        raise ValueError("TTTTabPFNClassifier requires y to be passed, but the target y is None")
    if _is_sparse(y):
        raise TypeError("y: sparse targets are not supported; pass a 1-d array")
    if _is_dataframe(y):
        if y.shape[1] != 1:
            raise ValueError(f"y must be 1-d (one target column), got a DataFrame with {y.shape[1]} columns")
        y = y.iloc[:, 0]
    y_arr = np.asarray(y.to_numpy(dtype=object) if isinstance(y, pd.Series) and y.dtype == object else y)
    if y_arr.ndim == 2 and y_arr.shape[1] == 1:
        import warnings

        from sklearn.exceptions import DataConversionWarning

        warnings.warn("A column-vector y was passed when a 1d array was expected. Please change the shape of y to "
                      "(n_samples, ), for example using ravel().", DataConversionWarning, stacklevel=3)
        y_arr = y_arr.ravel()
    if y_arr.ndim != 1:
        raise ValueError(f"y must be 1-d (one label per row), got shape {y_arr.shape}")
    if n_rows is not None and len(y_arr) != n_rows:
        raise ValueError(f"X and y must have the same number of rows, got {n_rows} rows in X and {len(y_arr)} "
                         "labels in y")
    miss = _is_missing(y_arr) if y_arr.dtype == object or y_arr.dtype.kind == "f" else np.zeros(len(y_arr), bool)
    if miss.any():
        raise ValueError(f"y contains {int(miss.sum())} missing value(s) (NaN/None); drop those rows (the target "
                         "must be known for every training row)")
    if y_arr.dtype.kind == "f" and not np.all(np.isfinite(y_arr)):
        raise ValueError(f"y contains {int((~np.isfinite(y_arr)).sum())} infinite value(s); labels must be finite")
    if y_arr.dtype.kind == "c":
        raise ValueError("y: complex data not supported")
    check_classification_targets(y_arr)  # "Unknown label type: continuous" for regression targets
    if y_arr.dtype == object:
        types = {type(v) for v in y_arr}
        if len(types) > 1:
            raise ValueError(f"y mixes label types {sorted(t.__name__ for t in types)}; use one type (e.g. str)")
    classes, y_enc = np.unique(y_arr, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y has only 1 class ({classes[0]!r} in all {len(y_arr)} rows); a classifier needs at least "
                         "2 classes")
    if len(classes) > max_classes:
        counts = pd.Series(y_arr).astype(str).value_counts()
        raise ValueError(class_count_error(len(classes), counts.to_dict(), max_classes))
    return classes, y_enc.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# Which checkpoint


def resolve_model(model="auto", *, verify: bool = True):
    """The checkpoint file behind ``model`` and a one-line description of it (never downloads anything).

    Parameters
    ----------
    model : {"auto", "official", "fallback"} or path-like
        ``"auto"``: the official TabPFN v2 classifier checkpoint if present on this machine, else the book's
        fallback ``data/models/tabpfn_fallback.ckpt``; ``"official"``: the official one or an error;
        ``"fallback"``: ours (sha256-checked); a path: that ``.ckpt`` file (e.g. one written by
        :meth:`TTTTabPFNClassifier.save`).

    Returns
    -------
    (pathlib.Path, str)
    """
    from . import checkpoints as tm

    if isinstance(model, str) and model in ("auto", "official", "fallback"):
        if model in ("auto", "official"):
            path = tm.official_checkpoint_path()
            if path is not None:
                return path, f"official TabPFN v2 classifier checkpoint ({path.name})"
            if model == "official":
                raise ValueError(f"model='official' but no official TabPFN v2 checkpoint is on this machine (set "
                                 f"${tm.OFFICIAL_ENV_VAR} to the .ckpt file); use model='auto' or 'fallback'")
        path = tm.fallback_checkpoint_path()
        if not path.is_file():
            raise ValueError(f"no official TabPFN v2 checkpoint (set ${tm.OFFICIAL_ENV_VAR}) and no fallback at "
                             f"{path}; run scripts/pretrain_tabpfn.py or pass model=<path to a .ckpt>")
        if verify:
            tm.verify_sha256(path)
        return path, tm._describe_fallback(path)
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model must be 'auto', 'official', 'fallback' or a path to a .ckpt file, got {model!r}")
    path = Path(model).expanduser()
    if not path.is_file():
        # tabpfn would try to download a checkpoint it cannot find: never hand it a missing path
        raise ValueError(f"model={str(model)!r}: expected 'auto', 'official', 'fallback' or an existing .ckpt file; "
                         "no such file")
    desc = f"checkpoint file {path.name}"
    try:
        import torch

        record = torch.load(str(path), map_location="cpu", weights_only=True)
        saved = record.get(_SAVE_KEY) if isinstance(record, dict) else None
        if saved:
            desc = f"{saved['model_description']}, test-time trained and saved as {path.name}"
    except Exception:  # noqa: BLE001 - a description only; tabpfn reports unreadable files itself
        pass
    return path.resolve(), desc


def _template(path: Path, device: str, categorical_indices):
    from tabpfn import TabPFNClassifier

    return TabPFNClassifier(model_path=str(path), device=device,
                            categorical_features_indices=list(categorical_indices) or None)


# ----------------------------------------------------------------------------------------------------------
# The estimator


def _n_rows(value, n: int, name: str, *, allow_zero: bool) -> int:
    """An int row count, or a fraction in (0, 1) of ``n`` (rounded down)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numbers.Real)):
        raise ValueError(f"{name} must be an int (rows) or a float in (0, 1) (fraction of rows), got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"{name} must be a{' non-negative' if allow_zero else ' positive'} number of rows, got "
                             f"{value}")
        return int(value)
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} as a float is a fraction of the rows and must lie in (0, 1), got {value}")
    return int(np.floor(float(value) * n))


def _has_varying_feature(A: np.ndarray) -> bool:
    """Whether some column of ``A`` takes two different non-missing values."""
    for j in range(A.shape[1]):
        col = A[:, j]
        col = col[~np.isnan(col)]
        if col.size and col.min() < col.max():
            return True
    return False


class TTTTabPFNClassifier(ClassifierMixin, BaseEstimator):
    """TabPFN v2 with test-time training on part of the training rows (scikit-learn API).

    Parameters
    ----------
    model : {"auto", "official", "fallback"} or path, default "auto"
        Which TabPFN v2 checkpoint to adapt (see :func:`resolve_model`); never downloaded.
    ttt_size : int or float, default 0.5
        Rows spent on test-time training: a number of rows, or a fraction in (0, 1) of the training rows.
        ``0`` switches TTT off (plain TabPFN on the context: the baseline).
    context_size : int, float or None, default None
        Rows kept as the context of every prediction, drawn from the rows not used for TTT (or from all rows if
        ``reuse_ttt_rows``): a number, a fraction in (0, 1), or ``None`` for all of them.
    reuse_ttt_rows : bool, default False
        Let the context include the TTT rows too. ``False`` is the paper's protocol (TTT rows and context are
        disjoint); ``True`` uses every labelled row twice, which is legitimate when no test rows are involved.
    steps : int, default 50
        TTT optimiser steps, one episode each (``0`` switches TTT off).
    lr : float, default 1e-4
        Constant learning rate.
    optimizer : {"adamw", "sgd"}, default "adamw"
        AdamW (``weight_decay``) or SGD with heavy-ball ``momentum`` (the paper found them about equal).
    n_query : int, default 128
        Query rows per TTT episode (the rest of an episode's rows is its context, of random size).
    max_context : int or None, default None
        Largest context of a TTT episode (sizes are drawn log-uniformly from 2 to this); ``None``: all the TTT
        rows that are not queries. A small value makes each step cheap, and trains where TTT helps most.
    weight_decay, momentum, grad_clip : float
        See :class:`ttt_helpers.tabpfn.ttt.TTTConfig`.
    n_estimators : int, default 1
        TabPFN ensemble members (preprocessing variants) per episode and per prediction.
    categorical_features : "auto", None or list of int/str, default "auto"
        See :class:`TableEncoder`.
    batch_size : int, default 1024
        Query rows per forward pass in ``predict_proba``.
    device : str, default "cpu"
    random_state : int, default 0
        Seeds the row split, the TTT episodes and TabPFN's preprocessing.
    verbose : bool, default False
        Progress bar for the TTT steps (on stderr).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only when fitted on a DataFrame with string column names)
    model_path_ : pathlib.Path — the checkpoint that was adapted
    model_description_ : str — which model (official TabPFN v2 or our fallback) produced the predictions
    encoder_ : TableEncoder
    categorical_features_ : list of int — column indices treated as categorical
    n_ttt_rows_, n_context_ : int
    ttt_rows_, context_rows_ : ndarray of int — row indices (into the training X) of the two parts
    context_X_ : ndarray (n_context, n_features_in) float — the encoded context
    context_y_ : ndarray of int — its labels 0..C-1
    ttt_history_ : dict or None — ``losses``, ``context_sizes``, ``seconds`` ... from ``ttt_finetune``
    ttt_seconds_ : float — wall time of TTT (0.0 without TTT)
    fit_seconds_ : float
    tabpfn_ : tabpfn.TabPFNClassifier — the adapted classifier (fine-tuning set-up of ``prepare_classifier``)
    """

    def __init__(self, model="auto", *, ttt_size=0.5, context_size=None, reuse_ttt_rows=False, steps=50, lr=1e-4,
                 optimizer="adamw", n_query=128, max_context=None, weight_decay=0.01, momentum=0.9, grad_clip=1.0,
                 n_estimators=1, categorical_features="auto", batch_size=1024, device="cpu", random_state=0,
                 verbose=False):
        self.model = model
        self.ttt_size = ttt_size
        self.context_size = context_size
        self.reuse_ttt_rows = reuse_ttt_rows
        self.steps = steps
        self.lr = lr
        self.optimizer = optimizer
        self.n_query = n_query
        self.max_context = max_context
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.grad_clip = grad_clip
        self.n_estimators = n_estimators
        self.categorical_features = categorical_features
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- scikit-learn plumbing ----------------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.categorical = True
        tags.input_tags.string = True
        tags.non_deterministic = False
        return tags

    def _ttt_config(self):
        from .ttt import TTTConfig
        from ..validation import check_nonnegative_int

        steps = check_nonnegative_int(self.steps, "steps")
        return TTTConfig(optimizer=self.optimizer, steps=max(steps, 1), lr=self.lr, n_query=self.n_query,
                         max_context=self.max_context, weight_decay=self.weight_decay, momentum=self.momentum,
                         grad_clip=self.grad_clip), steps

    def _check_params(self):
        from ..validation import check_positive_int

        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        for k in ("lr", "weight_decay", "momentum", "grad_clip"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{k} must be a finite non-negative number, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        check_positive_int(self.n_query, "n_query")
        check_positive_int(self.n_estimators, "n_estimators")
        check_positive_int(self.batch_size, "batch_size")
        if not isinstance(self.reuse_ttt_rows, (bool, np.bool_)):
            raise ValueError(f"reuse_ttt_rows must be True or False, got {self.reuse_ttt_rows!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {self.device!r}")
        if isinstance(self.random_state, bool) or not isinstance(self.random_state, (numbers.Integral, type(None))):
            raise ValueError(f"random_state must be an int (or None for 0), got {self.random_state!r}")
        return self._ttt_config()

    def _split(self, n: int, rng):
        """Row indices of the TTT part and of the context (validated against ``n``)."""
        n_ttt = _n_rows(self.ttt_size, n, "ttt_size", allow_zero=True)
        config, steps = self._check_params()
        do_ttt = n_ttt > 0 and steps > 0
        if not do_ttt:
            n_ttt = 0
        if do_ttt and n_ttt < 3:
            raise ValueError(f"ttt_size={self.ttt_size!r} gives {n_ttt} TTT row(s); an episode needs at least 3 "
                             "(2 context rows and 1 query), so use ttt_size >= 3 rows or 0 for no TTT")
        available = n if self.reuse_ttt_rows else n - n_ttt
        if available < 2:
            raise ValueError(f"too few rows: the table has {n} sample(s) (rows); ttt_size={self.ttt_size!r} spends "
                             f"{n_ttt} on TTT and TabPFN needs at least 2 more for the context, so at least "
                             f"{n_ttt + 2} rows are needed (or lower ttt_size, or set reuse_ttt_rows=True)")
        if self.context_size is None:
            n_ctx = available
        else:
            n_ctx = _n_rows(self.context_size, available, "context_size", allow_zero=False)
            if n_ctx > available:
                raise ValueError(f"context_size={self.context_size!r} asks for {n_ctx} context rows, but only "
                                 f"{available} are left after the {n_ttt} TTT rows (of {n} rows)")
            if n_ctx < 2:
                raise ValueError(f"context_size={self.context_size!r} gives {n_ctx} row(s); TabPFN needs >= 2")
        perm = rng.permutation(n)
        ttt_rows = np.sort(perm[:n_ttt])
        pool = perm if self.reuse_ttt_rows else perm[n_ttt:]
        context_rows = np.sort(rng.permutation(pool)[:n_ctx])
        return ttt_rows, context_rows, config, do_ttt

    # -- fit / predict ------------------------------------------------------------------------------------
    def fit(self, X, y):
        """Test-time train on ``ttt_size`` rows of (X, y) and keep ``context_size`` others as the context.

        Everything is validated before anything is stored: on an error the estimator is left as it was.

        Parameters
        ----------
        X : array-like or DataFrame, shape (n, d); NaN/None allowed, inf not
        y : array-like, shape (n,); 2 to 10 classes, no missing values

        Returns
        -------
        self
        """
        from . import ttt as tt

        t0 = time.perf_counter()
        encoder = TableEncoder(self.categorical_features).fit(X)
        Xe = encoder.transform(X)
        classes, y_enc = check_target(y, n_rows=Xe.shape[0])
        seed = 0 if self.random_state is None else int(self.random_state)
        rng = np.random.default_rng(seed)
        ttt_rows, context_rows, config, do_ttt = self._split(len(y_enc), rng)
        path, description = resolve_model(self.model)
        max_classes = self._max_classes(path)
        if len(classes) > max_classes:
            raise ValueError(class_count_error(len(classes), None, max_classes))
        ctx_X, ctx_y = Xe[context_rows], y_enc[context_rows]
        if not _has_varying_feature(ctx_X):
            raise ValueError("every feature is constant (or missing) on the context rows; TabPFN needs at least one "
                             "feature that varies")
        clf = tt.prepare_classifier(_template(path, self.device, encoder.categorical_indices_),
                                    n_estimators=self.n_estimators, seed=seed, device=self.device)
        history, ttt_seconds = None, 0.0
        # a small TTT set: at most half of it as queries, so that every episode has a context of >= 2 rows
        n_query = int(min(int(self.n_query), len(ttt_rows) // 2)) if do_ttt else int(self.n_query)
        if do_ttt:
            config.n_query = n_query
            history = tt.ttt_finetune(clf, Xe[ttt_rows], y_enc[ttt_rows], len(classes), config, rng,
                                      progress=bool(self.verbose), seed=seed)
            ttt_seconds = float(history["seconds"])
        # everything validated and computed: store the learned state
        self.encoder_ = encoder
        self.n_features_in_ = encoder.n_features_in_
        if encoder.feature_names_in_ is not None:
            self.feature_names_in_ = encoder.feature_names_in_
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.categorical_features_ = list(encoder.categorical_indices_)
        self.classes_ = classes
        self.model_path_ = path
        self.model_description_ = description
        self.ttt_rows_, self.context_rows_ = ttt_rows, context_rows
        self.n_ttt_rows_, self.n_context_ = int(len(ttt_rows)), int(len(context_rows))
        self.context_X_, self.context_y_ = ctx_X, ctx_y
        self.ttt_history_ = history
        self.n_query_ = n_query
        self.ttt_seconds_ = ttt_seconds
        self.tabpfn_ = clf
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    @staticmethod
    def _max_classes(path) -> int:
        from .checkpoints import read_checkpoint_config

        try:
            return int(min(MAX_CLASSES, read_checkpoint_config(path).get("max_num_classes", MAX_CLASSES)))
        except Exception:  # noqa: BLE001 - an unreadable config: tabpfn will say so when it loads the file
            return MAX_CLASSES

    def _logits(self, Xe: np.ndarray) -> np.ndarray:
        from . import ttt as tt

        out = []
        n_classes = len(self.classes_)
        dummy = np.full(1, self.context_y_[0], dtype=np.int64)
        for start in range(0, len(Xe), int(self.batch_size)):
            chunk = Xe[start:start + int(self.batch_size)]
            ep = tt.make_episode(self.tabpfn_, self.context_X_, self.context_y_, chunk,
                                 np.repeat(dummy, len(chunk)), seed=0 if self.random_state is None
                                 else int(self.random_state))
            logits = tt.episode_logits(self.tabpfn_, ep, n_classes).mean(dim=1)  # (q, C): ensemble mean
            out.append(logits.detach().cpu().double().numpy())
        return np.concatenate(out, axis=0)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape ``(n, n_classes)``, columns in the order of ``classes_``."""
        check_is_fitted(self, "tabpfn_")
        Xe = self.encoder_.transform(X)
        z = self._logits(Xe)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row, shape ``(n,)``."""
        check_is_fitted(self, "tabpfn_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    # -- persistence --------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the adapted model to one ``.ckpt`` file and return its path.

        The file is a TabPFN v2 checkpoint (``tabpfn.TabPFNClassifier(model_path=path)`` loads the adapted
        weights directly) with the estimator's state (parameters, classes, column encoder, context) stored
        under the key ``"ttt_tabpfn_estimator"``; :meth:`load` reads it back. The file name must end in
        ``.ckpt`` and must not contain ``v2.5``, ``v2.6`` or ``v3`` (``tabpfn`` reads versions from names).
        """
        import torch

        from .checkpoints import build_checkpoint, read_checkpoint_config, read_checkpoint_inference_config
        from .ttt import snapshot_state

        check_is_fitted(self, "tabpfn_")
        path = Path(path)
        if path.suffix != ".ckpt":
            raise ValueError(f"save path must end in .ckpt, got {path.name!r}")
        params = self.get_params()
        params["model"] = str(params["model"])
        if not isinstance(params["categorical_features"], (str, type(None))):
            params["categorical_features"] = list(params["categorical_features"])
        state = {
            "format": _SAVE_FORMAT,
            "params": params,
            "classes": self.classes_.tolist(),
            "encoder": self.encoder_.to_state(),
            "context_X": torch.from_numpy(np.ascontiguousarray(self.context_X_)),
            "context_y": torch.from_numpy(np.ascontiguousarray(self.context_y_)),
            "model_description": self.model_description_,
            "base_model": str(self.model_path_),
            "n_ttt_rows": self.n_ttt_rows_,
            "ttt_seconds": self.ttt_seconds_,
            "ttt_losses": [] if self.ttt_history_ is None else list(map(float, self.ttt_history_["losses"])),
        }
        config = read_checkpoint_config(self.model_path_)
        return build_checkpoint(config, snapshot_state(self.tabpfn_), path, extra={_SAVE_KEY: state},
                                inference_config=read_checkpoint_inference_config(self.model_path_))

    @classmethod
    def load(cls, path, *, device: str | None = None) -> "TTTTabPFNClassifier":
        """Read an estimator written by :meth:`save` (ready to predict; no TTT is run again)."""
        import torch

        from . import ttt as tt

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no saved estimator at {path}")
        try:
            record = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{path} is not a checkpoint written by TTTTabPFNClassifier.save ({exc})") from None
        state = record.get(_SAVE_KEY) if isinstance(record, dict) else None
        if not state or state.get("format") != _SAVE_FORMAT:
            raise ValueError(f"{path} holds no TTTTabPFNClassifier state (key {_SAVE_KEY!r}, format {_SAVE_FORMAT})")
        params = dict(state["params"])
        if device is not None:
            params["device"] = device
        est = cls(**params)
        est.encoder_ = TableEncoder.from_state(state["encoder"])
        est.n_features_in_ = est.encoder_.n_features_in_
        if est.encoder_.feature_names_in_ is not None:
            est.feature_names_in_ = est.encoder_.feature_names_in_
        est.categorical_features_ = list(est.encoder_.categorical_indices_)
        est.classes_ = np.asarray(state["classes"])
        est.model_path_ = path.resolve()
        est.model_description_ = f"{state['model_description']}, test-time trained and saved as {path.name}" \
            if state["n_ttt_rows"] else state["model_description"]
        est.context_X_ = state["context_X"].numpy().astype(np.float64)
        est.context_y_ = state["context_y"].numpy().astype(np.int64)
        est.n_context_ = int(len(est.context_y_))
        est.n_ttt_rows_ = int(state["n_ttt_rows"])
        est.ttt_rows_ = est.context_rows_ = None
        est.ttt_seconds_ = float(state["ttt_seconds"])
        est.ttt_history_ = {"losses": list(state["ttt_losses"])} if state["ttt_losses"] else None
        seed = 0 if est.random_state is None else int(est.random_state)
        est.tabpfn_ = tt.prepare_classifier(_template(path, est.device, est.categorical_features_),
                                            n_estimators=est.n_estimators, seed=seed, device=est.device)
        est.fit_seconds_ = 0.0
        return est
