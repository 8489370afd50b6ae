"""ttt_helpers: the helper package of the ttt-icl-book.

Where each idea lives
---------------------
Shared (top level)

- :mod:`ttt_helpers.validation`   argument checks behind every public function (``ValueError`` saying what was expected)
- :mod:`ttt_helpers.provenance`   provenance JSON beside every shipped file, sha256-checked loading, ``show_shipped``
- :mod:`ttt_helpers.checks`       one-line checks for the chapters' hidden verification cells (print, or raise)
- :mod:`ttt_helpers.plotting`     figure conventions (theory as lines, simulation as markers with error bars)

:mod:`ttt_helpers.theory` -- the paper's linear-attention theory (chapters 01-08)

- ``tasks``              sampling in-context regression tasks; ``covariance_root``, the canonical factor of every draw
- ``linear_attention``   the one-layer model and its reduction to ``x^T W X^T y``
- ``moments``            Gaussian moments with SymPy (Isserlis / Wick)
- ``pretraining``        the pretraining optimum ``W*`` and ICL losses
- ``ttt``                the TTT loss, its gradient and the one-step update ``W + eta g u^T``
- ``isotropic``          exact finite-n theory of one step and its proportional limit
- ``general_covariance`` one step for any start and target covariance (exact and Gaussian ``B``)
- ``multistep``          several steps; ``sample_complexity`` context length needed with and without TTT
- ``montecarlo``         the Monte Carlo engine of all of the above; ``sweeps`` the chapters' sweeps and figures

:mod:`ttt_helpers.gpt2` -- a GPT-2 in-context learner (chapter 09): ``model``, ``data``, ``baselines``,
``train`` (the loop behind the shipped model), ``ttt``, ``throughput``, ``figures``

:mod:`ttt_helpers.tabpfn` -- TabPFN (chapters 10-11): ``checkpoints`` (official or our fallback), ``benchmark``
(the offline tables), ``pretrain`` (the loop behind the fallback, single or multi-GPU: ``config``, ``prior``,
``forward``, ``state``, ``distributed``, ``trainer``) and ``pretrain_eval`` (its evaluations),
``episodes``, ``finetune`` (the fine-tuning loop and the recipe search), ``protocol`` (the one protocol of the
experiment, the cost measurement, the estimator and the CLI), ``analysis``, ``encoder``, ``classifier``
(``TTTTabPFNClassifier``; its ``fit_plan`` and its saved file ``estimator_file``), ``report`` and ``cli``
(``python -m ttt_helpers``)

The four TTT entry points, side by side
---------------------------------------
- ``theory.ttt.ttt_step(W, X_ctx, y_ctx, X_tr, y_tr, eta)``: one exact gradient step of the linear model
  (NumPy, batched over tasks);
- ``theory.multistep.simulate_ttt(W0, n, k, ...)``: many full-batch steps of the linear model, vectorised over tasks;
- ``gpt2.test_time_train(model, beta, config, gen=...)``: AdamW or SGD on a copy of GPT-2 per task, all tasks
  in parallel under ``vmap``;
- ``tabpfn.finetune.ttt_finetune(clf, X_ttt, y_ttt, n_classes, config, rng)``: TabPFN's own fine-tuning path, one
  context/query episode per step (chosen per table by ``tabpfn.finetune.select_recipe``).
"""

__version__ = "0.1.0"
