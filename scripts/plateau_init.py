#!/usr/bin/env python
"""The early plateau at CPU size, with and without ``tabpfn``'s zero initialisation of the block outputs.

On the H200 every variant of the candidate's recipe spent its first 0.5 to 1 minute (260 to 510 steps) on a
plateau, on the toy prior's linear tasks too (``data/results/pretrain_bench/session29_plateau_*.json``). ``tabpfn``
initialises each attention's output projection and each MLP's second layer to zero, so the attention's query and
key weights get no gradient at the first step. This script trains the recipe shrunk to the CPU
(``pretrain_eval.PLATEAU_PROBE``) from each seed with each ``out_init_std`` (0: the zeros) for the same steps on
the same tables, and records the held-out loss every ``--eval-every`` steps. Runs ``--jobs`` probes at a time, one
CPU thread each (about 105 s per probe of 300 steps on this repository's 2-core machine).

Example (what made the shipped ``data/results/plateau_init_cpu.json``)::

    PYTHONHASHSEED=0 python scripts/plateau_init.py --stds 0 0.05 --seeds 0 1 2 --steps 300 --out data/results

At twice the rates on graph_scm's tables (``--set`` changes fields of the probe)::

    PYTHONHASHSEED=0 python scripts/plateau_init.py --stds 0 0.05 --seeds 0 1 2 --steps 600 --prior graph_scm \
        --set lr=0.0005 muon_lr=0.0025 --name plateau_init_graph_scm_lr2 --out data/results
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ttt_helpers.provenance import command_line, git_commit, write_provenance
from ttt_helpers.tabpfn import pretrain as pt
from ttt_helpers.tabpfn import pretrain_eval as pe


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stds", nargs="+", type=float, default=[0.0, 0.05])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--prior", default="toy")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="runs/plateau_init")
    p.add_argument("--name", default="plateau_init_cpu", help="the record's file name, without .json")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                   help="change fields of pretrain_eval.PLATEAU_PROBE (lr=0.0005 muon_lr=0.0025: twice the rates)")
    args = p.parse_args(argv)
    if any(s < 0 for s in args.stds):
        p.error("--stds must be non-negative")
    changes = pt.key_json(args.set)
    try:
        probe_config = pe.plateau_probe_config(changes)
    except ValueError as e:
        p.error(f"--set: {e}")
    commit = git_commit()  # before this run writes its own outputs into the tree
    jobs = list(itertools.product(args.stds, args.seeds))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(pe.plateau_probe, std, seed, args.steps, eval_every=args.eval_every, prior=args.prior,
                               changes=changes)
                   for std, seed in jobs]
        probes = [f.result() for f in futures]
    runs = [{"out_init_std": std, "seed": seed, **probe} for (std, seed), probe in zip(jobs, probes)]
    final = {f"std {r['out_init_std']:g}, seed {r['seed']}": r["curve"][-1][1] for r in runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name}.json"
    path.write_text(json.dumps({"probe": probe_config, "prior": args.prior, "steps": args.steps,
                                "eval_every": args.eval_every, "curve_columns": ["step", "val_loss", "val_acc"],
                                "runs": runs}, indent=1) + "\n")
    write_provenance(out / f"{args.name}.provenance.json", command=command_line(argv), commit=commit,
                     seeds=args.seeds, results={"held_out_loss_at_the_end": final}, files=[path])
    print(json.dumps(final), "->", path)
    return 0


if __name__ == "__main__":
    from ttt_helpers.tabpfn.pretrain import fix_hash_seed

    fix_hash_seed()  # a graph_scm probe's tables depend on string hashing (the toy prior's do not)
    sys.exit(main())
