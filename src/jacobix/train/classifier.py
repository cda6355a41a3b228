"""Train the bundled Fashion-MNIST classifier used by :mod:`jacobix.eval.quality`.

Reproduce ``src/jacobix/assets/fmnist-classifier`` (about 3 minutes on one CPU thread)::

    jacobix train classifier                    # writes ./jacobix-train/fmnist-classifier
    jacobix train classifier --replace-bundled  # replaces the bundled checkpoint
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from jacobix.eval.datasets import load_fashion_mnist
from jacobix.eval.quality import Classifier, ClassifierConfig, save_classifier
from jacobix.train import add_output_arguments, output_folder

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
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.threads < 1:
            raise ValueError("ClassifierTrainConfig needs epochs, batch_size, threads >= 1 and lr > 0")


def train(out_dir: str | Path, config: ClassifierTrainConfig = ClassifierTrainConfig()) -> Path:
    """Train the classifier on the training split, report test accuracy, save to ``out_dir``."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    images, labels = load_fashion_mnist("train")
    x = torch.tensor(images).float().div(255)[:, None]  # (N, 1, 28, 28)
    y = torch.from_numpy(labels)
    model = Classifier(ClassifierConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    steps = config.epochs * (len(x) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    start, step = time.perf_counter(), 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(x), generator=generator)
        for batch in order[: len(order) // config.batch_size * config.batch_size].split(config.batch_size):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 200 == 0:
                log.info("epoch %d step %d loss %.3f %.0fs", epoch, step, loss.item(), time.perf_counter() - start)
    accuracy = test_accuracy(model.eval())
    log.info("test accuracy %.4f", accuracy)
    save_classifier(model, out_dir, extra={"test_accuracy": round(accuracy, 4), "train": asdict(config)})
    return Path(out_dir)


@torch.no_grad()
def test_accuracy(model: Classifier) -> float:
    images, labels = load_fashion_mnist("test")
    x = torch.tensor(images).float().div(255)[:, None]
    predicted = torch.cat([model(chunk).argmax(-1) for chunk in x.split(1000)])
    return float((predicted == torch.from_numpy(labels)).float().mean())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``out`` is resolved (see :func:`jacobix.train.output_folder`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser, "fmnist-classifier")
    parser.add_argument("--epochs", type=int, default=ClassifierTrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out = output_folder(args, "fmnist-classifier")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args.out, ClassifierTrainConfig(epochs=args.epochs, seed=args.seed))


if __name__ == "__main__":
    main()
