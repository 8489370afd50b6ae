#!/usr/bin/env python
"""Figure 3a of the paper on our offline benchmark: TabPFN accuracy against context size, with and without TTT.

Per table (``ttt_helpers.tabpfn.benchmark``), the protocol of ``ttt_helpers.tabpfn.protocol.run_dataset``: 1,000
shuffled rows for TTT, the rest split 80-20 into a context pool and a test set; from the same pretrained weights,
TTT with the recipe chosen on a validation slice of the TTT rows (``selected``: learning rate from ``--lrs`` and
steps by early stopping, zero-shot weights kept when TTT does not beat them; ``ttt_helpers.tabpfn.finetune``) and,
optionally, fixed recipes (``--fixed adamw sgd``: ``--steps`` steps at ``--lr-adamw`` / ``--lr-sgd``); accuracy at
context sizes 2..1,000 for the model before and after each TTT run. Then a sequential cost measurement (TTT wall time
per step, inference time per query at each context size; ``ttt_helpers.tabpfn.protocol.measure_cost``).

Writes ``<out>`` (default ``data/results/tabpfn_ttt_full.json``) and ``<out stem>.provenance.json``.
Tables run in parallel worker processes (``--workers``), each with its own CUDA context; the accuracy numbers do
not depend on the number of workers, the timings of that phase do (they are not used; the cost phase runs
alone). The JSON is rewritten after every table, so a run cut short still leaves its finished tables.

Example (GPU)::

    python scripts/tabpfn_experiment.py --device cuda --prefer fallback --workers 16 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

os.environ.setdefault("TABPFN_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _template(args):
    from ttt_helpers.tabpfn.checkpoints import classifier_on, load_classifier

    if args.model_path:
        return (classifier_on(args.model_path, args.device),
                f"checkpoint {Path(args.model_path).name}")

    return load_classifier(prefer=args.prefer, device=args.device)


def _configs(args):
    from ttt_helpers.tabpfn.finetune import RecipeSearch, TTTConfig

    out = {}
    if not args.no_search:
        out["selected"] = RecipeSearch(lrs=tuple(args.lrs), max_steps=args.search_steps, eval_every=args.eval_every,
                                       patience=args.patience, validation_sizes=tuple(args.val_sizes),
                                       validation_repeats=args.val_reps, tolerance=args.tolerance,
                                       noise_z=args.noise_z, max_allowance=args.max_allowance, n_query=args.n_query,
                                       max_context=args.max_context, head_lr_mult=args.head_lr_mult)
    for opt in args.fixed:
        lr = args.lr_adamw if opt == "adamw" else args.lr_sgd
        out[opt] = TTTConfig(optimizer=opt, steps=args.steps, lr=lr, n_query=args.n_query,
                             max_context=args.max_context, head_lr_mult=args.head_lr_mult)
    return out


def _worker(name, args):
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from ttt_helpers.tabpfn.pretrain.forward import configure_sdpa

    configure_sdpa(args.sdpa)

    torch.set_num_threads(max(1, args.threads))
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 throughout, as on CPU
    from ttt_helpers.tabpfn.protocol import run_dataset

    template, _ = _template(args)
    return run_dataset(template, name, _configs(args), context_sizes=args.sizes, n_repeats=args.reps,
                       max_test=args.max_test, seed=args.seed, device=args.device, baselines=args.baselines)


def _allowance(value: str):
    """``--max-allowance``: a number, or ``none`` for no cap."""
    return None if value.lower() == "none" else float(value)


def build_parser() -> argparse.ArgumentParser:
    """The command line; the search's defaults are :class:`~ttt_helpers.tabpfn.finetune.RecipeSearch`'s (the
    estimator's and the ``ttt-helpers`` command's)."""
    from ttt_helpers.tabpfn.finetune import RecipeSearch

    d = RecipeSearch()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="*", default=None, help="table names (default: all of list_datasets())")
    p.add_argument("--priority", nargs="*", default=["slid_wages", "turnout_vote", "nlschools_lang"],
                   help="tables to start first")
    p.add_argument("--sizes", nargs="*", type=int, default=None, help="context sizes (default CONTEXT_SIZES)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--lrs", nargs="*", type=float, default=list(d.lrs), help="learning rates of the recipe search")
    p.add_argument("--search-steps", type=int, default=d.max_steps, help="most steps per learning rate in the search")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between validation scores")
    p.add_argument("--patience", type=int, default=d.patience, help="scores without improvement before stopping")
    p.add_argument("--val-sizes", nargs="*", type=int, default=list(d.validation_sizes),
                   help="context sizes of the validation episodes")
    p.add_argument("--val-reps", type=int, default=d.validation_repeats, help="validation contexts per size")
    p.add_argument("--tolerance", type=float, default=d.tolerance,
                   help="a checkpoint may lose at most this much at any validation size (see --noise-z)")
    p.add_argument("--noise-z", type=float, default=d.noise_z,
                   help="standard errors of the paired per-query differences added to --tolerance (0: bare margin)")
    p.add_argument("--max-allowance", type=_allowance, default=d.max_allowance,
                   help="cap on --tolerance plus the noise allowance: the most a checkpoint may lose at any "
                        "validation size ('none': no cap)")
    p.add_argument("--no-search", action="store_true", help="no recipe search (only the --fixed recipes)")
    p.add_argument("--fixed", nargs="*", default=[], choices=["adamw", "sgd"],
                   help="fixed recipes to run besides the search (--steps steps at --lr-adamw / --lr-sgd)")
    p.add_argument("--baselines", action="store_true",
                   help="also LogisticRegression and HistGradientBoosting on each context (CPU)")
    p.add_argument("--baselines-only", action="store_true",
                   help="no TTT: the pretrained model and the two baselines on the same episodes (default --out "
                        "data/results/tabpfn_baselines.json; no cost phase)")
    p.add_argument("--steps", type=int, default=40, help="steps of the fixed recipes and of the cost measurement")
    p.add_argument("--n-query", type=int, default=128, help="query rows per TTT episode")
    p.add_argument("--max-context", type=int, default=None)
    p.add_argument("--head-lr-mult", type=float, default=d.head_lr_mult,
                   help="the output head's learning rate over the rest's (search and fixed recipes; 1: one rate)")
    p.add_argument("--max-test", type=int, default=256, help="test rows scored per evaluation episode")
    p.add_argument("--lr-adamw", type=float, default=1e-4)
    p.add_argument("--lr-sgd", type=float, default=1e-2)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--prefer", default="official", choices=["official", "fallback"])
    p.add_argument("--model-path", default=None, help="a checkpoint file instead of ttt_helpers.tabpfn.checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no new table is started")
    p.add_argument("--cost-datasets", nargs="*", default=["car_choice", "slid_wages"])
    p.add_argument("--cost-cpu", action="store_true", help="also measure the cost on the CPU")
    p.add_argument("--cost-cpu-sizes", nargs="*", type=int, default=[2, 16, 128, 1000])
    p.add_argument("--cost-cpu-steps", type=int, default=3)
    p.add_argument("--sdpa", default="default", choices=["default", "no_gqa", "no_flash", "math"],
                   help="torch attention kernels inside tabpfn's dispatch (pretrain.forward.configure_sdpa; a "
                        "workaround switch for GPUs where a kernel fails)")
    p.add_argument("--out", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.baselines_only:
        args.no_search, args.fixed, args.baselines = True, [], True

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ttt_helpers.provenance import results_dir, write_provenance
    from ttt_helpers.tabpfn import benchmark as td
    from ttt_helpers.tabpfn.analysis import summarise
    from ttt_helpers.tabpfn.episodes import CONTEXT_SIZES
    from ttt_helpers.tabpfn.finetune import TTTConfig
    from ttt_helpers.tabpfn.pretrain.forward import configure_sdpa
    from ttt_helpers.tabpfn.protocol import measure_cost

    t0 = time.time()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.sizes = args.sizes or list(CONTEXT_SIZES)
    names = args.datasets or td.list_datasets()
    if args.priority:  # run these first (e.g. the chapter's CI tables, so that a cut-short run still has them)
        names = [n for n in args.priority if n in names] + [n for n in names if n not in args.priority]
    out = Path(args.out) if args.out else results_dir() / (
        "tabpfn_baselines.json" if args.baselines_only else "tabpfn_ttt_full.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    configure_sdpa(args.sdpa)
    template, description = _template(args)
    print(f"model: {description}; device {args.device}; {len(names)} tables; workers {args.workers}", flush=True)
    configs = _configs(args)
    record = {"experiment": "TabPFN TTT, accuracy vs context size (paper Figure 3a), offline benchmark",
              "model": description, "model_path": str(getattr(template, "model_path", "")),
              "device": args.device, "settings": {k: v for k, v in vars(args).items()},
              "configs": {k: {"kind": "search" if k == "selected" else "fixed", **c.to_dict()}
                          for k, c in configs.items()}, "results": [], "skipped": [],
              "cost": {}, "summary": None}

    def save():
        if record["results"]:
            order = {n: i for i, n in enumerate(names)}
            record["results"].sort(key=lambda r: order[r["name"]])
            record["summary"] = summarise(record["results"], cost=record["cost"].get(args.device))
        out.write_text(json.dumps(record, indent=1, default=float) + "\n")

    # --- phase 1: accuracy curves, tables in parallel
    bar = tqdm(total=len(names), desc="tables", disable=args.no_progress)
    if args.workers > 1:
        import multiprocessing as mp
        from concurrent.futures.process import BrokenProcessPool

        for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # inherited by the workers
            os.environ[v] = str(max(1, args.threads))
        todo, attempts = list(names), {n: 0 for n in names}
        while todo and not (args.deadline and time.time() - t0 > args.deadline):
            broken = False
            with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn")) as ex:
                futs = {ex.submit(_worker, n, args): n for n in todo}
                for f in as_completed(futs):
                    n = futs[f]
                    if f.cancelled():
                        continue
                    try:
                        r = f.result()
                        record["results"].append(r)
                        todo.remove(n)
                        print(f"{n}: acc none/{'/'.join(configs)} at n={args.sizes[0]}: "
                              + " / ".join(f"{r['acc'][k][0]:.3f}" for k in ['none', *configs]), flush=True)
                        bar.update(1)
                        save()
                    except BrokenProcessPool as e:  # a worker died (e.g. a CUDA error): new pool, retry once
                        broken = True
                        attempts[n] += 1
                        print(f"{n}: worker died ({e!r}); attempt {attempts[n]}", flush=True)
                    except Exception as e:  # noqa: BLE001 - record and go on
                        record["skipped"].append({"name": n, "error": repr(e)[:500]})
                        todo.remove(n)
                        print(f"{n}: FAILED {e!r}", flush=True)
                        bar.update(1)
                    if args.deadline and time.time() - t0 > args.deadline:
                        for g in futs:
                            g.cancel()
            for n in [n for n in todo if attempts[n] > 1]:
                record["skipped"].append({"name": n, "error": "worker died twice"})
                todo.remove(n)
            if not broken:
                break
    else:
        for n in names:
            if args.deadline and time.time() - t0 > args.deadline:
                record["skipped"].append({"name": n, "error": "deadline"})
                continue
            try:
                r = _worker(n, args)
                record["results"].append(r)
            except Exception as e:  # noqa: BLE001
                record["skipped"].append({"name": n, "error": repr(e)[:500]})
                print(f"{n}: FAILED {e!r}", flush=True)
            bar.update(1)
            save()
    bar.close()
    done = {r["name"] for r in record["results"]} | {s["name"] for s in record["skipped"]}
    record["skipped"] += [{"name": n, "error": "not run (deadline)"} for n in names if n not in done]
    print(f"phase 1 done in {time.time() - t0:.0f} s", flush=True)

    # --- phase 2: cost, alone on the machine
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = TTTConfig(optimizer="adamw", steps=args.steps, lr=args.lr_adamw, n_query=args.n_query,
                    max_context=args.max_context)  # timing only: the cost of one step
    devices = [] if args.baselines_only else [args.device] + (["cpu"] if args.cost_cpu and args.device != "cpu" else [])
    for dev in devices:
        runs = []
        for n in args.cost_datasets if dev == args.device else args.cost_datasets[:1]:
            if args.deadline and time.time() - t0 > args.deadline * 1.4:
                print(f"cost {dev} {n}: skipped (deadline)", flush=True)
                break
            sizes = args.sizes if dev == args.device else args.cost_cpu_sizes
            c = cfg if dev == args.device else TTTConfig(**{**cfg.to_dict(), "steps": args.cost_cpu_steps})
            tmpl = template if dev == args.device else _template(argparse.Namespace(**{**vars(args), "device": "cpu"}))[0]
            try:
                runs.append(measure_cost(tmpl, n, c, context_sizes=sizes, n_query=args.max_test,
                                         n_repeats=3 if dev == args.device else 1, seed=args.seed, device=dev))
                print(f"cost {dev} {n}: TTT {runs[-1]['ttt_seconds']:.2f} s for {c.steps} steps; per query "
                      + ", ".join(f"n={s}: {q * 1e3:.3f} ms" for s, q in zip(sizes, runs[-1]['per_query_seconds'])),
                      flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"cost {dev} {n}: FAILED {e!r}", flush=True)
        if runs:
            agg = {"device": dev, "datasets": [r["dataset"] for r in runs], "runs": runs,
                   "context_sizes": runs[0]["context_sizes"], "ttt_steps": runs[0]["ttt_steps"],
                   "ttt_seconds": float(np.mean([r["ttt_seconds"] for r in runs])),
                   "per_query_seconds": np.mean([r["per_query_seconds"] for r in runs], axis=0).tolist()}
            record["cost"][dev] = agg
        save()
    record["wall_seconds"] = time.time() - t0
    save()

    s = record["summary"]
    headline = {}
    if s:
        headline = {"n_datasets": s["n_datasets"], "near_zero_shot_size": s["sizes"][0],
                    "near_zero_shot_acc": {k: round(v, 4) for k, v in s["near_zero_shot"].items()},
                    "median_reduction_factor": {k: round(v["median_factor"], 3) for k, v in s["reduction"].items()}}
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    write_provenance(out.with_name(out.stem + ".provenance.json"), command=cmd,
                     seeds={"seed": args.seed, "per_table": "numpy default_rng([seed, crc32(name)])"},
                     results=headline, files=[out],
                     extra={"model": description, "wall_seconds": record["wall_seconds"]})
    print(json.dumps(headline, indent=1), flush=True)
    print(f"wrote {out} in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
