"""``jacobix bench tarflow``: sequential vs Jacobi vs GS-Jacobi (hand and automatic schedules).

All samplers start from the same latents and labels in one run; each is timed on the same
machine back to back. Reported per sampler: wall time and speed-up over KV-cached sequential
sampling, forward passes, max and mean absolute deviation from the sequential sample, and an
FID-proxy against real images (plus class accuracy for a class-conditional model).

The FID-proxy for Fashion-MNIST is :func:`jacobix.eval.quality.fid_proxy` (Frechet distance of the
bundled classifier's features; not Inception FID). Other data (e.g. 8x8 digits) use
:func:`pixel_fid`, a Frechet distance of raw pixels; any ``features`` function can be passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from jacobix import assets
from jacobix.eval.datasets import load_images
from jacobix.flows.calibration import AutoScheduleConfig, Calibration, calibrate
from jacobix.flows.checkpoint import load_tarflow
from jacobix.flows.sampling import BlockPlan, FlowGuidance, sample_tarflow, uniform_schedule
from jacobix.flows.tarflow import TarFlow
from jacobix.core.timing import clock

FidFunction = Callable[[Tensor, Tensor], float]


@dataclass(frozen=True, kw_only=True)
class TarFlowBenchConfig:
    """Settings of :func:`bench_tarflow`.

    Attributes:
        num_samples: samples per sampler.
        batch_size: samples per call; Jacobi pays off where a pass is overhead- or memory-bound
            (small batches on a CPU, any batch on a GPU), not where it is compute-bound.
        guidance: CFG scale for a class-conditional model (0 = off).
        tolerance: GS-Jacobi relative residual (hand and automatic schedules).
        calibration_samples: real images for the automatic schedule's metrics.
        reference_samples: real images for the FID-proxy.
        width_cost: the automatic schedule's pass cost model (see ``AutoScheduleConfig``).
        seed: latents, labels and calibration noise.
        threads: torch threads while timing.
    """

    num_samples: int = 128
    batch_size: int = 4
    guidance: float = 1.0
    tolerance: float = 1e-4
    calibration_samples: int = 256
    reference_samples: int = 2000
    width_cost: float = 0.03
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("num_samples", "calibration_samples", "reference_samples"):
            if getattr(self, name) < 2:
                raise ValueError(f"TarFlowBenchConfig.{name} must be >= 2 (a Frechet distance needs two), got {getattr(self, name)}")
        if not 1 <= self.batch_size <= self.num_samples:
            raise ValueError(f"TarFlowBenchConfig.batch_size must be in [1, num_samples], got {self.batch_size}")
        if self.threads < 1:
            raise ValueError(f"TarFlowBenchConfig.threads must be >= 1, got {self.threads}")
        if self.guidance < 0 or self.tolerance < 0:
            raise ValueError("TarFlowBenchConfig: guidance and tolerance must be >= 0")


@dataclass(frozen=True)
class SamplerResult:
    """Numbers for one sampler."""

    name: str
    seconds: float
    speedup: float  # sequential seconds / these seconds
    forward_passes: int
    max_deviation: float  # max |x - x_sequential| over all pixels (images in [-1, 1])
    mean_deviation: float
    fid_proxy: float
    class_accuracy: float | None


@dataclass
class TarFlowBenchResult:
    """All samplers of one run, plus the automatic schedule they used."""

    rows: list[SamplerResult]
    calibration: Calibration
    hand_schedule: tuple[BlockPlan, ...]
    batch_size: int = 1
    device: str = field(default="cpu")

    def table(self) -> str:
        """A printable table."""
        head = f"{'sampler':<22}{'seconds':>9}{'speed-up':>9}{'passes':>8}{'max dev':>10}{'mean dev':>10}{'FID-proxy':>11}{'class acc':>10}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            acc = "-" if r.class_accuracy is None else f"{r.class_accuracy:.3f}"
            lines.append(f"{r.name:<22}{r.seconds:>9.2f}{r.speedup:>8.2f}x{r.forward_passes:>8d}"
                         f"{r.max_deviation:>10.2e}{r.mean_deviation:>10.2e}{r.fid_proxy:>11.3f}{acc:>10}")
        lines.append(f"batch size {self.batch_size}; passes = forward passes summed over blocks and batches")
        lines.append("auto schedule (block order): " + "; ".join(_describe(p) for p in self.calibration.plans))
        lines.append("CRM shares: " + ", ".join(f"{m.crm_share:.2f}" for m in self.calibration.metrics))
        return "\n".join(lines)


def _describe(plan: BlockPlan) -> str:
    if plan.mode == "gs":
        return f"gs S={plan.segments} cap={plan.max_sweeps or 'W'} init={plan.init}"
    return plan.mode


def hand_schedule(num_blocks: int, num_patches: int, tolerance: float) -> tuple[BlockPlan, ...]:
    """A GS-Jacobi schedule of the paper's kind: the first block sampled (the last one) is split into
    about sqrt(T-1) segments, every other block is one whole-block segment capped at 10 sweeps."""
    tough = BlockPlan(mode="gs", segments=max(1, round((num_patches - 1) ** 0.5)), tolerance=tolerance)
    easy = BlockPlan(mode="gs", segments=1, max_sweeps=10, tolerance=tolerance)
    return tuple(tough if i == num_blocks - 1 else easy for i in range(num_blocks))


def pixel_fid(samples: Tensor, reference: Tensor) -> float:
    """Fallback FID-proxy: Frechet distance between Gaussians fitted to raw pixels (images in [-1, 1])."""
    from jacobix.eval.quality import frechet_distance

    return frechet_distance(samples.flatten(1).double(), reference.flatten(1).double())


def fashion_fid(samples: Tensor, reference: Tensor) -> float:
    """:func:`jacobix.eval.quality.fid_proxy` for images in [-1, 1]."""
    from jacobix.eval.quality import fid_proxy

    return fid_proxy(_unit(samples), _unit(reference))


def _unit(images: Tensor) -> Tensor:
    return ((images.clamp(-1, 1) + 1) / 2).float()


def bench_tarflow(
    model: TarFlow | None = None,
    *,
    dataset: str = "fashion",
    config: TarFlowBenchConfig = TarFlowBenchConfig(),
    fid: FidFunction | None = None,
) -> TarFlowBenchResult:
    """Run the TarFlow benchmark.

    Args:
        model: the flow; None loads the bundled Fashion-MNIST checkpoint.
        dataset: ``fashion`` or ``digits``: real images for calibration and the FID-proxy.
        config: sizes, guidance, tolerance, seed.
        fid: ``fid(samples, reference)`` on images in [-1, 1]; defaults to :func:`fashion_fid` for
            Fashion-MNIST and :func:`pixel_fid` otherwise.
    Returns:
        per-sampler numbers and the schedules used; ``.table()`` prints them.
    """
    model = model if model is not None else load_tarflow(assets.get("tarflow-fashion", kind="tarflow").path)[0]
    fid = fid or (fashion_fid if dataset == "fashion" else pixel_fid)
    torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    train_images, train_labels = load_images(dataset, "train")
    reference = load_images(dataset, "test")[0] if dataset == "fashion" else train_images
    reference = reference[torch.randperm(len(reference), generator=generator)[: config.reference_samples]]
    conditional = model.config.num_classes > 0
    calibration = calibrate(model, train_images, train_labels, generator=generator, samples=config.calibration_samples,
                            config=AutoScheduleConfig(tolerance=config.tolerance, width_cost=config.width_cost))
    noise = torch.randn(config.num_samples, model.config.num_patches, model.config.patch_dim, generator=generator)
    labels = torch.randint(model.config.num_classes, (config.num_samples,), generator=generator) if conditional else None
    guidance = FlowGuidance(scale=config.guidance) if conditional and config.guidance > 0 else None
    hand = hand_schedule(model.config.num_blocks, model.config.num_patches, config.tolerance)
    schedules = {
        "sequential (KV cache)": uniform_schedule(model.config.num_blocks, BlockPlan(mode="sequential")),
        "jacobi (exact)": uniform_schedule(model.config.num_blocks, BlockPlan(mode="jacobi")),
        "gs-jacobi hand": hand,
        "gs-jacobi auto": calibration.plans,
    }
    timed = _timed_samples(model, noise, labels, schedules, guidance, config.batch_size)
    baseline, base_seconds = timed["sequential (KV cache)"][0], timed["sequential (KV cache)"][2]
    rows = []
    for name, (images, passes, seconds) in timed.items():
        deviation = (images - baseline).abs()
        accuracy = _class_accuracy(images, labels) if conditional and dataset == "fashion" else None
        rows.append(SamplerResult(name=name, seconds=seconds, speedup=base_seconds / seconds, forward_passes=passes,
                                  max_deviation=float(deviation.max()), mean_deviation=float(deviation.mean()),
                                  fid_proxy=fid(images, reference), class_accuracy=accuracy))
    return TarFlowBenchResult(rows=rows, calibration=calibration, hand_schedule=hand, batch_size=config.batch_size)


def _timed_samples(model: TarFlow, noise: Tensor, labels: Tensor | None, schedules: dict, guidance, batch_size: int) -> dict:
    """Sample every schedule batch by batch, round-robin, so that a machine shared with other jobs
    slows all samplers alike. Returns ``{name: (images (N, C, H, W), forward passes, seconds)}``;
    seconds include the denoising step; one untimed warm-up batch runs first."""
    for schedule in schedules.values():
        sample_tarflow(model, noise[:batch_size], None if labels is None else labels[:batch_size], schedule=schedule, guidance=guidance)
    images = {name: [] for name in schedules}
    passes, seconds = dict.fromkeys(schedules, 0), dict.fromkeys(schedules, 0.0)
    for start in range(0, len(noise), batch_size):
        chunk = slice(start, start + batch_size)
        for name, schedule in schedules.items():
            begin = clock(noise.device)
            result = sample_tarflow(model, noise[chunk], None if labels is None else labels[chunk], schedule=schedule, guidance=guidance)
            seconds[name] += clock(noise.device) - begin
            images[name].append(result.images)
            passes[name] += result.forward_passes
    return {name: (torch.cat(images[name]), passes[name], seconds[name]) for name in schedules}


def _class_accuracy(images: Tensor, labels: Tensor) -> float:
    from jacobix.eval.quality import class_accuracy

    return class_accuracy(_unit(images), labels)


__all__ = ["SamplerResult", "TarFlowBenchConfig", "TarFlowBenchResult", "bench_tarflow", "fashion_fid", "hand_schedule", "pixel_fid"]
