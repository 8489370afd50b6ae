import numpy as np
import pytest

from ttt_helpers.theory import pretraining as pt


def test_isotropic_optimum_closed_form():
    W = pt.optimal_W(10, 4, sigma=0.5)
    assert np.allclose(W, np.eye(4) / (10 + 4 + 1 + 0.25))
    assert np.isclose(pt.population_icl_loss(W, 10, sigma=0.5), pt.isotropic_optimal_loss(10, 4, 0.5))


def test_optimum_is_stationary_and_minimal():
    rng = np.random.default_rng(0)
    S = np.diag([3.0, 1.0, 0.2])
    W = pt.optimal_W(6, 3, sigma=0.3, Sigma_beta=S)
    base = pt.population_icl_loss(W, 6, 0.3, S)
    for _ in range(20):
        E = rng.standard_normal((3, 3)) * 1e-3
        assert pt.population_icl_loss(W + E, 6, 0.3, S) > base
    # numerical gradient vanishes
    h, grad = 1e-6, np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            E = np.zeros((3, 3)); E[i, j] = h
            grad[i, j] = (pt.population_icl_loss(W + E, 6, 0.3, S) - pt.population_icl_loss(W - E, 6, 0.3, S)) / (2 * h)
    assert np.max(np.abs(grad)) < 1e-6


def test_monte_carlo_agrees_with_theory():
    S = np.diag([2.0, 0.5])
    W = np.array([[0.1, 0.02], [0.0, 0.05]])
    mean, se = pt.mc_icl_loss(W, 5, sigma=0.4, Sigma_beta=S, n_tasks=100_000, rng=1, n_queries=2)
    theory = pt.population_icl_loss(W, 5, 0.4, S)
    assert abs(mean - theory) < 4 * se
    assert se / theory < 0.01


def test_zero_context_loss_is_signal_plus_noise():
    assert np.isclose(pt.isotropic_optimal_loss(0, 5, 1.0), 5 + 1.0)
    assert np.allclose(pt.isotropic_optimal_loss(np.array([0, 1e9]), 3, 0.0), [3.0, 0.0], atol=1e-6)


def test_sgd_recovers_optimum():
    W, hist = pt.train_W_sgd(4, 2, sigma=0.2, steps=300, batch=512, lr=0.05, seed=3)
    Wstar = pt.optimal_W(4, 2, 0.2)
    assert np.linalg.norm(W - Wstar) / np.linalg.norm(Wstar) < 0.03
    assert hist.shape == (300,) and hist[-50:].mean() < hist[:10].mean()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pt.optimal_W(-1, 3), "n must be"),
        (lambda: pt.optimal_W(3, 0), "d must be"),
        (lambda: pt.optimal_W(3, 2, Sigma_beta=np.eye(3)), "shape"),
        (lambda: pt.population_icl_loss(np.ones((2, 3)), 3), "square"),
        (lambda: pt.population_icl_loss(np.full((2, 2), np.nan), 3), "finite"),
        (lambda: pt.isotropic_optimal_loss(-1, 3), "non-negative"),
        (lambda: pt.mc_icl_loss(np.eye(2), 3, n_tasks=0), "n_tasks"),
        (lambda: pt.train_W_sgd(3, 2, steps=0), "steps"),
        (lambda: pt.train_W_sgd(3, 2, average_from=1.0), "average_from"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
