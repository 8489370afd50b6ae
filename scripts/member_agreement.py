#!/usr/bin/env python
"""How much the members of ``tabpfn``'s default ensemble differ, per checkpoint, on the benchmark tables.

For each checkpoint (``--models NAME=PATH ...``) and each benchmark table at 1,000 context rows (the shipped
benchmark's splits: ``benchmark.quality_splits``, at most 200 test rows), ``pretrain_eval.member_agreement`` fits
``TabPFNClassifier`` with its default ensemble and records every member's accuracy, the ensemble's, and how often two
members predict the same class. Nothing is chosen on these numbers: they explain a gap (the pretraining appendix,
"The fallback since 2026-12-06"), and the ensemble's accuracies must equal the checkpoints' shipped benchmark records.

Example (the book's CPU, about two minutes a checkpoint)::

    python scripts/member_agreement.py --models fallback=data/models/tabpfn_fallback.ckpt \\
        v1=data/models/tabpfn_v1.ckpt candidate=data/models/tabpfn_candidate.ckpt
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

from ttt_helpers.provenance import command_line, git_commit, results_dir, sha256_file, write_result
from ttt_helpers.tabpfn import benchmark as td
from ttt_helpers.tabpfn import pretrain_eval as pe


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", "--models", dest="model", nargs="+", action="extend", required=True, metavar="NAME=PATH",
                   help="checkpoints to measure (as compare_checkpoints.py's --model; repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-test", type=int, default=200)
    p.add_argument("--out", default=str(results_dir()))
    p.add_argument("--name", default="member_agreement")
    args = p.parse_args(argv)
    args.models = pe.named_checkpoints(p, args.model)
    return args


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    command, commit, t0 = command_line(argv), git_commit(), time.time()
    tables = {name: (Xc, Xt, yc, yt) for name, Xc, yc, Xt, yt, _ in
              td.quality_splits(n_context=1000, max_test=args.max_test, seed=args.seed)}
    result = {"command": command, "seed": args.seed, "device": args.device, "n_context": 1000,
              "max_test_rows": args.max_test, "models": {}}
    for name, path in args.models.items():
        per_table = pe.member_agreement(path, tables, args.device, seed=args.seed)
        means = {k: round(float(np.mean([r[k] for r in per_table.values()])), 4)
                 for k in ("member_accuracy", "ensemble_accuracy", "ensemble_gain", "agreement")}
        result["models"][name] = {"path": str(path), "sha256": sha256_file(path), "mean": means, "per_table": per_table}
        print(name, means, f"{time.time() - t0:.0f}s", flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    write_result(args.out, args.name, result, command=command, commit=commit, seeds={"seed": args.seed},
                 results={name: r["mean"] for name, r in result["models"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
