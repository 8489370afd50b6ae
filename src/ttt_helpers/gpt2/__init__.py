"""A GPT-2-architecture in-context learner for linear regression, and its test-time training.

The model follows Garg et al. (2022), "What can transformers learn in-context?": a Hugging Face
:class:`transformers.GPT2Model` backbone, a linear read-in of the tokens and a linear read-out of one
scalar per position. A prompt of ``N`` labelled pairs ``(x_i, y_i)`` is written as ``2N`` interleaved tokens
``[x_1; 0], [0; y_1], [x_2; 0], [0; y_2], ...`` in ``R^{d+1}``; the read-out at the token of ``x_i`` is the
prediction of ``y_i`` from the ``i - 1`` pairs before it (causal attention). Training puts the squared loss
on every prediction, so one prompt trains all context lengths ``0, ..., N - 1`` at once.

Conventions of this chapter (stated in the book):

- ``x ~ N(0, I_d)``, ``beta ~ N(0, Sigma_beta)`` with ``tr(Sigma_beta) = 1`` (unit signal variance),
  ``y = x^T beta + xi`` with ``xi ~ N(0, sigma^2)``; losses are mean squared errors on noisy labels,
  so ``sigma^2`` is the floor.
- Pretraining covariance: :func:`decaying_covariance`; target tasks: :func:`rotated_covariance`, the
  pretraining covariance rotated by an angle ``theta`` in the planes ``(e_i, e_{d-1-i})``
  (``theta = 0``: no shift; ``theta = pi/2``: the spectrum reversed).
- Test-time training (the theory chapters' scheme): for one target task, ``k`` labelled queries share ONE
  context of ``n`` pairs; the TTT loss is the MEAN squared error of the ``k`` query predictions; after
  TTT the model is evaluated on FRESH contexts and queries of the same task. Tasks are test-time trained
  in parallel, each with its own copy of the weights (``torch.func.functional_call`` under ``vmap``).

All random draws come from a seeded :class:`torch.Generator` (or an int seed) passed in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..validation import check_nonnegative_float, check_nonnegative_int, check_positive_int

__all__ = [
    "GPT2ICLConfig",
    "GPT2ICL",
    "as_torch_generator",
    "decaying_covariance",
    "rotated_covariance",
    "covariance_alignment",
    "sample_beta_torch",
    "sample_regression",
    "icl_loss",
    "train_icl",
    "least_squares_predictions",
    "averaging_predictions",
    "knn_predictions",
    "ridge_predictions",
    "icl_curve",
    "eval_dataset",
    "test_time_train",
    "new_scratch_model",
    "count_parameters",
    "flops_per_token",
    "save_fp16_checkpoint",
    "load_gpt2_icl",
    "best_ttt_curve",
    "lr_factor",
]


# ----------------------------------------------------------------------------------------------------------
# configuration and model
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPT2ICLConfig:
    """Size of the in-context learner.

    Attributes
    ----------
    d : int
        Dimension of the features ``x``.
    n_points : int
        Largest number ``N`` of labelled pairs in a prompt (the model has ``2N`` positions).
    n_embd, n_layer, n_head : int
        GPT-2 width, depth and number of attention heads (``n_embd`` divisible by ``n_head``).
    """

    d: int = 10
    n_points: int = 41
    n_embd: int = 128
    n_layer: int = 6
    n_head: int = 4

    def __post_init__(self):
        for name in ("d", "n_points", "n_embd", "n_layer", "n_head"):
            check_positive_int(getattr(self, name), name)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd must be divisible by n_head, got n_embd={self.n_embd}, n_head={self.n_head}")

    def to_dict(self) -> dict:
        return asdict(self)


def _as_config(config) -> GPT2ICLConfig:
    if isinstance(config, GPT2ICLConfig):
        return config
    if isinstance(config, dict):
        return GPT2ICLConfig(**config)
    raise ValueError(f"config must be a GPT2ICLConfig or a dict, got {type(config).__name__}")


class GPT2ICL(nn.Module):
    """GPT-2 backbone with a linear read-in of ``(x, y)`` tokens and a linear read-out (Garg et al. 2022).

    Parameters
    ----------
    config : GPT2ICLConfig or dict
    attn_implementation : {"sdpa", "eager"}
        Attention kernel of the backbone; ``"eager"`` is used under ``vmap`` (test-time training).
    """

    def __init__(self, config, attn_implementation: str = "sdpa"):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.config = _as_config(config)
        c = self.config
        hf = GPT2Config(
            vocab_size=1,  # the token embedding table is unused (inputs_embeds)
            bos_token_id=0,
            eos_token_id=0,
            n_positions=2 * c.n_points,
            n_embd=c.n_embd,
            n_layer=c.n_layer,
            n_head=c.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            use_cache=False,
        )
        self.read_in = nn.Linear(c.d + 1, c.n_embd)
        self.backbone = GPT2Model(hf)
        self.read_out = nn.Linear(c.n_embd, 1)
        self.set_attn_implementation(attn_implementation)

    def set_attn_implementation(self, name: str) -> None:
        """Switch the backbone's attention kernel (``"sdpa"`` or ``"eager"``); the weights are unchanged."""
        if name not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {name!r}")
        self.backbone.config._attn_implementation = name

    @staticmethod
    def tokens(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Interleave features and labels into tokens.

        Parameters
        ----------
        xs : Tensor, shape (B, N, d)
        ys : Tensor, shape (B, N)

        Returns
        -------
        Tensor, shape (B, 2N, d + 1)
            ``[x_1; 0], [0; y_1], ..., [x_N; 0], [0; y_N]``.
        """
        B, N, d = xs.shape
        zx = torch.cat([xs, xs.new_zeros(B, N, 1)], dim=-1)
        zy = torch.cat([xs.new_zeros(B, N, d), ys.unsqueeze(-1)], dim=-1)
        return torch.stack([zx, zy], dim=2).reshape(B, 2 * N, d + 1)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Predictions at every ``x`` token.

        Parameters
        ----------
        xs : Tensor, shape (B, N, d)
            ``N <= config.n_points``.
        ys : Tensor, shape (B, N)
            Labels; ``ys[:, i]`` is never seen by the prediction at position ``i`` (causal mask), so the
            label of a query may be anything.

        Returns
        -------
        Tensor, shape (B, N)
            ``out[:, i]`` predicts ``ys[:, i]`` from the pairs ``0, ..., i - 1`` and ``xs[:, i]``.
        """
        h = self.read_in(self.tokens(xs, ys))
        h = self.backbone(inputs_embeds=h).last_hidden_state
        return self.read_out(h[:, ::2]).squeeze(-1)


def _check_xs_ys(model: GPT2ICL, xs, ys):
    if not torch.is_tensor(xs) or not torch.is_tensor(ys):
        raise ValueError("xs and ys must be torch tensors")
    c = model.config
    if xs.ndim != 3 or xs.shape[-1] != c.d:
        raise ValueError(f"xs must have shape (B, N, {c.d}), got {tuple(xs.shape)}")
    if ys.shape != xs.shape[:2]:
        raise ValueError(f"ys must have shape {tuple(xs.shape[:2])}, got {tuple(ys.shape)}")
    if xs.shape[1] > c.n_points:
        raise ValueError(f"prompts may hold at most n_points={c.n_points} pairs, got {xs.shape[1]}")


def count_parameters(model: nn.Module, non_embedding: bool = False) -> int:
    """Number of parameters; with ``non_embedding`` the position embedding table is left out."""
    total = sum(p.numel() for p in model.parameters())
    if non_embedding and isinstance(model, GPT2ICL):
        total -= model.backbone.wpe.weight.numel()
    return total


def flops_per_token(config) -> float:
    """Training FLOPs per token: ``6 N + 12 L n_embd T`` (Kaplan et al. 2020 / PaLM's MFU convention).

    ``N`` counts the non-embedding parameters (read-in, blocks, read-out), ``L`` the layers and ``T = 2 n_points``
    the sequence length (the attention term counts the full, not the causal, score matrix).
    """
    c = _as_config(config)
    per_layer = 12 * c.n_embd**2 + 13 * c.n_embd  # attention (4 e^2 + 4 e) + MLP (8 e^2 + 5 e) + 2 layer norms
    n_params = c.n_layer * per_layer + 2 * c.n_embd + (c.d + 2) * c.n_embd + c.n_embd + 1
    return 6.0 * n_params + 12.0 * c.n_layer * c.n_embd * (2 * c.n_points)


# ----------------------------------------------------------------------------------------------------------
# tasks
# ----------------------------------------------------------------------------------------------------------


def as_torch_generator(gen, device="cpu") -> torch.Generator:
    """Return ``gen`` if it is a :class:`torch.Generator`, or a new one seeded with the int ``gen``."""
    if isinstance(gen, torch.Generator):
        return gen
    if isinstance(gen, (int, np.integer)) and not isinstance(gen, bool):
        g = torch.Generator(device=device)
        g.manual_seed(int(gen))
        return g
    raise ValueError(f"gen must be a torch.Generator or an integer seed, got {gen!r}")


def decaying_covariance(d: int, ratio: float = 30.0) -> torch.Tensor:
    """Diagonal pretraining covariance with geometrically decaying eigenvalues and unit trace.

    Parameters
    ----------
    d : int
    ratio : float
        Condition number ``lambda_1 / lambda_d >= 1``.

    Returns
    -------
    Tensor, shape (d, d), float64
        ``diag(lambda)`` with ``lambda_i proportional to ratio^{-i/(d-1)}`` and ``sum(lambda) = 1``.
    """
    d = check_positive_int(d, "d")
    ratio = check_nonnegative_float(ratio, "ratio")
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    i = torch.arange(d, dtype=torch.float64)
    lam = ratio ** (-i / max(d - 1, 1))
    return torch.diag(lam / lam.sum())


def rotated_covariance(Sigma: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate ``Sigma`` by ``theta`` in each plane ``(e_i, e_{d-1-i})``, ``i < d/2``: ``R Sigma R^T``.

    For the diagonal :func:`decaying_covariance`, ``theta = pi/2`` reverses the spectrum (the target tasks
    vary most where the pretraining tasks vary least); the trace is unchanged.

    Parameters
    ----------
    Sigma : Tensor, shape (d, d)
    theta : float
        Angle in radians.

    Returns
    -------
    Tensor, shape (d, d), float64
    """
    Sigma = _check_cov(Sigma, "Sigma")
    if not np.isfinite(float(theta)):
        raise ValueError(f"theta must be a finite angle, got {theta}")
    d = Sigma.shape[0]
    R = torch.eye(d, dtype=torch.float64)
    c, s = math.cos(theta), math.sin(theta)
    for i in range(d // 2):
        j = d - 1 - i
        R[i, i], R[j, j], R[i, j], R[j, i] = c, c, -s, s
    return R @ Sigma @ R.T


def covariance_alignment(S1: torch.Tensor, S2: torch.Tensor) -> float:
    """Cosine ``<S1, S2>_F / (||S1||_F ||S2||_F)`` between two covariances (1: same shape of spectrum)."""
    S1, S2 = _check_cov(S1, "S1"), _check_cov(S2, "S2")
    if S1.shape != S2.shape:
        raise ValueError(f"S1 and S2 must have the same shape, got {tuple(S1.shape)} and {tuple(S2.shape)}")
    return float((S1 * S2).sum() / (S1.norm() * S2.norm()))


def _check_cov(S, name):
    S = torch.as_tensor(S, dtype=torch.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(S.shape)}")
    if not torch.isfinite(S).all():
        raise ValueError(f"{name} must be finite")
    if not torch.allclose(S, S.T, atol=1e-10):
        raise ValueError(f"{name} must be symmetric")
    if torch.linalg.eigvalsh(S).min() < -1e-10:
        raise ValueError(f"{name} must be positive semi-definite")
    return S


def _cov_root(Sigma, d):
    S = _check_cov(Sigma, "Sigma_beta")
    if S.shape[0] != d:
        raise ValueError(f"Sigma_beta must have shape ({d}, {d}), got {tuple(S.shape)}")
    vals, vecs = torch.linalg.eigh(S)
    return vecs * vals.clamp_min(0).sqrt()


def sample_beta_torch(gen, n_tasks: int, d: int, Sigma_beta=None, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Task vectors ``beta ~ N(0, Sigma_beta)``.

    Parameters
    ----------
    gen : torch.Generator or int
        On ``device``.
    n_tasks, d : int
    Sigma_beta : Tensor, shape (d, d), optional
        Identity scaled to unit trace (``I / d``) if omitted.

    Returns
    -------
    Tensor, shape (n_tasks, d)
    """
    gen = as_torch_generator(gen, device)
    n_tasks, d = check_positive_int(n_tasks, "n_tasks"), check_positive_int(d, "d")
    root = _cov_root(Sigma_beta if Sigma_beta is not None else torch.eye(d, dtype=torch.float64) / d, d)
    z = torch.randn(n_tasks, d, generator=gen, device=device, dtype=dtype)
    return z @ root.T.to(device=device, dtype=dtype)


def sample_regression(gen, beta: torch.Tensor, n_prompts: int, n_points: int, sigma: float = 0.0):
    """Prompts ``(x_i, y_i)``, ``i < n_points``, for given task vectors.

    Parameters
    ----------
    gen : torch.Generator or int
        On ``beta.device``.
    beta : Tensor, shape (T, d)
    n_prompts : int
        Prompts per task ``m``.
    n_points : int
        Pairs per prompt ``N``.
    sigma : float
        Label-noise standard deviation.

    Returns
    -------
    xs : Tensor, shape (T, m, N, d)
    ys : Tensor, shape (T, m, N)
    """
    if not torch.is_tensor(beta) or beta.ndim != 2:
        raise ValueError(f"beta must be a tensor of shape (T, d), got {getattr(beta, 'shape', type(beta))}")
    gen = as_torch_generator(gen, beta.device)
    m, N = check_positive_int(n_prompts, "n_prompts"), check_positive_int(n_points, "n_points")
    sigma = check_nonnegative_float(sigma, "sigma")
    T, d = beta.shape
    xs = torch.randn(T, m, N, d, generator=gen, device=beta.device, dtype=beta.dtype)
    ys = torch.einsum("tmnd,td->tmn", xs, beta)
    if sigma > 0:
        ys = ys + sigma * torch.randn(T, m, N, generator=gen, device=beta.device, dtype=beta.dtype)
    return xs, ys


def eval_dataset(seed: int, n_prompts: int, config, sigma: float, Sigma_beta):
    """A fixed in-distribution evaluation set, drawn on the CPU (so every machine gets the same numbers).

    Returns
    -------
    xs : Tensor, shape (n_prompts, N, d)
    ys : Tensor, shape (n_prompts, N)
    """
    c = _as_config(config)
    g = as_torch_generator(check_nonnegative_int(seed, "seed"))
    beta = sample_beta_torch(g, n_prompts, c.d, Sigma_beta)
    xs, ys = sample_regression(g, beta, 1, c.n_points, sigma)
    return xs[:, 0], ys[:, 0]


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------


def icl_loss(model: GPT2ICL, xs: torch.Tensor, ys: torch.Tensor, per_position: bool = False) -> torch.Tensor:
    """Mean squared error of the predictions at every position (Garg et al.'s training loss).

    Parameters
    ----------
    xs : Tensor, shape (B, N, d)
    ys : Tensor, shape (B, N)
    per_position : bool
        If true, return the loss for each context length, shape (N,), instead of the mean.
    """
    _check_xs_ys(model, xs, ys)
    err = (model(xs, ys).float() - ys.float()) ** 2
    return err.mean(0) if per_position else err.mean()


def train_icl(model: GPT2ICL, steps: int, batch_size: int, gen, *, sigma: float, Sigma_beta, lr: float = 1e-3,
              warmup: int = 100, progress: bool = False) -> list[float]:
    """A plain (CPU-sized) training loop: AdamW, linear warm-up then cosine decay to 10%.

    The GPU script ``scripts/train_gpt2.py`` runs the same objective with bf16, ``torch.compile``,
    checkpoints and resumption.

    Returns
    -------
    list of float
        The training loss of every step.
    """
    steps, batch_size = check_positive_int(steps, "steps"), check_positive_int(batch_size, "batch_size")
    device = next(model.parameters()).device
    gen = as_torch_generator(gen, device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    losses = []
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it)
    for _ in it:
        beta = sample_beta_torch(gen, batch_size, model.config.d, Sigma_beta, device=device)
        xs, ys = sample_regression(gen, beta, 1, model.config.n_points, sigma)
        loss = icl_loss(model, xs[:, 0], ys[:, 0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.45 * (1 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------------------------------------
# baselines and the ICL curve
# ----------------------------------------------------------------------------------------------------------


def _prefix_loop(xs, ys, fit_predict):
    _check_shapes(xs, ys)
    B, N, d = xs.shape
    out = torch.zeros(B, N, dtype=xs.dtype, device=xs.device)
    for i in range(1, N):
        out[:, i] = fit_predict(xs[:, :i], ys[:, :i], xs[:, i])
    return out


def _check_shapes(xs, ys):
    if not torch.is_tensor(xs) or xs.ndim != 3:
        raise ValueError(f"xs must be a tensor of shape (B, N, d), got {getattr(xs, 'shape', type(xs))}")
    if not torch.is_tensor(ys) or ys.shape != xs.shape[:2]:
        raise ValueError(f"ys must have shape {tuple(xs.shape[:2])}, got {getattr(ys, 'shape', type(ys))}")


def least_squares_predictions(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares fitted on each prefix.

    Parameters
    ----------
    xs : Tensor, shape (B, N, d)
    ys : Tensor, shape (B, N)

    Returns
    -------
    Tensor, shape (B, N)
        ``out[:, i] = x_i^T pinv(X_{<i}) y_{<i}`` (0 for ``i = 0``).
    """

    def fp(X, y, x):
        beta = torch.linalg.pinv(X.double()) @ y.double().unsqueeze(-1)
        return (x.double().unsqueeze(1) @ beta).squeeze(-1).squeeze(-1).to(xs.dtype)

    return _prefix_loop(xs, ys, fp)


def averaging_predictions(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Garg et al.'s averaging estimator ``x_i^T (1/i) sum_{j<i} y_j x_j``; shapes as :func:`least_squares_predictions`."""
    return _prefix_loop(xs, ys, lambda X, y, x: ((X * y.unsqueeze(-1)).mean(1) * x).sum(-1))


def knn_predictions(xs: torch.Tensor, ys: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Mean label of the ``k`` nearest context points (all of them while fewer than ``k``); shapes as above."""
    k = check_positive_int(k, "k")

    def fp(X, y, x):
        dist = ((X - x.unsqueeze(1)) ** 2).sum(-1)
        idx = dist.topk(min(k, X.shape[1]), dim=1, largest=False).indices
        return y.gather(1, idx).mean(1)

    return _prefix_loop(xs, ys, fp)


def ridge_predictions(xs: torch.Tensor, ys: torch.Tensor, Sigma_beta, sigma: float) -> torch.Tensor:
    """Bayes-optimal predictor (posterior mean) under the prior ``N(0, Sigma_beta)`` and noise ``sigma``.

    ``beta_hat = (X^T X + sigma^2 Sigma_beta^{-1})^{-1} X^T y``; ``Sigma_beta`` must be invertible.
    Shapes as :func:`least_squares_predictions`.
    """
    sigma = check_nonnegative_float(sigma, "sigma")
    S = _check_cov(Sigma_beta, "Sigma_beta")
    P = torch.linalg.inv(S) * sigma**2

    def fp(X, y, x):
        X, y = X.double(), y.double()
        A = X.transpose(1, 2) @ X + P
        beta = torch.linalg.solve(A, (X.transpose(1, 2) @ y.unsqueeze(-1)))
        return (x.double().unsqueeze(1) @ beta).squeeze(-1).squeeze(-1).to(xs.dtype)

    return _prefix_loop(xs, ys, fp)


@torch.no_grad()
def icl_curve(model: GPT2ICL | None, xs: torch.Tensor, ys: torch.Tensor, *, Sigma_beta=None, sigma: float = 0.0,
              batch_size: int = 512) -> dict:
    """Loss against context length for the model and the baselines.

    Parameters
    ----------
    model : GPT2ICL or None
        Evaluated in float32 in batches; skipped if None.
    xs : Tensor, shape (B, N, d)
    ys : Tensor, shape (B, N)
    Sigma_beta : Tensor, optional
        If given, the Bayes-optimal ridge predictor is added.

    Returns
    -------
    dict of str to ndarray of shape (N,)
        ``"n"`` (the context lengths ``0..N-1``) and the mean squared error of ``"transformer"``,
        ``"least_squares"``, ``"averaging"``, ``"3-NN"`` and, with ``Sigma_beta``, ``"bayes_ridge"``.
    """
    _check_shapes(xs, ys)
    batch_size = check_positive_int(batch_size, "batch_size")
    out = {"n": np.arange(xs.shape[1])}

    def mse(pred):
        return ((pred.double() - ys.double()) ** 2).mean(0).cpu().numpy()

    if model is not None:
        _check_xs_ys(model, xs, ys)
        device = next(model.parameters()).device
        preds = torch.cat([model(xs[i:i + batch_size].to(device), ys[i:i + batch_size].to(device)).float().cpu()
                           for i in range(0, xs.shape[0], batch_size)])
        out["transformer"] = mse(preds)
    xs, ys = xs.cpu(), ys.cpu()
    out["least_squares"] = mse(least_squares_predictions(xs, ys))
    out["averaging"] = mse(averaging_predictions(xs, ys))
    out["3-NN"] = mse(knn_predictions(xs, ys, 3))
    if Sigma_beta is not None:
        out["bayes_ridge"] = mse(ridge_predictions(xs, ys, Sigma_beta, sigma))
    return out


# ----------------------------------------------------------------------------------------------------------
# test-time training
# ----------------------------------------------------------------------------------------------------------


def new_scratch_model(config, seed: int, device="cpu") -> GPT2ICL:
    """The same architecture at random (Hugging Face GPT-2) initialisation, seeded without touching global state."""
    seed = check_nonnegative_int(seed, "seed")
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = GPT2ICL(config)
    return model.to(device)


def test_time_train(model: GPT2ICL, beta: torch.Tensor, *, n_context: int, k: int, steps: int, optimizer: str,
                    lr: float, gen, sigma: float, n_eval: int = 32, eval_steps=None, weight_decay: float = 0.0,
                    autocast_dtype=None) -> torch.Tensor:
    """Test-time train a copy of ``model`` on each target task, all tasks in parallel; evaluate as it goes.

    For task ``t`` one context ``(X_c, y_c)`` of ``n_context`` pairs and ``k`` labelled queries
    ``(x_j, y_j)`` are drawn; the TTT loss is ``(1/k) sum_j (f([X_c, y_c, x_j]) - y_j)^2``, minimised for
    ``steps`` full-batch steps of ``optimizer``. The test loss is the mean squared error on ``n_eval`` FRESH
    prompts (new context of ``n_context`` pairs and a new query) of the same task, drawn once and reused at
    every evaluated step.

    Parameters
    ----------
    model : GPT2ICL
        Starting point (pretrained or scratch); not modified.
    beta : Tensor, shape (T, d)
        Target tasks (on the model's device).
    n_context, k, steps : int
        Context length ``n``, TTT queries ``k``, optimisation steps.
    optimizer : {"adamw", "sgd"}
        ``torch.optim.AdamW`` (betas 0.9, 0.999) or plain ``torch.optim.SGD`` (no momentum).
    lr : float
    gen : torch.Generator or int
        On ``beta.device``.
    sigma : float
        Label-noise standard deviation of the target tasks.
    n_eval : int
        Fresh prompts per task for the test loss.
    eval_steps : sequence of int, optional
        Steps after which to evaluate (0 = before TTT); all of ``0..steps`` if omitted.
    weight_decay : float
        AdamW's decoupled weight decay (0 by default: TTT is short).
    autocast_dtype : torch.dtype, optional
        e.g. ``torch.bfloat16`` on a GPU.

    Returns
    -------
    Tensor, shape (len(eval_steps), T)
        Test loss of every task after each evaluated step (float32, on the CPU).
    """
    from torch.func import functional_call, vmap

    if not isinstance(model, GPT2ICL):
        raise ValueError(f"model must be a GPT2ICL, got {type(model).__name__}")
    c = model.config
    if not torch.is_tensor(beta) or beta.ndim != 2 or beta.shape[1] != c.d:
        raise ValueError(f"beta must be a tensor of shape (T, {c.d}), got {getattr(beta, 'shape', type(beta))}")
    n_context = check_nonnegative_int(n_context, "n_context")
    if n_context + 1 > c.n_points:
        raise ValueError(f"n_context + 1 must be <= n_points={c.n_points}, got n_context={n_context}")
    k, n_eval = check_positive_int(k, "k"), check_positive_int(n_eval, "n_eval")
    steps = check_nonnegative_int(steps, "steps")
    lr, weight_decay = check_nonnegative_float(lr, "lr"), check_nonnegative_float(weight_decay, "weight_decay")
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    eval_steps = list(range(steps + 1)) if eval_steps is None else sorted({int(s) for s in eval_steps})
    if not eval_steps or eval_steps[0] < 0 or eval_steps[-1] > steps:
        raise ValueError(f"eval_steps must lie in [0, {steps}], got {eval_steps}")
    device = beta.device
    gen = as_torch_generator(gen, device)
    T, n = beta.shape[0], n_context

    # training data: ONE context per task shared by k queries -> k sequences [context, x_j]
    xs_c, ys_c = sample_regression(gen, beta, 1, n + k, sigma)  # (T, 1, n + k, d)
    ctx_x, ctx_y = xs_c[:, 0, :n], ys_c[:, 0, :n]
    q_x, q_y = xs_c[:, 0, n:], ys_c[:, 0, n:]
    tr_x = torch.cat([ctx_x.unsqueeze(1).expand(T, k, n, c.d), q_x.unsqueeze(2)], dim=2)  # (T, k, n+1, d)
    tr_y = torch.cat([ctx_y.unsqueeze(1).expand(T, k, n), torch.zeros_like(q_y).unsqueeze(2)], dim=2)
    # evaluation data: fresh contexts and queries of the same tasks
    ev_x, ev_y = sample_regression(gen, beta, n_eval, n + 1, sigma)  # (T, n_eval, n+1, d)

    old_impl = model.backbone.config._attn_implementation
    model.set_attn_implementation("eager")  # vmap has no batching rule for the fused sdpa kernels
    try:
        params = {name: p.detach().unsqueeze(0).repeat(T, *([1] * p.ndim)).requires_grad_(True)
                  for name, p in model.named_parameters()}
        buffers = dict(model.named_buffers())

        def f(p, x, y):
            return functional_call(model, (p, buffers), (x, y))[:, n]

        batched = vmap(f)
        if optimizer == "adamw":
            opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=weight_decay)
        else:
            opt = torch.optim.SGD(list(params.values()), lr=lr)
        ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else torch.autocast(device.type, enabled=False))

        def evaluate():
            with torch.no_grad(), ctx:
                pred = batched(params, ev_x, ev_y).float()
            return ((pred - ev_y[:, :, n]) ** 2).mean(1).cpu()

        out = []
        if 0 in eval_steps:
            out.append(evaluate())
        for s in range(1, steps + 1):
            with ctx:
                pred = batched(params, tr_x, tr_y).float()
            # sum over tasks of each task's mean over its k queries: tasks have separate weights
            loss = ((pred - q_y) ** 2).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if s in eval_steps:
                out.append(evaluate())
    finally:
        model.set_attn_implementation(old_impl)
    return torch.stack(out)


def best_ttt_curve(records, **match) -> dict:
    """The test curve of the learning rate chosen on the validation tasks, for one experimental cell.

    Parameters
    ----------
    records : list of dict
        One per (shift, k, init, optimizer, lr), as written by ``scripts/gpt2_ttt_experiment.py``: keys
        ``theta, k, init, optimizer, lr, val_mean, test_mean, test_sem`` (the last three: one value per
        evaluated step, step 0 = before TTT).
    **match
        Values the record must have, e.g. ``theta=..., k=32, init="pretrained", optimizer="adamw"``
        (``theta`` is compared with a tolerance of 1e-9).

    Returns
    -------
    dict
        The chosen record: the learning rate with the smallest mean validation loss over steps ``1, 2, ...``
        (non-finite losses count as diverged).
    """
    if not match:
        raise ValueError("give at least one key to match, e.g. init='pretrained'")

    def ok(r):
        for key, val in match.items():
            if key not in r:
                raise ValueError(f"records have no key {key!r}; keys are {sorted(r)}")
            if key == "theta":
                if abs(float(r[key]) - float(val)) > 1e-9:
                    return False
            elif r[key] != val:
                return False
        return True

    cands = [r for r in records if ok(r)]
    if not cands:
        raise ValueError(f"no record matches {match}")

    def score(r):
        v = np.asarray(r["val_mean"], dtype=float)[1:]
        return float(v.mean()) if v.size and np.all(np.isfinite(v)) else math.inf

    best = min(cands, key=score)
    if not math.isfinite(score(best)):
        raise ValueError(f"every learning rate diverged for {match}")
    return best


# ----------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------


def save_fp16_checkpoint(model: GPT2ICL, path, extra: dict | None = None) -> Path:
    """Save ``{"config", "state_dict" (float16), "extra"}`` with ``torch.save``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": sd, "extra": extra or {}}, path)
    return path


def load_gpt2_icl(path, *, verify: bool = True, provenance_path=None, device="cpu") -> GPT2ICL:
    """Load a checkpoint written by :func:`save_fp16_checkpoint` into a float32 model (eval mode).

    With ``verify`` the file's sha256 is checked against its provenance JSON first
    (:func:`ttt_helpers.provenance.verify_sha256`; ``ValueError`` on a mismatch).
    """
    from ..provenance import verify_sha256

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if verify:
        verify_sha256(path, provenance_path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = GPT2ICL(blob["config"])
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return model.to(device).eval()
