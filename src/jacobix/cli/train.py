"""``jacobix train TARGET``: one subparser per recipe, with that recipe's own options.

``add_parser(commands)`` registers the command on the CLI's subparsers; each target's
options come from its :class:`jacobix.train.recipe.Recipe` (``jacobix train cllm --help`` shows
CLLM's). Output goes to ``./jacobix-train/NAME`` unless ``--out`` or ``--replace-bundled``.
"""

from __future__ import annotations

import argparse
import logging

from jacobix.cli.flags import Help
from jacobix.train.recipe import Recipe
from jacobix.train.recipes import RECIPES


def add_parser(commands: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter] = Help) -> None:
    """Add ``train`` with one sub-command per recipe of :data:`RECIPES`.

    Each target's namespace gets ``check`` (the recipe's ``resolve``: option checks and the output
    folder, before any work), ``run`` (train, replacing a bundled model only at the end; returns the
    exit status 0) and ``prog`` (``jacobix train NAME``, the prefix of its error lines).
    """
    train = commands.add_parser("train", help="reproduce a bundled checkpoint (see jacobix train TARGET --help)",
                                formatter_class=formatter)
    targets = train.add_subparsers(dest="target", required=True)
    for name, recipe in RECIPES.items():
        parser = targets.add_parser(name, help=recipe.help, description=recipe.description or recipe.help,
                                    formatter_class=formatter)
        recipe.build_parser(parser)
        parser.set_defaults(check=_checker(recipe), run=_runner(recipe), prog=f"jacobix train {name}")


def _checker(recipe: Recipe):
    def check(args: argparse.Namespace) -> None:
        args.argv = recipe.command_line(args)  # before resolve fills derived options
        recipe.resolve(args)

    return check


def _runner(recipe: Recipe):
    def run(args: argparse.Namespace) -> int:
        logging.getLogger().setLevel(logging.INFO)  # trainers run for minutes: show their progress
        recipe.train(args)
        return 0

    return run


__all__ = ["add_parser"]
