"""Scripts that reproduce jacobix's bundled checkpoints (``jacobix train ...``).

Every trainer writes to a fresh folder, ``./jacobix-train/NAME``, unless told otherwise with
``--out DIR``. Replacing a checkpoint shipped inside the package takes ``--replace-bundled``: the
run writes to a staging folder beside it and swaps the finished model in at the end
(:mod:`jacobix.train.publish`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from jacobix import assets
from jacobix.train import publish
from jacobix.train.options import check_output

FRESH_ROOT = Path("jacobix-train")  # relative to the current folder


def add_output_arguments(parser: argparse.ArgumentParser, bundled: str | None, *, origin: str | None = None) -> None:
    """``--out DIR`` and ``--replace-bundled`` for a trainer whose checkpoint ships as ``assets/<bundled>``
    (and ``--other-origin`` for one trained from a teacher or base, named by the option ``origin``)."""
    default = f"./{FRESH_ROOT}/{bundled or 'NAME'}"
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: {default})")
    parser.add_argument("--replace-bundled", action="store_true",
                        help="replace the bundled checkpoint in the installed package's assets once the run has "
                             "finished (until then the bundled folder is not touched)")
    if origin is not None:
        parser.add_argument("--other-origin", action="store_true",
                            help=f"with --replace-bundled: allow a {origin} other than the bundled model's")


def output_folder(args: argparse.Namespace, bundled: str) -> Path:
    """Where a trainer writes, from ``--out`` and ``--replace-bundled``.

    Args:
        args: parsed arguments holding ``out`` (Path or None) and ``replace_bundled``.
        bundled: the checkpoint's name in :mod:`jacobix.assets` (its folder under the package assets).
    Returns:
        with ``--replace-bundled``, the staging folder beside ``assets/<bundled>`` (``args.publish_to``
        is set to ``assets/<bundled>``, which the recipe's runner replaces when the run has finished);
        else ``--out`` or ``./jacobix-train/<bundled>``.
    Raises:
        ValueError: ``--out`` inside the package assets without ``--replace-bundled``, or
            ``--replace-bundled`` with an ``--out`` elsewhere or for a name that is not a bundled asset,
            or an output path that is a file or lies under one.
    """
    if args.replace_bundled:
        target = assets.get(bundled).path  # a name the registry does not know is refused with the known ones
        if args.out is not None and Path(args.out).resolve() not in (target.resolve(), publish.staging(target).resolve()):
            raise ValueError(f"--replace-bundled writes to {target}; drop --out {args.out} or drop --replace-bundled")
        if not os.access(target.parent, os.W_OK):
            raise ValueError(f"--replace-bundled: cannot write to {target.parent} (an installed package that is read-only "
                             f"for you?); train with --out DIR and copy the model in with the rights to do so")
        publish.recover(target)
        args.publish_to = target
        return publish.staging(target)
    out = Path(args.out) if args.out is not None else FRESH_ROOT / bundled
    if out.resolve().is_relative_to(assets.ROOT.resolve()):
        raise ValueError(f"{out} is inside the bundled checkpoints ({assets.ROOT}); pass --replace-bundled to replace a shipped model")
    check_output(out)
    return out
