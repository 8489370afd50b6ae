"""Tests of ttt_helpers.theory.multistep: rank-one engine = ttt_step engine, oracle bound, gradient-descent limit."""

import numpy as np
import pytest

from ttt_helpers.theory import multistep as ms
from ttt_helpers.theory.general_covariance import one_step_theory, subspace_pair
from ttt_helpers.theory.pretraining import optimal_W
from ttt_helpers.theory.ttt import conditional_test_loss, sample_ttt_problems, ttt_step


def _setting():
    d, n, k, s = 6, 8, 10, 0.5
    Sb, St = subspace_pair(d, 2, 1.0, floor=0.2)
    return d, n, k, s, St, optimal_W(n, d, s, Sb)


def test_rank1_engine_equals_matrix_engine():
    d, n, k, s, St, W0 = _setting()
    for norm, eta in ((True, 0.5), (False, one_step_theory(W0, n, k, s, St).eta_star / 10)):
        a = ms.simulate_ttt(W0, n, k, s, St, eta=eta, steps=5, n_tasks=300, rng=4, normalised=norm, method="rank1")
        b = ms.simulate_ttt(W0, n, k, s, St, eta=eta, steps=5, n_tasks=300, rng=4, normalised=norm, method="matrix")
        assert np.allclose(a.loss, b.loss, rtol=1e-9)
        assert a.limit == pytest.approx(b.limit, rel=1e-12)


def test_oracle_bound_and_limit():
    d, n, k, s, St, W0 = _setting()
    prob = sample_ttt_problems(5, 200, n, k, d, sigma=s, Sigma_beta=St)
    orc = ms.oracle_terms(W0, prob, n, s)
    W = np.broadcast_to(W0, (200, d, d))
    eta = 0.5 / ms.step_size_margin(1.0, prob)
    for _ in range(1500):
        W = ttt_step(W, prob.X_ctx, prob.y_ctx, prob.X_train, prob.y_train, eta)
        assert np.all(conditional_test_loss(W, prob.beta, n, s) >= orc["oracle_loss"] - 1e-9)
    assert np.allclose(W, ms.gd_limit_W(W0, prob), rtol=1e-4, atol=1e-5)
    # the oracle correction attains the bound
    W_orc = W0[None] + np.einsum("td,te->tde", orc["c_oracle"], prob.u)
    assert np.allclose(conditional_test_loss(W_orc, prob.beta, n, s), orc["oracle_loss"])


def test_first_step_matches_one_step_theory():
    d, n, k, s, St, W0 = _setting()
    th = one_step_theory(W0, n, k, s, St)
    r = ms.simulate_ttt(W0, n, k, s, St, eta=th.eta_star, steps=1, n_tasks=20_000, rng=6)
    # A exact, B Gaussian approximation: a few per cent at this small n
    assert abs(r.loss[1] - th.loss_after) < 4 * r.loss_se[1] + 0.05 * th.loss_after
    assert abs(r.loss[0] - th.loss_before) < 4 * r.loss_se[0]


@pytest.mark.parametrize(
    "kwargs",
    [dict(steps=0), dict(eta=-1.0), dict(n_tasks=0), dict(method="loop"), dict(Sigma_t=np.eye(2))],
)
def test_bad_input_raises(kwargs):
    d, n, k, s, St, W0 = _setting()
    base = dict(W0=W0, n=n, k=k, sigma=s, Sigma_t=St, eta=0.1, steps=2, n_tasks=10)
    base.update(kwargs)
    with pytest.raises(ValueError):
        ms.simulate_ttt(**base)
