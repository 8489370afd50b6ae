"""Tests for ttt_helpers.tabpfn.episodes: the fine-tuning data path, the label ranks, the small-context pathology."""

import numpy as np
import pytest

import torch  # a hard dependency: fail, never skip, if it is missing
import tabpfn  # a hard dependency: fail, never skip, if it is missing

from tabpfn_fixtures import template, tiny_ckpt  # noqa: E402,F401
from tabpfn_fixtures import toy_table as _toy  # noqa: E402
from ttt_helpers.tabpfn import episodes as ep_mod  # noqa: E402
from ttt_helpers.tabpfn.checkpoints import load_classifier  # noqa: E402


def test_prepare_classifier_sets_the_finetuning_path_and_leaves_template(template):
    clf = ep_mod.prepare_classifier(template, n_estimators=1, seed=3)
    assert clf.fit_mode == "batched" and clf.n_estimators == 1 and clf.random_state == 3
    assert clf.inference_config["CLASS_SHIFT_METHOD"] is None
    assert template.fit_mode != "batched"
    assert len(clf.models_) == 1


def test_label_ranks_put_present_classes_first():
    assert list(ep_mod.label_ranks([3, 1, 3], 5)) == [2, 0, 3, 1, 4]  # present 1, 3 -> 0, 1; absent 0, 2, 4 -> 2, 3, 4
    assert list(ep_mod.label_ranks([0, 1], 2)) == [0, 1]
    assert list(ep_mod.label_ranks([1, 1], 2)) == [1, 0]


def test_episode_feeds_ranks_and_returns_logits_in_the_tables_label_space(template):
    clf = ep_mod.prepare_classifier(template)
    X, y = _toy()
    ctx = np.where(np.isin(y, [1, 3]))[0][:6]  # a context with classes 1 and 3 only
    ep = ep_mod.make_episode(clf, X[ctx], y[ctx], X[:40], y[:40], n_classes=4)
    assert set(np.unique(ep.batch.y_context[0].numpy()).astype(int)) == {0, 1}  # ranks of classes 1 and 3
    assert np.array_equal(ep.batch.y_query[0].numpy(), y[:40])
    assert list(ep.ranks) == [2, 0, 3, 1]
    logits = ep_mod.episode_logits(clf, ep, 4)
    with torch.no_grad():
        raw = clf.forward(ep.batch.X_query, use_inference_mode=False, return_raw_logits=True)[:, 0]
    assert tuple(logits.shape) == (40, 1, 4)
    torch.testing.assert_close(logits[..., 1], raw[..., 0])  # output 0 ("first class present") is label 1
    assert 0.0 <= ep_mod.episode_accuracy(clf, ep, 4) <= 1.0


def test_one_row_context_is_rejected_by_tabpfn(template):
    from tabpfn.errors import TabPFNValidationError

    clf = ep_mod.prepare_classifier(template)
    X, y = _toy()
    with pytest.raises(TabPFNValidationError):
        ep_mod.make_episode(clf, X[:1], y[:1], X[1:5], y[1:5])


def _imbalanced_binary(n=600, seed=0):
    """The small-context pathology's table: binary, majority rate 0.78, the majority class being label 1."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (rng.uniform(size=n) < 0.78).astype(np.int64)
    return X, y


def test_small_context_of_the_majority_class_predicts_it_with_the_shipped_v1():
    """A context holding only the majority class (label 1) must predict that class, as TabPFN does with its own label
    encoder. Feeding the table's labels unranked, as the pipeline once did, makes the model answer "the first
    class present" with output 0, which was read as label 0: the absent minority class. The model is ``v1``, the
    fallback of the time, which answers with the classes present; the present fallback names an absent class from
    most two-row contexts (chapter 10), which is a property of the model, not of the label mapping this tests."""
    from ttt_helpers.provenance import models_dir
    from ttt_helpers.tabpfn import checkpoints as tm

    template = tabpfn.TabPFNClassifier(model_path=str(models_dir() / tm.V1_NAME), **tm.classifier_kwargs("cpu"))
    clf = ep_mod.prepare_classifier(template)
    X, y = _imbalanced_binary()
    rng = np.random.default_rng(1)
    ones = np.flatnonzero(y == 1)
    test = np.setdiff1d(np.arange(len(y)), ones[:40])[:200]
    majority = float(np.mean(y[test] == 1))
    fixed, unranked = [], []
    for _ in range(4):
        ctx = rng.choice(ones[:40], size=2, replace=False)
        ep = ep_mod.make_episode(clf, X[ctx], y[ctx], X[test], y[test], n_classes=2)
        fixed.append(ep_mod.episode_accuracy(clf, ep, 2))
        ep.batch.y_context = [torch.ones_like(t) for t in ep.batch.y_context]  # the table's label 1, unranked
        ep.ranks = np.arange(2)
        unranked.append(ep_mod.episode_accuracy(clf, ep, 2))
    assert np.mean(fixed) >= majority - 0.05  # predicts the majority class, as it should
    assert np.mean(unranked) <= 1 - majority + 0.1  # the pathology: far below the majority rate


def test_present_classes_and_the_scores_of_absent_class_predictions():
    """With a one-class context, the argmax over the context's classes can only name that class, so its accuracy is
    that class's share of the queries; the share of predictions naming an absent class is what the open argmax
    adds, and the two rules agree on every query that names a present class."""
    from ttt_helpers.tabpfn.finetune import score_episodes

    template, _ = load_classifier(prefer="fallback", device="cpu")
    clf = ep_mod.prepare_classifier(template)
    X, y = _imbalanced_binary()
    ones = np.flatnonzero(y == 1)
    test = np.setdiff1d(np.arange(len(y)), ones[:40])[:200]
    ep = ep_mod.make_episode(clf, X[ones[:2]], y[ones[:2]], X[test], y[test], n_classes=2)
    ep.requested = 2
    assert ep_mod.present_classes(ep).tolist() == [False, True]
    both = ep_mod.make_episode(clf, X[:40], y[:40], X[test], y[test], n_classes=2)
    assert ep_mod.present_classes(both).tolist() == [True, True]
    score = score_episodes(clf, [ep], 2)
    assert score["present_acc_by_size"] == [pytest.approx(float(np.mean(y[test] == 1)))]
    pred = ep_mod.episode_predictions(clf, ep, 2)
    assert score["absent_share_by_size"] == [pytest.approx(float(np.mean(pred == 0)))]
    assert score["acc_by_size"] == [pytest.approx(float(np.mean(pred == y[test])))]
    from ttt_helpers.tabpfn.finetune import evaluate_states, snapshot_state

    states = evaluate_states(clf, [ep, both], 2, {"w": snapshot_state(clf)})["w"]  # the protocol's scorer agrees
    assert states["present_acc"][0] == pytest.approx(score["present_acc_by_size"][0])
    assert states["absent_share"][0] == pytest.approx(score["absent_share_by_size"][0])
    assert states["absent_share"][1] == 0 and states["present_acc"][1] == pytest.approx(states["acc"][1])
    assert states["rule"] == "open" and states["open_acc"][0] == pytest.approx(states["acc"][0])


def test_each_set_of_weights_is_read_with_its_rule():
    """The pretrained weights ("none") are read with tabpfn's rule, adapted ones with the open argmax; both
    accuracies stay recorded whatever the rule, and an unknown rule is refused."""
    from ttt_helpers.tabpfn.finetune import ZERO_SHOT_RULE, evaluate_states, score_episodes, snapshot_state

    assert ZERO_SHOT_RULE == "present"
    template, _ = load_classifier(prefer="fallback", device="cpu")
    clf = ep_mod.prepare_classifier(template)
    X, y = _imbalanced_binary()
    ones = np.flatnonzero(y == 1)
    test = np.setdiff1d(np.arange(len(y)), ones[:40])[:200]
    ep = ep_mod.make_episode(clf, X[ones[:2]], y[ones[:2]], X[test], y[test], n_classes=2)  # one class present
    ep.requested = 2
    only_present = float(np.mean(y[test] == 1))  # tabpfn's rule can only name the class the context holds
    opened = float(np.mean(ep_mod.episode_predictions(clf, ep, 2) == y[test]))
    w = snapshot_state(clf)
    res = evaluate_states(clf, [ep], 2, {"none": w, "ttt": w})
    assert res["none"]["rule"] == "present" and res["ttt"]["rule"] == "open"
    assert res["none"]["acc"][0] == pytest.approx(only_present) and res["ttt"]["acc"][0] == pytest.approx(opened)
    assert res["none"]["open_acc"][0] == pytest.approx(opened) and res["ttt"]["present_acc"][0] == pytest.approx(
        only_present)
    assert res["none"]["top_share"][0] == 1.0  # one class present: every prediction names it
    flipped = evaluate_states(clf, [ep], 2, {"none": w}, rules={"none": "open"})["none"]
    assert flipped["rule"] == "open" and flipped["acc"][0] == pytest.approx(opened)
    score = score_episodes(clf, [ep], 2, rule="present", per_query=True)
    assert score["rule"] == "present" and score["acc_by_size"] == [pytest.approx(only_present)]
    assert score["open_acc_by_size"] == [pytest.approx(opened)]
    assert score["correct"][0].mean() == pytest.approx(only_present)
    with pytest.raises(ValueError, match="rule must be one of"):
        score_episodes(clf, [ep], 2, rule="masked")
    with pytest.raises(ValueError, match="rule must be one of"):
        evaluate_states(clf, [ep], 2, {"none": w}, rules={"none": "closed"})


def test_eval_episodes_record_rows_and_share_the_test_rows(template):
    clf = ep_mod.prepare_classifier(template)
    X, y = _toy()
    eps = ep_mod.make_eval_episodes(clf, X, y, np.arange(100), np.arange(100, 400), [2, 8], 2, 0, n_classes=4,
                                    max_test=64)
    assert [e.requested for e in eps] == [2, 2, 8, 8] and all(e.n_query == 64 for e in eps)
    assert all(np.array_equal(e.query_rows, eps[0].query_rows) for e in eps)
    assert all(len(e.context_rows) == e.n_context and set(e.context_rows) <= set(range(100)) for e in eps)
