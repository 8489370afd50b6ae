#!/usr/bin/env python
"""Pretraining recipes side by side for the same GPU budget: development-set accuracy against GPU-minutes.

Each recipe (``ttt_helpers.tabpfn.pretrain.recipe``) trains from scratch for ``--budget-min`` training minutes
on one GPU; every ``--eval-every-s`` seconds it is evaluated on held-out prior tasks and, by one forward pass
per table, on the development tables (``pretrain_eval.DEV_SPECS``, none of them a benchmark table). The JSON
result (``bench_pretrain_recipes.json``) records per recipe the curve of development-set accuracy against
training minutes, the steps, the tables processed and drawn from the prior per second, the time spent waiting
for the prior, and the time-to-quality: the training minutes each recipe needs to reach the best
development-set accuracy that the first recipe (today's) reaches in its budget.
``--export RECIPE`` exports that recipe's weights chosen on the development set (``Trainer.select``) as
``tabpfn_fallback.ckpt`` with its provenance, and its resumable training state.

``--diagnose-bf16`` instead runs one bf16 training step of each architecture and attention mode in a
subprocess each (with ``CUDA_LAUNCH_BLOCKING=1``, so that an illegal memory access names the operation).

Example (one H200, through the device tool; the exact command is recorded in the JSON)::

    python scripts/bench_pretrain_recipes.py --recipes v2.6-muon v1 --budget-min 3.25 --eval-every-s 20 \\
        --dev-cache .device_carry/pretrain/dev.npz --reference data/models/tabpfn_v1.ckpt \\
        --export v2.6-muon --out $OUT
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from ttt_helpers.provenance import command_line, git_commit, machine_description, write_provenance
from ttt_helpers.tabpfn import checkpoints as tm
from ttt_helpers.tabpfn import pretrain as pt
from ttt_helpers.tabpfn import pretrain_eval as pe


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", nargs="+", default=["v1", "v2.6-muon"],
                   help="the first is the reference; NAME:key=json,... changes fields of recipe NAME (a value may be "
                        "a JSON list or object, e.g. curriculum=[{...}])")
    p.add_argument("--budget-min", type=float, default=3.0, help="training minutes per recipe")
    p.add_argument("--eval-every-s", type=float, default=20.0)
    p.add_argument("--deadline-min", type=float, default=9.4, help="wall minutes for the whole command")
    p.add_argument("--workers", type=int, default=15)
    p.add_argument("--val-tasks", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dev-cache", default=None, help="development tables (pretrain_eval.write_dev_cache)")
    p.add_argument("--reference", default=None, metavar="CKPT", help="also score this checkpoint on the dev tables")
    p.add_argument("--export", default=None, metavar="RECIPE", help="export this recipe's selected weights")
    p.add_argument("--out", default="runs/bench_pretrain")
    p.add_argument("--parallel", action="store_true",
                   help="train the recipes at the same time, one process each on the one GPU, the prior workers "
                        "split between them (each recipe's minutes are then minutes of a GPU it shares)")
    p.add_argument("--merge", nargs="+", default=None, metavar="FILE:RECIPE[=ALIAS]",
                   help="no training: one record of recipes taken from earlier results (each with its command, "
                        "commit and date), time-to-quality against the first; written to --out")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                   help="override recipe fields in every recipe, e.g. prior='\"toy\"' nlayers=1 (smoke tests)")
    p.add_argument("--diagnose-bf16", nargs="*", default=None, metavar="NAME",
                   help=f"run these one-step diagnoses (default: all of {list(DIAGNOSES)}) and add them to the JSON")
    p.add_argument("--one-step", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# bf16 diagnosis: one training step per configuration, each in its own process
# ----------------------------------------------------------------------------------------------------------
DIAGNOSES = {
    # name: (recipe, sdpa mode, autocast, tables, rows, features)
    "v1_bf16_no_gqa": ("v1", "no_gqa", True, 128, 256, 8),
    "v1_bf16_default": ("v1", "default", True, 128, 256, 8),
    "v1_bf16_math": ("v1", "math", True, 128, 256, 8),
    "v1_fp32_no_gqa": ("v1", "no_gqa", False, 128, 256, 8),
    "v2.6_bf16_default": ("v2.6-muon", "default", True, 8, 1200, 32),
    "v2.6_bf16_no_cudnn": ("v2.6-muon", "no_cudnn", True, 8, 1200, 32),
}
_SMOKE = {"cpu_smoke": ("v2.6-muon", "default", False, 2, 100, 5)}


def one_step(name: str) -> None:
    recipe, sdpa, autocast, B, T, C = {**DIAGNOSES, **_SMOKE}[name]
    device = os.environ.get("DIAG_DEVICE", "cuda")
    cfg = pt.recipe(recipe, sdpa=sdpa, autocast=autocast, device=device, workers=0)
    trainer = pt.Trainer(cfg, out_dir="/tmp/diag", log=lambda s: None)
    trainer.budget = 1000.0
    g = torch.Generator().manual_seed(0)
    n = int(0.7 * T)
    x = torch.randn(T, B, C, generator=g)
    y = torch.randint(0, 5, (T, B), generator=g)
    task = tuple(t.to(device) for t in (x, y[:n].float(), y[n:], torch.full((B,), 5)))
    t0 = time.time()
    for _ in range(3):
        loss, _, _ = trainer._train_step(task, g)
    if device == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    print(f"ONE_STEP_OK {name} loss {float(loss):.4f} {(time.time() - t0) / 3 * 1000:.0f} ms/step "
          f"(first included) peak {peak:.1f} GiB")


def diagnose_bf16(names=None) -> dict:
    out = {}
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    for name in names or DIAGNOSES:
        t0 = time.time()
        r = subprocess.run([sys.executable, __file__, "--one-step", name], env=env, capture_output=True, text=True,
                           timeout=120)
        lines = (r.stdout + r.stderr).strip().splitlines()
        ok = r.returncode == 0 and any(line.startswith("ONE_STEP_OK") for line in lines)
        out[name] = {"ok": ok, "seconds": round(time.time() - t0, 1),
                     "tail": [line for line in lines if "Warning" not in line][-14:]}
        print(f"DIAG {name}: {'ok' if ok else 'FAILED'}", *out[name]["tail"][-6:], sep="\n    ", flush=True)
    return out


# ----------------------------------------------------------------------------------------------------------
# Recipes side by side
# ----------------------------------------------------------------------------------------------------------
def reference_dev_accuracy(ckpt, dev, device) -> float:
    return pe.mean_accuracy(pe.eval_direct(tm.load_model(ckpt).to(device), dev, device))


def recipe_config(name: str, args):
    """The configuration of recipe ``name`` (``"v1:autocast=true,sdpa=\"no_cudnn\""``: a recipe with changes):
    the command's options (device, workers, evaluation period, seed, held-out tasks) first, then ``--set`` and the
    recipe's own fields, which override them (``name:workers=8``)."""
    overrides = pt.key_json(args.set)
    base, _, variant = name.partition(":")
    overrides.update(variant_overrides(variant))
    return pt.recipe(base, **{"device": args.device, "workers": args.workers, "eval_every": args.eval_every_s,
                              "seed": args.seed, "val_tasks": args.val_tasks, **overrides})


def run_recipe(name, args, dev, out: Path, deadline: float, command: str) -> dict:
    cfg = recipe_config(name, args)
    t_start = time.time()
    state_dir = out / "state" if name == args.export else Path("/tmp") / f"bench_state_{_slug(name)}"
    trainer = pt.Trainer(cfg, out_dir=state_dir, command=command, log=lambda s: print(f"[{name}] {s}", flush=True))
    trainer.evaluator = pe.Evaluator(cfg, trainer.device, real=False, dev=dev)
    trainer.evaluate("start")
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    wall = max(30.0, deadline - time.time() - 10.0)
    trainer.run(args.budget_min * 60, wall_limit_s=wall, t_start=time.time(), reserve_s=5.0)
    meta = trainer.meta
    train_s = meta["train_seconds"]
    rec = {
        "recipe": name,
        "config": {k: v for k, v in vars(cfg).items()},
        "n_parameters": trainer.n_params,
        "budget_min": args.budget_min,
        "train_minutes": round(train_s / 60, 3),
        "wall_minutes": round((time.time() - t_start) / 60, 3),
        "steps": meta["step"],
        "tables_processed": meta["tasks_seen"],
        "tables_from_prior": meta.get("prior_tables", 0),
        **pe.run_fields(train_s=train_s, steps=meta["step"], tables=meta["tasks_seen"],
                        prior_tables=meta.get("prior_tables", 0), data_wait_s=trainer.data_wait, evals=meta["evals"]),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.device.startswith("cuda") else None,
        "dev_per_table_at_best": max(meta["evals"], key=lambda e: e["dev_acc"])["dev"],
        "loss_curve": meta["loss_curve"],
    }
    if cfg.ema:  # the trained weights' development accuracy at each evaluation (the curve's is the average's)
        rec["trained_dev_curve"] = [[e["train_minutes"], e["trained"]["dev_acc"]] for e in meta["evals"]]
    if name == args.export:
        state, selection = trainer.select(trainer.evaluator.dev_score(trainer.model_config))
        rec["selection"] = selection
        trainer.export(out, state_dict=state, extra={"selection": selection, "bench": "bench_pretrain_recipes.json"},
                       extra_results={"dev_acc_direct": selection["dev_acc"][selection["chosen"]],
                                      "data_wait_fraction": rec["data_wait_fraction"]})
        (state_dir / "tabpfn_fallback_eval.ckpt").unlink(missing_ok=True)
    return rec


def variant_overrides(variant: str) -> dict:
    """``'key=json,key=json'`` as a dict; a value may hold commas (a JSON list or object, e.g. a curriculum):
    the string is split only at commas followed by ``name=``."""
    return pt.key_json(item for item in re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*=)", variant) if item)


def _slug(name: str) -> str:
    """A recipe's name as a folder name: its characters outside ``[A-Za-z0-9._-]`` replaced, and a long name cut to
    80 characters plus a hash of the whole (a file name may have at most 255 bytes; a curriculum makes names long)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    if len(slug) > 100:
        slug = f"{slug[:80]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return slug


def _without(argv: list, flag: str, n_values: int | None) -> list:
    """``argv`` without ``flag`` and its values (``n_values`` of them, or all up to the next option)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag:
            i += 1
            k = 0
            while i < len(argv) and not argv[i].startswith("--") and (n_values is None or k < n_values):
                i, k = i + 1, k + 1
            continue
        out.append(argv[i])
        i += 1
    return out


def run_parallel(args, argv: list, out: Path, deadline: float) -> dict:
    """Each recipe in its own process at the same time (``out/<recipe>/``); their records, merged."""
    base = argv
    for flag, n in (("--recipes", None), ("--out", 1), ("--workers", 1), ("--deadline-min", 1),
                    ("--reference", 1), ("--parallel", 0), ("--export", 1)):
        base = _without(base, flag, n)
    workers = max(1, args.workers // len(args.recipes))
    procs = {}
    for name in args.recipes:
        child = [*base, "--recipes", name, "--out", str(out / _slug(name)), "--workers", str(workers),
                 "--deadline-min", f"{(deadline - time.time()) / 60:.3f}"]
        if name == args.export:
            child += ["--export", name]
        procs[name] = subprocess.Popen([sys.executable, __file__, *child])
    records = {}
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise RuntimeError(f"recipe {name} failed (exit {proc.returncode})")
        child_record = json.loads((out / _slug(name) / "bench_pretrain_recipes.json").read_text())
        records[name] = child_record["recipes"][name]
    return records


def time_to_quality(recipes: dict, reference: str) -> dict:
    """Training minutes each recipe needs to reach the best development accuracy ``reference`` reaches."""
    target = pe.best_dev(recipes[reference]["curve"])
    ttq = {name: pe.time_to_quality(pe.dev_curve(rec["curve"]), target) for name, rec in recipes.items()}
    out = {"reference_recipe": reference, "target_dev_acc": target, "train_minutes": ttq}
    if ttq[reference]:
        out["speedup"] = {n: round(ttq[reference] / v, 2) for n, v in ttq.items() if v}
    return out


def merge(items: list, command: str) -> dict:
    """One record of recipes from earlier results: ``FILE:RECIPE[=ALIAS]`` each; the first is the reference."""
    result = {"command": command, "git_commit": git_commit(), "recipes": {}, "runs": {}}
    for item in items:
        path, _, rest = item.partition(":")
        name, _, alias = rest.partition("=")
        record = json.loads(Path(path).read_text())
        alias = alias or name
        result["recipes"][alias] = record["recipes"][name]
        result["runs"][alias] = {k: record.get(k) for k in ("command", "git_commit", "machine", "date_utc",
                                                               "gpu_shared_by")} | {"file": path}
        if "reference" in record and "reference" not in result:
            result["reference"] = record["reference"]
    result["time_to_quality"] = time_to_quality(result["recipes"], next(iter(result["recipes"])))
    return result


def main(argv=None):
    t0 = time.time()
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.one_step:
        one_step(args.one_step)
        return 0
    command = command_line(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:  # e.g. --out data/results: pretrain_recipes.json and its provenance, from the runs' results
        record, merged = merge(args.merge, command), out / "pretrain_recipes.json"
        merged.write_text(json.dumps(record, indent=1) + "\n")
        ttq = record["time_to_quality"]
        runs = record["runs"]
        write_provenance(
            out / "pretrain_recipes.provenance.json", command=command, files=[merged],
            seeds={"seed": 0, "dev_split_seed": 0},
            results={"dev_acc_best": {n: pe.best_dev(r["curve"]) for n, r in record["recipes"].items()},
                     "dev_acc_reference_fallback": record.get("reference", {}).get("dev_acc"),
                     "data_wait_fraction": {n: r["data_wait_fraction"] for n, r in record["recipes"].items()},
                     "time_to_quality": ttq},
            extra={"machine": next(iter(runs.values()))["machine"], "runs": runs,
                   "note": "merged here from the results of the runs listed (each with its own command, commit, "
                           "machine and date); the machine above is the first run's"})
        print("TTQ", json.dumps(ttq))
        return 0
    result = {"command": command, "git_commit": git_commit(), "machine": machine_description(),
              "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "muon_available": hasattr(torch.optim, "Muon")}
    path = out / "bench_pretrain_recipes.json"
    if args.diagnose_bf16 is not None:  # added to the JSON of an earlier benchmark in --out, if any
        record = json.loads(path.read_text()) if path.exists() else result
        record["bf16_diagnosis"] = {"command": command, **diagnose_bf16(args.diagnose_bf16)}
        path.write_text(json.dumps(record, indent=1) + "\n")
        return 0
    deadline = t0 + args.deadline_min * 60
    dev = pe.dev_splits(args.seed, cache=args.dev_cache)
    result["dev_tables"] = {k: {"n_context": len(v[2]), "n_test": len(v[3])} for k, v in dev.items()}
    if args.reference:
        result["reference"] = {"checkpoint": str(args.reference),
                               "dev_acc": reference_dev_accuracy(args.reference, dev, args.device)}
        print("reference", result["reference"], flush=True)
    result["recipes"] = {}
    if args.parallel and len(args.recipes) > 1:
        result["recipes"] = run_parallel(args, argv if argv is not None else sys.argv[1:], out, deadline)
        result["gpu_shared_by"] = len(args.recipes)
    for i, name in enumerate(args.recipes if not result["recipes"] else []):
        left = len(args.recipes) - i
        # each recipe may use its share of what is left, so the last one still gets its budget
        share = time.time() + (deadline - time.time()) / left
        result["recipes"][name] = run_recipe(name, args, dev, out, share if left > 1 else deadline, command)
        path.write_text(json.dumps(result, indent=1) + "\n")
    result["time_to_quality"] = time_to_quality(result["recipes"], next(iter(result["recipes"])))  # the first
    result["seconds"] = round(time.time() - t0, 1)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print("BENCH", json.dumps({n: {k: r[k] for k in ("steps", "train_minutes", "tables_processed_per_s",
                                                      "prior_tables_per_s", "data_wait_fraction", "step_ms")}
                               | {"best_dev": pe.best_dev(r["curve"])}
                               for n, r in result["recipes"].items()}), flush=True)
    print("TTQ", json.dumps(result["time_to_quality"]), flush=True)
    return 0


if __name__ == "__main__":
    pt.fix_hash_seed()  # tabicl's graph_scm tables depend on string hashing: the same seeds, the same tables
    sys.exit(main())
