"""Baselines for in-context linear regression, each fitted on every prefix of a prompt.

Least squares, the Bayes-optimal ridge (posterior mean), ``k``-nearest neighbours and Garg et al.'s averaging
estimator. Every function maps prompts ``xs`` (B, N, d), ``ys`` (B, N) to predictions (B, N), where
``out[:, i]`` uses only the pairs ``0, ..., i - 1`` (as the causal transformer does).
"""

from __future__ import annotations

import torch

from ..validation import check_nonnegative_float, check_positive_int
from .data import _check_cov

__all__ = ["least_squares_predictions", "ridge_predictions", "knn_predictions", "averaging_predictions"]


def _prefix_loop(xs, ys, fit_predict):
    _check_shapes(xs, ys)
    B, N, d = xs.shape
    out = torch.zeros(B, N, dtype=xs.dtype, device=xs.device)
    for i in range(1, N):
        out[:, i] = fit_predict(xs[:, :i], ys[:, :i], xs[:, i])
    return out


def _check_shapes(xs, ys):
    if not torch.is_tensor(xs) or xs.ndim != 3:
        raise ValueError(f"xs must be a tensor of shape (B, N, d), got {getattr(xs, 'shape', type(xs))}")
    if not torch.is_tensor(ys) or ys.shape != xs.shape[:2]:
        raise ValueError(f"ys must have shape {tuple(xs.shape[:2])}, got {getattr(ys, 'shape', type(ys))}")


def least_squares_predictions(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares fitted on each prefix.

    Parameters
    ----------
    xs : Tensor, shape (B, N, d)
    ys : Tensor, shape (B, N)

    Returns
    -------
    Tensor, shape (B, N)
        ``out[:, i] = x_i^T pinv(X_{<i}) y_{<i}`` (0 for ``i = 0``).
    """

    def fp(X, y, x):
        beta = torch.linalg.pinv(X.double()) @ y.double().unsqueeze(-1)
        return (x.double().unsqueeze(1) @ beta).squeeze(-1).squeeze(-1).to(xs.dtype)

    return _prefix_loop(xs, ys, fp)


def averaging_predictions(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Garg et al.'s averaging estimator ``x_i^T (1/i) sum_{j<i} y_j x_j``; shapes as :func:`least_squares_predictions`."""
    return _prefix_loop(xs, ys, lambda X, y, x: ((X * y.unsqueeze(-1)).mean(1) * x).sum(-1))


def knn_predictions(xs: torch.Tensor, ys: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Mean label of the ``k`` nearest context points (all of them while fewer than ``k``); shapes as above."""
    k = check_positive_int(k, "k")

    def fp(X, y, x):
        dist = ((X - x.unsqueeze(1)) ** 2).sum(-1)
        idx = dist.topk(min(k, X.shape[1]), dim=1, largest=False).indices
        return y.gather(1, idx).mean(1)

    return _prefix_loop(xs, ys, fp)


def ridge_predictions(xs: torch.Tensor, ys: torch.Tensor, Sigma_beta, sigma: float) -> torch.Tensor:
    """Bayes-optimal predictor (posterior mean) under the prior ``N(0, Sigma_beta)`` and noise ``sigma``.

    ``beta_hat = (X^T X + sigma^2 Sigma_beta^{-1})^{-1} X^T y``; ``Sigma_beta`` must be invertible.
    Shapes as :func:`least_squares_predictions`.
    """
    sigma = check_nonnegative_float(sigma, "sigma")
    S = _check_cov(Sigma_beta, "Sigma_beta")
    P = torch.linalg.inv(S) * sigma**2

    def fp(X, y, x):
        X, y = X.double(), y.double()
        A = X.transpose(1, 2) @ X + P
        beta = torch.linalg.solve(A, (X.transpose(1, 2) @ y.unsqueeze(-1)))
        return (x.double().unsqueeze(1) @ beta).squeeze(-1).squeeze(-1).to(xs.dtype)

    return _prefix_loop(xs, ys, fp)
