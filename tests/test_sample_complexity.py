"""Tests of ttt_helpers.theory.sample_complexity."""

import numpy as np
import pytest

from ttt_helpers.theory import sample_complexity as sc
from ttt_helpers.theory.pretraining import isotropic_optimal_loss


def test_icl_context_length_is_minimal():
    for d, s, eps in ((10, 0.0, 4.0), (20, 0.5, 9.3), (5, 1.0, 2.5)):
        n = sc.icl_context_length(eps, d, s)
        assert isotropic_optimal_loss(n, d, s) <= eps
        if n > 0:
            assert isotropic_optimal_loss(n - 1, d, s) > eps


def test_first_n_below():
    grid = np.arange(1, 6)
    assert sc.first_n_below([5, 4, 2, 3, 1], 3.5, grid) == 3
    assert sc.first_n_below([5, 4, 2, 4, 1], 3.5, grid) == 5
    assert sc.first_n_below([1, 1, 1, 1, 1], 3.5, grid) == 1
    assert sc.first_n_below([5, 4, 4, 4, 4], 3.5, grid) == np.inf


def test_ttt_needs_no_more_context_and_ratio_grows_with_k():
    import ttt_helpers.theory.isotropic  # noqa: F401  (exists: never skip)
    d, s = 10, 0.5
    ratios = [sc.reduction_factor(0.5 * d, d, k, s)["ratio"] for k in (2, 10, 40)]
    assert all(r >= 1 for r in ratios)
    assert ratios[0] <= ratios[1] <= ratios[2]


def test_proportional_reduction_factor():
    # kappa -> 0: no help
    assert sc.proportional_reduction_factor(0.5, 1e-9) == pytest.approx(1.0, rel=1e-6)
    # e = 0.5, kappa = 1/3 (a = 1/4): root of x - x^3/4 = 1/2
    x = np.roots([-0.25, 0, 1, -0.5]).real
    x = min(v for v in x if 0 < v <= 1)
    assert sc.proportional_reduction_factor(0.5, 1 / 3) == pytest.approx(1.0 / (1 / x - 1), rel=1e-8)
    assert np.isinf(sc.proportional_reduction_factor(0.6, 1.0))


def test_general_matches_isotropic():
    import ttt_helpers.theory.isotropic  # noqa: F401  (exists: never skip)
    d, s, k, eps = 6, 0.5, 6, 3.5
    g = sc.general_context_lengths(eps, k, s, np.eye(d), np.eye(d), n_max=40)
    assert g["n_icl"] == sc.icl_context_length(eps, d, s)
    assert g["n_ttt"] == sc.ttt_context_length(eps, d, k, s, n_max=40, method="gauss")


@pytest.mark.parametrize(
    "call",
    [
        lambda: sc.icl_context_length(0.1, 5, 1.0),
        lambda: sc.icl_context_length(2.0, 0),
        lambda: sc.proportional_reduction_factor(1.5, 1.0),
        lambda: sc.proportional_reduction_factor(0.5, -1.0),
        lambda: sc.first_n_below([1, 2], 1.0, [1, 2, 3]),
        lambda: sc.ttt_context_length(2.0, 5, 0),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(ValueError):
        call()
