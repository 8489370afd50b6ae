"""Tests of ttt_helpers.theory.sweeps: the book's sweeps run at toy size, and their sizes are the scripts' sizes."""

import numpy as np
import pytest

from script_modules import load_script
from ttt_helpers.theory import general_covariance as al
from ttt_helpers.theory import sample_complexity as sc
from ttt_helpers.theory import sweeps


def test_isotropic_sweeps_run():
    rows = sweeps.sweep_context_length(5, [0.4, 1.0], [1.0], 0.5, n_tasks=200, rng=0)
    assert len(rows["mc_loss_after"]) == 2 and rows["d"] == 5
    rows = sweeps.sweep_starts(5, [1.0], [0.4, 2.0], 0.5, n_tasks=200, rng=0)
    assert len(rows["diff_mc"]) == 2 and len(rows["crossover"]["k_star_exact"]) == 1


def test_alignment_theory_exact_and_error_map():
    res = {"config": dict(d=8, r=2, n=8, ks=[8], sigma=0.5, floor=0.1), "theta": [0.0, np.pi / 2],
           "crossing": {"k_grid": [2, 64]}}
    ex = sweeps.alignment_theory_exact(res)
    rec = ex["per_k"]["8"]
    assert np.all(np.array(rec["exact_warm"]) <= np.array(rec["exact_warm_at_gauss_eta"]))
    assert np.all(np.array(rec["exact_warm"]) > np.array(rec["gauss_warm"]))   # the Gaussian overstates the gain
    assert np.all(np.array(rec["eta_ratio"]) > 1)
    Sb, St = al.subspace_pair(8, 2, np.pi / 2, 0.1)
    assert ex["crossing"]["theory_k"][1] < al.scratch_pretrained_crossing(8, 8, 0.5, Sb, St)
    assert ex["crossing"]["theory_k"][1] == pytest.approx(
        al.scratch_pretrained_crossing(8, 8, 0.5, Sb, St, method="exact"))
    maps = [sweeps.gain_error_map(d, d // 4, [0.5, 1.0], [0.5, 4.0], [0.0, np.pi / 2]) for d in (8, 32)]
    assert maps[0]["rel_error"].shape == (2, 2, 2) and maps[0]["n"] == [4, 8]
    assert np.all(maps[0]["rel_error"] > 0) and np.all(maps[1]["rel_error"] < maps[0]["rel_error"])


def test_shift_sweep_matches_general_context_lengths_per_angle():
    thetas = [0.0, np.pi / 2]
    out = sweeps.shift_sweep(d=8, r=2, k=16, e=0.4, thetas=thetas, n_max=120, sigma=0.5)
    assert out["theta"] == thetas and out["config"]["d"] == 8
    for i, t in enumerate(thetas):
        Sb, St = al.subspace_pair(8, 2, t, 0.1)
        g = sc.general_context_lengths(0.4 * 8, 16, 0.5, Sb, St, 120)
        assert out["n_icl"][i] == g["n_icl"] and out["n_ttt"][i] == g["n_ttt"]
    assert out["ratio"][1] > out["ratio"][0]  # a rotated target leaves TTT more to do than an aligned one


def test_sweep_profiles_are_the_scripts_profiles():
    for script, names in (("theory_sweeps", ("fig1_isotropic", "scratch_vs_pretrained")),
                          ("theory_sweeps_shift", ("alignment", "multistep", "sample"))):
        mod = load_script(script)
        for profile in ("ci", "full"):
            assert list(mod.PROFILES[profile]) == list(names)
            for name in names:
                assert mod.PROFILES[profile][name] is sweeps.SWEEP_PROFILES[profile][name]
    assert all(set(sizes) == set(sweeps.SWEEP_PROFILES["ci"]) for sizes in sweeps.SWEEP_PROFILES.values())


def test_loss_against_context_matches_theory_and_the_chapter_draws():
    from ttt_helpers.theory.montecarlo import mc_one_step
    from ttt_helpers.theory.pretraining import isotropic_optimal_loss

    res = sweeps.loss_against_context(6, 12, 0.5, n_max=10, n_sim=[3, 8], n_tasks=300, rng=np.random.default_rng(1))
    assert list(res["n"]) == list(range(1, 11)) and res["sim"].shape == (2,)
    assert np.allclose(res["ttt"], sc.isotropic_ttt_loss(np.arange(1, 11), 6, 12, 0.5))
    assert np.allclose(res["icl"], isotropic_optimal_loss(np.arange(1, 11), 6, 0.5))
    rng = np.random.default_rng(1)   # the same draws, in the same order, as the chapter's loop made them
    again = [mc_one_step(m, 6, 12, 0.5, "pretrained", n_tasks=300, rng=rng)["loss_after"] for m in (3, 8)]
    assert np.array_equal(res["sim"], again)
    assert np.all(np.abs(res["sim"] - res["ttt"][res["n_sim"] - 1]) < 5 * res["sim_se"])


def test_alignment_z_scores_and_multistep_table():
    rec = {"sim_warm": [1.0, 2.0], "sim_warm_se": [0.5, 0.5], "theory_warm": [1.5, 2.0],
           "sim_scratch": [3.0, 3.0], "sim_scratch_se": [1.0, 1.0], "theory_scratch": [1.0, 4.0]}
    z_e, z_g = sweeps.alignment_z_scores({"per_k": {"4": rec}}, {"per_k": {"4": {"exact_warm_at_gauss_eta": [1.0, 1.0]}}})
    assert np.allclose(z_e, [0.0, 2.0, 2.0, -1.0]) and np.allclose(z_g, [-1.0, 0.0, 2.0, -1.0])
    res = sweeps.multistep_sweep(d=8, r=2, n=8, ks=[16], thetas=[np.pi / 2], steps=3, n_tasks=200, seed=0)
    lines = sweeps.multistep_table(res).splitlines()
    assert len(lines) == len(res["records"]) == 2 and "pretrained" in lines[0] and "scratch" in lines[1]


def test_chapter_figures_draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = sweeps.multistep_sweep(d=8, r=2, n=8, ks=[16, 32], thetas=[np.pi / 2], steps=3, n_tasks=200, seed=0)
    fig, axes = plt.subplots(1, 3)
    sweeps.plot_multistep_curves(axes[:2], res, "toy")
    sweeps.plot_remaining_misalignment(axes[2], res, "toy")
    assert axes[2].get_title() == "toy, k=32" and len(axes[0].get_lines()) >= 4
    red = sweeps.reduction_sweep([8], [0.5, 2.0], [0.6, 0.4, 0.25])
    fig, axes = plt.subplots(1, 3)
    sweeps.plot_reduction_factors(axes, red, red)
    sh = sweeps.shift_sweep(d=8, r=2, k=16, e=0.4, thetas=[0.0, np.pi / 2], n_max=120)
    fig, ax = plt.subplots()
    sweeps.plot_shift_reduction(ax, [(sh, "toy", "ok")])
    assert "k=2d" in ax.get_title()
    plt.close("all")
