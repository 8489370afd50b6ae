"""Tests for ttt_helpers.theory.moments: Isserlis expectations, chi-square moments and the Wick contraction engine."""

import numpy as np
import pytest
import sympy as sp

from ttt_helpers.theory import moments
from ttt_helpers.theory.isotropic import SYMBOLS, u_moments_given_beta

n, d = sp.symbols("n d", positive=True)
I_, J_, A_, B_, C_ = (n, "i"), (n, "j"), (d, "a"), (d, "b"), (d, "c")


def test_standard_normal_and_chi2_moments():
    assert [moments.standard_normal_moment(p) for p in range(7)] == [1, 0, 1, 0, 3, 0, 15]
    q = sp.Symbol("q")
    assert sp.expand(moments.chi2_moment(q, 2) - q * (q + 2)) == 0
    z = sp.Symbol("z")
    e = moments.expect_independent((1 + z) ** 4, {z: moments.standard_normal_moment})
    assert e == 1 + 6 + 3


def test_wick_wishart_moments():
    # E[(X^T X)_{ac}] = n delta_ac ; E[((X^T X)^2)_{ac}] = n (n + d + 1) delta_ac
    first = moments.wick_expectation([(1, [("X", (I_, A_)), ("X", (I_, C_))])], {"X": 1})
    assert sp.expand(first - n * sp.Symbol("delta[a,c]")) == 0
    second = moments.wick_expectation([(1, [("X", (I_, A_)), ("X", (I_, B_)), ("X", (J_, B_)), ("X", (J_, C_))])],
                                      {"X": 1})
    assert sp.expand(second - n * (n + d + 1) * sp.Symbol("delta[a,c]")) == 0
    # E[tr (X^T X)^3] = n d (n^2 + d^2 + 3 n d + 3 n + 3 d + 4)
    K = (n, "k")
    third = moments.wick_expectation([(1, [("X", (I_, A_)), ("X", (I_, B_)), ("X", (J_, B_)), ("X", (J_, C_)),
                                           ("X", (K, C_)), ("X", (K, A_))])], {"X": 1})
    assert sp.expand(third - n * d * (n**2 + d**2 + 3 * n * d + 3 * n + 3 * d + 4)) == 0


def test_wick_with_deterministic_matrix_and_vectors():
    # E[x^T A x x^T A x] = tr(A)^2 + 2 tr(A^2) for symmetric A (x in R^d)
    terms = [(1, [("x", (A_,)), ("A", (A_, B_)), ("x", (B_,)), ("x", (C_,)), ("A", (C_, (d, "e"))), ("x", ((d, "e"),))])]
    e = moments.wick_expectation(terms, {"x": 1})
    assert sp.expand(e - sp.Symbol("tr(A)") ** 2 - 2 * sp.Symbol("tr(A*A)")) == 0
    # E[(v^T x)(x^T w)] = <v, w>
    e2 = moments.wick_expectation([(1, [("v", (A_,)), ("x", (A_,)), ("x", (B_,)), ("w", (B_,))])], {"x": 1})
    assert e2 == sp.Symbol("<v,w>")


def test_wick_agrees_with_rotation_moments():
    s2 = sp.Symbol("sigma2", positive=True)
    g = {"X": 1, "xi": s2}
    ex = u_moments_given_beta("exact")
    sub = {SYMBOLS["n"]: n, SYMBOLS["d"]: d, SYMBOLS["s2"]: s2, SYMBOLS["b2"]: sp.Symbol("<beta,beta>")}
    uu, bu = moments.inner_u_u(n, d), moments.inner_beta_u(n, d)
    pairs = {
        "t": uu, "s2": moments.tensor_product(bu, bu),
        "t2": moments.tensor_product(moments.inner_u_u(n, d), moments.inner_u_u(n, d)),
        "s2t": moments.tensor_product(moments.inner_beta_u(n, d), moments.inner_beta_u(n, d),
                                      moments.inner_u_u(n, d)),
    }
    for key, terms in pairs.items():
        assert sp.expand(moments.wick_expectation(terms, g) - ex[key].subs(sub)) == 0, key


def test_wick_monte_carlo():
    rng = np.random.default_rng(0)
    nn, dd, reps = 5, 3, 400_000
    X = rng.standard_normal((reps, nn, dd))
    G = np.einsum("rni,rnj->rij", X, X)
    samples = np.einsum("rij,rji->r", G, G) ** 2  # (tr (X^T X)^2)^2, an 8th moment
    terms = [(1, [("X", ((n, "i"), (d, "a"))), ("X", ((n, "i"), (d, "b"))), ("X", ((n, "j"), (d, "b"))),
                  ("X", ((n, "j"), (d, "a"))), ("X", ((n, "k"), (d, "c"))), ("X", ((n, "k"), (d, "e"))),
                  ("X", ((n, "l"), (d, "e"))), ("X", ((n, "l"), (d, "c")))])]
    exact = float(moments.wick_expectation(terms, {"X": 1}).subs({n: nn, d: dd}))
    se = samples.std(ddof=1) / np.sqrt(reps)
    assert abs(samples.mean() - exact) < 5 * se


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        moments.standard_normal_moment(-1)
    with pytest.raises(ValueError):
        moments.chi2_moment(3, 1.5)
    with pytest.raises(ValueError):
        moments.expect_independent(sp.Symbol("z"), {})
    with pytest.raises(ValueError):
        moments.wick_expectation([], {})
    with pytest.raises(ValueError):  # a label used three times
        moments.wick_expectation([(1, [("X", (I_, A_)), ("X", (I_, A_)), ("v", (A_,)), ("w", (A_,))])], {"X": 1})
