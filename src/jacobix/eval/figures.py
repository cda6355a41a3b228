"""Labelled pictures for the demos: sample grids, heat maps, convergence curves, a fill-in GIF.

Built on matplotlib's object API with the non-interactive Agg canvas (no ``pyplot``, so no global
backend switch and nothing opens a window). Every figure has a title and axis labels; where
colour encodes a number it has a colour bar with its unit, several series get a legend, and
grids of class-conditional samples name the class of each row or column.

Each ``*_figure`` function returns the :class:`matplotlib.figure.Figure` (tests read its labels);
:func:`save` writes one to disk, :func:`fill_in_gif` writes an animation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

try:
    from matplotlib.animation import PillowWriter
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
except ImportError as error:  # matplotlib is a default dependency, but a broken install should say so
    raise ImportError("jacobix's pictures need matplotlib: pip install matplotlib") from error

from jacobix.eval.datasets import FASHION_MNIST_CLASSES

CLASS_NAMES = FASHION_MNIST_CLASSES
# Fill-in animation: a token cell is not reached yet, a draft inside the window, or accepted (final).
NOT_REACHED, DRAFT, ACCEPTED = 0, 1, 2
_BACKGROUND = np.array([0.55, 0.68, 0.85])  # light blue: clearly neither ink nor paper
_DRAFT_TINT = np.array([1.0, 0.55, 0.1])  # orange


def new_figure(width: float, height: float, *, dpi: int = 100) -> Figure:
    """A figure on its own Agg canvas (``width`` x ``height`` inches)."""
    figure = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` (format from the suffix, e.g. ``.png``), creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight", pad_inches=0.08)
    return path


def tile(images: np.ndarray, columns: int, *, pad: int = 1, fill: float = np.nan) -> np.ndarray:
    """Tile (N, H, W) or (N, H, W, C) images into one array, ``columns`` per row, ``fill`` between them."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim not in (3, 4) or len(images) == 0 or columns < 1:
        raise ValueError(f"tile needs (N, H, W[, C]) images with N >= 1 and columns >= 1, got {images.shape}")
    n, h, w = images.shape[:3]
    rows = -(-n // columns)
    out = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, *images.shape[3:]), fill)
    for i, image in enumerate(images):
        top, left = (i // columns) * (h + pad), (i % columns) * (w + pad)
        out[top : top + h, left : left + w] = image
    return out


def _grid_axes(axes, images: np.ndarray, columns: int, *, row_names: Sequence[str] | None = None,
               column_names: Sequence[str] | None = None, pad: int = 1, fill: float = np.nan, **imshow):
    """Draw tiled images on ``axes`` with one tick per row and column; returns the AxesImage."""
    images = np.asarray(images)
    h, w = images.shape[1:3]
    rows = -(-len(images) // columns)
    shown = axes.imshow(tile(images, columns, pad=pad, fill=fill), interpolation="nearest", **imshow)
    axes.set_xticks([c * (w + pad) + (w - 1) / 2 for c in range(columns)])
    axes.set_xticklabels(column_names if column_names is not None else [str(c + 1) for c in range(columns)],
                         rotation=40 if column_names is not None else 0, ha="right" if column_names is not None else "center")
    axes.set_yticks([r * (h + pad) + (h - 1) / 2 for r in range(rows)])
    axes.set_yticklabels(row_names if row_names is not None else [str(r + 1) for r in range(rows)])
    axes.tick_params(length=0, labelsize=8)
    for spine in axes.spines.values():
        spine.set_visible(False)
    return shown


def _grid_size(count: int, columns: int, *, panels: int = 1, extra_width: float = 1.3, extra_height: float = 1.3,
               cell: float = 0.6) -> tuple[float, float]:
    """Figure size (inches) for ``panels`` grids of ``count`` images side by side, ``cell`` inches per image."""
    rows = -(-count // columns)
    return panels * (columns * cell + 0.25) + extra_width, rows * cell + extra_height


def _check_class_grid(images: np.ndarray, per_class: int, class_names: Sequence[str]) -> None:
    if len(images) != per_class * len(class_names):
        raise ValueError(f"expected {len(class_names)} classes x {per_class} images, got {len(images)} images")


def comparison_figure(left: np.ndarray, right: np.ndarray, *, per_class: int, left_title: str, right_title: str,
                      title: str, class_names: Sequence[str] = CLASS_NAMES, dpi: int = 100) -> Figure:
    """Two class-by-row grids side by side (e.g. AR and SJD samples of the same classes).

    Args:
        left, right: (N, H, W) images in [0, 1], ``per_class`` consecutive images per class.
        per_class: images per class (columns of each half).
        left_title, right_title: names of the two halves.
        title: figure title.
        class_names: one name per row.
        dpi: resolution when saved.
    Returns:
        the figure (two image axes; rows labelled with the class names).
    """
    left, right = np.asarray(left), np.asarray(right)
    _check_class_grid(left, per_class, class_names)
    _check_class_grid(right, per_class, class_names)
    figure = new_figure(*_grid_size(len(left), per_class, panels=2), dpi=dpi)
    panels = figure.subplots(1, 2, sharey=True)
    for axes, images, name in zip(panels, (left, right), (left_title, right_title)):
        _grid_axes(axes, images, per_class, row_names=class_names, cmap="gray", vmin=0.0, vmax=1.0)
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("sample")
    panels[0].set_ylabel("class")
    figure.suptitle(title, fontsize=11)
    return figure


def accept_sweep_figure(images: np.ndarray, sweeps: np.ndarray, *, per_class: int, title: str,
                        class_names: Sequence[str] = CLASS_NAMES, dpi: int = 100) -> Figure:
    """Samples next to heat maps of the sweep at which each of their tokens was accepted.

    Args:
        images: (N, H, W) samples in [0, 1], ``per_class`` consecutive images per class.
        sweeps: (N, G, G) sweep (1 = first forward pass) that accepted each token.
        per_class: images per class.
        title: figure title.
        class_names: one name per row.
        dpi: resolution when saved.
    Returns:
        the figure: samples, heat maps, and a colour bar labelled ``sweep``.
    """
    images, sweeps = np.asarray(images), np.asarray(sweeps, dtype=np.float64)
    _check_class_grid(images, per_class, class_names)
    _check_class_grid(sweeps, per_class, class_names)
    figure = new_figure(*_grid_size(len(images), per_class, panels=2, extra_width=2.1), dpi=dpi)
    panels = figure.subplots(1, 2, sharey=True)
    _grid_axes(panels[0], images, per_class, row_names=class_names, cmap="gray", vmin=0.0, vmax=1.0)
    scale = images.shape[1] // sweeps.shape[1]  # token grid -> pixel grid, so both halves line up
    big = sweeps.repeat(scale, axis=1).repeat(scale, axis=2)  # (N, H, W)
    heat = _grid_axes(panels[1], big, per_class, row_names=class_names, cmap="viridis",
                      vmin=1.0, vmax=max(float(sweeps.max()), 2.0))
    panels[0].set_title("samples", fontsize=10)
    panels[1].set_title("accepted at sweep", fontsize=10)
    panels[0].set_ylabel("class")
    for axes in panels:
        axes.set_xlabel("sample")
    bar = figure.colorbar(heat, ax=panels[1], shrink=min(1.0, 4.0 / len(class_names) + 0.3))
    bar.set_label("sweep")
    figure.suptitle(title, fontsize=11)
    return figure


def denoising_figure(levels: np.ndarray, image: np.ndarray, *, title: str, dpi: int = 100) -> Figure:
    """SJD2's window over sweeps: the noise level of every slot, committed tokens, and the result.

    Args:
        levels: (S, T) per sweep (rows) and token position (columns): the slot's noise level
            (0 = clean draft) inside the window, -1 for committed tokens, NaN outside the window.
        image: (H, W) the finished sample in [0, 1].
        title: figure title.
        dpi: resolution when saved.
    Returns:
        the figure: a level map with a colour bar in noise levels and a legend, and the sample.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    levels = np.asarray(levels, dtype=np.float64)
    top = max(float(np.nanmax(levels)), 1.0)
    figure = new_figure(10.0, 4.8, dpi=dpi)
    grid = figure.add_gridspec(1, 2, width_ratios=(4.0, 1.0))
    axes, right = figure.add_subplot(grid[0]), figure.add_subplot(grid[1])
    window = np.where(levels >= 0, levels, np.nan)  # (S, T)
    committed = np.where(levels < 0, 1.0, np.nan)
    axes.imshow(committed, cmap=ListedColormap([[0.35, 0.35, 0.35]]), aspect="auto", interpolation="nearest",
                extent=(-0.5, levels.shape[1] - 0.5, levels.shape[0] + 0.5, 0.5))
    heat = axes.imshow(window, cmap="magma_r", vmin=0.0, vmax=top, aspect="auto", interpolation="nearest",
                       extent=(-0.5, levels.shape[1] - 0.5, levels.shape[0] + 0.5, 0.5))
    axes.set_xlabel("token position in the 14x14 grid (raster order)")
    axes.set_ylabel("sweep (forward pass)")
    bar = figure.colorbar(heat, ax=axes, pad=0.01)
    bar.set_label("noise level k of the slot (level, 0 = clean draft)")
    axes.legend(handles=[Patch(color=(0.35, 0.35, 0.35), label="committed token"),
                         Patch(facecolor="white", edgecolor="black", label="not in the window yet")],
                loc="upper right", fontsize=8)
    right.imshow(np.asarray(image), cmap="gray", vmin=0.0, vmax=1.0)
    right.set_title("the finished sample", fontsize=10)
    right.set_xticks([])
    right.set_yticks([])
    figure.suptitle(title, fontsize=11)
    return figure


def image_grid_figure(images: np.ndarray, *, columns: int, title: str, column_names: Sequence[str] | None = None,
                      xlabel: str = "sample", ylabel: str = "row", dpi: int = 100) -> Figure:
    """A grid of (N, H, W) images in [0, 1]; ``column_names`` (e.g. classes) label the columns."""
    images = np.asarray(images)
    figure = new_figure(*_grid_size(len(images), columns, extra_height=1.9 if column_names is not None else 1.3), dpi=dpi)
    axes = figure.subplots()
    _grid_axes(axes, images, columns, column_names=column_names, cmap="gray", vmin=0.0, vmax=1.0)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    return figure


def convergence_figure(curves: np.ndarray, *, labels: Sequence[str], title: str, ylabel: str,
                       xlabel: str = "Jacobi sweep", dpi: int = 100) -> Figure:
    """One line per series on a log y axis; zeros (nothing left to solve) end a line.

    Args:
        curves: (S, K) positive values per series and sweep (sweep k is column k-1).
        labels: S legend entries.
        title, ylabel, xlabel: texts.
        dpi: resolution when saved.
    Returns:
        the figure with one axes, a legend, and a log y axis.
    """
    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim != 2 or len(labels) != len(curves):
        raise ValueError(f"need (S, K) curves and S labels, got {curves.shape} and {len(labels)} labels")
    figure = new_figure(6.4, 4.2, dpi=dpi)
    axes = figure.subplots()
    sweeps = np.arange(1, curves.shape[1] + 1)
    for curve, label in zip(curves, labels):
        axes.plot(sweeps, np.where(curve > 0, curve, np.nan), marker=".", markersize=3, linewidth=1.2, label=label)
    axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=11)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def fill_in_rgb(pixels: np.ndarray, status: np.ndarray) -> np.ndarray:
    """Colour decoded canvases by token state: gray accepted, orange-tinted drafts, blue not reached.

    Args:
        pixels: (N, H, W) decoded canvases in [0, 1].
        status: (N, G, G) per token: ``NOT_REACHED``, ``DRAFT`` or ``ACCEPTED`` (H divisible by G).
    Returns:
        (N, H, W, 3) RGB in [0, 1].
    """
    pixels, status = np.asarray(pixels, dtype=np.float64), np.asarray(status)
    scale = pixels.shape[1] // status.shape[1]
    cells = status.repeat(scale, axis=1).repeat(scale, axis=2)[..., None]  # (N, H, W, 1)
    gray = np.clip(pixels, 0.0, 1.0)[..., None].repeat(3, axis=3)  # (N, H, W, 3)
    draft = 0.45 * gray + 0.55 * _DRAFT_TINT * (0.35 + 0.65 * gray)
    return np.where(cells == ACCEPTED, gray, np.where(cells == DRAFT, draft, _BACKGROUND))


def fill_in_gif(path: str | Path, pixels: np.ndarray, status: np.ndarray, *, per_class: int, title: str,
                frame_titles: Sequence[str], class_names: Sequence[str] = CLASS_NAMES, fps: int = 6,
                hold: int = 12, dpi: int = 80) -> Path:
    """Animate canvases filling in, one frame per sweep, as a looping GIF (needs pillow).

    Args:
        path: the ``.gif`` file.
        pixels: (F, N, H, W) decoded canvases per frame, in [0, 1].
        status: (F, N, G, G) token state per frame (see :func:`fill_in_rgb`).
        per_class: images per class (columns); rows are the classes.
        title: figure title; ``frame_titles`` (F,) is shown under it, e.g. the sweep number.
        class_names: one name per row.
        fps: frames per second; the last frame is held for ``hold`` extra frames.
        dpi: resolution.
    Returns:
        the path.
    """
    pixels, status = np.asarray(pixels), np.asarray(status)
    if len(pixels) < 1 or len(pixels) != len(status) or len(frame_titles) != len(pixels):
        raise ValueError(f"need F >= 1 frames of pixels, status and titles, got {len(pixels)}, {len(status)}, {len(frame_titles)}")
    _check_class_grid(pixels[0], per_class, class_names)
    figure = new_figure(*_grid_size(len(pixels[0]), per_class, extra_width=max(1.3, 4.6 - 0.6 * per_class), extra_height=1.8), dpi=dpi)
    axes = figure.subplots()
    shown = _grid_axes(axes, fill_in_rgb(pixels[0], status[0]), per_class, row_names=class_names, fill=1.0)
    axes.set_xlabel("sample")
    axes.set_ylabel("class")
    heading = axes.set_title(frame_titles[0], fontsize=10)
    figure.suptitle(title, fontsize=11)
    legend = [Patch(color=np.full(3, 0.8), label="accepted (final)"), Patch(color=_DRAFT_TINT, label="draft in window"),
              Patch(color=_BACKGROUND, label="not reached yet")]
    figure.legend(handles=legend, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = PillowWriter(fps=fps)
    with writer.saving(figure, path, dpi):
        for index in range(len(pixels)):
            shown.set_data(tile(fill_in_rgb(pixels[index], status[index]), per_class, fill=1.0))
            heading.set_text(frame_titles[index])
            writer.grab_frame()
        for _ in range(hold):
            writer.grab_frame()
    return path


__all__ = [
    "ACCEPTED", "CLASS_NAMES", "DRAFT", "NOT_REACHED", "accept_sweep_figure", "comparison_figure", "convergence_figure",
    "fill_in_gif", "fill_in_rgb", "image_grid_figure", "new_figure", "save", "tile",
]


def plot_pass_costs(calibration, path: str | Path) -> Path:
    """Draw a calibration's cost of a k-token pass over a one-token pass, one line per batch size.

    Args:
        calibration: a :class:`~jacobix.tokens.width.calibration.Calibration`.
        path: the picture to write (``.png``).
    """
    figure = new_figure(5.0, 3.4)
    axes = figure.add_subplot()
    for rows, shape in sorted(calibration.costs.items()):
        widths = sorted(shape)
        axes.plot(widths, [shape[w] for w in widths], marker="o", label=f"{rows} row{'s' * (rows != 1)}")
    top = max(max(shape.values()) for shape in calibration.costs.values())
    axes.plot([1, 16], [1, 16], color="0.7", linestyle=":", label="c(k) = k: no gain from parallel tokens")
    axes.set_ylim(0.9, max(2.0, top * 1.1))
    axes.set_xlabel("tokens per pass (k)")
    axes.set_ylabel("c(k) / c(1)")
    axes.set_title(f"{calibration.where.model} on {calibration.where.device}", fontsize=9)
    axes.legend(fontsize=8)
    return save(figure, path)


def latent_curve_figure(rows: Sequence[dict], *, title: str) -> Figure:
    """Accuracy of PCCoT against its Jacobi passes T (with 95% intervals), beside the other arms as lines.

    Args:
        rows: ``jacobix bench pccot`` records (``arm``, ``T``, ``accuracy``, ``accuracy_low``, ``accuracy_high``).
        title: the figure's title.
    """
    figure = new_figure(5.2, 3.6)
    axes = figure.add_subplot()
    curve = sorted((r for r in rows if r["arm"].startswith("pccot-T")), key=lambda r: r["T"])
    if curve:
        ts = [r["T"] for r in curve]
        accuracy = np.array([100 * r["accuracy"] for r in curve])
        errors = np.array([[100 * (r["accuracy"] - r["accuracy_low"]) for r in curve],
                           [100 * (r["accuracy_high"] - r["accuracy"]) for r in curve]])
        trained = sorted({r["trained_T"] for r in curve if r.get("trained_T") is not None})
        label = "PCCoT" + (f" trained at T = {', '.join(map(str, trained))}" if trained else "")
        axes.errorbar(ts, accuracy, yerr=errors, marker="o", capsize=3, label=label)
        axes.set_xticks(ts)
    styles = {"sequential": ("C1", "--"), "explicit-cot": ("C2", "-."), "no-cot": ("C3", ":")}
    for r in rows:
        if r["arm"] in styles:
            colour, line = styles[r["arm"]]
            axes.axhline(100 * r["accuracy"], color=colour, linestyle=line, label=f"{r['arm']} ({100 * r['accuracy']:.1f}%)")
    axes.set_ylim(0, 105)
    axes.set_xlabel("Jacobi passes over the latents (T)")
    axes.set_ylabel("accuracy on held-out problems (%)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    return figure
