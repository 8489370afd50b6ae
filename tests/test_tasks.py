import numpy as np
import pytest

from ttt_helpers.theory import tasks


def test_shapes_and_u():
    b = tasks.sample_tasks(0, n_tasks=7, n=5, d=3, sigma=0.2, n_queries=4)
    assert b.X.shape == (7, 5, 3) and b.y.shape == (7, 5)
    assert b.x_query.shape == (7, 4, 3) and b.y_query.shape == (7, 4) and b.beta.shape == (7, 3)
    assert np.allclose(b.u[2], b.X[2].T @ b.y[2])


def test_seeded_and_reproducible():
    a = tasks.sample_tasks(np.random.default_rng(5), 4, 3, 2)
    b = tasks.sample_tasks(5, 4, 3, 2)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.beta, b.beta)
    c = tasks.sample_tasks(6, 4, 3, 2)
    assert not np.array_equal(a.X, c.X)


def test_noiseless_labels_are_linear():
    b = tasks.sample_tasks(1, 3, 6, 4, sigma=0.0)
    assert np.allclose(b.y, np.einsum("tnd,td->tn", b.X, b.beta))


def test_beta_covariance_matches():
    S = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])  # singular: low rank allowed
    beta = tasks.sample_beta(2, 200_000, 3, S)
    emp = np.cov(beta.T)
    assert np.allclose(emp, S, atol=0.03)
    assert np.allclose(beta[:, 2], 0.0)


def test_feature_covariance_and_noise():
    Sx = np.diag([4.0, 1.0])
    b = tasks.sample_prompts(3, np.zeros((50_000, 2)), n=2, sigma=0.5, Sigma_x=Sx)
    assert np.allclose(np.cov(b.X.reshape(-1, 2).T), Sx, atol=0.1)
    assert abs(b.y.std() - 0.5) < 0.01  # beta = 0: labels are pure noise


def test_empty_context_is_allowed():
    b = tasks.sample_tasks(0, 2, 0, 3)
    assert b.X.shape == (2, 0, 3) and np.allclose(b.u, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_tasks=0, n=3, d=2), "n_tasks"),
        (dict(n_tasks=2, n=-1, d=2), "n must be"),
        (dict(n_tasks=2, n=3, d=0), "d must be"),
        (dict(n_tasks=2, n=3, d=2, sigma=-1.0), "sigma"),
        (dict(n_tasks=2, n=3, d=2, sigma=float("nan")), "sigma"),
        (dict(n_tasks=2.5, n=3, d=2), "n_tasks"),
        (dict(n_tasks=2, n=3, d=2, Sigma_beta=np.eye(3)), "shape"),
        (dict(n_tasks=2, n=3, d=2, Sigma_beta=np.array([[1.0, 2.0], [0.0, 1.0]])), "symmetric"),
        (dict(n_tasks=2, n=3, d=2, Sigma_beta=np.array([[1.0, 0.0], [0.0, -1.0]])), "semi-definite"),
        (dict(n_tasks=2, n=3, d=2, Sigma_beta=np.array([[1.0, np.nan], [np.nan, 1.0]])), "finite"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tasks.sample_tasks(0, **kwargs)


def test_bad_rng():
    with pytest.raises(ValueError, match="rng"):
        tasks.sample_tasks("seed", 2, 3, 2)
    with pytest.raises(ValueError, match="finite"):
        tasks.sample_prompts(0, np.array([[np.inf, 0.0]]), n=3)
