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

from .isotropic import SYMBOLS as _ISO_SYMBOLS, expect_given_beta
from .pretraining import optimal_W, population_icl_loss
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
    "rotation",
    "subspace_pair",
    "spiked_pair",
    "scratch_pretrained_crossing",
    "target_loss",
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
