"""One TTT step for a general start ``W0`` and a general target covariance (chapter "General covariance").

Setting (``Sigma_x = I``): target tasks ``beta ~ N(0, Sigma_t)``; the start ``W0`` is any ``d x d`` matrix,
typically the pretraining optimum ``W*`` of a *different* covariance ``Sigma_beta``
(:func:`ttt_helpers.theory.pretraining.optimal_W`) or ``0`` (scratch). One TTT step on ``k`` training queries that
share one context of length ``n`` (:mod:`ttt_helpers.theory.ttt`) is ``W1 = W0 + eta g u^T`` with
``g = 2 X_tr^T (y_tr - X_tr W0 u)``, and the expected test loss on fresh contexts is (our derivation)

    E L(W1) = L0 - 2 eta A + eta^2 B ,    eta* = A / B ,    E L(W1*) = L0 - A^2 / B .

*Exact* parts (second moments only): ``L0`` is :func:`ttt_helpers.theory.pretraining.population_icl_loss` under
``Sigma_t``, and

    A = 2 k E_beta || W0 Q_beta - n beta beta^T ||_F^2 = (k / 2) E_beta || grad_W L(W0 | beta) ||_F^2 ,

with ``Q_beta = E[u u^T | beta] = n(n+1) beta beta^T + n(||beta||^2 + sigma^2) I``.

*Gaussian approximation* (fourth moments): ``B = 4k E[((k+d+1) ||beta - W0 u||^2 + d sigma^2) u^T Q_beta u]``
is computed with ``u | beta ~ N(n beta, C_beta)``, ``C_beta = n(beta beta^T + (||beta||^2 + sigma^2) I)`` (exact
mean and covariance). ``B(beta)`` is then a polynomial of degree <= 3 in the quadratic forms
``b = ||beta||^2``, ``p = beta^T W0^T W0 beta``, ``r = ||(I - n W0) beta||^2``, ``h = beta^T (W0 - n W0^T W0) beta``,
``w = beta^T W0 beta`` (built with SymPy in :func:`conditional_polynomials`), and the expectation over
``beta ~ N(0, Sigma_t)`` is exact through the Isserlis formula for products of up to three quadratic forms
(:func:`expect_quadratic_forms`). The result is a closed-form trace formula in ``Sigma_t``, ``W0``.

*Exact* ``B`` (``method="exact"``, our derivation): given ``beta``, the law of ``u`` is invariant under the
rotations that fix ``beta``, so in the frame ``beta = ||beta|| e_1`` only ``u_1``, ``||u_perp||^2`` and the
forms ``b, p, w`` (and ``tr P``) enter, and the exact finite-``n`` moments of ``u_1``, ``||u_perp||^2`` of the
isotropic chapter (:func:`ttt_helpers.theory.isotropic.expect_given_beta`) give ``B(beta)`` as another
polynomial of degree <= 3 in ``b, p, w`` (:func:`rotation_polynomials`); the same Isserlis step averages it.
The same computation with the Gaussian frame reproduces the trace formula above. The difference is

    B_exact(beta) - B_gauss(beta) = 8 k n^2 (k + d + 1) [c_P tr(P) + c_p p - c_w w] ,

with ``c_P, c_p, c_w`` polynomials in ``b, n, d, sigma^2`` (chapter "General covariance"); it vanishes for
scratch (``W0 = 0``).

*Leading order* (our decomposition, ``n, d, k`` large, ``sigma^2 = O(1)``)::

    gain = A^2 / B  ~  M^2 / N ,
    M = E || (I - n W0) beta ||^2 = tr((I - n W0) Sigma_t (I - n W0)^T)          (misalignment)
    N = [(k + d + 1) (L0 - sigma^2) + d sigma^2] / k                               (magnitude)

``M`` is the squared bias of the in-context estimate ``W0 u`` of ``beta`` on the target distribution:
zero iff ``n W0`` acts as the identity on the support of ``Sigma_t``. ``L0 - sigma^2 = M + V`` with the
variance ``V = n tr(W0 Sigma_t W0^T) + n (tr Sigma_t + sigma^2) ||W0||_F^2``.

Target-covariance families with one alignment parameter are at the end of the module.
Everything here is our derivation; the paper states (without a formula available to us) that the
improvement is governed by a misalignment term and a magnitude term.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sympy as sp

from .isotropic import SYMBOLS as _ISO_SYMBOLS, expect_given_beta, per_task_coefficients
from .pretraining import optimal_W, population_icl_loss
from .tasks import as_generator
from ..validation import (
    check_covariance,
    check_finite_array,
    check_nonnegative_float,
    check_positive_int,
    check_square_matrix,
)

__all__ = [
    "FORM_SYMBOLS",
    "PARAM_SYMBOLS",
    "METHODS",
    "conditional_polynomials",
    "rotation_polynomials",
    "expect_quadratic_forms",
    "form_matrices",
    "OneStepTheory",
    "one_step_theory",
    "misalignment_magnitude",
    "conditional_A",
    "conditional_B_gauss",
    "conditional_B_exact",
    "mc_coefficients",
    "rotation",
    "subspace_pair",
    "spiked_pair",
    "scratch_pretrained_crossing",
    "target_loss",
    "mc_per_task",
    "mc_one_step_losses",
    "mc_check_one_step",
    "alignment_sweep",
    "alignment_theory_exact",
    "gain_error_map",
    "SWEEP_PROFILES",
    "simulated_crossings",
    "plot_loss_vs_alignment",
    "plot_gain_vs_misalignment",
    "plot_crossings",
    "plot_gain_error_map",
]

#: quadratic forms in beta: b = ||beta||^2, p = beta^T P beta (P = W0^T W0), r = ||(I - n W0) beta||^2,
#: h = beta^T (W0 - n P) beta, w = beta^T W0 beta
FORM_SYMBOLS = sp.symbols("b p r h w", real=True)
#: parameters: context length, TTT set size, dimension, sigma^2, tr(W0^T W0)
PARAM_SYMBOLS = sp.symbols("n k d s2 tP", positive=True)


@lru_cache(maxsize=None)
def conditional_polynomials() -> dict:
    """``A(beta)`` (exact) and ``B(beta)`` (Gaussian approximation) as SymPy polynomials in the forms.

    ``A(beta) = 2k ||W0 Q - n beta beta^T||_F^2`` and, with ``u = n beta + e``, ``e ~ N(0, C)``,
    ``s = b + sigma^2``, ``alpha = k + d + 1``,

    ``B(beta)/(4k) = alpha (E||r_u||^2 E[u^T Q u] + Cov(||r_u||^2, u^T Q u)) + d sigma^2 E[u^T Q u]`` with
    ``E||r_u||^2 = r + n (p + s tr P)``, ``E[u^T Q u] = tr Q^2``,
    ``Cov = -4 rho^T W0 C Q m + 2 tr(P C Q C)`` (``m = n beta``, ``rho = (I - n W0) beta``).

    Returns
    -------
    dict with SymPy expressions ``"A"``, ``"B"``, ``"L0"`` (the conditional loss before TTT) in
    :data:`FORM_SYMBOLS` and :data:`PARAM_SYMBOLS`.
    """
    b, p, r, h, w = FORM_SYMBOLS
    n, k, d, s2, tP = PARAM_SYMBOLS
    s = b + s2
    alpha = k + d + 1
    E1 = r + n * (p + s * tP)
    E2 = n**2 * ((n + 1) ** 2 * b**2 + 2 * (n + 1) * s * b + d * s**2)  # tr(Q^2) = E[u^T Q u]
    a = (n + 1) * b + (n + 2) * s  # C Q = n^2 (a beta beta^T + s^2 I)
    cov = (-4 * n**3 * (a * b + s**2) * h  # rho^T W0 C Q m = n^3 (a b + s^2) h
           + 2 * n**3 * ((a * (b + s) + s**2) * p + s**3 * tP))  # tr(P C Q C)
    B = 4 * k * (alpha * (E1 * E2 + cov) + d * s2 * E2)
    A = 2 * k * (n**2 * (((n + 1) ** 2 * b + 2 * (n + 1) * s) * p + s**2 * tP)
                 - 2 * n**2 * ((n + 1) * b + s) * w + n**2 * b**2)
    # L(W0 | beta) = ||beta - W0 u||^2 averaged over u, + sigma^2 = r + n p + n s tP + s2
    L0 = r + n * p + n * s * tP + s2
    return {"A": sp.expand(A), "B": sp.expand(B), "L0": sp.expand(L0)}


#: ``"gauss"``: ``B`` under the Gaussian approximation of ``u | beta`` (the paper's route, Lemma B.1);
#: ``"exact"``: the exact finite-``n`` expectation (``L0`` and ``A`` are exact under both).
METHODS = ("gauss", "exact")


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


@lru_cache(maxsize=None)
def rotation_polynomials(method: str = "exact") -> dict:
    """``A(beta)``, ``B(beta)``, ``L0(beta)`` derived in the frame ``beta = ||beta|| e_1`` (exact or Gaussian ``u``).

    Given ``beta``, ``u = u_1 beta/||beta|| + u_perp`` with ``u_perp = sqrt(v) z``, ``z ~ N(0, I)`` on the
    complement of ``beta`` and independent of ``(u_1, v)`` (:func:`ttt_helpers.theory.isotropic.expect_given_beta`).
    Every factor of ``A(beta)`` and ``B(beta)`` that involves ``W0`` multiplies a function of ``u_1`` and
    ``||u_perp||^2`` only, so the parts odd in ``z`` drop out and

        beta^T u -> ||beta|| u_1,   beta^T W0 u -> (w / ||beta||) u_1,   beta^T P u -> (p / ||beta||) u_1,
        u^T P u  -> (p / b) u_1^2 + v (z^T P z restricted to beta-perp),

    with ``E[z^T M z g(||z||^2)] = tr(M) E[||z||^2 g(||z||^2)] / (d - 1)`` and ``tr(Pi P) = tr P - p / b``.
    The expectation over ``(u_1, v, ||z||^2)`` is the exact one of the isotropic chapter (``method="exact"``) or
    its Gaussian approximation (``method="gauss"``, which must reproduce :func:`conditional_polynomials`).

    Returns
    -------
    dict with SymPy polynomials ``"A"``, ``"B"``, ``"L0"`` in ``b, p, w`` of :data:`FORM_SYMBOLS` and
    :data:`PARAM_SYMBOLS` (``r`` and ``h`` do not occur).
    """
    _check_method(method)
    b, p, _, _, w = FORM_SYMBOLS
    n, k, d, s2, tP = PARAM_SYMBOLS
    alpha = k + d + 1

    def integrand(which):
        def build(norm, u1, v, z2):
            bb = norm**2
            s = bb + s2
            bu, uu = norm * u1, u1**2 + v * z2                      # beta^T u, ||u||^2
            bWu, bPu = (w / norm) * u1, (p / norm) * u1             # beta^T W0 u, beta^T P u
            uPu = (p / bb) * u1**2 + (tP - p / bb) * v * z2 / (d - 1)
            uQu = n * (n + 1) * bu**2 + n * s * uu                   # u^T Q u
            if which == "B":   # 4k E[((k+d+1) ||beta - W0 u||^2 + d sigma^2) u^T Q u]
                return 4 * k * (alpha * (bb - 2 * bWu + uPu) + d * s2) * uQu
            # A: 2k E[n (beta^T r)(u^T beta) - r^T W0 Q u],  r = beta - W0 u,  Q u = n(n+1) beta (beta^T u) + n s u
            return 2 * k * (n * (bb - bWu) * bu - (n * (n + 1) * w * bu + n * s * bWu
                                                   - n * (n + 1) * bPu * bu - n * s * uPu))
        return build

    out = {}
    for key in ("A", "B"):
        e = expect_given_beta(integrand(key), "exact" if method == "exact" else "gauss")
        e = sp.expand(sp.cancel(e.subs(_ISO_SYMBOLS["b2"], b)))
        if not e.is_polynomial(b, p, w, *PARAM_SYMBOLS):
            raise RuntimeError(f"{key}(beta) is not a polynomial in the forms (derivation error)")
        out[key] = e
    out["L0"] = sp.expand(b + s2 - 2 * n * w + n * (n + 1) * p + n * (b + s2) * tP)
    return out


def _polynomials(method: str) -> dict:
    return conditional_polynomials() if method == "gauss" else rotation_polynomials("exact")


@lru_cache(maxsize=None)
def _monomial_table(key: str, method: str = "gauss"):
    """Monomials of the polynomial ``key`` in the forms: list of (exponents, lambdified coefficient)."""
    poly = sp.Poly(_polynomials(method)[key], *FORM_SYMBOLS)
    table = []
    for powers, coeff in poly.terms():
        if sum(powers) > 3:
            raise RuntimeError("degree > 3 in the quadratic forms (derivation error)")
        table.append((powers, sp.lambdify(PARAM_SYMBOLS, coeff, "numpy")))
    return table


def form_matrices(W0, n):
    """The symmetric matrices of the quadratic forms ``b, p, r, h, w`` for a start ``W0`` (list of 5)."""
    W0 = np.asarray(W0, dtype=float)
    d = W0.shape[0]
    I = np.eye(d)
    P = W0.T @ W0
    Ws = (W0 + W0.T) / 2
    R = (I - n * W0).T @ (I - n * W0)
    return [I, P, (R + R.T) / 2, Ws - n * P, Ws]


def expect_quadratic_forms(mats, Sigma) -> float:
    """``E[prod_i beta^T M_i beta]`` for ``beta ~ N(0, Sigma)`` and at most three symmetric ``M_i`` (Isserlis).

    ``E[q_A] = tr(A S)``, ``E[q_A q_B] = tr(AS) tr(BS) + 2 tr(ASBS)``,
    ``E[q_A q_B q_C] = tr(AS) tr(BS) tr(CS) + 2 [tr(AS) tr(BSCS) + tr(BS) tr(ASCS) + tr(CS) tr(ASBS)]
    + 8 tr(ASBSCS)``.
    """
    Sigma = np.asarray(Sigma, dtype=float)
    ms = [np.asarray(M, dtype=float) @ Sigma for M in mats]
    t = [np.trace(M) for M in ms]
    if len(ms) == 0:
        return 1.0
    if len(ms) == 1:
        return float(t[0])
    if len(ms) == 2:
        return float(t[0] * t[1] + 2 * np.sum(ms[0] * ms[1].T))
    if len(ms) == 3:
        A, B, C = ms
        tr2 = lambda X, Y: np.sum(X * Y.T)  # noqa: E731  tr(XY)
        return float(t[0] * t[1] * t[2] + 2 * (t[0] * tr2(B, C) + t[1] * tr2(A, C) + t[2] * tr2(A, B))
                     + 8 * np.trace(A @ B @ C))
    raise ValueError(f"at most three quadratic forms are supported, got {len(ms)}")


def _check_start(W0, d=None):
    W0 = check_square_matrix(W0, "W0", size=d)
    return W0


def _check_setting(W0, n, k, sigma, Sigma_t):
    W0 = _check_start(W0)
    d = W0.shape[0]
    n = check_positive_int(n, "n") if isinstance(n, (int, np.integer)) else _positive_real(n, "n")
    k = check_positive_int(k, "k") if isinstance(k, (int, np.integer)) else _positive_real(k, "k")
    sigma = check_nonnegative_float(sigma, "sigma")
    Sigma_t = np.eye(d) if Sigma_t is None else check_covariance(Sigma_t, "Sigma_t", size=d)
    return W0, d, n, k, sigma, Sigma_t


def _positive_real(x, name):
    if isinstance(x, bool) or not isinstance(x, (float, np.floating)) or not np.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive integer or a positive finite float, got {x!r}")
    return float(x)


def _expect_poly(key, W0, n, k, d, sigma, Sigma_t, method="gauss"):
    mats = form_matrices(W0, n)
    params = (n, k, d, sigma**2, float(np.sum(W0 * W0)))
    total = 0.0
    for powers, coeff in _monomial_table(key, method):
        chosen = [mats[i] for i, e in enumerate(powers) for _ in range(e)]
        total += float(coeff(*params)) * expect_quadratic_forms(chosen, Sigma_t)
    return total


@dataclass(frozen=True)
class OneStepTheory:
    """Expected test loss before/after one TTT step (``L0``, ``A`` exact; ``B`` exact or Gaussian, see ``method``).

    Attributes
    ----------
    loss_before : float       ``L0``
    A, B : float              ``E L(W0 + eta g u^T) = L0 - 2 eta A + eta^2 B``
    eta_star : float          ``A / B``
    improvement : float       ``A^2 / B``
    loss_after : float        ``L0 - A^2 / B``
    method : str              ``"gauss"`` or ``"exact"`` (how ``B`` was computed)
    """

    loss_before: float
    A: float
    B: float
    eta_star: float
    improvement: float
    loss_after: float
    method: str = "gauss"

    def loss_at(self, eta) -> np.ndarray:
        """Expected loss after one step of size ``eta`` (any step, not only the optimal one)."""
        eta = np.asarray(eta, dtype=float)
        return self.loss_before - 2 * eta * self.A + eta**2 * self.B


def one_step_theory(W0, n, k, sigma: float = 0.0, Sigma_t=None, method: str = "gauss") -> OneStepTheory:
    """One TTT step from ``W0`` on target tasks ``beta ~ N(0, Sigma_t)`` (closed-form trace formula).

    Parameters
    ----------
    W0 : ndarray, shape (d, d)
        Start of TTT (``W*`` of the pretraining covariance, or zeros for scratch).
    n : int (or positive float, for bisection on ``n``)
        Context length of the TTT context and of the fresh test contexts.
    k : int (or positive float)
        Number of TTT training queries.
    sigma : float
        Label-noise standard deviation.
    Sigma_t : ndarray, shape (d, d), optional
        Target task covariance (identity if omitted).
    method : {"gauss", "exact"}
        ``B`` under the Gaussian approximation of ``u | beta`` (the paper's route; the default, which the
        chapters after "General covariance" use) or the exact finite-``n`` value (:func:`rotation_polynomials`).
        ``L0`` and ``A`` are exact either way.

    Returns
    -------
    OneStepTheory
    """
    method = _check_method(method)
    W0, d, n, k, sigma, Sigma_t = _check_setting(W0, n, k, sigma, Sigma_t)
    L0 = _expect_poly("L0", W0, n, k, d, sigma, Sigma_t)
    A = _expect_poly("A", W0, n, k, d, sigma, Sigma_t)
    B = _expect_poly("B", W0, n, k, d, sigma, Sigma_t, method)
    eta = A / B if B > 0 else 0.0
    return OneStepTheory(loss_before=L0, A=A, B=B, eta_star=eta, improvement=A * eta, loss_after=L0 - A * eta,
                         method=method)


def misalignment_magnitude(W0, n, k, sigma: float = 0.0, Sigma_t=None) -> dict:
    """Leading-order decomposition ``gain ~ M^2 / N`` (see the module docstring).

    Returns
    -------
    dict with ``misalignment`` ``M``, ``variance`` ``V``, ``loss_before`` ``L0 = M + V + sigma^2``,
    ``magnitude`` ``N``, ``improvement`` ``M^2 / N``, ``loss_after`` ``L0 - M^2/N``, ``tau = tr Sigma_t``
    and ``misalignment_fraction = M / tau``.
    """
    W0, d, n, k, sigma, Sigma_t = _check_setting(W0, n, k, sigma, Sigma_t)
    I = np.eye(d)
    E = I - n * W0
    tau = float(np.trace(Sigma_t))
    M = float(np.trace(E @ Sigma_t @ E.T))
    V = float(n * np.trace(W0 @ Sigma_t @ W0.T) + n * (tau + sigma**2) * np.sum(W0 * W0))
    L0 = M + V + sigma**2
    N = ((k + d + 1) * (M + V) + d * sigma**2) / k
    gain = M**2 / N
    return {"misalignment": M, "variance": V, "loss_before": L0, "magnitude": N, "improvement": gain,
            "loss_after": L0 - gain, "tau": tau, "misalignment_fraction": M / tau if tau > 0 else float("nan")}


# --------------------------------------------------------------------------------------------------------
# Per-task quantities (for checks of the two expectation stages)
# --------------------------------------------------------------------------------------------------------


def _forms(beta, W0, n):
    mats = form_matrices(W0, n)
    return [np.einsum("ti,ij,tj->t", beta, M, beta) for M in mats]


def conditional_A(W0, beta, n: int, k: int, sigma: float = 0.0):
    """``A(beta) = 2k ||W0 Q_beta - n beta beta^T||_F^2`` (exact), vectorised: beta (T, d) -> (T,)."""
    return _conditional("A", W0, beta, n, k, sigma)


def conditional_B_gauss(W0, beta, n: int, k: int, sigma: float = 0.0):
    """``B(beta)`` under the Gaussian approximation of ``u | beta``, vectorised: beta (T, d) -> (T,)."""
    return _conditional("B", W0, beta, n, k, sigma)


def conditional_B_exact(W0, beta, n: int, k: int, sigma: float = 0.0):
    """``B(beta)``, the exact expectation over ``u | beta`` and the training queries, vectorised: (T, d) -> (T,)."""
    return _conditional("B", W0, beta, n, k, sigma, "exact")


def _conditional(key, W0, beta, n, k, sigma, method="gauss"):
    W0 = _check_start(W0)
    d = W0.shape[0]
    beta = check_finite_array(beta, "beta", ndim=2)
    if beta.shape[1] != d:
        raise ValueError(f"beta must have shape (T, {d}), got {beta.shape}")
    n = check_positive_int(n, "n")
    k = check_positive_int(k, "k")
    sigma = check_nonnegative_float(sigma, "sigma")
    f = _lambdified_conditional(key, method)
    forms = _forms(beta, W0, n)
    return f(*forms, n, k, d, sigma**2, float(np.sum(W0 * W0))) + 0 * forms[0]


@lru_cache(maxsize=None)
def _lambdified_conditional(key, method="gauss"):
    return sp.lambdify(FORM_SYMBOLS + PARAM_SYMBOLS, _polynomials(method)[key], "numpy")


def mc_coefficients(problems, W0, n: int, sigma: float = 0.0) -> dict:
    """Monte Carlo estimates of ``A``, ``B`` and ``L0`` from sampled TTT problems (means and standard errors).

    Per task: ``a = n (beta^T g)(u^T beta) - g^T W0 Q u``, ``b = ||g||^2 u^T Q u`` and ``l0 = L(W0 | beta)``
    with the problem's own context ``u`` and training queries (:class:`ttt_helpers.theory.ttt.TTTProblems`).
    """
    W0 = _check_start(W0)
    if problems.beta.shape[1] != W0.shape[0]:
        raise ValueError(f"W0 must be {problems.beta.shape[1]} x {problems.beta.shape[1]}, got {W0.shape}")
    l0, a, bb = per_task_coefficients(problems, W0, n, sigma)
    se = lambda x: float(x.std(ddof=1) / np.sqrt(x.size))  # noqa: E731
    return {"A": float(a.mean()), "A_se": se(a), "B": float(bb.mean()), "B_se": se(bb), "L0": float(l0.mean()),
            "L0_se": se(l0), "a": a, "b": bb, "l0": l0}


# --------------------------------------------------------------------------------------------------------
# Target-covariance families with one alignment parameter
# --------------------------------------------------------------------------------------------------------


def rotation(d: int, theta: float, pairs) -> np.ndarray:
    """Orthogonal matrix rotating by ``theta`` in each coordinate plane ``(i, j)`` of ``pairs``."""
    d = check_positive_int(d, "d")
    if not np.isfinite(theta):
        raise ValueError(f"theta must be finite, got {theta}")
    R = np.eye(d)
    used = set()
    for i, j in pairs:
        if not (0 <= i < d and 0 <= j < d) or i == j or i in used or j in used:
            raise ValueError(f"pairs must be disjoint pairs of distinct indices in [0, {d}), got {pairs}")
        used.update((i, j))
        c, s = np.cos(theta), np.sin(theta)
        R[i, i], R[j, j], R[i, j], R[j, i] = c, c, -s, s
    return R


def subspace_pair(d: int, r: int, theta: float, floor: float = 0.0, scale: float = 1.0):
    """Pretraining and target covariances on two ``r``-dimensional subspaces at principal angle ``theta``.

    ``Sigma_beta = scale [floor I + (1 - floor)(d / r) P_U]`` with ``U = span(e_1..e_r)`` and
    ``Sigma_t = R Sigma_beta R^T`` with ``R`` rotating ``e_i`` towards ``e_{r+i}`` by ``theta``
    (``i = 1..r``). Both have trace ``scale * d``; the alignment ``tr(P_U P_{U_theta}) / r = cos^2 theta``.

    Returns
    -------
    (Sigma_beta, Sigma_t) : ndarrays, shape (d, d)
    """
    d = check_positive_int(d, "d")
    r = check_positive_int(r, "r")
    if 2 * r > d:
        raise ValueError(f"need 2 r <= d for the rotation, got r={r}, d={d}")
    floor = check_nonnegative_float(floor, "floor")
    scale = check_nonnegative_float(scale, "scale")
    if floor > 1:
        raise ValueError(f"floor must lie in [0, 1], got {floor}")
    P = np.zeros((d, d))
    P[:r, :r] = np.eye(r)
    S = scale * (floor * np.eye(d) + (1 - floor) * (d / r) * P)
    R = rotation(d, theta, [(i, r + i) for i in range(r)])
    St = R @ S @ R.T
    return S, (St + St.T) / 2


def spiked_pair(d: int, theta: float, spike: float, floor: float = 1.0):
    """``Sigma_beta = floor I + spike e_1 e_1^T`` and the target with the spike rotated by ``theta`` towards ``e_2``."""
    d = check_positive_int(d, "d")
    if d < 2:
        raise ValueError(f"d must be >= 2, got {d}")
    spike = check_nonnegative_float(spike, "spike")
    floor = check_nonnegative_float(floor, "floor")
    S = floor * np.eye(d)
    S[0, 0] += spike
    R = rotation(d, theta, [(0, 1)])
    St = R @ S @ R.T
    return S, (St + St.T) / 2


def scratch_pretrained_crossing(n, d: int, sigma: float, Sigma_beta, Sigma_t, k_max: float = 1e4,
                                pretrain_n=None, tol: float = 1e-6, method: str = "gauss"):
    """Smallest ``k`` at which one TTT step from scratch beats one step from ``W*`` (one-step theory).

    Solves ``L_scratch(k) = L_pretrained(k)`` by bisection in ``log k`` on ``[1, k_max]`` (``k`` treated as a
    continuous parameter), with ``B`` from ``method`` (:func:`one_step_theory`). Returns ``inf`` if scratch
    does not win below ``k_max`` and ``1.0`` if it already wins at ``k = 1``.
    """
    method = _check_method(method)
    n = check_positive_int(n, "n")
    d = check_positive_int(d, "d")
    Wst = optimal_W(n if pretrain_n is None else pretrain_n, d, sigma, Sigma_beta)
    Z = np.zeros((d, d))

    def diff(kk):
        return (one_step_theory(Z, n, float(kk), sigma, Sigma_t, method).loss_after
                - one_step_theory(Wst, n, float(kk), sigma, Sigma_t, method).loss_after)

    if diff(1.0) < 0:
        return 1.0
    if diff(k_max) >= 0:
        return float("inf")
    lo, hi = 0.0, np.log(k_max)
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if diff(np.exp(mid)) < 0:
            hi = mid
        else:
            lo = mid
    return float(np.exp(hi))


def target_loss(W0, n: int, sigma: float, Sigma_t) -> float:
    """Population ICL loss of ``W0`` on target tasks (alias of :func:`pretraining.population_icl_loss`)."""
    return population_icl_loss(W0, n, sigma, Sigma_t)


# --------------------------------------------------------------------------------------------------------
# Sweeps against the alignment angle (used by the chapter live at CI size and by scripts/theory_sweeps_shift.py)
# --------------------------------------------------------------------------------------------------------


def mc_per_task(starts, n: int, k: int, sigma: float, Sigma_t, n_tasks: int, rng, chunk: int = 2000) -> list:
    """Per-task ``l0, a, b`` (:func:`mc_coefficients`) for several starts on the SAME sampled problems.

    Tasks ``beta ~ N(0, Sigma_t)``, one TTT context of length ``n`` and ``k`` training queries each, drawn in
    chunks (about 32 MB each); the test loss is exact over fresh contexts and queries, so
    ``L(W0 + eta g u^T | beta) = l0 - 2 eta a + eta^2 b`` per task for every ``eta``.

    Returns
    -------
    list (one per start) of dicts with arrays ``"l0"``, ``"a"``, ``"b"`` of shape ``(n_tasks,)``
    """
    starts = [_check_start(W) for W in starts]
    d = starts[0].shape[0]
    n_tasks = check_positive_int(n_tasks, "n_tasks")
    rng = as_generator(rng)
    chunk = min(check_positive_int(chunk, "chunk"), max(50, int(4e6 // (k * d))))  # ~32 MB per chunk
    from .ttt import sample_ttt_problems

    parts = [{"l0": [], "a": [], "b": []} for _ in starts]
    done = 0
    while done < n_tasks:
        m = min(chunk, n_tasks - done)
        prob = sample_ttt_problems(rng, m, n, k, d, sigma=sigma, Sigma_beta=Sigma_t)
        for W, part in zip(starts, parts):
            c = mc_coefficients(prob, W, n, sigma)
            for key in part:
                part[key].append(c[key])
        done += m
    return [{key: np.concatenate(v) for key, v in part.items()} for part in parts]


def mc_one_step_losses(starts, etas, n: int, k: int, sigma: float, Sigma_t, n_tasks: int, rng, chunk: int = 2000):
    """Per-task test losses before and after one TTT step, for several starts on the SAME sampled problems.

    ``L(W0 + eta g u^T | beta) = l0 - 2 eta a + eta^2 b`` per task (exact in the fresh context), so each start
    costs one pass over the problems. Common problems make start-to-start differences paired.

    Returns
    -------
    before, after : ndarray, shape (len(starts), n_tasks)
    """
    if len(etas) != len(starts):
        raise ValueError(f"need one eta per start, got {len(etas)} etas for {len(starts)} starts")
    per = mc_per_task(starts, n, k, sigma, Sigma_t, n_tasks, rng, chunk)
    before = np.array([c["l0"] for c in per])
    after = np.array([c["l0"] - 2 * eta * c["a"] + eta**2 * c["b"] for c, eta in zip(per, etas)])
    return before, after


def mc_check_one_step(W0, n: int, k: int, sigma: float, Sigma_t, n_tasks: int, rng, chunk: int = 2000) -> dict:
    """Exact and Gaussian one-step theory against a simulation of the TTT step (fresh test contexts).

    Returns
    -------
    dict of floats: ``A`` (exact), ``A_mc`` (+ ``_se``); ``B_gauss``, ``B_exact``, ``B_mc`` (+ ``_se``);
    the optimal gains ``gain_gauss = A^2/B_gauss`` and ``gain_exact = A^2/B_exact``; the simulated gain
    ``gain_mc`` (+ ``_se``) with the exact ``eta*``; and, with the Gaussian ``eta*`` (the step the Gaussian
    theory recommends), the simulated gain ``gain_mc_at_gauss_eta`` (+ ``_se``) and its exact prediction
    ``gain_exact_at_gauss_eta = 2 eta A - eta^2 B_exact``.
    """
    ga = one_step_theory(W0, n, k, sigma, Sigma_t, "gauss")
    ex = one_step_theory(W0, n, k, sigma, Sigma_t, "exact")
    c = mc_per_task([W0], n, k, sigma, Sigma_t, n_tasks, rng, chunk)[0]
    se = lambda x: float(x.std(ddof=1) / np.sqrt(x.size))  # noqa: E731
    g_ex = 2 * ex.eta_star * c["a"] - ex.eta_star**2 * c["b"]
    g_ga = 2 * ga.eta_star * c["a"] - ga.eta_star**2 * c["b"]
    return {"A": ex.A, "A_mc": float(c["a"].mean()), "A_mc_se": se(c["a"]),
            "B_gauss": ga.B, "B_exact": ex.B, "B_mc": float(c["b"].mean()), "B_mc_se": se(c["b"]),
            "gain_gauss": ga.improvement, "gain_exact": ex.improvement,
            "gain_mc": float(g_ex.mean()), "gain_mc_se": se(g_ex),
            "gain_mc_at_gauss_eta": float(g_ga.mean()), "gain_mc_at_gauss_eta_se": se(g_ga),
            "gain_exact_at_gauss_eta": float(2 * ga.eta_star * ex.A - ga.eta_star**2 * ex.B)}


def alignment_sweep(d: int, r: int, n: int, ks, thetas, sigma: float = 0.5, floor: float = 0.1,
                    n_tasks: int = 4000, k_grid=None, seed: int = 0) -> dict:
    """Theory and simulation of one TTT step, pretrained (``W*`` of ``Sigma_beta``) vs scratch, against ``theta``.

    Target family :func:`subspace_pair` (``r``-dimensional subspaces at principal angle ``theta``).
    For every ``k`` of ``ks`` and ``theta``: full theory, leading-order theory and simulation of the loss
    after one optimal step from both starts. For ``k_grid``: theory and simulated (paired) difference
    ``L_scratch - L_pretrained`` and the theoretical crossing ``k*``. Returns a JSON-serialisable dict.
    """
    d = check_positive_int(d, "d")
    rng = np.random.default_rng(seed)
    thetas = [float(t) for t in thetas]
    out = {"config": dict(d=d, r=r, n=n, ks=list(ks), sigma=sigma, floor=floor, n_tasks=n_tasks, seed=seed,
                          family="subspace_pair"),
           "theta": thetas, "cos2": [float(np.cos(t) ** 2) for t in thetas], "per_k": {}}
    Z = np.zeros((d, d))
    mis = []
    for t in thetas:
        Sb, St = subspace_pair(d, r, t, floor)
        mis.append(misalignment_magnitude(optimal_W(n, d, sigma, Sb), n, 1, sigma, St)["misalignment_fraction"])
    out["misalignment_fraction"] = mis
    for k in ks:
        rec = {key: [] for key in ("theory_warm", "theory_scratch", "lo_warm", "lo_scratch", "before_warm",
                                   "before_scratch", "sim_warm", "sim_warm_se", "sim_scratch", "sim_scratch_se",
                                   "sim_before_warm", "sim_before_warm_se", "misalignment", "magnitude")}
        for t in thetas:
            Sb, St = subspace_pair(d, r, t, floor)
            Ws = optimal_W(n, d, sigma, Sb)
            tw, ts = one_step_theory(Ws, n, k, sigma, St), one_step_theory(Z, n, k, sigma, St)
            lw, ls = misalignment_magnitude(Ws, n, k, sigma, St), misalignment_magnitude(Z, n, k, sigma, St)
            bef, aft = mc_one_step_losses([Ws, Z], [tw.eta_star, ts.eta_star], n, k, sigma, St, n_tasks, rng)
            se = aft.std(axis=1, ddof=1) / np.sqrt(n_tasks)
            for key, val in (("theory_warm", tw.loss_after), ("theory_scratch", ts.loss_after),
                             ("lo_warm", lw["loss_after"]), ("lo_scratch", ls["loss_after"]),
                             ("before_warm", tw.loss_before), ("before_scratch", ts.loss_before),
                             ("sim_warm", aft[0].mean()), ("sim_warm_se", se[0]), ("sim_scratch", aft[1].mean()),
                             ("sim_scratch_se", se[1]), ("sim_before_warm", bef[0].mean()),
                             ("sim_before_warm_se", bef[0].std(ddof=1) / np.sqrt(n_tasks)),
                             ("misalignment", lw["misalignment"]), ("magnitude", lw["magnitude"])):
                rec[key].append(float(val))
        out["per_k"][str(k)] = rec
    if k_grid is not None:
        k_grid = [int(k) for k in k_grid]
        cr = {"k_grid": k_grid, "theory_k": [], "theory_diff": [], "sim_diff": [], "sim_diff_se": []}
        for t in thetas:
            Sb, St = subspace_pair(d, r, t, floor)
            Ws = optimal_W(n, d, sigma, Sb)
            cr["theory_k"].append(scratch_pretrained_crossing(n, d, sigma, Sb, St))
            th_row, sim_row, se_row = [], [], []
            for k in k_grid:
                tw, ts = one_step_theory(Ws, n, k, sigma, St), one_step_theory(Z, n, k, sigma, St)
                _, aft = mc_one_step_losses([Ws, Z], [tw.eta_star, ts.eta_star], n, k, sigma, St, n_tasks, rng)
                diff = aft[1] - aft[0]
                th_row.append(ts.loss_after - tw.loss_after)
                sim_row.append(float(diff.mean()))
                se_row.append(float(diff.std(ddof=1) / np.sqrt(n_tasks)))
            cr["theory_diff"].append(th_row)
            cr["sim_diff"].append(sim_row)
            cr["sim_diff_se"].append(se_row)
        out["crossing"] = cr
    return out


def alignment_theory_exact(res: dict) -> dict:
    """Exact-``B`` theory for the settings of an :func:`alignment_sweep` result (CI run or shipped JSON).

    The sweep's simulation takes the Gaussian theory's ``eta*``; the exact theory predicts the loss at that
    step as well as at its own optimum. Per ``k`` of the sweep and per angle: ``exact_warm`` (pretrained,
    exact ``eta*``), ``exact_warm_at_gauss_eta`` (pretrained, the simulated step), ``gauss_warm`` (the
    Gaussian theory, as ``theory_warm``) and ``eta_ratio`` (Gaussian ``eta*`` over exact ``eta*``, which is
    ``B_exact / B_gauss``). Scratch needs no entry: its ``B`` is exact under both. With a crossing grid:
    the exact crossing ``theory_k`` and, on the grid, ``diff`` (scratch minus pretrained, both at their exact
    ``eta*``) and ``diff_at_gauss_eta`` (the simulated steps).
    """
    cfg = res["config"]
    d, r, n, sigma, floor = cfg["d"], cfg["r"], cfg["n"], cfg["sigma"], cfg["floor"]
    Z = np.zeros((d, d))
    settings = []
    for t in res["theta"]:
        Sb, St = subspace_pair(d, r, t, floor)
        settings.append((Sb, St, optimal_W(n, d, sigma, Sb)))

    def both(W, k, St):
        return one_step_theory(W, n, k, sigma, St, "gauss"), one_step_theory(W, n, k, sigma, St, "exact")

    out = {"per_k": {}}
    for k in cfg["ks"]:
        rec = {key: [] for key in ("exact_warm", "exact_warm_at_gauss_eta", "gauss_warm", "eta_ratio")}
        for _, St, Ws in settings:
            ga, ex = both(Ws, k, St)
            for key, val in (("exact_warm", ex.loss_after), ("exact_warm_at_gauss_eta", float(ex.loss_at(ga.eta_star))),
                             ("gauss_warm", ga.loss_after), ("eta_ratio", ga.eta_star / ex.eta_star)):
                rec[key].append(float(val))
        out["per_k"][str(k)] = rec
    if "crossing" in res:
        grid = res["crossing"]["k_grid"]
        cr = {"k_grid": list(grid), "theory_k": [], "diff": [], "diff_at_gauss_eta": []}
        for Sb, St, Ws in settings:
            cr["theory_k"].append(scratch_pretrained_crossing(n, d, sigma, Sb, St, method="exact"))
            row, row_g = [], []
            for k in grid:
                ga, ex = both(Ws, k, St)
                scr = one_step_theory(Z, n, k, sigma, St, "exact").loss_after
                row.append(scr - ex.loss_after)
                row_g.append(scr - float(ex.loss_at(ga.eta_star)))
            cr["diff"].append(row)
            cr["diff_at_gauss_eta"].append(row_g)
        out["crossing"] = cr
    return out


def gain_error_map(d: int, r: int, alphas, kappas, thetas, sigma: float = 0.5, floor: float = 0.1) -> dict:
    """Relative error of the Gaussian one-step gain of the pretrained start, on a grid of ``n/d`` and ``k/d``.

    Target family :func:`subspace_pair` at each angle of ``thetas``; the start is ``W*`` of ``Sigma_beta`` at the
    same ``n``. Because ``gain = A^2 / B`` with the same exact ``A``, the relative error of the gain is
    ``B_exact / B_gauss - 1``, which is also the relative error of the Gaussian ``eta*``.

    Returns
    -------
    dict with ``n``, ``k`` (integer grids, ``round(alpha d)``, ``round(kappa d)``, at least 1), ``theta``, and
    ``rel_error`` of shape ``(len(thetas), len(kappas), len(alphas))``; ``gain_exact`` (same shape).
    """
    d = check_positive_int(d, "d")
    ns = [max(1, int(round(a * d))) for a in alphas]
    ks = [max(1, int(round(c * d))) for c in kappas]
    err = np.empty((len(thetas), len(ks), len(ns)))
    gain = np.empty_like(err)
    for i, t in enumerate(thetas):
        Sb, St = subspace_pair(d, r, t, floor)
        for j, n in enumerate(ns):
            W = optimal_W(n, d, sigma, Sb)
            for m, k in enumerate(ks):
                ga = one_step_theory(W, n, k, sigma, St, "gauss")
                ex = one_step_theory(W, n, k, sigma, St, "exact")
                err[i, m, j] = ga.improvement / ex.improvement - 1
                gain[i, m, j] = ex.improvement
    return {"d": d, "r": r, "n": ns, "k": ks, "theta": [float(t) for t in thetas], "rel_error": err,
            "gain_exact": gain}


#: Arguments of :func:`alignment_sweep` for the book: ``"ci"`` runs live in chapter 6, ``"full"`` is the shipped
#: run of ``scripts/theory_sweeps_shift.py`` (``data/results/alignment_sweep.json``).
SWEEP_PROFILES = {
    "ci": dict(d=16, r=4, n=16, ks=[16, 64], thetas=list(np.linspace(0, np.pi / 2, 7)), sigma=0.5,
               floor=0.1, n_tasks=4000, k_grid=[4, 8, 16, 32, 64, 128, 256], seed=6),
    "full": dict(d=64, r=16, n=64, ks=[64, 256], thetas=list(np.linspace(0, np.pi / 2, 13)), sigma=0.5,
                 floor=0.1, n_tasks=20000, k_grid=[8, 16, 32, 64, 128, 256, 512, 1024], seed=6),
}


# --------------------------------------------------------------------------------------------------------
# Figures of chapter "General covariance" (live CI run and shipped full-size result)
# --------------------------------------------------------------------------------------------------------


def simulated_crossings(res: dict) -> np.ndarray:
    """First sign change (scratch minus pretrained, from + to -) of the simulated paired differences.

    Linear interpolation in ``log k`` on the sweep's ``k`` grid; ``inf`` if scratch never wins on the grid,
    the first grid point if it wins there already.
    """
    cr = res["crossing"]
    lk = np.log(cr["k_grid"])
    out = []
    for row in cr["sim_diff"]:
        row = np.array(row)
        idx = np.nonzero((row[:-1] > 0) & (row[1:] <= 0))[0]
        if row[0] <= 0:
            out.append(cr["k_grid"][0])
        elif idx.size == 0:
            out.append(np.inf)
        else:
            i = idx[0]
            out.append(float(np.exp(lk[i] + (lk[i + 1] - lk[i]) * row[i] / (row[i] - row[i + 1]))))
    return np.array(out, dtype=float)


def plot_loss_vs_alignment(ax, res: dict, exact: dict, title: str = ""):
    """Figure 2a: loss after one TTT step against ``cos^2 theta``; exact (solid) and Gaussian (dashed) theory,
    simulation (markers, 2 standard errors), per ``k``; the pretrained loss before TTT (dotted).

    The pretrained simulation takes the Gaussian ``eta*``; the exact curve is the exact loss at that step.
    """
    from ..plotting import theory_vs_simulation

    x = np.array(res["cos2"])
    for j, (kk, rec) in enumerate(res["per_k"].items()):
        ex = exact["per_k"][kk]
        line = theory_vs_simulation(ax, x, ex["exact_warm_at_gauss_eta"], rec["sim_warm"], rec["sim_warm_se"],
                                    label=f"pretrained, k={kk}", color=f"C{2 * j}")
        ax.plot(x, rec["theory_warm"], "--", color=line.get_color(), label=f"pretrained, k={kk} (Gaussian theory)")
        theory_vs_simulation(ax, x, rec["theory_scratch"], rec["sim_scratch"], rec["sim_scratch_se"],
                             label=f"scratch, k={kk}", color=f"C{2 * j + 1}")
    rec0 = next(iter(res["per_k"].values()))
    ax.plot(x, rec0["before_warm"], "k:", label="pretrained, no TTT (exact)")
    ax.set(title=title, xlabel=r"alignment $\cos^2\theta$", ylabel="test loss after one TTT step")
    ax.legend(fontsize=7)
    return ax


def plot_gain_vs_misalignment(ax, res: dict, exact: dict, title: str = ""):
    """Improvement of the pretrained start (``/ tr Sigma_t``) against its misalignment fraction: exact theory at
    the simulated step (line), simulation (markers) and the leading order ``M^2 / N`` (dashed), per ``k``."""
    from ..plotting import theory_vs_simulation

    tau = res["config"]["d"]  # tr Sigma_t = d for the subspace family
    mf = np.array(res["misalignment_fraction"])
    for kk, rec in res["per_k"].items():
        before = np.array(rec["before_warm"])
        gain_th = (before - np.array(exact["per_k"][kk]["exact_warm_at_gauss_eta"])) / tau
        gain_sim = (before - np.array(rec["sim_warm"])) / tau
        line = theory_vs_simulation(ax, mf, gain_th, gain_sim, np.array(rec["sim_warm_se"]) / tau, label=f"k={kk}")
        lead = np.array(rec["misalignment"]) ** 2 / np.array(rec["magnitude"]) / tau
        ax.plot(mf, lead, "--", color=line.get_color(), label=f"k={kk}, leading order $M^2/N$")
    ax.set(title=title, xlabel=r"misalignment $M/\mathrm{tr}\,\Sigma_t$", ylabel=r"improvement / tr $\Sigma_t$")
    ax.legend(fontsize=7)
    return ax


def plot_crossings(ax, res: dict, exact: dict, title: str = ""):
    """Crossing ``k*/d`` (scratch beats pretrained above it) against ``cos^2 theta``: exact and Gaussian theory,
    simulated crossings of the paired differences."""
    d = res["config"]["d"]
    x = np.array(res["cos2"])
    finite = lambda v: np.where(np.isfinite(v), v, np.nan) / d  # noqa: E731
    ax.semilogy(x, finite(np.array(exact["crossing"]["theory_k"])), "-", label=r"$k^\star/d$ (exact theory)")
    ax.semilogy(x, finite(np.array(res["crossing"]["theory_k"])), "--", label=r"$k^\star/d$ (Gaussian theory)")
    ax.semilogy(x, finite(simulated_crossings(res)), "o", label=r"$k^\star/d$ (simulation)")
    ax.axhline(max(res["crossing"]["k_grid"]) / d, color="gray", ls=":", label="largest simulated k")
    ax.set(title=title, xlabel=r"alignment $\cos^2\theta$", ylabel=r"crossing $k^\star / d$")
    ax.legend(fontsize=8)
    return ax


def plot_gain_error_map(axes, maps, alpha_cut: float):
    """Relative error of the Gaussian gain (in %): top row against ``n/d`` (``k = d``), bottom row against
    ``k/d`` (``n = alpha_cut d``); one column per angle, one line per dimension (``maps`` from
    :func:`gain_error_map` on the same ``alphas``, ``kappas`` and ``thetas``)."""
    for mp in maps:
        d = mp["d"]
        alpha, kappa = np.array(mp["n"]) / d, np.array(mp["k"]) / d
        jk, ja = int(np.argmin(np.abs(kappa - 1))), int(np.argmin(np.abs(alpha - alpha_cut)))
        for i, t in enumerate(mp["theta"]):
            axes[0, i].semilogx(alpha, 100 * mp["rel_error"][i, jk, :], "o-", ms=3, label=f"d={d}")
            axes[1, i].semilogx(kappa, 100 * mp["rel_error"][i, :, ja], "o-", ms=3, label=f"d={d}")
    for i, t in enumerate(maps[0]["theta"]):
        c2 = np.cos(t) ** 2
        axes[0, i].set(title=rf"$\cos^2\theta$ = {c2:.2f}, k = d", xlabel="n/d")
        axes[1, i].set(title=rf"$\cos^2\theta$ = {c2:.2f}, n = {alpha_cut:g} d", xlabel="k/d")
        for ax in axes[:, i]:
            ax.axhline(0, color="k", lw=0.6)
    for ax in axes[:, 0]:
        ax.set_ylabel("Gaussian gain / exact gain − 1  (%)")
        ax.legend(fontsize=8)
    return axes

