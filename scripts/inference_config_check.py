#!/usr/bin/env python
"""Which of ``tabpfn``'s inference settings suits a checkpoint: chosen on the development tables only.

The settings ``tabpfn`` applies at prediction time (the feature transforms each ensemble member uses, the
fingerprint column, the SVD features) are not learned in pretraining; the book's checkpoints store one choice,
:data:`ttt_helpers.tabpfn.checkpoints.FALLBACK_INFERENCE_OVERRIDES`. This script scores each setting of
:data:`~ttt_helpers.tabpfn.checkpoints.INFERENCE_VARIANTS` on the development tables at 1,000 context rows (never
on the benchmark; :func:`ttt_helpers.tabpfn.pretrain_eval.dev_splits`), with one and with eight ensemble members,
and chooses the one with the highest development accuracy averaged over the two. Only then, and only for the
stored setting and the chosen one, it measures the benchmark tables (:func:`ttt_helpers.tabpfn.benchmark.quality_splits`,
1,000 context rows, at most 200 test rows, as in the checkpoints' provenance), so that the benchmark plays no part in
the choice. It writes ``<--name>.json`` and its provenance into ``--out``.

Example (GPU through the device tool, the tables from the caches that travel with the call)::

    TTT_TABULAR_CACHE=.device_carry/tabttt/tabular_cache.npz python scripts/inference_config_check.py \\
        --model data/models/tabpfn_candidate.ckpt --device cuda --dev-cache .device_carry/pretrain/dev.npz
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ttt_helpers.provenance import command_line, data_dir, git_commit, models_dir, sha256_file, write_result
from ttt_helpers.tabpfn import benchmark as td
from ttt_helpers.tabpfn import checkpoints as tm
from ttt_helpers.tabpfn import pretrain_eval as pe


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(models_dir() / tm.CANDIDATE_NAME))
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", nargs="+", default=list(tm.INFERENCE_VARIANTS), choices=list(tm.INFERENCE_VARIANTS))
    p.add_argument("--estimators", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dev-cache", default=None, help="development tables from pretrain_eval.write_dev_cache")
    p.add_argument("--tables", choices=["dev", "wide"], default="dev",
                   help="the development tables (pretrain_eval.DEV_SPECS) or the wide ones (WIDE_DEV_SPECS)")
    p.add_argument("--no-benchmark", action="store_true", help="development tables only")
    p.add_argument("--out", default=str(data_dir() / "results"))
    p.add_argument("--name", default="inference_config_check")
    args = p.parse_args(argv)
    if not Path(args.model).is_file():
        p.error(f"--model: no file {args.model}")
    return args


def scores(model, tables, variant, estimators, device, seed):
    """``{"n_estimators=k": {"mean": ..., "per_table": {...}}}`` for one inference setting."""
    out = {}
    for k in estimators:
        acc = pe.eval_real(model, tables, device, k, seed, inference_config=tm.INFERENCE_VARIANTS[variant])
        out[f"n_estimators={k}"] = {"mean": pe.mean_accuracy(acc), "per_table": acc}
    return out


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    command = command_line(argv)
    commit = git_commit()
    t0 = time.time()
    dev = pe.dev_splits(args.seed, cache=args.dev_cache,
                        specs=pe.WIDE_DEV_SPECS if args.tables == "wide" else pe.DEV_SPECS)
    result = {"command": command, "model": str(args.model), "sha256": sha256_file(args.model),
              "device": args.device, "estimators": args.estimators, "seed": args.seed, "tables": args.tables,
              "variants": {v: tm.INFERENCE_VARIANTS[v] for v in args.variants},
              "rule": "highest development accuracy averaged over the ensemble sizes", "dev": {}}
    for v in args.variants:
        result["dev"][v] = scores(args.model, dev, v, args.estimators, args.device, args.seed)
        print(v, {k: r["mean"] for k, r in result["dev"][v].items()}, f"{time.time() - t0:.0f}s", flush=True)
    overall = {v: float(np.mean([r["mean"] for r in result["dev"][v].values()])) for v in args.variants}
    result["dev_overall"] = {v: round(a, 4) for v, a in overall.items()}
    result["chosen"] = max(args.variants, key=lambda v: (overall[v], v == "fallback"))
    print("chosen on the development tables:", result["chosen"], flush=True)
    if not args.no_benchmark:
        splits = {name: (Xc, Xt, yc, yt) for name, Xc, yc, Xt, yt, _ in
                  td.quality_splits(n_context=1000, max_test=200, seed=args.seed)}
        result["benchmark"] = {v: scores(args.model, splits, v, args.estimators, args.device, args.seed)
                               for v in dict.fromkeys(["fallback", result["chosen"]])}
        print("benchmark:", {v: {k: r["mean"] for k, r in s.items()} for v, s in result["benchmark"].items()})
    result["seconds"] = round(time.time() - t0, 1)
    write_result(args.out, args.name, result, command=command, commit=commit, seeds={"seed": args.seed},
                 results={"chosen": result["chosen"], "dev_overall": result["dev_overall"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
