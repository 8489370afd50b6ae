"""scripts/device_tree.sh: the checkpoints no GPU run reads go out of the checkout and come back unchanged, the
fallback and every record stay, and the size it reports is what would travel."""

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_tree.sh"


def _run(root, aside, *args, check=True):
    env = {"TTT_ROOT": str(root), "TTT_ASIDE": str(aside), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, check=check)


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "repo"
    models = root / "data" / "models"
    (models / "tabpfn_pretrain_state").mkdir(parents=True)
    files = {"tabpfn_fallback.ckpt": 3, "tabpfn_fallback.json": 1, "tabpfn_six_long.ckpt": 2 << 20,
             "tabpfn_six_long.json": 1, "tabpfn_pretrain_state/state_model.pt": 1 << 20, "gpt2_icl.pt": 5}
    for name, size in files.items():
        (models / name).write_bytes(b"x" * size)
    (models / ".tabpfn_six_long.ckpt.lock").write_text("")
    (root / ".gitignore").write_text("/ignored/\n")
    (root / "ignored").mkdir()
    (root / "ignored" / "big").write_bytes(b"x" * (3 << 20))
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root, files


def test_aside_and_back_move_only_what_no_gpu_run_reads(checkout, tmp_path):
    root, files = checkout
    models, aside = root / "data" / "models", tmp_path / "aside"
    before = {p.relative_to(models): p.read_bytes() for p in models.rglob("*") if p.is_file() and "lock" not in p.name}
    out = _run(root, aside, "aside").stdout
    assert sorted(p.name for p in aside.iterdir()) == ["tabpfn_pretrain_state", "tabpfn_six_long.ckpt"]
    assert "aside: data/models/tabpfn_six_long.ckpt" in out
    kept = sorted(p.name for p in models.iterdir())
    assert kept == ["gpt2_icl.pt", "tabpfn_fallback.ckpt", "tabpfn_fallback.json", "tabpfn_six_long.json"]
    assert _run(root, aside, "aside", check=False).returncode == 1  # twice would mix two sets: refused
    _run(root, aside, "back")
    after = {p.relative_to(models): p.read_bytes() for p in models.rglob("*") if p.is_file()}
    assert after == before and not list(aside.iterdir())


def test_back_keeps_a_copy_put_back_for_a_call_and_refuses_one_that_differs(checkout, tmp_path):
    root, files = checkout
    models, aside = root / "data" / "models", tmp_path / "aside"
    _run(root, aside, "aside")
    (models / "tabpfn_six_long.ckpt").write_bytes((aside / "tabpfn_six_long.ckpt").read_bytes())  # needed by a call
    out = _run(root, aside, "back").stdout
    assert "back: data/models/tabpfn_six_long.ckpt (the checkout already holds the same file)" in out
    assert (models / "tabpfn_six_long.ckpt").stat().st_size == files["tabpfn_six_long.ckpt"]
    assert (models / "tabpfn_pretrain_state" / "state_model.pt").is_file() and not list(aside.iterdir())
    _run(root, aside, "aside")
    (models / "tabpfn_six_long.ckpt").write_bytes(b"changed")  # not the file set aside: nothing may move
    result = _run(root, aside, "back", check=False)
    assert result.returncode == 1 and "differs" in result.stderr
    assert sorted(p.name for p in aside.iterdir()) == ["tabpfn_pretrain_state", "tabpfn_six_long.ckpt"]
    assert not (models / "tabpfn_pretrain_state").exists()


def test_size_counts_the_files_that_travel_and_the_carried_paths(checkout, tmp_path):
    root, files = checkout
    aside = tmp_path / "aside"
    whole = sum(files.values()) + len("/ignored/\n")
    line = _run(root, aside, "size").stdout
    assert line.startswith(f"{whole / 2**20:.1f} MiB")  # untracked files count, ignored ones do not
    assert _run(root, aside, "size", "ignored").stdout.startswith(f"{(whole + (3 << 20)) / 2**20:.1f} MiB")
    _run(root, aside, "aside")
    assert _run(root, aside, "size").stdout.startswith(f"{(whole - (3 << 20)) / 2**20:.1f} MiB")
    assert _run(root, aside, "nonsense", check=False).returncode == 2


def test_aside_keeps_what_a_call_names_and_can_take_the_fallback(checkout, tmp_path):
    root, files = checkout
    models, aside = root / "data" / "models", tmp_path / "aside"
    out = _run(root, aside, "aside", "--keep", "tabpfn_pretrain_state", "--with-fallback").stdout
    assert sorted(p.name for p in aside.iterdir()) == ["tabpfn_fallback.ckpt", "tabpfn_six_long.ckpt"]
    assert "aside: data/models/tabpfn_fallback.ckpt" in out
    assert (models / "tabpfn_pretrain_state" / "state_model.pt").stat().st_size == 1 << 20
    _run(root, aside, "back")
    assert sorted(p.name for p in models.iterdir()) == sorted(
        ["gpt2_icl.pt", "tabpfn_fallback.ckpt", "tabpfn_fallback.json", "tabpfn_pretrain_state", "tabpfn_six_long.ckpt",
         "tabpfn_six_long.json"])
    assert _run(root, aside, "aside", "--keep", "tabpfn_missing", check=False).returncode == 2
    assert _run(root, aside, "aside", "--fast", check=False).returncode == 2
    assert not aside.exists() or not list(aside.iterdir())  # a refused option moves nothing


def test_back_compares_a_folder_copied_back_whole(checkout, tmp_path):
    root, files = checkout
    models, aside = root / "data" / "models", tmp_path / "aside"
    _run(root, aside, "aside")
    subprocess.run(["cp", "-r", str(aside / "tabpfn_pretrain_state"), str(models)], check=True)
    out = _run(root, aside, "back").stdout
    assert "back: data/models/tabpfn_pretrain_state (the checkout already holds the same file)" in out
    assert not list(aside.iterdir()) and (models / "tabpfn_six_long.ckpt").is_file()
    _run(root, aside, "aside")
    subprocess.run(["cp", "-r", str(aside / "tabpfn_pretrain_state"), str(models)], check=True)
    (models / "tabpfn_pretrain_state" / "state_model.pt").write_bytes(b"trained further")
    result = _run(root, aside, "back", check=False)
    assert result.returncode == 1 and "differs" in result.stderr
    assert sorted(p.name for p in aside.iterdir()) == ["tabpfn_pretrain_state", "tabpfn_six_long.ckpt"]
