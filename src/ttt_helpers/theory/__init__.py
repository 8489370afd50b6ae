"""The linear-attention theory of the paper: tasks, model, moments, the TTT step, and its analysis.

Where each idea lives:

- :mod:`.tasks`, :mod:`.linear_attention`, :mod:`.pretraining`: the tasks, the model, the pretraining optimum ``W*``
- :mod:`.moments`: Gaussian moments (Isserlis / Wick) in SymPy
- :mod:`.ttt`: the one-step TTT update and the exact fresh-context test loss
- :mod:`.isotropic`: exact one-step theory for ``W0 = c I``, ``Sigma_beta = I``, and its proportional limit
- :mod:`.general_covariance`: one-step theory for any start and target covariance (Gaussian and exact ``B``)
- :mod:`.multistep`: several TTT steps (simulation, oracle bound, gradient-descent limit)
- :mod:`.sample_complexity`: context length needed with and without TTT
- :mod:`.montecarlo`: the Monte Carlo engine that checks the one-step theory (vectorised over tasks)
- :mod:`.sweeps`: the book's sweeps, their CI and full sizes (``SWEEP_PROFILES``) and their figures
"""
