"""Fast CPU tests of ttt_helpers.gpt2 with a tiny model."""

import math

import numpy as np
import pytest
import torch

from ttt_helpers import gpt2 as G
from ttt_helpers.provenance import write_provenance

TINY = G.GPT2ICLConfig(d=3, n_points=9, n_embd=16, n_layer=1, n_head=2)


@pytest.fixture(scope="module")
def tiny():
    return G.new_scratch_model(TINY, 0).eval()


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        G.GPT2ICLConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="positive integer"):
        G.GPT2ICLConfig(d=0)
    with pytest.raises(ValueError):
        G.GPT2ICL("not a config")


def test_tokens_interleave():
    xs = torch.arange(12.0).reshape(1, 4, 3)
    ys = torch.tensor([[10.0, 11.0, 12.0, 13.0]])
    z = G.GPT2ICL.tokens(xs, ys)
    assert z.shape == (1, 8, 4)
    assert torch.equal(z[0, 0], torch.tensor([0.0, 1.0, 2.0, 0.0]))
    assert torch.equal(z[0, 1], torch.tensor([0.0, 0.0, 0.0, 10.0]))
    assert torch.equal(z[0, 7], torch.tensor([0.0, 0.0, 0.0, 13.0]))


def test_forward_is_causal(tiny):
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(2, 9, 3, generator=g), torch.randn(2, 9, generator=g)
    out = tiny(xs, ys)
    assert out.shape == (2, 9)
    ys2 = ys.clone()
    ys2[:, 4:] += 5.0  # labels from position 4 on cannot change predictions 0..4
    xs2 = xs.clone()
    xs2[:, 5:] += 1.0
    out2 = tiny(xs2, ys2)
    assert torch.allclose(out[:, :5], out2[:, :5], atol=1e-6)
    assert not torch.allclose(out[:, 5:], out2[:, 5:])


def test_forward_validation(tiny):
    with pytest.raises(ValueError, match="xs must have shape"):
        G.icl_loss(tiny, torch.zeros(2, 5, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="at most n_points"):
        G.icl_loss(tiny, torch.zeros(2, 10, 3), torch.zeros(2, 10))
    with pytest.raises(ValueError, match="ys must have shape"):
        G.icl_loss(tiny, torch.zeros(2, 5, 3), torch.zeros(2, 4))


def test_seeded_model_and_sampling():
    a, b = G.new_scratch_model(TINY, 3), G.new_scratch_model(TINY, 3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    state = torch.random.get_rng_state()
    G.new_scratch_model(TINY, 4)
    assert torch.equal(state, torch.random.get_rng_state()), "global RNG state must be untouched"
    # an int seed on the CPU draws with NumPy: the same numbers on every CPU and kernel
    x1 = G.sample_beta_torch(5, 4, 3)
    x2 = G.sample_beta_torch(np.random.default_rng(5), 4, 3)
    assert torch.equal(x1, x2)
    z = np.random.default_rng(5).standard_normal((4, 3))
    assert torch.allclose(x1, torch.from_numpy(z).float() / math.sqrt(3))  # default prior I / d, root I / sqrt(d)
    # a torch generator is used as given (the GPU path of training and of the experiment)
    x3 = G.sample_beta_torch(torch.Generator().manual_seed(5), 4, 3)
    assert torch.equal(x3, G.sample_beta_torch(torch.Generator().manual_seed(5), 4, 3)) and not torch.equal(x1, x3)
    with pytest.raises(ValueError, match="torch.Generator or an integer"):
        G.sample_beta_torch(1.5, 4, 3)


def test_covariance_root_is_the_canonical_one():
    from ttt_helpers.theory.tasks import covariance_root

    S = G.rotated_covariance(G.decaying_covariance(6, 30.0), 0.7)
    beta = G.sample_beta_torch(0, 5, 6, S, dtype=torch.float64)
    z = np.random.default_rng(0).standard_normal((5, 6))
    assert np.allclose(beta.numpy(), z @ covariance_root(S.numpy()).T)


def test_covariances():
    S = G.decaying_covariance(6, 30.0)
    lam = torch.diag(S)
    assert math.isclose(float(S.trace()), 1.0, rel_tol=1e-12)
    assert math.isclose(float(lam[0] / lam[-1]), 30.0, rel_tol=1e-12)
    R = G.rotated_covariance(S, math.pi / 2)
    assert torch.allclose(torch.diag(R), lam.flip(0), atol=1e-12)  # spectrum reversed on the diagonal
    assert torch.allclose(G.rotated_covariance(S, 0.0), S)
    assert math.isclose(float(R.trace()), 1.0, rel_tol=1e-12)
    assert math.isclose(G.covariance_alignment(S, S), 1.0, rel_tol=1e-12)
    assert G.covariance_alignment(S, R) < G.covariance_alignment(S, G.rotated_covariance(S, math.pi / 4)) < 1
    with pytest.raises(ValueError, match="symmetric"):
        G.rotated_covariance(torch.tensor([[1.0, 2.0], [0.0, 1.0]]), 0.1)
    with pytest.raises(ValueError, match="ratio must be >= 1"):
        G.decaying_covariance(4, 0.5)


def test_sampled_covariance_matches():
    S = G.rotated_covariance(G.decaying_covariance(4, 10.0), 0.6)
    beta = G.sample_beta_torch(0, 50_000, 4, S, dtype=torch.float64)
    emp = beta.T @ beta / beta.shape[0]
    assert torch.allclose(emp, S, atol=5 * float(S.max()) / math.sqrt(50_000) * 3)
    xs, ys = G.sample_regression(1, beta[:3], 7, 5, sigma=0.0)
    assert xs.shape == (3, 7, 5, 4) and ys.shape == (3, 7, 5)
    assert torch.allclose(ys, torch.einsum("tmnd,td->tmn", xs, beta[:3]))


def test_baselines_exact_cases():
    g = torch.Generator().manual_seed(0)
    beta = torch.randn(5, 3, generator=g, dtype=torch.float64)
    xs, ys = G.sample_regression(g, beta, 1, 8, 0.0)
    xs, ys = xs[:, 0], ys[:, 0]
    ls = G.least_squares_predictions(xs, ys)
    assert torch.allclose(ls[:, 4:], ys[:, 4:], atol=1e-8)  # noiseless, n > d: exact
    assert torch.all(ls[:, 0] == 0)
    # averaging at position 1: x_1^T (y_0 x_0)
    av = G.averaging_predictions(xs, ys)
    assert torch.allclose(av[:, 1], (xs[:, 1] * xs[:, 0]).sum(-1) * ys[:, 0])
    # 1-NN of a repeated point returns its label
    xs2 = xs.clone()
    xs2[:, 5] = xs2[:, 2]
    nn1 = G.knn_predictions(xs2, ys, k=1)
    assert torch.allclose(nn1[:, 5], ys[:, 2])
    # ridge with a huge prior variance tends to least squares for n > d
    r = G.ridge_predictions(xs, ys, torch.eye(3) * 1e8, sigma=1.0)
    assert torch.allclose(r[:, 4:], ls[:, 4:], atol=1e-5)


def test_bayes_ridge_beats_least_squares_in_mc():
    S = G.decaying_covariance(4, 30.0)
    xs, ys = G.eval_dataset(0, 2000, G.GPT2ICLConfig(d=4, n_points=9, n_embd=16, n_layer=1, n_head=2), 0.5, S)
    c = G.icl_curve(None, xs, ys, Sigma_beta=S, sigma=0.5)
    assert set(c) == {"n", "least_squares", "averaging", "3-NN", "bayes_ridge"}
    assert np.all(c["bayes_ridge"][1:] < c["least_squares"][1:] + 1e-9)
    # theory: E[loss of LS] = sigma^2 (1 + d / (n - d - 1)) for n > d + 1
    assert c["least_squares"][8] == pytest.approx(0.25 * (1 + 4 / 3), rel=0.1)
    # with no context the Bayes predictor predicts 0: expected loss tr(S) + sigma^2, within 4.5 standard errors
    # of the 2000-prompt mean (y^2 is heavy-tailed under a decaying spectrum: se about 0.05)
    se = float((ys[:, 0] ** 2).std() / math.sqrt(ys.shape[0]))
    assert c["bayes_ridge"][0] == pytest.approx(float((ys[:, 0] ** 2).mean()), rel=1e-5)
    assert abs(c["bayes_ridge"][0] - 1.25) < 4.5 * se


def test_training_reduces_loss():
    model = G.new_scratch_model(TINY, 1)
    S = G.decaying_covariance(3, 3.0)
    xs, ys = G.eval_dataset(9, 256, TINY, 0.1, S)
    with torch.no_grad():
        before = float(G.icl_loss(model, xs, ys))
    losses = G.train_icl(model, 60, 64, 2, sigma=0.1, Sigma_beta=S, lr=3e-3, warmup=5)
    with torch.no_grad():
        after = float(G.icl_loss(model, xs, ys))
    assert len(losses) == 60
    # 60 toy steps learn the scale of the labels (the random start is worse than predicting 0), not yet ICL
    zero = float((ys**2).mean())
    assert after < 0.95 * before and after < 1.05 * zero


def test_lr_factor():
    assert G.lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert G.lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert G.lr_factor(100, 100, 10) == pytest.approx(0.1)


def test_ttt_matches_sequential_and_learns(tiny):
    beta = G.sample_beta_torch(0, 3, 3, G.decaying_covariance(3, 3.0))
    kw = dict(n_context=4, k=6, steps=3, optimizer="sgd", lr=0.05, sigma=0.1, n_eval=5)
    all_tasks = G.test_time_train(tiny, beta, gen=11, **kw)
    assert all_tasks.shape == (4, 3)
    # step 0 equals the untouched model's loss on the same evaluation prompts
    g = np.random.default_rng(11)  # what gen=11 means on the CPU
    xs_c, ys_c = G.sample_regression(g, beta, 1, 4 + 6, 0.1)
    ev_x, ev_y = G.sample_regression(g, beta, 5, 5, 0.1)
    with torch.no_grad():
        p0 = torch.stack([tiny(ev_x[t], ev_y[t])[:, 4] for t in range(3)])
    assert torch.allclose(all_tasks[0], ((p0 - ev_y[:, :, 4]) ** 2).mean(1), atol=1e-5)
    # tasks are independent: one task alone gives the same curve when its data are the same (SGD, one step)
    # and the model is left unchanged
    p_after = [p.clone() for p in tiny.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(p_after, tiny.parameters()))
    assert tiny.backbone.config._attn_implementation == "sdpa"


def test_ttt_vmap_equals_loop():
    model = G.new_scratch_model(TINY, 5)
    beta = G.sample_beta_torch(1, 2, 3)
    out = G.test_time_train(model, beta, n_context=3, k=4, steps=2, optimizer="adamw", lr=1e-2, gen=3, sigma=0.2,
                            n_eval=4)
    # the same computation done task by task with an ordinary optimizer
    g = np.random.default_rng(3)  # what gen=3 means on the CPU
    xs_c, ys_c = G.sample_regression(g, beta, 1, 3 + 4, 0.2)
    ev_x, ev_y = G.sample_regression(g, beta, 4, 4, 0.2)
    for t in range(2):
        m = G.new_scratch_model(TINY, 5)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0)
        cx, cy, qx, qy = xs_c[t, 0, :3], ys_c[t, 0, :3], xs_c[t, 0, 3:], ys_c[t, 0, 3:]
        tx = torch.cat([cx.expand(4, 3, 3), qx.unsqueeze(1)], 1)
        ty = torch.cat([cy.expand(4, 3), torch.zeros(4, 1)], 1)
        for _ in range(2):
            loss = ((m(tx, ty)[:, 3] - qy) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            final = ((m(ev_x[t], ev_y[t])[:, 3] - ev_y[t, :, 3]) ** 2).mean()
        assert float(final) == pytest.approx(float(out[-1, t]), rel=1e-4, abs=1e-6)


def test_ttt_many_steps_fit_the_task():
    model = G.new_scratch_model(TINY, 2)
    beta = G.sample_beta_torch(4, 4, 3, torch.eye(3) / 3)
    out = G.test_time_train(model, beta, n_context=2, k=32, steps=40, optimizer="adamw", lr=1e-2, gen=5,
                            sigma=0.0, n_eval=32, eval_steps=[0, 40])
    assert out.shape == (2, 4)
    assert float(out[1].mean()) < 0.3 * float(out[0].mean())


def test_ttt_validation(tiny):
    beta = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="optimizer"):
        G.test_time_train(tiny, beta, n_context=2, k=2, steps=1, optimizer="adam", lr=0.1, gen=0, sigma=0.0)
    with pytest.raises(ValueError, match="n_context"):
        G.test_time_train(tiny, beta, n_context=9, k=2, steps=1, optimizer="sgd", lr=0.1, gen=0, sigma=0.0)
    with pytest.raises(ValueError, match="beta"):
        G.test_time_train(tiny, torch.zeros(2, 4), n_context=2, k=2, steps=1, optimizer="sgd", lr=0.1, gen=0,
                          sigma=0.0)
    with pytest.raises(ValueError, match="eval_steps"):
        G.test_time_train(tiny, beta, n_context=2, k=2, steps=1, optimizer="sgd", lr=0.1, gen=0, sigma=0.0,
                          eval_steps=[5])


def test_best_ttt_curve():
    recs = [
        {"theta": 1.0, "k": 8, "init": "pretrained", "optimizer": "sgd", "lr": 0.1, "val_mean": [1, 0.5, 0.4],
         "test_mean": [1, 0.6, 0.5], "test_sem": [0, 0, 0]},
        {"theta": 1.0, "k": 8, "init": "pretrained", "optimizer": "sgd", "lr": 1.0, "val_mean": [1, None, None],
         "test_mean": [1, None, None], "test_sem": [0, 0, 0]},
        {"theta": 1.0, "k": 8, "init": "pretrained", "optimizer": "sgd", "lr": 0.01, "val_mean": [1, 0.9, 0.8],
         "test_mean": [1, 0.9, 0.8], "test_sem": [0, 0, 0]},
    ]
    assert G.best_ttt_curve(recs, theta=1.0 + 1e-12, k=8, optimizer="sgd")["lr"] == 0.1
    with pytest.raises(ValueError, match="no record"):
        G.best_ttt_curve(recs, k=16)
    with pytest.raises(ValueError, match="diverged"):
        G.best_ttt_curve(recs[1:2], k=8)


def test_checkpoint_roundtrip_and_sha(tmp_path, tiny):
    path = G.save_fp16_checkpoint(tiny, tmp_path / "m.pt")
    write_provenance(tmp_path / "m.json", command="test", files=[path], commit="test")
    loaded = G.load_gpt2_icl(path)
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(4, 9, 3, generator=g), torch.randn(4, 9, generator=g)
    with torch.no_grad():
        assert torch.allclose(loaded(xs, ys), tiny(xs, ys), atol=5e-2)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    blob = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in blob["state_dict"].values())
    with open(path, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        G.load_gpt2_icl(path)


def test_flops_per_token_counts_parameters():
    m = G.GPT2ICL(G.GPT2ICLConfig(d=10, n_points=41, n_embd=64, n_layer=2, n_head=4))
    n = G.count_parameters(m, non_embedding=True) - m.backbone.wte.weight.numel()
    c = m.config
    assert G.flops_per_token(c) == 6 * n + 12 * c.n_layer * c.n_embd * 2 * c.n_points
