"""What a training recipe is to the command line: a name, its options, and what it runs.

Each module under :mod:`jacobix.train.recipes` defines one (or two, for TarFlow's datasets)
:class:`Recipe`; :data:`jacobix.train.recipes.RECIPES` registers them by target name for
``jacobix train TARGET``, and each module keeps ``parse_args(argv)`` and ``main(argv)`` for tests
and for ``torchrun -m jacobix.train.recipes.NAME``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jacobix.train import distributed, publish
from jacobix.train.options import tighten

log = logging.getLogger(__name__)
UNFINISHED = ("stop_after", "collect_only", "demos_only")  # options that end a run before its model is made


def _nothing(args: argparse.Namespace) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """One ``jacobix train`` target.

    Attributes:
        name: the target (``jacobix train NAME``).
        help: one line for ``jacobix train --help``.
        add_arguments: adds the recipe's options to a parser.
        run: trains from parsed, resolved options.
        resolve: checks parsed options and fills derived ones (the output folder) in place; raises
            ValueError naming the option.
        description: the ``--help`` text (default: ``help``).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    resolve: Callable[[argparse.Namespace], None] = _nothing
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or " " in self.name:
            raise ValueError(f"a recipe name is one word, got {self.name!r}")

    def build_parser(self, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
        """``parser`` (or a new one) with the recipe's options."""
        parser = parser or argparse.ArgumentParser(prog=f"jacobix train {self.name}",
                                                   description=self.description or self.help)
        self.add_arguments(parser)
        tighten(parser)
        return parser

    def parse_args(self, argv: list[str] | None = None) -> argparse.Namespace:
        """Parse and resolve ``argv`` (ValueError for an option that argparse accepts but the recipe refuses).

        ``args.argv`` keeps the arguments given (for the ``reproduce`` line some recipes record).
        """
        args = self.build_parser().parse_args(argv)  # argparse's own errors exit with status 2
        args.argv = [] if argv is None else list(argv)
        self.resolve(args)
        return args

    def command_line(self, args: argparse.Namespace) -> list[str]:
        """The options of ``args`` that differ from their defaults, as arguments (``--steps 30``)."""
        out = []
        for action in self.build_parser()._actions:
            value = getattr(args, action.dest, None)
            if isinstance(action, argparse._HelpAction) or value == action.default:
                continue
            if not action.option_strings:
                out.append(str(value))
            elif action.nargs == 0:
                out.append(action.option_strings[-1])
            else:
                out.extend([action.option_strings[-1], str(value)])
        return out

    def train(self, args: argparse.Namespace) -> None:
        """Run on resolved options; with ``--replace-bundled``, in the staging folder, replacing the
        bundled model only once the run has finished (see :mod:`jacobix.train.publish`).

        A fresh run (no ``--resume`` inside the staging folder) starts from an empty staging folder, so
        nothing of an earlier, abandoned run (trajectories of another teacher) is reused.
        """
        target = getattr(args, "publish_to", None)
        main = distributed.is_main_process()
        if target is not None and main and not _inside(getattr(args, "resume", None), args.out):
            shutil.rmtree(args.out, ignore_errors=True)
        self.run(args)
        if target is None or not main or any(getattr(args, name, None) for name in UNFINISHED):
            if target is not None and main:
                log.info("the run stopped early: %s is unchanged; resume from %s", target, args.out)
            return
        publish.check_origin(args.out, target, allow=getattr(args, "other_origin", False))
        publish.publish(args.out, target)

    def main(self, argv: list[str] | None = None) -> None:
        """Parse ``argv``, set up logging (INFO on rank 0) and train; a refused option exits with status 2
        and one ``jacobix train NAME: error: ...`` line."""
        parser = self.build_parser()
        try:
            args = self.parse_args(argv)
        except (ValueError, FileNotFoundError) as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        level = logging.INFO if distributed.is_main_process() else logging.WARNING
        logging.basicConfig(level=level, format="%(asctime)s %(message)s")
        self.train(args)


def _inside(path: str | Path | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(Path(folder).resolve())


__all__ = ["Recipe"]
