"""Test-time training (TTT) of the reduced linear-attention model ``y_hat = x^T W X^T y``.

Scheme (the paper's): for one target task ``beta``, ``k`` labelled samples ``(X_train, y_train)`` are used
as queries that all share ONE context ``(X_ctx, y_ctx)`` of length ``n``. With ``u = X_ctx^T y_ctx`` the
TTT loss is (our normalisation: a plain sum, no ``1/k``)

    L_TT(W) = sum_j (y_train_j - x_train_j^T W u)^2 = || y_train - X_train W u ||^2 ,

its gradient is ``-2 X_train^T (y_train - X_train W u) u^T`` and one gradient step of size ``eta`` is the
rank-one update of Proposition 3.1:

    W_TT = W + 2 eta X_train^T (y_train - X_train W u) u^T .

The model after TTT is evaluated on FRESH contexts and queries of the same task. For ``Sigma_x = I``
the expectation over a fresh context of length ``n`` and a fresh query is exact:

    L(W | beta) = ||beta||^2 + sigma^2 - 2 n beta^T W beta + n (n+1) ||W beta||^2
                  + n (||beta||^2 + sigma^2) ||W||_F^2 .
"""

from __future__ import annotations

import numpy as np

from .tasks import as_generator, sample_beta, sample_prompts
from ..validation import check_finite_array, check_nonnegative_float, check_nonnegative_int, check_positive_int

__all__ = [
    "ttt_loss",
    "ttt_gradient",
    "ttt_step",
    "conditional_test_loss",
    "Q_times",
    "sample_ttt_problems",
    "TTTProblems",
    "step_loss_coefficients",
    "optimal_step_size",
]


def _batched(W, X_ctx, y_ctx, X_train, y_train):
    X_ctx = check_finite_array(X_ctx, "X_ctx", ndim=(2, 3))
    batched = X_ctx.ndim == 3
    y_ctx = check_finite_array(y_ctx, "y_ctx", ndim=(1, 2))
    X_train = check_finite_array(X_train, "X_train", ndim=(2, 3))
    y_train = check_finite_array(y_train, "y_train", ndim=(1, 2))
    W = check_finite_array(W, "W", ndim=(2, 3))
    if not batched:
        X_ctx, y_ctx, X_train, y_train = X_ctx[None], y_ctx[None], X_train[None], y_train[None]
        if W.ndim == 2:
            W = W[None]
    T, n, d = X_ctx.shape
    if y_ctx.shape != (T, n):
        raise ValueError(f"y_ctx must have shape {(T, n)}, got {y_ctx.shape}")
    if X_train.ndim != 3 or X_train.shape[0] != T or X_train.shape[2] != d:
        raise ValueError(f"X_train must have shape ({T}, k, {d}), got {X_train.shape}")
    if y_train.shape != X_train.shape[:2]:
        raise ValueError(f"y_train must have shape {X_train.shape[:2]}, got {y_train.shape}")
    if W.ndim == 2:
        W = np.broadcast_to(W, (T, d, d))
    if W.shape != (T, d, d):
        raise ValueError(f"W must have shape ({d}, {d}) or ({T}, {d}, {d}), got {W.shape}")
    return W, X_ctx, y_ctx, X_train, y_train, batched


def _residual(W, X_ctx, y_ctx, X_train, y_train):
    u = np.einsum("tnd,tn->td", X_ctx, y_ctx)
    Wu = np.einsum("tde,te->td", W, u)
    resid = y_train - np.einsum("tkd,td->tk", X_train, Wu)
    return u, resid


def ttt_loss(W, X_ctx, y_ctx, X_train, y_train):
    """TTT loss ``||y_train - X_train W u||^2`` (a sum over the ``k`` training queries).

    Parameters
    ----------
    W : array_like, shape (d, d) or (T, d, d)
    X_ctx : array_like, shape (T, n, d) or (n, d)
    y_ctx : array_like, shape (T, n) or (n,)
    X_train : array_like, shape (T, k, d) or (k, d)
    y_train : array_like, shape (T, k) or (k,)

    Returns
    -------
    ndarray, shape (T,) (float for an unbatched problem)
    """
    W, X_ctx, y_ctx, X_train, y_train, batched = _batched(W, X_ctx, y_ctx, X_train, y_train)
    _, resid = _residual(W, X_ctx, y_ctx, X_train, y_train)
    out = np.sum(resid**2, axis=1)
    return out if batched else float(out[0])


def ttt_gradient(W, X_ctx, y_ctx, X_train, y_train):
    """Gradient of :func:`ttt_loss` with respect to ``W``: ``-2 X_train^T (y_train - X_train W u) u^T``.

    Returns
    -------
    ndarray, shape (T, d, d) (or (d, d) for an unbatched problem)
    """
    W, X_ctx, y_ctx, X_train, y_train, batched = _batched(W, X_ctx, y_ctx, X_train, y_train)
    u, resid = _residual(W, X_ctx, y_ctx, X_train, y_train)
    g = -2.0 * np.einsum("tkd,tk->td", X_train, resid)[:, :, None] * u[:, None, :]
    return g if batched else g[0]


def ttt_step(W, X_ctx, y_ctx, X_train, y_train, eta):
    """One TTT gradient step ``W_TT = W + 2 eta X_train^T (y_train - X_train W u) u^T``.

    ``eta`` is a scalar or one step size per problem (shape (T,)).
    """
    eta = np.asarray(eta, dtype=float)
    if not np.all(np.isfinite(eta)):
        raise ValueError("eta must be finite")
    g = ttt_gradient(W, X_ctx, y_ctx, X_train, y_train)
    W = np.asarray(W, dtype=float)
    if g.ndim == 3:
        eta = eta.reshape(-1, 1, 1) if eta.ndim else eta
        W = np.broadcast_to(W, g.shape)
    return W - eta * g


def conditional_test_loss(W, beta, n: int, sigma: float = 0.0):
    """Exact expected loss of ``W`` on a fresh context (length ``n``) and query of task ``beta``.

    ``L(W | beta) = ||beta||^2 + sigma^2 - 2 n beta^T W beta + n(n+1) ||W beta||^2
    + n (||beta||^2 + sigma^2) ||W||_F^2`` (``Sigma_x = I``).

    Parameters
    ----------
    W : array_like, shape (d, d) or (T, d, d)
    beta : array_like, shape (T, d) or (d,)
    n : int
    sigma : float

    Returns
    -------
    ndarray, shape (T,) (float for a single task)
    """
    beta = check_finite_array(beta, "beta", ndim=(1, 2))
    single = beta.ndim == 1
    beta = beta[None] if single else beta
    T, d = beta.shape
    W = check_finite_array(W, "W", ndim=(2, 3))
    W = np.broadcast_to(W, (T, d, d)) if W.ndim == 2 else W
    if W.shape != (T, d, d):
        raise ValueError(f"W must have shape ({d}, {d}) or ({T}, {d}, {d}), got {W.shape}")
    n = check_nonnegative_int(n, "n")
    s2 = check_nonnegative_float(sigma, "sigma") ** 2
    b2 = np.sum(beta**2, axis=1)
    Wb = np.einsum("tij,tj->ti", W, beta)
    out = (
        b2 + s2 - 2 * n * np.einsum("ti,ti->t", beta, Wb) + n * (n + 1) * np.sum(Wb**2, axis=1)
        + n * (b2 + s2) * np.sum(W**2, axis=(1, 2))
    )
    return float(out[0]) if single else out


def Q_times(beta, u, n: int, sigma: float = 0.0) -> np.ndarray:
    """``Q_beta u`` per task, with ``Q_beta = n(n+1) beta beta^T + n(||beta||^2 + sigma^2) I``.

    ``Q_beta`` is the matrix of the quadratic term of :func:`conditional_test_loss`,
    ``L(W | beta) = ... + tr(W Q_beta W^T)``.

    Parameters
    ----------
    beta, u : ndarray, shape (T, d)

    Returns
    -------
    ndarray, shape (T, d)
    """
    s2 = check_nonnegative_float(sigma, "sigma") ** 2
    b2 = np.sum(beta**2, axis=1)
    s = np.einsum("td,td->t", beta, u)
    return n * (n + 1) * beta * s[:, None] + n * (b2 + s2)[:, None] * u


class TTTProblems:
    """A batch of TTT problems: per task, one context of length ``n`` and ``k`` training queries.

    Attributes
    ----------
    beta : ndarray (T, d); X_ctx : (T, n, d); y_ctx : (T, n); X_train : (T, k, d); y_train : (T, k)
    u : ndarray (T, d), ``X_ctx^T y_ctx``.
    """

    def __init__(self, beta, X_ctx, y_ctx, X_train, y_train):
        self.beta, self.X_ctx, self.y_ctx, self.X_train, self.y_train = beta, X_ctx, y_ctx, X_train, y_train
        self.u = np.einsum("tnd,tn->td", X_ctx, y_ctx)


def sample_ttt_problems(rng, n_tasks: int, n: int, k: int, d: int, sigma: float = 0.0, Sigma_beta=None,
                        beta=None) -> TTTProblems:
    """Draw ``n_tasks`` target tasks (or use the given ``beta``), each with one context and ``k`` training queries.

    Parameters
    ----------
    rng : numpy.random.Generator or int
    n_tasks, n, k, d : int
        Tasks ``T``, context length, TTT set size, dimension.
    sigma : float
    Sigma_beta : ndarray (d, d), optional
        Covariance of the target tasks (identity if omitted).
    beta : ndarray (T, d), optional
        Fixed task vectors (then ``n_tasks`` and ``Sigma_beta`` are ignored).
    """
    rng = as_generator(rng)
    k = check_positive_int(k, "k")
    if beta is None:
        beta = sample_beta(rng, n_tasks, d, Sigma_beta)
    b = sample_prompts(rng, beta, n, sigma=sigma, n_queries=k)
    return TTTProblems(b.beta, b.X, b.y, b.x_query, b.y_query)


def step_loss_coefficients(W, G, beta, n: int, sigma: float = 0.0):
    """Coefficients of the exact fresh-context test loss along a direction: ``L(W + eta G | beta)``.

    With ``Q = n(n+1) beta beta^T + n(||beta||^2 + sigma^2) I`` the loss is a quadratic in ``eta``,

        L(W + eta G | beta) = l0 + eta * l1 + eta^2 * l2,
        l1 = -2 n beta^T G beta + 2 tr(W Q G^T),     l2 = tr(G Q G^T) >= 0 .

    For the TTT step ``G = -grad = 2 X_train^T (y_train - X_train W u) u^T``. The step size minimising the
    loss averaged over tasks is ``-mean(l1) / (2 mean(l2))`` (:func:`optimal_step_size`).

    Parameters
    ----------
    W : array_like, shape (d, d) or (T, d, d)
    G : array_like, shape (d, d) or (T, d, d)
    beta : array_like, shape (T, d) or (d,)
    n : int
        Length of the fresh evaluation contexts.
    sigma : float

    Returns
    -------
    l0, l1, l2 : ndarray, shape (T,) (floats for a single task)
    """
    beta = check_finite_array(beta, "beta", ndim=(1, 2))
    single = beta.ndim == 1
    beta = beta[None] if single else beta
    T, d = beta.shape
    mats = []
    for name, M in (("W", W), ("G", G)):
        M = check_finite_array(M, name, ndim=(2, 3))
        M = np.broadcast_to(M, (T, d, d)) if M.ndim == 2 else M
        if M.shape != (T, d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}) or ({T}, {d}, {d}), got {M.shape}")
        mats.append(M)
    W, G = mats
    n = check_nonnegative_int(n, "n")
    s2 = check_nonnegative_float(sigma, "sigma") ** 2
    l0 = conditional_test_loss(W, beta, n, sigma)
    b2 = np.sum(beta**2, axis=1)
    Gb = np.einsum("tij,tj->ti", G, beta)
    Wb = np.einsum("tij,tj->ti", W, beta)
    # tr(W Q G^T) = n(n+1) (W beta).(G beta) + n(b2+s2) <W, G>_F
    l1 = -2 * n * np.einsum("ti,ti->t", beta, Gb) + 2 * (
        n * (n + 1) * np.einsum("ti,ti->t", Wb, Gb) + n * (b2 + s2) * np.einsum("tij,tij->t", W, G))
    l2 = n * (n + 1) * np.sum(Gb**2, axis=1) + n * (b2 + s2) * np.sum(G**2, axis=(1, 2))
    if single:
        return float(np.atleast_1d(l0)[0]), float(l1[0]), float(l2[0])
    return l0, l1, l2


def optimal_step_size(l1, l2) -> float:
    """The step size minimising ``mean(l0 + eta l1 + eta^2 l2)``: ``-mean(l1) / (2 mean(l2))``."""
    l1 = check_finite_array(l1, "l1")
    l2 = check_finite_array(l2, "l2")
    if l1.shape != l2.shape:
        raise ValueError(f"l1 and l2 must have the same shape, got {l1.shape} and {l2.shape}")
    q = float(np.mean(l2))
    if q <= 0:
        raise ValueError(f"mean(l2) must be positive (a non-zero step direction), got {q}")
    return -float(np.mean(l1)) / (2 * q)
