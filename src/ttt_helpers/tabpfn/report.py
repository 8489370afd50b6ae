"""The paper's TabPFN protocol on one table of your own, and its report (JSON + PNG).

:func:`read_table` reads a CSV and checks the target; :func:`run_protocol` runs the protocol of the paper's
Figure 3a on it (one table instead of a collection), built from :mod:`ttt_helpers.tabpfn.ttt`:

1. rows are shuffled (seeded); ``ttt_size`` rows are the TTT set, the rest is split 80--20 into a context pool
   and test rows (``tabpfn_ttt.split_rows``);
2. evaluation episodes: for each context size ``n`` and repetition, ``n`` rows of the pool are the context and
   (up to ``max_test``) test rows the queries (``tabpfn_ttt.make_eval_episodes``);
3. TTT: ``steps`` optimiser steps on episodes drawn from the TTT set only (``tabpfn_ttt.ttt_finetune``);
4. the same episodes are scored with the weights before and after TTT; per context size the mean accuracy
   (and its spread over repetitions), the majority-class accuracy, the sample-size reduction factor
   ``n_without(a) / n_with(a)`` at equal accuracy ``a`` (``tabpfn_ttt.reduction_factors``), the TTT cost
   (wall seconds) and the number of queries after which TTT has paid for itself because each query needs a
   shorter context (``tabpfn_ttt.break_even_queries``).

:func:`write_report` writes ``report.json`` and ``accuracy_vs_context.png`` (see :func:`plot_report`);
:func:`summary_lines` is the human-readable summary the command line prints.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_CONTEXT_SIZES",
    "REPORT_KEYS",
    "read_table",
    "prepare_table",
    "resolve_context_sizes",
    "run_protocol",
    "plot_report",
    "write_report",
    "summary_lines",
]

#: Context sizes evaluated by default (those larger than the context pool are replaced by the pool size).
DEFAULT_CONTEXT_SIZES = (2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Top-level keys of ``report.json``.
REPORT_KEYS = ("dataset", "model", "protocol", "curves", "reduction", "cost", "runtime_seconds", "versions")
#: Rows that the protocol needs besides the TTT rows (context pool and test rows).
MIN_REST_ROWS = 10


def read_table(csv, target: str, *, drop=(), categorical=(), keep_top_classes: int | None = None,
               max_rows: int | None = None, seed: int = 0):
    """Read a CSV table and split it into features and a checked classification target.

    Rows whose target is missing are dropped (and counted); everything else is validated.

    Parameters
    ----------
    csv : path-like
    target : str
        The target column.
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
        ``info`` holds the path, sha256, rows read/dropped/used, columns, categorical columns, classes and
        their counts.

    Raises
    ------
    ValueError
        Unreadable file, unknown columns, a single class, more than 10 classes, bad options.
    """
    import pandas as pd

    from .classifier import MAX_CLASSES, check_target
    from ..provenance import sha256_file

    path = Path(csv)
    if not path.is_file():
        raise ValueError(f"could not read {str(csv)!r} as CSV: no such file")
    try:
        df = pd.read_csv(path, low_memory=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        raise ValueError(f"could not read {str(csv)!r} as CSV: {type(exc).__name__}: {exc}") from None
    if df.shape[1] < 2 or df.shape[0] == 0:
        raise ValueError(f"{path.name}: expected a table with a header, at least one row and at least 2 columns "
                         f"(features and a target), got shape {df.shape}")
    columns = [str(c) for c in df.columns]
    df.columns = columns
    if target not in columns:
        raise ValueError(f"unknown target column {target!r}; the table's columns are {columns}")
    for name, given in (("drop", drop), ("categorical", categorical)):
        unknown = [c for c in given if c not in columns]
        if unknown:
            raise ValueError(f"--{name} names unknown column(s) {unknown}; the table's columns are {columns}")
    if target in drop or target in categorical:
        raise ValueError(f"the target {target!r} cannot also be in --drop or --categorical")
    n_read = len(df)
    missing = df[target].isna().to_numpy()
    df = df[~missing].reset_index(drop=True)
    if len(df) == 0:
        raise ValueError(f"the target column {target!r} is empty (all {n_read} values are missing)")
    n_dropped_classes = 0
    if keep_top_classes is not None:
        from ..validation import check_positive_int

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
        from ..validation import check_positive_int

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


def prepare_table(X, y, categorical_features="auto"):
    """Encode features (``TableEncoder``) and labels (``0..C-1``); returns ``Xe, ye, classes, encoder``."""
    from .classifier import TableEncoder, check_target

    enc = TableEncoder(categorical_features).fit(X)
    Xe = enc.transform(X)
    classes, ye = check_target(y, n_rows=len(Xe))
    return Xe, ye, classes, enc


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


def _resolve_ttt_size(ttt_size, n: int) -> int:
    from .classifier import _n_rows

    n_ttt = _n_rows(ttt_size, n, "ttt_size", allow_zero=False)
    if n_ttt < 3:
        raise ValueError(f"ttt_size={ttt_size!r} gives {n_ttt} TTT rows; a TTT episode needs at least 3")
    if n - n_ttt < MIN_REST_ROWS:
        raise ValueError(f"too few rows for ttt_size={ttt_size!r}: the table has {n} usable rows, TTT takes {n_ttt} "
                         f"and the protocol needs at least {MIN_REST_ROWS} more (context pool and test rows), so at "
                         f"least {n_ttt + MIN_REST_ROWS} rows; lower --ttt-size (e.g. a fraction such as 0.5)")
    return n_ttt


def _bar(total, desc, progress):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False, file=None)


def run_protocol(X, y, *, model="auto", ttt_size=0.5, steps: int = 50, lr: float = 1e-4, optimizer: str = "adamw",
                 n_query: int = 128, max_context: int | None = None, context_sizes=DEFAULT_CONTEXT_SIZES,
                 n_repeats: int = 3, max_test: int = 256,
                 n_estimators: int = 1, categorical_features="auto", seed: int = 0, device: str = "cpu",
                 progress: bool = False, dataset_info: dict | None = None) -> dict:
    """Accuracy against context size with and without TTT on one table (the paper's protocol).

    Parameters
    ----------
    X : DataFrame or array (n, d); y : (n,) labels (2 to 10 classes, none missing)
    model : see :func:`ttt_helpers.tabpfn.classifier.resolve_model`
    ttt_size : int or float in (0, 1)
        TTT rows (a fraction of the rows if a float).
    steps, lr, optimizer, n_query, max_context : TTT hyper-parameters (:class:`ttt_helpers.tabpfn.ttt.TTTConfig`)
    context_sizes : sequence of int >= 2
    n_repeats : int
        Random contexts per size.
    max_test : int
        Test rows used as queries (a seeded subsample when there are more).
    seed : int
        Seeds the split, the episodes, TTT and TabPFN's preprocessing.
    progress : bool
        Progress bars on stderr.

    Returns
    -------
    dict with the keys :data:`REPORT_KEYS` (JSON-able).
    """
    from . import ttt as tt
    from .classifier import _template, resolve_model
    from ..validation import check_positive_int

    t_start = time.perf_counter()
    n_repeats = check_positive_int(n_repeats, "n_repeats")
    max_test = check_positive_int(max_test, "max_test")
    n_estimators = check_positive_int(n_estimators, "n_estimators")
    seed = int(seed)
    config = tt.TTTConfig(optimizer=optimizer, steps=steps, lr=lr, n_query=n_query, max_context=max_context)
    Xe, ye, classes, enc = prepare_table(X, y, categorical_features)
    n_ttt = _resolve_ttt_size(ttt_size, len(ye))
    path, description = resolve_model(model)
    rng = np.random.default_rng(seed)
    split = tt.split_rows(len(ye), rng, n_ttt=n_ttt)
    sizes = resolve_context_sizes(context_sizes, len(split["pool"]))
    n_classes = len(classes)

    clf = tt.prepare_classifier(_template(path, device, enc.categorical_indices_), n_estimators=n_estimators,
                                seed=seed, device=device)
    with _bar(len(sizes), "episodes", progress) as bar:
        episodes = []
        for n in sizes:
            episodes += tt.make_eval_episodes(clf, Xe, ye, split, [n], n_repeats, rng, max_test=max_test, seed=seed)
            bar.update(1)
    base_state = tt.snapshot_state(clf)
    history = tt.ttt_finetune(clf, Xe[split["ttt"]], ye[split["ttt"]], n_classes, config, rng, progress=progress,
                              seed=seed)
    ttt_state = tt.snapshot_state(clf)

    acc = {"no_ttt": [], "ttt": []}
    secs = []
    tt.episode_accuracy(clf, episodes[-1], n_classes)  # warm-up, so that the first timing is not inflated
    with _bar(2 * len(episodes), "evaluation", progress) as bar:
        for name, state in (("no_ttt", base_state), ("ttt", ttt_state)):
            tt.load_state(clf, state)
            for ep in episodes:
                t0 = time.perf_counter()
                acc[name].append(tt.episode_accuracy(clf, ep, n_classes))
                secs.append((ep.requested, (time.perf_counter() - t0) / ep.n_query))
                bar.update(1)
    requested = np.array([ep.requested for ep in episodes])
    curves = {"context_sizes": sizes}
    for name in acc:
        a = np.asarray(acc[name])
        curves[name] = {"mean": [float(a[requested == n].mean()) for n in sizes],
                        "std": [float(a[requested == n].std()) for n in sizes]}
    test_rows = episodes[0].y_query
    pool_majority = int(np.bincount(ye[split["pool"]], minlength=n_classes).argmax())
    curves["majority"] = float(np.mean(test_rows == pool_majority))
    curves["n_repeats"] = n_repeats
    curves["n_test"] = int(len(test_rows))

    red = tt.reduction_factors(sizes, curves["no_ttt"]["mean"], curves["ttt"]["mean"])
    per_query = {n: float(np.mean([s for m, s in secs if m == n])) for n in sizes}
    cost = _cost(sizes, per_query, red, float(history["seconds"]), config.steps)
    cost["ttt_prep_seconds"] = float(history["prep_seconds"])
    cost["ttt_final_loss"] = float(np.mean(history["losses"][-max(1, len(history["losses"]) // 5):]))
    cost["ttt_first_loss"] = float(np.mean(history["losses"][:max(1, len(history["losses"]) // 5)]))

    info = dict(dataset_info or {})
    info.update({"rows": int(len(ye)), "n_features": int(Xe.shape[1]),
                 "categorical_columns": [str(info.get("features", list(range(Xe.shape[1])))[j])
                                         for j in enc.categorical_indices_],
                 "missing_feature_values": int(np.isnan(Xe).sum()), "n_classes": n_classes,
                 "classes": [str(c) for c in classes]})
    import importlib.metadata as md

    import torch

    versions = {"ttt_helpers": md.version("ttt-helpers"), "tabpfn": md.version("tabpfn"), "torch": torch.__version__,
                "numpy": np.__version__}
    return {
        "dataset": info,
        "model": {"description": description, "path": str(path), "official": description.startswith("official")},
        "protocol": {"ttt_rows": int(len(split["ttt"])), "pool_rows": int(len(split["pool"])),
                     "test_rows": int(len(split["test"])), "test_rows_used": int(len(test_rows)),
                     "context_sizes": sizes, "n_repeats": n_repeats, "ttt": config.to_dict(),
                     "n_estimators": n_estimators, "seed": seed, "device": device},
        "curves": curves,
        "reduction": red,
        "cost": cost,
        "runtime_seconds": float(time.perf_counter() - t_start),
        "versions": versions,
    }


def _cost(sizes, per_query: dict, red: dict, ttt_seconds: float, steps: int) -> dict:
    """TTT cost and the break-even number of queries at the highest accuracy both curves reach."""
    from .ttt import break_even_queries

    logs = np.log(np.asarray(sizes, dtype=float))
    q = np.asarray([per_query[n] for n in sizes])

    def per_query_at(n):
        return float(np.interp(math.log(n), logs, q))

    headline = None
    for a, nb, nt, f, bound in sorted(zip(red["targets"], red["n_base"], red["n_ttt"], red["factor"], red["bound"]),
                                      key=lambda r: -r[0]):
        if np.isfinite(f):
            headline = {"target_accuracy": float(a), "n_without_ttt": float(nb), "n_with_ttt": float(nt),
                        "factor": float(f), "factor_is_lower_bound": bool(bound),
                        "per_query_seconds_without": per_query_at(nb),
                        "per_query_seconds_with": per_query_at(nt)}
            headline["break_even_queries"] = break_even_queries(ttt_seconds, headline["per_query_seconds_without"],
                                                                headline["per_query_seconds_with"])
            break
    return {"ttt_seconds": float(ttt_seconds), "ttt_steps": int(steps), "seconds_per_step": float(ttt_seconds / steps),
            "per_query_seconds": {str(n): per_query[n] for n in sizes}, "break_even": headline,
            "note": "per-query seconds: one forward pass over the context and the test queries, divided by the "
                    "number of queries (preprocessing excluded); break-even = TTT seconds / per-query saving at "
                    "the highest no-TTT accuracy that TTT reaches with a smaller context (if TTT reaches it "
                    "already at the smallest size, that size is used: the factor is then a lower bound and the "
                    "break-even an upper bound)"}


def _fmt_n(x):
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.1f}"


def summary_lines(report: dict) -> list[str]:
    """A short human-readable summary of a report (rounded numbers)."""
    c, r, k = report["curves"], report["reduction"], report["cost"]
    p, d = report["protocol"], report["dataset"]
    lines = [
        f"table: {d.get('name', '?')} ({d['rows']} rows, {d['n_features']} features, {d['n_classes']} classes)",
        f"model: {report['model']['description']}",
        f"split: {p['ttt_rows']} TTT rows, {p['pool_rows']} context-pool rows, {p['test_rows_used']} test rows; "
        f"{p['ttt']['steps']} {p['ttt']['optimizer']} steps, lr {p['ttt']['lr']:g}",
        f"majority-class accuracy: {c['majority']:.3f}",
        "context size   no TTT   with TTT",
    ]
    for n, a0, a1 in zip(c["context_sizes"], c["no_ttt"]["mean"], c["ttt"]["mean"]):
        lines.append(f"{n:>12d}   {a0:.3f}    {a1:.3f}")
    f = r["median_factor"]
    lines.append(f"median sample-size reduction factor: {'n/a' if not np.isfinite(f) else f'{f:.2f}'}")
    lines.append(f"TTT cost: {k['ttt_seconds']:.1f} s ({k['seconds_per_step']:.2f} s per step)")
    be = k["break_even"]
    if be is None:
        lines.append("break-even: none (TTT never reaches a no-TTT accuracy with a smaller context)")
    else:
        lines.append(f"break-even: accuracy {be['target_accuracy']:.3f} needs {_fmt_n(be['n_without_ttt'])} context "
                     f"rows without TTT and {_fmt_n(be['n_with_ttt'])} with it; TTT pays for itself after "
                     f"{be['break_even_queries']:.0f} queries" if np.isfinite(be["break_even_queries"]) else
                     f"break-even: never (no per-query saving at accuracy {be['target_accuracy']:.3f})")
    return lines


def plot_report(report: dict, ax=None):
    """Accuracy against context size, with and without TTT (mean +- sd over repetitions), and the majority class."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.2))
    c = report["curves"]
    n = np.asarray(c["context_sizes"])
    for key, label, color in (("no_ttt", "TabPFN, no TTT", "C0"), ("ttt", "TabPFN after TTT", "C3")):
        m, s = np.asarray(c[key]["mean"]), np.asarray(c[key]["std"])
        ax.plot(n, m, "o-", color=color, label=f"{label} (measured)")
        ax.fill_between(n, m - s, m + s, color=color, alpha=0.15)
    ax.axhline(c["majority"], color="0.5", ls="--", label="majority class")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context size n (labelled rows in the prompt)")
    ax.set_ylabel("test accuracy")
    name = report["dataset"].get("name", "table")
    model = "official TabPFN v2" if report["model"]["official"] else "our fallback TabPFN"
    if "checkpoint file" in report["model"]["description"]:
        model = report["model"]["description"]
    ax.set_title(f"{name}: accuracy vs context ({model})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def write_report(report: dict, output_dir) -> dict:
    """Write ``report.json`` and ``accuracy_vs_context.png`` into ``output_dir``; return their paths."""
    from matplotlib.figure import Figure  # no pyplot: works under any backend, leaves no open figure

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "report.json", out / "accuracy_vs_context.png"
    fig = Figure(figsize=(6.4, 4.2))
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
