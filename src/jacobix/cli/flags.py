"""Command-line flags derived from the spec's fields, and the argument types every command shares.

A field of :class:`~jacobix.tokens.decoding.Decoding` or
:class:`~jacobix.core.sampling.SamplingConfig` whose type a command line can express (a bool, an
int, a float, a string or a literal, each maybe None) becomes ``--field-name``; its help is the
field's line in the class docstring, and a value is checked by building the spec with it, so the
command line refuses exactly what the Python API refuses, with the same words. A field that holds
an object (your own proposer, a width policy, a cost book) has no flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
import tempfile
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from jacobix.api import split_options
from jacobix.core.sampling import SamplingConfig
from jacobix.tokens.decoding import Decoding
from jacobix.tokens.methods import METHODS


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in the help, except where there is none to show (None, off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def typed(convert: Callable[[str], Any], test: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, then refuse it unless ``test`` passes."""
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


@dataclass(frozen=True)
class FieldFlag:
    """One spec field as a command-line option."""

    spec: type
    name: str
    switch: bool  # a flag without a value (bool fields)
    parse: Callable[[str], Any] | None
    help: str
    metavar: str | None = None

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def field_flags(spec: type) -> list[FieldFlag]:
    """The fields of a spec dataclass that a command line can set, in field order."""
    hints = typing.get_type_hints(spec)
    helps = _attribute_help(spec)
    out = []
    for f in dataclasses.fields(spec):
        options = _options(hints[f.name])
        if bool in options:
            out.append(FieldFlag(spec, f.name, True, None, helps.get(f.name, f.name)))
        elif options and all(o in (int, float, str) or isinstance(o, str) for o in options):
            out.append(FieldFlag(spec, f.name, False, _parser_of(spec, f.name, options), helps.get(f.name, f.name)))
        elif (nested := _integer_spec(hints[f.name])) is not None:  # a small spec of whole numbers: "4,3"
            names = [g.name for g in dataclasses.fields(nested)]
            out.append(FieldFlag(spec, f.name, False, _nested_parser(spec, f.name, nested), helps.get(f.name, f.name),
                                 metavar=",".join(n.upper() for n in names)))
    return out


def _integer_spec(hint: Any) -> type | None:
    """The frozen dataclass of int fields that ``hint`` allows (``X | None``), or None."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for arg in args:
        if dataclasses.is_dataclass(arg) and all(t is int for t in typing.get_type_hints(arg).values()):
            return arg
    return None


def _nested_parser(spec: type, name: str, nested: type) -> Callable[[str], Any]:
    names = [g.name for g in dataclasses.fields(nested)]

    def parse(text: str) -> Any:
        parts = text.split(",")
        if len(parts) != len(names) or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise argparse.ArgumentTypeError(f"expected {len(names)} whole numbers {','.join(n.upper() for n in names)}, "
                                             f"e.g. {','.join(str(_default(g) or 1) for g in dataclasses.fields(nested))}, "
                                             f"got {text!r}")
        try:
            value = nested(**{n: int(p) for n, p in zip(names, parts)})
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    parse.__name__ = name
    return parse


def _options(hint: Any) -> list[Any]:
    """The plain types and literal values a hint allows (None and object types left out)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    out: list[Any] = []
    for arg in args:
        if typing.get_origin(arg) is Literal:
            out += [v for v in typing.get_args(arg) if isinstance(v, str)]
        elif arg in (bool, int, float, str):
            out.append(arg)
    return out


def _parser_of(spec: type, name: str, options: list[Any]) -> Callable[[str], Any]:
    literals = [o for o in options if isinstance(o, str)]
    kinds = [o for o in options if isinstance(o, type)]

    def parse(text: str) -> Any:
        value: Any = text if text in literals else None
        for kind in kinds if value is None else ():
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        if value is None:
            words = [{int: "an integer", float: "a number", str: "a name"}[k] for k in kinds] + [repr(v) for v in literals]
            raise argparse.ArgumentTypeError(f"expected {' or '.join(words)}, got {text!r}")
        try:
            spec(**{name: value})  # the spec's own check, in its own words
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    parse.__name__ = name
    return parse


def _attribute_help(spec: type) -> dict[str, str]:
    """Each field's line(s) under ``Attributes:`` in the class docstring, joined."""
    doc = inspect.getdoc(spec) or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    out: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        match = re.match(r"^    ([a-z_, ]+): (.*)$", line)
        if match:
            current = match.group(1).split(",")[0].strip()
            out[current] = match.group(2)
        elif current is not None and line.startswith("        "):
            out[current] += " " + line.strip()
        elif line.strip():
            current = None
    return {name: _plain_text(text) for name, text in out.items()}


def _plain_text(text: str) -> str:
    """Docstring markup as plain words: ``x`` -> x, :mod:`a.b.c` -> c."""
    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", text)
    return text.replace("``", "")


def specs() -> tuple[type, type]:
    """The spec classes whose fields become flags (looked up when a parser is built)."""
    return Decoding, SamplingConfig


def add_spec_arguments(parser: argparse.ArgumentParser, *, defaults: dict[str, Any] | None = None,
                       methods: tuple[str, ...] | None = None, more_methods: tuple[str, ...] = ()) -> None:
    """A flag for every command-line field of the decoding and sampling specs.

    Args:
        parser: the command's parser.
        defaults: the command's own defaults by field name (others: the spec's).
        methods: the registered methods the command runs (default: all of them).
        more_methods: extra choices of ``--method`` that the command resolves itself (e.g. "all").
    """
    defaults = defaults or {}
    group = parser.add_argument_group("decoding and sampling (jacobix.Decoding, jacobix.SamplingConfig)")
    for spec in specs():
        fields = {f.name: f for f in dataclasses.fields(spec)}
        for flag in field_flags(spec):
            default = defaults.get(flag.name, _default(fields[flag.name]))
            if flag.switch:
                group.add_argument(flag.option, dest=flag.name, action="store_true", help=flag.help)
            elif flag.name == "method":
                group.add_argument(flag.option, dest="method", choices=(*(methods or METHODS), *more_methods), default=default,
                                   help=flag.help)
            else:
                group.add_argument(flag.option, dest=flag.name, type=flag.parse, default=default, help=flag.help,
                                   metavar=flag.metavar)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return None if f.default_factory is dataclasses.MISSING else f.default_factory()


def spec_values(args: argparse.Namespace, spec: type) -> dict[str, Any]:
    """The command-line values of a spec's fields (those with flags)."""
    return {flag.name: getattr(args, flag.name) for flag in field_flags(spec) if hasattr(args, flag.name)}


def specs_from_args(args: argparse.Namespace, **overrides: Any) -> tuple[Decoding, SamplingConfig]:
    """The :class:`Decoding` and :class:`SamplingConfig` the flags declare, with ``overrides`` by field name."""
    decoding, sampling, _ = split_options({**spec_values(args, Decoding), **spec_values(args, SamplingConfig), **overrides})
    return decoding, sampling


def decoding_options() -> tuple[str, ...]:
    """The ``--options`` of the Decoding fields, other than ``--method``."""
    return tuple(flag.option for flag in field_flags(Decoding) if flag.name != "method")


def check_device(text: str, target: str) -> None:
    """Refuse a device string that torch cannot use here, naming the fix."""
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
    number = getattr(backend, "device_count", None)
    if device.index is not None and number is not None and device.index >= number():
        raise ValueError(f"--device {text}: this machine has {number()} {device.type} device(s), numbered from 0")


def check_writable(folder: Path, option: str) -> None:
    """Create ``folder`` and write a probe file there, or name the option and the problem."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{option} {folder}: cannot write there ({error.strerror or error}); choose a writable folder") from None


__all__ = ["FieldFlag", "Help", "add_spec_arguments", "check_device", "check_writable", "count",
           "decoding_options", "field_flags", "nonnegative", "positive", "spec_values", "specs", "specs_from_args", "typed"]
