"""Argument types, help formatting and checks shared by the ``jacobix`` subcommands."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in the help, except where there is none to show (None, off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def typed(convert, test, expected: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected  # argparse names the type in some messages
    return parse


count = typed(int, lambda v: v >= 0, "an integer >= 0")
positive = typed(int, lambda v: v >= 1, "an integer >= 1")
nonnegative = typed(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
probability = typed(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
window = typed(lambda t: t if t == "auto" else int(t), lambda v: v == "auto" or v >= 1,
                 "a whole number of tokens per pass >= 1, or 'auto'")


def check_device(text: str, target: str) -> None:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {text!r} is not a torch device; use cpu, or e.g. cuda, cuda:1, mps") from None
    if device.type == "cpu":
        return
    if target != "text":
        raise ValueError(f"--device {text}: bench {target} runs on the CPU only; drop --device (it applies to bench text)")
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"--device {text}: no {device.type.upper()} device here (this torch build: {torch.__version__}); "
                         "use --device cpu")
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise ValueError(f"--device {text}: this machine has {count()} {device.type} device(s), numbered from 0")


def check_writable(folder: Path, option: str) -> None:
    """Create ``folder`` and write a probe file there, or name the option and the problem."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{option} {folder}: cannot write there ({error.strerror or error}); choose a writable folder") from None


__all__ = ["Help", "check_device", "check_writable", "count", "nonnegative", "positive", "probability", "typed", "window"]
