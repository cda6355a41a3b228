"""Fine-tune the bundled image-token model for SJD2: next-clean-token prediction from noisy inputs.

Starts from ``assets/fmnist-ar`` and writes ``fmnist-ar-sjd2`` (SJD2, arXiv 2510.08994)::

    jacobix train sjd2                    # writes ./jacobix-train/fmnist-ar-sjd2
    jacobix train sjd2 --replace-bundled  # replaces the bundled checkpoint

Each training sequence ``[class] + 196 codes`` is cut into random contiguous segments; each
segment of code inputs gets its own noise ratio (or stays clean), and its input embeddings
become ``alpha * e_hat + sigma * eps`` plus a timestep embedding (:mod:`jacobix.images.denoise`).
The target stays the next clean code: ordinary AR cross-entropy at every position. A share of
sequences stays fully clean and the class token is dropped to the null token as in the AR
training, so that AR sampling and classifier-free guidance keep their quality. The checkpoint
is an ordinary jacobix Llama plus ``sjd2.safetensors`` (embedding statistics and timestep
MLP) and the draft tables of the starting model.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from jacobix.images.denoise import NoiseEmbedding, NoiseEmbeddingConfig, NoiseSchedule, add_noise, save_noise_embedding
from jacobix.images.model import AR_DIR, ImageVocab
from jacobix.images.vq import load_vq
from jacobix.models.llama import Llama, load_llama, save_llama
from jacobix.train import add_output_arguments, output_folder
from jacobix.train.image_ar import class_sequences, tokenize_split

log = logging.getLogger(__name__)
BUNDLED = "fmnist-ar-sjd2"


@dataclass(frozen=True, kw_only=True)
class SJD2TrainConfig:
    """Settings of :func:`train`.

    Attributes:
        steps, batch_size, lr, warmup, weight_decay: AdamW with linear warm-up and cosine decay.
        label_dropout: share of class tokens replaced by the null token (classifier-free guidance).
        clean_share: share of sequences with no noise at all (keeps AR quality).
        clean_segment: share of segments left clean inside a noisy sequence.
        max_segments: segments per noisy sequence are uniform in ``1 .. max_segments``.
        monotone: share of noisy sequences whose segment ratios rise along the sequence (the
            decoding window's profile: clean prefix, then noise rising).
        save_every: partial checkpoints every this many steps.
        seed, threads: randomness and torch CPU threads.
    """

    steps: int = 2500
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int = 30
    weight_decay: float = 0.05
    label_dropout: float = 0.1
    clean_share: float = 0.2
    clean_segment: float = 0.2
    max_segments: int = 32
    monotone: float = 0.7
    save_every: int = 200
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.warmup, self.save_every, self.threads, self.max_segments) < 1 or self.lr <= 0:
            raise ValueError("SJD2TrainConfig needs positive steps, batch_size, warmup, save_every, threads, max_segments, lr")
        for name in ("label_dropout", "clean_share", "clean_segment", "monotone"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SJD2TrainConfig.{name} must be in [0, 1], got {getattr(self, name)}")


def noise_ratios(batch: int, length: int, schedule: NoiseSchedule, config: SJD2TrainConfig,
                 generator: torch.Generator) -> Tensor:
    """Per-position noise ratios (B, L) for ``length`` code inputs: random segments, 0 = clean.

    Args:
        batch, length: rows and positions.
        schedule: maps ``u ~ U[0, 1]`` to a Karras ratio.
        config: segment counts and clean shares.
        generator: explicit randomness.
    Returns:
        (batch, length) float32 ratios, constant on each segment.
    """
    ratios = torch.zeros(batch, length)
    for row in range(batch):
        if float(torch.rand((), generator=generator)) < config.clean_share:
            continue
        count = int(torch.randint(1, min(config.max_segments, length) + 1, (), generator=generator))
        cuts = torch.randperm(length - 1, generator=generator)[: count - 1].add(1).sort().values  # segment starts
        starts = torch.cat([torch.zeros(1, dtype=torch.long), cuts])  # (count,)
        levels = schedule.ratio(torch.rand(count, generator=generator, dtype=torch.float64)).float()  # (count,)
        levels = torch.where(torch.rand(count, generator=generator) < config.clean_segment, 0.0, levels)
        if float(torch.rand((), generator=generator)) < config.monotone:
            levels = levels.sort().values  # clean first, noisiest last
        segment = torch.bucketize(torch.arange(length), starts, right=True) - 1  # (L,) segment of each position
        ratios[row] = levels[segment]
    return ratios


def noisy_inputs(model: Llama, noise: NoiseEmbedding, tokens: Tensor, ratios: Tensor, generator: torch.Generator) -> Tensor:
    """Input embeddings (B, L, E) of tokens (B, L): clean where ``ratios`` (B, L) is 0, else noised
    ``alpha * e_hat + sigma * eps`` fed through :meth:`NoiseEmbedding.inputs`."""
    clean = model.embed(tokens)  # (B, L, E)
    eps = torch.randn(clean.shape, generator=generator)
    noisy = noise.inputs(add_noise(noise.normalise(clean), eps, ratios), ratios)  # (B, L, E)
    return torch.where((ratios > 0)[..., None], noisy, clean)


def train(out_dir: str | Path, config: SJD2TrainConfig = SJD2TrainConfig(), *, init_from: str | Path = AR_DIR,
          noise_config: dict | None = None) -> Path:
    """Fine-tune ``init_from`` for next-clean-token prediction; save model, noise module and draft tables.

    Args:
        out_dir: checkpoint folder (created); also ``metrics.jsonl``.
        config: optimisation and noise-sampling settings.
        init_from: the AR image model to start from (default: bundled ``fmnist-ar``).
        noise_config: :class:`NoiseEmbeddingConfig` fields other than ``dim`` (schedule, sizes).
    Returns:
        ``out_dir``.
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out_dir, init_from = Path(out_dir), Path(init_from)
    model, meta = load_llama(init_from)
    model.train()
    vocab = ImageVocab(**{k: meta["image"][k] for k in ("num_codes", "num_classes", "grid")})
    tokenizer = load_vq(AR_DIR.parent / meta["image"].get("vq", "fmnist-vq"))
    codes, labels = tokenize_split("train", tokenizer)  # (N, 196), (N,)
    noise = NoiseEmbedding(NoiseEmbeddingConfig(dim=model.config.dim, **(noise_config or {})))
    noise.fit_statistics(model.tok_embeddings.weight[: vocab.num_codes].detach())
    schedule = noise.config.schedule
    params = [*model.parameters(), *noise.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = (out_dir / "metrics.jsonl").open("w")
    start = time.perf_counter()
    for step in range(config.steps):
        lr = config.lr * min(1.0, (step + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = torch.randint(len(codes), (config.batch_size,), generator=generator)
        inputs, targets = class_sequences(codes[batch], labels[batch], vocab, config.label_dropout, generator)  # (B, 196) each
        ratios = torch.cat([torch.zeros(len(batch), 1), noise_ratios(len(batch), inputs.shape[1] - 1, schedule, config, generator)], 1)
        logits = model(None, embeds=noisy_inputs(model, noise, inputs, ratios, generator))  # (B, 196, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        metrics.write(f'{{"step": {step}, "loss": {loss.item():.5f}, "lr": {lr:.3e}}}\n')
        metrics.flush()
        if step % 25 == 0 or step == config.steps - 1:
            log.info("step %d loss %.3f lr %.2e %.0fs", step, loss.item(), lr, time.perf_counter() - start)
        if step % config.save_every == config.save_every - 1 or step == config.steps - 1:
            _save(model, noise, out_dir, meta, config, init_from, time.perf_counter() - start, step + 1, vocab, tokenizer)
    metrics.close()
    return out_dir


def _save(model: Llama, noise: NoiseEmbedding, out_dir: Path, meta: dict, config: SJD2TrainConfig, init_from: Path,
          seconds: float, steps: int, vocab: ImageVocab, tokenizer) -> None:
    """Write the checkpoint; the final one (all steps) also measures the clean test loss."""
    model.eval()
    final = steps == config.steps
    record = {**asdict(config), "kind": "sjd2", "init_from": init_from.name, "train_seconds": round(seconds)}
    extra = {"image": meta["image"], "train_runs": [*meta.get("train_runs", []), record],
             "sjd2": {"noise": asdict(noise.config)}}
    if final:
        from jacobix.train.image_ar import evaluate

        test_codes, test_labels = tokenize_split("test", tokenizer)
        extra["test_loss"] = round(evaluate(model, test_codes, test_labels, vocab), 4)
        log.info("test loss %.4f nats/token (clean inputs)", extra["test_loss"])
    else:
        extra["partial_step"] = steps
    save_llama(model, out_dir, extra=extra)
    save_noise_embedding(noise, out_dir)
    if (init_from / "drafts.safetensors").exists():
        shutil.copyfile(init_from / "drafts.safetensors", out_dir / "drafts.safetensors")
    model.train()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``out`` is resolved (see :func:`jacobix.train.output_folder`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser, BUNDLED)
    parser.add_argument("--init-from", type=Path, default=AR_DIR, help="AR image model to fine-tune (default: bundled fmnist-ar)")
    parser.add_argument("--steps", type=int, default=SJD2TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=SJD2TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=SJD2TrainConfig.lr)
    parser.add_argument("--clean-share", type=float, default=SJD2TrainConfig.clean_share)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out = output_folder(args, BUNDLED)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = SJD2TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, clean_share=args.clean_share,
                             seed=args.seed)
    train(args.out, config, init_from=args.init_from)


if __name__ == "__main__":
    main()
