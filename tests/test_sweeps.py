"""Tests of ttt_helpers.theory.sweeps: the book's sweeps run at toy size, and their sizes are the scripts' sizes."""

import numpy as np
import pytest

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
    import importlib.util
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    for script, names in (("theory_sweeps", ("fig1_isotropic", "scratch_vs_pretrained")),
                          ("theory_sweeps_shift", ("alignment", "multistep", "sample"))):
        spec = importlib.util.spec_from_file_location(script, scripts / f"{script}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for profile in ("ci", "full"):
            assert list(mod.PROFILES[profile]) == list(names)
            for name in names:
                assert mod.PROFILES[profile][name] is sweeps.SWEEP_PROFILES[profile][name]
    assert all(set(sizes) == set(sweeps.SWEEP_PROFILES["ci"]) for sizes in sweeps.SWEEP_PROFILES.values())
