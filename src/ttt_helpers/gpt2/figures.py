"""Figures and tables of the GPT-2 chapter: the ICL curve against the baselines, and TTT curves by step."""

from __future__ import annotations

import numpy as np

from .ttt import best_ttt_curve

__all__ = ["ICL_STYLES", "plot_icl_curve", "plot_ttt_cells", "ttt_summary"]

#: colour and line style of the transformer and each baseline in :func:`plot_icl_curve`
ICL_STYLES = {"transformer": ("C0", "-"), "least_squares": ("C1", "--"), "bayes_ridge": ("k", ":"),
              "averaging": ("C2", "-."), "3-NN": ("C3", "--")}


def plot_icl_curve(ax, curve, *, sigma: float, d: int, title: str = "") -> None:
    """Loss against context pairs ``n`` for the transformer and the baselines of :func:`icl_curve`'s output."""
    for k, (col, ls) in ICL_STYLES.items():
        label = k.replace("_", " ") + (" (model)" if k == "transformer" else " (baseline)")
        ax.plot(curve["n"], curve[k], color=col, ls=ls, label=label)
    ax.axhline(sigma**2, color="grey", lw=0.8)
    ax.axvline(d, color="grey", lw=0.5, ls=":")
    ax.set(title=title, xlabel="context pairs $n$", yscale="log", ylim=(0.2, 5))


def plot_ttt_cells(ax, records, *, theta: float, k: int, sigma: float | None = None, bands: bool = True) -> None:
    """TTT curves of one (shift, ``k``) cell of a :class:`TTTExperiment` result: both starts, both optimizers.

    Pretrained in blue, scratch in red; AdamW solid, SGD dashed; each at its selected learning rate, with
    ``+-2`` standard-error bands when ``bands``.
    """
    for init, col in (("pretrained", "C0"), ("scratch", "C3")):
        for opt, ls in (("adamw", "-"), ("sgd", "--")):
            r = best_ttt_curve(records, theta=theta, k=k, init=init, optimizer=opt)
            m, s = np.asarray(r["test_mean"], float), np.asarray(r["test_sem"], float)
            steps = np.arange(len(m))
            ax.plot(steps, m, color=col, ls=ls, label=f"{init} + TTT, {opt} (lr {r['lr']:g})")
            if bands:
                ax.fill_between(steps, m - 2 * s, m + 2 * s, color=col, alpha=0.12)
    if sigma is not None:
        ax.axhline(sigma**2, color="grey", lw=0.8)
    ax.set(xlabel="TTT steps (0 = no TTT)", yscale="log")


def ttt_summary(records, *, theta: float, k: int, init: str, optimizer: str):
    """``(no TTT, after 1 step, after the last step, share of the best gain taken by step 1)`` of one curve."""
    m = np.asarray(best_ttt_curve(records, theta=theta, k=k, init=init, optimizer=optimizer)["test_mean"], float)
    return m[0], m[1], m[-1], (m[0] - m[1]) / (m[0] - m.min())
