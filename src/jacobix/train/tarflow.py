"""Train the bundled TarFlow models.

Fashion-MNIST, class-conditional (the checkpoint in ``jacobix/assets/tarflow-fashion``)::

    jacobix train tarflow-fashion --replace-bundled  # or --out DIR; default ./jacobix-train/tarflow-fashion

which calls ``train_tarflow("fashion", out_dir)`` with :data:`FASHION_MODEL` and
:data:`FASHION_TRAIN`. scikit-learn's 8x8 digits, unconditional, tiny (for tests)::

    jacobix train tarflow-digits --out runs/tarflow-digits
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from jacobix.eval.datasets import IMAGE_DATASETS, load_images
from jacobix.flows.calibration import calibrate, save_schedule
from jacobix.flows.checkpoint import save_tarflow
from jacobix.flows.tarflow import TarFlow, TarFlowConfig
from jacobix.train import add_output_arguments, output_folder

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
) -> TarFlow:
    """Train a TarFlow with noise augmentation (and label dropout when conditional).

    Args:
        dataset: ``fashion`` (class-conditional) or ``digits`` (unconditional).
        out_dir: where to write the checkpoint; None keeps it in memory only (tests).
        model_config: defaults to :data:`FASHION_MODEL` / :data:`DIGITS_MODEL`.
        train_config: defaults to :data:`FASHION_TRAIN` / :data:`DIGITS_TRAIN`.
    Returns:
        the trained model in eval mode.
    """
    fashion = dataset == "fashion"
    model_config = model_config or (FASHION_MODEL if fashion else DIGITS_MODEL)
    train_config = train_config or (FASHION_TRAIN if fashion else DIGITS_TRAIN)
    images, labels = load_images(dataset)
    if model_config.img_size != images.shape[-1]:
        raise ValueError(f"{dataset} images are {images.shape[-1]}px but model_config.img_size is {model_config.img_size}")
    torch.set_num_threads(train_config.threads)
    torch.manual_seed(train_config.seed)
    model = TarFlow(model_config)
    start = time.perf_counter()
    final_loss = _optimise(model, images, labels if model_config.num_classes else None, train_config)
    seconds = time.perf_counter() - start
    log.info("trained %s TarFlow in %.0f s, final loss %.4f", dataset, seconds, final_loss)
    if out_dir is not None:
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


def _optimise(model: TarFlow, images: torch.Tensor, labels: torch.Tensor | None, config: TarFlowTrainConfig) -> float:
    """The training loop; returns the mean loss of the last 100 steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    sigma = model.config.noise_std
    recent: list[float] = []
    model.train()
    for step in range(config.steps):
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
        loss = model.loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-100:]
        if step % 250 == 0 or step == config.steps - 1:
            log.info("step %d/%d loss %.4f", step, config.steps, sum(recent) / len(recent))
    return sum(recent) / len(recent)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``out`` is resolved (see :func:`jacobix.train.output_folder`)."""
    parser = argparse.ArgumentParser(description="train a TarFlow")
    parser.add_argument("dataset", choices=DATASETS)
    add_output_arguments(parser, None)
    parser.add_argument("--steps", type=int, default=None, help="override the default number of steps")
    args = parser.parse_args(argv)
    args.out = output_folder(args, f"tarflow-{args.dataset}")
    return args


def main(argv: list[str] | None = None) -> None:
    """``python -m jacobix.train.tarflow {fashion,digits} [--out DIR | --replace-bundled] [--steps N]``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train = FASHION_TRAIN if args.dataset == "fashion" else DIGITS_TRAIN
    if args.steps is not None:
        train = TarFlowTrainConfig(**{**asdict(train), "steps": args.steps})
    train_tarflow(args.dataset, args.out, train_config=train)


if __name__ == "__main__":
    main()


__all__ = ["DIGITS_MODEL", "DIGITS_TRAIN", "FASHION_MODEL", "FASHION_TRAIN", "TarFlowTrainConfig", "train_tarflow", "write_schedule"]
