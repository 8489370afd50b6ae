"""Tests for ttt_helpers.tabpfn.pretrain: the pretraining loop at toy size on the CPU (seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tabpfn  # a hard dependency: fail, never skip, if it is missing

from ttt_helpers.provenance import verify_sha256
from ttt_helpers.tabpfn import checkpoints as tm
from ttt_helpers.tabpfn import pretrain as pt
from ttt_helpers.tabpfn import pretrain_eval as pe

TOY_STAGES = [
    dict(start=0.0, min_rows=24, max_rows=48, max_features=3, max_classes=3, batch=4, reuse=2),
    dict(start=0.5, min_rows=32, max_rows=64, max_features=4, max_classes=4, batch=4, reuse=1),
]


def toy_config(**kw):
    base = dict(prior="toy", clock="steps", seeding="per_batch", workers=0, curriculum=[dict(s) for s in TOY_STAGES],
                emsize=16, nlayers=1, nhead=2, warmup_steps=2, val_tasks=8, eval_every=10**9)
    base.update(kw)
    return pt.tiny_config(**base)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def optimizer_states(trainer):
    out = {}
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for opt, _ in trainer.optimizers:
        for p, st in opt.state.items():
            out[names[id(p)]] = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in st.items()}
    return out


def majority_accuracy(tasks):
    """Accuracy of predicting each task's most frequent context label (on the scored test labels)."""
    correct = total = 0
    for _, y_train, target, _ in tasks:
        for b in range(y_train.shape[1]):
            labels = y_train[:, b].long()
            present = torch.zeros(int(labels.max()) + 1, dtype=torch.bool)
            present[labels] = True
            majority_rank = present.long().cumsum(0)[torch.bincount(labels).argmax()] - 1
            ok = target[:, b] >= 0
            correct += int(((target[:, b] == majority_rank) & ok).sum())
            total += int(ok.sum())
    return correct / total


def test_loss_decreases_on_the_toy_prior(tmp_path):
    stage = dict(start=0.0, min_rows=48, max_rows=96, max_features=2, max_classes=2, batch=8, reuse=1)
    cfg = toy_config(lr=3e-3, warmup_steps=5, min_lr_frac=1.0, val_tasks=16, curriculum=[stage])
    trainer = pt.Trainer(cfg, out_dir=tmp_path, log=lambda s: None)
    val = pe.make_val_set(cfg, "cpu")
    majority = majority_accuracy(val)
    before = pe.eval_prior(trainer.model, val, autocast=False)
    assert trainer.run(60)
    after = pe.eval_prior(trainer.model, val, autocast=False)
    # the untrained model is well below the context's majority rate; in 60 steps it learns at least to read the
    # context's labels (the toy tasks are unbalanced), and the held-out loss falls
    assert before["val_acc"] < majority - 0.1, (before, majority)
    assert after["val_acc"] >= majority - 0.01, (after, majority)
    assert after["val_loss"] < before["val_loss"] - 0.05, (before, after)
    curve = np.array(trainer.meta["loss_curve"])  # one row per 25 steps
    assert curve.shape == (2, 5) and curve[-1, 3] < curve[0, 3]


@pytest.mark.parametrize("architecture, optimizer", [("v2", "adamw"), ("v2.6", "muon")])
def test_stop_and_resume_reproduces_an_uninterrupted_run(tmp_path, architecture, optimizer):
    kw = dict(architecture=architecture, optimizer=optimizer, min_reuse=2)
    if architecture == "v2.6":
        kw["num_thinking_rows"] = 4
    budget = 9  # steps; the curriculum switches stage at step 5 (progress 0.5)
    whole = pt.Trainer(toy_config(**kw), out_dir=tmp_path / "whole", log=lambda s: None)
    assert whole.run(budget)

    first = pt.Trainer(toy_config(**kw), out_dir=tmp_path / "part", log=lambda s: None)
    assert not first.run(budget, max_steps=3)  # stops in the middle of a batch's second use
    assert first.meta["prior_cursor"] == {"stage": 0, "next_batch": 2, "reuse_left": 1}
    first.save()
    second = pt.Trainer(toy_config(**kw), out_dir=tmp_path / "part", resume=tmp_path / "part", log=lambda s: None)
    assert second.meta["step"] == 3 and second.call_index == 1
    assert second.run(budget)

    assert second.meta["step"] == whole.meta["step"] == budget
    assert second.meta["tasks_seen"] == whole.meta["tasks_seen"]
    a, b = weights(whole.model), weights(second.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = optimizer_states(whole), optimizer_states(second)
    assert sa.keys() == sb.keys() and len(sa) > 0
    for name in sa:
        for key, value in sa[name].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[name][key])), (name, key)
    if optimizer == "muon":
        assert any("momentum_buffer" in st for st in sa.values())
    # and the weights did move: the run is not trivially equal
    fresh = weights(pt.make_model(toy_config(**kw))[1])
    assert any(not torch.equal(fresh[k], a[k]) for k in a)


def test_per_batch_stream_is_the_same_for_any_number_of_workers():
    stage = dict(TOY_STAGES[0], batch=2)
    streams = [pt.prior_stream(stage, "toy", workers=w, key=(0, 0, 0), start=3) for w in (0, 2)]
    for _ in range(4):
        a, b = (next(s) for s in streams)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("architecture", ["v2", "v2.6"])
def test_exported_checkpoint_loads_in_tabpfn_and_carries_provenance(tmp_path, architecture):
    cfg = toy_config(architecture=architecture, num_thinking_rows=4)
    trainer = pt.Trainer(cfg, out_dir=tmp_path / "state", command="pytest", log=lambda s: None)
    trainer.evaluator = pe.Evaluator(cfg, "cpu", real=False)
    assert trainer.run(4)
    ckpt = trainer.export(tmp_path / "export")
    prov = json.loads(ckpt.with_suffix(".json").read_text())
    verify_sha256(ckpt, ckpt.with_suffix(".json"))
    assert prov["results"]["steps"] == 4 and prov["command"] == "pytest"
    assert prov["pretrain_config"]["architecture"] == architecture
    record = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert record["architecture_name"] == tm.ARCHITECTURES[architecture][0]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    clf = tabpfn.TabPFNClassifier(model_path=str(ckpt), device="cpu", n_estimators=1, random_state=0)
    proba = clf.fit(X[:40], y[:40]).predict_proba(X[40:])
    assert proba.shape == (20, 2) and np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    # the exported weights are the trained ones
    loaded = tm.new_model(record["config"])
    loaded.load_state_dict(record["state_dict"])
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    cfg = toy_config(architecture="v2.6", optimizer="muon", num_thinking_rows=4)
    model = pt.make_model(cfg)[1]
    (adamw, lrs), (muon, muon_lrs) = pt.make_optimizers(model, cfg)
    assert isinstance(muon, torch.optim.Muon) and lrs == [cfg.lr, cfg.lr] and muon_lrs == [cfg.muon_lr]
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon and all(n.startswith("blocks.") for n in in_muon)
    assert in_muon.isdisjoint(in_adamw) and in_muon | in_adamw == set(names.values())
    assert any("thinking" in n for n in in_adamw)


def test_lr_schedule_and_curriculum():
    assert pt.lr_at(1e-3, 0, 0.0, warmup_steps=10, min_lr_frac=0.1) == pytest.approx(1e-4)
    assert pt.lr_at(1e-3, 10, 0.0, warmup_steps=10, min_lr_frac=0.1) == pytest.approx(1e-3)
    assert pt.lr_at(1e-3, 50, 1.0, warmup_steps=10, min_lr_frac=0.1) == pytest.approx(1e-4)
    assert [pt.stage_index(pt.CURRICULUM, p) for p in (0.0, 0.2, 0.5, 0.99)] == [0, 1, 2, 3]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="architecture"):
        pt.PretrainConfig(architecture="v3")
    with pytest.raises(ValueError, match="v2 architecture only"):
        pt.PretrainConfig(architecture="v2.6", random_column_embeddings=True)
    with pytest.raises(ValueError, match="curriculum"):
        pt.PretrainConfig(curriculum=[dict(TOY_STAGES[1])])
    with pytest.raises(ValueError, match="budget"):
        pt.Trainer(toy_config(), out_dir="/tmp/unused", log=lambda s: None).run(0)
