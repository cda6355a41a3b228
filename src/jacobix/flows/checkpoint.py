"""Saving and loading TarFlow checkpoints: jacobix's safetensors format and ml-tarflow's ``.pth``.

A jacobix checkpoint is a folder with ``model.safetensors`` and ``config.json``
(``{"architecture": "tarflow", "config": {...}, ...}``). Loading checks every parameter's name
and shape against the config and refuses a mismatch with a message that names the fix.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from torch import Tensor

from jacobix.core.checkpoints import build_config, read_json, read_weights, save_checkpoint
from jacobix.flows.tarflow import TarFlow, TarFlowConfig

ARCHITECTURE = "tarflow"
# Prefixes that wrappers add to ml-tarflow state dicts (DDP, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# ml-tarflow's Model never passes head_dim to its blocks, so every released model has 64-wide heads.
APPLE_HEAD_DIM = 64


def save_tarflow(model: TarFlow, directory: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` (float32) and ``config.json`` (plus ``extra`` keys) into ``directory``."""
    return save_checkpoint(model, directory, architecture=ARCHITECTURE, extra=extra, dtype=torch.float32)


def read_config(directory: str | Path) -> tuple[TarFlowConfig, dict]:
    """The :class:`TarFlowConfig` and full metadata of a checkpoint folder."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a TarFlow checkpoint folder holds model.safetensors and config.json")
    meta = read_json(path)
    if meta.get("architecture") != ARCHITECTURE:
        raise ValueError(f"{path} describes a {meta.get('architecture')!r} model, not {ARCHITECTURE!r}")
    if "config" not in meta:
        raise ValueError(f"{path}: key 'config' is missing")
    known = {f.name for f in fields(TarFlowConfig)}
    unknown = sorted(set(meta["config"]) - known) if isinstance(meta["config"], dict) else []
    if unknown:
        raise ValueError(f"{path} has config keys this jacobix does not know: {unknown}; upgrade jacobix or fix the file")
    return build_config(TarFlowConfig, meta["config"], source=path), meta


def load_tarflow(directory: str | Path, config: TarFlowConfig | None = None) -> tuple[TarFlow, dict]:
    """Load a checkpoint written by :func:`save_tarflow`.

    Args:
        directory: the checkpoint folder.
        config: the config the caller expects; None uses the folder's config.json. A config that
            differs from the one stored is refused.
    Returns:
        the model in eval mode, and the config.json contents.
    """
    stored, meta = read_config(directory)
    if config is not None and config != stored:
        diff = {f.name: (getattr(config, f.name), getattr(stored, f.name)) for f in fields(TarFlowConfig)
                if getattr(config, f.name) != getattr(stored, f.name)}
        raise ValueError(
            f"checkpoint {directory} was saved with a different TarFlowConfig; (asked, stored): {diff}. "
            "Pass config=None to use the stored config, or the matching config."
        )
    model = TarFlow(stored)
    load_checked(model, read_weights(directory), source=str(directory))
    return model.eval(), meta


def load_checked(model: TarFlow, state: dict[str, Tensor], *, source: str) -> None:
    """Load ``state`` into ``model`` after checking names and shapes; refuse any mismatch clearly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint {source} does not match TarFlowConfig {model.config}: "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
            f"{'...' if len(unexpected) > 4 else ''}, wrong shapes {wrong[:4]}. "
            "Build the config the checkpoint was trained with (patch_size, channels, num_blocks, "
            "layers_per_block, num_classes, img_size, in_channels)."
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def apple_to_jacobix(state: dict[str, Tensor], config: TarFlowConfig) -> dict[str, Tensor]:
    """Map an ml-tarflow ``Model.state_dict()`` (nvp mode) to :class:`TarFlow` names.

    Parameter names are the same by design; this strips wrapper prefixes and drops the
    per-block ``attn_mask`` buffers (jacobix masks by position), after checking they are the
    causal masks the config implies.

    Args:
        state: ml-tarflow state dict.
        config: the config the checkpoint was trained with.
    Returns:
        a state dict for :class:`TarFlow`.
    """
    mapped = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        if key.endswith(".attn_mask"):
            t = config.num_patches
            if tuple(value.shape) != (t, t):
                raise ValueError(f"{key} is {tuple(value.shape)} but the config has {t} patches: wrong img_size or patch_size")
            continue
        mapped[key] = value
    return mapped


def load_apple_checkpoint(path: str | Path, config: TarFlowConfig) -> TarFlow:
    """Load an ml-tarflow ``.pth`` (e.g. ``afhq_model_8_768_8_8_0.07.pth``) with ``weights_only=True``.

    Args:
        path: the ``.pth`` file.
        config: the matching config, e.g. AFHQ: ``TarFlowConfig(in_channels=3, img_size=256,
            patch_size=8, channels=768, num_blocks=8, layers_per_block=8, num_classes=3,
            noise_std=0.07)``. ``head_dim`` must be 64 (the default): ml-tarflow's ``Model`` fixes
            the head size at 64, and the weights cannot tell it (a wrong one loads without a shape
            error but computes another attention), so any other value is refused.
    Returns:
        the model in eval mode.
    Raises:
        ValueError: ``config.head_dim`` is not 64, or the weights do not match the config.
    """
    if config.head_dim != APPLE_HEAD_DIM:
        raise ValueError(
            f"ml-tarflow checkpoints have {APPLE_HEAD_DIM}-wide attention heads but TarFlowConfig.head_dim is "
            f"{config.head_dim}: build the config with head_dim={APPLE_HEAD_DIM} (the default) to load {path}"
        )
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    model = TarFlow(config)
    load_checked(model, apple_to_jacobix(state, config), source=str(path))
    return model.eval()


__all__ = ["APPLE_HEAD_DIM", "apple_to_jacobix", "load_apple_checkpoint", "load_checked", "load_tarflow", "read_config", "save_tarflow"]
