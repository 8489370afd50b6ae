"""The paper's TabPFN protocol (Figure 3a), written once.

Every TabPFN experiment of the package is this protocol or a part of it: the Figure-3 experiment
(:func:`run_dataset` on a benchmark table, ``scripts/tabpfn_experiment.py``), the cost measurement
(:func:`measure_cost`), the command line (:func:`run_protocol` on the user's table, :mod:`ttt_helpers.tabpfn.cli`)
and the estimator (:func:`adapt`, in :meth:`TTTTabPFNClassifier.fit
<ttt_helpers.tabpfn.classifier.TTTTabPFNClassifier.fit>`).

1. **Split** (:func:`split_rows`): the rows are shuffled with the seeded generator; the first ``n_ttt`` rows are the
   TTT set; the remaining rows are split 80--20 into a *context pool* and a *test set*.
2. **Evaluation episodes**: for each context size ``n`` and repetition, ``n`` context rows are drawn from the pool
   (all of it when the pool is smaller) and the model predicts up to ``max_test`` test rows
   (:func:`ttt_helpers.tabpfn.episodes.make_eval_episodes`).
3. **Snapshot** of the pretrained weights, then **TTT** from them for each recipe (:func:`adapt`): a fixed
   :class:`~ttt_helpers.tabpfn.finetune.TTTConfig`, or a :class:`~ttt_helpers.tabpfn.finetune.RecipeSearch` that
   chooses the learning rate and the number of steps on a validation slice of the TTT rows and keeps the
   zero-shot weights when TTT does not beat them there. Only the TTT rows are seen.
4. **Evaluate**: the same episodes are scored by the model before TTT and after each TTT run, so the curves differ
   only through the weights, each read with its rule (the pretrained weights by the argmax over the context's
   classes, as ``tabpfn`` predicts; adapted weights over all the table's classes: ``finetune.ZERO_SHOT_RULE``);
   optionally LogisticRegression and HistGradientBoosting are fitted on the same
   context rows and scored on the same test rows (``baselines=True``).

Results are JSON-able dicts; :mod:`ttt_helpers.tabpfn.analysis` turns them into curves, reduction factors and
tables.
"""

from __future__ import annotations

import numbers
import time
import zlib

import numpy as np

from ..validation import check_positive_int
from .episodes import CONTEXT_SIZES, make_eval_episodes, prepare_classifier
from .finetune import RecipeSearch, TTTConfig, evaluate_states, load_state, select_recipe
from .finetune import TTT_RULE, ZERO_SHOT_RULE, select_recipes, snapshot_state
from .finetune import ttt_finetune

__all__ = ["split_rows", "resolve_rows", "name_seed", "adapt", "run_protocol", "run_dataset", "measure_cost",
           "BASELINES"]

#: The reference learners of ``baselines=True`` (fitted on each episode's context rows).
BASELINES = ("logistic_regression", "hist_gradient_boosting")


def split_rows(n_rows: int, rng, *, n_ttt: int = 1000, pool_fraction: float = 0.8) -> dict:
    """Shuffle row indices and split them into TTT rows, context pool and test rows.

    Returns
    -------
    dict with int arrays ``ttt`` (``n_ttt`` rows), ``pool`` (80 % of the rest) and ``test`` (20 % of the rest).
    """
    n_rows = check_positive_int(n_rows, "n_rows")
    n_ttt = check_positive_int(n_ttt, "n_ttt")
    if not 0 < pool_fraction < 1:
        raise ValueError(f"pool_fraction must be in (0, 1), got {pool_fraction}")
    if n_rows < n_ttt + 2:
        raise ValueError(f"need at least n_ttt + 2 = {n_ttt + 2} rows, got {n_rows}")
    rng = np.random.default_rng(rng)
    perm = rng.permutation(n_rows)
    rest = perm[n_ttt:]
    n_pool = int(round(pool_fraction * len(rest)))
    n_pool = min(max(n_pool, 1), len(rest) - 1)
    return {"ttt": perm[:n_ttt], "pool": rest[:n_pool], "test": rest[n_pool:]}


def resolve_rows(value, n: int, name: str, *, allow_zero: bool) -> int:
    """A row count given as an int, or as a fraction in (0, 1) of ``n`` (rounded down); e.g. ``ttt_size``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numbers.Real)):
        raise ValueError(f"{name} must be an int (rows) or a float in (0, 1) (fraction of rows), got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"{name} must be a{' non-negative' if allow_zero else ' positive'} number of rows, got "
                             f"{value}")
        return int(value)
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} as a float is a fraction of the rows and must lie in (0, 1), got {value}")
    return int(np.floor(float(value) * n))


def name_seed(name: str) -> int:
    """A stable integer from a table's name (per-table seeds independent of the table order)."""
    return zlib.crc32(name.encode())


def adapt(clf, X_ttt, y_ttt, n_classes: int, recipe, rng, *, progress: bool = False, seed: int = 0) -> dict:
    """Test-time train ``clf`` in place on the TTT rows with a fixed recipe or a recipe search.

    Parameters
    ----------
    clf : classifier from :func:`ttt_helpers.tabpfn.episodes.prepare_classifier`
    X_ttt, y_ttt : TTT rows (float features, labels ``0..C-1``)
    recipe : ~ttt_helpers.tabpfn.finetune.TTTConfig or RecipeSearch
    rng : numpy.random.Generator, int or sequence of int

    Returns
    -------
    dict: ``selected`` (``{"lr", "steps"}`` of the weights kept, None for the zero-shot weights), ``losses``,
    ``seconds`` (all of it), ``ttt_seconds`` (optimiser steps), ``validation_seconds`` (the search's scoring),
    ``recipe`` (the recipe as a dict) and, for a search, the details of :func:`select_recipe`.
    """
    if isinstance(recipe, RecipeSearch):
        info = select_recipe(clf, X_ttt, y_ttt, n_classes, recipe, rng, progress=progress, seed=seed)
        info["recipe"] = {"kind": "search", **info.pop("search")}
        return info
    if not isinstance(recipe, TTTConfig):
        raise ValueError(f"recipe must be a TTTConfig or a RecipeSearch, got {type(recipe).__name__}")
    h = ttt_finetune(clf, X_ttt, y_ttt, n_classes, recipe, rng, progress=progress, seed=seed)
    return {"selected": {"lr": recipe.lr, "steps": recipe.steps}, "losses": h["losses"], "seconds": h["seconds"],
            "ttt_seconds": h["seconds"], "validation_seconds": 0.0, "prep_seconds": h["prep_seconds"],
            "redraws": h["redraws"], "recipe": {"kind": "fixed", **recipe.to_dict()}}


def _summary_of(info: dict) -> dict:
    """The JSON record of one TTT run (the loss curve shortened to its first and last fifth)."""
    L = info["losses"]
    k = max(1, len(L) // 5)
    out = {k_: v for k_, v in info.items() if k_ != "losses"}
    out["steps"] = len(L)
    out["steps_run"] = int(sum(r["steps_run"] for r in info["runs"])) if "runs" in info else len(L)
    out["loss_first"] = float(np.mean(L[:k])) if L else float("nan")
    out["loss_last"] = float(np.mean(L[-k:])) if L else float("nan")
    return out


def _baseline_accuracies(X, y, ctx, test, seed) -> dict:
    """LogisticRegression and HistGradientBoosting fitted on the context rows, scored on the test rows (a
    context of one class predicts that class)."""
    from .benchmark import baseline_accuracies

    if len(np.unique(y[ctx])) < 2:
        acc = float(np.mean(y[test] == y[ctx][0]))
        return {k: acc for k in BASELINES}
    res = baseline_accuracies(X[ctx], y[ctx], X[test], y[test], seed=seed)
    return {k: res[k] for k in BASELINES}


def run_protocol(template, X, y, recipes: dict, *, n_classes: int | None = None, n_ttt: int = 1000,
                 context_sizes=CONTEXT_SIZES, n_repeats: int = 3, max_test: int = 512, n_estimators: int = 1,
                 seed: int = 0, rng_key=None, device=None, baselines: bool = False, timing: bool = False,
                 progress: bool = False, share_searches: bool = False) -> dict:
    """The whole protocol on one table (float features ``X``, labels ``y`` in ``0..C-1``).

    Parameters
    ----------
    template : tabpfn.TabPFNClassifier
        Carries the checkpoint (see :func:`ttt_helpers.tabpfn.episodes.prepare_classifier`).
    recipes : dict label -> ~ttt_helpers.tabpfn.finetune.TTTConfig or RecipeSearch
        One TTT run per entry, each from the pretrained weights, all scored on the same episodes; ``"none"`` is
        reserved for the model without TTT (an empty dict scores only that model, and the baselines if asked).
    n_ttt : int
        TTT rows (the rest is split 80--20 into context pool and test rows).
    context_sizes, n_repeats, max_test : the evaluation episodes (sizes larger than the pool use the whole pool)
    seed : int
        TabPFN's preprocessing seed.
    rng_key : int or sequence of int, optional
        Seeds the split and the episodes (default ``seed``); TTT uses ``[*rng_key, 1]``.
    baselines : bool
        Also score LogisticRegression and HistGradientBoosting fitted on each episode's context.
    timing : bool
        Warm up once before scoring, so that the first timed episode is not inflated (cost measurement).
    share_searches : bool
        Searches that differ only in when they stop and what they admit (:data:`~ttt_helpers.tabpfn.finetune.
        STOPPING_FIELDS`) share their training runs (:func:`~ttt_helpers.tabpfn.finetune.select_recipes`): the
        same results as separate runs for less CPU, but their ``seconds`` are those of the shared runs.

    Returns
    -------
    dict (JSON-able): ``n_classes``, ``n_rows_split``, ``context_sizes``, ``n_context_used``, ``n_query``,
    ``majority`` (accuracy of the pool's most frequent class on the test rows), ``acc`` (label -> per-size mean over
    repetitions; ``"none"`` is the model without TTT, plus the baselines if asked), ``acc_reps`` (label -> sizes x
    reps), ``rules`` (label -> how its predictions are read: the pretrained weights, ``"none"`` and any search that
    kept them, by the argmax over the context's classes, ``tabpfn``'s rule; adapted weights by the argmax over all
    the table's classes; :data:`~ttt_helpers.tabpfn.finetune.ZERO_SHOT_RULE`), ``top_share`` (label -> per size,
    the mean share of predictions in the most predicted class), ``absent_share``, ``acc_present`` and ``acc_open``
    (label -> per size: the share of open predictions naming a class absent from the context, and the accuracy
    of each rule), ``ttt``
    (label -> the run's record: recipe, selected lr and steps, seconds), ``timing`` (per-size mean preprocessing and
    forward seconds per episode, medians over the repetitions), ``seconds_total``.
    """
    if not isinstance(recipes, dict) or not all(isinstance(c, (TTTConfig, RecipeSearch)) for c in recipes.values()):
        raise ValueError("recipes must be a dict of TTTConfig or RecipeSearch (empty: the pretrained model only)")
    if "none" in recipes or set(recipes) & set(BASELINES):
        raise ValueError(f"'none' and {BASELINES} are reserved labels")
    t_start = time.perf_counter()
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int64)
    C = int(y.max()) + 1 if n_classes is None else check_positive_int(n_classes, "n_classes")
    key = [int(k) for k in np.atleast_1d(seed if rng_key is None else rng_key)]
    rng = np.random.default_rng(key)
    split = split_rows(len(y), rng, n_ttt=n_ttt)
    sizes = [int(s) for s in context_sizes]
    clf = prepare_classifier(template, n_estimators=n_estimators, seed=seed, device=device)
    episodes = make_eval_episodes(clf, X, y, split["pool"], split["test"], sizes, n_repeats, rng, n_classes=C,
                                  max_test=max_test, seed=seed)
    base = snapshot_state(clf)
    states, ttt_info = {"none": base}, {}
    groups = {}
    if share_searches:
        for label, recipe in recipes.items():
            if isinstance(recipe, RecipeSearch):
                key_ = repr(recipe.training_fields())
                groups.setdefault(key_, []).append(label)
    shared = {lab for g in groups.values() if len(g) > 1 for lab in g}
    for g in groups.values():
        if len(g) < 2:
            continue
        load_state(clf, base)
        chosen = {}
        infos = select_recipes(clf, X[split["ttt"]], y[split["ttt"]], C, {lab: recipes[lab] for lab in g},
                               [*key, 1], progress=progress, seed=seed, states=chosen)
        for lab, info in infos.items():
            info["recipe"] = {"kind": "search", **info.pop("search")}
            states[lab], ttt_info[lab] = chosen[lab], _summary_of(info)
    for label, recipe in recipes.items():
        if label in shared:
            continue
        load_state(clf, base)
        info = adapt(clf, X[split["ttt"]], y[split["ttt"]], C, recipe, [*key, 1], progress=progress, seed=seed)
        states[label] = snapshot_state(clf)
        ttt_info[label] = _summary_of(info)
    if timing:
        load_state(clf, base)
        evaluate_states(clf, episodes[:1], C, {"warm-up": base})
    rules = {label: ZERO_SHOT_RULE if label == "none" or ttt_info[label]["selected"] is None else TTT_RULE
             for label in states}
    res = evaluate_states(clf, episodes, C, states, rules=rules)
    load_state(clf, base)
    req = np.array([ep.requested for ep in episodes])
    test_rows = episodes[0].y_query
    pool_majority = int(np.bincount(y[split["pool"]], minlength=C).argmax())
    out = {"n_classes": C, "n_rows_split": {k: int(len(v)) for k, v in split.items()}, "context_sizes": sizes,
           "n_context_used": [int(np.mean([ep.n_context for ep in episodes if ep.requested == s])) for s in sizes],
           "n_query": int(episodes[0].n_query), "majority": float(np.mean(test_rows == pool_majority)),
           "acc": {}, "acc_reps": {}, "top_share": {}, "absent_share": {}, "acc_present": {}, "acc_open": {},
           "rules": rules, "ttt": ttt_info,
           "timing": {"prep_seconds": [float(np.median([ep.prep_seconds for ep in episodes if ep.requested == s]))
                                       for s in sizes],
                      "forward_seconds": {}}}
    for label, r in res.items():
        reps = [r["acc"][req == s].tolist() for s in sizes]
        out["acc_reps"][label] = reps
        out["acc"][label] = [float(np.mean(a)) for a in reps]
        out["top_share"][label] = [float(np.mean(r["top_share"][req == s])) for s in sizes]
        out["absent_share"][label] = [float(np.mean(r["absent_share"][req == s])) for s in sizes]
        out["acc_present"][label] = [float(np.mean(r["present_acc"][req == s])) for s in sizes]
        out["acc_open"][label] = [float(np.mean(r["open_acc"][req == s])) for s in sizes]
        out["timing"]["forward_seconds"][label] = [float(np.median(r["seconds"][req == s])) for s in sizes]
    if baselines:
        test = episodes[0].query_rows
        accs = [_baseline_accuracies(X, y, ep.context_rows, test, seed) for ep in episodes]
        for b in BASELINES:
            a = np.array([d[b] for d in accs])
            out["acc_reps"][b] = [a[req == s].tolist() for s in sizes]
            out["acc"][b] = [float(np.mean(a[req == s])) for s in sizes]
    out["seconds_total"] = time.perf_counter() - t_start
    return out


def run_dataset(template, name: str, recipes: dict, *, context_sizes=CONTEXT_SIZES, n_repeats: int = 3,
                max_test: int = 512, n_ttt: int = 1000, n_estimators: int = 1, seed: int = 0, device=None,
                baselines: bool = False, progress: bool = False) -> dict:
    """:func:`run_protocol` on a table of :func:`ttt_helpers.tabpfn.benchmark.list_datasets`, seeded by
    ``[seed, crc32(name)]``; the result also holds ``name`` and ``meta`` (the table's manifest entry)."""
    from .benchmark import load_dataset

    X, y, meta = load_dataset(name, seed)
    out = run_protocol(template, X, y, recipes, n_classes=int(meta["classes"]), n_ttt=n_ttt,
                       context_sizes=context_sizes, n_repeats=n_repeats, max_test=max_test,
                       n_estimators=n_estimators, seed=seed, rng_key=[int(seed), name_seed(name)], device=device,
                       baselines=baselines, progress=progress)
    return {"name": name, "meta": {k: v for k, v in meta.items() if k != "categorical"}, **out}


def measure_cost(template, name: str, config: TTTConfig, *, context_sizes=CONTEXT_SIZES, n_query: int = 512,
                 n_repeats: int = 3, seed: int = 0, device=None) -> dict:
    """Wall-clock cost on the current machine, from :func:`run_protocol` with ``timing=True`` on a benchmark
    table: one TTT run, and inference per query at each context size.

    Inference of an episode = the package's preprocessing (fitted on the context, applied to the queries) plus
    one forward pass scoring ``n_query`` queries at once (after one warm-up episode); per-query cost = episode
    time / number of queries; the median over ``n_repeats`` episodes is reported.

    Returns
    -------
    dict: ``dataset``, ``device``, ``ttt_seconds``, ``ttt_steps``, ``ttt_seconds_per_step``, ``ttt_config``,
    ``context_sizes``, ``n_query``, ``prep_seconds``, ``forward_seconds``, ``per_query_seconds`` (per size).
    """
    import torch

    from .benchmark import load_dataset

    if not isinstance(config, TTTConfig):
        raise ValueError(f"config must be a TTTConfig, got {type(config).__name__}")
    X, y, meta = load_dataset(name, seed)
    n_query = check_positive_int(n_query, "n_query")
    sizes = [int(s) for s in context_sizes]
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    r = run_protocol(template, X, y, {"ttt": config}, n_classes=int(meta["classes"]), context_sizes=sizes,
                     n_repeats=n_repeats, max_test=n_query, seed=seed, rng_key=[int(seed), name_seed(name), 2],
                     device=device, timing=True)
    prep, fwd = r["timing"]["prep_seconds"], r["timing"]["forward_seconds"]["none"]
    nq = r["n_query"]
    t = r["ttt"]["ttt"]
    return {"dataset": name, "device": str(dev.type), "ttt_seconds": t["seconds"],
            "ttt_prep_seconds": t["prep_seconds"],
            "ttt_steps": config.steps, "ttt_seconds_per_step": t["seconds"] / config.steps,
            "ttt_config": config.to_dict(), "context_sizes": sizes, "n_query": nq, "prep_seconds": prep,
            "forward_seconds": fwd, "per_query_seconds": [(p + f) / nq for p, f in zip(prep, fwd)]}
