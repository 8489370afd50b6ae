"""The pretraining optimum ``W*`` of the reduced linear-attention model, and ICL losses.

Setting (``Sigma_x = I``): ``beta ~ N(0, Sigma_beta)``, context ``X`` with i.i.d. ``N(0, I_d)`` rows,
``y = X beta + xi``, ``xi ~ N(0, sigma^2 I_n)``, ``u = X^T y`` and prediction ``x^T W u``.
The population ICL loss (expected squared error on a fresh query) is

    L(W) = tr(Sigma_beta) - 2 n tr(W Sigma_beta) + n(n+1) tr(W Sigma_beta W^T)
           + n (tr(Sigma_beta) + sigma^2) tr(W W^T) + sigma^2 ,

from ``E[u beta^T] = n Sigma_beta`` and ``E[u u^T] = n(n+1) Sigma_beta + n(tr Sigma_beta + sigma^2) I``
(the Wishart moment ``E[X^T X A X^T X] = n(n+1) A + n tr(A) I`` for symmetric ``A``). Its minimiser is

    W* = Sigma_beta [ (n+1) Sigma_beta + (tr(Sigma_beta) + sigma^2) I ]^{-1} ,

which is ``I / (n + d + 1 + sigma^2)`` for ``Sigma_beta = I``. (Our derivation; the isotropic case is the
paper's.)
"""

from __future__ import annotations

import numpy as np

from .tasks import as_generator, sample_tasks
from ..validation import (
    check_covariance,
    check_finite_array,
    check_nonnegative_float,
    check_nonnegative_int,
    check_positive_int,
)

__all__ = [
    "optimal_W",
    "population_icl_loss",
    "isotropic_optimal_loss",
    "mc_icl_loss",
    "train_W_sgd",
]


def _sigma_beta(Sigma_beta, d: int) -> np.ndarray:
    return np.eye(d) if Sigma_beta is None else check_covariance(Sigma_beta, "Sigma_beta", size=d)


def optimal_W(n: int, d: int, sigma: float = 0.0, Sigma_beta=None) -> np.ndarray:
    """The pretraining optimum ``W* = Sigma_beta [(n+1) Sigma_beta + (tr Sigma_beta + sigma^2) I]^{-1}``.

    Parameters
    ----------
    n : int
        Context length of the pretraining prompts (``n >= 0``).
    d : int
        Dimension.
    sigma : float
        Label-noise standard deviation.
    Sigma_beta : ndarray, shape (d, d), optional
        Pretraining task covariance (identity if omitted).

    Returns
    -------
    ndarray, shape (d, d)
    """
    n = check_nonnegative_int(n, "n")
    d = check_positive_int(d, "d")
    sigma = check_nonnegative_float(sigma, "sigma")
    S = _sigma_beta(Sigma_beta, d)
    M = (n + 1) * S + (np.trace(S) + sigma**2) * np.eye(d)
    return np.linalg.solve(M.T, S.T).T  # S M^{-1}


def population_icl_loss(W, n: int, sigma: float = 0.0, Sigma_beta=None) -> float:
    """Exact population ICL loss ``E[(y_q - x_q^T W X^T y)^2]`` (see the module docstring).

    Parameters
    ----------
    W : array_like, shape (d, d)
    n : int
        Context length.
    sigma : float
        Label-noise standard deviation.
    Sigma_beta : ndarray, shape (d, d), optional
        Task covariance (identity if omitted).
    """
    W = check_finite_array(W, "W", ndim=2)
    if W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square, got shape {W.shape}")
    n = check_nonnegative_int(n, "n")
    sigma = check_nonnegative_float(sigma, "sigma")
    d = W.shape[0]
    S = _sigma_beta(Sigma_beta, d)
    trS = np.trace(S)
    return float(
        trS
        - 2 * n * np.trace(W @ S)
        + n * (n + 1) * np.trace(W @ S @ W.T)
        + n * (trS + sigma**2) * np.sum(W * W)
        + sigma**2
    )


def isotropic_optimal_loss(n, d, sigma: float = 0.0):
    """``L(W*) = d (d + 1 + sigma^2) / (n + d + 1 + sigma^2) + sigma^2`` for ``Sigma_beta = I``.

    ``n`` may be an array (vectorised over context lengths).
    """
    n = np.asarray(n, dtype=float)
    if np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ValueError(f"n must be finite and non-negative, got {n}")
    d = check_positive_int(d, "d")
    sigma = check_nonnegative_float(sigma, "sigma")
    s2 = sigma**2
    out = d * (d + 1 + s2) / (n + d + 1 + s2) + s2
    return float(out) if out.ndim == 0 else out


def mc_icl_loss(
    W, n: int, sigma: float = 0.0, Sigma_beta=None, n_tasks: int = 10_000, rng=0, n_queries: int = 1,
    chunk: int = 20_000,
):
    """Monte Carlo estimate of the ICL loss of ``W``: mean and standard error over sampled prompts.

    Each prompt draws a task ``beta``, a context of length ``n`` and ``n_queries`` fresh queries; the
    squared errors of the queries of one prompt are averaged, and the standard error is over prompts.

    Returns
    -------
    (mean, stderr) : tuple of float
    """
    W = check_finite_array(W, "W", ndim=2)
    rng = as_generator(rng)
    n_tasks = check_positive_int(n_tasks, "n_tasks")
    chunk = check_positive_int(chunk, "chunk")
    d = W.shape[0]
    per_prompt = []
    done = 0
    while done < n_tasks:
        m = min(chunk, n_tasks - done)
        b = sample_tasks(rng, m, n, d, sigma=sigma, Sigma_beta=Sigma_beta, n_queries=n_queries)
        pred = np.einsum("tmd,td->tm", b.x_query, b.u @ W.T)
        per_prompt.append(np.mean((b.y_query - pred) ** 2, axis=1))
        done += m
    losses = np.concatenate(per_prompt)
    return float(losses.mean()), float(losses.std(ddof=1) / np.sqrt(losses.size))


def train_W_sgd(
    n: int, d: int, sigma: float = 0.0, Sigma_beta=None, steps: int = 3000, batch: int = 2048,
    lr: float = 0.05, seed: int = 0, average_from: float = 0.5, W0=None,
):
    """Pretrain ``W`` by minibatch gradient descent (Adam, float64 torch) on freshly sampled prompts.

    The learning rate decays as ``lr / sqrt(1 + t / 100)`` and the iterates of the last
    ``1 - average_from`` fraction of the steps are averaged (Polyak averaging), so the result
    converges to ``W*`` up to sampling noise of order ``1 / sqrt(batch * steps)``.

    Returns
    -------
    W : ndarray, shape (d, d)
        The averaged iterate.
    history : ndarray, shape (steps,)
        Minibatch loss at every step.
    """
    import torch

    n = check_nonnegative_int(n, "n")
    d = check_positive_int(d, "d")
    steps = check_positive_int(steps, "steps")
    batch = check_positive_int(batch, "batch")
    if not 0 <= average_from < 1:
        raise ValueError(f"average_from must be in [0, 1), got {average_from}")
    rng = np.random.default_rng(seed)
    W = torch.zeros(d, d, dtype=torch.float64) if W0 is None else torch.tensor(
        check_finite_array(W0, "W0", ndim=2), dtype=torch.float64
    )
    W.requires_grad_(True)
    opt = torch.optim.Adam([W], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / np.sqrt(1.0 + t / 100.0))
    start_avg = int(average_from * steps)
    W_avg = torch.zeros(d, d, dtype=torch.float64)
    history = np.empty(steps)
    for t in range(steps):
        b = sample_tasks(rng, batch, n, d, sigma=sigma, Sigma_beta=Sigma_beta)
        u = torch.from_numpy(b.u)
        xq = torch.from_numpy(b.x_query[:, 0])
        yq = torch.from_numpy(b.y_query[:, 0])
        loss = torch.mean((yq - torch.einsum("td,de,te->t", xq, W, u)) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history[t] = loss.item()
        if t >= start_avg:
            W_avg += W.detach()
    return (W_avg / (steps - start_avg)).numpy(), history
