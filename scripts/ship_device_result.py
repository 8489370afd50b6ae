#!/usr/bin/env python
"""Ship a pretraining result that a device call brought back: copy it under ``data/results`` with its provenance.

A device call writes either the record of ``scripts/bench_pretrain_recipes.py`` (``bench_pretrain_recipes.json``)
or the provenance that ``scripts/pretrain_tabpfn.py``'s export wrote (``tabpfn_fallback.json``). Each already
carries the command, the commit, the device and the date of the call; this script keeps them (the provenance
it writes names that machine, not the one it runs on) and adds the file's sha256 and a note.

Examples
--------
A side-by-side benchmark of recipes (to ``data/results/pretrain_bench/NAME.json``)::

    python scripts/ship_device_result.py --bench /work/.device/2/bench_pretrain_recipes.json \\
        --name session20_variants --note "three variants of v2-muon, 2.4 training minutes each"

One pretraining run whose checkpoint is not shipped (to ``data/results/NAME.json``)::

    python scripts/ship_device_result.py --export /work/.device/3/tabpfn_fallback.json \\
        --name pretrain_v2muon_emsize256 --note "v2-muon at emsize 256"

Any other checkpoint's provenance, with the benchmark entries ``scripts/pretrain_tabpfn.py --benchmark`` added to
it, its checkpoint not shipped (e.g. the choice of ``scripts/interpolate_checkpoints.py --export``)::

    python scripts/ship_device_result.py --model runs/wise/chosen/tabpfn_interpolated.json \\
        --name tabpfn_interpolated --note "the candidate and its warm start, interpolated"

The same with its weights shipped (``--weights``: the checkpoint the record names, copied to
``data/models/NAME.ckpt``; the record, naming that file and its sha256, to ``data/models/NAME.json``)::

    python scripts/ship_device_result.py --model runs/six/tabpfn_fallback.json --weights runs/six/tabpfn_fallback.ckpt \\
        --name tabpfn_six_layer --note "the 6-layer run's selected weights"
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from ttt_helpers.provenance import command_line, data_dir, models_dir, sha256_file, write_provenance
from ttt_helpers.tabpfn.pretrain_eval import best_dev


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--bench", metavar="JSON", help="a record of scripts/bench_pretrain_recipes.py")
    what.add_argument("--export", metavar="JSON", help="the provenance a scripts/pretrain_tabpfn.py export wrote")
    what.add_argument("--model", metavar="JSON", help="a checkpoint's provenance with its benchmark entries")
    p.add_argument("--name", required=True, help="file name (without .json) of the shipped result")
    p.add_argument("--note", required=True, help="what the run was, in a sentence")
    p.add_argument("--prior-tables", type=int, default=None,
                   help="--export: the tables drawn from the prior (from the state's state_meta.json), if known")
    p.add_argument("--weights", metavar="CKPT", default=None,
                   help="--model: ship this checkpoint too (it must be the one the record names, by sha256), as "
                        "data/models/NAME.ckpt beside the record")
    p.add_argument("--out-dir", default=None,
                   help="default: data/results (data/results/pretrain_bench for --bench; data/models with --weights)")
    args = p.parse_args(argv)
    if args.weights and not args.model:
        p.error("--weights goes with --model")
    return args


def ship_bench(record: dict, out: Path, name: str, note: str, command: str) -> Path:
    """``record`` (a benchmark of recipes) as ``out/name.json`` with ``out/name.provenance.json``."""
    path = out / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    recipes = record["recipes"]
    results = {"dev_acc_best": {n: best_dev(r["curve"]) for n, r in recipes.items()},
               "train_minutes": {n: r["train_minutes"] for n, r in recipes.items()},
               "data_wait_fraction": {n: r["data_wait_fraction"] for n, r in recipes.items()},
               "prior_tables_per_s": {n: r["prior_tables_per_s"] for n, r in recipes.items()}}
    write_provenance(out / f"{name}.provenance.json", command=record["command"], commit=record["git_commit"],
                     seeds={"seed": recipes[next(iter(recipes))]["config"]["seed"], "dev_split_seed": 0},
                     results=results, files=[path],
                     extra={"machine": record["machine"], "date_utc": record["date_utc"],
                            "wall_seconds": record.get("seconds"), "note": note, "shipped_by": command})
    return path


def _write_without_checkpoint(record: dict, out: Path, name: str, note: str, **fields) -> Path:
    """``record`` as ``out/name.json``, the checkpoint it names not shipped: its ``files`` become
    ``checkpoint_not_shipped`` (else the reproducibility appendix looks for a file that is not there), after any
    ``fields``, then the ``note``."""
    shipped = {k: v for k, v in record.items() if k != "files"}
    shipped.update(fields)
    shipped["checkpoint_not_shipped"] = dict(record.get("files", {}))
    shipped["note"] = note
    path = out / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(shipped, indent=1) + "\n")
    return path


def ship_export(export: dict, out: Path, name: str, note: str, command: str, prior_tables=None) -> Path:
    """An export's provenance (its checkpoint not shipped) as ``out/name.json`` with its provenance."""
    path = _write_without_checkpoint(export, out, name, note, prior_tables=prior_tables)
    res, sel = export["results"], export.get("selection") or {}
    results = {"dev_acc_final": export["evals"][-1]["dev_acc"],
               "dev_acc_best": max(e["dev_acc"] for e in export["evals"]),
               "train_minutes": res["train_minutes"], "steps": res["steps"], "n_parameters": res["n_parameters"],
               "data_wait_s": sum(c["data_wait_s"] for c in export["calls"]), "selected": sel.get("chosen")}
    write_provenance(out / f"{name}.provenance.json", command=export["command"], commit=export["git_commit"],
                     seeds=export.get("seeds"), results=results, files=[path],
                     extra={"machine": export["machine"], "date_utc": export["date_utc"], "calls": export["calls"],
                            "note": note, "shipped_by": command})
    return path


def _require_benchmark(record: dict) -> None:
    if not record.get("benchmark_offline_tables"):
        raise ValueError("the record holds no benchmark entries: run scripts/pretrain_tabpfn.py --benchmark first")


def ship_model(record: dict, out: Path, name: str, note: str, command: str) -> Path:
    """A checkpoint's provenance (the checkpoint not shipped), with the benchmark entries that
    :func:`ttt_helpers.tabpfn.pretrain_eval.benchmark_checkpoint` added to it, as ``out/name.json``."""
    _require_benchmark(record)
    path = _write_without_checkpoint(record, out, name, note)
    results = {k: v["mean_accuracy"] for k, v in record["results"]["benchmark"].items()}
    write_provenance(out / f"{name}.provenance.json", command=record["command"], commit=record["git_commit"],
                     seeds=record.get("seeds"), results=results, files=[path],
                     extra={"machine": record["machine"], "date_utc": record["date_utc"],
                            "benchmark_commands": {k: v["command"] for k, v in record["benchmark_offline_tables"].items()},
                            "note": note, "shipped_by": command})
    return path


def ship_model_with_weights(record: dict, weights: Path, out: Path, name: str, note: str, command: str) -> Path:
    """A checkpoint and its provenance with its benchmark entries, shipped together: ``weights`` copied to
    ``out/name.ckpt`` and the record, its ``files`` naming that copy, to ``out/name.json``. ``weights`` must be the
    one checkpoint the record lists (same sha256)."""
    _require_benchmark(record)
    listed = record.get("files") or {}
    digest = sha256_file(weights)
    if list(listed.values()) != [digest]:
        raise ValueError(f"{weights} (sha256 {digest[:12]}) is not the one checkpoint the record lists: {listed}")
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(shutil.copyfile(weights, out / f"{name}.ckpt"))
    shipped = {**record, "files": {ckpt.name: digest}, "note": note, "shipped_by": command}
    path = out / f"{name}.json"
    path.write_text(json.dumps(shipped, indent=1) + "\n")
    return path


def main(argv=None):
    args = parse_args(argv)
    command = command_line(argv)
    results = data_dir() / "results"
    if args.bench:
        out = Path(args.out_dir) if args.out_dir else results / "pretrain_bench"
        path = ship_bench(json.loads(Path(args.bench).read_text()), out, args.name, args.note, command)
    elif args.model and args.weights:
        out = Path(args.out_dir) if args.out_dir else models_dir()
        path = ship_model_with_weights(json.loads(Path(args.model).read_text()), Path(args.weights), out, args.name,
                                       args.note, command)
    elif args.model:
        out = Path(args.out_dir) if args.out_dir else results
        path = ship_model(json.loads(Path(args.model).read_text()), out, args.name, args.note, command)
    else:
        out = Path(args.out_dir) if args.out_dir else results
        path = ship_export(json.loads(Path(args.export).read_text()), out, args.name, args.note, command,
                           prior_tables=args.prior_tables)
    print(f"shipped {path} and its provenance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
