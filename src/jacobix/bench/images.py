"""``jacobix bench images``: AR vs SJD vs SJD2 on the bundled class-conditional Fashion-MNIST models.

The main model is ``fmnist-ar-sjd2`` (``fmnist-ar`` fine-tuned for SJD2's next-clean-token
prediction); a decoder spec ending in ``@fmnist-ar`` runs on the original model instead (its AR
row shows that fine-tuning kept the quality). Every configuration generates the same labels (all 10 classes, ``per_class`` each) for every
seed, with the same sampling settings (temperature, top-k/top-p, CFG), so they target the same
distribution; only decoding differs. Reported per configuration: forward passes per image,
step compression (196 tokens / passes), the forward-pass and wall-time ratios against AR
measured in this run, FID-proxy (classifier features) against the real test set and class
accuracy (mean and std over seeds), and a permutation two-sample test of the pooled samples
against AR's (SJD is lossless, so p-values should look uniform, not small).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from jacobix.eval import quality
from jacobix.eval.datasets import load_fashion_mnist
from jacobix.images.model import ImageModel, load_image_model
from jacobix.core.sampling import SamplingConfig
from jacobix.core.tree import DraftTree
from jacobix.images.sample import ImageSampling, generate_images
from jacobix.images.sjd2 import SJD2Config
from jacobix.tokens.decoding import Decoding


DEFAULT_DECODERS = ("ar", "sjd:16:random", "sjd:auto:random", "sjd-coupled:16:prior-above", "sjd-coupled:auto:prior-above",
                    "sjd-coupled:64:prior-above",
                    "sjd2:32:5:prior-above:coupled", "sjd2:64:5:prior-above:coupled", "sjd2:96:10:prior-above:coupled",
                    "sjd2:64:5:prior-above:coupled:lossy", "ar@fmnist-ar")
GRID_WINDOWS, GRID_LEVELS = (32, 48, 64, 80, 96), (5, 10, 15, 20)


def grid_decoders(init: str = "prior-above") -> tuple[str, ...]:
    """The default decoders plus SJD2 lossless at every window of GRID_WINDOWS x level count of GRID_LEVELS."""
    grid = tuple(f"sjd2:{w}:{k}:{init}:coupled" for w in GRID_WINDOWS for k in GRID_LEVELS)
    return DEFAULT_DECODERS + tuple(spec for spec in grid if spec not in DEFAULT_DECODERS)


@dataclass(frozen=True, kw_only=True)
class ImageBenchConfig:
    """What :func:`bench_images` runs.

    Attributes:
        decoders: one spec per configuration, ``"ar"``, ``"<method>:<window>:<init>"`` with
            method ``sjd`` or ``sjd-coupled``, or ``"sjd2:<window>:<levels>:<init>[:coupled][:lossy]"``
            (see :func:`parse_decoder`), optionally followed by ``@<model>`` to run on another
            bundled model; the first must be "ar" (on ``model``).
        model: the bundled model (or checkpoint folder) the specs without ``@`` run on.
        per_class: images per class and seed.
        seeds: one generator seed per repetition.
        batch_size: images decoded together (also for AR, so wall times compare like for like).
        sampling, cfg_scale: the target distribution and guidance shared by every configuration.
        permutations: shuffles for the two-sample test against AR.
        bootstrap: resamples for each row's FID-proxy interval over its pooled images, and for the
            real-vs-real reference at the same size; 0 leaves them out (``--quality``: 200).
    """

    decoders: tuple[str, ...] = DEFAULT_DECODERS
    model: str = "fmnist-ar-sjd2"
    per_class: int = 4
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    batch_size: int = 50
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0))
    cfg_scale: float | None = 1.5
    permutations: int = 200
    bootstrap: int = 0

    def __post_init__(self) -> None:
        if not self.decoders or self.decoders[0] != "ar":
            raise ValueError("ImageBenchConfig.decoders must start with the AR baseline 'ar'")
        for spec in self.decoders:
            self.settings(spec)  # fails early on a bad spec
            self.model_of(spec)
        if self.per_class < 1 or not self.seeds or self.batch_size < 1 or self.permutations < 0 or self.bootstrap < 0:
            raise ValueError("ImageBenchConfig needs per_class >= 1, at least one seed, batch_size >= 1, permutations >= 0 "
                             "and bootstrap >= 0")
        if self.sampling.greedy:
            raise ValueError("the image benchmark samples: use a temperature > 0")

    def settings(self, spec: str) -> ImageSampling:
        """The :class:`ImageSampling` of one decoder spec with this benchmark's sampling settings."""
        return parse_decoder(spec.split("@")[0], self.sampling, cfg_scale=self.cfg_scale)

    def model_of(self, spec: str) -> str:
        """The model a spec runs on: the part after ``@``, else :attr:`model`."""
        name = spec.split("@", 1)[1] if "@" in spec else self.model
        if not name:
            raise ValueError(f"bad decoder spec {spec!r}: name a model after '@', e.g. 'ar@fmnist-ar'")
        return name


def parse_decoder(spec: str, sampling: SamplingConfig | None = None, *, cfg_scale: float | None = 1.5) -> ImageSampling:
    """``"ar"``, ``"jacobi:W:INIT"``, ``"sjd:W:INIT"``, ``"sjd-coupled:W:INIT"``, ``"sjd-pac:W:INIT"``
    (each optionally ``":K<branches>D<depth>"``: a draft tree) or ``"sjd2:W:LEVELS:INIT[:coupled][:lossy]"`` to :class:`ImageSampling` (default sampling: temperature 1).

    Example: ``parse_decoder("sjd2:64:10:prior-above:coupled", SamplingConfig(temperature=1.0), cfg_scale=2.0)``.
    """
    common = dict(sampling=sampling, cfg_scale=cfg_scale) if sampling is not None else dict(cfg_scale=cfg_scale)
    if spec == "ar":
        return ImageSampling(decoding=Decoding(method="ar"), **common)
    parts = spec.split(":")
    if parts[0] == "sjd2":
        flags = parts[4:]
        if len(parts) < 4 or not parts[1].isdigit() or not parts[2].isdigit() or set(flags) - {"coupled", "lossy"} \
                or len(set(flags)) != len(flags):
            raise ValueError(f"bad decoder spec {spec!r}; use 'sjd2:<window>:<levels>:<init>[:coupled][:lossy]', "
                             "e.g. 'sjd2:64:10:prior-above:coupled'")
        return ImageSampling(decoding=Decoding(method="sjd2", window=int(parts[1]), init=parts[3]),
                             sjd2=SJD2Config(levels=int(parts[2]), coupled="coupled" in flags, lossy="lossy" in flags),
                             **common)
    shape = re.fullmatch(r"K(\d+)D(\d+)", parts[3]) if len(parts) == 4 else None
    if len(parts) not in (3, 4) or parts[0] not in ("jacobi", "sjd", "sjd-coupled", "sjd-pac") \
            or not (parts[1].isdigit() or parts[1] == "auto") or (len(parts) == 4 and shape is None):
        raise ValueError(f"bad decoder spec {spec!r}; use 'ar' or '<jacobi|sjd|sjd-coupled|sjd-pac>:<window|auto>:<init>"
                         "[:K<branches>D<depth>]', e.g. 'sjd:16:random', 'sjd-coupled:auto:prior-above' or "
                         "'sjd-pac:64:prior-above:K4D3' (a draft tree of 4 branches, depth 3)")
    window = "auto" if parts[1] == "auto" else int(parts[1])
    tree = None if shape is None else DraftTree(branches=int(shape[1]), depth=int(shape[2]))
    return ImageSampling(decoding=Decoding(method=parts[0], window=window, init=parts[2], tree=tree), **common)


@dataclass(frozen=True)
class BenchRow:
    """Results of one decoding configuration over all seeds."""

    name: str
    model: str
    lossless: bool
    batch_size: int
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
    fid_pooled: float = 0.0
    fid_interval: tuple[float, float] | None = None
    seed_walls: tuple[float, ...] = ()


@dataclass(frozen=True)
class ImageBenchResult:
    """All rows, the real-data FID floor at the same sample size (with its bootstrap interval when
    the rows have one), and the settings."""

    rows: list[BenchRow]
    real_fid_floor: float
    config: ImageBenchConfig
    samples: dict[str, Tensor] = field(repr=False, default_factory=dict)
    real_interval: tuple[float, float] | None = None

    def table(self) -> str:
        """A printable comparison table."""
        return format_table(self)

    def records(self) -> list[dict]:
        """One JSON-ready object per row (``jacobix bench images --json``)."""
        ar = self.rows[0]
        return [{"setting": r.name, "model": r.model, "passes_per_image": round(r.passes_per_image, 2),
                 "passes_vs_ar": round(ar.passes_per_image / r.passes_per_image, 3), "batch_passes_vs_ar": round(r.pass_ratio, 3),
                 "wall_vs_ar": round(r.wall_ratio, 3), "wall_s": round(r.wall_time_s, 2), "batch_size": r.batch_size,
                 "fid_proxy": round(float(np.mean(r.fid)), 3), "fid_proxy_std": round(float(np.std(r.fid, ddof=1)) if len(r.fid) > 1 else 0.0, 3),
                 "accuracy": round(float(np.mean(r.accuracy)), 4),
                 "accuracy_std": round(float(np.std(r.accuracy, ddof=1)) if len(r.accuracy) > 1 else 0.0, 4),
                 "fid_vs_ar": round(r.fid_vs_ar, 3), "p_value_vs_ar": round(r.p_value_vs_ar, 3), "lossless": r.lossless,
                 "images": r.images, "seeds": list(self.config.seeds), "real_fid_floor": round(self.real_fid_floor, 3),
                 **({"auto_vs_best_fixed": round(r.wall_ratio / self.best_fixed(r).wall_ratio, 3),
                     "best_fixed": self.best_fixed(r).name} if " auto " in f" {r.name} " else {}),
                 **(self.quality_record(r) if r.fid_interval is not None else {})}
                for r in self.rows]

    def quality_record(self, row: BenchRow) -> dict:
        """The ``--quality`` fields of a row: its pooled FID-proxy with the bootstrap interval, where it
        sits against AR's interval, the class accuracy and the real-vs-real reference at the same size."""
        ar_low, ar_high = self.rows[0].fid_interval
        outside = max(ar_low - row.fid_pooled, row.fid_pooled - ar_high, 0.0)
        return {"fid_proxy": round(row.fid_pooled, 3), "fid_low": round(row.fid_interval[0], 3),
                "fid_high": round(row.fid_interval[1], 3), "class_accuracy": round(float(np.mean(row.accuracy)), 4),
                "inside_ar_interval": outside == 0.0, "fid_outside_ar": round(outside, 3),
                "real_fid": round(self.real_fid_floor, 3), "real_fid_low": round(self.real_interval[0], 3),
                "real_fid_high": round(self.real_interval[1], 3)}

    def best_fixed(self, row: BenchRow) -> BenchRow:
        """The fastest fixed-width row of ``row``'s method, model and batch size, or AR, by wall
        (``window="auto"`` chooses the width, not the method)."""
        method = row.name.split()[0]
        fixed = [r for r in self.rows if r.model == row.model and r.batch_size == row.batch_size and r.lossless
                 and " auto " not in f" {r.name} " and r.name.split()[0] in (method, "ar")]
        return max(fixed, key=lambda r: r.wall_ratio)


def bench_images(config: ImageBenchConfig = ImageBenchConfig(), *, model: ImageModel | None = None) -> ImageBenchResult:
    """Run every decoder of ``config`` over all classes and seeds; see the module docstring.

    Args:
        config: decoders, sample counts, seeds and sampling settings.
        model: the model of specs without ``@`` (default: ``load_image_model(config.model)``).
    Returns:
        :class:`ImageBenchResult`; ``print(result.table())`` shows the comparison.
    """
    main = model or load_image_model(config.model)
    labels = torch.arange(10).repeat_interleave(config.per_class)  # (10 * per_class,)
    real, _ = load_fashion_mnist("test")
    real_features = quality.features(real)
    rows, pooled = [], {}
    generate_images(main, labels[: config.batch_size], config.settings("ar"), generator=torch.Generator().manual_seed(-1),
                    batch_size=config.batch_size)  # warm-up, untimed: the first row should not pay for first calls
    runs = []
    for spec in config.decoders:
        name = config.model_of(spec)
        on = main if "@" not in spec or name == config.model else _load(name)
        runs.append(_DecoderRun(on, config.settings(spec), "@" in spec and name != config.model))
        runs[-1].warm(labels, config.batch_size)
    for seed in config.seeds:  # interleaved: every decoder runs on a seed before the next seed, so drift spares no row
        for run in runs:
            run.add(generate_images(run.model, labels, run.settings, generator=torch.Generator().manual_seed(seed),
                                    batch_size=config.batch_size), labels, real_features)
    for run in runs:
        row, images = run.row(config.batch_size, len(labels) * len(config.seeds))
        rows.append(row)
        pooled[row.name] = images
    rows = _compare_to_ar(rows, pooled, config.permutations)
    n = len(labels) * (len(config.seeds) if config.bootstrap else 1)  # --quality pools the seeds
    floor, floor_features = _real_floor(n, real_features)
    real_interval = None
    if config.bootstrap:
        rows = [_with_interval(row, pooled[row.name], real_features, config.bootstrap) for row in rows]
        real_interval = bootstrap_fid(floor_features, real_features, config.bootstrap)
    return ImageBenchResult(rows=rows, real_fid_floor=floor, config=config, samples=pooled, real_interval=real_interval)


def bootstrap_fid(features: Tensor, real_features: Tensor, resamples: int, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of the FID-proxy of ``features`` (N, F) against the real set.

    ``resamples`` draws of N rows with replacement give the spread; a draw repeats rows, which
    lowers the sample's covariance rank and raises its distance (by about 1.3 at N = 1,000 real
    images), so the draws are centred on the estimate before the 2.5% and 97.5% points are read
    (bias-corrected percentile interval)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(features)
    estimate = quality.frechet_distance(features, real_features)
    values = np.array([quality.frechet_distance(features[torch.randint(0, n, (n,), generator=generator)], real_features)
                       for _ in range(resamples)])
    values += estimate - values.mean()
    return max(0.0, float(np.percentile(values, 2.5))), float(np.percentile(values, 97.5))


def _with_interval(row: BenchRow, images: Tensor, real_features: Tensor, resamples: int) -> BenchRow:
    features = quality.features(images)
    return BenchRow(**{**row.__dict__, "fid_pooled": quality.frechet_distance(features, real_features),
                       "fid_interval": bootstrap_fid(features, real_features, resamples)})


@lru_cache(maxsize=4)
def _load(name: str) -> ImageModel:
    return load_image_model(name)


class _DecoderRun:
    """One decoder's samples and counts, gathered seed by seed."""

    def __init__(self, model: ImageModel, settings: ImageSampling, other_model: bool) -> None:
        self.model, self.settings, self.other_model = model, settings, other_model
        self.fids, self.accuracies, self.images, self.passes = [], [], [], []
        self.batch_passes, self.wall, self.walls = 0, 0.0, []

    def warm(self, labels: Tensor, batch_size: int) -> None:
        """window="auto" measures its pass costs once per batch size: outside the timings."""
        if self.settings.decoding.adaptive:
            for size in sorted({len(chunk) for chunk in labels.split(batch_size)}):
                generate_images(self.model, labels[:size], self.settings, generator=torch.Generator().manual_seed(-1),
                                batch_size=size)

    def add(self, out, labels: Tensor, real_features: Tensor) -> None:
        self.fids.append(quality.frechet_distance(quality.features(out.images), real_features))
        self.accuracies.append(quality.class_accuracy(out.images, labels))
        self.images.append(out.images)
        self.passes.append(out.row_passes.double())
        self.batch_passes += out.batch_passes
        self.wall += out.wall_time_s
        self.walls.append(out.wall_time_s)

    def row(self, batch_size: int, images: int) -> tuple[BenchRow, Tensor]:
        per_image = float(torch.cat(self.passes).mean())
        name = self.settings.label() + (f" @{self.model.name}" if self.other_model else "")
        row = BenchRow(name=name, model=self.model.name, lossless=self.settings.lossless, batch_size=batch_size,
                       images=images, passes_per_image=per_image, batch_passes=self.batch_passes, wall_time_s=self.wall,
                       fid=self.fids, accuracy=self.accuracies, seed_walls=tuple(self.walls),
                       step_compression=self.model.vocab.image_tokens / per_image)
        return row, torch.cat(self.images)


def _wall_ratio(base: BenchRow, row: BenchRow) -> float:
    """AR's wall time over the row's: the median of the per-seed ratios where both ran the same seeds
    (each seed runs every row back to back, so the machine's drift between seeds cancels), else the totals'."""
    if len(base.seed_walls) == len(row.seed_walls) > 0 and base.model == row.model:
        return float(np.median([b / r for b, r in zip(base.seed_walls, row.seed_walls)]))
    return base.wall_time_s / row.wall_time_s


def _compare_to_ar(rows: list[BenchRow], pooled: dict[str, Tensor], permutations: int) -> list[BenchRow]:
    base = rows[0]
    base_features = quality.features(pooled[base.name])
    out = []
    for row in rows:
        fid, p_value = (0.0, 1.0) if row is base else permutation_test(base_features, quality.features(pooled[row.name]), permutations)
        out.append(BenchRow(**{**row.__dict__, "pass_ratio": base.batch_passes / row.batch_passes,
                               "wall_ratio": _wall_ratio(base, row), "fid_vs_ar": fid, "p_value_vs_ar": p_value}))
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


def _real_floor(n: int, real_features: Tensor) -> tuple[float, Tensor]:
    """FID-proxy of ``n`` real training images against the test set (the best a model can score at
    this n) and their features."""
    images, _ = load_fashion_mnist("train")
    picks = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]
    features = quality.features(images[picks.numpy()])
    return quality.frechet_distance(features, real_features), features


def format_table(result: ImageBenchResult) -> str:
    """Render :class:`ImageBenchResult` as aligned text."""
    c = result.config
    head = (f"Fashion-MNIST 14x14 tokens, model {c.model}, {len(c.seeds)} seeds x 10 classes x {c.per_class} images, "
            f"temperature {c.sampling.temperature}, top_k {c.sampling.top_k}, top_p {c.sampling.top_p}, cfg {c.cfg_scale}, batch {c.batch_size}")
    columns = ("decoder", "lossless", "passes/img", "compression", "pass ratio", "wall s", "wall ratio", "FID-proxy", "accuracy",
               "FID vs AR", "p vs AR")
    width = max(13, *(len(r.name) for r in result.rows))
    lines = [head, f"{columns[0]:>{width}}  " + "  ".join(f"{x:>13}" for x in columns[1:])]
    rated = result.rows[0].fid_interval is not None
    if rated:
        lines[1] += f"  {'FID pooled [95% bootstrap]':>28}  {'vs AR interval':>15}"
    for r in result.rows:
        cells = (r.name, "yes" if r.lossless else "NO (lossy)", f"{r.passes_per_image:.1f}", f"{r.step_compression:.2f}x", f"{r.pass_ratio:.2f}x",
                 f"{r.wall_time_s:.1f}", f"{r.wall_ratio:.2f}x", _mean_std(r.fid, 2), _mean_std(r.accuracy, 3),
                 f"{r.fid_vs_ar:.2f}", f"{r.p_value_vs_ar:.2f}")
        line = f"{cells[0]:>{width}}  " + "  ".join(f"{x:>13}" for x in cells[1:])
        if rated:
            record = result.quality_record(r)
            where = "inside" if record["inside_ar_interval"] else f"{record['fid_outside_ar']:.2f} outside"
            line += f"  {f'{r.fid_pooled:.2f} [{r.fid_interval[0]:.2f}, {r.fid_interval[1]:.2f}]':>28}  {where:>15}"
        lines.append(line)
    n = 10 * c.per_class * (len(c.seeds) if rated else 1)
    reference = (f"{n} real training images score {result.real_fid_floor:.2f} [{result.real_interval[0]:.2f}, "
                 f"{result.real_interval[1]:.2f}]" if rated else
                 f"{n} real training images score {result.real_fid_floor:.2f}")
    lines.append("FID-proxy = Frechet distance in the bundled classifier's features (not Inception FID), per seed "
                 f"vs the 10k test images; {reference} (the floor at this sample size)"
                 + ("; FID pooled: all seeds' images together, with a 95% bootstrap interval" if rated else ""))
    lines.append("passes/img: passes while each image was unfinished; pass ratio: AR batch passes over this row's; "
                 "wall ratio: AR seconds over this row's, the median over seeds (each seed runs every row back to back); "
                 "p vs AR: permutation test of pooled features; "
                 "AR is the first row (on the main model); '@model' rows run on another model")
    return "\n".join(lines)


def _mean_std(values: list[float], digits: int) -> str:
    array = np.asarray(values, dtype=np.float64)
    return f"{array.mean():.{digits}f}+-{array.std(ddof=1) if len(array) > 1 else 0.0:.{digits}f}"
