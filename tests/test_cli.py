"""Tests for the command line (python -m ttt_helpers / ttt-helpers) and ttt_helpers.tabpfn.report, on a tiny checkpoint."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import torch  # a hard dependency: fail, never skip, if it is missing
import tabpfn  # a hard dependency: fail, never skip, if it is missing
import pandas as pd  # a hard dependency: fail, never skip, if it is missing

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ttt_helpers.tabpfn import checkpoints as tm  # noqa: E402
from ttt_helpers.tabpfn.analysis import reduction_factors  # noqa: E402
from ttt_helpers.tabpfn.cli import main  # noqa: E402
from ttt_helpers.tabpfn.report import REPORT_KEYS, read_table, resolve_context_sizes  # noqa: E402

HYP = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


TINY = str(tm.tiny_random_checkpoint(Path(tempfile.gettempdir()) / "ttt_helpers_tests" / "tiny_cli.ckpt"))
FAST = ["--model", TINY, "--steps", "2", "--n-query", "16", "--context-sizes", "2,8,32", "--repeats", "1",
        "--max-test", "24", "--no-progress"]


def _table(n=160, k=3, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "x1": rng.normal(size=n),
        "x2": rng.normal(size=n),
        "city": rng.choice(["Oslo", "Lima", "Pune"], n),
        "label": np.array(list("abcdefghijklmnop"))[np.arange(n) % k],
    })
    df.loc[::9, "x2"] = np.nan
    df.loc[::13, "city"] = np.nan
    df.loc[5, "label"] = np.nan  # a missing target: the row is dropped
    return df


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "table.csv"
    _table().to_csv(path, index=False)
    return path


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_happy_path_writes_report_and_plot(csv, tmp_path, capsys):
    out_dir = tmp_path / "report"
    code, out, err = _run([csv, "--target", "label", "--output-dir", out_dir, "--ttt-size", "60", *FAST], capsys)
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(report)
    assert (out_dir / "accuracy_vs_context.png").stat().st_size > 1000
    d, p, c = report["dataset"], report["protocol"], report["curves"]
    assert d["rows_read"] == 160 and d["rows_missing_target"] == 1 and d["rows"] == 159
    assert d["categorical_columns"] == ["city"] and d["n_classes"] == 3
    assert p["ttt_rows"] == 60 and p["pool_rows"] + p["test_rows"] == 99 and p["context_sizes"] == [2, 8, 32]
    assert len(c["no_ttt"]["mean"]) == len(c["ttt"]["mean"]) == 3 and 0 <= c["majority"] <= 1
    assert len(c["logistic_regression"]["mean"]) == len(c["hist_gradient_boosting"]["mean"]) == 3
    rec = report["recipe"]
    assert len(c["no_ttt_open_argmax"]) == 3 and all(0 <= a <= 1 for a in c["no_ttt_open_argmax"])
    assert c["rules"]["none"] == "present" and c["rules"]["ttt"] in ("open", "present")
    assert (c["rules"]["ttt"] == "present") == (rec["selected"] is None)
    assert all(0 <= s <= 1 for v in c["absent_class_share"].values() for s in v)
    floor = c["majority"] + 0.02
    again = reduction_factors(c["context_sizes"], c["no_ttt"]["mean"], c["ttt"]["mean"], floor=floor)
    assert again["factor"] == pytest.approx(report["reduction"]["factor"], nan_ok=True)
    assert report["reduction"]["floor"] == pytest.approx(floor) and all(t > floor for t in again["targets"])
    rec, k = report["recipe"], report["cost"]
    assert rec["recipe"]["kind"] == "search" and rec["n_validation"] == 12
    assert len(rec["runs"]) == len(rec["recipe"]["lrs"])
    assert k["ttt_seconds"] >= k["optimizer_seconds"] > 0 and k["search_scoring_seconds"] > 0
    assert k["steps_run"] == sum(r["steps_run"] for r in rec["runs"])
    assert (k["break_even"] is None) == (not np.isfinite(report["reduction"]["median_factor"]) and
                                         not any(np.isfinite(report["reduction"]["factor"])))
    assert isinstance(report["warnings"], list) and d["separator"] == ","
    assert report["model"]["description"] == "checkpoint file tiny_cli.ckpt"
    assert "model: checkpoint file tiny_cli.ckpt" in out and "reduction factor" in out
    assert "recipe search on 12 held-out TTT rows" in out and "time: TTT" in out
    assert "dropped 1 of 160 rows whose target is empty" in out


def test_context_longer_than_every_validated_one_is_guarded(csv, tmp_path, capsys, monkeypatch):
    """60 TTT rows validate contexts up to 48 rows; the report's TTT curve is guarded size by size
    (analysis.apply_guard): where the rule says 'pretrained', it is the pretrained weights' curve, and the report
    says which weights each size used. The rule itself is forced here (the tiny model's search keeps its weights;
    analysis and finetune test the rule)."""
    from ttt_helpers.tabpfn import analysis

    fast = [a if a != "2,8,32" else "2,8,64" for a in FAST]
    args = [csv, "--target", "label", "--ttt-size", "60", *fast]
    code, out, err = _run([*args, "--output-dir", tmp_path / "real"], capsys)
    assert code == 0, err
    real = json.loads((tmp_path / "real" / "report.json").read_text())
    assert real["recipe"]["validation_sizes"][-1] == 48 and real["curves"]["context_sizes"] == [2, 8, 64]
    if real["recipe"]["selected"] is None:  # a search that kept the pretrained weights: pretrained everywhere
        assert real["curves"]["ttt_weights"] == ["pretrained"] * 3
    monkeypatch.setattr(analysis, "_guard_use", lambda r, label, z: [True, True, False])
    code, out, err = _run([*args, "--output-dir", tmp_path / "forced"], capsys)
    assert code == 0, err
    c = json.loads((tmp_path / "forced" / "report.json").read_text())["curves"]
    assert c["ttt_weights"] == ["adapted", "adapted", "pretrained"]
    assert c["ttt"]["mean"][:2] == c["ttt_unguarded"]["mean"][:2] and c["ttt"]["mean"][2] == c["no_ttt"]["mean"][2]
    assert c["absent_class_share"]["ttt"][2] == c["absent_class_share"]["no_ttt"][2]


def test_keep_top_classes_max_rows_and_categorical(tmp_path, capsys):
    path = tmp_path / "many.csv"
    df = _table(n=200, k=12)
    df.loc[df["label"].isin(["a", "b"]), "label"] = "a"  # 'a' is the most frequent class
    df.to_csv(path, index=False)
    code, _, err = _run([path, "--target", "label", "--output-dir", tmp_path / "r", "--keep-top-classes", "3",
                         "--max-rows", "40", "--ttt-size", "0.5", "--categorical", "x1", "--drop", "x2", *FAST],
                        capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["dataset"]["n_classes"] == 3 and rep["dataset"]["rows"] == 40
    assert rep["dataset"]["features"] == ["x1", "city"] and "x1" in rep["dataset"]["categorical_columns"]


def test_semicolon_separated_file_is_detected_and_named(tmp_path, capsys):
    path = tmp_path / "semi.csv"
    _table().to_csv(path, index=False, sep=";")
    code, out, err = _run([path, "--target", "label", "--output-dir", tmp_path / "r", "--ttt-size", "60", *FAST],
                          capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["dataset"]["separator"] == ";"
    # a wrong separator forced by hand: the message says which one was used and how to change it
    code, _, err = _run([path, "--target", "label", "--sep", "comma", "--output-dir", tmp_path / "r2", *FAST], capsys)
    assert code == 2 and "separator comma ','" in err and "--sep" in err and not (tmp_path / "r2").exists()


def test_target_with_empty_values_drops_and_counts_the_rows(tmp_path, capsys):
    """300 rows, a third of the targets empty (some blank, some whitespace), the default 128 queries per episode:
    the rows are dropped and counted, and TTT still finds contexts (it used to stop with 'no TTT context with a
    non-constant feature in 50 draws', which never named the missing targets)."""
    t = _table(n=300)
    t["label"] = t["label"].astype(object)
    t.loc[t.index % 3 == 0, "label"] = np.nan  # written as an empty field
    t.loc[t.index % 6 == 1, "label"] = " "  # a blank field
    path = _write(tmp_path, t, "holes.csv")
    fast = [a if a != "16" else "128" for a in FAST]  # --n-query 128, the default
    code, out, err = _run([path, "--target", "label", "--output-dir", tmp_path / "r", *fast], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    missing = rep["dataset"]["rows_missing_target"]
    assert missing == 151 and rep["dataset"]["rows"] == 149  # _table leaves one more target empty (row 5)
    assert f"dropped {missing} of 300 rows whose target is empty" in out


_COUNTER = iter(range(10**6))


def _write(tmp_path, df, name=None):
    path = tmp_path / (name or f"bad_{next(_COUNTER)}.csv")
    df.to_csv(path, index=False)
    return path


def _bad_tables(tmp_path):
    t = _table()
    inf = t.copy()
    inf.loc[3, "x1"] = np.inf
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    return [
        ("unknown target", _write(tmp_path, t), ["--target", "nope"], "unknown target column 'nope'"),
        ("single class", _write(tmp_path, t.assign(label="a")), ["--target", "label"], "only 1 class"),
        ("eleven classes", _write(tmp_path, _table(k=11)), ["--target", "label"],
         r"11 classes.*at most 10.*--keep-top-classes"),
        ("too few rows", _write(tmp_path, t), ["--target", "label", "--ttt-size", "1000"],
         "too few rows for ttt_size=1000"),
        ("infinite feature", _write(tmp_path, inf), ["--target", "label"], "column 'x1' contains 1 infinite"),
        ("infinite target", _write(tmp_path, t.assign(x1=np.arange(160) % 3, label=np.where(
            np.arange(160) == 0, np.inf, np.arange(160) % 3.0))), ["--target", "label"], "infinite"),
        ("continuous target", _write(tmp_path, t), ["--target", "x1"], "Unknown label type"),
        ("not a CSV", garbage, ["--target", "label"], "could not read"),
        ("empty file", empty, ["--target", "label"], "could not read"),
        ("no such file", tmp_path / "absent.csv", ["--target", "label"], "no such file"),
        ("a folder", tmp_path, ["--target", "label"], "no such file"),
        ("unknown drop column", _write(tmp_path, t), ["--target", "label", "--drop", "zzz"], "unknown column"),
        ("one-row context", _write(tmp_path, t), ["--target", "label", "--context-sizes", "1,8"], ">= 2"),
        ("bad keep-top-classes", _write(tmp_path, t), ["--target", "label", "--keep-top-classes", "11"],
         "between 2 and 10"),
        ("zero steps", _write(tmp_path, t), ["--target", "label", "--steps", "0"], "--steps must be a positive"),
        ("missing model", _write(tmp_path, t), ["--target", "label", "--model", "/nonexistent/x.ckpt"],
         "no such file"),
    ]


def test_each_bad_input_fails_clearly_and_writes_nothing(tmp_path, capsys):
    cases = _bad_tables(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, path, args, match in cases:
        out_dir = tmp_path / f"out_{name.replace(' ', '_')}"
        fast = [a for a in FAST if a not in ("--model", TINY)] if "--model" in args else FAST
        code, out, err = _run([path, *fast, *args, "--output-dir", out_dir], capsys)
        assert code == 2, name
        assert err.startswith("ttt-helpers: error: "), (name, err)
        assert __import__("re").search(match, err, flags=__import__("re").S), (name, err)
        assert not out_dir.exists(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("args", [["--ttt-size", "lots"], ["--ttt-size", "-3"], ["--lr", "0"], ["--lr", "inf"],
                                  ["--context-sizes", "2,x"], ["--optimizer", "adam"]])
def test_bad_option_values_exit_2(csv, tmp_path, args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(csv), "--target", "label", "--output-dir", str(tmp_path / "o"), *args])
    assert exc.value.code == 2 and not (tmp_path / "o").exists()
    assert "error" in capsys.readouterr().err


def test_module_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "ttt_helpers", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--target" in res.stdout and "--ttt-size" in res.stdout


def test_output_dir_that_is_a_file(csv, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    code, _, err = _run([csv, "--target", "label", "--output-dir", blocker, *FAST], capsys)
    assert code == 2 and "not a folder" in err and blocker.read_text() == "x"


# ----------------------------------------------------------------------------------------------------------
# hypothesis: shapes and values (all fail before the model runs, so they are fast)


@HYP
@given(row=st.integers(0, 159).filter(lambda r: r != 5),  # row 5 has no target: it is dropped
       col=st.sampled_from(["x1", "x2"]), value=st.sampled_from([np.inf, -np.inf]))
def test_any_infinite_feature_is_refused(tmp_path, capsys, row, col, value):
    t = _table()
    t.loc[row, col] = value
    path = _write(tmp_path, t, "inf.csv")
    out_dir = tmp_path / "never"
    code, _, err = _run([path, "--target", "label", "--output-dir", out_dir, *FAST], capsys)
    assert code == 2 and f"column '{col}' contains 1 infinite" in err and not out_dir.exists()


@HYP
@given(n=st.integers(2, 80), ttt=st.integers(3, 120))
def test_any_row_count_below_the_budget_is_refused(tmp_path, capsys, n, ttt):
    if n - ttt >= 10:
        return
    path = _write(tmp_path, _table(n=n + 10).iloc[:n], "small.csv")
    out_dir = tmp_path / "never"
    code, _, err = _run([path, "--target", "label", "--ttt-size", str(ttt), "--output-dir", out_dir, *FAST], capsys)
    assert code == 2 and ("too few rows" in err or "1 class" in err or "TTT needs at least" in err)
    assert not out_dir.exists()


@HYP
@given(k=st.integers(11, 16))
def test_any_class_count_above_ten_explains_the_options(tmp_path, capsys, k):
    path = _write(tmp_path, _table(n=200, k=k).dropna(subset=["label"]), "many.csv")
    code, _, err = _run([path, "--target", "label", "--output-dir", tmp_path / "never", *FAST], capsys)
    assert code == 2 and f"{k} classes" in err and "--keep-top-classes" in err and "qcut" in err


@HYP
@given(sizes=st.lists(st.integers(-5, 3000), min_size=1, max_size=6), pool=st.integers(2, 1000))
def test_resolve_context_sizes(sizes, pool):
    if min(sizes) < 2:
        with pytest.raises(ValueError, match=">= 2"):
            resolve_context_sizes(sizes, pool)
    else:
        out = resolve_context_sizes(sizes, pool)
        assert out == sorted(set(out)) and max(out) <= pool and min(out) >= 2


def test_read_table_counts_rows(csv):
    X, y, info = read_table(csv, "label")
    assert X.shape == (159, 3) and y.isna().sum() == 0 and info["rows_missing_target"] == 1
    assert info["classes"] == ["a", "b", "c"] and sum(info["class_counts"].values()) == 159
