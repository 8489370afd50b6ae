"""The book's sweeps of the one-step theory against simulation, their sizes and their figures.

One function per sweep; each returns a JSON-serialisable dict (run live at CI size by a chapter, shipped at
full size by a script with provenance), and :data:`SWEEP_PROFILES` holds both sizes of every sweep:

- chapter 04 (Figure 1): :func:`sweep_context_length`, drawn by :func:`plot_sweep_context_length`;
- chapter 05: :func:`sweep_starts` (scratch vs pretrained), drawn by :func:`plot_sweep_starts`;
- chapter 06 (Figure 2a-b): :func:`alignment_sweep`, its exact-``B`` theory :func:`alignment_theory_exact`
  and the simulation's distance to both theories :func:`alignment_z_scores`,
  the error map :func:`gain_error_map`, and the figures :func:`plot_loss_vs_alignment`,
  :func:`plot_gain_vs_misalignment`, :func:`plot_crossings`, :func:`plot_gain_error_map`;
- chapter 07: :func:`multistep_sweep`, drawn by :func:`plot_multistep_curves` and
  :func:`plot_remaining_misalignment`, tabulated by :func:`multistep_table`;
- chapter 08: :func:`loss_against_context` (drawn by :func:`plot_loss_against_context`), :func:`reduction_sweep`
  and :func:`shift_sweep`, drawn by :func:`plot_reduction_factors` and :func:`plot_shift_reduction`.

The theory comes from :mod:`~ttt_helpers.theory.isotropic`, :mod:`~ttt_helpers.theory.general_covariance`,
:mod:`~ttt_helpers.theory.multistep` and :mod:`~ttt_helpers.theory.sample_complexity`; the simulations from
:mod:`~ttt_helpers.theory.montecarlo` (and :func:`~ttt_helpers.theory.multistep.simulate_ttt`).
"""

from __future__ import annotations

import numpy as np

from .general_covariance import misalignment_magnitude, one_step_theory, scratch_pretrained_crossing, subspace_pair
from .isotropic import (
    crossover_kappa_limit,
    isotropic_one_step,
    proportional_limit,
    scratch_crossover_k,
)
from .montecarlo import mc_one_step, mc_one_step_losses, mc_paired_starts
from .multistep import simulate_ttt
from .pretraining import isotropic_optimal_loss, optimal_W
from .sample_complexity import (
    general_context_lengths,
    isotropic_ttt_loss,
    proportional_reduction_factor,
    reduction_factor,
)
from .tasks import as_generator
from ..validation import check_positive_int

__all__ = [
    "SWEEP_PROFILES",
    "sweep_context_length",
    "sweep_starts",
    "alignment_sweep",
    "alignment_theory_exact",
    "gain_error_map",
    "multistep_sweep",
    "reduction_sweep",
    "shift_sweep",
    "simulated_crossings",
    "alignment_z_scores",
    "plot_sweep_context_length",
    "plot_sweep_starts",
    "plot_loss_vs_alignment",
    "plot_gain_vs_misalignment",
    "plot_crossings",
    "plot_gain_error_map",
    "plot_multistep_curves",
    "plot_remaining_misalignment",
    "multistep_table",
    "loss_against_context",
    "plot_loss_against_context",
    "plot_reduction_factors",
    "plot_shift_reduction",
]


#: Sizes of the book's sweeps, per profile and sweep. ``"ci"`` runs live in the chapters; ``"full"`` is the
#: shipped run in ``data/results/``: ``scripts/theory_sweeps.py`` runs ``fig1_isotropic`` (chapter 04,
#: :func:`sweep_context_length`) and ``scratch_vs_pretrained`` (chapter 05, :func:`sweep_starts`);
#: ``scripts/theory_sweeps_shift.py`` runs ``alignment`` (chapter 06, :func:`alignment_sweep`), ``multistep``
#: (chapter 07, :func:`multistep_sweep`) and ``sample`` (chapter 08, :func:`reduction_sweep` with the
#: :func:`shift_sweep` arguments under ``shift``).
SWEEP_PROFILES = {
    "ci": {
        "fig1_isotropic": dict(d=20, alphas=[0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0],
                               kappas=[0.25, 1.0, 4.0], sigma=0.5, n_tasks=1000, seed=4),
        "scratch_vs_pretrained": dict(d=20, alphas=[0.5, 1.0, 2.0], kappas=[0.25, 0.5, 1, 2, 3, 4, 6, 8],
                                      sigma=0.5, n_tasks=1000, seed=5),
        "alignment": dict(d=16, r=4, n=16, ks=[16, 64], thetas=list(np.linspace(0, np.pi / 2, 7)), sigma=0.5,
                          floor=0.1, n_tasks=4000, k_grid=[4, 8, 16, 32, 64, 128, 256], seed=6),
        "multistep": dict(d=16, r=4, n=16, ks=[32, 128], thetas=[0.0, np.pi / 4, np.pi / 2], sigma=0.5, floor=0.1,
                          steps=30, gamma=0.5, n_tasks=2000, seed=7),
        "sample": dict(ds=[20], kappas=[0.25, 0.5, 1, 2, 4, 8], es=[0.6, 0.4, 0.25], sigma=0.5,
                       shift=dict(d=16, r=4, k=32, e=0.4, thetas=[0.0, np.pi / 4, np.pi / 2], n_max=300)),
    },
    "full": {
        "fig1_isotropic": dict(d=100, alphas=[0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
                                              4.0],
                               kappas=[0.25, 1.0, 4.0], sigma=0.5, n_tasks=10_000, seed=104),
        "scratch_vs_pretrained": dict(d=100, alphas=[0.5, 1.0, 2.0],
                                      kappas=[0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8],
                                      sigma=0.5, n_tasks=10_000, seed=105),
        "alignment": dict(d=64, r=16, n=64, ks=[64, 256], thetas=list(np.linspace(0, np.pi / 2, 13)), sigma=0.5,
                          floor=0.1, n_tasks=20000, k_grid=[8, 16, 32, 64, 128, 256, 512, 1024], seed=6),
        "multistep": dict(d=64, r=16, n=64, ks=[128, 256], thetas=[0.0, np.pi / 4, np.pi / 2], sigma=0.5,
                          floor=0.1, steps=40, gamma=0.5, n_tasks=1500, seed=7),
        "sample": dict(ds=[20, 80, 320], kappas=[0.25, 0.5, 1, 2, 4, 8, 16], es=[0.6, 0.4, 0.25], sigma=0.5,
                       shift=dict(d=32, r=8, k=64, e=0.4, thetas=list(np.linspace(0, np.pi / 2, 7)), n_max=800)),
    },
}


# ---------------------------------------------------------------------------------------------------------
# Chapters 04 and 05: isotropic one-step TTT
# ---------------------------------------------------------------------------------------------------------


def sweep_context_length(d: int, alphas, kappas, sigma: float = 0.0, n_tasks: int = 2000, rng=0,
                         start="pretrained", progress=None) -> dict:
    """The Figure-1 sweep: loss before/after one optimal step and the improvement against ``n/d``, per ``k/d``.

    For every ``alpha`` in ``alphas`` and ``kappa`` in ``kappas`` (``n = round(alpha d)``,
    ``k = round(kappa d)``, at least 1): the exact theory, the Gaussian approximation, the proportional
    limit (``/ d``) and the Monte Carlo estimate (:func:`mc_one_step`, ``n_tasks`` tasks).

    Returns
    -------
    dict of lists (JSON-ready): ``alpha, kappa, n, k`` and, per point, ``theory_*``, ``gauss_*``,
    ``limit_*`` and ``mc_*`` / ``mc_*_se`` for ``loss_before``, ``loss_after``, ``improvement``.
    """
    d = check_positive_int(d, "d")
    rng = as_generator(rng)
    rows = {key: [] for key in ["alpha", "kappa", "n", "k"]}
    keys = ("loss_before", "loss_after", "improvement")
    for pre in ("theory_", "gauss_", "limit_", "mc_"):
        for key in keys:
            rows[pre + key] = []
    for key in keys:
        rows["mc_" + key + "_se"] = []
    rows["eta_star"] = []
    for kappa in kappas:
        for alpha in alphas:
            n, k = max(1, int(round(alpha * d))), max(1, int(round(kappa * d)))
            th = isotropic_one_step(n, d, k, sigma, start)
            ga = isotropic_one_step(n, d, k, sigma, start, method="gauss")
            lim = proportional_limit(n / d, k / d, sigma**2 / d, start)
            mc = mc_one_step(n, d, k, sigma, start, n_tasks=n_tasks, rng=rng)
            for key, v in zip(["alpha", "kappa", "n", "k"], [n / d, k / d, n, k]):
                rows[key].append(v)
            for key in keys:
                rows["theory_" + key].append(th[key])
                rows["gauss_" + key].append(ga[key])
                rows["limit_" + key].append(lim[key] * d)
                rows["mc_" + key].append(mc[key])
                rows["mc_" + key + "_se"].append(mc[key + "_se"])
            rows["eta_star"].append(th["eta_star"])
            if progress is not None:
                progress(n, k)
    rows["d"], rows["sigma"] = d, float(sigma)
    return rows


def sweep_starts(d: int, alphas, kappas, sigma: float = 0.0, n_tasks: int = 2000, rng=0, progress=None) -> dict:
    """Scratch vs pretrained sweep: loss after one optimal step from ``W*`` and from ``0`` on paired problems.

    Returns
    -------
    dict of lists (JSON-ready): ``alpha, kappa, n, k``, theory ``pre_theory``/``scr_theory`` (exact) and
    ``pre_limit``/``scr_limit`` (limit, times ``d``), Monte Carlo ``pre_mc``/``scr_mc`` (+ ``_se``) and
    the paired difference ``diff_mc`` (scratch minus pretrained, + ``_se``); and per ``alpha`` the
    crossover ``k_star_exact`` and ``k_star_limit`` (``kappa* d``).
    """
    d = check_positive_int(d, "d")
    rng = as_generator(rng)
    names = ["alpha", "kappa", "n", "k", "pre_theory", "scr_theory", "pre_limit", "scr_limit", "pre_mc",
             "pre_mc_se", "scr_mc", "scr_mc_se", "diff_mc", "diff_mc_se"]
    rows = {key: [] for key in names}
    cross = {"alpha": [], "n": [], "k_star_exact": [], "k_star_limit": []}
    for alpha in alphas:
        n = max(1, int(round(alpha * d)))
        cross["alpha"].append(n / d)
        cross["n"].append(n)
        cross["k_star_exact"].append(scratch_crossover_k(n, d, sigma))
        cross["k_star_limit"].append(crossover_kappa_limit(n / d, sigma**2 / d) * d)
        for kappa in kappas:
            k = max(1, int(round(kappa * d)))
            pre = isotropic_one_step(n, d, k, sigma, "pretrained")
            scr = isotropic_one_step(n, d, k, sigma, "scratch")
            lp = proportional_limit(n / d, k / d, sigma**2 / d, "pretrained")
            ls = proportional_limit(n / d, k / d, sigma**2 / d, "scratch")
            mc = mc_paired_starts(n, d, k, sigma, ("pretrained", "scratch"), n_tasks=n_tasks, rng=rng)
            vals = [n / d, k / d, n, k, pre["loss_after"], scr["loss_after"], lp["loss_after"] * d,
                    ls["loss_after"] * d, mc["pretrained"]["loss_after"], mc["pretrained"]["loss_after_se"],
                    mc["scratch"]["loss_after"], mc["scratch"]["loss_after_se"], mc["diff"], mc["diff_se"]]
            for key, v in zip(names, vals):
                rows[key].append(v)
            if progress is not None:
                progress(n, k)
    rows["crossover"] = cross
    rows["d"], rows["sigma"] = d, float(sigma)
    return rows


def plot_sweep_context_length(rows: dict, axes=None, title_suffix: str = ""):
    """Figure 1: loss (``/ d``) before/after one optimal step and the improvement against ``n / d``.

    Lines: exact theory at the sweep's ``d`` (dense integer ``n``); dashed: proportional limit; markers with
    2-standard-error bars: Monte Carlo. ``rows`` is the output of :func:`sweep_context_length` (or its
    JSON).
    """
    import matplotlib.pyplot as plt

    from ..plotting import theory_vs_simulation

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    alpha = np.asarray(rows["alpha"])
    kappa = np.asarray(rows["kappa"])
    n_arr = np.asarray(rows["n"])
    d = int(rows["d"])
    sigma = float(rows["sigma"])
    n_dense = np.arange(1, int(n_arr.max()) + 1)
    for j, kap in enumerate(np.unique(kappa)):
        m = kappa == kap
        k = int(np.asarray(rows["k"])[m][0])
        th = isotropic_one_step(n_dense, d, k, sigma, "pretrained")
        lim = proportional_limit(n_dense / d, k / d, sigma**2 / d, "pretrained")
        color = f"C{j}"
        theory_vs_simulation(axes[0], alpha[m], th["loss_after"] / d, np.asarray(rows["mc_loss_after"])[m] / d,
                             np.asarray(rows["mc_loss_after_se"])[m] / d, label=f"after TTT, k/d={kap:g}",
                             color=color, x_theory=n_dense / d)
        axes[0].plot(n_dense / d, lim["loss_after"], "--", color=color, lw=1, label=f"limit d→∞, k/d={kap:g}")
        theory_vs_simulation(axes[1], alpha[m], th["improvement"] / d, np.asarray(rows["mc_improvement"])[m] / d,
                             np.asarray(rows["mc_improvement_se"])[m] / d, label=f"k/d={kap:g}", color=color,
                             x_theory=n_dense / d)
        axes[1].plot(n_dense / d, lim["improvement"], "--", color=color, lw=1, label=f"limit d→∞, k/d={kap:g}")
        if j == 0:
            m0 = m
            axes[0].plot(n_dense / d, th["loss_before"] / d, "k-", lw=1.5, label="before TTT, W* (theory)")
            axes[0].errorbar(alpha[m0], np.asarray(rows["mc_loss_before"])[m0] / d,
                             yerr=2 * np.asarray(rows["mc_loss_before_se"])[m0] / d, fmt="ks", ms=3,
                             label="before TTT (simulation)")
    axes[0].set(xscale="log", xlabel="context length / dimension  n/d", ylabel="test loss / d",
                title=f"(a) Test loss before and after one TTT step{title_suffix}")
    axes[1].set(xscale="log", xlabel="context length / dimension  n/d",
                ylabel="improvement (loss before − after) / d",
                title=f"(b) Improvement from one TTT step{title_suffix}")
    for ax in axes:
        ax.legend(fontsize=7)
    return axes


def plot_sweep_starts(rows: dict, axes=None, title_suffix: str = ""):
    """Scratch vs pretrained: loss after one optimal step (``/ d``) against ``k / d``, one panel per ``n/d``.

    Lines: exact theory (solid: from ``W*``, dotted: from ``0``), thin dashed: proportional limit; markers:
    Monte Carlo (paired problems); vertical line: the exact crossover ``k*``.
    """
    import matplotlib.pyplot as plt

    alpha = np.asarray(rows["alpha"])
    alphas = np.unique(alpha)
    if axes is None:
        _, axes = plt.subplots(1, len(alphas), figsize=(4.2 * len(alphas), 4), sharey=True)
    axes = np.atleast_1d(axes)
    kappa = np.asarray(rows["kappa"])
    n_arr, k_arr = np.asarray(rows["n"]), np.asarray(rows["k"])
    d = int(rows["d"])
    sigma = float(rows["sigma"])
    cross = rows["crossover"]
    for ax, a in zip(axes, alphas):
        m = alpha == a
        n = int(n_arr[m][0])
        k_dense = np.unique(np.round(np.geomspace(1, k_arr.max(), 200)).astype(int))
        for start, style, key, color in (("pretrained", "-", "pre", "C0"), ("scratch", ":", "scr", "C3")):
            th = isotropic_one_step(n, d, k_dense, sigma, start)
            lim = proportional_limit(n / d, k_dense / d, sigma**2 / d, start)
            ax.plot(k_dense / d, th["loss_after"] / d, style, color=color, label=f"from {start} (theory, d={d})")
            ax.plot(k_dense / d, lim["loss_after"], "--", color=color, lw=0.8, alpha=0.7,
                    label=f"from {start} (limit d→∞)")
            ax.errorbar(kappa[m], np.asarray(rows[f"{key}_mc"])[m] / d,
                        yerr=2 * np.asarray(rows[f"{key}_mc_se"])[m] / d, fmt="o" if key == "pre" else "s",
                        ms=4, capsize=2, color=color, label=f"from {start} (simulation)")
        i = list(np.round(cross["alpha"], 12)).index(round(float(a), 12))
        ax.axvline(cross["k_star_exact"][i] / d, color="k", lw=0.8, label="crossover k*/d (exact)")
        ax.axvline(cross["k_star_limit"][i] / d, color="gray", ls="--", lw=0.8, label="crossover (limit)")
        ax.set(xscale="log", xlabel="TTT set size / dimension  k/d", title=f"n/d = {a:g}{title_suffix}")
    axes[0].set_ylabel("test loss after one TTT step / d")
    axes[0].legend(fontsize=7)
    return axes


# ---------------------------------------------------------------------------------------------------------
# Chapter 06: general covariance, against the alignment angle
# ---------------------------------------------------------------------------------------------------------


def alignment_sweep(d: int, r: int, n: int, ks, thetas, sigma: float = 0.5, floor: float = 0.1,
                    n_tasks: int = 4000, k_grid=None, seed: int = 0) -> dict:
    """Theory and simulation of one TTT step, pretrained (``W*`` of ``Sigma_beta``) vs scratch, against ``theta``.

    Target family :func:`subspace_pair` (``r``-dimensional subspaces at principal angle ``theta``).
    For every ``k`` of ``ks`` and ``theta``: full theory, leading-order theory and simulation of the loss
    after one optimal step from both starts. For ``k_grid``: theory and simulated (paired) difference
    ``L_scratch - L_pretrained`` and the theoretical crossing ``k*``. Returns a JSON-serialisable dict.
    """
    d = check_positive_int(d, "d")
    rng = np.random.default_rng(seed)
    thetas = [float(t) for t in thetas]
    out = {"config": dict(d=d, r=r, n=n, ks=list(ks), sigma=sigma, floor=floor, n_tasks=n_tasks, seed=seed,
                          family="subspace_pair"),
           "theta": thetas, "cos2": [float(np.cos(t) ** 2) for t in thetas], "per_k": {}}
    Z = np.zeros((d, d))
    mis = []
    for t in thetas:
        Sb, St = subspace_pair(d, r, t, floor)
        mis.append(misalignment_magnitude(optimal_W(n, d, sigma, Sb), n, 1, sigma, St)["misalignment_fraction"])
    out["misalignment_fraction"] = mis
    for k in ks:
        rec = {key: [] for key in ("theory_warm", "theory_scratch", "lo_warm", "lo_scratch", "before_warm",
                                   "before_scratch", "sim_warm", "sim_warm_se", "sim_scratch", "sim_scratch_se",
                                   "sim_before_warm", "sim_before_warm_se", "misalignment", "magnitude")}
        for t in thetas:
            Sb, St = subspace_pair(d, r, t, floor)
            Ws = optimal_W(n, d, sigma, Sb)
            tw, ts = one_step_theory(Ws, n, k, sigma, St), one_step_theory(Z, n, k, sigma, St)
            lw, ls = misalignment_magnitude(Ws, n, k, sigma, St), misalignment_magnitude(Z, n, k, sigma, St)
            bef, aft = mc_one_step_losses([Ws, Z], [tw.eta_star, ts.eta_star], n, k, sigma, St, n_tasks, rng)
            se = aft.std(axis=1, ddof=1) / np.sqrt(n_tasks)
            for key, val in (("theory_warm", tw.loss_after), ("theory_scratch", ts.loss_after),
                             ("lo_warm", lw["loss_after"]), ("lo_scratch", ls["loss_after"]),
                             ("before_warm", tw.loss_before), ("before_scratch", ts.loss_before),
                             ("sim_warm", aft[0].mean()), ("sim_warm_se", se[0]), ("sim_scratch", aft[1].mean()),
                             ("sim_scratch_se", se[1]), ("sim_before_warm", bef[0].mean()),
                             ("sim_before_warm_se", bef[0].std(ddof=1) / np.sqrt(n_tasks)),
                             ("misalignment", lw["misalignment"]), ("magnitude", lw["magnitude"])):
                rec[key].append(float(val))
        out["per_k"][str(k)] = rec
    if k_grid is not None:
        k_grid = [int(k) for k in k_grid]
        cr = {"k_grid": k_grid, "theory_k": [], "theory_diff": [], "sim_diff": [], "sim_diff_se": []}
        for t in thetas:
            Sb, St = subspace_pair(d, r, t, floor)
            Ws = optimal_W(n, d, sigma, Sb)
            cr["theory_k"].append(scratch_pretrained_crossing(n, d, sigma, Sb, St))
            th_row, sim_row, se_row = [], [], []
            for k in k_grid:
                tw, ts = one_step_theory(Ws, n, k, sigma, St), one_step_theory(Z, n, k, sigma, St)
                _, aft = mc_one_step_losses([Ws, Z], [tw.eta_star, ts.eta_star], n, k, sigma, St, n_tasks, rng)
                diff = aft[1] - aft[0]
                th_row.append(ts.loss_after - tw.loss_after)
                sim_row.append(float(diff.mean()))
                se_row.append(float(diff.std(ddof=1) / np.sqrt(n_tasks)))
            cr["theory_diff"].append(th_row)
            cr["sim_diff"].append(sim_row)
            cr["sim_diff_se"].append(se_row)
        out["crossing"] = cr
    return out


def alignment_theory_exact(res: dict) -> dict:
    """Exact-``B`` theory for the settings of an :func:`alignment_sweep` result (CI run or shipped JSON).

    The sweep's simulation takes the Gaussian theory's ``eta*``; the exact theory predicts the loss at that
    step as well as at its own optimum. Per ``k`` of the sweep and per angle: ``exact_warm`` (pretrained,
    exact ``eta*``), ``exact_warm_at_gauss_eta`` (pretrained, the simulated step), ``gauss_warm`` (the
    Gaussian theory, as ``theory_warm``) and ``eta_ratio`` (Gaussian ``eta*`` over exact ``eta*``, which is
    ``B_exact / B_gauss``). Scratch needs no entry: its ``B`` is exact under both. With a crossing grid:
    the exact crossing ``theory_k`` and, on the grid, ``diff`` (scratch minus pretrained, both at their exact
    ``eta*``) and ``diff_at_gauss_eta`` (the simulated steps).
    """
    cfg = res["config"]
    d, r, n, sigma, floor = cfg["d"], cfg["r"], cfg["n"], cfg["sigma"], cfg["floor"]
    Z = np.zeros((d, d))
    settings = []
    for t in res["theta"]:
        Sb, St = subspace_pair(d, r, t, floor)
        settings.append((Sb, St, optimal_W(n, d, sigma, Sb)))

    def both(W, k, St):
        return one_step_theory(W, n, k, sigma, St, "gauss"), one_step_theory(W, n, k, sigma, St, "exact")

    out = {"per_k": {}}
    for k in cfg["ks"]:
        rec = {key: [] for key in ("exact_warm", "exact_warm_at_gauss_eta", "gauss_warm", "eta_ratio")}
        for _, St, Ws in settings:
            ga, ex = both(Ws, k, St)
            for key, val in (("exact_warm", ex.loss_after), ("exact_warm_at_gauss_eta", float(ex.loss_at(ga.eta_star))),
                             ("gauss_warm", ga.loss_after), ("eta_ratio", ga.eta_star / ex.eta_star)):
                rec[key].append(float(val))
        out["per_k"][str(k)] = rec
    if "crossing" in res:
        grid = res["crossing"]["k_grid"]
        cr = {"k_grid": list(grid), "theory_k": [], "diff": [], "diff_at_gauss_eta": []}
        for Sb, St, Ws in settings:
            cr["theory_k"].append(scratch_pretrained_crossing(n, d, sigma, Sb, St, method="exact"))
            row, row_g = [], []
            for k in grid:
                ga, ex = both(Ws, k, St)
                scr = one_step_theory(Z, n, k, sigma, St, "exact").loss_after
                row.append(scr - ex.loss_after)
                row_g.append(scr - float(ex.loss_at(ga.eta_star)))
            cr["diff"].append(row)
            cr["diff_at_gauss_eta"].append(row_g)
        out["crossing"] = cr
    return out


def gain_error_map(d: int, r: int, alphas, kappas, thetas, sigma: float = 0.5, floor: float = 0.1) -> dict:
    """Relative error of the Gaussian one-step gain of the pretrained start, on a grid of ``n/d`` and ``k/d``.

    Target family :func:`subspace_pair` at each angle of ``thetas``; the start is ``W*`` of ``Sigma_beta`` at the
    same ``n``. Because ``gain = A^2 / B`` with the same exact ``A``, the relative error of the gain is
    ``B_exact / B_gauss - 1``, which is also the relative error of the Gaussian ``eta*``.

    Returns
    -------
    dict with ``n``, ``k`` (integer grids, ``round(alpha d)``, ``round(kappa d)``, at least 1), ``theta``, and
    ``rel_error`` of shape ``(len(thetas), len(kappas), len(alphas))``; ``gain_exact`` (same shape).
    """
    d = check_positive_int(d, "d")
    ns = [max(1, int(round(a * d))) for a in alphas]
    ks = [max(1, int(round(c * d))) for c in kappas]
    err = np.empty((len(thetas), len(ks), len(ns)))
    gain = np.empty_like(err)
    for i, t in enumerate(thetas):
        Sb, St = subspace_pair(d, r, t, floor)
        for j, n in enumerate(ns):
            W = optimal_W(n, d, sigma, Sb)
            for m, k in enumerate(ks):
                ga = one_step_theory(W, n, k, sigma, St, "gauss")
                ex = one_step_theory(W, n, k, sigma, St, "exact")
                err[i, m, j] = ga.improvement / ex.improvement - 1
                gain[i, m, j] = ex.improvement
    return {"d": d, "r": r, "n": ns, "k": ks, "theta": [float(t) for t in thetas], "rel_error": err,
            "gain_exact": gain}


def simulated_crossings(res: dict) -> np.ndarray:
    """First sign change (scratch minus pretrained, from + to -) of the simulated paired differences.

    Linear interpolation in ``log k`` on the sweep's ``k`` grid; ``inf`` if scratch never wins on the grid,
    the first grid point if it wins there already.
    """
    cr = res["crossing"]
    lk = np.log(cr["k_grid"])
    out = []
    for row in cr["sim_diff"]:
        row = np.array(row)
        idx = np.nonzero((row[:-1] > 0) & (row[1:] <= 0))[0]
        if row[0] <= 0:
            out.append(cr["k_grid"][0])
        elif idx.size == 0:
            out.append(np.inf)
        else:
            i = idx[0]
            out.append(float(np.exp(lk[i] + (lk[i + 1] - lk[i]) * row[i] / (row[i] - row[i + 1]))))
    return np.array(out, dtype=float)


def alignment_z_scores(res: dict, exact: dict):
    """Simulated losses after one step minus theory, in standard errors, for an :func:`alignment_sweep` result.

    Returns ``(z_exact, z_gauss)``: one flat array each over ``k``, both starts and every angle; ``z_exact``
    against the exact theory at the simulated step (``exact`` from :func:`alignment_theory_exact`),
    ``z_gauss`` against the Gaussian theory. For scratch both theories coincide.
    """
    zs_e, zs_g = [], []
    for kk, rec in res["per_k"].items():
        for sim, se, th_e, th_g in ((rec["sim_warm"], rec["sim_warm_se"], exact["per_k"][kk]["exact_warm_at_gauss_eta"],
                                     rec["theory_warm"]),
                                    (rec["sim_scratch"], rec["sim_scratch_se"], rec["theory_scratch"], rec["theory_scratch"])):
            zs_e.append((np.array(sim) - th_e) / se)
            zs_g.append((np.array(sim) - th_g) / se)
    return np.concatenate(zs_e), np.concatenate(zs_g)


def plot_loss_vs_alignment(ax, res: dict, exact: dict, title: str = ""):
    """Figure 2a: loss after one TTT step against ``cos^2 theta``; exact (solid) and Gaussian (dashed) theory,
    simulation (markers, 2 standard errors), per ``k``; the pretrained loss before TTT (dotted).

    The pretrained simulation takes the Gaussian ``eta*``; the exact curve is the exact loss at that step.
    """
    from ..plotting import theory_vs_simulation

    x = np.array(res["cos2"])
    for j, (kk, rec) in enumerate(res["per_k"].items()):
        ex = exact["per_k"][kk]
        line = theory_vs_simulation(ax, x, ex["exact_warm_at_gauss_eta"], rec["sim_warm"], rec["sim_warm_se"],
                                    label=f"pretrained, k={kk}", color=f"C{2 * j}")
        ax.plot(x, rec["theory_warm"], "--", color=line.get_color(), label=f"pretrained, k={kk} (Gaussian theory)")
        theory_vs_simulation(ax, x, rec["theory_scratch"], rec["sim_scratch"], rec["sim_scratch_se"],
                             label=f"scratch, k={kk}", color=f"C{2 * j + 1}")
    rec0 = next(iter(res["per_k"].values()))
    ax.plot(x, rec0["before_warm"], "k:", label="pretrained, no TTT (exact)")
    ax.set(title=title, xlabel=r"alignment $\cos^2\theta$", ylabel="test loss after one TTT step")
    ax.legend(fontsize=7)
    return ax


def plot_gain_vs_misalignment(ax, res: dict, exact: dict, title: str = ""):
    """Improvement of the pretrained start (``/ tr Sigma_t``) against its misalignment fraction: exact theory at
    the simulated step (line), simulation (markers) and the leading order ``M^2 / N`` (dashed), per ``k``."""
    from ..plotting import theory_vs_simulation

    tau = res["config"]["d"]  # tr Sigma_t = d for the subspace family
    mf = np.array(res["misalignment_fraction"])
    for kk, rec in res["per_k"].items():
        before = np.array(rec["before_warm"])
        gain_th = (before - np.array(exact["per_k"][kk]["exact_warm_at_gauss_eta"])) / tau
        gain_sim = (before - np.array(rec["sim_warm"])) / tau
        line = theory_vs_simulation(ax, mf, gain_th, gain_sim, np.array(rec["sim_warm_se"]) / tau, label=f"k={kk}")
        lead = np.array(rec["misalignment"]) ** 2 / np.array(rec["magnitude"]) / tau
        ax.plot(mf, lead, "--", color=line.get_color(), label=f"k={kk}, leading order $M^2/N$")
    ax.set(title=title, xlabel=r"misalignment $M/\mathrm{tr}\,\Sigma_t$", ylabel=r"improvement / tr $\Sigma_t$")
    ax.legend(fontsize=7)
    return ax


def plot_crossings(ax, res: dict, exact: dict, title: str = ""):
    """Crossing ``k*/d`` (scratch beats pretrained above it) against ``cos^2 theta``: exact and Gaussian theory,
    simulated crossings of the paired differences."""
    d = res["config"]["d"]
    x = np.array(res["cos2"])
    finite = lambda v: np.where(np.isfinite(v), v, np.nan) / d  # noqa: E731
    ax.semilogy(x, finite(np.array(exact["crossing"]["theory_k"])), "-", label=r"$k^\star/d$ (exact theory)")
    ax.semilogy(x, finite(np.array(res["crossing"]["theory_k"])), "--", label=r"$k^\star/d$ (Gaussian theory)")
    ax.semilogy(x, finite(simulated_crossings(res)), "o", label=r"$k^\star/d$ (simulation)")
    ax.axhline(max(res["crossing"]["k_grid"]) / d, color="gray", ls=":", label="largest simulated k")
    ax.set(title=title, xlabel=r"alignment $\cos^2\theta$", ylabel=r"crossing $k^\star / d$")
    ax.legend(fontsize=8)
    return ax


def plot_gain_error_map(axes, maps, alpha_cut: float):
    """Relative error of the Gaussian gain (in %): top row against ``n/d`` (``k = d``), bottom row against
    ``k/d`` (``n = alpha_cut d``); one column per angle, one line per dimension (``maps`` from
    :func:`gain_error_map` on the same ``alphas``, ``kappas`` and ``thetas``)."""
    for mp in maps:
        d = mp["d"]
        alpha, kappa = np.array(mp["n"]) / d, np.array(mp["k"]) / d
        jk, ja = int(np.argmin(np.abs(kappa - 1))), int(np.argmin(np.abs(alpha - alpha_cut)))
        for i, t in enumerate(mp["theta"]):
            axes[0, i].semilogx(alpha, 100 * mp["rel_error"][i, jk, :], "o-", ms=3, label=f"d={d}")
            axes[1, i].semilogx(kappa, 100 * mp["rel_error"][i, :, ja], "o-", ms=3, label=f"d={d}")
    for i, t in enumerate(maps[0]["theta"]):
        c2 = np.cos(t) ** 2
        axes[0, i].set(title=rf"$\cos^2\theta$ = {c2:.2f}, k = d", xlabel="n/d")
        axes[1, i].set(title=rf"$\cos^2\theta$ = {c2:.2f}, n = {alpha_cut:g} d", xlabel="k/d")
        for ax in axes[:, i]:
            ax.axhline(0, color="k", lw=0.6)
    for ax in axes[:, 0]:
        ax.set_ylabel("Gaussian gain / exact gain − 1  (%)")
        ax.legend(fontsize=8)
    return axes


# ---------------------------------------------------------------------------------------------------------
# Chapter 07: several TTT steps
# ---------------------------------------------------------------------------------------------------------


def multistep_sweep(d: int, r: int, n: int, ks, thetas, sigma: float = 0.5, floor: float = 0.1, steps: int = 30,
                    gamma: float = 0.5, n_tasks: int = 2000, seed: int = 0) -> dict:
    """Multi-step TTT (normalised step ``gamma``) from ``W*`` and from scratch, for each ``k`` and ``theta``.

    Target family :func:`ttt_helpers.theory.general_covariance.subspace_pair`. Per setting: the loss curve over steps, the
    per-step gains, the remaining misalignment (excess over the oracle), the oracle bound, the
    gradient-descent limit, and the one-step theory with the optimal fixed step ``eta*``. Returns a
    JSON-serialisable dict with one record per (theta, start, k).
    """
    rng = np.random.default_rng(seed)
    records = []
    for t in thetas:
        Sb, St = subspace_pair(d, r, float(t), floor)
        for start, W0 in (("pretrained", optimal_W(n, d, sigma, Sb)), ("scratch", np.zeros((d, d)))):
            for k in ks:
                th = one_step_theory(W0, n, int(k), sigma, St)
                lo = misalignment_magnitude(W0, n, int(k), sigma, St)
                res = simulate_ttt(W0, n, int(k), sigma, St, eta=gamma, steps=steps, n_tasks=n_tasks, rng=rng,
                                   normalised=True)
                one = simulate_ttt(W0, n, int(k), sigma, St, eta=th.eta_star, steps=1, n_tasks=n_tasks, rng=rng,
                                   compute_limit=False)
                best = float(res.loss.min())
                records.append({
                    "theta": float(t), "start": start, "k": int(k),
                    "loss": res.loss.tolist(), "loss_se": res.loss_se.tolist(),
                    "gain": res.gain.tolist(), "gain_se": res.gain_se.tolist(),
                    "excess": res.excess.tolist(), "oracle": res.oracle, "limit": res.limit,
                    "limit_se": res.limit_se,
                    "theory_one_step": th.loss_after, "theory_before": th.loss_before, "eta_star": th.eta_star,
                    "sim_one_step": float(one.loss[1]), "sim_one_step_se": float(one.loss_se[1]),
                    "misalignment": lo["misalignment"], "variance": lo["variance"],
                    "first_step_fraction": float((res.loss[0] - res.loss[1]) / (res.loss[0] - best)),
                })
    return {"config": dict(d=d, r=r, n=n, ks=[int(k) for k in ks], thetas=[float(t) for t in thetas],
                           sigma=sigma, floor=floor, steps=steps, gamma=gamma, n_tasks=n_tasks, seed=seed,
                           family="subspace_pair"),
            "records": records}


def plot_multistep_curves(axes, res: dict, title: str = ""):
    """Test loss against the number of TTT steps, one panel per ``k`` (``axes`` has one Axes per ``k``).

    Per setting (start, angle): the simulated loss curve (markers and line), its oracle floor (dashed, same
    colour) and the one-step theory with the fixed ``eta*`` at step 1 (star). ``res`` is a
    :func:`multistep_sweep` result.
    """
    for ax, k in zip(axes, res["config"]["ks"]):
        for rec in (x for x in res["records"] if x["k"] == k):
            steps = np.arange(len(rec["loss"]))
            lab = f"{rec['start']}, $\\theta$={rec['theta']:.2f}"
            line, = ax.plot(steps, rec["loss"], "o-", ms=2.5, label=f"{lab} (simulation)")
            ax.axhline(rec["oracle"], color=line.get_color(), ls="--", lw=0.8)
            ax.plot([1], [rec["theory_one_step"]], "*", ms=10, color=line.get_color(), mec="k")
        ax.set_xscale("symlog", linthresh=1)
        ax.set(title=f"{title}, k={k}", xlabel="TTT steps", ylabel="test loss")
    axes[0].plot([], [], "k--", lw=0.8, label="oracle floor (Monte Carlo of exact bound)")
    axes[0].plot([], [], "k*", ms=8, label=r"one step with $\eta^\star$ (theory)")
    axes[0].legend(fontsize=6)
    return axes


def plot_remaining_misalignment(ax, res: dict, title: str = ""):
    """Remaining misalignment (mean excess over the oracle floor) relative to its value at the start, against
    the number of steps, for the largest ``k`` of a :func:`multistep_sweep` result; log scale."""
    k = max(res["config"]["ks"])
    for rec in (x for x in res["records"] if x["k"] == k):
        ex = np.array(rec["excess"])
        ax.plot(np.arange(ex.size), ex / ex[0], "o-", ms=2.5,
                label=f"{rec['start']}, $\\theta$={rec['theta']:.2f} (simulation)")
    ax.set(xscale="symlog", yscale="log", title=f"{title}, k={k}", xlabel="TTT steps",
           ylabel="remaining misalignment / initial")
    ax.legend(fontsize=7)
    return ax


def multistep_table(res: dict) -> str:
    """One line per setting of a :func:`multistep_sweep` result, values rounded to 3 decimals: one-step theory
    and simulation, the first three gains, the first step's share of the best gain, the best loss, the
    gradient-descent limit and the oracle floor."""
    rows = []
    for rec in res["records"]:
        g = rec["gain"]
        rows.append(f"theta={rec['theta']:.2f} {rec['start']:10s} k={rec['k']:3d}: one step theory "
                    f"{rec['theory_one_step']:7.3f} sim {rec['sim_one_step']:7.3f}; gains {g[0]:6.3f} {g[1]:6.3f} "
                    f"{g[2]:6.3f}; first-step share {rec['first_step_fraction']:.2f}; best {min(rec['loss']):.3f}, "
                    f"limit {rec['limit']:.3f}, floor {rec['oracle']:.3f}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------------
# Chapter 08: sample complexity
# ---------------------------------------------------------------------------------------------------------


def reduction_sweep(ds, kappas, es, sigma: float = 0.5, method: str = "exact") -> dict:
    """Isotropic reduction factors ``n_ICL / n_TTT`` on a grid of ``d``, ``kappa = k / d`` and ``e = eps / d``.

    Returns a JSON-serialisable dict: ``ratio[d][e]`` lists over ``kappas`` (with ``n_icl``, ``n_ttt``) and
    the proportional-limit curves ``limit[e]``.
    """
    out = {"config": dict(ds=[int(d) for d in ds], kappas=[float(x) for x in kappas], es=[float(e) for e in es],
                          sigma=sigma, method=method), "ratio": {}, "n_icl": {}, "n_ttt": {}, "limit": {}}
    for d in ds:
        d = int(d)
        out["ratio"][str(d)], out["n_icl"][str(d)], out["n_ttt"][str(d)] = {}, {}, {}
        for e in es:
            rows = [reduction_factor(e * d, d, max(1, int(round(x * d))), sigma, method) for x in kappas]
            out["ratio"][str(d)][str(e)] = [float(r["ratio"]) for r in rows]
            out["n_icl"][str(d)][str(e)] = [int(r["n_icl"]) for r in rows]
            out["n_ttt"][str(d)][str(e)] = [float(r["n_ttt"]) for r in rows]
    for e in es:
        out["limit"][str(e)] = [float(v) for v in np.atleast_1d(proportional_reduction_factor(e, kappas))]
    return out


def shift_sweep(d: int, r: int, k: int, e: float, thetas, n_max: int, sigma: float = 0.5, floor: float = 0.1) -> dict:
    """Context lengths without and with TTT under a rotated target, one entry per angle.

    For each angle ``theta`` the pretraining covariance and the target are :func:`~ttt_helpers.theory.general_covariance.subspace_pair`
    ``(d, r, theta, floor)``; the target loss is ``e * d`` and TTT uses ``k`` samples
    (:func:`general_context_lengths`, searched up to ``n_max``).

    Returns
    -------
    dict with ``config`` and lists ``theta``, ``n_icl``, ``n_ttt``, ``ratio``.
    """
    out = {"config": dict(d=d, r=r, k=k, e=e, thetas=[float(t) for t in thetas], n_max=n_max),
           "theta": [], "n_icl": [], "n_ttt": [], "ratio": []}
    for t in thetas:
        Sb, St = subspace_pair(d, r, float(t), floor)
        g = general_context_lengths(e * d, k, sigma, Sb, St, n_max)
        for key in ("n_icl", "n_ttt", "ratio"):
            out[key].append(float(g[key]))
        out["theta"].append(float(t))
    return out


def loss_against_context(d: int, k: int, sigma: float, n_max: int, n_sim, n_tasks: int, rng) -> dict:
    """Isotropic loss of ``W*_n`` without TTT and after one optimal TTT step on ``k`` queries, against ``n``.

    Exact theory at every ``n = 1 .. n_max``; simulation of the TTT step (:func:`mc_one_step`, ``n_tasks``
    tasks, start ``W*``) at the context lengths ``n_sim``, drawn from ``rng`` in that order.

    Returns
    -------
    dict with ``n`` (1 .. n_max), ``ttt`` and ``icl`` (exact losses), ``n_sim``, ``sim`` and ``sim_se``, and
    the setting ``d``, ``k``, ``sigma``.
    """
    n = np.arange(1, int(n_max) + 1)
    n_sim = np.asarray(n_sim, dtype=int)
    sims = [mc_one_step(int(m), d, k, sigma, "pretrained", n_tasks=n_tasks, rng=rng) for m in n_sim]
    return {"n": n, "ttt": isotropic_ttt_loss(n, d, k, sigma), "icl": isotropic_optimal_loss(n, d, sigma),
            "n_sim": n_sim, "sim": np.array([s["loss_after"] for s in sims]),
            "sim_se": np.array([s["loss_after_se"] for s in sims]), "d": d, "k": k, "sigma": sigma}


def plot_loss_against_context(ax, res: dict, eps: float, eps_label: str = ""):
    """Draw a :func:`loss_against_context` result: both exact losses (lines), the simulated TTT step (markers,
    2 standard errors) and the target ``eps`` (dotted, labelled ``eps_label``)."""
    k = res["k"]
    ax.plot(res["n"], res["ttt"], "-", label=f"one TTT step, k={k} (theory, exact)")
    ax.errorbar(res["n_sim"], res["sim"], 2 * res["sim_se"], fmt="o", ms=4, capsize=2,
                label=f"one TTT step, k={k} (simulation)")
    ax.plot(res["n"], res["icl"], "-", label="pretrained, no TTT (theory, exact)")
    ax.axhline(eps, color="gray", ls=":", label=eps_label or f"target {eps:g}")
    ax.set(title=f"Loss against context length, d={res['d']}, sigma={res['sigma']}", xlabel="context length n",
           ylabel="test loss")
    ax.legend(fontsize=8)
    return ax


def plot_reduction_factors(axes, ci: dict, full: dict, es=("0.6", "0.4", "0.25")):
    """Reduction factor ``n_ICL / n_TTT`` against ``k / d``, one panel per target ``e = eps / d``: the CI run at
    ``d = 20`` (black markers), each ``d`` of the full run (lines) and the proportional limit (dashed).
    ``ci`` and ``full`` are :func:`reduction_sweep` results."""
    kf = np.array(full["config"]["kappas"])
    kl = np.geomspace(0.2, 20, 200)
    for ax, e in zip(axes, es):
        for d in ci["config"]["ds"]:
            ax.plot(ci["config"]["kappas"], ci["ratio"][str(d)][e], "o", color="k",
                    label=f"d={d}, CI run (theory, exact)")
        for d in full["config"]["ds"]:
            ax.plot(kf, full["ratio"][str(d)][e], "-", marker=".", label=f"d={d}, full run (theory, exact)")
        limit = proportional_reduction_factor(float(e), kl)
        ax.plot(kl, np.where(np.isfinite(limit), limit, np.nan), "k--", label=r"$d\to\infty$ (theory)")
        ax.set(xscale="log", yscale="log", title=rf"target $\varepsilon = {e}\,d$", xlabel="k / d",
               ylabel=r"reduction factor $n_{\rm ICL}/n_{\rm TTT}$")
    axes[0].legend(fontsize=7)
    return axes


def plot_shift_reduction(ax, runs):
    """Reduction factor against the alignment ``cos^2 theta`` for :func:`shift_sweep` results; ``runs`` is a
    list of ``(result, label, style)`` with a Matplotlib format string per run."""
    for sh, label, style in runs:
        ax.plot(np.cos(sh["theta"]) ** 2, sh["ratio"], style, label=label)
    c = runs[0][0]["config"]
    ax.set(title=rf"Context-length reduction under shift ($\varepsilon={c['e']:g}d$, $k={c['k'] // c['d']:g}d$)",
           xlabel=r"alignment $\cos^2\theta$", ylabel=r"$n_{\rm ICL}/n_{\rm TTT}$")
    ax.legend()
    return ax
