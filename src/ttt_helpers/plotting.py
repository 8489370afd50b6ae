"""Figure conventions shared by the chapters: theory as lines, simulation as markers with error bars."""

from __future__ import annotations

import numpy as np

__all__ = ["apply_style", "theory_vs_simulation", "show_image"]


def apply_style():
    """Set the book's matplotlib defaults (font sizes, grid, figure size, deterministic SVG/PNG output)."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 4.0),
            "figure.dpi": 100,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "legend.fontsize": 9,
            "savefig.bbox": "tight",
            "svg.hashsalt": "ttt-icl-book",
        }
    )


def theory_vs_simulation(ax, x, theory, sim_mean, sim_err=None, label="", color=None, x_theory=None):
    """Draw a theory curve (line) and simulation points (markers, 2-standard-error bars) on ``ax``.

    Parameters
    ----------
    ax : matplotlib Axes
    x : array_like, shape (p,)
        Abscissae of the simulation points (and of the theory unless ``x_theory`` is given).
    theory : array_like
        Theory values at ``x`` (or at ``x_theory``).
    sim_mean, sim_err : array_like, shape (p,)
        Simulation means and standard errors (bars show +-2 standard errors).
    label : str
        Curve label; the legend gets "<label> (theory)" and "<label> (simulation)".
    """
    x = np.asarray(x, dtype=float)
    xt = x if x_theory is None else np.asarray(x_theory, dtype=float)
    theory = np.asarray(theory, dtype=float)
    sim_mean = np.asarray(sim_mean, dtype=float)
    if theory.shape != xt.shape or sim_mean.shape != x.shape:
        raise ValueError(
            f"shapes do not match: x {x.shape}, sim_mean {sim_mean.shape}, x_theory {xt.shape}, theory {theory.shape}"
        )
    (line,) = ax.plot(xt, theory, "-", color=color, label=f"{label} (theory)".strip())
    yerr = None if sim_err is None else 2 * np.asarray(sim_err, dtype=float)
    ax.errorbar(x, sim_mean, yerr=yerr, fmt="o", ms=4, capsize=2, color=line.get_color(),
                label=f"{label} (simulation)".strip())
    return line


def show_image(path, *, figsize=(6.4, 4.8)):
    """Show an image file (a figure written by a script or the command line) as a figure without axes.

    Returns
    -------
    matplotlib Figure
    """
    import matplotlib.pyplot as plt

    img = plt.imread(path)
    fig, ax = plt.subplots(figsize=figsize)
    ax.imshow(img)
    ax.set_axis_off()
    return fig
