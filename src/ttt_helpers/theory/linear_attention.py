"""The one-layer linear-attention model and its reduction to ``y_hat = x^T W X^T y``.

Tokens are ``z_i = [x_i; y_i]`` in ``R^{d+1}`` for the ``n`` context pairs and ``z_q = [x; 0]`` for a query.
One layer of linear attention (no softmax, no MLP), with the mask that lets a query read the context
tokens but not itself (nor other queries), outputs at the query position

    z_q + W_V (sum_i z_i z_i^T) W_K^T W_Q z_q ,

and the prediction is the last coordinate of that output (the residual adds ``0`` there). Writing
``P = W_K^T W_Q``, ``A = P[:d, :d]``, ``b^T = P[d, :d]`` and ``[v_x; v_y]`` for the last row of ``W_V``,

    y_hat = v_x^T X^T X A x + x^T (v_y A^T + b v_x^T) X^T y + v_y ||y||^2 b^T x .

The part of degree one in the labels is ``x^T W X^T y`` with ``W = v_y A^T + b v_x^T``; under the standard
parameterisation (``v_x = 0``, ``b = 0``) it is the whole prediction. The book derives this with SymPy.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..validation import check_finite_array, check_square_matrix

__all__ = [
    "predict",
    "attention_predict",
    "effective_W",
    "standard_parameters",
    "symbolic_attention_prediction",
]


def _check_prompt(X, y, x_query):
    X = check_finite_array(X, "X", ndim=(2, 3))
    y = check_finite_array(y, "y", ndim=(1, 2))
    x_query = check_finite_array(x_query, "x_query", ndim=(1, 2, 3))
    batched = X.ndim == 3
    if not batched:
        X, y = X[None], y[None]
        x_query = x_query.reshape(1, -1, X.shape[-1]) if x_query.ndim <= 2 else x_query
    elif x_query.ndim == 2:
        x_query = x_query[:, None, :]
    if y.shape != X.shape[:2]:
        raise ValueError(f"y must have shape {X.shape[:2]} to match X of shape {X.shape}, got {y.shape}")
    if x_query.shape[0] != X.shape[0] or x_query.shape[-1] != X.shape[-1]:
        raise ValueError(
            f"x_query must have shape (T, m, {X.shape[-1]}) with T = {X.shape[0]}, got {x_query.shape}"
        )
    return X, y, x_query, batched


def predict(W, X, y, x_query) -> np.ndarray:
    """Prediction of the reduced linear-attention model, ``y_hat = x^T W X^T y``.

    Parameters
    ----------
    W : array_like, shape (d, d) or (T, d, d)
        One matrix shared by all prompts, or one per prompt.
    X : array_like, shape (T, n, d) or (n, d)
    y : array_like, shape (T, n) or (n,)
    x_query : array_like, shape (T, m, d), (T, d), (m, d) or (d,)

    Returns
    -------
    ndarray, shape (T, m) (or (m,) for an unbatched prompt)
    """
    X, y, x_query, batched = _check_prompt(X, y, x_query)
    W = check_finite_array(W, "W", ndim=(2, 3))
    d = X.shape[-1]
    if W.shape[-2:] != (d, d) or (W.ndim == 3 and W.shape[0] != X.shape[0]):
        raise ValueError(f"W must have shape ({d}, {d}) or ({X.shape[0]}, {d}, {d}), got {W.shape}")
    u = np.einsum("tnd,tn->td", X, y)
    Wu = np.einsum("ij,tj->ti", W, u) if W.ndim == 2 else np.einsum("tij,tj->ti", W, u)
    out = np.einsum("tmd,td->tm", x_query, Wu)
    return out if batched else out[0]


def attention_predict(X, y, x_query, W_Q, W_K, W_V) -> np.ndarray:
    """Prediction of the full one-layer linear attention (masked so a query reads only the context).

    Parameters
    ----------
    X, y, x_query : as in :func:`predict`
    W_Q, W_K, W_V : array_like, shape (d+1, d+1)
        Query, key and value matrices acting on tokens ``[x; y]``.

    Returns
    -------
    ndarray, shape (T, m) (or (m,) for an unbatched prompt)
        The last coordinate of the attention output at each query position.
    """
    X, y, x_query, batched = _check_prompt(X, y, x_query)
    D = X.shape[-1] + 1
    W_Q = check_square_matrix(W_Q, "W_Q", D)
    W_K = check_square_matrix(W_K, "W_K", D)
    W_V = check_square_matrix(W_V, "W_V", D)
    Z = np.concatenate([X, y[..., None]], axis=-1)  # (T, n, D) context tokens
    Zq = np.concatenate([x_query, np.zeros(x_query.shape[:-1] + (1,))], axis=-1)  # (T, m, D)
    # attention scores of each query against the context keys: (T, m, n); the query is masked out as a key
    scores = np.einsum("tnD,ED,EF,tmF->tmn", Z, W_K, W_Q, Zq)
    values = np.einsum("ED,tnD->tnE", W_V, Z)  # (T, n, D)
    out = Zq + np.einsum("tmn,tnE->tmE", scores, values)
    pred = out[..., -1]
    return pred if batched else pred[0]


def effective_W(W_Q, W_K, W_V) -> np.ndarray:
    """The matrix ``W = v_y A^T + b v_x^T`` of the label-linear part of the attention prediction.

    Returns
    -------
    ndarray, shape (d, d)
    """
    W_Q = check_square_matrix(W_Q, "W_Q")
    D = W_Q.shape[0]
    W_K = check_square_matrix(W_K, "W_K", D)
    W_V = check_square_matrix(W_V, "W_V", D)
    d = D - 1
    P = W_K.T @ W_Q
    A, b = P[:d, :d], P[d, :d]
    v_x, v_y = W_V[d, :d], W_V[d, d]
    return v_y * A.T + np.outer(b, v_x)


def standard_parameters(W, v_y: float = 1.0):
    """Attention matrices in the standard parameterisation that realise a given ``W``.

    ``W_Q = diag(I_d, 0)``, ``W_K = diag(W / v_y, 0)^T``... chosen so that ``effective_W`` returns ``W``
    and the label-free and label-quadratic parts vanish (``v_x = 0``, ``b = 0``).

    Returns
    -------
    (W_Q, W_K, W_V) : tuple of ndarray, each shape (d+1, d+1)
    """
    W = check_square_matrix(W, "W")
    if v_y == 0:
        raise ValueError("v_y must be non-zero")
    d = W.shape[0]
    W_Q = np.zeros((d + 1, d + 1))
    W_Q[:d, :d] = np.eye(d)
    W_K = np.zeros((d + 1, d + 1))
    W_K[:d, :d] = W / v_y  # P = W_K^T W_Q has A = W^T / v_y, so v_y A^T = W
    W_V = np.zeros((d + 1, d + 1))
    W_V[d, d] = v_y
    return W_Q, W_K, W_V


def symbolic_attention_prediction(d: int, n: int):
    """Symbolic prediction of one-layer linear attention for a small ``d`` and ``n`` (SymPy).

    Returns
    -------
    dict
        ``yhat`` (the expanded prediction), ``linear_part`` (its part of degree one in ``y``),
        ``bilinear`` (``x^T W_eff X^T y`` with ``W_eff = v_y A^T + b v_x^T`` built from the symbols),
        ``W_eff`` and the symbol matrices ``X, y, x, W_Q, W_K, W_V``.
    """
    if not (1 <= d <= 4 and 1 <= n <= 6):
        raise ValueError(f"symbolic reduction is meant for small sizes (1 <= d <= 4, 1 <= n <= 6), got d={d}, n={n}")
    D = d + 1
    X = sp.Matrix(n, d, lambda i, j: sp.Symbol(f"X_{i + 1}{j + 1}"))
    y = sp.Matrix(n, 1, lambda i, _: sp.Symbol(f"y_{i + 1}"))
    x = sp.Matrix(d, 1, lambda i, _: sp.Symbol(f"x_{i + 1}"))
    W_Q = sp.Matrix(D, D, lambda i, j: sp.Symbol(f"q_{i + 1}{j + 1}"))
    W_K = sp.Matrix(D, D, lambda i, j: sp.Symbol(f"k_{i + 1}{j + 1}"))
    W_V = sp.Matrix(D, D, lambda i, j: sp.Symbol(f"v_{i + 1}{j + 1}"))
    Z = X.row_join(y)  # n x D, rows are context tokens
    zq = x.col_join(sp.zeros(1, 1))
    out = zq + W_V * (Z.T * Z) * W_K.T * W_Q * zq
    yhat = sp.expand(out[d, 0])
    t = sp.Symbol("t")
    scaled = sp.expand(yhat.subs({yi: t * yi for yi in y}, simultaneous=True))
    linear_part = scaled.coeff(t, 1)
    P = W_K.T * W_Q
    A, b = P[:d, :d], P[d, :d].T
    v_x, v_y = W_V[d, :d].T, W_V[d, d]
    W_eff = v_y * A.T + b * v_x.T
    bilinear = sp.expand((x.T * W_eff * X.T * y)[0, 0])
    return {
        "yhat": yhat,
        "linear_part": linear_part,
        "bilinear": bilinear,
        "W_eff": W_eff,
        "X": X,
        "y": y,
        "x": x,
        "W_Q": W_Q,
        "W_K": W_K,
        "W_V": W_V,
    }
