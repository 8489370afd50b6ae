"""Pretraining the GPT-2 in-context learner, and its in-context learning curve.

One loop, :class:`Trainer`, trained the shipped model ``data/models/gpt2_icl.pt`` (``scripts/train_gpt2.py`` is
its command line): AdamW (fused on a GPU), linear warm-up then cosine decay to 10% (:func:`lr_factor`),
gradient-norm clipping, optional bf16 autocast and ``torch.compile``, training data drawn on the model's device
from a seeded :class:`torch.Generator`, a checkpoint (weights, optimizer, generator, progress) every
``ckpt_every`` steps from which a rerun resumes, and a wall-clock budget turned into a fixed number of steps
after a short calibration. :func:`train_icl` is the same loop at CPU size, without checkpoints.

The objective (Garg et al. 2022) puts the squared loss on every prediction of a prompt, so one prompt trains
all context lengths ``0, ..., N - 1`` at once (:func:`icl_loss`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..validation import check_nonnegative_float, check_nonnegative_int, check_positive_int
from .baselines import (
    _check_shapes,
    averaging_predictions,
    knn_predictions,
    least_squares_predictions,
    ridge_predictions,
)
from .data import _cov_root, as_torch_generator, sample_regression
from .model import GPT2ICL, _check_xs_ys, flops_per_token
from .throughput import mfu, peak_flops

__all__ = [
    "icl_loss",
    "lr_factor",
    "TrainConfig",
    "Trainer",
    "train_icl",
    "eval_loss_per_position",
    "icl_curve",
    "training_provenance",
]

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


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.45 * (1 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------------------------------------
# the training loop
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the tasks, ``sigma`` and ``Sigma_beta``, are given to :class:`Trainer` separately).

    Attributes
    ----------
    batch : int
        Prompts per step.
    lr, warmup, weight_decay : float, int, float
        AdamW's peak learning rate, warm-up steps and decoupled weight decay; schedule :func:`lr_factor`.
    clip : float
        Gradient-norm clipping (0: none).
    steps : int, optional
        Number of steps. If omitted it is fixed from ``time_budget_s``: after ``warm_steps`` untimed steps
        (compilation, autotuning), ``calib_steps`` steps are timed and the rest of the budget is turned into
        steps. A run stops early at 1.25 times the budget.
    time_budget_s : float, optional
        Wall-clock budget of the loop (a resumed run counts the time already spent).
    calib_steps, warm_steps : int
    log_every : int
        The loss history records the mean training loss of every ``log_every`` steps.
    ckpt_every : int
        Steps between checkpoints (if the trainer has a checkpoint path).
    compile : bool
        ``torch.compile`` the model (falls back to eager execution if the compiler fails).
    amp : {"bf16", "none"}
        bf16 autocast of the forward pass.
    """

    batch: int = 1024
    lr: float = 1e-3
    warmup: int = 300
    weight_decay: float = 0.0
    clip: float = 1.0
    steps: int | None = None
    time_budget_s: float | None = None
    calib_steps: int = 60
    warm_steps: int = 20
    log_every: int = 100
    ckpt_every: int = 2000
    compile: bool = False
    amp: str = "none"

    def __post_init__(self):
        for name in ("batch", "warmup", "calib_steps", "log_every", "ckpt_every"):
            check_positive_int(getattr(self, name), name)
        check_nonnegative_int(self.warm_steps, "warm_steps")
        for name in ("lr", "weight_decay", "clip"):
            check_nonnegative_float(getattr(self, name), name)
        if self.steps is not None:
            check_positive_int(self.steps, "steps")
        if self.time_budget_s is not None and check_nonnegative_float(self.time_budget_s, "time_budget_s") == 0:
            raise ValueError("time_budget_s must be positive, got 0")
        if self.amp not in ("bf16", "none"):
            raise ValueError(f"amp must be 'bf16' or 'none', got {self.amp!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class Trainer:
    """Train ``model`` on tasks ``beta ~ N(0, Sigma_beta)``, ``y = x^T beta + N(0, sigma^2)``.

    Parameters
    ----------
    model : GPT2ICL
        Trained in place (on its device).
    config : TrainConfig
    sigma : float
        Label-noise standard deviation.
    Sigma_beta : Tensor, shape (d, d)
        Task covariance.
    gen : torch.Generator or int
        Source of the training data, on the model's device.
    ckpt_path : path-like, optional
        Checkpoint file. If it exists, training resumes from it (an explicit ``config.steps`` replaces the
        stored number of steps); it is rewritten every ``config.ckpt_every`` steps and at the end.
    log : callable
        Where progress messages go.

    Attributes
    ----------
    state : dict
        ``step``, ``total_steps``, ``history`` (``[step, mean loss]`` pairs), ``train_time_s`` and the timed
        ``timed_tokens`` / ``timed_s`` (compilation and warm-up excluded).
    compiled : bool
        Whether the model runs under ``torch.compile`` (False after a fallback to eager execution).
    """

    def __init__(self, model: GPT2ICL, config: TrainConfig, *, sigma: float, Sigma_beta, gen, ckpt_path=None,
                 log=None):
        if not isinstance(model, GPT2ICL):
            raise ValueError(f"model must be a GPT2ICL, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.model, self.config = model, config
        self.sigma = check_nonnegative_float(sigma, "sigma")
        self.device = next(model.parameters()).device
        self.log = log or (lambda msg: print(msg, flush=True))
        self.opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                     fused=self.device.type == "cuda")
        self.gen = as_torch_generator(gen, self.device)
        self.state = {"step": 0, "total_steps": config.steps, "history": [], "train_time_s": 0.0,
                      "timed_tokens": 0, "timed_s": 0.0}
        self.ckpt_path = Path(ckpt_path) if ckpt_path is not None else None
        if self.ckpt_path is not None and self.ckpt_path.exists():
            self.load_checkpoint(self.ckpt_path)
        self.compiled = config.compile
        self._fwd = torch.compile(model) if config.compile else model
        self._root_T = _cov_root(Sigma_beta, model.config.d).T.to(device=self.device, dtype=torch.float32)

    @property
    def tokens_per_step(self) -> int:
        return self.config.batch * 2 * self.model.config.n_points

    # -- checkpoints ---------------------------------------------------------------------------------------

    def save_checkpoint(self, path=None) -> Path:
        """Write weights, optimizer, generator state and progress (atomically) to ``path`` (default ``ckpt_path``)."""
        path = Path(path) if path is not None else self.ckpt_path
        if path is None:
            raise ValueError("give a path: this trainer has no ckpt_path")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
                    "state": self.state, "config": self.config.to_dict(),
                    "model_config": self.model.config.to_dict()}, tmp)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path) -> None:
        """Restore what :meth:`save_checkpoint` wrote; an explicit ``config.steps`` replaces the stored total."""
        ck = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.gen.set_state(ck["gen"].cpu())
        self.state = ck["state"]
        if self.config.steps is not None:  # an explicit number of steps extends (or fixes) the run
            self.state["total_steps"] = self.config.steps
        self.log(f"resumed from {path} at step {self.state['step']} / {self.state['total_steps']}")

    # -- one step ------------------------------------------------------------------------------------------

    def _batch(self):
        """One batch: ``beta = z root^T`` with ``z ~ N(0, I)`` (as :func:`sample_beta_torch`), then prompts."""
        c = self.model.config
        beta = torch.randn(self.config.batch, c.d, generator=self.gen, device=self.device) @ self._root_T
        xs, ys = sample_regression(self.gen, beta, 1, c.n_points, self.sigma)
        return xs[:, 0], ys[:, 0]

    def _backward(self, fwd, xs, ys) -> torch.Tensor:
        amp = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.config.amp == "bf16"
               else torch.autocast(self.device.type, enabled=False))
        with amp:
            pred = fwd(xs, ys)
        loss = ((pred.float() - ys) ** 2).mean()
        loss.backward()
        return loss

    def step(self, lr: float) -> torch.Tensor:
        """One optimisation step at learning rate ``lr``; returns the loss (a detached tensor, not synced)."""
        xs, ys = self._batch()
        try:
            loss = self._backward(self._fwd, xs, ys)
        except Exception as exc:  # a compiler failure must not cost the run: fall back to eager
            if self._fwd is self.model:
                raise
            self.log(f"\ntorch.compile failed ({type(exc).__name__}: {exc}); continuing eagerly")
            self._fwd, self.compiled = self.model, False
            self.opt.zero_grad(set_to_none=True)
            loss = self._backward(self.model, xs, ys)
        if self.config.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip, foreach=True)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    # -- the loop ------------------------------------------------------------------------------------------

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, progress: bool = False) -> dict:
        """Train until ``total_steps`` (or the hard time limit); returns :attr:`state`."""
        c, state = self.config, self.state
        total = state["total_steps"]
        if total is None and c.time_budget_s is None:
            raise ValueError("give steps or time_budget_s in the TrainConfig")
        t_start = time.perf_counter()
        used_before = state["train_time_s"]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=state["step"], mininterval=2.0, dynamic_ncols=True)
        loss_acc, n_acc = torch.zeros((), device=self.device), 0
        t_mark, step_mark, n_session = None, None, 0
        while total is None or state["step"] < total:
            s = state["step"]
            lr = c.lr * lr_factor(s, total or 10**9, c.warmup)
            loss_acc += self.step(lr)
            n_acc += 1
            n_session += 1
            state["step"] = s + 1
            if t_mark is None and (n_session >= c.warm_steps or state["step"] == total):
                self._sync()
                t_mark, step_mark = time.perf_counter(), state["step"]
            if total is None and t_mark is not None and state["step"] - step_mark == c.calib_steps:
                total = self._calibrate(t_mark, t_start, used_before, bar)
            if state["step"] % c.log_every == 0 or state["step"] == total:
                mean_loss = float(loss_acc) / n_acc
                state["history"].append([state["step"], mean_loss])
                loss_acc.zero_()
                n_acc = 0
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
            if bar is not None:
                bar.update(1)
            if self.ckpt_path is not None and state["step"] % c.ckpt_every == 0:
                self.save_checkpoint()
            if c.time_budget_s is not None and time.perf_counter() - t_start + used_before > 1.25 * c.time_budget_s:
                self.log(f"\nhard time limit reached at step {state['step']}; stopping early")
                break
        self._sync()
        t_end = time.perf_counter()
        if n_acc:
            state["history"].append([state["step"], float(loss_acc) / n_acc])
        if bar is not None:
            bar.close()
        if t_mark is not None and state["step"] > step_mark:
            state["timed_tokens"] += (state["step"] - step_mark) * self.tokens_per_step
            state["timed_s"] += t_end - t_mark
        state["train_time_s"] = used_before + (t_end - t_start)
        if self.ckpt_path is not None:
            self.save_checkpoint()
        return state

    def _calibrate(self, t_mark, t_start, used_before, bar) -> int:
        """Turn the rest of the time budget into a number of steps, from the rate since ``t_mark``."""
        self._sync()
        rate = self.config.calib_steps / (time.perf_counter() - t_mark)
        remaining = self.config.time_budget_s - (time.perf_counter() - t_start) - used_before
        total = self.state["total_steps"] = self.state["step"] + max(0, int(remaining * rate))
        self.log(f"\ncalibrated: {rate:.1f} steps/s -> total_steps {total}")
        if bar is not None:
            bar.total = total
        return total

    # -- what the run did ----------------------------------------------------------------------------------

    @property
    def tokens_per_s(self) -> float | None:
        """Training tokens per second over the timed steps (None if none were timed)."""
        return self.state["timed_tokens"] / self.state["timed_s"] if self.state["timed_s"] else None

    @property
    def final_train_loss(self) -> float:
        """Mean of the last five history entries (the last ~500 steps at ``log_every=100``)."""
        last = self.state["history"][-5:]
        return sum(h[1] for h in last) / max(1, len(last))


def train_icl(model: GPT2ICL, steps: int, batch_size: int, gen, *, sigma: float, Sigma_beta, lr: float = 1e-3,
              warmup: int = 100, progress: bool = False) -> list[float]:
    """:class:`Trainer` at CPU size: AdamW, linear warm-up then cosine decay to 10%, no clipping, no checkpoints.

    Returns
    -------
    list of float
        The training loss of every step.
    """
    steps, batch_size = check_positive_int(steps, "steps"), check_positive_int(batch_size, "batch_size")
    config = TrainConfig(batch=batch_size, lr=lr, warmup=warmup, clip=0.0, steps=steps, log_every=1)
    trainer = Trainer(model, config, sigma=sigma, Sigma_beta=Sigma_beta, gen=gen)
    return [loss for _, loss in trainer.run(progress=progress)["history"]]


# ----------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def eval_loss_per_position(model: GPT2ICL, xs: torch.Tensor, ys: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Mean squared error at each context length on a fixed set (the evaluation recorded with a trained model).

    Parameters
    ----------
    xs : Tensor, shape (B, N, d)
    ys : Tensor, shape (B, N)
        On the CPU (e.g. from :func:`~ttt_helpers.gpt2.data.eval_dataset`); moved to the model's device in
        batches of ``batch_size``.

    Returns
    -------
    Tensor, shape (N,), float64, on the CPU
        The mean over prompts is taken in float32, then converted.
    """
    _check_xs_ys(model, xs, ys)
    batch_size = check_positive_int(batch_size, "batch_size")
    device = next(model.parameters()).device
    err = []
    for i in range(0, xs.shape[0], batch_size):
        x, y = xs[i:i + batch_size].to(device), ys[i:i + batch_size].to(device)
        err.append((model(x, y) - y) ** 2)
    return torch.cat(err).mean(0).double().cpu()


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
# what a training run records
# ----------------------------------------------------------------------------------------------------------


def training_provenance(trainer: Trainer, per_n: torch.Tensor, *, sigma: float, cov_ratio: float, seeds: dict,
                        eval_prompts: int, benchmarks: dict, checkpoint) -> dict:
    """The ``seeds``, ``results`` and ``extra`` of a trained model's provenance file (``data/models/gpt2_icl.json``).

    Parameters
    ----------
    trainer : Trainer
        After :meth:`Trainer.run`.
    per_n : Tensor, shape (N,)
        :func:`eval_loss_per_position` of the shipped weights on the fixed set of seed ``seeds["eval"]``.
    sigma, cov_ratio : float
        The tasks (``Sigma_pre = decaying_covariance(d, cov_ratio)``).
    seeds : dict
        ``init``, ``data`` and ``eval`` seeds.
    eval_prompts : int
    benchmarks : dict
        Throughput measurements (:func:`benchmark_throughput`).
    checkpoint : path-like
        The shipped float16 file.

    Returns
    -------
    dict
        Keyword arguments of :func:`ttt_helpers.provenance.write_provenance`.
    """
    cfg, tc, state = trainer.model.config, trainer.config, trainer.state
    peak, dev_name = peak_flops(trainer.device)
    fpt = flops_per_token(cfg)
    tps = trainer.tokens_per_s
    utilisation = mfu(tps, cfg, trainer.device)
    results = {
        "final_train_loss": trainer.final_train_loss,
        "eval_loss_in_distribution": float(per_n.mean()),
        "eval_loss_at_n": {str(n): float(per_n[n]) for n in (0, cfg.d // 2, cfg.d, 2 * cfg.d, cfg.n_points - 1)},
        "tokens_per_s": tps,
        "mfu": utilisation,
    }
    extra = {
        "config": cfg.to_dict(),
        "task": {"sigma": sigma, "cov_ratio": cov_ratio, "Sigma_x": "identity",
                 "Sigma_pre": "decaying_covariance(d, cov_ratio) (diagonal, unit trace)"},
        "evaluation": {"seed": seeds["eval"], "prompts": eval_prompts,
                       "how": "ttt_helpers.gpt2.eval_dataset on the CPU; fp16 weights loaded into float32; "
                              "mean squared error over all positions (context lengths 0..N-1)"},
        "training": {"steps": state["step"], "batch": tc.batch, "lr": tc.lr, "warmup": tc.warmup,
                     "schedule": "linear warm-up, cosine to 10%",
                     "optimizer": f"AdamW(fused={trainer.device.type == 'cuda'})",
                     "weight_decay": tc.weight_decay, "amp": tc.amp, "compile": trainer.compiled,
                     "grad_clip_norm": tc.clip, "wall_s": state["train_time_s"],
                     "tokens": state["step"] * trainer.tokens_per_step, "loss_history": state["history"]},
        "throughput": {"tokens_per_s": tps, "mfu": utilisation, "flops_per_token": fpt,
                       "peak_flops": peak if math.isfinite(peak) else None,
                       "peak_note": "dense bf16 peak of the GPU (H100 SXM: 989.4 TFLOP/s)",
                       "device": dev_name, "timed_steps_exclude_first": tc.warm_steps, "benchmarks": benchmarks},
        "checkpoint_mb": Path(checkpoint).stat().st_size / 1e6,
    }
    return {"seeds": seeds, "results": results, "extra": extra}
