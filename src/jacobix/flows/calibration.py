"""Per-block GS-Jacobi settings computed from data: CRM, IGM and an automatic schedule.

The GS-Jacobi authors (arXiv 2505.12849) rank blocks by the Convergence Ranking Metric and pick
each block's initial guess by the Initial Guessing Metric, then set segments and sweep caps by
hand. :func:`auto_schedule` derives all three from the metrics and calibration solves on data
latents, and falls back to sequential inversion for a block whose Jacobi iteration does not
converge enough faster than sequential decoding to pay for its wider passes.
"""

from __future__ import annotations

import math
import json
from pathlib import Path
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from jacobix.flows.sampling import INITS, BlockPlan, invert_block
from jacobix.flows.tarflow import MetaBlock, TarFlow


@dataclass(frozen=True, kw_only=True)
class AutoScheduleConfig:
    """Knobs of :func:`auto_schedule`.

    Attributes:
        tolerance: GS-Jacobi relative residual at which a segment is committed.
        tough_share: a block whose CRM share is at least ``tough_share / num_blocks`` is tough: it
            is tried with 1, 2, 3, 4 and about sqrt(T-1) segments and the cheapest is kept; the
            other blocks are solved whole (one segment).
        width_cost: pass cost model ``1 + width_cost * (W - 1)`` for a pass over W positions,
            relative to a sequential pass. Small where a pass is overhead-bound (small batches,
            GPUs), larger where it is compute-bound (large batches on a CPU). 0.03 fits batch 4
            on one CPU thread for the bundled Fashion-MNIST model.
        cap_margin: sweep cap = ``ceil(cap_margin * max sweeps seen per segment)`` on calibration data,
            never above the segment width (where Jacobi is exact).
        fallback_ratio: a block whose cheapest GS-Jacobi plan costs at least ``fallback_ratio``
            times sequential inversion on calibration data is inverted sequentially.
    """

    tolerance: float = 1e-4
    tough_share: float = 1.5
    width_cost: float = 0.03
    cap_margin: float = 1.5
    fallback_ratio: float = 0.9

    def __post_init__(self) -> None:
        if self.tolerance < 0 or self.tough_share <= 0 or self.width_cost < 0 or self.cap_margin < 1 or not 0 < self.fallback_ratio <= 1:
            raise ValueError(
                "AutoScheduleConfig: need tolerance >= 0, tough_share > 0, width_cost >= 0, cap_margin >= 1 and "
                f"0 < fallback_ratio <= 1, got {self}"
            )


@dataclass(frozen=True)
class BlockMetrics:
    """Metrics of one block, measured on data.

    Attributes:
        crm: the block's Convergence Ranking Metric (unnormalised).
        crm_share: crm / sum over blocks.
        igm: Initial Guessing Metric per candidate init (``INITS`` order).
        init: the candidate with the smallest IGM.
    """

    crm: float
    crm_share: float
    igm: tuple[float, ...]
    init: str


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`auto_schedule`: the plans (block order) and what they were derived from."""

    plans: tuple[BlockPlan, ...]
    metrics: tuple[BlockMetrics, ...]
    sweeps_per_segment: tuple[float, ...]  # mean on calibration data, with the block split as planned
    fallback: tuple[bool, ...]


def _block_io(model: TarFlow, images: Tensor, labels: Tensor | None) -> list[tuple[Tensor, Tensor]]:
    """(input, output) patches (B, T, F) of every block on data, in each block's own order."""
    x = model.patchify(images)
    pairs = []
    for block in model.blocks:
        z, _ = block(x, labels)
        pairs.append((block.permute(x), block.permute(z)))
        x = z
    return pairs


def _shifted_affine(block: MetaBlock, x: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """(a, b) (B, T, F) aligned with the positions they transform (position 0 gets zeros)."""
    a, b = block.affine(x, labels)
    return F.pad(a[:, :-1], (0, 0, 1, 0)), F.pad(b[:, :-1], (0, 0, 1, 0))


def spectral_norm(matrix: Tensor) -> float:
    """Largest singular value of a 2-D tensor (``torch.linalg.norm(matrix, ord=2)``), in float64."""
    return float(torch.linalg.matrix_norm(matrix.double(), ord=2))


@torch.no_grad()
def crm(block: MetaBlock, x: Tensor, labels: Tensor | None) -> float:
    """Convergence Ranking Metric (arXiv 2505.12849): ``||mean_B(exp(-a) * x)||_2 * ||W_a||_2 + ||W_b||_2``.

    Every norm is spectral, as in the authors' code (``torch.linalg.norm(..., ord=2)``): the batch
    mean is a (T, F) matrix, and ``W_a``, ``W_b`` are the a- and b-halves (F, C) of the block's
    ``proj_out`` weight.

    Args:
        block: the meta-block.
        x: (B, T, F) the block's input on data, in its own order.
        labels: (B,) or None.
    Returns:
        the metric; larger means slower Jacobi convergence.
    """
    a, _ = _shifted_affine(block, x, labels)
    w_a, w_b = block.proj_out.weight.chunk(2, dim=0)  # (F, C) each
    return spectral_norm((torch.exp(-a) * x).mean(0)) * spectral_norm(w_a) + spectral_norm(w_b)


@torch.no_grad()
def igm(block: MetaBlock, x: Tensor, z: Tensor, labels: Tensor | None, init: str) -> float:
    """Initial Guessing Metric: ``||mean_B(x1 - x)||_2`` after one Jacobi step from a candidate start.

    The norm is spectral, of the (T, F) batch mean, as in the authors' code.

    Args:
        block: the meta-block.
        x: (B, T, F) its input on data (the solution of the inverse), own order.
        z: (B, T, F) its output on data (what the inverse starts from), own order.
        labels: (B,) or None.
        init: ``z`` (start from z) or ``zeros`` (zeros after the first token).
    Returns:
        the metric; smaller is a better initial guess.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    start = z.clone() if init == "z" else F.pad(z[:, :1], (0, 0, 0, z.shape[1] - 1))  # (B, T, F)
    a, b = _shifted_affine(block, start, labels)
    step = z * torch.exp(a) + b  # (B, T, F); position 0 gives z_0 exactly
    return spectral_norm((step - x).mean(0))  # (T, F) mean


@torch.no_grad()
def block_metrics(model: TarFlow, images: Tensor, labels: Tensor | None) -> tuple[BlockMetrics, ...]:
    """CRM share and IGM of every block on data ``images`` (B, C, H, W) with ``labels``."""
    pairs = _block_io(model, images, labels)
    crms = [crm(block, x, labels) for block, (x, _) in zip(model.blocks, pairs)]
    total = sum(crms)
    out = []
    for block, (x, z), value in zip(model.blocks, pairs, crms):
        scores = tuple(igm(block, x, z, labels, init) for init in INITS)
        out.append(BlockMetrics(crm=value, crm_share=value / total, igm=scores, init=INITS[scores.index(min(scores))]))
    return tuple(out)


def segment_sweeps(committed: Tensor) -> Tensor:
    """Sweeps each segment took, from a solve's ``committed`` (P, B) counts; returns a flat tensor."""
    passes = torch.arange(1, committed.shape[0] + 1)
    counts = []
    for row in committed.T:
        ends = passes[row > 0]  # (S,)
        counts.append(torch.diff(ends, prepend=ends.new_zeros(1)))
    return torch.cat(counts).float() if counts else torch.zeros(0)


@torch.no_grad()
def auto_schedule(model: TarFlow, images: Tensor, labels: Tensor | None = None, config: AutoScheduleConfig = AutoScheduleConfig()) -> Calibration:
    """Choose segments, sweep caps and initial guesses per block from CRM, IGM and data.

    Per block: the initial guess is the IGM winner; blocks with a large CRM share are tried with
    a few segment counts on data latents and the cheapest under the pass cost model is kept
    (others get one segment); the sweep cap comes from the sweeps those trials needed; a block
    whose best plan is not clearly cheaper than sequential inversion falls back to it.

    Deterministic: no randomness, only ``images`` (noised by the caller as in training) and
    ``labels``.

    Args:
        model: the flow.
        images: (B, C, H, W) calibration data in [-1, 1].
        labels: (B,) classes, or None.
        config: thresholds.
    Returns:
        plans (block order), the metrics and the calibration measurements.
    """
    metrics = block_metrics(model, images, labels)
    t = model.config.num_patches
    tough = config.tough_share / len(model.blocks)
    plans, sweeps, fallback = [], [], []
    x = model.patchify(images)
    for block, metric in zip(model.blocks, metrics):
        z, _ = block(x, labels)
        choices = sorted({1, 2, 3, 4, max(1, round(math.sqrt(t - 1)))}) if metric.crm_share >= tough else [1]
        trials = [_trial(block, z, labels, BlockPlan(mode="gs", segments=min(s, t - 1), tolerance=config.tolerance, init=metric.init), config)
                  for s in choices]
        cost, plan, per_segment = min(trials, key=lambda trial: trial[0])  # first (fewest segments) wins ties
        slow = cost >= config.fallback_ratio * (t - 1)
        plans.append(BlockPlan(mode="sequential") if slow else plan)
        sweeps.append(per_segment)
        fallback.append(slow)
        x = z
    return Calibration(plans=tuple(plans), metrics=metrics, sweeps_per_segment=tuple(sweeps), fallback=tuple(fallback))


@torch.no_grad()
def calibrate(
    model: TarFlow,
    images: Tensor,
    labels: Tensor | None,
    *,
    generator: torch.Generator,
    samples: int = 128,
    config: AutoScheduleConfig = AutoScheduleConfig(),
) -> Calibration:
    """:func:`auto_schedule` on ``samples`` images drawn from a data set and noised as in training.

    Args:
        model: the flow; its ``config.noise_std`` is the noise added.
        images: (N, C, H, W) data in [-1, 1], e.g. from :func:`jacobix.eval.datasets.load_images`.
        labels: (N,) classes, used only when the model is class-conditional; or None.
        generator: draws the subset (first) and the noise (second).
        samples: images to calibrate on (all of them when fewer).
        config: the schedule's thresholds and tolerance.
    Returns:
        the automatic schedule and what it was derived from.
    """
    if samples < 1:
        raise ValueError(f"calibrate: samples must be >= 1, got {samples}")
    pick = torch.randperm(len(images), generator=generator)[:samples]
    chosen = images[pick]  # (S, C, H, W)
    noised = chosen + model.config.noise_std * torch.randn(chosen.shape, generator=generator)
    conditional = model.config.num_classes > 0 and labels is not None
    return auto_schedule(model, noised, labels[pick] if conditional else None, config)


def _trial(block: MetaBlock, z: Tensor, labels: Tensor | None, plan: BlockPlan, config: AutoScheduleConfig) -> tuple[float, BlockPlan, float]:
    """Solve a block on data latents with ``plan`` (uncapped); returns modelled cost, the capped plan,
    and mean sweeps per segment. Cost = mean passes per row * (1 + width_cost * (W - 1)), in units
    of a sequential pass."""
    _, stats = invert_block(block, z, labels, plan)
    per_segment = segment_sweeps(stats.committed)
    width = plan.segment_width(z.shape[1])
    passes = float(stats.active.sum(0).float().mean())
    cost = passes * (1 + config.width_cost * (width - 1))
    cap = min(width, math.ceil(config.cap_margin * float(per_segment.max())))
    capped = BlockPlan(mode="gs", segments=plan.segments, max_sweeps=cap, tolerance=plan.tolerance, init=plan.init)
    return cost, capped, float(per_segment.mean())


SCHEDULE_FILE = "schedule.json"


def save_schedule(plans: tuple[BlockPlan, ...], directory: str | Path, *, source: str) -> Path:
    """Write per-block plans (block order) to ``directory/schedule.json``; ``source`` says how they were made."""
    path = Path(directory) / SCHEDULE_FILE
    path.write_text(json.dumps({"source": source, "plans": [asdict(plan) for plan in plans]}, indent=2))
    return path


def load_schedule(directory: str | Path, num_blocks: int) -> tuple[BlockPlan, ...] | None:
    """Plans saved by :func:`save_schedule`, or None when the folder has none."""
    path = Path(directory) / SCHEDULE_FILE
    if not path.exists():
        return None
    from jacobix.core.checkpoints import build_config, read_json

    data = read_json(path)
    if not isinstance(data.get("plans"), list):
        raise ValueError(f"{path}: key 'plans' is missing or not a list")
    plans = tuple(build_config(BlockPlan, plan, source=path, key=f"plans[{i}]") for i, plan in enumerate(data["plans"]))
    if len(plans) != num_blocks:
        raise ValueError(f"{path} has {len(plans)} block plans but the model has {num_blocks} blocks; recalibrate it")
    return plans


__all__ = [
    "AutoScheduleConfig", "BlockMetrics", "Calibration", "auto_schedule", "block_metrics", "calibrate", "crm", "igm",
    "load_schedule", "save_schedule", "segment_sweeps", "spectral_norm",
]
