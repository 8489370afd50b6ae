#!/usr/bin/env python
"""Throughput of the Monte Carlo engine of chapters 04-05 (a benchmark, not a timed test).

Measures tasks per second of the batched engine ``isotropic.mc_one_step`` (NumPy, chunks of tasks, rank-one
closed-form test loss) against the straightforward per-task loop ``isotropic.mc_one_step_naive`` (a Python loop
that forms ``W_TT`` as a ``d x d`` matrix with ``ttt.ttt_step`` and evaluates ``ttt.conditional_test_loss``),
at Figure-1 points (full size: ``d = 100``, ``k = d``, ``n/d`` in {0.25, 1, 4}), and reports the ratio.
Both engines draw the same kind of data (task, context, training queries) and give the same estimator.

    python scripts/bench_mc_engine.py              # writes data/results/bench_mc_engine.json (+ provenance)
    python scripts/bench_mc_engine.py --quick      # smaller, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ttt_helpers import isotropic as iso
from ttt_helpers.provenance import results_dir, write_provenance


def timed(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="d = 20, fewer tasks, no files written")
    p.add_argument("--d", type=int, default=None)
    args = p.parse_args(argv)
    d = args.d or (20 if args.quick else 100)
    n_vec, n_loop = (2000, 200) if args.quick else (5000, 300)
    rows = []
    for alpha in (0.25, 1.0, 4.0):
        n, k = int(alpha * d), d
        t_vec, r_vec = timed(lambda: iso.mc_one_step(n, d, k, 0.5, "pretrained", n_tasks=n_vec, rng=1))
        t_loop, r_loop = timed(lambda: iso.mc_one_step_naive(n, d, k, 0.5, "pretrained", n_tasks=n_loop, rng=1),
                               repeats=1)
        row = {"n": n, "d": d, "k": k, "vectorised_tasks_per_s": n_vec / t_vec, "loop_tasks_per_s": n_loop / t_loop,
               "speedup": (n_vec / t_vec) / (n_loop / t_loop),
               "vectorised_loss_after": r_vec["loss_after"], "loop_loss_after": r_loop["loss_after"],
               "theory_loss_after": iso.isotropic_one_step(n, d, k, 0.5)["loss_after"]}
        rows.append(row)
        print(f"n={n:4d} d={d} k={k}: vectorised {row['vectorised_tasks_per_s']:9.0f} tasks/s, "
              f"loop {row['loop_tasks_per_s']:7.0f} tasks/s, speed-up x{row['speedup']:.1f} "
              f"(loss after: {row['vectorised_loss_after']:.2f} / {row['loop_loss_after']:.2f} / theory "
              f"{row['theory_loss_after']:.2f})")
    geo = 1.0
    for r in rows:
        geo *= r["speedup"]
    geo **= 1 / len(rows)
    print(f"geometric-mean speed-up: x{geo:.1f}  (threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    if not args.quick:
        path = results_dir() / "bench_mc_engine.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rows": rows, "geometric_mean_speedup": geo}, indent=1) + "\n")
        write_provenance(results_dir() / "bench_mc_engine.provenance.json",
                         command="python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])), seeds=[1],
                         results={"geometric_mean_speedup": geo}, files=[path],
                         extra={"omp_num_threads": os.environ.get("OMP_NUM_THREADS")})


if __name__ == "__main__":
    main()
