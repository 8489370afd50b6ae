#!/usr/bin/env python
"""Where a pretraining step's time goes: the candidate's recipe on synthetic tables, variant by variant.

The candidate's 2.4-minute run took 96 ms per step (8 tables of 800 to 1,200 rows, 2.75 M parameters), while a
count of its arithmetic (about 3 TFLOP per step, forward and backward) puts the floor near 10 to 20 ms on an H200.
This script times one training step of :func:`ttt_helpers.tabpfn.pretrain.recipe` ``("v2.6-muon")`` in pieces
and in variants, so that a change to the loop is chosen on a measurement:

* ``trainer``: what :meth:`Trainer._train_step` does, through the same function
  (:func:`ttt_helpers.tabpfn.pretrain.trainer.optimise`: bf16 autocast, ``no_cudnn`` attention, fused AdamW plus
  ``torch.optim.Muon``, gradient clipping), timed from a synchronised device to a synchronised device (until
  stop 38 it also read the loss, as the loop's logging then did at every step);
* ``fwd_bwd``: forward and backward only; ``forward``: forward only, without gradients;
* ``adamw_only``: AdamW on every weight (Muon's Newton-Schulz iterations left out);
* ``batch16``: 16 tables per step instead of 8;
* ``trainer_async``: the ``trainer`` step timed over all steps at once, so the CPU queues a step while the GPU
  still runs the one before;
* ``compiled``: the model under ``torch.compile`` (on this repository's CPU torch, ``dynamic=True`` failed in
  inductor's shape reasoning after 215 s of compiling);
* ``compiled_graphs``: the model under ``torch.compile(mode="reduce-overhead")``, which on a GPU replays the
  forward and backward passes as CUDA graphs (one launch each instead of one per kernel). A graph holds one shape:
  time it with one table length (``--rows 1000``), as a test of whether a step of the recipe is bound by the host's
  kernel launches (the pretraining appendix: 200- to 400-row tables shortened a step by at most a quarter).

With ``--loop-seconds S`` it then runs the real training loop (:class:`~ttt_helpers.tabpfn.pretrain.Trainer`, the
prior's worker processes included) for ``S`` training seconds and times its phases (the next prior batch, the task
on the device, the training step, the logging), with the device synchronised at each phase's ends, so that what
the loop adds to the bare step is attributed to a phase; then runs it again as it trains (no synchronisation) for its
own ms per step.

Tables are random normal features and random labels of the prior's shapes (the arithmetic does not depend on the
values); the table lengths rotate over four sizes, so a variant that recompiles for every shape shows it. A
profile of the ``trainer`` variant (``torch.profiler``) gives the GPU's busy time per step and the top kernels.

Example (GPU machine; the device tool's wheels installed)::

    PYTHONHASHSEED=0 python scripts/step_profile.py --device cuda --out $OUT/step_profile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

VARIANTS = ("trainer", "trainer_async", "fwd_bwd", "forward", "adamw_only", "batch16", "compiled", "compiled_graphs")


def synthetic_batch(gen, B: int, T: int, C: int, max_classes: int):
    """A prior-shaped batch ``(X[B,T,C], y[B,T], d, seq_lens, train_sizes)`` with a context of half the rows."""
    import torch

    X = torch.randn(B, T, C, generator=gen)
    y = torch.randint(0, max_classes, (B, T), generator=gen).float()
    d = torch.full((B,), C)
    return X, y, d, torch.full((B,), T), torch.full((B,), T // 2)


def device_kernel_us(events) -> float:
    """The device time of ``events`` (a profiler's ``key_averages()``) summed over kernels and copies, as torch's own
    table footer ("Self CUDA time total") sums it: device events that are not user annotations. An annotation
    (``record_function`` ranges, the optimisers' step among them) spans kernels already counted, so counting it too
    overstated the kernel time (the shipped ``step_profile.json`` of 2026-12 has 92.95 ms per step where its own
    table says 296.676 ms for 6 steps, 49.4 ms)."""
    devices = ("CUDA", "PrivateUse1", "MTIA", "XPU")
    return float(sum(e.self_device_time_total for e in events
                     if e.device_type.name in devices and not getattr(e, "is_user_annotation", False)))


def loop_phases(cfg, seconds: float, sync, timed: bool = True) -> dict:
    """Train ``cfg`` for ``seconds`` training seconds in :class:`Trainer` (no evaluations) and time each phase of
    its loop: ``{"steps", "ms_per_step" (the loop's own clock), "phases_ms": {phase: median ms per step},
    "phases_mean_ms": {phase: mean}, "data_wait_fraction"}``. The device is synchronised before and after each
    phase. With ``timed=False`` the loop runs as it is (no synchronisation, no phases): its own ms per step."""
    import tempfile
    from collections import defaultdict

    import torch

    import ttt_helpers.tabpfn.pretrain.trainer as trainer_module
    from ttt_helpers.tabpfn import pretrain as pt

    times = defaultdict(list)

    def timed_phase(name, fn):
        def wrapper(*a, **k):
            sync()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            sync()
            times[name].append(time.perf_counter() - t0)
            return out
        return wrapper

    original_to_task = trainer_module.to_task
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pt.Trainer(cfg, out_dir=tmp, log=lambda s: None)
        if timed:
            for name in ("_next_batch", "_train_step", "_log_window"):
                setattr(trainer, name, timed_phase(name.strip("_"), getattr(trainer, name)))
            trainer_module.to_task = timed_phase("to_task", original_to_task)
        try:
            trainer.run(seconds)
        finally:
            trainer_module.to_task = original_to_task
        steps, train_s = trainer.meta["step"], trainer.meta["train_seconds"]
        return {"seconds": seconds, "steps": steps, "ms_per_step": round(1000 * train_s / max(steps, 1), 2),
                "phases_ms": {k: round(1000 * statistics.median(v), 2) for k, v in times.items()},
                "phases_mean_ms": {k: round(1000 * statistics.mean(v), 2) for k, v in times.items()},
                "main_threads": torch.get_num_threads(), "workers": cfg.workers,
                "data_wait_fraction": round(trainer.data_wait / max(train_s, 1e-9), 4)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant (after --warmup steps)")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--rows", nargs="*", type=int, default=[800, 950, 1100, 1200], help="table lengths, in rotation")
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--profile-steps", type=int, default=6, help="steps of the trainer variant under torch.profiler")
    p.add_argument("--loop-seconds", type=float, default=0.0,
                   help="then run the real training loop for so many training seconds, phase by phase (0: no)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                   help="override fields of the recipe, e.g. emsize=16 nlayers=1 (smoke tests)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch

    from ttt_helpers.provenance import command_line, git_commit, results_dir, write_provenance
    from ttt_helpers.tabpfn import pretrain as pt
    from ttt_helpers.tabpfn.pretrain.forward import configure_sdpa, forward_loss, to_task
    from ttt_helpers.tabpfn.pretrain.state import make_model, make_optimizers, model_to_device
    from ttt_helpers.tabpfn.pretrain.trainer import configure_host, optimise

    overrides = pt.key_json(args.set)

    command, commit = command_line(argv), git_commit()
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cfg = pt.recipe("v2.6-muon", **{"lr": 0.00025, "muon_lr": 0.00125, "device": args.device, **overrides})
    configure_sdpa(cfg.sdpa)
    configure_host(args.device)  # as the Trainer does: on a GPU, TF32 and one CPU thread (since stop 34)
    stage_batch = int(cfg.curriculum[-1]["batch"])
    t_start = time.time()

    def build(variant):
        torch.manual_seed(args.seed)
        _, model = make_model(cfg)
        model_to_device(model, args.device).train()
        opt_cfg = cfg if variant != "adamw_only" else pt.recipe("v2.6-muon", **{**overrides, "optimizer": "adamw",
                                                                                  "lr": 0.00025})
        opts = make_optimizers(model, opt_cfg, fused=cuda)
        return model, opts

    def tasks(B):
        gen = torch.Generator().manual_seed(args.seed)
        return [to_task(synthetic_batch(gen, B, T, args.features, cfg.max_num_classes), args.device, gen,
                        reshuffle=False, max_classes=cfg.max_num_classes) for T in args.rows]

    def step_fn(variant, model, opts, fwd_model):
        def step(task):
            if variant == "forward":
                with torch.no_grad():
                    loss, _, _ = forward_loss(fwd_model, task, cuda and cfg.autocast)
                return loss
            loss, _, _ = forward_loss(fwd_model, task, cuda and cfg.autocast)
            if variant == "fwd_bwd":
                loss.backward()
                model.zero_grad(set_to_none=True)
                return loss
            optimise(model, opts, loss, cfg.grad_clip)
            return loss
        return step

    rows = []
    for variant in args.variants:
        row, fwd_model = {"variant": variant}, None
        try:
            model, opts = build(variant)
            fwd_model = (torch.compile(model) if variant == "compiled"
                         else torch.compile(model, mode="reduce-overhead", dynamic=False) if variant == "compiled_graphs"
                         else model)
            B = 16 if variant == "batch16" else stage_batch
            ts = tasks(B)
            step = step_fn(variant, model, opts, fwd_model)
            t0 = time.perf_counter()
            for i in range(args.warmup):
                step(ts[i % len(ts)])
            sync()
            row["warmup_s"] = round(time.perf_counter() - t0, 2)
            times = []
            if variant == "trainer_async":  # one sync at the end: the mean step of a queue of steps
                t0 = time.perf_counter()
                for i in range(args.steps):
                    step(ts[i % len(ts)])
                sync()
                times = [(time.perf_counter() - t0) / args.steps] * args.steps
            for i in range(0 if times else args.steps):
                sync()
                t0 = time.perf_counter()
                step(ts[i % len(ts)])
                sync()
                times.append(time.perf_counter() - t0)
            row.update(batch=B, median_ms=round(1000 * statistics.median(times), 2),
                       min_ms=round(1000 * min(times), 2), max_ms=round(1000 * max(times), 2),
                       ms_per_table=round(1000 * statistics.median(times) / B, 2))
            if variant == "trainer" and args.profile_steps:
                from torch.profiler import ProfilerActivity, profile

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
                sync()
                t0 = time.perf_counter()
                with profile(activities=acts) as prof:
                    for i in range(args.profile_steps):
                        step(ts[i % len(ts)])
                    sync()
                wall = time.perf_counter() - t0
                ev = prof.key_averages()
                kernel_us = device_kernel_us(ev)
                calls = {e.key: e.count for e in ev}
                row["profile"] = {
                    "steps": args.profile_steps, "wall_ms_per_step": round(1000 * wall / args.profile_steps, 2),
                    "gpu_kernel_ms_per_step": round(kernel_us / 1000 / args.profile_steps, 2),
                    "kernel_launches_per_step": round(sum(calls.get(k, 0) for k in ("cudaLaunchKernel",
                                                      "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"))
                                                      / args.profile_steps, 1),
                    "syncs_per_step": round(sum(calls.get(k, 0) for k in ("cudaStreamSynchronize",
                                            "cudaDeviceSynchronize", "cudaEventSynchronize")) / args.profile_steps, 1),
                    "top_gpu": ev.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                        row_limit=25),
                    # where the host's time goes: the operators by their own CPU time (dispatch, launches)
                    "host_ms_per_step": round(sum(e.self_cpu_time_total for e in ev) / 1000 / args.profile_steps, 2),
                    "top_cpu": ev.table(sort_by="self_cpu_time_total", row_limit=30),
                }
        except Exception as e:  # noqa: BLE001 - a variant that fails on this machine is a result too
            row["error"] = repr(e)[:600]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
        if "profile" in row:
            print({k: v for k, v in row["profile"].items() if k not in ("top_gpu", "top_cpu")}, flush=True)
            print(row["profile"]["top_gpu"], flush=True)
            print(row["profile"]["top_cpu"], flush=True)
        del fwd_model
        if cuda:
            torch.cuda.empty_cache()

    loop = loop_phases(cfg, args.loop_seconds, sync) if args.loop_seconds > 0 else None
    if loop is not None:
        print(json.dumps(loop), flush=True)
    # the same loop as it trains (no synchronisation between phases): its own ms per step and data wait
    loop_plain = loop_phases(cfg, args.loop_seconds, sync, timed=False) if args.loop_seconds > 0 else None
    if loop_plain is not None:
        print(json.dumps({"plain": loop_plain}), flush=True)

    out = Path(args.out) if args.out else results_dir() / "step_profile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "recipe": "v2.6-muon (lr 2.5e-4, Muon 1.25e-3)", "overrides": overrides,
              "rows_rotation": args.rows,
              "features": args.features, "steps": args.steps, "warmup": args.warmup, "seed": args.seed,
              "torch": torch.__version__, "variants": rows, **({"loop": loop, "loop_plain": loop_plain} if loop is not None else {})}
    out.write_text(json.dumps(record, indent=1) + "\n")
    write_provenance(out.with_name(out.stem + ".provenance.json"), command=command, commit=commit,
                     seeds={"seed": args.seed},
                     results={r["variant"]: r.get("median_ms", r.get("error")) for r in rows},
                     files=[out], extra={"wall_seconds": round(time.time() - t_start, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
