"""The bundled models each command accepts, for ``--help`` (from the one registry, :mod:`jacobix.assets`)."""

from __future__ import annotations

from pathlib import Path

from jacobix import assets
from jacobix.core.checkpoints import WEIGHTS, check_weights


def bundled(*kinds: str) -> str:
    """The registry's names of these kinds, comma-separated."""
    return ", ".join(name for kind in kinds for name in assets.names(kind))


def text_models() -> tuple[str, ...]:
    """Names ``jacobix.load_text_model`` accepts besides a checkpoint folder."""
    return (*assets.names("text"), *assets.names("hf-text"))


def check_text_model(name: str, option: str = "--model") -> None:
    """Refuse, before any work, a text model that is neither a known name nor a folder, and a jacobix
    checkpoint whose weights are truncated or damaged (only the file's header is read)."""
    asset = assets.find(name)
    if asset is not None:
        if asset.kind not in ("text", "hf-text"):
            raise ValueError(f"{option} {name} is a bundled {asset.kind} model; text models: {', '.join(text_models())}")
        folder = asset.path
    else:
        folder = Path(name)
        if not folder.is_dir():
            raise ValueError(f"{option} {name}: not a text model ({', '.join(text_models())}) nor a checkpoint folder")
    if folder is not None and (folder / WEIGHTS).is_file():
        try:
            check_weights(folder / WEIGHTS)
        except ValueError as error:
            raise ValueError(f"{option} {name}: {error}") from None


__all__ = ["bundled", "check_text_model", "text_models"]
