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

from . import baselines, data, model, throughput, train, ttt
from .baselines import *  # noqa: F401,F403  (each module's __all__)
from .data import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403
from .throughput import *  # noqa: F401,F403
from .train import *  # noqa: F401,F403
from .ttt import *  # noqa: F401,F403

__all__ = [*model.__all__, *data.__all__, *baselines.__all__, *train.__all__, *throughput.__all__, *ttt.__all__]
