"""Tests for ttt_helpers.plotting: the book's figure helpers."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ttt_helpers.plotting import show_image, theory_vs_simulation  # noqa: E402


def test_show_image_draws_the_file_without_axes(tmp_path):
    pixels = np.zeros((4, 6, 3))
    pixels[:, :3] = 1.0
    path = tmp_path / "figure.png"
    plt.imsave(path, pixels)
    fig = show_image(path, figsize=(3, 2))
    (ax,) = fig.axes
    assert not ax.axison and tuple(fig.get_size_inches()) == (3, 2)
    shown = ax.get_images()[0].get_array()
    assert shown.shape[:2] == (4, 6) and np.allclose(shown[0, 0, :3], 1.0) and np.allclose(shown[0, 5, :3], 0.0)
    plt.close(fig)


def test_theory_vs_simulation_checks_shapes():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="shapes do not match"):
        theory_vs_simulation(ax, [1, 2], [1.0], [1.0, 2.0])
    plt.close(fig)
