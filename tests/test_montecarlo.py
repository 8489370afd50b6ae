"""Tests of ttt_helpers.theory.montecarlo: the simulation engine against the exact one-step theory."""

import numpy as np
import pytest

from test_general_covariance import _generic_setting
from ttt_helpers.theory import general_covariance as al
from ttt_helpers.theory import isotropic as iso
from ttt_helpers.theory import montecarlo
from ttt_helpers.theory.pretraining import optimal_W
from ttt_helpers.theory.ttt import sample_ttt_problems


@pytest.mark.parametrize("c", ["pretrained", "scratch", 0.03])
def test_monte_carlo_agrees_with_exact_theory(c):
    n, d, k, sigma = 8, 6, 5, 0.5
    th = iso.isotropic_one_step(n, d, k, sigma, c)
    mc = montecarlo.mc_one_step(n, d, k, sigma, c, n_tasks=60_000, rng=3, chunk=20_000)
    assert abs(mc["loss_after"] - th["loss_after"]) < 4.5 * mc["loss_after_se"]
    assert abs(mc["A_hat"] - th["A"]) < 4.5 * mc["A_hat_se"]
    assert abs(mc["B_hat"] - th["B"]) < 4.5 * mc["B_hat_se"]


def test_naive_loop_agrees_with_vectorised_engine():
    n, d, k = 6, 4, 3
    th = iso.isotropic_one_step(n, d, k, 0.3, "pretrained")
    nv = montecarlo.mc_one_step_naive(n, d, k, 0.3, "pretrained", n_tasks=3000, rng=5)
    assert abs(nv["loss_after"] - th["loss_after"]) < 4.5 * nv["loss_after_se"]


def test_paired_starts():
    out = montecarlo.mc_paired_starts(6, 5, 20, 0.5, n_tasks=4000, rng=0)
    th = iso.isotropic_one_step(6, 5, 20, 0.5, "scratch")["loss_after"] - iso.isotropic_one_step(
        6, 5, 20, 0.5, "pretrained")["loss_after"]
    assert abs(out["diff"] - th) < 4.5 * out["diff_se"]
    with pytest.raises(ValueError):
        montecarlo.mc_paired_starts(6, 5, 20, starts=("pretrained",))
    with pytest.raises(ValueError):
        montecarlo.mc_one_step(4, 5, 0)


def test_A_exact_and_B_close_by_monte_carlo():
    d, n, k, s = 6, 10, 8, 0.5
    Sb, St = al.subspace_pair(d, 2, 0.9, floor=0.3)
    W0 = optimal_W(n, d, s, Sb)
    th = al.one_step_theory(W0, n, k, s, St)
    mc = montecarlo.mc_coefficients(sample_ttt_problems(1, 60_000, n, k, d, sigma=s, Sigma_beta=St), W0, n, s)
    assert abs(mc["A"] - th.A) < 4 * mc["A_se"]
    assert abs(mc["L0"] - th.loss_before) < 4 * mc["L0_se"]
    assert abs(mc["B"] / th.B - 1) < 0.25  # Gaussian approximation (finite n): within 25 %


@pytest.mark.parametrize("d,n,k", [(6, 3, 10), (6, 6, 6), (6, 24, 10)])
def test_conditional_exact_B_matches_simulated_contexts(d, n, k):
    """Fixed task: the exact B(beta) agrees with simulated contexts and training queries; the Gaussian does not."""
    s = 0.5
    W0, St = _generic_setting(d, n, s)
    beta = np.random.default_rng(1).multivariate_normal(np.zeros(d), St, method="cholesky")
    T = 60_000
    prob = sample_ttt_problems(3, T, n, k, d, sigma=s, beta=np.tile(beta, (T, 1)))
    b = montecarlo.mc_coefficients(prob, W0, n, s)["b"]
    se = b.std(ddof=1) / np.sqrt(T)
    exact = al.conditional_B_exact(W0, beta[None], n, k, s)[0]
    gauss = al.conditional_B_gauss(W0, beta[None], n, k, s)[0]
    assert abs(b.mean() - exact) < 4.5 * se
    assert abs(b.mean() - gauss) > 6 * se


@pytest.mark.parametrize("d,n,k", [(6, 3, 10), (6, 24, 10)])
def test_exact_one_step_agrees_with_simulation(d, n, k):
    s = 0.5
    W0, St = _generic_setting(d, n, s)
    r = montecarlo.mc_check_one_step(W0, n, k, s, St, 100_000, np.random.default_rng(5))
    assert abs(r["A_mc"] - r["A"]) < 4.5 * r["A_mc_se"]
    assert abs(r["B_mc"] - r["B_exact"]) < 4.5 * r["B_mc_se"]
    assert abs(r["gain_mc"] - r["gain_exact"]) < 4.5 * r["gain_mc_se"]
    assert abs(r["gain_mc_at_gauss_eta"] - r["gain_exact_at_gauss_eta"]) < 4.5 * r["gain_mc_at_gauss_eta_se"]
    if n < d:  # where the Gaussian approximation is off by about 20 %, the simulation tells the two apart
        assert r["gain_gauss"] - r["gain_mc_at_gauss_eta"] > 4.5 * r["gain_mc_at_gauss_eta_se"]


def test_mc_one_step_losses_is_built_on_mc_per_task():
    d, n, k, s = 4, 5, 3, 0.3
    W0, St = _generic_setting(d, n, s)
    Z = np.zeros((d, d))
    before, after = montecarlo.mc_one_step_losses([W0, Z], [0.01, 0.02], n, k, s, St, 700, 9, chunk=300)
    per = montecarlo.mc_per_task([W0, Z], n, k, s, St, 700, 9, chunk=300)
    np.testing.assert_array_equal(before[1], per[1]["l0"])
    np.testing.assert_array_equal(after[0], per[0]["l0"] - 0.02 * per[0]["a"] + 0.0001 * per[0]["b"])
    with pytest.raises(ValueError):
        montecarlo.mc_one_step_losses([W0, Z], [0.01], n, k, s, St, 10, 0)
