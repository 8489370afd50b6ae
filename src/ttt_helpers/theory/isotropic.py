"""One TTT step in the isotropic setting (``Sigma_x = Sigma_beta = I``): exact theory, limits, Monte Carlo.

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
book and in ``tests/test_isotropic.py``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import sympy as sp

from .moments import chi2_moment, expect_independent, standard_normal_moment
from .tasks import as_generator
from .ttt import Q_times, conditional_test_loss, sample_ttt_problems, ttt_step
from ..validation import check_finite_array, check_nonnegative_float, check_nonnegative_int, check_positive_int

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
    "mc_one_step",
    "mc_one_step_naive",
    "per_task_coefficients",
    "improvement_peak",
    "small_context_expansion",
    "scratch_crossover_k",
    "mc_paired_starts",
    "sweep_context_length",
    "sweep_starts",
    "crossover_kappa_limit",
    "crossover_kappa_symbolic",
    "SWEEP_PROFILES",
    "plot_sweep_context_length",
    "plot_sweep_starts",
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
# Monte Carlo engine (vectorised over tasks)
# ---------------------------------------------------------------------------------------------------------


def per_task_coefficients(problems, W0, n: int, sigma: float = 0.0):
    """Per-task loss before TTT and the coefficients of ``L(W0 + eta g u^T | beta) = l0 - 2 eta a + eta^2 b``.

    Exact in the fresh evaluation context and query (closed form); random only through the task, the
    TTT context and the training queries in ``problems``.

    Parameters
    ----------
    problems : ttt.TTTProblems
        A batch of ``T`` TTT problems (context length ``n``).
    W0 : float or ndarray (d, d)
        Start (``c`` for ``c I``, or a matrix shared by all tasks).
    n : int
        Length of the fresh evaluation contexts.
    sigma : float

    Returns
    -------
    l0, a, b : ndarray, shape (T,)
    """
    n = check_nonnegative_int(n, "n")
    s2 = check_nonnegative_float(sigma, "sigma") ** 2
    beta, u = problems.beta, problems.u
    T, d = beta.shape
    b2 = np.sum(beta**2, axis=1)
    s = np.einsum("td,td->t", beta, u)
    if np.ndim(W0) == 0:
        c = float(W0)
        W0u = c * u
        l0 = b2 + s2 - 2 * n * c * b2 + c**2 * (n * (n + 1) * b2 + n * (b2 + s2) * d)
    else:
        W0 = check_finite_array(W0, "W0", ndim=2)
        if W0.shape != (d, d):
            raise ValueError(f"W0 must have shape ({d}, {d}), got {W0.shape}")
        W0u = u @ W0.T
        l0 = conditional_test_loss(W0, beta, n, sigma)
    resid = problems.y_train - np.einsum("tkd,td->tk", problems.X_train, W0u)
    g = 2.0 * np.einsum("tkd,tk->td", problems.X_train, resid)
    Qu = Q_times(beta, u, n, sigma)
    W0Qu = c * Qu if np.ndim(W0) == 0 else Qu @ W0.T
    a = n * np.einsum("td,td->t", beta, g) * s - np.einsum("td,td->t", g, W0Qu)
    b = np.sum(g**2, axis=1) * np.einsum("td,td->t", u, Qu)
    return l0, a, b


def _auto_chunk(n, k, d, chunk):
    if chunk is None:
        return int(max(1, min(20_000, 2e7 // ((n + k) * d))))
    return check_positive_int(chunk, "chunk")


def mc_one_step(n: int, d: int, k: int, sigma: float = 0.0, c="pretrained", eta=None, n_tasks: int = 2000,
                rng=0, chunk=None, return_per_task: bool = False) -> dict:
    """Monte Carlo of one TTT step, vectorised over tasks (batched NumPy, chunks of ``chunk`` tasks).

    Draws ``n_tasks`` tasks ``beta ~ N(0, I_d)``, one TTT context of length ``n`` and ``k`` training
    queries per task (in chunks of ``chunk`` tasks; by default about ``2e7`` numbers per chunk), and evaluates the exact fresh-context test loss before and after the step
    ``W0 + eta g u^T`` (``W0 = c I``).

    Parameters
    ----------
    eta : float, optional
        Step size; the theoretical ``eta*`` of :func:`isotropic_one_step` if omitted.

    Returns
    -------
    dict with means and standard errors over tasks: ``loss_before``, ``loss_after``, ``improvement``
    (``*_se``), the plug-in optimal step ``eta_hat = mean(a)/mean(b)``, the ``eta`` used, and, with
    ``return_per_task``, the arrays ``l0, a, b``.
    """
    n = check_positive_int(n, "n")
    d = check_positive_int(d, "d")
    k = check_positive_int(k, "k")
    n_tasks = check_positive_int(n_tasks, "n_tasks")
    chunk = _auto_chunk(n, k, d, chunk)
    sigma = check_nonnegative_float(sigma, "sigma")
    rng = as_generator(rng)
    c0 = float(_start_c(c, n, d, sigma)) if isinstance(c, str) or np.ndim(c) == 0 else c
    if eta is None:
        if np.ndim(c0) != 0:
            raise ValueError("eta must be given when the start W0 is a matrix")
        eta = isotropic_one_step(n, d, k, sigma, c0)["eta_star"]
    eta = float(eta)
    parts = []
    done = 0
    while done < n_tasks:
        m = min(chunk, n_tasks - done)
        prob = sample_ttt_problems(rng, m, n, k, d, sigma=sigma)
        parts.append(per_task_coefficients(prob, c0, n, sigma))
        done += m
    l0, a, b = (np.concatenate([p[i] for p in parts]) for i in range(3))
    l1 = l0 - 2 * eta * a + eta**2 * b
    gain = l0 - l1
    se = lambda x: float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")  # noqa: E731
    out = {
        "loss_before": float(l0.mean()), "loss_before_se": se(l0),
        "loss_after": float(l1.mean()), "loss_after_se": se(l1),
        "improvement": float(gain.mean()), "improvement_se": se(gain),
        "eta": eta, "eta_hat": float(a.mean() / b.mean()), "A_hat": float(a.mean()), "B_hat": float(b.mean()),
        "A_hat_se": se(a), "B_hat_se": se(b), "n_tasks": n_tasks,
    }
    if return_per_task:
        out.update(l0=l0, a=a, b=b)
    return out


def mc_one_step_naive(n: int, d: int, k: int, sigma: float = 0.0, c="pretrained", eta=None, n_tasks: int = 100,
                      rng=0) -> dict:
    """The straightforward reference: a Python loop over tasks, forming ``W_TT`` as a ``d x d`` matrix.

    For each task: draw ``beta``, a context and ``k`` training queries, take the step with
    :func:`ttt.ttt_step`, and evaluate :func:`ttt.conditional_test_loss` before and after. Used to
    cross-check :func:`mc_one_step` and as the baseline of ``scripts/bench_mc_engine.py``.

    Returns
    -------
    dict with ``loss_before``, ``loss_after`` (means) and their standard errors.
    """
    n = check_positive_int(n, "n")
    d = check_positive_int(d, "d")
    k = check_positive_int(k, "k")
    n_tasks = check_positive_int(n_tasks, "n_tasks")
    sigma = check_nonnegative_float(sigma, "sigma")
    rng = as_generator(rng)
    c0 = float(_start_c(c, n, d, sigma))
    if eta is None:
        eta = isotropic_one_step(n, d, k, sigma, c0)["eta_star"]
    W0 = c0 * np.eye(d)
    l0s, l1s = np.empty(n_tasks), np.empty(n_tasks)
    for i in range(n_tasks):
        beta = rng.standard_normal(d)
        X = rng.standard_normal((n, d))
        y = X @ beta + sigma * rng.standard_normal(n)
        Xt = rng.standard_normal((k, d))
        yt = Xt @ beta + sigma * rng.standard_normal(k)
        W1 = ttt_step(W0, X, y, Xt, yt, eta)
        l0s[i] = conditional_test_loss(W0, beta, n, sigma)
        l1s[i] = conditional_test_loss(W1, beta, n, sigma)
    se = lambda x: float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")  # noqa: E731
    return {"loss_before": float(l0s.mean()), "loss_before_se": se(l0s), "loss_after": float(l1s.mean()),
            "loss_after_se": se(l1s), "eta": float(eta), "n_tasks": n_tasks}


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


def _se(x):
    return float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def mc_paired_starts(n: int, d: int, k: int, sigma: float = 0.0, starts=("pretrained", "scratch"), n_tasks: int = 2000,
                     rng=0, chunk=None) -> dict:
    """One optimal TTT step from several starts ``W0 = c I`` on the SAME simulated problems.

    Each start uses its own theoretical ``eta*``. Common random numbers make the difference between two
    starts far more precise than either loss.

    Returns
    -------
    dict: for each start label, ``loss_after`` and ``loss_after_se``; and ``diff`` / ``diff_se``, the mean
    and standard error of (loss of ``starts[1]``) minus (loss of ``starts[0]``) per problem.
    """
    n = check_positive_int(n, "n")
    d = check_positive_int(d, "d")
    k = check_positive_int(k, "k")
    n_tasks = check_positive_int(n_tasks, "n_tasks")
    chunk = _auto_chunk(n, k, d, chunk)
    sigma = check_nonnegative_float(sigma, "sigma")
    if len(starts) < 2:
        raise ValueError(f"starts must hold at least two starts, got {starts!r}")
    rng = as_generator(rng)
    cs = [float(_start_c(c, n, d, sigma)) for c in starts]
    etas = [isotropic_one_step(n, d, k, sigma, c)["eta_star"] for c in cs]
    losses = [[] for _ in cs]
    done = 0
    while done < n_tasks:
        m = min(chunk, n_tasks - done)
        prob = sample_ttt_problems(rng, m, n, k, d, sigma=sigma)
        for j, (c, eta) in enumerate(zip(cs, etas)):
            l0, a, b = per_task_coefficients(prob, c, n, sigma)
            losses[j].append(l0 - 2 * eta * a + eta**2 * b)
        done += m
    losses = [np.concatenate(x) for x in losses]
    out = {}
    for lab, x in zip(starts, losses):
        out[str(lab)] = {"loss_after": float(x.mean()), "loss_after_se": _se(x)}
    diff = losses[1] - losses[0]
    out["diff"], out["diff_se"] = float(diff.mean()), _se(diff)
    return out


def sweep_context_length(d: int, alphas, kappas, sigma: float = 0.0, n_tasks: int = 2000, rng=0,
                         start="pretrained", progress=None) -> dict:
    """The Figure-1 sweep: loss before/after one optimal step and the improvement against ``n/d``, per ``k/d``.

    For every ``alpha`` in ``alphas`` and ``kappa`` in ``kappas`` (``n = round(alpha d)``,
    ``k = round(kappa d)``, at least 1): the exact theory, the Gaussian approximation, the proportional
    limit (``/ d``) and the Monte Carlo estimate (:func:`mc_one_step`, ``n_tasks`` tasks).

    Returns
    -------
    dict of lists (JSON-ready): ``alpha, kappa, n, k`` and, per point, ``theory_*``, ``gauss_*``,
    ``limit_*`` and ``mc_*`` / ``mc_*_se`` for ``loss_before``, ``loss_after``, ``improvement``.
    """
    d = check_positive_int(d, "d")
    rng = as_generator(rng)
    rows = {key: [] for key in ["alpha", "kappa", "n", "k"]}
    keys = ("loss_before", "loss_after", "improvement")
    for pre in ("theory_", "gauss_", "limit_", "mc_"):
        for key in keys:
            rows[pre + key] = []
    for key in keys:
        rows["mc_" + key + "_se"] = []
    rows["eta_star"] = []
    for kappa in kappas:
        for alpha in alphas:
            n, k = max(1, int(round(alpha * d))), max(1, int(round(kappa * d)))
            th = isotropic_one_step(n, d, k, sigma, start)
            ga = isotropic_one_step(n, d, k, sigma, start, method="gauss")
            lim = proportional_limit(n / d, k / d, sigma**2 / d, start)
            mc = mc_one_step(n, d, k, sigma, start, n_tasks=n_tasks, rng=rng)
            for key, v in zip(["alpha", "kappa", "n", "k"], [n / d, k / d, n, k]):
                rows[key].append(v)
            for key in keys:
                rows["theory_" + key].append(th[key])
                rows["gauss_" + key].append(ga[key])
                rows["limit_" + key].append(lim[key] * d)
                rows["mc_" + key].append(mc[key])
                rows["mc_" + key + "_se"].append(mc[key + "_se"])
            rows["eta_star"].append(th["eta_star"])
            if progress is not None:
                progress(n, k)
    rows["d"], rows["sigma"] = d, float(sigma)
    return rows


def sweep_starts(d: int, alphas, kappas, sigma: float = 0.0, n_tasks: int = 2000, rng=0, progress=None) -> dict:
    """Scratch vs pretrained sweep: loss after one optimal step from ``W*`` and from ``0`` on paired problems.

    Returns
    -------
    dict of lists (JSON-ready): ``alpha, kappa, n, k``, theory ``pre_theory``/``scr_theory`` (exact) and
    ``pre_limit``/``scr_limit`` (limit, times ``d``), Monte Carlo ``pre_mc``/``scr_mc`` (+ ``_se``) and
    the paired difference ``diff_mc`` (scratch minus pretrained, + ``_se``); and per ``alpha`` the
    crossover ``k_star_exact`` and ``k_star_limit`` (``kappa* d``).
    """
    d = check_positive_int(d, "d")
    rng = as_generator(rng)
    names = ["alpha", "kappa", "n", "k", "pre_theory", "scr_theory", "pre_limit", "scr_limit", "pre_mc",
             "pre_mc_se", "scr_mc", "scr_mc_se", "diff_mc", "diff_mc_se"]
    rows = {key: [] for key in names}
    cross = {"alpha": [], "n": [], "k_star_exact": [], "k_star_limit": []}
    for alpha in alphas:
        n = max(1, int(round(alpha * d)))
        cross["alpha"].append(n / d)
        cross["n"].append(n)
        cross["k_star_exact"].append(scratch_crossover_k(n, d, sigma))
        cross["k_star_limit"].append(crossover_kappa_limit(n / d, sigma**2 / d) * d)
        for kappa in kappas:
            k = max(1, int(round(kappa * d)))
            pre = isotropic_one_step(n, d, k, sigma, "pretrained")
            scr = isotropic_one_step(n, d, k, sigma, "scratch")
            lp = proportional_limit(n / d, k / d, sigma**2 / d, "pretrained")
            ls = proportional_limit(n / d, k / d, sigma**2 / d, "scratch")
            mc = mc_paired_starts(n, d, k, sigma, ("pretrained", "scratch"), n_tasks=n_tasks, rng=rng)
            vals = [n / d, k / d, n, k, pre["loss_after"], scr["loss_after"], lp["loss_after"] * d,
                    ls["loss_after"] * d, mc["pretrained"]["loss_after"], mc["pretrained"]["loss_after_se"],
                    mc["scratch"]["loss_after"], mc["scratch"]["loss_after_se"], mc["diff"], mc["diff_se"]]
            for key, v in zip(names, vals):
                rows[key].append(v)
            if progress is not None:
                progress(n, k)
    rows["crossover"] = cross
    rows["d"], rows["sigma"] = d, float(sigma)
    return rows


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


#: Sizes of the sweeps of chapters 04 and 05: ``"ci"`` runs live in the book, ``"full"`` is shipped
#: (``scripts/theory_sweeps.py --full``).
SWEEP_PROFILES = {
    "ci": {
        "fig1_isotropic": dict(d=20, alphas=[0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0],
                               kappas=[0.25, 1.0, 4.0], sigma=0.5, n_tasks=1000, seed=4),
        "scratch_vs_pretrained": dict(d=20, alphas=[0.5, 1.0, 2.0], kappas=[0.25, 0.5, 1, 2, 3, 4, 6, 8],
                                      sigma=0.5, n_tasks=1000, seed=5),
    },
    "full": {
        "fig1_isotropic": dict(d=100, alphas=[0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
                                              4.0],
                               kappas=[0.25, 1.0, 4.0], sigma=0.5, n_tasks=10_000, seed=104),
        "scratch_vs_pretrained": dict(d=100, alphas=[0.5, 1.0, 2.0],
                                      kappas=[0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8],
                                      sigma=0.5, n_tasks=10_000, seed=105),
    },
}


# ---------------------------------------------------------------------------------------------------------
# Figures of chapters 04 and 05 (used for the live CI run and for the shipped full-size result)
# ---------------------------------------------------------------------------------------------------------


def plot_sweep_context_length(rows: dict, axes=None, title_suffix: str = ""):
    """Figure 1: loss (``/ d``) before/after one optimal step and the improvement against ``n / d``.

    Lines: exact theory at the sweep's ``d`` (dense integer ``n``); dashed: proportional limit; markers with
    2-standard-error bars: Monte Carlo. ``rows`` is the output of :func:`sweep_context_length` (or its
    JSON).
    """
    import matplotlib.pyplot as plt

    from ..plotting import theory_vs_simulation

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    alpha = np.asarray(rows["alpha"])
    kappa = np.asarray(rows["kappa"])
    n_arr = np.asarray(rows["n"])
    d = int(rows["d"])
    sigma = float(rows["sigma"])
    n_dense = np.arange(1, int(n_arr.max()) + 1)
    for j, kap in enumerate(np.unique(kappa)):
        m = kappa == kap
        k = int(np.asarray(rows["k"])[m][0])
        th = isotropic_one_step(n_dense, d, k, sigma, "pretrained")
        lim = proportional_limit(n_dense / d, k / d, sigma**2 / d, "pretrained")
        color = f"C{j}"
        theory_vs_simulation(axes[0], alpha[m], th["loss_after"] / d, np.asarray(rows["mc_loss_after"])[m] / d,
                             np.asarray(rows["mc_loss_after_se"])[m] / d, label=f"after TTT, k/d={kap:g}",
                             color=color, x_theory=n_dense / d)
        axes[0].plot(n_dense / d, lim["loss_after"], "--", color=color, lw=1, label=f"limit d→∞, k/d={kap:g}")
        theory_vs_simulation(axes[1], alpha[m], th["improvement"] / d, np.asarray(rows["mc_improvement"])[m] / d,
                             np.asarray(rows["mc_improvement_se"])[m] / d, label=f"k/d={kap:g}", color=color,
                             x_theory=n_dense / d)
        axes[1].plot(n_dense / d, lim["improvement"], "--", color=color, lw=1, label=f"limit d→∞, k/d={kap:g}")
        if j == 0:
            m0 = m
            axes[0].plot(n_dense / d, th["loss_before"] / d, "k-", lw=1.5, label="before TTT, W* (theory)")
            axes[0].errorbar(alpha[m0], np.asarray(rows["mc_loss_before"])[m0] / d,
                             yerr=2 * np.asarray(rows["mc_loss_before_se"])[m0] / d, fmt="ks", ms=3,
                             label="before TTT (simulation)")
    axes[0].set(xscale="log", xlabel="context length / dimension  n/d", ylabel="test loss / d",
                title=f"(a) Test loss before and after one TTT step{title_suffix}")
    axes[1].set(xscale="log", xlabel="context length / dimension  n/d",
                ylabel="improvement (loss before − after) / d",
                title=f"(b) Improvement from one TTT step{title_suffix}")
    for ax in axes:
        ax.legend(fontsize=7)
    return axes


def plot_sweep_starts(rows: dict, axes=None, title_suffix: str = ""):
    """Scratch vs pretrained: loss after one optimal step (``/ d``) against ``k / d``, one panel per ``n/d``.

    Lines: exact theory (solid: from ``W*``, dotted: from ``0``), thin dashed: proportional limit; markers:
    Monte Carlo (paired problems); vertical line: the exact crossover ``k*``.
    """
    import matplotlib.pyplot as plt

    alpha = np.asarray(rows["alpha"])
    alphas = np.unique(alpha)
    if axes is None:
        _, axes = plt.subplots(1, len(alphas), figsize=(4.2 * len(alphas), 4), sharey=True)
    axes = np.atleast_1d(axes)
    kappa = np.asarray(rows["kappa"])
    n_arr, k_arr = np.asarray(rows["n"]), np.asarray(rows["k"])
    d = int(rows["d"])
    sigma = float(rows["sigma"])
    cross = rows["crossover"]
    for ax, a in zip(axes, alphas):
        m = alpha == a
        n = int(n_arr[m][0])
        k_dense = np.unique(np.round(np.geomspace(1, k_arr.max(), 200)).astype(int))
        for start, style, key, color in (("pretrained", "-", "pre", "C0"), ("scratch", ":", "scr", "C3")):
            th = isotropic_one_step(n, d, k_dense, sigma, start)
            lim = proportional_limit(n / d, k_dense / d, sigma**2 / d, start)
            ax.plot(k_dense / d, th["loss_after"] / d, style, color=color, label=f"from {start} (theory, d={d})")
            ax.plot(k_dense / d, lim["loss_after"], "--", color=color, lw=0.8, alpha=0.7,
                    label=f"from {start} (limit d→∞)")
            ax.errorbar(kappa[m], np.asarray(rows[f"{key}_mc"])[m] / d,
                        yerr=2 * np.asarray(rows[f"{key}_mc_se"])[m] / d, fmt="o" if key == "pre" else "s",
                        ms=4, capsize=2, color=color, label=f"from {start} (simulation)")
        i = list(np.round(cross["alpha"], 12)).index(round(float(a), 12))
        ax.axvline(cross["k_star_exact"][i] / d, color="k", lw=0.8, label="crossover k*/d (exact)")
        ax.axvline(cross["k_star_limit"][i] / d, color="gray", ls="--", lw=0.8, label="crossover (limit)")
        ax.set(xscale="log", xlabel="TTT set size / dimension  k/d", title=f"n/d = {a:g}{title_suffix}")
    axes[0].set_ylabel("test loss after one TTT step / d")
    axes[0].legend(fontsize=7)
    return axes
