#!/usr/bin/env python
"""How fast tabicl's prior makes tables, on the CPU (one process) and on the GPU (``PriorDataset(device="cuda")``).

Pretraining is fed by DataLoader workers that run the prior on the CPU (:func:`ttt_helpers.tabpfn.pretrain.make_prior`,
whose ``device`` is ``"cpu"`` by default); batches of 32 tables instead of 8 made the prior the bottleneck again
(``data/results/pretrain_bench/session20_variants.json``). tabicl can also generate on the GPU. This script times
both for the stage of the candidate's recipe (800 to 1,200 rows, up to 32 features, up to 10 classes) and records
tables per second, per prior and batch size, so that the choice between them is measured, not guessed.

Example (GPU machine; the device tool's wheels for tabpfn, tabicl and xgboost installed)::

    PYTHONHASHSEED=0 python scripts/prior_throughput.py --devices cpu cuda --batches 8 32 128 --cpu-batches 8 32 --out $OUT/prior_throughput.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--priors", nargs="*", default=["graph_scm"])
    p.add_argument("--devices", nargs="*", default=["cpu"])
    p.add_argument("--batches", nargs="*", type=int, default=[8, 32])
    p.add_argument("--cpu-batches", nargs="*", type=int, default=None, help="batch sizes on the CPU (default --batches)")
    p.add_argument("--repeats", type=int, default=5, help="timed batches per setting (after one warm-up batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from ttt_helpers.provenance import command_line, git_commit, results_dir, write_provenance
    from ttt_helpers.tabpfn import pretrain as pt

    command, commit = command_line(argv), git_commit()
    stage = dict(pt.recipe("v2.6-muon").curriculum[-1])
    rows, t_start = [], time.time()
    for prior in args.priors:
        for device in args.devices:
            for batch in (args.cpu_batches or args.batches) if device == "cpu" else args.batches:
                np.random.seed(args.seed)
                torch.manual_seed(args.seed)
                row = {"prior": prior, "device": device, "batch": batch}
                try:
                    ds = pt.make_prior(dict(stage, batch=batch), prior, device=device)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ds.get_batch()  # warm-up
                        if device == "cuda":
                            torch.cuda.synchronize()
                        times = []
                        for _ in range(args.repeats):
                            t0 = time.perf_counter()
                            ds.get_batch()
                            if device == "cuda":
                                torch.cuda.synchronize()
                            times.append(time.perf_counter() - t0)
                    row.update(seconds_per_batch=[round(t, 4) for t in times],
                               tables_per_second=round(batch * len(times) / sum(times), 2))
                except Exception as e:  # noqa: BLE001 - a prior that cannot run on a device is a result too
                    row["error"] = repr(e)[:400]
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out) if args.out else results_dir() / "prior_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "stage": stage, "repeats": args.repeats, "seed": args.seed, "rows": rows,
              "note": "one process, no DataLoader workers; CPU rows with torch's default number of threads "
                      f"({torch.get_num_threads()})"}
    out.write_text(json.dumps(record, indent=1) + "\n")
    write_provenance(out.with_name(out.stem + ".provenance.json"), command=command, commit=commit,
                     seeds={"seed": args.seed},
                     results={f"{r['prior']} {r['device']} batch {r['batch']}": r.get("tables_per_second", r.get("error"))
                              for r in rows},
                     files=[out], extra={"wall_seconds": round(time.time() - t_start, 1)})
    return 0


if __name__ == "__main__":
    from ttt_helpers.tabpfn.pretrain import fix_hash_seed

    fix_hash_seed()  # graph_scm's tables depend on string hashing (here, before main: it replaces the process)
    raise SystemExit(main())
