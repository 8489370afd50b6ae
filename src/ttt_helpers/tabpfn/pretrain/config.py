"""What defines a pretraining run: :class:`PretrainConfig`, the named recipes and the curricula.

* :data:`CURRICULUM`, :data:`TINY_CURRICULUM`, :data:`SPEEDRUN_CURRICULUM`: the task sizes (rows, features,
  classes, batch, reuse) by training progress; :func:`stage_index` says which stage is in force;
* :class:`PretrainConfig`: the model, the optimiser, the prior, the numerics and the clock of a run, checked
  at construction;
* :func:`recipe`: the named recipes (``"v1"``, ``"v2.6-muon"``, ``"v2-muon"``, ``"v2.6-fast"``,
  ``"v2.6-fast-ema"``) and the measurements behind them;
  :func:`tiny_config`: a CPU-sized configuration for smoke runs and tests;
* :func:`resume_config`, :func:`resume_mismatch`: what a training state records of its configuration, and what a
  resumed call must keep of it.
"""

from __future__ import annotations

import copy
import dataclasses
import json

__all__ = [
    "CURRICULUM",
    "TINY_CURRICULUM",
    "SPEEDRUN_CURRICULUM",
    "FILTER_SUFFIX",
    "MIX_SEPARATOR",
    "QUANTILE_SUFFIX",
    "NOISE_SUFFIX",
    "PRIORS",
    "check_prior",
    "stage_prior",
    "run_priors",
    "SDPA_MODES",
    "PretrainConfig",
    "recipe",
    "RECIPE_NAMES",
    "tiny_config",
    "RESUME_FREE_FIELDS",
    "resume_config",
    "resume_mismatch",
    "stage_index",
    "key_json",
]

# ----------------------------------------------------------------------------------------------------------
# Curriculum: from this fraction of the training budget on, tasks are drawn with these sizes.
# rows: (min, max) table length (context + test rows); the context is a random 30-90 % of it.
# ----------------------------------------------------------------------------------------------------------
CURRICULUM = [
    dict(start=0.00, min_rows=64, max_rows=256, max_features=8, max_classes=10, batch=128, reuse=1),
    dict(start=0.10, min_rows=128, max_rows=640, max_features=16, max_classes=10, batch=96, reuse=1),
    dict(start=0.35, min_rows=256, max_rows=1100, max_features=24, max_classes=10, batch=48, reuse=2),
    # (float32 training: 48 tasks x 1,400 rows x 40 features ran out of the H100's 80 GB)
    dict(start=0.65, min_rows=512, max_rows=1350, max_features=32, max_classes=10, batch=32, reuse=2),
]
TINY_CURRICULUM = [
    dict(start=0.00, min_rows=32, max_rows=96, max_features=4, max_classes=2, batch=8, reuse=1),
    dict(start=0.50, min_rows=64, max_rows=160, max_features=8, max_classes=10, batch=8, reuse=2),
]
#: Suffix of a prior name that turns on tabicl's filter of unpredictable tables (``"mix_scm+filter"``;
#: :func:`.prior.make_prior`).
FILTER_SUFFIX = "+filter"
#: Suffix of a prior name that draws tabicl's *regression* tables and cuts each target into ``K`` equal-frequency
#: classes, ``K`` uniform in ``2..max_classes`` per table (``"graph_scm+quantiles"``; :class:`.prior.QuantileClasses`).
QUANTILE_SUFFIX = "+quantiles"
#: Suffix of a prior name that replaces part of each table's labels by labels drawn from the same table
#: (``"graph_scm+noisy"``; :class:`.prior.NoisyLabels`), so that fewer prior tables are cleanly predictable from
#: their features; it did not fix the small-context failure it was aimed at (the pretraining appendix).
NOISE_SUFFIX = "+noisy"
#: Separator of the parts of a mixed prior (``"graph_scm|tree_scm+filter"``; :class:`.prior.MixedPrior`).
MIX_SEPARATOR = "|"
_TABICL_PRIORS = ("graph_scm", "mix_scm", "mlp_scm", "tree_scm")
#: Prior types: tabicl's generators, each also with :data:`FILTER_SUFFIX`, :data:`QUANTILE_SUFFIX` or
#: :data:`NOISE_SUFFIX`; ``"real"``, tasks cut from real tables that neither the benchmark nor the development set
#: holds (:mod:`.real`); and a toy prior of random linear tasks (tests, smoke runs). Several names joined by :data:`MIX_SEPARATOR` mix those priors batch by batch
#: (:func:`check_prior`).
PRIORS = (*_TABICL_PRIORS, *(p + FILTER_SUFFIX for p in _TABICL_PRIORS), *(p + QUANTILE_SUFFIX for p in _TABICL_PRIORS),
          *(p + NOISE_SUFFIX for p in _TABICL_PRIORS), "real", "toy")


def stage_prior(cfg, stage: dict) -> str:
    """The prior of one curriculum stage: its own ``"prior"`` where it names one, else the run's ``cfg.prior``."""
    return stage.get("prior", cfg.prior)


def run_priors(cfg) -> str:
    """The priors a run trains on, for its records: ``cfg.prior`` where no stage names its own, else the stages'
    priors in order of first use, joined by ``" then "`` (``"real then graph_scm"``)."""
    return " then ".join(dict.fromkeys(stage_prior(cfg, s) for s in cfg.curriculum))


def check_prior(name: str) -> str:
    """``name`` if it is one of :data:`PRIORS` or several different ones joined by :data:`MIX_SEPARATOR`;
    ``ValueError`` otherwise."""
    parts = str(name).split(MIX_SEPARATOR)
    if not all(part in PRIORS for part in parts) or len(set(parts)) < len(parts):
        raise ValueError(f"prior must be one of {PRIORS} or several different ones joined by "
                         f"{MIX_SEPARATOR!r}, got {name!r}")
    return name
#: How tabpfn's attention dispatch may run in training (:func:`.forward.configure_sdpa` says what each does).
SDPA_MODES = ("default", "no_gqa", "no_flash", "row_math", "math", "no_cudnn", "short_math", "short_efficient")
_STAGE_KEYS = ("start", "min_rows", "max_rows", "max_features", "max_classes", "batch", "reuse")


@dataclasses.dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (the model, the optimiser, the prior, the numerics, the clock).

    The defaults are the recipe of the fallback shipped with the book until issue 11 (``tabpfn_v2``
    architecture, AdamW, float32, tabicl's ``graph_scm`` prior with :data:`CURRICULUM`, seeded per call).

    Attributes
    ----------
    architecture : {"v2", "v2.6"}
        ``tabpfn.architectures.tabpfn_v2`` or ``tabpfn_v2_6`` (RMSNorm, thinking rows, column embeddings read
        from a file that ships with ``tabpfn``, so CPU and GPU see the same numbers).
    emsize, nlayers, nhead, features_per_group, max_num_classes, num_thinking_rows
        The architecture's size (``num_thinking_rows``: v2.6 only).
    optimizer : {"adamw", "muon"}
        ``"muon"``: ``torch.optim.Muon`` on the 2-D weights inside the transformer blocks, AdamW on the rest.
    muon_batched : bool
        Muon's update made by :class:`~ttt_helpers.tabpfn.pretrain.muon.BatchedMuon` (the same update, the
        matrices of one shape orthogonalised at once: about 50 kernel launches per step instead of about 23 per
        matrix) instead of ``torch.optim.Muon``.
    lr, muon_lr, min_lr_frac, decay_frac, warmup_steps, weight_decay, grad_clip
        Peak learning rates (AdamW, Muon), the cosine floor as a fraction of the peak, the final fraction of
        training over which the cosine decays (1: all of it; below 1 the rate stays at its peak before),
        linear warm-up steps, AdamW's weight decay on matrices (none on vectors), the gradient-norm clip.
    out_init_std : float
        Standard deviation of a normal initialisation of the block weights that ``tabpfn`` initialises to zero
        (each attention's output projection and each MLP's second layer); 0 keeps ``tabpfn``'s zeros. With zeros,
        the gradients of the attention's query and key weights are zero at the first step and stay small while
        the output projections grow: at CPU size (``pretrain_eval.plateau_probe``) 0.05 ended the early plateau
        of the held-out loss sooner than zeros with each of three seeds.
    ema : float
        With a value in (0, 1): evaluation, selection and export read an exponential moving average of the
        weights, updated after every step with decay ``min(ema, (1 + t) / (10 + t))`` at step ``t`` (0.99: a memory
        of about 100 steps); 0: the trained weights themselves. Training itself is unchanged.
    qk_mimetic : float
        A "mimetic" start for the attention's query and key weights (after Trockman and Kolter, 2023, *Mimetic
        initialization of self-attention layers*): each query matrix becomes ``a * K + sqrt(1 - a^2) * Q`` of the
        key matrix ``K`` it is scored against, so that at the first step a cell attends most to the cells it
        resembles (``W_q^T W_k`` has a positive-definite part). 0 keeps ``tabpfn``'s independent draws. v2.6 only.
        In the attention between rows the test rows score every query head against the first key head
        (multi-query attention), so there every query head, and every other key head, mixes in the first key
        head. No random numbers are drawn: the same weights on every machine.
    qk_mimetic_on : {"both", "rows", "features"}
        Which attention ``qk_mimetic`` changes: between rows (cells of one column), between features (cells of one
        row), or both.
    prior : str
        One of :data:`PRIORS`, or several joined by ``|`` (a mixture, batch by batch).
    curriculum : list of dict
        Stages (:data:`CURRICULUM`): ``start`` (fraction of the budget), ``min_rows``, ``max_rows``,
        ``max_features``, ``max_classes``, ``batch`` (tables per step), ``reuse`` (steps per prior batch), and
        optionally ``prior``, that stage's prior instead of ``prior`` (:func:`stage_prior`).
    small_context_frac : float
        The share of steps whose context is drawn log-uniformly from 2 rows to half the table
        (:func:`.forward.small_context_size`) instead of the prior's 30-90 % of it (0: never, as every shipped
        model until issue 12's small-context run).
    init_from : str, optional
        Start from the weights of this exported checkpoint (``.ckpt`` written by :meth:`Trainer.export`, of the
        same architecture and size) instead of a fresh initialisation: a warm start with fresh optimisers and a
        fresh schedule (a resumed run, ``resume=``, takes its weights from its state instead).
    min_reuse : int
        Train on every prior batch at least this many times (each time with a fresh context/test split and
        label permutation); raises the stages' ``reuse`` when the CPU prior cannot keep up.
    max_reuse : int
        Adaptive reuse (0: off). After its required uses, a batch is used again while the next one is not
        ready yet, up to this many uses in all: the accelerator never waits for the prior unless a batch has
        been used ``max_reuse`` times. Needs ``workers`` > 0 (a thread keeps a queue of ready batches); which
        batch a step sees then depends on timing.
    lawa : int
        At export, also consider the average of the last ``lawa`` evaluated weights (latest-weight averaging;
        0: off); :meth:`Trainer.select` keeps whichever scores best on the development set.
    workers : int
        ``DataLoader`` worker processes generating prior batches (0: in this process).
    worker_nice : int
        Lower the workers' scheduling priority by this much (``os.nice``; 0: unchanged), so that the training
        loop's process, which shares the CPU cores with them, is served first. Measured on an H100 machine (16
        cores, 15 workers): nice 10 left the step's time unchanged (the pretraining appendix); what slowed the loop
        was torch's pool of CPU threads, which :func:`.trainer.configure_host` now sets to one on a GPU.
    seeding : {"per_call", "per_batch"}
        ``"per_call"`` (the shipped fallback's scheme): each call and stage seeds its own prior stream, so a
        resumed run draws other batches than an uninterrupted one. ``"per_batch"``: batch ``i`` of a stage is
        generated from a seed derived from ``(seed, rank, stage, i)`` and step ``s`` draws its permutations
        from ``(seed, rank, s)``, so stop + resume reproduces an uninterrupted run exactly.
    in_order : bool
        Per-batch seeding with ``workers`` > 0: ``False`` hands each prior batch to the loop as soon as a worker
        has made it (``DataLoader(in_order=False)``); ``True`` (the default, and the only choice with per-call
        seeding) in index order, where one slow batch holds back every finished one behind it. Out of order,
        which batch a step sees depends on timing, but a resumed run still draws exactly the batches not yet
        drawn (the state records the lowest index not drawn and the drawn ones above it).
    autocast : bool
        bf16 autocast on CUDA (float32 with TF32 matrix products otherwise).
    sdpa : {"default", "no_gqa", "no_flash", "row_math", "math", "no_cudnn", "short_math", "short_efficient"}
        How tabpfn's attention dispatch runs in training (:func:`configure_sdpa`). On one H100 (stop 38,
        ``data/results/step_profile_sdpa``) ``"short_efficient"`` made the bare step of ``"v2.6-fast"`` and of the
        6-layer recipe about a fifth shorter than ``"no_cudnn"``, and the 6-layer loop's steps about a tenth; the
        named recipes keep ``"no_cudnn"``, the setting their recorded runs used.
    random_column_embeddings : bool
        v2 only: draw tabpfn_v2's random column embeddings from a new seed at every step (tabpfn draws them at
        inference from the config seed with a generator on the model's device; CUDA and CPU differ).
    clock : {"time", "steps"}
        What the budget of :meth:`Trainer.run` counts: training seconds or optimiser steps. Progress (which
        drives the curriculum and the learning rate) is the spent fraction of it.
    eval_every : float
        Evaluate (and save the state) every so many wall-clock seconds (time clock) or steps (step clock).
    val_tasks, eval_estimators
        Held-out prior tasks for the validation loss; ``TabPFNClassifier(n_estimators=...)`` on real tables.
    seed : int
    device : str
    """

    architecture: str = "v2"
    emsize: int = 128
    nlayers: int = 6
    nhead: int = 4
    features_per_group: int = 2
    max_num_classes: int = 10
    num_thinking_rows: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    muon_lr: float = 1e-3
    muon_batched: bool = False
    min_lr_frac: float = 0.1
    decay_frac: float = 1.0
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    out_init_std: float = 0.0
    ema: float = 0.0
    qk_mimetic: float = 0.0
    qk_mimetic_on: str = "both"
    prior: str = "graph_scm"
    curriculum: list = dataclasses.field(default_factory=lambda: [dict(s) for s in CURRICULUM])
    small_context_frac: float = 0.0
    init_from: str | None = None
    min_reuse: int = 1
    max_reuse: int = 0
    lawa: int = 0
    workers: int = 14
    worker_nice: int = 0
    seeding: str = "per_call"
    in_order: bool = True
    autocast: bool = False
    sdpa: str = "no_gqa"
    random_column_embeddings: bool = False
    clock: str = "time"
    eval_every: float = 120.0
    val_tasks: int = 64
    eval_estimators: int | str = 4
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        choices = {
            "architecture": ("v2", "v2.6"),
            "optimizer": ("adamw", "muon"),
            "seeding": ("per_call", "per_batch"),
            "sdpa": SDPA_MODES,
            "clock": ("time", "steps"),
            "qk_mimetic_on": ("both", "rows", "features"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        check_prior(self.prior)
        if not self.in_order and self.seeding != "per_batch":
            raise ValueError("in_order=False needs seeding='per_batch' (only then do the batches carry their index)")
        if self.random_column_embeddings and self.architecture != "v2":
            raise ValueError("random_column_embeddings applies to the v2 architecture only (v2.6 reads them from a file)")
        if not self.curriculum or self.curriculum[0]["start"] != 0.0:
            raise ValueError("the curriculum must be a non-empty list of stages, the first starting at 0.0")
        for s in self.curriculum:
            if set(s) - {"prior"} != set(_STAGE_KEYS):
                raise ValueError(f"a curriculum stage needs exactly the keys {_STAGE_KEYS} (and optionally "
                                 f"'prior'), got {sorted(s)}")
            if "prior" in s:
                check_prior(s["prior"])
        if not 0.0 <= float(self.small_context_frac) <= 1.0:
            raise ValueError(f"small_context_frac must be in [0, 1], got {self.small_context_frac!r}")
        if not 0.0 < float(self.decay_frac) <= 1.0:
            raise ValueError(f"decay_frac must be in (0, 1], got {self.decay_frac!r}")
        if not float(self.out_init_std) >= 0.0:
            raise ValueError(f"out_init_std must be a non-negative number, got {self.out_init_std!r}")
        if not 0.0 <= float(self.ema) < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema!r}")
        if not 0.0 <= float(self.qk_mimetic) <= 1.0:
            raise ValueError(f"qk_mimetic must be in [0, 1], got {self.qk_mimetic!r}")
        if float(self.qk_mimetic) > 0 and self.architecture != "v2.6":
            raise ValueError("qk_mimetic applies to the v2.6 architecture only")
        if not 0 <= int(self.worker_nice) <= 19:
            raise ValueError(f"worker_nice must be an integer from 0 to 19, got {self.worker_nice!r}")
        for key in ("min_reuse", "warmup_steps"):
            if int(getattr(self, key)) < (1 if key == "min_reuse" else 0):
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)!r}")

    def model_kwargs(self) -> dict:
        """Keyword arguments of the architecture's config (``TabPFNV2Config`` or ``TabPFNV2p6Config``)."""
        kw = dict(emsize=self.emsize, nlayers=self.nlayers, nhead=self.nhead,
                  features_per_group=self.features_per_group, max_num_classes=self.max_num_classes)
        if self.architecture == "v2.6":
            kw["num_thinking_rows"] = self.num_thinking_rows
        return kw


#: Tables of about the size the model meets in the book (1,000 context rows): one stage, batches of 8 tables.
SPEEDRUN_CURRICULUM = [
    dict(start=0.00, min_rows=800, max_rows=1200, max_features=32, max_classes=10, batch=8, reuse=1),
]


# The fields of each named recipe (:func:`recipe` says where each comes from); copied at every use.
_SPEEDRUN_COMMON = dict(optimizer="muon", warmup_steps=100, autocast=True, sdpa="no_cudnn",
                        curriculum=SPEEDRUN_CURRICULUM, min_reuse=1, max_reuse=4, seeding="per_batch",
                        in_order=False, workers=15, lawa=5)
_RECIPES = {
    "v1": dict(min_reuse=4, random_column_embeddings=True, sdpa="no_gqa", workers=15),
    "v2.6-muon": dict(_SPEEDRUN_COMMON, architecture="v2.6", emsize=192, nlayers=6, nhead=3, features_per_group=3,
                      num_thinking_rows=16, lr=1e-3, muon_lr=5e-3),
    "v2-muon": dict(_SPEEDRUN_COMMON, architecture="v2", emsize=192, nlayers=6, nhead=6, features_per_group=2,
                    random_column_embeddings=True, lr=5e-4, muon_lr=2.5e-3),
}
_RECIPES["v2.6-fast"] = dict(_RECIPES["v2.6-muon"], nlayers=4, lr=2.5e-4, muon_lr=1.25e-3, decay_frac=0.01,
                             out_init_std=0.05, muon_batched=True, max_reuse=8)
_RECIPES["v2.6-fast-ema"] = dict(_RECIPES["v2.6-fast"], sdpa="short_efficient", ema=0.99)
#: The names :func:`recipe` knows.
RECIPE_NAMES = tuple(_RECIPES)


def recipe(name: str, **overrides) -> PretrainConfig:
    """A named pretraining recipe, with ``overrides`` applied.

    ``"v1"``: the recipe of the fallback shipped before issue 11 as its last calls ran it (tabpfn_v2, emsize 128,
    6 layers, AdamW with cosine decay, float32, :data:`CURRICULUM` from 256-row to 1,350-row tables, every prior
    batch used 4 times, fresh column embeddings at every step).

    ``"v2.6-muon"``: after the speedrun of modded-nanoTabPFN (arXiv 2606.03681): tabpfn_v2_6 (RMSNorm,
    16 thinking rows, column embeddings from tabpfn's file; emsize 192, 6 layers, 3 heads, feature groups of
    3), Muon on the blocks' matrices (learning rate 5e-3: with ``adjust_lr_fn="match_rms_adamw"`` its update
    is 0.2 lr per entry, so its early steps are as large as AdamW's at 1e-3; at 1e-3 it learned nothing in 60
    steps of the toy prior, at 5e-3 as fast as AdamW) and AdamW on the rest, bf16 autocast with tabpfn's
    attention dispatch minus cuDNN's fused attention (FlashAttention), tables of 800 to 1,200 rows (:data:`SPEEDRUN_CURRICULUM`), adaptive reuse of prior
    batches (the accelerator does not wait for the prior), per-batch seeding with batches delivered as they are
    ready (``in_order=False``), and checkpoint selection on the
    development set among the evaluated weights and their latest-weight average (LAWA, 5).

    ``"v2-muon"``: ``"v2.6-muon"``'s optimiser, numerics, tables, reuse, seeding and selection on the v2
    architecture (emsize 192, 6 layers, 6 heads, feature groups of 2: 3.7 M parameters; fresh column embeddings at
    every step as in ``"v1"``) with learning rates 5e-4 (AdamW) and 2.5e-3 (Muon). Chosen by measurement
    (``data/results/pretrain_recipes.json``): on CPU, 120 steps of 4 small graph_scm tables, v2 reached a
    held-out loss of 1.37 (AdamW or Muon), v2.6 1.46 and 1.50. On the H200, ``"v2.6-muon"`` (1e-3/5e-3) and
    this recipe at 1.5e-3/7.5e-3 collapsed to a constant prediction within 200 steps (held-out loss stuck at
    1.70). A 3-minute ablation of four variants on one GPU put the cause in the learning rate, not in Muon or bf16:
    training loss after 400 steps 1.67 with AdamW alone at 1.5e-3, 1.50 in float32 with Muon at 7.5e-3,
    1.33 with AdamW alone at 5e-4, 1.26 with Muon at 5e-4/2.5e-3 in bf16.

    ``"v2.6-muon"`` with ``lr=2.5e-4, muon_lr=1.25e-3`` (half of ``"v2-muon"``'s rates) made the shipped candidate
    ``data/models/tabpfn_candidate.ckpt`` (6.6 H200-minutes, development accuracy 0.677 against the fallback's
    0.665); at ``"v2-muon"``'s rates it reached 0.641 in 2.4 minutes, at half of them 0.651
    (``data/results/pretrain_bench/session21_v2.6.json``).

    ``"v2.6-fast"``: the recipe of the time-to-quality measurement (issue 11): ``"v2.6-muon"`` at those half rates
    with 4 layers (1.86 M parameters), the rates held at their peak until the last 1 % of the budget
    (``decay_frac=0.01``), the block weights that ``tabpfn`` initialises to zero drawn with standard deviation
    0.05 (``out_init_std``), Muon batched (:class:`~ttt_helpers.tabpfn.pretrain.muon.BatchedMuon`) and a prior batch
    used up to 8 times rather than waiting for the next (``max_reuse=8``: with batched Muon's faster steps, 4 left
    the loop waiting for the prior a fifth of its time). On one H100 its runs of 0.9 training minutes reached
    ``"v1"``'s best development accuracy after a median of 0.76 minutes
    (``data/results/pretrain_bench/session33_reuse8_*.json``), and of 0.50 minutes, about 12 times sooner than
    ``"v1"`` as ``"v1"`` first ran (sharing its GPU with another run), once the
    :class:`~ttt_helpers.tabpfn.pretrain.Trainer` ran on one CPU thread (``session34_threads_*.json``). Against
    ``"v1"`` alone on the same card and in the same loop (``session36_v1_one_thread.json``) the runs long enough to
    reach its best got there 7 to 9 times sooner, and the 6-layer ``"v2.6-muon"`` at the half rates with batched
    Muon and ``max_reuse=8`` 5 to 6 times sooner with each of three seeds, going on past LogisticRegression
    (``session36_six_layer.json``, ``session37_six_layer_seed1.json`` and ``_seed2.json``; the pretraining appendix).
    Tables of 200 to 400 rows in the first half minute shortened a step by at most a quarter and brought no variant
    within ten-fold (``session37_small_tables.json``), nor did the short attention on the memory-efficient kernel
    (``sdpa="short_efficient"``; ``session38_*.json``).

    ``"v2.6-fast-ema"``: ``"v2.6-fast"`` evaluated, selected and exported through a moving average of its weights
    (``ema=0.99``), with the short attention on the memory-efficient kernel (``sdpa="short_efficient"``). On one
    H100, seven one-minute runs (seeds 0 to 6) reached ``"v1"``'s best development accuracy alone after a median of
    0.585 minutes, 12 times sooner than ``"v1"`` alone (7.03 minutes), six of them within ten-fold; a 7-minute run
    went on to 0.6715, just above LogisticRegression on the same rows (0.670)
    (``session47_fast_ema_seeds.json``, ``session47_real_first_ema.json``, ``session47_fast_ema_long.json``; the
    pretraining appendix).
    """
    if name not in _RECIPES:
        raise ValueError(f"recipe must be one of {sorted(_RECIPES)}, got {name!r}")
    return PretrainConfig(**{**copy.deepcopy(_RECIPES[name]), **overrides})


#: The fields of :class:`PretrainConfig` that may change from one call of a run to the next (the machine, the prior's
#: workers, how often it is evaluated, the attention kernel): every other field is part of what the run trains, and a
#: resumed call must keep it (:func:`resume_mismatch`). ``init_from`` is read by the first call only.
RESUME_FREE_FIELDS = ("workers", "worker_nice", "eval_every", "val_tasks", "eval_estimators", "device", "sdpa",
                      "init_from")


def resume_config(cfg: PretrainConfig) -> dict:
    """What a training state records of the configuration that wrote it: every field but
    :data:`RESUME_FREE_FIELDS`, as JSON values."""
    return json.loads(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_FREE_FIELDS}))


def resume_mismatch(saved: dict, cfg: PretrainConfig) -> dict:
    """``{field: (the state's value, this call's value)}`` for every field where ``cfg`` differs from the
    configuration ``saved`` in a training state (:func:`resume_config`); empty when the call may resume it."""
    now = resume_config(cfg)
    return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}


def tiny_config(**overrides) -> PretrainConfig:
    """A CPU-sized configuration (emsize 32, 2 layers, :data:`TINY_CURRICULUM`) for smoke runs and tests."""
    kw = dict(emsize=32, nlayers=2, nhead=2, curriculum=[dict(s) for s in TINY_CURRICULUM], val_tasks=8,
              eval_estimators=1)
    kw.update(overrides)
    return PretrainConfig(**kw)


def stage_index(stages, progress: float) -> int:
    """Index of the curriculum stage in force at ``progress`` (fraction of the budget spent)."""
    idx = 0
    for i, s in enumerate(stages):
        if progress >= s["start"]:
            idx = i
    return idx


def key_json(items) -> dict:
    """``["key=json", ...]`` as a dict of overrides for :func:`recipe` (the scripts' ``--set``, or the parts of a
    benchmark variant): ``["emsize=16", 'prior="toy"']`` -> ``{"emsize": 16, "prior": "toy"}``."""
    return {k: json.loads(v) for k, v in (item.split("=", 1) for item in items)}
