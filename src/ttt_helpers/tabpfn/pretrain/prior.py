"""The prior: synthetic classification tables, generated on the CPU while the accelerator trains.

* :func:`make_prior`: the generator of one curriculum stage, ``tabicl.prior.PriorDataset`` or, for tests and
  smoke runs, :class:`ToyPrior`;
* :func:`prior_stream`: an endless iterator over its batches, from ``torch.utils.data.DataLoader`` workers,
  seeded per call and stage (as the shipped fallback was trained) or per batch (``_PerBatchSeeded``: batch
  ``i`` comes from a seed derived from ``(seed, rank, stage, i)`` and is delivered as ``(i, batch)``, so a
  resumed run draws exactly the batches not drawn yet); per-batch streams can deliver each batch as soon as it
  is ready (``in_order=False``) instead of in index order, where one slow table holds back the batches behind it;
  :func:`prior_batch`: batch ``i`` of such a stream, generated in this process;
* ``_Prefetch``: a thread that keeps a queue of ready batches and says whether the next one is ready (adaptive
  reuse in :meth:`.trainer.Trainer.run`).

tabicl's priors draw from the global NumPy, ``random`` and torch generators; these are seeded here
(``_seed_all``), in each worker or before each batch. ``graph_scm`` also depends on Python's string hashing
(it iterates over a ``set`` of feature-group names), which is randomised per process unless ``PYTHONHASHSEED``
is fixed: :func:`fix_hash_seed` re-runs a script with ``PYTHONHASHSEED=0``, so that the same seeds give the same
tables in every process (DataLoader workers inherit their parent's hashing).
"""

from __future__ import annotations

import os
import random
import sys
import warnings

import numpy as np
import torch

from .config import FILTER_SUFFIX, MIX_SEPARATOR, NOISE_SUFFIX, QUANTILE_SUFFIX

__all__ = ["ToyPrior", "MixedPrior", "QuantileClasses", "NoisyLabels", "quantile_classes", "make_prior", "prior_stream",
           "prior_batch", "fix_hash_seed", "hash_seed_fixed"]


def hash_seed_fixed() -> bool:
    """Whether this process hashes strings reproducibly (``PYTHONHASHSEED`` set to a number, or hashing not
    randomised), so that ``graph_scm`` tables depend on the seeds alone."""
    return not sys.flags.hash_randomization or os.environ.get("PYTHONHASHSEED", "random") != "random"


def fix_hash_seed() -> None:
    """Re-run this script (``sys.argv``) with ``PYTHONHASHSEED=0`` unless its string hashing is fixed already.

    ``tabicl``'s ``graph_scm`` prior assigns features to graph nodes group by group, in the order of a ``set`` of
    group names (``tabicl.prior.graph_lib._dataset.RandomDataset.sample``); that order follows Python's string
    hashing, which is randomised per process. Without this, the same per-batch seeds give other tables in another
    process: a resumed run, or a re-run of a measurement, would not draw the batches it claims to. Call it first
    in a script's ``__main__`` block: it replaces the process (never call it inside a test or a notebook).
    """
    if hash_seed_fixed():
        return
    if "PYTEST_CURRENT_TEST" in os.environ:  # it would restart the whole test run, its output still captured
        raise RuntimeError("fix_hash_seed() would replace this test process: call it in a script's __main__ block "
                           "only, or set PYTHONHASHSEED=0 before starting the tests")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})


class ToyPrior(torch.utils.data.IterableDataset):
    """Random linear classification tasks in the batch format of ``tabicl.prior.PriorDataset``.

    Per table: ``d`` features drawn uniformly from ``1..max_features``, ``c`` classes from ``2..max_classes``,
    ``X ~ N(0, 1)``, labels ``argmax(X W + b + 0.3 noise)`` with ``W ~ N(0, 1)`` and a class offset
    ``b ~ N(0, 1.5^2)`` (so the classes are unbalanced, and a model that reads the context's labels gains
    quickly). Columns beyond ``d`` are zero.
    Draws from torch's global generator (seeded by the caller, as tabicl's priors are).
    """

    def __init__(self, *, batch_size, min_features=1, max_features, max_classes, min_seq_len, max_seq_len,
                 min_train_size=0.3, max_train_size=0.9):
        self.batch_size, self.max_features, self.max_classes = batch_size, max_features, max_classes
        self.min_features = min_features
        self.min_seq_len, self.max_seq_len = min_seq_len, max_seq_len
        self.min_train_size, self.max_train_size = min_train_size, max_train_size

    def get_batch(self):
        B, H = self.batch_size, self.max_features
        T = int(torch.randint(self.min_seq_len, self.max_seq_len + 1, ()))
        frac = self.min_train_size + (self.max_train_size - self.min_train_size) * float(torch.rand(()))
        n_train = max(2, min(T - 1, int(T * frac)))
        X = torch.zeros(B, T, H)
        y = torch.zeros(B, T)
        d = torch.randint(self.min_features, H + 1, (B,))
        for b in range(B):
            db = int(d[b])
            c = int(torch.randint(2, self.max_classes + 1, ()))
            xb = torch.randn(T, db)
            X[b, :, :db] = xb
            y[b] = (xb @ torch.randn(db, c) + 1.5 * torch.randn(1, c) + 0.3 * torch.randn(T, c)).argmax(1).float()
        return X, y, d, torch.full((B,), T), torch.full((B,), n_train)

    def __iter__(self):
        return self

    def __next__(self):
        return self.get_batch()


class MixedPrior(torch.utils.data.IterableDataset):
    """Batches from several priors: each batch comes whole from one of them, chosen with equal probability by a
    draw from NumPy's global generator (seeded by the caller, as tabicl's priors are), so a per-batch-seeded
    stream still gives the same batch ``i`` every time."""

    def __init__(self, priors):
        if len(priors) < 2:
            raise ValueError("a mixed prior needs at least two priors")
        self.priors = list(priors)

    def get_batch(self):
        return self.priors[int(np.random.randint(len(self.priors)))].get_batch()

    def __iter__(self):
        return self

    def __next__(self):
        return self.get_batch()


def quantile_classes(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """A numeric target ``y[T]`` cut into ``n_classes`` equal-frequency classes, lowest values first, as the book
    cuts real regression targets (``pandas.qcut(..., duplicates="drop")``: a value on an edge goes to the lower
    class; tied edges merge classes, so fewer may remain). Returns labels ``0..C-1`` as floats, ``C <= n_classes``."""
    if int(n_classes) < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    levels = torch.arange(0, int(n_classes) + 1, dtype=torch.float64) / int(n_classes)
    inner = torch.unique(torch.quantile(y.double(), levels))[1:-1]  # an edge tied with the minimum is dropped
    codes = (y.double()[:, None] > inner[None, :]).sum(1)
    return torch.unique(codes, return_inverse=True)[1].float()


class QuantileClasses(torch.utils.data.IterableDataset):
    """Classification tables from a regression prior: each table's target is cut by :func:`quantile_classes`
    into ``K`` classes, ``K`` uniform in ``2..max_classes`` per table (drawn from NumPy's global generator, seeded
    by the caller as tabicl's priors are).

    tabicl's own classification tables are binary half of the time and otherwise have ``2..max_classes`` classes
    at random boundaries, so 10-class tables of equal-frequency classes (the book's regression targets) are about
    1 in 20 of them; here they are 1 in ``max_classes - 1``.
    """

    def __init__(self, prior, max_classes: int):
        self.prior, self.max_classes = prior, int(max_classes)

    def get_batch(self):
        X, y, d, seq_lens, train_sizes = self.prior.get_batch()
        labels = torch.stack([quantile_classes(y[b], int(np.random.randint(2, self.max_classes + 1)))
                              for b in range(y.shape[0])])
        return X, labels, d, seq_lens, train_sizes

    def __iter__(self):
        return self

    def __next__(self):
        return self.get_batch()


class NoisyLabels(torch.utils.data.IterableDataset):
    """Tables with label noise that keeps each table's class frequencies: a table is made noisy with probability
    ``share``; then each of its rows, with probability ``rate`` (uniform in ``[0, max_rate]`` per table), takes the
    label of a row drawn uniformly from the same table (context and test rows alike, so the test labels are as noisy
    as the context's). Draws come from NumPy's global generator, seeded by the caller as tabicl's priors are.

    The expected class frequencies stay those of the clean table; what changes is how far the features decide the
    label. The hypothesis behind it: a model pretrained on it leans on a short context's class frequencies where the
    features say little (the book's small-context failure on imbalanced real tables, e.g. ``nwtco_rel`` at 8 rows).
    Measured with the candidate's recipe, two seeds, it did not, and it cost about a point on the benchmark
    (the pretraining appendix, "Label noise in the prior").
    """

    def __init__(self, prior, share: float = 0.5, max_rate: float = 0.5):
        if not 0 <= share <= 1 or not 0 <= max_rate <= 1:
            raise ValueError(f"share and max_rate must lie in [0, 1], got {share!r} and {max_rate!r}")
        self.prior, self.share, self.max_rate = prior, float(share), float(max_rate)

    def get_batch(self):
        X, y, d, seq_lens, train_sizes = self.prior.get_batch()
        y = y.clone()
        for b in range(y.shape[0]):
            if np.random.random() >= self.share:
                continue
            n = int(seq_lens[b]) if seq_lens is not None else y.shape[1]
            rate = np.random.uniform(0.0, self.max_rate)
            flip = np.flatnonzero(np.random.random(n) < rate)
            if len(flip):
                y[b, torch.as_tensor(flip)] = y[b, torch.as_tensor(np.random.randint(0, n, len(flip)))]
        return X, y, d, seq_lens, train_sizes

    def __iter__(self):
        return self

    def __next__(self):
        return self.get_batch()


def make_prior(stage: dict, prior_type: str, device: str = "cpu"):
    """The generator of one curriculum stage: ``tabicl.prior.PriorDataset`` (tabicl's defaults) or :class:`ToyPrior`.

    A tabicl prior named with :data:`FILTER_SUFFIX` (``"mix_scm+filter"``) turns on tabicl's
    ``filter_unpredictable_datasets``: a generated table is drawn again (up to 6 times for the SCM priors) when
    bootstrapped out-of-bag extra-trees predictions do not beat the class frequencies (p >= 0.05). Names joined
    by :data:`MIX_SEPARATOR` (``"graph_scm|tree_scm+filter"``) give a :class:`MixedPrior` of those priors. A name
    with :data:`QUANTILE_SUFFIX` (``"graph_scm+quantiles"``) draws tabicl's regression tables of that generator and
    cuts their targets into equal-frequency classes (:class:`QuantileClasses`). A name with :data:`NOISE_SUFFIX`
    (``"graph_scm+noisy"``) adds label noise to that generator's tables (:class:`NoisyLabels`). ``"real"`` cuts tasks
    from real tables that neither the benchmark nor the development set holds (:class:`.real.RealTables`). ``device`` is where tabicl generates
    (training uses the CPU, in DataLoader workers; tabicl 2.2.0's ``graph_scm`` runs only there,
    ``scripts/prior_throughput.py``).
    """
    common = dict(
        batch_size=stage["batch"],
        min_features=1,
        max_features=stage["max_features"],
        max_classes=stage["max_classes"],
        min_seq_len=stage["min_rows"],
        max_seq_len=stage["max_rows"],
        min_train_size=0.3,
        max_train_size=0.9,
    )
    if MIX_SEPARATOR in prior_type:
        return MixedPrior([make_prior(stage, part, device) for part in prior_type.split(MIX_SEPARATOR)])
    if prior_type == "toy":
        return ToyPrior(**common)
    if prior_type == "real":
        from .real import RealTables, real_pool

        return RealTables(real_pool(), **common)
    if not hash_seed_fixed():
        warnings.warn("Python's string hashing is randomised in this process (PYTHONHASHSEED is not set), so "
                      "tabicl's graph_scm tables depend on the process, not only on the seeds; run scripts through "
                      "ttt_helpers.tabpfn.pretrain.fix_hash_seed()", RuntimeWarning, stacklevel=2)
    from tabicl.prior import PriorDataset
    from tabicl.prior.graph_lib._config import PriorConfig

    if prior_type.endswith(NOISE_SUFFIX):
        return NoisyLabels(make_prior(stage, prior_type.removesuffix(NOISE_SUFFIX), device))
    if prior_type.endswith(QUANTILE_SUFFIX):
        regression = PriorDataset(**common, prior_type=prior_type.removesuffix(QUANTILE_SUFFIX), regression=True,
                                  n_jobs=1, device=device)
        return QuantileClasses(regression, stage["max_classes"])
    base = prior_type.removesuffix(FILTER_SUFFIX)
    return PriorDataset(
        **common,
        prior_type=base,
        config=PriorConfig(filter_unpredictable_datasets=prior_type.endswith(FILTER_SUFFIX)),  # else tabicl's defaults
        n_jobs=1,  # n_jobs > 1 cannot be pickled into DataLoader workers
        device=device,
    )


def _seed_all(seed: int) -> None:
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)


def _mix(*parts: int) -> int:
    """A 31-bit seed derived from integers (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31 - 1))


class _WorkerInit:
    """A DataLoader worker's set-up: one thread, no warnings, its scheduling priority lowered by ``nice``
    (:attr:`.config.PretrainConfig.worker_nice`) and, with a ``base`` (per-call seeding), its global generators seeded
    from ``base`` and its worker id."""

    def __init__(self, base: int | None = None, nice: int = 0):
        self.base, self.nice = base, int(nice)

    def __call__(self, worker_id: int):
        if self.base is not None:
            _seed_all((self.base * 1009 + worker_id) % (2**31 - 1))
        if self.nice:
            os.nice(self.nice)
        torch.set_num_threads(1)
        warnings.filterwarnings("ignore")


class _PerBatchSeeded(torch.utils.data.IterableDataset):
    """Pairs ``(i, batch i)`` for the batch indexes ``i = start, start + 1, ...`` not in ``skip``; batch ``i`` is
    generated right after seeding with ``_mix(*key, i)``.

    With ``W`` DataLoader workers, worker ``w`` makes the ``j``-th of these indexes for ``j = w, w + W, ...``; in
    order, the loader hands them out round-robin, so the stream is the same for any number of workers.
    """

    def __init__(self, stage: dict, prior_type: str, key: tuple, start: int, skip=()):
        self.stage, self.prior_type, self.key, self.start = stage, prior_type, key, start
        self.skip = frozenset(int(i) for i in skip)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        prior = make_prior(self.stage, self.prior_type)
        j, i = 0, self.start
        while True:
            if i not in self.skip:
                if j % n == w:
                    yield i, _seeded_batch(prior, self.key, i)
                j += 1
            i += 1


def _seeded_batch(prior, key: tuple, i: int):
    _seed_all(_mix(*key, i))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prior.get_batch()


def prior_batch(stage: dict, prior_type: str, key: tuple, i: int):
    """Batch ``i`` of the per-batch-seeded stream of ``key``, generated in this process (whose global generators
    it seeds, as a worker's)."""
    return _seeded_batch(make_prior(stage, prior_type), tuple(key), int(i))


def prior_stream(stage: dict, prior_type: str, *, workers: int, seed_base: int | None = None,
                 key: tuple | None = None, start: int = 0, skip=(), in_order: bool = True, worker_nice: int = 0):
    """An endless iterator over prior batches ``(X[B,T,H], y[B,T], d, seq_lens, train_sizes)`` of one stage.

    Give either ``seed_base`` (the per-call scheme: the DataLoader's workers are seeded from it, or, with no
    workers, this process's global generators) or ``key`` (per-batch seeding, see :class:`_PerBatchSeeded`:
    the iterator yields ``(i, batch)`` for the batch indexes ``i >= start`` not in ``skip``).
    ``in_order=False`` (per-batch seeding with workers): each batch is handed out as soon as a worker has made
    it, not in index order (``DataLoader(in_order=False)``), so one slow batch does not hold back the finished
    ones behind it; the indexes say which batches were drawn. ``worker_nice`` lowers the workers' scheduling
    priority by that much (``os.nice``; 0: unchanged); it changes which batch is ready when, not what a batch holds.
    """
    if (seed_base is None) == (key is None):
        raise ValueError("give exactly one of seed_base (per-call seeding) and key (per-batch seeding)")
    if not in_order and key is None:
        raise ValueError("in_order=False needs per-batch seeding (key): only then do the batches carry their index")
    if key is not None:
        dataset = _PerBatchSeeded(stage, prior_type, tuple(key), int(start), skip)
        init = _WorkerInit(nice=worker_nice)
    else:
        dataset = make_prior(stage, prior_type)
        init = _WorkerInit(seed_base, nice=worker_nice)
    if workers == 0 and key is not None:
        return iter(dataset)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=init,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=False,
        persistent_workers=False,
        **({} if in_order else {"in_order": False}),
    )
    if workers == 0:
        _WorkerInit(seed_base)(0)  # seeds this process's global generators, as a worker would be (and leaves its priority)
    return iter(loader)  # (its iterator draws one number from torch's global generator)


class _Prefetch:
    """An iterator over prior batches that can say whether the next batch is ready (a thread fills a queue).

    Disabled, it passes ``next`` through and always answers ``ready() == True``.
    Its ``depth`` of 4 ready batches is not what limits the supply: behind it, the DataLoader lets every worker
    run up to ``prefetch_factor`` (4) batches ahead, and when the queue is full the prior is ahead of the loop.
    """

    def __init__(self, it, *, enabled: bool, depth: int = 4):
        import queue
        import threading

        self.it, self.enabled = it, enabled
        if enabled:
            self.q = queue.Queue(maxsize=depth)
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._fill, daemon=True)
            self.thread.start()

    def _fill(self):
        import queue

        while not self.stop.is_set():
            try:
                item = next(self.it)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                item = exc
            while not self.stop.is_set():
                try:
                    self.q.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def ready(self) -> bool:
        return not self.enabled or not self.q.empty()

    def __next__(self):
        if not self.enabled:
            return next(self.it)
        item = self.q.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self):
        if self.enabled:
            self.stop.set()
            self.thread.join(timeout=5)
