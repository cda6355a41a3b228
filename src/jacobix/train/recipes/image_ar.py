"""Train the bundled class-conditional AR transformer over VQ token grids of Fashion-MNIST.

Needs the tokenizer in ``assets/fmnist-vq`` (``jacobix train vq``). Reproduce
``src/jacobix/assets/fmnist-ar`` (about 15 minutes on one busy CPU thread)::

    jacobix train image-ar                    # writes ./jacobix-train/fmnist-ar
    jacobix train image-ar --replace-bundled  # replaces the bundled checkpoint

Sequences are ``[class token] + 196 codes``; the class token is replaced by the null token with
probability ``label_dropout`` so that one model serves classifier-free guidance. Besides the
model, the script writes ``drafts.safetensors``: code frequencies per (class, position) and per
code above, used by the draft rules of :mod:`jacobix.images.proposers` (no data at generation time).
Under ``torchrun --nproc_per_node N -m jacobix.train.recipes.image_ar`` the global batch is split
over the processes (:mod:`jacobix.train.loop`).
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from jacobix.images.model import ImageVocab
from jacobix.images.vq import load_vq
from jacobix.models.llama import Llama, LlamaConfig, load_llama, save_llama
from jacobix import assets
from jacobix.eval.datasets import require_fashion_mnist
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.options import check_lineage, count, natural, positive, require_data
from jacobix.train.distributed import RunOptions
from jacobix.train.image_data import class_sequences, evaluate, save_draft_tables, tokenize_split
from jacobix.train.losses import next_token_loss
from jacobix.train.loop import FitConfig, StepEnd, fit
from jacobix.train.recipe import Recipe
from jacobix.train.schedule import WarmupCosine

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ImageARTrainConfig:
    """Optimisation settings of :func:`train`."""

    steps: int = 900
    batch_size: int = 16
    lr: float = 2e-3
    save_every: int = 300
    warmup: int = 50
    weight_decay: float = 0.05
    label_dropout: float = 0.1
    seed: int = 0
    threads: int = 1
    dim: int = 128
    num_layers: int = 4

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.warmup, self.save_every, self.threads, self.dim, self.num_layers) < 1 or not 0 < self.lr < math.inf:
            raise ValueError("ImageARTrainConfig needs positive steps, batch_size, warmup, threads, dim, num_layers, lr")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")


def train(out_dir: str | Path, config: ImageARTrainConfig = ImageARTrainConfig(), *, vq_dir: str | Path | None = None,
          init_from: str | Path | None = None, options: RunOptions = RunOptions()) -> Path:
    """Tokenize the training split, train the transformer, save model and draft tables to ``out_dir``.

    Args:
        out_dir: checkpoint folder (created); also ``metrics.jsonl`` and, when asked, ``checkpoint.pt``.
        config: optimisation settings and model size.
        vq_dir: tokenizer folder; default: the bundled ``fmnist-vq``.
        init_from: continue from the weights in this folder (a second run with a fresh schedule).
        options: resume, checkpoint frequency, early stop, FSDP (:class:`RunOptions`).
    Returns:
        ``out_dir``.
    """
    run = distributed.setup()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    tokenizer = load_vq(vq_dir)
    vocab = ImageVocab(num_codes=tokenizer.config.codebook_size, num_classes=10, grid=tokenizer.config.grid)
    codes, labels = tokenize_split("train", tokenizer)  # (N, 196), (N,)
    model_config = LlamaConfig(vocab_size=vocab.vocab_size, dim=config.dim, num_layers=config.num_layers, num_heads=4,
                               num_kv_heads=2, hidden_dim=3 * config.dim, max_seq_len=512)
    model = Llama(model_config)
    if init_from is not None:
        model.load_state_dict(load_llama(init_from)[0].state_dict())
    model = distributed.wrap(model, run, fsdp=options.fsdp)
    image_meta = {**asdict(vocab), "vq": Path(vq_dir).name if vq_dir else "fmnist-vq"}
    if run.is_main:
        save_draft_tables(out_dir, codes, labels, vocab)

    def batches(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        rows = torch.randint(len(codes), (config.batch_size,), generator=generator)
        return class_sequences(codes[rows], labels[rows], vocab, config.label_dropout, generator)  # (B, 196) each

    def partial_save(end: StepEnd) -> None:  # partial checkpoints, overwritten at the end
        if end.step % config.save_every == config.save_every - 1:
            _save_plain(end.model, model_config, end.run, out_dir, {"image": image_meta, "partial_step": end.step + 1})

    fit_config = FitConfig(schedule=WarmupCosine(peak=config.lr, steps=config.steps, warmup=config.warmup),
                           weight_decay=config.weight_decay, seed=config.seed, log_every=50)
    result = fit(model, next_token_loss, batches, fit_config, run=run, options=options, out=Path(out_dir), on_step=partial_save)
    if result.finished:
        history = [*(load_llama(init_from)[1].get("train_runs", []) if init_from else []), asdict(config)]
        _save_final(model, model_config, run, out_dir, tokenizer, vocab, {"image": image_meta, "train_runs": history})
    run.close()
    return Path(out_dir)


def _save_final(model: nn.Module, model_config: LlamaConfig, run: distributed.Run, out_dir: str | Path,
                tokenizer, vocab: ImageVocab, extra: dict) -> None:
    """Gather the weights, measure the test loss and save the model (rank 0)."""
    weights = distributed.full_state_dict(model)
    if not run.is_main:
        return
    final = Llama(model_config)
    final.load_state_dict(weights)
    test_codes, test_labels = tokenize_split("test", tokenizer)
    val_loss = evaluate(final.eval(), test_codes, test_labels, vocab)
    log.info("test loss %.4f nats/token", val_loss)
    save_llama(final, out_dir, extra={**extra, "test_loss": round(val_loss, 4)})


def _save_plain(model: nn.Module, model_config: LlamaConfig, run: distributed.Run, out_dir: str | Path,
                extra: dict) -> None:
    """Save the (gathered) weights as an ordinary jacobix checkpoint from rank 0."""
    weights = distributed.full_state_dict(model)
    if run.is_main:
        plain = Llama(model_config)
        plain.load_state_dict(weights)
        save_llama(plain, out_dir, extra=extra)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options."""
    add_output_arguments(parser, "fmnist-ar", origin="tokenizer (--vq)")
    parser.add_argument("--vq", default=None, help="tokenizer folder (default: bundled fmnist-vq)")
    parser.add_argument("--steps", type=count, default=ImageARTrainConfig.steps, help="optimizer steps")
    parser.add_argument("--seed", type=natural, default=0, help="seed of the initialisation and the batches")
    parser.add_argument("--lr", type=positive, default=ImageARTrainConfig.lr, help="peak learning rate")
    parser.add_argument("--init-from", default=None, help="continue from the weights in this folder")
    parser.add_argument("--batch-size", type=count, default=ImageARTrainConfig.batch_size, help="global batch (all processes)")
    parser.add_argument("--dim", type=count, default=ImageARTrainConfig.dim, help="model width")
    parser.add_argument("--layers", type=count, default=ImageARTrainConfig.num_layers, help="transformer layers")
    distributed.add_distributed_arguments(parser)


def resolve(args: argparse.Namespace) -> None:
    """Check the options, the tokenizer, ``--init-from`` and the data (``config``, ``options``); ``out`` from
    ``--out``/``--replace-bundled`` (which keeps the bundled tokenizer unless ``--other-origin``)."""
    args.config = ImageARTrainConfig(steps=args.steps, seed=args.seed, lr=args.lr, batch_size=args.batch_size,
                                     dim=args.dim, num_layers=args.layers)
    args.options = RunOptions.from_args(args)
    args.options.last_step(args.steps)
    if args.vq is not None:
        require_data(assets.locate(args.vq, kind="vq"), "--vq", "an image tokenizer folder")
    if args.init_from is not None:
        require_data(assets.locate(args.init_from, kind="image"), "--init-from", "an image model folder")
    check_lineage(args, "fmnist-ar", "--vq", args.vq, "fmnist-vq")
    require_fashion_mnist()
    args.out = output_folder(args, "fmnist-ar")


def run(args: argparse.Namespace) -> None:
    """Train from parsed, resolved options."""
    train(args.out, args.config, vq_dir=args.vq, init_from=args.init_from, options=args.options)


RECIPE = Recipe(name="image-ar", help="the bundled class-conditional image-token model (fmnist-ar)",
                add_arguments=add_arguments, resolve=resolve, run=run)
parse_args, main = RECIPE.parse_args, RECIPE.main

__all__ = ["RECIPE", "ImageARTrainConfig", "main", "parse_args", "train"]

if __name__ == "__main__":
    main()
