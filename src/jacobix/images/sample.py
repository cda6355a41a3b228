"""Class-conditional image generation with the bundled model on jacobix's engine."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from jacobix.tokens.proposers.basic import DraftInit
from jacobix.core.engine import SweepRecord
from jacobix.core.sampling import SamplingConfig
from jacobix.tokens.decoding import Decoding, Guidance
from jacobix.tokens.generate import generate
from jacobix.tokens.result import DecodeStats
from jacobix.images.proposers import IMAGE_INITS, resolve_image_init
from jacobix.images.model import CodesOnly, ImageModel, as_class_ids
from jacobix.images.sjd2 import SJD2Config, SJD2Proposer, sjd2_proposer


def _sjd() -> Decoding:
    return Decoding(method="sjd")


def _unit_temperature() -> SamplingConfig:
    return SamplingConfig(temperature=1.0)


@dataclass(frozen=True, kw_only=True)
class ImageSampling:
    """How to decode an image grid: a :class:`~jacobix.tokens.decoding.Decoding`, a
    :class:`~jacobix.core.sampling.SamplingConfig` and the image's own options.

    Attributes:
        decoding: method "ar" (sequential reference), "jacobi" (greedy), "sjd" (sampling, lossless),
            "sjd-coupled" (SJD redrafting with one noise per position; lossless, converges much
            faster) or "sjd2" (Jacobi-denoising, :mod:`jacobix.images.sjd2`; needs a model
            fine-tuned for it, ``load_image_model("fmnist-ar-sjd2")``); window; draft rule
            ("random", "repeat", "row-above", "codes-random", "prior", "prior-above" or a DraftInit;
            "row-above" takes the grid's row length).
        sampling: the target distribution (default temperature 1; greedy methods need 0).
        cfg_scale: classifier-free guidance scale against the null-class prompt; None disables it.
        sjd2: levels, LOSSY paper variant and coupling of method "sjd2" (:class:`SJD2Config`).
    """

    decoding: Decoding = field(default_factory=_sjd)
    sampling: SamplingConfig = field(default_factory=_unit_temperature)
    cfg_scale: float | None = 1.5
    sjd2: SJD2Config = SJD2Config()

    def __post_init__(self) -> None:
        if not isinstance(self.decoding, Decoding) or not isinstance(self.sampling, SamplingConfig):
            raise ValueError("ImageSampling takes decoding=Decoding(...) and sampling=SamplingConfig(...)")
        if self.cfg_scale is not None and (isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float))
                                           or not math.isfinite(self.cfg_scale) or self.cfg_scale < 0):
            raise ValueError(f"ImageSampling.cfg_scale must be a finite number >= 0 or None, got {self.cfg_scale!r}")
        if not isinstance(self.sjd2, SJD2Config):
            raise ValueError(f"ImageSampling.sjd2 must be an SJD2Config, got {self.sjd2!r}")
        if self.decoding.method != "sjd2" and self.sjd2 != SJD2Config():
            raise ValueError("ImageSampling.sjd2: levels and lossy (and coupled) apply to Decoding(method='sjd2') only")
        self.decoding.check(self.sampling)

    @property
    def method(self) -> str:
        return self.decoding.method

    @property
    def lossless(self) -> bool:
        """False for the LOSSY SJD2 ablation or a LOSSY early exit."""
        return self.decoding.lossless and not (self.method == "sjd2" and self.sjd2.lossy)

    def label(self) -> str:
        if self.method == "ar":
            return "ar"
        init = self.decoding.init if isinstance(self.decoding.init, str) else type(self.decoding.init).__name__
        window = self.decoding.window
        if self.method == "sjd2":
            mode = "lossy" if self.sjd2.lossy else "lossless"
            return f"sjd2{'-coupled' if self.sjd2.coupled else ''} w{window} K{self.sjd2.levels} {init} {mode}"
        tree = self.decoding.tree
        name = "pac" if self.method == "sjd-pac" and tree is not None else self.method  # continuation + tree: SJD-PAC
        shape = "" if tree is None else f" {tree.label()}"
        return f"{name} {'auto' if window == 'auto' else f'w{window}'}{shape} {init}"


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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(record, bool):
        raise ValueError(f"record must be True or False, got {record!r}")
    if not isinstance(settings, ImageSampling):
        raise ValueError(f"settings must be an ImageSampling, got {type(settings).__name__}")
    if proposer is not None and not isinstance(proposer, SJD2Proposer):
        raise ValueError(f"proposer must be an SJD2Proposer (method 'sjd2'), got {type(proposer).__name__}")
    labels = as_class_ids(labels)
    model.vocab.class_tokens(labels)  # validates the labels
    init = resolve_image_init(settings.decoding.init, model)
    if settings.method == "sjd2" and proposer is None:
        proposer = sjd2_proposer(model.noise, model.transformer.embed, settings.sjd2, init=init)
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
    decoding = replace(settings.decoding, init=init, row_length=model.vocab.grid,
                       proposer=proposer if settings.method == "sjd2" else settings.decoding.proposer)
    guidance = None if settings.cfg_scale is None else Guidance(scale=settings.cfg_scale, negative_input_ids=uncond)
    return generate(model.transformer, cond, decoding, settings.sampling, max_new_tokens=model.vocab.image_tokens,
                    guidance=guidance, processors=(CodesOnly(model.vocab.num_codes),), generator=generator, record=record)
