"""Tests of ttt_helpers.theory.general_covariance: trace formulas, exact A, Gaussian and exact B, families, MC."""

import numpy as np
import pytest
import sympy as sp

from ttt_helpers.theory import general_covariance as al
from ttt_helpers.theory.moments import expect_gaussian
from ttt_helpers.theory.pretraining import optimal_W, population_icl_loss


def test_quadratic_form_moments_isotropic_exact():
    d = 5
    I = np.eye(d)
    assert al.expect_quadratic_forms([I], I) == pytest.approx(d)
    assert al.expect_quadratic_forms([I, I], I) == pytest.approx(d * (d + 2))
    assert al.expect_quadratic_forms([I, I, I], I) == pytest.approx(d * (d + 2) * (d + 4))


def test_quadratic_form_moments_match_isserlis_symbolically():
    rng = np.random.default_rng(0)
    mats = [rng.integers(-2, 3, (2, 2)) for _ in range(3)]
    mats = [(M + M.T) for M in mats]
    S = np.array([[2, 1], [1, 3]])
    z = sp.symbols("z1 z2", real=True)
    v = sp.Matrix(z)
    expr = 1
    for M in mats:
        expr *= (v.T * sp.Matrix(M) * v)[0, 0]
    exact = float(expect_gaussian(expr, z, sp.Matrix(S)))
    assert al.expect_quadratic_forms(mats, S) == pytest.approx(exact, rel=1e-10)


def test_matches_isotropic_gaussian_formula():
    from ttt_helpers.theory import isotropic as iso
    d, n, k, s = 6, 9, 7, 0.3
    for c in (0.0, 0.05, 1 / (n + d + 1 + s**2)):
        th = al.one_step_theory(c * np.eye(d), n, k, s)
        ref = iso.isotropic_one_step(n, d, k, s, c, method="gauss")
        for key_a, key_b in (("loss_before", "loss_before"), ("A", "A"), ("B", "B"), ("loss_after", "loss_after")):
            assert getattr(th, key_a) == pytest.approx(ref[key_b], rel=1e-9)
        # A is exact; for scratch B is exact too
        ex = iso.isotropic_one_step(n, d, k, s, c, method="exact")
        assert th.A == pytest.approx(ex["A"], rel=1e-9)
        if c == 0.0:
            assert th.B == pytest.approx(ex["B"], rel=1e-9)


def test_loss_before_is_population_loss_and_decomposition():
    d, n, k, s = 8, 10, 12, 0.5
    Sb, St = al.subspace_pair(d, 2, 0.7, floor=0.2)
    W0 = optimal_W(n, d, s, Sb)
    th = al.one_step_theory(W0, n, k, s, St)
    assert th.loss_before == pytest.approx(population_icl_loss(W0, n, s, St), rel=1e-10)
    mm = al.misalignment_magnitude(W0, n, k, s, St)
    assert mm["loss_before"] == pytest.approx(th.loss_before, rel=1e-10)
    assert 0 < mm["misalignment_fraction"] < 1
    assert th.loss_at(th.eta_star) == pytest.approx(th.loss_after)
    assert th.loss_at(0.5 * th.eta_star) > th.loss_after


def test_conditional_B_matches_gaussian_u():
    rng = np.random.default_rng(2)
    d, n, k, s = 4, 6, 5, 0.4
    W0 = 0.05 * rng.standard_normal((d, d))
    beta = rng.standard_normal(d)
    Q = n * (n + 1) * np.outer(beta, beta) + n * (beta @ beta + s**2) * np.eye(d)
    C = n * (np.outer(beta, beta) + (beta @ beta + s**2) * np.eye(d))
    u = n * beta + rng.standard_normal((200_000, d)) @ np.linalg.cholesky(C).T
    r = beta - u @ W0.T
    val = 4 * k * ((k + d + 1) * np.sum(r**2, 1) + d * s**2) * np.einsum("ti,ij,tj->t", u, Q, u)
    got = al.conditional_B_gauss(W0, beta[None], n, k, s)[0]
    assert abs(val.mean() - got) < 4 * val.std() / np.sqrt(val.size)
    # A(beta) = (k/2) ||grad L||^2 with grad L = 2 (W0 Q - n beta beta^T)
    G = W0 @ Q - n * np.outer(beta, beta)
    assert al.conditional_A(W0, beta[None], n, k, s)[0] == pytest.approx(2 * k * np.sum(G**2), rel=1e-10)


def test_families():
    Sb, St = al.subspace_pair(10, 3, 0.4, floor=0.1, scale=2.0)
    assert np.trace(Sb) == pytest.approx(20) and np.trace(St) == pytest.approx(20)
    Pu = np.zeros((10, 10)); Pu[:3, :3] = np.eye(3)
    R = al.rotation(10, 0.4, [(i, 3 + i) for i in range(3)])
    assert np.allclose(R @ R.T, np.eye(10))
    assert np.trace(Pu @ R @ Pu @ R.T) / 3 == pytest.approx(np.cos(0.4) ** 2)
    Sb, St = al.spiked_pair(5, np.pi / 2, 4.0)
    assert St[1, 1] == pytest.approx(5.0) and St[0, 0] == pytest.approx(1.0)


def test_crossing_moves_with_alignment():
    d, n, s = 8, 8, 0.5
    ks = []
    for theta in (0.0, np.pi / 2):
        Sb, St = al.subspace_pair(d, 2, theta, floor=0.1)
        ks.append(al.scratch_pretrained_crossing(n, d, s, Sb, St))
    assert ks[1] < ks[0]


def _generic_setting(d, n, s, theta=0.9):
    """Subspace-pair target and a generic (non-symmetric, non-isotropic) start near W* of Sigma_beta."""
    Sb, St = al.subspace_pair(d, 2, theta, floor=0.1)
    W0 = optimal_W(n, d, s, Sb) + 0.1 / (n + d) * np.random.default_rng(0).standard_normal((d, d))
    return W0, St


def test_rotation_derivation_reproduces_the_gaussian_trace_formula():
    b, p, r, h, w = al.FORM_SYMBOLS
    n = al.PARAM_SYMBOLS[0]
    to_bpw = {r: b - 2 * n * w + n**2 * p, h: w - n * p}
    hand = al.conditional_polynomials()
    for method in al.METHODS:
        rot = al.rotation_polynomials(method)
        assert not rot["B"].has(r) and not rot["B"].has(h)
        for key in ("A", "L0"):  # exact under both
            assert sp.expand(rot[key] - hand[key].subs(to_bpw)) == 0
    assert sp.expand(al.rotation_polynomials("gauss")["B"] - hand["B"].subs(to_bpw)) == 0
    assert sp.expand(al.rotation_polynomials("exact")["B"] - hand["B"].subs(to_bpw)) != 0


@pytest.mark.parametrize("n", [3, 8, 30])
def test_exact_B_reduces_to_isotropic_exact(n):
    from ttt_helpers.theory import isotropic as iso
    d, k, s = 8, 11, 0.5
    for c in (0.0, 0.04, 1 / (n + d + 1 + s**2)):
        th = al.one_step_theory(c * np.eye(d), n, k, s, method="exact")
        ref = iso.isotropic_one_step(n, d, k, s, c, method="exact")
        for key in ("loss_before", "A", "B", "loss_after"):
            assert getattr(th, key) == pytest.approx(ref[key], rel=1e-9)
        assert th.method == "exact"


def test_exact_B_equals_gaussian_for_scratch_and_exceeds_it_for_pretrained():
    d, n, k, s = 8, 6, 20, 0.5
    W0, St = _generic_setting(d, n, s)
    Z = np.zeros((d, d))
    assert al.one_step_theory(Z, n, k, s, St, "exact").B == pytest.approx(al.one_step_theory(Z, n, k, s, St).B,
                                                                           rel=1e-12)
    ex, ga = al.one_step_theory(W0, n, k, s, St, "exact"), al.one_step_theory(W0, n, k, s, St, "gauss")
    assert ex.A == ga.A and ex.loss_before == ga.loss_before
    assert ex.B > 1.1 * ga.B and ex.improvement < ga.improvement


def test_exact_trace_formula_matches_average_of_conditional():
    d, n, k, s = 6, 5, 7, 0.4
    W0, St = _generic_setting(d, n, s)
    betas = np.random.default_rng(4).multivariate_normal(np.zeros(d), St, size=200_000, method="cholesky")
    vals = al.conditional_B_exact(W0, betas, n, k, s)
    th = al.one_step_theory(W0, n, k, s, St, "exact")
    assert abs(vals.mean() - th.B) < 4.5 * vals.std(ddof=1) / np.sqrt(vals.size)


@pytest.mark.parametrize(
    "call",
    [
        lambda: al.one_step_theory(np.eye(3), 0, 2),
        lambda: al.one_step_theory(np.eye(3), 4, -1.0),
        lambda: al.one_step_theory(np.ones((3, 2)), 4, 2),
        lambda: al.one_step_theory(np.eye(3), 4, 2, Sigma_t=-np.eye(3)),
        lambda: al.one_step_theory(np.eye(3), 4, 2, sigma=-1.0),
        lambda: al.subspace_pair(6, 4, 0.1),
        lambda: al.subspace_pair(6, 2, 0.1, floor=2.0),
        lambda: al.rotation(4, 0.1, [(0, 0)]),
        lambda: al.expect_quadratic_forms([np.eye(2)] * 4, np.eye(2)),
        lambda: al.conditional_A(np.eye(3), np.ones((2, 4)), 3, 2),
        lambda: al.one_step_theory(np.eye(3), 4, 2, method="laplace"),
        lambda: al.rotation_polynomials("gauss_iso"),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(ValueError):
        call()
