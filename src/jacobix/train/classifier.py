"""Train the bundled Fashion-MNIST classifier used by :mod:`jacobix.eval.quality`.

Reproduce ``src/jacobix/assets/fmnist-classifier`` (about 3 minutes on one CPU thread)::

    jacobix train classifier                    # writes ./jacobix-train/fmnist-classifier
    jacobix train classifier --replace-bundled  # replaces the bundled checkpoint

Under ``torchrun --nproc_per_node N -m jacobix.train.classifier`` each batch is split over the
processes (:mod:`jacobix.train.distributed`, DDP).
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
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.distributed import RunOptions

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


def train(out_dir: str | Path, config: ClassifierTrainConfig = ClassifierTrainConfig(),
          options: RunOptions = RunOptions()) -> Path:
    """Train the classifier on the training split, report test accuracy, save to ``out_dir``.

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
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    per_epoch = len(x) // config.batch_size
    steps = config.epochs * per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    epoch_start = torch.Generator().manual_seed(config.seed)  # the order generator as each epoch begins
    first = distributed.load_checkpoint(options.resume, run, model=model, optimizer=optimizer, generator=epoch_start,
                                        scheduler=schedule)
    metrics = distributed.Metrics(Path(out_dir) / distributed.METRICS, run, first)
    start, last, order = time.perf_counter(), options.last_step(steps), None
    for step in range(first, last):
        epoch, index = divmod(step, per_epoch)
        if order is None or index == 0:  # a resumed run redraws its epoch's order from the saved state
            order = torch.randperm(len(x), generator=torch.Generator().set_state(epoch_start.get_state()))
        batch = order[index * config.batch_size : (index + 1) * config.batch_size]
        inputs, targets = run.shard(x[batch], y[batch])
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        metrics.log(step, loss=run.mean(loss))
        if (step + 1) % 200 == 0:
            log.info("epoch %d step %d loss %.3f %.0fs", epoch, step + 1, loss.item(), time.perf_counter() - start)
        if (step + 1) % per_epoch == 0:
            epoch_start.set_state(_advanced(epoch_start, len(x)))
        if options.save_due(step + 1, steps):
            distributed.save_checkpoint(Path(out_dir) / distributed.CHECKPOINT, run, model=model, optimizer=optimizer,
                                        step=step + 1, generator=epoch_start, scheduler=schedule)
    if run.is_main and last == steps:
        accuracy = test_accuracy(classifier.cpu().eval())
        log.info("test accuracy %.4f", accuracy)
        save_classifier(classifier, out_dir, extra={"test_accuracy": round(accuracy, 4), "train": asdict(config)})
    run.close()
    return Path(out_dir)


def _advanced(generator: torch.Generator, n: int) -> torch.Tensor:
    """The generator's state after drawing one epoch's permutation of ``n`` (as the original loop did)."""
    probe = torch.Generator().set_state(generator.get_state())
    torch.randperm(n, generator=probe)
    return probe.get_state()


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
    parser.add_argument("--batch-size", type=int, default=ClassifierTrainConfig.batch_size, help="global batch (all processes)")
    distributed.add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    args.out = output_folder(args, "fmnist-classifier")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if distributed.is_main_process() else logging.WARNING,
                        format="%(asctime)s %(message)s")
    train(args.out, ClassifierTrainConfig(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size),
          RunOptions.from_args(args))


if __name__ == "__main__":
    main()
