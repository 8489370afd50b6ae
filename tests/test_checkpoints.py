"""Tests for ttt_helpers.tabpfn.checkpoints: checkpoints that tabpfn itself loads, sha256 checks, offline lookup."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tabpfn  # a hard dependency: fail, never skip, if it is missing

from ttt_helpers.tabpfn import checkpoints as tm  # noqa: E402
from ttt_helpers.provenance import write_provenance  # noqa: E402


@pytest.fixture()
def tiny_ckpt(tmp_path):
    config = tm.make_config(emsize=16, nlayers=1, nhead=2)
    model = tm.new_model(config, seed=0)
    return tm.build_checkpoint(config, model.state_dict(), tmp_path / "tiny_fallback.ckpt"), config


def _toy_table(seed=0, n=80, d=5, k=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, k, size=n)
    y[:k] = np.arange(k)
    return X, y


def test_tiny_checkpoint_loads_in_tabpfn_and_predicts_probabilities(tiny_ckpt):
    path, config = tiny_ckpt
    record = torch.load(path, map_location="cpu", weights_only=False)
    assert record["architecture_name"] == "tabpfn_v2"
    assert record["config"]["emsize"] == 16 and record["config"]["max_num_classes"] == 10
    X, y = _toy_table()
    clf = tabpfn.TabPFNClassifier(model_path=str(path), device="cpu", n_estimators=1, random_state=0)
    clf.fit(X[:60], y[:60])
    proba = clf.predict_proba(X[60:])
    assert proba.shape == (20, 3)
    assert np.all(proba >= 0) and np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert set(np.unique(clf.predict(X[60:]))) <= {0, 1, 2}


def test_load_model_returns_the_saved_weights(tmp_path):
    config = tm.make_config(emsize=16, nlayers=1, nhead=2)
    saved = tm.new_model(config, seed=3).state_dict()  # load_model builds seed-0 weights before loading these
    path = tm.build_checkpoint(config, saved, tmp_path / "seed3.ckpt")
    model = tm.load_model(path)
    assert not model.training
    loaded, fresh = model.state_dict(), tm.new_model(config, seed=0).state_dict()
    assert set(loaded) == set(saved) and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved)
    with pytest.raises(FileNotFoundError):
        tm.load_model(tmp_path / "missing.ckpt")


def test_build_checkpoint_rejects_mismatched_weights_and_versioned_names(tmp_path):
    config = tm.make_config(emsize=16, nlayers=1, nhead=2)
    other = tm.new_model(tm.make_config(emsize=32, nlayers=1, nhead=2), seed=0)
    with pytest.raises(RuntimeError):
        tm.build_checkpoint(config, other.state_dict(), tmp_path / "bad.ckpt")
    model = tm.new_model(config, seed=0)
    with pytest.raises(ValueError, match="v2.5"):
        tm.build_checkpoint(config, model.state_dict(), tmp_path / "model-v2.5.ckpt")
    with pytest.raises(ValueError):
        tm.make_config(emsize=18, nhead=4)
    with pytest.raises(ValueError):
        tm.make_config(nlayers=0)
    with pytest.raises(ValueError):
        tm.make_config(not_a_field=1)


def test_interpolate_checkpoints_mixes_weights_keeps_the_start_settings_and_refuses_other_models(tmp_path):
    config = tm.make_config(emsize=16, nlayers=1, nhead=2)
    wa, wb = tm.new_model(config, seed=1).state_dict(), tm.new_model(config, seed=2).state_dict()
    start = tm.build_checkpoint(config, wa, tmp_path / "start.ckpt", inference_config=tm.FALLBACK_INFERENCE_OVERRIDES)
    end = tm.build_checkpoint(config, wb, tmp_path / "end.ckpt")
    for alpha, expect in ((0.0, lambda k: wa[k]), (1.0, lambda k: wb[k]),
                          (0.25, lambda k: 0.75 * wa[k] + 0.25 * wb[k])):
        path = tm.interpolate_checkpoints(start, end, alpha, tmp_path / f"mix{alpha}.ckpt", extra={"note": "x"})
        got = tm.load_model(path).state_dict()
        for k in wa:
            if wa[k].is_floating_point():
                torch.testing.assert_close(got[k], expect(k), rtol=0, atol=1e-6)
        if alpha in (0.0, 1.0):  # the ends are the ends, bit for bit
            assert all(torch.equal(got[k], expect(k)) for k in wa)
        record = torch.load(path, map_location="cpu", weights_only=False)
        assert record["note"] == "x"
        assert record["inference_config"]["PREPROCESS_TRANSFORMS"] == tm.read_checkpoint_inference_config(
            start)["PREPROCESS_TRANSFORMS"]
    mid = tm.load_model(tmp_path / "mix0.25.ckpt").state_dict()
    assert any(not torch.equal(mid[k], wa[k]) and not torch.equal(mid[k], wb[k]) for k in wa)
    other = tm.make_config(emsize=32, nlayers=1, nhead=2)
    wide = tm.build_checkpoint(other, tm.new_model(other, seed=0).state_dict(), tmp_path / "wide.ckpt")
    with pytest.raises(ValueError, match="different architectures or configurations"):
        tm.interpolate_checkpoints(start, wide, 0.5, tmp_path / "bad.ckpt")
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            tm.interpolate_checkpoints(start, end, alpha, tmp_path / "bad.ckpt")


def test_new_model_is_seeded_without_touching_global_state():
    config = tm.make_config(emsize=16, nlayers=1, nhead=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = tm.new_model(config, seed=7).state_dict()
    after = torch.rand(1)
    b = tm.new_model(config, seed=7).state_dict()
    assert torch.equal(before, after)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert tm.count_parameters(tm.new_model(config, seed=0)) > 0


def test_cpu_state_dict_is_a_snapshot_that_later_steps_leave_unchanged():
    model = tm.new_model(tm.make_config(emsize=16, nlayers=1, nhead=2), seed=0)
    snap = tm.cpu_state_dict(model)
    live = model.state_dict()
    assert snap.keys() == live.keys() and all(torch.equal(snap[k], live[k]) for k in snap)
    assert all(v.device.type == "cpu" and not v.requires_grad for v in snap.values())
    assert all(snap[k].data_ptr() != live[k].data_ptr() for k in snap if live[k].numel())  # no shared memory
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(not torch.equal(snap[k], v) for k, v in model.named_parameters())
    model.load_state_dict(snap)  # and it restores the model
    assert all(torch.equal(snap[k], v) for k, v in model.named_parameters())


def _set_tabpfn_cache(monkeypatch, folder):
    """Point tabpfn's cache folder somewhere (its settings read $TABPFN_MODEL_CACHE_DIR at import)."""
    from tabpfn.settings import settings

    monkeypatch.setattr(settings.tabpfn, "model_cache_dir", folder)


def _fake_repo(tmp_path, monkeypatch):
    (tmp_path / "data" / "models").mkdir(parents=True)
    monkeypatch.setenv("TTT_BOOK_DATA", str(tmp_path / "data"))
    return tmp_path / "data" / "models"


def test_load_classifier_fallback_verifies_sha256(tmp_path, monkeypatch):
    models = _fake_repo(tmp_path, monkeypatch)
    config = tm.make_config(emsize=16, nlayers=1, nhead=2)
    path = tm.build_checkpoint(config, tm.new_model(config, seed=0).state_dict(), models / tm.FALLBACK_NAME)
    assert tm.fallback_checkpoint_path() == path
    write_provenance(path.with_suffix(".json"), command="test", files=[path], results={"n_parameters": 1, "steps": 3})
    clf, desc = tm.load_classifier(prefer="fallback", device="cpu", n_estimators=1)
    assert isinstance(clf, tabpfn.TabPFNClassifier)
    assert "fallback" in desc and "NOT the official" in desc
    X, y = _toy_table(k=2)
    proba = clf.fit(X[:60], y[:60]).predict_proba(X[60:])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)

    # a replaced file no longer matches the recorded sha256
    record = json.loads(path.with_suffix(".json").read_text())
    record["files"][path.name] = "0" * 64
    path.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        tm.load_classifier(prefer="fallback")


def test_cpu_inference_is_float32_whatever_the_cpu(tiny_ckpt, monkeypatch):
    """tabpfn's "auto" precision turns on bfloat16 autocast on CPUs with AVX512-BF16; the book's CPU inference must
    compute the same numbers on every CPU, so it asks for float32 there (and leaves a GPU's choice to tabpfn)."""
    import tabpfn.utils

    kw = tm.classifier_kwargs("cpu", n_estimators=1)
    assert kw == {"n_estimators": 1, "device": "cpu", "inference_precision": torch.float32}
    assert tm.classifier_kwargs("cpu", inference_precision="autocast")["inference_precision"] == "autocast"
    assert "inference_precision" not in tm.classifier_kwargs("cuda")
    X, y = _toy_table(k=3)
    probas = []
    for fast_bf16 in (False, True):  # a CPU without and one with bfloat16 support, as tabpfn detects them
        monkeypatch.setattr(tabpfn.utils, "_cpu_supports_fast_bf16", lambda v=fast_bf16: v)
        assert tabpfn.utils.infer_autocast_inference_mode([torch.device("cpu")], enable=None) is fast_bf16
        clf = tabpfn.TabPFNClassifier(model_path=str(tiny_ckpt[0]), n_estimators=1, random_state=0,
                                      **tm.classifier_kwargs("cpu"))
        probas.append(clf.fit(X[:60], y[:60]).predict_proba(X[60:]))
    np.testing.assert_array_equal(probas[0], probas[1])


def test_classifier_on_a_named_file_takes_the_books_cpu_settings(tiny_ckpt):
    """classifier_on: the one builder of a classifier from a named file: its path(s) as strings, classifier_kwargs's
    settings (float32 on the CPU), any other tabpfn argument passed through."""
    clf = tm.classifier_on(Path(tiny_ckpt[0]), "cpu", n_estimators=2, random_state=3)
    assert clf.model_path == str(tiny_ckpt[0]) and clf.device == "cpu" and clf.n_estimators == 2
    assert clf.inference_precision == torch.float32 and clf.random_state == 3
    both = tm.classifier_on([Path(tiny_ckpt[0]), tiny_ckpt[0]], "cuda")
    assert both.model_path == [str(tiny_ckpt[0])] * 2 and both.inference_precision != torch.float32
    X, y = _toy_table(k=3)
    ref = tabpfn.TabPFNClassifier(model_path=str(tiny_ckpt[0]), n_estimators=2, random_state=3,
                                  **tm.classifier_kwargs("cpu"))
    np.testing.assert_array_equal(clf.fit(X[:60], y[:60]).predict_proba(X[60:]),
                                  ref.fit(X[:60], y[:60]).predict_proba(X[60:]))


def test_load_classifier_without_any_model_raises(tmp_path, monkeypatch):
    _fake_repo(tmp_path, monkeypatch)
    monkeypatch.delenv(tm.OFFICIAL_ENV_VAR, raising=False)
    _set_tabpfn_cache(monkeypatch, tmp_path / "empty_cache")
    with pytest.raises(FileNotFoundError):
        tm.load_classifier(prefer="official")
    with pytest.raises(ValueError):
        tm.load_classifier(prefer="best")
    with pytest.raises(ValueError):
        tm.load_classifier(prefer="fallback", model_path="x.ckpt")


def _forbid_network(monkeypatch):
    import socket

    import tabpfn.model_loading as ml

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(ml, "download_model", refuse)


def test_official_path_honours_env_variable_and_never_downloads(tiny_ckpt, tmp_path, monkeypatch):
    _forbid_network(monkeypatch)
    path, _ = tiny_ckpt
    _set_tabpfn_cache(monkeypatch, tmp_path / "empty_cache")

    monkeypatch.setenv(tm.OFFICIAL_ENV_VAR, str(path))
    assert tm.official_checkpoint_path() == path.resolve()

    # a folder holding one of tabpfn's v2 classifier file names
    folder = tmp_path / "weights"
    folder.mkdir()
    name = tm.official_v2_classifier_names()[0]
    (folder / name).write_bytes(path.read_bytes())
    monkeypatch.setenv(tm.OFFICIAL_ENV_VAR, str(folder))
    assert tm.official_checkpoint_path() == (folder / name).resolve()

    # set but pointing at nothing: warns, finds nothing, downloads nothing
    monkeypatch.setenv(tm.OFFICIAL_ENV_VAR, str(tmp_path / "missing.ckpt"))
    with pytest.warns(UserWarning, match="names no TabPFN v2"):
        assert tm.official_checkpoint_path() is None

    # unset, with the package cache holding a v2 classifier checkpoint
    monkeypatch.delenv(tm.OFFICIAL_ENV_VAR)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / name).write_bytes(path.read_bytes())
    _set_tabpfn_cache(monkeypatch, cache)
    assert tm.official_checkpoint_path() == (cache / name).resolve()
    assert tm.official_checkpoint_path(search_cache=False) is None


def test_load_classifier_prefers_official_when_present(tiny_ckpt, tmp_path, monkeypatch):
    _forbid_network(monkeypatch)
    path, _ = tiny_ckpt
    _fake_repo(tmp_path, monkeypatch)
    monkeypatch.setenv(tm.OFFICIAL_ENV_VAR, str(path))
    clf, desc = tm.load_classifier(prefer="official", n_estimators=1)
    assert desc.startswith("official") and path.name in desc
    assert clf.model_path == str(path.resolve())
    X, y = _toy_table(k=2)
    proba = clf.fit(X[:60], y[:60]).predict_proba(X[60:])
    assert proba.shape == (20, 2)


def test_read_checkpoint_config(tiny_ckpt):
    path, config = tiny_ckpt
    cfg = tm.read_checkpoint_config(path)
    assert cfg["emsize"] == config.emsize and cfg["nlayers"] == config.nlayers
    with pytest.raises(FileNotFoundError):
        tm.read_checkpoint_config(path.with_name("nope.ckpt"))


def test_checkpoint_inference_config_reaches_tabpfn(tmp_path, tiny_ckpt):
    path, _ = tiny_ckpt
    assert tm.read_checkpoint_inference_config(path) is None  # tabpfn then uses its v2 defaults
    config = tm.make_config(emsize=16, nlayers=1, nhead=2)
    state = tm.new_model(config, seed=0).state_dict()
    declared = tm.build_checkpoint(config, state, tmp_path / "declared.ckpt",
                                   inference_config=tm.FALLBACK_INFERENCE_OVERRIDES)
    stored = tm.read_checkpoint_inference_config(declared)
    assert stored["FINGERPRINT_FEATURE"] is False
    assert [t["name"] for t in stored["PREPROCESS_TRANSFORMS"]] == ["none", "squashing_scaler_default"]
    assert stored["CLASS_SHIFT_METHOD"] == "shuffle"  # untouched defaults are filled in
    clf = tabpfn.TabPFNClassifier(model_path=str(declared), device="cpu", n_estimators=2, random_state=0)
    used = clf.get_inference_config()
    assert used.FINGERPRINT_FEATURE is False
    assert [t.name for t in used.PREPROCESS_TRANSFORMS] == ["none", "squashing_scaler_default"]
    # a user's dict still overrides single fields on top of the checkpoint's declaration
    clf2 = tabpfn.TabPFNClassifier(model_path=str(declared), device="cpu",
                                   inference_config={"CLASS_SHIFT_METHOD": None})
    assert clf2.get_inference_config().CLASS_SHIFT_METHOD is None
    assert clf2.get_inference_config().FINGERPRINT_FEATURE is False
    X, y = _toy_table()
    proba = clf.fit(X[:60], y[:60]).predict_proba(X[60:])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="not InferenceConfig fields"):
        tm.build_checkpoint(config, state, tmp_path / "bad.ckpt", inference_config={"NOT_A_FIELD": 1})
    with pytest.raises(ValueError, match="must be a dict"):
        tm.inference_config_for_checkpoint(["FINGERPRINT_FEATURE"])


@pytest.mark.parametrize("name", [tm.FALLBACK_NAME, tm.V1_NAME, tm.CANDIDATE_NAME, tm.SIX_LAYER_NAME, tm.SIX_INTERPOLATED_NAME,
                                  tm.SIX_LONG_NAME, tm.SIX_LONG_INTERPOLATED_NAME])
def test_shipped_checkpoints_match_their_sha256_and_declare_their_inference_config(name):
    from ttt_helpers.provenance import models_dir, verify_sha256

    path = models_dir() / name
    verify_sha256(path)
    stored = tm.read_checkpoint_inference_config(path)
    assert stored is not None
    for key, value in tm.FALLBACK_INFERENCE_OVERRIDES.items():
        assert stored[key] == value, key


def test_the_shipped_candidate_is_a_v2_6_model_that_tabpfn_loads_and_test_time_training_adapts():
    """The candidate of issue 11 (tabpfn_v2_6, pretrained with fixed column embeddings): tabpfn's own loader runs it,
    it reads a learnable table far above chance from 200 context rows, and the book's TTT loop runs on it and changes
    its weights."""
    from tabpfn import TabPFNClassifier

    from tabpfn_fixtures import toy_table
    from ttt_helpers.provenance import models_dir
    from ttt_helpers.tabpfn import finetune as ft
    from ttt_helpers.tabpfn.episodes import prepare_classifier

    path = models_dir() / tm.CANDIDATE_NAME
    assert tm.read_checkpoint_config(path)["num_thinking_rows"] == 16
    assert tm.architecture_of(tm.read_checkpoint_config(path)) == "v2.6"
    X, y = toy_table(n=400, seed=1)
    clf = TabPFNClassifier(model_path=str(path), device="cpu", n_estimators=1, random_state=0)
    acc = float((clf.fit(X[:200], y[:200]).predict(X[200:]) == y[200:]).mean())
    assert acc > 0.8  # four classes, so chance is about 0.25
    template = prepare_classifier(TabPFNClassifier(model_path=str(path), device="cpu"))
    w0 = ft.snapshot_state(template)
    cfg = ft.TTTConfig(optimizer="adamw", steps=6, lr=1e-4, n_query=64, max_context=128)
    history = ft.ttt_finetune(template, X[:300], y[:300], 4, cfg, 0)
    assert len(history["losses"]) == 6 and np.all(np.isfinite(history["losses"]))
    assert any(not torch.equal(w0[k], v) for k, v in ft.snapshot_state(template).items())


def test_cap32_caps_the_features_one_member_sees_and_changes_nothing_else():
    cap, stored = tm.INFERENCE_VARIANTS["cap32"], tm.FALLBACK_INFERENCE_OVERRIDES
    assert {k: v for k, v in cap.items() if k != "PREPROCESS_TRANSFORMS"} == {
        k: v for k, v in stored.items() if k != "PREPROCESS_TRANSFORMS"}
    for t, s in zip(cap["PREPROCESS_TRANSFORMS"], stored["PREPROCESS_TRANSFORMS"], strict=True):
        assert t == dict(s, max_features_per_estimator=tm.PRETRAIN_MAX_FEATURES)
    from tabpfn.inference_config import InferenceConfig

    cfg = InferenceConfig(**tm.inference_config_for_checkpoint(cap))  # as tabpfn rebuilds it from a checkpoint
    assert [t.max_features_per_estimator for t in cfg.PREPROCESS_TRANSFORMS] == [32, 32]


@pytest.mark.parametrize("name", sorted(tm.INFERENCE_VARIANTS))
def test_each_inference_variant_is_valid_and_reaches_tabpfn_through_eval_real(tiny_ckpt, name, monkeypatch):
    """Each setting compared by scripts/inference_config_check.py is a valid InferenceConfig override, tabpfn uses
    its transforms in order (the first is the one a single member applies), and pretrain_eval.eval_real passes it."""
    from ttt_helpers.tabpfn import pretrain_eval as pe

    path, _ = tiny_ckpt
    variant = tm.INFERENCE_VARIANTS[name]
    tm.inference_config_for_checkpoint(variant)  # raises on an unknown field or a bad value
    seen = []
    real = tabpfn.TabPFNClassifier.fit

    def spy(self, X, y):
        out = real(self, X, y)
        seen.append([t.name for t in self.get_inference_config().PREPROCESS_TRANSFORMS])
        return out

    monkeypatch.setattr(tabpfn.TabPFNClassifier, "fit", spy)
    X, y = _toy_table()
    acc = pe.eval_real(path, {"toy": (X[:60], X[60:], y[:60], y[60:])}, "cpu", 2, 0, inference_config=variant)
    assert 0 <= acc["toy"] <= 1
    assert seen == [[t["name"] for t in variant["PREPROCESS_TRANSFORMS"]]]


def test_the_fallback_is_the_promoted_checkpoint_and_describes_itself():
    from ttt_helpers.provenance import models_dir, read_provenance, sha256_file

    fallback = tm.fallback_checkpoint_path()
    assert sha256_file(fallback) == sha256_file(models_dir() / tm.SIX_LONG_INTERPOLATED_NAME)
    assert sha256_file(fallback) != sha256_file(models_dir() / tm.V1_NAME)
    assert read_provenance((models_dir() / tm.V1_NAME).with_suffix(".json"))["files"] == {tm.V1_NAME: sha256_file(models_dir() / tm.V1_NAME)}
    desc = tm._describe_fallback(fallback)
    assert desc.startswith("our fallback (tabpfn_fallback.ckpt; TabPFN v2.6 architecture, 2.75 M parameters")
    assert "interpolated from tabpfn_six_long.ckpt" in desc and desc.endswith("NOT the official TabPFN v2 weights)")
    assert "TabPFN v2 architecture, 1.65 M parameters" in tm._describe_fallback(models_dir() / tm.V1_NAME)
    assert "pretraining steps on tabicl's graph_scm prior" in tm._describe_fallback(models_dir() / tm.V1_NAME)


def test_member_agreement_counts_the_ensembles_members_and_matches_its_accuracy(tiny_ckpt):
    """pretrain_eval.member_agreement: as many members as asked for, the ensemble's accuracy that eval_real gives
    for the same settings, member accuracies ordered, and with one member a member that is the ensemble."""
    from ttt_helpers.tabpfn import pretrain_eval as pe

    path, _ = tiny_ckpt
    X, y = _toy_table()
    tables = {"toy": (X[:60], X[60:], y[:60], y[60:])}
    four = pe.member_agreement(path, tables, "cpu", n_estimators=4, seed=0)["toy"]
    assert four["members"] == 4
    assert four["ensemble_accuracy"] == pytest.approx(pe.eval_real(path, tables, "cpu", 4, 0)["toy"])
    assert four["worst_member"] <= four["member_accuracy"] <= four["best_member"]
    assert 0.0 <= four["agreement"] <= 1.0
    assert four["ensemble_gain"] == pytest.approx(four["ensemble_accuracy"] - four["member_accuracy"])
    one = pe.member_agreement(path, tables, "cpu", n_estimators=1, seed=0)["toy"]
    assert one["members"] == 1 and one["agreement"] == 1.0
    assert one["member_accuracy"] == pytest.approx(one["ensemble_accuracy"])
