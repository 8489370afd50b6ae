"""Test-time training of the GPT-2 in-context learner, and the experiment built on it.

The scheme is the theory chapters': for one target task, ``k`` labelled queries share ONE context of ``n``
pairs; the TTT loss is the MEAN squared error of the ``k`` query predictions; after TTT the model is evaluated
on FRESH contexts and queries of the same task. Tasks are test-time trained in parallel, each with its own copy
of the weights (``torch.func.functional_call`` under ``vmap``).

- :class:`TTTConfig` and :func:`test_time_train`: one TTT run of a set of tasks.
- :class:`TTTExperiment`: the grid of the shipped experiment ``data/results/gpt2_ttt_full.json`` (covariance
  shifts x ``k`` x start x optimizer x learning rate; ``scripts/gpt2_ttt_experiment.py`` is its command line).
- :func:`best_ttt_curve`: the learning rate chosen on the validation tasks of one cell of that grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..validation import check_nonnegative_float, check_nonnegative_int, check_positive_int
from .data import as_torch_generator, rotated_covariance, sample_beta_torch, sample_regression
from .model import GPT2ICL

__all__ = ["TTTConfig", "test_time_train", "best_ttt_curve", "TTTExperiment", "INITS", "OPTIMIZERS"]

INITS = ("pretrained", "scratch")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TTTConfig:
    """One test-time-training run.

    Attributes
    ----------
    n_context, k, steps : int
        Context length ``n``, TTT queries ``k`` sharing that context, full-batch optimisation steps.
    optimizer : {"adamw", "sgd"}
        ``torch.optim.AdamW`` (betas 0.9, 0.999) or plain ``torch.optim.SGD`` (no momentum).
    lr : float
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
    """

    n_context: int
    k: int
    steps: int
    optimizer: str
    lr: float
    sigma: float
    n_eval: int = 32
    eval_steps: tuple[int, ...] | None = None
    weight_decay: float = 0.0
    autocast_dtype: torch.dtype | None = None

    def __post_init__(self):
        check_nonnegative_int(self.n_context, "n_context")
        check_positive_int(self.k, "k")
        check_positive_int(self.n_eval, "n_eval")
        check_nonnegative_int(self.steps, "steps")
        for name in ("lr", "weight_decay", "sigma"):
            check_nonnegative_float(getattr(self, name), name)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.eval_steps is not None:
            steps = tuple(sorted({int(s) for s in self.eval_steps}))
            if not steps or steps[0] < 0 or steps[-1] > self.steps:
                raise ValueError(f"eval_steps must lie in [0, {self.steps}], got {list(steps)}")
            object.__setattr__(self, "eval_steps", steps)
        if self.autocast_dtype is not None and not isinstance(self.autocast_dtype, torch.dtype):
            raise ValueError(f"autocast_dtype must be a torch.dtype or None, got {self.autocast_dtype!r}")

    @property
    def evaluated_steps(self) -> tuple[int, ...]:
        """The steps after which the test loss is measured."""
        return tuple(range(self.steps + 1)) if self.eval_steps is None else self.eval_steps

    @classmethod
    def build(cls, config: TTTConfig | None = None, **fields) -> TTTConfig:
        """``config`` with ``fields`` replaced, or a new config from ``fields`` alone; ``ValueError`` if incomplete."""
        if config is not None and not isinstance(config, cls):
            raise ValueError(f"config must be a TTTConfig, got {type(config).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ValueError(f"unknown TTT settings {unknown}; the settings are {sorted(names)}")
        if config is not None:
            return dataclasses.replace(config, **fields)
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in fields]
        if missing:
            raise ValueError(f"give a TTTConfig or the settings {missing}")
        return cls(**fields)


def _check_model_and_tasks(model, beta, config: TTTConfig):
    if not isinstance(model, GPT2ICL):
        raise ValueError(f"model must be a GPT2ICL, got {type(model).__name__}")
    c = model.config
    if not torch.is_tensor(beta) or beta.ndim != 2 or beta.shape[1] != c.d:
        raise ValueError(f"beta must be a tensor of shape (T, {c.d}), got {getattr(beta, 'shape', type(beta))}")
    if config.n_context + 1 > c.n_points:
        raise ValueError(f"n_context + 1 must be <= n_points={c.n_points}, got n_context={config.n_context}")


def _ttt_data(gen, beta, config: TTTConfig):
    """Training sequences ``[context, x_j]`` (ONE context per task shared by ``k`` queries) and fresh test prompts.

    Returns ``tr_x`` (T, k, n+1, d), ``tr_y`` (T, k, n+1) with the query labels zeroed, ``q_y`` (T, k),
    ``ev_x`` (T, n_eval, n+1, d), ``ev_y`` (T, n_eval, n+1).
    """
    n, k = config.n_context, config.k
    T, d = beta.shape
    xs_c, ys_c = sample_regression(gen, beta, 1, n + k, config.sigma)  # (T, 1, n + k, d)
    ctx_x, ctx_y = xs_c[:, 0, :n], ys_c[:, 0, :n]
    q_x, q_y = xs_c[:, 0, n:], ys_c[:, 0, n:]
    tr_x = torch.cat([ctx_x.unsqueeze(1).expand(T, k, n, d), q_x.unsqueeze(2)], dim=2)
    tr_y = torch.cat([ctx_y.unsqueeze(1).expand(T, k, n), torch.zeros_like(q_y).unsqueeze(2)], dim=2)
    ev_x, ev_y = sample_regression(gen, beta, config.n_eval, n + 1, config.sigma)
    return tr_x, tr_y, q_y, ev_x, ev_y


@contextlib.contextmanager
def _eager_attention(model: GPT2ICL):
    """vmap has no batching rule for the fused sdpa kernels: use eager attention, then restore the kernel."""
    old_impl = model.backbone.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(old_impl)


def test_time_train(model: GPT2ICL, beta: torch.Tensor, config: TTTConfig | None = None, *, gen,
                    **settings) -> torch.Tensor:
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
    config : TTTConfig, optional
        The run's settings.
    gen : torch.Generator or int
        On ``beta.device``.
    **settings
        Fields of :class:`TTTConfig` (``n_context=10, k=32, ...``): all of its required ones without
        ``config``, or replacements of ``config``'s.

    Returns
    -------
    Tensor, shape (len(config.evaluated_steps), T)
        Test loss of every task after each evaluated step (float32, on the CPU).
    """
    from torch.func import functional_call, vmap

    cfg = TTTConfig.build(config, **settings)
    _check_model_and_tasks(model, beta, cfg)
    gen = as_torch_generator(gen, beta.device)
    n, eval_steps = cfg.n_context, cfg.evaluated_steps
    tr_x, tr_y, q_y, ev_x, ev_y = _ttt_data(gen, beta, cfg)
    with _eager_attention(model):
        # one copy of the weights per task
        params = {name: p.detach().unsqueeze(0).repeat(beta.shape[0], *([1] * p.ndim)).requires_grad_(True)
                  for name, p in model.named_parameters()}
        buffers = dict(model.named_buffers())
        batched = vmap(lambda p, x, y: functional_call(model, (p, buffers), (x, y))[:, n])
        if cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(list(params.values()), lr=cfg.lr)
        device_type = beta.device.type
        ctx = (torch.autocast(device_type, dtype=cfg.autocast_dtype) if cfg.autocast_dtype is not None
               else torch.autocast(device_type, enabled=False))

        def evaluate():
            with torch.no_grad(), ctx:
                pred = batched(params, ev_x, ev_y).float()
            return ((pred - ev_y[:, :, n]) ** 2).mean(1).cpu()

        out = [evaluate()] if 0 in eval_steps else []
        for s in range(1, cfg.steps + 1):
            with ctx:
                pred = batched(params, tr_x, tr_y).float()
            # sum over tasks of each task's mean over its k queries: tasks have separate weights
            loss = ((pred - q_y) ** 2).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if s in eval_steps:
                out.append(evaluate())
    return torch.stack(out)


def best_ttt_curve(records, **match) -> dict:
    """The test curve of the learning rate chosen on the validation tasks, for one experimental cell.

    Parameters
    ----------
    records : list of dict
        One per (shift, k, init, optimizer, lr), as written by :meth:`TTTExperiment.run_cell`: keys
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
# the experiment grid
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TTTExperiment:
    """Test-time training under covariance shift: the grid behind ``data/results/gpt2_ttt_full.json``.

    For each shift ``theta`` (target tasks ``beta ~ N(0, R_theta Sigma_pre R_theta^T)``, see
    :func:`~ttt_helpers.gpt2.data.rotated_covariance`), each ``k``, each start (:data:`INITS`), each optimizer
    and each learning rate of its grid, ``tasks`` target tasks are test-time trained for ``steps`` steps and
    evaluated after every step. The first ``n_val`` tasks choose the learning rate (:func:`best_ttt_curve`),
    the others report it.

    Seeds: the tasks of the ``i``-th shift are drawn on the CPU from ``seed + 1000 i``; the TTT data of a cell
    from ``seed + 1000 i + 17 k + 1`` on the model's device, so every start, optimizer and learning rate of
    a ``(theta, k)`` sees the same tasks and data.

    Attributes
    ----------
    thetas : sequence of float
        Shifts in priority order (the first is the headline).
    ks : sequence of int
    lrs : dict of str to sequence of float
        Learning-rate grid of each optimizer in :data:`OPTIMIZERS`.
    n_context, steps, tasks, n_val, n_eval, seed : int
        As commented below.
    """

    thetas: tuple[float, ...]
    ks: tuple[int, ...]
    lrs: dict
    n_context: int = 10  # context length n of every TTT and test prompt
    steps: int = 20  # TTT steps; the test loss is measured before and after each
    tasks: int = 64  # target tasks per cell ...
    n_val: int = 16  # ... of which the first n_val choose the learning rate
    n_eval: int = 64  # fresh test prompts per task
    seed: int = 100  # base seed, see above

    def __post_init__(self):
        object.__setattr__(self, "thetas", tuple(float(t) for t in self.thetas))
        object.__setattr__(self, "ks", tuple(check_positive_int(k, "k") for k in self.ks))
        if not isinstance(self.lrs, dict) or set(self.lrs) != set(OPTIMIZERS):
            raise ValueError(f"lrs must be a dict with the keys {list(OPTIMIZERS)}, got {self.lrs!r}")
        object.__setattr__(self, "lrs", {opt: [float(lr) for lr in self.lrs[opt]] for opt in OPTIMIZERS})
        for name in ("steps", "tasks", "n_val", "n_eval"):
            check_positive_int(getattr(self, name), name)
        check_nonnegative_int(self.seed, "seed")
        if self.n_val >= self.tasks:
            raise ValueError(f"n_val must be < tasks={self.tasks} (the rest report), got {self.n_val}")

    @staticmethod
    def cell_key(theta, k, init, optimizer, lr) -> tuple:
        """What identifies a cell (``theta`` rounded to 9 digits)."""
        return (round(theta, 9), k, init, optimizer, lr)

    def cells(self, done=()) -> list[tuple]:
        """``(theta, k, init, optimizer, lr)`` of every cell not in ``done`` (keys of :meth:`cell_key`), in order."""
        return [(th, k, init, opt, lr) for th in self.thetas for k in self.ks for init in INITS
                for opt in OPTIMIZERS for lr in self.lrs[opt] if self.cell_key(th, k, init, opt, lr) not in done]

    def run_cell(self, start: GPT2ICL, S_pre, sigma: float, cell, *, autocast_dtype=None) -> dict:
        """Test-time train ``start`` for one cell; returns its record (see :func:`best_ttt_curve`).

        ``val_mean`` is the mean test loss of the first ``n_val`` tasks, ``test_mean`` and ``test_sem`` the mean
        and its standard error over the others, one value per step (None where non-finite: diverged).
        """
        th, k, init, opt, lr = cell
        device = next(start.parameters()).device
        seed = self.seed + 1000 * self.thetas.index(th)
        beta = sample_beta_torch(seed, self.tasks, start.config.d, rotated_covariance(S_pre, th)).to(device)
        gen = as_torch_generator(seed + 17 * k + 1, device)
        config = TTTConfig(n_context=self.n_context, k=k, steps=self.steps, optimizer=opt, lr=lr, sigma=sigma,
                           n_eval=self.n_eval, autocast_dtype=autocast_dtype)
        losses = test_time_train(start, beta, config, gen=gen).double().numpy()
        val, test = losses[:, :self.n_val], losses[:, self.n_val:]
        sem = test.std(1, ddof=1) / math.sqrt(test.shape[1])
        return {
            "theta": th, "k": k, "init": init, "optimizer": opt, "lr": lr,
            "val_mean": np.where(np.isfinite(val.mean(1)), val.mean(1), None).tolist(),
            "test_mean": np.where(np.isfinite(test.mean(1)), test.mean(1), None).tolist(),
            "test_sem": np.where(np.isfinite(test.std(1)), sem, None).tolist(),
        }

    def headline(self, records) -> dict:
        """At the first shift: for each ``k``, start and optimizer with a record, the chosen ``lr`` and the test
        loss before TTT (``step0``), after one step (``step1``) and at the end (``final``)."""
        head = {}
        for k in self.ks:
            for init in INITS:
                for opt in OPTIMIZERS:
                    try:
                        r = best_ttt_curve(records, theta=self.thetas[0], k=k, init=init, optimizer=opt)
                    except ValueError:
                        continue
                    head[f"k={k},{init},{opt}"] = {"lr": r["lr"], "step0": r["test_mean"][0],
                                                   "step1": r["test_mean"][1], "final": r["test_mean"][-1]}
        return head
