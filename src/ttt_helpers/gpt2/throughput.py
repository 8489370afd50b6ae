"""Training throughput: tokens per second and model FLOP utilisation (MFU) of the GPT-2 in-context learner.

The MFU counts :func:`~ttt_helpers.gpt2.model.flops_per_token` per training token against the accelerator's
dense bf16 peak. :func:`benchmark_throughput` times two settings on a scratch model: the public codebase's
(fp32 eager, batch 64, Adam) and :class:`~ttt_helpers.gpt2.train.Trainer`'s GPU path; the numbers are recorded
in ``data/models/gpt2_icl.json`` (``throughput.benchmarks``).
"""

from __future__ import annotations

import math
import time

import torch

from .data import as_torch_generator, sample_beta_torch, sample_regression
from .model import PUBLIC_REFERENCE_CONFIG, flops_per_token, new_scratch_model

__all__ = ["PEAK_BF16_DENSE", "peak_flops", "mfu", "benchmark_throughput", "add_optimized_reference_benchmark"]

# dense bf16 peak FLOP/s of the accelerators we ran on (the denominator of the MFU)
PEAK_BF16_DENSE = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def peak_flops(device) -> tuple[float, str]:
    """Dense bf16 peak FLOP/s of the accelerator (NaN if unknown or a CPU) and the device's name."""
    device = torch.device(device)
    if device.type != "cuda":
        return float("nan"), "cpu"
    name = torch.cuda.get_device_name(device)
    for key, val in PEAK_BF16_DENSE.items():
        if key in name:
            return val, name
    return float("nan"), name


def mfu(tokens_per_s, config, device) -> float | None:
    """Model FLOP utilisation ``tokens_per_s * flops_per_token(config) / peak``; None without a rate or a known peak."""
    peak, _ = peak_flops(device)
    return tokens_per_s * flops_per_token(config) / peak if (tokens_per_s and math.isfinite(peak)) else None


def benchmark_throughput(device, config, *, batch: int = 64, steps: int = 40, warm: int = 5,
                         optimized: bool = False) -> dict:
    """Training tokens/s of one setting, on a scratch model of size ``config``.

    ``optimized=False``: the public codebase's setting (fp32 eager, TF32 off, ``torch.optim.Adam``).
    ``optimized=True``: :class:`~ttt_helpers.gpt2.train.Trainer`'s GPU path (TF32, bf16 autocast,
    ``torch.compile``, fused AdamW).

    Returns
    -------
    dict
        ``config``, ``batch``, ``optimized``, ``tokens_per_s``, ``mfu_bf16_peak`` (None without a known peak)
        and ``steps_timed``.
    """
    device = torch.device(device)
    model = new_scratch_model(config, 0, device)
    cfg = model.config
    if optimized:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        fwd = torch.compile(model)
        amp = torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        fwd = model
        amp = torch.autocast(device.type, enabled=False)
    gen = as_torch_generator(0, device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = optimized
    torch.backends.cudnn.allow_tf32 = optimized
    try:
        for i in range(warm + steps):
            if i == warm:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            beta = sample_beta_torch(gen, batch, cfg.d, None, device=device)
            xs, ys = sample_regression(gen, beta, 1, cfg.n_points, 0.0)
            with amp:
                pred = fwd(xs[:, 0], ys[:, 0])
            loss = ((pred.float() - ys[:, 0]) ** 2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    tps = steps * batch * 2 * cfg.n_points / dt
    return {"config": cfg.to_dict(), "batch": batch, "optimized": optimized, "tokens_per_s": tps,
            "mfu_bf16_peak": mfu(tps, cfg, device), "steps_timed": steps}


def add_optimized_reference_benchmark(benchmarks: dict, device) -> dict:
    """Time the GPU path on :data:`~ttt_helpers.gpt2.model.PUBLIC_REFERENCE_CONFIG` at batch 512.

    The result goes into ``benchmarks``, with its speed-up over the fp32 eager reference if that was timed;
    returns ``benchmarks``.
    """
    benchmarks["public_reference_config_this_script_b512"] = benchmark_throughput(
        device, PUBLIC_REFERENCE_CONFIG, batch=512, steps=60, warm=10, optimized=True)
    if "public_reference_config_fp32_eager_b64" in benchmarks:
        ours = benchmarks["public_reference_config_this_script_b512"]["tokens_per_s"]
        theirs = benchmarks["public_reference_config_fp32_eager_b64"]["tokens_per_s"]
        benchmarks["speedup_on_reference_config"] = ours / theirs
    return benchmarks
