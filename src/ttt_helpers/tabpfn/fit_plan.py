"""What :meth:`TTTTabPFNClassifier.fit <ttt_helpers.tabpfn.classifier.TTTTabPFNClassifier.fit>` decides before
any TTT: its parameters checked, the TTT recipe they describe, and the split of the rows.

Every function takes the estimator's parameters as a dict (``est.get_params()``: scikit-learn stores them as
given) and raises ``ValueError`` saying what was expected and what was given; nothing is stored, so a failed
``fit`` leaves the estimator as it was.

* :func:`ttt_recipe`: a :class:`~ttt_helpers.tabpfn.finetune.RecipeSearch` (early stopping on held-out TTT
  rows) or one :class:`~ttt_helpers.tabpfn.finetune.TTTConfig`, and the step budget;
* :func:`plan_rows`: the TTT rows and the context rows of a table of ``n`` rows (seeded by ``rng``).
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from ..validation import check_nonnegative_int, check_positive_int
from .protocol import resolve_rows

__all__ = ["ttt_recipe", "plan_rows"]


def ttt_recipe(params: dict):
    """The TTT recipe (a RecipeSearch, or a TTTConfig without early stopping) and the step count."""
    from .finetune import RecipeSearch, TTTConfig

    p = params
    steps = check_nonnegative_int(p["steps"], "steps")
    if p["optimizer"] not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {p['optimizer']!r}")
    lrs = p["lr"] if isinstance(p["lr"], (list, tuple, np.ndarray)) else [p["lr"]]
    for k, values in (("lr", lrs), ("weight_decay", [p["weight_decay"]]), ("momentum", [p["momentum"]]),
                      ("grad_clip", [p["grad_clip"]])):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{k} must be a finite non-negative number (lr: or a sequence of them), got "
                                 f"{p[k]!r}")
    if not len(lrs) or min(lrs) <= 0:
        raise ValueError(f"lr must be > 0, got {p['lr']!r}")
    if not isinstance(p["early_stopping"], (bool, np.bool_)):
        raise ValueError(f"early_stopping must be True or False, got {p['early_stopping']!r}")
    common = dict(optimizer=p["optimizer"], n_query=p["n_query"], max_context=p["max_context"],
                  weight_decay=p["weight_decay"], momentum=p["momentum"], grad_clip=p["grad_clip"])
    if not p["early_stopping"]:
        if len(lrs) != 1:
            raise ValueError(f"early_stopping=False runs one recipe and needs a single lr, got {p['lr']!r}")
        return TTTConfig(steps=max(steps, 1), lr=float(lrs[0]), **common), steps
    every = check_positive_int(p["eval_every"], "eval_every")
    return RecipeSearch(lrs=tuple(float(v) for v in lrs), max_steps=max(steps, 1),
                        eval_every=min(every, max(steps, 1)),
                        patience=p["n_iter_no_change"], validation_fraction=p["validation_fraction"],
                        **common), steps


def _check_params(params: dict):
    """The checks of the parameters that are not the recipe's; then :func:`ttt_recipe`."""
    p = params
    check_positive_int(p["n_query"], "n_query")
    check_positive_int(p["n_estimators"], "n_estimators")
    check_positive_int(p["batch_size"], "batch_size")
    if not isinstance(p["reuse_ttt_rows"], (bool, np.bool_)):
        raise ValueError(f"reuse_ttt_rows must be True or False, got {p['reuse_ttt_rows']!r}")
    if not isinstance(p["device"], str) or not p["device"]:
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {p['device']!r}")
    if isinstance(p["random_state"], bool) or not isinstance(p["random_state"], (numbers.Integral, type(None))):
        raise ValueError(f"random_state must be an int (or None for 0), got {p['random_state']!r}")
    return ttt_recipe(p)


def plan_rows(params: dict, n: int, rng):
    """Row indices of the TTT part and of the context (validated against ``n``), the recipe, whether to TTT.

    Returns
    -------
    ttt_rows, context_rows : ndarray of int
        Sorted row indices; disjoint unless ``reuse_ttt_rows``.
    recipe : ~ttt_helpers.tabpfn.finetune.RecipeSearch or ~ttt_helpers.tabpfn.finetune.TTTConfig
        :func:`ttt_recipe` (every parameter is checked here, the recipe's too); a search also validates at the
        context size the predictions will use (capped, like every validation size, at the training part of the
        TTT rows), so that its guard sees the context it guards.
    do_ttt : bool
        False when ``ttt_size`` or ``steps`` is 0 (then ``ttt_rows`` is empty).
    """
    p = params
    n_ttt = resolve_rows(p["ttt_size"], n, "ttt_size", allow_zero=True)
    config, steps = _check_params(p)
    do_ttt = n_ttt > 0 and steps > 0
    if not do_ttt:
        n_ttt = 0
    if do_ttt and n_ttt < 3:
        raise ValueError(f"ttt_size={p['ttt_size']!r} gives {n_ttt} TTT row(s); an episode needs at least 3 "
                         "(2 context rows and 1 query), so use ttt_size >= 3 rows or 0 for no TTT")
    if do_ttt and p["early_stopping"]:
        n_val = int(round(config.validation_fraction * n_ttt))
        if n_val < 1 or n_ttt - n_val < 3:
            raise ValueError(f"ttt_size={p['ttt_size']!r} gives {n_ttt} TTT rows, too few to hold out a "
                             f"validation slice ({p['validation_fraction']!r} of them) and keep 3 for training; "
                             "use more TTT rows or early_stopping=False")
    available = n if p["reuse_ttt_rows"] else n - n_ttt
    if available < 2:
        raise ValueError(f"too few rows: the table has {n} sample(s) (rows); ttt_size={p['ttt_size']!r} spends "
                         f"{n_ttt} on TTT and TabPFN needs at least 2 more for the context, so at least "
                         f"{n_ttt + 2} rows are needed (or lower ttt_size, or set reuse_ttt_rows=True)")
    if p["context_size"] is None:
        n_ctx = available
    else:
        n_ctx = resolve_rows(p["context_size"], available, "context_size", allow_zero=False)
        if n_ctx > available:
            raise ValueError(f"context_size={p['context_size']!r} asks for {n_ctx} context rows, but only "
                             f"{available} are left after the {n_ttt} TTT rows (of {n} rows)")
        if n_ctx < 2:
            raise ValueError(f"context_size={p['context_size']!r} gives {n_ctx} row(s); TabPFN needs >= 2")
    if do_ttt and p["early_stopping"] and n_ctx not in config.validation_sizes:
        # the recipe is also validated at the context the predictions will use (capped at the TTT rows'
        # training part, as every validation size)
        config = dataclasses.replace(config, validation_sizes=tuple(sorted({*config.validation_sizes, n_ctx})))
    perm = rng.permutation(n)
    ttt_rows = np.sort(perm[:n_ttt])
    pool = perm if p["reuse_ttt_rows"] else perm[n_ttt:]
    context_rows = np.sort(rng.permutation(pool)[:n_ctx])
    return ttt_rows, context_rows, config, do_ttt
