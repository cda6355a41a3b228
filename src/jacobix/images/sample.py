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
from jacobix.images.sjd2 import SJD2Config, SJD2Proposer, sjd2_proposer


@dataclass(frozen=True, kw_only=True)
class ImageSampling:
    """How to decode an image grid.

    Attributes:
        method: "ar" (sequential reference), "jacobi" (greedy), "sjd" (sampling, lossless) or
            "sjd2" (Jacobi-denoising, :mod:`jacobix.images.sjd2`; needs a model fine-tuned for it,
            ``load_image_model("fmnist-ar-sjd2")``).
        window: tokens per pass for jacobi/sjd/sjd2 (drafts + 1).
        init: draft rule: "random", "repeat", "row-above", "codes-random", "prior", "prior-above",
            or any :class:`~jacobix.tokens.proposers.basic.DraftInit`.
        temperature: 0 for greedy, else sampling temperature (SJD and sampling AR need > 0).
        top_k, top_p: filters of the target distribution.
        cfg_scale: classifier-free guidance scale against the null-class prompt; None disables it.
        coupled: SJD (or SJD2) re-drafts each position with the same noise every sweep
            (:mod:`jacobix.tokens.proposers.coupled`); still lossless, converges much faster.
        levels: sjd2: noise levels a window slot passes through before it is clean (0: SJD).
        lossy: sjd2: LOSSY paper variant, also verifies drafts whose context is still noisy.
    """

    method: Literal["ar", "jacobi", "sjd", "sjd2"] = "sjd"
    window: int = 16
    init: str | DraftInit = "random"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float | None = 1.5
    coupled: bool = False
    levels: int = 5
    lossy: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("ar", "jacobi", "sjd", "sjd2"):
            raise ValueError(f"ImageSampling.method must be 'ar', 'jacobi', 'sjd' or 'sjd2', got {self.method!r}")
        if self.window < 1:
            raise ValueError(f"ImageSampling.window must be >= 1, got {self.window}")
        if self.cfg_scale is not None and self.cfg_scale < 0:
            raise ValueError(f"ImageSampling.cfg_scale must be >= 0 or None, got {self.cfg_scale}")
        if isinstance(self.init, str) and self.init not in IMAGE_INITS:
            raise ValueError(f"unknown image init {self.init!r}; use one of {', '.join(IMAGE_INITS)} or a DraftInit callable")
        if self.coupled and self.method not in ("sjd", "sjd2"):
            raise ValueError("ImageSampling.coupled applies to method='sjd' or 'sjd2' only")
        if self.method == "sjd2":
            SJD2Config(levels=self.levels, lossy=self.lossy)  # validates levels
        elif self.lossy or self.levels != ImageSampling.levels:
            raise ValueError("ImageSampling.levels and lossy apply to method='sjd2' only")

    @property
    def lossless(self) -> bool:
        """False only for the LOSSY SJD2 ablation."""
        return not (self.method == "sjd2" and self.lossy)

    def label(self) -> str:
        if self.method == "ar":
            return "ar"
        init = self.init if isinstance(self.init, str) else type(self.init).__name__
        if self.method == "sjd2":
            mode = "lossy" if self.lossy else "lossless"
            return f"sjd2{'-coupled' if self.coupled else ''} w{self.window} K{self.levels} {init} {mode}"
        method = "sjd-coupled" if self.coupled else self.method
        return f"{method} w{self.window} {init}"

    def sjd2(self) -> SJD2Config:
        """The :class:`~jacobix.images.sjd2.SJD2Config` of method 'sjd2'."""
        return SJD2Config(levels=self.levels, lossy=self.lossy, coupled=self.coupled)


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
    proposer: SJD2Proposer | None = None,
) -> ImageSamples:
    """Generate one image per label.

    Args:
        model: from :func:`~jacobix.images.model.load_image_model`.
        labels: (N,) class ids in [0, 10).
        settings: decoding method and sampling options.
        generator: explicit randomness (seed it for reproducible images).
        batch_size: images decoded together.
        record: keep per-sweep trajectories (for acceptance heat maps).
        proposer: for method 'sjd2', a proposer to use instead of a fresh one (e.g. one built with
            ``trace=True`` to read the slot levels afterwards).
    Returns:
        :class:`ImageSamples`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    model.vocab.class_tokens(labels)  # validates the labels
    init = resolve_image_init(settings.init, model)
    if settings.method == "sjd2" and proposer is None:
        proposer = sjd2_proposer(model.noise, model.transformer.embed, settings.sjd2(), init=init)
    tokens, row_passes, stats, trajectories, wall = [], [], [], [], 0.0
    for chunk in labels.split(batch_size):
        result = _generate_batch(model, chunk, settings, init, generator, record, proposer)
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


def _generate_batch(model: ImageModel, labels: Tensor, settings: ImageSampling, init: DraftInit, generator, record: bool,
                    proposer: SJD2Proposer | None = None):
    cond, uncond = model.vocab.prompts(labels)  # (b, 1) each
    guided = settings.cfg_scale is not None
    method = "sjd-coupled" if settings.coupled and settings.method == "sjd" else settings.method
    return generate(
        model.transformer,
        cond,
        method=method,
        proposer=proposer if settings.method == "sjd2" else None,
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
