"""Train the bundled worked-arithmetic model (``jacobix train arith``).

The problems are generated (:mod:`jacobix.eval.worked_arith`), so nothing is read from disk::

    jacobix train arith

The model is a character-level Llama trained on a stream of problems with their worked answers;
at the end its greedy accuracy on the held-out problems is measured and stored in the
checkpoint's config (``heldout_accuracy``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from jacobix.eval import worked_arith
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.distributed import RunOptions
from jacobix.train.options import count
from jacobix.train.recipe import Recipe
from jacobix.train.recipes.shakespeare import TrainConfig, add_config_arguments, resolve_config, train_char_lm

log = logging.getLogger(__name__)
DEFAULTS = TrainConfig(steps=3000, batch_size=32, seq_len=128, lr=2e-3, warmup=100, dim=128, num_layers=4)
CHARACTERS = 6_000_000  # about 170,000 problems, more than any run sees
HELDOUT = 1000


def train(out_dir: str | Path, config: TrainConfig = DEFAULTS, options: RunOptions = RunOptions(), *,
          characters: int = CHARACTERS, heldout: int = HELDOUT) -> Path:
    """Train on generated problems and write the checkpoint into ``out_dir`` (see :func:`train_char_lm`)."""
    text = worked_arith.training_text(characters, seed=config.seed + 1)

    def finish(model) -> dict:
        score = worked_arith.accuracy(model, worked_arith.ALPHABET, worked_arith.problems(heldout, worked_arith.HELDOUT_SEED))
        log.info("greedy accuracy on %d held-out problems: %.4f", heldout, score)
        return {"heldout_accuracy": round(score, 4), "heldout_problems": heldout, "task": "worked-arith"}

    return train_char_lm(text, worked_arith.ALPHABET, out_dir, config, options, finish=finish, end=worked_arith.END)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options."""
    add_output_arguments(parser, "arith")
    add_config_arguments(parser, DEFAULTS)
    parser.add_argument("--heldout", type=count, default=HELDOUT, help="held-out problems the final accuracy is measured on")
    distributed.add_distributed_arguments(parser)


def resolve(args: argparse.Namespace) -> None:
    """``config`` (a :class:`TrainConfig`), ``options`` and ``out`` from the parsed options."""
    resolve_config(args)
    args.out = output_folder(args, "arith")


def run(args: argparse.Namespace) -> None:
    """Train from parsed, resolved options."""
    train(args.out, args.config, args.options, heldout=args.heldout)


RECIPE = Recipe(name="arith", help="the bundled worked-arithmetic model (generated multi-step sums)",
                add_arguments=add_arguments, resolve=resolve, run=run)
parse_args, main = RECIPE.parse_args, RECIPE.main

__all__ = ["DEFAULTS", "RECIPE", "main", "parse_args", "train"]

if __name__ == "__main__":  # python -m jacobix.train.recipes.arith (what torchrun starts)
    main()
