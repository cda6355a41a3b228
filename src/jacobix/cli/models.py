"""The bundled models each command accepts, for ``--help`` (from the one registry, :mod:`jacobix.assets`)."""

from __future__ import annotations

from jacobix import assets


def bundled(*kinds: str) -> str:
    """The registry's names of these kinds, comma-separated."""
    return ", ".join(name for kind in kinds for name in assets.names(kind))


def text_models() -> tuple[str, ...]:
    """Names ``jacobix.load_text_model`` accepts besides a checkpoint folder."""
    return (*assets.names("text"), *assets.names("hf-text"))


__all__ = ["bundled", "text_models"]
