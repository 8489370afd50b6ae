"""ttt_helpers: the helper package of the ttt-icl-book.

One module per idea:

- :mod:`ttt_helpers.validation`   argument checks shared by every public function
- :mod:`ttt_helpers.theory.tasks`        sampling in-context linear-regression tasks
- :mod:`ttt_helpers.theory.linear_attention`  the one-layer linear-attention model and its reduction
- :mod:`ttt_helpers.theory.pretraining`  the pretraining optimum ``W*`` and ICL losses (theory and Monte Carlo)
- :mod:`ttt_helpers.provenance`   provenance files and sha256-checked loading of shipped results
- :mod:`ttt_helpers.plotting`     figure conventions
"""

__version__ = "0.1.0"
