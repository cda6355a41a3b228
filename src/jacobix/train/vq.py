"""Train the bundled VQ image tokenizer on Fashion-MNIST (28x28 -> 14x14 tokens).

Reproduce ``src/jacobix/assets/fmnist-vq`` (about 8 minutes on a busy core on one CPU thread)::

    jacobix train vq                    # writes ./jacobix-train/fmnist-vq
    jacobix train vq --replace-bundled  # replaces the bundled checkpoint
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
from jacobix.train import add_output_arguments, output_folder

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


def train(out_dir: str | Path, config: VQTrainConfig = VQTrainConfig(), model_config: VQConfig = VQConfig()) -> Path:
    """Train the tokenizer, measure reconstruction on the test split, save to ``out_dir``."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    images, _ = load_fashion_mnist("train")
    x = torch.tensor(images).float().div(255)[:, None]  # (N, 1, 28, 28)
    model = VQTokenizer(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    usage = torch.zeros(model_config.codebook_size)
    start = time.perf_counter()
    for step in range(config.steps):
        lr = config.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = x[torch.randint(len(x), (config.batch_size,), generator=generator)]
        logits, quantized = model(batch)
        recon = F.mse_loss(torch.sigmoid(logits), batch)
        loss = recon + quantized.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        usage += torch.bincount(quantized.indices.flatten(), minlength=model_config.codebook_size)
        if step % config.restart_every == config.restart_every - 1 and step < 0.8 * config.steps:
            _restart_dead_codes(model, batch, usage, generator)
            usage.zero_()
        if step % 200 == 0:
            log.info("step %d recon %.4f vq %.4f %.0fs", step, recon.item(), quantized.loss.item(), time.perf_counter() - start)
    metrics = reconstruction_metrics(model.eval())
    log.info("test reconstruction: %s", metrics)
    save_vq(model, out_dir, extra={"reconstruction": metrics, "train": asdict(config)})
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
    args = parser.parse_args(argv)
    args.out = output_folder(args, "fmnist-vq")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args.out, VQTrainConfig(steps=args.steps, seed=args.seed))


if __name__ == "__main__":
    main()
