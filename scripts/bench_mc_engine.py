#!/usr/bin/env python
"""Throughput of the Monte Carlo engine of chapters 04-05 (a benchmark, not a timed test).

Measures tasks per second of the batched engine ``montecarlo.mc_one_step`` (NumPy, chunks of tasks, rank-one
closed-form test loss) against the straightforward per-task loop ``montecarlo.mc_one_step_naive`` (a Python loop
that forms ``W_TT`` as a ``d x d`` matrix with ``ttt.ttt_step`` and evaluates ``ttt.conditional_test_loss``),
at Figure-1 points (``d`` = 20 (CI size) and 100 (full size), ``k = d``, ``n/d`` in {0.25, 1, 4}), and reports
the ratio and how close the batched engine gets to the random-number-generation bound (both engines draw
``(n + k) d`` Gaussian features per task, which dominates at large ``d``).
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

from ttt_helpers.theory import isotropic as iso
from ttt_helpers.theory import montecarlo
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
    p.add_argument("--d", type=int, nargs="+", default=None, help="dimensions (default: 20 100)")
    args = p.parse_args(argv)
    dims = args.d or ([20] if args.quick else [20, 100])
    n_vec, n_loop = (2000, 200) if args.quick else (5000, 300)
    import numpy as np

    t0 = time.perf_counter()
    np.random.default_rng(0).standard_normal(20_000_000)
    rng_rate = 20_000_000 / (time.perf_counter() - t0)
    print(f"reference: numpy standard_normal draws {rng_rate / 1e6:.1f} million normals per second here")
    rows = []
    for d, alpha in [(d, a) for d in dims for a in (0.25, 1.0, 4.0)]:
        n, k = int(alpha * d), d
        t_vec, r_vec = timed(lambda: montecarlo.mc_one_step(n, d, k, 0.5, "pretrained", n_tasks=n_vec, rng=1))
        t_loop, r_loop = timed(lambda: montecarlo.mc_one_step_naive(n, d, k, 0.5, "pretrained", n_tasks=n_loop, rng=1),
                               repeats=1)
        row = {"n": n, "d": d, "k": k, "vectorised_tasks_per_s": n_vec / t_vec, "loop_tasks_per_s": n_loop / t_loop,
               "speedup": (n_vec / t_vec) / (n_loop / t_loop),
               "vectorised_loss_after": r_vec["loss_after"], "loop_loss_after": r_loop["loss_after"],
               "theory_loss_after": iso.isotropic_one_step(n, d, k, 0.5)["loss_after"],
               "normals_per_task": (n + k) * d + d + n + k}
        row["vectorised_fraction_of_rng_bound"] = row["vectorised_tasks_per_s"] * row["normals_per_task"] / rng_rate
        rows.append(row)
        print(f"n={n:4d} d={d} k={k}: vectorised {row['vectorised_tasks_per_s']:9.0f} tasks/s, "
              f"loop {row['loop_tasks_per_s']:7.0f} tasks/s, speed-up x{row['speedup']:.1f} "
              f"(loss after: {row['vectorised_loss_after']:.2f} / {row['loop_loss_after']:.2f} / theory "
              f"{row['theory_loss_after']:.2f}); batched engine at {100 * row['vectorised_fraction_of_rng_bound']:.0f}% "
              f"of the random-number bound")
    geo = {}
    for d in dims:
        sp_ = [r["speedup"] for r in rows if r["d"] == d]
        geo[str(d)] = float(np.exp(np.mean(np.log(sp_))))
        print(f"d = {d}: geometric-mean speed-up x{geo[str(d)]:.1f}")
    print(f"(threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, cpu_count={os.cpu_count()})")
    if not args.quick:
        path = results_dir() / "bench_mc_engine.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rows": rows, "geometric_mean_speedup": geo, "rng_normals_per_s": rng_rate},
                                   indent=1) + "\n")
        write_provenance(results_dir() / "bench_mc_engine.provenance.json",
                         command="python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])), seeds=[1],
                         results={"geometric_mean_speedup": geo}, files=[path],
                         extra={"omp_num_threads": os.environ.get("OMP_NUM_THREADS")})


if __name__ == "__main__":
    main()
