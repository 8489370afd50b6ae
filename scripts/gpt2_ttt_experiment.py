#!/usr/bin/env python
"""Full-size test-time-training experiment with the pretrained GPT-2 in-context learner (Figure 2c analogue).

For each covariance shift theta (target tasks beta ~ N(0, R_theta Sigma_pre R_theta^T)), each number k of TTT
queries, each start (the shipped pretrained model, or the same architecture at random init = "scratch") and each
optimizer (AdamW, plain SGD) and learning rate of a grid, T target tasks are test-time trained in parallel
(ttt_helpers.gpt2.test_time_train: one context of n pairs shared by k queries; 1..steps full-batch steps) and
evaluated on fresh prompts of the same task after every step. The first --n-val tasks choose the learning rate
(ttt_helpers.gpt2.best_ttt_curve); the others report it. Runs go in priority order (theta = pi/2 first) and the
JSON is rewritten after each, so a --time-budget-s cut still leaves a valid file (with "completed": false).

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
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ttt_helpers import gpt2 as G
from ttt_helpers.provenance import read_provenance, write_provenance

LRS = {"adamw": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3], "sgd": [1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: data/models/gpt2_icl.pt")
    p.add_argument("--out", default=None, help="default: data/results/gpt2_ttt_full.json")
    p.add_argument("--thetas", default="1.5707963267948966,0,0.7853981633974483")
    p.add_argument("--ks", default="8,32,128")
    p.add_argument("--n-context", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--n-eval", type=int, default=64)
    p.add_argument("--curve-prompts", type=int, default=8192)
    p.add_argument("--scratch-seed", type=int, default=7)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--lrs-adamw", default=",".join(map(str, LRS["adamw"])))
    p.add_argument("--lrs-sgd", default=",".join(map(str, LRS["sgd"])))
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
    from ttt_helpers.provenance import models_dir, results_dir

    model_path = Path(args.model) if args.model else models_dir() / "gpt2_icl.pt"
    out = Path(args.out) if args.out else results_dir() / "gpt2_ttt_full.json"
    model = G.load_gpt2_icl(model_path, verify=not args.no_verify, device=device)
    prov = read_provenance(model_path.with_suffix(".json"))
    sigma, ratio = prov["task"]["sigma"], prov["task"]["cov_ratio"]
    cfg = model.config
    S_pre = G.decaying_covariance(cfg.d, ratio)
    scratch = G.new_scratch_model(cfg, args.scratch_seed, device).eval()
    amp = torch.bfloat16 if args.amp == "bf16" else None
    thetas = [float(t) for t in args.thetas.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    lrs = {"adamw": [float(x) for x in args.lrs_adamw.split(",")], "sgd": [float(x) for x in args.lrs_sgd.split(",")]}

    earlier = None
    if args.resume:
        earlier = json.loads(Path(args.resume).read_text())
        if earlier["model_sha256"] != prov["files"][model_path.name]:
            raise ValueError("--resume: the earlier results were made with a different model")
        for opt in lrs:
            lrs[opt] = sorted(set(lrs[opt]) | set(earlier["lrs"][opt]))
        curve = {k: np.asarray(v) for k, v in earlier["icl_curve"].items()}
    else:
        # in-distribution ICL curve (CPU-drawn prompts; model in float32 with TF32 off)
        torch.backends.cuda.matmul.allow_tf32 = False
        xs, ys = G.eval_dataset(args.seed, args.curve_prompts, cfg, sigma, S_pre)
        curve = G.icl_curve(model, xs, ys, Sigma_beta=S_pre, sigma=sigma)
        torch.backends.cuda.matmul.allow_tf32 = device.type == "cuda"
    n2d = 2 * cfg.d
    print("ICL curve at n = d/2, d, 2d, 4d:", {k: np.round(v[[cfg.d // 2, cfg.d, n2d, cfg.n_points - 1]], 4).tolist()
                                               for k, v in curve.items() if k != "n"}, flush=True)

    record = {
        "description": "TTT of the pretrained GPT-2 ICL model vs the same architecture from scratch, "
                       "under a rotated task covariance; losses are MSE on noisy labels (floor sigma^2)",
        "model": str(model_path.name), "model_sha256": prov["files"][model_path.name],
        "config": cfg.to_dict(), "sigma": sigma, "cov_ratio": ratio,
        "n_context": args.n_context, "steps": args.steps, "tasks": args.tasks, "n_val": args.n_val,
        "n_eval": args.n_eval, "amp": args.amp, "lrs": lrs, "ks": ks, "thetas": thetas,
        "ttt_loss": "mean over the k queries of the squared error; full batch; AdamW(betas 0.9, 0.999, wd 0) / SGD",
        "icl_curve": {k: np.asarray(v).tolist() for k, v in curve.items()},
        "icl_curve_prompts": args.curve_prompts,
        "alignment": {}, "ttt": [], "completed": False,
    }
    done = set()
    if earlier is not None:
        record["icl_curve_prompts"] = earlier["icl_curve_prompts"]
        record["alignment"] = earlier["alignment"]
        record["ttt"] = list(earlier["ttt"])
        done = {(round(r["theta"], 9), r["k"], r["init"], r["optimizer"], r["lr"]) for r in earlier["ttt"]}

    def dump():
        record["elapsed_s"] = time.perf_counter() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, out)

    dump()
    stop = False
    from tqdm import tqdm

    jobs = [(th, k, init, opt, lr) for th in thetas for k in ks for init in ("pretrained", "scratch")
            for opt in ("adamw", "sgd") for lr in lrs[opt] if (round(th, 9), k, init, opt, lr) not in done]
    for i, (th, k, init, opt, lr) in enumerate(tqdm(jobs, mininterval=5.0)):
        if args.time_budget_s is not None and time.perf_counter() - t0 > args.time_budget_s:
            print(f"time budget reached after {i} of {len(jobs)} runs", flush=True)
            stop = True
            break
        S_t = G.rotated_covariance(S_pre, th)
        record["alignment"][f"{th:.6f}"] = G.covariance_alignment(S_pre, S_t)
        seed = args.seed + 1000 * thetas.index(th)
        beta = G.sample_beta_torch(seed, args.tasks, cfg.d, S_t).to(device)  # CPU-drawn tasks, same everywhere
        gen = G.as_torch_generator(seed + 17 * k + 1, device)  # same TTT data for every start/optimizer/lr
        losses = G.test_time_train(model if init == "pretrained" else scratch, beta,
                                   n_context=args.n_context, k=k, steps=args.steps, optimizer=opt, lr=lr, gen=gen,
                                   sigma=sigma, n_eval=args.n_eval, autocast_dtype=amp).double().numpy()
        val, test = losses[:, :args.n_val], losses[:, args.n_val:]
        record["ttt"].append({
            "theta": th, "k": k, "init": init, "optimizer": opt, "lr": lr,
            "val_mean": np.where(np.isfinite(val.mean(1)), val.mean(1), None).tolist(),
            "test_mean": np.where(np.isfinite(test.mean(1)), test.mean(1), None).tolist(),
            "test_sem": np.where(np.isfinite(test.std(1)), test.std(1, ddof=1) / math.sqrt(test.shape[1]), None).tolist(),
        })
        dump()
    record["completed"] = not stop
    dump()

    # headline: chosen learning rates at the largest shift
    head = {}
    for k in ks:
        for init in ("pretrained", "scratch"):
            for opt in ("adamw", "sgd"):
                try:
                    r = G.best_ttt_curve(record["ttt"], theta=thetas[0], k=k, init=init, optimizer=opt)
                except ValueError:
                    continue
                head[f"k={k},{init},{opt}"] = {"lr": r["lr"], "step0": r["test_mean"][0], "step1": r["test_mean"][1],
                                               "final": r["test_mean"][-1]}
                print(f"theta={thetas[0]:.3f} k={k:4d} {init:10s} {opt:5s} lr={r['lr']:.0e}: "
                      f"no TTT {r['test_mean'][0]:.4f}  1 step {r['test_mean'][1]:.4f}  "
                      f"{args.steps} steps {r['test_mean'][-1]:.4f}", flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    extra = None
    if args.resume:
        old_prov = Path(args.resume).with_name(Path(args.resume).stem + ".provenance.json")
        if old_prov.exists():
            old = read_provenance(old_prov)
            extra = {"earlier_runs": old.get("earlier_runs", []) + [
                {k: old.get(k) for k in ("command", "git_commit", "machine", "date_utc", "results")}]}
    write_provenance(
        out.with_name(out.stem + ".provenance.json"),
        extra=extra,
        command=os.environ.get("TTT_COMMAND", command),
        seeds={"tasks_and_data": args.seed, "scratch_init": args.scratch_seed},
        results={"completed": record["completed"], "runs": len(record["ttt"]), "elapsed_s": record["elapsed_s"],
                 "largest_shift": head,
                 "icl_at_2d": {k: float(np.asarray(v)[n2d]) for k, v in curve.items() if k != "n"}},
        files=[out],
    )
    print(f"wrote {out} ({len(record['ttt'])} runs, {record['elapsed_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
