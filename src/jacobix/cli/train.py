"""``jacobix train TARGET``: reproduce a bundled checkpoint (options after TARGET go to its trainer)."""

from __future__ import annotations

import argparse
import importlib
import logging

from jacobix.cli.flags import Help

TRAINERS = {  # target: (module with main(argv), arguments it always gets); output: ./jacobix-train/NAME unless --out or --replace-bundled
    "shakespeare": ("jacobix.train.shakespeare", []),
    "cllm": ("jacobix.train.cllm_command", []),
    "vq": ("jacobix.train.vq", []),
    "image-ar": ("jacobix.train.image_ar", []),
    "sjd2": ("jacobix.train.sjd2", []),
    "classifier": ("jacobix.train.classifier", []),
    "tarflow-fashion": ("jacobix.train.tarflow", ["fashion"]),
    "tarflow-digits": ("jacobix.train.tarflow", ["digits"]),
    "pccot": ("jacobix.train.pccot", []),
    "policy": ("jacobix.train.policy", []),
    "ceed": ("jacobix.train.ceed_command", []),
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="reproduce a bundled checkpoint (options after TARGET go to its trainer)",
                                formatter_class=Help)
    train.add_argument("target", choices=sorted(TRAINERS), help="the checkpoint to train")
    train.add_argument("options", nargs=argparse.REMAINDER, help="e.g. --data DIR --out DIR --steps N; see TARGET --help")
    train.set_defaults(run=run, check=lambda args: None)


def run(args: argparse.Namespace) -> int:
    module, fixed = TRAINERS[args.target]
    logging.getLogger().setLevel(logging.INFO)  # trainers run for minutes: show their progress
    try:
        importlib.import_module(module).main([*fixed, *args.options])
    except SystemExit as stop:  # the trainer's own argparse printed its message (or help)
        return stop.code if isinstance(stop.code, int) else 2
    return 0


__all__ = ["TRAINERS", "add_parser", "run"]
