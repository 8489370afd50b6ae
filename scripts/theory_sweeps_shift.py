#!/usr/bin/env python
"""Sweeps of the chapters "General covariance and alignment", "Beyond one step" and "Sample complexity".

Writes ``data/results/<name>.json`` (the result) and ``data/results/<name>.provenance.json`` (command, git
commit, machine, date, seeds, headline numbers, sha256 of the result) for

* ``alignment_sweep``       one TTT step vs alignment angle, pretrained vs scratch, crossing k*
* ``multistep_sweep``       multi-step TTT curves, oracle bound, gradient-descent limit
* ``sample_complexity_sweep``  context length needed with / without TTT (isotropic and shifted)

Usage::

    python scripts/theory_sweeps_shift.py --profile full        # paper-size (CPU, ~minutes)
    python scripts/theory_sweeps_shift.py --profile ci --only multistep

The CI profile is what the chapters run live; the chapters load the full profile's JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from ttt_helpers.theory import sweeps
from ttt_helpers.provenance import results_dir, write_provenance

PROFILES = {profile: {name: sizes[name] for name in ("alignment", "multistep", "sample")}
            for profile, sizes in sweeps.SWEEP_PROFILES.items()}


def run_alignment(cfg):
    return sweeps.alignment_sweep(**cfg)


def run_multistep(cfg):
    return sweeps.multistep_sweep(**cfg)


def run_sample(cfg):
    cfg = dict(cfg)
    shift = cfg.pop("shift")
    out = sweeps.reduction_sweep(**cfg)
    out["shift"] = sweeps.shift_sweep(sigma=cfg["sigma"], **shift)
    return out


RUNNERS = {"alignment": run_alignment, "multistep": run_multistep, "sample": run_sample}
NAMES = {"alignment": "alignment_sweep", "multistep": "multistep_sweep", "sample": "sample_complexity_sweep"}


def headline(which, res):
    if which == "alignment":
        rec = res["per_k"][str(res["config"]["ks"][0])]
        rel = np.abs(np.array(rec["sim_warm"]) / np.array(rec["theory_warm"]) - 1)
        return {"max_rel_err_pretrained": float(rel.max()), "theory_k_star": res["crossing"]["theory_k"]}
    if which == "multistep":
        return {"first_step_fraction": {f"{r['theta']:.3f}/{r['start']}/{r['k']}": r["first_step_fraction"]
                                        for r in res["records"]}}
    return {"ratio_at_largest_d": res["ratio"][str(res["config"]["ds"][-1])], "shift_ratio": res["shift"]["ratio"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default=os.environ.get("TTT_PROFILE", "full"))
    ap.add_argument("--only", choices=sorted(RUNNERS), action="append")
    ap.add_argument("--out", default=None, help="output folder (default data/results)")
    args = ap.parse_args(argv)
    out_dir = results_dir() if args.out is None else __import__("pathlib").Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for which in args.only or list(RUNNERS):
        cfg = PROFILES[args.profile][which]
        t0 = time.time()
        res = RUNNERS[which](cfg)
        secs = time.time() - t0
        name = NAMES[which] + ("" if args.profile == "full" else f"_{args.profile}")
        res["profile"] = args.profile
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(res, indent=1, default=float) + "\n")
        write_provenance(out_dir / f"{name}.provenance.json",
                         command="python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                         seeds={"seed": cfg.get("seed")}, results=headline(which, res), files=[path],
                         extra={"profile": args.profile, "config": cfg, "wall_seconds": round(secs, 1)})
        print(f"{which}: {secs:.1f} s -> {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
