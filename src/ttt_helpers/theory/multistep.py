"""Multi-step TTT: full-batch gradient descent on the TTT loss of one task, vectorised over tasks.

Each task gets one context ``u`` and ``k`` training queries; ``t`` steps of
:func:`ttt_helpers.theory.ttt.ttt_step` with a fixed ``eta`` are applied to the same data. Facts used by the
chapter "Beyond one step" (our derivations, checked in ``tests/test_multistep.py``):

* **Rank-one structure.** Every iterate is ``W_t = W0 + c_t u^T``: the gradient is always ``(...) u^T``.
  In terms of ``w_t = W_t u`` the steps are gradient descent on ``||y_tr - X_tr w||^2`` with step size
  ``2 eta ||u||^2``; if ``eta ||u||^2 lambda_max(X_tr^T X_tr) < 1`` they converge to
  ``w_inf = w_0 + X_tr^+ (y_tr - X_tr w_0)``, i.e. ``W_inf = W0 + X_tr^+ (y_tr - X_tr W0 u) u^T / ||u||^2``.
* **Oracle bound.** For any ``c``, ``L(W0 + c u^T | beta) = L(W0 | beta) + 2 c^T G u + (u^T Q u) ||c||^2`` with
  ``G = W0 Q - n beta beta^T``, so no number of steps can go below the per-task oracle
  ``L(W0 | beta) - ||G u||^2 / (u^T Q u)``; the excess of ``W_t`` over it is ``(u^T Q u) ||c_t - c_orc||^2``,
  ``c_orc = -G u / (u^T Q u)`` (the *remaining misalignment* of ``W_t``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .tasks import as_generator
from .ttt import Q_times, conditional_test_loss, sample_ttt_problems, ttt_step
from ..validation import (
    check_covariance,
    check_nonnegative_float,
    check_nonnegative_int,
    check_positive_int,
    check_square_matrix,
)

__all__ = ["MultiStepResult", "simulate_ttt", "gd_limit_W", "oracle_terms", "step_size_margin"]


def oracle_terms(W0, problems, n: int, sigma: float = 0.0):
    """Per-task oracle correction for rank-one updates ``W0 + c u^T``.

    Returns
    -------
    dict with ``c_oracle`` (T, d), ``uQu`` (T,), ``oracle_gain`` ``||G u||^2 / (u^T Q u)`` (T,) and
    ``oracle_loss`` ``L(W0 | beta) - oracle_gain`` (T,).
    """
    W0 = check_square_matrix(W0, "W0")
    n = check_nonnegative_int(n, "n")
    check_nonnegative_float(sigma, "sigma")
    beta, u = problems.beta, problems.u
    Qu = Q_times(beta, u, n, sigma)
    Gu = Qu @ W0.T - n * beta * np.einsum("td,td->t", beta, u)[:, None]
    uQu = np.einsum("td,td->t", u, Qu)
    gain = np.sum(Gu**2, axis=1) / uQu
    l0 = conditional_test_loss(W0, beta, n, sigma)
    return {"c_oracle": -Gu / uQu[:, None], "uQu": uQu, "oracle_gain": gain, "oracle_loss": l0 - gain}


def gd_limit_W(W0, problems) -> np.ndarray:
    """Limit of gradient descent on the TTT loss: ``W0 + X_tr^+ (y_tr - X_tr W0 u) u^T / ||u||^2`` (T, d, d)."""
    W0 = check_square_matrix(W0, "W0")
    u = problems.u
    resid = problems.y_train - np.einsum("tkd,td->tk", problems.X_train, u @ W0.T)
    corr = np.einsum("tdk,tk->td", np.linalg.pinv(problems.X_train), resid)
    return W0[None] + np.einsum("td,te->tde", corr, u) / np.sum(u**2, axis=1)[:, None, None]


def step_size_margin(eta, problems) -> np.ndarray:
    """``eta ||u||^2 lambda_max(X_tr^T X_tr)`` per task: gradient descent on the TTT loss is stable iff < 1."""
    eta = check_nonnegative_float(float(eta), "eta")
    lam = np.linalg.svd(problems.X_train, compute_uv=False)[:, 0] ** 2
    return eta * np.sum(problems.u**2, axis=1) * lam


@dataclass
class MultiStepResult:
    """Means and standard errors over tasks of a multi-step TTT simulation.

    Attributes
    ----------
    steps : ndarray (S+1,)              0, 1, ..., S
    loss, loss_se : ndarray (S+1,)      test loss of ``W_t`` (exact over fresh contexts), mean and s.e.
    gain, gain_se : ndarray (S,)        ``loss_{t-1} - loss_t`` (paired over tasks), mean and s.e.
    excess, excess_se : ndarray (S+1,)  remaining misalignment ``loss_t - oracle`` (>= 0 per task)
    oracle, oracle_se : float           the per-task oracle bound, averaged
    limit, limit_se : float             test loss of the gradient-descent limit ``W_inf`` (closed form)
    unstable_fraction : float           fraction of tasks with step-size margin >= 1
    """

    steps: np.ndarray
    loss: np.ndarray
    loss_se: np.ndarray
    gain: np.ndarray
    gain_se: np.ndarray
    excess: np.ndarray
    excess_se: np.ndarray
    oracle: float
    oracle_se: float
    limit: float
    limit_se: float
    unstable_fraction: float
    n_tasks: int
    extra: dict = field(default_factory=dict)


def simulate_ttt(W0, n: int, k: int, sigma: float = 0.0, Sigma_t=None, eta: float = 0.0, steps: int = 10,
                 n_tasks: int = 2000, rng=0, chunk: int = 1000, normalised: bool = False,
                 method: str = "rank1", compute_limit: bool = True) -> MultiStepResult:
    """Simulate ``steps`` TTT gradient steps (fixed ``eta``) on the same context and training set, per task.

    Batched over tasks (chunks of ``chunk``); each step is :func:`ttt_helpers.theory.ttt.ttt_step`, and the test
    loss of every iterate is the exact fresh-context loss :func:`ttt_helpers.theory.ttt.conditional_test_loss`.

    Parameters
    ----------
    W0 : ndarray (d, d)
        Start (pretrained ``W*`` or zeros).
    n, k : int
        Context length, number of TTT training queries.
    sigma : float
        Label-noise standard deviation.
    Sigma_t : ndarray (d, d), optional
        Target task covariance (identity if omitted).
    eta : float
        Fixed step size (e.g. the one-step optimum of :func:`ttt_helpers.theory.general_covariance.one_step_theory`), or,
        with ``normalised=True``, the factor ``gamma`` of the per-task step
        ``gamma / (||u||^2 lambda_max(X_tr^T X_tr))`` (stable for ``gamma < 1``).
    steps : int
        Number of steps ``S`` (``>= 1``).
    n_tasks, chunk : int
    rng : numpy.random.Generator or int
    normalised : bool
        Per-task normalised step (see ``eta``).
    method : {"rank1", "matrix"}
        ``"matrix"`` iterates :func:`ttt_helpers.theory.ttt.ttt_step` on ``d x d`` matrices and evaluates
        :func:`ttt_helpers.theory.ttt.conditional_test_loss`; ``"rank1"`` (default, faster) iterates the
        equivalent update of ``c_t`` in ``W_t = W0 + c_t u^T`` and uses the exact identity
        ``L(W_t | beta) = oracle + (u^T Q u) ||c_t - c_orc||^2``. Both give the same numbers (tested).
    compute_limit : bool
        Also evaluate the gradient-descent limit ``W_inf`` (a pseudo-inverse per task); ``limit`` is NaN if not.

    Returns
    -------
    MultiStepResult
    """
    W0 = check_square_matrix(W0, "W0")
    d = W0.shape[0]
    n = check_positive_int(n, "n")
    k = check_positive_int(k, "k")
    sigma = check_nonnegative_float(sigma, "sigma")
    if Sigma_t is not None:
        Sigma_t = check_covariance(Sigma_t, "Sigma_t", size=d)
    eta = check_nonnegative_float(eta, "eta")
    steps = check_positive_int(steps, "steps")
    n_tasks = check_positive_int(n_tasks, "n_tasks")
    chunk = min(check_positive_int(chunk, "chunk"), max(50, int(4e6 // (k * d))))  # ~32 MB per chunk
    if method not in ("rank1", "matrix"):
        raise ValueError(f"method must be 'rank1' or 'matrix', got {method!r}")
    rng = as_generator(rng)
    losses, oracles, limits, unstable = [], [], [], []
    done = 0
    while done < n_tasks:
        m = min(chunk, n_tasks - done)
        prob = sample_ttt_problems(rng, m, n, k, d, sigma=sigma, Sigma_beta=Sigma_t)
        if normalised:
            step = eta / step_size_margin(1.0, prob)
        else:
            step = eta
        orc = oracle_terms(W0, prob, n, sigma)
        if method == "matrix":
            W = np.broadcast_to(W0, (m, d, d))
            per = [conditional_test_loss(W, prob.beta, n, sigma)]
            for _ in range(steps):
                W = ttt_step(W, prob.X_ctx, prob.y_ctx, prob.X_train, prob.y_train, step)
                per.append(conditional_test_loss(W, prob.beta, n, sigma))
        else:  # rank-one form W_t = W0 + c_t u^T, loss = oracle + uQu ||c_t - c_orc||^2
            u = prob.u
            u2 = np.sum(u**2, axis=1)
            r0 = prob.y_train - np.einsum("tkd,td->tk", prob.X_train, u @ W0.T)
            c = np.zeros((m, d))
            stp = np.broadcast_to(np.asarray(step, dtype=float), (m,))
            excess = lambda c: orc["uQu"] * np.sum((c - orc["c_oracle"]) ** 2, axis=1)  # noqa: E731
            per = [orc["oracle_loss"] + excess(c)]
            for _ in range(steps):
                resid = r0 - u2[:, None] * np.einsum("tkd,td->tk", prob.X_train, c)
                c = c + 2 * stp[:, None] * np.einsum("tkd,tk->td", prob.X_train, resid)
                per.append(orc["oracle_loss"] + excess(c))
        losses.append(np.stack(per, axis=1))
        oracles.append(orc["oracle_loss"])
        if compute_limit:
            limits.append(conditional_test_loss(gd_limit_W(W0, prob), prob.beta, n, sigma))
        else:
            limits.append(np.full(m, np.nan))
        unstable.append(np.zeros(m, bool) + (eta >= 1) if normalised else step_size_margin(eta, prob) >= 1)
        done += m
    L = np.concatenate(losses)
    orc = np.concatenate(oracles)
    lim = np.concatenate(limits)
    se = lambda x: x.std(axis=0, ddof=1) / np.sqrt(x.shape[0])  # noqa: E731
    G = L[:, :-1] - L[:, 1:]
    X = L - orc[:, None]
    return MultiStepResult(
        steps=np.arange(steps + 1), loss=L.mean(0), loss_se=se(L), gain=G.mean(0), gain_se=se(G),
        excess=X.mean(0), excess_se=se(X), oracle=float(orc.mean()), oracle_se=float(se(orc)),
        limit=float(lim.mean()), limit_se=float(se(lim)), unstable_fraction=float(np.concatenate(unstable).mean()),
        n_tasks=n_tasks, extra={"final_minus_limit": float((L[:, -1] - lim).mean()),
                                "final_minus_limit_se": float(se(L[:, -1] - lim))},
    )
