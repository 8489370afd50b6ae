import numpy as np
import pytest
import sympy as sp

from ttt_helpers.theory import linear_attention as la
from ttt_helpers.theory import tasks


def test_predict_matches_definition():
    rng = np.random.default_rng(0)
    b = tasks.sample_tasks(rng, 4, 6, 3, sigma=0.3, n_queries=2)
    W = rng.standard_normal((3, 3))
    out = la.predict(W, b.X, b.y, b.x_query)
    assert out.shape == (4, 2)
    assert np.isclose(out[1, 0], b.x_query[1, 0] @ W @ b.X[1].T @ b.y[1])
    # unbatched call and per-task W
    assert np.isclose(la.predict(W, b.X[1], b.y[1], b.x_query[1, 0])[0], out[1, 0])
    Ws = np.stack([W * (t + 1) for t in range(4)])
    assert np.allclose(la.predict(Ws, b.X, b.y, b.x_query)[3], 4 * out[3])


def test_attention_reduces_to_bilinear():
    rng = np.random.default_rng(1)
    b = tasks.sample_tasks(rng, 8, 9, 4, sigma=0.5, n_queries=3)
    W = rng.standard_normal((4, 4))
    full = la.attention_predict(b.X, b.y, b.x_query, *la.standard_parameters(W, v_y=2.0))
    assert np.allclose(full, la.predict(W, b.X, b.y, b.x_query), rtol=1e-12, atol=1e-12)


def test_odd_part_of_arbitrary_attention_is_effective_W():
    rng = np.random.default_rng(2)
    b = tasks.sample_tasks(rng, 5, 7, 3, sigma=0.1, n_queries=2)
    Q, K, V = (rng.standard_normal((4, 4)) for _ in range(3))
    odd = 0.5 * (la.attention_predict(b.X, b.y, b.x_query, Q, K, V) - la.attention_predict(b.X, -b.y, b.x_query, Q, K, V))
    assert np.allclose(odd, la.predict(la.effective_W(Q, K, V), b.X, b.y, b.x_query), rtol=1e-10, atol=1e-10)
    # and the even part is NOT zero for arbitrary matrices, so the check above is not vacuous
    even = 0.5 * (la.attention_predict(b.X, b.y, b.x_query, Q, K, V) + la.attention_predict(b.X, -b.y, b.x_query, Q, K, V))
    assert np.max(np.abs(even)) > 1e-3


def test_symbolic_reduction():
    sym = la.symbolic_attention_prediction(2, 2)
    assert sp.expand(sym["linear_part"] - sym["bilinear"]) == 0
    assert sym["W_eff"].shape == (2, 2)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.eye(3), np.zeros((2, 5, 3)), np.zeros((2, 4)), np.zeros((2, 1, 3))), "y must have shape"),
        ((np.eye(2), np.zeros((2, 5, 3)), np.zeros((2, 5)), np.zeros((2, 1, 3))), "W must have shape"),
        ((np.eye(3), np.zeros((2, 5, 3)), np.zeros((2, 5)), np.zeros((3, 1, 3))), "x_query"),
        ((np.eye(3), np.full((2, 5, 3), np.nan), np.zeros((2, 5)), np.zeros((2, 1, 3))), "finite"),
    ],
)
def test_predict_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        la.predict(*args)


def test_bad_attention_matrices():
    with pytest.raises(ValueError, match="W_Q"):
        la.attention_predict(np.zeros((4, 3)), np.zeros(4), np.zeros(3), np.eye(3), np.eye(4), np.eye(4))
    with pytest.raises(ValueError, match="small sizes"):
        la.symbolic_attention_prediction(10, 2)
    with pytest.raises(ValueError, match="v_y"):
        la.standard_parameters(np.eye(2), v_y=0.0)
