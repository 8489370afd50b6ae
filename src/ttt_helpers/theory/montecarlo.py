"""The Monte Carlo engine of the one-step theory: simulated TTT problems, vectorised over tasks.

Every estimator here samples tasks, one TTT context of length ``n`` and ``k`` training queries per task
(:func:`ttt_helpers.theory.ttt.sample_ttt_problems`, in chunks of tasks) and evaluates the test loss EXACTLY over
fresh contexts and queries, through the per-task coefficients of

    L(W0 + eta g u^T | beta) = l0 - 2 eta a + eta^2 b      (:func:`per_task_coefficients`),

so one pass over the problems gives the loss at every step size, and several starts can share the same
problems (paired differences).

- isotropic setting, start ``W0 = c I`` (chapters 04, 05, 08): :func:`mc_one_step`, :func:`mc_paired_starts`,
  and the straightforward per-task loop :func:`mc_one_step_naive` that checks them;
- any start ``W0`` and target covariance ``Sigma_t`` (chapters 06, 08): :func:`mc_coefficients`,
  :func:`mc_per_task`, :func:`mc_one_step_losses`, and :func:`mc_check_one_step` (exact and Gaussian theory
  against simulation).

The theory they are checked against lives in :mod:`ttt_helpers.theory.isotropic` and
:mod:`ttt_helpers.theory.general_covariance`; the sweeps that call them in :mod:`ttt_helpers.theory.sweeps`.
"""

from __future__ import annotations

import numpy as np

from .general_covariance import _check_start, one_step_theory
from .isotropic import _start_c, isotropic_one_step
from .tasks import as_generator
from .ttt import Q_times, conditional_test_loss, sample_ttt_problems, ttt_step
from ..validation import check_finite_array, check_nonnegative_float, check_nonnegative_int, check_positive_int

__all__ = [
    "per_task_coefficients",
    "mc_one_step",
    "mc_one_step_naive",
    "mc_paired_starts",
    "mc_coefficients",
    "mc_per_task",
    "mc_one_step_losses",
    "mc_check_one_step",
]


def _check_simulation(n, d, k, sigma, n_tasks, rng):
    """The validation prelude shared by the estimators: sizes, noise level, number of tasks, generator."""
    return (check_positive_int(n, "n"), check_positive_int(d, "d"), check_positive_int(k, "k"),
            check_nonnegative_float(sigma, "sigma"), check_positive_int(n_tasks, "n_tasks"), as_generator(rng))


def _problem_chunks(rng, n_tasks: int, chunk: int, n: int, k: int, d: int, sigma: float, Sigma_t=None):
    """Sampled TTT problems, ``chunk`` tasks at a time, ``n_tasks`` in all (tasks ``beta ~ N(0, Sigma_t)``)."""
    done = 0
    while done < n_tasks:
        m = min(chunk, n_tasks - done)
        yield sample_ttt_problems(rng, m, n, k, d, sigma=sigma, Sigma_beta=Sigma_t)
        done += m


def _se(x):
    """Standard error of the mean of the per-task values ``x`` (nan for a single task)."""
    return float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def per_task_coefficients(problems, W0, n: int, sigma: float = 0.0):
    """Per-task loss before TTT and the coefficients of ``L(W0 + eta g u^T | beta) = l0 - 2 eta a + eta^2 b``.

    Exact in the fresh evaluation context and query (closed form); random only through the task, the
    TTT context and the training queries in ``problems``.

    Parameters
    ----------
    problems : ttt.TTTProblems
        A batch of ``T`` TTT problems (context length ``n``).
    W0 : float or ndarray (d, d)
        Start (``c`` for ``c I``, or a matrix shared by all tasks).
    n : int
        Length of the fresh evaluation contexts.
    sigma : float

    Returns
    -------
    l0, a, b : ndarray, shape (T,)
    """
    n = check_nonnegative_int(n, "n")
    s2 = check_nonnegative_float(sigma, "sigma") ** 2
    beta, u = problems.beta, problems.u
    T, d = beta.shape
    b2 = np.sum(beta**2, axis=1)
    s = np.einsum("td,td->t", beta, u)
    if np.ndim(W0) == 0:
        c = float(W0)
        W0u = c * u
        l0 = b2 + s2 - 2 * n * c * b2 + c**2 * (n * (n + 1) * b2 + n * (b2 + s2) * d)
    else:
        W0 = check_finite_array(W0, "W0", ndim=2)
        if W0.shape != (d, d):
            raise ValueError(f"W0 must have shape ({d}, {d}), got {W0.shape}")
        W0u = u @ W0.T
        l0 = conditional_test_loss(W0, beta, n, sigma)
    resid = problems.y_train - np.einsum("tkd,td->tk", problems.X_train, W0u)
    g = 2.0 * np.einsum("tkd,tk->td", problems.X_train, resid)
    Qu = Q_times(beta, u, n, sigma)
    W0Qu = c * Qu if np.ndim(W0) == 0 else Qu @ W0.T
    a = n * np.einsum("td,td->t", beta, g) * s - np.einsum("td,td->t", g, W0Qu)
    b = np.sum(g**2, axis=1) * np.einsum("td,td->t", u, Qu)
    return l0, a, b

def mc_coefficients(problems, W0, n: int, sigma: float = 0.0) -> dict:
    """Monte Carlo estimates of ``A``, ``B`` and ``L0`` from sampled TTT problems (means and standard errors).

    Per task: ``a = n (beta^T g)(u^T beta) - g^T W0 Q u``, ``b = ||g||^2 u^T Q u`` and ``l0 = L(W0 | beta)``
    with the problem's own context ``u`` and training queries (:class:`ttt_helpers.theory.ttt.TTTProblems`).
    """
    W0 = _check_start(W0)
    if problems.beta.shape[1] != W0.shape[0]:
        raise ValueError(f"W0 must be {problems.beta.shape[1]} x {problems.beta.shape[1]}, got {W0.shape}")
    l0, a, bb = per_task_coefficients(problems, W0, n, sigma)
    return {"A": float(a.mean()), "A_se": _se(a), "B": float(bb.mean()), "B_se": _se(bb), "L0": float(l0.mean()),
            "L0_se": _se(l0), "a": a, "b": bb, "l0": l0}

def _auto_chunk(n, k, d, chunk):
    if chunk is None:
        return int(max(1, min(20_000, 2e7 // ((n + k) * d))))
    return check_positive_int(chunk, "chunk")

def mc_one_step(n: int, d: int, k: int, sigma: float = 0.0, c="pretrained", eta=None, n_tasks: int = 2000,
                rng=0, chunk=None, return_per_task: bool = False) -> dict:
    """Monte Carlo of one TTT step, vectorised over tasks (batched NumPy, chunks of ``chunk`` tasks).

    Draws ``n_tasks`` tasks ``beta ~ N(0, I_d)``, one TTT context of length ``n`` and ``k`` training
    queries per task (in chunks of ``chunk`` tasks; by default about ``2e7`` numbers per chunk), and evaluates the exact fresh-context test loss before and after the step
    ``W0 + eta g u^T`` (``W0 = c I``).

    Parameters
    ----------
    eta : float, optional
        Step size; the theoretical ``eta*`` of :func:`~ttt_helpers.theory.isotropic.isotropic_one_step` if omitted.

    Returns
    -------
    dict with means and standard errors over tasks: ``loss_before``, ``loss_after``, ``improvement``
    (``*_se``), the plug-in optimal step ``eta_hat = mean(a)/mean(b)``, the ``eta`` used, and, with
    ``return_per_task``, the arrays ``l0, a, b``.
    """
    n, d, k, sigma, n_tasks, rng = _check_simulation(n, d, k, sigma, n_tasks, rng)
    chunk = _auto_chunk(n, k, d, chunk)
    c0 = float(_start_c(c, n, d, sigma)) if isinstance(c, str) or np.ndim(c) == 0 else c
    if eta is None:
        if np.ndim(c0) != 0:
            raise ValueError("eta must be given when the start W0 is a matrix")
        eta = isotropic_one_step(n, d, k, sigma, c0)["eta_star"]
    eta = float(eta)
    parts = [per_task_coefficients(prob, c0, n, sigma) for prob in _problem_chunks(rng, n_tasks, chunk, n, k, d, sigma)]
    l0, a, b = (np.concatenate([p[i] for p in parts]) for i in range(3))
    l1 = l0 - 2 * eta * a + eta**2 * b
    gain = l0 - l1
    se = _se
    out = {
        "loss_before": float(l0.mean()), "loss_before_se": se(l0),
        "loss_after": float(l1.mean()), "loss_after_se": se(l1),
        "improvement": float(gain.mean()), "improvement_se": se(gain),
        "eta": eta, "eta_hat": float(a.mean() / b.mean()), "A_hat": float(a.mean()), "B_hat": float(b.mean()),
        "A_hat_se": se(a), "B_hat_se": se(b), "n_tasks": n_tasks,
    }
    if return_per_task:
        out.update(l0=l0, a=a, b=b)
    return out

def mc_one_step_naive(n: int, d: int, k: int, sigma: float = 0.0, c="pretrained", eta=None, n_tasks: int = 100,
                      rng=0) -> dict:
    """The straightforward reference: a Python loop over tasks, forming ``W_TT`` as a ``d x d`` matrix.

    For each task: draw ``beta``, a context and ``k`` training queries, take the step with
    :func:`ttt.ttt_step`, and evaluate :func:`ttt.conditional_test_loss` before and after. Used to
    cross-check :func:`mc_one_step` and as the baseline of ``scripts/bench_mc_engine.py``.

    Returns
    -------
    dict with ``loss_before``, ``loss_after`` (means) and their standard errors.
    """
    n, d, k, sigma, n_tasks, rng = _check_simulation(n, d, k, sigma, n_tasks, rng)
    c0 = float(_start_c(c, n, d, sigma))
    if eta is None:
        eta = isotropic_one_step(n, d, k, sigma, c0)["eta_star"]
    W0 = c0 * np.eye(d)
    l0s, l1s = np.empty(n_tasks), np.empty(n_tasks)
    for i in range(n_tasks):
        beta = rng.standard_normal(d)
        X = rng.standard_normal((n, d))
        y = X @ beta + sigma * rng.standard_normal(n)
        Xt = rng.standard_normal((k, d))
        yt = Xt @ beta + sigma * rng.standard_normal(k)
        W1 = ttt_step(W0, X, y, Xt, yt, eta)
        l0s[i] = conditional_test_loss(W0, beta, n, sigma)
        l1s[i] = conditional_test_loss(W1, beta, n, sigma)
    return {"loss_before": float(l0s.mean()), "loss_before_se": _se(l0s), "loss_after": float(l1s.mean()),
            "loss_after_se": _se(l1s), "eta": float(eta), "n_tasks": n_tasks}

def mc_paired_starts(n: int, d: int, k: int, sigma: float = 0.0, starts=("pretrained", "scratch"), n_tasks: int = 2000,
                     rng=0, chunk=None) -> dict:
    """One optimal TTT step from several starts ``W0 = c I`` on the SAME simulated problems.

    Each start uses its own theoretical ``eta*``. Common random numbers make the difference between two
    starts far more precise than either loss.

    Returns
    -------
    dict: for each start label, ``loss_after`` and ``loss_after_se``; and ``diff`` / ``diff_se``, the mean
    and standard error of (loss of ``starts[1]``) minus (loss of ``starts[0]``) per problem.
    """
    n, d, k, sigma, n_tasks, rng = _check_simulation(n, d, k, sigma, n_tasks, rng)
    chunk = _auto_chunk(n, k, d, chunk)
    if len(starts) < 2:
        raise ValueError(f"starts must hold at least two starts, got {starts!r}")
    cs = [float(_start_c(c, n, d, sigma)) for c in starts]
    etas = [isotropic_one_step(n, d, k, sigma, c)["eta_star"] for c in cs]
    losses = [[] for _ in cs]
    for prob in _problem_chunks(rng, n_tasks, chunk, n, k, d, sigma):
        for j, (c, eta) in enumerate(zip(cs, etas)):
            l0, a, b = per_task_coefficients(prob, c, n, sigma)
            losses[j].append(l0 - 2 * eta * a + eta**2 * b)
    losses = [np.concatenate(x) for x in losses]
    out = {}
    for lab, x in zip(starts, losses):
        out[str(lab)] = {"loss_after": float(x.mean()), "loss_after_se": _se(x)}
    diff = losses[1] - losses[0]
    out["diff"], out["diff_se"] = float(diff.mean()), _se(diff)
    return out

def mc_per_task(starts, n: int, k: int, sigma: float, Sigma_t, n_tasks: int, rng, chunk: int = 2000) -> list:
    """Per-task ``l0, a, b`` (:func:`mc_coefficients`) for several starts on the SAME sampled problems.

    Tasks ``beta ~ N(0, Sigma_t)``, one TTT context of length ``n`` and ``k`` training queries each, drawn in
    chunks (about 32 MB each); the test loss is exact over fresh contexts and queries, so
    ``L(W0 + eta g u^T | beta) = l0 - 2 eta a + eta^2 b`` per task for every ``eta``.

    Returns
    -------
    list (one per start) of dicts with arrays ``"l0"``, ``"a"``, ``"b"`` of shape ``(n_tasks,)``
    """
    starts = [_check_start(W) for W in starts]
    n, d, k, sigma, n_tasks, rng = _check_simulation(n, starts[0].shape[0], k, sigma, n_tasks, rng)
    chunk = min(check_positive_int(chunk, "chunk"), max(50, int(4e6 // (k * d))))  # ~32 MB per chunk
    parts = [{"l0": [], "a": [], "b": []} for _ in starts]
    for prob in _problem_chunks(rng, n_tasks, chunk, n, k, d, sigma, Sigma_t):
        for W, part in zip(starts, parts):
            c = mc_coefficients(prob, W, n, sigma)
            for key in part:
                part[key].append(c[key])
    return [{key: np.concatenate(v) for key, v in part.items()} for part in parts]

def mc_one_step_losses(starts, etas, n: int, k: int, sigma: float, Sigma_t, n_tasks: int, rng, chunk: int = 2000):
    """Per-task test losses before and after one TTT step, for several starts on the SAME sampled problems.

    ``L(W0 + eta g u^T | beta) = l0 - 2 eta a + eta^2 b`` per task (exact in the fresh context), so each start
    costs one pass over the problems. Common problems make start-to-start differences paired.

    Returns
    -------
    before, after : ndarray, shape (len(starts), n_tasks)
    """
    if len(etas) != len(starts):
        raise ValueError(f"need one eta per start, got {len(etas)} etas for {len(starts)} starts")
    per = mc_per_task(starts, n, k, sigma, Sigma_t, n_tasks, rng, chunk)
    before = np.array([c["l0"] for c in per])
    after = np.array([c["l0"] - 2 * eta * c["a"] + eta**2 * c["b"] for c, eta in zip(per, etas)])
    return before, after

def mc_check_one_step(W0, n: int, k: int, sigma: float, Sigma_t, n_tasks: int, rng, chunk: int = 2000) -> dict:
    """Exact and Gaussian one-step theory against a simulation of the TTT step (fresh test contexts).

    Returns
    -------
    dict of floats: ``A`` (exact), ``A_mc`` (+ ``_se``); ``B_gauss``, ``B_exact``, ``B_mc`` (+ ``_se``);
    the optimal gains ``gain_gauss = A^2/B_gauss`` and ``gain_exact = A^2/B_exact``; the simulated gain
    ``gain_mc`` (+ ``_se``) with the exact ``eta*``; and, with the Gaussian ``eta*`` (the step the Gaussian
    theory recommends), the simulated gain ``gain_mc_at_gauss_eta`` (+ ``_se``) and its exact prediction
    ``gain_exact_at_gauss_eta = 2 eta A - eta^2 B_exact``.
    """
    ga = one_step_theory(W0, n, k, sigma, Sigma_t, "gauss")
    ex = one_step_theory(W0, n, k, sigma, Sigma_t, "exact")
    c = mc_per_task([W0], n, k, sigma, Sigma_t, n_tasks, rng, chunk)[0]
    se = _se
    g_ex = 2 * ex.eta_star * c["a"] - ex.eta_star**2 * c["b"]
    g_ga = 2 * ga.eta_star * c["a"] - ga.eta_star**2 * c["b"]
    return {"A": ex.A, "A_mc": float(c["a"].mean()), "A_mc_se": se(c["a"]),
            "B_gauss": ga.B, "B_exact": ex.B, "B_mc": float(c["b"].mean()), "B_mc_se": se(c["b"]),
            "gain_gauss": ga.improvement, "gain_exact": ex.improvement,
            "gain_mc": float(g_ex.mean()), "gain_mc_se": se(g_ex),
            "gain_mc_at_gauss_eta": float(g_ga.mean()), "gain_mc_at_gauss_eta_se": se(g_ga),
            "gain_exact_at_gauss_eta": float(2 * ga.eta_star * ex.A - ga.eta_star**2 * ex.B)}
