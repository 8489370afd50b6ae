#!/usr/bin/env python
"""Full-size test-time-training experiment with the pretrained GPT-2 in-context learner (Figure 2c analogue).

The command line of ttt_helpers.gpt2.TTTExperiment: for each covariance shift theta, each number k of TTT
queries, each start (the shipped pretrained model, or the same architecture at random init = "scratch"), each
optimizer (AdamW, plain SGD) and learning rate of a grid, T target tasks are test-time trained in parallel
(ttt_helpers.gpt2.test_time_train) and evaluated on fresh prompts after every step; the first --n-val tasks
choose the learning rate (ttt_helpers.gpt2.best_ttt_curve). Runs go in priority order (theta = pi/2 first) and
the JSON is rewritten after each, so a --time-budget-s cut still leaves a valid file (with "completed": false).
Also writes the in-distribution ICL curve of the model against least squares, averaging, 3-NN and Bayes ridge.

Outputs: <out> (default data/results/gpt2_ttt_full.json) and <out stem>.provenance.json.
The shipped file came from two GPU calls (see its provenance, "earlier_runs"): a first one cut by its time
budget after 161 of 198 cells, then a --resume that finished them and widened the learning-rate grids:
    python scripts/gpt2_ttt_experiment.py --model data/models/gpt2_icl.pt --amp bf16 --time-budget-s 226 \
        --lrs-adamw 3e-5,1e-4,3e-4,1e-3,3e-3 --lrs-sgd 3e-3,1e-2,3e-2,1e-1,3e-1,1
    python scripts/gpt2_ttt_experiment.py --model data/models/gpt2_icl.pt --amp bf16 --time-budget-s 230 \
        --resume data/results/gpt2_ttt_full.json \
        --lrs-adamw 1e-5,3e-5,1e-4,3e-4,1e-3,3e-3 --lrs-sgd 1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1,3e-1,1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ttt_helpers import gpt2 as G
from ttt_helpers.provenance import command_line, models_dir, read_provenance, results_dir, write_provenance

EXPERIMENT_ARGS = ("n_context", "steps", "tasks", "n_val", "n_eval", "seed")  # TTTExperiment's, same defaults
LRS = {"adamw": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3], "sgd": [1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: data/models/gpt2_icl.pt")
    p.add_argument("--out", default=None, help="default: data/results/gpt2_ttt_full.json")
    p.add_argument("--thetas", default="1.5707963267948966,0,0.7853981633974483")
    p.add_argument("--ks", default="8,32,128")
    for name in EXPERIMENT_ARGS:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(G.TTTExperiment, name))
    p.add_argument("--curve-prompts", type=int, default=8192)
    p.add_argument("--scratch-seed", type=int, default=7)
    for opt in G.OPTIMIZERS:
        p.add_argument(f"--lrs-{opt}", default=",".join(map(str, LRS[opt])))
    p.add_argument("--time-budget-s", type=float, default=None)
    p.add_argument("--amp", choices=["bf16", "none"], default="none")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the model")
    p.add_argument("--resume", default=None,
                   help="an earlier output of this script: keep its records and ICL curve, run only the missing "
                        "(theta, k, start, optimizer, lr) cells; the learning-rate grids are merged")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    model_path = Path(args.model) if args.model else models_dir() / "gpt2_icl.pt"
    out = Path(args.out) if args.out else results_dir() / "gpt2_ttt_full.json"
    starts = {"pretrained": G.load_gpt2_icl(model_path, verify=not args.no_verify, device=device)}
    prov = read_provenance(model_path.with_suffix(".json"))
    sigma, ratio, sha = prov["task"]["sigma"], prov["task"]["cov_ratio"], prov["files"][model_path.name]
    cfg = starts["pretrained"].config
    S_pre = G.decaying_covariance(cfg.d, ratio)
    starts["scratch"] = G.new_scratch_model(cfg, args.scratch_seed, device).eval()
    lrs = {opt: [float(x) for x in getattr(args, f"lrs_{opt}").split(",")] for opt in G.OPTIMIZERS}
    earlier = json.loads(Path(args.resume).read_text()) if args.resume else None
    if earlier is not None:
        if earlier["model_sha256"] != sha:
            raise ValueError("--resume: the earlier results were made with a different model")
        lrs = {opt: sorted(set(lrs[opt]) | set(earlier["lrs"][opt])) for opt in lrs}
        curve = {k: np.asarray(v) for k, v in earlier["icl_curve"].items()}
    else:  # in-distribution ICL curve (CPU-drawn prompts; model in float32 with TF32 off)
        torch.backends.cuda.matmul.allow_tf32 = False
        xs, ys = G.eval_dataset(args.seed, args.curve_prompts, cfg, sigma, S_pre)
        curve = G.icl_curve(starts["pretrained"], xs, ys, Sigma_beta=S_pre, sigma=sigma)
        torch.backends.cuda.matmul.allow_tf32 = device.type == "cuda"
    at = [cfg.d // 2, cfg.d, 2 * cfg.d, cfg.n_points - 1]
    print("ICL curve at n = d/2, d, 2d, N-1:", {k: np.round(v[at], 4).tolist() for k, v in curve.items() if k != "n"})
    exp = G.TTTExperiment(thetas=[float(t) for t in args.thetas.split(",")], ks=[int(k) for k in args.ks.split(",")],
                          lrs=lrs, **{f: getattr(args, f) for f in EXPERIMENT_ARGS})
    record = {
        "description": "TTT of the pretrained GPT-2 ICL model vs the same architecture from scratch, "
                       "under a rotated task covariance; losses are MSE on noisy labels (floor sigma^2)",
        "model": str(model_path.name), "model_sha256": sha, "config": cfg.to_dict(), "sigma": sigma,
        "cov_ratio": ratio, "n_context": exp.n_context, "steps": exp.steps, "tasks": exp.tasks, "n_val": exp.n_val,
        "n_eval": exp.n_eval, "amp": args.amp, "lrs": lrs, "ks": list(exp.ks), "thetas": list(exp.thetas),
        "ttt_loss": "mean over the k queries of the squared error; full batch; AdamW(betas 0.9, 0.999, wd 0) / SGD",
        "icl_curve": {k: np.asarray(v).tolist() for k, v in curve.items()},
        "icl_curve_prompts": earlier["icl_curve_prompts"] if earlier else args.curve_prompts,
        "alignment": dict(earlier["alignment"]) if earlier else {}, "ttt": list(earlier["ttt"]) if earlier else [],
        "completed": False,
    }

    def dump():
        record["elapsed_s"] = time.perf_counter() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".tmp").write_text(json.dumps(record) + "\n")
        os.replace(out.with_suffix(".tmp"), out)

    dump()
    done = {exp.cell_key(r["theta"], r["k"], r["init"], r["optimizer"], r["lr"]) for r in record["ttt"]}
    cells = exp.cells(done)
    from tqdm import tqdm

    for i, cell in enumerate(tqdm(cells, mininterval=5.0)):
        if args.time_budget_s is not None and time.perf_counter() - t0 > args.time_budget_s:
            print(f"time budget reached after {i} of {len(cells)} runs", flush=True)
            break
        record["alignment"][f"{cell[0]:.6f}"] = G.covariance_alignment(S_pre, G.rotated_covariance(S_pre, cell[0]))
        record["ttt"].append(exp.run_cell(starts[cell[2]], S_pre, sigma, cell,
                                          autocast_dtype=torch.bfloat16 if args.amp == "bf16" else None))
        dump()
    else:
        record["completed"] = True
    dump()
    head = exp.headline(record["ttt"])
    for key, h in head.items():
        print(f"theta={exp.thetas[0]:.3f} {key}: lr={h['lr']:.0e}: no TTT {h['step0']:.4f}  1 step {h['step1']:.4f}  "
              f"{exp.steps} steps {h['final']:.4f}", flush=True)
    command = command_line(argv)
    extra = None
    old_prov = Path(args.resume).with_name(Path(args.resume).stem + ".provenance.json") if args.resume else None
    if old_prov is not None and old_prov.exists():
        old = read_provenance(old_prov)
        extra = {"earlier_runs": old.get("earlier_runs", []) + [
            {k: old.get(k) for k in ("command", "git_commit", "machine", "date_utc", "results")}]}
    n2d = 2 * cfg.d
    write_provenance(out.with_name(out.stem + ".provenance.json"), extra=extra,
                     command=os.environ.get("TTT_COMMAND", command),
                     seeds={"tasks_and_data": args.seed, "scratch_init": args.scratch_seed},
                     results={"completed": record["completed"], "runs": len(record["ttt"]),
                              "elapsed_s": record["elapsed_s"], "largest_shift": head,
                              "icl_at_2d": {k: float(np.asarray(v)[n2d]) for k, v in curve.items() if k != "n"}},
                     files=[out])
    print(f"wrote {out} ({len(record['ttt'])} runs, {record['elapsed_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
