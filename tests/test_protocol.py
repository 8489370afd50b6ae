"""Tests for ttt_helpers.tabpfn.protocol: the one protocol of the experiment, the cost, the CLI and the estimator."""

import numpy as np
import pytest

import torch  # a hard dependency: fail, never skip, if it is missing
import tabpfn  # a hard dependency: fail, never skip, if it is missing

from tabpfn_fixtures import template, tiny_ckpt  # noqa: E402,F401
from ttt_helpers.tabpfn import protocol as pr  # noqa: E402
from ttt_helpers.tabpfn.analysis import summarise  # noqa: E402
from ttt_helpers.tabpfn.finetune import RecipeSearch, TTTConfig  # noqa: E402


def test_split_rows_is_disjoint_complete_and_seeded():
    s = pr.split_rows(2000, 5)
    assert len(s["ttt"]) == 1000 and len(s["pool"]) == 800 and len(s["test"]) == 200
    allr = np.concatenate([s["ttt"], s["pool"], s["test"]])
    assert np.array_equal(np.sort(allr), np.arange(2000))
    s2 = pr.split_rows(2000, 5)
    assert all(np.array_equal(s[k], s2[k]) for k in s)
    with pytest.raises(ValueError, match="at least"):
        pr.split_rows(1001, 0)


def test_resolve_rows():
    assert pr.resolve_rows(0.25, 100, "ttt_size", allow_zero=False) == 25
    assert pr.resolve_rows(40, 100, "ttt_size", allow_zero=False) == 40
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        pr.resolve_rows(1.5, 100, "ttt_size", allow_zero=False)
    with pytest.raises(ValueError, match="positive"):
        pr.resolve_rows(0, 100, "ttt_size", allow_zero=False)


def test_run_dataset_and_summary_on_a_real_table(template):
    cfgs = {"adamw": TTTConfig("adamw", steps=2, lr=1e-3, n_query=32, max_context=32),
            "selected": RecipeSearch(lrs=(1e-3,), max_steps=2, eval_every=1, validation_sizes=(2, 8),
                                     validation_repeats=1, n_query=32, max_context=32)}
    r = pr.run_dataset(template, "titanic_survived", cfgs, context_sizes=[2, 8], n_repeats=1, max_test=32,
                       baselines=True)
    assert r["n_rows_split"] == {"ttt": 1000, "pool": 253, "test": 63}
    assert set(r["acc"]) == {"none", "adamw", "selected", *pr.BASELINES}
    assert all(0 <= a <= 1 for v in r["acc"].values() for a in v)
    assert all(0.5 <= s <= 1 for v in r["top_share"].values() for s in v)  # binary: the top class has >= half
    labels = {"none", "adamw", "selected"}
    assert set(r["acc_present"]) == set(r["absent_share"]) == labels
    assert set(r["acc_open"]) == set(r["rules"]) == labels
    assert r["rules"]["none"] == "present" and r["rules"]["adamw"] == "open"  # fixed recipes always adapt
    assert r["rules"]["selected"] == ("present" if r["ttt"]["selected"]["selected"] is None else "open")
    for lab in labels:  # each label's curve is its rule's accuracy; the two agree where no open prediction is absent
        assert r["acc"][lab] == (r["acc_present"] if r["rules"][lab] == "present" else r["acc_open"])[lab]
        for o, p, share in zip(r["acc_open"][lab], r["acc_present"][lab], r["absent_share"][lab]):
            assert 0 <= share <= 1 and (share > 0 or p == pytest.approx(o))
    assert r["ttt"]["adamw"]["recipe"]["kind"] == "fixed" and r["ttt"]["selected"]["recipe"]["kind"] == "search"
    assert 0 < r["majority"] < 1 and r["n_query"] == 32
    s = summarise([r, r])
    assert s["n_datasets"] == 2 and s["sizes"] == [2, 8]
    assert np.allclose(s["curves"]["none"]["mean"], r["acc"]["none"])
    assert set(s["reduction"]) == {"adamw", "selected"} and "logistic_regression" in s["curves"]


def test_the_estimator_and_the_protocol_adapt_the_same_way(template):
    """adapt() is the TTT step of both: same rows, recipe and seed give the same weights."""
    from ttt_helpers.tabpfn.episodes import prepare_classifier
    from ttt_helpers.tabpfn.finetune import snapshot_state

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), np.arange(60) % 3
    cfg = TTTConfig(steps=2, lr=1e-3, n_query=8)
    a, b = prepare_classifier(template), prepare_classifier(template)
    ia = pr.adapt(a, X, y, 3, cfg, 4)
    pr.adapt(b, X, y, 3, cfg, 4)
    assert ia["selected"] == {"lr": 1e-3, "steps": 2} and len(ia["losses"]) == 2
    wa, wb = snapshot_state(a), snapshot_state(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ValueError, match="TTTConfig or a RecipeSearch"):
        pr.adapt(a, X, y, 3, {"steps": 2}, 0)


def test_reserved_labels_and_cost(template):
    with pytest.raises(ValueError, match="reserved"):
        pr.run_protocol(template, np.zeros((50, 2)), np.arange(50) % 2, {"none": TTTConfig(steps=1)})
    c = pr.measure_cost(template, "titanic_survived", TTTConfig(steps=2, lr=1e-3, n_query=16, max_context=16),
                        context_sizes=[2, 16], n_query=32, n_repeats=1)
    assert c["ttt_steps"] == 2 and c["ttt_seconds"] > 0 and len(c["per_query_seconds"]) == 2
    assert all(q > 0 for q in c["per_query_seconds"]) and c["n_query"] == 32
