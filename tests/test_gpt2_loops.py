"""Toy-size CPU tests of the loops behind the shipped GPT-2 results: ttt_helpers.gpt2.train.Trainer (the model
data/models/gpt2_icl.pt) and ttt_helpers.gpt2.ttt (test_time_train, TTTExperiment: data/results/gpt2_ttt_full.json)."""

import json
import math

import numpy as np
import pytest
import torch

from ttt_helpers import gpt2 as G
from ttt_helpers.provenance import write_provenance

TINY = G.GPT2ICLConfig(d=3, n_points=9, n_embd=16, n_layer=1, n_head=2)
S = G.decaying_covariance(3, 3.0)


def trainer(tmp_path=None, seed=0, **cfg):
    config = G.TrainConfig(**{"batch": 32, "lr": 3e-3, "warmup": 5, "log_every": 10, "ckpt_every": 10, **cfg})
    return G.Trainer(G.new_scratch_model(TINY, seed), config, sigma=0.1, Sigma_beta=S, gen=seed + 1,
                     ckpt_path=None if tmp_path is None else tmp_path / "last.pt", log=lambda msg: None)


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------


def test_trainer_reduces_loss():
    t = trainer(steps=60)
    xs, ys = G.eval_dataset(9, 256, TINY, 0.1, S)
    before = float(G.eval_loss_per_position(t.model, xs, ys).mean())
    state = t.run()
    after = float(G.eval_loss_per_position(t.model, xs, ys).mean())
    assert state["step"] == 60 and [h[0] for h in state["history"]] == [10, 20, 30, 40, 50, 60]
    assert after < 0.8 * before
    assert state["history"][-1][1] < 0.8 * state["history"][0][1]
    assert t.final_train_loss == pytest.approx(np.mean([h[1] for h in state["history"][-5:]]))
    assert state["timed_tokens"] == (60 - 20) * t.tokens_per_step  # the first warm_steps = 20 are not timed


def test_eval_loss_per_position_matches_icl_loss():
    model = G.new_scratch_model(TINY, 3)
    xs, ys = G.eval_dataset(1, 40, TINY, 0.1, S)
    with torch.no_grad():
        ref = G.icl_loss(model, xs, ys, per_position=True).double()
    per_n = G.eval_loss_per_position(model, xs, ys, batch_size=16)  # three batches, the last one short
    assert per_n.shape == (9,) and per_n.dtype == torch.float64
    assert torch.allclose(per_n, ref, rtol=1e-5)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    straight = trainer(steps=30)
    straight.run()

    first = trainer(tmp_path, steps=30)
    step = first.step

    def interrupted(lr):  # the machine goes away during step 16; the checkpoint of step 10 survives
        if first.state["step"] == 15:
            raise KeyboardInterrupt
        return step(lr)

    first.step = interrupted
    with pytest.raises(KeyboardInterrupt):
        first.run()
    # a fresh process: another initialisation and generator, restored from the checkpoint
    second = trainer(tmp_path, seed=5, steps=30)
    assert second.state["step"] == 10
    second.run()
    for p, q in zip(straight.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)
    assert second.state["history"] == straight.state["history"]
    assert torch.equal(second.gen.get_state(), straight.gen.get_state())
    # the checkpoint written at the end holds the final weights
    third = trainer(tmp_path, seed=6, steps=30)
    assert third.state["step"] == 30
    assert all(torch.equal(p, q) for p, q in zip(third.model.parameters(), straight.model.parameters()))
    # an explicit number of steps extends a finished run
    longer = trainer(tmp_path, seed=6, steps=40)
    assert longer.run()["step"] == 40


def test_time_budget_fixes_the_number_of_steps():
    t = trainer(time_budget_s=1.0, warm_steps=2, calib_steps=3, log_every=1000)
    state = t.run()
    assert state["total_steps"] is not None and state["total_steps"] >= 5  # fixed after 2 + 3 steps
    assert state["step"] <= state["total_steps"]
    assert state["train_time_s"] < 1.25 * 1.0 + 5.0  # stops at 1.25 budgets (plus one slow step at most)
    assert state["history"][-1][0] == state["step"]


def test_compiler_failure_falls_back_to_eager():
    t = trainer(steps=3)
    reference = trainer(steps=3)

    def broken(xs, ys):
        raise RuntimeError("no compiler here")

    t._fwd, t.compiled = broken, True  # as if torch.compile had been asked for and failed at the first call
    t.run()
    reference.run()
    assert t.compiled is False
    assert all(torch.equal(p, q) for p, q in zip(t.model.parameters(), reference.model.parameters()))


def test_train_config_validation():
    with pytest.raises(ValueError, match="amp must be 'bf16' or 'none'"):
        G.TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        G.TrainConfig(batch=0)
    with pytest.raises(ValueError, match="time_budget_s must be positive"):
        G.TrainConfig(time_budget_s=0)
    with pytest.raises(ValueError, match="clip"):
        G.TrainConfig(clip=-1.0)
    with pytest.raises(ValueError, match="give steps or time_budget_s"):
        trainer().run()
    with pytest.raises(ValueError, match="config must be a TrainConfig"):
        G.Trainer(G.new_scratch_model(TINY, 0), {"steps": 3}, sigma=0.1, Sigma_beta=S, gen=0)
    with pytest.raises(ValueError, match="Sigma_beta must have shape"):
        G.Trainer(G.new_scratch_model(TINY, 0), G.TrainConfig(steps=3), sigma=0.1, Sigma_beta=torch.eye(4), gen=0)


def test_training_provenance(tmp_path):
    t = trainer(steps=20)
    t.run()
    pt = G.save_fp16_checkpoint(t.model, tmp_path / "m.pt")
    xs, ys = G.eval_dataset(4, 64, TINY, 0.1, S)
    per_n = G.eval_loss_per_position(G.load_gpt2_icl(pt, verify=False), xs, ys)
    fields = G.training_provenance(t, per_n, sigma=0.1, cov_ratio=3.0, seeds={"init": 0, "data": 1, "eval": 4},
                                   eval_prompts=64, benchmarks={}, checkpoint=pt)
    write_provenance(tmp_path / "m.json", command="test", files=[pt], commit="test", **fields)
    rec = json.loads((tmp_path / "m.json").read_text())
    assert rec["results"]["eval_loss_in_distribution"] == pytest.approx(float(per_n.mean()))
    assert set(rec["results"]["eval_loss_at_n"]) == {"0", "1", "3", "6", "8"}
    assert rec["training"]["steps"] == 20 and rec["training"]["tokens"] == 20 * 32 * 18
    assert rec["training"]["loss_history"] == [[10, t.state["history"][0][1]], [20, t.state["history"][1][1]]]
    assert rec["evaluation"]["seed"] == 4 and rec["config"] == TINY.to_dict()
    G.load_gpt2_icl(pt, provenance_path=tmp_path / "m.json")  # the sha256 in the record matches the file


def test_benchmark_throughput_on_cpu():
    before = torch.backends.cuda.matmul.allow_tf32
    r = G.benchmark_throughput("cpu", TINY, batch=4, steps=2, warm=1)
    assert r["config"] == TINY.to_dict() and r["steps_timed"] == 2 and r["optimized"] is False
    assert r["tokens_per_s"] > 0 and r["mfu_bf16_peak"] is None  # no known peak on a CPU
    assert torch.backends.cuda.matmul.allow_tf32 == before  # the TF32 switch is restored
    assert G.mfu(1e6, TINY, "cpu") is None


# ----------------------------------------------------------------------------------------------------------
# test-time training
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return G.new_scratch_model(TINY, 0).eval()


def test_ttt_config_and_keywords_agree(tiny):
    beta = G.sample_beta_torch(0, 3, 3, S)
    cfg = G.TTTConfig(n_context=4, k=5, steps=3, optimizer="adamw", lr=1e-2, sigma=0.1, n_eval=6)
    by_config = G.test_time_train(tiny, beta, cfg, gen=2)
    by_keywords = G.test_time_train(tiny, beta, gen=2, n_context=4, k=5, steps=3, optimizer="adamw", lr=1e-2,
                                    sigma=0.1, n_eval=6)
    assert by_config.shape == (4, 3) and torch.equal(by_config, by_keywords)
    # keywords replace the config's settings
    sgd = G.test_time_train(tiny, beta, cfg, gen=2, optimizer="sgd", lr=0.05, eval_steps=[3, 0])
    assert torch.equal(sgd, G.test_time_train(tiny, beta, G.TTTConfig(4, 5, 3, "sgd", 0.05, 0.1, 6, (0, 3)), gen=2))
    assert torch.equal(sgd[0], by_config[0])  # before TTT: the same evaluation prompts, whatever the optimizer


def test_ttt_config_validation(tiny):
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'sgd'"):
        G.TTTConfig(n_context=2, k=2, steps=1, optimizer="adam", lr=0.1, sigma=0.0)
    with pytest.raises(ValueError, match=r"eval_steps must lie in \[0, 3\]"):
        G.TTTConfig(n_context=2, k=2, steps=3, optimizer="sgd", lr=0.1, sigma=0.0, eval_steps=[4])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        G.TTTConfig(n_context=2, k=0, steps=1, optimizer="sgd", lr=0.1, sigma=0.0)
    with pytest.raises(ValueError, match=r"give a TTTConfig or the settings \['lr', 'sigma'\]"):
        G.test_time_train(tiny, torch.zeros(2, 3), gen=0, n_context=2, k=2, steps=1, optimizer="sgd")
    with pytest.raises(ValueError, match=r"unknown TTT settings \['learning_rate'\]"):
        G.test_time_train(tiny, torch.zeros(2, 3), gen=0, n_context=2, k=2, steps=1, optimizer="sgd",
                          learning_rate=0.1, sigma=0.0)
    with pytest.raises(ValueError, match="config must be a TTTConfig"):
        G.test_time_train(tiny, torch.zeros(2, 3), {"k": 2}, gen=0)


def small_experiment(**kw):
    return G.TTTExperiment(**{"thetas": [math.pi / 2, 0.0], "ks": [2, 4], "lrs": {"adamw": [1e-2], "sgd": [0.05, 0.2]},
                              "n_context": 3, "steps": 2, "tasks": 5, "n_val": 2, "n_eval": 4, "seed": 10, **kw})


def test_experiment_cells_and_records(tiny):
    exp = small_experiment()
    cells = exp.cells()
    assert len(cells) == 2 * 2 * 2 * 3 and cells[0] == (math.pi / 2, 2, "pretrained", "adamw", 0.01)
    done = {exp.cell_key(*c) for c in cells[:5]}
    assert exp.cells(done) == cells[5:]
    recs = [exp.run_cell(tiny, S, 0.1, c) for c in cells[:3]]  # theta = pi/2, k = 2, pretrained: adamw + 2 x sgd
    for r in recs:
        assert len(r["val_mean"]) == len(r["test_mean"]) == len(r["test_sem"]) == 3
    # the same tasks and TTT data for every optimizer and learning rate of a (theta, k): same loss before TTT
    assert recs[0]["test_mean"][0] == recs[1]["test_mean"][0] == recs[2]["test_mean"][0]
    assert recs[1]["test_mean"][1] != recs[2]["test_mean"][1]
    # a record is test_time_train on the seeded tasks, split into validation and test tasks
    beta = G.sample_beta_torch(10, 5, 3, G.rotated_covariance(S, math.pi / 2))
    losses = G.test_time_train(tiny, beta, n_context=3, k=2, steps=2, optimizer="sgd", lr=0.05, sigma=0.1, n_eval=4,
                               gen=10 + 17 * 2 + 1).double().numpy()
    assert np.allclose(recs[1]["val_mean"], losses[:, :2].mean(1))
    assert np.allclose(recs[1]["test_mean"], losses[:, 2:].mean(1))
    assert np.allclose(recs[1]["test_sem"], losses[:, 2:].std(1, ddof=1) / math.sqrt(3))
    head = exp.headline(recs)
    assert list(head) == ["k=2,pretrained,adamw", "k=2,pretrained,sgd"]
    best = min(recs[1:], key=lambda r: np.mean(r["val_mean"][1:]))
    assert head["k=2,pretrained,sgd"] == {"lr": best["lr"], "step0": best["test_mean"][0],
                                          "step1": best["test_mean"][1], "final": best["test_mean"][-1]}


def test_experiment_validation():
    with pytest.raises(ValueError, match="lrs must be a dict with the keys"):
        small_experiment(lrs={"adamw": [1e-3]})
    with pytest.raises(ValueError, match="n_val must be < tasks"):
        small_experiment(n_val=5)
