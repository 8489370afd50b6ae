"""Tests for ttt_helpers.theory.isotropic: exact one-step theory, Gaussian approximation, proportional limit."""

import numpy as np
import pytest
import sympy as sp

from ttt_helpers.theory import isotropic as iso
from ttt_helpers.theory.pretraining import isotropic_optimal_loss


def test_loss_before_is_the_pretrained_loss():
    ns = np.array([1, 5, 20, 80])
    r = iso.isotropic_one_step(ns, 10, 7, 0.5, "pretrained")
    np.testing.assert_allclose(r["loss_before"], isotropic_optimal_loss(ns, 10, 0.5), rtol=1e-12)
    r0 = iso.isotropic_one_step(ns, 10, 7, 0.5, "scratch")
    np.testing.assert_allclose(r0["loss_before"], 10 + 0.25, rtol=1e-12)
    assert np.all(r["improvement"] > 0) and np.all(r["eta_star"] > 0)


def test_pretrained_noiseless_closed_form():
    n, d, k = 13, 9, 4
    r = iso.isotropic_one_step(n, d, k, 0.0, "pretrained")
    P = (d**3 + d**2 * n**2 + 5 * d**2 * n + 3 * d**2 + d * n**3 + 2 * d * n**2 - 2 * d * n - d + n**3
         + 17 * n**2 + 53 * n + 45)
    closed = k / (k + d + 1) * d**3 * n**2 * (d - 1) ** 2 * (d + 2) / ((d + 4) * (n + d + 1) ** 2 * P)
    assert np.isclose(r["improvement"], closed, rtol=1e-12)


def test_gaussian_approximation_matches_first_two_moments_and_converges():
    ex, ga = iso.u_moments_given_beta("exact"), iso.u_moments_given_beta("gauss")
    for key in ("s", "s2", "t"):
        assert sp.expand(ex[key] - ga[key]) == 0
    errs = []
    for d in (20, 80, 320):
        a = iso.isotropic_one_step(d, d, d, 0.0, "pretrained", method="exact")["loss_after"]
        b = iso.isotropic_one_step(d, d, d, 0.0, "pretrained", method="gauss")["loss_after"]
        errs.append(abs(a - b) / a)
    assert errs[0] > errs[1] > errs[2] and errs[2] < 2e-3


def test_proportional_limit_is_the_large_d_limit():
    alpha, kappa = 0.5, 2.0
    lim = iso.proportional_limit(alpha, kappa, 0.0, "pretrained")
    d = 4000
    r = iso.isotropic_one_step(int(alpha * d), d, int(kappa * d), 0.0, "pretrained")
    assert abs(r["loss_after"] / d - lim["loss_after"]) < 2e-3
    assert np.isclose(lim["improvement"], kappa / ((1 + alpha) ** 3 * (1 + kappa)), rtol=1e-12)
    scratch = iso.proportional_limit(alpha, kappa, 0.0, "scratch")
    assert np.isclose(scratch["loss_after"], 1 / (1 + kappa), rtol=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        iso.isotropic_one_step(0, 5, 3)
    with pytest.raises(ValueError):
        iso.isotropic_one_step(4, 5, 2.5)
    with pytest.raises(ValueError):
        iso.isotropic_one_step(4, 5, 3, method="laplace")
    with pytest.raises(ValueError):
        iso.isotropic_one_step(4, 5, 3, c="warmish")
    with pytest.raises(ValueError):
        iso.proportional_limit(-1.0, 1.0)


def test_crossover_limit_and_finite_d():
    alphas = np.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(iso.crossover_kappa_limit(alphas, 0.0), (1 + alphas) ** 2 / (2 + alphas), rtol=1e-12)
    d = 10_000
    k_star = iso.scratch_crossover_k(d, d, 0.0)
    assert abs(k_star / d - 4 / 3) < 0.01
    # at k* the two starts give the same loss
    lo = iso.isotropic_one_step(50, 100, int(np.floor(iso.scratch_crossover_k(50, 100))), 0.0, "scratch")
    hi = iso.isotropic_one_step(50, 100, int(np.floor(iso.scratch_crossover_k(50, 100))), 0.0, "pretrained")
    assert lo["loss_after"] >= hi["loss_after"]
    with pytest.raises(ValueError):
        iso.crossover_kappa_limit(0.0)


def test_improvement_peak_and_expansion():
    exp = iso.small_context_expansion()
    nu, eps = exp["symbols"]
    assert sp.simplify(exp["series"] - (1 - eps * (3 * nu + nu**-2))) == 0
    pk = iso.improvement_peak(6400, 6400)
    assert abs(pk["n_star"] / pk["n_star_asymptotic"] - 1) < 0.08


def test_loss_at_step_is_minimised_at_eta_star():
    r = iso.isotropic_one_step(10, 8, 6, 0.5, "pretrained")
    etas = r["eta_star"] * np.array([0.5, 1.0, 1.5])
    vals = iso.isotropic_loss_at_step(10, 8, 6, etas, 0.5, "pretrained")
    assert np.argmin(vals) == 1 and np.isclose(vals[1], r["loss_after"], rtol=1e-12)
    assert np.isclose(iso.isotropic_loss_at_step(10, 8, 6, 0.0, 0.5), r["loss_before"], rtol=1e-12)
    with pytest.raises(ValueError):
        iso.isotropic_loss_at_step(10, 8, 6, np.inf)
