"""Command line: the paper's TabPFN test-time-training protocol on a CSV table of your own.

Usage (also installed as the console script ``ttt-helpers``)::

    python -m ttt_helpers data/own_data/political_information.csv --target y --output-dir report/

It reads the table, spends ``--ttt-size`` rows on test-time training, evaluates accuracy against the number of
in-context rows with and without TTT on the remaining rows, and writes ``report.json`` and
``accuracy_vs_context.png`` into ``--output-dir`` (see :mod:`ttt_helpers.tabpfn.report`). A bad input (unreadable CSV,
unknown column, a single class, more than 10 classes, too few rows, infinite values, a bad option) stops it
with a message and exit status 2 before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]

EXIT_BAD_INPUT = 2


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


def _columns(text: str):
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    from .report import DEFAULT_CONTEXT_SIZES

    p = argparse.ArgumentParser(
        prog="ttt-helpers",
        description="Test-time training of TabPFN on your own table: accuracy vs context size with and without "
                    "TTT, the sample-size reduction factor, the TTT cost and its break-even point (Gozeten et al., "
                    "ICML 2025, Figure 3a protocol, on one table).")
    p.add_argument("csv", help="the table (CSV with a header row)")
    p.add_argument("--target", required=True, help="the column to predict (2 to 10 classes)")
    p.add_argument("--output-dir", default=None, help="where report.json and accuracy_vs_context.png go "
                   "(default: ttt_report_<csv name>)")
    p.add_argument("--ttt-size", type=_ttt_size, default=0.5,
                   help="rows spent on test-time training: a count (1000, as in the paper) or a fraction of the "
                        "rows (default 0.5)")
    p.add_argument("--steps", type=int, default=50, help="TTT optimiser steps, one episode each (default 50)")
    p.add_argument("--lr", type=_positive_float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="AdamW or SGD with momentum")
    p.add_argument("--n-query", type=int, default=128, help="query rows per TTT episode (default 128)")
    p.add_argument("--max-context", type=int, default=None,
                   help="largest context of a TTT episode (default: all TTT rows that are not queries); smaller "
                        "is faster")
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
    p.add_argument("--model", default="auto",
                   help="'auto' (official TabPFN v2 checkpoint if present, else the book's fallback), 'official', "
                        "'fallback', or a path to a .ckpt file; nothing is downloaded")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .report import read_table, run_protocol, summary_lines, write_report
    from ..validation import check_positive_int

    try:
        if args.max_context is not None:
            check_positive_int(args.max_context, "--max-context")
        for name in ("steps", "n_query", "repeats", "max_test", "max_rows", "n_estimators"):
            check_positive_int(getattr(args, name), "--" + name.replace("_", "-"))
        out_dir = Path(args.output_dir) if args.output_dir else Path(f"ttt_report_{Path(args.csv).stem}")
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--output-dir {str(out_dir)!r} exists and is not a folder")
        X, y, info = read_table(args.csv, args.target, drop=args.drop, categorical=args.categorical,
                                keep_top_classes=args.keep_top_classes, max_rows=args.max_rows, seed=args.seed)
        report = run_protocol(X, y, model=args.model, ttt_size=args.ttt_size, steps=args.steps, lr=args.lr,
                              optimizer=args.optimizer, n_query=args.n_query,
                              max_context=args.max_context, context_sizes=args.context_sizes,
                              n_repeats=args.repeats, max_test=args.max_test, n_estimators=args.n_estimators,
                              seed=args.seed, device=args.device, progress=not args.no_progress, dataset_info=info)
    except (ValueError, TypeError) as exc:
        print(f"ttt-helpers: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report["command"] = "ttt-helpers " + " ".join(sys.argv[1:] if argv is None else map(str, argv))
    paths = write_report(report, out_dir)
    for line in summary_lines(report):
        print(line)
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
