"""Checks every trainer runs on its options before any work: argparse types for ranges, and the
checks that need the file system (data present, output path usable, teacher or base known).

A failed check raises ``argparse.ArgumentTypeError`` (argparse prints ``jacobix train NAME: error:
argument --lr: ...``) or ``ValueError`` naming the option (printed as one ``jacobix train NAME: error:``
line by the command line and by ``Recipe.main``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from jacobix import assets


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def finite(text: str) -> float:
    """argparse type: any finite float (NaN and infinities refused)."""
    return _number(text, float)


def positive(text: str) -> float:
    """argparse type: a finite float > 0 (learning rates, scales)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonnegative(text: str) -> float:
    """argparse type: a finite float >= 0 (weights, noise, decay)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def count(text: str) -> int:
    """argparse type: an integer >= 1 (steps, batch sizes, bins, episodes)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def natural(text: str) -> int:
    """argparse type: an integer >= 0 (warm-up steps, seeds)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def tighten(parser: argparse.ArgumentParser) -> None:
    """Make every plain ``type=float`` option of ``parser`` refuse NaN and infinities (:func:`finite`)."""
    for action in parser._actions:
        if action.type is float:
            action.type = finite


def check_output(out: Path, option: str = "--out") -> None:
    """Refuse an output folder that is a file or lies under a regular file (before any work)."""
    out = Path(out)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == out else f"lies under the file {path}"
                raise ValueError(f"{option} {out} {what}; name a folder")
            return


def require_data(path: Path | None, option: str, what: str, hint: str = "") -> Path:
    """``path``, checked to exist (a folder or file named by ``option``)."""
    if path is None:
        raise ValueError(f"{option} is required: {what}{'; ' + hint if hint else ''}")
    if not Path(path).exists():
        raise ValueError(f"{option} {path}: no such file or folder ({what}){'; ' + hint if hint else ''}")
    return Path(path)


def same_model(given: str | Path, expected: str) -> bool:
    """True when ``given`` (a bundled name or a folder) is the bundled ``expected`` model."""
    if str(given) == expected:
        return True
    asset = assets.find(expected)
    return asset is not None and asset.path is not None and Path(given).resolve() == asset.path.resolve()


def check_lineage(args: argparse.Namespace, bundled: str, option: str, given: str | Path | None,
                  expected: str | None) -> None:
    """With ``--replace-bundled``, refuse a ``given`` teacher or base other than the bundled model's
    ``expected`` one, unless ``--other-origin`` was given.

    Args:
        args: parsed options with ``replace_bundled`` and ``other_origin``.
        bundled: the asset the run would replace.
        option: the option that names the teacher or base (``--teacher``).
        given: its value; expected: the name the bundled model was trained from (None: no check).
    """
    if not args.replace_bundled or expected is None or given is None or getattr(args, "other_origin", False):
        return
    if not same_model(given, expected):
        raise ValueError(f"{option} {given}: the bundled {bundled} was trained from {expected}; --replace-bundled "
                         f"keeps that, so drop --replace-bundled (write to --out) or add --other-origin to replace it "
                         f"with a model from {given}")


__all__ = ["check_lineage", "check_output", "count", "finite", "fraction", "natural", "nonnegative", "positive",
           "require_data", "same_model", "tighten"]
