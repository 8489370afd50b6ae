"""Tables to float matrices: :class:`TableEncoder` (features) and :func:`check_target` (labels).

TabPFN reads a float matrix in which a categorical column holds category codes ``0..K-1`` and a missing value is
``NaN``, plus the indices of the categorical columns. :class:`TableEncoder` produces exactly that from a pandas
DataFrame or an array, learns the categories in ``fit`` and codes unseen ones as ``NaN`` at predict time;
:func:`check_target` validates a classification target and codes it ``0..C-1``; :func:`prepare_table` does both.

Why not scikit-learn's ``ColumnTransformer`` or ``skrub``? ``ColumnTransformer`` + ``OrdinalEncoder``
(``handle_unknown="use_encoded_value", unknown_value=np.nan``) would code the categories, but it needs each column's
kind given up front, and its dtype selectors call an ``object`` column of numbers categorical, where we read it as
numbers. skrub's ``TableVectorizer`` does infer column kinds, but it casts numbers to ``float32``, one-hot or
string-encodes categories instead of keeping one ordinal column (which TabPFN's own categorical handling expects),
expands dates, and may drop columns, so the columns TabPFN sees would no longer be the user's columns. Neither can
be saved in what :meth:`TTTTabPFNClassifier.save <ttt_helpers.tabpfn.classifier.TTTTabPFNClassifier.save>` writes:
a tabpfn checkpoint that ``torch.load(weights_only=True)`` reads, which holds plain Python values only
(:meth:`TableEncoder.to_state`), never a pickled estimator. And the errors here name the column and the cause
(infinite values, text in a column that was numeric at fit time, dates).
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["MAX_CLASSES", "TableEncoder", "class_count_error", "check_target", "frequency_order", "prepare_table"]

#: TabPFN v2 predicts at most 10 classes (its decoder has 10 outputs).
MAX_CLASSES = 10

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


def frequency_order(y_encoded, n_classes: int) -> np.ndarray:
    """The classes ``0..C-1`` from the most to the least frequent in ``y_encoded`` (ties: lower code first).

    The model-facing label code of class ``order[i]`` is ``i``, so code 0 is the most frequent class, as in the
    benchmark tables (:mod:`ttt_helpers.tabpfn.benchmark`). With TabPFN's labels ranked by presence in the context
    (:func:`ttt_helpers.tabpfn.episodes.label_ranks`), the majority class is then output 0 in every context that
    holds it, which gives test-time training one consistent output to learn the label distribution on.
    """
    counts = np.bincount(np.asarray(y_encoded, dtype=np.int64), minlength=int(n_classes))
    return np.lexsort((np.arange(len(counts)), -counts)).astype(np.int64)


def prepare_table(X, y, categorical_features="auto"):
    """Encode features (:class:`TableEncoder`) and labels; returns ``Xe, ye, classes, encoder``.

    ``ye`` codes the labels ``0..C-1`` by descending frequency (:func:`frequency_order`) and ``classes[k]`` is the
    label of code ``k``.
    """
    enc = TableEncoder(categorical_features).fit(X)
    Xe = enc.transform(X)
    classes, ye = check_target(y, n_rows=len(Xe))
    order = frequency_order(ye, len(classes))
    code = np.empty_like(order)
    code[order] = np.arange(len(order))
    return Xe, code[ye], classes[order], enc
