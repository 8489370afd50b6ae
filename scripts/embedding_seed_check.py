#!/usr/bin/env python
"""How much the seed of a ``tabpfn_v2`` model's column embeddings moves its accuracy on the development tables.

A ``v2`` model draws its feature columns' embeddings from ``model.seed``; ``v2.6`` draws none. This script scores
the ``v2-muon`` weights of the resumed pretraining run (``data/models/tabpfn_pretrain_state_v2muon``) and the
shipped fallback (both ``v2``) with each seed, by one forward pass per development table
(:func:`ttt_helpers.tabpfn.pretrain_eval.eval_direct_by_seed`, CPU), and writes
``data/results/embedding_seed_check.json`` with its provenance. The pretraining appendix reads it and recomputes
one model and seed live.

Example (CPU, a few minutes)::

    PYTHONHASHSEED=0 python scripts/embedding_seed_check.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--out", default=None, help="output JSON (default data/results/embedding_seed_check.json)")
    args = p.parse_args(argv)

    from ttt_helpers.provenance import command_line, git_commit, models_dir, results_dir, write_provenance
    from ttt_helpers.tabpfn import checkpoints as tm
    from ttt_helpers.tabpfn import pretrain_eval as pe

    command, commit, t0 = command_line(argv), git_commit(), time.time()
    tables = pe.dev_splits(0)
    models = {"v2-muon, resumed run": pe.v2muon_state_model(),
              "fallback": tm.load_model(models_dir() / tm.V1_NAME)}  # v1, the fallback of the time
    accuracy, means = {}, {}
    for label, model in models.items():
        accuracy[label] = {str(s): acc for s, acc in pe.eval_direct_by_seed(model, tables, args.seeds).items()}
        means.update({f"{label}, seed {s}": round(sum(a.values()) / len(a), 4) for s, a in accuracy[label].items()})
        print({k: v for k, v in means.items() if k.startswith(label)}, flush=True)
    out = Path(args.out) if args.out else results_dir() / "embedding_seed_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "seeds": args.seeds, "device": "cpu", "development_split_seed": 0,
              "accuracy": accuracy,
              "models": {"v2-muon, resumed run": "data/models/tabpfn_pretrain_state_v2muon/state_model.pt",
                         "fallback": f"data/models/{tm.V1_NAME}"}}
    out.write_text(json.dumps(record, indent=1) + "\n")
    write_provenance(out.with_name(out.stem + ".provenance.json"), command=command, commit=commit,
                     seeds={"embedding_seeds": args.seeds, "development_split_seed": 0}, results=means,
                     files=[out], extra={"wall_seconds": round(time.time() - t0, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
