#!/usr/bin/env python
"""Checkpoints compared on the development tables only, by the selection rule fixed before the runs.

Each checkpoint named on the command line (the incumbent first) is scored by
:func:`ttt_helpers.tabpfn.pretrain_eval.dev_rule_score`: with 1,000 context rows and one ensemble member through
``tabpfn``, and at 2, 8 and 32 context rows without TTT (the Figure-3 pipeline). The rule, the one of
``scripts/interpolate_checkpoints.py``: the highest mean of the development accuracies at 8, 32 and 1,000 rows;
within 0.001 of the best, the one listed first (:func:`~ttt_helpers.tabpfn.pretrain_eval.choose_by_rule`).

``--ensembles`` also scores, with 1,000 context rows, ``tabpfn``'s default ensemble (``n_estimators="auto"``) on
each checkpoint and on all of them at once (``TabPFNClassifier(model_path=[...])``: ``tabpfn`` spreads the members
over the checkpoints). The second rule, fixed before the runs: the checkpoints together replace the chosen one's
ensemble only if their development accuracy is higher by more than 0.001.

The result (``--name``, default ``checkpoint_comparison``) and its provenance go into ``--out``, with each
checkpoint's sha256. Example (CPU, 2 cores: about 40 seconds per checkpoint, 2 minutes per ensemble)::

    python scripts/compare_checkpoints.py --model candidate=data/models/tabpfn_candidate.ckpt \\
        --model six_layer=runs/six/tabpfn_fallback.ckpt --ensembles
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from ttt_helpers.provenance import command_line, data_dir, git_commit, sha256_file, write_result
from ttt_helpers.tabpfn import pretrain_eval as pe


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                   help="a checkpoint, with its name in the result (repeatable; the incumbent first)")
    p.add_argument("--ensembles", action="store_true",
                   help="also the default ensemble of each checkpoint and of all of them together (1,000 rows)")
    pe.add_dev_rule_arguments(p)
    p.add_argument("--out", default=str(data_dir() / "results"))
    p.add_argument("--name", default="checkpoint_comparison")
    args = p.parse_args(argv)
    models = pe.named_checkpoints(p, args.model)
    pe.check_dev_rule_arguments(p, args)
    if args.ensembles and len(models) < 2:
        p.error("--ensembles needs at least two checkpoints")
    args.models = models
    return args


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    command, commit, t0 = command_line(argv), git_commit(), time.time()
    dev = pe.dev_splits(args.dev_seed, cache=args.dev_cache)
    result = {"command": command, "sizes": args.sizes, "reps": args.reps, "seed": args.seed, "dev_seed": args.dev_seed,
              "rule": pe.rule_description("the first listed"),
              "models": {}}
    for name, path in args.models.items():
        t = time.time()
        score = pe.dev_rule_score(path, dev, device=args.device, dev_seed=args.dev_seed, sizes=args.sizes,
                                  reps=args.reps, seed=args.seed, cache=args.dev_cache)
        result["models"][name] = {"path": path, "sha256": sha256_file(path), **score, "seconds": round(time.time() - t, 1)}
        print(f"{name}: {pe.format_rule_score(score)}", flush=True)
    chosen = pe.choose_by_rule(result["models"])
    result["chosen"] = chosen
    print(f"chosen: {chosen}", flush=True)
    if args.ensembles:
        ens = {}
        for name, path in [*args.models.items(), ("together", list(args.models.values()))]:
            t = time.time()
            per = pe.eval_real(path, dev, args.device, "auto", args.dev_seed)
            ens[name] = {"dev_1000_auto": pe.mean_accuracy(per), "dev_1000_auto_per_table": {k: round(v, 4) for k, v in per.items()},
                         "seconds": round(time.time() - t, 1)}
            print(f"default ensemble, {name}: {ens[name]['dev_1000_auto']:.4f}", flush=True)
        gain = round(ens["together"]["dev_1000_auto"] - ens[chosen]["dev_1000_auto"], 4)
        result["ensembles"] = {**ens, "together_minus_chosen": gain, "together_chosen": bool(gain > pe.RULE_TIE),
                               "rule": f"the checkpoints together replace the chosen one's default ensemble only if "
                                       f"higher by more than {pe.RULE_TIE} on the development tables"}
        print(f"together minus {chosen}: {gain:+.4f} -> {'together' if gain > pe.RULE_TIE else chosen}", flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    headline = {n: {"dev_1000_one_member": r["dev_1000_one_member"], "rule": r["rule"]} for n, r in result["models"].items()}
    if args.ensembles:
        headline["default_ensemble"] = {n: r["dev_1000_auto"] for n, r in ens.items()}
    write_result(args.out, args.name, result, command=command, commit=commit,
                 seeds={"seed": args.seed, "dev_seed": args.dev_seed}, results={"chosen": chosen, **headline})
    return 0


if __name__ == "__main__":
    sys.exit(main())
