"""Class-conditional image generation with the bundled model on jacobix's engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from jacobix.tokens.proposers.basic import DraftInit
from jacobix.core.engine import SweepRecord
from jacobix.tokens.generate import generate
from jacobix.tokens.result import DecodeStats
from jacobix.images.proposers import IMAGE_INITS, resolve_image_init
from jacobix.images.model import CodesOnly, ImageModel


@dataclass(frozen=True, kw_only=True)
class ImageSampling:
    """How to decode an image grid.

    Attributes:
        method: "ar" (sequential reference), "jacobi" (greedy) or "sjd" (sampling, lossless).
        window: tokens per pass for jacobi/sjd (drafts + 1).
        init: draft rule: "random", "repeat", "row-above", "codes-random", "prior", "prior-above",
            or any :class:`~jacobix.tokens.proposers.basic.DraftInit`.
        temperature: 0 for greedy, else sampling temperature (SJD and sampling AR need > 0).
        top_k, top_p: filters of the target distribution.
        cfg_scale: classifier-free guidance scale against the null-class prompt; None disables it.
        coupled: SJD re-drafts each position with the same noise every sweep
            (:mod:`jacobix.tokens.proposers.coupled`); still lossless, converges much faster.
    """

    method: Literal["ar", "jacobi", "sjd"] = "sjd"
    window: int = 16
    init: str | DraftInit = "random"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float | None = 1.5
    coupled: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("ar", "jacobi", "sjd"):
            raise ValueError(f"ImageSampling.method must be 'ar', 'jacobi' or 'sjd', got {self.method!r}")
        if self.window < 1:
            raise ValueError(f"ImageSampling.window must be >= 1, got {self.window}")
        if self.cfg_scale is not None and self.cfg_scale < 0:
            raise ValueError(f"ImageSampling.cfg_scale must be >= 0 or None, got {self.cfg_scale}")
        if isinstance(self.init, str) and self.init not in IMAGE_INITS:
            raise ValueError(f"unknown image init {self.init!r}; use one of {', '.join(IMAGE_INITS)} or a DraftInit callable")
        if self.coupled and self.method != "sjd":
            raise ValueError("ImageSampling.coupled applies to method='sjd' only")

    def label(self) -> str:
        if self.method == "ar":
            return "ar"
        init = self.init if isinstance(self.init, str) else type(self.init).__name__
        method = "sjd-coupled" if self.coupled else self.method
        return f"{method} w{self.window} {init}"


@dataclass(frozen=True)
class ImageSamples:
    """Generated images and how they were made.

    Attributes:
        images: (N, 28, 28) float in [0, 1].
        tokens: (N, 14, 14) image codes.
        labels: (N,) classes asked for.
        row_passes: (N,) forward passes during which each image was still being generated.
        batch_passes: forward passes summed over batches (a batch runs until its slowest row ends).
        wall_time_s: decoding time summed over batches (tokenizer decoding excluded).
        stats: the :class:`~jacobix.tokens.result.DecodeStats` of each batch.
        trajectories: per batch, the sweep records when ``record=True``.
    """

    images: Tensor
    tokens: Tensor
    labels: Tensor
    row_passes: Tensor
    batch_passes: int
    wall_time_s: float
    stats: list[DecodeStats] = field(repr=False)
    trajectories: list[list[SweepRecord]] = field(repr=False)


def generate_images(
    model: ImageModel,
    labels: Tensor | list[int],
    settings: ImageSampling = ImageSampling(),
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 50,
    record: bool = False,
) -> ImageSamples:
    """Generate one image per label.

    Args:
        model: from :func:`~jacobix.images.model.load_image_model`.
        labels: (N,) class ids in [0, 10).
        settings: decoding method and sampling options.
        generator: explicit randomness (seed it for reproducible images).
        batch_size: images decoded together.
        record: keep per-sweep trajectories (for acceptance heat maps).
    Returns:
        :class:`ImageSamples`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    model.vocab.class_tokens(labels)  # validates the labels
    init = resolve_image_init(settings.init, model)
    tokens, row_passes, stats, trajectories, wall = [], [], [], [], 0.0
    for chunk in labels.split(batch_size):
        result = _generate_batch(model, chunk, settings, init, generator, record)
        tokens.append(torch.stack(result.tokens))  # (b, 196)
        row_passes.append(result.stats.active_per_pass.sum(0))  # (b,)
        stats.append(result.stats)
        trajectories.append(result.trajectory)
        wall += result.stats.wall_time_s
    grid = model.vocab.grid
    codes = torch.cat(tokens).view(-1, grid, grid)  # (N, 14, 14)
    return ImageSamples(
        images=model.tokenizer.decode(codes),
        tokens=codes,
        labels=labels,
        row_passes=torch.cat(row_passes),
        batch_passes=sum(s.forward_passes for s in stats),
        wall_time_s=wall,
        stats=stats,
        trajectories=trajectories,
    )


def _generate_batch(model: ImageModel, labels: Tensor, settings: ImageSampling, init: DraftInit, generator, record: bool):
    cond, uncond = model.vocab.prompts(labels)  # (b, 1) each
    guided = settings.cfg_scale is not None
    return generate(
        model.transformer,
        cond,
        method="sjd-coupled" if settings.coupled else settings.method,
        max_new_tokens=model.vocab.image_tokens,
        window=settings.window,
        init=init,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        processors=(CodesOnly(model.vocab.num_codes),),
        generator=generator,
        cfg_scale=settings.cfg_scale if guided else None,
        negative_input_ids=uncond if guided else None,
        record=record,
    )
