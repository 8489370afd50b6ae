"""From protocol results to the numbers and tables of the chapters and the report.

Inputs are the dicts of :func:`ttt_helpers.tabpfn.protocol.run_protocol` /
:func:`~ttt_helpers.tabpfn.protocol.run_dataset` (one per table) and of
:func:`~ttt_helpers.tabpfn.protocol.measure_cost`. Nothing here runs a model.

- Curves: :func:`mean_curve_with_band` (mean over tables and a 95 % band), :func:`paired_gains` (per-table gain
  of TTT, then its mean and band), :func:`curve_agreement` (two runs of the same model agree within noise).
- Sample-size reduction at equal accuracy, :func:`reduction_factors`: ``n_no_TTT(a) / n_TTT(a)``, only for
  accuracy levels ``a`` that the no-TTT curve reaches and that lie above the majority-class rate by
  :data:`MAJORITY_MARGIN` (a level that predicting the majority class already reaches says nothing about
  learning from the context). :func:`break_even_queries` turns a factor and measured costs into the number of
  queries after which TTT has paid for itself; it is only reported where the factor is defined.
- :func:`collapse_warnings`: a recipe that makes the model predict one class for 95 % or more of the rows.
- :func:`summarise` (a benchmark run), :func:`table_summary` (one table: the command line's report), and the
  tables the chapters show: :func:`per_dataset_table`, :func:`accuracy_table`, :func:`reduction_table`,
  :func:`break_even_table`, :func:`cost_table`, :func:`goal_table`, :func:`recipe_table`,
  :func:`prediction_table`.
- The lines the chapters print about a benchmark run, so that a chapter's cell is one call:
  :func:`search_line`, :func:`recipe_line`, :func:`headline_lines`, :func:`paired_gain_lines`,
  :func:`break_even_lines`; and the numbers its prose quotes (through ``glue``): :func:`run_numbers`,
  :func:`recipe_numbers`, :func:`gain_numbers`, with :func:`mean_curves` for the chapter's own checks.
"""

from __future__ import annotations

import math

import numpy as np

from ..validation import check_finite_array, check_nonnegative_float

__all__ = [
    "MAJORITY_MARGIN",
    "COLLAPSE_SHARE",
    "standard_error",
    "mean_curve_with_band",
    "monotone_envelope",
    "context_needed",
    "reduction_factors",
    "break_even_queries",
    "ttt_cost_seconds",
    "paired_gains",
    "collapse_warnings",
    "absent_class_warnings",
    "summarise",
    "table_summary",
    "curve_agreement",
    "per_dataset_table",
    "accuracy_table",
    "reduction_table",
    "break_even_table",
    "cost_table",
    "goal_table",
    "validation_ceiling",
    "fallback_quality_bar",
    "majority_margins",
    "recipe_table",
    "prediction_table",
    "merge_labels",
    "guarded_label",
    "apply_guard",
    "PER_SIZE_KEYS",
    "mean_curves",
    "search_line",
    "run_numbers",
    "recipe_line",
    "recipe_numbers",
    "gain_numbers",
    "search_comparison",
    "headline_lines",
    "paired_gain_lines",
    "break_even_lines",
]

#: Accuracy levels for a reduction factor must exceed the majority-class rate by this much.
MAJORITY_MARGIN = 0.02
#: A curve whose predictions fall in one class this often (or more) gets a warning.
COLLAPSE_SHARE = 0.95
#: The model without TTT gets a warning where ``tabpfn``'s own rule scores this much above the open argmax.
ABSENT_GAP = 0.02


# ----------------------------------------------------------------------------------------------------------
# Curves


def standard_error(values, axis: int = 0):
    """The standard error of the mean along ``axis``: ``sd / sqrt(n)``, the sample standard deviation with
    ``ddof=1``; 0 where there is one value. For paired per-table differences it is the standard error the book
    quotes beside a mean difference (``mean +- se``)."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    if n < 2:
        return np.zeros_like(values.mean(axis=axis))
    return values.std(axis=axis, ddof=1) / math.sqrt(n)


def mean_curve_with_band(acc, *, z: float = 1.96):
    """Mean over tables and a normal-approximation confidence band.

    Parameters
    ----------
    acc : (n_tables, n_sizes) array of per-table mean accuracies (or gains)

    Returns
    -------
    mean, lo, hi : (n_sizes,) arrays; the band is ``mean +- z * sd / sqrt(n_tables)``.
    """
    acc = check_finite_array(acc, "acc", ndim=2)
    m = acc.mean(axis=0)
    se = standard_error(acc, axis=0)
    return m, m - z * se, m + z * se


def paired_gains(results: list, label: str, *, base: str = "none") -> dict:
    """Per-table accuracy gain of ``label`` over ``base`` at each size, and its mean with a 95 % band.

    Returns
    -------
    dict with ``gains`` ((n_tables, n_sizes) array), ``mean``, ``lo``, ``hi`` (arrays over sizes).
    """
    G = np.array([np.array(r["acc"][label]) - np.array(r["acc"][base]) for r in results])
    m, lo, hi = mean_curve_with_band(G)
    return {"gains": G, "mean": m, "lo": lo, "hi": hi}


def monotone_envelope(acc) -> np.ndarray:
    """Running maximum of a curve (accuracy reachable with *at most* n samples)."""
    return np.maximum.accumulate(check_finite_array(acc, "acc", ndim=1))


def context_needed(sizes, acc, target: float) -> float:
    """Smallest context size at which the curve reaches ``target``, interpolating linearly in ``log n``.

    Uses the running maximum of the curve. Returns ``nan`` if the target is never reached, and the first size
    if it is reached there already.
    """
    sizes = check_finite_array(sizes, "sizes", ndim=1)
    acc = monotone_envelope(acc)
    if len(sizes) != len(acc) or np.any(np.diff(sizes) <= 0) or sizes[0] <= 0:
        raise ValueError("sizes must be positive, increasing and as long as acc")
    if target > acc[-1]:
        return float("nan")
    i = int(np.argmax(acc >= target))
    if i == 0:
        return float(sizes[0])
    a0, a1 = acc[i - 1], acc[i]
    l0, l1 = math.log(sizes[i - 1]), math.log(sizes[i])
    frac = 0.0 if a1 == a0 else (target - a0) / (a1 - a0)
    return float(math.exp(l0 + frac * (l1 - l0)))


def reduction_factors(sizes, acc_base, acc_ttt, targets=None, *, floor: float | None = None) -> dict:
    """Sample-size reduction at equal accuracy: ``n_base(a) / n_ttt(a)`` for target accuracies ``a``.

    By default the targets are the distinct values of the no-TTT curve (running maximum) at the sizes after
    the first that exceed its value at the first size (so ``n_base`` is exactly a grid size and > the first
    size) and, if ``floor`` is given, exceed ``floor`` (e.g. the majority-class rate plus
    :data:`MAJORITY_MARGIN`). A target that TTT already exceeds at the first size gives only a lower bound,
    ``n_base / n_1`` (flagged ``bound=True``).

    Returns
    -------
    dict with ``targets``, ``n_base``, ``n_ttt``, ``factor``, ``bound`` (lists), ``floor`` and ``median_factor``
    (over the targets where both are defined and not a bound; ``nan`` if none).
    """
    sizes = check_finite_array(sizes, "sizes", ndim=1)
    base = monotone_envelope(acc_base)
    ttt = monotone_envelope(acc_ttt)
    if targets is None:
        targets = []
        for a in base[1:]:
            if a > base[0] + 1e-12 and (not targets or a > targets[-1] + 1e-12) and (floor is None or a > floor):
                targets.append(float(a))
    nb, nt, fac, bound = [], [], [], []
    for a in targets:
        b = context_needed(sizes, base, a)
        t = context_needed(sizes, ttt, a)
        nb.append(b)
        nt.append(t)
        fac.append(b / t if np.isfinite(b) and np.isfinite(t) else float("nan"))
        bound.append(bool(np.isfinite(t) and t == sizes[0] and ttt[0] > a))
    ok = [f for f, bd in zip(fac, bound) if np.isfinite(f) and not bd]
    return {"targets": list(map(float, targets)), "n_base": nb, "n_ttt": nt, "factor": fac, "bound": bound,
            "floor": None if floor is None else float(floor),
            "median_factor": float(np.median(ok)) if ok else float("nan")}


def break_even_queries(ttt_seconds: float, per_query_base: float, per_query_ttt: float) -> float:
    """Queries after which a one-off TTT cost is repaid by cheaper inference.

    With TTT, each query needs a shorter context and so costs ``per_query_ttt`` instead of
    ``per_query_base`` seconds; TTT costs ``ttt_seconds`` once. Returns ``ttt_seconds / saving`` (``inf`` if
    TTT saves nothing per query).
    """
    ttt_seconds = check_nonnegative_float(ttt_seconds, "ttt_seconds")
    per_query_base = check_nonnegative_float(per_query_base, "per_query_base")
    per_query_ttt = check_nonnegative_float(per_query_ttt, "per_query_ttt")
    saving = per_query_base - per_query_ttt
    return float(ttt_seconds / saving) if saving > 0 else float("inf")


def _interp_loglog(sizes, values, n):
    return float(np.exp(np.interp(np.log(n), np.log(sizes), np.log(np.maximum(values, 1e-12)))))


def _break_even_rows(red: dict, cost_sizes, per_query, ttt_seconds: float) -> list:
    """Break-even at each target whose factor is defined (per-query costs interpolated log-log)."""
    cs = np.asarray(cost_sizes, dtype=float)
    pq = np.asarray(per_query, dtype=float)
    rows = []
    for a, nb, nt, f, bd in zip(red["targets"], red["n_base"], red["n_ttt"], red["factor"], red["bound"]):
        if not np.isfinite(f):
            continue
        cb, ct = _interp_loglog(cs, pq, nb), _interp_loglog(cs, pq, nt)
        rows.append({"target_acc": a, "n_base": nb, "n_ttt": nt, "per_query_base": cb, "per_query_ttt": ct,
                     "ttt_seconds": ttt_seconds, "break_even_queries": break_even_queries(ttt_seconds, cb, ct),
                     "bound": bd})
    return rows


def ttt_cost_seconds(results: list, label: str, cost: dict) -> float:
    """One-off TTT cost of a label on the cost machine: the measured seconds per step times the mean number of
    steps run per table (all learning rates of a search), times the runs' own ratio of whole TTT time (scoring
    on the validation slice included) to optimiser-step time."""
    per_step = cost["ttt_seconds"] / cost["ttt_steps"]
    steps = np.mean([r["ttt"][label].get("steps_run", r["ttt"][label]["steps"]) for r in results])
    whole = np.mean([r["ttt"][label]["seconds"] / max(r["ttt"][label].get("ttt_seconds", r["ttt"][label]["seconds"]),
                                                      1e-12) for r in results])
    return float(per_step * steps * whole)


#: The per-label, per-context-size fields of a :func:`~ttt_helpers.tabpfn.protocol.run_protocol` result that a
#: guarded curve takes size by size from the adapted or the pretrained weights.
PER_SIZE_KEYS = ("acc", "acc_reps", "top_share", "absent_share", "acc_present", "acc_open")


def _guard_use(r: dict, label: str, z: float) -> list:
    """Per context size of ``r``: whether :func:`ttt_helpers.tabpfn.finetune.adapted_at` keeps ``label``'s
    adapted weights there."""
    from .finetune import adapted_at

    return [adapted_at(r["ttt"][label], n, z) for n in r["context_sizes"]]


def _pick(r: dict, key: str, label: str, use: list) -> list:
    return [a if u else b for u, a, b in zip(use, r[key][label], r[key]["none"])]


def guarded_label(results, label: str = "selected", new: str | None = None, z: float = 0.0):
    """``results`` with a curve ``new`` (default ``label + " (guarded)"``): at each context size the accuracy of
    ``label`` where :func:`ttt_helpers.tabpfn.finetune.adapted_at` says to use the adapted weights, else that of
    ``"none"``, the pretrained weights on the same episodes (exact, since every label scores the same episodes).
    ``results`` is a list of :func:`~ttt_helpers.tabpfn.protocol.run_protocol` results or a dict of them (nested
    dicts allowed, e.g. table -> seed -> result); the result has the same shape.
    """
    new = new or f"{label} (guarded)"
    if isinstance(results, dict) and "acc" not in results:
        return {k: guarded_label(v, label, new, z) for k, v in results.items()}
    if isinstance(results, list):
        return [guarded_label(r, label, new, z) for r in results]
    r = results
    if new in r["acc"]:
        raise ValueError(f"the result already has a curve {new!r}")
    use = _guard_use(r, label, z)
    return {**r, "acc": {**r["acc"], new: _pick(r, "acc", label, use)},
            "acc_reps": {**r["acc_reps"], new: _pick(r, "acc_reps", label, use)}}


def apply_guard(result: dict, label: str = "ttt", z: float = 0.0) -> dict:
    """One protocol result with ``label``'s curves guarded in place, as a user who follows
    :func:`ttt_helpers.tabpfn.finetune.adapted_at` would predict (the command line's report): every per-size field
    (:data:`PER_SIZE_KEYS`) of ``label`` taken size by size from the adapted or the pretrained weights (``"none"``,
    the same episodes); the unguarded ones kept as ``label + " (unguarded)"``; ``result["guard"][label]`` the list
    of booleans, per context size, "adapted weights used". A search that kept the pretrained weights gives
    ``False`` everywhere (its curve already is theirs)."""
    if f"{label} (unguarded)" in result["acc"]:
        raise ValueError(f"the result's {label!r} curve is guarded already")
    use = _guard_use(result, label, z)
    out = {**result, "guard": {**result.get("guard", {}), label: use}}
    for key in PER_SIZE_KEYS:
        if key in result and label in result[key] and "none" in result[key]:
            out[key] = {**result[key], f"{label} (unguarded)": result[key][label],
                        label: _pick(result, key, label, use)}
    return out


def merge_labels(results, other, labels):
    """``results`` with the curves ``labels`` of ``other`` added, table by table (same names, same episodes: e.g.
    the baselines of ``scripts/tabpfn_experiment.py --baselines-only`` beside a TTT run with the same settings).

    ``results`` and ``other`` are lists of :func:`~ttt_helpers.tabpfn.protocol.run_protocol` results matched by
    ``name``, or dicts of them with the same keys (nested dicts allowed, e.g. table -> seed -> result, as
    ``scripts/check_search_defaults.py`` writes). ``labels`` is a list of labels, kept as they are, or a dict
    ``{label in other: new label}``, to put a second run's ``"selected"`` beside the first's under another name.
    A label's TTT record (``ttt[label]``) comes along when ``other`` has one.

    Raises ``ValueError`` if a table is missing from ``other``, its episodes differ (other context sizes used,
    other splits or test rows), or a new label is already a curve of ``results``.
    """
    rename = dict(labels) if isinstance(labels, dict) else {label: label for label in labels}
    if isinstance(results, dict):
        if "acc" in results:
            return _merge_one(results, other, rename, "the result")
        missing = set(results) - set(other)
        if missing:
            raise ValueError(f"{sorted(map(str, missing))} missing from the other run")
        return {k: merge_labels(v, other[k], rename) for k, v in results.items()}
    by_name = {r["name"]: r for r in other}
    out = []
    for r in results:
        o = by_name.get(r["name"])
        if o is None:
            raise ValueError(f"table {r['name']!r} is missing from the other run")
        out.append(_merge_one(r, o, rename, f"table {r['name']!r}"))
    return out


def _merge_one(r: dict, o: dict, rename: dict, what: str) -> dict:
    same = all(o[k] == r[k] for k in ("context_sizes", "n_context_used", "n_query", "n_rows_split"))
    if not same:
        raise ValueError(f"{what}: the two runs used other episodes; run them with the same settings")
    m = {**r, "acc": dict(r["acc"]), "acc_reps": dict(r["acc_reps"])}
    if "ttt" in r or "ttt" in o:
        m["ttt"] = dict(r.get("ttt", {}))
    for label, new in rename.items():
        if new in r["acc"]:
            raise ValueError(f"{what} already has a curve {new!r}; rename it (labels={{...: 'name'}})")
        m["acc"][new], m["acc_reps"][new] = o["acc"][label], o["acc_reps"][label]
        if label in o.get("ttt", {}):
            m["ttt"][new] = o["ttt"][label]
    return m


def _majority(r: dict) -> float:
    return float(r["majority"]) if "majority" in r else float(r["meta"]["majority_fraction"])


def collapse_warnings(result: dict, *, share: float = COLLAPSE_SHARE, labels=None) -> list[str]:
    """Warnings for the curves whose predictions fall in one class ``share`` of the time or more.

    One line per label, naming the context sizes where the mean share of the most predicted class is at least
    ``share`` (``result["top_share"]``, from :func:`~ttt_helpers.tabpfn.protocol.run_protocol`).
    """
    out = []
    for label, shares in result.get("top_share", {}).items():
        if labels is not None and label not in labels:
            continue
        hit = [n for n, s in zip(result["context_sizes"], shares) if s >= share]
        if hit:
            where = "every context size" if len(hit) == len(shares) else "n = " + ", ".join(map(str, hit))
            out.append(f"{label}: at {where}, {share:.0%} or more of the predictions fall in one class "
                       "(majority-class voting, not learning from the context)")
    return out


def absent_class_warnings(result: dict, *, gap: float = ABSENT_GAP) -> list[str]:
    """A warning where a no-TTT curve read with the open argmax loses accuracy to predictions of absent classes.

    Results made before each set of weights was read with its own rule (no ``result["rules"]``) scored the model
    without TTT, too, by the open argmax over all the table's classes; ``tabpfn``'s own ``predict`` takes the
    argmax over the context's classes only (``result["acc_present"]``). Where that rule scores ``gap`` or more
    above the open argmax, such a no-TTT curve understates what the package gives, and so does any gain of TTT
    measured against it. A result whose ``"none"`` curve is read with ``tabpfn``'s rule
    (:data:`~ttt_helpers.tabpfn.finetune.ZERO_SHOT_RULE`, what :func:`~ttt_helpers.tabpfn.protocol.run_protocol`
    does now), or one without ``acc_present``, gives no warning.
    """
    if result.get("rules", {}).get("none", "open") != "open":
        return []
    if "acc_present" not in result or "none" not in result["acc_present"]:
        return []
    rows = [(n, a, p, s) for n, a, p, s in zip(result["context_sizes"], result["acc"]["none"],
                                                result["acc_present"]["none"], result["absent_share"]["none"])
            if p - a >= gap]
    if not rows:
        return []
    where = "; ".join(f"n = {n}: {s:.0%} of predictions, {a:.3f} -> {p:.3f}" for n, a, p, s in rows)
    return [f"none: the pretrained model names classes absent from the context ({where} with tabpfn's own rule, "
            "the argmax over the context's classes); the no-TTT curve and the TTT gain against it are measured "
            "with the open argmax"]


# ----------------------------------------------------------------------------------------------------------
# Summaries


def summarise(results: list, *, labels=None, cost: dict | None = None, margin: float = MAJORITY_MARGIN) -> dict:
    """Mean curves with 95 % bands, headline numbers and break-even, from :func:`run_dataset` outputs.

    Parameters
    ----------
    results : list of dicts from :func:`ttt_helpers.tabpfn.protocol.run_dataset` (same context sizes)
    labels : TTT labels to summarise (default: all but ``"none"`` and the baselines)
    cost : dict from :func:`ttt_helpers.tabpfn.protocol.measure_cost`, optional (for the break-even numbers)
    margin : float
        Reduction factors only for levels above the mean majority-class rate plus ``margin``.

    Returns
    -------
    dict with ``sizes``, ``n_datasets``, ``majority`` (mean over tables), ``curves`` (label -> mean, lo, hi),
    ``near_zero_shot`` (accuracy at the smallest size, label -> value), ``reduction`` (label ->
    :func:`reduction_factors`), ``break_even`` (label -> list over targets, if ``cost``).
    """
    from .protocol import BASELINES

    if not results:
        raise ValueError("results is empty")
    sizes = np.array(results[0]["context_sizes"], dtype=float)
    if any(r["context_sizes"] != results[0]["context_sizes"] for r in results):
        raise ValueError("all results must share the context sizes")
    labels = labels or [k for k in results[0]["acc"] if k != "none" and k not in BASELINES]
    extra = [b for b in BASELINES if all(b in r["acc"] for r in results)]
    curves = {}
    for label in ["none", *labels, *extra]:
        m, lo, hi = mean_curve_with_band(np.array([r["acc"][label] for r in results]))
        curves[label] = {"mean": m.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
    majority = float(np.mean([_majority(r) for r in results]))
    out = {"sizes": sizes.astype(int).tolist(), "n_datasets": len(results), "majority": majority,
           "margin": float(margin), "curves": curves,
           "near_zero_shot": {k: curves[k]["mean"][0] for k in curves}, "reduction": {}, "break_even": {}}
    for label in labels:
        red = reduction_factors(sizes, curves["none"]["mean"], curves[label]["mean"], floor=majority + margin)
        out["reduction"][label] = red
        if cost is not None:
            out["break_even"][label] = _break_even_rows(red, cost["context_sizes"], cost["per_query_seconds"],
                                                        ttt_cost_seconds(results, label, cost))
    return out


def table_summary(result: dict, *, label: str = "ttt", margin: float = MAJORITY_MARGIN,
                  share: float = COLLAPSE_SHARE) -> dict:
    """The reduction factor, break-even and warnings of one table (the command line's report).

    Per-query cost: the forward pass over context and test queries divided by the number of queries
    (preprocessing excluded), at each size, for the model without TTT; the one-off TTT cost is the whole TTT
    run, recipe search included. The break-even is taken at the highest accuracy level whose factor is defined.

    Returns
    -------
    dict with ``reduction`` (:func:`reduction_factors` with floor = majority + margin), ``break_even`` (None or
    the row at the highest level), ``warnings`` (list of str), ``per_query_seconds`` (per size).
    """
    sizes = result["context_sizes"]
    floor = result["majority"] + margin
    red = reduction_factors(sizes, result["acc"]["none"], result["acc"][label], floor=floor)
    per_query = [s / result["n_query"] for s in result["timing"]["forward_seconds"]["none"]]
    rows = _break_even_rows(red, sizes, per_query, float(result["ttt"][label]["seconds"]))
    warnings = collapse_warnings(result, share=share, labels=["none", label]) + absent_class_warnings(result)
    if not red["targets"]:
        warnings.append(f"no reduction factor: the model without TTT never gets above the majority-class rate "
                        f"{result['majority']:.3f} + {margin:g} with a context larger than {sizes[0]} rows")
    return {"reduction": red, "break_even": max(rows, key=lambda r: r["target_acc"]) if rows else None,
            "warnings": warnings, "per_query_seconds": per_query, "margin": margin}


def curve_agreement(results_a: list, results_b: list, *, label: str = "none", z: float = 4.0,
                    slack: float = 0.02) -> list:
    """Compare two runs' mean accuracy curves over their shared tables and context sizes.

    The standard error of each table's mean accuracy combines the spread of its repetitions (random contexts)
    and the binomial noise of its test rows, ``p(1-p)/n_query``; the band is ``z`` standard errors of the
    difference of the two means over tables, plus ``slack``.

    Returns
    -------
    list of dicts ``{"n", "a", "b", "diff", "band", "ok"}``, one per shared context size.
    """
    by_b = {r["name"]: r for r in results_b}
    shared = [r for r in results_a if r["name"] in by_b]
    if not shared:
        raise ValueError("the two runs share no table")
    sizes = [s for s in shared[0]["context_sizes"] if s in by_b[shared[0]["name"]]["context_sizes"]]

    def mean_and_var(r, s):
        i = r["context_sizes"].index(s)
        reps = np.asarray(r["acc_reps"][label][i], dtype=float)
        p = reps.mean()
        v_rep = reps.var(ddof=1) / len(reps) if len(reps) > 1 else 0.0
        return p, v_rep + p * (1 - p) / r["n_query"]

    rows = []
    for s in sizes:
        ma, va = zip(*(mean_and_var(r, s) for r in shared))
        mb, vb = zip(*(mean_and_var(by_b[r["name"]], s) for r in shared))
        k = len(shared)
        a, b = float(np.mean(ma)), float(np.mean(mb))
        band = z * math.sqrt((sum(va) + sum(vb)) / k**2) + slack
        rows.append({"n": int(s), "a": a, "b": b, "diff": a - b, "band": band, "ok": abs(a - b) <= band})
    return rows


# ----------------------------------------------------------------------------------------------------------
# Tables for the chapters (pandas DataFrames)


def per_dataset_table(results: list, *, sizes=None, digits: int = 3):
    """Per table: accuracy without/with TTT at chosen context sizes, the chosen recipe and the TTT loss."""
    import pandas as pd

    rows = []
    for r in results:
        all_sizes = r["context_sizes"]
        use = sizes or [all_sizes[0], all_sizes[len(all_sizes) // 2], all_sizes[-1]]
        row = {"table": r["name"], "rows": r["meta"]["rows"], "classes": r["meta"]["classes"]}
        for s in use:
            if s in all_sizes:
                for k, v in r["acc"].items():
                    row[f"{k} n={s}"] = round(v[all_sizes.index(s)], digits)
        for k, v in r["ttt"].items():
            sel = v.get("selected")
            row[f"{k} recipe"] = "zero-shot kept" if sel is None else f"lr {sel['lr']:g}, {sel['steps']} steps"
        rows.append(row)
    return pd.DataFrame(rows).set_index("table")


def accuracy_table(results: list, labels, *, sizes=None, min_classes: int = 2, digits: int = 3):
    """Mean accuracy over the tables with at least ``min_classes`` classes, one row per label, one column per
    context size (the tables of issue 12)."""
    import pandas as pd

    sub = [r for r in results if r["meta"]["classes"] >= min_classes]
    if not sub:
        raise ValueError(f"no table has at least {min_classes} classes")
    all_sizes = sub[0]["context_sizes"]
    use = sizes or all_sizes
    idx = [all_sizes.index(s) for s in use]
    data = {label: [round(float(np.mean([r["acc"][label][i] for r in sub])), digits) for i in idx]
            for label in labels}
    frame = pd.DataFrame(data, index=[f"n = {s}" for s in use]).T
    frame.index.name = f"mean over {len(sub)} tables"
    return frame


def reduction_table(summary: dict, *, digits: int = 2):
    """One row per accuracy level and TTT label: contexts needed without and with TTT, and their ratio."""
    import pandas as pd

    rows = []
    for k, red in summary["reduction"].items():
        for a, nb, nt, f, bd in zip(red["targets"], red["n_base"], red["n_ttt"], red["factor"], red["bound"]):
            rows.append({"TTT": k, "accuracy level": round(a, 3), "n without TTT": round(nb, 1),
                         "n with TTT": round(nt, 1), "reduction": round(f, digits), "lower bound only": bd})
    return pd.DataFrame(rows, columns=["TTT", "accuracy level", "n without TTT", "n with TTT", "reduction",
                                       "lower bound only"])


def break_even_table(results: list, cost: dict):
    """Break-even rows for every device of ``cost`` (device -> :func:`measure_cost`-style aggregate)."""
    import pandas as pd

    rows = []
    for dev, c in cost.items():
        for k, lst in summarise(results, cost=c)["break_even"].items():
            for b in lst:
                rows.append({"device": dev, "TTT": k, "accuracy level": round(b["target_acc"], 3),
                             "n without TTT": round(b["n_base"], 1), "n with TTT": round(b["n_ttt"], 1),
                             "ms/query without TTT": round(b["per_query_base"] * 1e3, 3),
                             "ms/query with TTT": round(b["per_query_ttt"] * 1e3, 3),
                             "TTT seconds": round(b["ttt_seconds"], 2),
                             "break-even queries": round(b["break_even_queries"], 0), "lower bound only": b["bound"]})
    return pd.DataFrame(rows)


def cost_table(cost: dict):
    """Inference time per query (ms) at each context size, one column per device, and the TTT wall time."""
    import pandas as pd

    cols = {}
    for dev, c in cost.items():
        col = {f"per query, n={s} (ms)": round(q * 1e3, 3) for s, q in zip(c["context_sizes"], c["per_query_seconds"])}
        col[f"TTT, {c['ttt_steps']} steps (s)"] = round(c["ttt_seconds"], 2)
        col["TTT per step (s)"] = round(c["ttt_seconds"] / c["ttt_steps"], 3)
        cols[dev] = col
    return pd.DataFrame(cols)


def goal_table(results: list, label: str, *, min_classes: int = 8, small: int = 8, factor: float = 3.0,
               margin: float = MAJORITY_MARGIN):
    """Issue 12's three goals for a TTT label, each with the measured value and whether it is met.

    1. On the tables with at least ``min_classes`` classes, the mean accuracy at every context size ``<= small``
       at least doubles (ratio TTT / no TTT, smallest over those sizes);
    2. the median reduction factor over all tables (mean curves, levels above the majority rate + margin) is at
       least ``factor``;
    3. the paired gain is never negative beyond noise: at no context size does the upper end of its 95 % band
       lie below zero.
    """
    import pandas as pd

    sizes = results[0]["context_sizes"]
    many = [r for r in results if r["meta"]["classes"] >= min_classes]
    small_idx = [i for i, s in enumerate(sizes) if s <= small]
    if many:
        ratios = [np.mean([r["acc"][label][i] for r in many]) / np.mean([r["acc"]["none"][i] for r in many])
                  for i in small_idx]
        ratio = float(min(ratios))
    else:
        ratio = float("nan")
    med = summarise(results, labels=[label], margin=margin)["reduction"][label]["median_factor"]
    g = paired_gains(results, label)
    worst = int(np.argmin(g["hi"]))
    rows = [
        {"goal": f"accuracy at n <= {small} at least doubles ({len(many)} tables with >= {min_classes} classes)",
         "measured": f"smallest ratio {ratio:.2f}", "met": bool(ratio >= 2)},
        {"goal": f"median reduction factor >= {factor:g} (all {len(results)} tables)",
         "measured": "undefined" if not np.isfinite(med) else f"{med:.2f}",
         "met": bool(np.isfinite(med) and med >= factor)},
        {"goal": "paired gain never negative beyond noise (95 % band)",
         "measured": f"lowest upper band end {g['hi'][worst]:+.3f} at n = {sizes[worst]}",
         "met": bool(np.all(g["hi"] >= 0))},
    ]
    return pd.DataFrame(rows).set_index("goal")


def majority_margins(results: list, label: str = "none", *, small: int = 8) -> "pd.DataFrame":
    """How far each table's accuracy lies above its majority rate (on the same test rows), in standard errors, at
    every context size ``>= small``, for the ``label`` curve of a Figure-3 run; most negative first.

    The standard error combines the test rows' binomial noise, ``p (1 - p) / n_query``, and the spread over the
    repetitions' context draws, ``var(reps) / reps`` (from ``acc_reps``, when there are two or more). Columns:
    ``table``, ``n``, ``acc``, ``majority``, ``margin_se``."""
    import pandas as pd

    sizes = results[0]["context_sizes"]
    rows = []
    for r in results:
        reps = r.get("acc_reps", {}).get(label)
        for i, (n, a) in enumerate(zip(sizes, r["acc"][label])):
            if n < small:
                continue
            var = max(a * (1 - a), 1e-12) / r["n_query"]
            if reps is not None and len(reps[i]) >= 2:
                var += float(np.var(reps[i], ddof=1)) / len(reps[i])
            rows.append({"table": r["name"], "n": int(n), "acc": float(a), "majority": _majority(r),
                         "margin_se": float((a - _majority(r)) / np.sqrt(var))})
    return pd.DataFrame(rows).sort_values("margin_se", kind="stable").reset_index(drop=True)


def fallback_quality_bar(benchmark: dict, results: list, *, label: str = "none", small: int = 8, z: float = 2.0):
    """Issue 11's quality bar for a pretrained checkpoint, each criterion with the measured value and whether it is met.

    ``benchmark`` is the ``results["benchmark"]`` of the checkpoint's provenance (mean accuracies at 1,000 context
    rows for ``n_estimators=1`` and ``n_estimators=auto``); ``results`` the per-table curves of a Figure-3 run
    whose ``label`` curve is that checkpoint without TTT.

    1. one member at or above HistGradientBoosting;
    2. the default ensemble at least 3 points above HistGradientBoosting;
    3. no table below its majority rate (on the same test rows) by more than ``z`` standard errors at any context
       size ``>= small`` (:func:`majority_margins`);
    4. mean accuracy non-decreasing in context size within noise: no step from one size to the next whose mean
       paired difference over tables is below zero by more than ``z`` standard errors.
    """
    import pandas as pd

    one, ens = benchmark["n_estimators=1"]["mean_accuracy"], benchmark["n_estimators=auto"]["mean_accuracy"]
    sizes = results[0]["context_sizes"]
    margins = majority_margins(results, label, small=small)
    w = margins.iloc[0]
    worst, worst_at = w["margin_se"], (w["table"], int(w["n"]), w["acc"], w["majority"])
    step_mean, _, uppers = mean_curve_with_band(np.diff([r["acc"][label] for r in results], axis=1), z=z)
    drop = int(np.argmin(uppers))
    rows = [
        {"criterion": "one member >= HistGradientBoosting (1,000 rows)",
         "measured": f"{one['tabpfn_fallback']:.3f} vs {one['hist_gradient_boosting']:.3f}",
         "met": bool(one["tabpfn_fallback"] >= one["hist_gradient_boosting"])},
        {"criterion": "default ensemble >= HistGradientBoosting + 0.03",
         "measured": f"{ens['tabpfn_fallback']:.3f} vs {ens['hist_gradient_boosting'] + 0.03:.3f}",
         "met": bool(ens["tabpfn_fallback"] >= ens["hist_gradient_boosting"] + 0.03)},
        {"criterion": f"no table below its majority rate by > {z:g} se at n >= {small}",
         "measured": f"worst {worst_at[0]} at n = {worst_at[1]}: {worst_at[2]:.3f} vs {worst_at[3]:.3f} "
                     f"({worst:+.1f} se)",
         "met": bool(worst >= -z)},
        {"criterion": f"mean accuracy non-decreasing in n within noise ({z:g} se)",
         "measured": f"weakest step {step_mean[drop]:+.3f} from n = {sizes[drop]} to {sizes[drop + 1]} "
                     f"(upper end {uppers[drop]:+.3f})",
         "met": bool(np.all(uppers >= 0))},
    ]
    return pd.DataFrame(rows).set_index("criterion")


def validation_ceiling(results: list, label: str = "selected", *, min_classes: int = 8):
    """How far per-size checkpoint choice could go, read from the search's validation traces.

    For each table with at least ``min_classes`` classes, the validation accuracy at each validation context size
    of the zero-shot weights, of the checkpoint the search chose, and of the best checkpoint *for that size alone*
    among all that the search scored (every learning rate and step, admissible or not). The last is an optimistic
    ceiling: it is chosen on the same slice it is scored on, and separately per size. Returns a DataFrame indexed by
    validation size with the means over those tables and the ratios chosen / zero-shot and ceiling / zero-shot
    (trace rows are ``[step, acc, loss, admissible, gains, ses]``, the gains paired against the zero-shot weights).
    """
    import pandas as pd

    from .finetune import chosen_validation_gains

    zero, chosen, ceiling, sizes = [], [], [], None
    for r in results:
        if r["meta"]["classes"] < min_classes:
            continue
        t = r["ttt"][label]
        sizes = list(t["validation_sizes"])
        z = np.asarray(t["zero_shot"]["acc_by_size"], dtype=float)
        best = np.zeros(len(sizes))
        for run in t["runs"]:
            for _step, _acc, _loss, _ok, gains, _ses in run["trace"]:
                best = np.maximum(best, np.asarray(gains, dtype=float))
        vg = chosen_validation_gains(t)
        pick = np.zeros(len(sizes)) if vg is None else vg[1]
        zero.append(z)
        chosen.append(z + pick)
        ceiling.append(z + best)
    if not zero:
        raise ValueError(f"no table with at least {min_classes} classes")
    out = pd.DataFrame({"zero-shot": np.mean(zero, 0), "chosen": np.mean(chosen, 0),
                        "best per size (ceiling)": np.mean(ceiling, 0)},
                       index=pd.Index(sizes, name="validation context size"))
    out["chosen / zero-shot"] = out["chosen"] / out["zero-shot"]
    out["ceiling / zero-shot"] = out["best per size (ceiling)"] / out["zero-shot"]
    out.attrs["n_tables"] = len(zero)
    return out


def recipe_table(results: list, label: str = "selected"):
    """What the recipe search chose on each table: learning rate and steps (or the zero-shot weights kept), the
    steps run in all, and the validation accuracy of the zero-shot and the chosen weights."""
    import pandas as pd

    rows = []
    for r in results:
        t = r["ttt"][label]
        sel = t.get("selected")
        rows.append({"table": r["name"], "classes": r["meta"]["classes"],
                     "lr": None if sel is None else sel["lr"], "steps": 0 if sel is None else sel["steps"],
                     "steps run": t.get("steps_run", t["steps"]),
                     "validation acc, zero-shot": round(t["zero_shot"]["acc"], 3) if "zero_shot" in t else None,
                     "validation acc, chosen": round((t["best"] if sel else t["zero_shot"])["acc"], 3)
                     if "zero_shot" in t else None})
    return pd.DataFrame(rows).set_index("table")


def prediction_table(predictions: dict, y_true, *, digits: int = 3):
    """Test accuracy of several predictors and the class each predicts most often, with its share of the rows.

    Parameters
    ----------
    predictions : dict
        Predictor name -> predicted labels, shape (n_test,) each.
    y_true : array_like, shape (n_test,)

    Returns
    -------
    pandas.DataFrame, one row per predictor: ``test accuracy``, ``most predicted``, ``its share``.
    """
    import pandas as pd

    y_true = np.asarray(y_true)
    rows = {}
    for name, pred in predictions.items():
        pred = np.asarray(pred)
        if pred.shape != y_true.shape:
            raise ValueError(f"predictions of {name!r} have shape {pred.shape}, expected {y_true.shape}")
        share = pd.Series(pred).value_counts(normalize=True)
        rows[name] = {"test accuracy": round(float(np.mean(pred == y_true)), digits), "most predicted": share.index[0],
                      "its share": f"{share.iloc[0]:.0%}"}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "predictor"
    return frame


# ----------------------------------------------------------------------------------------------------------
# What the chapters print and quote about a benchmark run


def mean_curves(summary: dict) -> dict:
    """Label -> mean accuracy over tables at each context size (an array), from :func:`summarise`."""
    return {k: np.asarray(v["mean"], dtype=float) for k, v in summary["curves"].items()}


def search_line(run: dict, label: str = "selected") -> str:
    """One line on a shipped benchmark run (``scripts/tabpfn_experiment.py``): tables done and skipped, and the
    settings of the recipe search ``run["configs"][label]``."""
    s = run["configs"][label]
    return (f"{len(run['results'])} tables done, {len(run['skipped'])} skipped; search: AdamW, lr in {s['lrs']}, "
            f"at most {s['max_steps']} steps per lr, a score every {s['eval_every']} steps, patience {s['patience']}, "
            f"validation contexts {s['validation_sizes']}")


def run_numbers(run: dict, label: str = "selected") -> dict:
    """The settings of a shipped benchmark run that a chapter quotes, as text: ``model``, the recipe search's
    ``validation-fraction`` (``"20%"``), ``lrs`` and ``max-steps``, and the run's ``n-query`` (queries per TTT
    episode), ``max-test`` (test rows at most) and ``reps`` (random contexts per size)."""
    s, settings = run["configs"][label], run["settings"]
    return {"model": run["model"], "validation-fraction": f"{s['validation_fraction']:.0%}", "lrs": str(s["lrs"]),
            "max-steps": str(s["max_steps"]), "n-query": str(settings["n_query"]),
            "max-test": str(settings["max_test"]), "reps": str(settings["reps"])}


def recipe_numbers(recipes) -> dict:
    """From :func:`recipe_table`: ``kept`` (tables where the zero-shot weights were kept), ``n`` (tables),
    ``steps-range`` (``"a to b"``, the fewest and most steps chosen elsewhere) and ``median-steps`` (their
    median)."""
    chosen = recipes.loc[recipes["steps"] > 0, "steps"]
    return {"kept": int((recipes["steps"] == 0).sum()), "n": len(recipes),
            "steps-range": f"{chosen.min()} to {chosen.max()}", "median-steps": f"{chosen.median():.0f}"}


def recipe_line(recipes) -> str:
    """One line from :func:`recipe_table`: zero-shot weights kept, the learning rates chosen (with counts) and the
    median number of steps chosen."""
    n = recipe_numbers(recipes)
    lrs = recipes["lr"].value_counts(dropna=True).sort_index().to_dict()
    return (f"zero-shot weights kept on {n['kept']} of {n['n']} tables; chosen learning rates: {lrs} "
            f"| median chosen steps {n['median-steps']}")


def gain_numbers(summary: dict, label: str, *, base: str = "none", reference: str = "logistic_regression",
                 between=(8, 128)) -> dict:
    """The numbers a chapter quotes about the mean gain of ``label`` over ``base`` (:func:`summarise` curves).

    Returns
    -------
    dict with ``gain-peak`` (largest mean gain, ``"+0.049"``), ``gain-peak-n`` (the context size where it
    peaks), ``gain-first`` and ``gain-last`` (the gain at the smallest and the largest size), ``gap`` (the
    largest ``|label - reference|`` at the sizes from ``between[0]`` to ``between[1]``, ``"0.012"``) and
    ``lr-margin`` (the smallest ``label - reference`` there, signed, ``"+0.018"``).
    """
    c, sizes = mean_curves(summary), np.asarray(summary["sizes"])
    gain = c[label] - c[base]
    mid = (sizes >= between[0]) & (sizes <= between[1])
    if not mid.any():
        raise ValueError(f"no context size between {between[0]} and {between[1]} in {summary['sizes']}")
    diff = (c[label] - c[reference])[mid]
    return {"gain-peak": f"{gain.max():+.3f}", "gain-peak-n": int(sizes[gain.argmax()]),
            "gain-first": f"{gain[0]:+.3f}", "gain-last": f"{gain[-1]:+.3f}", "gap": f"{np.abs(diff).max():.3f}",
            "lr-margin": f"{diff.min():+.3f}"}


def headline_lines(summary: dict, *, names=None, paper: str | None = None) -> list[str]:
    """The headline numbers of :func:`summarise`: accuracy near zero shot (the smallest context) without and
    with each TTT label, the floor of the reduction factors, and each label's median factor.

    ``names`` maps a label to the words printed for it; ``paper`` is the paper's value, printed beside.
    """
    names = names or {}
    nz, labels = summary["near_zero_shot"], list(summary["reduction"])
    lines = [f"near zero shot (n={summary['sizes'][0]}): no TTT {nz['none']:.3f} -> "
             + ", ".join(f"{names.get(k, k)} {nz[k]:.3f}" for k in labels) + (f"   (paper: {paper})" if paper else ""),
             f"reduction factors only for levels above {summary['majority']:.3f} + {summary['margin']} "
             "(mean majority rate + margin)"]
    for k, red in summary["reduction"].items():
        m = red["median_factor"]
        levels = sum(np.isfinite(f) and not b for f, b in zip(red["factor"], red["bound"]))
        lines.append(f"{k}: median reduction factor {'undefined' if not np.isfinite(m) else f'{m:.2f}'} over "
                     f"{levels} levels")
    return lines


def paired_gain_lines(results: list, label: str, *, name: str | None = None, count_at=None) -> list[str]:
    """:func:`paired_gains` as lines: the mean gain over tables with its 95 % band at each context size, then how
    many tables gain and lose at the sizes ``count_at`` (default: the first and the last)."""
    sizes = results[0]["context_sizes"]
    g = paired_gains(results, label)
    lines = [f"gain of the {name or label} over no TTT, mean over tables [95 % band]:"]
    lines += [f"  n = {n:4d}: {a:+.3f} [{lo:+.3f}, {hi:+.3f}]" for n, a, lo, hi in zip(sizes, g["mean"], g["lo"], g["hi"])]
    counts = []
    for n in count_at or (sizes[0], sizes[-1]):
        if n not in sizes:
            raise ValueError(f"count_at: {n} is not one of the context sizes {sizes}")
        col = g["gains"][:, sizes.index(n)]
        counts.append(f"n={n}: {int((col > 0).sum())} / {int((col < 0).sum())}")
    lines.append("tables where it helps / hurts at " + " | at ".join(counts))
    return lines


def break_even_lines(break_even) -> list[str]:
    """One line per device and TTT label of :func:`break_even_table`, at its highest accuracy level: the contexts
    needed without and with TTT, the one-off TTT cost and the queries after which it pays for itself."""
    if len(break_even) == 0:
        return []
    lines = []
    for (dev, k), sub in break_even.groupby(["device", "TTT"]):
        top = sub.iloc[-1]  # the highest accuracy level with a defined factor
        lines.append(f"{dev}, {k}: to match the no-TTT accuracy {top['accuracy level']:.3f} (reached at "
                     f"n={top['n without TTT']:.0f}) TTT needs n={top['n with TTT']:.1f}; TTT "
                     f"({top['TTT seconds']:.1f} s) pays for itself after {top['break-even queries']:,.0f} queries")
    return lines


def search_comparison(results: dict, sizes, labels=("none", "old", "new"), reference: str = "old"):
    """Two or more TTT labels compared on the same episodes over several seeds (``scripts/check_search_defaults.py``).

    Parameters
    ----------
    results : dict table -> seed -> a :func:`~ttt_helpers.tabpfn.protocol.run_protocol` result
    sizes : the context sizes of those results, in order
    labels : the labels to show; ``reference`` is the one the paired gains are taken against

    Returns
    -------
    pandas.DataFrame indexed by context size (and a last row ``"all"``, the mean over sizes): the mean accuracy of
    each label over the tables (each table's accuracy averaged over seeds first), and for each other TTT label
    ``"<label> - <reference>"`` and its standard error over tables.
    """
    import pandas as pd

    acc = {t: {lab: np.mean([r["acc"][lab] for r in rs.values()], axis=0) for lab in labels}
           for t, rs in results.items()}
    k, rows = len(acc), {}
    for i, size in enumerate([*sizes, "all"]):
        row = {lab: float(np.mean([a[lab].mean() if size == "all" else a[lab][i] for a in acc.values()]))
               for lab in labels}
        for lab in labels:
            if lab in ("none", reference):
                continue
            d = np.array([(a[lab] - a[reference]).mean() if size == "all" else a[lab][i] - a[reference][i]
                          for a in acc.values()])
            row[f"{lab} - {reference}"] = float(d.mean())
            row[f"se ({lab})"] = float(d.std(ddof=1) / np.sqrt(k)) if k > 1 else float("nan")
        rows[size] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("context size")
