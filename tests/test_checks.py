import numpy as np
import pytest
import sympy as sp

from ttt_helpers import checks
from ttt_helpers.checks import CheckFailed


def test_agrees_prints_tolerance_and_count_not_the_deviation(capsys):
    result = checks.agrees([1.0, 2.1, 2.95], [0.1, 0.1, 0.1], [1.0, 2.0, 3.0], z=4.5, what="loss after TTT")
    out = capsys.readouterr().out
    assert out == "✓ loss after TTT: within 4.5 standard errors of theory (3 points)\n"
    assert result is None  # nothing for a notebook cell to display after the line


def test_agrees_raises_with_the_offending_point():
    with pytest.raises(CheckFailed, match=r"gain: 5 standard errors from theory at index 1 .*tolerance 4.5"):
        checks.agrees([1.0, 2.5], 0.1, [1.0, 2.0], what="gain")
    with pytest.raises(AssertionError):  # CheckFailed is an AssertionError: a chapter stops at the cell
        checks.agrees(0.0, 1.0, 5.0, z=4.5)


def test_agrees_boundary_nan_and_bad_arguments(capsys):
    checks.agrees(4.5, 1.0, 0.0, z=4.5)  # on the boundary: passes
    assert capsys.readouterr().out == "✓ within 4.5 standard errors of theory\n"
    with pytest.raises(CheckFailed):
        checks.agrees([1.0, np.nan], 1.0, [1.0, 1.0])
    with pytest.raises(ValueError, match="standard errors must be positive"):
        checks.agrees(1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="broadcastable"):
        checks.agrees([1.0, 2.0], [1.0, 1.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="z must be"):
        checks.agrees(1.0, 1.0, 1.0, z=-1)


def test_close(capsys):
    checks.close([1.0, 2.0], [1.0 + 1e-12, 2.0], rtol=1e-10, what="closed form")
    assert capsys.readouterr().out == "✓ closed form: equal within rtol 1e-10 (2 values)\n"
    assert checks.close(0.0, 1e-9, atol=1e-8, rtol=1e-3) is None
    assert capsys.readouterr().out == "✓ equal within rtol 0.001 + atol 1e-08\n"
    with pytest.raises(CheckFailed, match=r"W: 1.1 differs from 1.0 at index \(0, 1\)"):
        checks.close([[1.0, 1.1]], [[1.0, 1.0]], rtol=0.05, what="W")
    with pytest.raises(CheckFailed):
        checks.close(np.inf, np.inf, rtol=0.1)
    with pytest.raises(ValueError, match="positive rtol or atol"):
        checks.close(1.0, 1.0)


def test_bounds(capsys):
    checks.at_most([0.01, 0.02], 0.05, what="relative error")
    checks.at_least(np.array([3, 4]), 3, what="rank")
    checks.at_least(1.0, 0.0, strict=True, what="gain")
    checks.at_most([1.0, 2.0], [1.5, 2.5], what="loss after vs before")
    assert capsys.readouterr().out.splitlines() == [
        "✓ relative error: ≤ 0.05 (2 values)",
        "✓ rank: ≥ 3 (2 values)",
        "✓ gain: > 0",
        "✓ loss after vs before: ≤ the given bounds (2 values)",
    ]
    with pytest.raises(CheckFailed, match=r"0.06 at index 1 is not ≤ 0.05"):
        checks.at_most([0.01, 0.06], 0.05)
    with pytest.raises(CheckFailed, match="is not >"):
        checks.at_least(0.0, 0.0, strict=True)
    with pytest.raises(CheckFailed):
        checks.at_least([np.nan], 0.0)


def test_same_expression(capsys):
    x, y = sp.symbols("x y")
    checks.same_expression((x + y) ** 2, x**2 + 2 * x * y + y**2, simplify=sp.expand, what="binomial")
    checks.same_expression(sp.Matrix([[sp.sin(x) ** 2 + sp.cos(x) ** 2]]), sp.eye(1), what="Pythagoras")
    assert capsys.readouterr().out.splitlines() == ["✓ binomial: holds symbolically", "✓ Pythagoras: holds symbolically"]
    with pytest.raises(CheckFailed, match="simplifies to 2"):
        checks.same_expression(x + 2, x, what="off by two")
    with pytest.raises(CheckFailed):
        checks.same_expression(sp.Matrix([x, 1]), sp.Matrix([x, 0]))


def test_holds(capsys):
    checks.holds(True, what="signs agree")
    checks.holds(np.array([True, True]), what="all positive")
    assert capsys.readouterr().out.splitlines() == ["✓ signs agree: holds", "✓ all positive: holds"]
    with pytest.raises(CheckFailed, match="crossover: does not hold"):
        checks.holds(np.array([True, False]), what="crossover")
