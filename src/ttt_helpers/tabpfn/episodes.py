"""Episodes: a context and query rows of one table, preprocessed by ``tabpfn`` and scored in one forward pass.

Everything goes through the ``tabpfn`` package's own fine-tuning path (``get_preprocessed_dataset_chunks`` +
``meta_dataset_collator`` + ``TabPFNClassifier.fit_from_preprocessed`` + ``TabPFNClassifier.forward(...,
use_inference_mode=False)``, the calls that ``tabpfn.finetuning.FinetunedTabPFNClassifier`` makes), so the same
:class:`Episode` serves test-time training (:mod:`ttt_helpers.tabpfn.finetune`, with gradients) and evaluation.

Feature preprocessing is the package's, fitted on each episode's context rows; the categorical-column detection
looks at the episode's context and query features together (as in the package's fine-tuning).

**Labels: the model reads and predicts labels by rank among the classes present in the context.** TabPFN is
pretrained on contexts whose labels are the dense ranks ``0..k-1`` of the ``k`` classes present (the package's
label encoder at inference; our fallback's pretraining target, ``ttt_helpers.tabpfn.pretrain``), and its output
``i`` means "the ``i``-th class present in the context". An episode therefore hands the model the context labels
as ranks: the present classes, in the order of the table's labels, become ``0..k-1``, and the classes absent
from the context follow as ``k..C-1`` (:func:`label_ranks`). The logits are mapped back to the
table's label space ``0..C-1`` (:func:`episode_logits`), so a class absent from a small context can still be
predicted, by an output that test-time training can teach (TabPFN's decoder has 10 outputs), and the
class-shuffling ensemble member (``CLASS_SHIFT_METHOD``) is switched off.

Feeding the table's labels unranked (what this module did before) is wrong whenever the context misses a class
of lower label: a context holding only label 1 is read as "the first class present", and the model's answer 0
was taken to be label 0, the absent class. On an imbalanced binary table whose majority class is label 1 this
put the model far *below* the majority rate at small contexts (on the synthetic table of
``tests/test_episodes.py``, two rows of the majority class made it predict the minority class for nearly every
query).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..validation import check_positive_int

__all__ = [
    "CONTEXT_SIZES",
    "MAX_REDRAWS",
    "make_template",
    "prepare_classifier",
    "Episode",
    "label_ranks",
    "make_episode",
    "make_eval_episodes",
    "episode_logits",
    "episode_accuracy",
    "episode_predictions",
    "present_classes",
    "constant_context_errors",
]

#: Context sizes of the full experiment (log-spaced, 2 to 1,000). One sample is impossible: TabPFN's
#: preprocessing rejects a context whose features are all constant, which a single row always is.
CONTEXT_SIZES = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)

#: How often a context whose features are all constant is drawn again before giving up.
MAX_REDRAWS = 50


def _torch():
    import torch

    return torch


def make_template(path, device: str = "cpu", categorical_indices=()):
    """A ``tabpfn.TabPFNClassifier`` on the checkpoint file ``path`` (see :func:`prepare_classifier`)."""
    from .checkpoints import classifier_on

    return classifier_on(path, device, categorical_features_indices=list(categorical_indices) or None)


def prepare_classifier(template, *, n_estimators: int = 1, seed: int = 0, device=None):
    """A copy of a ``TabPFNClassifier`` set up for the fine-tuning path.

    Parameters
    ----------
    template : tabpfn.TabPFNClassifier
        E.g. from :func:`make_template` or ``ttt_helpers.tabpfn.checkpoints.load_classifier`` (its
        ``model_path`` and device are kept).
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


@dataclass
class Episode:
    """One preprocessed context/query episode.

    ``batch`` holds the context labels as ranks (:func:`label_ranks`); ``y_query`` holds the query labels in
    the table's label space; ``ranks[c]`` is the model output that stands for table label ``c``. Episodes of
    :func:`make_eval_episodes` also record the size asked for, the redraws and the row indices used.
    """

    batch: object
    n_context: int
    n_query: int
    prep_seconds: float
    y_query: np.ndarray = field(repr=False)
    ranks: np.ndarray = field(repr=False, default=None)
    requested: int = 0
    redraws: int = 0
    context_rows: np.ndarray = field(repr=False, default=None)
    query_rows: np.ndarray = field(repr=False, default=None)


def constant_context_errors():
    """The exceptions with which ``tabpfn`` rejects a context whose features are all constant."""
    from tabpfn.errors import TabPFNValidationError

    return (TabPFNValidationError,)


def label_ranks(y_context, n_classes: int) -> np.ndarray:
    """The rank of each table label in an episode: present classes first (in label order), then absent ones.

    Parameters
    ----------
    y_context : (n,) int in ``0..n_classes-1``
    n_classes : int

    Returns
    -------
    (n_classes,) int array ``r`` with ``r[c]`` the model's label for class ``c``: ``0..k-1`` for the ``k``
    classes present in the context, ``k..n_classes-1`` for the absent ones.
    """
    present = np.zeros(int(n_classes), dtype=bool)
    present[np.asarray(y_context, dtype=np.int64)] = True
    order = np.concatenate([np.flatnonzero(present), np.flatnonzero(~present)])
    ranks = np.empty(int(n_classes), dtype=np.int64)
    ranks[order] = np.arange(int(n_classes))
    return ranks


class _FixedSplit:
    """A ``split_fn`` for the package's dataset collection: the first ``n_context`` rows are the context."""

    def __init__(self, n_context):
        self.n_context = n_context

    def __call__(self, X, y, stratify=None):  # noqa: ARG002 - signature required by the package
        n = self.n_context
        return X[:n], X[n:], y[:n], y[n:]


class RandomSplit:
    """A ``split_fn`` drawing a new context/query split at every call (one TTT episode each).

    The context size is drawn log-uniformly in ``[2, max_context]``; at most half of the rows are queries, so
    that a small TTT set still leaves contexts of at least 2 rows.
    """

    def __init__(self, rng, n_query, max_context, min_context=2):
        self.rng, self.n_query, self.max_context, self.min_context = rng, n_query, max_context, min_context
        self.last_n_context = None

    def __call__(self, X, y, stratify=None):  # noqa: ARG002
        n = len(X)
        q = max(1, min(self.n_query, n // 2))
        hi = max(1, min(self.max_context or n - q, n - q))
        lo = min(self.min_context, hi)
        n_ctx = int(np.clip(round(math.exp(self.rng.uniform(math.log(lo), math.log(hi)))), lo, hi))
        perm = self.rng.permutation(n)
        c, qq = perm[:n_ctx], perm[n_ctx:n_ctx + q]
        self.last_n_context = n_ctx
        return X[c], X[qq], y[c], y[qq]


def collection(clf, X, y, split_fn, seed):
    """The package's preprocessed dataset collection of ``(X, y)``, and its label encoder's classes."""
    from tabpfn.finetuning.data_util import get_preprocessed_dataset_chunks

    coll = get_preprocessed_dataset_chunks(
        clf, X, y, split_fn, None, "classifier", equal_split_size=False, data_shuffle_seed=int(seed),
        preprocessing_random_state=int(seed), shuffle=False, force_no_stratify=True)
    return coll, np.asarray(clf.classes_).astype(np.int64)


def collate(item, classes, n_classes: int):
    """One collated episode from an item of :func:`collection`: context labels as ranks, query labels as the
    table's; returns ``(batch, ranks)``."""
    torch = _torch()
    from tabpfn.finetuning.data_util import meta_dataset_collator

    batch = meta_dataset_collator([item])
    lut = torch.as_tensor(np.asarray(classes, dtype=np.int64))  # the episode's encoder codes -> table labels
    y_context = [lut[t.long()] for t in batch.y_context]
    ranks = label_ranks(y_context[0].numpy(), n_classes)
    rank_t = torch.as_tensor(ranks)
    batch.y_context = [rank_t[t].to(t0.dtype) for t, t0 in zip(y_context, batch.y_context)]
    batch.y_query = lut[batch.y_query.long()]
    return batch, ranks


def make_episode(clf, X_context, y_context, X_query, y_query, *, n_classes: int | None = None,
                 seed: int = 0) -> Episode:
    """Preprocess one context/query episode through the package's fine-tuning data path.

    Parameters
    ----------
    clf : classifier from :func:`prepare_classifier`
    X_context : (n, d) float, NaN allowed; y_context : (n,) int in ``0..C-1``
    X_query : (q, d) float; y_query : (q,) int
    n_classes : int, optional
        C, the table's number of classes (default: the largest label seen plus one).
    seed : int
        Preprocessing random state.
    """
    X_context = np.asarray(X_context, dtype=np.float64)
    X_query = np.asarray(X_query, dtype=np.float64)
    if X_context.ndim != 2 or X_query.ndim != 2 or X_context.shape[1] != X_query.shape[1]:
        raise ValueError(f"X_context and X_query must be 2-d with the same columns, got {X_context.shape}, "
                         f"{X_query.shape}")
    y_context = np.asarray(y_context, dtype=np.int64)
    y_query = np.asarray(y_query, dtype=np.int64)
    if len(y_context) != len(X_context) or len(y_query) != len(X_query) or len(y_context) < 1 or len(y_query) < 1:
        raise ValueError(f"need >= 1 context and query rows with matching labels, got {X_context.shape}, "
                         f"{y_context.shape}, {X_query.shape}, {y_query.shape}")
    if n_classes is None:
        C = int(max(y_context.max(), y_query.max()) + 1)
    else:
        C = check_positive_int(n_classes, "n_classes")
    t0 = time.perf_counter()
    X = np.vstack([X_context, X_query])
    y = np.concatenate([y_context, y_query])
    coll, classes = collection(clf, X, y, _FixedSplit(len(y_context)), seed)
    batch, ranks = collate(coll[0], classes, C)
    return Episode(batch, len(y_context), len(y_query), time.perf_counter() - t0, y_query, ranks)


def make_eval_episodes(clf, X, y, pool, test, context_sizes, n_repeats: int, rng, *, n_classes: int | None = None,
                       max_test: int = 512, seed: int = 0) -> list[Episode]:
    """Episodes for an accuracy curve: contexts drawn from the ``pool`` rows, queries from the ``test`` rows.

    The same ``max_test`` test rows (a seeded subsample when there are more) are the queries of every episode.
    A context size larger than the pool uses the whole pool (``Episode.n_context`` records what was used); a
    context whose features are all constant is drawn again (``Episode.redraws``).
    """
    n_repeats = check_positive_int(n_repeats, "n_repeats")
    rng = np.random.default_rng(rng)
    pool, test = np.asarray(pool), np.asarray(test)
    C = int(np.max(y)) + 1 if n_classes is None else int(n_classes)
    if len(test) > max_test:
        test = np.sort(rng.choice(test, size=max_test, replace=False))
    episodes = []
    for n in context_sizes:
        n = check_positive_int(int(n), "context size")
        for _ in range(n_repeats):
            for attempt in range(MAX_REDRAWS):
                ctx = rng.choice(pool, size=min(n, len(pool)), replace=False)
                try:
                    ep = make_episode(clf, X[ctx], y[ctx], X[test], y[test], n_classes=C, seed=seed)
                    break
                except constant_context_errors():
                    continue
            else:
                raise ValueError(f"no context of size {n} with a non-constant feature in {MAX_REDRAWS} draws")
            ep.requested, ep.redraws, ep.context_rows, ep.query_rows = n, attempt, ctx, test
            episodes.append(ep)
    return episodes


def episode_logits(clf, episode: Episode, n_classes: int, *, grad: bool = False):
    """Logits of the episode's queries in the table's label space, shape ``(q, E, C)`` (E ensemble members)."""
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
    ranks = torch.as_tensor(episode.ranks, device=out.device)
    return out[:, 0][..., ranks]  # output ranks[c] stands for label c


def present_classes(episode: Episode) -> np.ndarray:
    """Boolean mask over the table's labels: which classes the episode's context holds (their ranks are
    ``0..k-1``, :func:`label_ranks`). The model's outputs for the others were never trained in pretraining, which
    masks each task's logits to the classes of its context (``ttt_helpers.tabpfn.pretrain.masked_logits``)."""
    k = int(episode.batch.y_context[0].max()) + 1
    return np.asarray(episode.ranks) < k


def open_and_present_predictions(logits, episode: Episode):
    """From an episode's ensemble-averaged logits ``(Q, C)`` (a torch tensor): the open argmax over all the
    table's classes, the argmax over the context's classes only (``tabpfn``'s own ``predict`` rule), and whether
    each open prediction names a class absent from the context (:func:`present_classes`); three tensors of
    length ``Q`` on the logits' device."""
    import torch

    present = torch.as_tensor(present_classes(episode), device=logits.device)
    pred = logits.argmax(dim=-1)
    masked = logits.masked_fill(~present[None, :], float("-inf")).argmax(dim=-1)
    return pred, masked, ~present[pred]


def episode_predictions(clf, episode: Episode, n_classes: int) -> np.ndarray:
    """The argmax of the ensemble-averaged logits for each query (table labels)."""
    return episode_logits(clf, episode, n_classes).mean(dim=1).argmax(dim=-1).cpu().numpy()


def episode_accuracy(clf, episode: Episode, n_classes: int) -> float:
    """Accuracy of :func:`episode_predictions` on the episode's queries."""
    return float(np.mean(episode_predictions(clf, episode, n_classes) == episode.y_query))
