"""Train the bundled TarFlow models.

Fashion-MNIST, class-conditional (the checkpoint in ``jacobix/assets/tarflow-fashion``)::

    jacobix train tarflow-fashion --replace-bundled  # or --out DIR; default ./jacobix-train/tarflow-fashion

which calls ``train_tarflow("fashion", out_dir)`` with :data:`FASHION_MODEL` and
:data:`FASHION_TRAIN`. scikit-learn's 8x8 digits, unconditional, tiny (for tests)::

    jacobix train tarflow-digits --out runs/tarflow-digits

Under ``torchrun --nproc_per_node N -m jacobix.train.recipes.tarflow digits ...`` each batch (images, noise
and label dropout drawn whole, then split) is shared by the processes (:mod:`jacobix.train.loop`, DDP).
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from jacobix.eval.datasets import IMAGE_DATASETS, load_images, require_fashion_mnist
from jacobix.flows.calibration import calibrate, save_schedule
from jacobix.flows.checkpoint import save_tarflow
from jacobix.flows.tarflow import TarFlow, TarFlowConfig
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.options import count
from jacobix.train.distributed import RunOptions
from jacobix.train.loop import FitConfig, fit
from jacobix.train.recipe import Recipe
from jacobix.train.schedule import WarmupCosine

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
        if not 0 < self.lr < math.inf or self.warmup < 0:
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
    objective = distributed.wrap(_Loss(model), run)
    fit_config = FitConfig(schedule=WarmupCosine(peak=train_config.lr, steps=train_config.steps, warmup=train_config.warmup),
                           weight_decay=train_config.weight_decay, seed=train_config.seed, log_every=250)
    batches = NoisyImages(images, labels if model_config.num_classes else None, sigma=model_config.noise_std,
                          batch_size=train_config.batch_size, drop_label=train_config.drop_label)
    result = fit(objective, lambda module, batch: (module(*batch), {}), batches, fit_config, run=run, options=options,
                 out=None if out_dir is None else Path(out_dir), params=list(model.parameters()))
    final_loss = result.recent_loss()
    log.info("trained %s TarFlow in %.0f s, final loss %.4f", dataset, result.seconds, final_loss)
    run.close()
    model = model.cpu()
    if out_dir is not None and run.is_main and result.finished:
        save_tarflow(model, out_dir, extra={
            "dataset": dataset, "train": asdict(train_config), "final_loss": final_loss,
            "train_seconds": round(result.seconds, 1), "command": f"jacobix train tarflow-{dataset} --out {out_dir}",
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


@dataclass(frozen=True)
class NoisyImages:
    """The global batch of a step: random training images plus Gaussian noise of std ``sigma``
    (TarFlow's noise augmentation) and, when conditional, labels dropped to -1 with probability ``drop_label``."""

    images: torch.Tensor  # (N, C, H, W)
    labels: torch.Tensor | None  # (N,) or None (unconditional)
    sigma: float
    batch_size: int
    drop_label: float

    def __call__(self, step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        index = torch.randint(len(self.images), (self.batch_size,), generator=generator)
        x = self.images[index]  # (B, C, H, W)
        x = x + self.sigma * torch.randn(x.shape, generator=generator)
        if self.labels is None:
            return x, None
        drop = torch.rand(self.batch_size, generator=generator) < self.drop_label
        return x, torch.where(drop, -1, self.labels[index])  # (B,)


def add_arguments(parser: argparse.ArgumentParser, dataset: str | None = None) -> None:
    """The options of ``tarflow-DATASET`` (with ``dataset=None``: a positional DATASET first)."""
    if dataset is None:
        parser.add_argument("dataset", choices=DATASETS)
    add_output_arguments(parser, None)
    parser.add_argument("--steps", type=count, default=None, help="override the default number of steps")
    parser.add_argument("--batch-size", type=count, default=None, help="override the global batch (all processes)")
    distributed.add_distributed_arguments(parser)
    if dataset is not None:
        parser.set_defaults(dataset=dataset)


def resolve(args: argparse.Namespace) -> None:
    """Check the options and the data (``config``, ``options``); ``out`` from ``--out``/``--replace-bundled``
    (the bundled folder is ``tarflow-DATASET``)."""
    train = FASHION_TRAIN if args.dataset == "fashion" else DIGITS_TRAIN
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v is not None}
    args.config = TarFlowTrainConfig(**{**asdict(train), **overrides})
    args.options = RunOptions.from_args(args)
    args.options.last_step(args.config.steps)
    if args.dataset == "fashion":
        require_fashion_mnist()
    args.out = output_folder(args, f"tarflow-{args.dataset}")


def run(args: argparse.Namespace) -> None:
    """Train from parsed, resolved options."""
    train_tarflow(args.dataset, args.out, train_config=args.config, options=args.options)


FASHION = Recipe(name="tarflow-fashion", help="the bundled class-conditional Fashion-MNIST TarFlow",
                 add_arguments=partial(add_arguments, dataset="fashion"), resolve=resolve, run=run)
DIGITS = Recipe(name="tarflow-digits", help="the tiny unconditional TarFlow on 8x8 digits (tests)",
                add_arguments=partial(add_arguments, dataset="digits"), resolve=resolve, run=run)
EITHER = Recipe(name="tarflow", help="a TarFlow: DATASET first", add_arguments=add_arguments, resolve=resolve, run=run)
parse_args, main = EITHER.parse_args, EITHER.main  # python -m jacobix.train.recipes.tarflow {fashion,digits} ...


__all__ = ["DIGITS", "DIGITS_MODEL", "DIGITS_TRAIN", "FASHION", "FASHION_MODEL", "FASHION_TRAIN", "NoisyImages",
           "TarFlowTrainConfig", "main", "parse_args", "train_tarflow", "write_schedule"]

if __name__ == "__main__":
    main()
