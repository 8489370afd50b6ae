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


def test_covariance_root_is_canonical():
    # positive definite: the lower Cholesky factor
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 5))
    S = A @ A.T + 0.1 * np.eye(5)
    L = tasks.covariance_root(S)
    assert np.allclose(L, np.linalg.cholesky(S)) and np.allclose(np.triu(L, 1), 0)
    # singular with a repeated eigenvalue: the symmetric square root, whatever basis eigh picks
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    vals = np.array([0.0, 0.0, 2.0, 2.0, 2.0, 5.0])
    S = (Q * vals) @ Q.T
    S = (S + S.T) / 2
    R = tasks.covariance_root(S)
    assert np.allclose(R, R.T, atol=1e-12) and np.allclose(R @ R.T, S, atol=1e-12)
    # the same matrix written in a rotated eigenbasis of the repeated eigenspace gives the same root
    G, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    Q2 = Q.copy()
    Q2[:, 2:5] = Q[:, 2:5] @ G
    R2 = tasks.covariance_root((Q2 * vals) @ Q2.T)
    assert np.allclose(R, R2, atol=1e-10)
    # draws use that root: beta = z @ R^T for the generator's standard normals
    beta = tasks.sample_beta(3, 4, 6, S)
    z = np.random.default_rng(3).standard_normal((4, 6))
    assert np.allclose(beta, z @ R.T)


def test_covariance_root_rejects_bad_input():
    with pytest.raises(ValueError, match="positive semi-definite"):
        tasks.covariance_root(np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="symmetric"):
        tasks.covariance_root(np.array([[1.0, 0.5], [0.0, 1.0]]))
