import json

import numpy as np
import pytest

from ttt_helpers import provenance as pv


def test_write_read_verify_roundtrip(tmp_path):
    blob = tmp_path / "model.bin"
    blob.write_bytes(b"weights" * 100)
    rec = pv.write_provenance(tmp_path / "model.json", command="python train.py --seed 1", seeds=[1],
                              results={"loss": np.float64(0.25)}, files=[blob], commit="abc123")
    assert rec["files"]["model.bin"] == pv.sha256_file(blob)
    back = pv.read_provenance(tmp_path / "model.json")
    assert back["command"] == "python train.py --seed 1" and back["results"]["loss"] == 0.25
    assert back["git_commit"] == "abc123" and "machine" in back and "date_utc" in back
    assert pv.verify_sha256(blob) == rec["files"]["model.bin"]


def test_tampered_file_is_rejected(tmp_path):
    blob = tmp_path / "model.bin"
    blob.write_bytes(b"abc")
    pv.write_provenance(tmp_path / "model.json", command="x", files=[blob], commit="c")
    blob.write_bytes(b"abd")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        pv.verify_sha256(blob)


def test_unlisted_file_and_missing_provenance(tmp_path):
    other = tmp_path / "other.bin"
    other.write_bytes(b"1")
    (tmp_path / "other.json").write_text(json.dumps({"command": "x", "files": {}}))
    with pytest.raises(ValueError, match="no sha256"):
        pv.verify_sha256(other)
    with pytest.raises(FileNotFoundError):
        pv.read_provenance(tmp_path / "absent.json")


def test_provenance_table(tmp_path):
    blob = tmp_path / "r.bin"
    blob.write_bytes(b"r")
    pv.write_provenance(tmp_path / "r.json", command="cmd", files=[blob], commit="c" * 40)
    (tmp_path / "notprov.json").write_text("[1, 2]")
    rows = pv.provenance_table(tmp_path)
    assert len(rows) == 1 and rows[0]["sha256_ok"] is True and rows[0]["git_commit"] == "c" * 12
    blob.write_bytes(b"changed")
    assert pv.provenance_table(tmp_path)[0]["sha256_ok"] is False


def test_git_commit_env_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("TTT_GIT_COMMIT", "deadbeef")
    assert pv.git_commit(cwd=tmp_path) == "deadbeef"
    assert pv.git_commit() == "deadbeef"  # also inside a git checkout: the variable names the commit sent
    monkeypatch.delenv("TTT_GIT_COMMIT")
    assert pv.git_commit(cwd=tmp_path) == "unknown"


def _shipped_tree(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "results").mkdir(parents=True)
    (data / "models").mkdir()
    monkeypatch.setenv("TTT_BOOK_DATA", str(data))
    result = data / "results" / "sweep.json"
    result.write_text(json.dumps({"rows": [1, 2]}))
    machine = {"platform": "Linux-x", "cpu_count": 2, "accelerator": "none (CPU)"}
    record = pv.write_provenance(data / "results" / "sweep.provenance.json", command="python scripts/sweep.py --full",
                                 files=[result], commit="a" * 40 + "+dirty", extra={"wall_seconds": 12.4})
    record["machine"], record["date_utc"] = machine, "2026-01-02T03:04:05+00:00"
    (data / "results" / "sweep.provenance.json").write_text(json.dumps(record))
    model = data / "models" / "net.pt"
    model.write_bytes(b"weights")
    rec = pv.write_provenance(data / "models" / "net.json", command="python train.py", files=[model], commit="b" * 40)
    rec["machine"] = {"platform": "Linux-y", "cpu_count": 16, "accelerator": "GPU X", "accelerator_count": 2}
    rec["date_utc"] = "2026-02-03T00:00:00+00:00"
    (data / "models" / "net.json").write_text(json.dumps(rec))
    return data


def test_show_shipped_result_and_model(tmp_path, monkeypatch, capsys):
    data = _shipped_tree(tmp_path, monkeypatch)
    res = pv.show_shipped("sweep")
    assert res == {"rows": [1, 2]} and res.provenance["command"] == "python scripts/sweep.py --full"
    assert repr(res) == "<shipped result with keys rows>"
    assert capsys.readouterr().out.splitlines() == [
        "shipped result data/results/sweep.json (sha256 matches sweep.provenance.json)",
        "  made by: python scripts/sweep.py --full",
        "  commit aaaaaaaaaaaa+dirty, 2026-01-02, on 2 CPUs (Linux-x), wall time 12 s",
    ]
    assert pv.show_shipped("sweep.json") == res
    capsys.readouterr()
    prov = pv.show_shipped("net.pt")
    assert prov["command"] == "python train.py"
    assert capsys.readouterr().out.splitlines() == [
        "shipped model data/models/net.pt (sha256 matches net.json)",
        "  made by: python train.py",
        "  commit bbbbbbbbbbbb, 2026-02-03, on 2 x GPU X",
    ]
    (data / "results" / "sweep.json").write_text(json.dumps({"rows": [1, 3]}))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        pv.show_shipped("sweep")
    with pytest.raises(FileNotFoundError, match="no shipped result"):
        pv.show_shipped("absent")
    with pytest.raises(ValueError):
        pv.show_shipped("")


def test_show_shipped_on_the_shipped_data(capsys):
    for name in ("fig1_isotropic", "scratch_vs_pretrained", "gpt2_icl.pt"):
        pv.show_shipped(name)
        assert capsys.readouterr().out.count("\n") == 3


def test_show_shipped_data_file_by_its_path(tmp_path, monkeypatch, capsys):
    data = _shipped_tree(tmp_path, monkeypatch)
    table = data / "own" / "t.csv"
    table.parent.mkdir()
    table.write_text("a,b\n1,2\n")
    rec = pv.write_provenance(data / "own" / "t.json", command="python export.py", files=[table], commit="c" * 40)
    rec["machine"], rec["date_utc"] = {"platform": "Linux-z", "cpu_count": 2}, "2026-03-04T00:00:00+00:00"
    (data / "own" / "t.json").write_text(json.dumps(rec))
    assert pv.show_shipped("own/t.csv")["command"] == "python export.py"
    assert capsys.readouterr().out.splitlines() == [
        "shipped data data/own/t.csv (sha256 matches t.json)",
        "  made by: python export.py",
        "  commit cccccccccccc, 2026-03-04, on 2 CPUs (Linux-z)",
    ]
    table.write_text("a,b\n1,3\n")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        pv.show_shipped("own/t.csv")
    with pytest.raises(FileNotFoundError, match="data file"):
        pv.show_shipped("own/absent.csv")
    with pytest.raises(FileNotFoundError):
        pv.show_shipped("own/t.json")  # a provenance file is not a shipped data file


def test_show_shipped_on_the_shipped_table(capsys):
    record = pv.show_shipped("own_data/political_information.csv")
    assert record["results"]["rows"] == 1807
    assert capsys.readouterr().out.startswith("shipped data data/own_data/political_information.csv (sha256 matches")


def test_command_line_quotes_the_arguments_a_script_was_given(monkeypatch):
    from ttt_helpers.provenance import command_line

    monkeypatch.setattr("sys.argv", ["scripts/x.py", "--from-process"])
    assert command_line() == "python scripts/x.py --from-process"
    assert command_line(["--out", "a b", "--n", 3]) == "python scripts/x.py --out 'a b' --n 3"
    assert command_line([]) == "python scripts/x.py"  # an empty list is the arguments, not "none given"


def test_write_result_writes_the_json_and_a_provenance_that_verifies_it(tmp_path):
    """provenance.write_result: <name>.json holds the result, <name>.provenance.json the command, the commit, the
    headline results, the wall time and the sha256 that verify_sha256 accepts; a changed byte is refused."""
    result = {"seconds": 12.5, "values": np.arange(3)}  # numpy values written as JSON numbers
    path = pv.write_result(tmp_path / "out", "demo", result, command="python demo.py --x 1", commit="abc1234",
                           seeds={"seed": 0}, results={"mean": 0.5})
    assert path == tmp_path / "out" / "demo.json"
    assert json.loads(path.read_text()) == {"seconds": 12.5, "values": [0, 1, 2]}
    record = pv.read_provenance(tmp_path / "out" / "demo.provenance.json")
    assert (record["command"], record["git_commit"], record["results"], record["seeds"], record["wall_seconds"]) == (
        "python demo.py --x 1", "abc1234", {"mean": 0.5}, {"seed": 0}, 12.5)
    pv.verify_sha256(path, tmp_path / "out" / "demo.provenance.json")
    path.write_text(path.read_text().replace("12.5", "12.6"))
    with pytest.raises(ValueError):
        pv.verify_sha256(path, tmp_path / "out" / "demo.provenance.json")


def test_machine_description_names_the_host_cpu():
    from ttt_helpers.provenance import cpu_model, machine_description

    desc = machine_description()
    assert desc["cpu_model"] == cpu_model() and desc["cpu_model"].strip() and desc["cpu_count"] >= 1
