"""Muon with the Newton-Schulz iterations of all matrices of one shape done at once.

``torch.optim.Muon`` orthogonalises each matrix in its own loop of Newton-Schulz steps: about twenty small kernels
per matrix and step (two momentum updates, a cast, a norm, fifteen matrix products, the parameter update). For the
candidate's recipe (40 to 60 block matrices of two shapes) that is about a thousand kernel launches per training
step, most of all launches of a step, each of them a few microseconds of work on a GPU. :class:`BatchedMuon` makes
the same update with the matrices of one shape stacked: momentum by ``torch._foreach_*`` over all of them, then,
per shape, one batched Newton-Schulz loop (``baddbmm``) and one update; about fifty launches per step.

The update is ``torch.optim.Muon``'s (as in torch 2.13; its constants and learning-rate rule are imported): Nesterov momentum ``B <- mu B + (1 - mu) g``,
``U = g + mu (B - g)``; ``U`` in bfloat16, a tall matrix transposed, divided by its Frobenius norm, then
``ns_steps`` quintic iterations ``X <- a X + (b A + c A A) X`` with ``A = X X^T``; decoupled weight decay; the step
``-lr * adjust(shape) * X``. Only the order of the floating-point sums of the products differs, so the two agree to
bfloat16's precision (``tests/test_pretrain.py`` checks it). The momentum is kept under the same state key,
``"momentum_buffer"``, so a saved training state resumes under either implementation.
"""

from __future__ import annotations

import torch

try:  # torch's own constants and learning-rate rule, so that the two implementations cannot drift apart
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, DEFAULT_NS_STEPS, EPS
    from torch.optim._muon import _adjust_lr as _adjusted_lr
except ImportError as err:  # a torch without them: BatchedMuon refuses to start, importing this module still works
    _TORCH_MUON_MISSING = err
    DEFAULT_A = DEFAULT_B = DEFAULT_C = float("nan")
    DEFAULT_NS_STEPS, EPS = 0, 0.0
else:
    _TORCH_MUON_MISSING = None

__all__ = ["BatchedMuon", "newton_schulz_batched", "count_compute_ops"]

#: ``torch.optim.Muon``'s defaults: the quintic's coefficients and its number of steps.
NS_COEFFICIENTS = (DEFAULT_A, DEFAULT_B, DEFAULT_C)
NS_STEPS = DEFAULT_NS_STEPS


def newton_schulz_batched(X: torch.Tensor, coefficients=NS_COEFFICIENTS, steps: int = NS_STEPS,
                          eps: float = EPS) -> torch.Tensor:
    """The approximate orthogonalisation of each matrix of ``X[n, r, c]`` (``r <= c``), in ``X``'s dtype."""
    if X.ndim != 3 or X.size(1) > X.size(2):
        raise ValueError(f"X must be [n, r, c] with r <= c, got shape {tuple(X.shape)}")
    a, b, c = coefficients
    X = X / X.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        A = X @ X.mT
        X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X


class BatchedMuon(torch.optim.Optimizer):
    """``torch.optim.Muon``'s update, with the arguments of ``torch.optim.Muon`` (see the module's docstring)."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients=NS_COEFFICIENTS, eps: float = EPS, ns_steps: int = NS_STEPS,
                 adjust_lr_fn: str | None = None):
        if _TORCH_MUON_MISSING is not None:
            raise ImportError(f"BatchedMuon follows torch.optim.Muon, which this torch ({torch.__version__}) lacks: "
                              f"{_TORCH_MUON_MISSING}")
        if not lr >= 0.0 or not momentum >= 0.0 or not weight_decay >= 0.0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                                      adjust_lr_fn=adjust_lr_fn))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon only takes 2-D parameters, got one of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            mu = group["momentum"]
            torch._foreach_lerp_(bufs, grads, 1 - mu)
            updates = torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            by_shape: dict = {}  # matrices of one shape once the tall ones are transposed
            for i, u in enumerate(updates):
                by_shape.setdefault((min(u.shape), max(u.shape), u.device), []).append(i)
            for idx in by_shape.values():
                tall = [params[i].size(0) > params[i].size(1) for i in idx]
                X = torch.stack([updates[i].mT if t else updates[i] for i, t in zip(idx, tall)]).bfloat16()
                X = newton_schulz_batched(X, group["ns_coefficients"], group["ns_steps"], group["eps"])
                for is_tall in (False, True):  # the wide (or square) matrices, then the tall ones, transposed back
                    pos = [j for j, t in enumerate(tall) if t == is_tall]
                    if not pos:
                        continue
                    Y = X if len(pos) == len(idx) else X[pos]
                    Y = (Y.mT if is_tall else Y).to(params[idx[pos[0]]].dtype, memory_format=torch.contiguous_format)
                    sub = [params[idx[j]] for j in pos]
                    torch._foreach_add_(sub, list(Y.unbind(0)),
                                        alpha=-_adjusted_lr(lr, group["adjust_lr_fn"], sub[0].shape))
        return loss


def _launches_a_kernel(func) -> bool:
    """Whether an ATen operator computes (on a GPU: launches a kernel): not a view or alias of its input (a return
    that aliases an input without writing it), not an allocation, not a profiler annotation."""
    name = func.overloadpacket.__name__
    if name.startswith(("_record_function", "empty")) or name in ("lift_fresh", "_unsafe_view"):  # no kernel
        return False
    return not any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


def count_compute_ops(fn) -> int:
    """How many kernels one call of ``fn()`` would launch on a GPU, counted on the CPU: the ATen operators it
    dispatches (after autograd and decompositions) that compute, views and allocations left out. A
    ``torch._foreach_*`` operator counts once, as CUDA runs it as one multi-tensor kernel."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += _launches_a_kernel(func)
            return func(*args, **(kwargs or {}))

    with _Count() as counter:
        fn()
    return counter.n
