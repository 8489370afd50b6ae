"""Test-time training of TabPFN on real tables: where each idea lives.

- ``checkpoints``: which TabPFN v2 weights (official, or the book's fallback) and how to load them;
- ``pretrain``, ``pretrain_eval``: how the fallback was pretrained and scored (``pretrain`` is a subpackage:
  ``config`` and recipes, ``prior``, ``forward`` (task and loss), ``state``, ``distributed``, ``trainer``);
- ``benchmark``: the offline benchmark tables (the paper's T4 stand-in);
- ``episodes``: a context and query rows, preprocessed by ``tabpfn`` and scored (labels as ranks of the classes
  present);
- ``finetune``: the TTT loop (``ttt_finetune``) and the recipe search on held-out TTT rows (``select_recipe``);
- ``protocol``: the paper's protocol, written once (split, evaluation episodes, TTT, evaluation), used by the
  Figure-3 experiment, the cost measurement, the command line and the estimator;
- ``analysis``: curves, reduction factors, break-even, warnings and the chapters' tables;
- ``encoder``: tables (DataFrames) to float matrices and checked labels;
- ``classifier``: ``TTTTabPFNClassifier``, the scikit-learn estimator;
- ``fit_plan``, ``estimator_file``: what the estimator's ``fit`` decides before TTT (parameters checked, the
  recipe, the row split) and its saved file (``save``/``load``);
- ``report``: reading a CSV, writing ``report.json`` and the figures;
- ``cli``: ``python -m ttt_helpers <csv> --target COLUMN``.
"""
