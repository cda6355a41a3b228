"""``jacobix demo images``: pictures of AR vs SJD on the bundled class-conditional model.

Writes into ``out_dir`` (default ``jacobix-out/images``):

- ``samples_ar_vs_sjd.png``: one row per class, AR images on the left, SJD images on the right
  (same labels, same sampling settings; different random draws, so different images).
- ``accept_sweep.png``: for each SJD image, the sweep at which each of its 14x14 tokens was
  committed (dark = early, yellow = late), next to the image.
- ``sjd_progress.png``: an animated PNG of the SJD canvases sweep by sweep (committed tokens,
  then the window's drafts; gray = not yet drafted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from jacobix.eval import quality
from jacobix.core.engine import SweepRecord
from jacobix.eval import png
from jacobix.images.model import ImageModel, load_image_model
from jacobix.images.sample import ImageSampling, ImageSamples, generate_images

DEFAULT_OUT = Path("jacobix-out") / "images"
BEST = ImageSampling(method="sjd", window=16, init="prior-above", coupled=True)


@dataclass(frozen=True)
class DemoResult:
    """Paths of the written pictures and the comparison table."""

    grid_path: Path
    heatmap_path: Path
    animation_path: Path
    table: str


def demo_images(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    per_class: int = 4,
    seed: int = 0,
    sjd: ImageSampling = BEST,
    model: ImageModel | None = None,
) -> DemoResult:
    """Generate ``per_class`` images per class with AR and with ``sjd``; write the pictures.

    Args:
        out_dir: folder for the PNG files (created if needed).
        per_class: images per class and method.
        seed: generator seed.
        sjd: the SJD settings; AR uses the same temperature, top-k/top-p and CFG.
        model: defaults to the bundled model.
    Returns:
        :class:`DemoResult` with the file paths and a printable table.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if sjd.method != "sjd":
        raise ValueError(f"sjd settings must use method='sjd', got {sjd.method!r}")
    model = model or load_image_model()
    out_dir = Path(out_dir)
    labels = torch.arange(10).repeat_interleave(per_class)  # (10 * per_class,)
    ar_settings = ImageSampling(method="ar", temperature=sjd.temperature, top_k=sjd.top_k, top_p=sjd.top_p, cfg_scale=sjd.cfg_scale)
    ar = generate_images(model, labels, ar_settings, generator=torch.Generator().manual_seed(seed), batch_size=len(labels))
    fast = generate_images(model, labels, sjd, generator=torch.Generator().manual_seed(seed), batch_size=len(labels), record=True)
    sweeps = commit_sweeps(fast.trajectories[0], prompt_length=1, tokens=model.vocab.image_tokens)  # (N, 196)
    grid = model.vocab.grid
    return DemoResult(
        grid_path=png.write_png(out_dir / "samples_ar_vs_sjd.png", side_by_side(ar.images, fast.images, per_class)),
        heatmap_path=png.write_png(out_dir / "accept_sweep.png", heatmap_panel(fast.images, sweeps.view(-1, grid, grid), per_class)),
        animation_path=png.write_apng(out_dir / "sjd_progress.png", progress_frames(model, fast, per_class)),
        table=_table(ar, fast, labels, ar_settings, sjd),
    )


def commit_sweeps(trajectory: list[SweepRecord], *, prompt_length: int, tokens: int) -> Tensor:
    """(B, tokens) index of the sweep that committed each generated token, from a recorded trajectory."""
    if not trajectory:
        raise ValueError("empty trajectory: generate with record=True")
    b = trajectory[0].start.shape[0]
    out = torch.full((b, tokens), -1, dtype=torch.long)
    offsets = torch.arange(trajectory[0].values.shape[1])
    for sweep, record in enumerate(trajectory):
        index = record.start[:, None] - prompt_length + offsets  # (B, W)
        hit = (offsets[None] < record.n_commit[:, None]) & (index < tokens)
        rows = torch.arange(b)[:, None].expand_as(index)
        out[rows[hit], index[hit]] = sweep
    return out


def side_by_side(left: Tensor, right: Tensor, per_class: int) -> np.ndarray:
    """Grid with one row per class: ``left`` images, a gap, then ``right`` images."""
    gap = np.full((1, 28, 28), 1.0)
    rows = [np.concatenate([left[i : i + per_class].numpy(), gap, right[i : i + per_class].numpy()])
            for i in range(0, len(left), per_class)]
    return png.upscale(png.tile(png.to_uint8(np.concatenate(rows)), 2 * per_class + 1), 2)


def heatmap_panel(images: Tensor, sweeps: Tensor, per_class: int) -> np.ndarray:
    """Each image (gray, as RGB) next to its commit-sweep heat map, tiled by class."""
    top = float(sweeps.max())
    pairs = []
    for image, sweep in zip(images.numpy(), sweeps.numpy()):
        pairs.append(np.repeat(png.to_uint8(image)[..., None], 3, axis=2))
        pairs.append(png.upscale(png.heat_colors(sweep, vmax=top), 2))  # (28, 28, 3)
    return png.upscale(png.tile(np.stack(pairs), 2 * per_class), 3)


def progress_frames(model: ImageModel, samples: ImageSamples, per_class: int, max_frames: int = 80) -> list[np.ndarray]:
    """One frame per sweep: committed tokens plus the window's drafts, decoded; gray where nothing is drafted."""
    trajectory, grid = samples.trajectories[0], model.vocab.grid
    n, cells = samples.tokens.shape[0], grid * grid
    frames = []
    for record in trajectory[:max_frames]:
        canvas = samples.tokens.view(n, cells).clone()
        known = torch.arange(cells)[None] < (record.start[:, None] - 1)  # committed before this sweep
        window = record.start[:, None] - 1 + torch.arange(record.drafts.shape[1])[None]  # (B, D)
        drafted = torch.zeros(n, cells, dtype=torch.bool)
        inside = window < cells
        drafted[torch.arange(n)[:, None].expand_as(window)[inside], window[inside]] = True
        canvas[drafted & ~known] = record.drafts.clamp(max=model.vocab.num_codes - 1)[inside]
        pixels = model.tokenizer.decode(canvas.view(n, grid, grid))  # (N, 28, 28)
        blank = ~(known | drafted).view(n, grid, grid).repeat_interleave(2, 1).repeat_interleave(2, 2)
        pixels[blank] = 0.5
        frames.append(png.upscale(png.tile(png.to_uint8(pixels.numpy()), per_class), 2))
    return frames


def _table(ar: ImageSamples, fast: ImageSamples, labels: Tensor, ar_settings: ImageSampling, sjd: ImageSampling) -> str:
    lines = [f"{'decoder':>26}  {'passes/img':>10}  {'batch passes':>12}  {'wall s':>7}  {'accuracy':>8}"]
    for name, s in ((ar_settings.label(), ar), (sjd.label(), fast)):
        accuracy = quality.class_accuracy(s.images, labels)
        lines.append(f"{name:>26}  {float(s.row_passes.double().mean()):>10.1f}  {s.batch_passes:>12d}  "
                     f"{s.wall_time_s:>7.2f}  {accuracy:>8.3f}")
    return "\n".join(lines)
