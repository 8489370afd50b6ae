"""Argument validation at the package's public boundary.

Every public function of :mod:`ttt_helpers` checks its inputs with these helpers, so that a bad
argument fails early with a :class:`ValueError` saying what was expected and what was given.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "check_positive_int",
    "check_nonnegative_int",
    "check_nonnegative_float",
    "check_finite_array",
    "check_square_matrix",
    "check_covariance",
]


def check_positive_int(value, name: str) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a positive integer, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value}")
    return int(value)


def check_nonnegative_int(value, name: str) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 0, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r} of type {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer (>= 0), got {value}")
    return int(value)


def check_nonnegative_float(value, name: str) -> float:
    """Return ``value`` as a ``float`` if it is a finite real number >= 0, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a non-negative real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative real number, got {value}")
    return value


def check_finite_array(a, name: str, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Convert ``a`` to a float64 array, checking its number of dimensions and that all entries are finite."""
    arr = np.asarray(a, dtype=np.float64)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimension(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} must contain only finite values, found {bad} NaN/inf entr{'y' if bad == 1 else 'ies'}")
    return arr


def check_square_matrix(a, name: str, size: int | None = None) -> np.ndarray:
    """Check that ``a`` is a finite square matrix (of side ``size`` if given)."""
    arr = check_finite_array(a, name, ndim=2)
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be square, got shape {arr.shape}")
    if size is not None and arr.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size}, {size}), got {arr.shape}")
    return arr


def check_covariance(a, name: str, size: int | None = None) -> np.ndarray:
    """Check that ``a`` is a symmetric positive semi-definite matrix (tolerance 1e-10 relative)."""
    arr = check_square_matrix(a, name, size)
    scale = max(1.0, float(np.max(np.abs(arr))) if arr.size else 1.0)
    if not np.allclose(arr, arr.T, atol=1e-10 * scale):
        raise ValueError(f"{name} must be symmetric")
    if arr.size and np.linalg.eigvalsh((arr + arr.T) / 2).min() < -1e-10 * scale:
        raise ValueError(f"{name} must be positive semi-definite")
    return arr
