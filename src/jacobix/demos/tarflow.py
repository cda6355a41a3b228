"""``jacobix demo tarflow``: sample pictures from both samplers and per-block convergence curves.

Writes into a folder:

- ``samples_sequential.png`` and ``samples_gs_jacobi.png``: the same latents and labels sampled
  by KV-cached sequential inversion and by GS-Jacobi with the automatic schedule (columns named
  by class for a class-conditional model);
- ``convergence.png``: for every block, the relative residual ``mean((x^k - x^{k-1})^2) /
  mean((x^k)^2)`` of whole-block Jacobi against the sweep k, one line per block on a log axis,
  and ``convergence.csv`` with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from jacobix import assets
from jacobix.core.acceptance import relative_residual
from jacobix.eval.datasets import load_images
from jacobix.flows.calibration import AutoScheduleConfig, calibrate, load_schedule
from jacobix.flows.checkpoint import load_tarflow
from jacobix.flows.sampling import BlockPlan, FlowGuidance, FlowSample, invert_block, sample_tarflow, uniform_schedule
from jacobix.flows.tarflow import TarFlow
from jacobix.eval import figures


@dataclass(frozen=True)
class TarFlowDemo:
    """Paths written by :func:`demo_tarflow`, the curves (blocks, sweeps) and the GS-Jacobi schedule, in block order."""

    sequential: Path
    gs_jacobi: Path
    convergence: Path
    convergence_csv: Path
    residuals: Tensor
    schedule: tuple[BlockPlan, ...]

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file the demo wrote."""
        return (self.sequential, self.gs_jacobi, self.convergence, self.convergence_csv)


@torch.no_grad()
def convergence_curves(model: TarFlow, noise: Tensor, labels: Tensor | None, *, guidance: FlowGuidance | None = None, init: str = "z") -> Tensor:
    """Relative residual per sweep of whole-block Jacobi, for every block.

    Each block is solved (to exactness: T-1 sweeps, nothing committed before) on the latents
    that sequential sampling hands it, so the curves show how fast plain Jacobi settles.

    Args:
        model: the flow.
        noise: (B, T, F) latents.
        labels: (B,) or None.
        guidance: CFG or None.
        init: initial guess, ``z`` or ``zeros``.
    Returns:
        (num_blocks, T-1) mean residual over the batch, block order.
    """
    t = model.config.num_patches
    whole = BlockPlan(mode="gs", segments=1, max_sweeps=t - 1, tolerance=0.0, init=init)
    x = noise.to(model.var.dtype) * model.var.sqrt()
    curves = [None] * len(model.blocks)
    for index in reversed(range(len(model.blocks))):
        block = model.blocks[index]
        _, stats = invert_block(block, x, labels, whole, guidance=guidance, record=True)
        curves[index] = _residual_curve(stats.trajectory, t)
        x, _ = invert_block(block, x, labels, BlockPlan(mode="sequential"), guidance=guidance)
    return torch.stack(curves)


def _residual_curve(trajectory: list, num_patches: int) -> Tensor:
    """(T-1,) mean residual per sweep over the rows still solving; 0 once every row has committed."""
    curve = torch.zeros(num_patches - 1, dtype=torch.float64)
    for k, record in enumerate(trajectory):
        active = record.start < num_patches  # (B,) rows that committed early (residual exactly 0) are done
        residual = relative_residual(record.drafts, record.values)  # (B,)
        curve[k] = residual[active].mean() if bool(active.any()) else 0.0
    return curve


def _pixels(images: Tensor) -> np.ndarray:
    """(B, 1, H, W) flow samples in [-1, 1] -> (B, H, W) in [0, 1]."""
    return ((images.clamp(-1, 1) + 1) / 2)[:, 0].cpu().double().numpy()


def grid_figure(images: Tensor, *, columns: int, title: str, class_names: list[str] | None):
    """Labelled sample grid; columns are classes when ``class_names`` is given."""
    if class_names is None:
        return figures.image_grid_figure(_pixels(images), columns=columns, title=title)
    return figures.image_grid_figure(_pixels(images), columns=columns, title=title, column_names=class_names[:columns],
                                     xlabel="class", ylabel="sample")


def plot_convergence(path: Path, residuals: Tensor) -> Path:
    """Write the per-block convergence curves (blocks, sweeps) as a picture; returns the path."""
    blocks = residuals.shape[0]
    ordinal = {1: "1st", 2: "2nd", 3: "3rd"}
    labels = [f"block {index}, inverted {ordinal.get(blocks - index, f'{blocks - index}th')}" for index in range(blocks)]
    figure = figures.convergence_figure(residuals.numpy(), labels=labels, ylabel="relative residual (mean over samples)",
                                        title="TarFlow: whole-block Jacobi convergence per block")
    return figures.save(figure, path)


def demo_tarflow(out_dir: str | Path, *, model: TarFlow | None = None, dataset: str = "fashion", num_samples: int = 20,
                 guidance: float = 1.0, tolerance: float = 1e-4, seed: int = 0) -> TarFlowDemo:
    """Write sample grids from both samplers and the convergence curves into ``out_dir``.

    Args:
        out_dir: output folder (created).
        model: the flow; None loads the bundled Fashion-MNIST checkpoint.
        dataset: real images for the automatic schedule, ``fashion`` or ``digits``.
        num_samples: images per grid (conditional models cycle through the classes).
        guidance: CFG scale for a class-conditional model.
        tolerance: GS-Jacobi relative residual of the automatic schedule. The bundled model's saved
            schedule is used when it was made at this tolerance; otherwise the schedule is
            calibrated on ``dataset`` at this tolerance.
        seed: latents and calibration noise.
    Returns:
        the written paths, the residual curves and the GS-Jacobi schedule used.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundled = model is None
    folder = assets.get("tarflow-fashion", kind="tarflow").path
    model = load_tarflow(folder)[0] if bundled else model
    plans = load_schedule(folder, len(model.blocks)) if bundled else None  # saved at training time
    if plans is not None and any(plan.mode == "gs" and plan.tolerance != tolerance for plan in plans):
        plans = None  # saved at another tolerance: its sweep caps do not apply
    generator = torch.Generator().manual_seed(seed)
    conditional = model.config.num_classes > 0
    if plans is None:
        images, classes = load_images(dataset, "train")
        plans = calibrate(model, images, classes, generator=generator, config=AutoScheduleConfig(tolerance=tolerance)).plans
    noise = torch.randn(num_samples, model.config.num_patches, model.config.patch_dim, generator=generator)
    labels = torch.arange(num_samples) % model.config.num_classes if conditional else None
    cfg = FlowGuidance(scale=guidance) if conditional and guidance > 0 else None
    columns = 10 if conditional else 8
    sequential = sample_tarflow(model, noise, labels, schedule=uniform_schedule(len(model.blocks), BlockPlan(mode="sequential")), guidance=cfg)
    fast = sample_tarflow(model, noise, labels, schedule=plans, guidance=cfg)
    residuals = convergence_curves(model, noise, labels, guidance=cfg)
    csv = out / "convergence.csv"
    rows = [",".join(["block"] + [f"sweep{k + 1}" for k in range(residuals.shape[1])])]
    rows += [",".join([str(i)] + [f"{v:.6e}" for v in curve.tolist()]) for i, curve in enumerate(residuals)]
    csv.write_text("\n".join(rows) + "\n")
    sequential_path, gs_path = _write_grids(out, sequential, fast, model, dataset, columns)
    return TarFlowDemo(
        sequential=sequential_path,
        gs_jacobi=gs_path,
        convergence=plot_convergence(out / "convergence.png", residuals),
        convergence_csv=csv,
        residuals=residuals,
        schedule=tuple(plans),
    )


def _write_grids(out: Path, sequential: FlowSample, fast: FlowSample, model: TarFlow, dataset: str, columns: int) -> tuple[Path, Path]:
    """The two labelled sample grids; columns are named by class for a class-conditional model."""
    classes = model.config.num_classes
    names = list(figures.CLASS_NAMES) if classes == 10 and dataset == "fashion" else [str(c) for c in range(classes)] or None
    deviation = float((fast.images - sequential.images).abs().max())
    seq_title = f"TarFlow, sequential inversion (KV cache): {sequential.forward_passes} passes"
    gs_title = f"TarFlow, GS-Jacobi (auto schedule): {fast.forward_passes} passes, max |diff| to sequential {deviation:.1e}"
    return (figures.save(grid_figure(sequential.images, columns=columns, title=seq_title, class_names=names), out / "samples_sequential.png"),
            figures.save(grid_figure(fast.images, columns=columns, title=gs_title, class_names=names), out / "samples_gs_jacobi.png"))


__all__ = ["TarFlowDemo", "convergence_curves", "demo_tarflow", "grid_figure", "plot_convergence"]
