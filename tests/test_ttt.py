"""Tests for ttt_helpers.theory.ttt: the TTT loss, its gradient (vs torch autograd), the step and the exact test loss."""

import numpy as np
import pytest
import torch

from ttt_helpers.theory import ttt
from ttt_helpers.theory.pretraining import population_icl_loss


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    T, n, k, d = 4, 7, 5, 3
    return dict(
        W=rng.standard_normal((d, d)) / d,
        X_ctx=rng.standard_normal((T, n, d)),
        y_ctx=rng.standard_normal((T, n)),
        X_train=rng.standard_normal((T, k, d)),
        y_train=rng.standard_normal((T, k)),
    )


def test_gradient_matches_torch_autograd(problem):
    g = ttt.ttt_gradient(**problem)
    for t in range(g.shape[0]):
        W = torch.tensor(problem["W"], requires_grad=True)
        u = torch.tensor(problem["X_ctx"][t]).T @ torch.tensor(problem["y_ctx"][t])
        Xt, yt = torch.tensor(problem["X_train"][t]), torch.tensor(problem["y_train"][t])
        loss = torch.sum((yt - Xt @ W @ u) ** 2)
        loss.backward()
        ref = W.grad.numpy()
        assert np.linalg.norm(g[t] - ref) / np.linalg.norm(ref) < 1e-12
        assert np.isclose(ttt.ttt_loss(problem["W"], problem["X_ctx"][t], problem["y_ctx"][t],
                                       problem["X_train"][t], problem["y_train"][t]), loss.item(), rtol=1e-12)


def test_step_is_rank_one_update(problem):
    eta = 0.01
    W1 = ttt.ttt_step(eta=eta, **problem)
    delta = W1 - problem["W"]
    for t in range(delta.shape[0]):
        s = np.linalg.svd(delta[t], compute_uv=False)
        assert s[1] < 1e-12 * s[0]


def test_step_loss_coefficients_reproduce_the_loss(problem):
    rng = np.random.default_rng(1)
    T, d = problem["X_ctx"].shape[0], problem["W"].shape[0]
    beta = rng.standard_normal((T, d))
    G = -ttt.ttt_gradient(**problem)
    l0, l1, l2 = ttt.step_loss_coefficients(problem["W"], G, beta, n=9, sigma=0.4)
    for eta in (-0.3, 0.0, 0.2, 1.5):
        direct = ttt.conditional_test_loss(problem["W"] + eta * G, beta, 9, 0.4)
        np.testing.assert_allclose(l0 + eta * l1 + eta**2 * l2, direct, rtol=1e-10)
    assert np.all(l2 >= 0)
    eta_star = ttt.optimal_step_size(l1, l2)
    grid = eta_star + np.linspace(-1e-3, 1e-3, 5)
    means = [np.mean(l0 + e * l1 + e**2 * l2) for e in grid]
    assert np.argmin(means) == 2


def test_conditional_loss_averages_to_population_loss():
    rng = np.random.default_rng(2)
    d, n, sigma = 4, 6, 0.7
    W = rng.standard_normal((d, d)) / d
    beta = rng.standard_normal((200_000, d))
    mc = ttt.conditional_test_loss(W, beta, n, sigma).mean()
    assert abs(mc - population_icl_loss(W, n, sigma)) / population_icl_loss(W, n, sigma) < 0.01


def test_bad_inputs_raise(problem):
    bad = dict(problem, y_train=problem["y_train"][:, :-1])
    with pytest.raises(ValueError):
        ttt.ttt_gradient(**bad)
    with pytest.raises(ValueError):
        ttt.ttt_step(eta=np.nan, **problem)
    with pytest.raises(ValueError):
        ttt.conditional_test_loss(np.eye(3), np.ones((2, 4)), 3)
    with pytest.raises(ValueError):
        ttt.step_loss_coefficients(np.eye(3), np.eye(2), np.ones(3), 3)
    with pytest.raises(ValueError):
        ttt.optimal_step_size(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError):
        ttt.sample_ttt_problems(0, 2, 3, 0, 2)
