"""Data-parallel pretraining: scripts/pretrain_tabpfn.py as 2 CPU processes on gloo, started by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import ttt_helpers
from ttt_helpers.provenance import repo_root, verify_sha256

SCRIPT = repo_root() / "scripts" / "pretrain_tabpfn.py"


def _torchrun_two_processes(tmp_path, *options) -> list:
    """scripts/pretrain_tabpfn.py as 2 CPU processes under torchrun (tiny model, toy prior, per-batch seeding,
    weights recorded, state in tmp_path/state, export in tmp_path/export); each process's per-step records."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(ttt_helpers.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           "--tiny", "--prior", "toy", "--seeding", "per_batch", *options,
           "--device", "cpu", "--workers", "0", "--no-real-eval", "--no-progress",
           "--record-weights", str(tmp_path / "weights"), "--out-dir", str(tmp_path / "state"),
           "--export-dir", str(tmp_path / "export")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return [[json.loads(line) for line in (tmp_path / "weights" / f"rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]


def test_two_processes_hold_identical_weights_after_every_step(tmp_path):
    steps = 3
    ranks = _torchrun_two_processes(tmp_path, "--architecture", "v2.6", "--num-thinking-rows", "4",
                                    "--optimizer", "muon", "--clock", "steps", "--step-budget", str(steps),
                                    "--eval-every-steps", "100")
    assert [e["step"] for e in ranks[0]] == [e["step"] for e in ranks[1]] == list(range(1, steps + 1))
    for a, b in zip(*ranks):
        assert a["weights"] == b["weights"], f"weights differ between the processes after step {a['step']}"
        assert a["batch"] != b["batch"], f"both processes trained on the same batch at step {a['step']}"
    digests = [e["weights"] for e in ranks[0]]
    assert len(set(digests)) == steps  # the weights moved at every step

    ckpt = tmp_path / "export" / "tabpfn_fallback.ckpt"
    verify_sha256(ckpt, ckpt.with_suffix(".json"))
    prov = json.loads(ckpt.with_suffix(".json").read_text())
    call = prov["calls"][-1]
    assert call["world_size"] == 2 and len(call["data_wait_s_per_rank"]) == 2
    assert prov["results"]["steps"] == steps
    assert prov["results"]["tasks_seen"] == steps * 8 * 2  # 8 tables per step in each of the 2 processes
    state = torch.load(tmp_path / "state" / "state_model.pt", map_location="cpu")
    record = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert all(torch.equal(state[k], record["state_dict"][k]) for k in state)


def test_a_final_call_on_the_clock_is_planned_by_process_0_and_kept_by_both(tmp_path):
    """Time clock, --final-call, a fresh run: process 0 alone evaluates at the start (to measure what an evaluation
    costs) and plans the budget; both processes train to that budget and stop at the same step. (With one warm-up
    step the learning rate follows the budget from the second step on, so processes with different budgets would
    hold different weights.)"""
    ranks = _torchrun_two_processes(tmp_path, "--clock", "time", "--final-call", "--warmup-steps", "1",
                                    "--time-budget-min", "5", "--wall-limit-min", "0.4", "--eval-every-min", "0.1")
    assert len(ranks[0]) == len(ranks[1]) >= 1
    assert [a["weights"] for a in ranks[0]] == [b["weights"] for b in ranks[1]]
    prov = json.loads((tmp_path / "export" / "tabpfn_fallback.json").read_text())
    start = prov["evals"][0]
    assert start["tag"] == "start" and start["step"] == 0 and start["seconds"] >= 0
    assert prov["evals"][-1]["tag"] == "final" and prov["results"]["steps"] == len(ranks[0])


def test_a_single_process_state_resumes_on_two_processes(tmp_path):
    """A run started on one GPU and shipped as a state (as long70 is) can be carried on data-parallel: two processes
    resume it, hold identical weights after every step, and count the steps and tables from the state's."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(ttt_helpers.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    common = ["--tiny", "--prior", "toy", "--seeding", "per_batch", "--architecture", "v2.6", "--num-thinking-rows",
              "4", "--optimizer", "muon", "--clock", "steps", "--step-budget", "5", "--eval-every-steps", "100",
              "--device", "cpu", "--workers", "0", "--no-real-eval", "--no-progress"]
    one = subprocess.run([sys.executable, str(SCRIPT), *common, "--max-steps", "2", "--out-dir", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert one.returncode == 0 and "not done" in one.stdout, one.stdout[-3000:] + one.stderr[-3000:]
    ranks = _torchrun_two_processes(tmp_path, *common[common.index("--architecture"):common.index("--device")],
                                    "--resume", str(tmp_path / "one"))
    assert [e["step"] for e in ranks[0]] == [e["step"] for e in ranks[1]] == [3, 4, 5]
    assert [a["weights"] for a in ranks[0]] == [b["weights"] for b in ranks[1]]
    assert all(a["batch"] != b["batch"] for a, b in zip(*ranks))
    prov = json.loads((tmp_path / "export" / "tabpfn_fallback.json").read_text())
    assert [c.get("world_size", 1) for c in prov["calls"]] == [1, 2]
    assert prov["results"]["steps"] == 5 and prov["results"]["tasks_seen"] == 2 * 8 + 3 * 8 * 2
