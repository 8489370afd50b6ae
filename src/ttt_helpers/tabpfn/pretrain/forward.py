"""The forward pass of a training step: a prior batch as a task, the attention kernels, the logits, the loss.

* :func:`to_task`: a prior batch as the model's inputs ``x[T, B, C]``, ``y_train[N, B]``, with a random label
  permutation per task (and, when a batch is reused, a fresh context/test split), and the targets of the test
  rows as ranks among the context's classes (how ``tabpfn`` densifies labels);
* :func:`configure_sdpa`: which torch attention kernels tabpfn's own dispatch may use in training;
* :func:`masked_logits`, :func:`forward_loss`: logits masked to each task's classes, and the cross-entropy on
  the test rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import SDPA_MODES

__all__ = ["to_task", "small_context_size", "masked_logits", "configure_sdpa", "SHORT_SEQUENCE", "forward_loss"]


def small_context_size(T: int, gen: torch.Generator, frac: float) -> int | None:
    """With probability ``frac``, a context size drawn log-uniformly in ``[2, T // 2]`` for a table of ``T`` rows
    (two draws from ``gen``, always both, so the stream of draws does not depend on the outcome); else None (the
    prior's own split).

    The prior's split leaves 30-90 % of a table as context, so 800- to 1,200-row tables never show the model a
    context below 240 rows, while the book evaluates it from 2 rows on (issue 12's small-context item)."""
    u, v = torch.rand(2, generator=gen, device="cpu").tolist()
    if not u < float(frac) or T < 4:
        return None
    lo, hi = math.log(2.0), math.log(T // 2)
    return int(min(T // 2, max(2, round(math.exp(lo + (hi - lo) * v)))))


def to_task(batch, device, gen: torch.Generator, reshuffle: bool, max_classes: int, small_context_frac: float = 0.0):
    """(X[B,T,H], y[B,T], d, seq_lens, train_sizes) -> x[T,B,C], y_train[N,B], target[T-N,B], n_cls[B].

    The columns are trimmed to the widest task of the batch (tabicl pads with zero columns, which
    ``tabpfn`` drops as constant anyway). Labels are randomly permuted per task; ``target`` is the
    label's rank among the task's training labels (how ``tabpfn`` densifies labels internally),
    or -100 (ignored) for a test label absent from the context. With ``small_context_frac`` > 0, that share of
    the steps uses a context of :func:`small_context_size` rows of a fresh random split instead of the prior's.
    """
    X, y, d, _, train_sizes = batch
    X = X[:, :, : max(1, int(d.max()))]
    B, T, _ = X.shape
    n_train = int(train_sizes[0])
    if small_context_frac > 0:
        small = small_context_size(T, gen, small_context_frac)
        if small is not None:
            n_train, reshuffle = small, True
    X = _to_device(X.float(), device)
    y = _to_device(y.long(), device)
    if reshuffle:  # a fresh context/test split of the same tasks
        perm = _to_device(torch.argsort(torch.rand(B, T, generator=gen, device="cpu"), dim=1), device)
        X = torch.gather(X, 1, perm[:, :, None].expand_as(X))
        y = torch.gather(y, 1, perm)
    # random label permutation per task (TabPFN's inference shuffles classes too)
    lab_perm = _to_device(torch.argsort(torch.rand(B, max_classes, generator=gen, device="cpu"), dim=1), device)
    y = torch.gather(lab_perm, 1, y.clamp(0, max_classes - 1))
    y_tr, y_te = y[:, :n_train], y[:, n_train:]
    present = F.one_hot(y_tr, max_classes).amax(1).bool()  # [B, K]
    rank = present.long().cumsum(1) - 1  # [B, K]
    target = torch.gather(rank, 1, y_te)
    ok = torch.gather(present, 1, y_te)
    target = torch.where(ok, target, torch.full_like(target, -100))
    n_cls = present.sum(1)  # [B]
    x = X.transpose(0, 1).contiguous()  # [T, B, C]
    return x, y_tr.transpose(0, 1).float().contiguous(), target.transpose(0, 1).contiguous(), n_cls


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` (on the CPU) as a contiguous tensor on ``device``; to a CUDA device through pinned memory without
    waiting for the copy (a copy from pageable memory makes the host wait for the device's queue)."""
    t = t.contiguous()
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def masked_logits(logits: torch.Tensor, n_cls: torch.Tensor) -> torch.Tensor:
    """Logits [T, B, K] with the classes beyond each task's count masked (as TabPFN slices at inference)."""
    K = logits.shape[-1]
    mask = torch.arange(K, device=logits.device)[None, :] >= n_cls[:, None]  # [B, K]
    return logits.float().masked_fill(mask[None], float("-inf"))


_SDPA_DEFAULTS: dict = {}
#: The longest query or key sequence that ``"row_math"``, ``"short_math"`` and ``"short_efficient"`` count as the
#: short attention between a row's feature groups (tables hold hundreds of rows, rows a few dozen groups).
SHORT_SEQUENCE = 64


def configure_sdpa(mode: str) -> None:
    """Choose torch SDPA kernels inside tabpfn's own attention dispatch (no re-implementation).

    ``"no_gqa"`` expands the single key/value head of the test rows instead of torch's ``enable_gqa``;
    ``"no_flash"`` keeps the GQA call but drops the FlashAttention kernel; ``"row_math"`` is ``"no_gqa"`` plus
    torch's reference (math) kernel for the short between-feature attention; ``"math"``: the reference kernel
    everywhere; ``"no_cudnn"``: tabpfn's dispatch without cuDNN's fused attention, whose bf16 backward failed on
    the H200 (torch 2.11) with ``mha_graph.execute(...).is_good()`` after about 190 steps of tables of varying
    length, after NaN losses and 0.5 s steps (a known defect: pytorch issues 122695, 134001);
    ``"short_math"`` and ``"short_efficient"``: ``"no_cudnn"`` for the long attention between a column's cells, and
    for the short attention between the feature groups of a row (both sequences of at most
    :data:`SHORT_SEQUENCE` tokens) torch's math kernel, or its memory-efficient kernel (math where that kernel is
    absent, as on a CPU). FlashAttention pads a sequence to blocks of 128 queries, so the dozen feature groups of a
    row cost it about as much as 128 would (the step profile: its backward was the largest GPU time of a step);
    ``"default"``: tabpfn's own dispatch. Each call first restores tabpfn's dispatch, so modes do not pile up.
    """
    from torch.nn.attention import SDPBackend

    import tabpfn.architectures.shared.scaled_dot_product_attention as sdpa

    if not _SDPA_DEFAULTS:
        _SDPA_DEFAULTS.update(gqa=sdpa.gqa_is_supported, torch_sdpa=sdpa._torch_sdpa, backends=list(sdpa._SDPA_BACKENDS))
    sdpa.gqa_is_supported = _SDPA_DEFAULTS["gqa"]
    sdpa._torch_sdpa = _SDPA_DEFAULTS["torch_sdpa"]
    sdpa._SDPA_BACKENDS[:] = _SDPA_DEFAULTS["backends"]
    if mode == "no_gqa":
        sdpa.gqa_is_supported = lambda: False
    elif mode == "no_flash":
        sdpa._SDPA_BACKENDS[:] = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
    elif mode == "row_math":
        sdpa.gqa_is_supported = lambda: False
        sdpa._torch_sdpa = _short_sequences_on([SDPBackend.MATH])
    elif mode in ("short_math", "short_efficient"):
        sdpa._SDPA_BACKENDS[:] = [b for b in _SDPA_DEFAULTS["backends"] if b != SDPBackend.CUDNN_ATTENTION]
        sdpa._torch_sdpa = _short_sequences_on([SDPBackend.MATH] if mode == "short_math"
                                               else [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    elif mode == "math":
        sdpa._SDPA_BACKENDS[:] = [SDPBackend.MATH]
    elif mode == "no_cudnn":
        sdpa._SDPA_BACKENDS[:] = [b for b in _SDPA_DEFAULTS["backends"] if b != SDPBackend.CUDNN_ATTENTION]
    elif mode != "default":
        raise ValueError(f"sdpa mode must be one of {SDPA_MODES}, got {mode!r}")


def _short_sequences_on(backends: list):
    """tabpfn's torch SDPA path with ``backends`` for a call whose query and key sequences are both at most
    :data:`SHORT_SEQUENCE` long (tensors are ``(batch, sequence, heads, dim)``); other calls as tabpfn's dispatch
    chooses."""
    original = _SDPA_DEFAULTS["torch_sdpa"]

    def short_sequences_on(q_BSHD, k_BSJD, v_BSJD, _backends_override=None):
        if _backends_override is None and q_BSHD.shape[1] <= SHORT_SEQUENCE and k_BSJD.shape[1] <= SHORT_SEQUENCE:
            _backends_override = list(backends)
        return original(q_BSHD, k_BSJD, v_BSJD, _backends_override)

    return short_sequences_on


def forward_loss(model, task, autocast: bool):
    """Cross-entropy on the test rows of a task batch; also the number of correct and of scored test labels."""
    x, y_tr, target, n_cls = task
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits = model(x, y_tr)
    logits = masked_logits(logits, n_cls)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    valid = target >= 0
    correct = ((logits.argmax(-1) == target) & valid).sum()
    return loss, correct, valid.sum()
