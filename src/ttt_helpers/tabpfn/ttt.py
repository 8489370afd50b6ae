"""Test-time training (TTT) of TabPFN on a table, and accuracy against the number of in-context samples.

This is the experiment of the paper's Figure 3a, rebuilt on the package's own fine-tuning path (tabpfn's
``get_preprocessed_dataset_chunks`` + ``meta_dataset_collator`` + ``TabPFNClassifier.fit_from_preprocessed`` +
``TabPFNClassifier.forward(..., use_inference_mode=False)``; the same calls that
``tabpfn.finetuning.FinetunedTabPFNClassifier`` makes in its training loop). We write our own short loop around
them, and not call ``FinetunedTabPFNClassifier.fit``, because that class fixes the optimiser (AdamW), draws one
context/query split per epoch and chunk, and evaluates with the dataset's own label set; the paper needs
(i) AdamW *and* SGD with momentum, (ii) many episodes with context sizes from 1 to ~1,000 drawn from the same
1,000 TTT rows, and (iii) evaluation at context sizes down to one sample.

Protocol (what :func:`split_rows`, :func:`ttt_finetune` and :func:`evaluate_states` do)
---------------------------------------------------------------------------------------
- Per table, rows are shuffled with the seeded generator; the first ``n_ttt`` (1,000) rows are the TTT set;
  the remaining rows are split 80--20 into a *context pool* and a *test set*.
- TTT: ``steps`` optimiser steps; each step is one episode built from the TTT set alone: a random context of
  size drawn log-uniformly in ``[2, n_ttt - n_query]`` and ``n_query`` disjoint query rows; loss = cross-entropy
  of the query predictions (averaged over queries and ensemble members), exactly as in the package's
  ``FinetunedTabPFNClassifier._forward_with_loss``; gradient norm clipped at 1.0; constant learning rate.
- A context whose features are all constant (always so for one row; sometimes for a few rows of a table
  with few categorical columns) is rejected by TabPFN's preprocessing; such a context is drawn again.
- Evaluation: for each context size ``n`` and repetition, ``n`` context rows are drawn at random from the
  context pool (all of it when the pool has fewer than ``n`` rows) and the model predicts up to
  ``max_test`` test rows; accuracy = fraction of correct argmax predictions. The same episodes are scored by
  the model before TTT and after each TTT run, so the curves differ only through the weights.
- Labels live in the table's global label space ``0..C-1`` in training *and* evaluation: a class absent from a
  small context can still be predicted (TabPFN's decoder has 10 outputs). Without this, a one-sample context
  could only ever predict its own class and TTT could not move the near-zero-shot accuracy at all. The
  class-shuffling ensemble member (``CLASS_SHIFT_METHOD``) is switched off for the same reason.
- Feature preprocessing is the package's: fitted on each episode's context rows; the categorical-column
  detection looks at the episode's context and query features together (as in the package's fine-tuning).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..validation import check_finite_array, check_nonnegative_float, check_positive_int

__all__ = [
    "TTTConfig",
    "prepare_classifier",
    "split_rows",
    "Episode",
    "make_episode",
    "make_eval_episodes",
    "episode_logits",
    "episode_accuracy",
    "ttt_finetune",
    "evaluate_states",
    "snapshot_state",
    "load_state",
    "monotone_envelope",
    "context_needed",
    "reduction_factors",
    "mean_curve_with_band",
    "break_even_queries",
    "CONTEXT_SIZES",
]

#: Context sizes of the full experiment (log-spaced, 2 to 1,000). One sample is impossible: TabPFN's
#: preprocessing rejects a context whose features are all constant, which a single row always is.
CONTEXT_SIZES = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


@dataclass
class TTTConfig:
    """Hyper-parameters of one TTT run.

    Attributes
    ----------
    optimizer : {"adamw", "sgd"}
        AdamW (``weight_decay``) or SGD with (heavy-ball) ``momentum``.
    steps : int
        Optimiser steps (one episode each).
    lr : float
        Constant learning rate.
    n_query : int
        Query rows per episode.
    max_context : int or None
        Largest context of an episode (default: ``n_ttt - n_query``).
    weight_decay, momentum, grad_clip : float
    """

    optimizer: str = "adamw"
    steps: int = 50
    lr: float = 1e-5
    n_query: int = 128
    max_context: int | None = None
    weight_decay: float = 0.01
    momentum: float = 0.9
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        check_positive_int(self.steps, "steps")
        check_positive_int(self.n_query, "n_query")
        if self.max_context is not None:
            check_positive_int(self.max_context, "max_context")
        for k in ("lr", "weight_decay", "momentum", "grad_clip"):
            check_nonnegative_float(getattr(self, k), k)
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0")

    def to_dict(self) -> dict:
        return asdict(self)


def _torch():
    import torch

    return torch


def prepare_classifier(template, *, n_estimators: int = 1, seed: int = 0, device=None):
    """A copy of a ``TabPFNClassifier`` set up for the fine-tuning path.

    Parameters
    ----------
    template : tabpfn.TabPFNClassifier
        E.g. from ``ttt_helpers.tabpfn.checkpoints.load_classifier`` (its ``model_path`` and device are kept).
    n_estimators : int
        Ensemble members per episode (the package's fine-tuning default is 2; we use 1 by default, which makes
        one TTT step exactly one forward--backward pass, as in the paper's remark).
    seed : int
        The classifier's ``random_state`` (preprocessing draws).
    device : str, optional
        Overrides the template's device.

    Returns
    -------
    tabpfn.TabPFNClassifier
        ``fit_mode="batched"``, float32, class shuffling off, weights loaded.
    """
    import sklearn.base
    import torch

    n_estimators = check_positive_int(n_estimators, "n_estimators")
    clf = sklearn.base.clone(template)
    cfg = clf.get_params().get("inference_config")
    cfg = dict(cfg) if isinstance(cfg, dict) else ({} if cfg is None else dict(vars(cfg)))
    cfg["CLASS_SHIFT_METHOD"] = None
    params = dict(fit_mode="batched", n_estimators=n_estimators, random_state=int(seed),
                  inference_precision=torch.float32, inference_config=cfg, differentiable_input=False)
    if device is not None:
        params["device"] = device
    if "ignore_pretraining_limits" in clf.get_params():
        params["ignore_pretraining_limits"] = True
    clf.set_params(**params)
    clf._initialize_model_variables()
    return clf


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


@dataclass
class Episode:
    """One preprocessed context/query episode, with labels in the table's global label space."""

    batch: object
    n_context: int
    n_query: int
    prep_seconds: float
    y_query: np.ndarray = field(repr=False)
    requested: int = 0
    redraws: int = 0


_MAX_REDRAWS = 50


def _constant_context_errors():
    from tabpfn.errors import TabPFNValidationError

    return (TabPFNValidationError,)


class _FixedSplit:
    """A ``split_fn`` for the package's dataset collection: the first ``n_context`` rows are the context."""

    def __init__(self, n_context):
        self.n_context = n_context

    def __call__(self, X, y, stratify=None):  # noqa: ARG002 - signature required by the package
        n = self.n_context
        return X[:n], X[n:], y[:n], y[n:]


class _RandomSplit:
    """A ``split_fn`` drawing a new random context/query split at every call (one TTT episode each)."""

    def __init__(self, rng, n_query, max_context, min_context=2):
        self.rng, self.n_query, self.max_context, self.min_context = rng, n_query, max_context, min_context
        self.last_n_context = None

    def __call__(self, X, y, stratify=None):  # noqa: ARG002
        n = len(X)
        q = min(self.n_query, n - 1)
        hi = max(1, min(self.max_context or n - q, n - q))
        lo = min(self.min_context, hi)
        n_ctx = int(np.clip(round(math.exp(self.rng.uniform(math.log(lo), math.log(hi)))), lo, hi))
        perm = self.rng.permutation(n)
        c, qq = perm[:n_ctx], perm[n_ctx:n_ctx + q]
        self.last_n_context = n_ctx
        return X[c], X[qq], y[c], y[qq]


def _remap_labels(batch, classes):
    """Encoded labels (0..k-1 of the episode's label encoder) -> the table's labels (0..C-1)."""
    torch = _torch()
    lut = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    batch.y_context = [lut[t.long()].to(t.dtype) for t in batch.y_context]
    batch.y_query = lut[batch.y_query.long()]
    return batch


def _collection(clf, X, y, split_fn, seed):
    from tabpfn.finetuning.data_util import get_preprocessed_dataset_chunks

    coll = get_preprocessed_dataset_chunks(
        clf, X, y, split_fn, None, "classifier", equal_split_size=False, data_shuffle_seed=int(seed),
        preprocessing_random_state=int(seed), shuffle=False, force_no_stratify=True)
    classes = np.asarray(clf.classes_).astype(np.int64)
    return coll, classes


def make_episode(clf, X_context, y_context, X_query, y_query, *, seed: int = 0) -> Episode:
    """Preprocess one context/query episode through the package's fine-tuning data path.

    Parameters
    ----------
    clf : classifier from :func:`prepare_classifier`
    X_context : (n, d) float, NaN allowed; y_context : (n,) int in ``0..C-1``
    X_query : (q, d) float; y_query : (q,) int
    seed : int
        Preprocessing random state.
    """
    from tabpfn.finetuning.data_util import meta_dataset_collator

    X_context = np.asarray(X_context, dtype=np.float64)
    X_query = np.asarray(X_query, dtype=np.float64)
    if X_context.ndim != 2 or X_query.ndim != 2 or X_context.shape[1] != X_query.shape[1]:
        raise ValueError(f"X_context and X_query must be 2-d with the same columns, got {X_context.shape}, {X_query.shape}")
    y_context = np.asarray(y_context, dtype=np.int64)
    y_query = np.asarray(y_query, dtype=np.int64)
    if len(y_context) != len(X_context) or len(y_query) != len(X_query) or len(y_context) < 1 or len(y_query) < 1:
        raise ValueError(f"need >= 1 context and query rows with matching labels, got {X_context.shape}, "
                         f"{y_context.shape}, {X_query.shape}, {y_query.shape}")
    t0 = time.perf_counter()
    X = np.vstack([X_context, X_query])
    y = np.concatenate([y_context, y_query])
    coll, classes = _collection(clf, X, y, _FixedSplit(len(y_context)), seed)
    batch = _remap_labels(meta_dataset_collator([coll[0]]), classes)
    return Episode(batch, len(y_context), len(y_query), time.perf_counter() - t0, y_query)


def make_eval_episodes(clf, X, y, split: dict, context_sizes, n_repeats: int, rng, *, max_test: int = 512,
                       seed: int = 0) -> list[Episode]:
    """Episodes for the accuracy curve: contexts from the pool, queries from the test rows.

    The same ``max_test`` test rows (a seeded subsample when there are more) are the queries of every episode.
    A context size larger than the pool uses the whole pool (``Episode.n_context`` records what was used).
    """
    n_repeats = check_positive_int(n_repeats, "n_repeats")
    rng = np.random.default_rng(rng)
    pool, test = split["pool"], split["test"]
    if len(test) > max_test:
        test = np.sort(rng.choice(test, size=max_test, replace=False))
    episodes = []
    for n in context_sizes:
        n = check_positive_int(int(n), "context size")
        for _ in range(n_repeats):
            for attempt in range(_MAX_REDRAWS):
                ctx = rng.choice(pool, size=min(n, len(pool)), replace=False)
                try:
                    ep = make_episode(clf, X[ctx], y[ctx], X[test], y[test], seed=seed)
                    break
                except _constant_context_errors():
                    continue
            else:
                raise ValueError(f"no context of size {n} with a non-constant feature in {_MAX_REDRAWS} draws")
            ep.requested = n
            ep.redraws = attempt
            episodes.append(ep)
    return episodes


def episode_logits(clf, episode: Episode, n_classes: int, *, grad: bool = False):
    """Logits of the episode's queries, shape ``(q, E, C)`` (E ensemble members), through ``forward``."""
    torch = _torch()
    from tabpfn.architectures.interface import PerformanceOptions

    b = episode.batch
    clf.fit_from_preprocessed(b.X_context, b.y_context, b.cat_indices, b.configs,
                              performance_options=PerformanceOptions())
    clf.n_classes_ = int(n_classes)
    clf.classes_ = np.arange(int(n_classes))
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        out = clf.forward(b.X_query, use_inference_mode=False, return_raw_logits=True)  # (Q, B=1, E, L)
    return out[:, 0]


def episode_accuracy(clf, episode: Episode, n_classes: int) -> float:
    """Accuracy of the argmax of the ensemble-averaged logits on the episode's queries."""
    logits = episode_logits(clf, episode, n_classes).mean(dim=1)
    pred = logits.argmax(dim=-1).cpu().numpy()
    return float(np.mean(pred == episode.y_query))


def snapshot_state(clf) -> dict:
    """A CPU copy of the classifier's model weights."""
    return {k: v.detach().cpu().clone() for k, v in clf.models_[0].state_dict().items()}


def load_state(clf, state: dict) -> None:
    """Load weights saved by :func:`snapshot_state` into the classifier's model."""
    clf.models_[0].load_state_dict(state)


def ttt_finetune(clf, X_ttt, y_ttt, n_classes: int, config: TTTConfig, rng, *, progress: bool = False,
                 seed: int = 0) -> dict:
    """Test-time train the classifier's model in place on the TTT rows.

    Parameters
    ----------
    clf : classifier from :func:`prepare_classifier` (its ``models_[0]`` is updated)
    X_ttt : (n, d) float, NaN allowed; y_ttt : (n,) int in ``0..C-1``
    n_classes : int
        C, the table's number of classes.
    config : TTTConfig
    rng : numpy.random.Generator or int
        Draws the episodes (context sizes, rows).

    Returns
    -------
    dict
        ``losses`` (per step), ``context_sizes`` (per step), ``seconds`` (total wall time, preprocessing
        included), ``prep_seconds``, ``redraws`` (episodes drawn again because all features of the context were
        constant, which TabPFN's preprocessing rejects). Episodes whose query labels are missing from the
        context are *not* skipped (the package's loop skips them): the global label space makes them valid.
    """
    torch = _torch()
    if not isinstance(config, TTTConfig):
        raise ValueError(f"config must be a TTTConfig, got {type(config).__name__}")
    from tabpfn.finetuning.data_util import meta_dataset_collator

    y_ttt = np.asarray(y_ttt, dtype=np.int64)
    X_ttt = np.asarray(X_ttt, dtype=np.float64)
    if X_ttt.ndim != 2 or len(X_ttt) != len(y_ttt) or len(y_ttt) < 2:
        raise ValueError(f"X_ttt must be (n, d) with n >= 2 matching y_ttt, got {X_ttt.shape} and {y_ttt.shape}")
    n_classes = check_positive_int(n_classes, "n_classes")
    if y_ttt.min() < 0 or y_ttt.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got range {y_ttt.min()}..{y_ttt.max()}")
    rng = np.random.default_rng(rng)
    model = clf.models_[0]
    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    splitter = _RandomSplit(rng, config.n_query, config.max_context)
    t0 = time.perf_counter()
    coll, classes = _collection(clf, X_ttt, y_ttt, splitter, seed)
    prep = time.perf_counter() - t0
    losses, sizes, redraws = [], [], 0
    iterator = range(config.steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"TTT ({config.optimizer})", leave=False)
    for _ in iterator:
        tp = time.perf_counter()
        for _attempt in range(_MAX_REDRAWS):
            try:
                item = coll[0]
                break
            except _constant_context_errors():  # a context whose features are all constant: draw again
                redraws += 1
        else:
            raise ValueError(f"no TTT context with a non-constant feature in {_MAX_REDRAWS} draws")
        batch = _remap_labels(meta_dataset_collator([item]), classes)
        prep += time.perf_counter() - tp
        ep = Episode(batch, splitter.last_n_context, len(batch.y_query[0]), 0.0, batch.y_query[0].numpy())
        opt.zero_grad(set_to_none=True)
        logits = episode_logits(clf, ep, n_classes, grad=True)  # (Q, E, C)
        Q, E, C = logits.shape
        target = batch.y_query[0].to(logits.device).long().repeat(E)
        loss = torch.nn.functional.cross_entropy(logits.permute(1, 0, 2).reshape(E * Q, C), target)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        sizes.append(int(splitter.last_n_context))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"losses": losses, "context_sizes": sizes, "seconds": time.perf_counter() - t0, "prep_seconds": prep,
            "redraws": redraws}


def evaluate_states(clf, episodes, n_classes: int, states: dict) -> dict:
    """Accuracy of every episode under each set of weights.

    Parameters
    ----------
    states : dict name -> state dict (from :func:`snapshot_state`)

    Returns
    -------
    dict name -> {"acc": (n_episodes,) array, "seconds": (n_episodes,) forward wall times}
    (the classifier is left with the weights of the last entry).
    """
    torch = _torch()
    out = {}
    for name, state in states.items():
        load_state(clf, state)
        acc, secs = [], []
        for ep in episodes:
            t0 = time.perf_counter()
            acc.append(episode_accuracy(clf, ep, n_classes))
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            secs.append(time.perf_counter() - t0)
        out[name] = {"acc": np.array(acc), "seconds": np.array(secs)}
    return out


# ----------------------------------------------------------------------------------------------------------
# Curves: aggregation, reduction factor, break-even


def mean_curve_with_band(acc, *, z: float = 1.96):
    """Mean over datasets and a normal-approximation confidence band.

    Parameters
    ----------
    acc : (n_datasets, n_sizes) array of per-dataset mean accuracies

    Returns
    -------
    mean, lo, hi : (n_sizes,) arrays; the band is ``mean +- z * sd / sqrt(n_datasets)``.
    """
    acc = check_finite_array(acc, "acc", ndim=2)
    m = acc.mean(axis=0)
    se = acc.std(axis=0, ddof=1) / math.sqrt(acc.shape[0]) if acc.shape[0] > 1 else np.zeros_like(m)
    return m, m - z * se, m + z * se


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


def reduction_factors(sizes, acc_base, acc_ttt, targets=None) -> dict:
    """Sample-size reduction at equal accuracy: ``n_base(a) / n_ttt(a)`` for target accuracies ``a``.

    By default the targets are the distinct values of the no-TTT curve (running maximum) at the sizes after
    the first that exceed its value at the first size (so ``n_base`` is exactly a grid size and > the first
    size). A target that TTT already exceeds at the first size gives only a lower bound, ``n_base / n_1``
    (flagged ``bound=True``).

    Returns
    -------
    dict with ``targets``, ``n_base``, ``n_ttt``, ``factor``, ``bound`` (lists) and ``median_factor`` (over the
    targets where both are defined and not a bound).
    """
    sizes = check_finite_array(sizes, "sizes", ndim=1)
    base = monotone_envelope(acc_base)
    ttt = monotone_envelope(acc_ttt)
    if targets is None:
        targets = []
        for a in base[1:]:
            if a > base[0] + 1e-12 and (not targets or a > targets[-1] + 1e-12):
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


# ----------------------------------------------------------------------------------------------------------
# One table end to end, cost measurement, summary over tables


def _name_seed(name: str) -> int:
    """A stable integer from a dataset name (for per-table seeds independent of the table order)."""
    import zlib

    return zlib.crc32(name.encode())


def run_dataset(template, name: str, configs: dict, *, context_sizes=CONTEXT_SIZES, n_repeats: int = 3,
                max_test: int = 512, n_ttt: int = 1000, n_estimators: int = 1, seed: int = 0, device=None,
                progress: bool = False) -> dict:
    """The whole protocol on one table: split, evaluation episodes, TTT with each config, accuracies.

    Parameters
    ----------
    template : tabpfn.TabPFNClassifier
        Carries the checkpoint (``model_path``); see :func:`prepare_classifier`.
    name : str
        A table of :func:`ttt_helpers.tabpfn.benchmark.list_datasets`.
    configs : dict label -> TTTConfig
        One TTT run per entry, each from the pretrained weights, all on the same episodes
        (same seed), e.g. ``{"adamw": TTTConfig("adamw", ...), "sgd": TTTConfig("sgd", ...)}``.

    Returns
    -------
    dict (JSON-able): ``name, meta, n_rows_split, context_sizes, n_context_used, acc`` (label -> per-size mean
    over repetitions; ``"none"`` is the model without TTT), ``acc_reps`` (label -> sizes x reps),
    ``ttt`` (label -> seconds, prep_seconds, first/last losses), ``timing`` (per-size mean preprocessing and
    forward seconds per episode, n_query).
    """
    from .benchmark import load_dataset

    if not configs or not all(isinstance(c, TTTConfig) for c in configs.values()):
        raise ValueError("configs must be a non-empty dict of TTTConfig")
    if "none" in configs:
        raise ValueError("'none' is reserved for the model without TTT")
    t_start = time.perf_counter()
    X, y, meta = load_dataset(name, seed)
    C = int(meta["classes"])
    rng = np.random.default_rng([int(seed), _name_seed(name)])
    split = split_rows(len(y), rng, n_ttt=n_ttt)
    clf = prepare_classifier(template, n_estimators=n_estimators, seed=seed, device=device)
    episodes = make_eval_episodes(clf, X, y, split, context_sizes, n_repeats, rng, max_test=max_test, seed=seed)
    base = snapshot_state(clf)
    states = {"none": base}
    ttt_info = {}
    for label, cfg in configs.items():
        load_state(clf, base)
        info = ttt_finetune(clf, X[split["ttt"]], y[split["ttt"]], C, cfg, [int(seed), _name_seed(name), 1],
                            progress=progress, seed=seed)
        states[label] = snapshot_state(clf)
        L = info["losses"]
        k = max(1, len(L) // 5)
        ttt_info[label] = {"seconds": info["seconds"], "prep_seconds": info["prep_seconds"], "steps": len(L),
                           "loss_first": float(np.mean(L[:k])), "loss_last": float(np.mean(L[-k:])),
                           "redraws": info["redraws"], "config": cfg.to_dict()}
    res = evaluate_states(clf, episodes, C, states)
    load_state(clf, base)
    sizes = [int(s) for s in context_sizes]
    req = np.array([ep.requested for ep in episodes])
    out = {"name": name, "meta": {k: v for k, v in meta.items() if k != "categorical"},
           "n_rows_split": {k: int(len(v)) for k, v in split.items()}, "context_sizes": sizes,
           "n_context_used": [int(np.mean([ep.n_context for ep in episodes if ep.requested == s])) for s in sizes],
           "n_query": int(episodes[0].n_query), "acc": {}, "acc_reps": {}, "ttt": ttt_info,
           "timing": {"prep_seconds": [float(np.mean([ep.prep_seconds for ep in episodes if ep.requested == s]))
                                       for s in sizes],
                      "forward_seconds": {}}}
    for label, r in res.items():
        reps = [r["acc"][req == s].tolist() for s in sizes]
        out["acc_reps"][label] = reps
        out["acc"][label] = [float(np.mean(a)) for a in reps]
        out["timing"]["forward_seconds"][label] = [float(np.mean(r["seconds"][req == s])) for s in sizes]
    out["seconds_total"] = time.perf_counter() - t_start
    return out


def measure_cost(template, name: str, config: TTTConfig, *, context_sizes=CONTEXT_SIZES, n_query: int = 512,
                 n_repeats: int = 3, seed: int = 0, device=None) -> dict:
    """Wall-clock cost on the current machine: one TTT run, and inference per query at each context size.

    Inference of an episode = the package's preprocessing (fitted on the context, applied to the queries)
    plus one forward pass scoring ``n_query`` queries at once; per-query cost = episode time / ``n_query``.
    Each size is measured ``n_repeats`` times after one warm-up episode; the median is reported.

    Returns
    -------
    dict: ``device``, ``ttt_seconds``, ``ttt_steps``, ``ttt_seconds_per_step``, ``context_sizes``,
    ``per_query_seconds``, ``prep_seconds``, ``forward_seconds`` (per size), ``n_query``.
    """
    torch = _torch()
    from .benchmark import load_dataset

    X, y, meta = load_dataset(name, seed)
    C = int(meta["classes"])
    rng = np.random.default_rng([int(seed), _name_seed(name), 2])
    split = split_rows(len(y), rng)
    clf = prepare_classifier(template, seed=seed, device=device)
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    test = split["test"]
    n_query = check_positive_int(n_query, "n_query")
    # timing only: queries from the test rows (with replacement if there are fewer), contexts from the
    # other rows (up to 1,000 of them even for a small table)
    q_idx = rng.choice(test, size=n_query, replace=len(test) < n_query)
    pool_all = np.concatenate([split["pool"], split["ttt"]])

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    base = snapshot_state(clf)
    # warm-up (first CUDA kernels, allocator)
    ep = make_episode(clf, X[pool_all[:8]], y[pool_all[:8]], X[q_idx], y[q_idx], seed=seed)
    episode_accuracy(clf, ep, C)
    prep, fwd = [], []
    for n in context_sizes:
        p_, f_ = [], []
        for _ in range(n_repeats):
            ctx = rng.choice(pool_all, size=min(int(n), len(pool_all)), replace=False)
            ep = None
            for _attempt in range(_MAX_REDRAWS):
                try:
                    ep = make_episode(clf, X[ctx], y[ctx], X[q_idx], y[q_idx], seed=seed)
                    break
                except _constant_context_errors():
                    ctx = rng.choice(pool_all, size=min(int(n), len(pool_all)), replace=False)
            sync()
            t0 = time.perf_counter()
            episode_accuracy(clf, ep, C)
            sync()
            f_.append(time.perf_counter() - t0)
            p_.append(ep.prep_seconds)
        prep.append(float(np.median(p_)))
        fwd.append(float(np.median(f_)))
    sync()
    info = ttt_finetune(clf, X[split["ttt"]], y[split["ttt"]], C, config, [int(seed), _name_seed(name), 3], seed=seed)
    load_state(clf, base)
    nq = len(q_idx)
    return {"dataset": name, "device": str(dev.type), "ttt_seconds": info["seconds"], "ttt_prep_seconds": info["prep_seconds"],
            "ttt_steps": config.steps, "ttt_seconds_per_step": info["seconds"] / config.steps,
            "ttt_config": config.to_dict(), "context_sizes": [int(s) for s in context_sizes], "n_query": nq,
            "prep_seconds": prep, "forward_seconds": fwd,
            "per_query_seconds": [(p + f) / nq for p, f in zip(prep, fwd)]}


def _interp_loglog(sizes, values, n):
    return float(np.exp(np.interp(np.log(n), np.log(sizes), np.log(np.maximum(values, 1e-12)))))


def summarise(results: list, *, labels=None, cost: dict | None = None) -> dict:
    """Mean curves with 95 % bands, headline numbers and break-even, from :func:`run_dataset` outputs.

    Parameters
    ----------
    results : list of dicts from :func:`run_dataset` (same context sizes)
    labels : TTT labels to summarise (default: all but ``"none"``)
    cost : dict from :func:`measure_cost`, optional (for the break-even numbers)

    Returns
    -------
    dict with ``sizes``, ``n_datasets``, ``curves`` (label -> mean, lo, hi), ``near_zero_shot``
    (accuracy at the smallest size, label -> value), ``reduction`` (label -> :func:`reduction_factors`),
    ``break_even`` (label -> list over targets, if ``cost``).
    """
    if not results:
        raise ValueError("results is empty")
    sizes = np.array(results[0]["context_sizes"], dtype=float)
    if any(r["context_sizes"] != results[0]["context_sizes"] for r in results):
        raise ValueError("all results must share the context sizes")
    labels = labels or [k for k in results[0]["acc"] if k != "none"]
    curves = {}
    for label in ["none", *labels]:
        A = np.array([r["acc"][label] for r in results])
        m, lo, hi = mean_curve_with_band(A)
        curves[label] = {"mean": m.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
    out = {"sizes": sizes.astype(int).tolist(), "n_datasets": len(results), "curves": curves,
           "near_zero_shot": {k: curves[k]["mean"][0] for k in curves}, "reduction": {}, "break_even": {}}
    for label in labels:
        red = reduction_factors(sizes, curves["none"]["mean"], curves[label]["mean"])
        out["reduction"][label] = red
        if cost is not None:
            cs = np.array(cost["context_sizes"], dtype=float)
            pq = np.array(cost["per_query_seconds"], dtype=float)
            steps_ratio = results[0]["ttt"][label]["steps"] / cost["ttt_steps"]
            T = cost["ttt_seconds"] * steps_ratio
            rows = []
            for a, nb, nt, bd in zip(red["targets"], red["n_base"], red["n_ttt"], red["bound"]):
                if not (np.isfinite(nb) and np.isfinite(nt)):
                    continue
                cb, ct = _interp_loglog(cs, pq, nb), _interp_loglog(cs, pq, nt)
                rows.append({"target_acc": a, "n_base": nb, "n_ttt": nt, "per_query_base": cb, "per_query_ttt": ct,
                             "ttt_seconds": T, "break_even_queries": break_even_queries(T, cb, ct), "bound": bd})
            out["break_even"][label] = rows
    return out


# ----------------------------------------------------------------------------------------------------------
# Presentation helpers for the chapter

LABELS = {"none": "no TTT (pretrained)", "adamw": "TTT, AdamW", "sgd": "TTT, SGD + momentum"}


def plot_curves(ax, summary: dict, *, labels=("none", "adamw", "sgd"), title: str = "", style: str = "-o"):
    """Mean accuracy against context size (log axis) with 95 % bands, one curve per label present."""
    sizes = summary["sizes"]
    for k in labels:
        if k not in summary["curves"]:
            continue
        c = summary["curves"][k]
        (line,) = ax.plot(sizes, c["mean"], style, ms=4, label=f"{LABELS.get(k, k)} (measured)")
        ax.fill_between(sizes, c["lo"], c["hi"], color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ax.set(xlabel="in-context samples n (log scale)", ylabel=f"mean test accuracy over {summary['n_datasets']} tables",
           title=title)
    ax.legend()
    return ax


def per_dataset_table(results: list, *, sizes=None):
    """A :class:`pandas.DataFrame`: per table, accuracy without/with TTT at chosen context sizes, and the
    TTT loss before/after."""
    import pandas as pd

    rows = []
    for r in results:
        all_sizes = r["context_sizes"]
        use = sizes or [all_sizes[0], all_sizes[len(all_sizes) // 2], all_sizes[-1]]
        row = {"table": r["name"], "rows": r["meta"]["rows"], "classes": r["meta"]["classes"]}
        for s in use:
            if s not in all_sizes:
                continue
            i = all_sizes.index(s)
            for k, v in r["acc"].items():
                row[f"{k} n={s}"] = round(v[i], 3)
        for k, v in r["ttt"].items():
            row[f"{k} loss"] = f"{v['loss_first']:.2f}->{v['loss_last']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("table")


def cost_table(cost: dict):
    """A :class:`pandas.DataFrame` of inference time per query (ms) at each context size, one column per device,
    and a row with the TTT wall time (s) per table."""
    import pandas as pd

    cols = {}
    for dev, c in cost.items():
        col = {f"per query, n={s} (ms)": round(q * 1e3, 3) for s, q in zip(c["context_sizes"], c["per_query_seconds"])}
        col[f"TTT, {c['ttt_steps']} steps (s)"] = round(c["ttt_seconds"], 2)
        col["TTT per step (s)"] = round(c["ttt_seconds"] / c["ttt_steps"], 3)
        cols[dev] = col
    return pd.DataFrame(cols)


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
