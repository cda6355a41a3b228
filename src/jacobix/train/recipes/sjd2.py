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
from torch import Tensor, nn

from jacobix.images.denoise import NoiseEmbedding, NoiseEmbeddingConfig, NoiseSchedule, add_noise, save_noise_embedding
from jacobix.images.model import AR_DIR, ImageVocab
from jacobix.images.vq import load_vq
from jacobix.models.llama import Llama, load_llama, save_llama
from jacobix.eval.datasets import require_fashion_mnist
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.options import check_lineage, count, fraction, natural, positive, require_data
from jacobix.train.distributed import RunOptions
from jacobix.train.image_data import class_sequences, evaluate, tokenize_split
from jacobix.train.loop import FitConfig, StepEnd, fit
from jacobix.train.recipe import Recipe
from jacobix.train.schedule import WarmupCosine

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
        if min(self.steps, self.batch_size, self.warmup, self.save_every, self.threads, self.max_segments) < 1 or not 0 < self.lr < math.inf:
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
    ``alpha * e_hat + sigma * eps`` fed through :meth:`NoiseEmbedding.inputs` (``eps`` drawn from ``generator``)."""
    eps = torch.randn((*tokens.shape, model.config.dim), generator=generator)  # (B, L, E)
    return noised_embeddings(model, noise, tokens, ratios, eps)


def noised_embeddings(model: Llama, noise: NoiseEmbedding, tokens: Tensor, ratios: Tensor, eps: Tensor) -> Tensor:
    """:func:`noisy_inputs` with the standard normal noise ``eps`` (B, L, E) given."""
    clean = model.embed(tokens)  # (B, L, E)
    noisy = noise.inputs(add_noise(noise.normalise(clean), eps, ratios), ratios)  # (B, L, E)
    return torch.where((ratios > 0)[..., None], noisy, clean)


@dataclass(frozen=True)
class NoisyBatch:
    """One step's global batch: inputs (B, L), targets (B, L), noise ratios (B, L) and noise (B, L, E)."""

    inputs: Tensor
    targets: Tensor
    ratios: Tensor
    eps: Tensor


class Denoiser(nn.Module):
    """The image model and its noise module as one trained module: ``forward(batch) -> loss``
    (next-clean-code cross-entropy from noisy inputs), so DDP sees the pass it synchronises."""

    def __init__(self, model: Llama, noise: NoiseEmbedding) -> None:
        super().__init__()
        self.model, self.noise = model, noise

    def forward(self, batch: NoisyBatch) -> Tensor:
        embeds = noised_embeddings(self.model, self.noise, batch.inputs, batch.ratios, batch.eps)  # (B, L, E)
        logits = self.model(None, embeds=embeds)  # (B, L, V)
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())


def train(out_dir: str | Path, config: SJD2TrainConfig = SJD2TrainConfig(), *, init_from: str | Path = AR_DIR,
          noise_config: dict | None = None, options: RunOptions = RunOptions()) -> Path:
    """Fine-tune ``init_from`` for next-clean-token prediction; save model, noise module and draft tables.

    Args:
        out_dir: checkpoint folder (created); also ``metrics.jsonl`` and, when asked, ``checkpoint.pt``.
        config: optimisation and noise-sampling settings.
        init_from: the AR image model to start from (default: bundled ``fmnist-ar``).
        noise_config: :class:`NoiseEmbeddingConfig` fields other than ``dim`` (schedule, sizes).
        options: resume, checkpoint frequency, early stop (:class:`RunOptions`; DDP only, no FSDP).
    Returns:
        ``out_dir``.
    """
    if options.fsdp:
        raise ValueError("--fsdp: the SJD2 trainer feeds embeddings past the token layer; it trains with DDP (drop --fsdp)")
    run = distributed.setup()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out_dir, init_from = Path(out_dir), Path(init_from)
    model, meta = load_llama(init_from)
    vocab = ImageVocab(**{k: meta["image"][k] for k in ("num_codes", "num_classes", "grid")})
    tokenizer = load_vq(AR_DIR.parent / meta["image"].get("vq", "fmnist-vq"))
    codes, labels = tokenize_split("train", tokenizer)  # (N, 196), (N,)
    noise = NoiseEmbedding(NoiseEmbeddingConfig(dim=model.config.dim, **(noise_config or {})))
    noise.fit_statistics(model.tok_embeddings.weight[: vocab.num_codes].detach())
    objective = distributed.wrap(Denoiser(model, noise), run)
    start = time.perf_counter()

    def batches(step: int, generator: torch.Generator) -> NoisyBatch:
        rows = torch.randint(len(codes), (config.batch_size,), generator=generator)
        inputs, targets = class_sequences(codes[rows], labels[rows], vocab, config.label_dropout, generator)  # (B, 196) each
        ratios = torch.cat([torch.zeros(len(rows), 1),
                            noise_ratios(len(rows), inputs.shape[1] - 1, noise.config.schedule, config, generator)], 1)
        eps = torch.randn((*inputs.shape, model.config.dim), generator=generator)  # (B, 196, E)
        return NoisyBatch(inputs, targets, ratios, eps)

    def partial_save(end: StepEnd) -> None:
        done = end.step + 1
        if done % config.save_every == 0 and done < config.steps and end.run.is_main:
            _save(model, noise, out_dir, meta, config, init_from, time.perf_counter() - start, done, vocab, tokenizer)

    fit_config = FitConfig(schedule=WarmupCosine(peak=config.lr, steps=config.steps, warmup=config.warmup),
                           weight_decay=config.weight_decay, seed=config.seed, log_every=25)
    result = fit(objective, lambda module, batch: (module(batch), {}), batches, fit_config, run=run, options=options,
                 out=out_dir, on_step=partial_save)
    if result.finished and run.is_main:
        _save(model, noise, out_dir, meta, config, init_from, time.perf_counter() - start, config.steps, vocab, tokenizer)
    run.close()
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options."""
    add_output_arguments(parser, BUNDLED, origin="base model (--init-from)")
    parser.add_argument("--init-from", type=Path, default=AR_DIR, help="AR image model to fine-tune (default: bundled fmnist-ar)")
    parser.add_argument("--steps", type=count, default=SJD2TrainConfig.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=count, default=SJD2TrainConfig.batch_size, help="global batch (all processes)")
    parser.add_argument("--lr", type=positive, default=SJD2TrainConfig.lr, help="peak learning rate")
    parser.add_argument("--clean-share", type=fraction, default=SJD2TrainConfig.clean_share,
                        help="share of sequences trained without noise (keeps AR quality)")
    parser.add_argument("--seed", type=natural, default=0, help="seed of the noise module and the batches")
    distributed.add_distributed_arguments(parser)


def resolve(args: argparse.Namespace) -> None:
    """Check the options, the base model and the data (``config``, ``options``); ``out`` from
    ``--out``/``--replace-bundled`` (which keeps the bundled base, fmnist-ar, unless ``--other-origin``)."""
    args.config = SJD2TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                  clean_share=args.clean_share, seed=args.seed)
    args.options = RunOptions.from_args(args)
    args.options.last_step(args.steps)
    require_data(args.init_from, "--init-from", "the AR image model to fine-tune")
    check_lineage(args, BUNDLED, "--init-from", args.init_from, "fmnist-ar")
    require_fashion_mnist()
    args.out = output_folder(args, BUNDLED)


def run(args: argparse.Namespace) -> None:
    """Train from parsed, resolved options."""
    train(args.out, args.config, init_from=args.init_from, options=args.options)


RECIPE = Recipe(name="sjd2", help="the bundled SJD2 fine-tune of the image-token model (fmnist-ar-sjd2)",
                description=__doc__.splitlines()[0], add_arguments=add_arguments, resolve=resolve, run=run)
parse_args, main = RECIPE.parse_args, RECIPE.main

__all__ = ["RECIPE", "Denoiser", "NoisyBatch", "SJD2TrainConfig", "main", "noise_ratios", "noised_embeddings",
           "noisy_inputs", "parse_args", "train"]

if __name__ == "__main__":
    main()
