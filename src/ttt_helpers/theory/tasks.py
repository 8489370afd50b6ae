"""Sampling in-context linear-regression tasks (batched over tasks).

Conventions used throughout the book (Section "Setup"):

- features ``x ~ N(0, Sigma_x)`` in ``R^d`` (``Sigma_x = I`` unless stated),
- task vector ``beta ~ N(0, Sigma_beta)`` (``Sigma_beta = I`` unless stated),
- labels ``y = x^T beta + xi`` with ``xi ~ N(0, sigma^2)``.

A *prompt* holds a context of ``n`` labelled pairs ``(X, y)`` and ``m`` query pairs. All arrays carry a
leading task axis ``T`` so that Monte Carlo over tasks is vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..validation import (
    check_covariance,
    check_finite_array,
    check_nonnegative_float,
    check_nonnegative_int,
    check_positive_int,
)

__all__ = ["TaskBatch", "sample_beta", "sample_prompts", "sample_tasks", "as_generator"]


@dataclass(frozen=True)
class TaskBatch:
    """A batch of prompts.

    Attributes
    ----------
    X : ndarray, shape (T, n, d)
        Context features.
    y : ndarray, shape (T, n)
        Context labels.
    x_query : ndarray, shape (T, m, d)
        Query features.
    y_query : ndarray, shape (T, m)
        Query labels (noisy, same noise level as the context).
    beta : ndarray, shape (T, d)
        The task vector of each prompt.
    """

    X: np.ndarray
    y: np.ndarray
    x_query: np.ndarray
    y_query: np.ndarray
    beta: np.ndarray

    @property
    def n_tasks(self) -> int:
        return self.X.shape[0]

    @property
    def u(self) -> np.ndarray:
        """``u = X^T y`` for every prompt, shape (T, d)."""
        return np.einsum("tnd,tn->td", self.X, self.y)


def as_generator(rng) -> np.random.Generator:
    """Return ``rng`` if it is a :class:`numpy.random.Generator`; build one if it is an int seed.

    Global random state is never used: pass a generator or a seed.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy.random.Generator or an integer seed, got {rng!r}")


def covariance_root(cov, name: str = "cov", size: int | None = None) -> np.ndarray:
    """The canonical factor ``L`` with ``L L^T = cov`` used for every Gaussian draw in the book.

    A factor of a covariance is not unique (``L Q`` works for any orthogonal ``Q``), and the factor that an
    eigendecomposition returns depends on the LAPACK kernel when eigenvalues repeat: the same seed then gives
    different draws on different machines. We use factors that are unique:

    - the lower Cholesky factor when ``cov`` is positive definite (smallest eigenvalue above ``1e-10`` times the
      largest), and
    - the symmetric positive semi-definite square root ``V diag(sqrt(lambda)) V^T`` otherwise (unique even when
      eigenvalues repeat; eigenvalues below that threshold count as zero).

    Both change only in the last bits from one BLAS/LAPACK kernel to another.

    Parameters
    ----------
    cov : array_like, shape (d, d)
        Symmetric positive semi-definite.
    name : str
        Name used in error messages.
    size : int, optional
        Required ``d``.

    Returns
    -------
    ndarray, shape (d, d)
    """
    cov = check_covariance(cov, name, size=size)
    vals, vecs = np.linalg.eigh(cov)
    top = max(float(vals[-1]), 0.0)
    if top > 0 and vals[0] > 1e-10 * top:
        return np.linalg.cholesky(cov)
    vals = np.where(vals > 1e-10 * top, vals, 0.0)
    return (vecs * np.sqrt(vals)) @ vecs.T


def _root_or_none(cov, d: int, name: str):
    return None if cov is None else covariance_root(cov, name, size=d)


def sample_beta(rng, n_tasks: int, d: int, Sigma_beta=None) -> np.ndarray:
    """Draw ``n_tasks`` task vectors ``beta ~ N(0, Sigma_beta)``.

    Parameters
    ----------
    rng : numpy.random.Generator or int
    n_tasks, d : int
        Number of tasks ``T`` and dimension ``d``.
    Sigma_beta : ndarray, shape (d, d), optional
        Task covariance (symmetric PSD); identity if omitted.

    Returns
    -------
    ndarray, shape (T, d)
    """
    rng = as_generator(rng)
    n_tasks = check_positive_int(n_tasks, "n_tasks")
    d = check_positive_int(d, "d")
    root = _root_or_none(Sigma_beta, d, "Sigma_beta")
    z = rng.standard_normal((n_tasks, d))
    return z if root is None else z @ root.T


def sample_prompts(rng, beta, n: int, sigma: float = 0.0, n_queries: int = 1, Sigma_x=None) -> TaskBatch:
    """Draw one prompt (context of length ``n`` and ``n_queries`` queries) for each given task vector.

    Parameters
    ----------
    rng : numpy.random.Generator or int
    beta : array_like, shape (T, d)
        Task vectors, one per prompt.
    n : int
        Context length (``n >= 0``; ``n = 0`` gives an empty context).
    sigma : float
        Label-noise standard deviation.
    n_queries : int
        Number of query pairs ``m`` per prompt.
    Sigma_x : ndarray, shape (d, d), optional
        Feature covariance; identity if omitted.

    Returns
    -------
    TaskBatch
    """
    rng = as_generator(rng)
    beta = check_finite_array(beta, "beta", ndim=2)
    n = check_nonnegative_int(n, "n")
    sigma = check_nonnegative_float(sigma, "sigma")
    n_queries = check_positive_int(n_queries, "n_queries")
    T, d = beta.shape
    root = _root_or_none(Sigma_x, d, "Sigma_x")
    feats = rng.standard_normal((T, n + n_queries, d))
    if root is not None:
        feats = feats @ root.T
    labels = np.einsum("tnd,td->tn", feats, beta) + sigma * rng.standard_normal((T, n + n_queries))
    return TaskBatch(
        X=feats[:, :n], y=labels[:, :n], x_query=feats[:, n:], y_query=labels[:, n:], beta=beta
    )


def sample_tasks(
    rng, n_tasks: int, n: int, d: int, sigma: float = 0.0, Sigma_beta=None, n_queries: int = 1, Sigma_x=None
) -> TaskBatch:
    """Draw ``n_tasks`` tasks ``beta ~ N(0, Sigma_beta)`` and one prompt for each.

    See :func:`sample_beta` and :func:`sample_prompts` for the parameters.
    """
    rng = as_generator(rng)
    beta = sample_beta(rng, n_tasks, d, Sigma_beta)
    return sample_prompts(rng, beta, n, sigma=sigma, n_queries=n_queries, Sigma_x=Sigma_x)
