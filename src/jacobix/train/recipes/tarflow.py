"""Train the bundled TarFlow models.

Fashion-MNIST, class-conditional (the checkpoint in ``jacobix/assets/tarflow-fashion``)::

    jacobix train tarflow-fashion --replace-bundled  # or --out DIR; default ./jacobix-train/tarflow-fashion

which calls ``train_tarflow("fashion", out_dir)`` with :data:`FASHION_MODEL` and
:data:`FASHION_TRAIN`. scikit-learn's 8x8 digits, unconditional, tiny (for tests)::

    jacobix train tarflow-digits --out runs/tarflow-digits

Under ``torchrun --nproc_per_node N -m jacobix.train.tarflow digits ...`` each batch (images, noise
and label dropout drawn whole, then split) is shared by the processes (:mod:`jacobix.train.distributed`, DDP).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from jacobix.eval.datasets import IMAGE_DATASETS, load_images
from jacobix.flows.calibration import calibrate, save_schedule
from jacobix.flows.checkpoint import save_tarflow
from jacobix.flows.tarflow import TarFlow, TarFlowConfig
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.distributed import RunOptions

log = logging.getLogger(__name__)

DATASETS = IMAGE_DATASETS
# 49 patches of 16 values; 6 blocks x 1 layer, width 64 (sized to train in ~15 min on one CPU thread).
FASHION_MODEL = TarFlowConfig(
    in_channels=1, img_size=28, patch_size=4, channels=64, num_blocks=6, layers_per_block=1,
    head_dim=32, num_classes=10, noise_std=0.1,
)
# 16 patches of 4 values; 4 blocks x 1 layer, width 64.
DIGITS_MODEL = TarFlowConfig(
    in_channels=1, img_size=8, patch_size=2, channels=64, num_blocks=4, layers_per_block=1,
    head_dim=32, num_classes=0, noise_std=0.1,
)


@dataclass(frozen=True, kw_only=True)
class TarFlowTrainConfig:
    """Optimisation settings (AdamW, linear warm-up, cosine decay, gradient clipping at 1).

    Attributes:
        steps: optimiser steps.
        batch_size: images per step.
        lr: peak learning rate.
        warmup: warm-up steps.
        weight_decay: AdamW weight decay.
        drop_label: probability of replacing a label by -1 (the mean class embedding), for CFG.
        seed: seeds the model initialisation, batches and noise.
        threads: torch intra-op threads (1 on a shared machine).
    """

    steps: int = 6000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 1e-4
    drop_label: float = 0.1
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TarFlowTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.drop_label < 1:
            raise ValueError(f"TarFlowTrainConfig.drop_label must be in [0, 1), got {self.drop_label}")
        if self.lr <= 0 or self.warmup < 0:
            raise ValueError("TarFlowTrainConfig: lr must be > 0 and warmup >= 0")


FASHION_TRAIN = TarFlowTrainConfig(steps=2000, batch_size=64, lr=2e-3)
DIGITS_TRAIN = TarFlowTrainConfig(steps=400, batch_size=64, lr=3e-3, warmup=50, drop_label=0.0)


def train_tarflow(
    dataset: str,
    out_dir: str | Path | None,
    *,
    model_config: TarFlowConfig | None = None,
    train_config: TarFlowTrainConfig | None = None,
    options: RunOptions = RunOptions(),
) -> TarFlow:
    """Train a TarFlow with noise augmentation (and label dropout when conditional).

    Args:
        dataset: ``fashion`` (class-conditional) or ``digits`` (unconditional).
        out_dir: where to write the checkpoint; None keeps it in memory only (tests).
        model_config: defaults to :data:`FASHION_MODEL` / :data:`DIGITS_MODEL`.
        train_config: defaults to :data:`FASHION_TRAIN` / :data:`DIGITS_TRAIN`.
        options: resume, checkpoint frequency, early stop (:class:`RunOptions`; DDP only, no FSDP).
    Returns:
        the trained model in eval mode.
    """
    if options.fsdp:
        raise ValueError("--fsdp: the TarFlow trainer uses DDP (its models fit one device); drop --fsdp")
    fashion = dataset == "fashion"
    model_config = model_config or (FASHION_MODEL if fashion else DIGITS_MODEL)
    train_config = train_config or (FASHION_TRAIN if fashion else DIGITS_TRAIN)
    images, labels = load_images(dataset)
    if model_config.img_size != images.shape[-1]:
        raise ValueError(f"{dataset} images are {images.shape[-1]}px but model_config.img_size is {model_config.img_size}")
    torch.set_num_threads(train_config.threads)
    torch.manual_seed(train_config.seed)
    model = TarFlow(model_config)
    run = distributed.setup()
    start = time.perf_counter()
    final_loss = _optimise(model, images, labels if model_config.num_classes else None, train_config, run, options,
                           None if out_dir is None else Path(out_dir))
    seconds = time.perf_counter() - start
    log.info("trained %s TarFlow in %.0f s, final loss %.4f", dataset, seconds, final_loss)
    finished = options.last_step(train_config.steps) == train_config.steps
    run.close()
    model = model.cpu()
    if out_dir is not None and run.is_main and finished:
        save_tarflow(model, out_dir, extra={
            "dataset": dataset, "train": asdict(train_config), "final_loss": final_loss,
            "train_seconds": round(seconds, 1), "command": f"jacobix train tarflow-{dataset} --out {out_dir}",
        })
        write_schedule(model.eval(), dataset, out_dir)
    return model.eval()


def write_schedule(model: TarFlow, dataset: str, out_dir: str | Path) -> Path:
    """Calibrate the automatic GS-Jacobi schedule on training data and save it beside the weights,
    so that sampling (``jacobix demo tarflow``) needs no data."""
    images, labels = load_images(dataset, "train")
    plans = calibrate(model, images, labels, generator=torch.Generator().manual_seed(0)).plans
    return save_schedule(plans, out_dir, source=f"auto_schedule on 128 noised {dataset} training images, seed 0")


class _Loss(nn.Module):
    """The flow's training loss as a ``forward``, so DDP sees the pass it synchronises."""

    def __init__(self, flow: TarFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.flow.loss(x, y)


def _optimise(model: TarFlow, images: torch.Tensor, labels: torch.Tensor | None, config: TarFlowTrainConfig,
              run: distributed.Run = distributed.Run(), options: RunOptions = RunOptions(),
              out_dir: Path | None = None) -> float:
    """The training loop; returns the mean loss of the last 100 steps (of the global batches)."""
    objective = distributed.wrap(_Loss(model), run)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    first = distributed.load_checkpoint(options.resume, run, model=objective, optimizer=optimizer, generator=generator)
    metrics = distributed.Metrics(out_dir / distributed.METRICS, run, first) if out_dir is not None else None
    sigma = model.config.noise_std
    recent: list[float] = distributed.checkpoint_extra(options.resume).get("recent", [])
    model.train()
    for step in range(first, options.last_step(config.steps)):
        warm = min(1.0, (step + 1) / max(config.warmup, 1))
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warm * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        index = torch.randint(len(images), (config.batch_size,), generator=generator)
        x = images[index]  # (B, 1, H, W)
        x = x + sigma * torch.randn(x.shape, generator=generator)
        y = None
        if labels is not None:
            drop = torch.rand(config.batch_size, generator=generator) < config.drop_label
            y = torch.where(drop, -1, labels[index])  # (B,)
        x, *rest = run.shard(x, *([] if y is None else [y]))  # this rank's rows of the global batch
        loss = objective(x, rest[0] if rest else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = (recent + [run.mean(loss)])[-100:]
        if metrics is not None:
            metrics.log(step, loss=recent[-1])
        if step % 250 == 0 or step == config.steps - 1:
            log.info("step %d/%d loss %.4f", step, config.steps, sum(recent) / len(recent))
        if out_dir is not None and options.save_due(step + 1, config.steps):
            distributed.save_checkpoint(out_dir / distributed.CHECKPOINT, run, model=objective, optimizer=optimizer,
                                        step=step + 1, generator=generator, extra={"recent": recent})
    return sum(recent) / max(len(recent), 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``out`` is resolved (see :func:`jacobix.train.output_folder`)."""
    parser = argparse.ArgumentParser(description="train a TarFlow")
    parser.add_argument("dataset", choices=DATASETS)
    add_output_arguments(parser, None)
    parser.add_argument("--steps", type=int, default=None, help="override the default number of steps")
    parser.add_argument("--batch-size", type=int, default=None, help="override the global batch (all processes)")
    distributed.add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    args.out = output_folder(args, f"tarflow-{args.dataset}")
    return args


def main(argv: list[str] | None = None) -> None:
    """``python -m jacobix.train.tarflow {fashion,digits} [--out DIR | --replace-bundled] [--steps N]``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if distributed.is_main_process() else logging.WARNING,
                        format="%(asctime)s %(message)s")
    train = FASHION_TRAIN if args.dataset == "fashion" else DIGITS_TRAIN
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v is not None}
    train = TarFlowTrainConfig(**{**asdict(train), **overrides})
    train_tarflow(args.dataset, args.out, train_config=train, options=RunOptions.from_args(args))


if __name__ == "__main__":
    main()


__all__ = ["DIGITS_MODEL", "DIGITS_TRAIN", "FASHION_MODEL", "FASHION_TRAIN", "TarFlowTrainConfig", "train_tarflow", "write_schedule"]
