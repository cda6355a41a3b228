"""``jacobix bench images``: AR vs SJD on the bundled class-conditional Fashion-MNIST model.

Every configuration generates the same labels (all 10 classes, ``per_class`` each) for every
seed, with the same sampling settings (temperature, top-k/top-p, CFG), so they target the same
distribution; only decoding differs. Reported per configuration: forward passes per image,
step compression (196 tokens / passes), the forward-pass and wall-time ratios against AR
measured in this run, FID-proxy (classifier features) against the real test set and class
accuracy (mean and std over seeds), and a permutation two-sample test of the pooled samples
against AR's (SJD is lossless, so p-values should look uniform, not small).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from jacobix.eval import quality
from jacobix.eval.datasets import load_fashion_mnist
from jacobix.images.model import ImageModel, load_image_model
from jacobix.images.sample import ImageSampling, generate_images


@dataclass(frozen=True, kw_only=True)
class ImageBenchConfig:
    """What :func:`bench_images` runs.

    Attributes:
        decoders: one spec per configuration, ``"ar"`` or ``"<method>:<window>:<init>"`` with
            method ``sjd`` or ``sjd-coupled`` (see :func:`parse_decoder`); the first must be "ar".
        per_class: images per class and seed.
        seeds: one generator seed per repetition.
        batch_size: images decoded together (also for AR, so wall times compare like for like).
        temperature, top_k, top_p, cfg_scale: sampling settings shared by every configuration.
        permutations: shuffles for the two-sample test against AR.
    """

    decoders: tuple[str, ...] = ("ar", "sjd:16:random", "sjd:16:row-above", "sjd-coupled:16:prior-above", "sjd-coupled:32:prior-above")
    per_class: int = 10
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    batch_size: int = 50
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float | None = 1.5
    permutations: int = 200

    def __post_init__(self) -> None:
        if not self.decoders or self.decoders[0] != "ar":
            raise ValueError("ImageBenchConfig.decoders must start with the AR baseline 'ar'")
        for spec in self.decoders:
            self.sampling(spec)  # fails early on a bad spec
        if self.per_class < 1 or not self.seeds or self.batch_size < 1 or self.permutations < 0:
            raise ValueError("ImageBenchConfig needs per_class >= 1, at least one seed, batch_size >= 1, permutations >= 0")
        if self.temperature <= 0:
            raise ValueError("the image benchmark samples: use temperature > 0")

    def sampling(self, spec: str) -> ImageSampling:
        """The :class:`ImageSampling` of one decoder spec with this benchmark's sampling settings."""
        return parse_decoder(spec, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, cfg_scale=self.cfg_scale)


def parse_decoder(spec: str, **sampling) -> ImageSampling:
    """``"ar"``, ``"jacobi:W:INIT"``, ``"sjd:W:INIT"`` or ``"sjd-coupled:W:INIT"`` to :class:`ImageSampling`.

    Example: ``parse_decoder("sjd-coupled:16:prior-above", temperature=1.0, cfg_scale=2.0)``.
    """
    if spec == "ar":
        return ImageSampling(method="ar", **sampling)
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] not in ("jacobi", "sjd", "sjd-coupled") or not parts[1].isdigit():
        raise ValueError(f"bad decoder spec {spec!r}; use 'ar' or '<jacobi|sjd|sjd-coupled>:<window>:<init>', e.g. 'sjd:16:random'")
    method, coupled = ("sjd", True) if parts[0] == "sjd-coupled" else (parts[0], False)
    return ImageSampling(method=method, window=int(parts[1]), init=parts[2], coupled=coupled, **sampling)


@dataclass(frozen=True)
class BenchRow:
    """Results of one decoding configuration over all seeds."""

    name: str
    images: int
    passes_per_image: float
    batch_passes: int
    wall_time_s: float
    fid: list[float]
    accuracy: list[float]
    step_compression: float = 0.0
    pass_ratio: float = 1.0
    wall_ratio: float = 1.0
    fid_vs_ar: float = 0.0
    p_value_vs_ar: float = 1.0


@dataclass(frozen=True)
class ImageBenchResult:
    """All rows, the real-data FID floor at the same sample size, and the settings."""

    rows: list[BenchRow]
    real_fid_floor: float
    config: ImageBenchConfig
    samples: dict[str, Tensor] = field(repr=False, default_factory=dict)

    def table(self) -> str:
        """A printable comparison table."""
        return format_table(self)


def bench_images(config: ImageBenchConfig = ImageBenchConfig(), *, model: ImageModel | None = None) -> ImageBenchResult:
    """Run every decoder of ``config`` over all classes and seeds; see the module docstring.

    Args:
        config: decoders, sample counts, seeds and sampling settings.
        model: defaults to the bundled model (:func:`~jacobix.images.model.load_image_model`).
    Returns:
        :class:`ImageBenchResult`; ``print(result.table())`` shows the comparison.
    """
    model = model or load_image_model()
    labels = torch.arange(10).repeat_interleave(config.per_class)  # (10 * per_class,)
    real, _ = load_fashion_mnist("test")
    real_features = quality.features(real)
    rows, pooled = [], {}
    for spec in config.decoders:
        row, images = _run_decoder(model, labels, config.sampling(spec), config, real_features)
        rows.append(row)
        pooled[row.name] = images
    rows = _compare_to_ar(rows, pooled, config.permutations)
    floor = _real_floor(len(labels), real_features)
    return ImageBenchResult(rows=rows, real_fid_floor=floor, config=config, samples=pooled)


def _run_decoder(model, labels, settings, config, real_features) -> tuple[BenchRow, Tensor]:
    fids, accuracies, images, passes, batch_passes, wall = [], [], [], [], 0, 0.0
    for seed in config.seeds:
        generator = torch.Generator().manual_seed(seed)
        out = generate_images(model, labels, settings, generator=generator, batch_size=config.batch_size)
        fids.append(quality.frechet_distance(quality.features(out.images), real_features))
        accuracies.append(quality.class_accuracy(out.images, labels))
        images.append(out.images)
        passes.append(out.row_passes.double())
        batch_passes += out.batch_passes
        wall += out.wall_time_s
    per_image = float(torch.cat(passes).mean())
    row = BenchRow(name=settings.label(), images=len(labels) * len(config.seeds), passes_per_image=per_image,
                   batch_passes=batch_passes, wall_time_s=wall, fid=fids, accuracy=accuracies,
                   step_compression=model.vocab.image_tokens / per_image)
    return row, torch.cat(images)


def _compare_to_ar(rows: list[BenchRow], pooled: dict[str, Tensor], permutations: int) -> list[BenchRow]:
    base = rows[0]
    base_features = quality.features(pooled[base.name])
    out = []
    for row in rows:
        fid, p_value = (0.0, 1.0) if row is base else permutation_test(base_features, quality.features(pooled[row.name]), permutations)
        out.append(BenchRow(**{**row.__dict__, "pass_ratio": base.batch_passes / row.batch_passes,
                               "wall_ratio": base.wall_time_s / row.wall_time_s, "fid_vs_ar": fid, "p_value_vs_ar": p_value}))
    return out


def permutation_test(features_a: Tensor, features_b: Tensor, permutations: int, seed: int = 0) -> tuple[float, float]:
    """Frechet distance between two feature sets and its permutation p-value (pooled relabelling).

    Returns:
        (distance, p-value); p = (1 + #{shuffled >= observed}) / (1 + permutations).
    """
    observed = quality.frechet_distance(features_a, features_b)
    pooled, n = torch.cat([features_a, features_b]), len(features_a)
    generator = torch.Generator().manual_seed(seed)
    exceed = 0
    for _ in range(permutations):
        order = torch.randperm(len(pooled), generator=generator)
        exceed += quality.frechet_distance(pooled[order[:n]], pooled[order[n:]]) >= observed
    return observed, (1 + exceed) / (1 + permutations)


def _real_floor(n: int, real_features: Tensor) -> float:
    """FID-proxy of ``n`` real training images against the test set: the best a model can score at this n."""
    images, _ = load_fashion_mnist("train")
    picks = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]
    return quality.frechet_distance(quality.features(images[picks.numpy()]), real_features)


def format_table(result: ImageBenchResult) -> str:
    """Render :class:`ImageBenchResult` as aligned text."""
    c = result.config
    head = (f"Fashion-MNIST 14x14 tokens, {len(c.seeds)} seeds x 10 classes x {c.per_class} images, "
            f"temperature {c.temperature}, top_k {c.top_k}, top_p {c.top_p}, cfg {c.cfg_scale}, batch {c.batch_size}")
    columns = ("decoder", "passes/img", "compression", "pass ratio", "wall s", "wall ratio", "FID-proxy", "accuracy",
               "FID vs AR", "p vs AR")
    lines = [head, "  ".join(f"{x:>13}" for x in columns)]
    for r in result.rows:
        cells = (r.name, f"{r.passes_per_image:.1f}", f"{r.step_compression:.2f}x", f"{r.pass_ratio:.2f}x",
                 f"{r.wall_time_s:.1f}", f"{r.wall_ratio:.2f}x", _mean_std(r.fid, 2), _mean_std(r.accuracy, 3),
                 f"{r.fid_vs_ar:.2f}", f"{r.p_value_vs_ar:.2f}")
        lines.append("  ".join(f"{x:>13}" for x in cells))
    lines.append("FID-proxy = Frechet distance in the bundled classifier's features (not Inception FID), per seed "
                 f"vs the 10k test images; {10 * c.per_class} real training images score {result.real_fid_floor:.2f} "
                 "(the floor at this sample size)")
    lines.append("passes/img: passes while each image was unfinished; pass and wall ratios: AR batch passes and "
                 "seconds over this row's, same batches, same run; p vs AR: permutation test of pooled features")
    return "\n".join(lines)


def _mean_std(values: list[float], digits: int) -> str:
    array = np.asarray(values, dtype=np.float64)
    return f"{array.mean():.{digits}f}+-{array.std(ddof=1) if len(array) > 1 else 0.0:.{digits}f}"
