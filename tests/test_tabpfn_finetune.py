"""Tests for ttt_helpers.tabpfn.ttt, on a tiny random TabPFN-v2-architecture checkpoint (fast, offline)."""

import dataclasses
import math

import numpy as np
import pytest

import torch  # a hard dependency: fail, never skip, if it is missing
import tabpfn  # a hard dependency: fail, never skip, if it is missing

from ttt_helpers.tabpfn import ttt as tt  # noqa: E402


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from tabpfn.architectures.tabpfn_v2 import TabPFNV2Config, get_architecture

    cfg = TabPFNV2Config(emsize=32, nlayers=2, nhead=2, max_num_classes=10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_architecture(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_tabpfn.ckpt"
    torch.save({"state_dict": model.state_dict(), "config": dataclasses.asdict(cfg), "architecture_name": "tabpfn_v2"},
               path)
    return str(path)


@pytest.fixture(scope="module")
def template(tiny_ckpt):
    from tabpfn import TabPFNClassifier

    return TabPFNClassifier(model_path=tiny_ckpt, device="cpu")


def _toy(n=1300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] > 0).astype(np.int64) + 2 * (X[:, 1] > 0.5)  # 4 classes, learnable from the features
    return X, y


def test_prepare_classifier_sets_the_finetuning_path_and_leaves_template(template):
    clf = tt.prepare_classifier(template, n_estimators=1, seed=3)
    assert clf.fit_mode == "batched" and clf.n_estimators == 1 and clf.random_state == 3
    assert clf.inference_config["CLASS_SHIFT_METHOD"] is None
    assert template.fit_mode != "batched"
    assert len(clf.models_) == 1


def test_split_rows_is_disjoint_complete_and_seeded():
    s = tt.split_rows(2000, 5)
    assert len(s["ttt"]) == 1000 and len(s["pool"]) == 800 and len(s["test"]) == 200
    allr = np.concatenate([s["ttt"], s["pool"], s["test"]])
    assert np.array_equal(np.sort(allr), np.arange(2000))
    s2 = tt.split_rows(2000, 5)
    assert all(np.array_equal(s[k], s2[k]) for k in s)
    with pytest.raises(ValueError, match="at least"):
        tt.split_rows(1001, 0)


def test_episode_uses_global_labels_and_returns_all_classes(template):
    clf = tt.prepare_classifier(template)
    X, y = _toy()
    ctx = np.where(np.isin(y, [1, 3]))[0][:6]  # a context with classes 1 and 3 only
    ep = tt.make_episode(clf, X[ctx], y[ctx], X[:40], y[:40])
    assert set(np.unique(ep.batch.y_context[0].numpy()).astype(int)) == {1, 3}
    assert np.array_equal(ep.batch.y_query[0].numpy(), y[:40])
    logits = tt.episode_logits(clf, ep, 4)
    assert tuple(logits.shape) == (40, 1, 4)
    assert 0.0 <= tt.episode_accuracy(clf, ep, 4) <= 1.0


def test_one_row_context_is_rejected_by_tabpfn_and_eval_redraws(template):
    from tabpfn.errors import TabPFNValidationError

    clf = tt.prepare_classifier(template)
    X, y = _toy()
    with pytest.raises(TabPFNValidationError):
        tt.make_episode(clf, X[:1], y[:1], X[1:5], y[1:5])


def test_ttt_is_seeded_changes_weights_and_learns(template):
    X, y = _toy()
    s = tt.split_rows(len(y), 0)
    cfg = tt.TTTConfig(optimizer="adamw", steps=12, lr=3e-3, n_query=64, max_context=128)
    clf = tt.prepare_classifier(template)
    ep = tt.make_eval_episodes(clf, X, y, s, [16], 2, 1, max_test=128)
    w0 = tt.snapshot_state(clf)
    acc0 = np.mean([tt.episode_accuracy(clf, e, 4) for e in ep])
    h = tt.ttt_finetune(clf, X[s["ttt"]], y[s["ttt"]], 4, cfg, 7)
    w1 = tt.snapshot_state(clf)
    acc1 = np.mean([tt.episode_accuracy(clf, e, 4) for e in ep])
    assert len(h["losses"]) == 12 and all(2 <= n <= 128 for n in h["context_sizes"])
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    # the same seed gives the same weights
    tt.load_state(clf, w0)
    tt.ttt_finetune(clf, X[s["ttt"]], y[s["ttt"]], 4, cfg, 7)
    w2 = tt.snapshot_state(clf)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    # on this learnable task TTT improves the held-out accuracy of the random tiny model
    assert np.mean(h["losses"][-4:]) < np.mean(h["losses"][:4])
    assert acc1 > acc0 + 0.05


def test_sgd_momentum_runs_and_bad_config_raises(template):
    X, y = _toy()
    clf = tt.prepare_classifier(template)
    h = tt.ttt_finetune(clf, X[:300], y[:300], 4, tt.TTTConfig(optimizer="sgd", steps=2, lr=1e-2, n_query=32), 0)
    assert len(h["losses"]) == 2 and all(np.isfinite(h["losses"]))
    with pytest.raises(ValueError, match="optimizer"):
        tt.TTTConfig(optimizer="adam")
    with pytest.raises(ValueError, match="steps"):
        tt.TTTConfig(steps=0)
    with pytest.raises(ValueError, match="labels"):
        tt.ttt_finetune(clf, X[:10], y[:10] + 4, 4, tt.TTTConfig(steps=1), 0)


def test_context_needed_interpolates_in_log_n():
    sizes = [2, 4, 8, 16]
    acc = [0.2, 0.4, 0.6, 0.8]
    assert tt.context_needed(sizes, acc, 0.2) == 2
    assert tt.context_needed(sizes, acc, 0.6) == pytest.approx(8)
    assert tt.context_needed(sizes, acc, 0.5) == pytest.approx(math.sqrt(4 * 8))
    assert math.isnan(tt.context_needed(sizes, acc, 0.9))
    # a dip is ignored (running maximum)
    assert tt.context_needed(sizes, [0.2, 0.5, 0.3, 0.8], 0.5) == pytest.approx(4)


def test_reduction_factor_of_a_shifted_curve_is_the_shift():
    sizes = np.array([2, 4, 8, 16, 32, 64, 128, 256])
    base = 0.1 * np.log2(sizes)  # accuracy linear in log n
    ttt = 0.1 * np.log2(sizes * 4)  # the same curve reached with 4 times fewer samples
    red = tt.reduction_factors(sizes, base, ttt)
    ok = [f for f, b in zip(red["factor"], red["bound"]) if not b and np.isfinite(f)]
    assert ok and np.allclose(ok, 4.0)
    assert red["median_factor"] == pytest.approx(4.0)


def test_mean_curve_band_and_break_even():
    A = np.array([[0.2, 0.4], [0.4, 0.6]])
    m, lo, hi = tt.mean_curve_with_band(A)
    assert np.allclose(m, [0.3, 0.5])
    assert np.allclose(hi - m, 1.96 * np.std([0.2, 0.4], ddof=1) / np.sqrt(2))
    assert tt.break_even_queries(10.0, 0.03, 0.01) == pytest.approx(500.0)
    assert tt.break_even_queries(10.0, 0.01, 0.02) == math.inf
    with pytest.raises(ValueError):
        tt.break_even_queries(-1.0, 0.1, 0.0)


def test_run_dataset_and_summary_on_a_real_table(template):
    cfgs = {"adamw": tt.TTTConfig("adamw", steps=2, lr=1e-3, n_query=32, max_context=32),
            "sgd": tt.TTTConfig("sgd", steps=2, lr=1e-2, n_query=32, max_context=32)}
    r = tt.run_dataset(template, "titanic_survived", cfgs, context_sizes=[2, 8], n_repeats=1, max_test=32)
    assert r["n_rows_split"] == {"ttt": 1000, "pool": 253, "test": 63}
    assert set(r["acc"]) == {"none", "adamw", "sgd"}
    assert all(0 <= a <= 1 for v in r["acc"].values() for a in v)
    s = tt.summarise([r, r])
    assert s["n_datasets"] == 2 and s["sizes"] == [2, 8]
    assert np.allclose(s["curves"]["none"]["mean"], r["acc"]["none"])
    assert set(s["reduction"]) == {"adamw", "sgd"}
