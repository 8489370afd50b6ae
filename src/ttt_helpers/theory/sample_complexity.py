"""Context length needed to reach a target test loss, with and without one TTT step (chapter "Sample complexity").

Without TTT the model is the pretraining optimum ``W*_n`` for the context length ``n`` it is used with; in
the isotropic case its loss is ``L_ICL(n) = d (d + 1 + sigma^2) / (n + d + 1 + sigma^2) + sigma^2``
(:func:`ttt_helpers.theory.pretraining.isotropic_optimal_loss`), so the context length needed for a target
``eps > sigma^2`` is the closed form

    n_ICL(eps) = ceil( d (d + 1 + sigma^2) / (eps - sigma^2) - (d + 1 + sigma^2) ) .

With TTT, ``W*_n`` takes one step with the optimal ``eta*`` on ``k`` training queries; its loss ``L_TTT(n)``
is the one-step theory (isotropic: the exact formula of :mod:`ttt_helpers.theory.isotropic`; general covariance:
the Gaussian-approximation trace formula of :mod:`ttt_helpers.theory.general_covariance`). ``L_TTT`` need not be monotone
in ``n``, so we define ``n_TTT(eps)`` as the smallest ``n`` from which on (up to ``n_max``) the loss stays
``<= eps``. Proportional limit (``sigma^2 = O(1)``, ``n = gamma d``, ``k = kappa d``, ``x = 1 / (1 + gamma)``):
``L_ICL / d -> x`` and ``L_TTT / d -> x - kappa x^3 / (1 + kappa)`` (our derivation, the leading order of
:func:`ttt_helpers.theory.general_covariance.misalignment_magnitude`), so for a target ``e = eps / d`` the reduction factor
``n_ICL / n_TTT`` is ``gamma_ICL / gamma_TTT`` with ``x_ICL = e`` and ``x_TTT`` the root of the cubic.
"""

from __future__ import annotations

import numpy as np

from .general_covariance import one_step_theory
from .pretraining import isotropic_optimal_loss, optimal_W, population_icl_loss
from ..validation import check_covariance, check_nonnegative_float, check_positive_int

__all__ = [
    "icl_context_length",
    "first_n_below",
    "isotropic_ttt_loss",
    "ttt_context_length",
    "reduction_factor",
    "proportional_reduction_factor",
    "general_context_lengths",
]


def _check_eps(eps, sigma):
    eps = check_nonnegative_float(eps, "eps")
    if eps <= sigma**2:
        raise ValueError(f"the target loss eps must exceed the noise floor sigma^2 = {sigma**2}, got {eps}")
    return eps


def icl_context_length(eps: float, d: int, sigma: float = 0.0) -> int:
    """Smallest integer ``n`` with ``L_ICL(n) <= eps`` for the isotropic pretrained model (closed form)."""
    d = check_positive_int(d, "d")
    sigma = check_nonnegative_float(sigma, "sigma")
    eps = _check_eps(eps, sigma)
    c = d + 1 + sigma**2
    n = int(max(0, np.ceil(d * c / (eps - sigma**2) - c - 1e-9)))
    assert isotropic_optimal_loss(n, d, sigma) <= eps * (1 + 1e-12)
    return n


def first_n_below(losses, eps: float, n_grid) -> float:
    """Smallest ``n`` of ``n_grid`` from which on all ``losses`` are ``<= eps`` (``inf`` if the last is not)."""
    losses = np.asarray(losses, dtype=float)
    n_grid = np.asarray(n_grid)
    if losses.shape != n_grid.shape or losses.ndim != 1 or losses.size == 0:
        raise ValueError(f"losses and n_grid must be 1-d of the same length, got {losses.shape}, {n_grid.shape}")
    above = np.nonzero(losses > eps)[0]
    if above.size == 0:
        return float(n_grid[0])
    if above[-1] == losses.size - 1:
        return float("inf")
    return float(n_grid[above[-1] + 1])


def isotropic_ttt_loss(n_grid, d: int, k: int, sigma: float = 0.0, method: str = "exact") -> np.ndarray:
    """Loss after one optimal TTT step from ``W*_n`` (isotropic), for every ``n`` of ``n_grid``."""
    from .isotropic import isotropic_one_step  # owned by another module; imported lazily

    n_grid = np.asarray(n_grid)
    return np.asarray(isotropic_one_step(n_grid, d, k, sigma, "pretrained", method=method)["loss_after"])


def ttt_context_length(eps: float, d: int, k: int, sigma: float = 0.0, n_max: int | None = None,
                       method: str = "exact") -> float:
    """``n_TTT(eps)``: smallest ``n`` from which on one TTT step from ``W*_n`` reaches ``eps`` (isotropic)."""
    d = check_positive_int(d, "d")
    k = check_positive_int(k, "k")
    sigma = check_nonnegative_float(sigma, "sigma")
    eps = _check_eps(eps, sigma)
    n_max = icl_context_length(eps, d, sigma) + 1 if n_max is None else check_positive_int(n_max, "n_max")
    grid = np.arange(1, max(n_max, 2) + 1)
    return first_n_below(isotropic_ttt_loss(grid, d, k, sigma, method), eps, grid)


def reduction_factor(eps: float, d: int, k: int, sigma: float = 0.0, method: str = "exact") -> dict:
    """``n_ICL(eps)``, ``n_TTT(eps)`` and their ratio (isotropic)."""
    n_icl = icl_context_length(eps, d, sigma)
    n_ttt = ttt_context_length(eps, d, k, sigma, n_max=max(n_icl, 1) + 1, method=method)
    return {"n_icl": n_icl, "n_ttt": n_ttt, "ratio": n_icl / n_ttt if n_ttt > 0 else float("inf")}


def proportional_reduction_factor(e, kappa):
    """Proportional-limit ``n_ICL / n_TTT`` for the target ``e = eps / d`` in (0, 1) and ``kappa = k / d``.

    ``x_ICL = e``; ``x_TTT`` is the smallest root in ``(0, 1]`` of ``x - kappa x^3 / (1 + kappa) = e``
    (``inf`` when there is none below 1, i.e. TTT reaches ``e`` at ``n / d -> 0`` in this limit).
    Vectorised over ``kappa`` (and ``e``).
    """
    e = np.asarray(e, dtype=float)
    kappa = np.asarray(kappa, dtype=float)
    if np.any((e <= 0) | (e >= 1)) or np.any(kappa <= 0):
        raise ValueError(f"need 0 < e < 1 and kappa > 0, got e={e}, kappa={kappa}")
    e, kappa = np.broadcast_arrays(e, kappa)
    out = np.empty(e.shape)
    for idx in np.ndindex(e.shape):
        a = kappa[idx] / (1 + kappa[idx])
        roots = np.roots([-a, 0.0, 1.0, -e[idx]])
        real = np.sort(roots[np.abs(roots.imag) < 1e-10].real)
        real = real[(real > 0) & (real <= 1)]
        if real.size == 0:
            out[idx] = np.inf
            continue
        x = real[0]
        g_icl, g_ttt = 1 / e[idx] - 1, 1 / x - 1
        out[idx] = g_icl / g_ttt if g_ttt > 0 else np.inf
    return float(out) if out.ndim == 0 else out


def general_context_lengths(eps: float, k: int, sigma: float, Sigma_beta, Sigma_t, n_max: int) -> dict:
    """Context lengths needed on target tasks ``N(0, Sigma_t)`` with a model pretrained on ``Sigma_beta``.

    Without TTT: ``W*_n(Sigma_beta)`` evaluated on ``Sigma_t`` (exact); with TTT: one optimal step from it
    (Gaussian-approximation theory). Both use the "from ``n`` on" definition on ``n = 1..n_max``.
    """
    Sigma_beta = check_covariance(Sigma_beta, "Sigma_beta")
    d = Sigma_beta.shape[0]
    Sigma_t = check_covariance(Sigma_t, "Sigma_t", size=d)
    k = check_positive_int(k, "k")
    sigma = check_nonnegative_float(sigma, "sigma")
    eps = _check_eps(eps, sigma)
    n_max = check_positive_int(n_max, "n_max")
    grid = np.arange(1, n_max + 1)
    Ws = [optimal_W(int(n), d, sigma, Sigma_beta) for n in grid]
    l_icl = np.array([population_icl_loss(W, int(n), sigma, Sigma_t) for W, n in zip(Ws, grid)])
    l_ttt = np.array([one_step_theory(W, int(n), k, sigma, Sigma_t).loss_after for W, n in zip(Ws, grid)])
    n_icl, n_ttt = first_n_below(l_icl, eps, grid), first_n_below(l_ttt, eps, grid)
    return {"n_icl": n_icl, "n_ttt": n_ttt, "ratio": n_icl / n_ttt if np.isfinite(n_ttt) else float("nan"),
            "n_grid": grid, "loss_icl": l_icl, "loss_ttt": l_ttt}
