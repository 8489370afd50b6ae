"""Command line: the paper's TabPFN test-time-training protocol on a CSV table of your own.

Usage (also installed as the console script ``ttt-helpers``)::

    python -m ttt_helpers data/own_data/political_information.csv --target y --output-dir report/

It reads the table (separator detected, or ``--sep``; rows with an empty target dropped and counted), spends
``--ttt-size`` rows on test-time training with the recipe chosen on a held-out slice of them
(:class:`ttt_helpers.tabpfn.finetune.RecipeSearch`; ``--no-search`` for one fixed recipe; at context sizes longer
than every validated one, the adapted weights only after a validation gain at the longest, else the pretrained
ones: :func:`ttt_helpers.tabpfn.analysis.apply_guard`), evaluates accuracy
against the number of in-context rows with and without TTT on the remaining rows, beside LogisticRegression and
HistGradientBoosting fitted on the same context rows (:func:`ttt_helpers.tabpfn.protocol.run_protocol`), and
writes ``report.json`` and ``accuracy_vs_context.png`` into ``--output-dir`` (:mod:`ttt_helpers.tabpfn.report`):
the curves, the chosen recipe, the reduction factor (only above the majority rate, :mod:`ttt_helpers.tabpfn.analysis`),
the time TTT and the search took, the break-even point, and warnings (e.g. majority-class voting). A bad input
(unreadable CSV, unknown column, a single class, more than 10 classes, too few rows, infinite values, a bad option)
stops it with a message and exit status 2 before anything is written.

With the defaults, a 2,000-row table finishes within a few minutes on a 2-core CPU: ``scripts/bench_cli.py``
measures it and records the time in ``data/results/bench_cli.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["build_parser", "main", "run"]

EXIT_BAD_INPUT = 2
#: Rows that the protocol needs besides the TTT rows (context pool and test rows).
MIN_REST_ROWS = 10


def _ttt_size(text: str):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of rows (e.g. 1000) or a fraction in (0, 1) (e.g. 0.5), "
                                         f"got {text!r}") from None
    if value >= 1:
        if value != int(value):
            raise argparse.ArgumentTypeError(f"a row count must be a whole number, got {text!r}")
        return int(value)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of rows or a fraction in (0, 1), got {text!r}")
    return value


def _sizes(text: str):
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 2,8,32,128, "
                                         f"got {text!r}") from None


def _positive_float(text: str):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def _lrs(text: str):
    return [_positive_float(t) for t in text.replace(" ", "").split(",") if t] or _positive_float(text)


def _columns(text: str):
    return [t.strip() for t in text.split(",") if t.strip()]


def _sep(text: str):
    named = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "bar": "|", "pipe": "|"}
    if text in named:
        return named[text]
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"expected one character or comma/semicolon/tab/bar, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    from .finetune import RecipeSearch
    from .report import DEFAULT_CONTEXT_SIZES

    d = RecipeSearch()
    p = argparse.ArgumentParser(
        prog="ttt-helpers",
        description="Test-time training of TabPFN on your own table: accuracy vs context size with and without "
                    "TTT (beside LogisticRegression and HistGradientBoosting), the sample-size reduction factor, the "
                    "TTT cost and its break-even point (Gozeten et al., ICML 2025, Figure 3a protocol, on one table).")
    p.add_argument("csv", help="the table (CSV with a header row)")
    p.add_argument("--target", required=True, help="the column to predict (2 to 10 classes)")
    p.add_argument("--output-dir", default=None, help="where report.json and accuracy_vs_context.png go "
                   "(default: ttt_report_<csv name>)")
    p.add_argument("--sep", type=_sep, default=None,
                   help="column separator (one character, or comma/semicolon/tab/bar); default: detected")
    p.add_argument("--ttt-size", type=_ttt_size, default=0.5,
                   help="rows spent on test-time training: a count (1000, as in the paper) or a fraction of the "
                        "rows (default 0.5)")
    p.add_argument("--steps", type=int, default=d.max_steps,
                   help=f"most TTT optimiser steps per learning rate, one episode each (default {d.max_steps}); "
                        "with --no-search, the steps")
    p.add_argument("--lr", type=_lrs, default=list(d.lrs),
                   help="learning rates to choose from, comma-separated (default "
                        f"{','.join(f'{v:g}' for v in d.lrs)}); one value with --no-search")
    p.add_argument("--no-search", action="store_true",
                   help="no recipe search: --steps steps at the single --lr (the pretrained weights are not kept "
                        "even if TTT makes them worse)")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help=f"steps between two scores on the held-out TTT rows (default {d.eval_every})")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"scores without improvement before a learning rate's run stops (default {d.patience})")
    p.add_argument("--validation-fraction", type=float, default=d.validation_fraction,
                   help=f"share of the TTT rows held out to choose the recipe (default {d.validation_fraction})")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="AdamW or SGD with momentum")
    p.add_argument("--n-query", type=int, default=d.n_query,
                   help=f"query rows per TTT episode (default {d.n_query}; at most half of the TTT rows)")
    p.add_argument("--max-context", type=int, default=d.max_context,
                   help=f"largest context of a TTT episode (default {d.max_context}; smaller is faster)")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the episodes, TTT and preprocessing")
    p.add_argument("--context-sizes", type=_sizes, default=list(DEFAULT_CONTEXT_SIZES),
                   help="comma-separated context sizes to evaluate, each >= 2 (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="random contexts per size (default 3)")
    p.add_argument("--max-test", type=int, default=256, help="test rows used as queries (default 256)")
    p.add_argument("--max-rows", type=int, default=2000,
                   help="use a seeded random subset of at most this many rows (default 2000)")
    p.add_argument("--drop", type=_columns, default=[], help="comma-separated columns to leave out")
    p.add_argument("--categorical", type=_columns, default=[],
                   help="comma-separated numeric columns to treat as categorical (text columns always are)")
    p.add_argument("--keep-top-classes", type=int, default=None,
                   help="keep only the rows of the K most frequent classes (the paper's rule for > 10 classes)")
    p.add_argument("--n-estimators", type=int, default=1, help="TabPFN ensemble members (default 1)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip LogisticRegression and HistGradientBoosting (fitted on each context)")
    p.add_argument("--model", default="auto",
                   help="'auto' (official TabPFN v2 checkpoint if present, else the book's fallback), 'official', "
                        "'fallback', or a path to a .ckpt file; nothing is downloaded")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    return p


def _recipe(args):
    from .finetune import RecipeSearch, TTTConfig

    lrs = args.lr if isinstance(args.lr, list) else [args.lr]
    common = dict(optimizer=args.optimizer, n_query=args.n_query, max_context=args.max_context)
    if args.no_search:
        if len(lrs) != 1:
            raise ValueError(f"--no-search runs one recipe: give a single --lr, got {','.join(map(str, lrs))}")
        return TTTConfig(steps=args.steps, lr=lrs[0], **common)
    return RecipeSearch(lrs=tuple(lrs), max_steps=args.steps, eval_every=min(args.eval_every, args.steps),
                        patience=args.patience, validation_fraction=args.validation_fraction, **common)


def _ttt_rows(ttt_size, n: int, search: bool) -> int:
    from .protocol import resolve_rows

    n_ttt = resolve_rows(ttt_size, n, "ttt_size", allow_zero=False)
    need = 5 if search else 3
    if n_ttt < need:
        raise ValueError(f"ttt_size={ttt_size!r} gives {n_ttt} TTT rows; TTT needs at least {need}"
                         + (" (a held-out slice to choose the recipe, and episodes of 2 context rows and a query)"
                            if search else " (2 context rows and 1 query)"))
    if n - n_ttt < MIN_REST_ROWS:
        raise ValueError(f"too few rows for ttt_size={ttt_size!r}: the table has {n} usable rows, TTT takes {n_ttt} "
                         f"and the protocol needs at least {MIN_REST_ROWS} more (context pool and test rows), so at "
                         f"least {n_ttt + MIN_REST_ROWS} rows; lower --ttt-size (e.g. a fraction such as 0.5)")
    return n_ttt


def run(args, argv_text: str = "") -> dict:
    """The protocol on the table named by parsed ``args``; returns the report (nothing written)."""
    import importlib.metadata as md

    import numpy as np
    import torch

    from .analysis import apply_guard, table_summary
    from .finetune import RecipeSearch
    from .classifier import resolve_model
    from .encoder import prepare_table
    from .episodes import make_template
    from .protocol import run_protocol, split_rows
    from .report import make_report, read_table, resolve_context_sizes
    from ..validation import check_positive_int

    t0 = time.perf_counter()
    if args.max_context is not None:
        check_positive_int(args.max_context, "--max-context")
    for name in ("steps", "n_query", "repeats", "max_test", "max_rows", "n_estimators", "eval_every", "patience"):
        check_positive_int(getattr(args, name), "--" + name.replace("_", "-"))
    recipe = _recipe(args)
    X, y, info = read_table(args.csv, args.target, sep=args.sep, drop=args.drop, categorical=args.categorical,
                            keep_top_classes=args.keep_top_classes, max_rows=args.max_rows, seed=args.seed)
    Xe, ye, classes, enc = prepare_table(X, y)
    n_ttt = _ttt_rows(args.ttt_size, len(ye), not args.no_search)
    sizes = resolve_context_sizes(args.context_sizes, len(split_rows(len(ye), 0, n_ttt=n_ttt)["pool"]))
    path, description = resolve_model(args.model)
    result = run_protocol(make_template(path, args.device, enc.categorical_indices_), Xe, ye, {"ttt": recipe},
                          n_classes=len(classes), n_ttt=n_ttt, context_sizes=sizes, n_repeats=args.repeats,
                          max_test=args.max_test, n_estimators=args.n_estimators, seed=args.seed, device=args.device,
                          baselines=not args.no_baselines, progress=not args.no_progress)
    if isinstance(recipe, RecipeSearch):  # beyond the longest validated context, only after a gain there
        result = apply_guard(result, "ttt")
    info.update({"n_features": int(Xe.shape[1]), "n_classes": len(classes),
                 "categorical_columns": [info["features"][j] for j in enc.categorical_indices_],
                 "missing_feature_values": int(np.isnan(Xe).sum())})
    versions = {"ttt_helpers": md.version("ttt-helpers"), "tabpfn": md.version("tabpfn"), "torch": torch.__version__,
                "numpy": np.__version__}
    settings = {"context_sizes": sizes, "n_repeats": args.repeats, "ttt": recipe.to_dict(),
                "n_estimators": args.n_estimators, "seed": args.seed, "device": args.device}
    report = make_report(result, table_summary(result), dataset=info,
                         model={"description": description, "path": str(path),
                                "official": description.startswith("official")},
                         settings=settings, versions=versions, runtime_seconds=time.perf_counter() - t0)
    report["command"] = "ttt-helpers " + argv_text
    return report


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on bad input)."""
    from .report import summary_lines, write_report

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        out_dir = Path(args.output_dir) if args.output_dir else Path(f"ttt_report_{Path(args.csv).stem}")
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--output-dir {str(out_dir)!r} exists and is not a folder")
        report = run(args, " ".join(sys.argv[1:] if argv is None else map(str, argv)))
    except (ValueError, TypeError) as exc:
        print(f"ttt-helpers: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    paths = write_report(report, out_dir)
    for line in summary_lines(report):
        print(line)
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
