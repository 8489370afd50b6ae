"""Tasks of the GPT-2 chapter: task covariances and seeded torch sampling of regression prompts.

The conventions are those of :mod:`ttt_helpers.theory.tasks` (the theory chapters), drawn with torch instead
of NumPy so that training data can be sampled on the GPU:

- features ``x ~ N(0, I_d)``; task vectors ``beta ~ N(0, Sigma_beta)``; labels ``y = x^T beta + xi`` with
  ``xi ~ N(0, sigma^2)``;
- the canonical covariance factor of ``theory.tasks`` (:func:`ttt_helpers.theory.tasks.covariance_root`:
  Cholesky, or the symmetric root of a singular covariance), never an eigenbasis that depends on the
  LAPACK kernel;
- a leading task axis ``T`` on every array, so that tasks are batched.

Two differences from ``theory.tasks``: here ``tr(Sigma_beta) = 1`` (unit signal variance; the default is
``I / d``, not ``I``), and a prompt is ``N`` pairs with no separate query (the model predicts every label from
the pairs before it), so a batch of prompts has shape ``(T, m, N, d)``.

Pretraining covariance: :func:`decaying_covariance`; target tasks: :func:`rotated_covariance`, the pretraining
covariance rotated by an angle ``theta`` in the planes ``(e_i, e_{d-1-i})`` (``theta = 0``: no shift;
``theta = pi/2``: the spectrum reversed).

All random draws come from a generator passed in (:func:`as_sampler`): a :class:`numpy.random.Generator`, a
:class:`torch.Generator`, or an int seed. An int seed gives NumPy draws on the CPU, which are the same numbers on
every processor and math kernel (torch's CPU ``randn`` differs in the last bits between its AVX2 and scalar
kernels), and a torch generator on a GPU, where training samples its batches.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..theory.tasks import covariance_root
from ..validation import check_covariance, check_nonnegative_float, check_nonnegative_int, check_positive_int
from .model import _as_config

__all__ = [
    "as_torch_generator",
    "as_sampler",
    "decaying_covariance",
    "rotated_covariance",
    "covariance_alignment",
    "sample_beta_torch",
    "sample_regression",
    "eval_dataset",
]


def as_torch_generator(gen, device="cpu") -> torch.Generator:
    """Return ``gen`` if it is a :class:`torch.Generator`, or a new one seeded with the int ``gen``."""
    if isinstance(gen, torch.Generator):
        return gen
    if isinstance(gen, (int, np.integer)) and not isinstance(gen, bool):
        g = torch.Generator(device=device)
        g.manual_seed(int(gen))
        return g
    raise ValueError(f"gen must be a torch.Generator or an integer seed, got {gen!r}")


def as_sampler(gen, device="cpu"):
    """The generator a sampling function draws from.

    ``gen`` is returned as is if it is a :class:`numpy.random.Generator` or a :class:`torch.Generator`; an int
    seed becomes ``numpy.random.default_rng(seed)`` on the CPU (the same draws on every CPU and kernel) and a
    :class:`torch.Generator` on any other device.
    """
    if isinstance(gen, (np.random.Generator, torch.Generator)):
        return gen
    if isinstance(gen, (int, np.integer)) and not isinstance(gen, bool):
        if torch.device(device).type == "cpu":
            return np.random.default_rng(int(gen))
        return as_torch_generator(gen, device)
    raise ValueError(f"gen must be a numpy.random.Generator, a torch.Generator or an integer seed, got {gen!r}")


def _randn(gen, shape, device, dtype) -> torch.Tensor:
    """Standard normals from ``gen`` (see :func:`as_sampler`) as a tensor on ``device``."""
    if isinstance(gen, np.random.Generator):
        return torch.from_numpy(gen.standard_normal(shape)).to(device=device, dtype=dtype)
    return torch.randn(*shape, generator=gen, device=device, dtype=dtype)


def decaying_covariance(d: int, ratio: float = 30.0) -> torch.Tensor:
    """Diagonal pretraining covariance with geometrically decaying eigenvalues and unit trace.

    Parameters
    ----------
    d : int
    ratio : float
        Condition number ``lambda_1 / lambda_d >= 1``.

    Returns
    -------
    Tensor, shape (d, d), float64
        ``diag(lambda)`` with ``lambda_i proportional to ratio^{-i/(d-1)}`` and ``sum(lambda) = 1``.
    """
    d = check_positive_int(d, "d")
    ratio = check_nonnegative_float(ratio, "ratio")
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    i = torch.arange(d, dtype=torch.float64)
    lam = ratio ** (-i / max(d - 1, 1))
    return torch.diag(lam / lam.sum())


def rotated_covariance(Sigma: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate ``Sigma`` by ``theta`` in each plane ``(e_i, e_{d-1-i})``, ``i < d/2``: ``R Sigma R^T``.

    For the diagonal :func:`decaying_covariance`, ``theta = pi/2`` reverses the spectrum (the target tasks
    vary most where the pretraining tasks vary least); the trace is unchanged.

    Parameters
    ----------
    Sigma : Tensor, shape (d, d)
    theta : float
        Angle in radians.

    Returns
    -------
    Tensor, shape (d, d), float64
    """
    Sigma = _check_cov(Sigma, "Sigma")
    if not np.isfinite(float(theta)):
        raise ValueError(f"theta must be a finite angle, got {theta}")
    d = Sigma.shape[0]
    R = torch.eye(d, dtype=torch.float64)
    c, s = math.cos(theta), math.sin(theta)
    for i in range(d // 2):
        j = d - 1 - i
        R[i, i], R[j, j], R[i, j], R[j, i] = c, c, -s, s
    return R @ Sigma @ R.T


def covariance_alignment(S1: torch.Tensor, S2: torch.Tensor) -> float:
    """Cosine ``<S1, S2>_F / (||S1||_F ||S2||_F)`` between two covariances (1: same shape of spectrum)."""
    S1, S2 = _check_cov(S1, "S1"), _check_cov(S2, "S2")
    if S1.shape != S2.shape:
        raise ValueError(f"S1 and S2 must have the same shape, got {tuple(S1.shape)} and {tuple(S2.shape)}")
    return float((S1 * S2).sum() / (S1.norm() * S2.norm()))


def _check_cov(S, name, size=None) -> torch.Tensor:
    """``S`` as a float64 CPU tensor, checked as :mod:`ttt_helpers.theory.tasks` checks its covariances."""
    if torch.is_tensor(S):
        S = S.detach().cpu()
    return torch.as_tensor(check_covariance(S, name, size=size), dtype=torch.float64)


def _cov_root(Sigma, d):
    """The canonical factor of ``theory.tasks`` (:func:`~ttt_helpers.theory.tasks.covariance_root`), float64."""
    S = Sigma.detach().cpu().numpy() if torch.is_tensor(Sigma) else Sigma
    return torch.from_numpy(covariance_root(S, "Sigma_beta", size=d))  # checks S as theory.tasks does


def sample_beta_torch(gen, n_tasks: int, d: int, Sigma_beta=None, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Task vectors ``beta ~ N(0, Sigma_beta)``.

    Parameters
    ----------
    gen : numpy.random.Generator, torch.Generator or int
        See :func:`as_sampler`; a torch generator must be on ``device``.
    n_tasks, d : int
    Sigma_beta : Tensor, shape (d, d), optional
        Identity scaled to unit trace (``I / d``) if omitted.

    Returns
    -------
    Tensor, shape (n_tasks, d)
    """
    gen = as_sampler(gen, device)
    n_tasks, d = check_positive_int(n_tasks, "n_tasks"), check_positive_int(d, "d")
    root = _cov_root(Sigma_beta if Sigma_beta is not None else torch.eye(d, dtype=torch.float64) / d, d)
    z = _randn(gen, (n_tasks, d), device, dtype)
    return z @ root.T.to(device=device, dtype=dtype)


def sample_regression(gen, beta: torch.Tensor, n_prompts: int, n_points: int, sigma: float = 0.0):
    """Prompts ``(x_i, y_i)``, ``i < n_points``, for given task vectors.

    Parameters
    ----------
    gen : numpy.random.Generator, torch.Generator or int
        See :func:`as_sampler`; a torch generator must be on ``beta.device``.
    beta : Tensor, shape (T, d)
    n_prompts : int
        Prompts per task ``m``.
    n_points : int
        Pairs per prompt ``N``.
    sigma : float
        Label-noise standard deviation.

    Returns
    -------
    xs : Tensor, shape (T, m, N, d)
    ys : Tensor, shape (T, m, N)
    """
    if not torch.is_tensor(beta) or beta.ndim != 2:
        raise ValueError(f"beta must be a tensor of shape (T, d), got {getattr(beta, 'shape', type(beta))}")
    gen = as_sampler(gen, beta.device)
    m, N = check_positive_int(n_prompts, "n_prompts"), check_positive_int(n_points, "n_points")
    sigma = check_nonnegative_float(sigma, "sigma")
    T, d = beta.shape
    xs = _randn(gen, (T, m, N, d), beta.device, beta.dtype)
    ys = torch.einsum("tmnd,td->tmn", xs, beta)
    if sigma > 0:
        ys = ys + sigma * _randn(gen, (T, m, N), beta.device, beta.dtype)
    return xs, ys


def eval_dataset(seed: int, n_prompts: int, config, sigma: float, Sigma_beta):
    """A fixed in-distribution evaluation set, drawn with NumPy on the CPU (the same numbers on every machine).

    Returns
    -------
    xs : Tensor, shape (n_prompts, N, d)
    ys : Tensor, shape (n_prompts, N)
    """
    c = _as_config(config)
    g = as_sampler(check_nonnegative_int(seed, "seed"))
    beta = sample_beta_torch(g, n_prompts, c.d, Sigma_beta)
    xs, ys = sample_regression(g, beta, 1, c.n_points, sigma)
    return xs[:, 0], ys[:, 0]
