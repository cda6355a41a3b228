"""The demos' pictures: titles, axis labels, colour bars, legends and class names, and non-blank files."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from PIL import Image, ImageSequence

from jacobix.eval import figures
from jacobix.eval.figures import CLASS_NAMES


def tick_texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 28, 28))  # (N, 28, 28)


def test_tile_places_images_row_major_with_gaps():
    images = np.arange(3 * 2 * 2, dtype=float).reshape(3, 2, 2)
    out = figures.tile(images, 2, pad=1, fill=-1.0)
    assert out.shape == (2 * 2 + 1, 2 * 2 + 1)
    np.testing.assert_array_equal(out[:2, :2], images[0])
    np.testing.assert_array_equal(out[:2, 3:], images[1])
    np.testing.assert_array_equal(out[3:, :2], images[2])
    assert (out[2] == -1).all() and (out[3:, 3:] == -1).all()
    with pytest.raises(ValueError, match="columns >= 1"):
        figures.tile(images, 0)


def test_comparison_names_both_halves_and_every_class():
    left, right = random_images(20), random_images(20, seed=1)
    figure = figures.comparison_figure(left, right, per_class=2, left_title="AR", right_title="SJD", title="AR vs SJD")
    ar, sjd = figure.axes
    assert figure.get_suptitle() == "AR vs SJD"
    assert (ar.get_title(), sjd.get_title()) == ("AR", "SJD")
    assert tick_texts(ar.get_yticklabels()) == list(CLASS_NAMES) and ar.get_ylabel() == "class"
    assert ar.get_xlabel() == "sample" and tick_texts(ar.get_xticklabels()) == ["1", "2"]
    shown = sjd.images[0].get_array()
    np.testing.assert_allclose(shown[:28, :28], right[0])  # the right half shows the right images
    with pytest.raises(ValueError, match="10 classes x 3 images"):
        figures.comparison_figure(left, right, per_class=3, left_title="a", right_title="b", title="t")


def test_accept_sweep_map_has_a_sweep_colour_bar_over_the_sweeps():
    sweeps = np.random.default_rng(0).integers(1, 40, size=(10, 14, 14))
    figure = figures.accept_sweep_figure(random_images(10), sweeps, per_class=1, title="when")
    samples, heat = figure.axes[:2]
    bar = heat.images[0].colorbar
    assert bar is not None and bar.ax.get_ylabel() == "sweep"
    assert heat.images[0].get_clim() == (1.0, float(sweeps.max()))
    np.testing.assert_array_equal(heat.images[0].get_array()[:28:2, :28:2], sweeps[0])
    assert tick_texts(samples.get_yticklabels()) == list(CLASS_NAMES)
    assert figure.get_suptitle() == "when" and heat.get_title() and heat.get_xlabel() == "sample"


def test_image_grid_names_its_columns():
    figure = figures.image_grid_figure(random_images(20), columns=10, title="TarFlow", column_names=CLASS_NAMES,
                                       xlabel="class", ylabel="sample")
    (axes,) = figure.axes
    assert tick_texts(axes.get_xticklabels()) == list(CLASS_NAMES)
    assert (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()) == ("TarFlow", "class", "sample")
    assert tick_texts(axes.get_yticklabels()) == ["1", "2"]


def test_convergence_curves_log_axis_legend_and_zeros_end_a_line():
    curves = np.array([[1.0, 1e-3, 1e-6, 0.0], [1.0, 1e-1, 1e-2, 1e-3]])
    figure = figures.convergence_figure(curves, labels=["block 0", "block 1"], title="conv", ylabel="residual")
    (axes,) = figure.axes
    assert axes.get_yscale() == "log" and (axes.get_xlabel(), axes.get_ylabel(), axes.get_title()) == ("Jacobi sweep", "residual", "conv")
    assert tick_texts(axes.get_legend().get_texts()) == ["block 0", "block 1"]
    first = axes.get_lines()[0]
    assert list(first.get_xdata()) == [1, 2, 3, 4] and np.isnan(first.get_ydata()[-1])
    with pytest.raises(ValueError, match="S labels"):
        figures.convergence_figure(curves, labels=["one"], title="t", ylabel="y")


def test_fill_in_colours_by_token_state():
    pixels = np.full((1, 4, 4), 0.8)
    status = np.array([[[figures.ACCEPTED, figures.DRAFT], [figures.NOT_REACHED, figures.ACCEPTED]]])
    rgb = figures.fill_in_rgb(pixels, status)
    assert rgb.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(rgb[0, :2, :2], 0.8)  # accepted: the gray pixel
    assert rgb[0, 0, 2, 0] > rgb[0, 0, 2, 2] + 0.2  # draft: orange (red well above blue)
    assert rgb[0, 2, 0, 2] > rgb[0, 2, 0, 0] + 0.2 and not np.allclose(rgb[0, 2, 0], 0.8)  # not reached: blue


def test_fill_in_gif_has_frames_and_its_first_frame_shows_something(tmp_path):
    frames, n = 3, 10
    pixels = np.stack([random_images(n, seed=k) for k in range(frames)])  # (F, N, 28, 28)
    status = np.zeros((frames, n, 14, 14), dtype=int)
    status[0, :, 0] = figures.ACCEPTED  # the first sweep accepted the top row ...
    status[0, :, 1] = figures.DRAFT  # ... and drafted the next
    status[1, :, :7] = figures.ACCEPTED
    status[2] = figures.ACCEPTED
    path = figures.fill_in_gif(tmp_path / "fill.gif", pixels, status, per_class=1, title="fill",
                               frame_titles=["after sweep 1", "after sweep 2", "after sweep 3"], hold=2)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames >= 3
        shown = [np.asarray(frame.convert("RGB"), dtype=np.int32) for frame in ImageSequence.Iterator(gif)]
    first = shown[0]
    colours = np.unique(first.reshape(-1, 3), axis=0)
    assert len(colours) > 20  # text, tick labels, images: not one flat colour
    assert np.abs(shown[0] - shown[2]).sum() > 0  # the canvas changes between sweeps
    with pytest.raises(ValueError, match="frames of pixels, status and titles"):
        figures.fill_in_gif(tmp_path / "bad.gif", pixels, status, per_class=1, title="t", frame_titles=["one"])


def test_saved_png_is_a_real_picture(tmp_path):
    figure = figures.image_grid_figure(random_images(4), columns=4, title="four")
    path = figures.save(figure, tmp_path / "sub" / "grid.png")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert image.format == "PNG" and min(image.size) > 100 and pixels.std() > 10


def test_missing_matplotlib_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # importing it now raises ImportError
    monkeypatch.delitem(sys.modules, "jacobix.eval.figures")
    with pytest.raises(ImportError, match="pip install matplotlib"):
        importlib.import_module("jacobix.eval.figures")
