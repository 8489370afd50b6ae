"""One TTT step in the isotropic setting (``Sigma_x = Sigma_beta = I``): exact theory and proportional limit.

Setting (our conventions, see :mod:`ttt_helpers.theory.ttt`): ``beta ~ N(0, I_d)`` (so ``||beta||^2 ~ chi^2_d``,
about ``d``), context ``X`` (``n x d``, i.i.d. ``N(0,1)``), ``y = X beta + xi``, ``xi ~ N(0, sigma^2 I_n)``,
``u = X^T y``; ``k`` training queries ``(X_tr, y_tr)`` of the same task; TTT loss
``||y_tr - X_tr W u||^2`` (plain sum); start ``W0 = c I``; one step

    W1 = W0 + eta g u^T,     g = 2 X_tr^T (y_tr - X_tr W0 u).

The test loss is the exact expectation over a FRESH context of length ``n`` and a fresh query,

    L(W | beta) = ||beta||^2 + sigma^2 - 2 n beta^T W beta + tr(W Q W^T),
    Q = n(n+1) beta beta^T + n(||beta||^2 + sigma^2) I .

Expanding in ``eta`` (our derivation, chapter "The TTT step"):

    L(W1 | beta) = L(W0 | beta) - 2 eta a + eta^2 b,
    a = n (beta^T g)(u^T beta) - g^T W0 Q u,     b = ||g||^2 u^T Q u,

so the expected loss over tasks, contexts and training sets is ``L0 - 2 eta A + eta^2 B`` with
``A = E[a]``, ``B = E[b]``; the best fixed step is ``eta* = A / B`` and the loss after the step is
``L0 - A^2 / B``. Averaging over the training queries first (they are independent of ``u`` and ``beta``)
with ``r = beta - W0 u``: ``E[g] = 2 k r`` and ``E||g||^2 = 4 k [(k+d+1) ||r||^2 + d sigma^2]``. What is
left are the moments of ``s = beta^T u`` and ``t = ||u||^2`` given ``beta`` up to total degree 4 in ``u``
(degree 8 in the Gaussian entries). They are computed EXACTLY by rotating ``beta`` onto ``e_1``:
with ``rho^2 = ||X e_1||^2 ~ chi^2_n``, ``g1 ~ N(0,1)``, ``q ~ chi^2_{n-1}``, ``p ~ chi^2_{d-1}``
independent and ``h = ||beta|| rho + sigma g1``,

    u_1 = rho h,    ||u_perp||^2 = (h^2 + sigma^2 q) p,    s = ||beta|| u_1,    t = u_1^2 + ||u_perp||^2 .

The *Gaussian approximation* replaces ``u | beta`` by a Gaussian with the exact conditional mean
``n beta`` and covariance ``n (beta beta^T + (||beta||^2 + sigma^2) I)`` (``"gauss"``), or by the cruder
``n (||beta||^2 + sigma^2) I`` covariance (``"gauss_iso"``).

Everything in this module is our derivation (the paper states its isotropic result through a Gaussian
approximation whose exact form is not available to us); each formula is checked by Monte Carlo in the
book and in ``tests/test_isotropic.py``. The Monte Carlo engine is :mod:`ttt_helpers.theory.montecarlo`, the
sweeps and figures of chapters 04 and 05 are in :mod:`ttt_helpers.theory.sweeps`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import sympy as sp

from .moments import chi2_moment, expect_independent, standard_normal_moment
from ..validation import check_nonnegative_float, check_positive_int

__all__ = [
    "SYMBOLS",
    "METHODS",
    "expect_given_beta",
    "u_moments_given_beta",
    "one_step_coefficients",
    "isotropic_one_step",
    "isotropic_loss_at_step",
    "pretrained_c",
    "proportional_limit",
    "proportional_limit_symbolic",
    "improvement_peak",
    "small_context_expansion",
    "scratch_crossover_k",
    "crossover_kappa_limit",
    "crossover_kappa_symbolic",
]

#: SymPy symbols: context length, dimension, TTT set size, noise variance sigma^2, start scale c,
#: squared task norm ||beta||^2, step size.
SYMBOLS = dict(zip(["n", "d", "k", "s2", "c", "b2", "eta"], sp.symbols("n d k s2 c b2 eta", positive=True)))
METHODS = ("exact", "gauss", "gauss_iso")

_n, _d, _k, _s2, _c, _b2 = (SYMBOLS[x] for x in ["n", "d", "k", "s2", "c", "b2"])
_MOMENT_KEYS = ("s", "s2", "t", "s3", "st", "s2t", "t2")


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _even_moment(fn):
    def m(p):
        if p % 2:
            raise ValueError("odd power of a chi variable left after expansion (derivation error)")
        return fn(p // 2)

    return m


def expect_given_beta(build, method: str = "exact"):
    """``E[f(u) | beta]`` for a polynomial ``f`` of the context statistic ``u``, in the frame ``beta = ||beta|| e_1``.

    The conditional law of ``u = X^T (X beta + xi)`` given ``beta`` is invariant under the rotations that
    fix ``beta``, so ``u = u_1 e_1 + sqrt(v) z`` with ``z ~ N(0, I_{d-1})`` independent of ``(u_1, v)``. Exactly
    (module docstring): ``u_1 = rho h``, ``v = h^2 + sigma^2 q``, ``h = ||beta|| rho + sigma g1``; under the
    Gaussian approximations ``u_1 = n ||beta|| + tau g1`` and ``v = n (||beta||^2 + sigma^2)``.

    Parameters
    ----------
    build : callable ``(norm, u1, v, z2) -> sympy expression``
        Builds ``f`` from the symbol ``norm = ||beta||``, the expressions ``u1`` and ``v`` and the symbol
        ``z2 = ||z||^2 ~ chi^2_{d-1}``; ``f`` must be a polynomial in ``u1``, ``v``, ``z2`` (other symbols,
        including negative powers of ``norm``, are constants).
    method : {"exact", "gauss", "gauss_iso"}

    Returns
    -------
    sympy expression (expanded) in ``n, d, s2, b2`` of :data:`SYMBOLS` and the other symbols of ``f``.
    """
    _check_method(method)
    b, sig = sp.symbols("b sigma", positive=True)
    g1 = sp.Symbol("g1", positive=True)
    moments = {g1: standard_normal_moment}
    if method == "exact":
        rho, q = sp.symbols("rho q", positive=True)
        moments[rho] = _even_moment(lambda m: chi2_moment(_n, m))
        moments[q] = lambda m: chi2_moment(_n - 1, m)
        h = b * rho + sig * g1
        u1 = rho * h
        v = h**2 + sig**2 * q
    else:
        tau = sp.Symbol("tau", positive=True)
        u1 = _n * b + tau * g1
        v = _n * (b**2 + sig**2)
    # expand f in the rotated coordinates first, then take each monomial's moment (z2 is independent)
    U1, V, Z2 = sp.symbols("U1 V Z2")
    f = sp.Poly(sp.expand(build(b, U1, V, Z2)), U1, V, Z2)
    e = sp.Integer(0)
    for (i, j, m), coeff in f.terms():
        e += coeff * expect_independent(u1**i * v**j, moments) * chi2_moment(_d - 1, m)
    e = sp.expand(e)
    if method != "exact":
        tau2 = _n * (2 * b**2 + sig**2) if method == "gauss" else _n * (b**2 + sig**2)
        e = sp.expand(e.subs(sp.Symbol("tau", positive=True), sp.sqrt(tau2)))
    e = sp.expand(e.subs({b: sp.sqrt(_b2), sig: sp.sqrt(_s2)}))
    if e.has(b) or e.has(sig) or any(a.is_Pow and a.exp.is_Rational and not a.exp.is_integer
                                      for a in e.atoms(sp.Pow)):
        raise RuntimeError("odd power of ||beta|| or sigma left after the expectation (derivation error)")
    return e


@lru_cache(maxsize=None)
def u_moments_given_beta(method: str = "exact") -> dict:
    """Moments of ``s = beta^T u`` and ``t = ||u||^2`` given ``||beta||^2 = b2``, as SymPy expressions.

    Parameters
    ----------
    method : {"exact", "gauss", "gauss_iso"}
        Exact finite-``n`` moments (rotation argument in the module docstring) or a Gaussian
        approximation of ``u | beta`` (see :func:`expect_given_beta`).

    Returns
    -------
    dict
        Keys ``"s", "s2", "t", "s3", "st", "s2t", "t2"`` (``E[s]``, ``E[s^2]``, ``E[t]``, ``E[s^3]``,
        ``E[s t]``, ``E[s^2 t]``, ``E[t^2]``), polynomials in the symbols ``n, d, s2, b2`` of
        :data:`SYMBOLS`.
    """
    _check_method(method)
    powers = {"s": (1, 0), "s2": (2, 0), "t": (0, 1), "s3": (3, 0), "st": (1, 1), "s2t": (2, 1), "t2": (0, 2)}

    def builder(i, j):
        # s = ||beta|| u_1, t = u_1^2 + v ||z||^2
        return lambda b, u1, v, z2: (b * u1) ** i * (u1**2 + v * z2) ** j

    return {key: expect_given_beta(builder(*powers[key]), method) for key in _MOMENT_KEYS}


@lru_cache(maxsize=None)
def one_step_coefficients(method: str = "exact", average_beta: bool = True) -> dict:
    """The expected loss before TTT ``L0`` and the step coefficients ``A``, ``B`` (SymPy).

    ``E[L(W0 + eta g u^T)] = L0 - 2 eta A + eta^2 B`` for ``W0 = c I``; ``eta* = A / B``.

    Parameters
    ----------
    method : {"exact", "gauss", "gauss_iso"}
    average_beta : bool
        If True, average over ``||beta||^2 ~ chi^2_d`` (result in ``n, d, k, s2, c``); otherwise keep
        ``b2`` (the expectation given the task norm).

    Returns
    -------
    dict with keys ``"L0", "A", "B"`` (SymPy expressions).
    """
    _check_method(method)
    mom = u_moments_given_beta(method)
    n, d, k, s2, c, b2 = _n, _d, _k, _s2, _c, _b2
    S, S2, T, S3, ST, S2T, T2 = (sp.Symbol("M_" + key) for key in _MOMENT_KEYS)
    # A = 2k E[ n (b2 - c s) s - c ( n(n+1) b2 s + n(b2+s2) s - c (n(n+1) s^2 + n(b2+s2) t) ) ]
    A = 2 * k * (n * (b2 * S - c * S2) - c * (n * (n + 1) * b2 * S + n * (b2 + s2) * S
                                              - c * (n * (n + 1) * S2 + n * (b2 + s2) * T)))
    # B = 4k E[ ((k+d+1)(b2 - 2 c s + c^2 t) + d s2) (n(n+1) s^2 + n(b2+s2) t) ]
    kk = k + d + 1
    B = 4 * k * (
        (kk * b2 + d * s2) * (n * (n + 1) * S2 + n * (b2 + s2) * T)
        - 2 * c * kk * (n * (n + 1) * S3 + n * (b2 + s2) * ST)
        + c**2 * kk * (n * (n + 1) * S2T + n * (b2 + s2) * T2)
    )
    sub = dict(zip((S, S2, T, S3, ST, S2T, T2), (mom[key] for key in _MOMENT_KEYS)))
    A = sp.expand(A.subs(sub))
    B = sp.expand(B.subs(sub))
    L0 = sp.expand(b2 + s2 - 2 * n * c * b2 + c**2 * (n * (n + 1) * b2 + n * (b2 + s2) * d))
    if average_beta:
        bm = {b2: lambda m: chi2_moment(d, m)}
        A, B, L0 = (expect_independent(e, bm) for e in (A, B, L0))
    return {"L0": L0, "A": A, "B": B}


@lru_cache(maxsize=None)
def _lambdified(method: str):
    co = one_step_coefficients(method, True)
    args = (_n, _d, _k, _s2, _c)
    return {key: sp.lambdify(args, co[key], "numpy") for key in ("L0", "A", "B")}


def pretrained_c(n, d, sigma: float = 0.0):
    """Scale of the pretrained start ``W* = c I``: ``c = 1 / (n + d + 1 + sigma^2)`` (vectorised in n)."""
    n = np.asarray(n, dtype=float)
    d = check_positive_int(d, "d")
    sigma = check_nonnegative_float(sigma, "sigma")
    out = 1.0 / (n + d + 1 + sigma**2)
    return float(out) if out.ndim == 0 else out


def _start_c(c, n, d, sigma):
    if isinstance(c, str):
        if c in ("pretrained", "W*", "warm"):
            return pretrained_c(n, d, sigma)
        if c in ("scratch", "zero", "cold"):
            return np.zeros_like(np.asarray(n, dtype=float)) + 0.0
        raise ValueError(f"c must be a number, 'pretrained' or 'scratch', got {c!r}")
    c = np.asarray(c, dtype=float)
    if not np.all(np.isfinite(c)):
        raise ValueError(f"c must be finite, got {c}")
    return c


def isotropic_one_step(n, d, k, sigma: float = 0.0, c="pretrained", method: str = "exact") -> dict:
    """Expected test loss before and after one TTT step with the optimal step size ``eta*``.

    Exact at finite ``n, d, k`` (``method="exact"``) or under a Gaussian approximation of ``u | beta``.
    Vectorised: ``n``, ``k`` and ``c`` may be arrays (broadcast together).

    Parameters
    ----------
    n : int or array
        Context length (of the TTT context and of the fresh evaluation contexts), ``n >= 1``.
    d : int
        Dimension.
    k : int or array
        Number of TTT training queries, ``k >= 1``.
    sigma : float
        Label-noise standard deviation.
    c : float, array, "pretrained" or "scratch"
        Start ``W0 = c I``; ``"pretrained"`` is ``W*`` (``c = 1/(n+d+1+sigma^2)``), ``"scratch"`` is 0.
    method : {"exact", "gauss", "gauss_iso"}

    Returns
    -------
    dict with float/array entries ``loss_before``, ``eta_star``, ``loss_after``, ``improvement``
    (``loss_before - loss_after = A^2/B``), ``A``, ``B`` and the start scale ``c``.
    """
    _check_method(method)
    d = check_positive_int(d, "d")
    sigma = check_nonnegative_float(sigma, "sigma")
    n_arr = np.asarray(n, dtype=float)
    k_arr = np.asarray(k, dtype=float)
    if np.any(n_arr < 1) or np.any(n_arr != np.round(n_arr)):
        raise ValueError(f"n must be a positive integer (or array of them), got {n}")
    if np.any(k_arr < 1) or np.any(k_arr != np.round(k_arr)):
        raise ValueError(f"k must be a positive integer (or array of them), got {k}")
    c_arr = _start_c(c, n_arr, d, sigma)
    n_arr, k_arr, c_arr = np.broadcast_arrays(n_arr, k_arr, c_arr)
    f = _lambdified(method)
    s2 = sigma**2
    L0 = f["L0"](n_arr, d, k_arr, s2, c_arr) + 0 * n_arr
    A = f["A"](n_arr, d, k_arr, s2, c_arr) + 0 * n_arr
    B = f["B"](n_arr, d, k_arr, s2, c_arr) + 0 * n_arr
    eta = A / B
    gain = A * eta
    out = {"loss_before": L0, "eta_star": eta, "loss_after": L0 - gain, "improvement": gain, "A": A, "B": B,
           "c": c_arr}
    if np.ndim(L0) == 0:
        out = {key: float(v) for key, v in out.items()}
    return out


def isotropic_loss_at_step(n, d, k, eta, sigma: float = 0.0, c="pretrained", method: str = "exact"):
    """Expected test loss after one TTT step of a GIVEN size ``eta``: ``L0 - 2 eta A + eta^2 B``.

    Same parameters as :func:`isotropic_one_step` plus ``eta`` (float or array, broadcast).
    """
    r = isotropic_one_step(n, d, k, sigma, c, method)
    eta = np.asarray(eta, dtype=float)
    if not np.all(np.isfinite(eta)):
        raise ValueError(f"eta must be finite, got {eta}")
    out = r["loss_before"] - 2 * eta * r["A"] + eta**2 * r["B"]
    return float(out) if np.ndim(out) == 0 else out


# ---------------------------------------------------------------------------------------------------------
# Proportional limit
# ---------------------------------------------------------------------------------------------------------

_ALPHA, _KAPPA, _NOISE, _GAMMA, _D = sp.symbols("alpha kappa varsigma gamma D", positive=True)


def _leading(expr, var):
    """Leading power and coefficient of a Laurent polynomial ``expr`` in ``var`` (as var -> oo)."""
    expr = sp.expand(expr)
    shift = 0
    for term in sp.Add.make_args(expr):
        _, e = term.as_coeff_exponent(var)
        shift = min(shift, int(e))
    poly = sp.Poly(sp.expand(expr * var ** (-shift)), var)
    deg = poly.degree()
    return deg + shift, sp.factor(poly.LC())


@lru_cache(maxsize=None)
def proportional_limit_symbolic(method: str = "exact") -> dict:
    """Proportional limit ``d -> oo`` with ``n = alpha d``, ``k = kappa d``, ``sigma^2 = varsigma d``, ``c = gamma / d``.

    Returns
    -------
    dict of SymPy expressions in ``alpha, kappa, varsigma, gamma``:
    ``loss_before`` = lim L0/d, ``loss_after`` = lim L1/d, ``improvement`` = lim (A^2/B)/d and
    ``eta_scaled`` = lim eta* d^4 (``eta*`` is of order ``d^-4``), plus the symbols.
    """
    _check_method(method)
    co = one_step_coefficients(method, True)
    sub = {_n: _ALPHA * _D, _k: _KAPPA * _D, _s2: _NOISE * _D, _c: _GAMMA / _D, _d: _D}
    L0p, L0c = _leading(co["L0"].subs(sub), _D)
    Ap, Ac = _leading(co["A"].subs(sub), _D)
    Bp, Bc = _leading(co["B"].subs(sub), _D)
    if L0p != 1 or 2 * Ap - Bp != 1:
        raise RuntimeError(f"unexpected scaling: L0 ~ D^{L0p}, A ~ D^{Ap}, B ~ D^{Bp}")
    gain = sp.factor(Ac**2 / Bc)
    eta_scaled = sp.factor(Ac / Bc)
    return {
        "loss_before": L0c,
        "improvement": gain,
        "loss_after": sp.factor(L0c - gain),
        "eta_scaled": eta_scaled,
        "eta_power": Ap - Bp,
        "symbols": (_ALPHA, _KAPPA, _NOISE, _GAMMA),
    }


@lru_cache(maxsize=None)
def _limit_lambdified(method: str):
    lim = proportional_limit_symbolic(method)
    args = lim["symbols"]
    return {key: sp.lambdify(args, lim[key], "numpy") for key in ("loss_before", "improvement", "loss_after",
                                                                     "eta_scaled")}


def proportional_limit(alpha, kappa, noise: float = 0.0, start="pretrained", method: str = "exact") -> dict:
    """Losses per dimension (``L / d``) before and after one optimal TTT step as ``d -> oo``.

    Parameters
    ----------
    alpha : float or array
        ``n / d``.
    kappa : float or array
        ``k / d``.
    noise : float
        ``sigma^2 / d`` (the noise is scaled with ``d`` so that it competes with ``||beta||^2 ~ d``; a
        fixed ``sigma^2`` is ``noise = 0`` in the limit).
    start : "pretrained", "scratch" or float
        ``W0 = (gamma / d) I``; ``"pretrained"`` is ``gamma = 1 / (1 + alpha + noise)``, the limit of
        ``d / (n + d + 1 + sigma^2)``; ``"scratch"`` is ``gamma = 0``.
    method : {"exact", "gauss", "gauss_iso"}

    Returns
    -------
    dict with ``loss_before``, ``loss_after``, ``improvement`` (all ``/ d``), ``eta_scaled``
    (``eta* d^4``) and ``gamma``.
    """
    alpha = np.asarray(alpha, dtype=float)
    kappa = np.asarray(kappa, dtype=float)
    noise = check_nonnegative_float(noise, "noise")
    if np.any(alpha <= 0) or np.any(kappa <= 0):
        raise ValueError(f"alpha and kappa must be positive, got {alpha}, {kappa}")
    if isinstance(start, str):
        if start in ("pretrained", "W*", "warm"):
            gamma = 1.0 / (1.0 + alpha + noise)
        elif start in ("scratch", "zero", "cold"):
            gamma = np.zeros_like(alpha)
        else:
            raise ValueError(f"start must be 'pretrained', 'scratch' or a number, got {start!r}")
    else:
        gamma = np.asarray(start, dtype=float)
    alpha, kappa, gamma = np.broadcast_arrays(alpha, kappa, gamma)
    f = _limit_lambdified(_check_method(method))
    out = {key: f[key](alpha, kappa, noise, gamma) + 0 * alpha for key in f}
    out["gamma"] = gamma
    if np.ndim(alpha) == 0:
        out = {key: float(v) for key, v in out.items()}
    return out


# ---------------------------------------------------------------------------------------------------------
# Derived quantities: where the improvement peaks, where scratch catches up with pretrained
# ---------------------------------------------------------------------------------------------------------


def improvement_peak(d: int, k: int, sigma: float = 0.0, c="pretrained", n_max=None) -> dict:
    """Context length ``n`` (integer, ``1 <= n <= n_max``) that maximises the exact one-step improvement.

    Returns
    -------
    dict with ``n_star``, ``improvement`` (at ``n_star``) and ``n_star_asymptotic``
    ``= (2/3)^{1/3} d^{2/3}`` (the large-``d`` prediction of :func:`small_context_expansion`, noiseless
    pretrained start).
    """
    d = check_positive_int(d, "d")
    k = check_positive_int(k, "k")
    n_max = 4 * d if n_max is None else check_positive_int(n_max, "n_max")
    ns = np.arange(1, n_max + 1)
    r = isotropic_one_step(ns, d, k, sigma, c)
    i = int(np.argmax(r["improvement"]))
    return {"n_star": int(ns[i]), "improvement": float(r["improvement"][i]),
            "n_star_asymptotic": float((2.0 / 3.0) ** (1.0 / 3.0) * d ** (2.0 / 3.0))}


@lru_cache(maxsize=None)
def small_context_expansion():
    """Noiseless pretrained improvement in the regime ``n = nu d^{2/3}``, ``k = kappa d``, ``d -> oo``.

    Returns
    -------
    dict with ``exact_gain_over_d`` (the exact ``(A^2/B)/d`` divided by ``k/(k+d+1)``, a function of
    ``n, d`` only), ``series`` (its expansion ``1 - (3 nu + 1/nu^2) d^{-1/3} + O(d^{-2/3})``), ``nu_star``
    (``(2/3)^{1/3}``, the maximiser) and the symbols ``(nu, eps)`` with ``eps = d^{-1/3}``.
    """
    co = one_step_coefficients("exact", True)
    G = sp.factor(sp.cancel((co["A"] ** 2 / co["B"]).subs({_s2: 0, _c: 1 / (_n + _d + 1)}) * (_k + _d + 1) / _k))
    if G.has(_k):
        raise RuntimeError("the noiseless gain should factor as k/(k+d+1) times a function of n, d")
    nu, eps = sp.symbols("nu epsilon", positive=True)
    e = sp.cancel((G / _d).subs({_n: nu / eps**2, _d: 1 / eps**3}))
    series = sp.series(e, eps, 0, 2).removeO()
    corr = sp.expand(-series.coeff(eps, 1))
    nu_star = sp.solve(sp.diff(corr, nu), nu)
    return {"exact_gain_over_d": sp.factor(G / _d), "series": sp.expand(series), "nu_star": nu_star[0],
            "symbols": (nu, eps)}


def scratch_crossover_k(n: int, d: int, sigma: float = 0.0, method: str = "exact") -> float:
    """The (real) TTT set size ``k`` at which one step from scratch (``W0 = 0``) equals one step from ``W*``.

    Below it the pretrained start is better, above it the scratch start; found by bisection in ``log k``
    on the exact formulas (extended to real ``k``). Returns ``inf`` if the pretrained start stays better
    up to ``k = 10^6 d``.
    """
    n = check_positive_int(n, "n")
    d = check_positive_int(d, "d")
    sigma = check_nonnegative_float(sigma, "sigma")
    f = _lambdified(_check_method(method))
    s2 = sigma**2
    cw = pretrained_c(n, d, sigma)

    def diff(k):
        out = []
        for c in (0.0, cw):
            L0, A, B = (f[key](n, d, k, s2, c) for key in ("L0", "A", "B"))
            out.append(L0 - A * A / B)
        return out[0] - out[1]  # scratch minus pretrained

    lo, hi = 1e-6, 1e6 * d
    if diff(hi) > 0:
        return float("inf")
    if diff(lo) < 0:
        return 0.0
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if diff(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-12:
            break
    return float(np.sqrt(lo * hi))


def crossover_kappa_limit(alpha, noise: float = 0.0):
    """Proportional-limit crossover ``kappa* = k*/d`` where scratch and pretrained one-step losses are equal.

    ``(1 + alpha)^2 / (2 + alpha)`` without noise; for ``noise = sigma^2/d > 0`` the positive root of the
    quadratic in ``kappa`` derived in :func:`crossover_kappa_symbolic`. Vectorised in ``alpha``.
    """
    alpha = np.asarray(alpha, dtype=float)
    noise = check_nonnegative_float(noise, "noise")
    if np.any(alpha <= 0):
        raise ValueError(f"alpha must be positive, got {alpha}")
    f = _crossover_lambdified()
    out = f(alpha, noise) + 0 * alpha
    return float(out) if out.ndim == 0 else out


@lru_cache(maxsize=None)
def crossover_kappa_symbolic():
    """SymPy: the limit losses from scratch and from ``W*`` and the crossover ``kappa*(alpha, varsigma)``.

    Returns
    -------
    dict with ``scratch`` and ``pretrained`` (limit ``L1 / d``), ``difference_numerator`` (a quadratic in
    ``kappa`` whose positive root is the crossover) and ``kappa_star``.
    """
    lim = proportional_limit_symbolic("exact")
    a, k, v, g = lim["symbols"]
    scr = sp.factor(lim["loss_after"].subs(g, 0))
    pre = sp.factor(lim["loss_after"].subs(g, 1 / (1 + a + v)))
    num = sp.factor(sp.numer(sp.together(scr - pre)))
    roots = sp.solve(num, k)
    # the root that is positive: check at a sample point
    pos = [r for r in roots if float(r.subs({a: 1.0, v: 0.3})) > 0]
    if len(pos) != 1:
        raise RuntimeError(f"expected one positive crossover root, got {roots}")
    return {"scratch": scr, "pretrained": pre, "difference_numerator": num, "kappa_star": pos[0],
            "symbols": (a, v)}


@lru_cache(maxsize=None)
def _crossover_lambdified():
    cs = crossover_kappa_symbolic()
    return sp.lambdify(cs["symbols"], cs["kappa_star"], "numpy")
