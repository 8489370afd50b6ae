#!/usr/bin/env python
"""How long the command line takes with its defaults on a 2,000-row table (issue 12: within 3 minutes on 2 CPU cores).

Writes a synthetic 2,000-row binary table (6 numeric columns, one text column, majority class 0.74, the majority
class sorting *second*, as in the tables that showed the small-context pathology), runs
``python -m ttt_helpers <csv> --target y`` with every option at its default in a subprocess, and records the wall
time, the time the TTT and its recipe search took (from ``report.json``), the machine's CPU count and load
average, and the thread count. Writes ``data/results/bench_cli.json`` and its provenance.

    OMP_NUM_THREADS=2 python scripts/bench_cli.py            # the 2-core measurement
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_table(path: Path, n: int = 2000, seed: int = 0) -> None:
    import pandas as pd

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    logit = 0.8 * X[:, 0] - 0.5 * X[:, 1] + 0.3 * X[:, 2] * X[:, 3] + 1.3
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(6)])
    df["colour"] = rng.choice(["red", "green", "blue"], n)
    df["y"] = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    df.to_csv(path, index=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--out", default=None)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further command-line options")
    args = p.parse_args(argv)

    from ttt_helpers.provenance import git_commit, results_dir, write_provenance

    commit = git_commit()  # before this run writes its own outputs into the tree
    work = Path(tempfile.mkdtemp(prefix="bench_cli_"))
    csv = work / "table.csv"
    synthetic_table(csv, args.rows)
    cmd = [sys.executable, "-m", "ttt_helpers", str(csv), "--target", "y", "--output-dir", str(work / "report"),
           "--no-progress", *args.extra]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    if run.returncode != 0:
        sys.exit(f"the command line failed:\n{run.stderr[-3000:]}")
    report = json.loads((work / "report" / "report.json").read_text())
    k = report["cost"]
    record = {
        "rows": args.rows, "command": " ".join(["python -m ttt_helpers", "table.csv", *cmd[4:]]),
        "wall_seconds": wall, "runtime_seconds": report["runtime_seconds"],
        "ttt_seconds": k["ttt_seconds"], "optimizer_seconds": k["optimizer_seconds"],
        "search_scoring_seconds": k["search_scoring_seconds"], "steps_run": k["steps_run"],
        "selected": report["recipe"].get("selected"), "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_before": load_before,
        "load_average_after": load_after, "within_3_minutes": wall <= 180,
        "summary": run.stdout.splitlines(),
    }
    out = Path(args.out) if args.out else results_dir() / "bench_cli.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    write_provenance(out.with_name(out.stem + ".provenance.json"), command="python scripts/bench_cli.py",
                     seeds={"table": 0, "cli": 0}, files=[out], commit=commit,
                     results={k_: record[k_] for k_ in ("wall_seconds", "ttt_seconds", "steps_run",
                                                         "within_3_minutes")})
    print("\n".join(record["summary"]))
    print(f"wall time {wall:.0f} s (TTT {k['ttt_seconds']:.0f} s, of which {k['search_scoring_seconds']:.0f} s "
          f"scoring); load average before {load_before[0]:.1f}, after {load_after[0]:.1f}; wrote {out}")


if __name__ == "__main__":
    main()
