"""The root of the ``jacobix`` command: global options, one subcommand per module, and the rules
that every command shares (checks before work, exit status 2 with a message that names the fix)."""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from jacobix.cli import batch, bench, calibrate, demo, text, train
from jacobix.cli.flags import Help, count

DESCRIPTION = ("Parallel generation for sequential generative models by Jacobi iteration: exact for token models "
               "(the greedy output, or the sampling distribution, of sequential decoding), within a stated tolerance "
               "for TarFlow's GS-Jacobi. `jacobix COMMAND --help` describes each command.")
COMMANDS = (text, batch, bench, calibrate, demo, train)  # each: add_parser(commands) setting run= and check=


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    root = argparse.ArgumentParser(prog="jacobix", description=DESCRIPTION, formatter_class=Help)
    root.add_argument("--threads", type=count, default=1,
                      help="torch CPU threads; the bundled models are too small to gain from more; 0 = torch's choice")
    root.add_argument("-v", "--verbose", action="store_true", help="log progress of training and benchmarks")
    commands = root.add_subparsers(required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a bad argument)."""
    argv = bench.default_target(sys.argv[1:] if argv is None else list(argv))
    root = parser()
    try:
        args, extra = root.parse_known_args(argv)
        if extra:
            root.error(bench.misplaced(extra, argv) or f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as stop:  # argparse printed the message (or the help)
        return stop.code if isinstance(stop.code, int) else 2
    args.explicit = explicit(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        args.check(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"{getattr(args, 'prog', 'jacobix')}: error: {error}", file=sys.stderr)
        return 2


def explicit(argv: list[str]) -> set[str]:
    """The options given on the command line (a parse with every default suppressed)."""
    root = parser()
    parsers = [root]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.dest != "help" and action.option_strings:  # positionals keep theirs (checked against choices)
                action.default = argparse.SUPPRESS
    return set(vars(root.parse_known_args(argv)[0])) - {"run", "check", "prog"}


__all__ = ["main", "parser"]
