"""A GPT-2-architecture in-context learner for linear regression, and its test-time training (chapter 09).

Where each idea lives:

- :mod:`~ttt_helpers.gpt2.model`      ``GPT2ICLConfig``, ``GPT2ICL`` (Garg et al. 2022: GPT-2 backbone, linear
  read-in of interleaved ``[x; 0], [0; y]`` tokens, linear read-out), scratch initialisation, parameter and FLOP
  counts, float16 checkpoints (``save_fp16_checkpoint``, sha256-checked ``load_gpt2_icl``)
- :mod:`~ttt_helpers.gpt2.data`       task covariances (``decaying_covariance`` for pretraining,
  ``rotated_covariance`` for shifted targets, ``covariance_alignment``) and seeded torch sampling of tasks and
  prompts, with the conventions of :mod:`ttt_helpers.theory.tasks`
- :mod:`~ttt_helpers.gpt2.baselines`  least squares, Bayes-optimal ridge, k-NN and averaging on every prefix
- :mod:`~ttt_helpers.gpt2.train`      the pretraining loop behind the shipped model (``TrainConfig``,
  ``Trainer`` with checkpoints and resumption; ``train_icl`` at CPU size), the fixed-set evaluation, the ICL
  curve against the baselines, the provenance record of a training run
- :mod:`~ttt_helpers.gpt2.throughput` tokens/s, MFU and the reference throughput benchmarks
- :mod:`~ttt_helpers.gpt2.ttt`        ``test_time_train`` (``TTTConfig``; all tasks in parallel under
  ``vmap``), the shipped experiment's grid ``TTTExperiment`` and ``best_ttt_curve``

The command lines ``scripts/train_gpt2.py`` and ``scripts/gpt2_ttt_experiment.py`` call these. Everything
public is re-exported here, so ``from ttt_helpers import gpt2 as G; G.test_time_train(...)`` works.
All random draws come from a seeded :class:`torch.Generator` (or an int seed) passed in.
"""

from __future__ import annotations

from .baselines import averaging_predictions, knn_predictions, least_squares_predictions, ridge_predictions
from .data import (
    as_torch_generator,
    covariance_alignment,
    decaying_covariance,
    eval_dataset,
    rotated_covariance,
    sample_beta_torch,
    sample_regression,
)
from .model import (
    PUBLIC_REFERENCE_CONFIG,
    GPT2ICL,
    GPT2ICLConfig,
    count_parameters,
    flops_per_token,
    load_gpt2_icl,
    new_scratch_model,
    save_fp16_checkpoint,
)
from .throughput import PEAK_BF16_DENSE, add_optimized_reference_benchmark, benchmark_throughput, mfu, peak_flops
from .train import (
    TrainConfig,
    Trainer,
    eval_loss_per_position,
    icl_curve,
    icl_loss,
    lr_factor,
    train_icl,
    training_provenance,
)
from .ttt import INITS, OPTIMIZERS, TTTConfig, TTTExperiment, best_ttt_curve, test_time_train

__all__ = [
    # model
    "GPT2ICLConfig",
    "GPT2ICL",
    "PUBLIC_REFERENCE_CONFIG",
    "new_scratch_model",
    "count_parameters",
    "flops_per_token",
    "save_fp16_checkpoint",
    "load_gpt2_icl",
    # data
    "as_torch_generator",
    "decaying_covariance",
    "rotated_covariance",
    "covariance_alignment",
    "sample_beta_torch",
    "sample_regression",
    "eval_dataset",
    # baselines
    "least_squares_predictions",
    "ridge_predictions",
    "knn_predictions",
    "averaging_predictions",
    # train
    "icl_loss",
    "lr_factor",
    "TrainConfig",
    "Trainer",
    "train_icl",
    "eval_loss_per_position",
    "icl_curve",
    "training_provenance",
    # throughput
    "PEAK_BF16_DENSE",
    "peak_flops",
    "mfu",
    "benchmark_throughput",
    "add_optimized_reference_benchmark",
    # ttt
    "TTTConfig",
    "test_time_train",
    "best_ttt_curve",
    "TTTExperiment",
    "INITS",
    "OPTIMIZERS",
]
