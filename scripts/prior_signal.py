#!/usr/bin/env python
"""How much each synthetic prior's tables can be learned: a random forest and the book's reference learners against
the majority class, on the prior's own context/test split (CPU, a few minutes).

For each prior of ``ttt_helpers.tabpfn.pretrain.PRIORS`` named on the command line, ``--batches`` batches of
``--tables`` tables (400 to 600 rows, up to 16 features and 10 classes, the context a random 30-90 % of the
rows) are generated with per-batch seeds (``pretrain.prior_batch``, the training loop's scheme); on each table
a ``RandomForestClassifier`` (100 trees) and the book's reference learners (``benchmark.baseline_accuracies``:
LogisticRegression, HistGradientBoosting) are fitted on the context rows and scored on the test rows, against
the majority class of the context. The generation time per table is recorded too: the prior runs on the CPU
while the GPU trains, so a slower prior means a longer data wait. Writes ``prior_signal.json`` and its
provenance into ``--out``.

Example (what made the shipped ``data/results/prior_signal.json``)::

    python scripts/prior_signal.py --out data/results

The real-table prior (``--prior real`` of ``scripts/pretrain_tabpfn.py``; its first batch includes building the
pool, about 40 s) went into ``data/results/prior_signal_real.json``::

    python scripts/prior_signal.py --priors real --name prior_signal_real --out data/results
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

from ttt_helpers.provenance import command_line, git_commit, write_result
from ttt_helpers.tabpfn import pretrain as pt
from ttt_helpers.tabpfn.benchmark import baseline_accuracies

DEFAULT_PRIORS = ["graph_scm", "mix_scm", "tree_scm", "mlp_scm", "mix_scm+filter", "tree_scm+filter",
                  "mlp_scm+filter", "graph_scm+quantiles"]
HEADLINE = ("rf_gain_mean", "rf_gain_se", "lr_gain_mean", "hgb_gain_mean", "seconds_per_table")
STAGE = dict(start=0.0, min_rows=400, max_rows=600, max_features=16, max_classes=10, batch=8, reuse=1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--priors", nargs="+", default=DEFAULT_PRIORS, type=pt.check_prior)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--tables", type=int, default=8, help="tables per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/prior_signal")
    p.add_argument("--name", default="prior_signal", help="file stem of the result and its provenance")
    return p.parse_args(argv)


def table_scores(X, y, n_features: int, n_rows: int, n_context: int, seed: int = 0) -> dict:
    """Accuracy gain over the context's majority class of a random forest and of the book's reference learners
    (LogisticRegression, HistGradientBoosting: :func:`ttt_helpers.tabpfn.benchmark.baseline_accuracies`), one table."""
    from sklearn.ensemble import RandomForestClassifier

    X = np.asarray(X[:n_rows, :n_features], dtype=np.float64)
    y = np.asarray(y[:n_rows]).astype(int)
    Xc, Xt, yc, yt = X[:n_context], X[n_context:], y[:n_context], y[n_context:]
    classes = np.unique(yc)
    majority = float(np.mean(yt == np.bincount(yc).argmax()))
    out = {"classes": int(len(classes)), "majority": majority, "n_context": int(n_context), "n_test": int(len(yt))}
    if len(classes) < 2:
        return out | {"rf_gain": 0.0, "lr_gain": 0.0, "hgb_gain": 0.0}
    rf = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1).fit(Xc, yc).score(Xt, yt)
    ref = baseline_accuracies(Xc, yc, Xt, yt, seed=seed)
    return out | {"rf_gain": float(rf - majority), "lr_gain": ref["logistic_regression"] - majority,
                  "hgb_gain": ref["hist_gradient_boosting"] - majority}


def prior_signal(prior: str, *, batches: int, tables: int, seed: int) -> dict:
    stage = dict(STAGE, batch=tables)
    rows, gen_s = [], 0.0
    for i in range(batches):
        t0 = time.perf_counter()
        X, y, d, seq_lens, train_sizes = pt.prior_batch(stage, prior, (seed, 0, 0), i)
        gen_s += time.perf_counter() - t0
        for b in range(X.shape[0]):
            rows.append(table_scores(X[b].numpy(), y[b].numpy(), int(d[b]), int(seq_lens[b]), int(train_sizes[b]),
                                     seed))
    rf, lr = np.array([r["rf_gain"] for r in rows]), np.array([r["lr_gain"] for r in rows])
    return {"tables": len(rows), "rf_gain_mean": float(rf.mean()),
            "rf_gain_se": float(rf.std(ddof=1) / np.sqrt(len(rf))),
            "rf_gain_median": float(np.median(rf)), "lr_gain_mean": float(lr.mean()),
            "hgb_gain_mean": float(np.mean([r["hgb_gain"] for r in rows])),
            "share_rf_above_majority_by_0.05": float(np.mean(rf > 0.05)),
            "mean_classes": float(np.mean([r["classes"] for r in rows])),
            "mean_majority_rate": float(np.mean([r["majority"] for r in rows])),
            "seconds_per_table": gen_s / len(rows), "per_table": rows}


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    command = command_line(argv)
    commit = git_commit()  # before this run writes its own outputs into the tree
    t0 = time.time()
    result = {"command": command, "stage": STAGE | {"batch": args.tables}, "batches": args.batches, "priors": {}}
    for prior in args.priors:
        result["priors"][prior] = prior_signal(prior, batches=args.batches, tables=args.tables, seed=args.seed)
        r = result["priors"][prior]
        print(f"{prior:18s} RF - majority {r['rf_gain_mean']:+.3f} ± {r['rf_gain_se']:.3f}  "
              f"LR - majority {r['lr_gain_mean']:+.3f}  HGB - majority {r['hgb_gain_mean']:+.3f}  "
              f"{r['seconds_per_table']:.2f} s/table", flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    write_result(args.out, args.name, result, command=command, commit=commit, seeds={"seed": args.seed},
                 results={p: {k: round(r[k], 4) for k in HEADLINE} for p, r in result["priors"].items()})
    return 0


if __name__ == "__main__":
    pt.fix_hash_seed()  # tabicl's graph_scm tables depend on string hashing: the same seeds, the same tables
    sys.exit(main())
