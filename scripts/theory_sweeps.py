#!/usr/bin/env python
"""Theory-vs-simulation sweeps of chapters 04 (isotropic one-step TTT, Figure 1) and 05 (scratch vs pretrained).

Two profiles:

- ``--profile ci`` (default): the sizes the chapters run live (d = 20, 1,000 tasks per point);
- ``--profile full`` (or ``--full``, or ``TTT_FULL=1``): the paper-size sweep (d = 100, 10,000 tasks per
  point), shipped as ``data/results/<name>.json`` with ``<name>.provenance.json`` beside it.

Runs on the CPU (the Monte Carlo engine is batched NumPy). Example::

    python scripts/theory_sweeps.py --full            # both sweeps, paper size
    python scripts/theory_sweeps.py --only fig1 --profile ci --out /tmp/ci
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ttt_helpers.theory import sweeps
from ttt_helpers.provenance import results_dir, write_provenance

PROFILES = {profile: {name: sizes[name] for name in ("fig1_isotropic", "scratch_vs_pretrained")}
            for profile, sizes in sweeps.SWEEP_PROFILES.items()}


def run_fig1(cfg, progress):
    rows = sweeps.sweep_context_length(cfg["d"], cfg["alphas"], cfg["kappas"], cfg["sigma"], cfg["n_tasks"],
                                       rng=cfg["seed"], progress=progress)
    z = (np.array(rows["mc_loss_after"]) - np.array(rows["theory_loss_after"])) / np.array(rows["mc_loss_after_se"])
    zi = (np.array(rows["mc_improvement"]) - np.array(rows["theory_improvement"])) / np.array(
        rows["mc_improvement_se"])
    head = {"max_abs_z_loss_after": float(np.max(np.abs(z))), "max_abs_z_improvement": float(np.max(np.abs(zi))),
            "points": len(z)}
    return rows, head


def run_starts(cfg, progress):
    rows = sweeps.sweep_starts(cfg["d"], cfg["alphas"], cfg["kappas"], cfg["sigma"], cfg["n_tasks"], rng=cfg["seed"],
                               progress=progress)
    th = np.array(rows["scr_theory"]) - np.array(rows["pre_theory"])
    z = (np.array(rows["diff_mc"]) - th) / np.array(rows["diff_mc_se"])
    head = {"max_abs_z_paired_difference": float(np.max(np.abs(z))), "points": len(z),
            "k_star_exact": rows["crossover"]["k_star_exact"], "k_star_limit": rows["crossover"]["k_star_limit"]}
    return rows, head


RUNNERS = {"fig1_isotropic": run_fig1, "scratch_vs_pretrained": run_starts}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default=None)
    p.add_argument("--full", action="store_true", help="same as --profile full")
    p.add_argument("--only", choices=["fig1", "starts"], default=None)
    p.add_argument("--out", default=None, help="output folder (default data/results)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    profile = args.profile or ("full" if args.full or os.environ.get("TTT_FULL") == "1" else "ci")
    out = Path(args.out) if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    names = list(PROFILES[profile])
    if args.only:
        names = [nm for nm in names if nm.startswith({"fig1": "fig1", "starts": "scratch"}[args.only])]
    for name in names:
        cfg = PROFILES[profile][name]
        t0 = time.time()
        count = [0]

        def progress(n, k, _name=name):
            count[0] += 1
            if not args.no_progress:
                print(f"[{_name}] point {count[0]}: n={n} k={k} ({time.time() - t0:.0f} s)", file=sys.stderr,
                      flush=True)

        rows, head = RUNNERS[name](cfg, progress)
        elapsed = time.time() - t0
        record = {"name": name, "profile": profile, "config": cfg, "rows": rows, "elapsed_s": elapsed}
        path = out / f"{name}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        write_provenance(out / f"{name}.provenance.json", command="python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
                         seeds=[cfg["seed"]], results=head, files=[path],
                         extra={"profile": profile, "config": cfg, "elapsed_s": round(elapsed, 1)})
        print(f"{name}: {head} in {elapsed:.0f} s -> {path}")


if __name__ == "__main__":
    main()
