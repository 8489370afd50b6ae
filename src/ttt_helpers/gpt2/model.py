"""The GPT-2 in-context learner: its size, the model, and its float16 checkpoints.

The model follows Garg et al. (2022), "What can transformers learn in-context?": a Hugging Face
:class:`transformers.GPT2Model` backbone, a linear read-in of the tokens and a linear read-out of one
scalar per position. A prompt of ``N`` labelled pairs ``(x_i, y_i)`` is written as ``2N`` interleaved tokens
``[x_1; 0], [0; y_1], [x_2; 0], [0; y_2], ...`` in ``R^{d+1}``; the read-out at the token of ``x_i`` is the
prediction of ``y_i`` from the ``i - 1`` pairs before it (causal attention).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..validation import check_nonnegative_int, check_positive_int

__all__ = [
    "GPT2ICLConfig",
    "GPT2ICL",
    "PUBLIC_REFERENCE_CONFIG",
    "new_scratch_model",
    "count_parameters",
    "flops_per_token",
    "save_fp16_checkpoint",
    "load_gpt2_icl",
]


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


# the public codebase's (Garg et al.'s) standard model, used as a throughput yardstick
PUBLIC_REFERENCE_CONFIG = GPT2ICLConfig(d=20, n_points=41, n_embd=256, n_layer=12, n_head=8)


def new_scratch_model(config, seed: int, device="cpu") -> GPT2ICL:
    """The same architecture at random (Hugging Face GPT-2) initialisation, seeded without touching global state."""
    seed = check_nonnegative_int(seed, "seed")
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = GPT2ICL(config)
    return model.to(device)


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
