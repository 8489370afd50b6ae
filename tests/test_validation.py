import numpy as np
import pytest

from ttt_helpers import validation as v


def test_accepts_good_values():
    assert v.check_positive_int(np.int64(3), "n") == 3
    assert v.check_nonnegative_int(0, "n") == 0
    assert v.check_nonnegative_float(2, "s") == 2.0
    assert v.check_finite_array([[1, 2]], "a", ndim=2).dtype == np.float64
    assert v.check_covariance(np.eye(2), "S", size=2).shape == (2, 2)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: v.check_positive_int(True, "n"), "positive integer"),
        (lambda: v.check_positive_int(0, "n"), ">= 1"),
        (lambda: v.check_nonnegative_int(-2, "n"), ">= 0"),
        (lambda: v.check_nonnegative_float(float("inf"), "s"), "finite"),
        (lambda: v.check_nonnegative_float("1", "s"), "real number"),
        (lambda: v.check_finite_array(np.zeros(3), "a", ndim=2), "dimension"),
        (lambda: v.check_finite_array([1.0, np.nan, np.inf], "a"), "2 NaN/inf entries"),
        (lambda: v.check_square_matrix(np.zeros((2, 3)), "M"), "square"),
        (lambda: v.check_square_matrix(np.zeros((2, 2)), "M", size=3), r"\(3, 3\)"),
        (lambda: v.check_covariance(np.array([[0.0, 1.0], [1.0, 0.0]]), "S"), "semi-definite"),
    ],
)
def test_rejects_bad_values(call, match):
    with pytest.raises(ValueError, match=match):
        call()
