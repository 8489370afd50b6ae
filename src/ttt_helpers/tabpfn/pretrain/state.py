"""The model, its optimisers and learning-rate schedule, and the resumable training state on disk.

* :func:`make_model`: the configured architecture (``tabpfn``'s own, built by :mod:`..checkpoints`), seeded;
* :func:`make_optimizers`, :func:`lr_at`: AdamW (or Muon on the transformer blocks' matrices plus AdamW on the
  rest), linear warm-up then cosine decay in *training progress*;
* :func:`save_state`, :func:`load_state`: weights, optimiser moments and the run's ``meta`` in files of a few
  parameter-sizes each (:data:`STATE_FILES`), so that a later call resumes the run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from .. import checkpoints as tm
from .config import PretrainConfig
from .muon import BatchedMuon

__all__ = ["make_model", "mimetic_qk", "model_to_device", "make_optimizers", "lr_at", "save_state", "load_state",
           "load_ema", "STATE_FILES", "EMA_FILE"]

STATE_FILES = ("state_model.pt", "state_opt_avg.pt", "state_opt_avg_sq.pt", "state_meta.json")
_MOMENTUM_FILE = "state_opt_momentum.pt"
#: The moving average of the weights (``cfg.ema``) in a saved training state, beside :data:`STATE_FILES`.
EMA_FILE = "state_ema.pt"


# ----------------------------------------------------------------------------------------------------------
# Model, optimisers and the learning-rate schedule
# ----------------------------------------------------------------------------------------------------------
def make_model(cfg: PretrainConfig):
    """(model config, freshly initialised model seeded by ``cfg.seed``) of the configured architecture.

    With ``cfg.out_init_std > 0`` the block matrices that ``tabpfn`` initialises to zero are drawn from
    ``N(0, out_init_std^2)`` instead, from a CPU generator seeded by ``cfg.seed`` (the same numbers on every
    machine). With ``cfg.qk_mimetic > 0`` the query weights lean towards the keys they meet
    (:func:`mimetic_qk`)."""
    model_config = tm.make_config(architecture=cfg.architecture, **cfg.model_kwargs())
    model = tm.new_model(model_config, seed=cfg.seed)
    if cfg.out_init_std > 0:
        gen = torch.Generator().manual_seed(int(cfg.seed))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith("blocks.") and p.ndim == 2 and not p.any():
                    p.copy_(torch.randn(p.shape, generator=gen) * float(cfg.out_init_std))
    if cfg.qk_mimetic > 0:
        mimetic_qk(model, cfg.qk_mimetic, on=cfg.qk_mimetic_on)
    return model_config, model


def mimetic_qk(model, a: float, *, on: str = "both") -> int:
    """Mix each v2.6 attention's query weights with the key weights they are scored against, in place:
    ``Q <- a K + sqrt(1 - a^2) Q`` (:attr:`PretrainConfig.qk_mimetic`); returns the number of attentions changed.

    Between features (``AlongRowAttention``) query head ``h`` meets key head ``h``. Between rows
    (``AlongColumnAttention``) the test rows' query heads all meet key head 0 (multi-query attention), so every
    query head and every key head but the first mixes in key head 0. ``on``: ``"both"``, ``"rows"`` or
    ``"features"``."""
    from tabpfn.architectures import tabpfn_v2_6 as v26

    if not 0.0 <= float(a) <= 1.0:
        raise ValueError(f"a must be in [0, 1], got {a!r}")
    kinds = {"both": (v26.AlongRowAttention, v26.AlongColumnAttention), "rows": (v26.AlongColumnAttention,),
             "features": (v26.AlongRowAttention,)}[on]
    b = math.sqrt(1.0 - float(a) ** 2)
    changed = 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, kinds):
                continue
            q, k = module.q_projection.weight, module.k_projection.weight  # (heads * head_dim, emsize)
            if isinstance(module, v26.AlongColumnAttention):
                d = module.head_dim
                first = k[:d].clone()
                heads = q.shape[0] // d
                q.copy_(a * first.repeat(heads, 1) + b * q)
                k[d:].copy_(a * first.repeat(heads - 1, 1) + b * k[d:])
            else:
                q.copy_(a * k + b * q)
            changed += 1
    if not changed:
        raise ValueError("mimetic_qk found no tabpfn v2.6 attention in the model")
    return changed


def model_to_device(model, device):
    """``model`` moved to ``device``, with tabpfn v2.6's pre-generated column embeddings too.

    v2.6 keeps them as a plain tensor attribute (not a parameter or buffer, so ``Module.to`` leaves them on the CPU
    and no checkpoint holds them) and copies them to the device in every forward pass: on a GPU a copy from pageable
    memory, which makes the host wait until the device has run everything queued before it. On the device once,
    they are the same numbers (a copy), cast on the device at each forward."""
    model = model.to(device)
    embeddings = getattr(model, "pre_generated_column_embeddings", None)
    if torch.is_tensor(embeddings):
        model.pre_generated_column_embeddings = embeddings.to(device)
    return model


def _is_muon_param(name: str, p: torch.Tensor) -> bool:
    return p.ndim == 2 and name.startswith("blocks.")


def make_optimizers(model, cfg: PretrainConfig, *, fused: bool = False):
    """The optimisers and, per parameter group, its peak learning rate: ``[(optimizer, [base_lr per group])]``.

    ``"adamw"``: AdamW (betas 0.9, 0.95) with weight decay on the matrices and none on vectors.
    ``"muon"``: ``torch.optim.Muon`` (momentum 0.95, Nesterov, 5 Newton-Schulz steps, learning rate scaled to
    match AdamW's update size, no weight decay) on the 2-D weights inside the transformer blocks, or with
    ``cfg.muon_batched`` the same update by :class:`.muon.BatchedMuon`; AdamW as above on everything else
    (embeddings, thinking rows, norms, decoder).
    """
    named = list(model.named_parameters())
    muon = [p for n, p in named if cfg.optimizer == "muon" and _is_muon_param(n, p)]
    muon_ids = {id(p) for p in muon}
    decay = [p for n, p in named if p.ndim >= 2 and id(p) not in muon_ids]
    no_decay = [p for n, p in named if p.ndim < 2]
    adamw = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        fused=fused,
    )
    out = [(adamw, [cfg.lr, cfg.lr])]
    if muon:
        muon_class = BatchedMuon if cfg.muon_batched else torch.optim.Muon
        out.append((muon_class(muon, lr=cfg.muon_lr, weight_decay=0.0, momentum=0.95, adjust_lr_fn="match_rms_adamw"),
                    [cfg.muon_lr]))
    return out


def lr_at(base_lr: float, step: int, progress: float, *, warmup_steps: int, min_lr_frac: float,
          decay_frac: float = 1.0) -> float:
    """Linear warm-up over ``warmup_steps`` steps, then the peak ``base_lr`` until ``1 - decay_frac`` of the
    training progress, then cosine decay to ``min_lr_frac * base_lr`` at the end (``decay_frac=1``: cosine over
    the whole run; ``decay_frac=0.2``: warm-up, stable, decay)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    floor = base_lr * min_lr_frac
    t = max(0.0, min(1.0, progress) - (1.0 - decay_frac)) / decay_frac
    return floor + 0.5 * (base_lr - floor) * (1 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------------------------------------
# Training state
# ----------------------------------------------------------------------------------------------------------
def _param_state(model, optimizers):
    names = {id(p): n for n, p in model.named_parameters()}
    for opt, _ in optimizers:
        for p, st in opt.state.items():
            if st:
                yield names[id(p)], p, st


def save_state(out_dir, model, optimizers, meta: dict, ema: list | None = None) -> None:
    """Write a resumable training state (weights, optimiser moments, ``meta``) into ``out_dir``.

    Files of at most a few parameter-sizes each (the device tool returns files of at most 16 MiB):
    ``state_model.pt``; AdamW's ``exp_avg`` in ``state_opt_avg.pt``, ``exp_avg_sq`` and ``step`` in
    ``state_opt_avg_sq.pt``; Muon's momentum in ``state_opt_momentum.pt``; ``state_meta.json``; with ``ema`` (one
    tensor per parameter of ``model``, in order) the moving average of the weights in :data:`EMA_FILE`. Each file
    is written to a temporary name first and then renamed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"state_model.pt": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    avg, avg_sq, steps, momentum = {}, {}, {}, {}
    for n, _, st in _param_state(model, optimizers):
        if "exp_avg" in st:
            avg[n] = st["exp_avg"].detach().cpu()
            avg_sq[n] = st["exp_avg_sq"].detach().cpu()
            steps[n] = float(st["step"])
        if "momentum_buffer" in st:
            momentum[n] = st["momentum_buffer"].detach().cpu()
    files["state_opt_avg.pt"] = avg
    files["state_opt_avg_sq.pt"] = {"exp_avg_sq": avg_sq, "step": steps}
    if momentum:
        files[_MOMENTUM_FILE] = momentum
    if ema is not None:
        files[EMA_FILE] = {n: t.detach().cpu() for (n, _), t in zip(model.named_parameters(), ema)}
    for name, obj in files.items():
        torch.save(obj, out_dir / (name + ".tmp"))
    (out_dir / "state_meta.json.tmp").write_text(json.dumps(meta, indent=1))
    written = [*files, "state_meta.json"]
    for f in written:
        os.replace(out_dir / (f + ".tmp"), out_dir / f)
    if not momentum:
        (out_dir / _MOMENTUM_FILE).unlink(missing_ok=True)


def load_state(folder, model, optimizers, device) -> dict:
    """Load a state written by :func:`save_state` into ``model`` and ``optimizers``; returns its ``meta``."""
    folder = Path(folder)
    model.load_state_dict(torch.load(folder / "state_model.pt", map_location=device))
    avg = torch.load(folder / "state_opt_avg.pt", map_location=device)
    rest = torch.load(folder / "state_opt_avg_sq.pt", map_location=device)
    momentum = torch.load(folder / _MOMENTUM_FILE, map_location=device) if (folder / _MOMENTUM_FILE).exists() else {}
    owner = {id(p): opt for opt, _ in optimizers for g in opt.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        opt = owner[id(p)]
        if n in avg:
            opt.state[p] = {
                "step": torch.tensor(rest["step"][n], dtype=torch.float32, device=device),  # fused AdamW: on device
                "exp_avg": avg[n].to(device),
                "exp_avg_sq": rest["exp_avg_sq"][n].to(device),
            }
        elif n in momentum:
            opt.state[p] = {"momentum_buffer": momentum[n].to(device)}
    return json.loads((folder / "state_meta.json").read_text())


def load_ema(folder, model, device) -> list | None:
    """The moving average that :func:`save_state` wrote into ``folder`` (one tensor per parameter of ``model``, in
    order, of its dtype, on ``device``), or ``None`` where the state holds none."""
    path = Path(folder) / EMA_FILE
    if not path.exists():
        return None
    saved = torch.load(path, map_location=device)
    return [saved[n].to(p.dtype) for n, p in model.named_parameters()]


def _fresh_meta() -> dict:
    return {
        "step": 0,
        "train_seconds": 0.0,
        "calls": [],
        "loss_curve": [],  # [step, train_minutes, stage, mean train loss, mean train acc] per log interval
        "evals": [],
        "tasks_seen": 0,
    }
