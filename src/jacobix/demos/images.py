"""``jacobix demo images``: pictures of AR vs SJD on the bundled class-conditional model.

Writes into ``out_dir`` (default ``jacobix-out/images``):

- ``samples_ar_vs_sjd.png``: one row per class, AR samples in the left half, SJD samples in the
  right half (same labels and sampling settings; different random draws, so different images).
- ``accept_sweep.png``: each SJD sample next to a heat map of the sweep at which each of its
  14x14 tokens was accepted, with a colour bar in sweeps.
- ``sjd_progress.gif``: the SJD canvases sweep by sweep (accepted tokens, the window's drafts
  tinted orange, positions not reached yet in blue).
- ``sjd2_denoising.png``: SJD2 on the fine-tuned ``fmnist-ar-sjd2``: the noise level of every
  window slot at every sweep (slots enter as noise far ahead, denoise one level per sweep, are
  verified once clean), next to the finished sample.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from jacobix.eval import quality
from jacobix.core.engine import SweepRecord
from jacobix.eval import figures
from jacobix.images.model import ImageModel, load_image_model
from jacobix.images.sample import ImageSampling, ImageSamples, generate_images
from jacobix.images.sjd2 import SJD2Config, SJD2Proposer
from jacobix.tokens.decoding import Decoding
from jacobix.images.proposers import resolve_image_init

DEFAULT_OUT = Path("jacobix-out") / "images"
BEST = ImageSampling(decoding=Decoding(method="sjd-coupled", window=16, init="prior-above"))
SJD2_DEMO = ImageSampling(decoding=Decoding(method="sjd2", window=64, init="prior-above"),
                          sjd2=SJD2Config(levels=5, coupled=True))


@dataclass(frozen=True)
class DemoResult:
    """Paths of the written pictures and the comparison table."""

    grid_path: Path
    heatmap_path: Path
    animation_path: Path
    table: str
    denoising_path: Path | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file the demo wrote."""
        return (self.grid_path, self.heatmap_path, self.animation_path) + ((self.denoising_path,) if self.denoising_path else ())


@dataclass(frozen=True)
class FillIn:
    """Frames of the fill-in animation.

    Attributes:
        pixels: (F, N, 28, 28) decoded canvases in [0, 1].
        status: (F, N, 14, 14) per token ``figures.NOT_REACHED``, ``DRAFT`` or ``ACCEPTED``.
        sweeps: (F,) the sweep after which each frame is taken (1 = first forward pass).
        total_sweeps: sweeps of the whole batch.
    """

    pixels: np.ndarray
    status: np.ndarray
    sweeps: tuple[int, ...]
    total_sweeps: int


def demo_images(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    per_class: int = 4,
    seed: int = 0,
    sjd: ImageSampling = BEST,
    model: ImageModel | None = None,
    sjd2: ImageSampling | None = SJD2_DEMO,
) -> DemoResult:
    """Generate ``per_class`` images per class with AR and with ``sjd``; write the pictures.

    Args:
        out_dir: folder for the PNG files (created if needed).
        per_class: images per class and method.
        seed: generator seed.
        sjd: the SJD settings; AR uses the same temperature, top-k/top-p and CFG.
        model: defaults to the bundled model.
        sjd2: the SJD2 settings of the denoising picture (on ``fmnist-ar-sjd2``), or None to skip it.
    Returns:
        :class:`DemoResult` with the file paths and a printable table.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if sjd.method not in ("sjd", "sjd-coupled"):
        raise ValueError(f"sjd settings must use method 'sjd' or 'sjd-coupled', got {sjd.method!r}")
    model = model or load_image_model()
    out_dir = Path(out_dir)
    labels = torch.arange(10).repeat_interleave(per_class)  # (10 * per_class,)
    ar_settings = replace(sjd, decoding=Decoding(method="ar"))
    ar = generate_images(model, labels, ar_settings, generator=torch.Generator().manual_seed(seed), batch_size=len(labels))
    fast = generate_images(model, labels, sjd, generator=torch.Generator().manual_seed(seed), batch_size=len(labels), record=True)
    sweeps = commit_sweeps(fast.trajectories[0], prompt_length=1, tokens=model.vocab.image_tokens)  # (N, 196)
    grid = model.vocab.grid
    ar_passes, sjd_passes = float(ar.row_passes.double().mean()), float(fast.row_passes.double().mean())
    pair = figures.comparison_figure(
        ar.images.numpy(), fast.images.numpy(), per_class=per_class, left_title=f"AR\n{ar_passes:.0f} passes per image",
        right_title=f"SJD\n{sjd_passes:.0f} passes per image", title=f"AR vs {sjd.label()}")
    heat = figures.accept_sweep_figure(
        fast.images.numpy(), (sweeps + 1).view(-1, grid, grid).numpy(), per_class=per_class,
        title=f"When {sjd.label()} accepted each token")
    fill = fill_in_frames(model, fast)
    titles = [f"after sweep {k} of {fill.total_sweeps}" for k in fill.sweeps]
    shown = "" if len(fill.sweeps) == fill.total_sweeps else f" ({len(fill.sweeps)} of {fill.total_sweeps} sweeps shown)"
    return DemoResult(
        grid_path=figures.save(pair, out_dir / "samples_ar_vs_sjd.png"),
        heatmap_path=figures.save(heat, out_dir / "accept_sweep.png"),
        animation_path=figures.fill_in_gif(out_dir / "sjd_progress.gif", fill.pixels, fill.status, per_class=per_class,
                                           title=f"{sjd.label()}: filling in{shown}", frame_titles=titles),
        table=_table(ar, fast, labels, ar_settings, sjd),
        denoising_path=None if sjd2 is None else sjd2_denoising_picture(out_dir / "sjd2_denoising.png", sjd2, seed=seed),
    )


def sjd2_denoising_picture(path: Path, settings: ImageSampling, *, label: int = 0, seed: int = 0,
                           model: ImageModel | None = None) -> Path:
    """Decode one image with SJD2 and draw its window's noise levels over the sweeps (see module docstring)."""
    if settings.method != "sjd2":
        raise ValueError(f"sjd2 settings must use method='sjd2', got {settings.method!r}")
    model = model or load_image_model("fmnist-ar-sjd2")
    proposer = SJD2Proposer(model.noise, model.transformer.embed, settings.sjd2,
                            init=resolve_image_init(settings.decoding.init, model), trace=True)
    out = generate_images(model, [label], settings, generator=torch.Generator().manual_seed(seed), batch_size=1,
                          record=True, proposer=proposer)
    levels = window_levels(out.trajectories[0], proposer.levels_trace, tokens=model.vocab.image_tokens)
    passes = int(out.row_passes[0])
    title = (f"{settings.label()}: window slots denoising over sweeps ({figures.CLASS_NAMES[label]}, "
             f"{passes} passes for {model.vocab.image_tokens} tokens)")
    return figures.save(figures.denoising_figure(levels, out.images[0].numpy(), title=title), path)


def window_levels(trajectory: list[SweepRecord], levels_trace: list[Tensor], *, tokens: int, row: int = 0) -> np.ndarray:
    """(S, tokens) per sweep: each window slot's noise level, -1 for committed tokens, NaN elsewhere.

    ``levels_trace[s]`` (B, D) are the levels of the drafts fed by sweep ``s``; the drafts sit at
    generated positions ``start - 1 .. start + D - 2`` (the prompt is one class token).
    """
    sweeps = min(len(trajectory), len(levels_trace))
    out = np.full((sweeps, tokens), np.nan)
    for s in range(sweeps):
        first = int(trajectory[s].start[row]) - 1  # generated tokens committed before the sweep
        out[s, :first] = -1
        level = levels_trace[s][row].numpy()
        span = min(len(level), tokens - first)
        out[s, first : first + span] = level[:span]
    return out


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


def fill_in_frames(model: ImageModel, samples: ImageSamples, max_frames: int = 60) -> FillIn:
    """The canvases after each sweep: accepted tokens, the next sweep's drafts, and what is not reached yet.

    Args:
        model: the image model (its tokenizer decodes the canvases).
        samples: generated with ``record=True`` in one batch.
        max_frames: at most this many frames, evenly spread over the sweeps (the last is kept).
    Returns:
        :class:`FillIn` frames, the first taken after sweep 1, the last showing the finished images.
    """
    trajectory, grid = samples.trajectories[0], model.vocab.grid
    n, cells, total = samples.tokens.shape[0], grid * grid, len(trajectory)
    picks = np.unique(np.linspace(1, total, min(max_frames, total)).round().astype(int))  # sweeps to show
    pixels, status = [], []
    for sweep in picks:
        canvas = samples.tokens.view(n, cells).clone()  # (N, cells) final tokens where accepted
        state = torch.full((n, cells), figures.NOT_REACHED)
        if sweep < total:  # the state fed to the next sweep: its start and its drafts
            record = trajectory[sweep]
            window = record.start[:, None] - 1 + torch.arange(record.drafts.shape[1])[None]  # (N, D)
            inside = window < cells
            rows = torch.arange(n)[:, None].expand_as(window)
            state[rows[inside], window[inside]] = figures.DRAFT
            canvas[rows[inside], window[inside]] = record.drafts.clamp(max=model.vocab.num_codes - 1)[inside]
            state[torch.arange(cells)[None] < (record.start[:, None] - 1)] = figures.ACCEPTED
        else:
            state[:] = figures.ACCEPTED
        pixels.append(model.tokenizer.decode(canvas.view(n, grid, grid)).numpy())  # (N, 28, 28)
        status.append(state.view(n, grid, grid).numpy())
    return FillIn(np.stack(pixels), np.stack(status), tuple(int(k) for k in picks), total)


def _table(ar: ImageSamples, fast: ImageSamples, labels: Tensor, ar_settings: ImageSampling, sjd: ImageSampling) -> str:
    lines = [f"{'decoder':>26}  {'passes/img':>10}  {'batch passes':>12}  {'wall s':>7}  {'accuracy':>8}"]
    for name, s in ((ar_settings.label(), ar), (sjd.label(), fast)):
        accuracy = quality.class_accuracy(s.images, labels)
        lines.append(f"{name:>26}  {float(s.row_passes.double().mean()):>10.1f}  {s.batch_passes:>12d}  "
                     f"{s.wall_time_s:>7.2f}  {accuracy:>8.3f}")
    return "\n".join(lines)
