"""One-line checks for the chapters: each prints what it checked and raises when the check fails.

A chapter's verification cell calls one of these instead of ``print(...)`` followed by ``assert``::

    checks.agrees(mc_mean, mc_se, theory, z=4.5, what="loss after one TTT step")
    # ✓ loss after one TTT step: within 4.5 standard errors of theory (12 points)

The printed line states the tolerance and how many values were checked, never the measured deviation
itself, so that it is the same on every machine and every CPU kernel (nbval compares it). The deviation is
written into the error message when the check fails. A failed check raises :class:`CheckFailed`, a subclass
of :class:`AssertionError`, so a failing chapter stops at that cell. The checks return ``None``, so that a
check on the last line of a cell adds no output (a returned float would print with all its digits).

The checks: :func:`agrees` (simulation vs theory, in standard errors), :func:`close` (relative and absolute
tolerance), :func:`at_most` and :func:`at_least` (bounds), :func:`same_expression` (two SymPy expressions
are identical) and :func:`holds` (a condition).
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["CheckFailed", "agrees", "close", "at_most", "at_least", "same_expression", "holds"]

MARK = "✓"


class CheckFailed(AssertionError):
    """A chapter's check did not hold."""


def _fmt(x) -> str:
    """A tolerance or bound as the reader would write it (3 significant digits)."""
    return f"{float(x):.3g}"


def _count(n: int, noun: str = "values") -> str:
    """`` (12 values)`` after a check of several values; nothing after a check of one."""
    return "" if n == 1 else f" ({n} {noun})"


def _report(what: str, message: str) -> None:
    print(f"{MARK} {what}: {message}" if what else f"{MARK} {message}")


def _arrays(*values):
    try:
        arrays = [np.asarray(v, dtype=float) for v in values]
        arrays = np.broadcast_arrays(*arrays)
    except (TypeError, ValueError) as exc:
        shapes = [np.shape(v) for v in values]
        raise ValueError(f"expected numbers or arrays of broadcastable shapes, got shapes {shapes}") from exc
    if arrays[0].size == 0:
        raise ValueError("expected at least one value to check, got an empty array")
    return arrays


def _check_tolerance(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(value)


def _where(index, shape) -> str:
    if shape == ():
        return ""
    where = tuple(int(i) for i in np.unravel_index(index, shape))
    return f" at index {where[0] if len(where) == 1 else where}"


def agrees(sim, se, theory, *, z: float = 4.5, what: str = "") -> None:
    """Check that a simulation agrees with theory within ``z`` standard errors, at every point.

    Parameters
    ----------
    sim, se, theory : float or array_like
        Simulated means, their standard errors (> 0) and the theoretical values; broadcast together.
    z : float
        Tolerance in standard errors (4.5 leaves a false alarm probability of about 7e-6 per point).
    what : str
        What is compared, for the printed line.

    Raises
    ------
    CheckFailed
        If some point lies more than ``z`` standard errors from theory (or is not finite).
    ValueError
        If a standard error is not positive or the shapes do not broadcast.
    """
    z = _check_tolerance(z, "z")
    sim, se, theory = _arrays(sim, se, theory)
    if not np.all(se > 0):
        raise ValueError(f"standard errors must be positive, got minimum {np.min(se)!r}")
    with np.errstate(invalid="ignore"):
        scores = np.abs(sim - theory) / se
    worst = int(np.argmax(np.where(np.isnan(scores), np.inf, scores)))
    largest = float(scores.flat[worst])
    if not largest <= z:
        raise CheckFailed(
            f"{what or 'simulation vs theory'}: {largest:.3g} standard errors from theory"
            f"{_where(worst, sim.shape)} (simulation {float(sim.flat[worst])!r}, theory "
            f"{float(theory.flat[worst])!r}, se {float(se.flat[worst])!r}); tolerance {_fmt(z)}"
        )
    _report(what, f"within {_fmt(z)} standard errors of theory{_count(sim.size, 'points')}")


def close(actual, expected, *, rtol: float = 0.0, atol: float = 0.0, what: str = "") -> None:
    """Check ``|actual - expected| <= atol + rtol * |expected|`` at every point.

    Parameters
    ----------
    actual, expected : float or array_like
        Broadcast together.
    rtol, atol : float
        Relative and absolute tolerance (at least one positive).
    what : str
        What is compared, for the printed line.

    Raises
    ------
    CheckFailed
        If some point is outside the tolerance (or not finite).
    """
    rtol, atol = _check_tolerance(rtol, "rtol"), _check_tolerance(atol, "atol")
    if rtol == 0 and atol == 0:
        raise ValueError("close needs a positive rtol or atol; for exact equality use holds(a == b, ...)")
    actual, expected = _arrays(actual, expected)
    with np.errstate(invalid="ignore"):
        ratio = np.abs(actual - expected) / (atol + rtol * np.abs(expected))
        gap = np.abs(actual - expected)
    worst = int(np.argmax(np.where(np.isnan(ratio), np.inf, ratio)))
    largest = float(ratio.flat[worst])
    tolerance = " + ".join(
        ([f"rtol {_fmt(rtol)}"] if rtol else []) + ([f"atol {_fmt(atol)}"] if atol else [])
    )
    if not largest <= 1:
        raise CheckFailed(
            f"{what or 'close'}: {float(actual.flat[worst])!r} differs from {float(expected.flat[worst])!r}"
            f"{_where(worst, actual.shape)} by {float(gap.flat[worst])!r}; "
            f"tolerance {tolerance}"
        )
    _report(what, f"equal within {tolerance}{_count(actual.size)}")


def _bound(values, bound, *, upper: bool, strict: bool, what: str) -> None:
    values, bound = _arrays(values, bound)
    ok = (values < bound if strict else values <= bound) if upper else (values > bound if strict else values >= bound)
    sign = ("<" if strict else "≤") if upper else (">" if strict else "≥")
    if not np.all(ok):
        bad = int(np.argmin(ok))
        raise CheckFailed(
            f"{what or 'bound'}: {float(values.flat[bad])!r}{_where(bad, values.shape)} "
            f"is not {sign} {float(bound.flat[bad])!r}"
        )
    shown = _fmt(bound.flat[0]) if np.all(bound == bound.flat[0]) else "the given bounds"
    _report(what, f"{sign} {shown}{_count(values.size)}")


def at_most(values, bound, *, strict: bool = False, what: str = "") -> None:
    """Check that every value is at most ``bound`` (below it if ``strict``); raise :class:`CheckFailed` if not.

    The printed line shows a scalar bound to 3 significant digits; pass round bounds (or a ``what`` that
    names a computed one).
    """
    _bound(values, bound, upper=True, strict=strict, what=what)


def at_least(values, bound, *, strict: bool = False, what: str = "") -> None:
    """Check that every value is at least ``bound`` (above it if ``strict``); raise :class:`CheckFailed` if not."""
    _bound(values, bound, upper=False, strict=strict, what=what)


def same_expression(lhs, rhs, *, simplify=None, what: str = "") -> None:
    """Check that two SymPy expressions (or matrices) are identical: ``simplify(lhs - rhs)`` is zero.

    Parameters
    ----------
    lhs, rhs : sympy expression or Matrix
    simplify : callable, optional
        The simplification to apply to the difference (default :func:`sympy.simplify`; :func:`sympy.expand`
        or :func:`sympy.cancel` are faster for polynomials and rational functions).
    what : str
        The identity, for the printed line.

    Raises
    ------
    CheckFailed
        If the simplified difference is not zero.
    """
    import sympy as sp

    simplify = simplify or sp.simplify
    difference = lhs - rhs
    if isinstance(difference, sp.MatrixBase):
        residue = difference.applyfunc(simplify)
        zero = residue.is_zero_matrix is True
    else:
        residue = simplify(difference)
        zero = residue == 0
    if not zero:
        raise CheckFailed(f"{what or 'identity'}: the difference simplifies to {residue}, not 0")
    _report(what, "holds symbolically")


def holds(condition, *, what: str) -> None:
    """Check that ``condition`` (a bool, or an array whose entries must all be true) holds.

    Raises
    ------
    CheckFailed
        If it does not.
    """
    if not bool(np.all(condition)):
        raise CheckFailed(f"{what}: does not hold")
    _report(what, "holds")
