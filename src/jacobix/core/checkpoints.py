"""The one checkpoint format of jacobix: ``model.safetensors`` plus ``config.json``.

``config.json`` holds ``architecture`` (which class reads it), ``config`` (the model's frozen
dataclass config) and any extra keys (tokenizer, training settings, measured figures). Weights
load without executing code.

Every reader here names the file (and the key) it could not use: a truncated or random-bytes
``model.safetensors``, a ``config.json`` that is no JSON object, a config key missing or of the
wrong type, weights whose names or shapes do not match the config all raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from jacobix.assets import ROOT as ASSETS  # the bundled checkpoints (named in :mod:`jacobix.assets`)

WEIGHTS, METADATA = "model.safetensors", "config.json"


def cache_dir(name: str) -> Path:
    """A folder of jacobix's cache: ``$JACOBIX_CACHE/name``, by default ``~/.cache/jacobix/name``.

    The cache holds only what can be rebuilt (converted weights, encoded datasets); delete it at will.
    """
    return Path(os.environ.get("JACOBIX_CACHE", Path.home() / ".cache" / "jacobix")) / name


def save_checkpoint(
    model: nn.Module, directory: str | Path, *, architecture: str, extra: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model``'s weights (cast to ``dtype`` if given) and its ``model.config`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v if dtype is None else v.to(dtype)).detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    meta = {"architecture": architecture, "config": asdict(model.config), **(extra or {})}
    (directory / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_metadata(directory: str | Path, *, architecture: str, hint: str) -> dict:
    """``config.json`` of a checkpoint folder, checked to hold both files and ``architecture``.

    Args:
        directory: the checkpoint folder.
        architecture: the architecture the caller can build.
        hint: how to make such a checkpoint, for the error message.
    """
    directory = Path(directory)
    if not (directory / WEIGHTS).exists() or not (directory / METADATA).exists():
        raise FileNotFoundError(f"no {architecture} checkpoint ({WEIGHTS} + {METADATA}) in {directory}; {hint}")
    meta = read_json(directory / METADATA)
    if meta.get("architecture") != architecture:
        raise ValueError(f"{directory}/{METADATA} describes a {meta.get('architecture')!r} model, not {architecture!r}")
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{directory}/{METADATA}: key 'config' is {'missing' if 'config' not in meta else 'not an object'}")
    return meta


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path``; ValueError naming the file when it is not one."""
    try:
        value = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def build_config(cls: type, values: object, *, source: str | Path, key: str = "config"):
    """``cls(**values)`` for a frozen dataclass config read from ``source``, each key checked first.

    Raises:
        ValueError: naming ``source`` and the key: ``values`` not an object, a required key missing, an
            unknown key, a value of the wrong type, or a value the config's own check refuses.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{source}: key {key!r} must be an object, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in fields:
        required = fields[name].default is dataclasses.MISSING and fields[name].default_factory is dataclasses.MISSING
        if required and name not in values:
            raise ValueError(f"{source}: key '{key}.{name}' is missing")
    for name, value in values.items():
        if name not in fields:
            raise ValueError(f"{source}: unknown key '{key}.{name}' (known: {', '.join(fields)})")
        if not _fits(value, hints.get(name, object)):
            raise ValueError(f"{source}: key '{key}.{name}' must be {_describe(hints.get(name))}, got {value!r}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: key {key!r}: {error}") from None


def _fits(value: object, hint: object) -> bool:
    """Whether a JSON value can stand for a field annotated ``hint`` (bools are not numbers)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        items = args[:1] if len(args) == 2 and args[1] is Ellipsis else args
        return isinstance(value, (list, tuple)) and all(_fits(v, items[0] if len(items) == 1 else t)
                                                       for v, t in zip(value, items * len(value)))
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (dict, hint))
    return True


def _describe(hint: object) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def read_tensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file; ValueError naming it when it is truncated or not safetensors."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError, or OSError / ValueError
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def check_weights(path: str | Path) -> None:
    """Read only the header of a safetensors file: ValueError naming it when it is truncated or no safetensors
    (a cheap check before a long job loads it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as file:
            file.keys()
    except Exception as error:  # SafetensorError and OSError alike
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Load the tensors of ``path`` into ``model``; ValueError naming the file and the first key that does not fit."""
    state = read_tensors(path)
    own = model.state_dict()
    for name, tensor in state.items():
        if name in own and own[name].shape != tensor.shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, the config needs "
                             f"{tuple(own[name].shape)}")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise ValueError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=strict)


def is_transformers_folder(directory: str | Path) -> bool:
    """True for a folder whose ``config.json`` names a transformers ``model_type`` (not jacobix's format)."""
    config = Path(directory) / METADATA
    return config.is_file() and '"model_type"' in config.read_text(errors="ignore")


def read_weights(directory: str | Path) -> dict[str, Tensor]:
    """The tensors of ``model.safetensors`` (no code is executed; ValueError naming a damaged file)."""
    return read_tensors(Path(directory) / WEIGHTS)
