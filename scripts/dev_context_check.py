#!/usr/bin/env python
"""Checkpoints' accuracy without TTT on the development tables at small context sizes (a selection check).

The periodic evaluations of ``scripts/pretrain_tabpfn.py`` score a checkpoint on the development tables with
1,000 context rows. The book measures TTT where contexts are short, so two checkpoints that tie there can still
differ where it matters. This script scores each checkpoint named on the command line with
:func:`ttt_helpers.tabpfn.pretrain_eval.dev_context_curve` (the Figure-3 episode pipeline, on the development
tables, never on the benchmark) and writes ``<--name>.json`` (default ``dev_context_check``) and its provenance
into ``--out``, with each checkpoint's sha256.

Example (the shipped result; CPU, about 3 minutes per checkpoint on 2 cores)::

    python scripts/dev_context_check.py --model candidate=data/models/tabpfn_candidate.ckpt \\
        --model fallback=data/models/tabpfn_fallback.ckpt --model long=/tmp/long/tabpfn_long.ckpt
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from ttt_helpers.provenance import command_line, data_dir, git_commit, sha256_file, write_result
from ttt_helpers.tabpfn import pretrain_eval as pe


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                   help="a checkpoint to score, with the name it gets in the result (repeatable)")
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 8, 32])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-test", type=int, default=200)
    p.add_argument("--dev-cache", default=None, help="development tables from pretrain_eval.write_dev_cache")
    p.add_argument("--out", default=str(data_dir() / "results"))
    p.add_argument("--name", default="dev_context_check", help="file stem of the result and its provenance")
    args = p.parse_args(argv)
    models = {name: Path(path) for name, path in pe.named_checkpoints(p, args.model).items()}
    args.models = models
    return args


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    command = command_line(argv)
    commit = git_commit()  # before this run writes its own outputs into the tree
    t0 = time.time()
    result = {"command": command, "sizes": args.sizes, "reps": args.reps, "seed": args.seed,
              "max_test": args.max_test, "models": {}}
    for name, path in args.models.items():
        t = time.time()
        curve = pe.dev_context_curve(path, sizes=args.sizes, reps=args.reps, seed=args.seed,
                                     max_test=args.max_test, cache=args.dev_cache)
        result["models"][name] = {"path": str(path), "sha256": sha256_file(path),
                                  "seconds": round(time.time() - t, 1), **curve}
        print(f"{name:12s} " + "  ".join(f"n={n}: {a:.3f}" for n, a in zip(curve["sizes"], curve["mean"]))
              + f"  (majority {curve['majority']:.3f}, {len(curve['tables'])} tables)", flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    write_result(args.out, args.name, result, command=command, commit=commit, seeds={"seed": args.seed},
                 results={name: dict(zip([f"n={n}" for n in args.sizes], r["mean"]))
                          for name, r in result["models"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
