"""Train the bundled Fashion-MNIST classifier used by :mod:`jacobix.eval.quality`.

Reproduce ``src/jacobix/assets/fmnist-classifier`` (about 3 minutes on one CPU thread)::

    jacobix train classifier                    # writes ./jacobix-train/fmnist-classifier
    jacobix train classifier --replace-bundled  # replaces the bundled checkpoint

Under ``torchrun --nproc_per_node N -m jacobix.train.recipes.classifier`` each batch is split over the
processes (:mod:`jacobix.train.loop`, DDP).
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from jacobix.eval.datasets import load_fashion_mnist
from jacobix.eval.quality import Classifier, ClassifierConfig, save_classifier
from jacobix.eval.datasets import require_fashion_mnist
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.options import count, natural
from jacobix.train.distributed import RunOptions
from jacobix.train.loop import FitConfig, fit
from jacobix.train.recipe import Recipe
from jacobix.train.schedule import OneCycle

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ClassifierTrainConfig:
    """Optimisation settings of :func:`train`."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not 0 < self.lr < math.inf or self.threads < 1:
            raise ValueError("ClassifierTrainConfig needs epochs, batch_size, threads >= 1 and lr > 0")


def train(out_dir: str | Path, config: ClassifierTrainConfig = ClassifierTrainConfig(),
          options: RunOptions = RunOptions()) -> Path:
    """Train the classifier on the training split, report test accuracy, save to ``out_dir``.

    Adam (AdamW without decay) with PyTorch's one-cycle schedule, epochs of shuffled batches.
    ``options``: resume, checkpoint frequency, early stop (:class:`RunOptions`; DDP only, no FSDP).
    """
    if options.fsdp:
        raise ValueError("--fsdp: the classifier is tiny; it trains with DDP (drop --fsdp)")
    run = distributed.setup()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    images, labels = load_fashion_mnist("train")
    x = torch.tensor(images).float().div(255)[:, None]  # (N, 1, 28, 28)
    y = torch.from_numpy(labels)
    classifier = Classifier(ClassifierConfig())
    model = distributed.wrap(classifier, run)
    epochs = EpochBatches(len(x), config.batch_size, config.seed)
    steps = config.epochs * epochs.per_epoch
    fit_config = FitConfig(schedule=OneCycle(peak=config.lr, steps=steps), betas=(0.9, 0.999), clip=None,
                           seed=config.seed, log_every=200)
    result = fit(model, class_loss, lambda step, g: (x[epochs(step)], y[epochs(step)]), fit_config, run=run,
                 options=options, out=Path(out_dir))
    if run.is_main and result.finished:
        accuracy = test_accuracy(classifier.cpu().eval())
        log.info("test accuracy %.4f", accuracy)
        save_classifier(classifier, out_dir, extra={"test_accuracy": round(accuracy, 4), "train": asdict(config)})
    run.close()
    return Path(out_dir)


def class_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of images (B, 1, 28, 28) against labels (B,)."""
    images, labels = batch
    return F.cross_entropy(model(images), labels), {}


class EpochBatches:
    """The rows of each step: epochs of a seeded shuffle, epoch ``e``'s order being the ``e + 1``-th
    permutation drawn from ``Generator().manual_seed(seed)``. A step's rows depend on the step alone,
    so a resumed run redraws its epoch's order."""

    def __init__(self, rows: int, batch_size: int, seed: int) -> None:
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.per_epoch = rows // batch_size
        self._epoch, self._order, self._generator = -1, torch.empty(0, dtype=torch.long), torch.Generator()

    def __call__(self, step: int) -> torch.Tensor:
        epoch, index = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            if epoch < self._epoch or self._epoch < 0:  # replay the permutations before this epoch
                self._generator.manual_seed(self.seed)
                for _ in range(epoch):
                    torch.randperm(self.rows, generator=self._generator)
            else:
                for _ in range(epoch - self._epoch - 1):
                    torch.randperm(self.rows, generator=self._generator)
            self._epoch, self._order = epoch, torch.randperm(self.rows, generator=self._generator)
        return self._order[index * self.batch_size : (index + 1) * self.batch_size]


@torch.no_grad()
def test_accuracy(model: Classifier) -> float:
    images, labels = load_fashion_mnist("test")
    x = torch.tensor(images).float().div(255)[:, None]
    predicted = torch.cat([model(chunk).argmax(-1) for chunk in x.split(1000)])
    return float((predicted == torch.from_numpy(labels)).float().mean())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options."""
    add_output_arguments(parser, "fmnist-classifier")
    parser.add_argument("--epochs", type=count, default=ClassifierTrainConfig.epochs, help="passes over the training split")
    parser.add_argument("--seed", type=natural, default=0, help="seed of the initialisation and the shuffles")
    parser.add_argument("--batch-size", type=count, default=ClassifierTrainConfig.batch_size, help="global batch (all processes)")
    distributed.add_distributed_arguments(parser)


def resolve(args: argparse.Namespace) -> None:
    """Check the options and the data (``config``, ``options``); ``out`` from ``--out``/``--replace-bundled``."""
    args.config = ClassifierTrainConfig(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size)
    args.options = RunOptions.from_args(args)
    require_fashion_mnist()
    args.out = output_folder(args, "fmnist-classifier")


def run(args: argparse.Namespace) -> None:
    """Train from parsed, resolved options."""
    train(args.out, args.config, args.options)


RECIPE = Recipe(name="classifier", help="the bundled Fashion-MNIST classifier (fmnist-classifier)",
                description=__doc__.splitlines()[0], add_arguments=add_arguments, resolve=resolve, run=run)
parse_args, main = RECIPE.parse_args, RECIPE.main

__all__ = ["RECIPE", "ClassifierTrainConfig", "EpochBatches", "class_loss", "main", "parse_args", "test_accuracy", "train"]

if __name__ == "__main__":
    main()
