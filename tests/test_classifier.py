"""Tests for ttt_helpers.tabpfn.classifier (TTTTabPFNClassifier), on a tiny random TabPFN-v2 checkpoint (fast, offline)."""

import pickle
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

import torch  # a hard dependency: fail, never skip, if it is missing
import tabpfn  # a hard dependency: fail, never skip, if it is missing
import pandas as pd  # a hard dependency: fail, never skip, if it is missing

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from tabpfn_fixtures import mixed_frame as _frame  # noqa: E402
from ttt_helpers.tabpfn import checkpoints as tm  # noqa: E402
from ttt_helpers.tabpfn.classifier import TTTTabPFNClassifier, resolve_model  # noqa: E402

HYP = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


TINY = str(tm.tiny_random_checkpoint(Path(tempfile.gettempdir()) / "ttt_helpers_tests" / "tiny_estimator.ckpt"))


def _est(**kw):
    """A fast estimator: one fixed recipe (the recipe search has its own tests below)."""
    kw.setdefault("steps", 2)
    kw.setdefault("n_query", 16)
    kw.setdefault("early_stopping", False)
    kw.setdefault("lr", 1e-4)
    return TTTTabPFNClassifier(TINY, **kw)


def _toy(n=80, d=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.digitize(X[:, 0], np.quantile(X[:, 0], np.linspace(0, 1, k + 1)[1:-1]))
    return X, y


def _state(est):
    return {k: v for k, v in vars(est).items() if k.endswith("_")}


# ----------------------------------------------------------------------------------------------------------
# happy path


def test_fit_predict_numpy():
    X, y = _toy()
    est = _est()
    assert est.fit(X, y) is est
    proba = est.predict_proba(X[:10])
    assert proba.shape == (10, 3) and np.allclose(proba.sum(axis=1), 1) and np.all(proba >= 0)
    assert set(est.predict(X)) <= set(est.classes_) and est.n_features_in_ == 3
    assert est.n_ttt_rows_ == 40 and est.n_context_ == 40
    assert set(est.ttt_rows_).isdisjoint(est.context_rows_)
    assert len(est.ttt_history_["losses"]) == 2 and est.ttt_seconds_ > 0
    assert est.model_description_ == "checkpoint file tiny_estimator.ckpt"
    assert 0 <= est.score(X, y) <= 1


def test_dataframe_with_categories_missing_values_and_string_labels():
    df, y = _frame()
    est = _est().fit(df, y)
    assert list(est.classes_) == ["no", "yes"]
    assert list(est.feature_names_in_) == list(df.columns)
    assert est.categorical_features_ == [1, 3]
    new = df.iloc[:5].copy()
    new.loc[new.index[0], "colour"] = "purple"  # a category never seen in fit: treated as missing
    new = new[["size", "member", "colour", "age"]]  # other column order: aligned by name
    pred = est.predict(new)
    assert pred.shape == (5,) and set(pred) <= {"no", "yes"}
    Xe = est.encoder_.transform(new)
    assert np.isnan(Xe[0, 1]) and np.isnan(Xe[0, 0])  # unseen category, missing age


def test_ttt_changes_weights_and_ttt_size_zero_is_the_baseline():
    X, y = _toy()
    base = _est(ttt_size=0).fit(X, y)
    assert base.ttt_history_ is None and base.ttt_seconds_ == 0 and base.n_context_ == 80
    adapted = _est(ttt_size=40, lr=1e-2, steps=3, reuse_ttt_rows=True).fit(X, y)
    assert adapted.n_context_ == 80
    w0 = base.tabpfn_.models_[0].state_dict()
    w1 = adapted.tabpfn_.models_[0].state_dict()
    assert max(float((w0[k] - w1[k]).abs().max()) for k in w0) > 1e-4


def test_pretrained_weights_give_no_probability_to_a_class_the_context_lacks():
    """tabpfn's rule with the pretrained weights: a class absent from the context rows gets probability 0 (its
    output was never trained); adapted weights give every class a probability."""
    X, y = _toy(n=80, k=3)
    est = _est(ttt_size=0, context_size=6)
    for seed in range(50):  # a seed whose six context rows miss a class
        est.set_params(random_state=seed).fit(X, y)
        if len(np.unique(est.context_y_)) < 3:
            break
    assert len(np.unique(est.context_y_)) < 3 and est.selected_recipe_ is None
    p = est.predict_proba(X)
    absent = ~np.isin(np.arange(3), est.context_y_)  # model codes, in label_order_
    assert np.all(p[:, est.label_order_[absent]] == 0) and np.allclose(p.sum(axis=1), 1)
    assert set(est.predict(X)) <= set(est.classes_[est.label_order_[~absent]])
    adapted = _est(ttt_size=40, context_size=6, reuse_ttt_rows=True, random_state=est.random_state).fit(X, y)
    assert adapted.selected_recipe_ is not None and np.all(adapted.predict_proba(X) > 0)


def test_default_recipe_search_chooses_on_held_out_ttt_rows():
    X, y = _toy(n=120)
    est = TTTTabPFNClassifier(TINY, steps=4, eval_every=2, n_query=16, lr=(1e-3, 1e-2)).fit(X, y)
    h = est.ttt_history_
    assert est.early_stopping and h["recipe"]["kind"] == "search" and h["n_validation"] == 12 and h["n_train"] == 48
    assert [r["lr"] for r in h["runs"]] == [1e-3, 1e-2]
    assert est.selected_recipe_ == h["selected"]
    # the 60 context rows are longer than every validated context (48): the guard is not extrapolated
    g = h["guard"]
    assert g["n_context"] == 60 and g["longest_validated"] == 48
    assert g["restored"] == (g["chosen"] is not None and not g["gain_at_longest"] > 0)
    if g["restored"]:
        assert est.selected_recipe_ is None and h["losses"]
    elif est.selected_recipe_ is None:  # the search kept the pretrained weights: no training loss recorded
        assert h["losses"] == [] and (h["best"] is None or h["best"]["acc"] < h["zero_shot"]["acc"] + 0.005)
    else:
        assert est.selected_recipe_["lr"] in (1e-3, 1e-2) and 1 <= est.selected_recipe_["steps"] <= 4
    assert est.ttt_seconds_ == pytest.approx(h["seconds"])
    # validated up to the whole training part (48 rows; the 60 context rows are capped there) ...
    assert h["validation_sizes"] == [2, 8, 32, 48]
    # ... and at the context size the predictions use, when it lies between the default sizes
    est20 = TTTTabPFNClassifier(TINY, steps=2, eval_every=2, n_query=16, lr=1e-3, context_size=20).fit(X, y)
    assert est20.n_context_ == 20 and est20.ttt_history_["validation_sizes"] == [2, 8, 20, 32, 48]
    assert est20.get_params()["context_size"] == 20  # the estimator's parameters are left as given


def test_guard_beyond_the_validated_contexts_restores_the_pretrained_weights(monkeypatch):
    """When the predictions' context is longer than every validated one and the search's checkpoint did not gain at
    the longest, fit restores the pretrained weights (finetune.adapted_at): the same weights and predictions as the
    estimator without TTT on the same context, recorded in ttt_history_["guard"] and said by search_outcome."""
    from ttt_helpers.tabpfn import classifier as cl
    from ttt_helpers.tabpfn.finetune import snapshot_state
    from ttt_helpers.tabpfn.report import search_outcome

    X, y = _toy(n=120)
    kw = dict(steps=4, eval_every=2, n_query=16, lr=(1e-2,), random_state=1)
    free = TTTTabPFNClassifier(TINY, **kw).fit(X, y)
    assert free.ttt_history_["guard"]["n_context"] == 60 and free.ttt_history_["guard"]["longest_validated"] == 48

    def no_gain(history, n_context):  # the search's own record, with the chosen checkpoint's gain at 48 rows <= 0
        out = real_guard(history, n_context)
        return {**out, "gain_at_longest": -0.01, "se_at_longest": 0.01, "restored": out["chosen"] is not None}

    real_guard = cl._guard
    monkeypatch.setattr(cl, "_guard", no_gain)
    for seed in range(6):  # a seed whose search adapts the weights (the tiny model usually gains at lr 1e-2)
        guarded = TTTTabPFNClassifier(TINY, **{**kw, "random_state": seed}).fit(X, y)
        if guarded.ttt_history_["guard"]["restored"]:
            break
    g = guarded.ttt_history_["guard"]
    assert g["restored"] and g["chosen"] is not None and guarded.selected_recipe_ is None
    assert guarded.ttt_history_["selected"] is None and guarded.ttt_history_["losses"]
    # the pretrained weights on the same context: as the estimator fitted without TTT on the same rows
    base = TTTTabPFNClassifier(TINY, **{**kw, "random_state": guarded.random_state, "steps": 0})
    base.fit(X[guarded.context_rows_], y[guarded.context_rows_])
    w, w0 = snapshot_state(guarded.tabpfn_), snapshot_state(base.tabpfn_)
    assert all(torch.equal(w[k], w0[k]) for k in w0)
    assert np.array_equal(guarded.predict_proba(X), base.predict_proba(X))
    assert "kept the pretrained weights: the context (60 rows) is longer" in search_outcome(guarded.ttt_history_)
    # the real rule leaves a gaining checkpoint in place
    assert real_guard({**guarded.ttt_history_, "selected": g["chosen"]}, 48)["restored"] is False


def test_same_seed_same_predictions_and_context_size():
    X, y = _toy()
    a = _est(context_size=20, random_state=3).fit(X, y).predict_proba(X)
    b = _est(context_size=20, random_state=3).fit(X, y)
    assert b.n_context_ == 20
    np.testing.assert_allclose(a, b.predict_proba(X), atol=1e-6)
    c = _est(context_size=0.25).fit(X, y)
    assert c.n_context_ == 10


def test_save_load_roundtrip_and_plain_tabpfn_reads_the_file(tmp_path):
    df, y = _frame()
    est = _est(lr=1e-2).fit(df, y)
    path = est.save(tmp_path / "adapted.ckpt")
    back = TTTTabPFNClassifier.load(path)
    np.testing.assert_allclose(back.predict_proba(df), est.predict_proba(df), atol=1e-6)
    assert back.get_params()["steps"] == est.steps and list(back.classes_) == list(est.classes_)
    assert "saved as adapted.ckpt" in back.model_description_
    plain = tabpfn.TabPFNClassifier(model_path=str(path), device="cpu", n_estimators=1).fit(df, y)
    assert plain.predict(df.iloc[:3]).shape == (3,)
    with pytest.raises(ValueError, match="must end in .ckpt"):
        est.save(tmp_path / "adapted.pt")
    with pytest.raises(ValueError, match="no saved estimator"):
        TTTTabPFNClassifier.load(tmp_path / "absent.ckpt")
    with pytest.raises(ValueError, match="holds no TTTTabPFNClassifier state"):
        TTTTabPFNClassifier.load(TINY)


def test_save_keeps_the_base_checkpoints_inference_config(tmp_path):
    config = tm.make_config(emsize=16, nlayers=1, nhead=2)
    base = tm.build_checkpoint(config, tm.new_model(config, seed=0).state_dict(), tmp_path / "base.ckpt",
                               inference_config=tm.FALLBACK_INFERENCE_OVERRIDES)
    X, y = _toy()
    est = TTTTabPFNClassifier(str(base), steps=1, n_query=16).fit(X, y)
    saved = est.save(tmp_path / "adapted.ckpt")
    assert tm.read_checkpoint_inference_config(saved) == tm.read_checkpoint_inference_config(base)
    plain = TTTTabPFNClassifier(TINY, steps=1, n_query=16).fit(X, y).save(tmp_path / "plain.ckpt")
    assert tm.read_checkpoint_inference_config(plain) is None


def test_params_clone_pickle_and_not_fitted():
    est = _est(lr=3e-4, optimizer="sgd")
    assert est.get_params()["lr"] == 3e-4 and est.get_params()["model"] == TINY
    est.set_params(steps=1, context_size=0.5)
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(NotFittedError):
        est.predict(np.zeros((2, 3)))
    X, y = _toy()
    est.fit(X, y)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_allclose(back.predict_proba(X), est.predict_proba(X), atol=1e-6)


def test_resolve_model():
    path, desc = resolve_model(TINY)
    assert path.is_file() and desc == "checkpoint file tiny_estimator.ckpt"
    with pytest.raises(ValueError, match="no such file"):
        resolve_model("/nonexistent/model.ckpt")
    with pytest.raises(ValueError, match="must be 'auto', 'official', 'fallback' or a path"):
        resolve_model(3)


# ----------------------------------------------------------------------------------------------------------
# bad input: a clear error, and a fitted estimator is left as it was


@pytest.fixture(scope="module")
def fitted():
    X, y = _toy()
    est = _est().fit(X, y)
    return est, X, est.predict_proba(X)


def _unchanged(fitted):
    est, X, proba = fitted
    np.testing.assert_allclose(est.predict_proba(X), proba, atol=1e-6)
    assert est.n_features_in_ == 3


BAD_FITS = [
    ("single class", lambda X, y: (X, np.zeros(len(y), int)), "only 1 class"),
    ("eleven classes", lambda X, y: (X, np.arange(len(y)) % 11), r"11 classes.*at most 10.*Options"),
    ("missing label", lambda X, y: (X, np.where(np.arange(len(y)) == 3, np.nan, y.astype(float))), "missing"),
    ("inf feature", lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X), y), "infinite"),
    ("continuous target", lambda X, y: (X, X[:, 0]), "Unknown label type"),
    ("length mismatch", lambda X, y: (X, y[:-1]), "same number of rows"),
    ("1-d X", lambda X, y: (X[:, 0], y), "Expected 2D array|expected 2D array"),
    ("no rows", lambda X, y: (X[:0], y[:0]), "0 sample"),
]


@pytest.mark.parametrize("name,make,match", BAD_FITS, ids=[b[0] for b in BAD_FITS])
def test_bad_data_is_rejected_and_changes_nothing(fitted, name, make, match):
    est, X0, _ = fitted
    Xb, yb = make(X0.copy(), _toy()[1])
    with pytest.raises(ValueError, match=match):
        est.fit(Xb, yb)
    _unchanged(fitted)


BAD_PARAMS = [
    (dict(ttt_size=79), r"too few rows.*80 sample"),
    (dict(ttt_size=1000), r"too few rows.*at least 1002 rows"),
    (dict(ttt_size=2), "at least 3"),
    (dict(ttt_size=1.5), r"fraction .* \(0, 1\)"),
    (dict(ttt_size=-1), "non-negative"),
    (dict(context_size=60), "only 40 are left"),
    (dict(context_size=1), ">= 2"),
    (dict(optimizer="adam"), "'adamw' or 'sgd'"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(lr=(1e-4, 1e-3)), "single lr"),
    (dict(early_stopping=True, ttt_size=3, lr=(1e-4,)), "too few to hold out a validation slice"),
    (dict(early_stopping="yes"), "True or False"),
    (dict(lr=float("nan")), "finite"),
    (dict(steps=-1), "non-negative integer"),
    (dict(n_query=0), "positive integer"),
    (dict(model="/nonexistent/tabpfn.ckpt"), "no such file"),
    (dict(categorical_features=["nope"]), "not among the columns"),
]


@pytest.mark.parametrize("params,match", BAD_PARAMS, ids=[str(p[0]) for p in BAD_PARAMS])
def test_bad_parameters_are_rejected_and_change_nothing(fitted, params, match):
    est, X, _ = fitted
    bad = clone(est).set_params(**params)
    with pytest.raises(ValueError, match=match):
        bad.fit(X, _toy()[1])
    assert not hasattr(bad, "tabpfn_")
    _unchanged(fitted)


def test_bad_predict_input(fitted):
    est, X, _ = fitted
    with pytest.raises(ValueError, match="2 features, but TTTTabPFNClassifier is expecting 3"):
        est.predict(X[:, :2])
    with pytest.raises(ValueError, match="infinite"):
        est.predict(np.where(X > 1, -np.inf, X))
    df, y = _frame()
    dfe = _est().fit(df, y)
    with pytest.raises(ValueError, match="feature names should match"):
        dfe.predict(df.rename(columns={"age": "AGE"}))
    bad = df.astype({"age": object})
    bad.loc[0, "age"] = "forty"
    with pytest.raises(ValueError, match="was numeric at fit time"):
        dfe.predict(bad)
    with pytest.raises(TypeError, match="sparse"):
        est.predict(__import__("scipy.sparse", fromlist=["csr_matrix"]).csr_matrix(X))


def test_constant_context_is_rejected():
    X = np.ones((30, 2))
    y = np.arange(30) % 2
    with pytest.raises(ValueError, match="constant"):
        _est(ttt_size=0).fit(X, y)


# ----------------------------------------------------------------------------------------------------------
# hypothesis: shapes and values


@HYP
@given(n=st.integers(12, 40), d=st.integers(1, 4), k=st.integers(2, 4), nan_frac=st.floats(0, 0.3),
       seed=st.integers(0, 10_000))
def test_any_small_table_gives_valid_probabilities(n, d, k, nan_frac, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[rng.random((n, d)) < nan_frac] = np.nan
    X[:, 0] = np.arange(n)  # one feature that always varies
    y = np.arange(n) % k
    est = _est(steps=1, ttt_size=0.4, random_state=seed).fit(X, y)
    proba = est.predict_proba(X)
    assert proba.shape == (n, k) and np.all(np.isfinite(proba)) and np.allclose(proba.sum(1), 1, atol=1e-6)
    assert est.n_ttt_rows_ + est.n_context_ == n


@HYP
@given(i=st.integers(0, 79), j=st.integers(0, 2), value=st.sampled_from([np.inf, -np.inf]))
def test_any_infinite_feature_is_rejected(fitted, i, j, value):
    est, X, _ = fitted
    Xb = X.copy()
    Xb[i, j] = value
    with pytest.raises(ValueError, match="1 infinite value"):
        clone(est).fit(Xb, _toy()[1])
    with pytest.raises(ValueError, match="infinite"):
        est.predict(Xb)


@HYP
@given(k=st.integers(11, 20))
def test_any_class_count_above_ten_is_rejected(k):
    X, _ = _toy(n=60)
    with pytest.raises(ValueError, match=rf"{k} classes.*at most 10"):
        _est().fit(X, np.arange(60) % k)


@HYP
@given(n=st.integers(1, 60), ttt=st.integers(3, 80))
def test_row_budget(n, ttt):
    X, y = _toy(n=max(n, 4))
    X, y = X[:n], np.arange(n) % 2
    est = _est(ttt_size=ttt)
    if n - ttt >= 2:
        assert est.fit(X, y).n_ttt_rows_ == ttt
    else:
        with pytest.raises(ValueError, match="1 class|too few rows"):
            est.fit(X, y)


# ----------------------------------------------------------------------------------------------------------
# scikit-learn's own estimator checks

# The tiny random checkpoint predicts at chance, so the accuracy check cannot pass with it.
EXPECTED_FAILED = {"check_classifiers_train": "tiny random checkpoint in the tests: accuracy at chance level"}


@parametrize_with_checks([_est(steps=1, n_query=8), TTTTabPFNClassifier(TINY, steps=1, lr=1e-3, n_query=8)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)
