"""Tests for ttt_helpers.tabpfn.pretrain: the pretraining loop at toy size on the CPU (seconds)."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

import tabpfn  # a hard dependency: fail, never skip, if it is missing

from ttt_helpers.provenance import cpu_model, verify_sha256
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


def test_small_contexts_are_log_uniform_from_two_rows_to_half_the_table():
    gen = torch.Generator().manual_seed(0)
    draws = [pt.small_context_size(1000, gen, 0.5) for _ in range(4000)]
    small = np.array([d for d in draws if d is not None])
    assert abs(len(small) / len(draws) - 0.5) < 0.03  # the share asked for
    assert small.min() == 2 and small.max() <= 500
    # log-uniform on [2, 500]: the median is near sqrt(2 * 500) = 32, a quarter of the draws below 2 * 250^(1/4)
    assert 26 <= np.median(small) <= 38, np.median(small)
    assert abs(np.mean(small <= 8) - np.log(4) / np.log(250)) < 0.03
    gen = torch.Generator().manual_seed(0)
    assert all(pt.small_context_size(1000, gen, 0.0) is None for _ in range(100))


def test_a_small_context_task_scores_the_test_rows_of_present_classes_only():
    cfg = toy_config()
    batch = pt.prior_batch(cfg.curriculum[0], "toy", (0, 0, 0), 0)
    T = batch[0].shape[1]
    gen = torch.Generator().manual_seed(3)
    sizes = set()
    for _ in range(20):
        x, y_tr, target, n_cls = pt.to_task(batch, "cpu", gen, reshuffle=False, max_classes=cfg.max_num_classes,
                                            small_context_frac=1.0)
        n = y_tr.shape[0]
        sizes.add(n)
        assert 2 <= n <= T // 2 and x.shape[0] == T and target.shape[0] == T - n
        for b in range(y_tr.shape[1]):  # targets are ranks among the context's classes, or ignored
            k = len(torch.unique(y_tr[:, b]))
            assert int(n_cls[b]) == k and int(target[:, b].max()) < k
            assert bool(((target[:, b] >= 0) | (target[:, b] == -100)).all())
    assert len(sizes) > 3  # a new size at (nearly) every step
    _, y_tr, _, _ = pt.to_task(batch, "cpu", gen, reshuffle=False, max_classes=cfg.max_num_classes)
    assert y_tr.shape[0] == int(batch[4][0])  # small_context_frac 0: the prior's split


@pytest.mark.parametrize("architecture, optimizer, small", [("v2", "adamw", 0.0), ("v2.6", "muon", 0.0),
                                                            ("v2.6", "muon", 0.5), ("v2.6", "muon_batched", 0.0)])
def test_stop_and_resume_reproduces_an_uninterrupted_run(tmp_path, architecture, optimizer, small):
    kw = dict(architecture=architecture, optimizer=optimizer.removesuffix("_batched"), min_reuse=2,
              small_context_frac=small, muon_batched=optimizer.endswith("_batched"))
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
    if optimizer.startswith("muon"):
        assert any("momentum_buffer" in st for st in sa.values())
        muon_class = pt.BatchedMuon if optimizer == "muon_batched" else torch.optim.Muon
        assert type(second.optimizers[1][0]) is type(whole.optimizers[1][0]) is muon_class
    # and the weights did move: the run is not trivially equal
    fresh = weights(pt.make_model(toy_config(**kw))[1])
    assert any(not torch.equal(fresh[k], a[k]) for k in a)


def test_per_batch_stream_is_the_same_for_any_number_of_workers():
    stage = dict(TOY_STAGES[0], batch=2)
    streams = [pt.prior_stream(stage, "toy", workers=w, key=(0, 0, 0), start=3, skip=[5]) for w in (0, 2)]
    for i in (3, 4, 6, 7):
        (ia, a), (ib, b) = (next(s) for s in streams)
        assert ia == ib == i
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert all(torch.equal(x, y) for x, y in zip(a, pt.prior_batch(stage, "toy", (0, 0, 0), i)))


class _WorkerNiceness(torch.utils.data.IterableDataset):
    def __iter__(self):
        import os

        yield os.nice(0)


def test_worker_nice_lowers_the_workers_priority_and_only_theirs():
    import os

    before = os.nice(0)
    for nice in (0, 3):
        loader = torch.utils.data.DataLoader(_WorkerNiceness(), batch_size=None, num_workers=1,
                                             worker_init_fn=pt.prior._WorkerInit(nice=nice))
        assert next(iter(loader)) == min(before + nice, 19)
    assert os.nice(0) == before
    # the per-batch stream with niced workers still hands out exactly the batches of its seeds
    stage = dict(TOY_STAGES[0], batch=2)
    it = pt.prior_stream(stage, "toy", workers=2, key=(0, 0, 0), worker_nice=5)
    for i in range(3):
        j, batch = next(it)
        assert j == i and all(torch.equal(x, y) for x, y in zip(batch, pt.prior_batch(stage, "toy", (0, 0, 0), i)))
    with pytest.raises(ValueError, match="worker_nice"):
        pt.PretrainConfig(worker_nice=-1)
    with pytest.raises(ValueError, match="worker_nice"):
        pt.PretrainConfig(worker_nice=20)


def test_configure_host_one_cpu_thread_on_a_gpu_and_none_changed_on_the_cpu():
    from ttt_helpers.tabpfn.pretrain.trainer import configure_host

    saved = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.set_num_threads(2)
        torch.backends.cuda.matmul.allow_tf32 = False
        configure_host("cpu")  # on the CPU the threads do the arithmetic: left alone
        assert torch.get_num_threads() == 2 and not torch.backends.cuda.matmul.allow_tf32
        configure_host(torch.device("cuda", 0))  # the settings only; no GPU is needed to make them
        assert torch.get_num_threads() == 1
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]


def test_each_call_records_its_host_threads_and_too_many_workers_are_told(tmp_path):
    from ttt_helpers.tabpfn.pretrain.trainer import _usable_cores

    lines = []
    trainer = pt.Trainer(pt.tiny_config(prior="toy", workers=0, emsize=16, nlayers=1, nhead=1), out_dir=tmp_path,
                         log=lines.append)
    assert trainer.meta["calls"][-1]["host_threads"] == torch.get_num_threads()
    assert not any("warning" in line for line in lines)
    cores = _usable_cores()
    pt.Trainer(pt.tiny_config(prior="toy", workers=cores, emsize=16, nlayers=1, nhead=1), out_dir=tmp_path,
               log=lines.append)
    assert any(f"{cores} prior workers on {cores} usable CPU cores" in line and f"workers={max(1, cores - 1)}" in line
               for line in lines)


def slow_prior_batches(monkeypatch, slow_seeds, seconds):
    """Make ToyPrior take ``seconds`` for the batches generated right after seeding with one of ``slow_seeds``
    (0.01 s for the others); DataLoader workers, forked, inherit the patch."""
    get_batch = pt.ToyPrior.get_batch

    def slow(self):
        time.sleep(seconds if torch.initial_seed() in slow_seeds else 0.01)
        return get_batch(self)

    monkeypatch.setattr(pt.ToyPrior, "get_batch", slow)


def test_out_of_order_stream_hands_out_ready_batches_first(monkeypatch):
    stage, key = dict(TOY_STAGES[0], batch=2), (0, 0, 0)
    slow_prior_batches(monkeypatch, {pt.prior._mix(*key, 3)}, 0.5)  # the first batch of the stream is slow
    it = pt.prior_stream(stage, "toy", workers=2, key=key, start=3, skip=[5], in_order=False)
    seen = []
    while 3 not in seen:
        i, batch = next(it)
        assert all(torch.equal(x, y) for x, y in zip(batch, pt.prior_batch(stage, "toy", key, i)))
        seen.append(i)
        assert len(seen) < 200
    # the other worker's batches came first; every batch once, none skipped by the cursor
    assert seen[0] != 3 and len(seen) == len(set(seen)) and not {0, 1, 2, 5} & set(seen), seen
    ordered = pt.prior_stream(stage, "toy", workers=2, key=key, start=3, skip=[5])
    assert [next(ordered)[0] for _ in range(4)] == [3, 4, 6, 7]


def test_out_of_order_stop_and_resume_draws_exactly_the_batches_not_drawn(tmp_path, monkeypatch):
    # stage 0 (steps 0-4): each batch used twice; batch 1 takes 3 s, the others 0.01 s, so the first call
    # (3 steps) draws batches 0 and 2 and stops in the middle of batch 2's uses
    slow_prior_batches(monkeypatch, {pt.prior._mix(0, 0, 0, 1)}, 3.0)
    cfg = toy_config(workers=2, in_order=False, min_reuse=2)
    used = []  # (call, stage, batch index) per step

    def hook(tr, task):
        used.append((tr.call_index, tr.meta["prior_cursor"]["stage"], tr.batch_index))

    first = pt.Trainer(cfg, out_dir=tmp_path, log=lambda s: None)
    first.step_hook = hook
    assert not first.run(9, max_steps=3)
    assert [u[2] for u in used] == [0, 0, 2], used  # batch 2 overtook the slow batch 1
    assert first.meta["prior_cursor"] == {"stage": 0, "next_batch": 1, "drawn_above": [2], "in_use": 2,
                                          "reuse_left": 1}
    assert first.meta["calls"][-1]["prior_in_order"] is False
    first.save()
    second = pt.Trainer(cfg, out_dir=tmp_path, resume=tmp_path, log=lambda s: None)
    second.step_hook = hook
    assert second.run(9) and second.meta["step"] == 9
    # the second call finishes the uses of batch 2, then draws batch 3 (1 is still being made) until stage 1
    # starts at step 5; no batch is drawn twice (each one's uses are consecutive), each is used twice but the
    # last of stage 0, cut short by the change of stage
    assert [u[1:] for u in used[:5]] == [(0, 0), (0, 0), (0, 2), (0, 2), (0, 3)] and used[3][0] == 1, used
    runs = [u[1:] for k, u in enumerate(used) if k == 0 or used[k - 1][1:] != u[1:]]
    assert len(runs) == len(set(runs)) and [s for s, _ in runs] == [0, 0, 0, 1, 1], used
    assert [sum(u[1:] == r for u in used) for r in runs] == [2, 2, 1, 2, 2], used
    # the resumed stream enumerates exactly the indexes the first call had not drawn
    resumed = pt.prior_stream(TOY_STAGES[0], "toy", workers=0, key=(0, 0, 0), start=1, skip=[2])
    assert [next(resumed)[0] for _ in range(4)] == [1, 3, 4, 5]


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
    # the commit is the one the call started from (a commit made while a long run trains must not be named)
    assert prov["git_commit"] == prov["calls"][-1]["git_commit"] == trainer.meta["calls"][-1]["git_commit"]
    assert "on the prior 'toy'" in prov["description"] and "warm-started" not in prov["description"]
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


def test_a_warm_start_begins_from_the_exported_weights_and_records_them(tmp_path):
    first = pt.Trainer(toy_config(architecture="v2.6", num_thinking_rows=4), out_dir=tmp_path / "a", log=lambda s: None)
    first.evaluator = pe.Evaluator(first.cfg, "cpu", real=False)
    assert first.run(3)
    ckpt = first.export(tmp_path / "export")
    cfg = toy_config(architecture="v2.6", num_thinking_rows=4, seed=5, init_from=str(ckpt), small_context_frac=0.5)
    warm = pt.Trainer(cfg, out_dir=tmp_path / "b", log=lambda s: None)
    assert all(torch.equal(v, first.model.state_dict()[k]) for k, v in warm.model.state_dict().items())
    assert warm.meta["init_from"]["sha256"] == verify_sha256(ckpt, ckpt.with_suffix(".json"))
    cold = pt.Trainer(toy_config(architecture="v2.6", num_thinking_rows=4, seed=5), out_dir=tmp_path / "c",
                      log=lambda s: None)
    assert not all(torch.equal(v, first.model.state_dict()[k]) for k, v in cold.model.state_dict().items())
    warm.evaluator = pe.Evaluator(cfg, "cpu", real=False)
    assert warm.run(2)
    prov = json.loads(warm.export(tmp_path / "export2").with_suffix(".json").read_text())
    assert prov["init_from"] == warm.meta["init_from"] and prov["pretrain_config"]["init_from"] == str(ckpt)
    assert f"warm-started from {ckpt}" in prov["description"]
    with pytest.raises(ValueError, match="do not fit"):
        pt.Trainer(toy_config(architecture="v2.6", num_thinking_rows=4, emsize=32, init_from=str(ckpt)),
                   out_dir=tmp_path / "d", log=lambda s: None)
    with pytest.raises(ValueError, match="holds a v2.6 model"):
        pt.Trainer(toy_config(architecture="v2", init_from=str(ckpt)), out_dir=tmp_path / "e", log=lambda s: None)


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


def _muon_pair(shapes, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(s, generator=gen) * 0.05 for s in shapes]
    a = [torch.nn.Parameter(w.clone()) for w in start]
    b = [torch.nn.Parameter(w.clone()) for w in start]
    return a, b, torch.optim.Muon(a, **kw), pt.BatchedMuon(b, **kw), gen


@pytest.mark.parametrize("kw", [dict(adjust_lr_fn="match_rms_adamw", weight_decay=0.0),
                                dict(adjust_lr_fn="original", weight_decay=0.1),
                                dict(adjust_lr_fn=None, weight_decay=0.0, nesterov=False, momentum=0.9)])
def test_batched_muon_makes_torch_muons_update(kw):
    shapes = [(16, 16)] * 3 + [(32, 16), (16, 32), (8, 24)]  # square, tall, wide, and a shape of its own
    a, b, torch_muon, batched, gen = _muon_pair(shapes, lr=0.01, **kw)
    for _ in range(3):
        start = [w.detach().clone() for w in a]
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for w, v, g in zip(a, b, grads):
            w.grad, v.grad = g.clone(), g.clone()
        torch_muon.step()
        batched.step()
        for w, v, w0 in zip(a, b, start):
            w, v = w.detach(), v.detach()
            assert (w - w0).norm() > 0  # a real update
            # the same update, up to the order of bfloat16 sums (on the CPU the two are identical)
            assert float((w - v).norm() / (w - w0).norm()) < 1e-2
        for w, v in zip(a, b):
            assert torch.allclose(torch_muon.state[w]["momentum_buffer"], batched.state[v]["momentum_buffer"])
            v.data.copy_(w.data)  # the next step from the same weights, so that differences cannot pile up


def test_batched_muon_launches_a_fraction_of_torch_muons_kernels():
    model = pt.make_model(pt.recipe("v2.6-muon", nlayers=4, device="cpu"))[1]
    counts = {}
    for batched in (False, True):  # Muon as the trainer makes it, each way
        opt = pt.make_optimizers(model, pt.recipe("v2.6-muon", nlayers=4, device="cpu", muon_batched=batched))[1][0]
        matrices = opt.param_groups[0]["params"]
        for p in matrices:
            p.grad = torch.randn_like(p)
        opt.step()  # the momentum buffers exist from here on, as in training
        counts[type(opt)] = pt.count_compute_ops(opt.step)
    # torch's: about 23 kernels per matrix (40 matrices of 3 shapes); batched: about 20 per shape and a few more
    assert counts[torch.optim.Muon] >= 20 * len(matrices)
    assert counts[pt.BatchedMuon] <= 100


def test_batched_muon_refuses_what_muon_refuses():
    with pytest.raises(ValueError, match="2-D"):
        pt.BatchedMuon([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        pt.BatchedMuon([torch.nn.Parameter(torch.zeros(3, 3))], adjust_lr_fn="other")
    with pytest.raises(ValueError, match=">= 0"):
        pt.BatchedMuon([torch.nn.Parameter(torch.zeros(3, 3))], lr=-1.0)
    with pytest.raises(ValueError, match="r <= c"):
        pt.newton_schulz_batched(torch.zeros(2, 5, 3))
    cfg = toy_config(architecture="v2.6", optimizer="muon", num_thinking_rows=4, muon_batched=True)
    assert isinstance(pt.make_optimizers(pt.make_model(cfg)[1], cfg)[1][0], pt.BatchedMuon)


def test_lr_schedule_and_curriculum():
    assert pt.lr_at(1e-3, 0, 0.0, warmup_steps=10, min_lr_frac=0.1) == pytest.approx(1e-4)
    assert pt.lr_at(1e-3, 10, 0.0, warmup_steps=10, min_lr_frac=0.1) == pytest.approx(1e-3)
    assert pt.lr_at(1e-3, 50, 1.0, warmup_steps=10, min_lr_frac=0.1) == pytest.approx(1e-4)
    assert pt.lr_at(1e-3, 50, 0.5, warmup_steps=10, min_lr_frac=0.1) == pytest.approx(5.5e-4)  # cosine midpoint
    # warm-up, stable, decay: the peak until 80 % of the run, then the same cosine squeezed into the last 20 %
    wsd = dict(warmup_steps=10, min_lr_frac=0.1, decay_frac=0.2)
    assert pt.lr_at(1e-3, 50, 0.5, **wsd) == pt.lr_at(1e-3, 50, 0.8, **wsd) == pytest.approx(1e-3)
    assert pt.lr_at(1e-3, 50, 0.9, **wsd) == pytest.approx(5.5e-4)
    assert pt.lr_at(1e-3, 50, 1.0, **wsd) == pytest.approx(1e-4)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="decay_frac"):
            pt.PretrainConfig(decay_frac=bad)
    assert [pt.stage_index(pt.CURRICULUM, p) for p in (0.0, 0.2, 0.5, 0.99)] == [0, 1, 2, 3]


@pytest.mark.parametrize("mode", ["short_math", "short_efficient", "row_math"])
def test_short_sequence_modes_route_the_feature_attention_and_keep_the_forward(monkeypatch, mode):
    """The short-sequence modes hand the attention between a row's feature groups (a few tokens) to their kernels,
    leave the attention between a column's cells (the table's rows) to tabpfn's dispatch, and compute the same
    forward pass as tabpfn's own dispatch (on a CPU every kernel is exact up to float32 rounding)."""
    import tabpfn.architectures.shared.scaled_dot_product_attention as sdpa
    from torch.nn.attention import SDPBackend

    cfg = pt.recipe("v2.6-muon", nlayers=1, emsize=32, nhead=2, device="cpu")
    torch.manual_seed(0)
    model = pt.make_model(cfg)[1].eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(pt.SHORT_SEQUENCE + 40, 3, 7, generator=gen)  # more rows than SHORT_SEQUENCE, 7 features
    y = torch.randint(0, 3, (50, 3), generator=gen).float()
    try:
        pt.configure_sdpa("default")
        with torch.no_grad():
            reference = model(x, y)
        seen = []
        original = pt.forward._SDPA_DEFAULTS["torch_sdpa"]

        def spy(q, k, v, backends=None):
            seen.append((q.shape[1], k.shape[1], None if backends is None else tuple(backends)))
            return original(q, k, v, backends)

        monkeypatch.setitem(pt.forward._SDPA_DEFAULTS, "torch_sdpa", spy)
        pt.configure_sdpa(mode)
        with torch.no_grad():
            out = model(x, y)
    finally:
        pt.configure_sdpa("default")
    chosen = (SDPBackend.MATH,) if mode != "short_efficient" else (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
    short = [b for q, k, b in seen if q <= pt.SHORT_SEQUENCE and k <= pt.SHORT_SEQUENCE]
    long = [b for q, k, b in seen if q > pt.SHORT_SEQUENCE]
    assert short and long, seen
    assert all(b == chosen for b in short) and all(b is None for b in long)
    assert sdpa._SDPA_BACKENDS == pt.forward._SDPA_DEFAULTS["backends"]  # restored by "default"
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_configure_sdpa_drops_cudnn_in_the_short_modes_and_rejects_unknown_modes():
    import tabpfn.architectures.shared.scaled_dot_product_attention as sdpa
    from torch.nn.attention import SDPBackend

    try:
        for mode in ("short_math", "short_efficient", "no_cudnn"):
            pt.configure_sdpa(mode)
            assert SDPBackend.CUDNN_ATTENTION not in sdpa._SDPA_BACKENDS
            assert SDPBackend.FLASH_ATTENTION in sdpa._SDPA_BACKENDS
        with pytest.raises(ValueError, match="short_efficient"):
            pt.configure_sdpa("fastest")
        with pytest.raises(ValueError, match="sdpa"):
            pt.PretrainConfig(sdpa="fastest")
    finally:
        pt.configure_sdpa("default")
    assert SDPBackend.CUDNN_ATTENTION in sdpa._SDPA_BACKENDS


def test_model_to_device_moves_the_v26_column_embeddings_and_keeps_their_numbers():
    cfg = pt.recipe("v2.6-muon", nlayers=1, emsize=32, nhead=2, device="cpu")
    model = pt.make_model(cfg)[1]
    before = model.pre_generated_column_embeddings.clone()
    moved = pt.model_to_device(model, "meta")  # a device other than the CPU, without a GPU
    assert moved.pre_generated_column_embeddings.device.type == "meta"
    assert next(moved.parameters()).device.type == "meta"
    assert moved.pre_generated_column_embeddings.shape == before.shape
    assert "pre_generated_column_embeddings" not in moved.state_dict()  # no checkpoint holds them
    model = pt.model_to_device(pt.make_model(cfg)[1], "cpu")
    torch.testing.assert_close(model.pre_generated_column_embeddings, before, rtol=0, atol=0)


def test_the_loss_curve_logs_each_window_of_25_steps_with_its_mean_loss_and_accuracy(tmp_path):
    trainer = pt.Trainer(toy_config(), out_dir=tmp_path, log=lambda s: None)
    real_step = trainer._train_step

    def known_step(task, gen):  # train as usual, then report a loss of step/10 and k of 4 rows correct, k = step % 5
        real_step(task, gen)
        k = trainer.meta["step"] % 5
        return torch.tensor(trainer.meta["step"] / 10), torch.tensor(k), torch.tensor(4)

    trainer._train_step = known_step
    trainer.run(60)
    curve = trainer.meta["loss_curve"]
    assert [row[0] for row in curve] == [25, 50]
    for end, (_, _, _, loss, acc) in zip((25, 50), curve):
        steps = np.arange(end - 25, end)  # meta["step"] before each step's increment
        assert loss == pytest.approx(round(steps.mean() / 10, 4), abs=1e-4)
        assert acc == pytest.approx(round(np.mean((steps % 5) / 4), 4), abs=1e-4)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="architecture"):
        pt.PretrainConfig(architecture="v3")
    with pytest.raises(ValueError, match="v2 architecture only"):
        pt.PretrainConfig(architecture="v2.6", random_column_embeddings=True)
    with pytest.raises(ValueError, match="curriculum"):
        pt.PretrainConfig(curriculum=[dict(TOY_STAGES[1])])
    with pytest.raises(ValueError, match="in_order=False needs seeding='per_batch'"):
        pt.PretrainConfig(in_order=False)
    with pytest.raises(ValueError, match="small_context_frac"):
        pt.PretrainConfig(small_context_frac=1.5)
    with pytest.raises(ValueError, match="budget"):
        pt.Trainer(toy_config(), out_dir="/tmp/unused", log=lambda s: None).run(0)


def test_a_fresh_final_call_plans_its_budget_on_a_timed_start_evaluation(tmp_path):
    calls = []

    def evaluator(model, model_config, ckpt_path):
        calls.append(1)
        return {"val_loss": 1.0}

    cfg = toy_config(clock="time", eval_every=10.0)
    trainer = pt.Trainer(cfg, out_dir=tmp_path, evaluator=evaluator, log=lambda s: None)
    assert trainer.run(600.0, wall_limit_s=61.0, reserve_s=1.0, final_call=True, max_steps=2)
    start = trainer.meta["evals"][0]
    assert start["tag"] == "start" and start["step"] == 0 and 0 <= start["seconds"] < 5
    # 60 s of wall left: with the measured cost (< 8 s with its margin) at least 3 evaluations fit and the budget
    # exceeds the 60 - 1 x 20 - 5 = 35 s that the blind 20-second guess would leave
    assert 38.0 < trainer.budget <= 60.0
    assert (tmp_path / "state_meta.json").is_file() and len(calls) == 2  # the start and the end of the call


def test_filter_suffix_turns_on_tabicls_filter_of_unpredictable_tables():
    stage = dict(start=0.0, min_rows=64, max_rows=96, max_features=4, max_classes=3, batch=2, reuse=1)
    plain, filtered = pt.make_prior(stage, "mix_scm"), pt.make_prior(stage, "mix_scm+filter")
    assert plain.prior.prior_type == filtered.prior.prior_type == "mix_scm"
    assert not plain.prior.config.filter_unpredictable_datasets
    assert filtered.prior.config.filter_unpredictable_datasets
    graph = pt.make_prior(stage, "graph_scm+filter")
    assert graph.prior.config.filter_unpredictable_datasets and not pt.make_prior(stage, "graph_scm").prior.config.filter_unpredictable_datasets
    assert pt.PretrainConfig(prior="tree_scm+filter").prior == "tree_scm+filter"
    with pytest.raises(ValueError):
        pt.PretrainConfig(prior="toy+filter")


def test_quantile_classes_cut_like_pandas_qcut_and_the_quantile_prior_draws_many_classes():
    import pandas as pd

    gen = torch.Generator().manual_seed(0)
    for y in (torch.randn(997, generator=gen), torch.randint(0, 7, (500,), generator=gen).float()):  # ties too
        for k in (2, 3, 10):
            ours = pt.quantile_classes(y, k).numpy()
            ref = pd.qcut(y.numpy().astype(float), k, labels=False, duplicates="drop")
            assert np.array_equal(ours, np.unique(ref, return_inverse=True)[1])
    assert np.bincount(pt.quantile_classes(torch.arange(1000.0), 10).long().numpy()).tolist() == [100] * 10
    with pytest.raises(ValueError, match="at least 2"):
        pt.quantile_classes(torch.arange(10.0), 1)
    stage = dict(start=0.0, min_rows=120, max_rows=160, max_features=4, max_classes=10, batch=6, reuse=1)
    prior = pt.make_prior(stage, "graph_scm+quantiles")
    assert isinstance(prior, pt.QuantileClasses) and prior.prior.regression and prior.prior.prior_type == "graph_scm"
    X, y, d, seq_lens, train_sizes = pt.prior_batch(stage, "graph_scm+quantiles", (0, 0, 0), 0)
    assert y.shape == X.shape[:2] and torch.equal(y, y.round()) and 0 <= y.min() and y.max() <= 9
    counts = [len(torch.unique(row)) for row in y]
    assert max(counts) > 2 and min(counts) >= 1  # tables with many classes, from one batch
    again = pt.prior_batch(stage, "graph_scm+quantiles", (0, 0, 0), 0)
    assert torch.equal(again[1], y) and torch.equal(again[0], X)
    assert pt.PretrainConfig(prior="graph_scm|graph_scm+quantiles").prior == "graph_scm|graph_scm+quantiles"
    with pytest.raises(ValueError):
        pt.PretrainConfig(prior="graph_scm+filter+quantiles")


def test_mixed_prior_draws_whole_batches_from_each_part_reproducibly():
    stage = dict(start=0.0, min_rows=20, max_rows=30, max_features=3, max_classes=3, batch=2, reuse=1)
    common = dict(batch_size=2, max_classes=3, min_seq_len=20, max_seq_len=30)
    mixed = pt.MixedPrior([pt.ToyPrior(max_features=3, **common), pt.ToyPrior(max_features=5, **common)])
    widths = []
    for i in range(24):
        np.random.seed(i)
        torch.manual_seed(i)
        widths.append(mixed.get_batch()[0].shape[-1])
    assert set(widths) == {3, 5}  # both parts, each batch whole from one
    again = []
    for i in range(24):
        np.random.seed(i)
        torch.manual_seed(i)
        again.append(mixed.get_batch()[0].shape[-1])
    assert again == widths
    assert isinstance(pt.make_prior(stage, "toy|graph_scm"), pt.MixedPrior)
    a, b = pt.prior_batch(stage, "toy|graph_scm", (0, 0, 0), 3), pt.prior_batch(stage, "toy|graph_scm", (0, 0, 0), 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert pt.check_prior("graph_scm|tree_scm+filter") == "graph_scm|tree_scm+filter"
    for bad in ("graph_scm|graph_scm", "graph_scm|nope", "", "graph_scm|"):
        with pytest.raises(ValueError):
            pt.check_prior(bad)
    with pytest.raises(ValueError):
        pt.PretrainConfig(prior="graph_scm|nope")
    with pytest.raises(ValueError):
        pt.MixedPrior([pt.ToyPrior(max_features=3, **common)])


def _graph_scm_digest(env_seed):
    """Digest of graph_scm batches 0-1 under per-batch seed key (0, 0, 0), drawn in a fresh process."""
    import os
    import subprocess
    import sys

    code = ("import hashlib, warnings; warnings.simplefilter('ignore'); from ttt_helpers.tabpfn import pretrain as pt; "
            "stage = dict(start=0.0, min_rows=100, max_rows=140, max_features=8, max_classes=10, batch=4, reuse=1); "
            "print(hashlib.md5(b''.join(t.numpy().tobytes() for i in range(2) "
            "for t in pt.prior_batch(stage, 'graph_scm', (0, 0, 0), i)[:2])).hexdigest())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    if env_seed is not None:
        env["PYTHONHASHSEED"] = env_seed
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_graph_scm_tables_depend_on_the_seeds_alone_once_string_hashing_is_fixed():
    # tabicl's graph_scm iterates over a set of group names: with PYTHONHASHSEED fixed two processes agree ...
    digest = _graph_scm_digest("0")
    assert _graph_scm_digest("0") == digest
    # ... and another hash seed gives other tables from the same seeds (for seed 1 the set's order differs from seed
    # 0's; string hashing is SipHash keyed by the seed, the same on every 64-bit CPython of our versions)
    assert _graph_scm_digest("1") != digest


def test_fix_hash_seed_re_runs_the_script_with_a_fixed_hash_seed(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "child.py"
    script.write_text("import os, sys\nfrom ttt_helpers.tabpfn import pretrain as pt\n"
                      "print('before', os.environ.get('PYTHONHASHSEED'), flush=True)\npt.fix_hash_seed()\n"
                      "print('after', os.environ.get('PYTHONHASHSEED'), pt.hash_seed_fixed(), sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED", "PYTEST_CURRENT_TEST")}
    out = subprocess.run([sys.executable, str(script), "--x", "1"], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["before None", "before 0", "after 0 True ['--x', '1']"]


def test_fix_hash_seed_refuses_to_replace_a_test_process(monkeypatch):
    """Called inside a test (a script's main() did so once), it would re-run the whole pytest session with its
    output still captured: the suite ran about twice and its failures went unseen. It raises instead."""
    import os

    monkeypatch.setattr(pt.prior, "hash_seed_fixed", lambda: False)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("fix_hash_seed replaced the test process"))
    with pytest.raises(RuntimeError, match="__main__"):
        pt.fix_hash_seed()


def test_a_tabicl_prior_warns_when_string_hashing_is_randomised(monkeypatch):
    import warnings

    stage = dict(start=0.0, min_rows=64, max_rows=96, max_features=4, max_classes=3, batch=2, reuse=1)
    monkeypatch.setattr(pt.prior, "hash_seed_fixed", lambda: False)
    with pytest.warns(RuntimeWarning, match="PYTHONHASHSEED"):
        pt.make_prior(stage, "graph_scm")
    monkeypatch.setattr(pt.prior, "hash_seed_fixed", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pt.make_prior(stage, "graph_scm")
        pt.make_prior(stage, "toy")


def test_noisy_labels_keep_class_frequencies_and_weaken_the_features():
    """``+noisy``: about ``share`` of the tables get label noise at a rate up to ``max_rate``, by labels drawn from
    the same table, so a table's classes stay its own and their frequencies stay about the same; the clean tables
    and the features are untouched; the same seed gives the same batch."""
    common = dict(batch_size=400, max_features=3, max_classes=3, min_seq_len=200, max_seq_len=200)
    clean = pt.ToyPrior(**common)
    pt.prior._seed_all(3)
    X0, y0, *_ = clean.get_batch()
    pt.prior._seed_all(3)
    X1, y1, *_ = pt.NoisyLabels(pt.ToyPrior(**common), share=0.5, max_rate=0.5).get_batch()
    assert torch.equal(X0, X1)
    changed = (y0 != y1).float().mean(dim=1)
    noisy = changed > 0
    assert 0.4 < noisy.float().mean() < 0.6  # about half of the tables
    assert changed.max() < 0.5  # at most half the rows are redrawn, and some keep their label by chance
    for b in range(len(y0)):
        assert set(y1[b].tolist()) <= set(y0[b].tolist())
    freq0 = torch.stack([(y0 == c).float().mean(1) for c in range(3)], 1)
    freq1 = torch.stack([(y1 == c).float().mean(1) for c in range(3)], 1)
    # a redrawn label differs with probability 1 - sum_c p_c^2; the rate is U(0, 0.5), mean 0.25
    expected = 0.25 * (1 - (freq0[noisy] ** 2).sum(1)).mean()
    assert abs(changed[noisy].mean() - expected) < 0.2 * expected
    assert (freq1 - freq0).abs().mean() < 0.03
    pt.prior._seed_all(3)
    again = pt.NoisyLabels(pt.ToyPrior(**common), share=0.5, max_rate=0.5).get_batch()[1]
    assert torch.equal(again, y1)
    with pytest.raises(ValueError, match="share"):
        pt.NoisyLabels(clean, share=1.5)
    stage = dict(start=0.0, min_rows=120, max_rows=160, max_features=4, max_classes=10, batch=4, reuse=1)
    prior = pt.make_prior(stage, "graph_scm+noisy")
    assert isinstance(prior, pt.NoisyLabels) and prior.prior.prior_type == "graph_scm"
    assert pt.PretrainConfig(prior="graph_scm|graph_scm+noisy").prior == "graph_scm|graph_scm+noisy"
    with pytest.raises(ValueError):
        pt.PretrainConfig(prior="graph_scm+filter+noisy")


def test_key_json_reads_recipe_overrides():
    assert pt.key_json(["emsize=16", 'prior="toy"', 'curriculum=[{"batch": 2}]']) == {
        "emsize": 16, "prior": "toy", "curriculum": [{"batch": 2}]}
    assert pt.key_json([]) == {}
    with pytest.raises(ValueError):
        pt.key_json(["emsize"])


def test_out_init_std_draws_the_zero_initialised_block_weights():
    """tabpfn initialises each attention's output projection and each MLP's second layer to zero; out_init_std
    draws them from N(0, std^2) with a CPU generator of the seed, and leaves every other weight as it was."""
    from ttt_helpers.tabpfn.pretrain.state import make_model

    small = dict(emsize=48, nlayers=2, nhead=3, num_thinking_rows=2)
    _, zero = make_model(pt.recipe("v2.6-muon", **small))
    _, drawn = make_model(pt.recipe("v2.6-muon", out_init_std=0.05, **small))
    _, again = make_model(pt.recipe("v2.6-muon", out_init_std=0.05, **small))
    zeros = {n for n, p in zero.named_parameters() if n.startswith("blocks.") and p.ndim == 2 and not p.any()}
    assert len(zeros) == 2 * 3  # per block: two attention output projections and the MLP's second layer
    assert all(n.endswith(("out_projection.weight", "mlp.2.weight")) for n in zeros)
    d, z, a = dict(drawn.named_parameters()), dict(zero.named_parameters()), dict(again.named_parameters())
    for n in z:
        if n in zeros:
            assert d[n].any() and abs(float(d[n].std()) - 0.05) < 0.01 and torch.equal(d[n], a[n])
        else:
            assert torch.equal(d[n], z[n]), n
    with pytest.raises(ValueError, match="out_init_std"):
        pt.recipe("v2.6-muon", out_init_std=-0.1)


def test_a_curriculum_stage_may_name_its_own_prior(tmp_path, monkeypatch):
    from ttt_helpers.tabpfn.pretrain import trainer as trainer_module

    stages = [dict(TOY_STAGES[0], prior="real"), dict(TOY_STAGES[1])]
    cfg = toy_config(curriculum=stages)
    assert [pt.stage_prior(cfg, s) for s in cfg.curriculum] == ["real", "toy"]
    assert pt.run_priors(cfg) == "real then toy" and pt.run_priors(toy_config()) == "toy"  # the records' name
    with pytest.raises(ValueError, match="prior must be one of"):
        toy_config(curriculum=[dict(TOY_STAGES[0], prior="nonsense")])
    with pytest.raises(ValueError, match="optionally 'prior'"):
        toy_config(curriculum=[dict(TOY_STAGES[0], priors="toy")])
    seen = []

    def fake_stream(stage, prior_type, **kw):  # the toy prior's batches, whatever the stage names
        seen.append(prior_type)
        return pt.prior_stream(stage, "toy", **kw)

    monkeypatch.setattr(trainer_module, "prior_stream", fake_stream)
    trainer = pt.Trainer(cfg, out_dir=tmp_path, log=lambda s: None)
    assert trainer.run(9)  # stage 1 from step 5
    assert seen == ["real", "toy"]


def test_the_validation_tasks_come_from_the_last_stage_s_own_prior(monkeypatch):
    seen = []

    def fake_make_prior(stage, prior_type, device="cpu"):
        seen.append(prior_type)
        return pt.make_prior(stage, "toy", device)

    monkeypatch.setattr(pe, "make_prior", fake_make_prior)
    cfg = toy_config(curriculum=[dict(TOY_STAGES[0]), dict(TOY_STAGES[1], prior="real")], val_tasks=4)
    assert len(pe.make_val_set(cfg, "cpu")) >= 1 and seen == ["real"]
    seen.clear()
    pe.make_val_set(toy_config(val_tasks=4), "cpu")
    assert seen == ["toy"]


def test_ema_is_what_evaluation_and_export_read_and_it_resumes(tmp_path):
    """cfg.ema: training is unchanged, the moving average follows the lerp rule step by step, evaluation, selection
    and export read it (the trained weights are put back after), and a stopped run resumes it exactly."""
    kw = dict(architecture="v2.6", optimizer="muon", num_thinking_rows=4, min_reuse=2)
    budget = 6
    plain = pt.Trainer(toy_config(**kw), out_dir=tmp_path / "plain", log=lambda s: None)
    plain.run(budget)
    whole = pt.Trainer(toy_config(ema=0.9, **kw), out_dir=tmp_path / "whole", log=lambda s: None)
    ema = [p.detach().clone() for p in whole.model.parameters()]  # step 0: the initial weights

    def follow(trainer, task):  # the rule, recomputed in float64 after each step
        t = trainer.meta["step"] - 1
        d = min(0.9, (1 + t) / (10 + t))
        for e, p in zip(ema, trainer.model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1 - d)

    whole.step_hook = follow
    whole.run(budget)
    a, b = weights(plain.model), weights(whole.model)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same training
    assert all(torch.allclose(e, m, atol=1e-6) for e, m in zip(ema, whole.ema))
    assert any(not torch.allclose(e, p) for e, p in zip(whole.ema, whole.model.parameters()))
    calls = []

    def evaluator(model, config, ckpt):
        calls.append(weights(model))
        return {"dev_acc": 0.5 + 0.1 * (len(calls) - 1)}

    whole.evaluator = evaluator
    ev = whole.evaluate("check")
    assert ev["dev_acc"] == 0.5 and ev["trained"] == {"dev_acc": 0.6}  # the average, then the trained weights
    assert all(torch.equal(calls[1][k], b[k]) for k in b)
    names = [n for n, _ in whole.model.named_parameters()]
    assert all(torch.equal(calls[0][n], e) for n, e in zip(names, whole.ema))  # evaluated: the average
    assert all(torch.equal(whole.best["state_dict"][n], e) for n, e in zip(names, whole.ema))
    assert all(torch.equal(v, b[k]) for k, v in weights(whole.model).items())  # trained weights put back
    chosen, record = whole.select(lambda sd: 0.0)
    assert record["chosen"] == "last" and all(torch.equal(chosen[n], e) for n, e in zip(names, whole.ema))
    ckpt = whole.write_checkpoint(tmp_path / "ema.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(saved[n], e) for n, e in zip(names, whole.ema))

    first = pt.Trainer(toy_config(ema=0.9, **kw), out_dir=tmp_path / "part", log=lambda s: None)
    first.run(budget, max_steps=3)
    first.save()
    assert (tmp_path / "part" / pt.EMA_FILE).exists()
    second = pt.Trainer(toy_config(ema=0.9, **kw), out_dir=tmp_path / "part", resume=tmp_path / "part",
                        log=lambda s: None)
    second.run(budget)
    assert all(torch.equal(x, y) for x, y in zip(second.ema, whole.ema))
    with pytest.raises(ValueError, match="ema"):
        toy_config(ema=1.0)


def test_mimetic_qk_makes_each_query_lean_towards_the_keys_it_meets():
    """qk_mimetic: between features query head h mixes in key head h; between rows (multi-query attention for the
    test rows) every query head and every key head but the first mixes in key head 0; the rest is untouched, and
    a cell then scores itself above the others."""
    import math

    from tabpfn.architectures import tabpfn_v2_6 as v26

    from ttt_helpers.tabpfn.pretrain.state import make_model

    small = dict(emsize=48, nlayers=2, nhead=3, num_thinking_rows=2)
    _, plain = make_model(pt.recipe("v2.6-muon", **small))
    _, mim = make_model(pt.recipe("v2.6-muon", qk_mimetic=0.6, **small))
    _, rows = make_model(pt.recipe("v2.6-muon", qk_mimetic=0.6, qk_mimetic_on="rows", **small))
    a, b = 0.6, 0.8
    p, m, r = dict(plain.named_parameters()), dict(mim.named_parameters()), dict(rows.named_parameters())
    changed = set()
    for block in range(2):
        f = f"blocks.{block}.per_sample_attention_between_features."
        c = f"blocks.{block}.per_column_attention_between_cells."
        assert torch.allclose(m[f + "q_projection.weight"],
                              a * p[f + "k_projection.weight"] + b * p[f + "q_projection.weight"])
        d = 16  # head_dim = emsize / nhead
        k0 = p[c + "k_projection.weight"][:d]
        for h in range(3):
            rows_h = slice(h * d, (h + 1) * d)
            assert torch.allclose(m[c + "q_projection.weight"][rows_h],
                                  a * k0 + b * p[c + "q_projection.weight"][rows_h])
            want_k = k0 if h == 0 else a * k0 + b * p[c + "k_projection.weight"][rows_h]
            assert torch.allclose(m[c + "k_projection.weight"][rows_h], want_k)
        changed |= {f + "q_projection.weight", c + "q_projection.weight", c + "k_projection.weight"}
        assert torch.equal(r[f + "q_projection.weight"], p[f + "q_projection.weight"])  # "rows": features untouched
        assert torch.equal(r[c + "q_projection.weight"], m[c + "q_projection.weight"])
    assert all(torch.equal(p[n], m[n]) for n in p if n not in changed)
    # a cell now scores itself (the diagonal) well above other cells, for a test row's query head 2 on key head 0
    att = mim.blocks[0].per_column_attention_between_cells
    x = torch.randn(40, 48, generator=torch.Generator().manual_seed(0))
    q, k = att.q_projection(x)[:, 32:48], att.k_projection(x)[:, :16]
    s = (q @ k.T / math.sqrt(16)).detach()
    assert float(s.diag().mean()) > float(s.std()) * 2
    att0 = plain.blocks[0].per_column_attention_between_cells
    s0 = (att0.q_projection(x)[:, 32:48] @ att0.k_projection(x)[:, :16].T / 4).detach()
    assert abs(float(s0.diag().mean())) < float(s0.std())
    assert isinstance(att, v26.AlongColumnAttention)
    with pytest.raises(ValueError, match="qk_mimetic"):
        pt.recipe("v2.6-muon", qk_mimetic=1.5)
    with pytest.raises(ValueError, match="v2.6"):
        pt.recipe("v1", qk_mimetic=0.5)
    with pytest.raises(ValueError):
        pt.recipe("v2.6-muon", qk_mimetic=0.5, qk_mimetic_on="cols")


def test_a_resumed_call_keeps_the_runs_configuration(tmp_path):
    kw = dict(architecture="v2.6", optimizer="muon", num_thinking_rows=4)
    first = pt.Trainer(toy_config(**kw), out_dir=tmp_path, log=lambda s: None)
    assert not first.run(9, max_steps=3)
    first.save()
    assert first.meta["config"] == pt.resume_config(toy_config(**kw)) and "workers" not in first.meta["config"]
    assert first.meta["calls"][0]["machine"]["cpu_model"] == cpu_model()  # the host of each call is recorded
    with pytest.raises(ValueError, match=r"'lr': \(0\.001, 0\.002\)"):  # another schedule: refused
        pt.Trainer(toy_config(lr=2e-3, **kw), out_dir=tmp_path / "b", resume=tmp_path, log=lambda s: None)
    # what may change between calls: the machine, the workers, the evaluation's rhythm, the attention kernel
    same = pt.Trainer(toy_config(eval_every=5, sdpa="no_cudnn", **kw), out_dir=tmp_path / "c", resume=tmp_path,
                      log=lambda s: None)
    assert same.meta["step"] == 3
    with pytest.raises(ValueError, match="already spent"):  # a budget forgotten on the command line: refused
        same.run(3)
    assert same.run(9) and same.meta["step"] == 9
    # a state written before the configuration was recorded: resumed, and this call's configuration recorded
    meta_path = tmp_path / "state_meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]
    meta_path.write_text(json.dumps(meta))
    notes = []
    old = pt.Trainer(toy_config(**kw), out_dir=tmp_path / "d", resume=tmp_path, log=notes.append)
    assert any("records no configuration" in n for n in notes) and old.meta["config"] == first.meta["config"]
    assert pt.resume_mismatch(first.meta["config"], toy_config(**kw)) == {}


def test_the_shipped_long70_state_resumes_under_its_own_command(tmp_path):
    """The state shipped between device sessions (data/models/tabpfn_long70_state) resumes, on the CPU, under the
    configuration its calls' command builds today; and that configuration is still the 6-layer run's it warm-starts
    from (recorded by the code of that day) but for the learning rates: a change to the recipe in between fails here,
    not on the GPU."""
    from script_modules import load_script

    from ttt_helpers.provenance import models_dir
    from ttt_helpers.tabpfn import pretrain_eval as pe

    script = load_script("pretrain_tabpfn")
    folder = models_dir() / "tabpfn_long70_state"
    rec = pe.state_record(folder, "long70")
    words = json.loads((folder / "state_meta.json").read_text())["calls"][-1]["command"].split()
    args = script.parse_args(words[words.index("scripts/pretrain_tabpfn.py") + 1:])
    cfg = dataclasses.replace(script.config_from_args(args), device="cpu", workers=0)
    six_long = json.loads((models_dir() / "tabpfn_six_long.json").read_text())["pretrain_config"]
    default = pt.resume_config(pt.PretrainConfig())  # fields added since that record: at their defaults (off)
    differs = {k for k, v in pt.resume_config(cfg).items() if six_long.get(k, default[k]) != v}
    assert differs == {"lr", "muon_lr"} and (cfg.lr, cfg.muon_lr) == (six_long["lr"] / 2, six_long["muon_lr"] / 2)
    trainer = pt.Trainer(cfg, out_dir=tmp_path, resume=folder, log=lambda s: None)
    assert trainer.meta["step"] == rec["progress"]["steps"]
    saved = torch.load(folder / "state_model.pt", map_location="cpu")
    assert all(torch.equal(v, saved[k]) for k, v in trainer.model.state_dict().items())
