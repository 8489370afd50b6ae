#!/usr/bin/env python
"""Pretrain the GPT-2 in-context learner (ttt_helpers.gpt2.GPT2ICL) on noisy linear regression.

Tasks: x ~ N(0, I_d), beta ~ N(0, Sigma_pre) with Sigma_pre = decaying_covariance(d, ratio) (unit trace),
y = x^T beta + N(0, sigma^2); loss on every prediction of every prompt (Garg et al. 2022).

GPU path: TF32 matmuls, bf16 autocast, torch.compile, fused AdamW, large batch, data sampled on the GPU from a
seeded torch.Generator. Checkpoints (fp32 weights, optimizer, generator state) go to --ckpt-dir every
--ckpt-every steps and at the end; rerunning the same command resumes from there. With --time-budget-s the
number of steps is fixed after a short calibration (and stored in the checkpoint, so a resumed run keeps it).

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
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from ttt_helpers import gpt2 as G
from ttt_helpers.provenance import write_provenance

PEAK_BF16_DENSE = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def peak_flops(device: torch.device) -> tuple[float, str]:
    """Dense bf16 peak of the accelerator (the MFU denominator) and the GPU's name."""
    if device.type != "cuda":
        return float("nan"), "cpu"
    name = torch.cuda.get_device_name(device)
    for key, val in PEAK_BF16_DENSE.items():
        if key in name:
            return val, name
    return float("nan"), name


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=10)
    p.add_argument("--n-points", type=int, default=41)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--sigma", type=float, default=0.5, help="label-noise standard deviation")
    p.add_argument("--cov-ratio", type=float, default=30.0, help="condition number of Sigma_pre")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=None, help="number of steps (else from --time-budget-s)")
    p.add_argument("--time-budget-s", type=float, default=None, help="wall-clock budget of the training loop")
    p.add_argument("--calib-steps", type=int, default=60, help="steps timed to turn the budget into steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--eval-prompts", type=int, default=512)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--amp", choices=["bf16", "none"], default="none")
    p.add_argument("--device", default="auto")
    p.add_argument("--ckpt-dir", default="/tmp/gpt2_icl_ckpt")
    p.add_argument("--ckpt-every", type=int, default=2000)
    p.add_argument("--out-dir", default=None, help="default: data/models")
    p.add_argument("--bench-reference", action="store_true",
                   help="also time the public codebase's reference setting (fp32 eager, batch 64, Adam)")
    p.add_argument("--bench-optimized-reference", action="store_true",
                   help="after training, time this script's GPU path on the public reference configuration")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: none)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def sample_batch(gen, args, root_T, device):
    """One training batch on ``device``: beta = z root^T with z ~ N(0, I) (as sample_beta_torch), then prompts."""
    beta = torch.randn(args.batch, args.d, generator=gen, device=device) @ root_T
    xs, ys = G.sample_regression(gen, beta, 1, args.n_points, args.sigma)
    return xs[:, 0], ys[:, 0]


def bench_reference(device, cfg: G.GPT2ICLConfig, batch=64, steps=40, warm=5, optimized=False) -> dict:
    """Training tokens/s of one setting.

    ``optimized=False``: the public codebase's setting (fp32 eager, TF32 off, ``torch.optim.Adam``).
    ``optimized=True``: this script's (TF32, bf16 autocast, ``torch.compile``, fused AdamW).
    """
    model = G.new_scratch_model(cfg, 0, device)
    if optimized:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        fwd = torch.compile(model)
        amp = torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        fwd = model
        amp = torch.autocast(device.type, enabled=False)
    gen = G.as_torch_generator(0, device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = optimized
    torch.backends.cudnn.allow_tf32 = optimized
    try:
        for i in range(warm + steps):
            if i == warm:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            beta = G.sample_beta_torch(gen, batch, cfg.d, None, device=device)
            xs, ys = G.sample_regression(gen, beta, 1, cfg.n_points, 0.0)
            with amp:
                pred = fwd(xs[:, 0], ys[:, 0])
            loss = ((pred.float() - ys[:, 0]) ** 2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    tps = steps * batch * 2 * cfg.n_points / dt
    peak, _ = peak_flops(device)
    return {"config": cfg.to_dict(), "batch": batch, "optimized": optimized, "tokens_per_s": tps,
            "mfu_bf16_peak": tps * G.flops_per_token(cfg) / peak if math.isfinite(peak) else None,
            "steps_timed": steps}


REFERENCE_CFG = G.GPT2ICLConfig(d=20, n_points=41, n_embd=256, n_layer=12, n_head=8)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(args.out_dir) if args.out_dir else None
    if out_dir is None:
        from ttt_helpers.provenance import models_dir
        out_dir = models_dir()
    ckpt_dir = Path(args.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / "last.pt"
    cfg = G.GPT2ICLConfig(d=args.d, n_points=args.n_points, n_embd=args.n_embd, n_layer=args.n_layer,
                          n_head=args.n_head)
    Sigma = G.decaying_covariance(args.d, args.cov_ratio)
    peak, dev_name = peak_flops(device)
    fpt = G.flops_per_token(cfg)
    tokens_per_step = args.batch * 2 * args.n_points
    print(f"device {dev_name}; config {cfg}; params {G.count_parameters(G.GPT2ICL(cfg))}; "
          f"flops/token {fpt:.3e}; tokens/step {tokens_per_step}", flush=True)

    reference = {}
    if args.bench_reference:
        reference["this_model_fp32_eager_b64"] = bench_reference(device, cfg)
        reference["public_reference_config_fp32_eager_b64"] = bench_reference(device, REFERENCE_CFG)
        print("reference (fp32 eager, batch 64, Adam):", json.dumps(reference), flush=True)

    model = G.new_scratch_model(cfg, args.seed, device)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=fused)
    gen = G.as_torch_generator(args.seed + 1, device)
    state = {"step": 0, "total_steps": args.steps, "history": [], "train_time_s": 0.0, "timed_tokens": 0,
             "timed_s": 0.0}
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"].cpu() if device.type == "cpu" else ck["gen"].cpu())
        state = ck["state"]
        if args.steps is not None:  # an explicit --steps extends (or fixes) the run
            state["total_steps"] = args.steps
        print(f"resumed from {ckpt_path} at step {state['step']} / {state['total_steps']}", flush=True)

    def save_ckpt():
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "state": state,
                    "args": vars(args)}, tmp)
        os.replace(tmp, ckpt_path)

    fwd = model
    if args.compile:
        fwd = torch.compile(model)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16"
           else torch.autocast(device.type, enabled=False))

    vals, vecs = torch.linalg.eigh(Sigma)
    root_T = (vecs * vals.clamp_min(0).sqrt()).T.to(device=device, dtype=torch.float32)

    def step_fn(lr):
        nonlocal fwd
        xs, ys = sample_batch(gen, args, root_T, device)
        try:
            with amp:
                pred = fwd(xs, ys)
            loss = ((pred.float() - ys) ** 2).mean()
            loss.backward()
        except Exception as exc:  # a compiler failure must not cost the run: fall back to eager
            if fwd is model:
                raise
            print(f"\ntorch.compile failed ({type(exc).__name__}: {exc}); continuing eagerly", flush=True)
            fwd = model
            args.compile = False
            opt.zero_grad(set_to_none=True)
            with amp:
                pred = fwd(xs, ys)
            loss = ((pred.float() - ys) ** 2).mean()
            loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip, foreach=True)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    t_start = time.perf_counter()
    used_before = state["train_time_s"]
    total = state["total_steps"]
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=state["step"], mininterval=2.0, dynamic_ncols=True)
    loss_acc, n_acc = torch.zeros((), device=device), 0
    t_mark, step_mark, n_session = None, None, 0
    warm_steps = 20  # compile and autotune happen here; not timed
    while total is None or state["step"] < total:
        s = state["step"]
        lr = args.lr * G.lr_factor(s, total or 10**9, args.warmup)
        loss_acc += step_fn(lr)
        n_acc += 1
        n_session += 1
        state["step"] = s + 1
        if t_mark is None and (n_session >= warm_steps or state["step"] == total):
            sync()
            t_mark, step_mark = time.perf_counter(), state["step"]
        if total is None and t_mark is not None and state["step"] - step_mark == args.calib_steps:
            sync()
            rate = args.calib_steps / (time.perf_counter() - t_mark)
            remaining = args.time_budget_s - (time.perf_counter() - t_start) - used_before
            total = state["total_steps"] = state["step"] + max(0, int(remaining * rate))
            print(f"\ncalibrated: {rate:.1f} steps/s -> total_steps {total}", flush=True)
            if bar is not None:
                bar.total = total
        if state["step"] % 100 == 0 or state["step"] == total:
            mean_loss = float(loss_acc) / n_acc
            state["history"].append([state["step"], mean_loss])
            loss_acc.zero_()
            n_acc = 0
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
        if bar is not None:
            bar.update(1)
        if state["step"] % args.ckpt_every == 0:
            save_ckpt()
        elapsed = time.perf_counter() - t_start + used_before
        if args.time_budget_s is not None and elapsed > 1.25 * args.time_budget_s:
            print(f"\nhard time limit reached at step {state['step']}; stopping early", flush=True)
            break
        if total is None and args.time_budget_s is None:
            raise SystemExit("give --steps or --time-budget-s")
    sync()
    t_end = time.perf_counter()
    if n_acc:
        state["history"].append([state["step"], float(loss_acc) / n_acc])
    if bar is not None:
        bar.close()
    if t_mark is not None and state["step"] > step_mark:
        state["timed_tokens"] += (state["step"] - step_mark) * tokens_per_step
        state["timed_s"] += t_end - t_mark
    state["train_time_s"] = used_before + (t_end - t_start)
    save_ckpt()

    tokens_per_s = state["timed_tokens"] / state["timed_s"] if state["timed_s"] else None
    mfu = tokens_per_s * fpt / peak if (tokens_per_s and math.isfinite(peak)) else None
    final_loss = sum(h[1] for h in state["history"][-5:]) / max(1, len(state["history"][-5:]))  # last ~500 steps
    print(f"trained {state['step']} steps in {state['train_time_s']:.1f} s; {tokens_per_s or float('nan'):,.0f} tokens/s; "
          f"MFU {mfu if mfu is None else f'{mfu:.3%}'} of {peak / 1e12:.0f} TFLOP/s; "
          f"final train loss {final_loss:.4f}", flush=True)

    # ship float16 weights; evaluate the shipped weights in float32 (TF32 off) on a CPU-drawn fixed set
    pt = G.save_fp16_checkpoint(model, out_dir / "gpt2_icl.pt", extra={"sigma": args.sigma, "cov_ratio": args.cov_ratio})
    shipped = G.load_gpt2_icl(pt, verify=False, device=device)
    torch.backends.cuda.matmul.allow_tf32 = False
    xs, ys = G.eval_dataset(args.eval_seed, args.eval_prompts, cfg, args.sigma, Sigma)
    with torch.no_grad():
        per_n = torch.cat([((shipped(xs[i:i + 256].to(device), ys[i:i + 256].to(device)) - ys[i:i + 256].to(device)) ** 2)
                           for i in range(0, xs.shape[0], 256)]).mean(0).double().cpu()
    eval_loss = float(per_n.mean())
    print(f"fixed-seed evaluation loss of the shipped fp16 weights: {eval_loss:.4f} "
          f"(n = d: {float(per_n[args.d]):.4f}, n = 2d: {float(per_n[2 * args.d]):.4f})", flush=True)
    size_mb = pt.stat().st_size / 1e6
    if "this_model_fp32_eager_b64" in reference and tokens_per_s:
        reference["speedup_this_model_vs_fp32_eager_b64"] = tokens_per_s / reference["this_model_fp32_eager_b64"]["tokens_per_s"]
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    write_provenance(
        out_dir / "gpt2_icl.json",
        command=os.environ.get("TTT_COMMAND", command),
        seeds={"init": args.seed, "data": args.seed + 1, "eval": args.eval_seed},
        results={
            "final_train_loss": final_loss,
            "eval_loss_in_distribution": eval_loss,
            "eval_loss_at_n": {str(n): float(per_n[n]) for n in (0, args.d // 2, args.d, 2 * args.d, args.n_points - 1)},
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
        },
        files=[pt],
        extra={
            "config": cfg.to_dict(),
            "task": {"sigma": args.sigma, "cov_ratio": args.cov_ratio, "Sigma_x": "identity",
                     "Sigma_pre": "decaying_covariance(d, cov_ratio) (diagonal, unit trace)"},
            "evaluation": {"seed": args.eval_seed, "prompts": args.eval_prompts,
                           "how": "ttt_helpers.gpt2.eval_dataset on the CPU; fp16 weights loaded into float32; "
                                  "mean squared error over all positions (context lengths 0..N-1)"},
            "training": {"steps": state["step"], "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
                         "schedule": "linear warm-up, cosine to 10%", "optimizer": f"AdamW(fused={fused})",
                         "weight_decay": args.weight_decay, "amp": args.amp, "compile": args.compile,
                         "grad_clip_norm": args.clip,
                         "wall_s": state["train_time_s"], "tokens": state["step"] * tokens_per_step,
                         "loss_history": state["history"]},
            "throughput": {"tokens_per_s": tokens_per_s, "mfu": mfu, "flops_per_token": fpt,
                           "peak_flops": peak if math.isfinite(peak) else None, "peak_note": "dense bf16 peak of the GPU (H100 SXM: 989.4 TFLOP/s)",
                           "device": dev_name, "timed_steps_exclude_first": warm_steps,
                           "benchmarks": reference},
            "checkpoint_mb": size_mb,
        },
    )
    print(f"wrote {pt} ({size_mb:.2f} MB) and {out_dir / 'gpt2_icl.json'}", flush=True)

    # optional, after the model is safe on disk: this script's GPU path on the public reference configuration
    if args.bench_optimized_reference:
        try:
            reference["public_reference_config_this_script_b512"] = bench_reference(
                device, REFERENCE_CFG, batch=512, steps=60, warm=10, optimized=True)
            r = reference
            print("optimized path on the reference configuration:", json.dumps(r["public_reference_config_this_script_b512"]),
                  flush=True)
            if "public_reference_config_fp32_eager_b64" in r:
                ratio = (r["public_reference_config_this_script_b512"]["tokens_per_s"]
                         / r["public_reference_config_fp32_eager_b64"]["tokens_per_s"])
                reference["speedup_on_reference_config"] = ratio
                print(f"speed-up on the reference configuration: {ratio:.1f}x", flush=True)
        except Exception as exc:  # the benchmark is optional; never lose the trained model to it
            print(f"optimized reference benchmark failed: {type(exc).__name__}: {exc}", flush=True)
        prov_path = out_dir / "gpt2_icl.json"
        rec = json.loads(prov_path.read_text())
        rec["throughput"]["benchmarks"] = reference
        prov_path.write_text(json.dumps(rec, indent=2) + "\n")


if __name__ == "__main__":
    main()
