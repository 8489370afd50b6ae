#!/usr/bin/env python
"""Pretrain the GPT-2 in-context learner on noisy linear regression: the command line of ttt_helpers.gpt2.train.

Tasks: x ~ N(0, I_d), beta ~ N(0, Sigma_pre) with Sigma_pre = decaying_covariance(d, ratio) (unit trace),
y = x^T beta + N(0, sigma^2); loss on every prediction of every prompt (Garg et al. 2022). The loop is
ttt_helpers.gpt2.Trainer: on a GPU with TF32, --amp bf16, --compile and fused AdamW; checkpoints in --ckpt-dir
every --ckpt-every steps and at the end (rerunning the same command resumes); with --time-budget-s the number
of steps is fixed after a short calibration (and kept by a resumed run).

Writes <out-dir>/gpt2_icl.pt (float16 state_dict + config) and <out-dir>/gpt2_icl.json (provenance: command,
commit, machine, date, seeds, final training loss, fixed-seed evaluation loss, tokens/s, MFU, sha256).

Example (what was run for the shipped model, see data/models/gpt2_icl.json for the exact command):
    python scripts/train_gpt2.py --time-budget-s 170 --batch 1024 --lr 1e-3 --warmup 300 --compile --amp bf16 \
        --bench-reference --bench-optimized-reference
CPU smoke test:
    python scripts/train_gpt2.py --steps 20 --batch 16 --n-embd 32 --n-layer 2 --n-head 2 --out-dir /tmp/m
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from ttt_helpers import gpt2 as G
from ttt_helpers.provenance import command_line, models_dir, write_provenance

MODEL_ARGS = ("d", "n_points", "n_embd", "n_layer", "n_head")
# TrainConfig fields set from the command line (defaults from TrainConfig), with their help where needed
TRAIN_ARGS = {"batch": None, "lr": None, "warmup": None, "weight_decay": None,
              "clip": "gradient-norm clipping (0: none)",
              "steps": "number of steps (else from --time-budget-s)", "time_budget_s": "wall-clock budget of the loop",
              "calib_steps": "steps timed to turn the budget into steps", "ckpt_every": None,
              "compile": "torch.compile the model", "amp": None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in MODEL_ARGS:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(G.GPT2ICLConfig, name))
    p.add_argument("--sigma", type=float, default=0.5, help="label-noise standard deviation")
    p.add_argument("--cov-ratio", type=float, default=30.0, help="condition number of Sigma_pre")
    for name, help in TRAIN_ARGS.items():
        flag, default = "--" + name.replace("_", "-"), getattr(G.TrainConfig, name)
        if name == "compile":
            p.add_argument(flag, action="store_true", help=help)
        elif name == "amp":
            p.add_argument(flag, choices=["bf16", "none"], default=default)
        else:
            kind = float if name in ("lr", "weight_decay", "clip", "time_budget_s") else int
            p.add_argument(flag, type=kind, default=default, help=help)
    p.add_argument("--seed", type=int, default=0, help="model initialisation; the data use seed + 1")
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--eval-prompts", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--ckpt-dir", default="/tmp/gpt2_icl_ckpt")
    p.add_argument("--out-dir", default=None, help="default: data/models")
    p.add_argument("--bench-reference", action="store_true",
                   help="also time the public codebase's reference setting (fp32 eager, batch 64, Adam)")
    p.add_argument("--bench-optimized-reference", action="store_true",
                   help="after training, time this script's GPU path on the public reference configuration")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(args.out_dir) if args.out_dir else models_dir()
    cfg = G.GPT2ICLConfig(**{name: getattr(args, name) for name in MODEL_ARGS})
    train_cfg = G.TrainConfig(**{name: getattr(args, name) for name in TRAIN_ARGS})
    Sigma = G.decaying_covariance(args.d, args.cov_ratio)
    _, dev_name = G.peak_flops(device)
    bench = {}
    if args.bench_reference:
        bench["this_model_fp32_eager_b64"] = G.benchmark_throughput(device, cfg)
        bench["public_reference_config_fp32_eager_b64"] = G.benchmark_throughput(device, G.PUBLIC_REFERENCE_CONFIG)
        print("reference (fp32 eager, batch 64, Adam):", json.dumps(bench), flush=True)

    model = G.new_scratch_model(cfg, args.seed, device)
    print(f"device {dev_name}; config {cfg}; params {G.count_parameters(model)}; flops/token "
          f"{G.flops_per_token(cfg):.3e}; tokens/step {train_cfg.batch * 2 * cfg.n_points}", flush=True)
    trainer = G.Trainer(model, train_cfg, sigma=args.sigma, Sigma_beta=Sigma, gen=args.seed + 1,
                        ckpt_path=Path(args.ckpt_dir) / "last.pt")
    state = trainer.run(progress=not args.no_progress)
    tps, mfu = trainer.tokens_per_s, G.mfu(trainer.tokens_per_s, cfg, device)
    print(f"trained {state['step']} steps in {state['train_time_s']:.1f} s; {tps or float('nan'):,.0f} tokens/s; "
          f"MFU {mfu if mfu is None else f'{mfu:.3%}'}; final train loss {trainer.final_train_loss:.4f}", flush=True)

    # ship float16 weights; evaluate the shipped weights in float32 (TF32 off) on a CPU-drawn fixed set
    task = {"sigma": args.sigma, "cov_ratio": args.cov_ratio}
    pt = G.save_fp16_checkpoint(model, out_dir / "gpt2_icl.pt", extra=task)
    torch.backends.cuda.matmul.allow_tf32 = False
    xs, ys = G.eval_dataset(args.eval_seed, args.eval_prompts, cfg, args.sigma, Sigma)
    per_n = G.eval_loss_per_position(G.load_gpt2_icl(pt, verify=False, device=device), xs, ys)
    print(f"fixed-seed evaluation loss of the shipped fp16 weights: {float(per_n.mean()):.4f} "
          f"(n = d: {float(per_n[cfg.d]):.4f}, n = 2d: {float(per_n[2 * cfg.d]):.4f})", flush=True)
    if "this_model_fp32_eager_b64" in bench and tps:
        bench["speedup_this_model_vs_fp32_eager_b64"] = tps / bench["this_model_fp32_eager_b64"]["tokens_per_s"]
    command = command_line(argv)
    prov = out_dir / "gpt2_icl.json"
    write_provenance(prov, command=os.environ.get("TTT_COMMAND", command), files=[pt],
                     **G.training_provenance(trainer, per_n, sigma=args.sigma, cov_ratio=args.cov_ratio,
                                             seeds={"init": args.seed, "data": args.seed + 1, "eval": args.eval_seed},
                                             eval_prompts=args.eval_prompts, benchmarks=bench, checkpoint=pt))
    print(f"wrote {pt} and {prov}", flush=True)
    if args.bench_optimized_reference:  # optional, after the model is safe on disk
        try:
            G.add_optimized_reference_benchmark(bench, device)
        except Exception as exc:  # the benchmark is optional; never lose the trained model to it
            print(f"optimized reference benchmark failed: {type(exc).__name__}: {exc}", flush=True)
        rec = json.loads(prov.read_text())
        rec["throughput"]["benchmarks"] = bench
        prov.write_text(json.dumps(rec, indent=2) + "\n")
        print("benchmarks:", json.dumps(bench), flush=True)


if __name__ == "__main__":
    main()
