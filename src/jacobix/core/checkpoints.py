"""The one checkpoint format of jacobix: ``model.safetensors`` plus ``config.json``.

``config.json`` holds ``architecture`` (which class reads it), ``config`` (the model's frozen
dataclass config) and any extra keys (tokenizer, training settings, measured figures). Weights
load without executing code.
"""

from __future__ import annotations

import json
import os
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
    meta = json.loads((directory / METADATA).read_text())
    if meta.get("architecture") != architecture:
        raise ValueError(f"{directory}/{METADATA} describes a {meta.get('architecture')!r} model, not {architecture!r}")
    return meta


def is_transformers_folder(directory: str | Path) -> bool:
    """True for a folder whose ``config.json`` names a transformers ``model_type`` (not jacobix's format)."""
    config = Path(directory) / METADATA
    return config.is_file() and '"model_type"' in config.read_text(errors="ignore")


def read_weights(directory: str | Path) -> dict[str, Tensor]:
    """The tensors of ``model.safetensors`` (no code is executed)."""
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / WEIGHTS))
