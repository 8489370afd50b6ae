#!/usr/bin/env python
"""Pretrain our fallback TabPFN-v2-architecture classifier on tabicl's synthetic SCM prior.

The model is the ``tabpfn`` package's own ``tabpfn.architectures.tabpfn_v2`` (``get_architecture``),
trained the way TabPFN is: each training example is a whole synthetic classification task, the first
``n_train`` rows (with labels) are the context and the model predicts the labels of the remaining rows
in one forward pass, ``model(x[R, B, C], y_train[n_train, B]) -> logits[R - n_train, B, max_classes]``;
the loss is the cross-entropy on those test rows. Tasks come from ``tabicl.prior.PriorDataset``
(``prior_type="mix_scm"``: MLP- and tree-based structural causal models), generated on the CPU by
``torch.utils.data.DataLoader`` workers while the GPU trains.

A curriculum grows the tasks (rows, features, classes) with training progress; the progress, the
learning-rate schedule (linear warm-up, then cosine) and the stopping point are measured in *training
seconds* (the device time is the budget), so the step count is an outcome, recorded in the provenance.
Every ``--eval-every-min`` minutes the script evaluates accuracy on a fixed held-out set of prior tasks
and on real tables bundled with scikit-learn through ``tabpfn.TabPFNClassifier(model_path=...)``, and
writes a resumable training state. ``--resume`` continues from such a state in a later call.

When the time budget is spent it exports ``tabpfn_fallback.ckpt`` (``ttt_helpers.tabpfn.checkpoints.
build_checkpoint``) and ``tabpfn_fallback.json`` (``ttt_helpers.provenance.write_provenance``: command,
commit, machine, date, seeds, steps, loss curve, accuracies, sha256) into ``--export-dir``
(default ``data/models``).

Examples
--------
CPU smoke test (a minute)::

    python scripts/pretrain_tabpfn.py --tiny --device cpu --out-dir /tmp/tp --export-dir /tmp/tp

GPU (one H100, through the device tool; what produced the shipped model: six calls, each resuming the
training state the previous one wrote, 35 training minutes in all; the exact commands, commits and dates
are in ``data/models/tabpfn_fallback.json``)::

    python scripts/pretrain_tabpfn.py --device cuda --sdpa no_gqa --no-autocast --time-budget-min 27 \
        --wall-limit-min 8.9 --eval-every-min 3 --workers 15 --out-dir $OUT/state --no-progress
    # the graph_scm prior could not keep up with the GPU (data wait 356 s of 436 s), hence --min-reuse 4:
    python scripts/pretrain_tabpfn.py ... --resume STATE --min-reuse 4 --time-budget-min 27 --wall-limit-min 9.0
    python scripts/pretrain_tabpfn.py ... --resume STATE --min-reuse 4 --final-call --wall-limit-min 9.1 \
        --export-dir $OUT
    # that model scored well on the GPU and badly on the CPU: tabpfn draws its random column embeddings
    # with a generator on the model's device, so a model trained with one fixed (CUDA) set sees another set on
    # the CPU. A last call continued from the same state with fresh embeddings at every step:
    python scripts/pretrain_tabpfn.py ... --resume STATE --min-reuse 4 --random-column-embeddings --final-call \
        --wall-limit-min 6.0 --eval-every-min 2 --export-dir $OUT
    # and two more calls like it (--wall-limit-min 6.4, then 6.2), each a short warm restart of the schedule

Without ``--final-call``, ``--time-budget-min`` sets the total training minutes over several calls.
Evaluation of a finished checkpoint on the book's offline benchmark (no training; CPU is fine)::

    python scripts/pretrain_tabpfn.py --benchmark data/models/tabpfn_fallback.ckpt --device cpu
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ttt_helpers.tabpfn import checkpoints as tm
from ttt_helpers.provenance import models_dir, write_provenance

# ----------------------------------------------------------------------------------------------------
# Curriculum: from this fraction of the training time on, tasks are drawn with these sizes.
# rows: (min, max) sequence length (context + test rows); the context is a random 30–90 % of it.
# ----------------------------------------------------------------------------------------------------
CURRICULUM = [
    # start, min_rows, max_rows, max_features, max_classes, batch, reuse
    dict(start=0.00, min_rows=64, max_rows=256, max_features=8, max_classes=10, batch=128, reuse=1),
    dict(start=0.10, min_rows=128, max_rows=640, max_features=16, max_classes=10, batch=96, reuse=1),
    dict(start=0.35, min_rows=256, max_rows=1100, max_features=24, max_classes=10, batch=48, reuse=2),
    # (float32 training: 48 tasks x 1,400 rows x 40 features ran out of the H100's 80 GB)
    dict(start=0.65, min_rows=512, max_rows=1350, max_features=32, max_classes=10, batch=32, reuse=2),
]
TINY_CURRICULUM = [
    dict(start=0.00, min_rows=32, max_rows=96, max_features=4, max_classes=2, batch=8, reuse=1),
    dict(start=0.50, min_rows=64, max_rows=160, max_features=8, max_classes=10, batch=8, reuse=2),
]
REAL_TABLES = ("breast_cancer", "wine", "iris", "digits")
STATE_FILES = ("state_model.pt", "state_opt_avg.pt", "state_opt_avg_sq.pt", "state_meta.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--emsize", type=int, default=128)
    p.add_argument("--nlayers", type=int, default=6)
    p.add_argument("--nhead", type=int, default=4)
    p.add_argument("--features-per-group", type=int, default=2)
    p.add_argument("--max-num-classes", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1, help="cosine floor as a fraction of --lr")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--time-budget-min", type=float, default=15.0, help="total training minutes over all calls")
    p.add_argument("--wall-limit-min", type=float, default=9.0, help="this call stops (saving) before this")
    p.add_argument("--max-steps", type=int, default=0, help="stop this call after so many steps (0: no limit)")
    p.add_argument(
        "--final-call",
        action="store_true",
        help="end training in this call: the time budget is reset to what this call's wall limit leaves",
    )
    p.add_argument("--eval-every-min", type=float, default=2.0)
    p.add_argument(
        "--min-reuse",
        type=int,
        default=1,
        help="train on every prior batch at least this many times (each time with a fresh context/test split "
        "and label permutation); raises the stages' 'reuse' when the CPU prior cannot keep up with the GPU",
    )
    p.add_argument("--workers", type=int, default=14)
    p.add_argument(
        "--prior",
        default="graph_scm",
        choices=["graph_scm", "mix_scm", "mlp_scm", "tree_scm"],
        help="tabicl prior. Measured on the CPU (16 tasks of 400-500 rows, <= 10 features, 3-fold random forest "
        "accuracy minus the majority-class rate): graph_scm +0.15, mix_scm +0.00 -- most mix_scm tasks carry no "
        "learnable signal, and a model trained on it (the first fallback) learned to predict class frequencies",
    )
    p.add_argument("--val-tasks", type=int, default=64, help="held-out prior tasks (last curriculum stage)")
    p.add_argument(
        "--eval-estimators",
        type=lambda v: v if v == "auto" else int(v),
        default=4,
        help="TabPFNClassifier n_estimators in evals and --benchmark ('auto': the package's default, 8)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out-dir", default="runs/tabpfn_pretrain", help="training state, checkpoints, log")
    p.add_argument("--resume", default=None, help="folder holding a training state written by this script")
    p.add_argument("--export-dir", default=None, help="where the final .ckpt/.json go (default data/models)")
    p.add_argument("--tiny", action="store_true", help="tiny model and tasks for a CPU smoke test")
    p.add_argument(
        "--benchmark",
        default=None,
        metavar="CKPT",
        help="no training: evaluate CKPT on the book's offline real-table benchmark (ttt_helpers.tabpfn.benchmark) "
        "with --bench-context context samples against LogisticRegression and HistGradientBoosting, and add "
        "the result to the provenance JSON beside CKPT",
    )
    p.add_argument("--bench-context", type=int, default=1000)
    p.add_argument("--bench-max-test", type=int, default=500, help="at most this many test rows per table")
    p.add_argument("--debug", action="store_true", help="train --max-steps steps only: no evaluation, no files")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast on the GPU (default: float32 with TF32 matmuls). On the H100 (torch 2.11, tabpfn "
        "9.2.0) bf16 training hit 'CUDA error: an illegal memory access' at the first step with every attention "
        "mode tried, while float32 trained",
    )
    p.add_argument("--no-autocast", action="store_true", help="float32 (the default; overrides --bf16)")
    p.add_argument(
        "--sdpa",
        default="no_gqa",
        choices=["default", "no_gqa", "no_flash", "row_math"],
        help="how tabpfn's attention dispatch runs in training: 'no_gqa' expands the single key/value head "
        "of the test rows instead of torch's enable_gqa, 'no_flash' keeps the GQA call but drops the "
        "FlashAttention kernel, "
        "'row_math' is 'no_gqa' plus torch's reference (math) kernel for the short between-feature attention",
    )
    p.add_argument(
        "--random-column-embeddings",
        action="store_true",
        help="draw tabpfn_v2's random column embeddings from a new seed at every training step. tabpfn draws "
        "them at inference from the fixed config seed with a generator on the model's device, and CUDA and CPU "
        "generators give different numbers: a model trained with one fixed set (on the GPU) lost 0.41 accuracy "
        "on digits when run on the CPU. Trained with fresh draws, it must not depend on any particular set",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.tiny:
        args.emsize, args.nlayers, args.nhead = 32, 2, 2
        args.val_tasks = min(args.val_tasks, 8)
        args.eval_estimators = 1
    return args


def curriculum(args):
    return TINY_CURRICULUM if args.tiny else CURRICULUM


def stage_index(stages, progress: float) -> int:
    idx = 0
    for i, s in enumerate(stages):
        if progress >= s["start"]:
            idx = i
    return idx


def lr_at(args, step: int, progress: float) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    floor = args.lr * args.min_lr_frac
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------------------------------
# Prior data
# ----------------------------------------------------------------------------------------------------
def make_prior(stage: dict, prior_type: str):
    from tabicl.prior import PriorDataset
    from tabicl.prior.graph_lib._config import PriorConfig

    return PriorDataset(
        batch_size=stage["batch"],
        min_features=1,
        max_features=stage["max_features"],
        max_classes=stage["max_classes"],
        min_seq_len=stage["min_rows"],
        max_seq_len=stage["max_rows"],
        min_train_size=0.3,
        max_train_size=0.9,
        prior_type=prior_type,
        config=PriorConfig() if prior_type == "graph_scm" else None,  # tabicl's defaults
        n_jobs=1,  # n_jobs > 1 cannot be pickled into DataLoader workers
        device="cpu",
    )


class _WorkerSeeder:
    def __init__(self, base: int):
        self.base = base

    def __call__(self, worker_id: int):
        seed = (self.base * 1009 + worker_id) % (2**31 - 1)
        np.random.seed(seed)
        random.seed(seed)
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        warnings.filterwarnings("ignore")


def make_loader(stage: dict, args, seed_base: int):
    loader = torch.utils.data.DataLoader(
        make_prior(stage, args.prior),
        batch_size=None,
        num_workers=args.workers,
        worker_init_fn=_WorkerSeeder(seed_base),
        prefetch_factor=4 if args.workers > 0 else None,
        pin_memory=False,
        persistent_workers=False,
    )
    if args.workers == 0:
        _WorkerSeeder(seed_base)(0)
    return iter(loader)


def to_task(batch, device, gen: torch.Generator, reshuffle: bool, max_classes: int):
    """(X[B,T,H], y[B,T], d, seq_lens, train_sizes) -> x[T,B,C], y_train[N,B], target[T-N,B], n_cls[B].

    The columns are trimmed to the widest task of the batch (tabicl pads with zero columns, which
    ``tabpfn`` drops as constant anyway). Labels are randomly permuted per task; ``target`` is the
    label's rank among the task's training labels (how ``tabpfn_v2`` densifies labels internally),
    or -100 (ignored) for a test label absent from the context.
    """
    X, y, d, _, train_sizes = batch
    X = X[:, :, : max(1, int(d.max()))]
    B, T, _ = X.shape
    n_train = int(train_sizes[0])
    X = X.float().contiguous().to(device)
    y = y.long().contiguous().to(device)
    if reshuffle:  # a fresh context/test split of the same tasks
        perm = torch.argsort(torch.rand(B, T, generator=gen, device="cpu"), dim=1).to(device)
        X = torch.gather(X, 1, perm[:, :, None].expand_as(X))
        y = torch.gather(y, 1, perm)
    # random label permutation per task (TabPFN's inference shuffles classes too)
    lab_perm = torch.argsort(torch.rand(B, max_classes, generator=gen, device="cpu"), dim=1).to(device)
    y = torch.gather(lab_perm, 1, y.clamp(0, max_classes - 1))
    y_tr, y_te = y[:, :n_train], y[:, n_train:]
    present = F.one_hot(y_tr, max_classes).amax(1).bool()  # [B, K]
    rank = present.long().cumsum(1) - 1  # [B, K]
    target = torch.gather(rank, 1, y_te)
    ok = torch.gather(present, 1, y_te)
    target = torch.where(ok, target, torch.full_like(target, -100))
    n_cls = present.sum(1)  # [B]
    x = X.transpose(0, 1).contiguous()  # [T, B, C]
    return x, y_tr.transpose(0, 1).float().contiguous(), target.transpose(0, 1).contiguous(), n_cls


def masked_logits(logits: torch.Tensor, n_cls: torch.Tensor) -> torch.Tensor:
    """Logits [T, B, K] with the classes beyond each task's count masked (as TabPFN slices at inference)."""
    K = logits.shape[-1]
    mask = torch.arange(K, device=logits.device)[None, :] >= n_cls[:, None]  # [B, K]
    return logits.float().masked_fill(mask[None], float("-inf"))


def configure_sdpa(mode: str) -> None:
    """Choose torch SDPA kernels inside tabpfn's own attention dispatch (no re-implementation)."""
    from torch.nn.attention import SDPBackend

    import tabpfn.architectures.shared.scaled_dot_product_attention as sdpa

    if mode == "no_gqa":
        sdpa.gqa_is_supported = lambda: False
    elif mode == "no_flash":
        sdpa._SDPA_BACKENDS[:] = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
    elif mode == "row_math":
        sdpa.gqa_is_supported = lambda: False
        original = sdpa._torch_sdpa

        def short_sequences_on_math(q_BSHD, k_BSJD, v_BSJD, _backends_override=None):
            # (batch, seq, heads, dim): the attention between the few feature groups of a row
            if _backends_override is None and q_BSHD.shape[1] <= 64 and k_BSJD.shape[1] <= 64:
                _backends_override = [SDPBackend.MATH]
            return original(q_BSHD, k_BSJD, v_BSJD, _backends_override)

        sdpa._torch_sdpa = short_sequences_on_math


def forward_loss(model, task, autocast: bool):
    x, y_tr, target, n_cls = task
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits = model(x, y_tr)
    logits = masked_logits(logits, n_cls)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    valid = target >= 0
    correct = ((logits.argmax(-1) == target) & valid).sum()
    return loss, correct, valid.sum()


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------
def make_val_set(args, device):
    """Fixed held-out prior tasks of the last curriculum stage (seeded, generated in this process)."""
    stage = dict(curriculum(args)[-1])
    stage["batch"] = min(16, args.val_tasks)
    state = (np.random.get_state(), random.getstate(), torch.get_rng_state())
    np.random.seed(10_000 + args.seed)
    random.seed(10_000 + args.seed)
    torch.manual_seed(10_000 + args.seed)
    prior = make_prior(stage, args.prior)
    gen = torch.Generator().manual_seed(10_000 + args.seed)
    tasks = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(max(1, args.val_tasks // stage["batch"])):
            tasks.append(to_task(prior.get_batch(), device, gen, False, args.max_num_classes))
    np.random.set_state(state[0])
    random.setstate(state[1])
    torch.set_rng_state(state[2])
    return tasks


@torch.no_grad()
def eval_prior(model, val_tasks, autocast):
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for task in val_tasks:
        loss, c, n = forward_loss(model, task, autocast)
        loss_sum += float(loss) * int(n)
        correct += int(c)
        total += int(n)
    model.train()
    return {"val_loss": loss_sum / max(total, 1), "val_acc": correct / max(total, 1)}


def real_tables(seed: int):
    """Real tables bundled with scikit-learn, each split into context (train) and test, stratified.

    ``digits`` (1,797 rows) uses 1,000 context samples, the size of the book's TTT benchmark; the small
    tables use half their rows as context.
    """
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    out = {}
    for name in REAL_TABLES:
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        n_train = 1000 if len(y) > 1400 else len(y) // 2
        Xtr, Xte, ytr, yte = train_test_split(X, y, train_size=n_train, stratify=y, random_state=seed)
        out[name] = (Xtr.astype(np.float32), Xte.astype(np.float32), ytr, yte)
    return out


def baseline_accuracies(tables, seed: int):
    from ttt_helpers.tabpfn.benchmark import baseline_accuracies as baselines

    return {name: baselines(Xtr, ytr, Xte, yte, seed=seed) for name, (Xtr, Xte, ytr, yte) in tables.items()}


def eval_real(ckpt_path, tables, device, n_estimators, seed):
    from tabpfn import TabPFNClassifier

    res = {}
    for name, (Xtr, Xte, ytr, yte) in tables.items():
        clf = TabPFNClassifier(
            model_path=str(ckpt_path),
            device=device,
            n_estimators=n_estimators,
            random_state=seed,
            ignore_pretraining_limits=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(Xtr, ytr)
            proba = clf.predict_proba(Xte)
        if not np.allclose(proba.sum(1), 1.0, atol=1e-3):
            raise RuntimeError(f"{name}: probabilities do not sum to one")
        res[name] = float((clf.classes_[proba.argmax(1)] == yte).mean())
    return res


def run_benchmark(args, command):
    """Accuracy on the offline benchmark at ``--bench-context`` context samples; written into the provenance."""
    import datetime as dt

    from tabpfn import TabPFNClassifier

    from ttt_helpers.tabpfn import benchmark as td
    from ttt_helpers.provenance import machine_description, read_provenance, verify_sha256

    ckpt = Path(args.benchmark)
    prov_path = ckpt.with_suffix(".json")
    verify_sha256(ckpt, prov_path)
    rows, t0 = [], time.time()
    from tqdm import tqdm

    splits = td.quality_splits(n_context=args.bench_context, max_test=args.bench_max_test, seed=args.seed)
    for name, Xc, yc, Xt, yt, meta in tqdm(splits, total=len(td.list_datasets()), disable=args.no_progress,
                                           desc="benchmark"):
        res = {"name": name, "n_context": len(yc), "n_test": len(yt), "classes": int(meta["classes"]),
               "features": int(Xc.shape[1])}
        clf = TabPFNClassifier(model_path=str(ckpt), device=args.device, n_estimators=args.eval_estimators,
                               random_state=args.seed, ignore_pretraining_limits=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res["tabpfn_fallback"] = float((clf.fit(Xc, yc).predict(Xt) == yt).mean())
        res.update(td.baseline_accuracies(Xc, yc, Xt, yt, seed=args.seed))
        rows.append(res)
        print(json.dumps(res), flush=True)
    means = {k: round(float(np.mean([r[k] for r in rows])), 4)
             for k in ("tabpfn_fallback", "logistic_regression", "hist_gradient_boosting", "majority")}
    summary = {
        "command": command,
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "seed": args.seed,
        "n_context": args.bench_context,
        "max_test_rows": args.bench_max_test,
        "tabpfn_n_estimators": args.eval_estimators,
        "baselines": "LogisticRegression (mean imputation + standardisation, max_iter 3000); "
        "HistGradientBoostingClassifier (defaults)",
        "n_tables": len(rows),
        "mean_accuracy": means,
        "gap_to_logistic_regression": round(means["tabpfn_fallback"] - means["logistic_regression"], 4),
        "gap_to_hist_gradient_boosting": round(means["tabpfn_fallback"] - means["hist_gradient_boosting"], 4),
        "wins_vs_logistic_regression": int(sum(r["tabpfn_fallback"] > r["logistic_regression"] for r in rows)),
        "wins_vs_hist_gradient_boosting": int(sum(r["tabpfn_fallback"] > r["hist_gradient_boosting"] for r in rows)),
        "seconds": round(time.time() - t0, 1),
        "per_table": rows,
    }
    record = read_provenance(prov_path)
    key = f"n_estimators={args.eval_estimators}"  # one entry per ensemble size; a re-run replaces its own
    record.setdefault("benchmark_offline_tables", {})[key] = summary
    record.setdefault("results", {}).setdefault("benchmark", {})[key] = {
        "mean_accuracy": means,
        "gap_to_logistic_regression": summary["gap_to_logistic_regression"],
        "gap_to_hist_gradient_boosting": summary["gap_to_hist_gradient_boosting"],
    }
    prov_path.write_text(json.dumps(record, indent=2) + "\n")
    print("BENCHMARK", json.dumps({k: v for k, v in summary.items() if k != "per_table"}))
    return 0


# ----------------------------------------------------------------------------------------------------
# State
# ----------------------------------------------------------------------------------------------------
def save_state(out_dir: Path, model, opt, meta: dict):
    """Training state in files of at most a few parameter-sizes each (the device returns <= 16 MiB/file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / "state_model.pt.tmp")
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    avg, avg_sq, steps = {}, {}, {}
    for n, p in zip(names, params):
        st = opt.state.get(p)
        if st:
            avg[n] = st["exp_avg"].detach().cpu()
            avg_sq[n] = st["exp_avg_sq"].detach().cpu()
            steps[n] = float(st["step"])
    torch.save(avg, out_dir / "state_opt_avg.pt.tmp")
    torch.save({"exp_avg_sq": avg_sq, "step": steps}, out_dir / "state_opt_avg_sq.pt.tmp")
    (out_dir / "state_meta.json.tmp").write_text(json.dumps(meta, indent=1))
    for f in STATE_FILES:
        os.replace(out_dir / (f + ".tmp"), out_dir / f)


def load_state(folder: Path, model, opt, device):
    model.load_state_dict(torch.load(folder / "state_model.pt", map_location=device))
    avg = torch.load(folder / "state_opt_avg.pt", map_location=device)
    rest = torch.load(folder / "state_opt_avg_sq.pt", map_location=device)
    for n, p in model.named_parameters():
        if n in avg:
            opt.state[p] = {
                "step": torch.tensor(rest["step"][n], dtype=torch.float32, device=device),  # fused AdamW: on device
                "exp_avg": avg[n].to(device),
                "exp_avg_sq": rest["exp_avg_sq"][n].to(device),
            }
    return json.loads((folder / "state_meta.json").read_text())


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------
def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    device = torch.device(args.device)
    use_cuda = device.type == "cuda"
    configure_sdpa(args.sdpa)
    autocast = use_cuda and args.bf16 and not args.no_autocast
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(args.out_dir)
    if args.debug:
        out_dir = Path("/tmp/pretrain_debug")
    out_dir.mkdir(parents=True, exist_ok=True)
    export_dir = Path(args.export_dir) if args.export_dir else models_dir()
    stages = curriculum(args)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    if args.benchmark:
        return run_benchmark(args, command)

    config = tm.make_config(
        emsize=args.emsize,
        nlayers=args.nlayers,
        nhead=args.nhead,
        features_per_group=args.features_per_group,
        max_num_classes=args.max_num_classes,
    )
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    model = tm.new_model(config, seed=args.seed).to(device)
    model.train()
    n_params = tm.count_parameters(model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=use_cuda,
    )

    meta = {
        "step": 0,
        "train_seconds": 0.0,
        "calls": [],
        "loss_curve": [],  # [step, train_minutes, stage, mean train loss, mean train acc] per log interval
        "evals": [],
        "tasks_seen": 0,
    }
    if args.resume:
        meta = load_state(Path(args.resume), model, opt, device)
        print(f"resumed from {args.resume}: step {meta['step']}, {meta['train_seconds'] / 60:.2f} training min")
    call_index = len(meta["calls"])
    meta["calls"].append({"command": command, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    device_name = torch.cuda.get_device_name(0) if use_cuda else "cpu"
    print(f"model: TabPFN v2 architecture, {n_params:,} parameters, config {config}; device {device_name}")

    if args.debug:
        val_tasks, tables, baselines = [], {}, {}
    else:
        val_tasks = make_val_set(args, device)
        tables = real_tables(args.seed)
        baselines = baseline_accuracies(tables, args.seed)
        print("baselines:", json.dumps(baselines))
    ckpt_eval = out_dir / "tabpfn_fallback_eval.ckpt"

    budget_s = args.time_budget_min * 60.0
    wall_limit_s = args.wall_limit_min * 60.0
    reserve_s = 60.0 if not args.tiny else 10.0  # final evaluation + export
    if args.final_call:
        # Finish within this call: leave time for the periodic evaluations (measured in earlier calls).
        eval_cost = max([e.get("eval_seconds", 0) + 3 for e in meta["evals"]] or [20.0])
        left = wall_limit_s - (time.time() - t_start) - reserve_s
        n_evals = int(left // (args.eval_every_min * 60 + eval_cost))
        budget_s = meta["train_seconds"] + max(0.0, left - n_evals * eval_cost - 5.0)
        print(f"final call: time budget reset to {budget_s / 60:.2f} training minutes")
    meta["time_budget_s"] = budget_s
    gen = torch.Generator().manual_seed(args.seed * 7919 + call_index)

    def run_eval(tag):
        ev = {"step": meta["step"], "train_minutes": round(meta["train_seconds"] / 60, 3), "tag": tag}
        ev.update({k: round(v, 4) for k, v in eval_prior(model, val_tasks, autocast).items()})
        tm.build_checkpoint(config, model.state_dict(), ckpt_eval, inference_config=tm.FALLBACK_INFERENCE_OVERRIDES)
        t0 = time.time()
        real = eval_real(ckpt_eval, tables, args.device, args.eval_estimators, args.seed)
        ev["real"] = {k: round(v, 4) for k, v in real.items()}
        ev["real_mean"] = round(float(np.mean(list(real.values()))), 4)
        ev["eval_seconds"] = round(time.time() - t0, 1)
        meta["evals"].append(ev)
        print("EVAL", json.dumps(ev), flush=True)
        return ev

    def progress():
        return meta["train_seconds"] / budget_s

    from tqdm import tqdm

    bar = tqdm(total=int(budget_s), initial=int(meta["train_seconds"]), unit="s", disable=args.no_progress,
               desc="train", mininterval=5)
    cur_stage, it, reuse_left, batch = None, None, 0, None
    last_eval = time.time()
    log_loss, log_acc, log_n = 0.0, 0.0, 0
    data_wait = 0.0
    steps_this_call = 0
    while progress() < 1.0:
        if time.time() - t_start > wall_limit_s - reserve_s:
            print("wall limit reached; saving state for --resume")
            break
        if args.max_steps and steps_this_call >= args.max_steps:
            break
        t_step = time.time()
        s_idx = stage_index(stages, progress())
        if s_idx != cur_stage:
            cur_stage = s_idx
            del it
            it = make_loader(stages[s_idx], args, seed_base=args.seed * 100_003 + call_index * 101 + s_idx)
            reuse_left = 0
            print(f"stage {s_idx}: {stages[s_idx]} at step {meta['step']} "
                  f"(data wait so far {data_wait:.1f}s of {meta['train_seconds']:.0f}s)", flush=True)
        stage = stages[s_idx]
        if reuse_left == 0:
            t0 = time.time()
            batch = next(it)
            data_wait += time.time() - t0
            reuse_left = max(stage["reuse"], args.min_reuse)
            fresh = True
        else:
            fresh = False
        reuse_left -= 1
        task = to_task(batch, device, gen, reshuffle=not fresh, max_classes=args.max_num_classes)
        lr = lr_at(args, meta["step"], progress())
        for g in opt.param_groups:
            g["lr"] = lr
        if args.random_column_embeddings:
            model.seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        loss, correct, n = forward_loss(model, task, autocast)
        model.seed = config.seed  # evaluation and export use the seed tabpfn uses at inference
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        meta["step"] += 1
        steps_this_call += 1
        meta["tasks_seen"] += int(task[0].shape[1])
        log_loss += float(loss)
        log_acc += float(correct) / max(int(n), 1)
        log_n += 1
        if log_n == 25:
            meta["loss_curve"].append(
                [meta["step"], round(meta["train_seconds"] / 60, 3), s_idx, round(log_loss / log_n, 4), round(log_acc / log_n, 4)]
            )
            bar.set_postfix(loss=f"{log_loss / log_n:.3f}", acc=f"{log_acc / log_n:.3f}", stage=s_idx, lr=f"{lr:.1e}")
            if args.no_progress and meta["step"] % 200 == 0:
                print(f"step {meta['step']} t={meta['train_seconds'] / 60:.2f}min stage {s_idx} lr {lr:.2e} "
                      f"loss {log_loss / log_n:.4f} acc {log_acc / log_n:.4f} data_wait {data_wait:.0f}s", flush=True)
            log_loss, log_acc, log_n = 0.0, 0.0, 0
        dt = time.time() - t_step
        meta["train_seconds"] += dt
        bar.update(int(meta["train_seconds"]) - bar.n)
        if args.debug:
            torch.cuda.synchronize() if use_cuda else None
            print(f"debug step {meta['step']}: loss {float(loss):.4f} x {tuple(task[0].shape)}", flush=True)
            continue
        if time.time() - last_eval > args.eval_every_min * 60:
            run_eval("periodic")
            save_state(out_dir, model, opt, meta)
            last_eval = time.time()
    bar.close()
    meta["calls"][-1].update(
        {"steps": steps_this_call, "data_wait_s": round(data_wait, 1), "wall_s": round(time.time() - t_start, 1)}
    )
    print(f"call done: {steps_this_call} steps, data wait {data_wait:.1f}s, total step {meta['step']}")
    if args.debug:
        print("DEBUG_OK", flush=True)
        return 0
    done = progress() >= 1.0 or args.final_call
    if meta["evals"] and meta["evals"][-1]["step"] == meta["step"]:
        ev = meta["evals"][-1]
        ev["tag"] = "final" if done else "end_of_call"
    else:
        ev = run_eval("final" if done else "end_of_call")
    save_state(out_dir, model, opt, meta)
    ckpt_eval.unlink(missing_ok=True)

    if done:
        export_dir.mkdir(parents=True, exist_ok=True)
        ckpt = export_dir / tm.FALLBACK_NAME
        tm.build_checkpoint(
            config,
            model.state_dict(),
            ckpt,
            extra={"ttt_book": {"trained_steps": meta["step"], "prior": f"tabicl {args.prior}"}},
            inference_config=tm.FALLBACK_INFERENCE_OVERRIDES,
        )
        real = ev["real"]
        results = {
            "n_parameters": n_params,
            "steps": meta["step"],
            "tasks_seen": meta["tasks_seen"],
            "train_minutes": round(meta["train_seconds"] / 60, 2),
            "final_val_loss": ev["val_loss"],
            "final_val_acc": ev["val_acc"],
            "real_table_accuracy": real,
            "real_table_mean": ev["real_mean"],
            "baselines": baselines,
            "baseline_means": {
                k: round(float(np.mean([b[k] for b in baselines.values()])), 4)
                for k in ("logistic_regression", "hist_gradient_boosting", "majority")
            },
        }
        write_provenance(
            export_dir / (Path(tm.FALLBACK_NAME).stem + ".json"),
            command=" && ".join(c["command"] for c in meta["calls"]),
            seeds={"seed": args.seed, "val_seed": 10_000 + args.seed, "split_seed": args.seed},
            results=results,
            files=[ckpt],
            extra={
                "description": "TabPFN-v2-architecture classifier pretrained by us on tabicl's synthetic "
                "SCM prior; NOT the official TabPFN v2 weights",
                "config": {
                    "model": {
                        "emsize": config.emsize,
                        "nlayers": config.nlayers,
                        "nhead": config.nhead,
                        "features_per_group": config.features_per_group,
                        "max_num_classes": config.max_num_classes,
                    },
                    "optimizer": {
                        "name": "AdamW",
                        "lr": args.lr,
                        "betas": [0.9, 0.95],
                        "weight_decay": args.weight_decay,
                        "warmup_steps": args.warmup_steps,
                        "schedule": "linear warm-up, then cosine in training time to min_lr_frac",
                        "min_lr_frac": args.min_lr_frac,
                        "grad_clip": args.grad_clip,
                        "autocast": "bf16" if autocast else "none (float32)",
                        "sdpa": args.sdpa,
                    },
                    "prior": {"package": "tabicl", "prior_type": args.prior, "curriculum": stages},
                    "inference_overrides": tm.FALLBACK_INFERENCE_OVERRIDES,
                    "time_budget_min": round(budget_s / 60, 3),
                },
                "calls": meta["calls"],
                "loss_curve_columns": ["step", "train_minutes", "stage", "train_loss", "train_acc"],
                "loss_curve": meta["loss_curve"],
                "evals": meta["evals"],
                "versions": _versions(),
            },
        )
        print(f"exported {ckpt} and its provenance to {export_dir}")
    else:
        print(f"not done: {progress():.1%} of the time budget; resume with --resume {out_dir}")
    return 0


def _versions():
    import importlib.metadata as md

    out = {}
    for name in ("tabpfn", "tabicl", "xgboost", "torch", "numpy", "scikit-learn"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
