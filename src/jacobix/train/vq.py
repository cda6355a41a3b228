"""Train the bundled VQ image tokenizer on Fashion-MNIST (28x28 -> 14x14 tokens).

Reproduce ``src/jacobix/assets/fmnist-vq`` (about 8 minutes on a busy core on one CPU thread)::

    jacobix train vq                    # writes ./jacobix-train/fmnist-vq
    jacobix train vq --replace-bundled  # replaces the bundled checkpoint

Under ``torchrun --nproc_per_node N -m jacobix.train.vq`` each batch is split over the processes
(:mod:`jacobix.train.distributed`, DDP); code usage is summed over them, and dead codes restart
from the whole batch on every rank alike.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from jacobix.eval.datasets import load_fashion_mnist
from jacobix.images.vq import VQConfig, VQTokenizer, save_vq
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.distributed import RunOptions

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
        if min(self.steps, self.batch_size, self.restart_every, self.threads) < 1 or self.lr <= 0:
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
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    first = distributed.load_checkpoint(options.resume, run, model=model, optimizer=optimizer, generator=generator)
    metrics = distributed.Metrics(Path(out_dir) / distributed.METRICS, run, first)
    usage = torch.zeros(model_config.codebook_size)  # codes used by this rank's rows since the last restart
    saved = distributed.checkpoint_extra(options.resume).get("usage")
    if saved is not None and run.is_main:  # the saved count is the sum over ranks: rank 0 carries it
        usage += saved
    start, last = time.perf_counter(), options.last_step(config.steps)
    for step in range(first, last):
        lr = config.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = x[torch.randint(len(x), (config.batch_size,), generator=generator)]  # the global batch
        (local,) = run.shard(batch)  # this rank's rows
        logits, quantized = model(local)
        recon = F.mse_loss(torch.sigmoid(logits), local)
        loss = recon + quantized.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        usage += torch.bincount(quantized.indices.flatten().cpu(), minlength=model_config.codebook_size)
        if step % config.restart_every == config.restart_every - 1 and step < 0.8 * config.steps:
            _restart_dead_codes(tokenizer, batch.to(run.device), run.sum(usage), generator)
            usage.zero_()
        metrics.log(step, loss=run.mean(loss), recon=run.mean(recon))
        if step % 200 == 0:
            log.info("step %d recon %.4f vq %.4f %.0fs", step, recon.item(), quantized.loss.item(), time.perf_counter() - start)
        if options.save_due(step + 1, config.steps):
            distributed.save_checkpoint(Path(out_dir) / distributed.CHECKPOINT, run, model=model, optimizer=optimizer,
                                        step=step + 1, generator=generator, extra={"usage": run.sum(usage)})
    if run.is_main and last == config.steps:
        metrics_out = reconstruction_metrics(tokenizer.cpu().eval())
        log.info("test reconstruction: %s", metrics_out)
        save_vq(tokenizer, out_dir, extra={"reconstruction": metrics_out, "train": asdict(config)})
    run.close()
    return Path(out_dir)


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``out`` is resolved (see :func:`jacobix.train.output_folder`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser, "fmnist-vq")
    parser.add_argument("--steps", type=int, default=VQTrainConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=VQTrainConfig.batch_size, help="global batch (all processes)")
    parser.add_argument("--restart-every", type=int, default=VQTrainConfig.restart_every, help="dead-code restart period")
    distributed.add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    args.out = output_folder(args, "fmnist-vq")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if distributed.is_main_process() else logging.WARNING,
                        format="%(asctime)s %(message)s")
    config = VQTrainConfig(steps=args.steps, seed=args.seed, batch_size=args.batch_size, restart_every=args.restart_every)
    train(args.out, config, options=RunOptions.from_args(args))


if __name__ == "__main__":
    main()
