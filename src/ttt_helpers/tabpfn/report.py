"""Reading a table, and writing and drawing the results of the protocol (no model runs here, except in the
command line's own subprocess that :func:`run_command_line` starts).

- :func:`read_table` reads a CSV (separator detected and named), drops the rows without a target (and counts
  them) and checks the target;
- :func:`make_report` turns the result of :func:`ttt_helpers.tabpfn.protocol.run_protocol` on one table and its
  :func:`ttt_helpers.tabpfn.analysis.table_summary` into the command line's ``report.json``;
  :func:`summary_lines` is what the command line prints (:func:`search_outcome`: what the recipe search
  chose); :func:`plot_report` draws ``accuracy_vs_context.png`` (TabPFN without and with TTT,
  LogisticRegression and HistGradientBoosting fitted on the same context rows, the majority-class rate, and the
  warnings); :func:`write_report` writes both;
- :func:`run_command_line` runs the command line in a subprocess, as a reader would, and reads its report back;
- :func:`plot_curves` draws the mean curves of a benchmark run (:func:`ttt_helpers.tabpfn.analysis.summarise`).
"""

from __future__ import annotations

import csv as _csv
import json
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_CONTEXT_SIZES",
    "REPORT_KEYS",
    "SEPARATORS",
    "LABELS",
    "read_table",
    "detect_separator",
    "resolve_context_sizes",
    "make_report",
    "summary_lines",
    "search_outcome",
    "run_command_line",
    "plot_report",
    "write_report",
    "plot_curves",
]

#: Context sizes evaluated by default (those larger than the context pool are replaced by the pool size).
DEFAULT_CONTEXT_SIZES = (2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Top-level keys of ``report.json``.
REPORT_KEYS = ("dataset", "model", "protocol", "curves", "recipe", "reduction", "cost", "warnings",
               "runtime_seconds", "versions")
#: Column separators that :func:`detect_separator` considers.
SEPARATORS = (",", ";", "\t", "|")
#: Curve names in the figures.
LABELS = {"none": "no TTT (pretrained)", "adamw": "TTT, AdamW", "sgd": "TTT, SGD + momentum",
          "selected": "TTT, recipe chosen on held-out TTT rows", "ttt": "TabPFN after TTT",
          "logistic_regression": "LogisticRegression", "hist_gradient_boosting": "HistGradientBoosting"}


def detect_separator(path, *, n_lines: int = 50) -> str:
    """The column separator of a CSV file: the candidate of :data:`SEPARATORS` that splits the first lines into
    the same number (> 1) of fields most often; ``","`` when none does."""
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        lines = [line for _, line in zip(range(n_lines), fh) if line.strip()]
    best, best_score = ",", (0, 0)
    for sep in SEPARATORS:
        counts = [len(row) for row in _csv.reader(lines, delimiter=sep)]
        if not counts or counts[0] < 2:
            continue
        score = (sum(c == counts[0] for c in counts), counts[0])
        if score > best_score:
            best, best_score = sep, score
    return best


def _sep_name(sep: str) -> str:
    return {",": "comma ','", ";": "semicolon ';'", "\t": "tab", "|": "bar '|'"}.get(sep, repr(sep))


def read_table(csv, target: str, *, sep: str | None = None, drop=(), categorical=(),
               keep_top_classes: int | None = None, max_rows: int | None = None, seed: int = 0):
    """Read a CSV table and split it into features and a checked classification target.

    Rows whose target is missing are dropped (and counted in ``info["rows_missing_target"]``); everything else
    is validated.

    Parameters
    ----------
    csv : path-like
    target : str
        The target column.
    sep : str, optional
        The column separator; by default detected (:func:`detect_separator`) and recorded in ``info["separator"]``.
    drop : sequence of str
        Columns to leave out (identifiers, leakage).
    categorical : sequence of str
        Columns to treat as categorical although they hold numbers.
    keep_top_classes : int, optional
        Keep the rows of the ``k`` most frequent classes only (the paper's rule for more than 10 classes).
    max_rows : int, optional
        Use a seeded random subset of at most this many rows.
    seed : int

    Returns
    -------
    X : pandas.DataFrame, y : pandas.Series, info : dict
        ``info`` holds the path, sha256, separator, rows read/dropped/used, columns, classes and their counts.

    Raises
    ------
    ValueError
        Unreadable file, unknown columns, a single class, more than 10 classes, bad options.
    """
    import pandas as pd

    from ..provenance import sha256_file
    from ..validation import check_positive_int
    from .encoder import MAX_CLASSES, check_target

    path = Path(csv)
    if not path.is_file():
        raise ValueError(f"could not read {str(csv)!r} as CSV: no such file")
    try:
        sep = detect_separator(path) if sep is None else sep
        df = pd.read_csv(path, sep=sep, low_memory=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        raise ValueError(f"could not read {str(csv)!r} as CSV: {type(exc).__name__}: {exc}") from None
    if df.shape[1] < 2 or df.shape[0] == 0:
        hint = "" if df.shape[1] >= 2 else (
            f"; with the separator {_sep_name(sep)} the header has one column, {str(df.columns[0])[:60]!r}: if the "
            "file uses another separator, name it with --sep")
        raise ValueError(f"{path.name}: expected a table with a header, at least one row and at least 2 columns "
                         f"(features and a target), got {df.shape[0]} rows and {df.shape[1]} column(s){hint}")
    columns = [str(c) for c in df.columns]
    df.columns = columns
    if target not in columns:
        raise ValueError(f"unknown target column {target!r}; the table's columns (separator {_sep_name(sep)}) are "
                         f"{columns}")
    for name, given in (("drop", drop), ("categorical", categorical)):
        unknown = [c for c in given if c not in columns]
        if unknown:
            raise ValueError(f"--{name} names unknown column(s) {unknown}; the table's columns are {columns}")
    if target in drop or target in categorical:
        raise ValueError(f"the target {target!r} cannot also be in --drop or --categorical")
    n_read = len(df)
    missing = df[target].isna().to_numpy() | df[target].astype(str).str.strip().eq("").to_numpy()
    df = df[~missing].reset_index(drop=True)
    if len(df) == 0:
        raise ValueError(f"the target column {target!r} is empty (all {n_read} values are missing)")
    n_dropped_classes = 0
    if keep_top_classes is not None:
        k = check_positive_int(keep_top_classes, "keep_top_classes")
        if not 2 <= k <= MAX_CLASSES:
            raise ValueError(f"keep_top_classes must be between 2 and {MAX_CLASSES}, got {k}")
        counts = df[target].astype(str).value_counts()
        order = sorted(counts.index, key=lambda c: (-counts[c], c))[:k]
        keep = df[target].astype(str).isin(order).to_numpy()
        n_dropped_classes = int((~keep).sum())
        df = df[keep].reset_index(drop=True)
    n_subsampled = 0
    if max_rows is not None:
        max_rows = check_positive_int(max_rows, "max_rows")
        if len(df) > max_rows:
            rows = np.sort(np.random.default_rng(seed).choice(len(df), size=max_rows, replace=False))
            n_subsampled = len(df) - max_rows
            df = df.iloc[rows].reset_index(drop=True)
    y = df[target]
    X = df.drop(columns=[target, *drop])
    if X.shape[1] == 0:
        raise ValueError("no feature columns left after removing the target and --drop columns")
    for c in categorical:
        X[c] = X[c].astype("string")
    classes, _ = check_target(y, n_rows=len(X))
    info = {
        "csv": str(path),
        "name": path.stem,
        "sha256": sha256_file(path),
        "separator": sep,
        "target": target,
        "rows_read": int(n_read),
        "rows_missing_target": int(missing.sum()),
        "rows_other_classes": n_dropped_classes,
        "rows_subsampled_away": n_subsampled,
        "rows": int(len(X)),
        "features": [str(c) for c in X.columns],
        "dropped_columns": list(drop),
        "classes": [str(c) for c in classes],
        "class_counts": {str(k): int(v) for k, v in y.astype(str).value_counts().items()},
    }
    return X, y, info


def resolve_context_sizes(requested, pool_size: int) -> list[int]:
    """Sorted unique context sizes, each >= 2; sizes above ``pool_size`` become ``pool_size``."""
    sizes = []
    for n in requested:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"context sizes must be integers, got {n!r}")
        if n < 2:
            raise ValueError(f"context sizes must be >= 2 (TabPFN rejects a one-row context: all its features are "
                             f"constant), got {n}")
        sizes.append(int(min(n, pool_size)))
    if not sizes:
        raise ValueError("give at least one context size")
    return sorted(set(sizes))


def _curve(result: dict, label: str) -> dict:
    reps = result["acc_reps"][label]
    return {"mean": [float(np.mean(a)) for a in reps], "std": [float(np.std(a)) for a in reps]}


def make_report(result: dict, summary: dict, *, dataset: dict, model: dict, settings: dict, versions: dict,
                runtime_seconds: float) -> dict:
    """The command line's ``report.json`` (keys :data:`REPORT_KEYS`) from a protocol result on one table
    (label ``"ttt"``) and its :func:`~ttt_helpers.tabpfn.analysis.table_summary`."""
    from .protocol import BASELINES

    t = result["ttt"]["ttt"]
    curves = {"context_sizes": result["context_sizes"], "no_ttt": _curve(result, "none"), "ttt": _curve(result, "ttt"),
              **{b: _curve(result, b) for b in BASELINES if b in result["acc_reps"]},
              "majority": result["majority"], "n_repeats": len(result["acc_reps"]["none"][0]),
              "n_test": result["n_query"],
              "top_class_share": {"no_ttt": result["top_share"]["none"], "ttt": result["top_share"]["ttt"]},
              "rules": result["rules"], "no_ttt_open_argmax": result["acc_open"]["none"],
              "absent_class_share": {"no_ttt": result["absent_share"]["none"], "ttt": result["absent_share"]["ttt"]}}
    if "ttt" in result.get("guard", {}):  # analysis.apply_guard: per size, which weights the ttt curve used
        curves["ttt_weights"] = ["adapted" if u else "pretrained" for u in result["guard"]["ttt"]]
        curves["ttt_unguarded"] = _curve(result, "ttt (unguarded)")
    recipe = {k: t[k] for k in ("recipe", "selected", "zero_shot", "best", "runs", "n_train", "n_validation",
                                "validation_sizes") if k in t}
    return {
        "dataset": dataset,
        "model": model,
        "protocol": {"ttt_rows": result["n_rows_split"]["ttt"], "pool_rows": result["n_rows_split"]["pool"],
                     "test_rows": result["n_rows_split"]["test"], "test_rows_used": result["n_query"],
                     **settings},
        "curves": curves,
        "recipe": recipe,
        "reduction": summary["reduction"],
        "cost": {"ttt_seconds": float(t["seconds"]), "optimizer_seconds": float(t["ttt_seconds"]),
                 "search_scoring_seconds": float(t["validation_seconds"]), "ttt_steps": int(t["steps"]),
                 "steps_run": int(sum(r["steps_run"] for r in t.get("runs", [])) or t["steps"]),
                 "per_query_seconds": {str(n): q for n, q in zip(result["context_sizes"],
                                                                  summary["per_query_seconds"])},
                 "break_even": summary["break_even"],
                 "note": "ttt_seconds: the whole test-time training, recipe search included (optimiser steps + "
                         "scoring the validation slice); per-query seconds: one forward pass over the context and the "
                         "test queries, divided by the number of queries (preprocessing excluded); break-even = TTT "
                         "seconds / per-query saving, at the highest accuracy level whose reduction factor is "
                         "defined (levels above the majority rate + margin that the no-TTT curve reaches)"},
        "warnings": summary["warnings"],
        "runtime_seconds": float(runtime_seconds),
        "versions": versions,
    }


def _fmt_n(x):
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.1f}"


def search_outcome(record: dict) -> str:
    """What a recipe search chose, in words, with the validation accuracies behind the choice.

    ``record`` is the record of a search (:func:`ttt_helpers.tabpfn.protocol.adapt`: the estimator's
    ``ttt_history_``, or ``report["recipe"]``), with ``selected``, ``zero_shot``, ``best`` and ``recipe``, and the
    estimator's ``guard`` record if it has one (:class:`~ttt_helpers.tabpfn.classifier.TTTTabPFNClassifier`).
    """
    sel, z, b = record["selected"], record["zero_shot"], record["best"]
    g = record.get("guard") or {}
    if g.get("restored"):
        c = g["chosen"]
        return (f"chose lr {c['lr']:g} after {c['steps']} steps (validation accuracy {b['acc']:.3f}, zero-shot "
                f"{z['acc']:.3f}), then kept the pretrained weights: the context ({g['n_context']} rows) is longer "
                f"than every validated one and that checkpoint did not gain at the longest ({g['longest_validated']} "
                f"rows: {g['gain_at_longest']:+.3f} +- {g['se_at_longest']:.3f})")
    if sel:
        return (f"chose lr {sel['lr']:g} after {sel['steps']} steps (validation accuracy {b['acc']:.3f}, "
                f"zero-shot {z['acc']:.3f})")
    if b is None:
        r = record["recipe"]
        noise = f" + {r['noise_z']:g} standard errors" if r.get("noise_z") else ""
        if noise and r.get("max_allowance") is not None:
            noise += f", at most {r['max_allowance']:g},"
        return (f"kept the pretrained weights (every TTT checkpoint fell more than {r['tolerance']:g}{noise} "
                "below them at some validation context size)")
    return f"kept the pretrained weights (best TTT {b['acc']:.3f} vs zero-shot {z['acc']:.3f})"


def run_command_line(csv, output_dir, *options, timeout: float = 1200) -> tuple[str, dict]:
    """Run ``python -m ttt_helpers CSV --output-dir OUTPUT_DIR OPTIONS...`` in a subprocess, as a reader would type
    it, and read back the ``report.json`` it wrote.

    Returns
    -------
    stdout : str
        What the command line printed (:func:`summary_lines`, then the files written).
    report : dict
        The parsed ``report.json``.

    Raises
    ------
    RuntimeError
        If the command exits with a non-zero status (its standard error is in the message).
    """
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ttt_helpers", str(csv), "--output-dir", str(output_dir), *map(str, options)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"the command line exited with status {run.returncode}: {run.stderr.strip()}")
    return run.stdout, json.loads((Path(output_dir) / "report.json").read_text())


def summary_lines(report: dict) -> list[str]:
    """A short human-readable summary of a report (rounded numbers)."""
    c, r, k = report["curves"], report["reduction"], report["cost"]
    p, d, rec = report["protocol"], report["dataset"], report["recipe"]
    lines = [f"table: {d.get('name', '?')} ({d['rows']} rows, {d['n_features']} features, {d['n_classes']} classes)"]
    if d.get("rows_missing_target"):
        lines.append(f"dropped {d['rows_missing_target']} of {d['rows_read']} rows whose target is empty")
    lines += [
        f"model: {report['model']['description']}",
        f"split: {p['ttt_rows']} TTT rows, {p['pool_rows']} context-pool rows, {p['test_rows_used']} test rows",
    ]
    if rec.get("recipe", {}).get("kind") == "search":
        lines.append(f"recipe search on {rec['n_validation']} held-out TTT rows: learning rates "
                     f"{', '.join(f'{v:g}' for v in rec['recipe']['lrs'])}, {k['steps_run']} steps in all; "
                     + search_outcome(rec))
    else:
        lines.append(f"fixed recipe: {k['ttt_steps']} steps, lr {rec['selected']['lr']:g}")
    lines.append(f"time: TTT {k['ttt_seconds']:.1f} s in all ({k['optimizer_seconds']:.1f} s optimiser steps, "
                 f"{k['search_scoring_seconds']:.1f} s scoring the validation slice); whole run "
                 f"{report['runtime_seconds']:.0f} s")
    off = [n for n, w in zip(c["context_sizes"], c.get("ttt_weights", [])) if w == "pretrained"]
    if off and rec.get("selected"):
        lines.append(f"with TTT: the pretrained weights at n = {', '.join(map(str, off))} (longer than every "
                     f"validated context, {rec['validation_sizes'][-1]} rows, and no validation gain there)")
    lines.append(f"majority-class accuracy: {c['majority']:.3f}")
    base = [b for b in ("logistic_regression", "hist_gradient_boosting") if b in c]
    lines.append("context size   no TTT   with TTT" + "".join(f"   {LABELS[b][:8]:>8}" for b in base))
    for i, (n, a0, a1) in enumerate(zip(c["context_sizes"], c["no_ttt"]["mean"], c["ttt"]["mean"])):
        lines.append(f"{n:>12d}   {a0:.3f}    {a1:.3f}" + "".join(f"      {c[b]['mean'][i]:.3f}" for b in base))
    f = r["median_factor"]
    lines.append(f"median sample-size reduction factor (accuracy levels above {r['floor']:.3f}, the majority rate + "
                 f"margin): {'undefined' if not np.isfinite(f) else f'{f:.2f}'}")
    be = k["break_even"]
    if be is None:
        lines.append("break-even: not defined (no accuracy level with a defined reduction factor)")
    elif np.isfinite(be["break_even_queries"]):
        lines.append(f"break-even: accuracy {be['target_acc']:.3f} needs {_fmt_n(be['n_base'])} context rows without "
                     f"TTT and {_fmt_n(be['n_ttt'])} with it; TTT pays for itself after "
                     f"{be['break_even_queries']:.0f} queries")
    else:
        lines.append(f"break-even: never (no per-query saving at accuracy {be['target_acc']:.3f})")
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    return lines


def plot_report(report: dict, ax=None):
    """Accuracy against context size: TabPFN without and with TTT (mean +- sd over repetitions), the baselines
    fitted on the same context rows, the majority class; the warnings under the title."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.6))
    c = report["curves"]
    n = np.asarray(c["context_sizes"])
    for key, label, color, style in (("no_ttt", "TabPFN, no TTT", "C0", "o-"), ("ttt", "TabPFN after TTT", "C3", "o-"),
                                     ("logistic_regression", "LogisticRegression", "C2", "s--"),
                                     ("hist_gradient_boosting", "HistGradientBoosting", "C4", "^--")):
        if key not in c:
            continue
        m, s = np.asarray(c[key]["mean"]), np.asarray(c[key]["std"])
        ax.plot(n, m, style, color=color, ms=4, label=f"{label} (measured)")
        if key in ("no_ttt", "ttt"):
            ax.fill_between(n, m - s, m + s, color=color, alpha=0.15)
    ax.axhline(c["majority"], color="0.5", ls=":", label="majority class")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context size n (labelled rows in the prompt)")
    ax.set_ylabel("test accuracy")
    name = report["dataset"].get("name", "table")
    model = "official TabPFN v2" if report["model"]["official"] else "our fallback TabPFN"
    if "checkpoint file" in report["model"]["description"]:
        model = report["model"]["description"]
    f = report["reduction"]["median_factor"]
    title = f"{name}: accuracy vs context ({model})\nmedian reduction factor: " + (
        "undefined" if not np.isfinite(f) else f"{f:.2f}")
    if report["warnings"]:
        title += f"\nWARNING: {len(report['warnings'])} warning(s), see report.json"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return ax


def write_report(report: dict, output_dir) -> dict:
    """Write ``report.json`` and ``accuracy_vs_context.png`` into ``output_dir``; return their paths."""
    from matplotlib.figure import Figure  # no pyplot: works under any backend, leaves no open figure

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "report.json", out / "accuracy_vs_context.png"
    fig = Figure(figsize=(6.4, 4.8))
    plot_report(report, fig.subplots())
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    json_path.write_text(json.dumps(report, indent=2, default=_json_default, allow_nan=True) + "\n")
    return {"json": json_path, "png": png_path}


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


def plot_curves(ax, summary: dict, *, labels=("none", "selected", "adamw", "sgd"), title: str = "",
                style: str = "-o", baselines: bool = True):
    """Mean accuracy against context size (log axis) with 95 % bands, one curve per label present in a
    :func:`~ttt_helpers.tabpfn.analysis.summarise` result, the baselines dashed, the mean majority rate dotted."""
    sizes = summary["sizes"]
    extra = [b for b in ("logistic_regression", "hist_gradient_boosting") if baselines and b in summary["curves"]]
    for k in [*labels, *extra]:
        if k not in summary["curves"]:
            continue
        c = summary["curves"][k]
        (line,) = ax.plot(sizes, c["mean"], "--" if k in extra else style, ms=4, label=f"{LABELS.get(k, k)} (measured)")
        if k not in extra:
            ax.fill_between(sizes, c["lo"], c["hi"], color=line.get_color(), alpha=0.2)
    if "majority" in summary:
        ax.axhline(summary["majority"], color="gray", ls=":", label="majority class (mean over tables)")
    ax.set_xscale("log")
    ax.set(xlabel="in-context samples n (log scale)", ylabel=f"mean test accuracy over {summary['n_datasets']} tables",
           title=title)
    ax.legend(fontsize=8)
    return ax
