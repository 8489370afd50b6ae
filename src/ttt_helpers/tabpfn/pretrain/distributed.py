"""Several processes (``torch.distributed``, started by ``torchrun``): data-parallel pretraining.

Each process trains on its own prior batches; ``DistributedDataParallel`` averages the gradients, so every
process takes the same step. Process 0's clock decides progress, stops and evaluations (:func:`from_rank0`).
:func:`weights_digest` lets a test check that the processes hold bitwise-equal weights after every step.
"""

from __future__ import annotations

import dataclasses
import os

import torch

__all__ = [
    "DistInfo",
    "init_distributed",
    "process_device",
    "finish_distributed",
    "from_rank0",
    "barrier",
    "all_gather",
    "weights_digest",
]


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a data-parallel run: ``rank`` of ``world_size`` (1: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group that ``torchrun`` set up, if any (``$WORLD_SIZE`` > 1).

    The backend is NCCL when ``device`` is CUDA (one GPU per process: ``cuda:$LOCAL_RANK``) and gloo on the
    CPU. With no ``torchrun`` (or one process) nothing happens and ``DistInfo()`` is returned.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local, backend=backend)


def process_device(device: str, info: DistInfo) -> str:
    """The device of this process: ``cuda:<local rank>`` in a multi-GPU run, else ``device`` itself."""
    return f"cuda:{info.local_rank}" if info.world_size > 1 and str(device).startswith("cuda") else device


def finish_distributed(info: DistInfo) -> None:
    """Leave the process group joined by :func:`init_distributed` (no-op for one process)."""
    if info.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def from_rank0(value: float, info: DistInfo, device="cpu") -> float:
    """``value`` as process 0 has it (a broadcast; the value itself with one process).

    The broadcast goes through a tensor on ``device`` when it is a CUDA device (NCCL), else on the CPU (gloo).
    """
    if info.world_size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device if torch.device(device).type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return float(t)


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for one process)."""
    if info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def all_gather(value, info: DistInfo) -> list:
    """Every process's ``value`` (any picklable object), in rank order: ``[value]`` for one process."""
    if info.world_size == 1:
        return [value]
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def weights_digest(model) -> str:
    """sha256 of all parameters' bytes, in order: equal digests mean bitwise-equal weights."""
    import hashlib

    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
