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
