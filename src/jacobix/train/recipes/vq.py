"""Train the bundled VQ image tokenizer on Fashion-MNIST (28x28 -> 14x14 tokens).

Reproduce ``src/jacobix/assets/fmnist-vq`` (about 8 minutes on a busy core on one CPU thread)::

    jacobix train vq                    # writes ./jacobix-train/fmnist-vq
    jacobix train vq --replace-bundled  # replaces the bundled checkpoint

Under ``torchrun --nproc_per_node N -m jacobix.train.recipes.vq`` each batch is split over the processes
(:mod:`jacobix.train.loop`, DDP); code usage is summed over them, and dead codes restart
from the whole batch on every rank alike.
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
from jacobix.images.vq import VQConfig, VQTokenizer, save_vq
from jacobix.eval.datasets import require_fashion_mnist
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.options import count, natural
from jacobix.train.distributed import RunOptions
from jacobix.train.loop import FitConfig, StepEnd, fit
from jacobix.train.recipe import Recipe
from jacobix.train.schedule import WarmupCosine

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class VQTrainConfig:
    """Optimisation settings of :func:`train`."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    restart_every: int = 100
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.restart_every, self.threads) < 1 or not 0 < self.lr < math.inf:
            raise ValueError("VQTrainConfig needs steps, batch_size, restart_every, threads >= 1 and lr > 0")


def train(out_dir: str | Path, config: VQTrainConfig = VQTrainConfig(), model_config: VQConfig = VQConfig(),
          options: RunOptions = RunOptions()) -> Path:
    """Train the tokenizer, measure reconstruction on the test split, save to ``out_dir``.

    ``options``: resume, checkpoint frequency, early stop (:class:`RunOptions`; DDP only, no FSDP).
    """
    if options.fsdp:
        raise ValueError("--fsdp: the VQ tokenizer is small and restarts codes in place; it trains with DDP (drop --fsdp)")
    run = distributed.setup()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    images, _ = load_fashion_mnist("train")
    x = torch.tensor(images).float().div(255)[:, None]  # (N, 1, 28, 28)
    tokenizer = VQTokenizer(model_config)
    model = distributed.wrap(tokenizer, run)
    usage = CodeUsage(tokenizer, config, run)
    fit_config = FitConfig(schedule=WarmupCosine(peak=config.lr, steps=config.steps, warmup=100), betas=(0.9, 0.999),
                           clip=None, seed=config.seed, log_every=200)
    result = fit(model, usage.loss, lambda step, g: x[torch.randint(len(x), (config.batch_size,), generator=g)],
                 fit_config, run=run, options=options, out=Path(out_dir), on_step=usage.restart, state={"usage": usage})
    if run.is_main and result.finished:
        metrics_out = reconstruction_metrics(tokenizer.cpu().eval())
        log.info("test reconstruction: %s", metrics_out)
        save_vq(tokenizer, out_dir, extra={"reconstruction": metrics_out, "train": asdict(config)})
    run.close()
    return Path(out_dir)


class CodeUsage:
    """Codes used since the last restart, counted by the loss and used by the dead-code restarts.

    Each rank counts its own rows; a restart sums the counts over ranks and draws the new codes
    from the whole global batch with the shared generator, so every rank moves the same codes.
    """

    def __init__(self, tokenizer: VQTokenizer, config: VQTrainConfig, run: distributed.Run) -> None:
        self.tokenizer, self.config, self.run = tokenizer, config, run
        self.counts = torch.zeros(tokenizer.config.codebook_size)

    def loss(self, model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Reconstruction MSE plus the quantizer's loss of images (B, 1, 28, 28); counts the codes used."""
        logits, quantized = model(images)
        recon = F.mse_loss(torch.sigmoid(logits), images)
        self.counts += torch.bincount(quantized.indices.flatten().cpu(), minlength=len(self.counts))
        return recon + quantized.loss, {"recon": recon}

    def restart(self, end: StepEnd) -> None:
        """Every ``restart_every`` steps in the first 80% of the run: restart the codes no rank used."""
        every, step = self.config.restart_every, end.step
        if step % every == every - 1 and step < 0.8 * self.config.steps:
            _restart_dead_codes(self.tokenizer, end.batch.to(end.run.device), self.run.sum(self.counts), end.generator)
            self.counts.zero_()

    def state_dict(self) -> dict:
        return {"usage": self.run.sum(self.counts)}  # collective: every rank calls it

    def load_state_dict(self, state: dict) -> None:
        if self.run.is_main:  # the saved count is the sum over ranks: rank 0 carries it
            self.counts += state["usage"]


@torch.no_grad()
def _restart_dead_codes(model: VQTokenizer, batch: torch.Tensor, usage: torch.Tensor, generator: torch.Generator) -> None:
    """Move codes unused since the last restart onto random encoder outputs of the batch."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return
    z = F.normalize(model.encoder(batch * 2 - 1), dim=1)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N*196, code_dim)
    picks = torch.randint(len(flat), (len(dead),), generator=generator)
    model.codebook.data[dead] = flat[picks]
    log.info("restarted %d dead codes", len(dead))


@torch.no_grad()
def reconstruction_metrics(model: VQTokenizer) -> dict[str, float]:
    """MSE, PSNR, codebook perplexity, and classifier-based scores of test-set reconstructions."""
    from jacobix.eval import quality

    images, labels = load_fashion_mnist("test")
    real = torch.tensor(images).float().div(255)  # (N, 28, 28)
    tokens = model.encode(real)  # (N, 14, 14)
    recon = model.decode(tokens)  # (N, 28, 28)
    mse = float(F.mse_loss(recon, real))
    counts = torch.bincount(tokens.flatten(), minlength=model.config.codebook_size).double()
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    metrics = {
        "mse": round(mse, 5),
        "psnr_db": round(10 * math.log10(1.0 / mse), 2),
        "codes_used": int((counts > 0).sum()),
        "code_perplexity": round(float(entropy.exp()), 1),
    }
    try:
        metrics["classifier_accuracy_on_recon"] = round(quality.class_accuracy(recon, labels), 4)
        metrics["fid_proxy_recon_vs_test"] = round(quality.fid_proxy(recon, real), 3)
    except FileNotFoundError as error:  # the classifier is trained separately
        log.warning("skipping classifier metrics: %s", error)
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options."""
    add_output_arguments(parser, "fmnist-vq")
    parser.add_argument("--steps", type=count, default=VQTrainConfig.steps, help="optimizer steps")
    parser.add_argument("--seed", type=natural, default=0, help="seed of the initialisation and the batches")
    parser.add_argument("--batch-size", type=count, default=VQTrainConfig.batch_size, help="global batch (all processes)")
    parser.add_argument("--restart-every", type=count, default=VQTrainConfig.restart_every, help="dead-code restart period")
    distributed.add_distributed_arguments(parser)


def resolve(args: argparse.Namespace) -> None:
    """Check the options and the data (``config``, ``options``); ``out`` from ``--out``/``--replace-bundled``."""
    args.config = VQTrainConfig(steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                                restart_every=args.restart_every)
    args.options = RunOptions.from_args(args)
    args.options.last_step(args.steps)
    require_fashion_mnist()
    args.out = output_folder(args, "fmnist-vq")


def run(args: argparse.Namespace) -> None:
    """Train from parsed, resolved options."""
    train(args.out, args.config, options=args.options)


RECIPE = Recipe(name="vq", help="the bundled VQ image tokenizer (fmnist-vq)", description=__doc__.splitlines()[0],
                add_arguments=add_arguments, resolve=resolve, run=run)
parse_args, main = RECIPE.parse_args, RECIPE.main

__all__ = ["RECIPE", "CodeUsage", "VQTrainConfig", "main", "parse_args", "reconstruction_metrics", "train"]

if __name__ == "__main__":
    main()
